//! Who may open what on a running mount: per-uid unlocked sessions and the open decision.
//!
//! A uid is mapped to the one keyring registered for it in the store. Unlocking unseals that
//! keyring's private key; data keys are then unwrapped from key slots on first use and kept in
//! the session, in memory only, until the uid locks or the mount ends. Each key sits in an
//! allocation of its own, page-locked through `memlock` and wiped on drop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::container::{Container, ContainerError, Reader};
use crate::crypto::{KdfParams, PrivateKey, SecretKey, FILE_ID_LEN};
use crate::keyring::KeyringError;
use crate::memlock::Locked;
use crate::store::{Store, StoreError};

/// Why an open was refused; `code()` is the stable reason string used in logs and the audit.
#[derive(Debug, thiserror::Error)]
pub enum Denial {
    /// The uid has no keyring in the store.
    #[error("no keyring for this uid")]
    NoKeyring,
    /// The uid has a keyring but has not unlocked it (or locked it).
    #[error("the uid has not unlocked its keyring")]
    Locked,
    /// The uid's user holds no key slot for this file.
    #[error("no key slot for this user")]
    NoKeySlot,
    /// The slot or header did not authenticate under the user's key. Never an I/O error
    /// (`ContainerError::Io`): failing to read a file says nothing about tampering.
    #[error(transparent)]
    Integrity(ContainerError),
    /// The store could not be read.
    #[error(transparent)]
    StoreError(#[from] StoreError),
    /// POSIX ownership and mode bits refuse it, whatever the key slots say.
    #[error(transparent)]
    Mode(ModeDenial),
}

/// What an operation needed of an entry's ownership or mode, and did not get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeNeed {
    Read,
    Write,
    /// Execute (search) permission on a directory, or execute on a file.
    Execute,
    /// Only the owner may do it (chmod, setting explicit times).
    Owner,
    /// Only root may give an entry away (chown to another uid, chgrp to a foreign group).
    Chown,
    /// The directory is sticky: only the entry's or the directory's owner may remove it.
    Sticky,
    /// The directory holds a `.tvault-recipients` policy (in it or below): only root moves it.
    Policy,
}

/// A refusal by mode bits: which entry (its mount path), what was needed, and the entry's
/// owner and mode as the mount shows them, so that the message says whom to ask.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ModeDenial {
    pub need: ModeNeed,
    pub path: String,
    pub dir: bool,
    pub owner: Option<String>,
    pub mode: u16,
}

impl ModeDenial {
    fn describe(&self) -> String {
        let what = if self.dir { "directory" } else { "file" };
        let path = format!("/{}", self.path);
        let owner = self.owner.as_deref().unwrap_or("root");
        let mode = format!("{:04o}", self.mode);
        match self.need {
            ModeNeed::Read => {
                format!("no read permission on {what} {path} (owner {owner}, mode {mode})")
            }
            ModeNeed::Write => {
                format!("no write permission on {what} {path} (owner {owner}, mode {mode})")
            }
            ModeNeed::Execute if self.dir => {
                format!("no search permission on directory {path} (owner {owner}, mode {mode})")
            }
            ModeNeed::Execute => {
                format!("no execute permission on {path} (owner {owner}, mode {mode})")
            }
            ModeNeed::Owner => format!("only the owner ({owner}) may change {path}"),
            ModeNeed::Chown => format!("only root may give {path} to another owner or group"),
            ModeNeed::Policy => format!(
                "only root may move {path}: a .tvault-recipients policy in it says who else \
                 reads what is made there, and only the administrator places one"
            ),
            ModeNeed::Sticky => format!(
                "{path} is in a sticky directory: only its owner or the directory's may remove or \
                 replace it"
            ),
        }
    }
}

impl Denial {
    pub fn code(&self) -> &'static str {
        match self {
            Denial::NoKeyring => "no-keyring",
            Denial::Locked => "locked",
            Denial::NoKeySlot => "no-key-slot",
            Denial::Integrity(_) => "integrity",
            Denial::StoreError(_) => "store-error",
            Denial::Mode(_) => "mode",
        }
    }
}

