//! The FUSE frontend: shows `STORE/REL.tvlt` as `MOUNT/REL`, decides every open through
//! `access`, and serves reads from the chunk cache. It holds no crypto of its own: chunks are
//! decrypted by `container::Reader`.

mod cache;
mod inodes;
mod prefetch;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use lru::LruCache;
use memmap2::Mmap;

use crate::access::{Access, Denial, UserSession};
use crate::container::{Container, ContainerError, FixedHeader, Reader, FIXED_HEADER_LEN};
use crate::fsutil;
use crate::safetensors;
use crate::store::{Store, CONTAINER_EXT, META_DIR};

pub use cache::ChunkCache;
use cache::Plain;
use inodes::{child_path, Inodes};

/// Attributes and entries are cached by the kernel this long; opens always reach us, so
/// access decisions are never cached.
const TTL: Duration = Duration::from_secs(1);
/// Authenticated file versions kept mapped for reuse across opens.
const VERSION_CACHE: usize = 128;

/// Counters reported by `tvault status`.
#[derive(Default)]
pub struct Stats {
    pub bytes_decrypted: AtomicU64,
    pub opens_allowed: AtomicU64,
    pub opens_denied: AtomicU64,
    pub integrity_failures: AtomicU64,
}

/// What identifies one version of a backing container: replacing the file (put --force,
/// grant, revoke, rekey all rename a new file into place) changes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Identity {
    fn of(meta: &Metadata) -> Self {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// One authenticated container version, shared by every handle (of every user) open on it.
pub(crate) struct FileVersion {
    /// Namespace of this version's chunks in the cache.
    id: u64,
    reader: Reader<Mmap>,
    /// Parsed header of a `.safetensors` file, for tensor-aware prefetch.
    tensors: Option<safetensors::Header>,
}

struct Handle {
    file: Arc<FileVersion>,
    session: Arc<UserSession>,
    ino: u64,
    rel: String,
    /// Where a sequential reader's next request would start.
    next_offset: AtomicU64,
    /// Plaintext offset up to which chunks were already handed to the prefetcher.
    prefetched_to: AtomicU64,
}

/// State shared between the FUSE handlers and the daemon's control socket.
pub struct Shared {
    pub store: Store,
    pub access: Arc<Access>,
    pub cache: ChunkCache,
    pub stats: Stats,
    inodes: Mutex<Inodes>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    versions: Mutex<LruCache<Identity, Arc<FileVersion>>>,
    /// Identity seen at the last open of each inode: the kernel may keep its page cache
    /// across opens only while the backing file is unchanged.
    last_identity: Mutex<HashMap<u64, Identity>>,
    next_version_id: AtomicU64,
    prefetch: prefetch::Prefetcher,
    notifier: OnceLock<Notifier>,
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
    pub fn new(store: Store, access: Arc<Access>, cache_bytes: u64) -> Arc<Self> {
        let versions = LruCache::new(
            std::num::NonZeroUsize::new(VERSION_CACHE).unwrap_or(std::num::NonZeroUsize::MIN),
        );
        Arc::new_cyclic(|weak| Shared {
            store,
            access,
            cache: ChunkCache::new(cache_bytes),
            stats: Stats::default(),
            inodes: Mutex::new(Inodes::new()),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            versions: Mutex::new(versions),
            last_identity: Mutex::new(HashMap::new()),
            next_version_id: AtomicU64::new(1),
            prefetch: prefetch::Prefetcher::new(weak.clone()),
            notifier: OnceLock::new(),
        })
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
        let mut last = lock(&self.last_identity);
        for ino in &inos {
            last.remove(ino);
        }
        inos.len()
    }

    fn container_path(&self, rel: &str) -> PathBuf {
        self.store.root().join(format!("{rel}.{CONTAINER_EXT}"))
    }

    /// Decrypted chunk `index` of `file`, from the cache or freshly decrypted into it.
    fn chunk(&self, file: &FileVersion, index: u64) -> Result<Arc<Plain>, ContainerError> {
        self.cache.get_or_load((file.id, index), || {
            let (start, end) = file.reader.header().chunk_range(index);
            let mut buf = vec![0u8; (end - start) as usize];
            if let Err(e) = file.reader.read_chunk(index, &mut buf) {
                self.stats
                    .integrity_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            self.stats
                .bytes_decrypted
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            Ok(Plain::new(buf))
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
        let mut out = Vec::with_capacity((end - offset) as usize);
        for index in first..=last {
            let chunk = self.chunk(file, index)?;
            let base = index << log2;
            let from = offset.max(base) - base;
            let to = end.min(base + chunk.as_slice().len() as u64) - base;
            out.extend_from_slice(&chunk.as_slice()[from as usize..to as usize]);
        }
        Ok(ReadOutcome::Assembled(Plain::new(out)))
    }

    /// What to decrypt ahead after a read of `[offset, end)`: the rest of the tensor the read
    /// landed in, or, for a sequential reader of another file, a window past the read.
    fn prefetch_after(&self, handle: &Handle, offset: u64, end: u64) {
        let file = &handle.file;
        let len = file.reader.len();
        let sequential = handle.next_offset.swap(end, Ordering::Relaxed) == offset;
        let window = prefetch::window(self.cache.capacity());
        // A safetensors file is prefetched tensor by tensor only, so that reading the header
        // or one tensor never pays for its neighbours.
        let target_end = match &file.tensors {
            Some(h) => match h.tensor_at_file_offset(offset) {
                Some(t) => (h.data_start() + t.end).min(end + window),
                None => return,
            },
            None if sequential => end + window,
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
        let log2 = file.reader.header().chunk_log2;
        let from = start >> log2;
        let to = (target_end - 1) >> log2;
        let first_uncached = (from..=to).find(|&i| !self.cache.contains((file.id, i)));
        if let Some(from) = first_uncached {
            self.prefetch.request(file, from, to);
        }
    }

    /// Attributes of a store path, or None if it does not exist (or is hidden).
    fn attr_of(&self, ino: u64, rel: &str) -> Result<Option<FileAttr>, Errno> {
        let root = self.store.root();
        let dir = root.join(rel);
        match std::fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => return Ok(Some(dir_attr(ino, &meta))),
            Ok(_) if rel.is_empty() => return Err(Errno::EIO),
            _ => {}
        }
        if rel.is_empty() {
            return Err(Errno::EIO);
        }
        let path = self.container_path(rel);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Errno::from(e)),
        };
        let meta = file.metadata().map_err(Errno::from)?;
        if !meta.is_file() {
            return Ok(None);
        }
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        let header = file
            .read_exact_at(&mut fixed, 0)
            .map_err(ContainerError::from)
            .and_then(|()| FixedHeader::decode(&fixed));
        match header {
            Ok(h) => Ok(Some(file_attr(ino, &meta, h.plaintext_len, h.chunk_size()))),
            Err(e) => {
                log::warn!("{}: {e}", path.display());
                Err(Errno::EIO)
            }
        }
    }

    fn open_file(
        &self,
        uid: u32,
        rel: &str,
    ) -> Result<(Arc<FileVersion>, Arc<UserSession>, Identity), OpenError> {
        let path = self.container_path(rel);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => OpenError::Errno(Errno::ENOENT),
            _ => OpenError::Errno(Errno::from(e)),
        })?;
        let identity = Identity::of(
            &file
                .metadata()
                .map_err(|e| OpenError::Errno(Errno::from(e)))?,
        );
        let container = Container::map(&file).map_err(|e| {
            OpenError::Denied(Denial::Integrity(format!("{}: {e}", path.display())))
        })?;
        let (session, data_key) = self
            .access
            .authorize(&self.store, uid, &container)
            .map_err(OpenError::Denied)?;
        if let Some(version) = lock(&self.versions).get(&identity) {
            return Ok((version.clone(), session, identity));
        }
        let reader = container
            .open(&data_key)
            .map_err(|e| OpenError::Denied(Denial::Integrity(e.to_string())))?;
        let mut version = FileVersion {
            id: self.next_version_id.fetch_add(1, Ordering::Relaxed),
            reader,
            tensors: None,
        };
        if rel.ends_with(".safetensors") {
            version.tensors = self.read_safetensors_header(&version);
        }
        let version = Arc::new(version);
        lock(&self.versions).put(identity, version.clone());
        Ok((version, session, identity))
    }

    /// Parses the header of an encrypted `.safetensors` through the cache (only the chunks
    /// holding the header are decrypted). A malformed header only disables prefetch.
    fn read_safetensors_header(&self, file: &FileVersion) -> Option<safetensors::Header> {
        let mut prefix = [0u8; 8];
        let n = self.read_into(file, 0, &mut prefix).ok()?;
        let len =
            safetensors::header_len(&prefix.get(..n)?.try_into().ok()?, file.reader.len()).ok()?;
        let mut json = vec![0u8; usize::try_from(len).ok()?];
        self.read_into(file, 8, &mut json).ok()?;
        safetensors::parse_header(&json, file.reader.len()).ok()
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

fn to_system_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

fn base_attr(
    ino: u64,
    meta: &Metadata,
    kind: FileType,
    perm: u16,
    size: u64,
    blksize: u32,
) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        // st_blocks must match the size, or `cp` takes the file for sparse.
        blocks: size.div_ceil(512),
        atime: to_system_time(meta.atime(), meta.atime_nsec()),
        mtime: to_system_time(meta.mtime(), meta.mtime_nsec()),
        ctime: to_system_time(meta.ctime(), meta.ctime_nsec()),
        crtime: to_system_time(meta.mtime(), meta.mtime_nsec()),
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        blksize,
        flags: 0,
    }
}

