//! Opening files: the open decision, and the table of authenticated versions it fills.
//!
//! An open reads the container from a descriptor opened now, lets the caller's key slot
//! decide, and authenticates the header and chunk table under the key that slot gives; the
//! version is then named by that file id and MAC, whatever the file's inode, size or times
//! say, and every handle of that version (of any user) shares its decrypted chunks.

use std::sync::Arc;

use super::eager::{Acquired, Copy, CopyRef};
use super::error::{FsError, FsResult};
use super::handles::{Handle, Reads};
use super::limits::Charge;
use super::op::{Allowed, Op, Recorded, Refusal};
use super::versions::{Conflict, Content, FileVersion, IoMode, PageCache, PageRef, VersionKey};
use super::{perm, Caller, Core, DataPath};
use crate::access::{Denial, UserSession};
use crate::audit::EventKind;
use crate::container::{Container, ContainerError, Source};
use crate::safetensors;
use crate::store::StoreError;
use crate::sync::lock;

/// Safetensors headers up to this length are parsed for tensor-aware prefetch; a larger
/// one (the format allows 100 MB) is not kept in memory, and its file is prefetched like
/// any other.
const MAX_PREFETCH_HEADER: u64 = 16 << 20;

/// Files smaller than this are never copied whole: the chunked path serves them as fast.
const EAGER_MIN: u64 = 1 << 20;

/// A new handle.
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep the inode's cached pages: they hold this very content.
    pub keep_cache: bool,
    /// The kernel reads this plaintext copy directly (FUSE passthrough).
    pub passthrough: Option<Arc<Copy>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("fh", &self.fh)
            .field("keep_cache", &self.keep_cache)
            .field("passthrough", &self.passthrough.as_ref().map(|c| c.id))
            .finish()
    }
}

