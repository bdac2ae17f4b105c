//! The tamper-evident audit log: one JSON line per security-relevant event on a mount.
//!
//! ```text
//! {"time":"2025-01-02T03:04:05.678Z","seq":7,"event":"open","uid":1001,"user":"alice",
//!  "pid":4242,"process":"python3","exe":"/usr/bin/python3.12","path":"m/model.safetensors",
//!  "flags":"O_RDONLY|O_LARGEFILE","decision":"allow","prev":"<64 hex>","mac":"<64 hex>"}
//! ```
//! (one line in the file). Fields are always written in the order of [`Entry`]; `time`, `seq`,
//! `event`, `prev` and `mac` are always present, every other field is *omitted* (never
//! `null`) when unknown or not applicable. A line with `count` stands for that many identical
//! events between `first` and `last` (see `coalesce`); a line without it stands for one.
//!
//! Tamper evidence:
//! - `prev` is the hex SHA-256 of the previous line's bytes (without its newline). The first
//!   line of a new log carries a random 32-byte log id instead, and the first line of a file
//!   started by rotation (a `rotate` entry) carries the last hash of the previous file.
//! - `mac` is the hex HMAC-SHA256, under the 32-byte audit key, of the line's canonical form:
//!   the same JSON without the `mac` field. A line is canonical when re-serializing it yields
//!   the same bytes, so any byte edit is caught.
//! - `seq` counts from 1 and continues across rotation, and across restarts when the head
//!   record (below) knows where the chain was.
//! - The key lives outside the store (see `key`), with a head record beside it: the `seq`
//!   and hash of the last entry synced. The writer and the verifier compare the log with it,
//!   which catches a cut tail, a deleted log and a log put back from an older copy.
//!
//! An attacker who can edit the log but not read the key can neither fix up an edited line
//! nor forge an inserted one, and deleting or reordering lines breaks `prev`. A chain that was
//! broken when the writer opened it is moved aside and a new one starts with a `rotate` entry
//! saying why (`corrupt-tail`, `missing-log`), which `verify` reports as a restart.
//!
//! Modules: `writer` (appending, sync, rotation, the head record), `coalesce` (counted lines
//! and the per-uid budget for denials), `key` (where the key lives and when it is trusted),
//! `verify` (reading and checking chains), `time` (RFC 3339).

mod coalesce;
mod key;
mod time;
mod verify;
mod writer;

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::CryptoError;

pub use key::{
    default_key_path, default_paths, head_path, legacy_key_paths, log_id, read_head,
    read_trusted as read_key, state_dir, HeadRecord, Key, DEFAULT_STATE_DIR, KEY_DIR,
    STATE_DIR_ENV,
};
pub use time::{format_time, parse_time};
pub use verify::{
    base_log, for_each_line, verify, with_rotated, HeadCheck, RawLine, Start, VerifyError,
    VerifyReport,
};
pub use writer::{default_max_size, AuditLog, DEFAULT_MAX_SIZE, MIN_DEFAULT_MAX_SIZE};

/// Length of the audit key in bytes.
pub const KEY_LEN: usize = 32;
/// How many rotated files (`LOG.1` … `LOG.N`) are kept.
pub const KEEP_ROTATED: u32 = 5;
/// The longest line `verify` and `open` accept; string fields are cut to [`MAX_FIELD`] bytes
/// when written, so real lines stay far below this.
pub const MAX_LINE: usize = 64 * 1024;
/// String fields longer than this are truncated (at a character boundary) when recorded.
pub const MAX_FIELD: usize = 4096;
/// Entries are synced to disk at least this often; counted lines that are due are written
/// at the same pace.
pub const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Name of the default log, in `STORE/.tvault/`.
pub const DEFAULT_LOG_NAME: &str = "audit.jsonl";

type HmacSha256 = Hmac<Sha256>;

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
    #[error("{path}: unsafe place for the audit key: {why}")]
    KeyDir { path: PathBuf, why: String },
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
    BadKey { path: PathBuf, why: String },
    #[error("{0}: the audit log is in use by another process")]
    InUse(PathBuf),
    #[error("{path}: cannot use this as the audit log: {why}")]
    UnsafeLog { path: PathBuf, why: String },
    #[error("{path}: short write to the audit log ({written} of {len} bytes)")]
    ShortWrite {
        path: PathBuf,
        written: usize,
        len: usize,
    },
    #[error("the audit log is closed")]
    Closed,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

