//! Where owners, groups and modes live in the store: in each container's slot section (files,
//! see `container`), and in `.tvault-dir` inside each directory, which this module reads and
//! writes. See docs/FORMAT.md, "Directory metadata".
//!
//! ```text
//! DIR/.tvault-dir   "TVDR" ‖ version u8 (1) ‖ ownership record
//! ```
//! A directory without one (made by an earlier version, or by hand) has the legacy default
//! ([`legacy_dir`]); one that cannot be read is an error naming it, never a default, so that
//! a planted link or garbage never widens a directory's mode.

use std::io::{BufWriter, Write};

use super::{container_err, container_rel, io_err, validate_rel, Kind, Meta, Result, SetTime};
use super::{Store, StoreError};
use super::{FILE_MODE, IO_BUF};
use crate::container::{Container, ContainerError, Ownership};

/// The file holding a directory's ownership record, at every level (hidden by the mount).
pub(crate) const DIR_META_FILE: &str = ".tvault-dir";
const DIR_META_MAGIC: [u8; 4] = *b"TVDR";
const DIR_META_VERSION: u8 = 1;
/// Far more than the longest file (4 + 1 + 7 + 32 bytes): a larger one was not written by
/// tvault, and is refused unread.
pub(crate) const MAX_DIR_META_LEN: u64 = 256;
/// The mode of a directory without `.tvault-dir` (see [`legacy_dir`]).
pub(crate) const LEGACY_DIR_MODE: u32 = 0o1777;

/// What a directory without `.tvault-dir` carries: root's, group 0, mode 0o1777. Like /tmp:
/// any unlocked user may create in it, and the sticky bit stops them removing what they do
/// not own. `tvault init` gives the store's root the same explicitly.
pub(crate) fn legacy_dir() -> Ownership {
    Ownership::new(None, 0, LEGACY_DIR_MODE)
}

/// Why a `.tvault-dir` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirMetaError {
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is larger than {MAX_DIR_META_LEN} bytes")]
    TooLarge,
    #[error("does not start with \"TVDR\"")]
    Magic,
    #[error("has unsupported version {0} (this build reads version {DIR_META_VERSION})")]
    Version(u8),
    #[error("holds a bad {0}")]
    Record(ContainerError),
}

/// The bytes of a `.tvault-dir` holding `ownership`.
pub(crate) fn encode_dir_meta(
    ownership: &Ownership,
) -> std::result::Result<Vec<u8>, ContainerError> {
    let mut out = Vec::with_capacity(5 + ownership.encoded_len());
    out.extend_from_slice(&DIR_META_MAGIC);
    out.push(DIR_META_VERSION);
    ownership.encode(&mut out)?;
    Ok(out)
}

/// Decodes a `.tvault-dir`; nothing may follow the record.
pub(crate) fn decode_dir_meta(bytes: &[u8]) -> std::result::Result<Ownership, DirMetaError> {
    let rest = bytes
        .strip_prefix(&DIR_META_MAGIC)
        .ok_or(DirMetaError::Magic)?;
    let (&version, record) = rest.split_first().ok_or(DirMetaError::Magic)?;
    if version != DIR_META_VERSION {
        return Err(DirMetaError::Version(version));
    }
    let (ownership, used) = Ownership::decode(record).map_err(DirMetaError::Record)?;
    if used != record.len() {
        return Err(DirMetaError::Record(ContainerError::TrailingRecordBytes(
            record.len() - used,
        )));
    }
    Ok(ownership)
}

/// `DIR/.tvault-dir` (`""`: the root's).
pub(crate) fn dir_meta_rel(dir: &str) -> String {
    if dir.is_empty() {
        DIR_META_FILE.to_string()
    } else {
        format!("{dir}/{DIR_META_FILE}")
    }
}

