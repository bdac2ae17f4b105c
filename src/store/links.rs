//! Symbolic links of the mount: mount path `REL` is a link when the store holds a regular
//! file `REL.tvln` (docs/FORMAT.md, "Links"):
//!
//! ```text
//! "TVLN" ‖ version u8 = 1 ‖ ownership record ‖ target_len u16le ‖ target (1..=4095 bytes, no NUL)
//! ```
//!
//! A link is a small file read with a cap through the backend, so a planted OS symlink or
//! FIFO named `x.tvln` is refused like any other (never followed), and it is created by
//! staging and committing without replacing anything. The store never resolves a target:
//! the mount hands the bytes to the kernel, which resolves them for the caller. Targets are
//! not encrypted (names are not either; docs/SECURITY.md).
//!
//! One mount name has one kind: directory `REL`, container `REL.tvlt` or link `REL.tvln`.
//! Creating any of them refuses a name another kind holds; if a store writer (or a crash
//! between the two steps of a rename that replaces one kind by another) leaves several, a
//! directory wins over a file and a file over a link, in lookups and listings alike.

use super::backend::SetTime;
use super::{Kind, Meta, Node, Result, Store, StoreError};
use crate::container::{ContainerError, Ownership, Source};

pub(crate) const LINK_EXT: &str = "tvln";
const MAGIC: &[u8; 4] = b"TVLN";
const VERSION: u8 = 1;
/// The longest target: `PATH_MAX` less its terminating NUL, as symlink(2) allows.
pub const MAX_TARGET_LEN: usize = 4095;
/// The longest `.tvln` file: magic, version, the longest ownership record, the length and
/// the longest target. Anything longer is refused unread.
pub(crate) const MAX_LINK_LEN: u64 = (4 + 1 + (1 + 32 + 4 + 2) + 2 + MAX_TARGET_LEN) as u64;
/// Mode shown for every link: a link's own bits mean nothing (the target's decide).
pub const LINK_MODE: u32 = 0o777;

/// What a mount name is, in the order that decides when a store holds several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MountKind {
    Dir,
    File,
    Link,
}

/// Why bytes are not a link file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a tvault link: expected {0}")]
pub struct LinkError(pub &'static str);

/// One link: who owns it and what it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub own: Ownership,
    pub target: Vec<u8>,
}

impl Link {
    /// The bytes of `REL.tvln`.
    pub fn encode(&self) -> std::result::Result<Vec<u8>, LinkError> {
        check_target(&self.target)?;
        let mut out = Vec::with_capacity(7 + self.own.encoded_len() + self.target.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        self.own.encode(&mut out).map_err(ownership)?;
        out.extend_from_slice(&(self.target.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.target);
        Ok(out)
    }

    /// Parses a whole `.tvln` file: nothing may follow the target.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Link, LinkError> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or(LinkError("the magic \"TVLN\""))?;
        let rest = match rest.split_first() {
            Some((&VERSION, rest)) => rest,
            _ => return Err(LinkError("version 1")),
        };
        let (own, used) = Ownership::decode(rest).map_err(ownership)?;
        let rest = &rest[used..];
        let (len, target) = match rest {
            [a, b, target @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), target),
            _ => return Err(LinkError("a target length")),
        };
        if target.len() != len {
            return Err(LinkError("exactly target_len bytes of target"));
        }
        check_target(target)?;
        Ok(Link {
            own,
            target: target.to_vec(),
        })
    }
}

fn check_target(target: &[u8]) -> std::result::Result<(), LinkError> {
    if target.is_empty() || target.len() > MAX_TARGET_LEN || target.contains(&0) {
        return Err(LinkError("a target of 1 to 4095 bytes without NUL"));
    }
    Ok(())
}

fn ownership(e: ContainerError) -> LinkError {
    match e {
        ContainerError::Ownership(why) => LinkError(why),
        _ => LinkError("a valid ownership record"),
    }
}

/// The link file of mount path `rel` (validated), relative to the store root.
fn link_rel(rel: &str) -> Result<String> {
    super::stored_rel(rel, LINK_EXT)
}

impl Store {
    /// What mount path `rel` is (see the module doc for the order when several kinds share
    /// a name). Only regular files count as files and links: an OS symlink or special file
    /// named `REL.tvlt` or `REL.tvln` is not one (and is never followed).
    pub(crate) fn mount_kind(&self, rel: &str) -> Result<Option<MountKind>> {
        if self.is_dir(rel) {
            return Ok(Some(MountKind::Dir));
        }
        if self.exists(rel)? {
            return Ok(Some(MountKind::File));
        }
        if self.backend.kind(&link_rel(rel)?)? == Some(Kind::File) {
            return Ok(Some(MountKind::Link));
        }
        Ok(None)
    }

