//! File versions as the mount serves them.
//!
//! A version is named by what was authenticated at open: the container's file id and header
//! MAC ([`VersionKey`]). The MAC commits to the data key, the header and every chunk's tag, so
//! two containers with one key hold the same plaintext, and no other container (same size,
//! same mtime, same inode, whatever a store writer arranges) can have it. Decrypted chunks in
//! the daemon's cache are filed under that name, and the kernel's page cache of an inode is
//! kept across opens only while the same version is opened again.
//!
//! A version lives while a handle holds it (its reader holds the container's file
//! descriptor); nothing is kept for versions nobody has open.
//!
//! Lock order: `live`, `ids` and `pages` are leaves, never held while another lock is taken.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use lru::LruCache;

use super::limits::Charge;
use crate::container::Reader;
use crate::crypto::{FILE_ID_LEN, MAC_LEN};
use crate::safetensors;
use crate::store::Blob;
use crate::sync::lock;

/// File id and header MAC of an authenticated container.
pub(crate) type VersionKey = ([u8; FILE_ID_LEN], [u8; MAC_LEN]);

/// Version names remembered after their last handle closed, so that a file opened again
/// finds its chunks still in the cache.
const REMEMBERED_IDS: usize = 4096;

/// One authenticated container version, shared by every handle (of every user) open on it.
pub(crate) struct FileVersion {
    /// Namespace of this version's chunks in the cache.
    pub id: u64,
    pub key: VersionKey,
    pub reader: Reader<Blob>,
    /// Parsed header of a `.safetensors` file, for tensor-aware prefetch.
    pub tensors: Option<safetensors::Header>,
    /// Read handles open on this version; prefetching for a version nobody has open any
    /// more is skipped.
    pub readers: AtomicUsize,
    /// What this version's metadata takes from the mount's bound, given back when it drops.
    pub charges: Vec<Charge>,
}

impl FileVersion {
    pub(crate) fn new(id: u64, reader: Reader<Blob>) -> Self {
        FileVersion {
            id,
            key: (reader.header().file_id, *reader.mac()),
            reader,
            tensors: None,
            readers: AtomicUsize::new(0),
            charges: Vec::new(),
        }
    }

    pub(crate) fn has_readers(&self) -> bool {
        self.readers.load(Ordering::Relaxed) > 0
    }
}

/// What an open handle reads, and so what it may put into the kernel's page cache of its
/// inode: an authenticated committed version, or the content of a write session (writes go
/// through the page cache, and reads of a writable handle return the session's content).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Content {
    Version(VersionKey),
    Session(u64),
}

/// How the kernel may cache an open's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageCache {
    /// The same content as the inode's cached pages: keep them (`FOPEN_KEEP_CACHE`).
    Keep,
    /// Other content, and no handle is open on the inode: drop the pages and cache afresh.
    Fresh,
}

/// Another content is open on the inode. No open flag keeps the two apart: a handle opened
/// with `FOPEN_DIRECT_IO` can still be mapped `MAP_PRIVATE` (safetensors does), and its faults
/// fill the inode's page cache, which every cached handle of the inode then reads. So the
/// open must be served on an inode of its own.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Conflict;

/// How the kernel runs an open file. While an inode has passthrough files open, every
/// other open of it must be passthrough onto the same backing file (the kernel fails any
/// other with `EIO`, direct I/O included); a passthrough open while cached files are open
/// fails too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoMode {
    /// Reads go through the inode's page cache.
    Cached,
    /// Reads go straight to the plaintext copy with this id (FUSE passthrough).
    Passthrough(u64),
}

#[derive(Default)]
struct InodePages {
    content: Option<Content>,
    /// Open handles of the inode; each may fill its page cache with `content`.
    open: usize,
    /// Of those, the ones in cached mode.
    cached: usize,
    /// The copy that passthrough handles of the inode read, and how many there are.
    passthrough: Option<(u64, usize)>,
}

/// Counts an open handle of an inode until dropped.
pub(crate) struct PageRef {
    pages: Arc<Mutex<HashMap<u64, InodePages>>>,
    ino: u64,
    mode: IoMode,
}

impl PageRef {
    pub(crate) fn mode(&self) -> IoMode {
        self.mode
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        if let Some(p) = lock(&self.pages).get_mut(&self.ino) {
            p.open = p.open.saturating_sub(1);
            match self.mode {
                IoMode::Cached => p.cached = p.cached.saturating_sub(1),
                IoMode::Passthrough(_) => {
                    if let Some((_, n)) = &mut p.passthrough {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            p.passthrough = None;
                        }
                    }
                }
            }
        }
    }
}

