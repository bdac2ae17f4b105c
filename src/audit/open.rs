//! Opening a log for writing: what to do with whatever lies at the log's path.
//!
//! A symbolic link, or a file owned by another uid, at the log's path (what anyone who can
//! write the store could plant) is never written to: it is moved aside like a corrupt tail.
//! Any other non-regular file is refused. An existing log continues its chain if its last
//! line verifies under the key and is not behind the head record; otherwise it is moved to
//! `LOG.1` and a new chain starts with a `rotate` entry whose reason is `corrupt-tail`. An
//! empty log where the head record says the chain had entries continues from `LOG.1` if that
//! ends where the head says (reason `resumed`: a crash between the two steps of a rotation),
//! and otherwise starts a new chain (`missing-log`). A new chain numbers on from the head
//! record, so an older copy can never pass for a newer one.

use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use super::files::{open_for_reading, read_last_line, rotated_name, with_rotated};
use super::head::HeadRecord;
use super::key;
use super::rotate::{fresh_anchor, rotate_event, RotateReason};
use super::writer::{Shared, State};
use super::{io_err, line_hash, verify_line, AuditError, Entry, EventKind, KEEP_ROTATED};
use crate::system::{euid, free_space};

/// Why the log found at open cannot be continued, and what starts instead.
pub(super) type Problem = (RotateReason, String);

pub(super) fn log_dir(log: &Path) -> &Path {
    match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

pub(super) enum Opened {
    File(File),
    /// Something a store writer may have planted: move it aside, never write to it.
    Planted(String),
}

/// The last component of `path` (a log or one of its rotated files), to use inside `dir`.
pub(super) fn file_name(path: &Path) -> &std::ffi::OsStr {
    path.file_name().unwrap_or(path.as_os_str())
}

/// Opens the log's directory, following links in the path the administrator gave.
pub(super) fn open_dir(path: &Path) -> Result<OwnedFd, AuditError> {
    let dir = log_dir(path);
    rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io_err(dir)(e.into()))
}

/// Opens (creating) the log file `path`, by name inside `dir`, never through a link.
pub(super) fn open_log_file(dir: &OwnedFd, path: &Path) -> Result<Opened, AuditError> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDWR
        | OFlags::APPEND
        | OFlags::CREATE
        | OFlags::NOFOLLOW
        | OFlags::NONBLOCK
        | OFlags::NOCTTY
        | OFlags::CLOEXEC;
    let file = match rustix::fs::openat(dir, file_name(path), flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::LOOP) => return Ok(Opened::Planted("it is a symbolic link".into())),
        Err(e) => return Err(io_err(path)(e.into())),
    };
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(AuditError::UnsafeLog {
            path: path.to_path_buf(),
            why: "it is not a regular file (remove it, or choose another --audit-log)",
        });
    }
    if meta.uid() != euid() {
        return Ok(Opened::Planted(format!(
            "it is owned by uid {}, not by the writer (uid {})",
            meta.uid(),
            euid()
        )));
    }
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Opened::File(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(AuditError::InUse(path.to_path_buf())),
        Err(e) => Err(io_err(path)(e.into())),
    }
}

/// The last entry of a log file and its hash, if that line verifies under `key`.
fn verified_tail(path: &Path, key: &[u8]) -> Option<(Entry, String)> {
    let file = open_for_reading(path).ok()?;
    let size = file.metadata().ok()?.len();
    if size == 0 {
        return None;
    }
    let line = read_last_line(&file, size).ok()?.ok()?;
    let entry = verify_line(key, &line).ok()?;
    Some((entry, line_hash(&line)))
}

/// Why a log ending at `entry` (hash `hash`) is behind the head record, if it is. An entry
/// after the recorded one is fine: it was written after the last sync, before a crash.
fn behind_head(entry: &Entry, hash: &str, head: Option<&HeadRecord>) -> Option<String> {
    let head = head?;
    (entry.seq < head.seq || (entry.seq == head.seq && hash != head.hash)).then(|| {
        format!(
            "the log ends at seq {} but the head record says the chain reached seq {} (hash \
             {}): entries were cut off the end, or the log was replaced by an older copy",
            entry.seq, head.seq, head.hash
        )
    })
}