pub(crate) fn io_err(path: &Path) -> impl Fn(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Open,
    Unlock,
    UnlockFailed,
    Lock,
    Grant,
    Revoke,
    IntegrityFailure,
    Mount,
    Unmount,
    Create,
    WriteOpen,
    Rename,
    Unlink,
    Mkdir,
    Rmdir,
    /// truncate(2) by path: a new version committed without an open.
    Truncate,
    /// utimensat(2) on a file or directory.
    SetTimes,
    /// An extended attribute derived from a file's plaintext (tensor count, header length).
    Xattr,
    Rotate,
    /// A count of denials that got no line of their own (see `coalesce`).
    Suppressed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Open => "open",
            EventKind::Unlock => "unlock",
            EventKind::UnlockFailed => "unlock-failed",
            EventKind::Lock => "lock",
            EventKind::Grant => "grant",
            EventKind::Revoke => "revoke",
            EventKind::IntegrityFailure => "integrity-failure",
            EventKind::Mount => "mount",
            EventKind::Unmount => "unmount",
            EventKind::Create => "create",
            EventKind::WriteOpen => "write-open",
            EventKind::Rename => "rename",
            EventKind::Unlink => "unlink",
            EventKind::Mkdir => "mkdir",
            EventKind::Rmdir => "rmdir",
            EventKind::Truncate => "truncate",
            EventKind::SetTimes => "set-times",
            EventKind::Xattr => "xattr",
            EventKind::Rotate => "rotate",
            EventKind::Suppressed => "suppressed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// One event to record. Build it with [`Event::new`] / [`Event::from_pid`] and the chainable
/// setters, or fill the fields directly. `None` fields are omitted from the line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub kind: EventKind,
    /// The acting uid (the caller of an open, the peer of an unlock).
    pub uid: Option<u32>,
    /// The user name of that uid's keyring, when known.
    pub user: Option<String>,
    pub pid: Option<u32>,
    /// `/proc/PID/comm`.
    pub process: Option<String>,
    /// `readlink /proc/PID/exe`.
    pub exe: Option<String>,
    /// The store-relative path concerned.
    pub path: Option<String>,
    /// The new path of a `rename`.
    pub target: Option<String>,
    /// Open flags as text, see [`open_flags_text`].
    pub flags: Option<String>,
    pub decision: Option<Decision>,
    /// Stable reason code: `locked`, `no-key-slot`, `no-keyring`, `integrity`,
    /// `audit-unavailable`, `wrong-passphrase`, `max-size`, `requested`, `corrupt-tail`, …
    pub reason: Option<String>,
    /// Free text: an error message, the mountpoint of a `mount`, the previous file of a
    /// `rotate`, the grantee of a `grant`, …
    pub detail: Option<String>,
}

impl Event {
    pub fn new(kind: EventKind) -> Event {
        Event {
            kind,
            uid: None,
            user: None,
            pid: None,
            process: None,
            exe: None,
            path: None,
            target: None,
            flags: None,
            decision: None,
            reason: None,
            detail: None,
        }
    }

    /// An event caused by process `pid`: fills `pid`, `process` and `exe` from /proc.
    pub fn from_pid(kind: EventKind, pid: u32) -> Event {
        Event::new(kind).process_of(pid)
    }

    /// Sets `pid` and, where /proc tells (it may not, for a process that already exited or,
    /// without privileges, for another user's `exe`), `process` and `exe`.
    pub fn process_of(mut self, pid: u32) -> Self {
        let (process, exe) = process_info(pid);
        self.pid = Some(pid);
        self.process = process;
        self.exe = exe;
        self
    }

    /// Sets `pid` only (see [`Event::process_of`] to fill `process` and `exe` too).
    pub fn pid(mut self, pid: u32) -> Self {
        self.pid = Some(pid);
        self
    }

    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Open flags as passed to open(2) / by FUSE; stored as text (see [`open_flags_text`]).
    pub fn open_flags(mut self, flags: i32) -> Self {
        self.flags = Some(open_flags_text(flags));
        self
    }

    pub fn allow(mut self) -> Self {
        self.decision = Some(Decision::Allow);
        self
    }

