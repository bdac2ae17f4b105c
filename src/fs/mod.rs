//! The FUSE frontend: shows `STORE/REL.tvlt` as `MOUNT/REL`, decides every open through
//! `access`, and serves reads from the chunk cache. It holds no crypto of its own: chunks are
//! decrypted by `container::Reader`.

mod buffers;
mod cache;
mod inodes;
mod limits;
mod prefetch;
mod versions;
mod write;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::Stat;

use crate::access::{Access, Denial, UserSession};
use crate::audit::{AuditLog, Event, EventKind};
use crate::container::{Container, ContainerError, FixedHeader, FIXED_HEADER_LEN};
use crate::safetensors;
use crate::store::{SetTime, Store, StoreError, MAX_NAME_LEN, META_DIR, RECIPIENTS_FILE};

use buffers::{BufferPool, Plain};
pub use cache::ChunkCache;
use inodes::{child_path, Inodes};
use limits::{Charge, Limits};
pub(crate) use versions::FileVersion;
use versions::{Conflict, Content, PageCache, PageRef, VersionKey, Versions};
use write::WriteSession;

/// Attributes and entries are cached by the kernel this long; opens always reach us, so
/// access decisions are never cached.
const TTL: Duration = Duration::from_secs(1);
/// A reader of a `.safetensors` file that has read this much in order is streaming it
/// (e.g. copying the whole file) and is prefetched past tensor boundaries.
const STREAMING_BYTES: u64 = 8 << 20;
/// The least a sequential reader is prefetched ahead.
const MIN_AHEAD: u64 = 256 << 10;
/// Safetensors headers up to this length are parsed for tensor-aware prefetch; a larger
/// one (the format allows 100 MB) is not kept in memory, and its file is prefetched like
/// any other.
const MAX_PREFETCH_HEADER: u64 = 16 << 20;
/// Paths warned about (links, special files in the store) are remembered up to this many,
/// so that each is logged once.
const MAX_WARNED: usize = 4096;

/// Counters reported by `tvault status`.
#[derive(Default)]
pub struct Stats {
    pub bytes_decrypted: AtomicU64,
    pub opens_allowed: AtomicU64,
    pub opens_denied: AtomicU64,
    pub integrity_failures: AtomicU64,
}

struct Handle {
    /// The committed version a read-only handle reads (close-to-open consistency).
    file: Option<Arc<FileVersion>>,
    /// The write session of a handle open for writing (it reads the session's content).
    write: Option<Arc<Mutex<WriteSession>>>,
    session: Arc<UserSession>,
    ino: u64,
    rel: String,
    /// Where a sequential reader's next request would start.
    next_offset: AtomicU64,
    /// Plaintext offset up to which chunks were already handed to the prefetcher.
    prefetched_to: AtomicU64,
    /// Bytes read in one unbroken sequential run.
    streak: AtomicU64,
    /// This handle's place in the uid's bound on open handles.
    _slot: Charge,
    /// Counts this handle among those that may fill the inode's page cache.
    _pages: Option<PageRef>,
}