/// A data key handed out for an open, not yet known to be this file's: the slot only proves
/// it was wrapped for this user and file id. The only use of it is [`SlotKey::open`], which
/// authenticates the header and chunk table under it and only then lets the session
/// remember a freshly unwrapped key, so no key is ever remembered before its MAC verified.
pub struct SlotKey {
    key: SecretKey,
    /// Already checked against this file's header MAC: it came from the session's memory.
    remembered: bool,
    session: Arc<UserSession>,
}

impl SlotKey {
    /// Reads the chunk table (refused past `limit` bytes) and verifies the header MAC under
    /// this key; on success a key unwrapped from the slot is remembered by the session.
    pub fn open<B: crate::container::Source>(
        self,
        container: Container<B>,
        limit: u64,
    ) -> Result<Reader<B>, ContainerError> {
        let reader = container.open_with_limit(&self.key, limit)?;
        if !self.remembered {
            self.session.remember_key(reader.header().file_id, self.key);
        }
        Ok(reader)
    }
}

/// One unlocked user. Handles opened by the user keep a reference, so that a lock takes
/// effect on them too (`is_locked`).
pub struct UserSession {
    pub uid: u32,
    pub name: String,
    /// Kept out of swap (best effort: an unprivileged daemon may lack the mlock limit).
    private: Locked<PrivateKey>,
    /// Each key boxed and locked on its own: the map's growth moves pointers, never keys, and
    /// removing or clearing an entry wipes its key.
    data_keys: Mutex<HashMap<[u8; FILE_ID_LEN], Locked<SecretKey>>>,
    locked: AtomicBool,
}

impl UserSession {
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Acquire)
    }

    /// The data key of `container` for this user: from the session's memory (checked
    /// against this file's header MAC when it was remembered), or unwrapped from the user's
    /// slot (authenticated by the slot's AEAD, but not yet checked against the header: see
    /// [`SlotKey`]).
    fn data_key<B: crate::container::Source>(
        self: &Arc<Self>,
        container: &Container<B>,
    ) -> Result<SlotKey, Denial> {
        let file_id = container.header().file_id;
        if let Some(key) = self.keys().get(&file_id) {
            return Ok(SlotKey {
                key: SecretKey::clone(key),
                remembered: true,
                session: self.clone(),
            });
        }
        let key = container
            .unwrap_key(&self.name, &self.private)
            .map_err(|e| match e {
                ContainerError::NoSlot(_) => Denial::NoKeySlot,
                // Unwrapping reads nothing: what fails here is the slot's authentication.
                e => Denial::Integrity(e),
            })?;
        Ok(SlotKey {
            key,
            remembered: false,
            session: self.clone(),
        })
    }

    /// Keeps the data key of file `file_id` for later opens (only [`SlotKey::open`] calls
    /// it, once the header MAC the key commits to has verified).
    fn remember_key(&self, file_id: [u8; FILE_ID_LEN], key: SecretKey) {
        self.keys().insert(file_id, Locked::new(key));
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<[u8; FILE_ID_LEN], Locked<SecretKey>>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        crate::sync::lock(&self.data_keys)
    }

    pub fn cached_keys(&self) -> usize {
        self.keys().len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error("uid {0} has no keyring in this store")]
    NoKeyring(u32),
    #[error("wrong passphrase for {0:?}")]
    WrongPassphrase(String),
    #[error("too many failed attempts for uid {uid}; retry in {} s", retry_in.as_secs().max(1))]
    RateLimited { uid: u32, retry_in: Duration },
    #[error("keyring of {name:?}: {source}")]
    KdfOverCap {
        name: String,
        source: crate::crypto::CryptoError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The keyring could not be used (other than a wrong passphrase).
    #[error(transparent)]
    Keyring(KeyringError),
}

/// Consecutive failed unlocks of one uid and when the next attempt is allowed.
struct Backoff {
    failures: u32,
    next_allowed: Instant,
}

/// Delay after `failures` consecutive failures: none for the first two, then doubling from
/// one second up to a minute. Combined with Argon2id this keeps online guessing slow.
fn backoff_delay(failures: u32) -> Duration {
    if failures < 3 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - 3).min(6)).min(Duration::from_secs(60))
}

