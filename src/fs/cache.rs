//! Decrypted chunks, shared by every reader of a file, in an LRU bounded by bytes. Evicted
//! chunks are zeroized as soon as the last reader lets go of them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use lru::LruCache;
use zeroize::Zeroize;

/// Plaintext of one chunk (or of a reply assembled from chunks); wiped on drop, and, if it
/// came from a [`BufferPool`], returned to it for reuse.
pub struct Plain {
    buf: Vec<u8>,
    len: usize,
    pool: Option<Arc<BufferPool>>,
}

impl Plain {
    pub fn new(bytes: Vec<u8>) -> Self {
        Plain {
            len: bytes.len(),
            buf: bytes,
            pool: None,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        // Wipe the whole buffer (not just `len`): a reused buffer may have held a longer chunk.
        self.buf.as_mut_slice().zeroize();
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

/// Recycles chunk buffers, so that the read path neither allocates nor zero-fills a buffer
/// per chunk, and keeps them `mlock`ed where the limits allow, so decrypted data is not
/// written to swap.
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Bytes of free buffers kept for reuse; the rest are released.
    keep_bytes: usize,
    lock_failed: std::sync::atomic::AtomicBool,
}

impl BufferPool {
    pub fn new(keep_bytes: usize) -> Arc<Self> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::new()),
            keep_bytes,
            lock_failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A buffer of `len` bytes with room for `capacity` (the file's chunk size). Its content
    /// is zeros (new or wiped), to be overwritten by the caller.
    pub fn take(self: &Arc<Self>, len: usize, capacity: usize) -> Plain {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            free.iter()
                .position(|b| b.len() == capacity)
                .map(|i| free.swap_remove(i))
        };
        let buf = reused.unwrap_or_else(|| {
            let buf = vec![0u8; capacity];
            self.lock_pages(&buf);
            buf
        });
        Plain {
            buf,
            len: len.min(capacity),
            pool: Some(self.clone()),
        }
    }

    fn lock_pages(&self, buf: &[u8]) {
        if self.lock_failed.load(Ordering::Relaxed) || buf.is_empty() {
            return;
        }
        // SAFETY: locks the pages of a live allocation; unlocked before it is freed.
        if unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) } != 0 {
            self.lock_failed.store(true, Ordering::Relaxed);
            log::warn!(
                "cannot mlock decrypted chunks ({}); they may reach swap",
                std::io::Error::last_os_error()
            );
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let held: usize = free.iter().map(Vec::len).sum();
        if held + buf.len() <= self.keep_bytes {
            free.push(buf);
        } else {
            drop(free);
            // SAFETY: the allocation is still live; munlock of unlocked pages is harmless.
            unsafe { libc::munlock(buf.as_ptr().cast(), buf.len()) };
        }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        let free = self.free.get_mut().unwrap_or_else(|p| p.into_inner());
        for buf in free.drain(..) {
            // SAFETY: as in give_back.
            unsafe { libc::munlock(buf.as_ptr().cast(), buf.len()) };
        }
    }
}

/// (file version id, chunk index)
pub type ChunkKey = (u64, u64);

struct Inner {
    lru: LruCache<ChunkKey, Arc<Plain>>,
    bytes: u64,
    /// Chunks being decrypted right now; others wanting them wait instead of decrypting
    /// the same chunk twice (a reader catching up with the prefetcher).
    loading: HashSet<ChunkKey>,
}

