//! Reading log files and checking a chain across them.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::key::{suffixed, HeadRecord};
use super::time::digits;
use super::{check_line_form, line_hash, EventKind, KEEP_ROTATED, MAX_LINE};

/// One line of a log file as read: its number (from 1), its bytes without the newline, and
/// whether it ended with a newline (only the last line of a file can lack one).
pub struct RawLine<'a> {
    pub number: u64,
    pub bytes: &'a [u8],
    pub terminated: bool,
}

/// Opens a log for reading. Anyone who can write the store can put a FIFO where a log
/// should be: that must not hang the reader, so only regular files are read.
pub(super) fn open_for_reading(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Calls `f` on every line of `path`. A line longer than [`MAX_LINE`] is passed cut to that
/// length (which fails to parse). Stops early when `f` returns `false`.
pub fn for_each_line(path: &Path, mut f: impl FnMut(RawLine<'_>) -> bool) -> Result<(), io::Error> {
    let file = open_for_reading(path)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::with_capacity(1024);
    let mut number = 0u64;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let terminated = buf.last() == Some(&b'\n');
        if terminated {
            buf.pop();
        } else if buf.len() > MAX_LINE {
            // Skip the rest of the overlong line without holding it in memory.
            reader.skip_until(b'\n')?;
        }
        let keep_going = f(RawLine {
            number,
            bytes: &buf,
            terminated: terminated || buf.len() > MAX_LINE,
        });
        if !keep_going {
            return Ok(());
        }
    }
}

/// The last line of an open log (`size` bytes) and why it is unusable, if it is.
pub(super) fn read_last_line(file: &File, size: u64) -> io::Result<Result<Vec<u8>, String>> {
    let want = size.min(MAX_LINE as u64 + 1);
    let start = size - want;
    let mut buf = vec![0u8; want as usize];
    file.read_exact_at(&mut buf, start)?;
    if buf.last() != Some(&b'\n') {
        return Ok(Err("the last line is incomplete (no newline)".into()));
    }
    buf.pop();
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => Ok(Ok(buf[i + 1..].to_vec())),
        None if start == 0 => Ok(Ok(buf)),
        None => Ok(Err("the last line is too long".into())),
    }
}

pub(super) fn rotated_name(log: &Path, n: u32) -> PathBuf {
    suffixed(log, &format!(".{n}"))
}

/// The rotated files of `log` that exist, oldest first, followed by `log` itself.
pub fn with_rotated(log: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=KEEP_ROTATED)
        .rev()
        .map(|n| rotated_name(log, n))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    out.push(log.to_path_buf());
    out
}

/// The log a file belongs to: `LOG` for a rotated `LOG.N` (N from 1 to [`KEEP_ROTATED`]),
/// else the file itself.
pub fn base_log(file: &Path) -> PathBuf {
    let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
        return file.to_path_buf();
    };
    match name.rsplit_once('.') {
        Some((base, n))
            if !base.is_empty() && digits(n).is_some_and(|n| (1..=KEEP_ROTATED).contains(&n)) =>
        {
            file.with_file_name(base)
        }
        _ => file.to_path_buf(),
    }
}

/// How the checked chain begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Start {
    /// No entries at all.
    Empty,
    /// Seq 1 under a fresh log id: nothing is missing before it.
    Beginning,
    /// A `rotate` entry whose previous file was not given: rotated out (only
    /// [`KEEP_ROTATED`] files are kept), or not passed (`--rotated`). The entries before
    /// `seq` are not checked.
    Rotated { seq: u64 },
    /// The writer found the chain before this one broken (`reason`: `corrupt-tail`,
    /// `missing-log`) and started a new one; what came before is not vouched for.
    Restarted {
        seq: u64,
        reason: String,
        detail: Option<String>,
    },
}

/// The chain against the head record (the writer's last synced entry, kept beside the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum HeadCheck {
    /// No head record was given.
    None,
    /// The recorded entry is in the chain, with the recorded hash.
    Matched { seq: u64 },
    /// The recorded entry is older than the files given: not checked.
    Earlier { seq: u64 },
}