fn warn_about_legacy_keys(log: &Path, key_path: &Path) {
    for legacy in key::legacy_key_paths(log) {
        if legacy != key_path && legacy.symlink_metadata().is_ok() {
            log::warn!(
                "{}: this audit key beside the log is not used: anyone who can write there could \
                 have planted it. The log's key is {}; if {} is the genuine key of an older \
                 tvault and its chain should go on, move it there (owned by the daemon's user, \
                 mode 0600) before mounting",
                legacy.display(),
                key_path.display(),
                legacy.display()
            );
        }
    }
}

fn warn_if_space_is_short(log: &Path, max_size: u64) {
    let Some(free) = free_space(log_dir(log)) else {
        return;
    };
    let held: u64 = with_rotated(log)
        .iter()
        .filter_map(|f| fs::symlink_metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bound = max_size.saturating_mul(u64::from(KEEP_ROTATED) + 1);
    if free.saturating_add(held) < bound {
        log::warn!(
            "{}: the audit log may grow to {bound} bytes ({} files of {max_size}), but only \
             {free} bytes are free there: once the disk is full, opens are refused. Lower \
             --audit-max-size or free space",
            log.display(),
            KEEP_ROTATED + 1
        );
    }
}

/// Warnings about the setting the log is opened in; none of them stops the writer.
pub(super) fn warn_about_setting(path: &Path, key_path: &Path, max_size: u64) {
    warn_about_legacy_keys(path, key_path);
    warn_if_space_is_short(path, max_size);
    if fs::symlink_metadata(log_dir(path)).is_ok_and(|m| m.file_type().is_symlink()) {
        log::warn!(
            "{}: the audit log's directory is a symbolic link; the log is written where it \
             points, and checked against the key and head record of this path",
            log_dir(path).display()
        );
    }
}

/// Opens what lies at the log's path and fills `st` to continue its chain; returns why it
/// cannot be continued, if it cannot (then [`Shared::start_over`] must run next).
pub(super) fn take_over(
    dir: &OwnedFd,
    path: &Path,
    key: &[u8],
    recorded: Option<&HeadRecord>,
    head_path: &Path,
    st: &mut State,
) -> Result<Option<Problem>, AuditError> {
    let file = match open_log_file(dir, path)? {
        Opened::Planted(why) => return Ok(Some((RotateReason::CorruptTail, why))),
        Opened::File(file) => file,
    };
    let meta = file.metadata().map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        log::warn!(
            "{}: audit log has mode {mode:03o}; 600 is recommended",
            path.display()
        );
    }
    let mut problem = None;
    st.size = meta.len();
    if st.size > 0 {
        // The reason becomes the detail of the new chain's rotate entry: text from here on.
        let tail = read_last_line(&file, st.size)
            .map_err(io_err(path))?
            .map_err(|e| e.to_string())
            .and_then(|line| match verify_line(key, &line) {
                Ok(entry) => Ok((entry, line_hash(&line))),
                Err(e) => Err(e.to_string()),
            });
        match tail {
            Ok((entry, hash)) => match behind_head(&entry, &hash, recorded) {
                Some(why) => problem = Some((RotateReason::CorruptTail, why)),
                None => {
                    st.seq = entry.seq;
                    st.last_hash = hash;
                    st.events_in_file = u64::from(entry.event != EventKind::Rotate);
                    st.last_time = entry.parsed_time();
                }
            },
            Err(why) => problem = Some((RotateReason::CorruptTail, why)),
        }
    } else if let Some(head) = recorded.filter(|h| h.seq > 0) {
        let previous = rotated_name(path, 1);
        match verified_tail(&previous, key) {
            Some((entry, hash)) if behind_head(&entry, &hash, Some(head)).is_none() => {
                st.seq = entry.seq;
                st.last_hash = hash;
                st.last_time = entry.parsed_time();
                st.opening = Some(rotate_event(
                    RotateReason::Resumed,
                    format!("previous file: {}", previous.display()),
                ));
            }
            _ => {
                problem = Some((
                    RotateReason::MissingLog,
                    format!(
                        "the log is empty, but the head record {} says its chain reached seq \
                         {} (hash {}): the log was deleted or replaced",
                        head_path.display(),
                        head.seq,
                        head.hash
                    ),
                ))
            }
        }
    } else {
        st.last_hash = fresh_anchor()?;
    }
    st.file = Some(Arc::new(file));
    Ok(problem)
}

