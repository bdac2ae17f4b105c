//! Symbolic links: `symlink` (a change, recorded like mkdir) and `readlink`. The core never
//! resolves a target: it hands the bytes to the kernel, which resolves them for the caller,
//! so every file reached through a link is opened (and decided) under its own path.

use std::ffi::OsStr;

use super::attr::Attr;
use super::error::{FsError, FsResult};
use super::op::{Allowed, Op};
use super::{perm, Caller, Core};
use crate::audit::EventKind;
use crate::store::{Link, MountKind, LINK_MODE, MAX_TARGET_LEN};
use crate::sync::lock;

impl Core {
    /// symlink(2): creates link `name` in `parent` pointing to `target`. Needs an unlocked
    /// session, like mkdir; the link is owned by the caller's store user.
    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &[u8],
    ) -> FsResult<Attr> {
        // The kernel checks these too; a target the store could not hold is refused first.
        if target.is_empty() {
            return Err(FsError::new(libc::ENOENT));
        }
        if target.len() > MAX_TARGET_LEN {
            return Err(FsError::new(libc::ENAMETOOLONG));
        }
        if target.contains(&0) {
            return Err(FsError::new(libc::EINVAL));
        }
        let rel = self.child_rel(parent, name, libc::EPERM)?;
        let shown = String::from_utf8_lossy(target);
        self.change(
            Op::new(EventKind::Symlink, caller, &rel).target(&shown),
            || {
                let user = self.writer(caller)?;
                if self.entry_kind(&rel)?.is_some() {
                    return Err(FsError::new(libc::EEXIST).into());
                }
                let dir = self.may_add(caller, &rel)?;
                let own = perm::new_ownership(caller, &user.name, &dir, LINK_MODE, false);
                Ok(Allowed { user, value: own })
            },
            |Allowed { value: own, .. }, _| {
                let link = Link {
                    own,
                    target: target.to_vec(),
                };
                self.store.symlink(&rel, &link)?;
                let ino = lock(&self.inodes).get_or_insert(&rel);
                self.attr_of(ino, &rel)?.ok_or(FsError::new(libc::EIO))
            },
        )
    }

    /// readlink(2): the target of link `ino`, `EINVAL` for anything else. Needs no session
    /// and is not recorded, like lookup and getattr: a target is no secret (it is stored in
    /// the clear, like names, and says nothing of what it points to), and the kernel reads
    /// it on every path walk through the link, so recording it would only flood the log.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let rel = self.path_of(ino).ok_or(FsError::new(libc::ENOENT))?;
        match self.store.read_link(&rel) {
            Ok(link) => Ok(link.target),
            Err(e) if e.is_not_found() => match self.entry_kind(&rel)? {
                Some(_) => Err(FsError::new(libc::EINVAL)),
                None => Err(FsError::new(libc::ENOENT)),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// What mount path `rel` is (a directory wins over a file, a file over a link).
    pub(super) fn entry_kind(&self, rel: &str) -> FsResult<Option<MountKind>> {
        Ok(self.store.mount_kind(rel)?)
    }

    /// The errno for opening `rel` as a file when no container is there: the kernel resolves
    /// links before it opens, so an open that reaches a link (`O_NOFOLLOW` races, a stale
    /// inode) gets `ELOOP`, as open(2) answers for a link it does not follow.
    pub(super) fn not_a_file(&self, rel: &str) -> FsError {
        match self.store.mount_kind(rel) {
            Ok(Some(MountKind::Link)) => FsError::new(libc::ELOOP),
            _ => FsError::new(libc::ENOENT),
        }
    }
}