pub struct ChunkCache {
    inner: Mutex<Inner>,
    loaded: Condvar,
    capacity: u64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl ChunkCache {
    pub fn new(capacity: u64) -> Self {
        ChunkCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                loading: HashSet::new(),
            }),
            loaded: Condvar::new(),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached chunk, or `load`'s result (inserted). If another thread is loading the
    /// same chunk, waits for it rather than repeating the work.
    pub fn get_or_load<E>(
        &self,
        key: ChunkKey,
        load: impl FnOnce() -> Result<Plain, E>,
    ) -> Result<Arc<Plain>, E> {
        let mut inner = self.lock();
        loop {
            if let Some(chunk) = inner.lru.get(&key) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(chunk.clone());
            }
            if !inner.loading.contains(&key) {
                break;
            }
            inner = self.loaded.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        inner.loading.insert(key);
        drop(inner);
        let result = load().map(Arc::new);
        let mut inner = self.lock();
        inner.loading.remove(&key);
        if let Ok(chunk) = &result {
            Self::insert_locked(&mut inner, self.capacity, key, chunk.clone());
        }
        drop(inner);
        self.loaded.notify_all();
        result
    }

    /// True if present, without touching recency or counters (for prefetch decisions).
    pub fn contains(&self, key: ChunkKey) -> bool {
        self.lock().lru.contains(&key)
    }

    fn insert_locked(inner: &mut Inner, capacity: u64, key: ChunkKey, chunk: Arc<Plain>) {
        let size = chunk.as_slice().len() as u64;
        if size > capacity {
            return;
        }
        if let Some(old) = inner.lru.put(key, chunk) {
            inner.bytes -= old.as_slice().len() as u64;
        }
        inner.bytes += size;
        while inner.bytes > capacity {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.as_slice().len() as u64,
                None => break,
            }
        }
    }

    /// Drops every chunk of file version `id` (e.g. when a user locks and its files must not
    /// stay decrypted for nobody).
    pub fn remove_file(&self, id: u64) {
        let mut inner = self.lock();
        let keys: Vec<ChunkKey> = inner
            .lru
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| k.0 == id)
            .collect();
        for key in keys {
            if let Some(chunk) = inner.lru.pop(&key) {
                inner.bytes -= chunk.as_slice().len() as u64;
            }
        }
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.lru.clear();
        inner.bytes = 0;
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &ChunkCache, key: ChunkKey, bytes: Vec<u8>) -> Arc<Plain> {
        cache
            .get_or_load(key, || Ok::<_, ()>(Plain::new(bytes)))
            .unwrap()
    }

    #[test]
    fn bounded_by_bytes_and_lru_ordered() {
        let cache = ChunkCache::new(10);
        put(&cache, (1, 0), vec![1; 4]);
        put(&cache, (1, 1), vec![2; 4]);
        assert_eq!(put(&cache, (1, 0), vec![9; 4]).as_slice(), &[1; 4]); // hit; (1,1) now LRU
        put(&cache, (1, 2), vec![3; 4]);
        assert_eq!(cache.bytes(), 8);
        assert!(!cache.contains((1, 1)));
        assert!(cache.contains((1, 0)));
        put(&cache, (2, 0), vec![0; 11]);
        assert!(!cache.contains((2, 0)), "larger than the whole cache");
        cache.remove_file(1);
        assert_eq!(cache.bytes(), 0);
        assert_eq!(cache.hits.load(Ordering::Relaxed), 1);
        assert!(cache
            .get_or_load((3, 0), || Err::<Plain, _>("bad"))
            .is_err());
        assert!(!cache.contains((3, 0)));
    }

    #[test]
    fn pool_reuses_wiped_buffers() {
        let pool = BufferPool::new(1 << 20);
        let mut a = pool.take(10, 4096);
        a.as_mut_slice().fill(7);
        let ptr = a.as_slice().as_ptr();
        drop(a);
        let b = pool.take(4096, 4096);
        assert_eq!(b.as_slice().as_ptr(), ptr, "reused");
        assert!(b.as_slice().iter().all(|&x| x == 0), "wiped");
        assert_eq!(
            pool.take(5, 8192).as_slice().len(),
            5,
            "other sizes get their own"
        );
    }

    #[test]
    fn concurrent_loads_of_one_chunk_decrypt_once() {
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let loads = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                std::thread::spawn(move || {
                    cache
                        .get_or_load((7, 7), || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok::<_, ()>(Plain::new(vec![5; 100]))
                        })
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().as_slice(), &[5; 100]);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}
