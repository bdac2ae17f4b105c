//! The filesystem core: shows `STORE/REL.tvlt` as `MOUNT/REL`, decides every open and every
//! change through `access`, records each in the audit log before it takes effect, and serves
//! reads from the chunk cache. Operations are plain methods on [`Core`] returning
//! [`FsResult`]; no FUSE type appears here (`crate::fuse` adapts them to `fuser`), so the
//! core is tested against a temporary store without root or `/dev/fuse`. It holds no crypto
//! of its own: chunks are decrypted by `container::Reader`, drafts sealed by the store.
//!
//! One file per job, as gocryptfs splits its frontend: `open` (authorization and the version
//! table), `read` (the read path), `prefetch` (read-ahead policy and its workers), `write`
//! (write sessions: open for writing, create, commit, truncate), `namespace` (lookup,
//! listings, mkdir, rmdir, unlink, rename, times, statfs), `link` (symlink, readlink),
//! `xattr`, and `op`, the one wrapper that runs authorize → record → act for every change;
//! `denials` keeps each uid's latest denials for `tvault status`.

mod attr;
mod buffers;
mod cache;
mod denials;
mod eager;
#[cfg(test)]
mod eager_tests;
mod error;
mod handles;
mod inodes;
mod limits;
mod link;
mod namespace;
mod op;
mod open;
mod owners;
mod perm;
#[cfg(test)]
mod perm_tests;
mod prefetch;
mod read;
mod session;
mod setattr;
#[cfg(test)]
mod tests;
mod versions;
mod why;
mod write;
mod xattr;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::access::Access;
use crate::store::Store;
use crate::sync::{lock, read};

pub use attr::{Attr, Kind};
use buffers::BufferPool;
pub use cache::ChunkCache;
use denials::Denials;
pub use denials::DeniedOp;
pub use eager::Copy;
pub use error::FsError;
use handles::OpenFiles;
use inodes::Inodes;
use limits::Limits;
pub use op::Recorder;
pub use open::Opened;
pub use setattr::Changes;
use versions::Versions;
pub use why::{Answer, Verdict};
use write::OpenSession;

/// Who asks: the uid decides, the pid names the process in the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    /// The primary gid; supplementary groups are read from `/proc` when a check needs them.
    pub gid: u32,
    pub pid: u32,
}

/// How read-only opens are served (`tvault mount --data-path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// Eager for versions a handle of this mount already read at least half of, else chunked.
    Auto,
    /// Each read decrypts the chunks it touches, through the chunk cache.
    Chunked,
    /// Every file within the budget is decrypted whole at open, on every core, into locked
    /// RAM, which the kernel reads directly (FUSE passthrough).
    Eager,
}

struct Eager {
    path: DataPath,
    copies: eager::Copies,
}

/// Counters reported by `tvault status`.
#[derive(Default)]
pub struct Stats {
    pub bytes_decrypted: AtomicU64,
    pub opens_allowed: AtomicU64,
    pub opens_denied: AtomicU64,
    pub integrity_failures: AtomicU64,
}

/// What the kernel is told to forget about an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forget {
    /// Its cached pages (and attributes).
    Pages,
    /// Only its cached attributes.
    Attributes,
}

/// Drops the kernel's cached pages or attributes of an inode (FUSE's `inval_inode`), set by
/// the adapter.
pub type Invalidator = Box<dyn Fn(u64, Forget) -> std::io::Result<()> + Send + Sync>;

/// An open file as `tvault status` reports it.
pub struct OpenFileInfo {
    pub path: String,
    pub uid: u32,
    pub user: String,
}

/// The mounted filesystem's state, shared by the FUSE adapter and the control socket.
///
/// Lock order (a lock may be taken while holding only those listed before it):
/// 1. `sessions` (the map of inodes open for writing): held only to find, join or leave a
///    session, never while a session's own lock is taken and never across I/O.
/// 2. `inodes` (the path ↔ inode table), then `versions`' maps inside it (a rename forgets
///    the pages of the inodes it moves).
/// 3. Leaves, each held for one lookup or update and never while taking another lock:
///    `files` (handles and listings), `warned`, `denials`, the cache's and limits' own locks.
///
/// A write session's lock (`write::OpenSession::state`) is the only lock held across store
/// I/O (sealing and committing its own draft); it is per inode, and nothing above waits on
/// it while holding a shared lock.
pub struct Core {
    pub(crate) store: Store,
    pub(crate) access: Arc<Access>,
    pub(crate) cache: ChunkCache,
    buffers: Arc<BufferPool>,
    pub(crate) stats: Stats,
    inodes: Mutex<Inodes>,
    files: OpenFiles,
    versions: Versions,
    limits: Limits,
    warned: Mutex<namespace::Warned>,
    denials: Denials,
    prefetch: prefetch::Prefetcher,
    invalidator: OnceLock<Invalidator>,
    /// The data path and its copies; unset: chunked.
    eager: OnceLock<Eager>,
    /// Whether the kernel agreed to passthrough files (set by the adapter at `init`).
    passthrough: AtomicBool,
    sessions: Mutex<HashMap<u64, Arc<OpenSession>>>,
    owners: owners::Owners,
    read_only: bool,
    audit: Arc<dyn Recorder>,
}

