//! The tamper-evident audit log: one JSON line per security-relevant event on a mount.
//!
//! ```text
//! {"time":"2025-01-02T03:04:05.678Z","seq":7,"event":"open","uid":1001,"user":"alice",
//!  "pid":4242,"process":"python3","exe":"/usr/bin/python3.12","path":"m/model.safetensors",
//!  "flags":"O_RDONLY|O_LARGEFILE","decision":"allow","prev":"<64 hex>","mac":"<64 hex>"}
//! ```
//! (one line in the file). Fields are always written in the order of [`Entry`]; `time`, `seq`,
//! `event`, `prev` and `mac` are always present, every other field is *omitted* (never
//! `null`) when unknown or not applicable.
//!
//! Tamper evidence:
//! - `prev` is the hex SHA-256 of the previous line's bytes (without its newline). The first
//!   line of a new log carries a random 32-byte log id instead, and the first line of a file
//!   started by rotation (a `rotate` entry) carries the last hash of the previous file.
//! - `mac` is the hex HMAC-SHA256, under the 32-byte audit key, of the line's canonical form:
//!   the same JSON without the `mac` field. A line is canonical when re-serializing it yields
//!   the same bytes, so any byte edit is caught.
//! - `seq` counts from 1 and continues across rotation.
//!
//! An attacker who can edit the log but not read the key can neither fix up an edited line
//! nor forge an inserted one, and deleting or reordering lines breaks `prev`. Cutting lines
//! off the *end* leaves a valid shorter chain: that is only detectable against a hash recorded
//! elsewhere (see [`verify`]'s `expect`).
//!
//! Writing: each entry is built in memory and written with one `write(2)` on an `O_APPEND`
//! file under a mutex, so lines never interleave. A background thread `fdatasync`s at most
//! once per second when there is something new, and [`AuditLog::close`] (or drop) syncs: a
//! crash loses at most the last second of entries. The log file is `flock`ed while open, so
//! two daemons cannot interleave two chains in one file.
//!
//! Rotation (`max_size`, or [`AuditLog::rotate`] on SIGHUP): `LOG.4` → `LOG.5`, …, `LOG.1` →
//! `LOG.2`, `LOG` → `LOG.1` (the old `LOG.5` is dropped; [`KEEP_ROTATED`] files are kept),
//! and a new `LOG` starts with a `rotate` entry linking to the last hash of `LOG.1`.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError};
use crate::fsutil;

/// Length of the audit key in bytes.
pub const KEY_LEN: usize = 32;
/// How many rotated files (`LOG.1` … `LOG.N`) are kept.
pub const KEEP_ROTATED: u32 = 5;
/// The longest line `verify` and `open` accept; string fields are cut to [`MAX_FIELD`] bytes
/// when written, so real lines stay far below this.
pub const MAX_LINE: usize = 64 * 1024;
/// String fields longer than this are truncated (at a character boundary) when recorded.
pub const MAX_FIELD: usize = 4096;
/// Entries are synced to disk at least this often.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Name of the default log, in `STORE/.tvault/`.
pub const DEFAULT_LOG_NAME: &str = "audit.jsonl";
/// Name of the default key, in `STORE/.tvault/`.
pub const DEFAULT_KEY_NAME: &str = "audit.key";

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
        "{path}: the audit key is accessible to group or others (mode {mode:03o}); \
         it must be readable by its owner only (chmod 600)"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{path}: malformed audit key: {why}")]
    BadKey { path: PathBuf, why: String },
    #[error("{0}: the audit log is in use by another process")]
    InUse(PathBuf),
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

fn io_err(path: &Path) -> impl Fn(io::Error) -> AuditError + '_ {
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
    Rotate,
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
            EventKind::Rotate => "rotate",
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    fn new(event: &Event, time: SystemTime, seq: u64, prev: String) -> Entry {
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

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses one line and checks its MAC and canonical form (not its place in the chain).
pub fn verify_line(key: &[u8], line: &[u8]) -> Result<Entry, String> {
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
    if !mac_ok(key, &entry.canonical(), mac) {
        return Err("MAC mismatch: the line was altered (or written under another key)".into());
    }
    if serde_json::to_vec(&entry).unwrap_or_default() != line {
        return Err("the line is not in canonical form (bytes were altered)".into());
    }
    Ok(entry)
}

// ---------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * if m > 2 { m - 3 } else { m + 9 } + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2025-01-02T03:04:05.678Z`. Times before 1970
/// are written as the epoch.
pub fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses RFC 3339 (`2025-01-02T03:04:05Z`, optional fraction, `Z` or `±HH:MM`; `t`, `z` and
/// a space separator are accepted too) or a plain date `YYYY-MM-DD` (midnight UTC). Returns
/// `None` for anything else, and for times before 1970.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let t = text.trim();
    if !t.is_ascii() || t.len() < 10 {
        return None;
    }
    let (date, rest) = t.split_at(10);
    let b = date.as_bytes();
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = i64::from(digits(&date[0..4])?);
    let m = digits(&date[5..7])?;
    let d = digits(&date[8..10])?;
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    let mut nanos = 0u32;
    if !rest.is_empty() {
        let rest = rest.strip_prefix(['T', 't', ' '])?;
        if rest.len() < 8 {
            return None;
        }
        let (clock, mut zone) = rest.split_at(8);
        let c = clock.as_bytes();
        if c[2] != b':' || c[5] != b':' {
            return None;
        }
        let (hh, mm, ss) = (
            digits(&clock[0..2])?,
            digits(&clock[3..5])?,
            digits(&clock[6..8])?,
        );
        if hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
        // A leap second counts as the last second of its minute.
        secs += i64::from(hh * 3600 + mm * 60 + ss.min(59));
        if let Some(frac) = zone.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return None;
            }
            let (fd, z) = frac.split_at(n);
            let mut padded: String = fd.chars().take(9).collect();
            while padded.len() < 9 {
                padded.push('0');
            }
            nanos = digits(&padded)?;
            zone = z;
        }
        match zone {
            "Z" | "z" => {}
            _ => {
                let sign = match zone.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let z = &zone[1..];
                if z.len() != 5 || z.as_bytes()[2] != b':' {
                    return None;
                }
                let (oh, om) = (digits(&z[0..2])?, digits(&z[3..5])?);
                if oh > 23 || om > 59 {
                    return None;
                }
                secs -= sign * i64::from(oh * 3600 + om * 60);
            }
        }
    }
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

