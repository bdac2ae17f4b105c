//! Names: lookups, attributes, listings, and the changes to the tree (mkdir, rmdir, unlink,
//! rename, times). Each change needs an unlocked session; changing a file (removing it,
//! moving it, replacing it, setting its times) needs a key slot for it, because nobody
//! removes or moves what they cannot read. A link holds nothing secret: changing one needs
//! no slot. Every change goes through `Core::change`.

use std::collections::HashSet;
use std::ffi::OsStr;

use super::attr::{Attr, Kind};
use super::error::{FsError, FsResult};
use super::handles::{DirEntry, Listing, LISTING_ENTRY};
use super::inodes::child_path;
use super::op::{Allowed, Op, Refusal};
use super::{perm, Caller, Core};
use crate::access::ModeNeed;
use crate::audit::EventKind;
use crate::container::Ownership;
use crate::store::{
    MountKind, Node, StoreError, DIR_META_FILE, MAX_NAME_LEN, META_DIR, RECIPIENTS_FILE,
};
use crate::sync::lock;

/// Paths warned about (links, special files in the store) are remembered up to this many,
/// so that each is logged once.
const MAX_WARNED: usize = 4096;

/// Store paths already warned about, so that a planted link cannot flood the log.
#[derive(Default)]
pub(super) struct Warned(HashSet<String>);

