//! Stored files: listing, reading, `put`, and `grant`/`revoke` (which rewrite key slots, or
//! re-encrypt).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{
    container_err, container_rel, io_err, validate_rel, Blob, Kind, Result, Store, StoreError,
    CONTAINER_EXT, DIR_META_FILE, IO_BUF, META_DIR,
};
use crate::container::{Container, ContainerError, KeySlot, Ownership, Reader, Writer};
use crate::crypto::{PrivateKey, SecretKey};
use crate::fsutil;
use crate::keyring::Keyring;

/// How [`Store::put`] writes a file.
pub(crate) struct PutOptions<'a> {
    pub chunk_log2: u8,
    /// Replace an existing file (else it is refused).
    pub replace: bool,
    /// The owner, group and mode the new container carries.
    pub ownership: &'a Ownership,
}

/// One stored file as seen by listings.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub rel: String,
}

fn unwrap_for(
    container: &Container<Blob>,
    rel: &str,
    user: &str,
    private: &PrivateKey,
) -> Result<SecretKey> {
    match container.unwrap_key(user, private) {
        Err(ContainerError::NoSlot(_)) => Err(StoreError::NoAccess {
            rel: rel.to_string(),
            user: user.to_string(),
        }),
        other => other.map_err(|source| StoreError::Container {
            path: PathBuf::from(rel),
            source,
        }),
    }
}

impl Store {
    /// Whether plaintext path `rel` is stored (as a regular container file).
    pub(crate) fn exists(&self, rel: &str) -> Result<bool> {
        Ok(self.backend.kind(&container_rel(rel)?)? == Some(Kind::File))
    }

    /// Whether anything at all (a container, a directory, a link) is at `rel`'s container
    /// path, or a mount link is named `rel`: `put` without `--force` refuses to replace it.
    pub(crate) fn taken(&self, rel: &str) -> Result<bool> {
        Ok(self.backend.kind(&container_rel(rel)?)?.is_some()
            || self.mount_kind(rel)? == Some(super::MountKind::Link))
    }

    /// Every stored file, sorted by path.
    pub(crate) fn files(&self) -> Result<Vec<StoredFile>> {
        self.files_under("")
    }

