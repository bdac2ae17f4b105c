//! Checking a chain across log files: every line, its link to the line before, the file
//! boundaries and the head record (the rules are in docs/FORMAT.md, "Verifying").

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::files::{for_each_line_in, open_for_reading, RawLine};
use super::head::HeadRecord;
use super::line::{check_line_form, LineError};
use super::{line_hash, EventKind, MAX_LINE};

/// How the checked chain begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Start {
    /// No entries at all.
    Empty,
    /// Seq 1 under a fresh anchor: nothing is missing before it.
    Beginning,
    /// A `rotate` entry whose previous file was not given: rotated out (only
    /// `KEEP_ROTATED` files are kept), or not passed (`--rotated`). The entries before
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
    /// The `prev` of the first entry: a chain's random anchor, or the last hash of a file not
    /// given.
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
        why: ChainError,
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

/// Why the chain breaks at a line.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("incomplete line (no newline at the end of the file)")]
    Incomplete,
    #[error("empty line")]
    Empty,
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    /// The line itself is not a valid entry.
    #[error(transparent)]
    Line(#[from] LineError),
    #[error(
        "a file after the first must start with its rotate entry; lines are missing or the \
         files are out of order"
    )]
    NoRotateEntry,
    /// A `rotate` entry that starts a new chain, in the middle of the files checked.
    #[error(
        "the chain was restarted here ({reason}: {}): the writer found the log before it \
         broken, so the entries before this line are not vouched for; check the earlier file \
         alone to see where it breaks",
        detail.as_deref().unwrap_or("no detail")
    )]
    Restarted {
        reason: String,
        detail: Option<String>,
    },
    #[error(
        "prev does not match the hash of the line before: a line was inserted, deleted or \
         moved before this one (or the files are out of order){}",
        if *at_boundary { " at this file boundary" } else { "" }
    )]
    PrevMismatch { at_boundary: bool },
    #[error("seq {seq} does not follow {last}")]
    SeqGap { seq: u64, last: u64 },
    /// The first line is neither seq 1 nor a `rotate` entry.
    #[error(
        "the chain starts at seq {seq} with a {} entry: the lines before it are missing",
        event.as_str()
    )]
    StartsLate { seq: u64, event: EventKind },
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
    verify_with(
        paths,
        |path| open_for_reading(path).map(|f| Box::new(f) as Box<dyn Read>),
        key,
        expect,
        head,
    )
}

/// [`verify`] with each file read through `open` (for logs kept in a store that is not a
/// local directory); `paths` name the files in order and in messages.
pub fn verify_with(
    paths: &[PathBuf],
    mut open: impl FnMut(&Path) -> io::Result<Box<dyn Read>>,
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
        let source = open(path).map_err(|source| VerifyError::Io {
            path: path.clone(),
            source,
        })?;
        for_each_line_in(source, |raw| {
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
) -> Result<(u64, String), ChainError> {
    if !raw.terminated {
        return Err(ChainError::Incomplete);
    }
    if raw.bytes.is_empty() {
        return Err(ChainError::Empty);
    }
    if raw.bytes.len() > MAX_LINE {
        return Err(ChainError::TooLong);
    }
    let entry = check_line_form(key, raw.bytes)?;
    match (&report.last_hash, report.last_seq) {
        (Some(last_hash), Some(last_seq)) => {
            if starts_later_file && entry.event != EventKind::Rotate {
                return Err(ChainError::NoRotateEntry);
            }
            if entry.prev != *last_hash {
                if let Some(reason) = restart_reason(entry.reason.as_deref()) {
                    return Err(ChainError::Restarted {
                        reason: reason.to_string(),
                        detail: entry.detail,
                    });
                }
                return Err(ChainError::PrevMismatch {
                    at_boundary: starts_later_file,
                });
            }
            if entry.seq != last_seq.wrapping_add(1) {
                return Err(ChainError::SeqGap {
                    seq: entry.seq,
                    last: last_seq,
                });
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
                return Err(ChainError::StartsLate {
                    seq: entry.seq,
                    event: entry.event,
                });
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
mod tests;
