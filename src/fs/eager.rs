//! The eager data path: a version's whole plaintext, decrypted on every core into a file in
//! locked RAM ([`RamFile`]), which the kernel then reads directly (FUSE passthrough) without
//! a request per read reaching the daemon.
//!
//! One copy per version, shared by the handles of **one uid at a time** (its holder): a
//! `lock --force` of that uid empties the copy, which ends every read and mapping through it,
//! and because no other uid reads through it, nobody else loses an open file. Another uid
//! opening the version meanwhile is served by the chunked path, on an inode of its own (the
//! kernel allows only passthrough opens beside passthrough files). A copy nobody holds stays
//! cached (least recently used first out) within the mount's budget, so the next open of the
//! same version, by any uid whose open is allowed, costs nothing to prepare.
//!
//! Lock order: `state` is a leaf (never held while taking another lock); decryption runs
//! outside it, and openers of a version being filled wait on `filled`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::versions::{FileVersion, VersionKey};
use crate::container::ContainerError;
use crate::ramfile::RamFile;
use crate::sync::lock;

/// A version's plaintext in locked RAM.
pub struct Copy {
    /// Names the copy to the FUSE adapter, which registers its file with the kernel once.
    pub id: u64,
    file: RamFile,
}

impl Copy {
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.fd()
    }
}

/// What an open gets from [`Copies::acquire`].
pub(crate) enum Acquired {
    /// The copy, held by the caller's uid until the reference drops.
    Held(CopyRef),
    /// Another uid holds the copy: serve this open chunked.
    OtherHolder,
    /// The budget has no room for it, even after evicting idle copies, or the uid already
    /// holds half of it.
    NoRoom,
    /// It could not be made (no memory, a damaged chunk: `integrity`): serve this open
    /// chunked. A version whose chunks failed is not tried again.
    Failed { error: String, integrity: bool },
    /// An earlier attempt found a damaged chunk: serve it chunked.
    Damaged,
}

/// At most this many copies exist at once (each is a descriptor and a mapping of the daemon).
const MAX_COPIES: usize = 256;
/// Versions remembered as damaged, so that none is decrypted whole again at every open.
const MAX_DAMAGED: usize = 1024;

struct Entry {
    /// The copy's id, given when it is reserved (a copy finished after its entry was revoked
    /// and replaced must not land in the new entry).
    id: u64,
    /// `None` while being filled.
    copy: Option<Arc<Copy>>,
    len: u64,
    holder: Option<u32>,
    handles: usize,
    /// For least-recently-used eviction among idle copies.
    last_used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<VersionKey, Entry>,
    /// Bytes of all entries, filled or being filled.
    used: u64,
    clock: u64,
    /// Copies being made whose entry was revoked or cleared: their bytes stay in `used`
    /// until the fill ends.
    orphans: HashMap<u64, u64>,
    damaged: std::collections::HashSet<VersionKey>,
}

pub(crate) struct Copies {
    budget: u64,
    state: Arc<Mutex<State>>,
    filled: Arc<Condvar>,
    next_id: AtomicU64,
}

/// A handle's hold on a copy; the copy becomes idle when its holder's last one drops.
pub struct CopyRef {
    pub copy: Arc<Copy>,
    /// This open made the copy (decrypted the whole file).
    pub made: bool,
    key: VersionKey,
    state: Arc<Mutex<State>>,
}

impl Drop for CopyRef {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        state.clock += 1;
        let now = state.clock;
        // The entry may be gone (revoked) or be a newer copy of the same version.
        if let Some(e) = state.entries.get_mut(&self.key) {
            if e.copy.as_ref().is_some_and(|c| c.id == self.copy.id) {
                e.handles = e.handles.saturating_sub(1);
                if e.handles == 0 {
                    e.holder = None;
                    e.last_used = now;
                }
            }
        }
    }
}