// Modes are informational: tvault, not the kernel, decides access (no default_permissions).
fn dir_attr(ino: u64, meta: &Metadata) -> FileAttr {
    base_attr(ino, meta, FileType::Directory, 0o555, 4096, 4096)
}

fn file_attr(ino: u64, meta: &Metadata, size: u64, chunk_size: u64) -> FileAttr {
    let blksize = u32::try_from(chunk_size).unwrap_or(65536);
    base_attr(ino, meta, FileType::RegularFile, 0o444, size, blksize)
}

/// Names the mount never shows: the store's metadata directory and temporary files.
fn hidden(parent: &str, name: &str) -> bool {
    name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || (parent.is_empty() && name == META_DIR)
        || fsutil::is_temp_name(name)
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
}

impl Filesystem for TvaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // 1 MiB requests (with the bdi read_ahead_kb raised after mounting).
        let _ = config.set_max_write(1 << 20);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn destroy(&mut self) {
        self.shared.access.lock_all();
        self.shared.cache.clear();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", || {
            let Some(parent_rel) = self.shared.path_of(parent.0) else {
                return reply.error(Errno::ENOENT);
            };
            let Some(name) = name.to_str() else {
                return reply.error(Errno::ENOENT);
            };
            if hidden(&parent_rel, name) {
                return reply.error(Errno::ENOENT);
            }
            let rel = child_path(&parent_rel, name);
            let ino = lock(&self.shared.inodes).get_or_insert(&rel);
            match self.shared.attr_of(ino, &rel) {
                Ok(Some(attr)) => reply.entry(&TTL, &attr, Generation(0)),
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

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guarded("readdir", || {
            let Some(rel) = self.shared.path_of(ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            let dir = self.shared.store.root().join(&rel);
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => return reply.error(Errno::from(e)),
            };
            let suffix = format!(".{CONTAINER_EXT}");
            let mut listing: Vec<(String, FileType)> = Vec::new();
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() && !hidden(&rel, &name) {
                    listing.push((name, FileType::Directory));
                } else if kind.is_file() {
                    if let Some(stem) = name.strip_suffix(&suffix) {
                        if !hidden(&rel, stem) {
                            listing.push((stem.to_string(), FileType::RegularFile));
                        }
                    }
                }
            }
            listing.sort_by(|a, b| a.0.cmp(&b.0));
            listing.dedup_by(|a, b| a.0 == b.0);
            let parent_ino = {
                let parent_rel = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                lock(&self.shared.inodes).get_or_insert(parent_rel)
            };
            let mut all = vec![
                (ino.0, FileType::Directory, ".".to_string()),
                (parent_ino, FileType::Directory, "..".to_string()),
            ];
            {
                let mut inodes = lock(&self.shared.inodes);
                for (name, kind) in listing {
                    let child = inodes.get_or_insert(&child_path(&rel, &name));
                    all.push((child, kind, name));
                }
            }
            for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", || {
            let shared = &self.shared;
            let uid = req.uid();
            let pid = req.pid();
            let Some(rel) = shared.path_of(ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            if flags.acc_mode() != OpenAccMode::O_RDONLY {
                return reply.error(Errno::EROFS);
            }
            match shared.open_file(uid, &rel) {
                Ok((file, session, identity)) => {
                    shared.stats.opens_allowed.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        target: "tvault::audit",
                        "open allow uid={uid} user={} pid={pid} comm={} path={rel}",
                        session.name,
                        process_name(pid)
                    );
                    let fh = shared.next_fh.fetch_add(1, Ordering::Relaxed);
                    let handle = Arc::new(Handle {
                        file,
                        session,
                        ino: ino.0,
                        rel,
                        next_offset: AtomicU64::new(0),
                        prefetched_to: AtomicU64::new(0),
                    });
                    shared
                        .handles
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(fh, handle);
                    let unchanged =
                        lock(&shared.last_identity).insert(ino.0, identity) == Some(identity);
                    let flags = if unchanged {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags);
                }
                Err(OpenError::Errno(e)) => reply.error(e),
                Err(OpenError::Denied(denial)) => {
                    shared.stats.opens_denied.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        target: "tvault::audit",
                        "open deny uid={uid} pid={pid} comm={} path={rel} reason={}",
                        process_name(pid),
                        denial.code()
                    );
                    match denial {
                        Denial::Integrity(why) | Denial::StoreError(why) => {
                            log::error!("{rel}: {why}");
                            reply.error(Errno::EIO)
                        }
                        _ => reply.error(Errno::EACCES),
                    }
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
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
            let handle = {
                let handles = shared.handles.read().unwrap_or_else(|p| p.into_inner());
                handles.get(&fh.0).cloned()
            };
            let Some(handle) = handle else {
                return reply.error(Errno::EBADF);
            };
            // A lock applies to handles already open, too.
            if handle.session.is_locked() {
                return reply.error(Errno::EACCES);
            }
            match shared.read_range(&handle.file, offset, size) {
                Ok(ReadOutcome::Single(Some(chunk), from, to)) => {
                    reply.data(&chunk.as_slice()[from..to]);
                    shared.prefetch_after(&handle, offset, offset + (to - from) as u64);
                }
                Ok(ReadOutcome::Single(None, _, _)) => reply.data(&[]),
                Ok(ReadOutcome::Assembled(plain)) => {
                    reply.data(plain.as_slice());
                    shared.prefetch_after(&handle, offset, offset + plain.as_slice().len() as u64);
                }
                Err(e) => {
                    log::error!("{}: read at {offset}: {e}", handle.rel);
                    reply.error(Errno::EIO);
                }
            }
        });
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
            self.shared
                .handles
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&fh.0);
            reply.ok();
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded("statfs", || {
            let root = self.shared.store.root();
            let Ok(c_path) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
                return reply.error(Errno::EIO);
            };
            // SAFETY: statvfs fills the zeroed struct for a valid NUL-terminated path.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
                return reply.error(Errno::from(std::io::Error::last_os_error()));
            }
            reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                255,
                st.f_frsize as u32,
            );
        });
    }
}
