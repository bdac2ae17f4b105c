//! tvault's own files in `.tvault/` beyond the configuration and keyrings: the store's id
//! (`store-id`), which names each host's audit key, and the directories of per-host files
//! (`audit/HOST.jsonl`, `daemons/HOST.json`), read and written through the backend only.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;

use super::{backend, Blob, Entry, Result, Store, StoreError, META_DIR};
use crate::crypto;

/// `.tvault/store-id`: 32 lowercase hex digits, drawn at random once.
const ID_NAME: &str = "store-id";
const ID_LEN: usize = 32;

fn meta_rel(name: &str) -> String {
    if name.is_empty() {
        META_DIR.to_string()
    } else {
        format!("{META_DIR}/{name}")
    }
}

impl Store {
    /// The store's id, `None` for a store that has none yet (made before ids, and never
    /// mounted since). Whoever can write the store can change it: it only names keys, which
    /// then fail to verify the chains written under the old name.
    pub(crate) fn id(&self) -> Result<Option<String>> {
        let rel = meta_rel(ID_NAME);
        let bytes = match self.backend.read_capped(&rel, 4096) {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        if text.len() != ID_LEN || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(StoreError::BadConfig {
                path: self.backend.display_path(&rel),
                why: format!(
                    "expected {ID_LEN} lowercase hex digits; the store id names each host's \
                     audit key, so restore the file from a backup or another host's copy"
                ),
            });
        }
        Ok(Some(text))
    }

    /// The store's id, drawn and written now if it has none. Two hosts doing this at once
    /// agree: the file is created without replacing, and the loser reads the winner's id.
    pub(crate) fn ensure_id(&self) -> Result<String> {
        if let Some(id) = self.id()? {
            return Ok(id);
        }
        let rel = meta_rel(ID_NAME);
        let random: [u8; ID_LEN / 2] = crypto::random_array().map_err(|e| StoreError::Io {
            path: self.backend.display_path(&rel),
            source: io::Error::other(e.to_string()),
        })?;
        let text = format!("{}\n", hex::encode(random));
        let (stage, mut file) = self.backend.stage(&rel, 0o644)?;
        file.write_all(text.as_bytes())
            .map_err(|source| StoreError::Io {
                path: self.backend.display_path(&rel),
                source,
            })?;
        match stage.commit(file, &rel, true) {
            Ok(_) => {}
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            }
            Err(e) => return Err(e),
        }
        self.id()?.ok_or_else(|| StoreError::Io {
            path: self.backend.display_path(&rel),
            source: io::Error::new(io::ErrorKind::NotFound, "vanished right after it was made"),
        })
    }

    /// The entries of `.tvault/DIR` (empty if it does not exist).
    pub(crate) fn list_meta(&self, dir: &str) -> Result<Vec<Entry>> {
        match self.backend.list(&meta_rel(dir)) {
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            other => other,
        }
    }

    /// Opens regular file `.tvault/NAME` for reading.
    pub(crate) fn open_meta(&self, name: &str) -> Result<Blob> {
        self.backend.open(&meta_rel(name))
    }

    /// Creates `.tvault/DIR` if it is missing.
    pub(crate) fn create_meta_dir(&self, dir: &str) -> Result<()> {
        self.backend.create_dir_all(&meta_rel(dir), 0o755)
    }

    /// `.tvault/DIR` as a local directory (created if missing), for a log appended in place;
    /// [`StoreError::NotLocal`] for a store that is not a local directory.
    pub(crate) fn local_meta_dir(&self, dir: &str) -> Result<OwnedFd> {
        // Asked first, so that nothing is created in a store that cannot hold the log.
        self.backend.local_dir(META_DIR)?;
        self.create_meta_dir(dir)?;
        self.backend.local_dir(&meta_rel(dir))
    }

    /// Replaces `.tvault/NAME` atomically with what `fill` writes.
    pub(crate) fn write_meta_with(
        &self,
        name: &str,
        mode: u32,
        fill: impl FnOnce(&mut File) -> Result<()>,
    ) -> Result<()> {
        backend::write_atomic(&*self.backend, &meta_rel(name), mode, fill)
    }

    /// The full name of `.tvault/NAME`, for messages.
    pub(crate) fn meta_display(&self, name: &str) -> std::path::PathBuf {
        self.backend.display_path(&meta_rel(name))
    }
}