/// Where a verified chain stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Lines checked, over all files.
    pub entries: u64,
    /// Events they stand for (a counted line stands for its `count`).
    pub events: u64,
    pub files: usize,
    /// Whether every line's MAC was checked (false: no key, the hash chain only).
    pub authenticated: bool,
    pub start: Start,
    /// `seq` of the first and the last entry.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Hash of the last line; `None` if there were no entries.
    pub last_hash: Option<String>,
    /// The `prev` of the first entry: the log id, or the last hash of a file not given.
    pub anchor: Option<String>,
    /// Where the expected hash was found (file, line), if one was given.
    pub expected_at: Option<(PathBuf, u64)>,
    pub head: HeadCheck,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{}, line {line}: {why}", file.display())]
    Broken {
        file: PathBuf,
        line: u64,
        why: String,
    },
    #[error(
        "the expected hash {expected} is not in the log (it ends at {}): \
         entries were cut off the end, or the log was replaced",
        last_hash.as_deref().unwrap_or("no entries")
    )]
    Truncated {
        expected: String,
        last_hash: Option<String>,
    },
    #[error(
        "the log ends at seq {} but the writer's head record says it reached seq {seq} \
         (hash {hash}): entries were cut off the end, or the log was replaced by an older copy",
        last_seq.map_or_else(|| "0 (no entries)".to_string(), |s| s.to_string())
    )]
    BehindHead {
        seq: u64,
        hash: String,
        last_seq: Option<u64>,
    },
    #[error(
        "{}, line {line}: seq {seq} has hash {found}, but the writer's head record says \
         {expected}: the log was replaced by another chain",
        file.display()
    )]
    HeadMismatch {
        file: PathBuf,
        line: u64,
        seq: u64,
        expected: String,
        found: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no log files given")]
    NoFiles,
}

/// Reasons of `rotate` entries that start a new chain rather than continue one.
fn restart_reason(reason: Option<&str>) -> Option<&str> {
    reason.filter(|r| matches!(*r, "corrupt-tail" | "missing-log"))
}

/// Checks `paths` (oldest first) as one chain: every line parses, is canonical, carries a
/// valid MAC under `key` (with `key` `None`: a well-formed one, unchecked), has `seq` one
/// more than the line before and `prev` equal to its hash; a later file must start with the
/// `rotate` entry linking to the previous file; the chain must start at seq 1 or with a
/// `rotate` entry (older files dropped, or a restart). Returns the first broken line.
///
/// With `expect` (a last hash recorded earlier), that hash must occur in the chain. With
/// `head` (the writer's head record), the chain must reach its seq with its hash, unless
/// that entry is older than the files given. Both detect lines cut off the end.
pub fn verify(
    paths: &[PathBuf],
    key: Option<&[u8]>,
    expect: Option<&str>,
    head: Option<&HeadRecord>,
) -> Result<VerifyReport, VerifyError> {
    if paths.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    let expect = expect.map(|h| h.trim().to_ascii_lowercase());
    let mut report = VerifyReport {
        entries: 0,
        events: 0,
        files: paths.len(),
        authenticated: key.is_some(),
        start: Start::Empty,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        anchor: None,
        expected_at: None,
        head: HeadCheck::None,
    };
    for (index, path) in paths.iter().enumerate() {
        let mut broken: Option<VerifyError> = None;
        let mut first_in_file = true;
        for_each_line(path, |raw| {
            let checked = check_line(key, &raw, index > 0 && first_in_file, &mut report);
            first_in_file = false;
            let (seq, hash) = match checked {
                Ok(found) => found,
                Err(why) => {
                    broken = Some(VerifyError::Broken {
                        file: path.clone(),
                        line: raw.number,
                        why,
                    });
                    return false;
                }
            };
            if expect.as_deref() == Some(hash.as_str())
                || (report.entries == 1 && expect.as_deref() == report.anchor.as_deref())
            {
                report.expected_at = Some((path.clone(), raw.number));
            }
            if let Some(h) = head.filter(|h| h.seq == seq) {
                if h.hash != hash {
                    broken = Some(VerifyError::HeadMismatch {
                        file: path.clone(),
                        line: raw.number,
                        seq,
                        expected: h.hash.clone(),
                        found: hash,
                    });
                    return false;
                }
                report.head = HeadCheck::Matched { seq };
            }
            true
        })
        .map_err(|source| VerifyError::Io {
            path: path.clone(),
            source,
        })?;
        if let Some(e) = broken {
            return Err(e);
        }
    }
    if let Some(expected) = expect {
        if report.expected_at.is_none() {
            return Err(VerifyError::Truncated {
                expected,
                last_hash: report.last_hash,
            });
        }
    }
    if let Some(h) = head {
        if report.head == HeadCheck::None {
            if report.first_seq.is_some_and(|first| h.seq < first) {
                report.head = HeadCheck::Earlier { seq: h.seq };
            } else if h.seq > 0 {
                return Err(VerifyError::BehindHead {
                    seq: h.seq,
                    hash: h.hash.clone(),
                    last_seq: report.last_seq,
                });
            }
        }
    }
    Ok(report)
}

