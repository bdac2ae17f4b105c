//! Files that live only in locked RAM: the whole-file plaintext copies that the eager data
//! path fills and hands to the kernel for FUSE passthrough.
//!
//! A copy is an unnamed file (`O_TMPFILE`) on a tmpfs instance private to this process, made
//! with the new mount API and never attached to any mount namespace, so no path reaches it.
//! That instance is mounted with `huge=always`: its pages are 2 MiB transparent huge pages
//! where the kernel has them, which is what lets a reader's page faults and copies run at
//! the speed of a plain file in the page cache (a `memfd`, which follows the system-wide
//! `shmem_enabled`, usually `never`, is the fallback). The daemon maps each copy, locks the
//! mapping (`mlock`: plaintext never reaches swap) and keeps it out of core dumps. Emptying a
//! copy truncates the file to nothing, which frees its pages and ends every other mapping
//! and reader of it at once.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::OnceLock;

/// `fsconfig` commands (linux/mount.h); not all libc versions name them.
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// Physical memory, in bytes (0 if unknown).
pub fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    u64::try_from(pages)
        .unwrap_or(0)
        .saturating_mul(u64::try_from(size).unwrap_or(0))
}

/// A locked, mapped in-memory file of a fixed length.
pub struct RamFile {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
    /// Whether the mapping is `mlock`ed (always for root; else as `RLIMIT_MEMLOCK` allows).
    pub locked: bool,
    /// Whether it lives on the huge-page tmpfs (else a memfd).
    pub huge: bool,
}

// SAFETY: the mapping is owned by this value and written only through `&mut self`; shared
// access (`fd`, `empty`) makes system calls on the descriptor and never touches the memory.
unsafe impl Send for RamFile {}
// SAFETY: as above.
unsafe impl Sync for RamFile {}

impl RamFile {
    /// A zero-filled file of `len` bytes (at least one page is mapped).
    pub fn new(len: u64) -> std::io::Result<RamFile> {
        let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::OutOfMemory)?;
        let (fd, huge) = match huge_tmpfs().and_then(|mnt| tmpfile_in(mnt.as_fd())) {
            Ok(fd) => (fd, true),
            Err(_) => (memfd()?, false),
        };
        // Every page is allocated now: a tmpfs or memory cgroup that is full gives an error
        // here instead of a SIGBUS when the fill touches the page.
        // SAFETY: ftruncate and fallocate on the descriptor just made.
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if len > 0 && libc::fallocate(fd.as_raw_fd(), 0, 0, len as libc::off_t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let map_len = len.max(1);
        // SAFETY: a fresh shared mapping of the file just sized; nothing else maps it yet.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: advice and locking of the mapping made above. Pages are locked as they are
        // first written (`MLOCK_ONFAULT`): the fill touches every one of them.
        let locked = unsafe {
            libc::madvise(ptr, map_len, libc::MADV_DONTDUMP);
            if huge {
                libc::madvise(ptr, map_len, libc::MADV_HUGEPAGE);
            }
            libc::mlock2(ptr, map_len, libc::MLOCK_ONFAULT) == 0 || libc::mlock(ptr, map_len) == 0
        };
        Ok(RamFile {
            fd,
            ptr: NonNull::new(ptr.cast()).ok_or(std::io::ErrorKind::OutOfMemory)?,
            len,
            locked,
            huge,
        })
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file, for the kernel to read from (`FUSE_DEV_IOC_BACKING_OPEN`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The content, to fill it.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping holds `len` bytes and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Truncates the file to nothing: its pages are freed, and every reader and mapping of
    /// it (the kernel's passthrough files among them) sees an empty file from now on. The
    /// daemon's own mapping is never read again after this.
    pub fn empty(&self) {
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(self.fd.as_raw_fd(), 0) } != 0 {
            log::error!(
                "cannot empty a plaintext copy: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Drop for RamFile {
    fn drop(&mut self) {
        // Nothing tracks a dropped copy any more: its plaintext goes with it even if the
        // kernel still held the file.
        self.empty();
        // SAFETY: unmaps the mapping made in `new`, which no slice outlives (they borrow self).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len.max(1)) };
    }
}

/// The private huge-page tmpfs instance, made once (needs `CAP_SYS_ADMIN`; its failure is
/// remembered and memfds are used instead).
fn huge_tmpfs() -> std::io::Result<&'static OwnedFd> {
    static MOUNT: OnceLock<Result<OwnedFd, i32>> = OnceLock::new();
    match MOUNT.get_or_init(|| {
        mount_huge_tmpfs().map_err(|e| {
            log::info!("no private huge-page tmpfs ({e}); plaintext copies use memfds");
            e.raw_os_error().unwrap_or(libc::EIO)
        })
    }) {
        Ok(fd) => Ok(fd),
        Err(e) => Err(std::io::Error::from_raw_os_error(*e)),
    }
}

fn mount_huge_tmpfs() -> std::io::Result<OwnedFd> {
    let cstr = |s: &str| CString::new(s).map_err(|_| std::io::ErrorKind::InvalidInput);
    let (tmpfs, huge, always, mode, private, size, all) = (
        cstr("tmpfs")?,
        cstr("huge")?,
        cstr("always")?,
        cstr("mode")?,
        cstr("0700")?,
        cstr("size")?,
        cstr("100%")?,
    );
    // SAFETY: fsopen with a valid C string; the result is checked.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, tmpfs.as_ptr(), FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fs` is a descriptor fsopen just returned, owned from here on.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    let set = |key: &CString, value: &CString| {
        // SAFETY: fsconfig on our fs context with valid C strings.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    set(&huge, &always)?;
    set(&mode, &private)?;
    // tmpfs's default limit (half the RAM) would make a fill past it fault (SIGBUS); the
    // mount's budget, capped below the RAM, is what bounds the copies.
    set(&size, &all)?;
    // Never swapped, even if the daemon dies and its locks go while the kernel still holds a
    // copy for open files (Linux 6.4+; older kernels rely on the lock alone).
    let noswap = cstr("noswap")?;
    // SAFETY: fsconfig on our fs context with a valid C string and no value.
    if unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_FLAG,
            noswap.as_ptr(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    } < 0
    {
        log::info!("tmpfs without noswap here: copies rely on mlock alone");
    }
    // SAFETY: fsconfig CMD_CREATE on our fs context takes no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fsmount of the created context; the result is checked and owned.
    let mnt = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if mnt < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor fsmount just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as i32) })
}

/// An unnamed file on the private tmpfs.
fn tmpfile_in(mnt: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    // SAFETY: openat relative to the mount's root with a static C string; checked below.
    let fd = unsafe {
        libc::openat(
            mnt.as_raw_fd(),
            c".".as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn memfd() -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static C string; checked below.
    let fd = unsafe { libc::memfd_create(c"tvault-plaintext".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor memfd_create just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ram_file_holds_what_was_written_until_emptied() {
        let mut f = RamFile::new(3 << 20).unwrap();
        f.as_mut_slice().fill(7);
        let mut buf = vec![0u8; 4096];
        // SAFETY: pread into our own buffer.
        let n = unsafe {
            libc::pread(
                f.fd().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                (2 << 20) as libc::off_t,
            )
        };
        assert_eq!(n, 4096);
        assert!(buf.iter().all(|&b| b == 7));
        f.empty();
        // SAFETY: as above.
        let n = unsafe { libc::pread(f.fd().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert_eq!(n, 0, "an emptied copy reads as an empty file");
    }
}