pub(crate) struct Versions {
    live: Mutex<HashMap<VersionKey, Weak<FileVersion>>>,
    ids: Mutex<LruCache<VersionKey, u64>>,
    /// Versions that one handle read at least half of (whole-file readers).
    read_whole: Mutex<LruCache<VersionKey, ()>>,
    next_id: AtomicU64,
    pages: Arc<Mutex<HashMap<u64, InodePages>>>,
}

impl Versions {
    pub(crate) fn new() -> Self {
        Versions {
            live: Mutex::new(HashMap::new()),
            ids: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED_IDS).unwrap_or(NonZeroUsize::MIN),
            )),
            read_whole: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED_IDS).unwrap_or(NonZeroUsize::MIN),
            )),
            next_id: AtomicU64::new(1),
            pages: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub(crate) fn mark_read_whole(&self, key: VersionKey) {
        lock(&self.read_whole).put(key, ());
    }

    /// Whether a handle read at least half of version `key` since the mount (or the last
    /// time every plaintext was forgotten).
    pub(crate) fn read_whole(&self, key: &VersionKey) -> bool {
        lock(&self.read_whole).get(key).is_some()
    }

    /// A fresh id for a version that is not named (a draft being written).
    pub(crate) fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The cache namespace of version `key`: the same one it had when last open.
    pub(crate) fn id_for(&self, key: &VersionKey) -> u64 {
        let mut ids = lock(&self.ids);
        if let Some(id) = ids.get(key) {
            return *id;
        }
        let id = self.fresh_id();
        ids.put(*key, id);
        id
    }

    /// The version `key` if a handle holds it.
    pub(crate) fn live(&self, key: &VersionKey) -> Option<Arc<FileVersion>> {
        lock(&self.live).get(key).and_then(Weak::upgrade)
    }

    /// Registers a new version; if another open registered the same one meanwhile, that one
    /// is returned instead.
    pub(crate) fn insert(&self, version: Arc<FileVersion>) -> Arc<FileVersion> {
        let mut live = lock(&self.live);
        if let Some(existing) = live.get(&version.key).and_then(Weak::upgrade) {
            return existing;
        }
        live.retain(|_, v| v.strong_count() > 0);
        live.insert(version.key, Arc::downgrade(&version));
        version
    }

    /// Decides how an open reading `content` on inode `ino` may use the page cache, and in
    /// which mode the kernel runs it: `want`, except that a passthrough open where cached
    /// files are open becomes cached. While handles of other content are open on the inode,
    /// the open is refused ([`Conflict`]): the inode's pages may hold their plaintext, and
    /// this handle's would mix with it. So is any open other than passthrough onto the same
    /// copy while passthrough files are open (the kernel allows no other): it is served on
    /// an inode of its own.
    pub(crate) fn open_pages(
        &self,
        ino: u64,
        content: Content,
        want: IoMode,
    ) -> Result<(PageCache, PageRef), Conflict> {
        let mut pages = lock(&self.pages);
        let p = pages.entry(ino).or_default();
        let cache = if p.content == Some(content) {
            PageCache::Keep
        } else if p.open == 0 {
            p.content = Some(content);
            PageCache::Fresh
        } else {
            return Err(Conflict);
        };
        let mode = match (want, p.passthrough) {
            (IoMode::Passthrough(_), _) if p.cached > 0 => IoMode::Cached,
            (IoMode::Passthrough(c), Some((other, _))) if other != c => return Err(Conflict),
            (IoMode::Cached, Some(_)) => return Err(Conflict),
            (want, _) => want,
        };
        p.open += 1;
        match mode {
            IoMode::Cached => p.cached += 1,
            IoMode::Passthrough(c) => {
                let n = p.passthrough.map_or(0, |(_, n)| n);
                p.passthrough = Some((c, n + 1));
            }
        }
        let page_ref = PageRef {
            pages: self.pages.clone(),
            ino,
            mode,
        };
        Ok((cache, page_ref))
    }

    /// Whether the kernel may still cache `content` in the pages of `ino`.
    pub(crate) fn pages_hold(&self, ino: u64, content: Content) -> bool {
        lock(&self.pages)
            .get(&ino)
            .is_some_and(|p| p.content == Some(content))
    }

    /// The next open of `ino` must not reuse its pages (after a lock, unlink or rename),
    /// unless handles are open on it: their pages hold their own content, which the next
    /// open either shares or conflicts with.
    pub(crate) fn forget_pages(&self, ino: u64) {
        if let Some(p) = lock(&self.pages).get_mut(&ino) {
            if p.open == 0 {
                p.content = None;
            }
        }
    }

    /// Drops what is known about inode `ino` (no longer reachable).
    pub(crate) fn forget_inode(&self, ino: u64) {
        let mut pages = lock(&self.pages);
        if pages.get(&ino).is_some_and(|p| p.open == 0) {
            pages.remove(&ino);
        }
    }

    /// Forgets every version name, so that no cached chunk is found again.
    pub(crate) fn clear(&self) {
        lock(&self.ids).clear();
        lock(&self.read_whole).clear();
        for p in lock(&self.pages).values_mut() {
            p.content = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_cache_follows_the_version() {
        let v = Versions::new();
        let a = Content::Version(([1u8; FILE_ID_LEN], [1u8; MAC_LEN]));
        let b = Content::Version(([2u8; FILE_ID_LEN], [2u8; MAC_LEN]));
        let (m1, r1) = v.open_pages(7, a, IoMode::Cached).unwrap();
        assert_eq!(m1, PageCache::Fresh);
        let (m2, r2) = v.open_pages(7, a, IoMode::Cached).unwrap();
        assert_eq!(m2, PageCache::Keep);
        // Another version, or a write session, while `a` is open on the inode: refused.
        assert_eq!(v.open_pages(7, b, IoMode::Cached).err(), Some(Conflict));
        assert_eq!(
            v.open_pages(7, Content::Session(3), IoMode::Cached).err(),
            Some(Conflict)
        );
        // Other inodes are not concerned.
        assert_eq!(
            v.open_pages(8, b, IoMode::Cached).unwrap().0,
            PageCache::Fresh
        );
        // Forgetting while `a` is open keeps what its handles may have cached.
        v.forget_pages(7);
        assert_eq!(v.open_pages(7, b, IoMode::Cached).err(), Some(Conflict));
        drop((r1, r2));
        // Nobody holds `a` any more: `b` starts a fresh page cache.
        let (m3, r3) = v.open_pages(7, b, IoMode::Cached).unwrap();
        assert_eq!(m3, PageCache::Fresh);
        drop(r3);
        v.forget_pages(7);
        assert_eq!(
            v.open_pages(7, b, IoMode::Cached).unwrap().0,
            PageCache::Fresh
        );
        let (ka, kb) = (
            ([1u8; FILE_ID_LEN], [1u8; MAC_LEN]),
            ([2u8; FILE_ID_LEN], [2u8; MAC_LEN]),
        );
        assert_eq!(v.id_for(&ka), v.id_for(&ka));
        assert_ne!(v.id_for(&ka), v.id_for(&kb));
    }

    #[test]
    fn an_inode_never_mixes_cached_and_passthrough_files_or_two_copies() {
        let v = Versions::new();
        let a = Content::Version(([1u8; FILE_ID_LEN], [1u8; MAC_LEN]));
        let mode = |r: &(PageCache, PageRef)| r.1.mode();
        let p1 = v.open_pages(1, a, IoMode::Passthrough(10)).unwrap();
        assert_eq!(mode(&p1), IoMode::Passthrough(10));
        // Same copy: passthrough; a chunked open or another copy beside it: another inode.
        let p2 = v.open_pages(1, a, IoMode::Passthrough(10)).unwrap();
        assert_eq!(mode(&p2), IoMode::Passthrough(10));
        assert!(v.open_pages(1, a, IoMode::Cached).is_err());
        assert!(v.open_pages(1, a, IoMode::Passthrough(11)).is_err());
        drop((p1, p2));
        // Cached files open: a passthrough open becomes cached.
        let c = v.open_pages(1, a, IoMode::Cached).unwrap();
        assert_eq!(mode(&c), IoMode::Cached);
        let p3 = v.open_pages(1, a, IoMode::Passthrough(11)).unwrap();
        assert_eq!(mode(&p3), IoMode::Cached);
        drop((c, p3));
        // Nothing open: passthrough onto the new copy.
        let p4 = v.open_pages(1, a, IoMode::Passthrough(11)).unwrap();
        assert_eq!(mode(&p4), IoMode::Passthrough(11));
    }
}