/// Checks one line against the chain so far and advances it; returns the line's seq and
/// hash.
fn check_line(
    key: Option<&[u8]>,
    raw: &RawLine<'_>,
    starts_later_file: bool,
    report: &mut VerifyReport,
) -> Result<(u64, String), String> {
    if !raw.terminated {
        return Err("incomplete line (no newline at the end of the file)".into());
    }
    if raw.bytes.is_empty() {
        return Err("empty line".into());
    }
    if raw.bytes.len() > MAX_LINE {
        return Err(format!("line longer than {MAX_LINE} bytes"));
    }
    let entry = check_line_form(key, raw.bytes)?;
    match (&report.last_hash, report.last_seq) {
        (Some(last_hash), Some(last_seq)) => {
            if starts_later_file && entry.event != EventKind::Rotate {
                return Err("a file after the first must start with its rotate entry; \
                     lines are missing or the files are out of order"
                    .into());
            }
            if entry.prev != *last_hash {
                if let Some(reason) = restart_reason(entry.reason.as_deref()) {
                    return Err(format!(
                        "the chain was restarted here ({reason}: {}): the writer found the \
                         log before it broken, so the entries before this line are not \
                         vouched for; check the earlier file alone to see where it breaks",
                        entry.detail.as_deref().unwrap_or("no detail")
                    ));
                }
                return Err(format!(
                    "prev does not match the hash of the line before: a line was inserted, \
                     deleted or moved before this one (or the files are out of order){}",
                    if starts_later_file {
                        " at this file boundary"
                    } else {
                        ""
                    }
                ));
            }
            if entry.seq != last_seq.wrapping_add(1) {
                return Err(format!("seq {} does not follow {last_seq}", entry.seq));
            }
        }
        _ => {
            report.start = if entry.event == EventKind::Rotate {
                match restart_reason(entry.reason.as_deref()) {
                    Some(reason) => Start::Restarted {
                        seq: entry.seq,
                        reason: reason.to_string(),
                        detail: entry.detail.clone(),
                    },
                    None => Start::Rotated { seq: entry.seq },
                }
            } else if entry.seq == 1 {
                Start::Beginning
            } else {
                return Err(format!(
                    "the chain starts at seq {} with a {} entry: the lines before it are missing",
                    entry.seq,
                    entry.event.as_str()
                ));
            };
            report.anchor = Some(entry.prev.clone());
            report.first_seq = Some(entry.seq);
        }
    }
    let hash = line_hash(raw.bytes);
    report.entries += 1;
    report.events = report.events.saturating_add(entry.events());
    report.last_seq = Some(entry.seq);
    report.last_hash = Some(hash.clone());
    Ok((entry.seq, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A log written by tvault before `count` and the key outside the store existed.
    const LEGACY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/audit-legacy");

    fn legacy_key() -> Vec<u8> {
        let text = fs::read_to_string(Path::new(LEGACY_DIR).join("legacy.key")).unwrap();
        hex::decode(text.trim()).unwrap()
    }

    #[test]
    fn logs_written_before_counted_lines_still_verify() {
        let log = Path::new(LEGACY_DIR).join("audit.jsonl");
        let files = with_rotated(&log);
        assert_eq!(files.len(), 2);
        let report = verify(&files, Some(&legacy_key()), None, None).unwrap();
        assert_eq!(report.entries, 8);
        assert_eq!(report.events, 8);
        assert_eq!(report.start, Start::Beginning);
        // The newest file alone starts at its rotate entry.
        let report = verify(std::slice::from_ref(&log), Some(&legacy_key()), None, None).unwrap();
        assert_eq!(report.start, Start::Rotated { seq: 6 });
        assert!(verify(&files, Some(&[1u8; 32]), None, None).is_err());
    }

    #[test]
    fn without_a_key_the_hash_chain_is_still_checked() {
        let log = Path::new(LEGACY_DIR).join("audit.jsonl.1");
        let report = verify(std::slice::from_ref(&log), None, None, None).unwrap();
        assert!(!report.authenticated);
        assert_eq!(report.entries, 5);
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("audit.jsonl");
        let text = fs::read_to_string(&log).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        fs::write(&copy, lines.join("\n") + "\n").unwrap();
        match verify(&[copy], None, None, None) {
            Err(VerifyError::Broken { line: 3, why, .. }) => assert!(why.contains("prev"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn head_records_catch_a_cut_tail() {
        let log = Path::new(LEGACY_DIR).join("audit.jsonl.1");
        let key = legacy_key();
        let full = verify(std::slice::from_ref(&log), Some(&key), None, None).unwrap();
        let last = full.last_hash.clone().unwrap();
        let at_end = HeadRecord {
            seq: 5,
            hash: last.clone(),
        };
        let report = verify(std::slice::from_ref(&log), Some(&key), None, Some(&at_end)).unwrap();
        assert_eq!(report.head, HeadCheck::Matched { seq: 5 });
        let ahead = HeadRecord {
            seq: 7,
            hash: "0".repeat(64),
        };
        assert!(matches!(
            verify(std::slice::from_ref(&log), Some(&key), None, Some(&ahead)),
            Err(VerifyError::BehindHead {
                seq: 7,
                last_seq: Some(5),
                ..
            })
        ));
        let other = HeadRecord {
            seq: 3,
            hash: "0".repeat(64),
        };
        assert!(matches!(
            verify(std::slice::from_ref(&log), Some(&key), None, Some(&other)),
            Err(VerifyError::HeadMismatch {
                seq: 3,
                line: 3,
                ..
            })
        ));
        // The newest file alone starts after the recorded entry: not checked, not an error.
        let newest = Path::new(LEGACY_DIR).join("audit.jsonl");
        let report = verify(
            std::slice::from_ref(&newest),
            Some(&key),
            None,
            Some(&at_end),
        )
        .unwrap();
        assert_eq!(report.head, HeadCheck::Earlier { seq: 5 });
    }

    #[test]
    fn rotated_names() {
        assert_eq!(base_log(Path::new("/a/x.jsonl.3")), Path::new("/a/x.jsonl"));
        assert_eq!(base_log(Path::new("/a/x.jsonl")), Path::new("/a/x.jsonl"));
        assert_eq!(
            base_log(Path::new("/a/x.jsonl.2024")),
            Path::new("/a/x.jsonl.2024"),
            "only the suffixes rotation makes"
        );
    }

    #[test]
    fn fifos_and_overlong_lines_do_not_hang_or_exhaust_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(for_each_line(&fifo, |_| true).is_err());
        let long = dir.path().join("long");
        let mut bytes = vec![b'x'; 3 * MAX_LINE];
        bytes.extend_from_slice(b"\n{}\n");
        fs::write(&long, bytes).unwrap();
        let mut seen = Vec::new();
        for_each_line(&long, |raw| {
            seen.push((raw.number, raw.bytes.len()));
            true
        })
        .unwrap();
        assert_eq!(seen, [(1, MAX_LINE + 1), (2, 2)]);
    }
}
