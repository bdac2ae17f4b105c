use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;

use super::*;

/// An object in memory that counts and records the ranges asked of it.
struct Counted {
    data: Vec<u8>,
    calls: AtomicUsize,
    ranges: Mutex<Vec<(u64, usize)>>,
    fail: std::sync::atomic::AtomicBool,
}

impl Counted {
    fn new(len: usize) -> Arc<Counted> {
        let data = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
        Arc::new(Counted {
            data,
            calls: AtomicUsize::new(0),
            ranges: Mutex::new(Vec::new()),
            fail: Default::default(),
        })
    }
}

impl Fetch for Counted {
    fn fetch(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        lock(&self.ranges).push((offset, len));
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "server went away"));
        }
        let start = offset as usize;
        Ok(self.data[start..start + len].to_vec())
    }
}

fn pool(memory: u64, disk: Option<&Path>) -> Arc<BlockPool> {
    BlockPool::new(&RemoteReadOptions {
        disk_cache: disk.map(Path::to_path_buf),
        disk_cache_bytes: 64 << 20,
        memory_bytes: memory,
    })
    .unwrap()
}

use std::path::Path;

fn read_all(source: &RemoteSource, piece: usize) -> Vec<u8> {
    let size = source.size().unwrap() as usize;
    let mut out = vec![0u8; size];
    for start in (0..size).step_by(piece) {
        let end = (start + piece).min(size);
        source
            .read_exact_at(&mut out[start..end], start as u64)
            .unwrap();
    }
    out
}

#[test]
fn sequential_reads_coalesce_into_large_parallel_ranges() {
    let object = Counted::new(40 * UNIT as usize + 12345);
    let pool = pool(0, None);
    let source = remote_source(
        &pool,
        object.clone(),
        object.data.len() as u64,
        "k#1".into(),
    );
    assert_eq!(read_all(&source, 64 << 10), object.data);
    let ranges = lock(&object.ranges).clone();
    // 656 reads of 64 KiB; a few single-unit fetches before the stream is seen, then runs.
    assert!(ranges.len() <= 12, "{} fetches: {ranges:?}", ranges.len());
    let big = ranges.iter().filter(|r| r.1 as u64 >= 4 * UNIT).count();
    assert!(big >= 3, "{ranges:?}");
    let fetched: usize = ranges.iter().map(|r| r.1).sum();
    assert_eq!(fetched, object.data.len(), "each byte fetched once");
}