/// Argon2id memory, in KiB, that unlocks of more than the default memory may hold together:
/// one unlock at the cap at a time.
const LARGE_POOL_KIB: u64 = KdfParams::CAP_M_KIB as u64;
/// Held back for unlocks of at most `STANDARD_KIB`: four at the default at once, whatever the
/// larger ones hold.
const RESERVE_KIB: u64 = 256 * 1024;
const STANDARD_KIB: u64 = KdfParams::DEFAULT.m_kib as u64;

/// Bounds the memory of the Argon2id runs in flight (`LARGE_POOL_KIB + RESERVE_KIB` in all)
/// and keeps costly unlocks from holding up cheap ones.
///
/// Fairness: a standard unlock (at most the default 64 MiB) takes the reserve, or the pool if
/// no larger unlock is waiting for it, so it never waits for a larger unlock; it waits only
/// while four or more other standard unlocks are in flight. Larger unlocks take the pool in
/// arrival order (the first waiter blocks later ones even if they would fit, so a 1 GiB unlock
/// is not starved by smaller ones), and standard unlocks stop taking pool memory while one
/// waits.
struct KdfBudget {
    state: Mutex<BudgetState>,
    freed: Condvar,
}

#[derive(Default)]
struct BudgetState {
    reserve_used: u64,
    pool_used: u64,
    /// Tickets of larger unlocks waiting for the pool, oldest first.
    large_waiting: VecDeque<u64>,
    next_ticket: u64,
}

/// Memory taken from the budget, given back on drop.
struct KdfPermit<'a> {
    budget: &'a KdfBudget,
    reserve: u64,
    pool: u64,
}

impl KdfBudget {
    fn new() -> Self {
        KdfBudget {
            state: Mutex::new(BudgetState::default()),
            freed: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, BudgetState> {
        crate::sync::lock(&self.state)
    }

    /// Waits until `m_kib` (at most `KdfParams::CAP_M_KIB`) can be held.
    fn acquire(&self, m_kib: u32) -> KdfPermit<'_> {
        let need = u64::from(m_kib).min(LARGE_POOL_KIB);
        let mut state = self.state();
        let permit = |reserve, pool| KdfPermit {
            budget: self,
            reserve,
            pool,
        };
        if need <= STANDARD_KIB {
            loop {
                if state.reserve_used + need <= RESERVE_KIB {
                    state.reserve_used += need;
                    return permit(need, 0);
                }
                if state.large_waiting.is_empty() && state.pool_used + need <= LARGE_POOL_KIB {
                    state.pool_used += need;
                    return permit(0, need);
                }
                state = crate::sync::wait(&self.freed, state);
            }
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.large_waiting.push_back(ticket);
        loop {
            if state.large_waiting.front() == Some(&ticket)
                && state.pool_used + need <= LARGE_POOL_KIB
            {
                state.large_waiting.pop_front();
                state.pool_used += need;
                // The next waiter may fit beside this one, and standard unlocks may take
                // pool memory again.
                self.freed.notify_all();
                return permit(0, need);
            }
            state = crate::sync::wait(&self.freed, state);
        }
    }
}

impl Drop for KdfPermit<'_> {
    fn drop(&mut self) {
        let mut state = self.budget.state();
        state.reserve_used -= self.reserve;
        state.pool_used -= self.pool;
        drop(state);
        self.budget.freed.notify_all();
    }
}

pub struct Access {
    sessions: RwLock<HashMap<u32, Arc<UserSession>>>,
    backoff: Mutex<HashMap<u32, Backoff>>,
    /// One unlock at a time per uid: its attempts queue behind each other, not other uids'.
    /// Entries are made only for uids that have a keyring.
    uid_gates: Mutex<HashMap<u32, Arc<Mutex<()>>>>,
    kdf_budget: KdfBudget,
}

impl Default for Access {
    fn default() -> Self {
        Self::new()
    }
}

impl Access {
    pub fn new() -> Self {
        Access {
            sessions: RwLock::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            uid_gates: Mutex::new(HashMap::new()),
            kdf_budget: KdfBudget::new(),
        }
    }

    pub fn session(&self, uid: u32) -> Option<Arc<UserSession>> {
        crate::sync::read(&self.sessions).get(&uid).cloned()
    }

    pub fn sessions(&self) -> Vec<Arc<UserSession>> {
        let mut all: Vec<_> = crate::sync::read(&self.sessions)
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|s| s.uid);
        all
    }

