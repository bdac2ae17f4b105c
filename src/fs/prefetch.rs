//! Decrypts chunks ahead of readers on a small worker pool, so that a reader streaming a
//! tensor (or a file) finds its next chunks already in the cache and every core works.

use std::collections::HashSet;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};

use super::{lock, FileVersion, Shared};

/// How far ahead to decrypt: 16 MiB, or an eighth of the cache if that is smaller, so that
/// prefetched chunks are not evicted before they are read.
pub fn window(cache_capacity: u64) -> u64 {
    (16 << 20).min(cache_capacity / 8)
}

type Job = (Arc<FileVersion>, u64);

pub struct Prefetcher {
    queue: Mutex<Sender<Job>>,
    /// Chunks queued or being decrypted, so overlapping requests do not duplicate work.
    in_flight: Arc<Mutex<HashSet<(u64, u64)>>>,
}

impl Prefetcher {
    pub fn new(shared: Weak<Shared>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..workers {
            let rx = rx.clone();
            let shared = shared.clone();
            let in_flight = in_flight.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tvault-prefetch-{i}"))
                .spawn(move || worker(&rx, &shared, &in_flight));
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
    pub fn request(&self, file: &Arc<FileVersion>, from: u64, to: u64) {
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

fn worker(
    rx: &Mutex<Receiver<Job>>,
    shared: &Weak<Shared>,
    in_flight: &Mutex<HashSet<(u64, u64)>>,
) {
    loop {
        let job = lock(rx).recv();
        let Ok((file, index)) = job else { return };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Readahead past the end of what a reader wanted (a small tensor whose read-around
        // spilled into a large neighbour) stops once the file is closed.
        if !file.has_readers() {
            lock(in_flight).remove(&(file.id, index));
            continue;
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Err(e) = shared.chunk(&file, index) {
                log::error!("prefetch of chunk {index}: {e}");
            }
        }));
        if result.is_err() {
            log::error!("panic in prefetch worker (chunk {index})");
        }
        lock(in_flight).remove(&(file.id, index));
    }
}
