//! setattr(2): owner and group (chown), mode (chmod), size (truncate) and times, each with
//! the checks an unprivileged user meets on a local filesystem, and each audited.

use super::attr::Attr;
use super::error::{FsError, FsResult};
use super::op::{Allowed, Op};
use super::{perm, Caller, Core};
use crate::audit::EventKind;
use crate::container::Ownership;
use crate::store::{MountKind, SetTime};

/// What one setattr asks to change; `None` leaves it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Changes {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

impl Core {
    /// Applies `changes` to inode `ino` (`fh`: the handle of an ftruncate/futimens), in the
    /// kernel's order: owner, mode, size, times.
    pub fn setattr(
        &self,
        caller: Caller,
        ino: u64,
        fh: Option<u64>,
        changes: Changes,
    ) -> FsResult<Attr> {
        let rel = self.path_of(ino).ok_or(FsError::new(libc::ENOENT))?;
        if changes.uid.is_some() || changes.gid.is_some() {
            self.chown(caller, &rel, changes.uid, changes.gid)?;
        }
        if let Some(mode) = changes.mode {
            self.chmod(caller, &rel, mode)?;
        }
        if let Some(size) = changes.size {
            self.truncate(caller, ino, &rel, fh, size)?;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            self.set_times(caller, &rel, (changes.atime, changes.mtime))?;
            self.keep_times(ino, changes.atime, changes.mtime);
        }
        self.attr_of(ino, &rel)?.ok_or(FsError::new(libc::ENOENT))
    }

    /// chown(2) as an unprivileged user may: the owner stays (only `tvault chown` gives
    /// entries away); the owner may change the group to one it is in.
    fn chown(&self, caller: Caller, rel: &str, uid: Option<u32>, gid: Option<u32>) -> FsResult<()> {
        self.change(
            Op::new(EventKind::Chown, caller, rel),
            || {
                let user = self.writer(caller)?;
                let attr = self.reachable(caller, rel)?;
                perm::need_chown(caller, rel, &attr, uid, gid)?;
                Ok(Allowed { user, value: attr })
            },
            |Allowed { value: attr, .. }, _| match gid {
                Some(gid) if gid != attr.gid => {
                    let own = Ownership::new(attr.owner.clone(), gid, u32::from(attr.perm));
                    Ok(self.store.set_ownership(rel, &own)?)
                }
                _ => Ok(()),
            },
        )
    }

    /// chmod(2): the owner (or root) only. As on Linux, a non-root owner who is not in the
    /// file's group cannot set its setgid bit (it is dropped).
    fn chmod(&self, caller: Caller, rel: &str, mode: u32) -> FsResult<()> {
        self.change(
            Op::new(EventKind::Chmod, caller, rel),
            || {
                let user = self.writer(caller)?;
                let attr = self.reachable(caller, rel)?;
                perm::need_owner(caller, rel, &attr)?;
                Ok(Allowed { user, value: attr })
            },
            |Allowed { value: attr, .. }, _| {
                let mut own = Ownership::new(attr.owner.clone(), attr.gid, mode);
                if caller.uid != 0
                    && attr.kind == super::Kind::File
                    && !perm::in_group(caller, attr.gid)
                {
                    own.mode &= !perm::SETGID;
                }
                if own.mode == attr.perm {
                    return Ok(());
                }
                Ok(self.store.set_ownership(rel, &own)?)
            },
        )
    }

    /// utimensat(2): explicit times by the owner only; "now" also by anyone who may write.
    /// A file's times also need a key slot for it, like any other change to a file.
    fn set_times(
        &self,
        caller: Caller,
        rel: &str,
        (atime, mtime): (Option<SetTime>, Option<SetTime>),
    ) -> FsResult<()> {
        self.change(
            Op::new(EventKind::SetTimes, caller, rel),
            || {
                let user = self.writer(caller)?;
                let attr = self.reachable(caller, rel)?;
                let explicit = [atime, mtime]
                    .iter()
                    .any(|t| matches!(t, Some(SetTime::At(_))));
                if explicit {
                    perm::need_owner(caller, rel, &attr)?;
                } else if perm::need_owner(caller, rel, &attr).is_err() {
                    // "Now" without ownership needs write permission (EACCES, as on Linux).
                    perm::need(caller, rel, &attr, perm::MAY_WRITE)?;
                }
                let kind = self.entry_kind(rel)?.ok_or(FsError::new(libc::ENOENT))?;
                if kind == MountKind::File {
                    self.open_version(caller.uid, rel)?;
                }
                Ok(Allowed { user, value: kind })
            },
            |Allowed { value: kind, .. }, _| Ok(self.store.set_times(rel, kind, atime, mtime)?),
        )
    }
}