impl Handle {
    fn new(
        file: Option<Arc<FileVersion>>,
        write: Option<Arc<Mutex<WriteSession>>>,
        session: Arc<UserSession>,
        ino: u64,
        rel: String,
        slot: Charge,
    ) -> Self {
        if let Some(f) = &file {
            f.readers.fetch_add(1, Ordering::Relaxed);
        }
        Handle {
            file,
            write,
            session,
            ino,
            rel,
            next_offset: AtomicU64::new(0),
            prefetched_to: AtomicU64::new(0),
            streak: AtomicU64::new(0),
            _slot: slot,
            _pages: None,
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            f.readers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// An open directory's entries: (inode, kind, name), `.` and `..` first.
type Listing = Vec<(u64, FileType, String)>;
/// What one listing entry takes besides its name's bytes (the tuple, the map slot).
const LISTING_ENTRY: usize = std::mem::size_of::<(u64, FileType, String)>() + 16;

/// State shared between the FUSE handlers and the daemon's control socket.
pub struct Shared {
    pub store: Store,
    pub access: Arc<Access>,
    pub cache: ChunkCache,
    buffers: Arc<BufferPool>,
    pub stats: Stats,
    inodes: Mutex<Inodes>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    /// Listings of open directories, taken at opendir, so that a long directory is read in
    /// one pass however many readdir calls it takes; each charged to its opener.
    dirs: RwLock<HashMap<u64, (Arc<Listing>, Charge)>>,
    next_fh: AtomicU64,
    versions: Versions,
    limits: Limits,
    /// Store paths already warned about (links, special files), so each is logged once.
    warned: Mutex<HashSet<String>>,
    prefetch: prefetch::Prefetcher,
    notifier: OnceLock<Notifier>,
    /// Inodes open for writing, one session each, shared by their writable handles.
    sessions: Mutex<HashMap<u64, Arc<Mutex<WriteSession>>>>,
    read_only: bool,
    pub audit: Arc<AuditLog>,
}

/// An open file as `tvault status` reports it.
pub struct OpenFileInfo {
    pub path: String,
    pub uid: u32,
    pub user: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(
        store: Store,
        access: Arc<Access>,
        cache_bytes: u64,
        read_only: bool,
        audit: Arc<AuditLog>,
    ) -> Arc<Self> {
        let limits = Limits::new(limits::nofile_limit(), cache_bytes);
        log::info!(
            "bounds: {} open handles per uid, {} bytes of file metadata per uid",
            limits.handles.per_uid(),
            limits.metadata.per_uid()
        );
        // Free buffers kept for reuse: a slice of the cache, at most 32 MiB. One slab for the
        // store's chunk size is mapped now, off the first read's path.
        let buffers = BufferPool::new(
            (cache_bytes / 8).min(32 << 20) as usize,
            1usize << store.default_chunk_log2(),
        );
        Arc::new_cyclic(|weak| Shared {
            store,
            access,
            cache: ChunkCache::new(cache_bytes),
            buffers,
            stats: Stats::default(),
            inodes: Mutex::new(Inodes::new()),
            handles: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            versions: Versions::new(),
            limits,
            warned: Mutex::new(HashSet::new()),
            prefetch: prefetch::Prefetcher::new(weak.clone()),
            notifier: OnceLock::new(),
            sessions: Mutex::new(HashMap::new()),
            read_only,
            audit,
        })
    }

    /// Drops every decrypted chunk, and the names under which a reopened version would find
    /// them.
    pub fn forget_plaintext(&self) {
        self.cache.clear();
        self.versions.clear();
    }

    /// Memory mapped for decrypted chunks: the cache's buffers plus free ones kept for reuse.
    pub fn buffer_bytes(&self) -> usize {
        self.buffers.mapped_bytes()
    }

    /// Bytes of file metadata (chunk tables, parsed headers) held for open files.
    pub fn metadata_bytes(&self) -> u64 {
        self.limits.metadata.used()
    }

    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    pub fn open_files(&self) -> Vec<OpenFileInfo> {
        let handles = self.handles.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = handles
            .values()
            .map(|h| OpenFileInfo {
                path: h.rel.clone(),
                uid: h.session.uid,
                user: h.session.name.clone(),
            })
            .collect();
        out.sort_by(|a, b| (a.uid, &a.path).cmp(&(b.uid, &b.path)));
        out
    }

    /// Drops the kernel's page cache for every file `uid` has open, so that reads on those
    /// handles (and faults in their mappings) come back to us and are refused.
    pub fn invalidate_open_files_of(&self, uid: u32) -> usize {
        let inos: Vec<u64> = {
            let handles = self.handles.read().unwrap_or_else(|p| p.into_inner());
            handles
                .values()
                .filter(|h| h.session.uid == uid)
                .map(|h| h.ino)
                .collect()
        };
        if let Some(notifier) = self.notifier.get() {
            for &ino in &inos {
                if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                    log::warn!("cannot invalidate inode {ino}: {e}");
                }
            }
        }
        // The next open of these inodes must not reuse pages either.
        for &ino in &inos {
            self.versions.forget_pages(ino);
        }
        inos.len()
    }

    /// Logs a problem with a store path once per path (a planted link must not flood the log).
    fn warn_once(&self, rel: &str, what: &dyn std::fmt::Display) {
        let mut warned = lock(&self.warned);
        if warned.len() < MAX_WARNED && warned.insert(rel.to_string()) {
            log::warn!("{rel}: {what}");
        }
    }

    /// Decrypted chunk `index` of `file`, from the cache or freshly decrypted into it. The
    /// ciphertext is read with `pread` (never mapped: a store writer truncating the file
    /// must cause an error, not SIGBUS).
    pub(crate) fn chunk(
        &self,
        file: &FileVersion,
        index: u64,
    ) -> Result<Arc<Plain>, ContainerError> {
        thread_local! {
            /// Ciphertext of a scattered chunk on its way to being decrypted.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        self.cache.get_or_load((file.id, index), || {
            let (start, end) = file.reader.header().chunk_range(index);
            let len = (end - start) as usize;
            let mut plain = self.buffers.take(len, file.reader.chunk_size() as usize);
            let read = SCRATCH.with_borrow_mut(|scratch| {
                file.reader
                    .read_chunk_with(index, plain.as_mut_slice(), scratch)
            });
            if let Err(e) = read {
                if matches!(e, ContainerError::ChunkAuthentication { .. }) {
                    self.stats
                        .integrity_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Err(e);
            }
            self.stats
                .bytes_decrypted
                .fetch_add(len as u64, Ordering::Relaxed);
            Ok(plain)
        })
    }

    /// Reads `[offset, offset + size)` of `file` (clipped at EOF) and passes it to `reply`.
    fn read_range(
        &self,
        file: &FileVersion,
        offset: u64,
        size: u32,
    ) -> Result<ReadOutcome, ContainerError> {
        let len = file.reader.len();
        if offset >= len || size == 0 {
            return Ok(ReadOutcome::Single(None, 0, 0));
        }
        let end = len.min(offset + u64::from(size));
        let log2 = file.reader.header().chunk_log2;
        let first = offset >> log2;
        let last = (end - 1) >> log2;
        if first == last {
            // Served straight from the cached chunk, no copy.
            let chunk = self.chunk(file, first)?;
            let base = first << log2;
            return Ok(ReadOutcome::Single(
                Some(chunk),
                (offset - base) as usize,
                (end - base) as usize,
            ));
        }
        // Replies spanning chunks are assembled in pooled (locked, recycled) buffers, sized
        // in powers of two so that each request size reuses the same few.
        let total = (end - offset) as usize;
        let mut out = self.buffers.take(total, total.next_power_of_two());
        let mut at = 0;
        for index in first..=last {
            let chunk = self.chunk(file, index)?;
            let base = index << log2;
            let from = (offset.max(base) - base) as usize;
            let to = (end.min(base + chunk.as_slice().len() as u64) - base) as usize;
            out.as_mut_slice()[at..at + to - from].copy_from_slice(&chunk.as_slice()[from..to]);
            at += to - from;
        }
        Ok(ReadOutcome::Assembled(out))
    }

    /// What to decrypt on the worker pool for a read of `size` bytes at `offset`: the
    /// request's own later chunks, then ahead of it the rest of the tensor the read landed
    /// in, or, for a sequential reader of another file, a window past the read.
    /// Returns whether the read continues a sequential run.
    fn prefetch(&self, handle: &Handle, file: &Arc<FileVersion>, offset: u64, size: u32) {
        let len = file.reader.len();
        let end = len.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return;
        }
        let log2 = file.reader.header().chunk_log2;
        // The request's own chunks after its first go to the workers too, so that one large
        // request is decrypted on every core while this thread works on its first chunk.
        let (first, last) = (offset >> log2, (end - 1) >> log2);
        if last > first {
            if let Some(from) = (first + 1..=last).find(|&i| !self.cache.contains((file.id, i))) {
                self.prefetch.request(file, from, last);
            }
        }
        let sequential = handle.next_offset.swap(end, Ordering::Relaxed) == offset;
        let streak = if sequential {
            handle.streak.fetch_add(end - offset, Ordering::Relaxed) + (end - offset)
        } else {
            handle.streak.store(end - offset, Ordering::Relaxed);
            end - offset
        };
        let window = prefetch::window(self.cache.capacity());
        // Like the kernel's readahead, the distance ahead grows with the run: twice what
        // the reader has read in order so far. Two requests in a row (a small tensor's
        // read-around spilling into a big neighbour) earn a few chunks, not 16 MiB.
        let ahead = (2 * streak).clamp(MIN_AHEAD, window.max(MIN_AHEAD));
        // A safetensors file is prefetched tensor by tensor, so that reading the header or
        // one tensor never pays for its neighbours; only a reader that has streamed a few
        // MiB in order also gets a window beyond the tensor.
        let streaming = streak >= STREAMING_BYTES;
        let target_end = match &file.tensors {
            Some(h) => {
                // The rest of a tensor is decrypted ahead only for a reader going through it
                // in order (as `get_tensor` does from its second request on). A random reader
                // gets the chunks it asks for and no more, even when one lands at the start
                // of a tensor.
                match h
                    .tensor_at_file_offset(offset)
                    .map(|t| h.data_start() + t.end)
                {
                    _ if streaming => end + ahead,
                    Some(tensor_end) if sequential => tensor_end.min(end + ahead),
                    _ => return,
                }
            }
            None if sequential => end + ahead,
            None => return,
        }
        .min(len);
        // Resume where the last prefetch for this handle stopped, unless the reader jumped.
        let ahead = handle.prefetched_to.load(Ordering::Relaxed);
        let start = if ahead > end && ahead - end <= window {
            ahead
        } else {
            end
        };
        if target_end <= start {
            return;
        }
        handle.prefetched_to.store(target_end, Ordering::Relaxed);
        let from = start >> log2;
        let to = (target_end - 1) >> log2;
        let first_uncached = (from..=to).find(|&i| !self.cache.contains((file.id, i)));
        if let Some(from) = first_uncached {
            self.prefetch.request(file, from, to);
        }
    }

    /// Attributes of a store path, or None if it does not exist (or is hidden: links and
    /// special files in the store are never shown).
    fn attr_of(&self, ino: u64, rel: &str) -> Result<Option<FileAttr>, Errno> {
        let gate = self.store.gate();
        match gate.stat(rel) {
            Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                return Ok(Some(dir_attr(ino, &st)))
            }
            Ok(_) if rel.is_empty() => return Err(Errno::EIO),
            Ok(_) => {}
            Err(StoreError::Symlink(_)) => return Ok(None),
            Err(e) => return Err(store_errno(&e)),
        }
        let file = match self.store.open_container_file(rel) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e @ (StoreError::Symlink(_) | StoreError::NotRegular { .. })) => {
                self.warn_once(rel, &e);
                return Ok(None);
            }
            Err(e) => return Err(store_errno(&e)),
        };
        let st = rustix::fs::fstat(&file).map_err(|e| Errno::from_i32(e.raw_os_error()))?;
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        let header = std::os::unix::fs::FileExt::read_exact_at(&file, &mut fixed, 0)
            .map_err(ContainerError::from)
            .and_then(|()| FixedHeader::decode(&fixed));
        match header {
            Ok(h) => {
                // While a file is being written, its size is the session's.
                let session = lock(&self.sessions).get(&ino).cloned();
                let size = session.map_or(h.plaintext_len, |ws| lock(&ws).size());
                Ok(Some(file_attr(ino, &st, size, h.chunk_size())))
            }
            Err(e) => {
                self.warn_once(rel, &e);
                Err(Errno::EIO)
            }
        }
    }

    /// Opens `rel` for `uid`: the decision and what is served are one authenticated version.
    /// The container is read from a descriptor opened now, its slot decides, and its header
    /// and chunk table are authenticated under the key that slot gives; the version is then
    /// named by that file id and MAC, whatever the file's inode, size or times say.
    fn open_file(
        &self,
        uid: u32,
        rel: &str,
    ) -> Result<(Arc<FileVersion>, Arc<UserSession>), OpenError> {
        let file = self.store.open_container_file(rel).map_err(|e| match e {
            e if e.is_not_found() => OpenError::Errno(Errno::ENOENT),
            StoreError::Symlink(_) | StoreError::NotRegular { .. } => {
                OpenError::Errno(Errno::ENOENT)
            }
            e => OpenError::Errno(store_errno(&e)),
        })?;
        let integrity = |e: ContainerError| match e {
            ContainerError::Io(e) => OpenError::Errno(Errno::from(e)),
            e => OpenError::Denied(Denial::Integrity(e)),
        };
        let container = Container::parse(file).map_err(integrity)?;
        let (session, data_key) = self
            .access
            .authorize(&self.store, uid, &container)
            .map_err(OpenError::Denied)?;
        // The chunk table is held in memory while the file is open: charged to the opener
        // before it is read, so that a crafted header cannot make the daemon allocate more.
        let table_len = container.table_len();
        let charge = self
            .limits
            .metadata
            .charge(uid, table_len)
            .map_err(OpenError::Errno)?;
        let reader = container
            .open_with_limit(&data_key.key, self.limits.metadata.per_uid())
            .map_err(integrity)?;
        if !data_key.checked {
            session.remember_key(reader.header().file_id, data_key.key);
        }
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

    fn read_into(
        &self,
        file: &FileVersion,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, ContainerError> {
        let size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let n = match self.read_range(file, offset, size)? {
            ReadOutcome::Single(Some(chunk), from, to) => {
                buf[..to - from].copy_from_slice(&chunk.as_slice()[from..to]);
                to - from
            }
            ReadOutcome::Single(None, _, _) => 0,
            ReadOutcome::Assembled(plain) => {
                buf[..plain.as_slice().len()].copy_from_slice(plain.as_slice());
                plain.as_slice().len()
            }
        };
        Ok(n)
    }

    fn path_of(&self, ino: u64) -> Option<String> {
        lock(&self.inodes).path(ino).map(str::to_string)
    }

    /// Records an audit event. False if it could not be written: callers then refuse the
    /// operation they were about to allow (fail closed). The reason is logged by the audit log.
    fn audit(&self, event: Event) -> bool {
        self.audit.record(&event).is_ok()
    }

    /// Drops one writer from `ino`'s session; returns true if it was the last one (the
    /// session is then unregistered and the caller commits or discards it).
    fn drop_writer(&self, ino: u64, ws: &Arc<Mutex<WriteSession>>) -> bool {
        let mut sessions = lock(&self.sessions);
        let mut w = lock(ws);
        w.writers = w.writers.saturating_sub(1);
        let last = w.writers == 0;
        if last && sessions.get(&ino).is_some_and(|s| Arc::ptr_eq(s, ws)) {
            sessions.remove(&ino);
        }
        last
    }

    /// The store path of `name` in directory `parent`: ENOENT for an unknown parent;
    /// `hidden_errno` for a name the mount never shows (ENOENT when looking one up, EPERM
    /// when creating one).
    fn child_rel(
        &self,
        parent: INodeNo,
        name: &OsStr,
        hidden_errno: Errno,
    ) -> Result<String, Errno> {
        let parent_rel = self.path_of(parent.0).ok_or(Errno::ENOENT)?;
        match name.to_str() {
            // `NAME.tvlt` must fit in NAME_MAX: longer names could not be committed.
            Some(name) if name.len() > MAX_NAME_LEN => Err(Errno::ENAMETOOLONG),
            Some(name) if !hidden(&parent_rel, name) => Ok(child_path(&parent_rel, name)),
            _ => Err(hidden_errno),
        }
    }

    /// A place for a new handle in `uid`'s bound: `EMFILE` when the uid holds its share of
    /// open handles, `ENFILE` when the mount holds all it may.
    fn handle_slot(&self, uid: u32) -> Result<Charge, Errno> {
        self.limits.handles.charge(uid, 1)
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        self.handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned()
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(handle));
        fh
    }

    /// Forgets a detached inode once no handle is open on it: nothing can reach it then.
    fn release_inode(&self, ino: u64) {
        if !lock(&self.inodes).is_detached(ino) {
            return;
        }
        let held = self
            .handles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|h| h.ino == ino);
        if !held {
            lock(&self.inodes).forget_detached(ino);
            self.versions.forget_inode(ino);
        }
    }

    /// The unlocked session of `uid`, required for every change to the mount.
    fn writer(
        &self,
        uid: u32,
        what: EventKind,
        rel: &str,
        pid: u32,
    ) -> Result<Arc<UserSession>, Errno> {
        if self.read_only {
            return Err(Errno::EROFS);
        }
        self.access.session(uid).ok_or_else(|| {
            self.audit(Event::from_pid(what, pid).uid(uid).path(rel).deny("locked"));
            Errno::EACCES
        })
    }

    /// (name, public key) of every recipient of a committed version, for its next version.
    fn recipients_of(&self, version: &FileVersion) -> Vec<(String, crate::crypto::PublicKey)> {
        self.store
            .keyrings_for(version.reader.slots().iter().map(|s| s.label.as_str()))
            .into_iter()
            .map(|k| (k.name, k.public_key))
            .collect()
    }

    /// Opens (or joins) the write session of `ino` for `uid`, who must hold a key slot for
    /// the file's committed version.
    fn open_for_write(
        &self,
        uid: u32,
        ino: u64,
        rel: &str,
        truncate: bool,
    ) -> Result<(Arc<Mutex<WriteSession>>, Arc<UserSession>), OpenError> {
        let (version, user) = self.open_file(uid, rel)?;
        let mut sessions = lock(&self.sessions);
        let ws = match sessions.get(&ino) {
            // A session reads and writes the version it builds on: only an opener who was
            // just authorized for that very version may join it. The container may have been
            // replaced since (a store writer, `revoke --rekey`): then this open reads what it
            // authenticated, in a session of its own on a new inode.
            Some(ws) if lock(ws).base_key() != Some(version.key) => {
                drop(sessions);
                lock(&self.inodes).detach(ino);
                return Err(OpenError::Errno(Errno::ESTALE));
            }
            Some(ws) => ws.clone(),
            None => {
                let log2 = version.reader.header().chunk_log2;
                let memory = write::reserve(&self.limits.writes, uid, log2, version.reader.len())
                    .map_err(OpenError::Errno)?;
                let recipients = self.recipients_of(&version);
                let ws = Arc::new(Mutex::new(WriteSession::new(
                    self.versions.fresh_id(),
                    self.max_file_size(log2),
                    recipients,
                    log2,
                    Some(version),
                    memory,
                )));
                sessions.insert(ino, ws.clone());
                ws
            }
        };
        {
            let mut w = lock(&ws);
            if truncate {
                w.truncate(&self.store, rel, 0)
                    .map_err(|e| OpenError::Errno(e.errno()))?;
            }
            w.writers += 1;
        }
        Ok((ws, user))
    }

    /// Creates a new, empty file at `rel` for `user` (committed at once, so that it exists
    /// for lookups while it is being written) and returns its write session.
    fn create_file(
        &self,
        user: &UserSession,
        ino: u64,
        rel: &str,
    ) -> Result<Arc<Mutex<WriteSession>>, Errno> {
        let keyring = self.store.user(&user.name).map_err(|e| {
            log::error!("{rel}: {e}");
            Errno::EIO
        })?;
        let recipients = self
            .store
            .recipients_for_new(rel, &keyring)
            .map_err(|e| {
                log::error!("{rel}: {e}");
                Errno::EIO
            })?
            .into_iter()
            .map(|k| (k.name, k.public_key))
            .collect();
        let log2 = self.store.default_chunk_log2();
        let memory = write::reserve(&self.limits.writes, user.uid, log2, 0)?;
        let mut ws = WriteSession::new(
            self.versions.fresh_id(),
            self.max_file_size(log2),
            recipients,
            log2,
            None,
            memory,
        );
        ws.commit(&self.store, rel, self.versions.fresh_id())
            .map_err(|e| {
                log::error!("{rel}: {e}");
                e.errno()
            })?;
        ws.writers = 1;
        let ws = Arc::new(Mutex::new(ws));
        lock(&self.sessions).insert(ino, ws.clone());
        Ok(ws)
    }

    /// Commits a writable handle's session (on flush, fsync and the last release).
    fn commit(&self, handle: &Handle) -> Result<(), Errno> {
        let Some(ws) = &handle.write else {
            return Ok(());
        };
        // The inode lost its path: another file was renamed over it. As on any POSIX
        // filesystem, what was written to the replaced file goes with it; committing it at
        // the old name would overwrite the file now there, which this writer may hold no
        // key slot for.
        let Some(rel) = self.path_of(handle.ino) else {
            lock(ws).discard();
            return Ok(());
        };
        let result = lock(ws).commit(&self.store, &rel, self.versions.fresh_id());
        result.map(|_| ()).map_err(|e| {
            log::error!("{rel}: commit failed, previous version kept: {e}");
            e.errno()
        })
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

    /// Page-cache rules for a new handle of `ino` reading `content`. On a conflict (other
    /// content open on the inode) the path moves to a new inode and the caller answers
    /// `ESTALE`: the kernel then looks the path up again (`LOOKUP_REVAL`), gets the new
    /// inode and retries the open there, with a page cache of its own.
    fn open_pages(&self, ino: u64, content: Content) -> Result<(PageCache, PageRef), Errno> {
        self.versions.open_pages(ino, content).map_err(|Conflict| {
            lock(&self.inodes).detach(ino);
            Errno::ESTALE
        })
    }

    /// Gives up a write session joined by an open that is then refused.
    fn abandon_writer(&self, ino: u64, ws: &Arc<Mutex<WriteSession>>) {
        if self.drop_writer(ino, ws) {
            lock(ws).discard();
        }
    }

    /// The data key check for changing an existing file: `uid` must hold a slot for it.
    fn authorize_change(&self, uid: u32, rel: &str) -> Result<(), Errno> {
        match self.open_file(uid, rel) {
            Ok(_) => Ok(()),
            Err(OpenError::Errno(e)) => Err(e),
            Err(OpenError::Denied(why @ (Denial::Integrity(_) | Denial::StoreError(_)))) => {
                log::error!("{rel}: {why}");
                Err(Errno::EIO)
            }
            Err(OpenError::Denied(_)) => Err(Errno::EACCES),
        }
    }

    /// Extended attributes of a stored file, readable without reading its data: recipients
    /// and chunk size for anyone (the store shows them too); for a `.safetensors` file, the
    /// tensor count and header length only to users who may open it.
    fn xattrs(&self, uid: u32, rel: &str) -> Result<Vec<(&'static str, String)>, Errno> {
        let container = self.store.open_container(rel).map_err(|e| {
            log::warn!("{rel}: {e}");
            store_errno(&e)
        })?;
        let labels: Vec<&str> = container.slots().iter().map(|s| s.label.as_str()).collect();
        let mut attrs = vec![
            ("user.tvault.recipients", labels.join(",")),
            (
                "user.tvault.chunk_size",
                container.header().chunk_size().to_string(),
            ),
        ];
        if rel.ends_with(".safetensors") {
            if let Ok((version, _)) = self.open_file(uid, rel) {
                if let Some(h) = &version.tensors {
                    attrs.push(("user.tvault.tensor_count", h.tensors.len().to_string()));
                    attrs.push(("user.tvault.header_len", h.header_len.to_string()));
                }
            }
        }
        Ok(attrs)
    }

    fn is_file(&self, rel: &str) -> bool {
        self.store.exists(rel).unwrap_or(false)
    }

    fn is_dir(&self, rel: &str) -> bool {
        self.store.is_dir(rel)
    }
}

