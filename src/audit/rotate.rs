//! Rotation and the size limit of a log.
//!
//! Before a line would take the file past `max_size`, or on [`AuditLog::rotate`] (SIGHUP),
//! `LOG.4` → `LOG.5`, …, `LOG` → `LOG.1` (the old `LOG.5` is dropped; [`KEEP_ROTATED`] files
//! are kept) and a new `LOG` starts with a `rotate` entry linking to the last hash of `LOG.1`.
//! The log therefore never takes more than `6 × max_size`; by default `max_size` is
//! [`DEFAULT_MAX_SIZE`], or a 16th of the space free on the log's filesystem at open if that
//! is less (at least [`MIN_DEFAULT_MAX_SIZE`]). A file whose chain cannot go on (a corrupt
//! tail) is rotated the same way, but the new file starts a new chain.
//!
//! [`AuditLog::rotate`]: super::AuditLog::rotate

use std::path::Path;
use std::sync::Arc;

use super::files::rotated_name;
use super::open::{file_name, log_dir, open_log_file, Opened};
use super::writer::{Shared, State};
use super::{io_err, AuditError, Event, EventKind, KEEP_ROTATED};
use crate::crypto;
use crate::system::free_space;

/// The default size at which a log file is rotated.
pub const DEFAULT_MAX_SIZE: u64 = 64 << 20;
/// The default size never goes below this, however little space is free.
pub const MIN_DEFAULT_MAX_SIZE: u64 = 64 << 10;
/// By default one file may take this fraction of the free space found at open, so the six
/// files kept take at most 6/16 of it.
const FREE_SPACE_SHARE: u64 = 16;