/// A store backed by a local directory that says it is not one, as object storage does:
/// for testing what takes another path there (the audit mirror) without a server.
#[cfg(test)]
pub(crate) fn not_local(root: &std::path::Path) -> Store {
    use super::backend::{Backend, SetTime, Stage, Status, Usage};
    use std::path::PathBuf;

    /// The gate of a local store, and its root (each test's store is a distinct location).
    struct NotLocal(super::dir::Gate, PathBuf);
    impl Backend for NotLocal {
        fn display_path(&self, rel: &str) -> PathBuf {
            PathBuf::from(format!("remote://{}/{rel}", self.1.display()))
        }
        fn stat(&self, rel: &str) -> Result<Option<Status>> {
            self.0.stat(rel)
        }
        fn list(&self, rel: &str) -> Result<Vec<Entry>> {
            self.0.list(rel)
        }
        fn open(&self, rel: &str) -> Result<Blob> {
            self.0.open(rel)
        }
        fn read_capped(&self, rel: &str, cap: u64) -> Result<Vec<u8>> {
            self.0.read_capped(rel, cap)
        }
        fn stage(&self, rel: &str, mode: u32) -> Result<(Box<dyn Stage>, File)> {
            self.0.stage(rel, mode)
        }
        fn mkdir(&self, rel: &str, mode: u32) -> Result<()> {
            self.0.mkdir(rel, mode)
        }
        fn remove_dir(&self, rel: &str) -> Result<()> {
            self.0.remove_dir(rel)
        }
        fn remove_file(&self, rel: &str) -> Result<()> {
            self.0.remove_file(rel)
        }
        fn rename(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
            self.0.rename(from, to, noreplace)
        }
        fn set_times(&self, rel: &str, a: Option<SetTime>, m: Option<SetTime>) -> Result<()> {
            self.0.set_times(rel, a, m)
        }
        fn usage(&self) -> Result<Usage> {
            self.0.usage()
        }
    }
    let local = Store::open(root).expect("a store");
    Store {
        backend: Box::new(NotLocal(
            super::dir::Gate::open(root).expect("a store"),
            root.to_path_buf(),
        )),
        root: PathBuf::from("remote://"),
        chunk_log2: local.chunk_log2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_made_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), 16).unwrap();
        assert_eq!(store.id().unwrap(), None);
        let id = store.ensure_id().unwrap();
        assert_eq!(id.len(), ID_LEN);
        assert_eq!(store.ensure_id().unwrap(), id, "kept");
        let reopened = Store::open(&dir.path().join("s")).unwrap();
        assert_eq!(reopened.id().unwrap().as_deref(), Some(id.as_str()));
        std::fs::write(dir.path().join("s/.tvault/store-id"), "../../etc\n").unwrap();
        assert!(matches!(store.id(), Err(StoreError::BadConfig { .. })));
        assert!(store.ensure_id().is_err(), "a damaged id is not replaced");
    }

    #[test]
    fn meta_directories() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), 16).unwrap();
        assert!(store.list_meta("audit").unwrap().is_empty());
        store.local_meta_dir("audit").unwrap();
        store
            .write_meta_with("audit/a.jsonl", 0o600, |f| {
                f.write_all(b"x\n").map_err(|source| StoreError::Io {
                    path: "a".into(),
                    source,
                })
            })
            .unwrap();
        let names: Vec<String> = store
            .list_meta("audit")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a.jsonl"]);
        let blob = store.open_meta("audit/a.jsonl").unwrap();
        assert_eq!(crate::container::Source::size(&blob).unwrap(), 2);
    }
}
