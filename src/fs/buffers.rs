//! Memory for decrypted chunks. Buffers are carved from 2 MiB slabs, each mapped once,
//! `mlock`ed as a whole (plaintext must not reach swap) and left out of core dumps. One
//! allocation and `mlock` per 64 KiB chunk made every cached chunk its own VMA and cost
//! more than decrypting it on random reads. Slabs are not advised to use transparent huge
//! pages: with the usual `defrag=madvise`, faulting one in ran direct compaction, which
//! tripled the daemon's system time on some runs.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use zeroize::Zeroize;

/// Size of one slab.
const SLAB_BYTES: usize = 2 << 20;

/// Plaintext of one chunk (or of a reply assembled from chunks); wiped on drop, and, if it
/// came from a [`BufferPool`], returned to it for reuse.
pub struct Plain {
    storage: Storage,
    len: usize,
}

enum Storage {
    Owned(Vec<u8>),
    Pooled {
        ptr: NonNull<u8>,
        capacity: usize,
        slab: u64,
        pool: Arc<BufferPool>,
    },
}

// SAFETY: a pooled buffer is memory no other `Plain` refers to until it is given back on
// drop; shared access is read-only through `&self`.
unsafe impl Send for Plain {}
// SAFETY: through `&Plain` the buffer is only read (`as_slice`); writing it takes `&mut Plain`,
// so references shared between threads never race.
unsafe impl Sync for Plain {}

impl Plain {
    pub fn new(bytes: Vec<u8>) -> Self {
        Plain {
            len: bytes.len(),
            storage: Storage::Owned(bytes),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.storage {
            Storage::Owned(v) => &v[..self.len],
            // SAFETY: `ptr` points at `capacity >= len` bytes this value owns (see above).
            Storage::Pooled { ptr, .. } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), self.len)
            },
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Owned(v) => &mut v[..self.len],
            // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
            Storage::Pooled { ptr, .. } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), self.len)
            },
        }
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        match &mut self.storage {
            Storage::Owned(v) => v.zeroize(),
            Storage::Pooled {
                ptr,
                capacity,
                slab,
                pool,
            } => {
                // The whole buffer, not just `len`: it may have held a longer chunk before.
                // SAFETY: as in `as_mut_slice`.
                unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *capacity) }.zeroize();
                pool.give_back(*slab, *ptr);
            }
        }
    }
}

/// One anonymous mapping, unmapped (and unlocked) on drop.
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by its slab; the pool's mutex guards its use.
unsafe impl Send for Region {}

