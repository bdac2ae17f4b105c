//! Attributes as the mount shows them. Modes are informational: tvault, not the kernel,
//! decides access (the mount has no `default_permissions`).

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
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
}

impl Attr {
    pub(super) fn dir(ino: u64, meta: &Meta) -> Attr {
        Attr::new(ino, meta, Kind::Dir, 0o555, 4096, 4096)
    }

    /// A file of `size` plaintext bytes, read in chunks of `chunk_size` (its block size).
    pub(super) fn file(ino: u64, meta: &Meta, size: u64, chunk_size: u64) -> Attr {
        let blksize = u32::try_from(chunk_size).unwrap_or(65536);
        Attr::new(ino, meta, Kind::File, 0o444, size, blksize)
    }

    /// A link whose target is `target_len` bytes long (the size `lstat` shows), with mode
    /// 0o777 like every link, and the group its record stores.
    pub(super) fn link(ino: u64, meta: &Meta, own: &Ownership, target_len: u64) -> Attr {
        let mut attr = Attr::new(ino, meta, Kind::Symlink, LINK_MODE as u16, target_len, 4096);
        attr.gid = own.gid;
        attr
    }

    fn new(ino: u64, meta: &Meta, kind: Kind, perm: u16, size: u64, blksize: u32) -> Attr {
        Attr {
            ino,
            kind,
            size,
            blocks: size.div_ceil(512),
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: meta.ctime,
            perm,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid: meta.uid,
            gid: meta.gid,
            blksize,
        }
    }
}