impl Copies {
    pub(crate) fn new(budget: u64) -> Self {
        Copies {
            budget,
            state: Arc::new(Mutex::new(State::default())),
            filled: Arc::new(Condvar::new()),
            next_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes of locked RAM the copies take.
    pub(crate) fn used(&self) -> u64 {
        lock(&self.state).used
    }

    /// The copy of `file` for a handle of `uid`, made now (decrypting with `threads`
    /// threads) if there is none; openers of a copy being made wait for it.
    pub(crate) fn acquire(&self, file: &FileVersion, uid: u32, threads: usize) -> Acquired {
        let len = file.reader.len();
        let mut state = lock(&self.state);
        if state.damaged.contains(&file.key) {
            return Acquired::Damaged;
        }
        loop {
            state.clock += 1;
            let now = state.clock;
            let Some(e) = state.entries.get_mut(&file.key) else {
                break;
            };
            if e.holder.is_some_and(|h| h != uid) {
                return Acquired::OtherHolder;
            }
            if let Some(copy) = e.copy.clone() {
                e.holder = Some(uid);
                e.handles += 1;
                e.last_used = now;
                return Acquired::Held(self.hold(copy, file.key, false));
            }
            // Being made by this uid's other open: wait for it.
            state = self
                .filled
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        // One uid holds at most half the budget: the rest stays for everyone else.
        let held: u64 = state
            .entries
            .values()
            .filter(|e| e.holder == Some(uid))
            .map(|e| e.len)
            .sum();
        if held + len > self.budget / 2 || !make_room(&mut state, len, self.budget) {
            return Acquired::NoRoom;
        }
        state.used += len;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        state.entries.insert(
            file.key,
            Entry {
                id,
                copy: None,
                len,
                holder: Some(uid),
                handles: 0,
                last_used: 0,
            },
        );
        drop(state);
        let started = std::time::Instant::now();
        // A panic while making it (no thread to be had) must not leave the reservation behind
        // for every later opener to wait on.
        let made =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make(file, len, threads)))
                .unwrap_or_else(|_| Err(("making the copy panicked".to_string(), false)))
                .inspect(|ram| {
                    log::info!(
                        "copied {len} bytes into {} in {:.3} s on {threads} threads",
                        if ram.huge { "huge pages" } else { "a memfd" },
                        started.elapsed().as_secs_f64()
                    );
                });
        let mut state = lock(&self.state);
        let result = match made {
            Ok(ram) => {
                let copy = Arc::new(Copy { id, file: ram });
                match state.entries.get_mut(&file.key) {
                    Some(e) if e.id == id => {
                        e.copy = Some(copy.clone());
                        e.handles = 1;
                        Acquired::Held(self.hold(copy, file.key, true))
                    }
                    // Revoked or cleared (a lock, the mount going away) while it was made.
                    _ => {
                        if let Some(n) = state.orphans.remove(&id) {
                            state.used = state.used.saturating_sub(n);
                        }
                        Acquired::Failed {
                            error: "the copy was dropped while it was made".into(),
                            integrity: false,
                        }
                    }
                }
            }
            Err((error, integrity)) => {
                if integrity {
                    if state.damaged.len() >= MAX_DAMAGED {
                        state.damaged.clear();
                    }
                    state.damaged.insert(file.key);
                }
                if state.entries.get(&file.key).is_some_and(|e| e.id == id) {
                    state.entries.remove(&file.key);
                    state.used = state.used.saturating_sub(len);
                } else if let Some(n) = state.orphans.remove(&id) {
                    state.used = state.used.saturating_sub(n);
                }
                Acquired::Failed { error, integrity }
            }
        };
        drop(state);
        self.filled.notify_all();
        result
    }

    fn hold(&self, copy: Arc<Copy>, key: VersionKey, made: bool) -> CopyRef {
        CopyRef {
            copy,
            made,
            key,
            state: self.state.clone(),
        }
    }

    /// Empties every copy `uid` holds or is having made (its lock): readers through them
    /// see an empty file from now on, and a copy being made is thrown away when done.
    /// Returns how many there were.
    pub(crate) fn revoke(&self, uid: u32) -> usize {
        let mut state = lock(&self.state);
        let keys: Vec<VersionKey> = state
            .entries
            .iter()
            .filter(|(_, e)| e.holder == Some(uid))
            .map(|(k, _)| *k)
            .collect();
        for key in &keys {
            if let Some(e) = state.entries.remove(key) {
                match e.copy {
                    Some(copy) => {
                        state.used = state.used.saturating_sub(e.len);
                        copy.file.empty();
                    }
                    None => {
                        state.orphans.insert(e.id, e.len);
                    }
                }
            }
        }
        drop(state);
        self.filled.notify_all();
        keys.len()
    }

    /// Empties and forgets every copy (the last unlocked user locked, or the mount ends).
    pub(crate) fn clear(&self) {
        let mut state = lock(&self.state);
        let entries: Vec<Entry> = state.entries.drain().map(|(_, e)| e).collect();
        for e in entries {
            match e.copy {
                Some(copy) => copy.file.empty(),
                None => {
                    state.orphans.insert(e.id, e.len);
                }
            }
        }
        state.used = state.orphans.values().sum();
        drop(state);
        self.filled.notify_all();
    }
}

/// A locked file of `len` bytes filled with `file`'s plaintext; the error says whether a
/// chunk failed to authenticate.
fn make(file: &FileVersion, len: u64, threads: usize) -> Result<RamFile, (String, bool)> {
    let mut ram = RamFile::new(len)
        .map_err(|e| (format!("cannot allocate {len} bytes of memory: {e}"), false))?;
    if !ram.locked {
        return Err((
            "cannot lock the copy in memory (it could reach swap)".into(),
            false,
        ));
    }
    fill(file, &mut ram, threads).map_err(|e| {
        let integrity = matches!(e, ContainerError::ChunkAuthentication { .. });
        (e.to_string(), integrity)
    })?;
    Ok(ram)
}

/// Evicts idle copies, least recently used first, until `len` more bytes fit `budget` and
/// one more copy fits [`MAX_COPIES`].
fn make_room(state: &mut State, len: u64, budget: u64) -> bool {
    while state.used + len > budget || state.entries.len() + state.orphans.len() >= MAX_COPIES {
        let victim = state
            .entries
            .iter()
            .filter(|(_, e)| e.handles == 0 && e.holder.is_none() && e.copy.is_some())
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| *k);
        let Some(key) = victim else {
            return false;
        };
        if let Some(e) = state.entries.remove(&key) {
            state.used = state.used.saturating_sub(e.len);
        }
    }
    true
}