    /// Every stored file under directory `dir` (`""`: the whole store), sorted by path. Only
    /// that directory is walked: what lies elsewhere (a path too long to open, a directory
    /// that cannot be read) does not concern it.
    pub(crate) fn files_under(&self, dir: &str) -> Result<Vec<StoredFile>> {
        if !dir.is_empty() {
            validate_rel(dir)?;
        }
        let mut out = Vec::new();
        self.walk(dir, &mut out, &mut Vec::new())?;
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    /// Every directory under directory `dir` (`""`: the whole store), `dir` excluded, sorted
    /// by path (a parent before its children).
    pub(crate) fn dirs_under(&self, dir: &str) -> Result<Vec<String>> {
        if !dir.is_empty() {
            validate_rel(dir)?;
        }
        let mut dirs = Vec::new();
        self.walk(dir, &mut Vec::new(), &mut dirs)?;
        dirs.sort();
        Ok(dirs)
    }

    /// Collects the files and directories under `dir`. Directories the mount does not show
    /// (a temporary one of mkdir or rmdir, one named like the directory metadata) are not
    /// entered.
    fn walk(&self, dir: &str, out: &mut Vec<StoredFile>, dirs: &mut Vec<String>) -> Result<()> {
        for entry in self.backend.list(dir)? {
            let name = &entry.name;
            if dir.is_empty() && name == META_DIR {
                continue;
            }
            let rel = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            match entry.kind {
                Kind::Dir if fsutil::is_temp_name(name) || name == DIR_META_FILE => {}
                Kind::Dir => {
                    self.walk(&rel, out, dirs)?;
                    dirs.push(rel);
                }
                Kind::File => {
                    if let Some(stem) = rel.strip_suffix(&format!(".{CONTAINER_EXT}")) {
                        if validate_rel(stem).is_ok() {
                            out.push(StoredFile {
                                rel: stem.to_string(),
                            });
                        }
                    }
                }
                Kind::Symlink | Kind::Other => {}
            }
        }
        Ok(())
    }

    /// Opens the container file of `rel` for reading (a regular file, never through a link).
    pub(crate) fn open_container_file(&self, rel: &str) -> Result<Blob> {
        match self.backend.open(&container_rel(rel)?) {
            Err(e) if e.is_not_found() => Err(StoreError::NoSuchFile(rel.to_string())),
            other => other,
        }
    }

    /// Reads and structurally checks the container of `rel` (no key needed).
    pub(crate) fn open_container(&self, rel: &str) -> Result<Container<Blob>> {
        let blob = self.open_container_file(rel)?;
        let path = self.backend.display_path(&container_rel(rel)?);
        Container::parse(blob).map_err(container_err(&path))
    }

    /// Opens `rel` for reading with `user`'s private key: unwraps the data key from their slot
    /// and verifies the header MAC.
    pub(crate) fn reader(
        &self,
        rel: &str,
        user: &str,
        private: &PrivateKey,
    ) -> Result<Reader<Blob>> {
        let path = self.backend.display_path(&container_rel(rel)?);
        let container = self.open_container(rel)?;
        let data_key = unwrap_for(&container, rel, user, private)?;
        container.open(&data_key).map_err(container_err(&path))
    }

    /// Encrypts `source` into the store as `rel`, for `recipients`, as `options` say. The
    /// parent directory must exist (see [`Store::mkdir_all`], which gives the directories it
    /// makes their owners). `progress` receives bytes processed so far.
    pub(crate) fn put(
        &self,
        rel: &str,
        source: &Path,
        recipients: &[Keyring],
        options: &PutOptions<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        if !options.replace && self.taken(rel)? {
            return Err(StoreError::FileExists(rel.to_string()));
        }
        let target = container_rel(rel)?;
        let path = self.backend.display_path(&target);
        let mut input = File::open(source).map_err(io_err(source))?;
        let data_key = SecretKey::generate().map_err(|e| container_err(&path)(e.into()))?;
        let slots: Vec<_> = recipients
            .iter()
            .map(|k| (k.name.clone(), k.public_key))
            .collect();
        self.write_atomic(&target, |file| {
            let out = BufWriter::with_capacity(IO_BUF, file);
            let mut writer = Writer::new(
                out,
                &data_key,
                options.chunk_log2,
                &slots,
                options.ownership,
            )
            .map_err(container_err(&path))?;
            let mut buf = zeroize::Zeroizing::new(vec![0u8; IO_BUF]);
            let mut done = 0u64;
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(source)(e)),
                };
                writer.write_all(&buf[..n]).map_err(container_err(&path))?;
                done += n as u64;
                progress(done);
            }
            let mut out = writer.finish().map_err(container_err(&path))?;
            out.flush().map_err(io_err(&path))
        })
    }

    /// `granter` (who can read `rel`) adds a key slot for `grantee`. Returns false if the
    /// grantee already had one. The data is not re-encrypted.
    pub(crate) fn grant(
        &self,
        rel: &str,
        granter: &str,
        private: &PrivateKey,
        grantee: &Keyring,
    ) -> Result<bool> {
        let target = container_rel(rel)?;
        let path = self.backend.display_path(&target);
        let container = self.open_container(rel)?;
        if container.slot(&grantee.name).is_some() {
            return Ok(false);
        }
        let data_key = unwrap_for(&container, rel, granter, private)?;
        // Refuse to extend access to a file whose header was tampered with.
        container
            .verify_header(&data_key)
            .map_err(container_err(&path))?;
        let file_id = container.header().file_id;
        let mut slots = container.slots().to_vec();
        slots.push(
            KeySlot::seal(&file_id, &grantee.name, &grantee.public_key, &data_key)
                .map_err(container_err(&path))?,
        );
        self.rewrite_slots(&target, &container, &slots)?;
        Ok(true)
    }

    /// Removes `user`'s key slot. Without `rekey`, the data key is unchanged: a revoked user
    /// who kept the key can still decrypt the current ciphertext. With `rekey` (a remaining
    /// reader's name and key) the file is re-encrypted under a new data key for the others.
    pub(crate) fn revoke(
        &self,
        rel: &str,
        user: &str,
        rekey: Option<(&str, &PrivateKey)>,
    ) -> Result<()> {
        let target = container_rel(rel)?;
        let path = self.backend.display_path(&target);
        let container = self.open_container(rel)?;
        if container.slot(user).is_none() {
            return Err(StoreError::NoAccess {
                rel: rel.to_string(),
                user: user.to_string(),
            });
        }
        let remaining: Vec<KeySlot> = container
            .slots()
            .iter()
            .filter(|s| s.label != user)
            .cloned()
            .collect();
        let Some((reader_name, private)) = rekey else {
            return self.rewrite_slots(&target, &container, &remaining);
        };
        let recipients = remaining
            .iter()
            .map(|s| match self.user(&s.label) {
                Err(StoreError::NoSuchUser(_)) => Err(StoreError::UnknownRecipient {
                    rel: rel.to_string(),
                    label: s.label.clone(),
                }),
                other => other,
            })
            .collect::<Result<Vec<_>>>()?;
        let data_key = unwrap_for(&container, rel, reader_name, private)?;
        let reader = container.open(&data_key).map_err(container_err(&path))?;
        self.reencrypt(&target, &reader, &recipients)
    }

    fn rewrite_slots(
        &self,
        target: &str,
        container: &Container<Blob>,
        slots: &[KeySlot],
    ) -> Result<()> {
        let path = self.backend.display_path(target);
        self.write_atomic(target, |file| {
            let mut out = BufWriter::with_capacity(IO_BUF, file);
            container
                .write_with_slots(slots, &mut out)
                .map_err(container_err(&path))?;
            out.flush().map_err(io_err(&path))
        })
    }

    /// Re-encrypts the plaintext of `reader` under a fresh data key and file id, chunk by chunk
    /// in memory, keeping its chunk size and ownership.
    fn reencrypt(&self, target: &str, reader: &Reader<Blob>, recipients: &[Keyring]) -> Result<()> {
        let path = self.backend.display_path(target);
        let data_key = SecretKey::generate().map_err(|e| container_err(&path)(e.into()))?;
        let slots: Vec<_> = recipients
            .iter()
            .map(|k| (k.name.clone(), k.public_key))
            .collect();
        self.write_atomic(target, |file| {
            let out = BufWriter::with_capacity(IO_BUF, file);
            let mut writer = Writer::new(
                out,
                &data_key,
                reader.header().chunk_log2,
                &slots,
                reader.ownership(),
            )
            .map_err(container_err(&path))?;
            let mut chunk = zeroize::Zeroizing::new(vec![0u8; reader.chunk_size() as usize]);
            let mut cipher = Vec::new();
            for index in 0..reader.chunk_count() {
                let n = reader
                    .read_chunk_with(index, &mut chunk, &mut cipher)
                    .map_err(container_err(&path))?;
                writer
                    .write_all(&chunk[..n])
                    .map_err(container_err(&path))?;
            }
            let mut out = writer.finish().map_err(container_err(&path))?;
            out.flush().map_err(io_err(&path))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::FAST;

    /// put, listing, reader, grant and revoke with re-encryption, all through the backend.
    #[test]
    fn files_round_trip_through_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), 12).unwrap();
        let mut users = Vec::new();
        for (name, uid) in [("alice", 1), ("bob", 2)] {
            let (k, private) = Keyring::create(name, uid, b"pw", FAST).unwrap();
            store.add_user(&k).unwrap();
            users.push((k, private));
        }
        let [(alice, alice_key), (bob, bob_key)] = &users[..] else {
            unreachable!()
        };
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let src = dir.path().join("plain");
        std::fs::write(&src, &data).unwrap();
        let mut seen = 0;
        let ownership = Ownership::new(Some("alice".into()), 1001, 0o640);
        let options = PutOptions {
            chunk_log2: 12,
            replace: false,
            ownership: &ownership,
        };
        store.mkdir_all("m", &mut |_| ownership.clone()).unwrap();
        store
            .put(
                "m/w.bin",
                &src,
                std::slice::from_ref(alice),
                &options,
                &mut |n| seen = n,
            )
            .unwrap();
        assert_eq!(seen, data.len() as u64);
        assert!(store.exists("m/w.bin").unwrap() && store.taken("m/w.bin").unwrap());
        assert!(matches!(
            store.put(
                "m/w.bin",
                &src,
                std::slice::from_ref(alice),
                &options,
                &mut |_| {}
            ),
            Err(StoreError::FileExists(_))
        ));
        let rels: Vec<_> = store.files().unwrap().into_iter().map(|f| f.rel).collect();
        assert_eq!(rels, ["m/w.bin"]);

        let read_all = |r: &Reader<Blob>| {
            let mut out = vec![0u8; r.len() as usize];
            assert_eq!(r.read_at(0, &mut out).unwrap(), out.len());
            out
        };
        let reader = store.reader("m/w.bin", "alice", alice_key).unwrap();
        assert_eq!(read_all(&reader), data);
        assert!(matches!(
            store.reader("m/w.bin", "bob", bob_key),
            Err(StoreError::NoAccess { .. })
        ));

        assert!(store.grant("m/w.bin", "alice", alice_key, bob).unwrap());
        assert_eq!(
            read_all(&store.reader("m/w.bin", "bob", bob_key).unwrap()),
            data
        );
        store
            .revoke("m/w.bin", "alice", Some(("bob", bob_key)))
            .unwrap();
        let rekeyed = store.reader("m/w.bin", "bob", bob_key).unwrap();
        assert_eq!(read_all(&rekeyed), data);
        assert_ne!(rekeyed.header().file_id, reader.header().file_id);
        assert!(store.reader("m/w.bin", "alice", alice_key).is_err());
        assert_eq!(
            rekeyed.chunk_size(),
            1 << 12,
            "re-encryption keeps the chunk size"
        );
        assert_eq!(rekeyed.ownership(), &ownership, "and the ownership");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("m")).unwrap().collect();
        assert_eq!(
            left.len(),
            2,
            "no temporary file is left behind (.tvault-dir is)"
        );
    }
}