    /// Creates link `rel` (its parent must exist), refusing a name any kind already holds
    /// ([`StoreError::FileExists`]), also one taken between the check and the commit.
    pub(crate) fn symlink(&self, rel: &str, link: &Link) -> Result<()> {
        let target = link_rel(rel)?;
        let bytes = link.encode().map_err(|e| StoreError::BadLink {
            path: self.backend.display_path(&target),
            why: e,
        })?;
        if self.mount_kind(rel)?.is_some() {
            return Err(StoreError::FileExists(rel.to_string()));
        }
        let (stage, mut file) = self.backend.stage(&target, super::FILE_MODE)?;
        std::io::Write::write_all(&mut file, &bytes)
            .map_err(super::io_err(&self.backend.display_path(&target)))?;
        match stage.commit(file, &target, true) {
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Err(StoreError::FileExists(rel.to_string()))
            }
            other => other.map(drop),
        }
    }

    /// Reads link `rel`: [`StoreError::NoSuchFile`] if there is none, [`StoreError::BadLink`]
    /// if its file is not a link file.
    pub(crate) fn read_link(&self, rel: &str) -> Result<Link> {
        self.read_link_file(rel).map(|(link, _)| link)
    }

    /// Link `rel` as [`Store::node`] shows it, `None` if there is none.
    pub(super) fn link_node(&self, rel: &str) -> Result<Option<Node>> {
        match self.read_link_file(rel) {
            Ok((link, meta)) => Ok(Some(Node::Link {
                meta,
                own: link.own,
                target_len: link.target.len() as u64,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_link_file(&self, rel: &str) -> Result<(Link, Meta)> {
        let file = link_rel(rel)?;
        let path = self.backend.display_path(&file);
        let blob = match self.backend.open(&file) {
            Err(e) if e.is_not_found() => return Err(StoreError::NoSuchFile(rel.to_string())),
            other => other?,
        };
        let bad = |why| StoreError::BadLink {
            path: path.clone(),
            why: LinkError(why),
        };
        let size = blob.size().map_err(super::io_err(&path))?;
        if size > MAX_LINK_LEN {
            return Err(bad("at most 4141 bytes"));
        }
        // Read as long as it was when opened: one that grows meanwhile is read as it was.
        let mut bytes = vec![0u8; size as usize];
        blob.read_exact_at(&mut bytes, 0)
            .map_err(super::io_err(&path))?;
        let link = Link::decode(&bytes).map_err(|why| StoreError::BadLink { path, why })?;
        Ok((link, blob.meta()))
    }

    /// Gives link `rel` another owner or group (lchown), atomically; its target stays.
    pub(crate) fn set_link_ownership(&self, rel: &str, own: &Ownership) -> Result<()> {
        let (mut link, times) = self.read_link_file(rel)?;
        link.own = Ownership::new(own.owner.clone(), own.gid, LINK_MODE);
        let file = link_rel(rel)?;
        let path = self.backend.display_path(&file);
        let bytes = link.encode().map_err(|why| StoreError::BadLink {
            path: path.clone(),
            why,
        })?;
        self.write_atomic(&file, |f| {
            std::io::Write::write_all(f, &bytes).map_err(super::io_err(&path))
        })?;
        self.restore_times(&file, Some(times))
    }

    /// Every link in directory `dir` (`""`: the root) and below it, sorted by path.
    pub(crate) fn links_under(&self, dir: &str) -> Result<Vec<String>> {
        let mut dirs = vec![dir.to_string()];
        dirs.extend(self.dirs_under(dir)?);
        let mut out = Vec::new();
        for d in dirs {
            for entry in self.list_mount_dir(&d)? {
                if entry.kind == MountKind::Link {
                    out.push(if d.is_empty() {
                        entry.name
                    } else {
                        format!("{d}/{}", entry.name)
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes link `rel`.
    pub(crate) fn remove_link(&self, rel: &str) -> Result<()> {
        self.backend.remove_file(&link_rel(rel)?)
    }

    /// Renames link `from` to `to`, replacing a link `to` unless `noreplace`.
    pub(crate) fn rename_link(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        self.backend
            .rename(&link_rel(from)?, &link_rel(to)?, noreplace)
    }

    /// Sets the times of link `rel` (lutimes(3)): those of its file in the store.
    pub(crate) fn set_link_times(
        &self,
        rel: &str,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> Result<()> {
        self.backend.set_times(&link_rel(rel)?, atime, mtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container;
    use std::fs;
    use std::time::{Duration, UNIX_EPOCH};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), container::DEFAULT_CHUNK_LOG2).unwrap();
        (dir, store)
    }

    fn link(target: &[u8]) -> Link {
        Link {
            own: Ownership::new(Some("alice".into()), 0, LINK_MODE),
            target: target.to_vec(),
        }
    }

    #[test]
    fn encoding_round_trips_and_refuses_what_is_not_a_link() {
        let l = link(b"../../blobs/abc");
        let bytes = l.encode().unwrap();
        assert_eq!(&bytes[..5], b"TVLN\x01");
        assert_eq!(&bytes[5..11], b"\x05alice");
        assert_eq!(Link::decode(&bytes).unwrap(), l);
        // Every cut, and anything after the target, is refused.
        for cut in 0..bytes.len() {
            assert!(Link::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(b'x');
        assert!(Link::decode(&long).is_err());
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert_eq!(Link::decode(&v2), Err(LinkError("version 1")));
        // Targets: 1 to 4095 bytes, no NUL.
        for bad in [&b""[..], b"a\0b", &[b'a'; 4096]] {
            assert!(link(bad).encode().is_err());
        }
        let max = link(&[b'a'; 4095]).encode().unwrap();
        assert_eq!(max.len(), 4 + 1 + 7 + 5 + 2 + 4095);
        let mut nul = bytes.clone();
        *nul.last_mut().unwrap() = 0;
        assert!(Link::decode(&nul).is_err());
        let zero_len = [&bytes[..17], &[0, 0]].concat();
        assert!(Link::decode(&zero_len).is_err());
    }

    #[test]
    fn links_are_created_once_listed_read_renamed_and_removed() {
        let (dir, store) = store();
        store.symlink("l", &link(b"target")).unwrap();
        assert_eq!(store.mount_kind("l").unwrap(), Some(MountKind::Link));
        assert!(store.taken("l").unwrap(), "put refuses it without --force");
        assert_eq!(store.read_link("l").unwrap().target, b"target");
        assert!(matches!(
            store.node("l").unwrap(),
            Some(Node::Link { target_len: 6, .. })
        ));
        // The name is taken: by a link for a link, a directory and a file alike.
        assert!(matches!(
            store.symlink("l", &link(b"other")),
            Err(StoreError::FileExists(_))
        ));
        assert!(matches!(
            store.mkdir("l", &Ownership::new(None, 0, 0o755)),
            Err(StoreError::FileExists(_))
        ));
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("f.tvlt"), b"").unwrap();
        for taken in ["d", "f"] {
            assert!(matches!(
                store.symlink(taken, &link(b"x")),
                Err(StoreError::FileExists(_))
            ));
        }
        let listed: Vec<_> = store
            .list_mount_dir("")
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.kind))
            .collect();
        assert_eq!(
            listed,
            [
                ("d".to_string(), MountKind::Dir),
                ("f".to_string(), MountKind::File),
                ("l".to_string(), MountKind::Link)
            ]
        );
        let old = UNIX_EPOCH + Duration::from_secs(1_000_000);
        store
            .set_link_times("l", None, Some(SetTime::At(old)))
            .unwrap();
        store.rename_link("l", "d/m", true).unwrap();
        let Some(Node::Link { meta, .. }) = store.node("d/m").unwrap() else {
            panic!("not a link");
        };
        assert_eq!(meta.mtime, old, "times move with the link");
        assert!(store.node("l").unwrap().is_none());
        store.symlink("n", &link(b"n")).unwrap();
        assert!(store.rename_link("n", "d/m", true).is_err(), "noreplace");
        store.rename_link("n", "d/m", false).unwrap();
        assert_eq!(store.read_link("d/m").unwrap().target, b"n");
        assert_eq!(store.links_under("").unwrap(), ["d/m"]);
        assert_eq!(store.links_under("d").unwrap(), ["d/m"]);
        store.remove_link("d/m").unwrap();
        assert_eq!(store.mount_kind("d/m").unwrap(), None);
        assert!(store.read_link("d/m").unwrap_err().is_not_found());
    }

    #[test]
    fn hostile_link_files_are_refused_and_never_followed() {
        let (dir, store) = store();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        fs::write(&secret, link(b"/etc/shadow").encode().unwrap()).unwrap();
        // A real OS symlink named like a link file: an error naming it, never followed.
        std::os::unix::fs::symlink(&secret, dir.path().join("os.tvln")).unwrap();
        match store.node("os") {
            Err(StoreError::Symlink(path)) => assert!(path.ends_with("os.tvln"), "{path:?}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.read_link("os"), Err(StoreError::Symlink(_))));
        assert_eq!(store.mount_kind("os").unwrap(), None, "not a link");
        // Garbage, and a file too long to be a link, are refused unparsed.
        fs::write(dir.path().join("junk.tvln"), b"TVLN\x01garbage").unwrap();
        fs::write(dir.path().join("huge.tvln"), vec![b'a'; 1 << 20]).unwrap();
        for rel in ["junk", "huge"] {
            match store.node(rel) {
                Err(e @ StoreError::BadLink { .. }) => {
                    assert!(e.to_string().contains(&format!("{rel}.tvln")), "{e}")
                }
                other => panic!("{rel}: {other:?}"),
            }
        }
        // A FIFO named like a link is not opened (nothing blocks).
        let fifo = std::ffi::CString::new(
            dir.path()
                .join("fifo.tvln")
                .to_str()
                .unwrap()
                .as_bytes()
                .to_vec(),
        )
        .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(matches!(
            store.read_link("fifo"),
            Err(StoreError::NotRegular { .. })
        ));
        // Creating over a planted OS symlink replaces nothing.
        assert!(store.symlink("os", &link(b"x")).is_err());
        assert!(fs::symlink_metadata(dir.path().join("os.tvln"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read(&secret).unwrap(),
            link(b"/etc/shadow").encode().unwrap()
        );
    }
}