impl Core {
    pub fn new(
        store: Store,
        access: Arc<Access>,
        cache_bytes: u64,
        read_only: bool,
        audit: Arc<dyn Recorder>,
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
        Arc::new_cyclic(|weak| Core {
            store,
            access,
            cache: ChunkCache::new(cache_bytes),
            buffers,
            stats: Stats::default(),
            inodes: Mutex::new(Inodes::new()),
            files: OpenFiles::new(),
            versions: Versions::new(),
            limits,
            warned: Mutex::new(namespace::Warned::default()),
            denials: Denials::default(),
            prefetch: prefetch::Prefetcher::new(weak.clone()),
            invalidator: OnceLock::new(),
            eager: OnceLock::new(),
            passthrough: AtomicBool::new(false),
            sessions: Mutex::new(HashMap::new()),
            owners: owners::Owners::default(),
            read_only,
            audit,
        })
    }

    pub fn set_invalidator(&self, invalidator: Invalidator) {
        let _ = self.invalidator.set(invalidator);
    }

    /// Chooses the data path, with `budget` bytes of locked RAM for whole-file copies (set
    /// once, before the mount serves requests).
    pub fn set_data_path(&self, path: DataPath, budget: u64) {
        let _ = self.eager.set(Eager {
            path,
            copies: eager::Copies::new(budget),
        });
    }

    /// Whether the data path may hand files to the kernel for passthrough.
    pub fn wants_passthrough(&self) -> bool {
        self.eager
            .get()
            .is_some_and(|e| e.path != DataPath::Chunked)
    }

    /// The kernel takes passthrough files (or no longer does).
    pub fn set_passthrough(&self, available: bool) {
        self.passthrough.store(available, Ordering::Relaxed);
    }

    /// Whether opens may be answered with passthrough files now.
    pub fn passthrough_available(&self) -> bool {
        self.wants_passthrough() && self.passthrough.load(Ordering::Relaxed)
    }

    /// Bytes of locked RAM held by whole-file copies, and their budget.
    pub fn copy_bytes(&self) -> (u64, u64) {
        self.eager
            .get()
            .map_or((0, 0), |e| (e.copies.used(), e.copies.budget()))
    }

    /// The mount is going away: every user is locked and every decrypted chunk dropped.
    pub fn shut_down(&self) {
        self.access.lock_all();
        self.forget_plaintext();
    }

    /// Drops every decrypted chunk, and the names under which a reopened version would find
    /// them.
    pub fn forget_plaintext(&self) {
        self.cache.clear();
        self.versions.clear();
        if let Some(eager) = self.eager.get() {
            eager.copies.clear();
        }
    }

    /// Memory mapped for decrypted chunks: the cache's buffers plus free ones kept for reuse.
    pub fn buffer_bytes(&self) -> usize {
        self.buffers.mapped_bytes()
    }

    /// Bytes of file metadata (chunk tables, parsed headers) held for open files.
    pub fn metadata_bytes(&self) -> u64 {
        self.limits.metadata.used()
    }

    pub fn open_files(&self) -> Vec<OpenFileInfo> {
        let mut out: Vec<_> = read(&self.files.handles)
            .values()
            .map(|h| OpenFileInfo {
                path: h.rel.clone(),
                uid: h.user.uid,
                user: h.user.name.clone(),
            })
            .collect();
        out.sort_by(|a, b| (a.uid, &a.path).cmp(&(b.uid, &b.path)));
        out
    }

    /// The latest denials of `uid`, most recent first.
    pub fn denials_of(&self, uid: u32) -> Vec<DeniedOp> {
        self.denials.of(uid)
    }

    /// Drops the kernel's page cache for every file `uid` has open, so that reads on those
    /// handles (and faults in their mappings) come back to us and are refused.
    pub fn invalidate_open_files_of(&self, uid: u32) -> usize {
        let inos: Vec<u64> = read(&self.files.handles)
            .values()
            .filter(|h| h.user.uid == uid)
            .map(|h| h.ino)
            .collect();
        if let Some(invalidate) = self.invalidator.get() {
            for &ino in &inos {
                if let Err(e) = invalidate(ino, Forget::Pages) {
                    log::warn!("cannot invalidate inode {ino}: {e}");
                }
            }
        }
        // The next open of these inodes must not reuse pages either.
        for &ino in &inos {
            self.versions.forget_pages(ino);
        }
        // Passthrough reads never reach the daemon: the copies they read are emptied.
        if let Some(eager) = self.eager.get() {
            eager.copies.revoke(uid);
        }
        inos.len()
    }

    fn path_of(&self, ino: u64) -> Option<String> {
        lock(&self.inodes).path(ino).map(str::to_string)
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
