//! Answering what an open would decide, without opening: `access(2)`, and `tvault why`,
//! which says in words why the caller cannot read or write a path. Both walk the same
//! checks as lookup and open, in the same order: search permission on every directory on
//! the way, the entry's mode bits, an unlocked keyring (a writer for writing), and a key
//! slot that opens the file. Neither is audited: neither releases plaintext or changes
//! anything, and `tvault why` exists for callers who cannot read the audit log.

use super::attr::{Attr, Kind};
use super::error::{FsError, FsResult};
use super::inodes::child_path;
use super::namespace::hidden;
use super::op::Refusal;
use super::{perm, Caller, Core};
use crate::access::Denial;
use crate::store::MAX_NAME_LEN;

/// The answer for one kind of access: allowed, or the denial (or error) that refuses it.
pub enum Verdict {
    Allowed,
    Denied(Denial),
    Failed(FsError),
}

impl From<Result<(), Refusal>> for Verdict {
    fn from(r: Result<(), Refusal>) -> Verdict {
        match r {
            Ok(()) => Verdict::Allowed,
            Err(Refusal::Denied(d)) => Verdict::Denied(d),
            Err(Refusal::Failed(e)) => Verdict::Failed(e),
        }
    }
}

/// The verdict for one kind of access and, when the mode bits refused it, what the keys
/// say besides (`None`: they would allow it), so that a user is told every fix needed.
pub struct Answer {
    pub verdict: Verdict,
    pub also: Option<Verdict>,
}

/// What `tvault why` reports for one path.
pub struct Why {
    /// What is there; `None` when a directory on the way may not be searched.
    pub kind: Option<Kind>,
    pub read: Answer,
    pub write: Answer,
}

impl Core {
    /// access(2) of inode `ino` with `mask` (`R_OK | W_OK | X_OK`, or `F_OK`).
    pub fn access(&self, caller: Caller, ino: u64, mask: i32) -> FsResult<()> {
        let rel = self.path_of(ino).ok_or(FsError::new(libc::ENOENT))?;
        let mask = (mask & (libc::R_OK | libc::W_OK | libc::X_OK)) as u32;
        self.decide(caller, &rel, mask)?;
        Ok(())
    }

    /// [`Core::why`] for a path relative to the mountpoint, as the control socket gets it:
    /// `.`, empty and repeated separators are skipped; `..` and names the mount never shows
    /// are `ENOENT`, so that the answer says nothing about the store's own files.
    pub fn why_path(&self, caller: Caller, path: &str) -> FsResult<Why> {
        let mut rel = String::new();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." || hidden(&rel, part) || part.len() > MAX_NAME_LEN {
                return Err(FsError::new(libc::ENOENT));
            }
            rel = child_path(&rel, part);
        }
        self.why(caller, &rel)
    }

    /// Whether the caller could read and write mount path `rel` now, and if not, why.
    fn why(&self, caller: Caller, rel: &str) -> FsResult<Why> {
        // A directory on the way that the caller may not search answers alike for a name
        // there and a name not there, as stat(2) does: `why` is no oracle for names.
        if let Err(Refusal::Denied(_)) = self.may_search_to(caller, rel) {
            let denied = || Answer {
                verdict: Verdict::from(self.may_search_to(caller, rel)),
                also: None,
            };
            return Ok(Why {
                kind: None,
                read: denied(),
                write: denied(),
            });
        }
        let attr = self.attr_of(0, rel)?.ok_or(FsError::new(libc::ENOENT))?;
        let answer = |mask| {
            let verdict = Verdict::from(self.decide(caller, rel, mask).map(drop));
            let also = match &verdict {
                Verdict::Denied(Denial::Mode(_)) => {
                    match Verdict::from(self.decide_keys(caller, rel, &attr, mask)) {
                        Verdict::Allowed => None,
                        other => Some(other),
                    }
                }
                _ => None,
            };
            Answer { verdict, also }
        };
        Ok(Why {
            kind: Some(attr.kind),
            read: answer(perm::MAY_READ),
            write: answer(perm::MAY_WRITE),
        })
    }

    /// The checks an open of `rel` for `mask` meets, in order; the entry's attributes if all
    /// pass.
    fn decide(&self, caller: Caller, rel: &str, mask: u32) -> Result<Attr, Refusal> {
        let attr = self.reachable(caller, rel)?;
        if mask == 0 {
            return Ok(attr);
        }
        perm::need(caller, rel, &attr, mask)?;
        self.decide_keys(caller, rel, &attr, mask)?;
        Ok(attr)
    }

    /// The checks after the mode bits: an unlocked keyring (a writer for writing) and, for a
    /// file, a key slot that opens it.
    fn decide_keys(
        &self,
        caller: Caller,
        rel: &str,
        attr: &Attr,
        mask: u32,
    ) -> Result<(), Refusal> {
        if mask & perm::MAY_WRITE != 0 {
            self.writer(caller)?;
        }
        if attr.kind == Kind::File && mask & (perm::MAY_READ | perm::MAY_WRITE) != 0 {
            self.unlocked(caller)?;
            self.open_version(caller.uid, rel)?;
        }
        Ok(())
    }
}
