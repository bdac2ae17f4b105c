//! Read-ahead: what to decrypt before it is asked for (the policy, with each handle's
//! state), and the small worker pool that decrypts it, so that a reader streaming a tensor
//! (or a file) finds its next chunks already in the cache and every core works.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};

use super::versions::FileVersion;
use super::Core;
use crate::sync::lock;

/// A reader of a `.safetensors` file that has read this much in order is streaming it
/// (e.g. copying the whole file) and is prefetched past tensor boundaries.
const STREAMING_BYTES: u64 = 8 << 20;
/// The least a sequential reader is prefetched ahead.
const MIN_AHEAD: u64 = 256 << 10;

/// How far ahead to decrypt: 16 MiB, or an eighth of the cache if that is smaller, so that
/// prefetched chunks are not evicted before they are read.
fn window(cache_capacity: u64) -> u64 {
    (16 << 20).min(cache_capacity / 8)
}

type Job = (Arc<FileVersion>, u64);

pub(super) struct Prefetcher {
    queue: Mutex<Sender<Job>>,
    /// Chunks queued or being decrypted, so overlapping requests do not duplicate work.
    in_flight: Arc<Mutex<HashSet<(u64, u64)>>>,
}

impl Prefetcher {
    pub fn new(core: Weak<Core>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..workers {
            let rx = rx.clone();
            let core = core.clone();
            let in_flight = in_flight.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tvault-prefetch-{i}"))
                .spawn(move || worker(&rx, &core, &in_flight));
            if let Err(e) = spawned {
                log::warn!("cannot start prefetch worker: {e}");
            }
        }
        Prefetcher {
            queue: Mutex::new(tx),
            in_flight,
        }
    }

    /// Queues chunks `from..=to` of `file` that are not already queued.
    fn request(&self, file: &Arc<FileVersion>, from: u64, to: u64) {
        let queue = lock(&self.queue);
        let mut in_flight = lock(&self.in_flight);
        for index in from..=to.min(file.reader.chunk_count().saturating_sub(1)) {
            if !in_flight.insert((file.id, index)) {
                continue;
            }
            if queue.send((file.clone(), index)).is_err() {
                in_flight.remove(&(file.id, index));
                return;
            }
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, core: &Weak<Core>, in_flight: &Mutex<HashSet<(u64, u64)>>) {
    loop {
        let job = lock(rx).recv();
        let Ok((file, index)) = job else { return };
        let Some(core) = core.upgrade() else {
            return;
        };
        // Readahead past the end of what a reader wanted (a small tensor whose read-around
        // spilled into a large neighbour) stops once the file is closed.
        if !file.has_readers() {
            lock(in_flight).remove(&(file.id, index));
            continue;
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Err(e) = core.chunk(&file, index) {
                log::error!("prefetch of chunk {index}: {e}");
            }
        }));
        if result.is_err() {
            log::error!("panic in prefetch worker (chunk {index})");
        }
        lock(in_flight).remove(&(file.id, index));
    }
}

/// A handle's read pattern, as the policy sees it.
#[derive(Default)]
pub(super) struct ReadAhead {
    /// Where a sequential reader's next request would start.
    next_offset: AtomicU64,
    /// Plaintext offset up to which chunks were already handed to the workers.
    prefetched_to: AtomicU64,
    /// Bytes read in one unbroken sequential run.
    streak: AtomicU64,
}

impl Core {
    /// Queues on the worker pool what a read of `size` bytes at `offset` will want next: the
    /// request's own later chunks, then ahead of it the rest of the tensor the read landed
    /// in, or, for a sequential reader of another file, a window past the read.
    pub(super) fn prefetch(
        &self,
        ahead: &ReadAhead,
        file: &Arc<FileVersion>,
        offset: u64,
        size: u32,
    ) {
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
        let sequential = ahead.next_offset.swap(end, Ordering::Relaxed) == offset;
        let streak = if sequential {
            ahead.streak.fetch_add(end - offset, Ordering::Relaxed) + (end - offset)
        } else {
            ahead.streak.store(end - offset, Ordering::Relaxed);
            end - offset
        };
        let window = window(self.cache.capacity());
        // Like the kernel's readahead, the distance ahead grows with the run: twice what
        // the reader has read in order so far. Two requests in a row (a small tensor's
        // read-around spilling into a big neighbour) earn a few chunks, not 16 MiB.
        let distance = (2 * streak).clamp(MIN_AHEAD, window.max(MIN_AHEAD));
        // A safetensors file is prefetched tensor by tensor, so that reading the header or
        // one tensor never pays for its neighbours; only a reader that has streamed a few
        // MiB in order also gets a window beyond the tensor.
        let streaming = streak >= STREAMING_BYTES;
        let target_end = match &file.tensors {
            // The rest of a tensor is decrypted ahead only for a reader going through it in
            // order (as `get_tensor` does from its second request on). A random reader gets
            // the chunks it asks for and no more, even when one lands at the start of a
            // tensor.
            Some(h) => match h
                .tensor_at_file_offset(offset)
                .map(|t| h.data_start() + t.end)
            {
                _ if streaming => end + distance,
                Some(tensor_end) if sequential => tensor_end.min(end + distance),
                _ => return,
            },
            None if sequential => end + distance,
            None => return,
        }
        .min(len);
        // Resume where the last prefetch for this handle stopped, unless the reader jumped.
        let done = ahead.prefetched_to.load(Ordering::Relaxed);
        let start = if done > end && done - end <= window {
            done
        } else {
            end
        };
        if target_end <= start {
            return;
        }
        ahead.prefetched_to.store(target_end, Ordering::Relaxed);
        let (from, to) = (start >> log2, (target_end - 1) >> log2);
        if let Some(from) = (from..=to).find(|&i| !self.cache.contains((file.id, i))) {
            self.prefetch.request(file, from, to);
        }
    }
}
