//! Appending to the log.
//!
//! Each entry is built in memory and written with one `write(2)` on an `O_APPEND` file under
//! a mutex, so lines never interleave. A background thread, once a second, writes the counted
//! lines that are due (see `coalesce`), `fdatasync`s the log when there is something new, and
//! then records the synced entry's `seq` and hash in the head record beside the key.
//! [`AuditLog::close`] (or drop) writes every pending count and does the same, so a crash
//! loses at most the last second of entries (and the counts of open windows). The log is
//! `flock`ed while open, so two writers cannot interleave two chains in one file. What
//! happens to the log found at open is `open`'s job, rotation is `rotate`'s.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use super::coalesce::{self, Admit, Coalescer, Due};
use super::head::Head;
use super::line::{signed_line, Span};
use super::open::{self, log_dir, open_dir};
use super::rotate::{default_max_size, RotateReason};
use super::{io_err, key, line_hash, AuditError, Entry, Event, SYNC_INTERVAL};
use crate::sync::lock;

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_size: u64,
    pub(super) coalesce: coalesce::Limits,
}

pub(super) struct State {
    /// `None` once closed.
    pub(super) file: Option<Arc<File>>,
    /// Seq of the last entry (0: none yet).
    pub(super) seq: u64,
    /// The hash the next entry links to: the last line's hash, or a new chain's anchor.
    pub(super) last_hash: String,
    /// Bytes in the current file.
    pub(super) size: u64,
    /// Entries in the current file other than its opening `rotate` entry.
    pub(super) events_in_file: u64,
    pub(super) entries_written: u64,
    pub(super) last_time: Option<SystemTime>,
    /// Written but not yet synced.
    pub(super) dirty: bool,
    /// The file may end in a partial line (a failed write could not be undone): the next
    /// record starts a new file rather than append to a broken chain.
    pub(super) broken_tail: Option<String>,
    /// The `rotate` entry the current file must start with, not written yet (its write
    /// failed, e.g. on a full disk): it goes before anything else.
    pub(super) opening: Option<Event>,
    pub(super) coalescer: Coalescer,
}

pub(super) struct Shared {
    pub(super) path: PathBuf,
    /// The log's directory, opened once: rotation renames and creates files by name inside
    /// it, so a directory swapped for a link later (in a store, by whoever can write it) is
    /// never followed by the root daemon.
    pub(super) dir: OwnedFd,
    key_path: PathBuf,
    key: key::Key,
    limits: Limits,
    state: Mutex<State>,
    head: Mutex<Head>,
    stop: Mutex<bool>,
    wake: Condvar,
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

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path` for appending, with the key at
    /// `key_path` (created if absent, with its directory; refused unless it passes the
    /// writer's rules, see `key`) and its head record beside it. The log rotates before a
    /// line would take it past `max_size` bytes (default: `default_max_size`). See the
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
    pub(crate) fn open_in(
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

    pub(super) fn open_with(
        dir: OwnedFd,
        path: &Path,
        key_path: &Path,
        limits: Limits,
    ) -> Result<AuditLog, AuditError> {
        let key = key::load_or_create(key_path)?;
        let (head, recorded) = Head::open(super::head_path(key_path))?;
        open::warn_about_setting(path, key_path, limits.max_size);
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
        let problem = open::take_over(&dir, path, &key, recorded.as_ref(), head.path(), &mut st)?;
        let stored = head.stored();
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            dir,
            key_path: key_path.to_path_buf(),
            key,
            limits,
            state: Mutex::new(st),
            head: Mutex::new(head),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        {
            let mut st = lock(&shared.state);
            if let Some(problem) = problem {
                shared.start_over(&mut st, problem, stored)?;
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
    pub(crate) fn write_pending(&self) -> Result<(), AuditError> {
        self.shared.write_pending()
    }

    /// Starts a new file now (the daemon calls this on SIGHUP). Does nothing if the current
    /// file is empty.
    pub(crate) fn rotate(&self) -> Result<(), AuditError> {
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
    pub(crate) fn entries_written(&self) -> u64 {
        lock(&self.shared.state).entries_written
    }

    /// Events counted into counted or `suppressed` lines instead of lines of their own,
    /// since open.
    pub(crate) fn events_coalesced(&self) -> u64 {
        lock(&self.shared.state).coalescer.folded()
    }

    /// Time of the newest entry in the log (read from the file at open, if it had one).
    pub(crate) fn last_entry_time(&self) -> Option<SystemTime> {
        lock(&self.shared.state).last_time
    }

    /// Hex hash of the newest line (what the next entry's `prev` will be); for a log without
    /// entries yet, its random anchor.
    pub fn last_hash(&self) -> String {
        lock(&self.shared.state).last_hash.clone()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.shared.path
    }

    pub(crate) fn key_path(&self) -> &Path {
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
    /// Records `(seq, hash)`, an entry already on disk, in the head record.
    fn store_head(&self, seq: u64, hash: &str) {
        lock(&self.head).store(seq, hash);
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
mod tests;