/// Decrypts every chunk of `file` into `ram`, `threads` contiguous runs of chunks side by
/// side, each straight into its place (no intermediate plaintext buffer).
fn fill(file: &FileVersion, ram: &mut RamFile, threads: usize) -> Result<(), ContainerError> {
    let chunk = file.reader.chunk_size() as usize;
    let count = file.reader.chunk_count() as usize;
    if count == 0 {
        return Ok(());
    }
    let per_thread = count.div_ceil(threads.max(1));
    let out = ram.as_mut_slice();
    std::thread::scope(|scope| {
        let mut workers = Vec::new();
        for (t, part) in out.chunks_mut(per_thread * chunk).enumerate() {
            let worker = std::thread::Builder::new()
                .name("tvault-copy".into())
                .spawn_scoped(scope, move || {
                    let mut scratch = Vec::new();
                    let first = t * per_thread;
                    for (i, piece) in part.chunks_mut(chunk).enumerate() {
                        file.reader
                            .read_chunk_with((first + i) as u64, piece, &mut scratch)?;
                    }
                    Ok::<(), ContainerError>(())
                });
            workers.push(worker.map_err(ContainerError::Io));
        }
        // Every worker is joined before the first error is returned.
        let mut result = Ok(());
        for w in workers {
            let r = w.and_then(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(ContainerError::Io(std::io::Error::other(
                        "a decryption thread panicked",
                    )))
                })
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

#[cfg(test)]
mod tests {
    //! Accounting of copies being made, and who waits for them.
    use super::*;
    use crate::fs::tests::{fixture, ALICE, BOB};
    use std::time::Duration;

    /// What `acquire` does before it drops the lock to fill: reserve `len`.
    fn reserve(copies: &Copies, key: VersionKey, len: u64, uid: u32) {
        let mut state = lock(&copies.state);
        assert!(make_room(&mut state, len, copies.budget));
        state.used += len;
        state.entries.insert(
            key,
            Entry {
                id: 999,
                copy: None,
                len,
                holder: Some(uid),
                handles: 0,
                last_used: 0,
            },
        );
    }

    #[test]
    fn a_copy_being_made_stays_counted_after_its_holder_locks() {
        let fx = fixture();
        fx.put(ALICE, "m.bin", &vec![7u8; 3 << 20]);
        let (version, _) = fx.core.open_version(ALICE, "m.bin").ok().unwrap();
        let len = version.reader.len();
        let copies = Copies::new(4 * len);
        // A fill under way takes most of the budget...
        let in_flight_len = 3 * len + len / 2;
        reserve(&copies, version.key, in_flight_len, ALICE);
        let in_flight = RamFile::new(in_flight_len).unwrap();
        // ...when alice locks (the open has no handle yet, so a plain lock is enough).
        copies.revoke(ALICE);
        let used_after_revoke = copies.used();
        // Unlocked again, she opens once more: a second fill must not fit beside the first.
        let second = copies.acquire(&version, ALICE, 2);
        let admitted = matches!(second, Acquired::Held(ref c) if c.made);
        drop(in_flight);
        assert!(
            !admitted,
            "a {len}-byte copy was made while the revoked fill still held {in_flight_len} bytes \
             (budget {}, used() said {used_after_revoke} after the revoke)",
            copies.budget
        );
    }

    #[test]
    fn one_uid_holds_at_most_half_the_budget() {
        let fx = fixture();
        fx.put(ALICE, "a.bin", &vec![1u8; 3 << 20]);
        fx.put(ALICE, "b.bin", &vec![2u8; 3 << 20]);
        let (a, _) = fx.core.open_version(ALICE, "a.bin").ok().unwrap();
        let (b, _) = fx.core.open_version(ALICE, "b.bin").ok().unwrap();
        let copies = Copies::new(4 * a.reader.len());
        let Acquired::Held(held) = copies.acquire(&a, ALICE, 2) else {
            panic!("the first copy fits");
        };
        let Acquired::Held(_second) = copies.acquire(&b, ALICE, 2) else {
            panic!("half the budget holds two");
        };
        fx.put(ALICE, "c.bin", &vec![3u8; 3 << 20]);
        let (c, _) = fx.core.open_version(ALICE, "c.bin").ok().unwrap();
        assert!(matches!(copies.acquire(&c, ALICE, 2), Acquired::NoRoom));
        // Once alice closes one, it is idle and no longer counts as hers.
        drop(held);
        assert!(matches!(copies.acquire(&c, ALICE, 2), Acquired::Held(_)));
    }

    #[test]
    fn another_uid_does_not_wait_for_a_copy_it_cannot_hold() {
        let fx = fixture();
        fx.put(ALICE, "m.bin", &vec![7u8; 3 << 20]);
        let (version, _) = fx.core.open_version(ALICE, "m.bin").ok().unwrap();
        let len = version.reader.len();
        let copies = Arc::new(Copies::new(64 << 20));
        // Alice's open is making the copy.
        reserve(&copies, version.key, len, ALICE);
        let (tx, rx) = std::sync::mpsc::channel();
        let (c2, v2) = (copies.clone(), version.clone());
        std::thread::spawn(move || {
            let other = matches!(c2.acquire(&v2, BOB, 1), Acquired::OtherHolder);
            let _ = tx.send(other);
        });
        let quick = rx.recv_timeout(Duration::from_millis(500));
        // Alice's fill ends: the copy is hers.
        {
            let mut state = lock(&copies.state);
            let e = state.entries.get_mut(&version.key).unwrap();
            e.copy = Some(Arc::new(Copy {
                id: 999,
                file: RamFile::new(len).unwrap(),
            }));
            e.handles = 1;
        }
        copies.filled.notify_all();
        let late = rx.recv_timeout(Duration::from_secs(5));
        assert!(
            quick.is_ok(),
            "bob's open (a FUSE thread) blocked for the whole of alice's fill, only to be told \
             OtherHolder={late:?} and served chunked"
        );
    }
}