impl Store {
    /// The owner, group and mode of directory `rel` (`""` is the root): its `.tvault-dir`, or
    /// the legacy default if it has none. One that is a link, a special file, too large or
    /// not in the format is [`StoreError::BadDirMeta`].
    pub(crate) fn dir_ownership(&self, rel: &str) -> Result<Ownership> {
        let meta = dir_meta_rel(rel);
        let path = self.backend.display_path(&meta);
        let bad = |why| StoreError::BadDirMeta {
            path: path.clone(),
            why,
        };
        match self.backend.read_capped(&meta, MAX_DIR_META_LEN) {
            Ok(bytes) => decode_dir_meta(&bytes).map_err(bad),
            Err(e) if e.is_not_found() => Ok(legacy_dir()),
            // Only the file itself: a link on the way to the directory is the directory's.
            Err(StoreError::Symlink(p)) if p == path => {
                Err(bad(DirMetaError::NotRegular(Kind::Symlink.describe())))
            }
            Err(StoreError::NotRegular { what, .. }) => Err(bad(DirMetaError::NotRegular(what))),
            Err(StoreError::TooLarge { .. }) => Err(bad(DirMetaError::TooLarge)),
            Err(e) => Err(e),
        }
    }

    /// Writes the `.tvault-dir` of directory `rel` atomically. What is there and is not a
    /// regular file (a planted link) is refused, never replaced or followed.
    pub(crate) fn write_dir_meta(&self, rel: &str, ownership: &Ownership) -> Result<()> {
        let meta = dir_meta_rel(rel);
        let bytes =
            encode_dir_meta(ownership).map_err(container_err(&self.backend.display_path(&meta)))?;
        self.backend.write_small(&meta, &bytes, FILE_MODE)
    }

    /// Sets the owner, group and mode of file or directory `rel` (`""`: the root) atomically,
    /// without a key. A file's container is rewritten with the new record, its key slots,
    /// data, chunk table and MAC copied unchanged; a directory's `.tvault-dir` is replaced. A
    /// directory wins over a container of the same name, as in listings.
    pub(crate) fn set_ownership(&self, rel: &str, ownership: &Ownership) -> Result<()> {
        // chmod and chown change no times (only the ctime, which follows the store's
        // file): the times of what is rewritten are put back.
        if rel.is_empty() || self.is_dir(rel) {
            if !rel.is_empty() {
                validate_rel(rel)?;
            }
            let times = self.backend.stat(rel)?.map(|st| st.meta);
            self.write_dir_meta(rel, ownership)?;
            return self.restore_times(rel, times);
        }
        if self.mount_kind(rel)? == Some(super::MountKind::Link) {
            return self.set_link_ownership(rel, ownership);
        }
        let target = container_rel(rel)?;
        let path = self.backend.display_path(&target);
        let blob = self.open_container_file(rel)?;
        let times = Some(blob.meta());
        let container = Container::parse(blob).map_err(container_err(&path))?;
        self.write_atomic(&target, |file| {
            let mut out = BufWriter::with_capacity(IO_BUF, file);
            container
                .write_with_ownership(ownership, &mut out)
                .map_err(container_err(&path))?;
            out.flush().map_err(io_err(&path))
        })?;
        self.restore_times(&target, times)
    }

