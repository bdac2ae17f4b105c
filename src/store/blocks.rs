//! Ciphertext of remote objects, read in large ranges: a [`RemoteSource`] turns a [`Fetch`]
//! (ranged GETs of one object version) into a `container::Source` whose reads are served
//! from 256 KiB units kept in a bounded memory pool (and, optionally, a [`DiskCache`]).
//!
//! A round trip to an object store costs milliseconds, so a reader that fetched each 64 KiB
//! chunk on its own would run at a small fraction of the bandwidth. Instead each source
//! watches its reads for sequential streams (a reader, plus the mount's own prefetch running
//! ahead of it) and keeps a window ahead of each stream in flight: runs of up to
//! [`RUN_UNITS`] units fetched by one GET each, several GETs at once on the pool's workers.
//! A random read fetches just the one unit it touches. Everything here is ciphertext: the
//! container layer authenticates what it reads, so a unit damaged anywhere on the way gives
//! an integrity error, never wrong plaintext.
//!
//! Lock order: a source's `streams`, then the pool's `state`, then the disk cache's; a
//! `Pending`'s lock is a leaf.
//! No lock is held while fetching or while reading or writing cache files.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};

use lru::LruCache;

use super::disk_cache::DiskCache;
use super::Result;
use crate::container::Source;
use crate::sync::{lock, wait};

/// The unit of caching and of a random read's fetch.
pub(crate) const UNIT: u64 = 256 << 10;
/// The most units one GET fetches (8 MiB).
const RUN_UNITS: u64 = 32;
/// How far ahead of a stream units are kept in flight, at most (64 MiB).
const MAX_AHEAD_UNITS: u64 = 256;
/// How far ahead a stream starts (2 MiB): its window then grows with what it reads.
const MIN_AHEAD_UNITS: u64 = 8;
/// A stream is sequential once it has read this much in order.
const SEQUENTIAL_BYTES: u64 = 1 << 20;
/// GETs in flight at once for read-ahead.
const WORKERS: usize = 8;
/// Streams told apart per source: a reader and the mount's prefetch, or a few readers.
const STREAMS: usize = 4;
/// Memory for units when the caller gives no bound.
pub(crate) const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;

/// Ranged reads of one object version.
pub(crate) trait Fetch: Send + Sync + 'static {
    /// Bytes `[offset, offset + len)` of the object version this fetcher names.
    fn fetch(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

/// How a backend's pool reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteReadOptions {
    /// A directory for the ciphertext disk cache, if any.
    pub disk_cache: Option<PathBuf>,
    /// The disk cache's bound in bytes (0: the default, see [`DiskCache`]).
    pub disk_cache_bytes: u64,
    /// The memory bound for units (0: [`DEFAULT_MEMORY_BYTES`]).
    pub memory_bytes: u64,
}

/// Names one unit: the object version's identity and the unit's index.
type UnitKey = (Arc<str>, u64);

/// One unit's bytes: a slice of the buffer its GET filled.
#[derive(Clone)]
struct Unit {
    buf: Arc<Vec<u8>>,
    start: usize,
    len: usize,
}

impl Unit {
    fn whole(buf: Vec<u8>) -> Unit {
        let len = buf.len();
        Unit {
            buf: Arc::new(buf),
            start: 0,
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        self.buf
            .get(self.start..self.start + self.len)
            .unwrap_or(&[])
    }
}

/// Why a fetch failed, kept for whoever waited on it.
type Failure = (io::ErrorKind, String);

fn failure(e: &io::Error) -> Failure {
    (e.kind(), e.to_string())
}

/// A unit being fetched, waited for by whoever else needs it.
#[derive(Default)]
struct Pending {
    done: Mutex<Option<std::result::Result<Unit, Failure>>>,
    cv: Condvar,
}

impl Pending {
    fn finish(&self, result: std::result::Result<Unit, Failure>) {
        *lock(&self.done) = Some(result);
        self.cv.notify_all();
    }

    fn wait(&self) -> std::result::Result<Unit, Failure> {
        let mut done = lock(&self.done);
        loop {
            if let Some(result) = done.as_ref() {
                return result.clone();
            }
            done = wait(&self.cv, done);
        }
    }
}

struct State {
    units: LruCache<UnitKey, Unit>,
    bytes: u64,
    pending: HashMap<UnitKey, Arc<Pending>>,
}

/// A run of units for a worker to fetch with one GET.
struct Job {
    source: Arc<Object>,
    first: u64,
    count: u64,
    /// A unit the disk cache holds: read from there, fetched only if it is damaged.
    on_disk: bool,
}

/// The units of every remote object a backend reads, bounded in memory, and the workers
/// that fetch read-ahead runs. One per backend.
pub(crate) struct BlockPool {
    state: Mutex<State>,
    memory_bytes: u64,
    disk: Option<DiskCache>,
    jobs: Mutex<Sender<Job>>,
}

/// What a source and the pool's workers share: the object version and how to fetch it.
struct Object {
    fetch: Arc<dyn Fetch>,
    identity: Arc<str>,
    size: u64,
}

impl Object {
    fn units(&self) -> u64 {
        self.size.div_ceil(UNIT)
    }