impl Core {
    /// open(2) of inode `ino` with `flags` (`O_ACCMODE`, `O_TRUNC`).
    pub fn open(&self, caller: Caller, ino: u64, flags: i32) -> FsResult<Opened> {
        let rel = self.path_of(ino).ok_or(FsError::new(libc::ENOENT))?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return self.open_for_writing(caller, ino, &rel, flags);
        }
        let op = Op::new(EventKind::Open, caller, &rel).flags(flags);
        self.change(
            op,
            || {
                perm::need(caller, &rel, &self.reachable(caller, &rel)?, perm::MAY_READ)?;
                let slot = self.handle_slot(caller.uid)?;
                let (version, user) = self.open_version(caller.uid, &rel)?;
                let copy = self.eager_copy(caller, (ino, &rel), &version, &user.name);
                // A lock that came while the copy was made applies to it.
                if user.is_locked() {
                    return Err(Refusal::Failed(FsError::new(libc::EACCES)));
                }
                let want = copy
                    .as_ref()
                    .map_or(IoMode::Cached, |c| IoMode::Passthrough(c.copy.id));
                let pages = self.open_pages(ino, Content::Version(version.key), want)?;
                // The inode's open files may rule passthrough out: the copy stays cached.
                let copy = copy.filter(|_| matches!(pages.1.mode(), IoMode::Passthrough(_)));
                Ok(Allowed {
                    user,
                    value: (version, slot, pages, copy),
                })
            },
            |Allowed { user, value }, recorded| {
                let (version, slot, pages, copy) = value;
                Ok(self.add_handle(
                    recorded,
                    Reads::Version(version),
                    user,
                    (ino, &rel),
                    slot,
                    pages,
                    copy,
                ))
            },
        )
    }

    /// The whole-file copy an open of `version` by `uid` on `ino` reads, where the data path
    /// wants one and the kernel takes passthrough files. `eager`: every file within the
    /// budget. `auto`: a version that an earlier handle read at least half of (so partial
    /// readers never pay for a whole file), unless the inode's page cache already holds it
    /// (the kernel then has a plaintext copy, and a second would only cost a fill). Local
    /// stores only: a remote one would have to download the whole file before the open
    /// returns.
    fn eager_copy(
        &self,
        caller: Caller,
        (ino, rel): (u64, &str),
        version: &FileVersion,
        user: &str,
    ) -> Option<CopyRef> {
        let eager = self.eager.get()?;
        let len = version.reader.len();
        if !self.passthrough_available()
            || !self.store.is_local()
            || len < EAGER_MIN
            || len > eager.copies.budget() / 2
            || (eager.path == DataPath::Auto
                && (!self.versions.read_whole(&version.key)
                    || self.versions.pages_hold(ino, Content::Version(version.key))))
        {
            return None;
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        match eager.copies.acquire(version, caller.uid, threads) {
            Acquired::Held(copy) => {
                if copy.made {
                    self.stats
                        .bytes_decrypted
                        .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                }
                Some(copy)
            }
            Acquired::Failed { error, integrity } => {
                log::warn!("no plaintext copy of a file (served chunked): {error}");
                if integrity {
                    Core::count(&self.stats.integrity_failures);
                    let _ = self.audit.record(
                        &crate::audit::Event::from_pid(EventKind::IntegrityFailure, caller.pid)
                            .uid(caller.uid)
                            .user(user)
                            .path(rel)
                            .detail(error),
                    );
                }
                None
            }
            Acquired::OtherHolder | Acquired::NoRoom | Acquired::Damaged => None,
        }
    }

    /// close(2) of the last descriptor of handle `fh`: a write session loses a writer (the
    /// last one commits it).
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let Some(handle) = self.files.remove(fh) else {
            return Ok(());
        };
        let ino = handle.ino;
        let committed = match &handle.write {
            Some(session) => self.leave(ino, session, true),
            None => Ok(()),
        };
        drop(handle);
        self.release_inode(ino);
        committed
    }

    /// Authenticates the current version of `rel` for `uid` (see the module doc).
    pub(super) fn open_version(
        &self,
        uid: u32,
        rel: &str,
    ) -> Result<(Arc<FileVersion>, Arc<UserSession>), Refusal> {
        let file = self.store.open_container_file(rel).map_err(|e| match e {
            e if e.is_not_found() => self.not_a_file(rel),
            StoreError::Symlink(_) | StoreError::NotRegular { .. } => FsError::new(libc::ENOENT),
            e => FsError::from(e),
        })?;
        // The fixed header and slots lead the container, the chunk table and MAC end it: a
        // remote store fetches both ends at once.
        if let Ok(size) = file.size() {
            file.will_need(0, 1);
            file.will_need(size.saturating_sub(1), 1);
        }
        let container = Container::parse(file).map_err(integrity)?;
        let (session, data_key) = self.access.authorize(&self.store, uid, &container)?;
        // The chunk table is held in memory while the file is open: charged to the opener
        // before it is read, so that a crafted header cannot make the daemon allocate more.
        let charge = self
            .limits
            .metadata
            .charge(uid, container.table_len())
            .map_err(FsError::from)?;
        let reader = data_key
            .open(container, self.limits.metadata.per_uid())
            .map_err(integrity)?;
        let key: VersionKey = (reader.header().file_id, *reader.mac());
        if let Some(version) = self.versions.live(&key) {
            return Ok((version, session));
        }
        let mut version = FileVersion::new(self.versions.id_for(&key), reader);
        version.charges.push(charge);
        if rel.ends_with(".safetensors") {
            if let Some((tensors, charge)) = self.read_safetensors_header(uid, &version) {
                version.tensors = Some(tensors);
                version.charges.push(charge);
            }
        }
        Ok((self.versions.insert(Arc::new(version)), session))
    }

    /// Parses the header of an encrypted `.safetensors` through the cache (only the chunks
    /// holding the header are decrypted), charging what the parsed header holds to `uid`.
    /// A malformed or oversized header, or one over the uid's bound, only disables prefetch.
    fn read_safetensors_header(
        &self,
        uid: u32,
        file: &FileVersion,
    ) -> Option<(safetensors::Header, Charge)> {
        let mut prefix = [0u8; 8];
        let n = self.read_into(file, 0, &mut prefix).ok()?;
        let len =
            safetensors::header_len(&prefix.get(..n)?.try_into().ok()?, file.reader.len()).ok()?;
        if len > MAX_PREFETCH_HEADER {
            return None;
        }
        // The JSON and the parsed table together stay within about three times its length.
        let charge = self.limits.metadata.charge(uid, 3 * len).ok()?;
        let mut json = zeroize::Zeroizing::new(vec![0u8; usize::try_from(len).ok()?]);
        self.read_into(file, 8, &mut json).ok()?;
        let header = safetensors::parse_header(&json, file.reader.len()).ok()?;
        Some((header, charge))
    }

    /// A place for a new handle in `uid`'s bound: `EMFILE` when the uid holds its share of
    /// open handles, `ENFILE` when the mount holds all it may.
    pub(super) fn handle_slot(&self, uid: u32) -> Result<Charge, FsError> {
        Ok(self.limits.handles.charge(uid, 1)?)
    }

    /// Page-cache rules for a new handle of `ino` reading `content`. On a conflict (other
    /// content open on the inode) the path moves to a new inode and the caller answers
    /// `ESTALE`: the kernel then looks the path up again (`LOOKUP_REVAL`), gets the new
    /// inode and retries the open there, with a page cache of its own.
    ///
    /// Content other than the inode's last (another host rewrote the file, say) may have
    /// another size than the one the kernel cached with the inode's attributes (for up to the
    /// attribute TTL): reads would stop at the old size, cutting the new version short. So the
    /// kernel is told to forget those attributes before the open is answered; its next size
    /// check then asks again.
    pub(super) fn open_pages(
        &self,
        ino: u64,
        content: Content,
        want: IoMode,
    ) -> Result<(PageCache, PageRef), FsError> {
        let opened = self
            .versions
            .open_pages(ino, content, want)
            .map_err(|Conflict| {
                lock(&self.inodes).detach(ino);
                FsError::new(libc::ESTALE)
            })?;
        if opened.0 == PageCache::Fresh {
            if let Some(invalidate) = self.invalidator.get() {
                // ENOENT: the kernel holds no such inode, so no attributes either.
                if let Err(e) = invalidate(ino, super::Forget::Attributes) {
                    log::debug!("cannot invalidate the attributes of inode {ino}: {e}");
                }
            }
        }
        Ok(opened)
    }

    /// Enters a new handle in the open-file table (after its open was recorded).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_handle(
        &self,
        _: &Recorded,
        reads: Reads,
        user: Arc<UserSession>,
        (ino, rel): (u64, &str),
        slot: Charge,
        (cache, pages): (PageCache, PageRef),
        copy: Option<CopyRef>,
    ) -> Opened {
        let passthrough = copy.as_ref().map(|c| c.copy.clone());
        let handle = Handle::new(reads, user, ino, rel.to_string(), slot, pages, copy);
        Opened {
            fh: self.files.add(handle),
            keep_cache: matches!(cache, PageCache::Keep),
            passthrough,
        }
    }

    /// Forgets a detached inode once no handle is open on it: nothing can reach it then.
    pub(super) fn release_inode(&self, ino: u64) {
        if !lock(&self.inodes).is_detached(ino) {
            return;
        }
        if !self.files.holds(ino) {
            lock(&self.inodes).forget_detached(ino);
            self.versions.forget_inode(ino);
        }
    }
}

/// A container that does not parse or authenticate: denied as `integrity` (the path is
/// logged and recorded with it). An OS error reading it decides nothing (it is not the
/// container's fault).
fn integrity(e: ContainerError) -> Refusal {
    match e {
        ContainerError::Io(e) => Refusal::Failed(FsError::from(ContainerError::Io(e))),
        e => Refusal::Denied(Denial::Integrity(e)),
    }
}
