//! Writing through the mount: opening for writing, creating, writing, committing and
//! truncating. Every handle open for writing on one inode shares that inode's
//! [`OpenSession`], which builds the file's next version (`session::WriteSession`); the
//! last writer's close commits it, and flush or fsync commit it early.
//!
//! A session is joined only by an opener who was just authorized for the very version it
//! builds on. The container may have been replaced since (a store writer, `revoke --rekey`):
//! then the opener reads what it authenticated, in a session of its own on a new inode.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::attr::Attr;
use super::error::{FsError, FsResult};
use super::handles::Reads;
use super::op::{Allowed, Op, Recorded};
use super::session::{self, WriteError, WriteSession};
use super::versions::{Content, FileVersion, IoMode, VersionKey};
use super::{perm, Caller, Core, Opened};
use crate::access::UserSession;
use crate::audit::EventKind;
use crate::container::Ownership;
use crate::crypto::PublicKey;
use crate::store::{MountKind, SetTime};
use crate::sync::lock;

/// The write session of one inode, shared by its writable handles.
pub(super) struct OpenSession {
    /// Names this session's content for the page-cache rules (`versions::Content`).
    pub id: u64,
    /// Who its versions are encrypted to: a writer joins only if it chose them all.
    readers: Vec<String>,
    /// The draft being built. Not taken through `sync::lock`: a panic while it was held may
    /// have left it half-changed, so a poisoned session fails instead of committing.
    state: Mutex<WriteSession>,
    /// Handles writing through this session; changed only while `Core::sessions` is held.
    writers: AtomicUsize,
    /// The committed version the session builds on, readable while a commit holds `state`.
    base: Mutex<Option<VersionKey>>,
    /// The file's size as the session has it (for `getattr`, without waiting on `state`).
    size: AtomicU64,
    /// The file was unlinked while open: nothing is committed (POSIX: the data goes with it).
    unlinked: AtomicBool,
    /// Times set (futimens, as `cp -a` does before closing) while the session was open:
    /// put back on each version it commits, which would otherwise get the commit's time.
    times: Mutex<(Option<SetTime>, Option<SetTime>)>,
}

impl OpenSession {
    fn new(id: u64, ws: WriteSession) -> Self {
        OpenSession {
            id,
            readers: ws.recipient_names(),
            base: Mutex::new(ws.base_key()),
            size: AtomicU64::new(ws.size()),
            state: Mutex::new(ws),
            writers: AtomicUsize::new(0),
            unlinked: AtomicBool::new(false),
            times: Mutex::new((None, None)),
        }
    }

    /// Runs `f` on the session; a poisoned session fails with `EIO`.
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&mut WriteSession) -> Result<T, WriteError>,
    ) -> FsResult<T> {
        let mut ws = self.state.lock().map_err(|_| WriteError::Poisoned)?;
        let result = f(&mut ws);
        self.size.store(ws.size(), Ordering::Relaxed);
        Ok(result?)
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// The session's current content (for handles open read-write).
    pub fn read(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.with(|ws| ws.read(offset, size))
    }

    fn base_key(&self) -> Option<VersionKey> {
        *lock(&self.base)
    }

    pub fn mark_unlinked(&self) {
        self.unlinked.store(true, Ordering::Relaxed);
    }

    /// Drops the draft: the committed version stays. Safe on a poisoned session (dropping a
    /// draft only removes its temporary file).
    fn discard(&self) {
        match self.state.lock() {
            Ok(mut ws) => ws.discard(),
            Err(poisoned) => poisoned.into_inner().discard(),
        }
    }
}

/// What opening for writing with `flags` needs of the file's mode.
fn write_mask(flags: i32) -> u32 {
    if flags & libc::O_ACCMODE == libc::O_RDWR {
        perm::MAY_READ | perm::MAY_WRITE
    } else {
        perm::MAY_WRITE
    }
}