enum ReadOutcome {
    /// A range inside one cached chunk: (chunk, from, to).
    Single(Option<Arc<Plain>>, usize, usize),
    /// A range across chunks, copied together (wiped after the reply).
    Assembled(Plain),
}

enum OpenError {
    Errno(Errno),
    Denied(Denial),
}

fn to_system_time(secs: i64, nsecs: u64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nsecs.min(999_999_999) as u32),
        Err(_) => UNIX_EPOCH,
    }
}

fn base_attr(ino: u64, st: &Stat, kind: FileType, perm: u16, size: u64, blksize: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        // st_blocks must match the size, or `cp` takes the file for sparse.
        blocks: size.div_ceil(512),
        atime: to_system_time(st.st_atime, st.st_atime_nsec),
        mtime: to_system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: to_system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: to_system_time(st.st_mtime, st.st_mtime_nsec),
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: 0,
        blksize,
        flags: 0,
    }
}

// Modes are informational: tvault, not the kernel, decides access (no default_permissions).
fn dir_attr(ino: u64, st: &Stat) -> FileAttr {
    base_attr(ino, st, FileType::Directory, 0o555, 4096, 4096)
}

fn file_attr(ino: u64, st: &Stat, size: u64, chunk_size: u64) -> FileAttr {
    let blksize = u32::try_from(chunk_size).unwrap_or(65536);
    base_attr(ino, st, FileType::RegularFile, 0o444, size, blksize)
}