/// The default `max_size` for a log in `dir`: [`DEFAULT_MAX_SIZE`], or a 16th of the space
/// free there if that is less, but at least [`MIN_DEFAULT_MAX_SIZE`].
pub fn default_max_size(dir: &Path) -> u64 {
    free_space(dir).map_or(DEFAULT_MAX_SIZE, |free| {
        (free / FREE_SPACE_SHARE).clamp(MIN_DEFAULT_MAX_SIZE, DEFAULT_MAX_SIZE)
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RotateReason {
    MaxSize,
    Requested,
    CorruptTail,
    MissingLog,
    Resumed,
}

impl RotateReason {
    pub(super) fn code(self) -> &'static str {
        match self {
            RotateReason::MaxSize => "max-size",
            RotateReason::Requested => "requested",
            RotateReason::CorruptTail => "corrupt-tail",
            RotateReason::MissingLog => "missing-log",
            RotateReason::Resumed => "resumed",
        }
    }
}

pub(super) fn rotate_event(reason: RotateReason, detail: String) -> Event {
    Event::from_pid(EventKind::Rotate, std::process::id())
        .reason(reason.code())
        .detail(detail)
}

/// The `prev` of a new chain's first line: 32 random bytes, in hex.
pub(super) fn fresh_anchor() -> Result<String, AuditError> {
    Ok(hex::encode(crypto::random_array::<32>()?))
}

impl Shared {
    /// Shifts `LOG.N` up, renames `LOG` to `LOG.1` and opens a new `LOG`, whose first line
    /// will be a `rotate` entry ([`Shared::write_opening`]) linked to the old file's last
    /// hash, or for a corrupt tail to a fresh anchor, since the old chain's end cannot be
    /// trusted.
    pub(super) fn switch_file(
        &self,
        st: &mut State,
        reason: RotateReason,
    ) -> Result<(), AuditError> {
        if let Some(old) = &st.file {
            old.sync_all().map_err(io_err(&self.path))?;
            st.dirty = false;
        }
        let rename = |from: &Path, to: &Path| -> Result<(), AuditError> {
            match rustix::fs::renameat(&self.dir, file_name(from), &self.dir, file_name(to)) {
                Err(rustix::io::Errno::NOENT) | Ok(()) => Ok(()),
                Err(e) => Err(io_err(from)(e.into())),
            }
        };
        for n in (1..KEEP_ROTATED).rev() {
            rename(
                &rotated_name(&self.path, n),
                &rotated_name(&self.path, n + 1),
            )?;
        }
        let first = rotated_name(&self.path, 1);
        rename(&self.path, &first)?;
        let new = match open_log_file(&self.dir, &self.path) {
            Ok(Opened::File(file)) => file,
            other => {
                // Put the old file back under its name, so that appending can go on there.
                let _ = rename(&first, &self.path);
                return Err(match other {
                    Err(e) => e,
                    _ => AuditError::UnsafeLog {
                        path: self.path.clone(),
                        why: "something was put in its place while it was being rotated",
                    },
                });
            }
        };
        if let Err(e) = rustix::fs::fsync(&self.dir) {
            log::warn!(
                "{}: cannot sync directory: {e}",
                log_dir(&self.path).display()
            );
        }
        let mut detail = format!("previous file: {}", first.display());
        if reason == RotateReason::CorruptTail {
            if let Some(why) = &st.broken_tail {
                detail = format!("previous file: {} ({why})", first.display());
            }
            st.last_hash = fresh_anchor()?;
        }
        st.file = Some(Arc::new(new));
        st.size = 0;
        st.events_in_file = 0;
        st.broken_tail = None;
        st.opening = Some(rotate_event(reason, detail));
        log::info!(
            "audit log rotated ({}): {} -> {}",
            reason.code(),
            self.path.display(),
            first.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::coalesce;
    use crate::audit::open::open_dir;
    use crate::audit::testutil::*;
    use crate::audit::writer::Limits;
    use crate::audit::{verify, with_rotated, AuditLog, ChainError, EventKind, Start};
    use crate::system::euid;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    #[test]
    fn rotation_stays_in_the_directory_opened_at_start() {
        let top = tempfile::tempdir().unwrap();
        let meta = top.path().join("meta");
        fs::create_dir(&meta).unwrap();
        let (log, key) = (meta.join("audit.jsonl"), top.path().join("audit.key"));
        let audit = AuditLog::open(&log, &key, None).unwrap();
        audit.record(&open_event(1)).unwrap();
        // Whoever can write above the log swaps its directory for a link elsewhere.
        let elsewhere = top.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::rename(&meta, top.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &meta).unwrap();
        audit.rotate().unwrap();
        audit.record(&open_event(2)).unwrap();
        audit.close().unwrap();
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "rotation followed the link"
        );
        let moved = top.path().join("moved");
        assert!(moved.join("audit.jsonl.1").exists() && moved.join("audit.jsonl").exists());
    }

    #[test]
    fn rotation_keeps_the_chain_across_files() {
        let (_dir, log, key) = setup();
        let audit = AuditLog::open(&log, &key, Some(2000)).unwrap();
        for i in 0..40 {
            audit.record(&open_event(i)).unwrap();
        }
        audit.rotate().unwrap();
        audit.record(&open_event(99)).unwrap();
        let last = audit.last_hash();
        let written = audit.entries_written();
        audit.close().unwrap();
        let files = with_rotated(&log);
        assert_eq!(files.len(), KEEP_ROTATED as usize + 1, "{files:?}");
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 2000, "{}", f.display());
            assert_eq!(fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let current = lines(&log);
        assert_eq!(current.len(), 2);
        assert!(current[0].contains("\"event\":\"rotate\""));
        assert!(current[0].contains("\"reason\":\"requested\""));
        let k = key_of(&key);
        let report = verify(&files, Some(&k), Some(&last), None).unwrap();
        assert_eq!(report.last_hash.as_deref(), Some(last.as_str()));
        assert_eq!(report.last_seq, Some(written));
        // Older files were dropped: the chain starts at a rotate entry, and says so.
        assert!(report.anchor.is_some());
        assert!(
            matches!(report.start, Start::Rotated { seq } if seq > 1),
            "{:?}",
            report.start
        );
        // Each file verifies alone, too (it starts with a rotate entry).
        for f in &files {
            verify(std::slice::from_ref(f), Some(&k), None, None).unwrap();
        }
        // Out of order, or with a file missing in the middle: the boundary is reported.
        let mut wrong = files.clone();
        wrong.swap(1, 2);
        let (file, line, _) = broken_at(verify(&wrong, Some(&k), None, None));
        assert_eq!((file, line), (wrong[1].clone(), 1));
        let mut gap = files.clone();
        gap.remove(2);
        let (file, line, why) = broken_at(verify(&gap, Some(&k), None, None));
        assert_eq!((file, line), (gap[2].clone(), 1));
        assert!(
            matches!(why, ChainError::PrevMismatch { at_boundary: true }),
            "{why}"
        );
        // Reopening continues after the rotation.
        let audit = AuditLog::open(&log, &key, Some(2000)).unwrap();
        audit.record(&open_event(100)).unwrap();
        audit.close().unwrap();
        verify(&with_rotated(&log), Some(&k), None, None).unwrap();
        // Rotating an empty log does nothing.
        let (_dir2, log2, key2) = setup();
        let empty = AuditLog::open(&log2, &key2, None).unwrap();
        empty.rotate().unwrap();
        assert!(!rotated_name(&log2, 1).exists());
    }

    /// A rotation on a full disk: the new file's rotate entry does not fit, so the event is
    /// refused; once there is room, that entry is written first and the chain stays whole.
    #[test]
    fn a_rotation_on_a_full_disk_keeps_the_chain() {
        if euid() != 0 {
            eprintln!("skipped: needs root to mount a tmpfs");
            return;
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("fs");
        fs::create_dir(&small).unwrap();
        assert!(std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&small)
            .status()
            .unwrap()
            .success());
        let _guard = Unmount(small.clone());
        let log = small.join("audit.jsonl");
        let key = dir.path().join("audit.key");
        let limits = Limits {
            max_size: 8192,
            coalesce: coalesce::Limits::DEFAULT,
        };
        let audit = AuditLog::open_with(open_dir(&log).unwrap(), &log, &key, limits).unwrap();
        // Into the file's second (and last) page: lines up to the bound need no new page.
        while fs::metadata(&log).unwrap().len() <= 4096 {
            audit.record(&open_event(1)).unwrap();
        }
        let mut fill = fs::File::create(small.join("fill")).unwrap();
        while fill.write_all(&[0u8; 4096]).is_ok() {}
        drop(fill);
        let refused = (0..100).find(|_| audit.record(&open_event(1)).is_err());
        assert!(refused.is_some(), "writes kept succeeding on a full disk");
        assert!(
            rotated_name(&log, 1).exists(),
            "the error came from the rotation"
        );
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        fs::remove_file(small.join("fill")).unwrap();
        audit.record(&open_event(2)).unwrap();
        audit.close().unwrap();
        let fresh = entries(&log);
        assert_eq!(fresh[0].event, EventKind::Rotate);
        assert_eq!(fresh[0].reason.as_deref(), Some("max-size"));
        assert_eq!(fresh[1].user.as_deref(), Some("user2"));
        let both = [rotated_name(&log, 1), log.clone()];
        verify(&both, Some(&key_of(&key)), None, Some(&head_of(&key))).unwrap();
    }

    #[test]
    fn default_size_follows_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let size = default_max_size(dir.path());
        assert!((MIN_DEFAULT_MAX_SIZE..=DEFAULT_MAX_SIZE).contains(&size));
        let free = free_space(dir.path()).unwrap();
        assert!(size <= (free / FREE_SPACE_SHARE).max(MIN_DEFAULT_MAX_SIZE));
        assert_eq!(
            default_max_size(Path::new("/nonexistent/dir")),
            DEFAULT_MAX_SIZE
        );
    }
}