impl Core {
    /// open(2) for writing (`O_WRONLY`/`O_RDWR`, with `O_TRUNC` applied here): needs an
    /// unlocked session and a key slot for the file's current version.
    pub(super) fn open_for_writing(
        &self,
        caller: Caller,
        ino: u64,
        rel: &str,
        flags: i32,
    ) -> FsResult<Opened> {
        let op = Op::new(EventKind::WriteOpen, caller, rel).flags(flags);
        self.change(
            op,
            || {
                let user = self.writer(caller)?;
                perm::need(
                    caller,
                    rel,
                    &self.reachable(caller, rel)?,
                    write_mask(flags),
                )?;
                let slot = self.handle_slot(caller.uid)?;
                let (version, _) = self.open_version(caller.uid, rel)?;
                Ok(Allowed {
                    user,
                    value: (slot, version),
                })
            },
            |Allowed { user, value }, recorded| {
                let (slot, version) = value;
                let session = self.join_session(recorded, ino, (&user, rel), version)?;
                let truncate = flags & libc::O_TRUNC != 0;
                self.open_writer(recorded, session, user, ino, rel, slot, truncate)
            },
        )
    }

    /// Creates `name` in `parent` (or opens it for writing, if it exists and `O_EXCL` is not
    /// given). A new file's empty version is committed at once, after its record, so that
    /// it exists for lookups while it is written.
    /// A new file gets the caller as owner and `mode & !umask` (see [`perm::new_ownership`]).
    pub fn create(
        &self,
        caller: Caller,
        (parent, name): (u64, &std::ffi::OsStr),
        (mode, umask): (u32, u32),
        flags: i32,
    ) -> FsResult<(Attr, Opened)> {
        let rel = self.child_rel(parent, name, libc::EPERM)?;
        let op = Op::new(EventKind::Create, caller, &rel).flags(flags);
        self.change(
            op,
            || {
                let user = self.writer(caller)?;
                match self.entry_kind(&rel)? {
                    Some(MountKind::Dir) => return Err(FsError::new(libc::EISDIR).into()),
                    // The kernel follows a link before it creates; one made meanwhile stays.
                    Some(MountKind::Link) => return Err(FsError::new(libc::EEXIST).into()),
                    _ => {}
                }
                let slot = self.handle_slot(caller.uid)?;
                let existing = match self.store.exists(&rel) {
                    Ok(true) if flags & libc::O_EXCL != 0 => {
                        return Err(FsError::new(libc::EEXIST).into())
                    }
                    Ok(true) => {
                        perm::need(
                            caller,
                            &rel,
                            &self.reachable(caller, &rel)?,
                            write_mask(flags),
                        )?;
                        Ok(self.open_version(caller.uid, &rel)?.0)
                    }
                    Ok(false) => {
                        let dir = self.may_add(caller, &rel)?;
                        Err(perm::new_ownership(
                            caller,
                            &user.name,
                            &dir,
                            mode & !umask,
                            false,
                        ))
                    }
                    Err(e) => return Err(FsError::from(e).into()),
                };
                Ok(Allowed {
                    user,
                    value: (slot, existing),
                })
            },
            |Allowed { user, value }, recorded| {
                let (slot, existing) = value;
                let ino = lock(&self.inodes).get_or_insert(&rel);
                let truncate = existing.is_ok() && flags & libc::O_TRUNC != 0;
                let session = match existing {
                    Ok(version) => self.join_session(recorded, ino, (&user, &rel), version)?,
                    Err(ownership) => {
                        self.create_session(recorded, ino, (&rel, ownership), &user)?
                    }
                };
                let opened =
                    self.open_writer(recorded, session.clone(), user, ino, &rel, slot, truncate)?;
                match self.attr_of(ino, &rel) {
                    Ok(Some(attr)) => Ok((attr, opened)),
                    other => {
                        let _ = self.release(opened.fh);
                        Err(other.err().unwrap_or(FsError::new(libc::EIO)))
                    }
                }
            },
        )
    }