/// The errno a store error means to the caller; logged unless it is a plain OS error.
fn store_errno(e: &StoreError) -> Errno {
    if !matches!(e, StoreError::Io { .. }) {
        log::error!("{e}");
    }
    Errno::from_i32(e.errno())
}

/// Names the mount never shows: the store's metadata directory, and the policy file's name.
/// (Temporary and policy files in the store never show anyway: only `*.tvlt` containers and
/// directories are listed. But a directory named like the policy, made through the mount,
/// would stand in for the policy of its parents: files created beside it would be
/// encrypted to nobody else.)
fn hidden(parent: &str, name: &str) -> bool {
    name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name == RECIPIENTS_FILE
        || (parent.is_empty() && name == META_DIR)
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

/// Runs a handler body, turning a panic into EIO (the reply is dropped during the unwind,
/// which fuser answers with EIO) instead of killing the session thread and hanging the mount.
fn guarded(op: &str, body: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(body)) {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log::error!("panic in FUSE {op} handler (answered EIO): {msg}");
    }
}

pub(crate) fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

pub struct TvaultFs {
    shared: Arc<Shared>,
}

impl TvaultFs {
    pub fn new(shared: Arc<Shared>) -> Self {
        TvaultFs { shared }
    }

    /// Commits the handle's write session, if any, and answers with the result.
    fn commit_reply(&self, fh: FileHandle, reply: ReplyEmpty) {
        match self.shared.handle(fh).map(|h| self.shared.commit(&h)) {
            Some(Ok(())) | None => reply.ok(),
            Some(Err(e)) => reply.error(e),
        }
    }
}