#[test]
fn a_random_read_fetches_only_its_unit() {
    let object = Counted::new(64 * UNIT as usize);
    let pool = pool(0, None);
    let source = remote_source(
        &pool,
        object.clone(),
        object.data.len() as u64,
        "k#1".into(),
    );
    let mut buf = vec![0u8; 4096];
    let at = 37 * UNIT + 1000;
    source.read_exact_at(&mut buf, at).unwrap();
    assert_eq!(buf, object.data[at as usize..at as usize + 4096]);
    assert_eq!(*lock(&object.ranges), vec![(37 * UNIT, UNIT as usize)]);
    // Read again: from memory.
    source.read_exact_at(&mut buf, at + 10).unwrap();
    assert_eq!(object.calls.load(Ordering::SeqCst), 1);
    // A read across two units fetches the second one only.
    let mut two = vec![0u8; 8192];
    source.read_exact_at(&mut two, 38 * UNIT - 4096).unwrap();
    assert_eq!(
        two,
        object.data[(38 * UNIT - 4096) as usize..(38 * UNIT + 4096) as usize]
    );
    assert_eq!(object.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn reads_past_the_end_are_refused() {
    let object = Counted::new(1000);
    let pool = pool(0, None);
    let source = remote_source(&pool, object.clone(), 1000, "k#1".into());
    let mut buf = vec![0u8; 10];
    assert!(source.read_exact_at(&mut buf, 995).is_err());
    assert!(source.read_exact_at(&mut buf, u64::MAX - 2).is_err());
    source.read_exact_at(&mut buf, 990).unwrap();
    assert_eq!(buf, object.data[990..]);
}

#[test]
fn concurrent_readers_of_one_unit_share_one_fetch() {
    let object = Counted::new(4 * UNIT as usize);
    let pool = pool(0, None);
    let source = Arc::new(remote_source(&pool, object.clone(), 4 * UNIT, "k#1".into()));
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (source, barrier) = (source.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 100];
                barrier.wait();
                source.read_exact_at(&mut buf, 2 * UNIT + i * 1000).unwrap();
                buf
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let start = (2 * UNIT) as usize + i * 1000;
        assert_eq!(t.join().unwrap(), object.data[start..start + 100]);
    }
    assert_eq!(object.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn memory_stays_within_its_bound() {
    let object = Counted::new(100 * UNIT as usize);
    let pool = pool(64 * UNIT, None);
    let source = remote_source(&pool, object.clone(), 100 * UNIT, "k#1".into());
    assert_eq!(read_all(&source, 1 << 20), object.data);
    let state = lock(&pool.state);
    assert!(state.bytes <= 64 * UNIT, "{}", state.bytes);
    assert!(state.units.len() as u64 <= 64);
}

#[test]
fn versions_never_share_units() {
    let old = Counted::new(2 * UNIT as usize);
    let new = Arc::new(Counted {
        data: old.data.iter().map(|b| b ^ 0xff).collect(),
        calls: AtomicUsize::new(0),
        ranges: Mutex::new(Vec::new()),
        fail: Default::default(),
    });
    let pool = pool(0, None);
    let a = remote_source(&pool, old.clone(), 2 * UNIT, "k#etag1".into());
    let b = remote_source(&pool, new.clone(), 2 * UNIT, "k#etag2".into());
    let mut x = vec![0u8; 16];
    a.read_exact_at(&mut x, 5).unwrap();
    assert_eq!(x, old.data[5..21]);
    b.read_exact_at(&mut x, 5).unwrap();
    assert_eq!(x, new.data[5..21]);
}

#[test]
fn a_failed_fetch_fails_the_read_and_a_later_read_recovers() {
    let object = Counted::new(3 * UNIT as usize);
    let pool = pool(0, None);
    let source = remote_source(&pool, object.clone(), 3 * UNIT, "k#1".into());
    object.fail.store(true, Ordering::SeqCst);
    let mut buf = vec![0u8; 10];
    let err = source.read_exact_at(&mut buf, UNIT).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    object.fail.store(false, Ordering::SeqCst);
    source.read_exact_at(&mut buf, UNIT).unwrap();
    assert_eq!(buf, object.data[UNIT as usize..UNIT as usize + 10]);
    assert!(lock(&pool.state).pending.is_empty());
}

#[test]
fn failed_read_ahead_is_fetched_again_by_the_reader() {
    /// Fails every GET of more than one unit: read-ahead runs, never a reader's own fetch.
    struct NoRuns(Arc<Counted>);
    impl Fetch for NoRuns {
        fn fetch(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            if len as u64 > UNIT {
                lock(&self.0.ranges).push((offset, len));
                return Err(io::Error::other("slow down"));
            }
            self.0.fetch(offset, len)
        }
    }
    let object = Counted::new(30 * UNIT as usize);
    let pool = pool(0, None);
    let fetch = Arc::new(NoRuns(object.clone()));
    let source = remote_source(&pool, fetch, 30 * UNIT, "k#1".into());
    assert_eq!(read_all(&source, 128 << 10), object.data);
    let ranges = lock(&object.ranges).clone();
    assert!(
        ranges.iter().any(|r| r.1 as u64 > UNIT),
        "read-ahead was tried"
    );
    assert!(lock(&pool.state).pending.is_empty());
}

/// A read waiting on a read-ahead that timed out fails at once: fetching the unit again
/// would make it wait the store's timeout twice (against a hung server, every read would).
#[test]
fn a_timed_out_read_ahead_fails_its_waiting_reader_without_a_second_wait() {
    struct HungRuns(Arc<Counted>);
    impl Fetch for HungRuns {
        fn fetch(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            if len as u64 > UNIT {
                std::thread::sleep(std::time::Duration::from_millis(500));
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
            }
            self.0.fetch(offset, len)
        }
    }
    let object = Counted::new(30 * UNIT as usize);
    let pool = pool(0, None);
    let fetch = Arc::new(HungRuns(object.clone()));
    let source = remote_source(&pool, fetch, 30 * UNIT, "k#1".into());
    let mut buf = vec![0u8; 128 << 10];
    // The first unit in order: the stream is seen and units 1 to 8 go out as one run.
    for i in 0..8u64 {
        source.read_exact_at(&mut buf, i * (128 << 10)).unwrap();
    }
    let own_fetches = object.calls.load(Ordering::SeqCst);
    let err = source.read_exact_at(&mut buf, 4 * UNIT).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert_eq!(
        object.calls.load(Ordering::SeqCst),
        own_fetches,
        "the unit was not fetched a second time"
    );
    // Once the run has failed, a new read fetches the unit itself.
    source.read_exact_at(&mut buf, 4 * UNIT).unwrap();
    assert_eq!(buf, object.data[4 * UNIT as usize..][..128 << 10]);
}

#[test]
fn the_disk_cache_serves_a_second_pool_and_drops_damaged_units() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let object = Counted::new(20 * UNIT as usize + 77);
    let size = object.data.len() as u64;
    {
        let pool = pool(0, Some(&cache));
        let source = remote_source(&pool, object.clone(), size, "k#1".into());
        assert_eq!(read_all(&source, 256 << 10), object.data);
    }
    let fetched = object.calls.load(Ordering::SeqCst);
    // Damage one unit's file, and truncate another.
    let mut names: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert_eq!(names.len(), 21);
    let mut bytes = std::fs::read(&names[3]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&names[3], bytes).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&names[5])
        .unwrap()
        .set_len(100)
        .unwrap();
    // Random reads (no read-ahead) through a new pool: all bytes right, two refetches.
    let pool = pool(0, Some(&cache));
    let source = remote_source(&pool, object.clone(), size, "k#1".into());
    let mut buf = vec![0u8; 1000];
    for i in (0..21).rev() {
        let at = (i * UNIT).min(size - 1000);
        source.read_exact_at(&mut buf, at).unwrap();
        assert_eq!(
            buf,
            object.data[at as usize..at as usize + 1000],
            "unit {i}"
        );
    }
    assert_eq!(object.calls.load(Ordering::SeqCst), fetched + 2);
}

#[test]
fn the_disk_cache_keeps_its_bound_and_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let cache = DiskCache::open(&path, 3 * UNIT).unwrap();
    let data = vec![7u8; UNIT as usize];
    for i in 0..10 {
        cache.put("k#1", i, &data);
    }
    assert!(cache.bytes() <= 3 * UNIT, "{}", cache.bytes());
    assert!(std::fs::read_dir(&path).unwrap().count() <= 3);
    assert_eq!(cache.get("k#1", 9).unwrap(), data);
    assert!(cache.get("k#1", 0).is_none());
    assert!(cache.get("k#2", 9).is_none());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // A directory others can read is refused, and so is a link to one.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = DiskCache::open(&open, 0).err().unwrap().to_string();
    assert!(err.contains("chmod 700"), "{err}");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(DiskCache::open(&link, 0).is_err());
}

