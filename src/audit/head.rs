//! The head record: the `seq` and hash of the last entry the writer synced, kept beside the
//! key (`KEY.head`), where whoever can write the store cannot reach it. The writer and the
//! verifier compare the log with it, which catches a cut tail, a deleted log and a log put
//! back from an older copy.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::key::{check_parent, open_trusted, read_small, suffixed, Trust};
use super::line::is_hex64;
use super::AuditError;

/// The head record is rewritten in place as one block of this many bytes.
const HEAD_LEN: usize = 128;

/// The writer's last synced entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRecord {
    pub seq: u64,
    pub hash: String,
}

/// The head record kept beside a key: the key's path with `.head` appended.
pub fn head_path(key: &Path) -> PathBuf {
    suffixed(key, ".head")
}

/// Parses a head record; `None` for an empty file, and (with a warning) for one that does not
/// parse, which only a crash in the middle of its one write could leave.
fn parse_head(path: &Path, bytes: &[u8]) -> Option<HeadRecord> {
    let text = bytes.trim_ascii();
    if text.is_empty() {
        return None;
    }
    match serde_json::from_slice::<HeadRecord>(text) {
        Ok(head) if is_hex64(&head.hash) => Some(head),
        _ => {
            log::warn!(
                "{}: unreadable head record, ignored (the log is checked without it)",
                path.display()
            );
            None
        }
    }
}

/// Reads a head record for verification ([`Trust::Reader`] rules); `None` if there is none.
pub fn read_head(path: &Path) -> Result<Option<HeadRecord>, AuditError> {
    check_parent(path)?;
    match open_trusted(path, Trust::Reader, false)? {
        Some(file) => Ok(parse_head(path, &read_small(path, &file)?)),
        None => Ok(None),
    }
}

/// The writer's open head record, rewritten in place after each sync.
pub(super) struct Head {
    path: PathBuf,
    file: File,
    /// Seq last stored (it only moves forward).
    stored: u64,
    /// Bytes in the file.
    len: u64,
}

impl Head {
    /// Opens (creating it if needed) the head record for the writer, with the
    /// [`Trust::Writer`] rules of the key, and returns what it holds.
    pub(super) fn open(path: PathBuf) -> Result<(Head, Option<HeadRecord>), AuditError> {
        let file = open_trusted(&path, Trust::Writer, true)?
            .ok_or_else(|| AuditError::KeyNotFile(path.clone()))?;
        let recorded = parse_head(&path, &read_small(&path, &file)?);
        let len = file.metadata().map_err(super::io_err(&path))?.len();
        let head = Head {
            path,
            file,
            stored: recorded.as_ref().map_or(0, |h| h.seq),
            len,
        };
        Ok((head, recorded))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Seq of the last entry recorded (0: none).
    pub(super) fn stored(&self) -> u64 {
        self.stored
    }

    /// Records `(seq, hash)`, an entry already on disk. A failure only weakens later checks,
    /// so it is logged, not returned.
    pub(super) fn store(&mut self, seq: u64, hash: &str) {
        if seq <= self.stored {
            return;
        }
        let record = HeadRecord {
            seq,
            hash: hash.to_string(),
        };
        let mut text = serde_json::to_vec(&record).unwrap_or_default();
        if text.len() < HEAD_LEN - 1 {
            text.resize(HEAD_LEN - 1, b' ');
        }
        text.push(b'\n');
        let len = text.len() as u64;
        let written = self.file.write_all_at(&text, 0).and_then(|()| {
            if self.len != len {
                self.file.set_len(len)?;
            }
            self.file.sync_data()
        });
        match written {
            Ok(()) => {
                self.stored = seq;
                self.len = len;
            }
            Err(e) => log::warn!(
                "{}: cannot update the audit head record: {e}",
                self.path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_one_padded_block_rewritten_in_place() {
        assert_eq!(head_path(Path::new("/k/a.key")), Path::new("/k/a.key.head"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key.head");
        let (mut head, recorded) = Head::open(path.clone()).unwrap();
        assert_eq!((recorded, head.stored()), (None, 0));
        assert_eq!(
            read_head(&path).unwrap(),
            None,
            "an empty file holds no record"
        );
        head.store(12, &"ab".repeat(32));
        head.store(3, &"cd".repeat(32));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), HEAD_LEN);
        let expected = format!("{{\"seq\":12,\"hash\":\"{}\"}}", "ab".repeat(32));
        assert_eq!(
            &bytes[..expected.len()],
            expected.as_bytes(),
            "older seqs are ignored"
        );
        assert!(bytes[expected.len()..HEAD_LEN - 1]
            .iter()
            .all(|&b| b == b' '));
        assert_eq!(bytes[HEAD_LEN - 1], b'\n');
        let record = read_head(&path).unwrap().unwrap();
        assert_eq!((record.seq, record.hash), (12, "ab".repeat(32)));
        let (reopened, recorded) = Head::open(path.clone()).unwrap();
        assert_eq!((recorded.map(|h| h.seq), reopened.stored()), (Some(12), 12));
        // A record cut by a crash mid-write is ignored, not trusted.
        std::fs::write(&path, b"{\"seq\":12,\"ha").unwrap();
        assert_eq!(read_head(&path).unwrap(), None);
        std::fs::write(
            &path,
            format!("{{\"seq\":1,\"hash\":\"{}\"}}", "AB".repeat(32)),
        )
        .unwrap();
        assert_eq!(read_head(&path).unwrap(), None, "hashes are lowercase hex");
    }
}