impl Filesystem for TvaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Writes of up to 1 MiB per request; reads are sized by the mount's readahead.
        let _ = config.set_max_write(1 << 20);
        // O_TRUNC arrives with open, so a truncating writer never reads the old version.
        let _ = config
            .add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS | InitFlags::FUSE_ATOMIC_O_TRUNC);
        Ok(())
    }

    fn destroy(&mut self) {
        self.shared.access.lock_all();
        self.shared.forget_plaintext();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", || {
            let rel = match self.shared.child_rel(parent, name, Errno::ENOENT) {
                Ok(rel) => rel,
                Err(e) => return reply.error(e),
            };
            // Only paths that exist get an inode: probing for missing names must not grow
            // the table.
            match self.shared.attr_of(0, &rel) {
                Ok(Some(mut attr)) => {
                    attr.ino = INodeNo(lock(&self.shared.inodes).get_or_insert(&rel));
                    reply.entry(&TTL, &attr, Generation(0))
                }
                Ok(None) => reply.error(Errno::ENOENT),
                Err(e) => reply.error(e),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", || {
            let Some(rel) = self.shared.path_of(ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            match self.shared.attr_of(ino.0, &rel) {
                Ok(Some(attr)) => reply.attr(&TTL, &attr),
                Ok(None) => reply.error(Errno::ENOENT),
                Err(e) => reply.error(e),
            }
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded("opendir", || {
            let shared = &self.shared;
            let Some(rel) = shared.path_of(ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            // One pass over the store directory; readdir then serves slices of it.
            let listing = match shared.store.list_mount_dir(&rel) {
                Ok(l) => l,
                Err(e) => return reply.error(store_errno(&e)),
            };
            let parent_rel = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            let mut entries = Vec::with_capacity(listing.len() + 2);
            {
                let mut inodes = lock(&shared.inodes);
                let parent_ino = inodes.get_or_insert(parent_rel);
                entries.push((ino.0, FileType::Directory, ".".to_string()));
                entries.push((parent_ino, FileType::Directory, "..".to_string()));
                for e in listing {
                    if hidden(&rel, &e.name) || e.name.len() > MAX_NAME_LEN {
                        continue;
                    }
                    let child = inodes.get_or_insert(&child_path(&rel, &e.name));
                    let kind = if e.is_dir {
                        FileType::Directory
                    } else {
                        FileType::RegularFile
                    };
                    entries.push((child, kind, e.name));
                }
            }
            // What the listing holds, charged to the uid that opened it.
            let bytes = entries
                .iter()
                .map(|e| LISTING_ENTRY + e.2.len())
                .sum::<usize>()
                + LISTING_ENTRY;
            let charge = match shared.limits.listings.charge(req.uid(), bytes as u64) {
                Ok(c) => c,
                Err(e) => return reply.error(e),
            };
            let fh = shared.next_fh.fetch_add(1, Ordering::Relaxed);
            shared
                .dirs
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(fh, (Arc::new(entries), charge));
            reply.opened(FileHandle(fh), FopenFlags::empty());
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guarded("readdir", || {
            let entries = self
                .shared
                .dirs
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&fh.0)
                .map(|(listing, _)| listing.clone());
            let Some(entries) = entries else {
                return reply.error(Errno::EBADF);
            };
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            for (i, (child, kind, name)) in entries.iter().enumerate().skip(start) {
                if reply.add(INodeNo(*child), (i + 1) as u64, *kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared
            .dirs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", || {
            let shared = &self.shared;
            let (uid, pid) = (req.uid(), req.pid());
            let Some(rel) = shared.path_of(ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            let writing = flags.acc_mode() != OpenAccMode::O_RDONLY;
            if writing && shared.read_only {
                return reply.error(Errno::EROFS);
            }
            let slot = match shared.handle_slot(uid) {
                Ok(slot) => slot,
                Err(e) => return reply.error(e),
            };
            let opened = if writing {
                let truncate = flags.0 & libc::O_TRUNC != 0;
                shared
                    .open_for_write(uid, ino.0, &rel, truncate)
                    .map(|(ws, user)| {
                        let content = Content::Session(lock(&ws).id);
                        (None, Some(ws), user, content)
                    })
            } else {
                shared.open_file(uid, &rel).map(|(file, user)| {
                    let content = Content::Version(file.key);
                    (Some(file), None, user, content)
                })
            };
            let kind = if writing {
                EventKind::WriteOpen
            } else {
                EventKind::Open
            };
            let event = || {
                Event::from_pid(kind, pid)
                    .uid(uid)
                    .path(&rel)
                    .open_flags(flags.0)
            };
            match opened {
                Ok((file, write, user, content)) => {
                    // The kernel may keep the inode's pages only for the very content this
                    // handle reads, and no two contents share an inode while open.
                    let (mode, pages) = match shared.open_pages(ino.0, content) {
                        Ok(p) => p,
                        Err(e) => {
                            if let Some(ws) = &write {
                                shared.abandon_writer(ino.0, ws);
                            }
                            return reply.error(e);
                        }
                    };
                    if !shared.audit(event().user(&user.name).allow()) {
                        if let Some(ws) = &write {
                            shared.abandon_writer(ino.0, ws);
                        }
                        shared.stats.opens_denied.fetch_add(1, Ordering::Relaxed);
                        return reply.error(Errno::EACCES);
                    }
                    shared.stats.opens_allowed.fetch_add(1, Ordering::Relaxed);
                    let flags = match mode {
                        PageCache::Keep => FopenFlags::FOPEN_KEEP_CACHE,
                        PageCache::Fresh => FopenFlags::empty(),
                    };
                    let mut handle = Handle::new(file, write, user, ino.0, rel, slot);
                    handle._pages = Some(pages);
                    let fh = shared.add_handle(handle);
                    reply.opened(FileHandle(fh), flags);
                }
                Err(OpenError::Errno(e)) => reply.error(e),
                Err(OpenError::Denied(denial)) => {
                    shared.stats.opens_denied.fetch_add(1, Ordering::Relaxed);
                    shared.audit(event().deny(denial.code()));
                    if let Denial::Integrity(why) = &denial {
                        shared.audit(
                            Event::from_pid(EventKind::IntegrityFailure, pid)
                                .uid(uid)
                                .path(&rel)
                                .detail(why.to_string()),
                        );
                    }
                    match denial {
                        why @ (Denial::Integrity(_) | Denial::StoreError(_)) => {
                            log::error!("{rel}: {why}");
                            reply.error(Errno::EIO)
                        }
                        _ => reply.error(Errno::EACCES),
                    }
                }
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guarded("create", || {
            let shared = &self.shared;
            let (uid, pid) = (req.uid(), req.pid());
            let rel = match shared.child_rel(parent, name, Errno::EPERM) {
                Ok(rel) => rel,
                Err(e) => return reply.error(e),
            };
            let user = match shared.writer(uid, EventKind::Create, &rel, pid) {
                Ok(u) => u,
                Err(e) => return reply.error(e),
            };
            if shared.is_dir(&rel) {
                return reply.error(Errno::EISDIR);
            }
            let slot = match shared.handle_slot(uid) {
                Ok(slot) => slot,
                Err(e) => return reply.error(e),
            };
            let ino = lock(&shared.inodes).get_or_insert(&rel);
            let ws = if shared.is_file(&rel) {
                if flags & libc::O_EXCL != 0 {
                    return reply.error(Errno::EEXIST);
                }
                match shared.open_for_write(uid, ino, &rel, flags & libc::O_TRUNC != 0) {
                    Ok((ws, _)) => ws,
                    Err(OpenError::Errno(e)) => return reply.error(e),
                    Err(OpenError::Denied(d)) => {
                        shared.audit(
                            Event::from_pid(EventKind::Create, pid)
                                .uid(uid)
                                .path(&rel)
                                .deny(d.code()),
                        );
                        return reply.error(Errno::EACCES);
                    }
                }
            } else {
                match shared.create_file(&user, ino, &rel) {
                    Ok(ws) => ws,
                    Err(e) => return reply.error(e),
                }
            };
            let content = Content::Session(lock(&ws).id);
            let pages = match shared.open_pages(ino, content) {
                Ok((_, pages)) => pages,
                Err(e) => {
                    shared.abandon_writer(ino, &ws);
                    return reply.error(e);
                }
            };
            let recorded = shared.audit(
                Event::from_pid(EventKind::Create, pid)
                    .uid(uid)
                    .user(&user.name)
                    .path(&rel)
                    .open_flags(flags)
                    .allow(),
            );
            if !recorded {
                shared.abandon_writer(ino, &ws);
                return reply.error(Errno::EACCES);
            }
            let mut handle = Handle::new(None, Some(ws), user, ino, rel.clone(), slot);
            handle._pages = Some(pages);
            let fh = shared.add_handle(handle);
            match shared.attr_of(ino, &rel) {
                Ok(Some(attr)) => reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Ok(None) => reply.error(Errno::EIO),
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", || {
            let shared = &self.shared;
            let Some(handle) = shared.handle(fh) else {
                return reply.error(Errno::EBADF);
            };
            // A lock applies to handles already open, too.
            if handle.session.is_locked() {
                return reply.error(Errno::EACCES);
            }
            if let Some(ws) = &handle.write {
                return match lock(ws).read(offset, size) {
                    Ok(data) => reply.data(Plain::new(data).as_slice()),
                    Err(e) => {
                        log::error!("{}: read at {offset}: {e}", handle.rel);
                        reply.error(e.errno())
                    }
                };
            }
            let Some(file) = &handle.file else {
                return reply.error(Errno::EBADF);
            };
            shared.prefetch(&handle, file, offset, size);
            match shared.read_range(file, offset, size) {
                Ok(ReadOutcome::Single(Some(chunk), from, to)) => {
                    reply.data(&chunk.as_slice()[from..to])
                }
                Ok(ReadOutcome::Single(None, _, _)) => reply.data(&[]),
                Ok(ReadOutcome::Assembled(plain)) => reply.data(plain.as_slice()),
                Err(e) => {
                    log::error!("{}: read at {offset}: {e}", handle.rel);
                    if matches!(e, ContainerError::ChunkAuthentication { .. }) {
                        shared.audit(
                            Event::from_pid(EventKind::IntegrityFailure, req.pid())
                                .uid(req.uid())
                                .user(&handle.session.name)
                                .path(&handle.rel)
                                .detail(e.to_string()),
                        );
                    }
                    reply.error(Errno::EIO);
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded("write", || {
            let shared = &self.shared;
            let Some(handle) = shared.handle(fh) else {
                return reply.error(Errno::EBADF);
            };
            let Some(ws) = &handle.write else {
                return reply.error(Errno::EBADF);
            };
            if handle.session.is_locked() {
                return reply.error(Errno::EACCES);
            }
            let rel = shared.path_of(ino.0).unwrap_or_else(|| handle.rel.clone());
            let result = lock(ws).write(&shared.store, &rel, offset, data);
            match result {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => {
                    log::error!("{rel}: write of {} bytes at {offset}: {e}", data.len());
                    reply.error(e.errno())
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) reports commit errors (ENOSPC…) to the writer.
        guarded("flush", || self.commit_reply(fh, reply));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsync", || self.commit_reply(fh, reply));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded("release", || {
            let shared = &self.shared;
            let handle = shared
                .handles
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&fh.0);
            if let Some(handle) = handle {
                let ino = handle.ino;
                if let Some(ws) = &handle.write {
                    let last = {
                        let mut sessions = lock(&shared.sessions);
                        let mut w = lock(ws);
                        w.writers = w.writers.saturating_sub(1);
                        let last = w.writers == 0;
                        if last
                            && sessions
                                .get(&handle.ino)
                                .is_some_and(|s| Arc::ptr_eq(s, ws))
                        {
                            sessions.remove(&handle.ino);
                        }
                        last
                    };
                    if last {
                        let _ = shared.commit(&handle);
                    }
                }
                drop(handle);
                shared.release_inode(ino);
            }
            reply.ok();
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded("setattr", || {
            let shared = &self.shared;
            let (uid, pid) = (req.uid(), req.pid());
            let Some(rel) = shared.path_of(ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            // Modes and owners are not tvault's access control: accept and ignore them.
            if size.is_some() || atime.is_some() || mtime.is_some() {
                if let Err(e) = shared.writer(uid, EventKind::WriteOpen, &rel, pid) {
                    return reply.error(e);
                }
            }
            if let Some(size) = size {
                let handle = fh
                    .and_then(|fh| shared.handle(fh))
                    .filter(|h| h.write.is_some());
                let result =
                    match handle {
                        Some(h) => h.write.as_ref().map_or(Ok(()), |ws| {
                            lock(ws)
                                .truncate(&shared.store, &rel, size)
                                .map_err(|e| e.errno())
                        }),
                        // truncate(2) by path: a short-lived session of its own.
                        None => match shared.handle_slot(uid).map_err(OpenError::Errno).and_then(
                            |slot| {
                                shared
                                    .open_for_write(uid, ino.0, &rel, false)
                                    .map(|(ws, user)| (ws, user, slot))
                            },
                        ) {
                            Ok((ws, user, slot)) => {
                                let temp = Handle::new(
                                    None,
                                    Some(ws.clone()),
                                    user,
                                    ino.0,
                                    rel.clone(),
                                    slot,
                                );
                                let truncated = lock(&ws)
                                    .truncate(&shared.store, &rel, size)
                                    .map_err(|e| e.errno());
                                let committed = truncated.and_then(|()| shared.commit(&temp));
                                shared.drop_writer(ino.0, &ws);
                                committed
                            }
                            Err(OpenError::Errno(e)) => Err(e),
                            Err(OpenError::Denied(_)) => Err(Errno::EACCES),
                        },
                    };
                if let Err(e) = result {
                    return reply.error(e);
                }
            }
            if atime.is_some() || mtime.is_some() {
                let is_file = shared.is_file(&rel);
                if is_file {
                    if let Err(e) = shared.authorize_change(uid, &rel) {
                        return reply.error(e);
                    }
                }
                let set = shared
                    .store
                    .set_times(&rel, !is_file, set_time(atime), set_time(mtime));
                if let Err(e) = set {
                    return reply.error(store_errno(&e));
                }
            }
            match shared.attr_of(ino.0, &rel) {
                Ok(Some(attr)) => reply.attr(&TTL, &attr),
                Ok(None) => reply.error(Errno::ENOENT),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        guarded("mkdir", || {
            let shared = &self.shared;
            let rel = match shared.child_rel(parent, name, Errno::EPERM) {
                Ok(rel) => rel,
                Err(e) => return reply.error(e),
            };
            if let Err(e) = shared.writer(req.uid(), EventKind::Create, &rel, req.pid()) {
                return reply.error(e);
            }
            if let Err(e) = shared.store.mkdir(&rel) {
                return reply.error(store_errno(&e));
            }
            let ino = lock(&shared.inodes).get_or_insert(&rel);
            match shared.attr_of(ino, &rel) {
                Ok(Some(attr)) => reply.entry(&TTL, &attr, Generation(0)),
                Ok(None) => reply.error(Errno::EIO),
                Err(e) => reply.error(e),
            }
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("rmdir", || {
            let shared = &self.shared;
            let rel = match shared.child_rel(parent, name, Errno::ENOENT) {
                Ok(rel) => rel,
                Err(e) => return reply.error(e),
            };
            if let Err(e) = shared.writer(req.uid(), EventKind::Unlink, &rel, req.pid()) {
                return reply.error(e);
            }
            match shared.store.rmdir(&rel) {
                Ok(()) => {
                    lock(&shared.inodes).remove(&rel);
                    reply.ok()
                }
                Err(e) => reply.error(store_errno(&e)),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("unlink", || {
            let shared = &self.shared;
            let (uid, pid) = (req.uid(), req.pid());
            let rel = match shared.child_rel(parent, name, Errno::ENOENT) {
                Ok(rel) => rel,
                Err(e) => return reply.error(e),
            };
            if let Err(e) = shared.writer(uid, EventKind::Unlink, &rel, pid) {
                return reply.error(e);
            }
            if !shared.is_file(&rel) {
                return reply.error(if shared.is_dir(&rel) {
                    Errno::EISDIR
                } else {
                    Errno::ENOENT
                });
            }
            // Deleting needs the same key slot as reading: nobody removes what they cannot read.
            let event = || Event::from_pid(EventKind::Unlink, pid).uid(uid).path(&rel);
            if let Err(e) = shared.authorize_change(uid, &rel) {
                shared.audit(event().deny("no-key-slot"));
                return reply.error(e);
            }
            if !shared.audit(event().allow()) {
                return reply.error(Errno::EACCES);
            }
            if let Err(e) = shared.store.remove(&rel) {
                return reply.error(store_errno(&e));
            }
            let inos = {
                let mut inodes = lock(&shared.inodes);
                let mut inos = inodes.detached_at(&rel);
                inos.push(inodes.get_or_insert(&rel));
                inodes.remove(&rel);
                inos
            };
            let sessions = lock(&shared.sessions);
            for ino in inos {
                shared.versions.forget_pages(ino);
                if let Some(ws) = sessions.get(&ino) {
                    lock(ws).unlinked = true;
                }
            }
            reply.ok();
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded("rename", || {
            let shared = &self.shared;
            let (uid, pid) = (req.uid(), req.pid());
            let (from, to) = match (
                shared.child_rel(parent, name, Errno::EPERM),
                shared.child_rel(newparent, newname, Errno::EPERM),
            ) {
                (Ok(from), Ok(to)) => (from, to),
                (Err(e), _) | (_, Err(e)) => return reply.error(e),
            };
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || flags.contains(RenameFlags::RENAME_WHITEOUT)
            {
                return reply.error(Errno::EINVAL);
            }
            if let Err(e) = shared.writer(uid, EventKind::Rename, &from, pid) {
                return reply.error(e);
            }
            let event = || {
                Event::from_pid(EventKind::Rename, pid)
                    .uid(uid)
                    .path(&from)
                    .target(&to)
            };
            let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
            let target_exists = shared.is_file(&to) || shared.is_dir(&to);
            if target_exists && noreplace {
                return reply.error(Errno::EEXIST);
            }
            let result = if shared.is_file(&from) {
                if shared.is_dir(&to) {
                    return reply.error(Errno::EISDIR);
                }
                // Moving needs a slot for the file, and replacing needs one for the victim.
                let allowed = shared.authorize_change(uid, &from).and_then(|()| {
                    if shared.is_file(&to) {
                        shared.authorize_change(uid, &to)
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = allowed {
                    shared.audit(event().deny("no-key-slot"));
                    return reply.error(e);
                }
                if !shared.audit(event().allow()) {
                    return reply.error(Errno::EACCES);
                }
                shared.store.rename_file(&from, &to, noreplace)
            } else if shared.is_dir(&from) {
                if shared.is_file(&to) {
                    return reply.error(Errno::ENOTDIR);
                }
                // Moving a directory moves every file in it: it needs a slot for each, or a
                // user could move someone's model away and put their own in its place.
                let files = match shared.store.files_under(&from) {
                    Ok(f) => f,
                    Err(e) => {
                        log::error!("{from}: {e}");
                        return reply.error(Errno::EIO);
                    }
                };
                for f in &files {
                    if let Err(e) = shared.authorize_change(uid, &f.rel) {
                        shared.audit(event().deny("no-key-slot").detail(f.rel.as_str()));
                        return reply.error(e);
                    }
                }
                if !shared.audit(event().allow()) {
                    return reply.error(Errno::EACCES);
                }
                shared.store.rename_dir(&from, &to, noreplace)
            } else {
                return reply.error(Errno::ENOENT);
            };
            match result {
                Ok(()) => {
                    let mut inodes = lock(&shared.inodes);
                    for rel in [&from, &to] {
                        shared.versions.forget_pages(inodes.get_or_insert(rel));
                    }
                    inodes.rename(&from, &to);
                    reply.ok()
                }
                Err(e) => reply.error(store_errno(&e)),
            }
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded("getxattr", || {
            // Asked before every write (security.capability): answer fast for anything else.
            let Some(name) = name.to_str().filter(|n| n.starts_with("user.tvault.")) else {
                return reply.error(Errno::NO_XATTR);
            };
            let Some(rel) = self
                .shared
                .path_of(ino.0)
                .filter(|r| self.shared.is_file(r))
            else {
                return reply.error(Errno::NO_XATTR);
            };
            let value = match self.shared.xattrs(req.uid(), &rel) {
                Ok(attrs) => attrs.into_iter().find(|(n, _)| *n == name).map(|(_, v)| v),
                Err(e) => return reply.error(e),
            };
            match value {
                None => reply.error(Errno::NO_XATTR),
                Some(v) if size == 0 => reply.size(v.len() as u32),
                Some(v) if (size as usize) < v.len() => reply.error(Errno::ERANGE),
                Some(v) => reply.data(v.as_bytes()),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded("listxattr", || {
            let Some(rel) = self.shared.path_of(ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            let mut names = Vec::new();
            if self.shared.is_file(&rel) {
                match self.shared.xattrs(req.uid(), &rel) {
                    Ok(attrs) => attrs.iter().for_each(|(n, _)| {
                        names.extend_from_slice(n.as_bytes());
                        names.push(0);
                    }),
                    Err(e) => return reply.error(e),
                }
            }
            if size == 0 {
                reply.size(names.len() as u32)
            } else if (size as usize) < names.len() {
                reply.error(Errno::ERANGE)
            } else {
                reply.data(&names)
            }
        });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Python's open() asks isatty (TCGETS) of every file: not a terminal.
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded("statfs", || {
            let st = match self.shared.store.gate().statvfs() {
                Ok(st) => st,
                Err(e) => return reply.error(store_errno(&e)),
            };
            reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                MAX_NAME_LEN as u32,
                st.f_frsize as u32,
            );
        });
    }
}