impl Region {
    /// `len` fresh bytes; `lock` asks for them to be kept out of swap. Pages are locked as
    /// they are first touched (`MLOCK_ONFAULT`), so a slab costs memory only for the
    /// buffers in use: populating a whole 2 MiB slab up front put 512 page faults in front
    /// of the first read that needed a new size of buffer. Returns the region and whether
    /// the lock succeeded.
    fn map(len: usize, lock: bool) -> std::io::Result<(Region, bool)> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let region = Region {
            ptr: NonNull::new(ptr.cast()).ok_or(std::io::ErrorKind::OutOfMemory)?,
            len,
        };
        // Advice only: without DONTDUMP the memory still works.
        // SAFETY: madvise and mlock2/mlock on the mapping this function owns. Kernels
        // before 4.4 lack mlock2; they lock (and populate) the whole slab now.
        let locked = unsafe {
            libc::madvise(ptr, len, libc::MADV_DONTDUMP);
            lock && (libc::mlock2(ptr, len, libc::MLOCK_ONFAULT) == 0 || libc::mlock(ptr, len) == 0)
        };
        Ok((region, locked))
    }

    /// Touches every page now, off the read path.
    fn prefault(&self) {
        // SAFETY: writes zeros (what fresh anonymous memory holds) over the whole mapping,
        // which no buffer uses yet.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), 0, self.len) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the window `map` kept (munmap also drops any lock); no
        // buffer of it is in use any more (see `BufferPool::give_back`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

struct Slab {
    id: u64,
    region: Region,
    buf_size: usize,
    /// Offsets (from the region's start) of buffers not in use.
    free: Vec<usize>,
}

impl Slab {
    fn buffers(&self) -> usize {
        self.region.len / self.buf_size
    }
}

#[derive(Default)]
struct Slabs {
    slabs: Vec<Slab>,
    next_id: u64,
}

/// Hands out chunk buffers from slabs and takes them back. A slab whose buffers are all free
/// is unmapped once more than `keep_bytes` sit free, so memory follows the cache's size.
pub struct BufferPool {
    slabs: Mutex<Slabs>,
    keep_bytes: usize,
    lock_failed: AtomicBool,
}

impl BufferPool {
    /// `warm_size`: a chunk size to map (and fault in) one slab for now, so that the first
    /// reads of a fresh mount do not wait for it.
    pub fn new(keep_bytes: usize, warm_size: usize) -> Arc<Self> {
        let pool = Arc::new(BufferPool {
            slabs: Mutex::new(Slabs::default()),
            keep_bytes,
            lock_failed: AtomicBool::new(false),
        });
        if warm_size > 0 {
            if let Some(slab) = pool.add_slab(&mut pool.lock(), warm_size) {
                slab.region.prefault();
            }
        }
        pool
    }

    fn lock(&self) -> MutexGuard<'_, Slabs> {
        crate::sync::lock(&self.slabs)
    }

    /// A buffer of `len` bytes with room for `capacity` (the file's chunk size). Its content
    /// is zeros (new or wiped), to be overwritten by the caller.
    pub fn take(self: &Arc<Self>, len: usize, capacity: usize) -> Plain {
        let len = len.min(capacity);
        if capacity == 0 {
            return Plain::new(Vec::new());
        }
        let mut state = self.lock();
        let pop = |s: &mut Slab| s.free.pop().map(|offset| (s.id, s.region.ptr, offset));
        let found = match state
            .slabs
            .iter_mut()
            .filter(|s| s.buf_size == capacity)
            .find_map(pop)
        {
            Some(found) => Some(found),
            None => self.add_slab(&mut state, capacity).and_then(pop),
        };
        drop(state);
        // Out of address space or memory: an ordinary (unlocked) allocation still serves
        // the read.
        let Some((slab, base, offset)) = found else {
            return Plain::new(vec![0; len]);
        };
        // SAFETY: `offset + capacity` lies within the slab's region (see `add_slab`).
        let ptr = unsafe { NonNull::new_unchecked(base.as_ptr().add(offset)) };
        Plain {
            storage: Storage::Pooled {
                ptr,
                capacity,
                slab,
                pool: self.clone(),
            },
            len,
        }
    }

    /// Maps a slab for buffers of `capacity` bytes, all free, and adds it to the pool.
    fn add_slab<'a>(&self, state: &'a mut Slabs, capacity: usize) -> Option<&'a mut Slab> {
        let len = capacity.checked_next_multiple_of(SLAB_BYTES)?;
        let want_lock = !self.lock_failed.load(Ordering::Relaxed);
        let (region, locked) = match Region::map(len, want_lock) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cannot map {len} bytes for decrypted chunks: {e}");
                return None;
            }
        };
        if want_lock && !locked && !self.lock_failed.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cannot mlock decrypted chunks ({}); they may reach swap",
                std::io::Error::last_os_error()
            );
        }
        let id = state.next_id;
        state.next_id += 1;
        // Handed out from the front, so a slab's used buffers stay together.
        let free = (0..len / capacity).rev().map(|i| i * capacity).collect();
        state.slabs.push(Slab {
            id,
            region,
            buf_size: capacity,
            free,
        });
        state.slabs.last_mut()
    }

    fn give_back(&self, slab: u64, ptr: NonNull<u8>) {
        let mut state = self.lock();
        let Some(at) = state.slabs.iter().position(|s| s.id == slab) else {
            return;
        };
        let s = &mut state.slabs[at];
        s.free
            .push(ptr.as_ptr() as usize - s.region.ptr.as_ptr() as usize);
        if s.free.len() < s.buffers() {
            return;
        }
        let free_bytes: usize = state.slabs.iter().map(|s| s.free.len() * s.buf_size).sum();
        if free_bytes > self.keep_bytes {
            let empty = state.slabs.swap_remove(at);
            drop(state);
            drop(empty);
        }
    }

    /// Bytes mapped for buffers (in use or free).
    pub fn mapped_bytes(&self) -> usize {
        self.lock().slabs.iter().map(|s| s.region.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_wiped_buffers() {
        let pool = BufferPool::new(4 << 20, 0);
        let mut a = pool.take(10, 4096);
        a.as_mut_slice().fill(7);
        let ptr = a.as_slice().as_ptr();
        drop(a);
        let b = pool.take(4096, 4096);
        assert_eq!(b.as_slice().as_ptr(), ptr, "reused");
        assert!(b.as_slice().iter().all(|&x| x == 0), "wiped");
        let c = pool.take(5, 8192);
        assert_eq!(c.as_slice().len(), 5, "other sizes get their own");
        assert_eq!(pool.mapped_bytes(), 2 * SLAB_BYTES);
    }

    #[test]
    fn buffers_are_distinct_and_slabs_are_released() {
        let pool = BufferPool::new(0, 65536);
        assert_eq!(pool.mapped_bytes(), SLAB_BYTES, "the warm slab");
        let mut bufs: Vec<Plain> = (0..100).map(|_| pool.take(65536, 65536)).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            b.as_mut_slice().fill(i as u8);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(
                b.as_slice().iter().all(|&x| x == i as u8),
                "buffer {i} overlapped"
            );
        }
        assert_eq!(pool.mapped_bytes(), 4 * SLAB_BYTES, "100 of 32 per slab");
        drop(bufs);
        assert_eq!(
            pool.mapped_bytes(),
            0,
            "free slabs above keep_bytes are unmapped"
        );
    }

    #[test]
    fn chunks_larger_than_a_slab() {
        let pool = BufferPool::new(8 << 20, 0);
        let mut big = pool.take(3 << 20, 4 << 20);
        big.as_mut_slice().fill(1);
        assert_eq!(big.as_slice().len(), 3 << 20);
        assert_eq!(pool.mapped_bytes(), 4 << 20);
    }
}