    /// Sets the access and modification times of store path `target` back to `times`.
    /// An object store keeps the rewrite's time: a chown there is a new upload.
    pub(super) fn restore_times(&self, target: &str, times: Option<Meta>) -> Result<()> {
        match times {
            Some(t) => match self.backend.set_times(
                target,
                Some(SetTime::At(t.atime)),
                Some(SetTime::At(t.mtime)),
            ) {
                Err(StoreError::TimesUnsupported(_)) => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::node::Node;
    use std::fs;

    fn own(owner: Option<&str>, gid: u32, mode: u32) -> Ownership {
        Ownership::new(owner.map(str::to_string), gid, mode)
    }

    #[test]
    fn dir_meta_round_trips_and_refuses_garbage() {
        for o in [own(Some("alice"), 1001, 0o2775), own(None, 0, 0o1777)] {
            let bytes = encode_dir_meta(&o).unwrap();
            assert_eq!(bytes.len(), 5 + o.encoded_len());
            assert_eq!(decode_dir_meta(&bytes).unwrap(), o);
            for cut in 0..bytes.len() {
                assert!(decode_dir_meta(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert!(matches!(
                decode_dir_meta(&long),
                Err(DirMetaError::Record(ContainerError::TrailingRecordBytes(1)))
            ));
        }
        let mut v2 = encode_dir_meta(&own(None, 0, 0o755)).unwrap();
        v2[4] = 2;
        assert!(matches!(
            decode_dir_meta(&v2),
            Err(DirMetaError::Version(2))
        ));
        assert!(matches!(
            decode_dir_meta(b"TVLT\x01\x00\x00\x00\x00\x00\xed\x01"),
            Err(DirMetaError::Magic)
        ));
    }

    #[test]
    fn directories_read_their_metadata_or_the_default_and_never_widen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), 12).unwrap();
        assert_eq!(store.dir_ownership("").unwrap(), legacy_dir(), "init");
        assert!(dir.path().join(DIR_META_FILE).is_file());
        // A directory made by hand (or by an earlier version) has the legacy default.
        fs::create_dir(dir.path().join("old")).unwrap();
        assert_eq!(store.dir_ownership("old").unwrap(), legacy_dir());
        let alice = own(Some("alice"), 1001, 0o750);
        store.set_ownership("old", &alice).unwrap();
        assert_eq!(store.dir_ownership("old").unwrap(), alice);
        match store.node("old").unwrap() {
            Some(Node::Dir { ownership, .. }) => assert_eq!(ownership, alice),
            other => panic!("{other:?}"),
        }
        // Hostile: garbage, too large, a link, a directory. Each is an error naming the file.
        let meta = dir.path().join("old").join(DIR_META_FILE);
        let named = |e: StoreError| {
            assert!(
                matches!(e, StoreError::BadDirMeta { ref path, .. } if *path == meta),
                "{e}"
            );
            e.to_string()
        };
        fs::write(&meta, b"garbage").unwrap();
        assert!(named(store.dir_ownership("old").unwrap_err()).contains("TVDR"));
        assert!(store.node("old").is_err());
        fs::write(&meta, vec![0u8; 300]).unwrap();
        assert!(named(store.dir_ownership("old").unwrap_err()).contains("larger"));
        fs::remove_file(&meta).unwrap();
        std::os::unix::fs::symlink(dir.path().join(DIR_META_FILE), &meta).unwrap();
        assert!(named(store.dir_ownership("old").unwrap_err()).contains("symbolic link"));
        // Writing refuses the link rather than following or replacing it.
        assert!(store.set_ownership("old", &alice).is_err());
        assert!(fs::symlink_metadata(&meta).unwrap().is_symlink());
        fs::remove_file(&meta).unwrap();
        fs::create_dir(&meta).unwrap();
        assert!(named(store.dir_ownership("old").unwrap_err()).contains("directory"));
    }

    #[test]
    fn files_change_owner_without_a_key() {
        use crate::keyring::Keyring;
        use crate::store::tests::FAST;
        use crate::store::PutOptions;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), 12).unwrap();
        let (alice, key) = Keyring::create("alice", 1001, b"pw", FAST).unwrap();
        store.add_user(&alice).unwrap();
        let src = dir.path().join("plain");
        fs::write(&src, b"weights").unwrap();
        let first = own(Some("alice"), 1001, 0o640);
        let options = PutOptions {
            chunk_log2: 12,
            replace: false,
            ownership: &first,
        };
        store
            .put("w.bin", &src, &[alice], &options, &mut |_| {})
            .unwrap();
        let owner_of = |rel| match store.node(rel).unwrap() {
            Some(Node::File { ownership, .. }) => ownership,
            other => panic!("{other:?}"),
        };
        assert_eq!(owner_of("w.bin"), first);
        let root = own(None, 0, 0o600);
        store.set_ownership("w.bin", &root).unwrap();
        assert_eq!(owner_of("w.bin"), root);
        let reader = store.reader("w.bin", "alice", &key).unwrap();
        let mut back = [0u8; 7];
        reader.read_at(0, &mut back).unwrap();
        assert_eq!(&back, b"weights", "the data is untouched and authenticates");
        assert!(store
            .set_ownership("missing", &root)
            .unwrap_err()
            .is_not_found());
    }
}