// ---------------------------------------------------------------------------------------
// Paths and key
// ---------------------------------------------------------------------------------------

/// `(log, key)` for a store: `STORE/.tvault/audit.jsonl` and `STORE/.tvault/audit.key`, or,
/// with `log` given (`--audit-log FILE`), `FILE` and `FILE.key` (an explicit `--audit-key`
/// overrides the second).
pub fn default_paths(store_root: &Path, log: Option<&Path>) -> (PathBuf, PathBuf) {
    match log {
        Some(log) => (log.to_path_buf(), suffixed(log, ".key")),
        None => {
            let meta = store_root.join(crate::store::META_DIR);
            (meta.join(DEFAULT_LOG_NAME), meta.join(DEFAULT_KEY_NAME))
        }
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `LOG` without a rotation suffix (`LOG.3` → `LOG`).
fn unrotated(log: &Path) -> PathBuf {
    let Some(name) = log.file_name().and_then(|n| n.to_str()) else {
        return log.to_path_buf();
    };
    match name.rsplit_once('.') {
        Some((base, n)) if !base.is_empty() && digits(n).is_some() => log.with_file_name(base),
        _ => log.to_path_buf(),
    }
}

/// The key that belongs to a log (or a rotated `LOG.N`), for readers that were not told:
/// `audit.key` beside a log in a `.tvault/` directory, else `LOG.key` if it exists.
pub fn default_key_for(log: &Path) -> Option<PathBuf> {
    let base = unrotated(log);
    let parent = base.parent().unwrap_or(Path::new(""));
    if parent.file_name().and_then(|n| n.to_str()) == Some(crate::store::META_DIR) {
        return Some(parent.join(DEFAULT_KEY_NAME));
    }
    let key = suffixed(&base, ".key");
    key.exists().then_some(key)
}

/// The rotated files of `log` that exist, oldest first, followed by `log` itself.
pub fn with_rotated(log: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=KEEP_ROTATED)
        .rev()
        .map(|n| rotated_name(log, n))
        .filter(|p| p.exists())
        .collect();
    out.push(log.to_path_buf());
    out
}

fn rotated_name(log: &Path, n: u32) -> PathBuf {
    suffixed(log, &format!(".{n}"))
}

/// Reads an audit key file: 64 hex digits (optionally followed by a newline) or 32 raw bytes.
/// Does not check permissions (see [`AuditLog::open`]).
pub fn read_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, AuditError> {
    let bytes = Zeroizing::new(fs::read(path).map_err(io_err(path))?);
    let bad = |why: &str| AuditError::BadKey {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let text = bytes.trim_ascii();
    if text.len() == 2 * KEY_LEN && text.iter().all(u8::is_ascii_hexdigit) {
        let key = hex::decode(text).map_err(|_| bad("invalid hex"))?;
        return Ok(Zeroizing::new(key));
    }
    if bytes.len() == KEY_LEN {
        return Ok(Zeroizing::new(bytes.to_vec()));
    }
    Err(bad("expected 64 hex digits or 32 raw bytes"))
}

/// Loads the key for writing: refuses one that group or others can access; creates a new
/// random one (hex, mode 0600) if there is none.
fn load_or_create_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, AuditError> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(AuditError::KeyPermissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            read_key(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_key(path)?;
            read_key(path)
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes a fresh key atomically and without replacing one that another process created in
/// the meantime: the key is written (and synced) under a temporary name, then hard-linked to
/// `path`, which fails if `path` exists.
fn create_key(path: &Path) -> Result<(), AuditError> {
    let key: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(crypto::random_array()?);
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.as_ref())));
    let tag: [u8; 6] = crypto::random_array()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = path.with_file_name(format!(
        ".{name}{}new-{}",
        fsutil::TEMP_MARKER,
        hex::encode(tag)
    ));
    fsutil::write_atomic(
        &staging,
        0o600,
        |f| f.write_all(text.as_bytes()).map_err(io_err(&staging)),
        io_err(&staging),
    )?;
    let linked = fs::hard_link(&staging, path);
    let _ = fs::remove_file(&staging);
    match linked {
        Ok(()) => {}
        // Another process won the race: use its key.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    }
    log::info!("created audit key {}", path.display());
    fsutil::sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(io_err(path))
}

// ---------------------------------------------------------------------------------------
// Reading lines
// ---------------------------------------------------------------------------------------

/// One line of a log file as read: its number (from 1), its bytes without the newline, and
/// whether it ended with a newline (only the last line of a file can lack one).
pub struct RawLine<'a> {
    pub number: u64,
    pub bytes: &'a [u8],
    pub terminated: bool,
}

/// Calls `f` on every line of `path`. A line longer than [`MAX_LINE`] is passed cut to that
/// length (which fails to parse). Stops early when `f` returns `false`.
pub fn for_each_line(path: &Path, mut f: impl FnMut(RawLine<'_>) -> bool) -> Result<(), io::Error> {
    let file = File::open(path)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::with_capacity(1024);
    let mut number = 0u64;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let terminated = buf.last() == Some(&b'\n');
        if terminated {
            buf.pop();
        } else if buf.len() > MAX_LINE {
            // Skip the rest of the overlong line.
            let mut sink = Vec::new();
            reader.read_until(b'\n', &mut sink)?;
        }
        let keep_going = f(RawLine {
            number,
            bytes: &buf,
            terminated: terminated || buf.len() > MAX_LINE,
        });
        if !keep_going {
            return Ok(());
        }
    }
}

/// The last line of an open log (`size` bytes) and why it is unusable, if it is.
fn read_last_line(file: &File, size: u64) -> io::Result<Result<Vec<u8>, String>> {
    let want = size.min(MAX_LINE as u64 + 1);
    let start = size - want;
    let mut buf = vec![0u8; want as usize];
    file.read_exact_at(&mut buf, start)?;
    if buf.last() != Some(&b'\n') {
        return Ok(Err("the last line is incomplete (no newline)".into()));
    }
    buf.pop();
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => Ok(Ok(buf[i + 1..].to_vec())),
        None if start == 0 => Ok(Ok(buf)),
        None => Ok(Err("the last line is too long".into())),
    }
}