/// Records, for each GET, whether another was in flight with it (each waits up to 2 s for
/// company).
struct Meet {
    object: Arc<Counted>,
    in_flight: AtomicUsize,
    met: Mutex<Vec<(u64, bool)>>,
}

impl Meet {
    fn new(object: Arc<Counted>) -> Arc<Meet> {
        Arc::new(Meet {
            object,
            in_flight: AtomicUsize::new(0),
            met: Mutex::new(Vec::new()),
        })
    }
}

impl Fetch for Meet {
    fn fetch(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut met = false;
        while std::time::Instant::now() < deadline {
            if self.in_flight.load(Ordering::SeqCst) >= 2 {
                met = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        lock(&self.met).push((offset, met));
        self.object.fetch(offset, len)
    }
}

#[test]
fn both_ends_are_fetched_at_once_when_announced() {
    let object = Counted::new(50 * UNIT as usize + 5);
    let size = object.data.len() as u64;
    let pool = pool(0, None);
    let fetch = Meet::new(object.clone());
    let source = remote_source(&pool, fetch.clone(), size, "k#1".into());
    source.will_need(0, 1);
    source.will_need(size - 1, 1);
    let mut head = vec![0u8; 100];
    source.read_exact_at(&mut head, 0).unwrap();
    let mut tail = vec![0u8; 5];
    source.read_exact_at(&mut tail, size - 5).unwrap();
    assert_eq!(tail, object.data[(size - 5) as usize..]);
    let mut met = lock(&fetch.met).clone();
    met.sort();
    assert_eq!(met, vec![(0, true), (50 * UNIT, true)]);
}

#[test]
fn a_read_of_several_units_fetches_them_in_parallel() {
    let object = Counted::new(10 * UNIT as usize);
    let pool = pool(0, None);
    let fetch = Meet::new(object.clone());
    let source = remote_source(&pool, fetch.clone(), 10 * UNIT, "k#1".into());
    // Units 4 to 6: the reader fetches the first while another GET brings the others.
    let mut buf = vec![0u8; (2 * UNIT) as usize];
    source.read_exact_at(&mut buf, 4 * UNIT + UNIT / 2).unwrap();
    assert_eq!(
        buf,
        object.data[(4 * UNIT + UNIT / 2) as usize..(6 * UNIT + UNIT / 2) as usize]
    );
    let met = lock(&fetch.met).clone();
    assert!(met.iter().any(|&(at, m)| at == 4 * UNIT && m), "{met:?}");
    assert!(met.iter().any(|&(at, m)| at == 5 * UNIT && m), "{met:?}");
}
