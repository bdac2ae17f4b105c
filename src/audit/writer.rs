//! Appending to the log.
//!
//! Writing: each entry is built in memory and written with one `write(2)` on an `O_APPEND`
//! file under a mutex, so lines never interleave. A background thread, once a second,
//! writes the counted lines that are due (see `coalesce`), `fdatasync`s the log when there is
//! something new, and then records the synced entry's `seq` and hash in the head record
//! beside the key. [`AuditLog::close`] (or drop) writes every pending count and does the
//! same, so a crash loses at most the last second of entries (and the counts of open
//! windows). The log is `flock`ed while open, so two writers cannot interleave two chains in
//! one file.
//!
//! Size: before a line would take the file past `max_size`, or on [`AuditLog::rotate`]
//! (SIGHUP), `LOG.4` → `LOG.5`, …, `LOG` → `LOG.1` (the old `LOG.5` is dropped;
//! [`KEEP_ROTATED`] files are kept) and a new `LOG` starts with a `rotate` entry linking to
//! the last hash of `LOG.1`. The log therefore never takes more than `6 × max_size`; by
//! default `max_size` is [`DEFAULT_MAX_SIZE`], or a 16th of the space free on the log's
//! filesystem at open if that is less (at least [`MIN_DEFAULT_MAX_SIZE`]).
//!
//! Opening: a symbolic link, or a file owned by another uid, at the log's path (what anyone
//! who can write the store could plant) is never written to: it is moved aside like a
//! corrupt tail. Any other non-regular file is refused. An existing log continues its chain
//! if its last line verifies under the key and is not behind the head record; otherwise it
//! is moved to `LOG.1` and a new chain starts with a `rotate` entry whose reason is
//! `corrupt-tail`. An empty log where the head record says the chain had entries continues
//! from `LOG.1` if that ends where the head says (reason `resumed`: a crash between the two
//! steps of a rotation), and otherwise starts a new chain (`missing-log`). A new chain
//! numbers on from the head record, so an older copy can never pass for a newer one.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use super::coalesce::{self, Admit, Coalescer, Due};
use super::key::{self, euid, HeadRecord, Key};
use super::verify::{open_for_reading, read_last_line, rotated_name, with_rotated};
use super::{
    io_err, line_hash, signed_line, verify_line, AuditError, Entry, Event, EventKind, Span,
    KEEP_ROTATED, SYNC_INTERVAL,
};
use crate::crypto;

/// The default size at which a log file is rotated.
pub const DEFAULT_MAX_SIZE: u64 = 64 << 20;
/// The default size never goes below this, however little space is free.
pub const MIN_DEFAULT_MAX_SIZE: u64 = 64 << 10;
/// By default one file may take this fraction of the free space found at open, so the six
/// files kept take at most 6/16 of it.
const FREE_SPACE_SHARE: u64 = 16;
/// The head record is rewritten in place as one block of this many bytes.
const HEAD_LEN: usize = 128;