    /// Unseals the keyring registered for `uid`. Returns the user name.
    pub fn unlock(
        &self,
        store: &Store,
        uid: u32,
        passphrase: &[u8],
    ) -> Result<String, UnlockError> {
        let keyring = match store.user_by_uid(uid) {
            Ok(Some(k)) => k,
            Ok(None) => return Err(UnlockError::NoKeyring(uid)),
            Err(e) => return Err(UnlockError::Store(e)),
        };
        // Refused before it waits or allocates anything: an over-cap keyring (sealed before the
        // caps, or written by hand) must not cost the daemon its memory.
        if let Some(params) = keyring.kdf_params() {
            params
                .check_cap()
                .map_err(|source| UnlockError::KdfOverCap {
                    name: keyring.name.clone(),
                    source,
                })?;
        }
        let gate = crate::sync::lock(&self.uid_gates)
            .entry(uid)
            .or_default()
            .clone();
        // Backoff is checked and failures recorded under the uid's gate, so concurrent
        // attempts from one uid cannot all slip in before the first failure is counted.
        let private = {
            let _gate = crate::sync::lock(&gate);
            self.check_backoff(uid)?;
            let _memory = keyring
                .kdf_params()
                .map(|params| self.kdf_budget.acquire(params.m_kib));
            match keyring.unlock(passphrase) {
                Ok(private) => private,
                Err(KeyringError::WrongPassphrase(name)) => {
                    self.record_failure(uid);
                    return Err(UnlockError::WrongPassphrase(name));
                }
                Err(e) => return Err(UnlockError::Keyring(e)),
            }
        };
        crate::sync::lock(&self.backoff).remove(&uid);
        let mut sessions = crate::sync::write(&self.sessions);
        // Unlocking again while unlocked keeps the session (and the handles opened under it).
        if sessions.get(&uid).is_none_or(|s| s.name != keyring.name) {
            let session = Arc::new(UserSession {
                uid,
                name: keyring.name.clone(),
                private: Locked::new(private),
                data_keys: Mutex::new(HashMap::new()),
                locked: AtomicBool::new(false),
            });
            if let Some(old) = sessions.insert(uid, session) {
                old.locked.store(true, Ordering::Release);
            }
        }
        Ok(keyring.name)
    }

    fn check_backoff(&self, uid: u32) -> Result<(), UnlockError> {
        let backoff = crate::sync::lock(&self.backoff);
        if let Some(b) = backoff.get(&uid) {
            let now = Instant::now();
            if now < b.next_allowed {
                return Err(UnlockError::RateLimited {
                    uid,
                    retry_in: b.next_allowed - now,
                });
            }
        }
        Ok(())
    }