    /// Writes `data` at `offset` through handle `fh`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let handle = self.files.get(fh).ok_or(FsError::new(libc::EBADF))?;
        let session = handle.write.as_ref().ok_or(FsError::new(libc::EBADF))?;
        if handle.user.is_locked() {
            return Err(FsError::new(libc::EACCES));
        }
        let rel = self
            .path_of(handle.ino)
            .unwrap_or_else(|| handle.rel.clone());
        session
            .with(|ws| ws.write(&self.store, &rel, offset, data))
            .map_err(|e| {
                log::error!("{rel}: write of {} bytes at {offset}: {e}", data.len());
                e
            })?;
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    /// flush(2)/fsync(2): commits the handle's write session, if any, so that close(2)
    /// reports commit errors (ENOSPC…) to the writer.
    pub fn commit(&self, fh: u64) -> FsResult<()> {
        match self.files.get(fh) {
            Some(handle) => match &handle.write {
                Some(session) => self.commit_session(handle.ino, session),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Sets the size of `rel` (inode `ino`): through the handle `fh` if it is open for
    /// writing, else (truncate(2) by path) in a session of its own, committed at once.
    pub(super) fn truncate(
        &self,
        caller: Caller,
        ino: u64,
        rel: &str,
        fh: Option<u64>,
        size: u64,
    ) -> FsResult<()> {
        let handle = fh
            .and_then(|fh| self.files.get(fh))
            .filter(|h| h.write.is_some());
        self.change(
            Op::new(EventKind::Truncate, caller, rel),
            || {
                let user = self.writer(caller)?;
                let by_path = match handle {
                    // ftruncate: the descriptor was opened for writing, which decided.
                    Some(_) => None,
                    None => Some((
                        perm::need(caller, rel, &self.reachable(caller, rel)?, perm::MAY_WRITE)
                            .map(|()| self.handle_slot(caller.uid))??,
                        self.open_version(caller.uid, rel)?.0,
                    )),
                };
                Ok(Allowed {
                    user,
                    value: by_path,
                })
            },
            |Allowed { user, value }, recorded| {
                let truncate = |s: &OpenSession| s.with(|ws| ws.truncate(&self.store, rel, size));
                match (value, &handle) {
                    (None, Some(h)) => h.write.as_ref().map_or(Ok(()), |s| truncate(s)),
                    (Some((_slot, version)), _) => {
                        let session = self.join_session(recorded, ino, (&user, rel), version)?;
                        let truncated = truncate(&session);
                        if truncated.is_err() {
                            self.abandon(ino, &session);
                            return truncated;
                        }
                        self.leave(ino, &session, true)
                    }
                    (None, None) => Err(FsError::new(libc::EBADF)),
                }
            },
        )
    }

    /// Joins (or starts) the session of `ino` that builds on `version`, which `user` was
    /// just authorized to write at `rel`. `ESTALE` (the path moves to a new inode) if the
    /// inode's session builds on another version; `EBUSY` if it is encrypted to a reader
    /// this writer did not choose (see [`Core::rewrite_recipients`]).
    fn join_session(
        &self,
        _: &Recorded,
        ino: u64,
        (user, rel): (&UserSession, &str),
        version: Arc<FileVersion>,
    ) -> FsResult<Arc<OpenSession>> {
        let key = version.key;
        // Read before any lock: it reads keyrings and the directory's policy.
        let recipients = self.rewrite_recipients(rel, user, &version)?;
        let allowed: Vec<String> = recipients.iter().map(|(name, _)| name.clone()).collect();
        let mut fresh: Option<Arc<OpenSession>> = None;
        loop {
            let existing = lock(&self.sessions).get(&ino).cloned();
            if let Some(existing) = existing {
                match self.join(ino, &existing, key, &allowed) {
                    Some(joined) => return joined,
                    None => continue,
                }
            }
            // Built without holding `sessions`: it reserves memory. A new version keeps the
            // file's owner, group and mode.
            let session = match fresh.take() {
                Some(session) => session,
                None => Arc::new(self.new_session(
                    user.uid,
                    recipients.clone(),
                    version.reader.ownership().clone(),
                    Some(version.clone()),
                )?),
            };
            let mut sessions = lock(&self.sessions);
            if sessions.contains_key(&ino) {
                // Another opener started one meanwhile: join that one instead.
                fresh = Some(session);
                continue;
            }
            session.writers.store(1, Ordering::Relaxed);
            sessions.insert(ino, session.clone());
            return Ok(session);
        }
    }

    /// Joins `session` if it is still the one registered for `ino` (None: it ended
    /// meanwhile, the caller looks again) and the joiner may write to all its readers.
    fn join(
        &self,
        ino: u64,
        session: &Arc<OpenSession>,
        key: VersionKey,
        allowed: &[String],
    ) -> Option<FsResult<Arc<OpenSession>>> {
        let sessions = lock(&self.sessions);
        let current = sessions.get(&ino).filter(|s| Arc::ptr_eq(s, session))?;
        if current.base_key() == Some(key) {
            if !current.readers.iter().all(|r| allowed.contains(r)) {
                return Some(Err(FsError::new(libc::EBUSY)));
            }
            current.writers.fetch_add(1, Ordering::Relaxed);
            return Some(Ok(current.clone()));
        }
        // The inode's session builds on another version: this open gets an inode of its own.
        drop(sessions);
        lock(&self.inodes).detach(ino);
        Some(Err(FsError::new(libc::ESTALE)))
    }

    /// The session of a new file, whose empty first version is committed now.
    fn create_session(
        &self,
        _: &Recorded,
        ino: u64,
        (rel, ownership): (&str, Ownership),
        user: &UserSession,
    ) -> FsResult<Arc<OpenSession>> {
        let keyring = self.store.user(&user.name)?;
        let recipients = self
            .store
            .recipients_for_new(rel, &keyring)?
            .into_iter()
            .map(|k| (k.name, k.public_key))
            .collect();
        let session = self.new_session(user.uid, recipients, ownership, None)?;
        self.commit_in(rel, &session)?;
        let session = Arc::new(session);
        session.writers.store(1, Ordering::Relaxed);
        lock(&self.sessions).insert(ino, session.clone());
        Ok(session)
    }

    fn new_session(
        &self,
        uid: u32,
        recipients: Vec<(String, PublicKey)>,
        ownership: Ownership,
        base: Option<Arc<FileVersion>>,
    ) -> FsResult<OpenSession> {
        let log2 = base.as_ref().map_or(self.store.default_chunk_log2(), |b| {
            b.reader.header().chunk_log2
        });
        let size = base.as_ref().map_or(0, |b| b.reader.len());
        let memory = session::reserve(&self.limits.writes, uid, log2, size)?;
        let ws = WriteSession::new(
            self.max_file_size(log2),
            recipients,
            ownership,
            log2,
            base,
            memory,
        );
        Ok(OpenSession::new(self.versions.fresh_id(), ws))
    }

    /// Finishes opening a writable handle on a joined session: page-cache rules, `O_TRUNC`,
    /// then the handle. Gives the session up again if any step fails.
    #[allow(clippy::too_many_arguments)]
    fn open_writer(
        &self,
        recorded: &Recorded,
        session: Arc<OpenSession>,
        user: Arc<UserSession>,
        ino: u64,
        rel: &str,
        slot: super::limits::Charge,
        truncate: bool,
    ) -> FsResult<Opened> {
        let ready = self
            .open_pages(ino, Content::Session(session.id), IoMode::Cached)
            .and_then(|pages| {
                if truncate {
                    session.with(|ws| ws.truncate(&self.store, rel, 0))?;
                }
                Ok(pages)
            });
        match ready {
            Ok(pages) => Ok(self.add_handle(
                recorded,
                Reads::Session(session),
                user,
                (ino, rel),
                slot,
                pages,
                None,
            )),
            Err(e) => {
                self.abandon(ino, &session);
                Err(e)
            }
        }
    }

    /// Gives up a joined session without committing (an open that then failed).
    fn abandon(&self, ino: u64, session: &Arc<OpenSession>) {
        let _ = self.leave(ino, session, false);
    }

    /// One writer leaves `session`; if it was the last, the session ends: committed when
    /// `commit`, else discarded.
    pub(super) fn leave(&self, ino: u64, session: &Arc<OpenSession>, commit: bool) -> FsResult<()> {
        let last = {
            let mut sessions = lock(&self.sessions);
            let last = session.writers.fetch_sub(1, Ordering::Relaxed) <= 1;
            if last && sessions.get(&ino).is_some_and(|s| Arc::ptr_eq(s, session)) {
                sessions.remove(&ino);
            }
            last
        };
        match (last, commit) {
            (true, true) => self.commit_session(ino, session),
            (true, false) => {
                session.discard();
                Ok(())
            }
            (false, _) => Ok(()),
        }
    }

    /// Commits `session` at the current path of `ino`.
    fn commit_session(&self, ino: u64, session: &OpenSession) -> FsResult<()> {
        // Unlinked, or the inode lost its path (another file was renamed over it): as on
        // any POSIX filesystem, what was written goes with the file. Committing at the old
        // name would overwrite the file now there, which this writer may hold no slot for.
        let rel = match self.path_of(ino) {
            Some(rel) if !session.unlinked.load(Ordering::Relaxed) => rel,
            _ => {
                session.discard();
                return Ok(());
            }
        };
        self.commit_in(&rel, session).map_err(|e| {
            log::error!("{rel}: commit failed, previous version kept: {e}");
            e
        })
    }

    /// Commits at `rel`. The draft carries the ownership the file had when the session
    /// started; a chmod or chgrp made since is put back on the new version.
    fn commit_in(&self, rel: &str, session: &OpenSession) -> FsResult<()> {
        let shown = self.attr_of(0, rel)?;
        let next = self.versions.fresh_id();
        let (key, drafted) =
            session.with(|ws| Ok((ws.commit(&self.store, rel, next)?, ws.ownership().clone())))?;
        if let Some(key) = key {
            *lock(&session.base) = Some(key);
            if let Some(a) = shown {
                let now = Ownership::new(a.owner, a.gid, u32::from(a.perm));
                if now != drafted {
                    self.store.set_ownership(rel, &now)?;
                }
            }
            // Last: rewriting the ownership record gives the file a new mtime.
            let (atime, mtime) = *lock(&session.times);
            if atime.is_some() || mtime.is_some() {
                self.store.set_times(rel, MountKind::File, atime, mtime)?;
            }
        }
        Ok(())
    }

    /// (name, public key) of every recipient of a committed version, for its next version.
    /// Remembers times just set on `ino` for its open write session, if it has one.
    pub(super) fn keep_times(&self, ino: u64, atime: Option<SetTime>, mtime: Option<SetTime>) {
        if let Some(session) = lock(&self.sessions).get(&ino) {
            let mut times = lock(&session.times);
            times.0 = atime.or(times.0);
            times.1 = mtime.or(times.1);
        }
    }

    /// Who a new version of `rel` written by `user` is encrypted to: what a new file there
    /// would get (the writer and the directory's `.tvault-recipients`) and, only when the
    /// writer owns the file, also the readers of the version it replaces. So a file planted
    /// by someone else where a job writes does not carry the job's output back to them: no
    /// write reaches a reader its writer did not choose, by owning the file or by writing
    /// into a directory whose policy names them.
    fn rewrite_recipients(
        &self,
        rel: &str,
        user: &UserSession,
        version: &FileVersion,
    ) -> FsResult<Vec<(String, PublicKey)>> {
        let keyring = self.store.user(&user.name)?;
        let mut recipients = self.store.recipients_for_new(rel, &keyring)?;
        // Read now, not from `version`: a cached version keeps the record it was opened
        // with, and `tvault chown` changes the record without changing the version.
        let owned = self
            .attr_of(0, rel)?
            .is_some_and(|a| a.owner.as_deref() == Some(user.name.as_str()));
        if owned {
            let previous = version.reader.slots().iter().map(|s| s.label.as_str());
            for k in self.store.keyrings_for(previous) {
                if !recipients.iter().any(|r| r.name == k.name) {
                    recipients.push(k);
                }
            }
        }
        Ok(recipients
            .into_iter()
            .map(|k| (k.name, k.public_key))
            .collect())
    }

    /// The largest file a write through the mount may make with chunks of `2^log2` bytes:
    /// one whose chunk table (and MAC) fits in what one uid may hold for an open file, so
    /// that it can be read back; and a sparse write far past the end cannot make a commit
    /// seal (and the draft index) an unbounded number of chunks.
    fn max_file_size(&self, log2: u8) -> u64 {
        let table = self
            .limits
            .metadata
            .per_uid()
            .saturating_sub(crate::crypto::MAC_LEN as u64);
        (table / crate::container::TABLE_ENTRY_LEN as u64).saturating_mul(1 << log2)
    }

    /// The size of `ino` while it is being written (the session's), if it is.
    pub(super) fn session_size(&self, ino: u64) -> Option<u64> {
        lock(&self.sessions).get(&ino).map(|s| s.size())
    }

    /// Marks the sessions of `inos` unlinked: their writes are dropped, not committed.
    pub(super) fn unlink_sessions(&self, inos: &[u64]) {
        let sessions = lock(&self.sessions);
        for ino in inos {
            if let Some(s) = sessions.get(ino) {
                s.mark_unlinked();
            }
        }
    }
}