    /// `decision: deny` with a reason code.
    pub fn deny(mut self, reason: impl Into<String>) -> Self {
        self.decision = Some(Decision::Deny);
        self.reason = Some(reason.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// `(comm, exe)` of a process, each `None` when /proc does not say.
pub fn process_info(pid: u32) -> (Option<String>, Option<String>) {
    if pid == 0 {
        return (None, None);
    }
    let comm = fs::read(format!("/proc/{pid}/comm"))
        .ok()
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\n')
                .to_string()
        })
        .filter(|s| !s.is_empty());
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    (comm, exe)
}

/// The kernel's O_LARGEFILE (the libc crate reports 0 for it on 64-bit glibc targets, but
/// FUSE passes the kernel's bit).
#[cfg(target_arch = "x86_64")]
const KERNEL_O_LARGEFILE: i32 = 0o100000;
#[cfg(target_arch = "aarch64")]
const KERNEL_O_LARGEFILE: i32 = 0o400000;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const KERNEL_O_LARGEFILE: i32 = libc::O_LARGEFILE;

/// Open flags as text: the access mode, then the named flags set, e.g.
/// `O_WRONLY|O_CREAT|O_TRUNC`; bits without a name are appended in hex.
pub fn open_flags_text(flags: i32) -> String {
    let mut out = String::from(match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_ACCMODE",
    });
    let mut rest = flags & !libc::O_ACCMODE;
    // Multi-bit flags first, so that O_SYNC is not printed as O_DSYNC plus a stray bit.
    let named: [(i32, &str); 17] = [
        (libc::O_TMPFILE, "O_TMPFILE"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_DSYNC, "O_DSYNC"),
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_NOCTTY, "O_NOCTTY"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_DIRECT, "O_DIRECT"),
        (KERNEL_O_LARGEFILE, "O_LARGEFILE"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
        (libc::O_PATH, "O_PATH"),
        (libc::O_ASYNC, "O_ASYNC"),
    ];
    for (bits, name) in named {
        if bits != 0 && rest & bits == bits {
            out.push('|');
            out.push_str(name);
            rest &= !bits;
        }
    }
    if rest != 0 {
        let _ = write!(out, "|0x{rest:x}");
    }
    out
}

/// One line of the log, in its fixed field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub time: String,
    pub seq: u64,
    pub event: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How many identical events this line stands for, when it stands for more than one
    /// (a counted or `suppressed` line); absent means one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Time of the first of the `count` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    /// Time of the last of the `count` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    pub prev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

fn clip(field: &Option<String>) -> Option<String> {
    field.as_ref().map(|s| {
        if s.len() <= MAX_FIELD {
            return s.clone();
        }
        let mut end = MAX_FIELD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    })
}

impl Entry {
    fn new(event: &Event, span: Option<&Span>, time: SystemTime, seq: u64, prev: String) -> Entry {
        Entry {
            time: format_time(time),
            seq,
            event: event.kind,
            uid: event.uid,
            user: clip(&event.user),
            pid: event.pid,
            process: clip(&event.process),
            exe: clip(&event.exe),
            path: clip(&event.path),
            target: clip(&event.target),
            flags: clip(&event.flags),
            decision: event.decision,
            reason: clip(&event.reason),
            detail: clip(&event.detail),
            count: span.map(|s| s.count),
            first: span.map(|s| format_time(s.first)),
            last: span.map(|s| format_time(s.last)),
            prev,
            mac: None,
        }
    }

    /// The bytes the MAC covers: this entry serialized without `mac`.
    pub fn canonical(&self) -> Vec<u8> {
        let unsigned = Entry {
            mac: None,
            ..self.clone()
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(&unsigned).unwrap_or_default()
    }

    /// The entry's time, if it is well-formed RFC 3339.
    pub fn parsed_time(&self) -> Option<SystemTime> {
        parse_time(&self.time)
    }

    /// How many events the line stands for.
    pub fn events(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// The time of the newest event the line stands for: `last` of a counted line, else
    /// `time`.
    pub fn latest_time(&self) -> Option<SystemTime> {
        self.last
            .as_deref()
            .and_then(parse_time)
            .or_else(|| self.parsed_time())
    }
}

/// `count` events, the first and last at these times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub count: u64,
    pub first: SystemTime,
    pub last: SystemTime,
}

impl Span {
    pub fn one(time: SystemTime) -> Span {
        Span {
            count: 1,
            first: time,
            last: time,
        }
    }

    pub fn add(&mut self, time: SystemTime) {
        self.count = self.count.saturating_add(1);
        self.first = self.first.min(time);
        self.last = self.last.max(time);
    }

