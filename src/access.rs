//! Who may open what on a running mount: per-uid unlocked sessions and the open decision.
//!
//! A uid is mapped to the one keyring registered for it in the store. Unlocking unseals that
//! keyring's private key; data keys are then unwrapped from key slots on first use and kept in
//! the session, in memory only, until the uid locks or the mount ends (all zeroized on drop).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::container::{Container, ContainerError};
use crate::crypto::{PrivateKey, SecretKey, FILE_ID_LEN};
use crate::keyring::KeyringError;
use crate::store::{Store, StoreError};

/// Why an open was refused; `code()` is the stable reason string used in logs and the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The uid has no keyring in the store.
    NoKeyring,
    /// The uid has a keyring but has not unlocked it (or locked it).
    Locked,
    /// The uid's user holds no key slot for this file.
    NoKeySlot,
    /// The slot or header did not authenticate under the user's key.
    Integrity(String),
    /// The store could not be read.
    StoreError(String),
}

impl Denial {
    pub fn code(&self) -> &'static str {
        match self {
            Denial::NoKeyring => "no-keyring",
            Denial::Locked => "locked",
            Denial::NoKeySlot => "no-key-slot",
            Denial::Integrity(_) => "integrity",
            Denial::StoreError(_) => "store-error",
        }
    }
}

/// A data key handed out for an open.
pub struct DataKey {
    pub key: SecretKey,
    /// Already checked against this file's header MAC: it came from the session's memory.
    pub checked: bool,
}

/// One unlocked user. Handles opened by the user keep a reference, so that a lock takes
/// effect on them too (`is_locked`).
pub struct UserSession {
    pub uid: u32,
    pub name: String,
    private: PrivateKey,
    data_keys: Mutex<HashMap<[u8; FILE_ID_LEN], SecretKey>>,
    locked: AtomicBool,
}

