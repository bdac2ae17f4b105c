//! Mirroring a local log into a store that cannot hold an appended file (object storage):
//! the log and its rotated files are written whole, through the store, under the same names
//! in `.tvault/audit/`. Only complete lines are copied, so a mirrored file always ends on a
//! line boundary; a file is sent again only when it changed, and a name the local log no
//! longer has is removed from the store. The daemon calls [`Mirror::sync`] every
//! [`MIRROR_INTERVAL`] while it runs, after a rotation and at unmount.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::files::{open_for_reading, rotated_name};
use super::key::suffixed;
use super::{io_err, AuditError, KEEP_ROTATED};
use crate::store::{Store, StoreError};
use crate::sync::lock;

/// How often a running daemon mirrors its log.
pub const MIRROR_INTERVAL: Duration = Duration::from_secs(10);

/// What was last sent under one name: the local file (device, inode) and the bytes sent.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Sent {
    dev: u64,
    ino: u64,
    len: u64,
}

pub struct Mirror {
    local: PathBuf,
    /// The log's name inside `.tvault/`, e.g. `audit/HOST.jsonl`.
    remote: String,
    /// By rotation number (0: the current file).
    sent: Mutex<HashMap<u32, Sent>>,
}

impl Mirror {
    pub fn new(local: PathBuf, remote: String) -> Mirror {
        Mirror {
            local,
            remote,
            sent: Mutex::new(HashMap::new()),
        }
    }

    pub fn local(&self) -> &Path {
        &self.local
    }

    /// Brings the store's copy up to date; returns how many files were written. Rotated
    /// files go first, oldest first, so that a reader never finds a current file whose
    /// predecessor is older than it.
    pub fn sync(&self, store: &Store) -> Result<usize, AuditError> {
        let mut sent = lock(&self.sent);
        let remote_dir = self.remote.rsplit_once('/').map_or("", |(d, _)| d);
        let present: Vec<String> = store
            .list_meta(remote_dir)?
            .into_iter()
            .map(|e| e.name)
            .collect();
        let mut written = 0;
        for n in (0..=KEEP_ROTATED).rev() {
            let (local, remote) = if n == 0 {
                (self.local.clone(), self.remote.clone())
            } else {
                (
                    rotated_name(&self.local, n),
                    suffixed(Path::new(&self.remote), &format!(".{n}"))
                        .to_string_lossy()
                        .into_owned(),
                )
            };
            let file = match open_for_reading(&local) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    sent.remove(&n);
                    let name = remote.rsplit('/').next().unwrap_or(&remote);
                    if present.iter().any(|p| p == name) {
                        match store.remove_meta(&remote) {
                            Err(e) if !e.is_not_found() => return Err(e.into()),
                            _ => {}
                        }
                    }
                    continue;
                }
                Err(e) => return Err(io_err(&local)(e)),
            };
            let meta = file.metadata().map_err(io_err(&local))?;
            let now = Sent {
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
            };
            if sent.get(&n) == Some(&now) {
                continue;
            }
            let copied = copy_lines(store, &remote, file, &local)?;
            sent.insert(n, Sent { len: copied, ..now });
            written += 1;
        }
        Ok(written)
    }
}

/// Writes the complete lines of `file` to `.tvault/REMOTE`, atomically; returns their length.
fn copy_lines(
    store: &Store,
    remote: &str,
    mut file: File,
    local: &Path,
) -> Result<u64, AuditError> {
    let mut last_newline = 0u64;
    let mut local_error = None;
    let written = store.write_meta_with(remote, 0o600, |out| {
        let path = store.meta_display(remote);
        let to_store = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut buf = vec![0u8; 1 << 16];
        let mut at = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    local_error = Some(e);
                    return Err(to_store(io::Error::other("reading the local log failed")));
                }
            };
            if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
                last_newline = at + i as u64 + 1;
            }
            out.write_all(&buf[..n]).map_err(to_store)?;
            at += n as u64;
        }
        if at != last_newline {
            // A line being appended right now: it goes with the next sync.
            out.set_len(last_newline).map_err(to_store)?;
            out.seek(SeekFrom::Start(last_newline)).map_err(to_store)?;
        }
        Ok(())
    });
    if let Some(e) = local_error {
        return Err(io_err(local)(e));
    }
    written?;
    Ok(last_newline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testutil::open_event;
    use crate::audit::AuditLog;
    use std::fs;

    fn store_file(root: &Path, name: &str) -> Option<String> {
        fs::read_to_string(root.join(".tvault/audit").join(name)).ok()
    }

    #[test]
    fn the_store_copy_follows_the_log_and_its_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::init(&root, 16).unwrap();
        store.create_meta_dir("audit").unwrap();
        let local = dir.path().join("local/h.jsonl");
        fs::create_dir(dir.path().join("local")).unwrap();
        let key = dir.path().join("keys/h.key");
        let log = AuditLog::open(&local, &key, Some(2000)).unwrap();
        let mirror = Mirror::new(local.clone(), "audit/h.jsonl".into());
        log.record(&open_event(1)).unwrap();
        assert_eq!(mirror.sync(&store).unwrap(), 1);
        assert_eq!(
            store_file(&root, "h.jsonl"),
            fs::read_to_string(&local).ok()
        );
        assert_eq!(
            mirror.sync(&store).unwrap(),
            0,
            "nothing changed, nothing sent"
        );

        // A partial line at the end (an append in progress) is not copied.
        let mut raw = fs::OpenOptions::new().append(true).open(&local).unwrap();
        raw.write_all(b"{\"time\":\"20").unwrap();
        assert_eq!(mirror.sync(&store).unwrap(), 1);
        assert!(store_file(&root, "h.jsonl").unwrap().ends_with("}\n"));
        let whole = fs::read_to_string(&local).unwrap();
        fs::write(&local, &whole[..whole.len() - 11]).unwrap();

        // Rotations: every rotated file arrives, under the same names, and the copy verifies.
        for i in 0..40 {
            log.record(&open_event(i)).unwrap();
        }
        log.rotate().unwrap();
        log.record(&open_event(99)).unwrap();
        mirror.sync(&store).unwrap();
        for n in 1..=KEEP_ROTATED {
            let name = format!("h.jsonl.{n}");
            assert_eq!(
                store_file(&root, &name),
                fs::read_to_string(rotated_name(&local, n)).ok(),
                "{name}"
            );
        }
        log.close().unwrap();
        mirror.sync(&store).unwrap();
        let copies = crate::audit::with_rotated(&root.join(".tvault/audit/h.jsonl"));
        let k = crate::audit::testutil::key_of(&key);
        crate::audit::verify(
            &copies,
            Some(&k),
            None,
            Some(&crate::audit::testutil::head_of(&key)),
        )
        .unwrap();

        // A rotated file gone locally goes from the store too.
        fs::remove_file(rotated_name(&local, KEEP_ROTATED)).unwrap();
        mirror.sync(&store).unwrap();
        assert_eq!(store_file(&root, &format!("h.jsonl.{KEEP_ROTATED}")), None);
        // A fresh mirror (a restarted daemon) removes what the local log lacks.
        fs::write(root.join(".tvault/audit/h.jsonl.5"), "stale\n").unwrap();
        let again = Mirror::new(local.clone(), "audit/h.jsonl".into());
        again.sync(&store).unwrap();
        assert_eq!(store_file(&root, "h.jsonl.5"), None);
    }
}