/// What `statfs` reports: the backing store's figures, with the mount's name limit.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl Core {
    /// Looks `name` up in `parent`, which the caller must be able to search.
    pub fn lookup(&self, caller: Caller, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let rel = self.child_rel(parent, name, libc::ENOENT)?;
        self.may_search_to(caller, &rel)?;
        // Only paths that exist get an inode: probing for missing names must not grow the
        // table.
        let mut attr = self.attr_of(0, &rel)?.ok_or(FsError::new(libc::ENOENT))?;
        attr.ino = lock(&self.inodes).get_or_insert(&rel);
        Ok(attr)
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let rel = self.path_of(ino).ok_or(FsError::new(libc::ENOENT))?;
        self.attr_of(ino, &rel)?.ok_or(FsError::new(libc::ENOENT))
    }

    /// Takes a listing of directory `ino` in one pass, charged to the caller; `readdir`
    /// then serves slices of it.
    pub fn opendir(&self, caller: Caller, ino: u64) -> FsResult<u64> {
        let rel = self.path_of(ino).ok_or(FsError::new(libc::ENOENT))?;
        self.may_search_to(caller, &rel)?;
        let dir = self.attr_of(ino, &rel)?.ok_or(FsError::new(libc::ENOENT))?;
        perm::need(caller, &rel, &dir, perm::MAY_READ)?;
        let listing = self.store.list_mount_dir(&rel)?;
        let parent_rel = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        let mut entries: Listing = Vec::with_capacity(listing.len() + 2);
        {
            let mut inodes = lock(&self.inodes);
            let dot = |ino, name: &str| DirEntry {
                ino,
                kind: Kind::Dir,
                name: name.to_string(),
            };
            entries.push(dot(ino, "."));
            entries.push(dot(inodes.get_or_insert(parent_rel), ".."));
            for e in listing {
                if hidden(&rel, &e.name) || e.name.len() > MAX_NAME_LEN {
                    continue;
                }
                entries.push(DirEntry {
                    ino: inodes.get_or_insert(&child_path(&rel, &e.name)),
                    kind: e.kind.into(),
                    name: e.name,
                });
            }
        }
        let bytes = entries
            .iter()
            .map(|e| LISTING_ENTRY + e.name.len())
            .sum::<usize>()
            + LISTING_ENTRY;
        let charge = self.limits.listings.charge(caller.uid, bytes as u64)?;
        Ok(self.files.add_listing(entries, charge))
    }

    /// The listing taken by `opendir` for handle `fh`.
    pub fn readdir(&self, fh: u64) -> FsResult<std::sync::Arc<Listing>> {
        self.files.listing(fh).ok_or(FsError::new(libc::EBADF))
    }

    pub fn releasedir(&self, fh: u64) {
        self.files.remove_listing(fh);
    }

    /// A new directory gets the caller as owner and `mode & !umask`.
    pub fn mkdir(
        &self,
        caller: Caller,
        (parent, name): (u64, &OsStr),
        (mode, umask): (u32, u32),
    ) -> FsResult<Attr> {
        let rel = self.child_rel(parent, name, libc::EPERM)?;
        self.change(
            Op::new(EventKind::Mkdir, caller, &rel),
            || {
                let user = self.writer(caller)?;
                if self.entry_kind(&rel)?.is_some() {
                    return Err(FsError::new(libc::EEXIST).into());
                }
                let dir = self.may_add(caller, &rel)?;
                let own = perm::new_ownership(caller, &user.name, &dir, mode & !umask, true);
                Ok(Allowed { user, value: own })
            },
            |Allowed { value: own, .. }, _| {
                self.store.mkdir(&rel, &own)?;
                let ino = lock(&self.inodes).get_or_insert(&rel);
                self.attr_of(ino, &rel)?.ok_or(FsError::new(libc::EIO))
            },
        )
    }

    pub fn rmdir(&self, caller: Caller, parent: u64, name: &OsStr) -> FsResult<()> {
        let rel = self.child_rel(parent, name, libc::ENOENT)?;
        self.change(
            Op::new(EventKind::Rmdir, caller, &rel),
            || {
                let user = self.writer(caller)?;
                match self.entry_kind(&rel)? {
                    Some(MountKind::Dir) => {}
                    Some(_) => return Err(FsError::new(libc::ENOTDIR).into()),
                    None => return Err(FsError::new(libc::ENOENT).into()),
                }
                self.may_remove(caller, &rel, &self.existing(&rel)?)?;
                Ok(Allowed { user, value: () })
            },
            |_, _| {
                self.store.rmdir(&rel)?;
                lock(&self.inodes).remove(&rel);
                Ok(())
            },
        )
    }

    pub fn unlink(&self, caller: Caller, parent: u64, name: &OsStr) -> FsResult<()> {
        let rel = self.child_rel(parent, name, libc::ENOENT)?;
        self.change(
            Op::new(EventKind::Unlink, caller, &rel),
            || {
                let user = self.writer(caller)?;
                let kind = self.entry_kind(&rel)?.ok_or(FsError::new(libc::ENOENT))?;
                if kind != MountKind::Dir {
                    self.may_remove(caller, &rel, &self.existing(&rel)?)?;
                }
                match kind {
                    // Deleting needs the same key slot as reading.
                    MountKind::File => drop(self.open_version(caller.uid, &rel)?),
                    MountKind::Link => {}
                    MountKind::Dir => return Err(FsError::new(libc::EISDIR).into()),
                }
                Ok(Allowed { user, value: kind })
            },
            |Allowed { value: kind, .. }, _| {
                self.store.remove_entry(&rel, kind)?;
                let inos = {
                    let mut inodes = lock(&self.inodes);
                    let mut inos = inodes.detached_at(&rel);
                    inos.push(inodes.get_or_insert(&rel));
                    inodes.remove(&rel);
                    inos
                };
                for &ino in &inos {
                    self.versions.forget_pages(ino);
                }
                self.unlink_sessions(&inos);
                Ok(())
            },
        )
    }

    /// Moves `name` in `parent` to `newname` in `newparent` (`noreplace`:
    /// `RENAME_NOREPLACE`). Moving a file needs a slot for it, and replacing one a slot for
    /// the file replaced; moving a directory needs a slot for every file in it, or a user
    /// could move someone's model away and put their own in its place. A link and a file
    /// replace each other as two files do.
    pub fn rename(
        &self,
        caller: Caller,
        (parent, name): (u64, &OsStr),
        (newparent, newname): (u64, &OsStr),
        noreplace: bool,
    ) -> FsResult<()> {
        let from = self.child_rel(parent, name, libc::EPERM)?;
        let to = self.child_rel(newparent, newname, libc::EPERM)?;
        let op = Op::new(EventKind::Rename, caller, &from).target(&to);
        self.change(
            op,
            || {
                let user = self.writer(caller)?;
                let moved = self.entry_kind(&from)?.ok_or(FsError::new(libc::ENOENT))?;
                let replaced = self.entry_kind(&to)?;
                if noreplace && replaced.is_some() {
                    return Err(FsError::new(libc::EEXIST).into());
                }
                self.may_rename(
                    caller,
                    &from,
                    &to,
                    moved == MountKind::Dir,
                    replaced.is_some(),
                )?;
                match (moved, replaced) {
                    (MountKind::Dir, Some(MountKind::File | MountKind::Link)) => {
                        return Err(FsError::new(libc::ENOTDIR).into())
                    }
                    (MountKind::File | MountKind::Link, Some(MountKind::Dir)) => {
                        return Err(FsError::new(libc::EISDIR).into())
                    }
                    _ => {}
                }
                match moved {
                    MountKind::File => drop(self.open_version(caller.uid, &from)?),
                    MountKind::Dir => {
                        // Moving a policy is placing one, which only the administrator
                        // does: else a user could move their team's policy to where
                        // another user's job is about to write, and read its output.
                        if caller.uid != 0
                            && self.store.holds_policy(&from).map_err(FsError::from)?
                        {
                            let entry = self.existing(&from)?;
                            return Err(perm::denial(ModeNeed::Policy, &from, &entry));
                        }
                        for f in self.store.files_under(&from).map_err(FsError::from)? {
                            self.open_version(caller.uid, &f.rel)?;
                        }
                    }
                    MountKind::Link => {}
                }
                if replaced == Some(MountKind::File) {
                    self.open_version(caller.uid, &to)?;
                }
                Ok(Allowed {
                    user,
                    value: (moved, replaced),
                })
            },
            |Allowed {
                 value: (moved, replaced),
                 ..
             },
             _| {
                // Nothing at the target was authorized to be replaced: one put there
                // before the act (another caller's create) is not replaced (`EEXIST`). An
                // entry of the other kind (a link for a file) has another name in the
                // store: it goes once the moved one is in place (store::links).
                self.store
                    .rename_entry(&from, &to, moved, replaced != Some(moved))?;
                if let Some(other) = replaced.filter(|&k| k != moved) {
                    self.store.remove_entry(&to, other)?;
                }
                let mut inodes = lock(&self.inodes);
                for rel in [&from, &to] {
                    self.versions.forget_pages(inodes.get_or_insert(rel));
                }
                inodes.rename(&from, &to);
                Ok(())
            },
        )
    }

    /// POSIX rules for moving `from` to `to`: it may leave its directory and, at the target,
    /// be added or replace what is there (sticky bits included); a directory moved to
    /// another parent also needs write permission on itself, for its `..`.
    fn may_rename(
        &self,
        caller: Caller,
        from: &str,
        to: &str,
        from_dir: bool,
        replaces: bool,
    ) -> Result<(), Refusal> {
        let entry = self.existing(from)?;
        self.may_remove(caller, from, &entry)?;
        if replaces {
            self.may_remove(caller, to, &self.existing(to)?)?;
        } else {
            self.may_add(caller, to)?;
        }
        if from_dir && perm::parent_rel(from) != perm::parent_rel(to) {
            perm::need(caller, from, &entry, perm::MAY_WRITE)?;
        }
        Ok(())
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        let usage = self.store.usage()?;
        Ok(StatFs {
            blocks: usage.blocks,
            bfree: usage.blocks_free,
            bavail: usage.blocks_available,
            files: usage.files,
            ffree: usage.files_free,
            bsize: usage.block_size as u32,
            namelen: MAX_NAME_LEN as u32,
            frsize: usage.fragment_size as u32,
        })
    }

    /// Attributes of store path `rel` as inode `ino`, or None if nothing is shown there
    /// (OS symlinks and special files in the store are hidden, and logged once).
    pub(super) fn attr_of(&self, ino: u64, rel: &str) -> FsResult<Option<Attr>> {
        match self.store.node(rel) {
            Ok(Some(Node::Dir {
                meta,
                ownership: own,
            })) => Ok(Some(Attr::dir(ino, &meta, &own, self.owner_uid(&own)))),
            Ok(Some(Node::File {
                meta,
                plaintext_len,
                chunk_size,
                ownership: own,
            })) => {
                // While a file is being written, its size is the session's.
                let size = self.session_size(ino).unwrap_or(plaintext_len);
                let uid = self.owner_uid(&own);
                Ok(Some(Attr::file(ino, &meta, &own, uid, (size, chunk_size))))
            }
            Ok(Some(Node::Link {
                meta,
                own,
                target_len,
            })) => Ok(Some(Attr::link(
                ino,
                &meta,
                &own,
                self.owner_uid(&own),
                target_len,
            ))),
            Ok(None) => Ok(None),
            Err(e @ (StoreError::Symlink(_) | StoreError::NotRegular { .. })) => {
                self.warn_once(rel, &e);
                Ok(None)
            }
            Err(e @ (StoreError::Container { .. } | StoreError::BadLink { .. })) => {
                self.warn_once(rel, &e);
                Err(FsError::new(libc::EIO))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The store path of `name` in directory `parent`: ENOENT for an unknown parent;
    /// `hidden_errno` for a name the mount never shows (ENOENT when looking one up, EPERM
    /// when creating one).
    pub(super) fn child_rel(
        &self,
        parent: u64,
        name: &OsStr,
        hidden_errno: i32,
    ) -> FsResult<String> {
        let parent_rel = self.path_of(parent).ok_or(FsError::new(libc::ENOENT))?;
        match name.to_str() {
            // `NAME.tvlt` must fit in NAME_MAX: longer names could not be committed.
            Some(name) if name.len() > MAX_NAME_LEN => Err(FsError::new(libc::ENAMETOOLONG)),
            Some(name) if !hidden(&parent_rel, name) => Ok(child_path(&parent_rel, name)),
            _ => Err(FsError::new(hidden_errno)),
        }
    }

    fn owner_uid(&self, own: &Ownership) -> u32 {
        self.owners.uid(&self.store, own.owner.as_deref())
    }

    fn warn_once(&self, rel: &str, what: &dyn std::fmt::Display) {
        let mut warned = lock(&self.warned);
        if warned.0.len() < MAX_WARNED && warned.0.insert(rel.to_string()) {
            log::warn!("{rel}: {what}");
        }
    }
}

/// Names the mount never shows: the store's metadata directory, and the names of the policy
/// and directory metadata files.
/// (Temporary and policy files in the store never show anyway: only `*.tvlt` containers and
/// directories are listed. But a directory named like the policy, made through the mount,
/// would stand in for the policy of its parents: files created beside it would be
/// encrypted to nobody else.)
pub(super) fn hidden(parent: &str, name: &str) -> bool {
    name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name == RECIPIENTS_FILE
        || name == DIR_META_FILE
        || (parent.is_empty() && name == META_DIR)
}
