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
    /// The budget has no room for it, even after evicting idle copies.
    NoRoom,
    /// It could not be made (a damaged chunk, no memory): serve this open chunked.
    Failed(String),
}

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
        loop {
            match state.entries.get(&file.key) {
                Some(e) if e.copy.is_none() => {
                    state = self
                        .filled
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                Some(e) if e.holder.is_some_and(|h| h != uid) => return Acquired::OtherHolder,
                Some(_) => {
                    state.clock += 1;
                    let now = state.clock;
                    let Some(e) = state.entries.get_mut(&file.key) else {
                        continue;
                    };
                    let Some(copy) = e.copy.clone() else {
                        continue;
                    };
                    e.holder = Some(uid);
                    e.handles += 1;
                    e.last_used = now;
                    return Acquired::Held(self.hold(copy, file.key, false));
                }
                None => break,
            }
        }
        if !make_room(&mut state, len, self.budget) {
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
        let made = RamFile::new(len)
            .map_err(|e| format!("cannot allocate {len} bytes of locked memory: {e}"))
            .and_then(|mut ram| {
                fill(file, &mut ram, threads).map_err(|e| e.to_string())?;
                if !ram.locked {
                    log::warn!("a plaintext copy could not be locked in memory; it may reach swap");
                }
                log::info!(
                    "copied {len} bytes into {} in {:.3} s on {threads} threads",
                    if ram.huge { "huge pages" } else { "a memfd" },
                    started.elapsed().as_secs_f64()
                );
                Ok(ram)
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
                    _ => Acquired::Failed("the copy was dropped while it was made".into()),
                }
            }
            Err(e) => {
                if state.entries.get(&file.key).is_some_and(|e| e.id == id) {
                    state.entries.remove(&file.key);
                    state.used = state.used.saturating_sub(len);
                }
                Acquired::Failed(e)
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
                state.used = state.used.saturating_sub(e.len);
                if let Some(copy) = e.copy {
                    copy.file.empty();
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
        state.used = 0;
        for e in entries {
            if let Some(copy) = e.copy {
                copy.file.empty();
            }
        }
        drop(state);
        self.filled.notify_all();
    }
}

/// Evicts idle copies, least recently used first, until `len` more bytes fit `budget`.
fn make_room(state: &mut State, len: u64, budget: u64) -> bool {
    while state.used + len > budget {
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
        let workers: Vec<_> = out
            .chunks_mut(per_thread * chunk)
            .enumerate()
            .map(|(t, part)| {
                scope.spawn(move || {
                    let mut scratch = Vec::new();
                    let first = t * per_thread;
                    for (i, piece) in part.chunks_mut(chunk).enumerate() {
                        file.reader
                            .read_chunk_with((first + i) as u64, piece, &mut scratch)?;
                    }
                    Ok::<(), ContainerError>(())
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ContainerError::Io(std::io::Error::other(
                        "a decryption thread panicked",
                    )))
                }
            }
        }
        Ok(())
    })
}
