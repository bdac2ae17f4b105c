//! What is recorded: the kinds of event, the decision, and [`Event`], the builder callers fill
//! in before handing it to `AuditLog::record`. How an event becomes a line is `line`'s job.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::system;

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
    /// symlink(2): the link's path, and its target as `target`.
    Symlink,
    /// truncate(2) by path: a new version committed without an open.
    Truncate,
    /// utimensat(2) on a file or directory.
    SetTimes,
    /// chmod(2) through the mount.
    Chmod,
    /// chown(2) through the mount (only a group change to one of the owner's groups is
    /// allowed), or `tvault chown`.
    Chown,
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
            EventKind::Symlink => "symlink",
            EventKind::Truncate => "truncate",
            EventKind::SetTimes => "set-times",
            EventKind::Chmod => "chmod",
            EventKind::Chown => "chown",
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
    /// The new path of a `rename`; the target of a `symlink` (lossy UTF-8).
    pub target: Option<String>,
    /// Open flags as text, see `open_flags_text`.
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
    fn process_of(mut self, pid: u32) -> Self {
        self.pid = Some(pid);
        self.process = system::process_comm(pid);
        self.exe = system::process_exe(pid);
        self
    }

    /// Sets `pid` only (see [`Event::from_pid`] to fill `process` and `exe` too).
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

    /// Open flags as passed to open(2) / by FUSE; stored as text (see `open_flags_text`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