    fn record_failure(&self, uid: u32) {
        let mut backoff = crate::sync::lock(&self.backoff);
        let entry = backoff.entry(uid).or_insert(Backoff {
            failures: 0,
            next_allowed: Instant::now(),
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.next_allowed = Instant::now() + backoff_delay(entry.failures);
    }

    /// Forgets `uid`'s keys. Handles that hold the session see `is_locked()` from now on.
    /// Its data keys are wiped now, its private key when the last handle on it goes.
    pub fn lock(&self, uid: u32) {
        let removed = crate::sync::write(&self.sessions).remove(&uid);
        if let Some(session) = removed {
            session.locked.store(true, Ordering::Release);
            session.keys().clear();
        }
    }

    /// Forgets every session (at unmount).
    pub fn lock_all(&self) {
        let drained: Vec<_> = crate::sync::write(&self.sessions).drain().collect();
        for (_, session) in drained {
            session.locked.store(true, Ordering::Release);
            session.keys().clear();
        }
    }

    /// The unlocked session of `uid`, or why there is none (`Locked`, or `NoKeyring` when
    /// the store has no keyring for the uid).
    pub fn unlocked(&self, store: &Store, uid: u32) -> Result<Arc<UserSession>, Denial> {
        self.session(uid)
            .ok_or_else(|| match store.user_by_uid(uid) {
                Ok(Some(_)) => Denial::Locked,
                Ok(None) => Denial::NoKeyring,
                Err(e) => Denial::StoreError(e),
            })
    }

    /// The open decision: `uid` may open `container` if it has unlocked and its user holds a
    /// slot for it. Returns the session and the data key, which can only be used to open the
    /// container ([`SlotKey::open`]).
    pub fn authorize<B: crate::container::Source>(
        &self,
        store: &Store,
        uid: u32,
        container: &Container<B>,
    ) -> Result<(Arc<UserSession>, SlotKey), Denial> {
        let session = self.unlocked(store, uid)?;
        // Checked on every open, so a revoked slot refuses at once even if the key is cached.
        if container.slot(&session.name).is_none() {
            return Err(Denial::NoKeySlot);
        }
        let key = session.data_key(container)?;
        Ok((session, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_delay(1), Duration::ZERO);
        assert_eq!(backoff_delay(2), Duration::ZERO);
        assert_eq!(backoff_delay(3), Duration::from_secs(1));
        assert_eq!(backoff_delay(4), Duration::from_secs(2));
        assert_eq!(backoff_delay(100), Duration::from_secs(60));
    }

    /// Runs `acquire(m_kib)` on a thread that holds the permit until told to let go; the
    /// first receiver says when it got it.
    fn hold(
        budget: &Arc<KdfBudget>,
        m_kib: u32,
    ) -> (
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        let (got_tx, got) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let budget = budget.clone();
        let thread = std::thread::spawn(move || {
            let _permit = budget.acquire(m_kib);
            got_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        (got, release, thread)
    }

    const WAIT: Duration = Duration::from_secs(10);
    const BLOCKED: Duration = Duration::from_millis(200);

    #[test]
    fn a_large_unlock_does_not_hold_up_standard_ones() {
        let budget = Arc::new(KdfBudget::new());
        let cap = KdfParams::CAP_M_KIB;
        let (got_big, release_big, big) = hold(&budget, cap);
        got_big.recv_timeout(WAIT).unwrap();
        // A second capped unlock waits for the first...
        let (got_second, release_second, second) = hold(&budget, cap);
        assert!(got_second.recv_timeout(BLOCKED).is_err());
        // ...but four standard ones run beside it, from the reserve.
        let standard: Vec<_> = (0..4).map(|_| hold(&budget, STANDARD_KIB as u32)).collect();
        for (got, _, _) in &standard {
            got.recv_timeout(WAIT).unwrap();
        }
        // A fifth waits: the pool is promised to the waiting capped unlock.
        let (got_fifth, release_fifth, fifth) = hold(&budget, STANDARD_KIB as u32);
        assert!(got_fifth.recv_timeout(BLOCKED).is_err());
        release_big.send(()).unwrap();
        big.join().unwrap();
        got_second.recv_timeout(WAIT).unwrap();
        {
            let state = budget.state();
            assert!(state.pool_used + state.reserve_used <= LARGE_POOL_KIB + RESERVE_KIB);
        }
        let (_, release, thread) = standard.into_iter().next().unwrap();
        release.send(()).unwrap();
        thread.join().unwrap();
        got_fifth.recv_timeout(WAIT).unwrap();
        for (release, thread) in [(release_second, second), (release_fifth, fifth)] {
            release.send(()).unwrap();
            thread.join().unwrap();
        }
    }

    #[test]
    fn larger_unlocks_take_the_pool_in_arrival_order() {
        let budget = Arc::new(KdfBudget::new());
        let half = KdfParams::CAP_M_KIB / 2;
        let (got_a, release_a, a) = hold(&budget, half + 1);
        got_a.recv_timeout(WAIT).unwrap();
        let (got_b, release_b, b) = hold(&budget, KdfParams::CAP_M_KIB);
        assert!(got_b.recv_timeout(BLOCKED).is_err());
        // Would fit beside `a`, but `b` came first.
        let (got_c, release_c, c) = hold(&budget, half - 1);
        assert!(got_c.recv_timeout(BLOCKED).is_err());
        release_a.send(()).unwrap();
        a.join().unwrap();
        got_b.recv_timeout(WAIT).unwrap();
        assert!(got_c.recv_timeout(BLOCKED).is_err());
        release_b.send(()).unwrap();
        b.join().unwrap();
        got_c.recv_timeout(WAIT).unwrap();
        release_c.send(()).unwrap();
        c.join().unwrap();
        let state = budget.state();
        assert_eq!((state.pool_used, state.reserve_used), (0, 0));
    }
}
