//! The tamper-evident audit log: one JSON line per security-relevant event on a mount.
//!
//! ```text
//! {"time":"2025-01-02T03:04:05.678Z","seq":7,"event":"open","uid":1001,"user":"alice",
//!  "pid":4242,"process":"python3","exe":"/usr/bin/python3.12","path":"m/model.safetensors",
//!  "flags":"O_RDONLY|O_LARGEFILE","decision":"allow","prev":"<64 hex>","mac":"<64 hex>"}
//! ```
//! (one line in the file). Each line carries the SHA-256 of the line before it (`prev`) and an
//! HMAC-SHA256 of its own canonical form under a key kept outside the store (`mac`); `seq`
//! counts on across rotation and restarts, and a head record beside the key remembers the last
//! synced entry. docs/FORMAT.md ("Audit log") specifies the bytes and what a verifier checks.
//!
//! An attacker who can edit the log but not read the key can neither fix up an edited line
//! nor forge an inserted one, and deleting or reordering lines breaks `prev`. A chain that was
//! broken when the writer opened it is moved aside and a new one starts with a `rotate` entry
//! saying why (`corrupt-tail`, `missing-log`), which `verify` reports as a restart.
//!
//! Files, one job each: `event` (what is recorded), `line` (an event as a signed line),
//! `time` (RFC 3339 time stamps), `key` (where the key lives and when it is trusted), `head`
//! (the head record), `writer` (appending and syncing), `open` (continuing or moving aside the
//! log found at open), `rotate` (rotation and the size limit), `coalesce` (counted lines and the
//! per-uid budget for denials), `files` (reading log files and their rotated names), `verify`
//! (checking a chain), `host` (one chain per host of a shared store, and where its key
//! lives), `mirror` (copying a local log into a store that is not a local directory),
//! `chains` (finding and reading a store's chains through the store).

mod chains;
mod coalesce;
mod event;
mod files;
mod head;
mod host;
mod key;
mod line;
mod mirror;
mod open;
mod rotate;
#[cfg(test)]
mod testutil;
mod time;
mod verify;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

use crate::crypto::CryptoError;

// What tests, fuzz targets and the vectors need is `pub`; the rest is for the crate only,
// so that the compiler reports what nobody uses.
pub use chains::{display_files, open_chain_file, store_chains, Chain};
pub use event::{Decision, Event, EventKind};
pub use files::with_rotated;
pub use head::HeadRecord;
pub use host::{
    chain_file, check_store_id, default_host_id, host_key_dir, host_key_path, open_host_log,
    validate_host_id, HostLog, CHAIN_DIR, HOST_ID_ENV,
};
pub use key::{default_paths, legacy_key_paths, log_id, KEY_DIR, STATE_DIR_ENV};
pub use line::{line_hash, parse_entry, verify_line, Entry, LineError};
pub use mirror::{Mirror, MIRROR_INTERVAL};
pub use verify::{verify, verify_with, ChainError, HeadCheck, Start, VerifyError, VerifyReport};
pub use writer::AuditLog;

pub(crate) use files::{base_log, for_each_line, for_each_line_in};
pub(crate) use head::{head_path, read_head};
pub(crate) use key::{default_key_path, read_trusted as read_key, Key};
pub(crate) use rotate::MIN_DEFAULT_MAX_SIZE;
pub(crate) use time::{format_time, parse_time};

/// Length of the audit key in bytes.
pub(crate) const KEY_LEN: usize = 32;
/// How many rotated files (`LOG.1` … `LOG.N`) are kept.
pub(crate) const KEEP_ROTATED: u32 = 5;
/// The longest line `verify` and `open` accept; string fields are cut to [`MAX_FIELD`] bytes
/// when written, so real lines stay far below this.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// String fields longer than this are truncated (at a character boundary) when recorded.
pub(crate) const MAX_FIELD: usize = 4096;
/// Entries are synced to disk at least this often; counted lines that are due are written
/// at the same pace.
pub(crate) const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Name of the default log, in `STORE/.tvault/`.
pub(crate) const DEFAULT_LOG_NAME: &str = "audit.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: accessible to group or others (mode {mode:03o}); the audit key and its head \
         record must be readable by their owner only (chmod 600)"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "{path}: writable by group or others (mode {mode:03o}), so anyone could have replaced \
         it; refusing to trust it (chmod go-w, after checking it is the right key)"
    )]
    KeyWritable { path: PathBuf, mode: u32 },
    #[error(
        "{path}: owned by uid {owner}, not by {expected}; whoever owns it could have planted \
         or replaced it, so it is not used (point at a key that only {expected} controls)"
    )]
    KeyOwner {
        path: PathBuf,
        owner: u32,
        expected: String,
    },
    #[error("{0}: is a symbolic link; refusing to follow it (name the key file itself)")]
    KeySymlink(PathBuf),
    #[error("{0}: is not a regular file")]
    KeyNotFile(PathBuf),
    #[error(
        "{path}: unsafe place for the audit key: it is owned by uid {owner}, who could replace \
         the key (chown it to uid {me} or root)"
    )]
    KeyDirOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{path}: unsafe place for the audit key: group or others can write it (mode \
         {mode:03o}), so they could replace the key (chmod go-w)"
    )]
    KeyDirWritable { path: PathBuf, mode: u32 },
    #[error(
        "{path}: cannot create the audit key directory: {source}; run the mount as root, set \
         TVAULT_STATE_DIR, or pass --audit-key FILE (a file only the daemon's user can read)"
    )]
    KeyDirCreate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: malformed audit key: {why}")]
    BadKey { path: PathBuf, why: &'static str },
    #[error("{0}: the audit log is in use by another process")]
    InUse(PathBuf),
    #[error("{path}: cannot use this as the audit log: {why}")]
    UnsafeLog { path: PathBuf, why: &'static str },
    #[error("{path}: short write to the audit log ({written} of {len} bytes)")]
    ShortWrite {
        path: PathBuf,
        written: usize,
        len: usize,
    },
    #[error("the audit log is closed")]
    Closed,
    #[error(
        "invalid host id {id:?}: {why}; pass --host-id NAME (or set TVAULT_HOST_ID) with \
         letters, digits, '.', '_' and '-', unique among the hosts that mount this store"
    )]
    BadHostId { id: String, why: &'static str },
    #[error(
        "{location}: the store's id is now {id}, but this host first knew it as {first} \
         ({seen}): whoever can write the store may have replaced the id to start this host's \
         audit chain afresh and hide a deleted one; verify the old chain (`tvault audit STORE \
         --verify --keys $TVAULT_STATE_DIR/audit-keys/{first}`), and only if the store was \
         re-created on purpose remove {seen}"
    )]
    StoreIdChanged {
        location: String,
        id: String,
        first: String,
        seen: PathBuf,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

pub(super) fn io_err(path: &Path) -> impl Fn(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}