// ---------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum RotateReason {
    MaxSize,
    Requested,
    CorruptTail,
}

impl RotateReason {
    fn code(self) -> &'static str {
        match self {
            RotateReason::MaxSize => "max-size",
            RotateReason::Requested => "requested",
            RotateReason::CorruptTail => "corrupt-tail",
        }
    }
}

struct State {
    /// `None` once closed.
    file: Option<Arc<File>>,
    /// Seq of the last entry (0: none yet).
    seq: u64,
    /// The hash the next entry links to: the last line's hash, or the log id.
    last_hash: String,
    /// Bytes in the current file.
    size: u64,
    /// Entries in the current file other than its opening `rotate` entry.
    events_in_file: u64,
    entries_written: u64,
    last_time: Option<SystemTime>,
    /// Written but not yet synced.
    dirty: bool,
    /// The file may end in a partial line (a failed write could not be undone): the next
    /// record starts a new file rather than append to a broken chain.
    broken_tail: Option<String>,
}

struct Shared {
    path: PathBuf,
    key: Zeroizing<Vec<u8>>,
    max_size: Option<u64>,
    state: Mutex<State>,
    stop: Mutex<bool>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the state consistent enough: every
    // update happens after the write it describes succeeded.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An open audit log. `Send + Sync`: share it with `Arc` between FUSE and control threads.
pub struct AuditLog {
    shared: Arc<Shared>,
    syncer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

fn open_log_file(path: &Path) -> Result<File, AuditError> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(AuditError::InUse(path.to_path_buf()));
        }
        return Err(io_err(path)(e));
    }
    Ok(file)
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path` for appending, with the key at
    /// `key_path` (created if absent; refused if group or others can access it). An existing
    /// log continues its chain after checking its last line; if that line does not verify,
    /// the file is rotated away (with a warning) and a new chain starts. With `max_size`, the
    /// log rotates before a line would take it past that many bytes.
    pub fn open(
        path: &Path,
        key_path: &Path,
        max_size: Option<u64>,
    ) -> Result<AuditLog, AuditError> {
        let key = load_or_create_key(key_path)?;
        let file = open_log_file(path)?;
        let meta = file.metadata().map_err(io_err(path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            log::warn!(
                "{}: audit log has mode {mode:03o}; 600 is recommended",
                path.display()
            );
        }
        let size = meta.len();
        let mut state = State {
            file: Some(Arc::new(file)),
            seq: 0,
            last_hash: String::new(),
            size,
            events_in_file: 0,
            entries_written: 0,
            last_time: None,
            dirty: false,
            broken_tail: None,
        };
        if size == 0 {
            state.last_hash = hex::encode(crypto::random_array::<32>()?);
        } else {
            let file = state.file.as_ref().ok_or(AuditError::Closed)?;
            let tail = read_last_line(file, size).map_err(io_err(path))?;
            match tail.and_then(|line| verify_line(&key, &line).map(|e| (e, line))) {
                Ok((entry, line)) => {
                    state.seq = entry.seq;
                    state.last_hash = line_hash(&line);
                    state.events_in_file = u64::from(entry.event != EventKind::Rotate);
                    state.last_time = entry.parsed_time();
                }
                Err(why) => state.broken_tail = Some(why),
            }
        }
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            key,
            max_size,
            state: Mutex::new(state),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        {
            let mut st = lock(&shared.state);
            if let Some(why) = st.broken_tail.clone() {
                log::warn!(
                    "{}: the last line does not verify ({why}); moving the file aside and \
                     starting a new chain",
                    path.display()
                );
                shared.rotate_locked(&mut st, RotateReason::CorruptTail)?;
            }
        }
        let for_thread = shared.clone();
        let syncer = std::thread::Builder::new()
            .name("tvault-audit-sync".into())
            .spawn(move || for_thread.sync_loop())
            .map_err(io_err(path))?;
        Ok(AuditLog {
            shared,
            syncer: Mutex::new(Some(syncer)),
        })
    }

    /// Appends one entry. An error means the entry is not in the log: callers must then
    /// refuse what they were about to allow (fail closed).
    pub fn record(&self, event: &Event) -> Result<(), AuditError> {
        let result = self.shared.record(event);
        if let Err(e) = &result {
            log::error!(
                "audit log: cannot record {} event: {e}",
                event.kind.as_str()
            );
        }
        result
    }

    /// Starts a new file now (the daemon calls this on SIGHUP). Does nothing if the current
    /// file is empty.
    pub fn rotate(&self) -> Result<(), AuditError> {
        let mut st = lock(&self.shared.state);
        if st.file.is_none() {
            return Err(AuditError::Closed);
        }
        if st.size == 0 {
            return Ok(());
        }
        self.shared.rotate_locked(&mut st, RotateReason::Requested)
    }

    /// Syncs what was written to disk now.
    pub fn sync(&self) -> Result<(), AuditError> {
        self.shared.sync()
    }

    /// Syncs and closes the log; later records fail with [`AuditError::Closed`]. Dropping
    /// the log does the same (ignoring errors).
    pub fn close(&self) -> Result<(), AuditError> {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        if let Some(handle) = lock(&self.syncer).take() {
            let _ = handle.join();
        }
        let file = lock(&self.shared.state).file.take();
        match file {
            Some(file) => file.sync_all().map_err(io_err(&self.shared.path)),
            None => Ok(()),
        }
    }

    /// Entries this `AuditLog` wrote since it was opened (rotation entries included).
    pub fn entries_written(&self) -> u64 {
        lock(&self.shared.state).entries_written
    }

    /// Time of the newest entry in the log (read from the file at open, if it had one).
    pub fn last_entry_time(&self) -> Option<SystemTime> {
        lock(&self.shared.state).last_time
    }

    /// Hex hash of the newest line (what the next entry's `prev` will be); for a log without
    /// entries yet, its random log id.
    pub fn last_hash(&self) -> String {
        lock(&self.shared.state).last_hash.clone()
    }

    /// `seq` of the newest entry (0 if none).
    pub fn last_seq(&self) -> u64 {
        lock(&self.shared.state).seq
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            log::error!("audit log: {e}");
        }
    }
}

impl Shared {
    fn record(&self, event: &Event) -> Result<(), AuditError> {
        let mut st = lock(&self.state);
        if st.file.is_none() {
            return Err(AuditError::Closed);
        }
        if st.broken_tail.is_some() {
            self.rotate_locked(&mut st, RotateReason::CorruptTail)?;
        }
        let now = SystemTime::now();
        let mut line = self.line_for(&st, event, now);
        if let Some(max) = self.max_size {
            if st.events_in_file > 0 && st.size + line.len() as u64 > max {
                match self.rotate_locked(&mut st, RotateReason::MaxSize) {
                    Ok(()) => line = self.line_for(&st, event, now),
                    // Keep logging to the full file rather than refuse every open.
                    Err(e) => log::error!("audit log: rotation failed, continuing: {e}"),
                }
            }
        }
        self.append(&mut st, &line, now)?;
        st.events_in_file += 1;
        Ok(())
    }

    /// The next line (with newline) for `event`.
    fn line_for(&self, st: &State, event: &Event, now: SystemTime) -> Vec<u8> {
        let entry = Entry::new(event, now, st.seq + 1, st.last_hash.clone());
        let mut line = signed_line(&self.key, entry);
        line.push(b'\n');
        line
    }

    /// Writes `line` with one write(2) and advances the chain. On a short write the partial
    /// line is cut off again; if even that fails, the next record starts a new file.
    fn append(&self, st: &mut State, line: &[u8], now: SystemTime) -> Result<(), AuditError> {
        let file = st.file.clone().ok_or(AuditError::Closed)?;
        loop {
            match (&*file).write(line) {
                Ok(n) if n == line.len() => break,
                Ok(n) => {
                    if n > 0 {
                        if let Err(e) = file.set_len(st.size) {
                            st.broken_tail = Some(format!("a partial line could not be cut: {e}"));
                        }
                    }
                    return Err(AuditError::ShortWrite {
                        path: self.path.clone(),
                        written: n,
                        len: line.len(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&self.path)(e)),
            }
        }
        let body = &line[..line.len() - 1];
        st.seq += 1;
        st.last_hash = line_hash(body);
        st.size += line.len() as u64;
        st.entries_written += 1;
        st.last_time = Some(now);
        st.dirty = true;
        Ok(())
    }

    /// Shifts `LOG.N` up, renames `LOG` to `LOG.1` and starts a new `LOG` whose first line is
    /// a `rotate` entry linked to the old file's last hash (for a corrupt tail: to a fresh log
    /// id, starting again at seq 1, since the old chain's end cannot be trusted).
    fn rotate_locked(&self, st: &mut State, reason: RotateReason) -> Result<(), AuditError> {
        let old = st.file.clone().ok_or(AuditError::Closed)?;
        old.sync_all().map_err(io_err(&self.path))?;
        st.dirty = false;
        for n in (1..KEEP_ROTATED).rev() {
            let from = rotated_name(&self.path, n);
            match fs::rename(&from, rotated_name(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&from)(e)),
                _ => {}
            }
        }
        let first = rotated_name(&self.path, 1);
        match fs::rename(&self.path, &first) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&self.path)(e)),
            _ => {}
        }
        let new = open_log_file(&self.path)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if let Err(e) = fsutil::sync_dir(dir) {
            log::warn!("{}: cannot sync directory: {e}", dir.display());
        }
        let mut event = Event::from_pid(EventKind::Rotate, std::process::id())
            .reason(reason.code())
            .detail(format!("previous file: {}", first.display()));
        if let RotateReason::CorruptTail = reason {
            if let Some(why) = &st.broken_tail {
                event.detail = Some(format!("previous file: {} ({why})", first.display()));
            }
            st.seq = 0;
            st.last_hash = hex::encode(crypto::random_array::<32>()?);
        }
        st.file = Some(Arc::new(new));
        st.size = 0;
        st.events_in_file = 0;
        st.broken_tail = None;
        let now = SystemTime::now();
        let line = self.line_for(st, &event, now);
        let result = self.append(st, &line, now);
        log::info!(
            "audit log rotated ({}): {} -> {}",
            reason.code(),
            self.path.display(),
            first.display()
        );
        result
    }

    fn sync(&self) -> Result<(), AuditError> {
        let file = {
            let mut st = lock(&self.state);
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            st.file.clone()
        };
        let Some(file) = file else {
            return Ok(());
        };
        file.sync_data().map_err(|e| {
            lock(&self.state).dirty = true;
            io_err(&self.path)(e)
        })
    }

    fn sync_loop(&self) {
        loop {
            {
                let stop = lock(&self.stop);
                let (stop, _) = self
                    .wake
                    .wait_timeout_while(stop, SYNC_INTERVAL, |s| !*s)
                    .unwrap_or_else(|p| p.into_inner());
                if *stop {
                    return;
                }
            }
            if let Err(e) = self.sync() {
                log::error!("audit log: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------

/// Where a verified chain stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Lines checked, over all files.
    pub entries: u64,
    pub files: usize,
    /// `seq` of the last entry.
    pub last_seq: Option<u64>,
    /// Hash of the last line; `None` if there were no entries.
    pub last_hash: Option<String>,
    /// The `prev` of the first entry: the log id, or the last hash of a file not given.
    pub anchor: Option<String>,
    /// Where the expected hash was found (file, line), if one was given.
    pub expected_at: Option<(PathBuf, u64)>,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} entries, chain intact", self.entries)?;
        if let Some(hash) = &self.last_hash {
            write!(
                f,
                "; last hash {hash} (keep it elsewhere to detect tail truncation)"
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{}, line {line}: {why}", file.display())]
    Broken {
        file: PathBuf,
        line: u64,
        why: String,
    },
    #[error(
        "the expected hash {expected} is not in the log (it ends at {}): \
         entries were cut off the end, or the log was replaced",
        last_hash.as_deref().unwrap_or("no entries")
    )]
    Truncated {
        expected: String,
        last_hash: Option<String>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no log files given")]
    NoFiles,
}

/// Checks `paths` (oldest first) as one chain under `key`: every line parses, is canonical,
/// carries a valid MAC, has `seq` one more than the line before and `prev` equal to its
/// hash; a later file must start with the `rotate` entry linking to the previous file; the
/// chain must start at seq 1 or with a `rotate` entry (older files dropped). Returns the
/// first broken line. With `expect` (a last hash recorded earlier), that hash must occur in
/// the chain, which detects lines cut off the end since it was recorded.
pub fn verify(
    paths: &[PathBuf],
    key: &[u8],
    expect: Option<&str>,
) -> Result<VerifyReport, VerifyError> {
    if paths.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    let expect = expect.map(|h| h.trim().to_ascii_lowercase());
    let mut report = VerifyReport {
        entries: 0,
        files: paths.len(),
        last_seq: None,
        last_hash: None,
        anchor: None,
        expected_at: None,
    };
    for (index, path) in paths.iter().enumerate() {
        let mut broken: Option<(u64, String)> = None;
        let mut first_in_file = true;
        for_each_line(path, |raw| {
            let why = check_line(key, &raw, index > 0 && first_in_file, &mut report);
            first_in_file = false;
            match why {
                Ok(hash) => {
                    if expect.as_deref() == Some(hash.as_str())
                        || (report.entries == 1 && expect.as_deref() == report.anchor.as_deref())
                    {
                        report.expected_at = Some((path.clone(), raw.number));
                    }
                    true
                }
                Err(why) => {
                    broken = Some((raw.number, why));
                    false
                }
            }
        })
        .map_err(|source| VerifyError::Io {
            path: path.clone(),
            source,
        })?;
        if let Some((line, why)) = broken {
            return Err(VerifyError::Broken {
                file: path.clone(),
                line,
                why,
            });
        }
    }
    if let Some(expected) = expect {
        if report.expected_at.is_none() {
            return Err(VerifyError::Truncated {
                expected,
                last_hash: report.last_hash,
            });
        }
    }
    Ok(report)
}

/// Checks one line against the chain so far and advances it; returns the line's hash.
fn check_line(
    key: &[u8],
    raw: &RawLine<'_>,
    starts_later_file: bool,
    report: &mut VerifyReport,
) -> Result<String, String> {
    if !raw.terminated {
        return Err("incomplete line (no newline at the end of the file)".into());
    }
    if raw.bytes.is_empty() {
        return Err("empty line".into());
    }
    if raw.bytes.len() > MAX_LINE {
        return Err(format!("line longer than {MAX_LINE} bytes"));
    }
    let entry = verify_line(key, raw.bytes)?;
    match (&report.last_hash, report.last_seq) {
        (Some(last_hash), Some(last_seq)) => {
            if starts_later_file && entry.event != EventKind::Rotate {
                return Err("a file after the first must start with its rotate entry; \
                     lines are missing or the files are out of order"
                    .into());
            }
            if entry.prev != *last_hash {
                return Err(format!(
                    "prev does not match the hash of the line before: a line was inserted, \
                     deleted or moved before this one (or the files are out of order){}",
                    if starts_later_file {
                        " at this file boundary"
                    } else {
                        ""
                    }
                ));
            }
            if entry.seq != last_seq.wrapping_add(1) {
                return Err(format!("seq {} does not follow {last_seq}", entry.seq));
            }
        }
        _ => {
            if entry.seq != 1 && entry.event != EventKind::Rotate {
                return Err(format!(
                    "the chain starts at seq {} with a {} entry: the lines before it are missing",
                    entry.seq,
                    entry.event.as_str()
                ));
            }
            report.anchor = Some(entry.prev.clone());
        }
    }
    let hash = line_hash(raw.bytes);
    report.entries += 1;
    report.last_seq = Some(entry.seq);
    report.last_hash = Some(hash.clone());
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let key = dir.path().join("audit.key");
        (dir, log, key)
    }

    fn open_event(i: u32) -> Event {
        Event::new(EventKind::Open)
            .uid(1000 + i)
            .user(format!("user{i}"))
            .path(format!("m/file{i}.safetensors"))
            .open_flags(libc::O_RDONLY)
            .allow()
    }

    fn write_log(log: &Path, key: &Path, n: u32) -> String {
        let audit = AuditLog::open(log, key, None).unwrap();
        for i in 0..n {
            audit.record(&open_event(i)).unwrap();
        }
        let last = audit.last_hash();
        audit.close().unwrap();
        last
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn put_lines(path: &Path, lines: &[String]) {
        fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn broken_at(result: Result<VerifyReport, VerifyError>) -> (PathBuf, u64, String) {
        match result {
            Err(VerifyError::Broken { file, line, why }) => (file, line, why),
            other => panic!("expected a broken line, got {other:?}"),
        }
    }

    #[test]
    fn time_format_and_parse() {
        let t = UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        assert_eq!(format_time(t), "2025-01-02T03:04:05.678Z");
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(parse_time("2025-01-02T03:04:05.678Z"), Some(t));
        assert_eq!(parse_time("2025-01-02t05:04:05.678+02:00"), Some(t));
        assert_eq!(
            parse_time("2025-01-02"),
            Some(UNIX_EPOCH + Duration::from_secs(1_735_776_000))
        );
        assert_eq!(
            parse_time("2025-01-01 22:04:05-05:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_735_787_045))
        );
        for bad in [
            "",
            "2025-13-01",
            "2025-02-29",
            "2025-01-02T25:00:00Z",
            "2025-01-02T03:04:05",
            "2025-01-02T03:04:05.Z",
            "2025-01-02T03:04:05+0200",
            "1969-12-31",
            "2025-01-02Tx",
            "２０２５-01-02",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        // Round trip over a range of days, including leap years.
        for day in (0..80_000u64).step_by(97) {
            let t = UNIX_EPOCH + Duration::from_millis(day * 86_400_000 + 12_345_678);
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
    }

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
    fn lines_have_fixed_fields_and_chain() {
        let (_dir, log, key) = setup();
        let audit = AuditLog::open(&log, &key, None).unwrap();
        let id = audit.last_hash();
        audit
            .record(
                &Event::from_pid(EventKind::Open, std::process::id())
                    .uid(1001)
                    .user("alice")
                    .path("m/w.safetensors")
                    .open_flags(libc::O_RDONLY)
                    .deny("locked"),
            )
            .unwrap();
        audit.record(&Event::new(EventKind::Mount)).unwrap();
        assert_eq!(audit.entries_written(), 2);
        assert_eq!(audit.last_seq(), 2);
        assert!(audit.last_entry_time().is_some());
        let all = lines(&log);
        let first: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
        let keys: Vec<&str> = first
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // serde_json's map is sorted, so check the raw order instead.
        assert!(keys.contains(&"exe"));
        let order = [
            "\"time\"",
            "\"seq\"",
            "\"event\"",
            "\"uid\"",
            "\"user\"",
            "\"pid\"",
            "\"process\"",
            "\"exe\"",
            "\"path\"",
            "\"flags\"",
            "\"decision\"",
            "\"reason\"",
            "\"prev\"",
            "\"mac\"",
        ];
        let positions: Vec<usize> = order.iter().map(|k| all[0].find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{}", all[0]);
        assert_eq!(first["event"], "open");
        assert_eq!(first["decision"], "deny");
        assert_eq!(first["reason"], "locked");
        assert_eq!(first["flags"], "O_RDONLY");
        assert_eq!(first["seq"], 1);
        assert_eq!(first["prev"], id.as_str());
        assert!(first["process"].as_str().is_some_and(|p| !p.is_empty()));
        let second: serde_json::Value = serde_json::from_str(&all[1]).unwrap();
        assert_eq!(second["prev"], line_hash(all[0].as_bytes()).as_str());
        assert!(second.get("uid").is_none() && second.get("decision").is_none());
        assert!(!all[1].contains("null"));
        let last = audit.last_hash();
        audit.close().unwrap();
        assert!(matches!(
            audit.record(&Event::new(EventKind::Lock)),
            Err(AuditError::Closed)
        ));
        let key_bytes = read_key(&key).unwrap();
        let report = verify(std::slice::from_ref(&log), &key_bytes, Some(&last)).unwrap();
        assert_eq!(report.entries, 2);
        assert_eq!(report.last_hash.as_deref(), Some(last.as_str()));
        assert_eq!(report.anchor.as_deref(), Some(id.as_str()));
        assert_eq!(
            fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn reopen_continues_the_chain() {
        let (_dir, log, key) = setup();
        write_log(&log, &key, 3);
        let audit = AuditLog::open(&log, &key, None).unwrap();
        assert_eq!(audit.last_seq(), 3);
        assert!(audit.last_entry_time().is_some());
        audit.record(&open_event(9)).unwrap();
        audit.close().unwrap();
        assert_eq!(lines(&log).len(), 4);
        let report = verify(&[log], &read_key(&key).unwrap(), None).unwrap();
        assert_eq!(report.entries, 4);
        assert_eq!(report.last_seq, Some(4));
    }

    #[test]
    fn one_writer_per_log() {
        let (_dir, log, key) = setup();
        let a = AuditLog::open(&log, &key, None).unwrap();
        assert!(matches!(
            AuditLog::open(&log, &key, None),
            Err(AuditError::InUse(_))
        ));
        drop(a);
        AuditLog::open(&log, &key, None).unwrap();
    }

    #[test]
    fn corrupt_tail_starts_a_new_file() {
        let (_dir, log, key) = setup();
        write_log(&log, &key, 3);
        let mut all = lines(&log);
        all[2] = all[2].replace("user2", "userX");
        put_lines(&log, &all);
        let audit = AuditLog::open(&log, &key, None).unwrap();
        audit.record(&open_event(5)).unwrap();
        audit.close().unwrap();
        let moved = rotated_name(&log, 1);
        assert_eq!(lines(&moved), all);
        let fresh = lines(&log);
        assert_eq!(fresh.len(), 2);
        assert!(fresh[0].contains("\"reason\":\"corrupt-tail\""));
        let k = read_key(&key).unwrap();
        assert_eq!(
            verify(std::slice::from_ref(&log), &k, None)
                .unwrap()
                .entries,
            2
        );
        let (file, line, _) = broken_at(verify(&[moved.clone(), log.clone()], &k, None));
        assert_eq!((file, line), (moved, 3));

        // A partial last line (a crash mid-write) is handled the same way.
        let mut bytes = fs::read(&log).unwrap();
        bytes.extend_from_slice(b"{\"time\":\"20");
        fs::write(&log, bytes).unwrap();
        let audit = AuditLog::open(&log, &key, None).unwrap();
        audit.close().unwrap();
        assert_eq!(lines(&log).len(), 1);
        verify(std::slice::from_ref(&log), &k, None).unwrap();
        assert!(rotated_name(&log, 2).exists());
    }

    #[test]
    fn detects_edit_insert_delete_reorder() {
        let (_dir, log, key) = setup();
        write_log(&log, &key, 6);
        let k = read_key(&key).unwrap();
        let orig = lines(&log);
        verify(std::slice::from_ref(&log), &k, None).unwrap();

        // Edit a field (MAC fails).
        let mut edited = orig.clone();
        edited[2] = edited[2].replace("\"allow\"", "\"deny\"");
        put_lines(&log, &edited);
        let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), &k, None));
        assert_eq!(line, 3);
        assert!(why.contains("MAC"), "{why}");

        // Same content, different bytes (whitespace): not canonical.
        let mut spaced = orig.clone();
        spaced[1] = spaced[1].replacen(",", ", ", 1);
        put_lines(&log, &spaced);
        let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), &k, None));
        assert_eq!(line, 2);
        assert!(why.contains("canonical"), "{why}");

        // Insert a copy of a valid line.
        let mut inserted = orig.clone();
        inserted.insert(4, orig[1].clone());
        put_lines(&log, &inserted);
        assert_eq!(broken_at(verify(std::slice::from_ref(&log), &k, None)).1, 5);

        // Insert a forged line.
        let mut forged = orig.clone();
        forged.insert(
            3,
            orig[3]
                .replace("\"seq\":4", "\"seq\":99")
                .replace("user3", "mallory"),
        );
        put_lines(&log, &forged);
        assert_eq!(broken_at(verify(std::slice::from_ref(&log), &k, None)).1, 4);

        // Delete a line: the next one no longer links.
        let mut deleted = orig.clone();
        deleted.remove(2);
        put_lines(&log, &deleted);
        let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), &k, None));
        assert_eq!(line, 3);
        assert!(why.contains("prev"), "{why}");

        // Delete the first line: the chain no longer starts at seq 1.
        put_lines(&log, &orig[1..]);
        assert_eq!(broken_at(verify(std::slice::from_ref(&log), &k, None)).1, 1);

        // Reorder two lines.
        let mut swapped = orig.clone();
        swapped.swap(3, 4);
        put_lines(&log, &swapped);
        assert_eq!(broken_at(verify(std::slice::from_ref(&log), &k, None)).1, 4);

        // An empty line, and garbage.
        let mut blank = orig.clone();
        blank.insert(2, String::new());
        put_lines(&log, &blank);
        assert_eq!(broken_at(verify(std::slice::from_ref(&log), &k, None)).1, 3);
        let mut garbage = orig.clone();
        garbage[5] = "\u{0}\u{ff}not json".into();
        put_lines(&log, &garbage);
        assert_eq!(broken_at(verify(std::slice::from_ref(&log), &k, None)).1, 6);

        // The wrong key.
        put_lines(&log, &orig);
        assert_eq!(
            broken_at(verify(std::slice::from_ref(&log), &[7u8; 32], None)).1,
            1
        );
    }

    #[test]
    fn truncated_tail_needs_a_recorded_hash() {
        let (_dir, log, key) = setup();
        let last = write_log(&log, &key, 5);
        let k = read_key(&key).unwrap();
        let orig = lines(&log);
        put_lines(&log, &orig[..3]);
        // The shorter chain is valid on its own...
        assert_eq!(
            verify(std::slice::from_ref(&log), &k, None)
                .unwrap()
                .entries,
            3
        );
        // ...but not against the hash recorded before the cut.
        assert!(matches!(
            verify(std::slice::from_ref(&log), &k, Some(&last)),
            Err(VerifyError::Truncated { .. })
        ));
        // A recorded hash stays valid when the log has grown since.
        put_lines(&log, &orig);
        let mid = line_hash(orig[2].as_bytes());
        let report = verify(std::slice::from_ref(&log), &k, Some(&mid.to_uppercase())).unwrap();
        assert_eq!(report.expected_at, Some((log.clone(), 3)));
        // A line cut in the middle is reported as incomplete.
        let bytes = fs::read(&log).unwrap();
        fs::write(&log, &bytes[..bytes.len() - 10]).unwrap();
        let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), &k, None));
        assert_eq!(line, 5);
        assert!(why.contains("incomplete"), "{why}");
    }

    #[test]
    fn rotation_keeps_the_chain_across_files() {
        let (_dir, log, key) = setup();
        let audit = AuditLog::open(&log, &key, Some(2000)).unwrap();
        for i in 0..40 {
            audit.record(&open_event(i)).unwrap();
        }
        audit.rotate().unwrap();
        audit.record(&open_event(99)).unwrap();
        let last = audit.last_hash();
        let written = audit.entries_written();
        audit.close().unwrap();
        let files = with_rotated(&log);
        assert_eq!(files.len(), KEEP_ROTATED as usize + 1, "{files:?}");
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 2000, "{}", f.display());
            assert_eq!(fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let current = lines(&log);
        assert_eq!(current.len(), 2);
        assert!(current[0].contains("\"event\":\"rotate\""));
        assert!(current[0].contains("\"reason\":\"requested\""));
        let k = read_key(&key).unwrap();
        let report = verify(&files, &k, Some(&last)).unwrap();
        assert_eq!(report.last_hash.as_deref(), Some(last.as_str()));
        assert_eq!(report.last_seq, Some(written));
        // Older files were dropped: the chain starts at a rotate entry.
        assert!(report.anchor.is_some());
        // Each file verifies alone, too (it starts with a rotate entry).
        for f in &files {
            verify(std::slice::from_ref(f), &k, None).unwrap();
        }
        // Out of order, or with a file missing in the middle: the boundary is reported.
        let mut wrong = files.clone();
        wrong.swap(1, 2);
        let (file, line, _) = broken_at(verify(&wrong, &k, None));
        assert_eq!((file, line), (wrong[1].clone(), 1));
        let mut gap = files.clone();
        gap.remove(2);
        let (file, line, why) = broken_at(verify(&gap, &k, None));
        assert_eq!((file, line), (gap[2].clone(), 1));
        assert!(why.contains("boundary"), "{why}");
        // Reopening continues after the rotation.
        let audit = AuditLog::open(&log, &key, Some(2000)).unwrap();
        audit.record(&open_event(100)).unwrap();
        audit.close().unwrap();
        verify(&with_rotated(&log), &k, None).unwrap();
        // Rotating an empty log does nothing.
        let (_dir2, log2, key2) = setup();
        let empty = AuditLog::open(&log2, &key2, None).unwrap();
        empty.rotate().unwrap();
        assert!(!rotated_name(&log2, 1).exists());
    }

    #[test]
    fn concurrent_writers_do_not_interleave() {
        let (_dir, log, key) = setup();
        let audit = Arc::new(AuditLog::open(&log, &key, None).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let audit = audit.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let event =
                            open_event(t * 1000 + i).detail("x".repeat((i as usize * 37) % 3000));
                        audit.record(&event).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(audit.entries_written(), 1600);
        audit.close().unwrap();
        let all = lines(&log);
        assert_eq!(all.len(), 1600);
        for l in &all {
            parse_entry(l.as_bytes()).unwrap();
        }
        let report = verify(&[log], &read_key(&key).unwrap(), None).unwrap();
        assert_eq!(report.entries, 1600);
    }

    #[test]
    fn key_file_handling() {
        let (_dir, log, key) = setup();
        let audit = AuditLog::open(&log, &key, None).unwrap();
        drop(audit);
        let meta = fs::metadata(&key).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&key).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert_eq!(read_key(&key).unwrap().len(), KEY_LEN);
        // No staging files left behind.
        assert_eq!(fs::read_dir(key.parent().unwrap()).unwrap().count(), 2);

        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            AuditLog::open(&log, &key, None),
            Err(AuditError::KeyPermissions { mode: 0o640, .. })
        ));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o604)).unwrap();
        assert!(AuditLog::open(&log, &key, None).is_err());
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        AuditLog::open(&log, &key, None).unwrap();

        // Raw 32-byte keys are accepted; anything else is refused.
        fs::write(&key, [9u8; 32]).unwrap();
        assert_eq!(read_key(&key).unwrap().as_slice(), &[9u8; 32]);
        fs::write(&key, b"short").unwrap();
        assert!(matches!(read_key(&key), Err(AuditError::BadKey { .. })));
        assert!(matches!(
            AuditLog::open(&log, &key, None),
            Err(AuditError::BadKey { .. })
        ));
    }

    #[test]
    fn unwritable_log_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        if !Path::new("/dev/full").exists() {
            return;
        }
        let audit = AuditLog::open(Path::new("/dev/full"), &key, None).unwrap();
        assert!(audit.record(&open_event(1)).is_err());
        assert_eq!(audit.entries_written(), 0);
        assert_eq!(audit.last_seq(), 0);
    }

    #[test]
    fn paths() {
        let (log, key) = default_paths(Path::new("/s"), None);
        assert_eq!(log, Path::new("/s/.tvault/audit.jsonl"));
        assert_eq!(key, Path::new("/s/.tvault/audit.key"));
        let (log, key) = default_paths(Path::new("/s"), Some(Path::new("/var/log/a.jsonl")));
        assert_eq!(log, Path::new("/var/log/a.jsonl"));
        assert_eq!(key, Path::new("/var/log/a.jsonl.key"));
        assert_eq!(
            default_key_for(Path::new("/s/.tvault/audit.jsonl.3")),
            Some(PathBuf::from("/s/.tvault/audit.key"))
        );
        assert_eq!(default_key_for(Path::new("/nonexistent/x.jsonl")), None);
        assert_eq!(
            unrotated(Path::new("/a/x.jsonl.12")),
            Path::new("/a/x.jsonl")
        );
        assert_eq!(unrotated(Path::new("/a/x.jsonl")), Path::new("/a/x.jsonl"));
    }

    #[test]
    fn long_fields_are_clipped() {
        let (_dir, log, key) = setup();
        let audit = AuditLog::open(&log, &key, None).unwrap();
        audit
            .record(&Event::new(EventKind::Open).path("é".repeat(MAX_FIELD)))
            .unwrap();
        audit.close().unwrap();
        let entry = parse_entry(lines(&log)[0].as_bytes()).unwrap();
        assert!(entry.path.unwrap().len() <= MAX_FIELD + 3);
        verify(&[log], &read_key(&key).unwrap(), None).unwrap();
    }
}