    fn range(&self, first: u64, count: u64) -> (u64, usize) {
        let start = first * UNIT;
        let end = ((first + count) * UNIT).min(self.size);
        (start, usize::try_from(end - start).unwrap_or(0))
    }
}

impl BlockPool {
    pub(crate) fn new(opts: &RemoteReadOptions) -> Result<Arc<BlockPool>> {
        let disk = match &opts.disk_cache {
            Some(dir) => Some(DiskCache::open(dir, opts.disk_cache_bytes)?),
            None => None,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let pool = Arc::new(BlockPool {
            state: Mutex::new(State {
                units: LruCache::unbounded(),
                bytes: 0,
                pending: HashMap::new(),
            }),
            memory_bytes: match opts.memory_bytes {
                0 => DEFAULT_MEMORY_BYTES,
                n => n.max(RUN_UNITS * UNIT),
            },
            disk,
            jobs: Mutex::new(tx),
        });
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WORKERS {
            let rx = rx.clone();
            let weak = Arc::downgrade(&pool);
            let spawned = std::thread::Builder::new()
                .name(format!("tvault-fetch-{i}"))
                .spawn(move || worker(&rx, &weak));
            if let Err(e) = spawned {
                log::warn!("cannot start fetch worker: {e}");
            }
        }
        Ok(pool)
    }

    /// The bytes of unit `index` of `object`: from memory, from a fetch already under way,
    /// from the disk cache, or fetched now.
    fn unit(&self, object: &Arc<Object>, index: u64) -> io::Result<Unit> {
        let key: UnitKey = (object.identity.clone(), index);
        let (pending, mine) = {
            let mut state = lock(&self.state);
            if let Some(unit) = state.units.get(&key) {
                return Ok(unit.clone());
            }
            match state.pending.get(&key) {
                Some(p) => (p.clone(), false),
                None => {
                    let p = Arc::new(Pending::default());
                    state.pending.insert(key.clone(), p.clone());
                    (p, true)
                }
            }
        };
        if !mine {
            return match pending.wait() {
                Ok(unit) => Ok(unit),
                // The read-ahead already waited the store's whole timeout: trying again would
                // make the read that needs it wait twice that.
                Err((io::ErrorKind::TimedOut, why)) => {
                    Err(io::Error::new(io::ErrorKind::TimedOut, why))
                }
                // Other failures are tried once more by the reader that needs the unit.
                Err(_) => self.fetch_now(object, index),
            };
        }
        if let Some(bytes) = self
            .disk
            .as_ref()
            .and_then(|d| d.get(&object.identity, index))
        {
            let unit = Unit::whole(bytes);
            self.complete(&object.identity, index, Ok(unit.clone()));
            return Ok(unit);
        }
        let (offset, len) = object.range(index, 1);
        match object.fetch.fetch(offset, len) {
            Ok(bytes) if bytes.len() == len => {
                let unit = Unit::whole(bytes);
                self.complete(&object.identity, index, Ok(unit.clone()));
                self.store_on_disk(&object.identity, index, &unit);
                Ok(unit)
            }
            Ok(bytes) => {
                let e = short_fetch(bytes.len(), len);
                self.complete(&object.identity, index, Err(failure(&e)));
                Err(e)
            }
            Err(e) => {
                self.complete(&object.identity, index, Err(failure(&e)));
                Err(e)
            }
        }
    }

    /// Fetches unit `index` without looking for it first (after a read-ahead failed).
    fn fetch_now(&self, object: &Arc<Object>, index: u64) -> io::Result<Unit> {
        let (offset, len) = object.range(index, 1);
        let bytes = object.fetch.fetch(offset, len)?;
        if bytes.len() != len {
            return Err(short_fetch(bytes.len(), len));
        }
        let unit = Unit::whole(bytes);
        self.insert(&object.identity, index, unit.clone());
        Ok(unit)
    }

    /// Ends the fetch of a unit: the waiters get `result`, memory keeps a unit that came.
    fn complete(
        &self,
        identity: &Arc<str>,
        index: u64,
        result: std::result::Result<Unit, Failure>,
    ) {
        let key: UnitKey = (identity.clone(), index);
        let pending = {
            let mut state = lock(&self.state);
            let pending = state.pending.remove(&key);
            if let Ok(unit) = &result {
                self.put(&mut state, key, unit.clone());
            }
            pending
        };
        if let Some(p) = pending {
            p.finish(result);
        }
    }

    fn insert(&self, identity: &Arc<str>, index: u64, unit: Unit) {
        let mut state = lock(&self.state);
        self.put(&mut state, (identity.clone(), index), unit);
    }

    fn put(&self, state: &mut State, key: UnitKey, unit: Unit) {
        let len = unit.len as u64;
        if let Some(old) = state.units.put(key, unit) {
            state.bytes -= old.len as u64;
        }
        state.bytes += len;
        while state.bytes > self.memory_bytes {
            match state.units.pop_lru() {
                Some((_, old)) => state.bytes -= old.len as u64,
                None => break,
            }
        }
    }

    fn store_on_disk(&self, identity: &str, index: u64, unit: &Unit) {
        if let Some(disk) = &self.disk {
            disk.put(identity, index, unit.bytes());
        }
    }

    /// Puts the units of `[first, end)` that are neither in memory nor on their way in
    /// flight, in runs of at most [`RUN_UNITS`].
    fn read_ahead(&self, object: &Arc<Object>, first: u64, end: u64) {
        let end = end.min(object.units());
        let mut runs = Vec::new();
        {
            let mut state = lock(&self.state);
            // Read-ahead never takes more than half the pool, so what it brings is not evicted
            // before it is read.
            let in_flight = state.pending.len() as u64 * UNIT;
            let mut budget = (self.memory_bytes / 2).saturating_sub(in_flight) / UNIT;
            let mut run: Option<(u64, u64)> = None;
            for index in first..end {
                let key: UnitKey = (object.identity.clone(), index);
                let missing =
                    budget > 0 && !state.units.contains(&key) && !state.pending.contains_key(&key);
                let on_disk = missing && self.disk.as_ref().is_some_and(|d| d.holds(&key.0, index));
                if missing {
                    budget -= 1;
                    state.pending.insert(key, Arc::new(Pending::default()));
                }
                if on_disk {
                    runs.extend(run.take().map(|(start, n)| (start, n, false)));
                    runs.push((index, 1, true));
                } else if missing {
                    run = match run {
                        Some((start, n)) if n < RUN_UNITS => Some((start, n + 1)),
                        Some((start, n)) => {
                            runs.push((start, n, false));
                            Some((index, 1))
                        }
                        None => Some((index, 1)),
                    };
                } else if let Some((start, n)) = run.take() {
                    runs.push((start, n, false));
                }
            }
            runs.extend(run.map(|(start, n)| (start, n, false)));
        }
        let jobs = lock(&self.jobs);
        for (first, count, on_disk) in runs {
            let job = Job {
                source: object.clone(),
                first,
                count,
                on_disk,
            };
            if let Err(mpsc::SendError(job)) = jobs.send(job) {
                self.fail(&job, (io::ErrorKind::Other, "no fetch worker".into()));
            }
        }
    }

    /// Fetches a run with one GET and files its units.
    fn run(&self, job: &Job) {
        let object = &job.source;
        if job.on_disk {
            if let Some(bytes) = self
                .disk
                .as_ref()
                .and_then(|d| d.get(&object.identity, job.first))
            {
                return self.complete(&object.identity, job.first, Ok(Unit::whole(bytes)));
            }
        }
        let (offset, len) = object.range(job.first, job.count);
        let bytes = match object.fetch.fetch(offset, len) {
            Ok(b) if b.len() == len => Arc::new(b),
            Ok(b) => return self.fail(job, failure(&short_fetch(b.len(), len))),
            Err(e) => {
                log::debug!("read-ahead of {}: {e}", object.identity);
                return self.fail(job, failure(&e));
            }
        };
        for i in 0..job.count {
            let start = usize::try_from(i * UNIT).unwrap_or(usize::MAX);
            let unit = Unit {
                buf: bytes.clone(),
                start,
                len: (len - start.min(len)).min(UNIT as usize),
            };
            self.store_on_disk(&object.identity, job.first + i, &unit);
            self.complete(&object.identity, job.first + i, Ok(unit));
        }
    }

    fn fail(&self, job: &Job, why: Failure) {
        for i in 0..job.count {
            self.complete(&job.source.identity, job.first + i, Err(why.clone()));
        }
    }
}

fn short_fetch(got: usize, wanted: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("object store returned {got} bytes for a range of {wanted}"),
    )
}

fn worker(rx: &Mutex<Receiver<Job>>, pool: &std::sync::Weak<BlockPool>) {
    loop {
        let job = match lock(rx).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        match pool.upgrade() {
            Some(pool) => pool.run(&job),
            None => return,
        }
    }
}

/// Where a sequential reader is, and how far ahead of it units were asked for.
#[derive(Clone, Copy, Default)]
struct Stream {
    /// The offset the next read of this stream is expected at.
    next: u64,
    /// Bytes this stream has read in order.
    run: u64,
    /// Units before this one have been asked for.
    ahead_to: u64,
    /// When this stream last read (a counter), to replace the stalest.
    used: u64,
}

/// One object version read through a [`BlockPool`].
pub(crate) struct RemoteSource {
    pool: Arc<BlockPool>,
    object: Arc<Object>,
    streams: Mutex<([Stream; STREAMS], u64)>,
}

/// `fetch`'s object version (of `size` bytes, named `identity` in caches: the object's key
/// and ETag, so that a new version never meets an old one's units) as a `Source`.
pub(crate) fn remote_source(
    pool: &Arc<BlockPool>,
    fetch: Arc<dyn Fetch>,
    size: u64,
    identity: String,
) -> RemoteSource {
    RemoteSource {
        pool: pool.clone(),
        object: Arc::new(Object {
            fetch,
            identity: identity.into(),
            size,
        }),
        streams: Mutex::new(([Stream::default(); STREAMS], 0)),
    }
}

impl RemoteSource {
    /// Notes a read of `[offset, end)` and returns the units a stream it continues wants
    /// in flight now, if any.
    fn follow(&self, offset: u64, end: u64) -> Option<(u64, u64)> {
        let mut guard = lock(&self.streams);
        let (streams, clock) = &mut *guard;
        *clock += 1;
        let continues = |s: &Stream| {
            s.run > 0 && offset + UNIT >= s.next && offset <= s.next.saturating_add(UNIT)
        };
        let stream = match streams.iter().position(continues) {
            Some(i) => &mut streams[i],
            None => {
                let stalest = (0..STREAMS).min_by_key(|&i| streams[i].used).unwrap_or(0);
                streams[stalest] = Stream::default();
                &mut streams[stalest]
            }
        };
        stream.used = *clock;
        stream.run += end - offset;
        stream.next = stream.next.max(end);
        // A few small reads near each other (a header, one small tensor) fetch what they
        // touch and no more; a stream's window grows with what it read, as the kernel's does.
        if stream.run < SEQUENTIAL_BYTES {
            return None;
        }
        let ahead = (stream.run / UNIT).clamp(MIN_AHEAD_UNITS, MAX_AHEAD_UNITS);
        let from = end.div_ceil(UNIT).max(stream.ahead_to);
        let to = end / UNIT + 1 + ahead;
        // Asked for in steps of a run, not a unit at a time.
        if to < from + RUN_UNITS.min(ahead) {
            return None;
        }
        stream.ahead_to = to;
        Some((from, to))
    }
}

impl Source for RemoteSource {
    fn size(&self) -> io::Result<u64> {
        Ok(self.object.size)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.object.size)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some((from, to)) = self.follow(offset, end) {
            self.pool.read_ahead(&self.object, from, to);
        }
        // A read of several units (a chunk table) fetches them at once, not one after another.
        if (end - 1) / UNIT > offset / UNIT {
            self.pool
                .read_ahead(&self.object, offset / UNIT + 1, (end - 1) / UNIT + 1);
        }
        let mut at = offset;
        while at < end {
            let index = at / UNIT;
            let unit = self.pool.unit(&self.object, index)?;
            let bytes = unit.bytes();
            let from = usize::try_from(at - index * UNIT).unwrap_or(usize::MAX);
            let upto = usize::try_from((end - index * UNIT).min(UNIT)).unwrap_or(usize::MAX);
            let part = bytes
                .get(from..upto)
                .ok_or_else(|| short_fetch(bytes.len(), upto))?;
            let done = usize::try_from(at - offset).unwrap_or(usize::MAX);
            buf[done..done + part.len()].copy_from_slice(part);
            at += part.len() as u64;
        }
        Ok(())
    }

    fn will_need(&self, offset: u64, len: u64) {
        let end = offset.saturating_add(len.max(1)).min(self.object.size);
        if offset < end {
            self.pool
                .read_ahead(&self.object, offset / UNIT, (end - 1) / UNIT + 1);
        }
    }
}

#[cfg(test)]
#[path = "blocks_tests.rs"]
mod tests;
