//! POSIX permission checks: owners, groups, mode bits and the sticky bit, decided here
//! rather than by the kernel (the mount has no `default_permissions`) so that every refusal
//! is audited with its reason and `access(2)` can answer what `open` will. They come on top
//! of key slots, which alone decide who can decrypt. Root (uid 0) passes mode checks, as
//! with `CAP_DAC_OVERRIDE`, but never gets a key it has no slot for.

use super::attr::{Attr, Kind};
use super::error::FsError;
use super::op::Refusal;
use super::{Caller, Core};
use crate::access::{Denial, ModeDenial, ModeNeed};
use crate::container::Ownership;
use crate::system;

pub(super) const MAY_READ: u32 = 4;
pub(super) const MAY_WRITE: u32 = 2;
pub(super) const MAY_EXEC: u32 = 1;
const STICKY: u16 = 0o1000;
pub(super) const SETGID: u16 = 0o2000;

/// Whether `caller` is in group `gid`: its primary gid, or one of the supplementary groups
/// of the calling process.
pub(super) fn in_group(caller: Caller, gid: u32) -> bool {
    caller.gid == gid || system::process_groups(caller.pid).contains(&gid)
}

/// Whether the mode bits of `attr` grant `caller` every permission in `mask`.
pub(super) fn permits(caller: Caller, attr: &Attr, mask: u32) -> bool {
    if caller.uid == 0 {
        // Root may execute only what someone may execute.
        return mask & MAY_EXEC == 0 || attr.kind == Kind::Dir || attr.perm & 0o111 != 0;
    }
    let bits = if attr.uid == caller.uid {
        attr.perm >> 6
    } else if in_group(caller, attr.gid) {
        attr.perm >> 3
    } else {
        attr.perm
    };
    u32::from(bits & 7) & mask == mask
}

pub(super) fn denial(need: ModeNeed, rel: &str, attr: &Attr) -> Refusal {
    Refusal::Denied(Denial::Mode(ModeDenial {
        need,
        path: rel.to_string(),
        dir: attr.kind == Kind::Dir,
        owner: attr.owner.clone(),
        mode: attr.perm,
    }))
}

/// `mask` on `attr` (at mount path `rel`), or a denial naming the first missing bit.
pub(super) fn need(caller: Caller, rel: &str, attr: &Attr, mask: u32) -> Result<(), Refusal> {
    for (bit, need) in [
        (MAY_READ, ModeNeed::Read),
        (MAY_WRITE, ModeNeed::Write),
        (MAY_EXEC, ModeNeed::Execute),
    ] {
        if mask & bit != 0 && !permits(caller, attr, bit) {
            return Err(denial(need, rel, attr));
        }
    }
    Ok(())
}

/// Only the owner (or root) may do it: chmod, explicit times.
pub(super) fn need_owner(caller: Caller, rel: &str, attr: &Attr) -> Result<(), Refusal> {
    if caller.uid == 0 || caller.uid == attr.uid {
        Ok(())
    } else {
        Err(denial(ModeNeed::Owner, rel, attr))
    }
}

/// A chown or chgrp through the mount, allowed as for an unprivileged user (even root: the
/// administrator's `tvault chown` gives files away): the owner stays, and the group may
/// change only by the owner to a group it is in.
pub(super) fn need_chown(
    caller: Caller,
    rel: &str,
    attr: &Attr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), Refusal> {
    if uid.is_some_and(|u| u != attr.uid) {
        return Err(denial(ModeNeed::Chown, rel, attr));
    }
    match gid {
        Some(g) if g != attr.gid && (caller.uid != attr.uid || !in_group(caller, g)) => {
            Err(denial(ModeNeed::Chown, rel, attr))
        }
        _ => Ok(()),
    }
}

/// The ownership of an entry `owner` makes in directory `dir` with permission bits `mode`
/// (umask already applied): the caller's gid, or the directory's if it is setgid, which a
/// new directory then inherits, as on Linux.
pub(super) fn new_ownership(
    caller: Caller,
    owner: &str,
    dir: &Attr,
    mode: u32,
    is_dir: bool,
) -> Ownership {
    let inherit = dir.perm & SETGID != 0;
    let gid = if inherit { dir.gid } else { caller.gid };
    let mut own = Ownership::new(Some(owner.to_string()), gid, mode);
    if inherit && is_dir {
        own.mode |= SETGID;
    }
    own
}

/// The parent directory of mount path `rel` ("" for a top-level entry).
pub(super) fn parent_rel(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(p, _)| p)
}

impl Core {
    /// Attributes of the directory that holds `rel`; `ENOENT` if it is gone.
    pub(super) fn parent_attr(&self, rel: &str) -> Result<Attr, Refusal> {
        let parent = parent_rel(rel);
        let attr = self.attr_of(0, parent)?.ok_or(FsError::new(libc::ENOENT))?;
        if attr.kind != Kind::Dir {
            return Err(FsError::new(libc::ENOTDIR).into());
        }
        Ok(attr)
    }

    /// Search permission on every directory above `rel`, from the root down, as a path walk
    /// checks it. The kernel does not check it for us: without `default_permissions` it
    /// walks through the entries it has cached (for one TTL after any uid looked them up)
    /// without asking, so an operation reaching the core with an inode or a parent proves
    /// nothing about the directories above it.
    pub(super) fn may_search_to(&self, caller: Caller, rel: &str) -> Result<(), Refusal> {
        if rel.is_empty() {
            return Ok(());
        }
        let parent = parent_rel(rel);
        let mut dirs = vec![""];
        if !parent.is_empty() {
            dirs.extend(parent.match_indices('/').map(|(i, _)| &parent[..i]));
            dirs.push(parent);
        }
        for dir in dirs {
            let attr = self.existing(dir)?;
            if attr.kind != Kind::Dir {
                return Err(FsError::new(libc::ENOTDIR).into());
            }
            need(caller, dir, &attr, MAY_EXEC)?;
        }
        Ok(())
    }

    /// The attributes of `rel`, which must exist, once the caller may search every
    /// directory above it ([`Core::may_search_to`]).
    pub(super) fn reachable(&self, caller: Caller, rel: &str) -> Result<Attr, Refusal> {
        self.may_search_to(caller, rel)?;
        self.existing(rel)
    }

    /// Entries may be added to `rel`'s directory: search permission on the way to it, and
    /// write and search permission on it.
    pub(super) fn may_add(&self, caller: Caller, rel: &str) -> Result<Attr, Refusal> {
        self.may_search_to(caller, rel)?;
        let dir = self.parent_attr(rel)?;
        need(caller, parent_rel(rel), &dir, MAY_WRITE | MAY_EXEC)?;
        Ok(dir)
    }

    /// Entry `rel` (whose attributes are `entry`) may be removed or replaced: write and
    /// search permission on its directory and, if that is sticky, ownership of the entry or
    /// of the directory.
    pub(super) fn may_remove(
        &self,
        caller: Caller,
        rel: &str,
        entry: &Attr,
    ) -> Result<(), Refusal> {
        let dir = self.may_add(caller, rel)?;
        if dir.perm & STICKY != 0
            && caller.uid != 0
            && caller.uid != entry.uid
            && caller.uid != dir.uid
        {
            return Err(denial(ModeNeed::Sticky, rel, entry));
        }
        Ok(())
    }

    /// The attributes of an entry that must exist.
    pub(super) fn existing(&self, rel: &str) -> Result<Attr, Refusal> {
        Ok(self.attr_of(0, rel)?.ok_or(FsError::new(libc::ENOENT))?)
    }
}
