//! Bounds on what open files hold in the daemon, so that one uid cannot exhaust what the
//! others need: open handles (each may hold a file descriptor) and per-file metadata (chunk
//! tables, parsed safetensors headers). Each bound has a total and a smaller share per uid;
//! going over a uid's share gives that uid `EMFILE`, over the total `ENFILE`.
//!
//! Lock order: each `Mutex` here is a leaf (nothing else is locked while it is held).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// Which bound a charge would pass (the caller's errno: `EMFILE` or `ENFILE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitError {
    /// The uid's share.
    PerUid,
    /// The whole mount's.
    Total,
}

#[derive(Default)]
struct Usage {
    total: u64,
    by_uid: HashMap<u32, u64>,
}

/// A quantity bounded in total and per uid.
pub(crate) struct Limit {
    total: u64,
    per_uid: u64,
    usage: Mutex<Usage>,
}

/// An amount taken from a [`Limit`]; given back when dropped.
pub(crate) struct Charge {
    limit: Arc<Limit>,
    uid: u32,
    amount: u64,
}

impl Limit {
    pub(crate) fn new(total: u64, per_uid: u64) -> Arc<Limit> {
        Arc::new(Limit {
            total,
            per_uid: per_uid.min(total),
            usage: Mutex::new(Usage::default()),
        })
    }

    /// Takes `amount` for `uid`: refused beyond the uid's share or beyond the total.
    pub(crate) fn charge(self: &Arc<Self>, uid: u32, amount: u64) -> Result<Charge, LimitError> {
        self.take(uid, amount)?;
        Ok(Charge {
            limit: self.clone(),
            uid,
            amount,
        })
    }

    fn take(&self, uid: u32, amount: u64) -> Result<(), LimitError> {
        let mut usage = lock(&self.usage);
        let mine = usage.by_uid.get(&uid).copied().unwrap_or(0);
        if mine.saturating_add(amount) > self.per_uid {
            return Err(LimitError::PerUid);
        }
        if usage.total.saturating_add(amount) > self.total {
            return Err(LimitError::Total);
        }
        usage.total += amount;
        *usage.by_uid.entry(uid).or_insert(0) += amount;
        Ok(())
    }

    fn give_back(&self, uid: u32, amount: u64) {
        let mut usage = lock(&self.usage);
        usage.total = usage.total.saturating_sub(amount);
        if let Some(mine) = usage.by_uid.get_mut(&uid) {
            *mine = mine.saturating_sub(amount);
            if *mine == 0 {
                usage.by_uid.remove(&uid);
            }
        }
    }

    pub(crate) fn per_uid(&self) -> u64 {
        self.per_uid
    }

    pub(crate) fn used(&self) -> u64 {
        lock(&self.usage).total
    }
}

impl Charge {
    pub(crate) fn amount(&self) -> u64 {
        self.amount
    }

    /// Grows or shrinks the charge to `amount`; growing past the bound fails as `charge`
    /// does and leaves the charge as it was.
    pub(crate) fn resize(&mut self, amount: u64) -> Result<(), LimitError> {
        if amount > self.amount {
            self.limit.take(self.uid, amount - self.amount)?;
        } else {
            self.limit.give_back(self.uid, self.amount - amount);
        }
        self.amount = amount;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.limit.give_back(self.uid, self.amount);
    }
}

/// The daemon's bounds: open handles from the file-descriptor limit; metadata of open files
/// and the memory of files being written (dirty chunks, the draft's chunk table) from the
/// cache size.
pub(crate) struct Limits {
    pub handles: Arc<Limit>,
    pub metadata: Arc<Limit>,
    pub writes: Arc<Limit>,
    /// Listings of open directories (taken at `opendir`, held until `releasedir`). Anyone
    /// may list, keyring or not, so these have a bound of their own: a uid opening a large
    /// directory many times gets `EMFILE`, and file opens are not affected.
    pub listings: Arc<Limit>,
}

/// Most handles one uid may hold, however high the descriptor limit: each may hold memory.
const MAX_HANDLES_PER_UID: u64 = 4096;

/// File descriptors kept free for the daemon itself (audit log, control socket, FUSE
/// channels, the descriptors an open uses before it is charged).
const RESERVED_FDS: u64 = 128;

impl Limits {
    /// `nofile`: the daemon's soft `RLIMIT_NOFILE`. Handles may use all but a reserve of it,
    /// a quarter of that per uid (at most 4096). Metadata may take half the cache size (at
    /// least 64 MiB), half of that per uid; files being written as much again. Directory
    /// listings may take as much as metadata, a quarter of it per uid.
    pub(crate) fn new(nofile: u64, cache_bytes: u64) -> Limits {
        let handles = nofile.saturating_sub(RESERVED_FDS).max(64);
        let memory = (cache_bytes / 2).max(64 << 20);
        Limits {
            handles: Limit::new(handles, (handles / 4).clamp(16, MAX_HANDLES_PER_UID)),
            metadata: Limit::new(memory, memory / 2),
            writes: Limit::new(memory, memory / 2),
            listings: Limit::new(memory, memory / 4),
        }
    }
}

/// The process's soft limit on open files.
pub(crate) fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_totals() {
        let limit = Limit::new(10, 4);
        let a = limit.charge(1, 4).unwrap();
        assert_eq!(limit.charge(1, 1).err(), Some(LimitError::PerUid));
        let b = limit.charge(2, 4).unwrap();
        let _c = limit.charge(3, 2).unwrap();
        assert_eq!(limit.charge(4, 1).err(), Some(LimitError::Total));
        drop(a);
        assert_eq!(limit.used(), 6);
        let _d = limit.charge(1, 4).unwrap();
        drop(b);
        assert_eq!(limit.used(), 6);
        let mut e = limit.charge(2, 1).unwrap();
        assert_eq!(e.resize(5).err(), Some(LimitError::PerUid));
        assert_eq!(e.amount(), 1);
        e.resize(4).unwrap();
        assert_eq!(limit.used(), 10);
        e.resize(0).unwrap();
        assert_eq!(limit.used(), 6);
    }
}
