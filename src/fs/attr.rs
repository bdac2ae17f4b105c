//! Attributes as the mount shows them: sizes and times from the store, owner, group and
//! mode from the entry's ownership record (the owner's name mapped to its registered uid).

use std::time::SystemTime;

use crate::container::Ownership;
use crate::store::{Meta, MountKind, LINK_MODE};

/// What a mount entry is: only directories, regular files and symbolic links are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

impl From<MountKind> for Kind {
    fn from(kind: MountKind) -> Kind {
        match kind {
            MountKind::Dir => Kind::Dir,
            MountKind::File => Kind::File,
            MountKind::Link => Kind::Symlink,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// 512-byte blocks: must match the size, or `cp` takes the file for sparse.
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
    /// The owning store user (`None`: root), for messages that say whom to ask.
    pub owner: Option<String>,
}

impl Attr {
    pub(super) fn dir(ino: u64, meta: &Meta, own: &Ownership, uid: u32) -> Attr {
        Attr::new(ino, meta, Kind::Dir, own, uid, 4096, 4096)
    }

    /// A file of `size` plaintext bytes, read in chunks of `chunk_size` (its block size).
    pub(super) fn file(
        ino: u64,
        meta: &Meta,
        own: &Ownership,
        uid: u32,
        (size, chunk_size): (u64, u64),
    ) -> Attr {
        let blksize = u32::try_from(chunk_size).unwrap_or(65536);
        Attr::new(ino, meta, Kind::File, own, uid, size, blksize)
    }

    /// A link whose target is `target_len` bytes long (the size `lstat` shows), with mode
    /// 0o777 like every link, and the owner and group its record stores.
    pub(super) fn link(ino: u64, meta: &Meta, own: &Ownership, uid: u32, target_len: u64) -> Attr {
        let own = Ownership::new(own.owner.clone(), own.gid, LINK_MODE);
        Attr::new(ino, meta, Kind::Symlink, &own, uid, target_len, 4096)
    }

    fn new(
        ino: u64,
        meta: &Meta,
        kind: Kind,
        own: &Ownership,
        uid: u32,
        size: u64,
        blksize: u32,
    ) -> Attr {
        Attr {
            ino,
            kind,
            size,
            blocks: size.div_ceil(512),
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: meta.ctime,
            perm: own.mode,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid,
            gid: own.gid,
            blksize,
            owner: own.owner.clone(),
        }
    }
}