impl Shared {
    /// Starts a new chain after [`take_over`] found a problem: the broken file is moved aside
    /// (an empty one is kept), and the new chain numbers on from the head record's `stored`
    /// seq.
    pub(super) fn start_over(
        &self,
        st: &mut State,
        (reason, why): Problem,
        stored: u64,
    ) -> Result<(), AuditError> {
        log::warn!(
            "{}: {why}; moving it aside and starting a new chain ({})",
            self.path.display(),
            reason.code()
        );
        st.seq = stored;
        if reason == RotateReason::MissingLog {
            st.last_hash = fresh_anchor()?;
            st.opening = Some(rotate_event(reason, why));
            Ok(())
        } else {
            st.broken_tail = Some(why);
            self.switch_file(st, RotateReason::CorruptTail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testutil::*;
    use crate::audit::{verify, AuditLog, Start, VerifyError};

    #[test]
    fn corrupt_tail_starts_a_new_file() {
        let (_dir, log, key) = setup();
        write_log(&log, &key, 3);
        let mut all = lines(&log);
        all[2] = all[2].replace("user2", "userX");
        put_lines(&log, &all);
        let audit = AuditLog::open(&log, &key, None).unwrap();
        audit.record(&open_event(5)).unwrap();
        audit.close().unwrap();
        let moved = rotated_name(&log, 1);
        assert_eq!(lines(&moved), all);
        let fresh = lines(&log);
        assert_eq!(fresh.len(), 2);
        assert!(fresh[0].contains("\"reason\":\"corrupt-tail\""));
        let k = key_of(&key);
        let report = verify(std::slice::from_ref(&log), Some(&k), None, None).unwrap();
        assert_eq!(report.entries, 2);
        assert!(
            matches!(report.start, Start::Restarted { ref reason, .. } if reason == "corrupt-tail")
        );
        let (file, line, _) =
            broken_at(verify(&[moved.clone(), log.clone()], Some(&k), None, None));
        assert_eq!((file, line), (moved, 3));

        // A partial last line (a crash mid-write) is handled the same way.
        let mut bytes = fs::read(&log).unwrap();
        bytes.extend_from_slice(b"{\"time\":\"20");
        fs::write(&log, bytes).unwrap();
        let audit = AuditLog::open(&log, &key, None).unwrap();
        audit.close().unwrap();
        assert_eq!(lines(&log).len(), 1);
        verify(std::slice::from_ref(&log), Some(&k), None, None).unwrap();
        assert!(rotated_name(&log, 2).exists());
    }

    #[test]
    fn planted_links_and_files_are_moved_aside_never_written() {
        let (dir, log, key) = setup();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious\n").unwrap();
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let audit = AuditLog::open(&log, &key, None).unwrap();
        audit.record(&open_event(1)).unwrap();
        audit.close().unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        let moved = rotated_name(&log, 1);
        assert!(fs::symlink_metadata(&moved)
            .unwrap()
            .file_type()
            .is_symlink());
        let fresh = entries(&log);
        assert_eq!(fresh[0].reason.as_deref(), Some("corrupt-tail"));
        assert!(fresh[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("symbolic link"));
        let report = verify(std::slice::from_ref(&log), Some(&key_of(&key)), None, None).unwrap();
        assert!(
            matches!(report.start, Start::Restarted { .. }),
            "{report:?}"
        );

        // A link to a file that does not exist does not create it.
        let (dir, log, key) = setup();
        let target = dir.path().join("created-through-the-link");
        std::os::unix::fs::symlink(&target, &log).unwrap();
        AuditLog::open(&log, &key, None).unwrap().close().unwrap();
        assert!(!target.exists());

        // A FIFO is refused with a message, not opened.
        let (_dir, log, key) = setup();
        let c = std::ffi::CString::new(log.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            AuditLog::open(&log, &key, None),
            Err(AuditError::UnsafeLog { .. })
        ));

        // A log owned by another uid (planted by whoever can write the store) is moved aside.
        if euid() == 0 {
            let (_dir, log, key) = setup();
            fs::write(&log, "{\"forged\":true}\n").unwrap();
            std::os::unix::fs::chown(&log, Some(1004), None).unwrap();
            AuditLog::open(&log, &key, None).unwrap().close().unwrap();
            assert_eq!(
                fs::read_to_string(rotated_name(&log, 1)).unwrap(),
                "{\"forged\":true}\n"
            );
            let fresh = entries(&log);
            assert!(fresh[0].detail.as_deref().unwrap().contains("uid 1004"));
        }
    }

    #[test]
    fn the_head_record_catches_cut_tails_old_copies_and_deleted_logs() {
        let (_dir, log, key) = setup();
        write_log(&log, &key, 5);
        let k = key_of(&key);
        let head = head_of(&key);
        assert_eq!(head.seq, 5);
        let report = verify(std::slice::from_ref(&log), Some(&k), None, Some(&head)).unwrap();
        assert_eq!(report.head, crate::audit::HeadCheck::Matched { seq: 5 });

        // A cut tail: the verifier and the next writer both notice.
        let orig = lines(&log);
        put_lines(&log, &orig[..3]);
        assert!(matches!(
            verify(std::slice::from_ref(&log), Some(&k), None, Some(&head)),
            Err(VerifyError::BehindHead {
                seq: 5,
                last_seq: Some(3),
                ..
            })
        ));
        let audit = AuditLog::open(&log, &key, None).unwrap();
        audit.record(&open_event(9)).unwrap();
        audit.close().unwrap();
        assert_eq!(lines(&rotated_name(&log, 1)), orig[..3]);
        let fresh = entries(&log);
        assert_eq!(fresh[0].reason.as_deref(), Some("corrupt-tail"));
        assert_eq!(fresh[0].seq, 6, "numbering goes on from the head record");
        let report = verify(
            std::slice::from_ref(&log),
            Some(&k),
            None,
            Some(&head_of(&key)),
        )
        .unwrap();
        assert!(matches!(report.start, Start::Restarted { seq: 6, .. }));
        assert_eq!(report.head, crate::audit::HeadCheck::Matched { seq: 7 });

        // An older genuine file put back in place (a rename keeps its owner) is caught too.
        fs::rename(rotated_name(&log, 1), &log).unwrap();
        AuditLog::open(&log, &key, None).unwrap().close().unwrap();
        let fresh = entries(&log);
        assert_eq!(fresh[0].reason.as_deref(), Some("corrupt-tail"));
        assert!(fresh[0].detail.as_deref().unwrap().contains("older copy"));
        assert_eq!(fresh[0].seq, 8);

        // A deleted log starts a new chain that says so.
        fs::remove_file(&log).unwrap();
        AuditLog::open(&log, &key, None).unwrap().close().unwrap();
        let fresh = entries(&log);
        assert_eq!(fresh[0].reason.as_deref(), Some("missing-log"));
        assert_eq!(fresh[0].seq, 9);
        let report = verify(std::slice::from_ref(&log), Some(&k), None, None).unwrap();
        assert!(matches!(report.start, Start::Restarted { .. }));

        // A crash between the two steps of a rotation (LOG moved to LOG.1, the new LOG still
        // empty) resumes the chain.
        fs::rename(&log, rotated_name(&log, 1)).unwrap();
        fs::write(&log, "").unwrap();
        let audit = AuditLog::open(&log, &key, None).unwrap();
        audit.record(&open_event(10)).unwrap();
        audit.close().unwrap();
        let fresh = entries(&log);
        assert_eq!(fresh[0].reason.as_deref(), Some("resumed"));
        let both = [rotated_name(&log, 1), log.clone()];
        let report = verify(&both, Some(&k), None, Some(&head_of(&key))).unwrap();
        assert_eq!(report.last_seq, Some(11));
    }
}