/// Keeps the pages holding an unlocked user's private key out of swap (best effort: an
/// unprivileged daemon may lack the mlock limit). Unlocked again when the session drops.
fn lock_in_memory(session: &Arc<UserSession>) {
    let ptr: *const UserSession = Arc::as_ptr(session);
    // SAFETY: locks the pages of a live allocation; `UserSession::drop` unlocks them.
    if unsafe { libc::mlock(ptr.cast(), std::mem::size_of::<UserSession>()) } != 0 {
        log::debug!(
            "mlock of a session key: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for UserSession {
    fn drop(&mut self) {
        let ptr: *const UserSession = self;
        // SAFETY: the allocation is still live during drop; unlocking unlocked pages is
        // harmless.
        unsafe { libc::munlock(ptr.cast(), std::mem::size_of::<UserSession>()) };
    }
}

impl UserSession {
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Acquire)
    }

    /// The data key of `container` for this user: from the session's memory (checked
    /// against this file's header MAC when it was remembered), or unwrapped from the user's
    /// slot (authenticated by the slot's AEAD, but not yet checked against the header; the
    /// caller checks it, e.g. by [`Container::open`], then calls [`Self::remember_key`]).
    fn data_key<B: crate::container::Source>(
        &self,
        container: &Container<B>,
    ) -> Result<DataKey, Denial> {
        let file_id = container.header().file_id;
        if let Some(key) = self.keys().get(&file_id) {
            return Ok(DataKey {
                key: key.clone(),
                checked: true,
            });
        }
        let key = container
            .unwrap_key(&self.name, &self.private)
            .map_err(|e| match e {
                ContainerError::NoSlot(_) => Denial::NoKeySlot,
                e => Denial::Integrity(e.to_string()),
            })?;
        Ok(DataKey {
            key,
            checked: false,
        })
    }

    /// Keeps the data key of file `file_id` for later opens, once the header MAC it commits
    /// to has been checked.
    pub fn remember_key(&self, file_id: [u8; FILE_ID_LEN], key: SecretKey) {
        self.keys().insert(file_id, key);
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; FILE_ID_LEN], SecretKey>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        self.data_keys.lock().unwrap_or_else(|p| p.into_inner())
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
    #[error("{0}")]
    Store(String),
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

pub struct Access {
    sessions: RwLock<HashMap<u32, Arc<UserSession>>>,
    backoff: Mutex<HashMap<u32, Backoff>>,
    /// Argon2id uses 64 MiB per unlock by default; one at a time bounds memory under abuse.
    unlock_gate: Mutex<()>,
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
            unlock_gate: Mutex::new(()),
        }
    }

    pub fn session(&self, uid: u32) -> Option<Arc<UserSession>> {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&uid)
            .cloned()
    }

    pub fn sessions(&self) -> Vec<Arc<UserSession>> {
        let mut all: Vec<_> = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
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
            Err(e) => return Err(UnlockError::Store(e.to_string())),
        };
        // Backoff is checked and failures recorded under the gate, so concurrent attempts
        // from one uid cannot all slip in before the first failure is counted.
        let private = {
            let _gate = self.unlock_gate.lock().unwrap_or_else(|p| p.into_inner());
            self.check_backoff(uid)?;
            match keyring.unlock(passphrase) {
                Ok(private) => private,
                Err(KeyringError::WrongPassphrase(name)) => {
                    self.record_failure(uid);
                    return Err(UnlockError::WrongPassphrase(name));
                }
                Err(e) => return Err(UnlockError::Store(e.to_string())),
            }
        };
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
        let mut sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        // Unlocking again while unlocked keeps the session (and the handles opened under it).
        if sessions.get(&uid).is_none_or(|s| s.name != keyring.name) {
            let session = Arc::new(UserSession {
                uid,
                name: keyring.name.clone(),
                private,
                data_keys: Mutex::new(HashMap::new()),
                locked: AtomicBool::new(false),
            });
            lock_in_memory(&session);
            if let Some(old) = sessions.insert(uid, session) {
                old.locked.store(true, Ordering::Release);
            }
        }
        Ok(keyring.name)
    }

    fn check_backoff(&self, uid: u32) -> Result<(), UnlockError> {
        let backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let entry = backoff.entry(uid).or_insert(Backoff {
            failures: 0,
            next_allowed: Instant::now(),
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.next_allowed = Instant::now() + backoff_delay(entry.failures);
    }

    /// Forgets `uid`'s keys. Handles that hold the session see `is_locked()` from now on.
    /// The keys are zeroized when the last reference to the session goes.
    pub fn lock(&self, uid: u32) -> Option<Arc<UserSession>> {
        let session = self
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid)?;
        session.locked.store(true, Ordering::Release);
        session.keys().clear();
        Some(session)
    }

    /// Forgets every session (at unmount).
    pub fn lock_all(&self) {
        let drained: Vec<_> = self
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, session) in drained {
            session.locked.store(true, Ordering::Release);
            session.keys().clear();
        }
    }

    /// The open decision: `uid` may open `container` if it has unlocked and its user holds a
    /// slot for it. Returns the session and the data key; unless the key is marked checked,
    /// the caller must still authenticate the header with it (the slot only proves the key
    /// was wrapped for this user and file id), which the one MAC pass of `Container::open`
    /// does, and then remember it.
    pub fn authorize<B: crate::container::Source>(
        &self,
        store: &Store,
        uid: u32,
        container: &Container<B>,
    ) -> Result<(Arc<UserSession>, DataKey), Denial> {
        let Some(session) = self.session(uid) else {
            return Err(match store.user_by_uid(uid) {
                Ok(Some(_)) => Denial::Locked,
                Ok(None) => Denial::NoKeyring,
                Err(e) => Denial::StoreError(e.to_string()),
            });
        };
        // Checked on every open, so a revoked slot refuses at once even if the key is cached.
        if container.slot(&session.name).is_none() {
            return Err(Denial::NoKeySlot);
        }
        let key = session.data_key(container)?;
        Ok((session, key))
    }
}

impl From<StoreError> for Denial {
    fn from(e: StoreError) -> Self {
        Denial::StoreError(e.to_string())
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
}