    pub fn merge(&mut self, other: &Span) {
        self.count = self.count.saturating_add(other.count);
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

fn mac_hex(key: &[u8], data: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

fn mac_ok(key: &[u8], data: &[u8], expected_hex: &str) -> bool {
    let Ok(expected) = hex::decode(expected_hex) else {
        return false;
    };
    let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(key) else {
        return false;
    };
    mac.update(data);
    mac.verify_slice(&expected).is_ok()
}

/// Hex SHA-256 of a line (without its newline): the next line's `prev`.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// Builds a signed line (without newline).
fn signed_line(key: &[u8], mut entry: Entry) -> Vec<u8> {
    entry.mac = Some(mac_hex(key, &entry.canonical()));
    serde_json::to_vec(&entry).unwrap_or_default()
}

/// Parses one line (without newline) into an entry, checking only the JSON shape.
pub fn parse_entry(line: &[u8]) -> Result<Entry, String> {
    serde_json::from_slice(line).map_err(|e| format!("not a valid audit entry: {e}"))
}

pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses one line and checks its MAC and canonical form (not its place in the chain).
pub fn verify_line(key: &[u8], line: &[u8]) -> Result<Entry, String> {
    check_line_form(Some(key), line)
}

/// [`verify_line`] with the MAC checked only when a key is given: without one, the line must
/// still parse, carry a well-formed `mac` and `prev`, and be canonical.
fn check_line_form(key: Option<&[u8]>, line: &[u8]) -> Result<Entry, String> {
    let entry = parse_entry(line)?;
    let Some(mac) = entry.mac.as_deref() else {
        return Err("no mac field".into());
    };
    if !is_hex64(mac) {
        return Err("mac is not 64 lowercase hex digits".into());
    }
    if !is_hex64(&entry.prev) {
        return Err("prev is not 64 lowercase hex digits".into());
    }
    if let Some(key) = key {
        if !mac_ok(key, &entry.canonical(), mac) {
            return Err("MAC mismatch: the line was altered (or written under another key)".into());
        }
    }
    if serde_json::to_vec(&entry).unwrap_or_default() != line {
        return Err("the line is not in canonical form (bytes were altered)".into());
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn flags_as_text() {
        assert_eq!(open_flags_text(libc::O_RDONLY), "O_RDONLY");
        assert_eq!(
            open_flags_text(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
            "O_WRONLY|O_CREAT|O_TRUNC"
        );
        assert_eq!(
            open_flags_text(libc::O_RDWR | libc::O_SYNC),
            "O_RDWR|O_SYNC"
        );
        assert_eq!(
            open_flags_text(KERNEL_O_LARGEFILE | libc::O_CLOEXEC),
            "O_RDONLY|O_LARGEFILE|O_CLOEXEC"
        );
    }

    #[test]
    fn counted_lines_carry_count_first_and_last() {
        let key = [5u8; KEY_LEN];
        let t = UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        let mut span = Span::one(t);
        span.add(t + Duration::from_secs(9));
        span.add(t + Duration::from_secs(3));
        assert_eq!(span.count, 3);
        let event = Event::new(EventKind::Open)
            .uid(1003)
            .path("m/w.safetensors")
            .deny("no-keyring");
        let entry = Entry::new(
            &event,
            Some(&span),
            t + Duration::from_secs(10),
            4,
            "a".repeat(64),
        );
        let line = signed_line(&key, entry);
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            text.contains(
                "\"reason\":\"no-keyring\",\"count\":3,\"first\":\"2025-01-02T03:04:05.678Z\",\
                 \"last\":\"2025-01-02T03:04:14.678Z\",\"prev\""
            ),
            "{text}"
        );
        let parsed = verify_line(&key, &line).unwrap();
        assert_eq!(parsed.events(), 3);
        assert_eq!(parsed.latest_time(), Some(t + Duration::from_secs(9)));
        // The count is covered by the MAC like every other field.
        let edited = text.replace("\"count\":3", "\"count\":1");
        assert!(verify_line(&key, edited.as_bytes())
            .unwrap_err()
            .contains("MAC"));
        // A line without the new fields (as older versions wrote them) is unchanged.
        let plain = signed_line(&key, Entry::new(&event, None, t, 1, "b".repeat(64)));
        let plain_text = String::from_utf8(plain.clone()).unwrap();
        assert!(!plain_text.contains("count") && !plain_text.contains("\"first\""));
        assert_eq!(verify_line(&key, &plain).unwrap().events(), 1);
    }
}
