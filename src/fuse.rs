//! The `fuser` adapter: unpacks each request, calls the filesystem core (`crate::fs`), and
//! replies. No policy and no crypto live here; a handler that panics answers `EIO` instead
//! of taking the mount down. Its one piece of state is the kernel's registration of each
//! plaintext copy that passthrough files read (`backing`), which the kernel requires to be
//! one and the same for every file of an inode.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, Caller, Changes, Core, FsError, Kind, Opened};
use crate::store::SetTime;

/// Attributes and entries are cached by the kernel this long; opens always reach the core,
/// so access decisions are never cached.
const TTL: Duration = Duration::from_secs(1);

pub struct FuseAdapter {
    core: Arc<Core>,
    backing: Mutex<Backing>,
}

/// The kernel's registration of each copy passthrough files read (by copy id), counted by
/// the handles open on it, and the copy each such handle reads. Leaf lock.
#[derive(Default)]
struct Backing {
    ids: HashMap<u64, (BackingId, usize)>,
    handles: HashMap<u64, u64>,
}

impl FuseAdapter {
    pub fn new(core: Arc<Core>) -> Self {
        FuseAdapter {
            core,
            backing: Mutex::new(Backing::default()),
        }
    }

    /// Answers an open the core served from a plaintext copy with a passthrough file onto
    /// it. If the kernel refuses the copy's registration, the handle is answered as direct
    /// I/O instead (its reads then reach the core, which serves them chunked) and no later
    /// open tries passthrough.
    fn reply_passthrough(&self, reply: ReplyOpen, opened: &Opened, copy: &crate::fs::Copy) {
        let mut backing = crate::sync::lock(&self.backing);
        let registered = match backing.ids.get_mut(&copy.id) {
            Some((_, n)) => {
                *n += 1;
                true
            }
            None => {
                match reply.open_backing(copy.fd()) {
                    Ok(id) => {
                        backing.ids.insert(copy.id, (id, 1));
                        true
                    }
                    Err(e) => {
                        log::warn!("the kernel refused a passthrough file ({e}); reads go through the daemon");
                        self.core.set_passthrough(false);
                        false
                    }
                }
            }
        };
        if !registered {
            return reply.opened(FileHandle(opened.fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        backing.handles.insert(opened.fh, copy.id);
        if let Some((id, _)) = backing.ids.get(&copy.id) {
            reply.opened_passthrough(FileHandle(opened.fh), FopenFlags::empty(), id);
        }
    }

    /// A handle closed: its copy's registration goes with the last handle reading it.
    fn release_backing(&self, fh: u64) {
        let mut backing = crate::sync::lock(&self.backing);
        let Some(copy) = backing.handles.remove(&fh) else {
            return;
        };
        if let Some((_, n)) = backing.ids.get_mut(&copy) {
            *n -= 1;
            if *n == 0 {
                backing.ids.remove(&copy);
            }
        }
    }
}

/// Lets the core drop the kernel's cached pages or attributes of an inode (a negative
/// offset invalidates the attributes only).
pub fn invalidator(notifier: Notifier) -> crate::fs::Invalidator {
    Box::new(move |ino, forget| {
        let offset = match forget {
            crate::fs::Forget::Pages => 0,
            crate::fs::Forget::Attributes => -1,
        };
        notifier.inval_inode(INodeNo(ino), offset, 0)
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// The errno to answer with. What caused it is logged: as a warning when it is an I/O
/// error (a damaged container, a failing disk), else (`ENOTEMPTY`, `ENOSPC`…) for debugging.
fn errno(op: &str, e: FsError) -> Errno {
    match e.source() {
        Some(_) if e.errno() == libc::EIO => log::warn!("{op}: {e}"),
        Some(_) => log::debug!("{op}: {e}"),
        None => {}
    }
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

fn open_flags(opened: &Opened) -> FopenFlags {
    if opened.keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

/// Answers an xattr request of `size` bytes with `value` (`size` 0 asks for its length).
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}

/// Runs a handler body, turning a panic into EIO (the reply is dropped during the unwind,
/// which fuser answers with EIO) instead of killing the session thread and hanging the mount.
fn guarded(op: &str, body: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(body)) {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log::error!("panic in FUSE {op} handler (answered EIO): {msg}");
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Writes of up to 1 MiB per request; reads are sized by the mount's readahead.
        let _ = config.set_max_write(1 << 20);
        // O_TRUNC arrives with open, so a truncating writer never reads the old version.
        let _ = config
            .add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS | InitFlags::FUSE_ATOMIC_O_TRUNC);
        // Passthrough files need the capability and a stacking depth of one.
        if self.core.wants_passthrough() {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !granted {
                log::warn!("the kernel offers no FUSE passthrough: every read goes through the daemon (chunked)");
            }
            self.core.set_passthrough(granted);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.core.shut_down();
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", || {
            match self.core.lookup(caller(req), parent.0, name) {
                Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno("lookup", e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", || match self.core.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno("getattr", e)),
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded("opendir", || match self.core.opendir(caller(req), ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guarded("readdir", || {
            let entries = match self.core.readdir(fh.0) {
                Ok(entries) => entries,
                Err(e) => return reply.error(errno("readdir", e)),
            };
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            for (i, e) in entries.iter().enumerate().skip(start) {
                if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", || {
            match self.core.open(caller(req), ino.0, flags.0) {
                Ok(opened) => match &opened.passthrough {
                    Some(copy) => self.reply_passthrough(reply, &opened, copy),
                    None => reply.opened(FileHandle(opened.fh), open_flags(&opened)),
                },
                Err(e) => reply.error(errno("open", e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guarded("create", || {
            match self
                .core
                .create(caller(req), (parent.0, name), (mode, umask), flags)
            {
                Ok((attr, opened)) => reply.created(
                    &TTL,
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(opened.fh),
                    open_flags(&opened),
                ),
                Err(e) => reply.error(errno("create", e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", || {
            match self.core.read(caller(req), fh.0, offset, size) {
                Ok(data) => reply.data(data.as_slice()),
                Err(e) => reply.error(errno("read", e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded("write", || match self.core.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", e)),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guarded("flush", || match self.core.commit(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("flush", e)),
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsync", || match self.core.commit(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", e)),
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // close(2) has returned already: a commit error here can only be logged.
        guarded("release", || {
            self.release_backing(fh.0);
            if let Err(e) = self.core.release(fh.0) {
                errno("release", e);
            }
            reply.ok();
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded("setattr", || {
            let changes = Changes {
                mode,
                uid,
                gid,
                size,
                atime: set_time(atime),
                mtime: set_time(mtime),
            };
            match self
                .core
                .setattr(caller(req), ino.0, fh.map(|f| f.0), changes)
            {
                Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
                Err(e) => reply.error(errno("setattr", e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        guarded("mkdir", || {
            match self
                .core
                .mkdir(caller(req), (parent.0, name), (mode, umask))
            {
                Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno("mkdir", e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        guarded("symlink", || {
            let target = target.as_os_str().as_bytes();
            match self.core.symlink(caller(req), parent.0, link_name, target) {
                Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno("symlink", e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("readlink", || match self.core.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno("readlink", e)),
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("rmdir", || {
            match self.core.rmdir(caller(req), parent.0, name) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("rmdir", e)),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("unlink", || {
            match self.core.unlink(caller(req), parent.0, name) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("unlink", e)),
            }
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded("rename", || {
            if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
                return reply.error(Errno::EINVAL);
            }
            let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
            let from = (parent.0, name);
            let to = (newparent.0, newname);
            match self.core.rename(caller(req), from, to, noreplace) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("rename", e)),
            }
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded("getxattr", || {
            match self.core.getxattr(caller(req), ino.0, name) {
                Ok(value) => reply_xattr(reply, size, &value),
                Err(e) => reply.error(errno("getxattr", e)),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded("listxattr", || {
            match self.core.listxattr(caller(req), ino.0) {
                Ok(names) => reply_xattr(reply, size, &names),
                Err(e) => reply.error(errno("listxattr", e)),
            }
        });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Python's open() asks isatty (TCGETS) of every file: not a terminal.
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        guarded("access", || {
            match self.core.access(caller(req), ino.0, mask.bits()) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("access", e)),
            }
        });
    }

    /// Hard links would need one container at two names: not supported, as on vfat.
    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded("statfs", || match self.core.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", e)),
        });
    }
}
