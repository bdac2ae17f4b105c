//! Decrypted chunks, shared by every reader of a file, in an LRU bounded by bytes. Evicted
//! chunks are zeroized as soon as the last reader lets go of them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::buffers::Plain;
use lru::LruCache;

use crate::sync::{lock, wait};

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
        lock(&self.inner)
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
            inner = wait(&self.loaded, inner);
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
        cache.clear();
        assert_eq!(cache.bytes(), 0);
        assert_eq!(cache.hits.load(Ordering::Relaxed), 1);
        assert!(cache
            .get_or_load((3, 0), || Err::<Plain, _>("bad"))
            .is_err());
        assert!(!cache.contains((3, 0)));
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