fn free_space(dir: &Path) -> Option<u64> {
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call; `st` is a valid statvfs for it
    // to write.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // The field types differ between targets.
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn log_dir(log: &Path) -> &Path {
    match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The default `max_size` for a log in `dir`: [`DEFAULT_MAX_SIZE`], or a 16th of the space
/// free there if that is less, but at least [`MIN_DEFAULT_MAX_SIZE`].
pub fn default_max_size(dir: &Path) -> u64 {
    free_space(dir).map_or(DEFAULT_MAX_SIZE, |free| {
        (free / FREE_SPACE_SHARE).clamp(MIN_DEFAULT_MAX_SIZE, DEFAULT_MAX_SIZE)
    })
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_size: u64,
    coalesce: coalesce::Limits,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RotateReason {
    MaxSize,
    Requested,
    CorruptTail,
    MissingLog,
    Resumed,
}

impl RotateReason {
    fn code(self) -> &'static str {
        match self {
            RotateReason::MaxSize => "max-size",
            RotateReason::Requested => "requested",
            RotateReason::CorruptTail => "corrupt-tail",
            RotateReason::MissingLog => "missing-log",
            RotateReason::Resumed => "resumed",
        }
    }
}

fn rotate_event(reason: RotateReason, detail: String) -> Event {
    Event::from_pid(EventKind::Rotate, std::process::id())
        .reason(reason.code())
        .detail(detail)
}

fn fresh_log_id() -> Result<String, AuditError> {
    Ok(hex::encode(crypto::random_array::<32>()?))
}

struct State {
    /// `None` once closed.
    file: Option<Arc<File>>,
    /// Seq of the last entry (0: none yet).
    seq: u64,
    /// The hash the next entry links to: the last line's hash, or the log id.
    last_hash: String,
    /// Bytes in the current file.
    size: u64,
    /// Entries in the current file other than its opening `rotate` entry.
    events_in_file: u64,
    entries_written: u64,
    last_time: Option<SystemTime>,
    /// Written but not yet synced.
    dirty: bool,
    /// The file may end in a partial line (a failed write could not be undone): the next
    /// record starts a new file rather than append to a broken chain.
    broken_tail: Option<String>,
    /// The `rotate` entry the current file must start with, not written yet (its write
    /// failed, e.g. on a full disk): it goes before anything else.
    opening: Option<Event>,
    coalescer: Coalescer,
}

/// The head record: the seq and hash of the last synced entry, rewritten in place.
struct Head {
    path: PathBuf,
    file: File,
    /// Seq last stored (it only moves forward).
    stored: u64,
    /// Bytes in the file.
    len: u64,
}

struct Shared {
    path: PathBuf,
    /// The log's directory, opened once: rotation renames and creates files by name inside
    /// it, so a directory swapped for a link later (in a store, by whoever can write it) is
    /// never followed by the root daemon.
    dir: OwnedFd,
    key_path: PathBuf,
    key: Key,
    limits: Limits,
    state: Mutex<State>,
    head: Mutex<Head>,
    stop: Mutex<bool>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the state consistent enough: every
    // update happens after the write it describes succeeded.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An open audit log. `Send + Sync`: share it with `Arc` between FUSE and control threads.
pub struct AuditLog {
    shared: Arc<Shared>,
    syncer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

enum Opened {
    File(File),
    /// Something a store writer may have planted: move it aside, never write to it.
    Planted(String),
}

/// The last component of `path` (a log or one of its rotated files), to use inside `dir`.
fn file_name(path: &Path) -> &std::ffi::OsStr {
    path.file_name().unwrap_or(path.as_os_str())
}

/// Opens the log's directory, following links in the path the administrator gave.
fn open_dir(path: &Path) -> Result<OwnedFd, AuditError> {
    let dir = log_dir(path);
    rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io_err(dir)(e.into()))
}

/// Opens (creating) the log file `path`, by name inside `dir`, never through a link.
fn open_log_file(dir: &OwnedFd, path: &Path) -> Result<Opened, AuditError> {
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
            why: "it is not a regular file (remove it, or choose another --audit-log)".into(),
        });
    }
    if meta.uid() != euid() {
        return Ok(Opened::Planted(format!(
            "it is owned by uid {}, not by the writer (uid {})",
            meta.uid(),
            euid()
        )));
    }
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(AuditError::InUse(path.to_path_buf()));
        }
        return Err(io_err(path)(e));
    }
    Ok(Opened::File(file))
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

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path` for appending, with the key at
    /// `key_path` (created if absent, with its directory; refused unless it passes the
    /// writer's rules, see `key`) and its head record beside it. The log rotates before a
    /// line would take it past `max_size` bytes (default: [`default_max_size`]). See the
    /// module documentation for what happens to a log that does not verify.
    pub fn open(
        path: &Path,
        key_path: &Path,
        max_size: Option<u64>,
    ) -> Result<AuditLog, AuditError> {
        AuditLog::open_in(open_dir(path)?, path, key_path, max_size)
    }

    /// Like `open`, with the log's directory already open as `dir` (for a log inside the
    /// store: opened through the store gate, so that no link there is followed).
    pub fn open_in(
        dir: OwnedFd,
        path: &Path,
        key_path: &Path,
        max_size: Option<u64>,
    ) -> Result<AuditLog, AuditError> {
        let max_size = max_size.unwrap_or_else(|| default_max_size(log_dir(path)));
        let limits = Limits {
            max_size,
            coalesce: coalesce::Limits::DEFAULT,
        };
        AuditLog::open_with(dir, path, key_path, limits)
    }

    fn open_with(
        dir: OwnedFd,
        path: &Path,
        key_path: &Path,
        limits: Limits,
    ) -> Result<AuditLog, AuditError> {
        let key = key::load_or_create(key_path)?;
        let head_path = key::head_path(key_path);
        let (head_file, recorded) = key::open_head(&head_path)?;
        warn_about_legacy_keys(path, key_path);
        warn_if_space_is_short(path, limits.max_size);
        if fs::symlink_metadata(log_dir(path)).is_ok_and(|m| m.file_type().is_symlink()) {
            log::warn!(
                "{}: the audit log's directory is a symbolic link; the log is written where it \
                 points, and checked against the key and head record of this path",
                log_dir(path).display()
            );
        }
        let mut st = State {
            file: None,
            seq: 0,
            last_hash: String::new(),
            size: 0,
            events_in_file: 0,
            entries_written: 0,
            last_time: None,
            dirty: false,
            broken_tail: None,
            opening: None,
            coalescer: Coalescer::new(limits.coalesce),
        };
        let mut problem: Option<(RotateReason, String)> = None;
        match open_log_file(&dir, path)? {
            Opened::Planted(why) => problem = Some((RotateReason::CorruptTail, why)),
            Opened::File(file) => {
                let meta = file.metadata().map_err(io_err(path))?;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    log::warn!(
                        "{}: audit log has mode {mode:03o}; 600 is recommended",
                        path.display()
                    );
                }
                st.size = meta.len();
                if st.size > 0 {
                    let tail = read_last_line(&file, st.size)
                        .map_err(io_err(path))?
                        .and_then(|line| verify_line(&key, &line).map(|e| (e, line_hash(&line))));
                    match tail {
                        Ok((entry, hash)) => match behind_head(&entry, &hash, recorded.as_ref()) {
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
                } else if let Some(head) = recorded.as_ref().filter(|h| h.seq > 0) {
                    let previous = rotated_name(path, 1);
                    match verified_tail(&previous, &key) {
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
                                    "the log is empty, but the head record {} says its chain \
                                     reached seq {} (hash {}): the log was deleted or replaced",
                                    head_path.display(),
                                    head.seq,
                                    head.hash
                                ),
                            ))
                        }
                    }
                } else {
                    st.last_hash = fresh_log_id()?;
                }
                st.file = Some(Arc::new(file));
            }
        }
        let stored = recorded.as_ref().map_or(0, |h| h.seq);
        let head_len = head_file.metadata().map_err(io_err(&head_path))?.len();
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            dir,
            key_path: key_path.to_path_buf(),
            key,
            limits,
            state: Mutex::new(st),
            head: Mutex::new(Head {
                path: head_path,
                file: head_file,
                stored,
                len: head_len,
            }),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        {
            let mut st = lock(&shared.state);
            if let Some((reason, why)) = problem {
                log::warn!(
                    "{}: {why}; moving it aside and starting a new chain ({})",
                    path.display(),
                    reason.code()
                );
                st.seq = stored;
                if reason == RotateReason::MissingLog {
                    st.last_hash = fresh_log_id()?;
                    st.opening = Some(rotate_event(reason, why));
                } else {
                    st.broken_tail = Some(why);
                    shared.switch_file(&mut st, RotateReason::CorruptTail)?;
                }
            }
            shared.write_opening(&mut st)?;
        }
        let for_thread = shared.clone();
        let syncer = std::thread::Builder::new()
            .name("tvault-audit-sync".into())
            .spawn(move || for_thread.sync_loop())
            .map_err(io_err(path))?;
        Ok(AuditLog {
            shared,
            syncer: Mutex::new(Some(syncer)),
        })
    }

    /// Records one event. For an allowed event (and every other event that is not a denial
    /// or an integrity failure) `Ok` means its line is in the log; an error means it is not,
    /// and callers must refuse what they were about to allow (fail closed). A denial or an
    /// integrity failure may instead be counted, to be written as part of a counted line
    /// (see `coalesce`); that is `Ok` too.
    pub fn record(&self, event: &Event) -> Result<(), AuditError> {
        let result = self.shared.record(event);
        if let Err(e) = &result {
            log::error!(
                "audit log: cannot record {} event: {e}",
                event.kind.as_str()
            );
        }
        result
    }

    /// Writes every count still pending now, whatever the budgets (the daemon calls this
    /// before its `unmount` entry).
    pub fn write_pending(&self) -> Result<(), AuditError> {
        self.shared.write_pending()
    }

    /// Starts a new file now (the daemon calls this on SIGHUP). Does nothing if the current
    /// file is empty.
    pub fn rotate(&self) -> Result<(), AuditError> {
        let mut st = lock(&self.shared.state);
        if st.file.is_none() {
            return Err(AuditError::Closed);
        }
        if st.size == 0 {
            return Ok(());
        }
        self.shared.switch_file(&mut st, RotateReason::Requested)?;
        self.shared.write_opening(&mut st)
    }

    /// Writes pending counts, syncs and closes the log, and updates the head record; later
    /// records fail with [`AuditError::Closed`]. Dropping the log does the same (logging
    /// errors).
    pub fn close(&self) -> Result<(), AuditError> {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        if let Some(handle) = lock(&self.syncer).take() {
            let _ = handle.join();
        }
        let pending = self.shared.write_pending();
        let (file, seq, hash, lost) = {
            let mut st = lock(&self.shared.state);
            let lost: u64 = st
                .coalescer
                .take_due(Instant::now(), true)
                .iter()
                .map(|d| d.span.count)
                .sum();
            (st.file.take(), st.seq, st.last_hash.clone(), lost)
        };
        if lost > 0 {
            log::error!("audit log: {lost} counted event(s) could not be written before closing");
        }
        let Some(file) = file else {
            return pending;
        };
        let synced = file.sync_all().map_err(io_err(&self.shared.path));
        if synced.is_ok() && seq > 0 {
            self.shared.store_head(seq, &hash);
        }
        pending.and(synced)
    }

    /// Entries this `AuditLog` wrote since it was opened (rotation entries included).
    pub fn entries_written(&self) -> u64 {
        lock(&self.shared.state).entries_written
    }

    /// Events counted into counted or `suppressed` lines instead of lines of their own,
    /// since open.
    pub fn events_coalesced(&self) -> u64 {
        lock(&self.shared.state).coalescer.folded()
    }

    /// Time of the newest entry in the log (read from the file at open, if it had one).
    pub fn last_entry_time(&self) -> Option<SystemTime> {
        lock(&self.shared.state).last_time
    }

    /// Hex hash of the newest line (what the next entry's `prev` will be); for a log without
    /// entries yet, its random log id.
    pub fn last_hash(&self) -> String {
        lock(&self.shared.state).last_hash.clone()
    }

    /// `seq` of the newest entry (0 if none).
    pub fn last_seq(&self) -> u64 {
        lock(&self.shared.state).seq
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn key_path(&self) -> &Path {
        &self.shared.key_path
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            log::error!("audit log: {e}");
        }
    }
}

impl Shared {
    fn record(&self, event: &Event) -> Result<(), AuditError> {
        let mut st = lock(&self.state);
        if st.file.is_none() {
            return Err(AuditError::Closed);
        }
        let now = SystemTime::now();
        if !coalesce::is_best_effort(event) {
            return self.write_locked(&mut st, event, None, now);
        }
        let mono = Instant::now();
        match st.coalescer.admit(event, mono, now) {
            Admit::Counted => Ok(()),
            Admit::Write => match self.write_locked(&mut st, event, None, now) {
                Ok(()) => {
                    st.coalescer.opened(event, mono);
                    Ok(())
                }
                Err(e) => {
                    st.coalescer.unwritten(event, mono, now);
                    Err(e)
                }
            },
        }
    }

    /// Writes one line for `event` (a counted line with `span`), first starting a new file
    /// if the current one has a broken tail or would grow past `max_size`.
    fn write_locked(
        &self,
        st: &mut State,
        event: &Event,
        span: Option<&Span>,
        now: SystemTime,
    ) -> Result<(), AuditError> {
        if st.broken_tail.is_some() {
            self.switch_file(st, RotateReason::CorruptTail)?;
        }
        self.write_opening(st)?;
        let mut line = self.line_for(st, event, span, now);
        if st.events_in_file > 0 && st.size + line.len() as u64 > self.limits.max_size {
            match self.switch_file(st, RotateReason::MaxSize) {
                Ok(()) => {
                    self.write_opening(st)?;
                    line = self.line_for(st, event, span, now);
                }
                // Keep logging to the full file rather than refuse every open.
                Err(e) => log::error!("audit log: rotation failed, continuing: {e}"),
            }
        }
        self.append(st, &line, now)?;
        st.events_in_file += 1;
        Ok(())
    }

    /// The next line (with newline) for `event`.
    fn line_for(&self, st: &State, event: &Event, span: Option<&Span>, now: SystemTime) -> Vec<u8> {
        let entry = Entry::new(event, span, now, st.seq + 1, st.last_hash.clone());
        let mut line = signed_line(&self.key, entry);
        line.push(b'\n');
        line
    }

    /// Writes `line` with one write(2) and advances the chain. On a short write the partial
    /// line is cut off again; if even that fails, the next record starts a new file.
    fn append(&self, st: &mut State, line: &[u8], now: SystemTime) -> Result<(), AuditError> {
        let file = st.file.clone().ok_or(AuditError::Closed)?;
        loop {
            match (&*file).write(line) {
                Ok(n) if n == line.len() => break,
                Ok(n) => {
                    if n > 0 {
                        if let Err(e) = file.set_len(st.size) {
                            st.broken_tail = Some(format!("a partial line could not be cut: {e}"));
                        }
                    }
                    return Err(AuditError::ShortWrite {
                        path: self.path.clone(),
                        written: n,
                        len: line.len(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&self.path)(e)),
            }
        }
        let body = &line[..line.len() - 1];
        st.seq += 1;
        st.last_hash = line_hash(body);
        st.size += line.len() as u64;
        st.entries_written += 1;
        st.last_time = Some(now);
        st.dirty = true;
        Ok(())
    }

    /// Writes the pending opening `rotate` entry of the current file, if there is one.
    fn write_opening(&self, st: &mut State) -> Result<(), AuditError> {
        let Some(event) = st.opening.clone() else {
            return Ok(());
        };
        let now = SystemTime::now();
        let line = self.line_for(st, &event, None, now);
        self.append(st, &line, now)?;
        st.opening = None;
        Ok(())
    }

    /// Shifts `LOG.N` up, renames `LOG` to `LOG.1` and opens a new `LOG`, whose first line
    /// will be a `rotate` entry ([`Shared::write_opening`]) linked to the old file's last
    /// hash, or for a corrupt tail to a fresh log id, since the old chain's end cannot be
    /// trusted.
    fn switch_file(&self, st: &mut State, reason: RotateReason) -> Result<(), AuditError> {
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
                        why: "something was put in its place while it was being rotated".into(),
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
            st.last_hash = fresh_log_id()?;
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

    /// Writes `due` counted lines; on a failure the rest go back to their counts.
    fn write_due(&self, st: &mut State, due: Vec<Due>) -> Result<(), AuditError> {
        let now = SystemTime::now();
        let mono = Instant::now();
        let mut due = due.into_iter();
        while let Some(line) = due.next() {
            if let Err(e) = self.write_locked(st, &line.event, Some(&line.span), now) {
                st.coalescer.restore(line, mono);
                for rest in due {
                    st.coalescer.restore(rest, mono);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn write_pending(&self) -> Result<(), AuditError> {
        let mut st = lock(&self.state);
        if st.file.is_none() {
            return Ok(());
        }
        let due = st.coalescer.take_due(Instant::now(), true);
        self.write_due(&mut st, due)
    }

    /// Writes the counted lines whose windows ended, as the budgets allow.
    fn tick(&self) {
        let mut st = lock(&self.state);
        if st.file.is_none() {
            return;
        }
        let due = st.coalescer.take_due(Instant::now(), false);
        if let Err(e) = self.write_due(&mut st, due) {
            log::error!("audit log: counted entries not written yet (kept for later): {e}");
        }
    }

    fn sync(&self) -> Result<(), AuditError> {
        let (file, seq, hash) = {
            let mut st = lock(&self.state);
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            (st.file.clone(), st.seq, st.last_hash.clone())
        };
        let Some(file) = file else {
            return Ok(());
        };
        if let Err(e) = file.sync_data() {
            lock(&self.state).dirty = true;
            return Err(io_err(&self.path)(e));
        }
        self.store_head(seq, &hash);
        Ok(())
    }

    /// Records `(seq, hash)`, an entry already on disk, in the head record. A failure only
    /// weakens later checks, so it is logged, not returned.
    fn store_head(&self, seq: u64, hash: &str) {
        let mut head = lock(&self.head);
        if seq <= head.stored {
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
        let written = head.file.write_all_at(&text, 0).and_then(|()| {
            if head.len != len {
                head.file.set_len(len)?;
            }
            head.file.sync_data()
        });
        match written {
            Ok(()) => {
                head.stored = seq;
                head.len = len;
            }
            Err(e) => log::warn!(
                "{}: cannot update the audit head record: {e}",
                head.path.display()
            ),
        }
    }

    fn sync_loop(&self) {
        loop {
            {
                let stop = lock(&self.stop);
                let (stop, _) = self
                    .wake
                    .wait_timeout_while(stop, SYNC_INTERVAL, |s| !*s)
                    .unwrap_or_else(|p| p.into_inner());
                if *stop {
                    return;
                }
            }
            self.tick();
            if let Err(e) = self.sync() {
                log::error!("audit log: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::coalesce::SUPPRESSED_REASON;
    use crate::audit::{parse_entry, verify, Start, VerifyError, VerifyReport, MAX_FIELD};
    use std::time::Duration;

    fn key_of(path: &Path) -> Key {
        key::read_trusted(path).unwrap().unwrap()
    }

    fn head_of(key: &Path) -> HeadRecord {
        key::read_head(&key::head_path(key)).unwrap().unwrap()
    }
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let key = dir.path().join("audit.key");
        (dir, log, key)
    }

    fn open_event(i: u32) -> Event {
        Event::new(EventKind::Open)
            .uid(1000 + i)
            .user(format!("user{i}"))
            .path(format!("m/file{i}.safetensors"))
            .open_flags(libc::O_RDONLY)
            .allow()
    }

    fn write_log(log: &Path, key: &Path, n: u32) -> String {
        let audit = AuditLog::open(log, key, None).unwrap();
        for i in 0..n {
            audit.record(&open_event(i)).unwrap();
        }
        let last = audit.last_hash();
        audit.close().unwrap();
        last
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn put_lines(path: &Path, lines: &[String]) {
        fs::write(path, lines.join("\n") + "\n").unwrap();
    }

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

    fn broken_at(result: Result<VerifyReport, VerifyError>) -> (PathBuf, u64, String) {
        match result {
            Err(VerifyError::Broken { file, line, why }) => (file, line, why),
            other => panic!("expected a broken line, got {other:?}"),
        }
    }

    #[test]
    fn lines_have_fixed_fields_and_chain() {
        let (_dir, log, key) = setup();
        let audit = AuditLog::open(&log, &key, None).unwrap();
        let id = audit.last_hash();
        audit
            .record(
                &Event::from_pid(EventKind::Open, std::process::id())
                    .uid(1001)
                    .user("alice")
                    .path("m/w.safetensors")
                    .open_flags(libc::O_RDONLY)
                    .deny("locked"),
            )
            .unwrap();
        audit.record(&Event::new(EventKind::Mount)).unwrap();
        assert_eq!(audit.entries_written(), 2);
        assert_eq!(audit.last_seq(), 2);
        assert!(audit.last_entry_time().is_some());
        let all = lines(&log);
        let first: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
        let keys: Vec<&str> = first
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // serde_json's map is sorted, so check the raw order instead.
        assert!(keys.contains(&"exe"));
        let order = [
            "\"time\"",
            "\"seq\"",
            "\"event\"",
            "\"uid\"",
            "\"user\"",
            "\"pid\"",
            "\"process\"",
            "\"exe\"",
            "\"path\"",
            "\"flags\"",
            "\"decision\"",
            "\"reason\"",
            "\"prev\"",
            "\"mac\"",
        ];
        let positions: Vec<usize> = order.iter().map(|k| all[0].find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{}", all[0]);
        assert_eq!(first["event"], "open");
        assert_eq!(first["decision"], "deny");
        assert_eq!(first["reason"], "locked");
        assert_eq!(first["flags"], "O_RDONLY");
        assert_eq!(first["seq"], 1);
        assert_eq!(first["prev"], id.as_str());
        assert!(first["process"].as_str().is_some_and(|p| !p.is_empty()));
        let second: serde_json::Value = serde_json::from_str(&all[1]).unwrap();
        assert_eq!(second["prev"], line_hash(all[0].as_bytes()).as_str());
        assert!(second.get("uid").is_none() && second.get("decision").is_none());
        assert!(!all[1].contains("null"));
        let last = audit.last_hash();
        audit.close().unwrap();
        assert!(matches!(
            audit.record(&Event::new(EventKind::Lock)),
            Err(AuditError::Closed)
        ));
        let key_bytes = key_of(&key);
        let report = verify(
            std::slice::from_ref(&log),
            Some(&key_bytes),
            Some(&last),
            None,
        )
        .unwrap();
        assert_eq!(report.entries, 2);
        assert_eq!(report.last_hash.as_deref(), Some(last.as_str()));
        assert_eq!(report.anchor.as_deref(), Some(id.as_str()));
        assert_eq!(
            fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn reopen_continues_the_chain() {
        let (_dir, log, key) = setup();
        write_log(&log, &key, 3);
        let audit = AuditLog::open(&log, &key, None).unwrap();
        assert_eq!(audit.last_seq(), 3);
        assert!(audit.last_entry_time().is_some());
        audit.record(&open_event(9)).unwrap();
        audit.close().unwrap();
        assert_eq!(lines(&log).len(), 4);
        let report = verify(&[log], Some(&key_of(&key)), None, None).unwrap();
        assert_eq!(report.entries, 4);
        assert_eq!(report.last_seq, Some(4));
    }

    #[test]
    fn one_writer_per_log() {
        let (_dir, log, key) = setup();
        let a = AuditLog::open(&log, &key, None).unwrap();
        assert!(matches!(
            AuditLog::open(&log, &key, None),
            Err(AuditError::InUse(_))
        ));
        drop(a);
        AuditLog::open(&log, &key, None).unwrap();
    }

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
    fn detects_edit_insert_delete_reorder() {
        let (_dir, log, key) = setup();
        write_log(&log, &key, 6);
        let k = key_of(&key);
        let orig = lines(&log);
        verify(std::slice::from_ref(&log), Some(&k), None, None).unwrap();

        // Edit a field (MAC fails).
        let mut edited = orig.clone();
        edited[2] = edited[2].replace("\"allow\"", "\"deny\"");
        put_lines(&log, &edited);
        let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
        assert_eq!(line, 3);
        assert!(why.contains("MAC"), "{why}");

        // Same content, different bytes (whitespace): not canonical.
        let mut spaced = orig.clone();
        spaced[1] = spaced[1].replacen(",", ", ", 1);
        put_lines(&log, &spaced);
        let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
        assert_eq!(line, 2);
        assert!(why.contains("canonical"), "{why}");

        // Insert a copy of a valid line.
        let mut inserted = orig.clone();
        inserted.insert(4, orig[1].clone());
        put_lines(&log, &inserted);
        assert_eq!(
            broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None)).1,
            5
        );

        // Insert a forged line.
        let mut forged = orig.clone();
        forged.insert(
            3,
            orig[3]
                .replace("\"seq\":4", "\"seq\":99")
                .replace("user3", "mallory"),
        );
        put_lines(&log, &forged);
        assert_eq!(
            broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None)).1,
            4
        );

        // Delete a line: the next one no longer links.
        let mut deleted = orig.clone();
        deleted.remove(2);
        put_lines(&log, &deleted);
        let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
        assert_eq!(line, 3);
        assert!(why.contains("prev"), "{why}");

        // Delete the first line: the chain no longer starts at seq 1.
        put_lines(&log, &orig[1..]);
        assert_eq!(
            broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None)).1,
            1
        );

        // Reorder two lines.
        let mut swapped = orig.clone();
        swapped.swap(3, 4);
        put_lines(&log, &swapped);
        assert_eq!(
            broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None)).1,
            4
        );

        // An empty line, and garbage.
        let mut blank = orig.clone();
        blank.insert(2, String::new());
        put_lines(&log, &blank);
        assert_eq!(
            broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None)).1,
            3
        );
        let mut garbage = orig.clone();
        garbage[5] = "\u{0}\u{ff}not json".into();
        put_lines(&log, &garbage);
        assert_eq!(
            broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None)).1,
            6
        );

        // The wrong key.
        put_lines(&log, &orig);
        assert_eq!(
            broken_at(verify(
                std::slice::from_ref(&log),
                Some(&[7u8; 32]),
                None,
                None
            ))
            .1,
            1
        );
    }

    #[test]
    fn truncated_tail_needs_a_recorded_hash() {
        let (_dir, log, key) = setup();
        let last = write_log(&log, &key, 5);
        let k = key_of(&key);
        let orig = lines(&log);
        put_lines(&log, &orig[..3]);
        // The shorter chain is valid on its own...
        assert_eq!(
            verify(std::slice::from_ref(&log), Some(&k), None, None)
                .unwrap()
                .entries,
            3
        );
        // ...but not against the hash recorded before the cut.
        assert!(matches!(
            verify(std::slice::from_ref(&log), Some(&k), Some(&last), None),
            Err(VerifyError::Truncated { .. })
        ));
        // A recorded hash stays valid when the log has grown since.
        put_lines(&log, &orig);
        let mid = line_hash(orig[2].as_bytes());
        let report = verify(
            std::slice::from_ref(&log),
            Some(&k),
            Some(&mid.to_uppercase()),
            None,
        )
        .unwrap();
        assert_eq!(report.expected_at, Some((log.clone(), 3)));
        // A line cut in the middle is reported as incomplete.
        let bytes = fs::read(&log).unwrap();
        fs::write(&log, &bytes[..bytes.len() - 10]).unwrap();
        let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
        assert_eq!(line, 5);
        assert!(why.contains("incomplete"), "{why}");
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
        assert!(why.contains("boundary"), "{why}");
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

    #[test]
    fn concurrent_writers_do_not_interleave() {
        let (_dir, log, key) = setup();
        let audit = Arc::new(AuditLog::open(&log, &key, None).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let audit = audit.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let event =
                            open_event(t * 1000 + i).detail("x".repeat((i as usize * 37) % 3000));
                        audit.record(&event).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(audit.entries_written(), 1600);
        audit.close().unwrap();
        let all = lines(&log);
        assert_eq!(all.len(), 1600);
        for l in &all {
            parse_entry(l.as_bytes()).unwrap();
        }
        let report = verify(&[log], Some(&key_of(&key)), None, None).unwrap();
        assert_eq!(report.entries, 1600);
    }
    #[test]
    fn long_fields_are_clipped() {
        let (_dir, log, key) = setup();
        let audit = AuditLog::open(&log, &key, None).unwrap();
        audit
            .record(&Event::new(EventKind::Open).path("é".repeat(MAX_FIELD)))
            .unwrap();
        audit.close().unwrap();
        let entry = parse_entry(lines(&log)[0].as_bytes()).unwrap();
        assert!(entry.path.unwrap().len() <= MAX_FIELD + 3);
        verify(&[log], Some(&key_of(&key)), None, None).unwrap();
    }

    fn quick(burst: u32) -> Limits {
        Limits {
            max_size: DEFAULT_MAX_SIZE,
            coalesce: coalesce::Limits {
                window: Duration::from_millis(800),
                burst,
                refill: Duration::from_secs(3600),
                windows: 1000,
                windows_per_uid: 100,
            },
        }
    }

    fn denial(uid: u32, path: &str) -> Event {
        Event::from_pid(EventKind::Open, std::process::id())
            .uid(uid)
            .path(path)
            .open_flags(libc::O_RDONLY)
            .deny("no-keyring")
    }

    fn entries(path: &Path) -> Vec<Entry> {
        lines(path)
            .iter()
            .map(|l| parse_entry(l.as_bytes()).unwrap())
            .collect()
    }

    /// (lines, events) of `uid` in a log.
    fn of_uid(path: &Path, uid: u32) -> (usize, u64) {
        let mine: Vec<Entry> = entries(path)
            .into_iter()
            .filter(|e| e.uid == Some(uid))
            .collect();
        (mine.len(), mine.iter().map(Entry::events).sum())
    }

    #[test]
    fn repeated_denials_become_one_counted_line() {
        let (_dir, log, key) = setup();
        let audit = AuditLog::open_with(open_dir(&log).unwrap(), &log, &key, quick(10)).unwrap();
        for _ in 0..1000 {
            audit.record(&denial(1003, "m/w")).unwrap();
        }
        assert_eq!(lines(&log)[0].matches("\"count\"").count(), 0);
        // The background thread writes the count once the window has ended, while the log
        // stays open.
        let start = Instant::now();
        while of_uid(&log, 1003).1 < 1000 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no counted line: {:?}",
                lines(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let all = entries(&log);
        assert!(all.len() <= 3, "{all:?}");
        let counted = &all[1];
        assert!(counted.count.is_some_and(|c| c > 1), "{counted:?}");
        assert!(counted.first.is_some() && counted.first <= counted.last);
        assert_eq!(counted.reason.as_deref(), Some("no-keyring"));
        assert_eq!(counted.path.as_deref(), Some("m/w"));
        assert_eq!(counted.pid, Some(std::process::id()));
        assert_eq!(audit.events_coalesced(), 999);
        audit.close().unwrap();
        let report = verify(&[log], Some(&key_of(&key)), None, None).unwrap();
        assert_eq!(report.events, 1000);
    }

    #[test]
    fn a_flooding_uid_is_held_to_its_budget_and_nothing_is_lost() {
        let (_dir, log, key) = setup();
        let audit = AuditLog::open_with(open_dir(&log).unwrap(), &log, &key, quick(4)).unwrap();
        for i in 0..5000 {
            audit.record(&denial(1003, &format!("p{i}"))).unwrap();
        }
        assert_eq!(of_uid(&log, 1003), (4, 4), "the burst only");
        // Other users are not affected: their allowed opens and denials are written at once.
        for i in 0..3 {
            audit.record(&open_event(i)).unwrap();
        }
        audit.record(&denial(1004, "x")).unwrap();
        assert_eq!(of_uid(&log, 1004), (1, 1));
        assert_eq!(lines(&log).len(), 4 + 3 + 1);
        // Closing writes the tally, whatever the budget.
        audit.close().unwrap();
        assert_eq!(of_uid(&log, 1003), (5, 5000));
        let all = entries(&log);
        let summary = all.last().unwrap();
        assert_eq!(summary.event, EventKind::Suppressed);
        assert_eq!(summary.uid, Some(1003));
        assert_eq!(summary.count, Some(4996));
        assert_eq!(summary.reason.as_deref(), Some(SUPPRESSED_REASON));
        let report = verify(&[log], Some(&key_of(&key)), None, None).unwrap();
        assert_eq!(report.events, 5000 + 3 + 1);
    }

    #[test]
    fn allowed_events_always_get_a_line_each() {
        let (_dir, log, key) = setup();
        let audit = AuditLog::open_with(open_dir(&log).unwrap(), &log, &key, quick(1)).unwrap();
        for _ in 0..100 {
            audit.record(&open_event(1)).unwrap();
        }
        assert_eq!(lines(&log).len(), 100);
        assert_eq!(audit.events_coalesced(), 0);
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
