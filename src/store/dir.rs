//! The local directory backend ([`Gate`]): the only code that touches a store directory.
//!
//! It keeps the [`Backend`] contract with the kernel's help. Every path is resolved beneath
//! the store root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: a symlink anywhere
//! in a path is refused, never followed, and nothing can resolve outside the root. Changes
//! (`mkdirat`, `unlinkat`, `renameat2`, `utimensat`) act on a name inside a directory opened
//! that way, so they cannot follow a link either. Only regular files and directories are
//! opened (files with `O_NONBLOCK`, so a FIFO cannot block the opener), and small files are
//! read with a size cap. New files are written under fixed-length temporary names in the
//! target's directory and renamed into place.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

use super::backend::{Backend, Blob, Entry, Kind, Meta, SetTime, Stage, Status, Usage};
use super::{Result, StoreError};
use crate::fsutil;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

fn kind_of(file_type: FileType) -> Kind {
    match file_type {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

fn status_of(st: &Stat) -> Status {
    let time = |secs: i64, nsecs: u64| match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nsecs.min(999_999_999) as u32),
        Err(_) => UNIX_EPOCH,
    };
    Status {
        kind: kind_of(FileType::from_raw_mode(st.st_mode)),
        meta: Meta {
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
        },
    }
}

/// The open store root. Cheap to clone (a staged file keeps one to commit itself).
#[derive(Clone)]
pub struct Gate {
    root: Arc<OwnedFd>,
    path: Arc<Path>,
}

fn split(rel: &str) -> (&str, &str) {
    match rel.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", rel),
    }
}

fn dot(rel: &str) -> &str {
    if rel.is_empty() {
        "."
    } else {
        rel
    }
}

impl Gate {
    /// Opens the store root. The root path itself is the administrator's choice and may be
    /// reached through symlinks; nothing beneath it is.
    pub fn open(path: &Path) -> Result<Gate> {
        let root = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Gate {
            root: Arc::new(root),
            path: path.into(),
        })
    }

    /// Creates the store root (and what is missing above it), then opens it.
    pub fn create(path: &Path) -> Result<Gate> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Gate::open(path)
    }

    fn err(&self, rel: &str, e: rustix::io::Errno) -> StoreError {
        let path = self.display_path(rel);
        match e {
            // RESOLVE_NO_SYMLINKS met a link; RESOLVE_BENEATH refused an escape.
            rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => StoreError::Symlink(path),
            e => StoreError::Io {
                path,
                source: e.into(),
            },
        }
    }

    fn io_err(&self, rel: &str, source: io::Error) -> StoreError {
        StoreError::Io {
            path: self.display_path(rel),
            source,
        }
    }

    /// RESOLVE_NO_SYMLINKS refuses a link as the last component too (`ELOOP`), unless the
    /// flags ask for the link itself (`O_PATH | O_NOFOLLOW`).
    fn resolve(&self, rel: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd> {
        rfs::openat2(
            &*self.root,
            dot(rel),
            flags | OFlags::CLOEXEC,
            mode,
            RESOLVE,
        )
        .map_err(|e| self.err(rel, e))
    }

    fn open_dir(&self, rel: &str) -> Result<OwnedFd> {
        self.resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
    }

    /// Opens a regular file for reading, with its status. Anything else (a directory, FIFO,
    /// device, socket or symlink) is refused; a FIFO does not block because the open is
    /// non-blocking.
    fn open_regular(&self, rel: &str) -> Result<(File, Stat)> {
        let fd = self.resolve(
            rel,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )?;
        let st = rfs::fstat(&fd).map_err(|e| self.err(rel, e))?;
        let kind = kind_of(FileType::from_raw_mode(st.st_mode));
        if kind != Kind::File {
            return Err(StoreError::NotRegular {
                path: self.display_path(rel),
                what: kind.describe(),
            });
        }
        Ok((File::from(fd), st))
    }

    /// The directory holding `rel`, and `rel`'s last component.
    fn parent<'a>(&self, rel: &'a str) -> Result<(OwnedFd, &'a str)> {
        let (parent, name) = split(rel);
        if name.is_empty() || name == "." || name == ".." {
            return Err(StoreError::InvalidPath {
                rel: rel.to_string(),
                why: "no file name",
            });
        }
        Ok((self.open_dir(parent)?, name))
    }

    fn sync_fd(&self, rel: &str, fd: impl AsFd) -> Result<()> {
        rfs::fsync(fd).map_err(|e| self.err(rel, e))
    }
}

impl Backend for Gate {
    fn display_path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.path.to_path_buf()
        } else {
            self.path.join(rel)
        }
    }

    fn stat(&self, rel: &str) -> Result<Option<Status>> {
        match self.resolve(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => match rfs::fstat(&fd) {
                Ok(st) => Ok(Some(status_of(&st))),
                Err(e) => Err(self.err(rel, e)),
            },
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, rel: &str) -> Result<Vec<Entry>> {
        let fd = self.open_dir(rel)?;
        let dir = rfs::Dir::read_from(&fd).map_err(|e| self.err(rel, e))?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| self.err(rel, e))?;
            let raw = entry.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(raw) else {
                continue;
            };
            let kind = match entry.file_type() {
                FileType::Unknown => match rfs::statat(&fd, raw, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => kind_of(FileType::from_raw_mode(st.st_mode)),
                    Err(_) => continue,
                },
                t => kind_of(t),
            };
            out.push(Entry {
                name: name.to_string(),
                kind,
            });
        }
        Ok(out)
    }

    fn open(&self, rel: &str) -> Result<Blob> {
        let (file, st) = self.open_regular(rel)?;
        Ok(Blob::new(file, status_of(&st).meta))
    }

    fn read_capped(&self, rel: &str, cap: u64) -> Result<Vec<u8>> {
        let (file, st) = self.open_regular(rel)?;
        let too_large = || StoreError::TooLarge {
            path: self.display_path(rel),
            limit: cap,
        };
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size > cap {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // One byte past the cap shows a file that grew after the size check.
        (&file)
            .take(cap + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io_err(rel, e))?;
        if bytes.len() as u64 > cap {
            return Err(too_large());
        }
        Ok(bytes)
    }

    /// The temporary name has a fixed length, so a target name that fits in `NAME_MAX`
    /// always has a temporary file that fits too.
    fn stage(&self, rel: &str, mode: u32) -> Result<(Box<dyn Stage>, File)> {
        let (parent, _) = split(rel);
        let dir = self.open_dir(parent)?;
        loop {
            let name = fsutil::temp_name().map_err(|e| self.io_err(rel, e))?;
            let created = rfs::openat(
                &dir,
                name.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            );
            match created {
                Ok(fd) => {
                    let rel = if parent.is_empty() {
                        name.clone()
                    } else {
                        format!("{parent}/{name}")
                    };
                    let temp = TempFile {
                        gate: self.clone(),
                        dir,
                        name,
                        rel,
                        pending: true,
                    };
                    return Ok((Box::new(temp), File::from(fd)));
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(self.err(rel, e)),
            }
        }
    }

    /// Also makes the new entry durable.
    fn mkdir(&self, rel: &str, mode: u32) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        rfs::mkdirat(&dir, name, Mode::from_raw_mode(mode)).map_err(|e| self.err(rel, e))?;
        self.sync_fd(rel, &dir)
    }

    fn remove_dir(&self, rel: &str) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        rfs::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(|e| self.err(rel, e))?;
        self.sync_fd(rel, &dir)
    }

    fn remove_file(&self, rel: &str) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        rfs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| self.err(rel, e))?;
        self.sync_fd(rel, &dir)
    }

    /// Makes both directory entries durable.
    fn rename(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        let flags = if noreplace {
            rfs::RenameFlags::NOREPLACE
        } else {
            rfs::RenameFlags::empty()
        };
        rfs::renameat_with(&from_dir, from_name, &to_dir, to_name, flags)
            .map_err(|e| self.err(from, e))?;
        self.sync_fd(to, &to_dir)?;
        self.sync_fd(from, &from_dir)
    }

    fn set_times(&self, rel: &str, atime: Option<SetTime>, mtime: Option<SetTime>) -> Result<()> {
        let spec = |t: Option<SetTime>| match t {
            None => rfs::Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_OMIT,
            },
            Some(SetTime::Now) => rfs::Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_NOW,
            },
            Some(SetTime::At(t)) => {
                let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                rfs::Timespec {
                    tv_sec: d.as_secs() as _,
                    tv_nsec: d.subsec_nanos() as _,
                }
            }
        };
        let times = rfs::Timestamps {
            last_access: spec(atime),
            last_modification: spec(mtime),
        };
        if rel.is_empty() {
            return rfs::futimens(&*self.root, &times).map_err(|e| self.err(rel, e));
        }
        let (dir, name) = self.parent(rel)?;
        rfs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| self.err(rel, e))
    }

    fn usage(&self) -> Result<Usage> {
        let st = rfs::fstatvfs(&*self.root).map_err(|e| self.err("", e))?;
        Ok(Usage {
            block_size: st.f_bsize,
            fragment_size: st.f_frsize,
            blocks: st.f_blocks,
            blocks_free: st.f_bfree,
            blocks_available: st.f_bavail,
            files: st.f_files,
            files_free: st.f_ffree,
        })
    }

    fn local_dir(&self, rel: &str) -> Result<OwnedFd> {
        self.open_dir(rel)
    }
}

/// A temporary file in the store, removed when dropped unless committed.
struct TempFile {
    gate: Gate,
    dir: OwnedFd,
    name: String,
    rel: String,
    /// Still to be removed on drop (false once renamed into place).
    pending: bool,
}

impl Stage for TempFile {
    fn commit(mut self: Box<Self>, file: File, target: &str, noreplace: bool) -> Result<Blob> {
        let gate = &self.gate;
        let flags = if noreplace {
            rfs::RenameFlags::NOREPLACE
        } else {
            rfs::RenameFlags::empty()
        };
        file.sync_all().map_err(|e| gate.io_err(&self.rel, e))?;
        // Before the rename: once it is in place, the commit has happened.
        let st = rfs::fstat(&file).map_err(|e| gate.err(&self.rel, e))?;
        let (to_dir, to_name) = gate.parent(target)?;
        rfs::renameat_with(&self.dir, self.name.as_str(), &to_dir, to_name, flags)
            .map_err(|e| gate.err(target, e))?;
        // Renamed: nothing left to remove (the directory fd still closes on drop).
        self.pending = false;
        self.gate.sync_fd(target, &to_dir)?;
        Ok(Blob::new(file, status_of(&st).meta))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.pending {
            return;
        }
        if let Err(e) = rfs::unlinkat(
            &self.dir,
            OsStr::from_bytes(self.name.as_bytes()),
            AtFlags::empty(),
        ) {
            log::warn!("cannot remove temporary file {}: {e}", self.rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::Source;
    use crate::store::backend::write_atomic;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    /// The gate as the store sees it: through the trait only.
    fn backend() -> (tempfile::TempDir, Box<dyn Backend>) {
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate::open(dir.path()).unwrap();
        (dir, Box::new(gate))
    }

    fn is_symlink<T>(r: Result<T>) -> bool {
        matches!(r, Err(StoreError::Symlink(_)))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn symlinks_are_never_followed() {
        let (dir, b) = backend();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"root only").unwrap();
        symlink(outside.path(), dir.path().join("lnk")).unwrap();
        symlink(outside.path().join("secret"), dir.path().join("f.tvlt")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        // On the way to the path.
        assert!(is_symlink(b.open("lnk/secret")));
        assert!(is_symlink(b.read_capped("lnk/secret", 100)));
        assert!(is_symlink(b.stat("lnk/secret")));
        assert!(is_symlink(b.list("lnk")));
        assert!(b.mkdir("lnk/new", 0o755).is_err());
        assert!(b.create_dir_all("lnk/a/b", 0o755).is_err());
        assert!(b.stage("lnk/x", 0o600).is_err());
        assert!(b.write_small("lnk/x", b"x", 0o600).is_err());
        assert!(b.rename("d", "lnk/d", false).is_err());
        assert!(b.remove_file("lnk/secret").is_err());
        assert!(b.set_times("lnk/secret", Some(SetTime::Now), None).is_err());
        // At the path.
        assert!(is_symlink(b.open("f.tvlt")));
        assert!(is_symlink(b.read_capped("f.tvlt", 100)));
        assert!(is_symlink(b.local_dir("lnk")));
        // The link itself is seen as a link, and removing it removes only the link.
        assert_eq!(b.kind("lnk").unwrap(), Some(Kind::Symlink));
        b.remove_file("lnk").unwrap();
        assert_eq!(names(outside.path()), ["secret"], "nothing changed outside");
        assert!(matches!(
            b.open("../x"),
            Err(StoreError::Symlink(_)) | Err(StoreError::Io { .. })
        ));
    }

    #[test]
    fn only_regular_files_open_and_reads_are_capped() {
        let (dir, b) = backend();
        let fifo = dir.path().join("hang.tvlt");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // Returns at once (no writer needed) and refuses the FIFO.
        assert!(matches!(
            b.open("hang.tvlt"),
            Err(StoreError::NotRegular { .. })
        ));
        assert!(matches!(
            b.read_capped("hang.tvlt", 10),
            Err(StoreError::NotRegular { .. })
        ));
        assert_eq!(b.kind("hang.tvlt").unwrap(), Some(Kind::Other));
        std::fs::create_dir(dir.path().join("d")).unwrap();
        assert!(matches!(b.open("d"), Err(StoreError::NotRegular { .. })));
        std::fs::write(dir.path().join("big"), vec![b'x'; 100]).unwrap();
        assert_eq!(b.read_capped("big", 100).unwrap().len(), 100);
        assert!(matches!(
            b.read_capped("big", 99),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(b.open("missing").is_err_and(|e| e.is_not_found()));
        assert!(b.stat("missing").unwrap().is_none());
        // A blob reads by position and reports the file's status.
        let blob = b.open("big").unwrap();
        assert_eq!(blob.size().unwrap(), 100);
        let mut two = [0u8; 2];
        blob.read_exact_at(&mut two, 98).unwrap();
        assert_eq!(&two, b"xx");
        assert!(blob.read_exact_at(&mut two, 99).is_err(), "past the end");
        assert_eq!(
            blob.meta().mtime,
            b.stat("big").unwrap().unwrap().meta.mtime
        );
    }

    #[test]
    fn staged_files_commit_atomically_or_vanish() {
        let (dir, b) = backend();
        b.create_dir_all("m/n", 0o755).unwrap();
        b.write_small("m/a", b"old", 0o600).unwrap();
        let (stage, mut file) = b.stage("m/a", 0o600).unwrap();
        file.write_all(b"new content").unwrap();
        // Not visible at the target until committed.
        assert_eq!(std::fs::read(dir.path().join("m/a")).unwrap(), b"old");
        assert_eq!(names(&dir.path().join("m")).len(), 3, "a, n and the stage");
        let blob = stage.commit(file, "m/a", false).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("m/a")).unwrap(),
            b"new content"
        );
        assert_eq!(names(&dir.path().join("m")), ["a", "n"]);
        let mut back = vec![0u8; blob.size().unwrap() as usize];
        blob.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, b"new content", "the committed content reads back");
        // Committed where the file is now (renamed meanwhile), in another directory.
        let (stage, mut file) = b.stage("m/a", 0o600).unwrap();
        file.write_all(b"moved").unwrap();
        b.rename("m/a", "m/n/b", true).unwrap();
        stage.commit(file, "m/n/b", false).unwrap();
        assert_eq!(std::fs::read(dir.path().join("m/n/b")).unwrap(), b"moved");
        assert_eq!(names(&dir.path().join("m")), ["n"]);
        // With noreplace, an existing target stays and the staged file goes.
        let (stage, mut file) = b.stage("m/n/b", 0o600).unwrap();
        file.write_all(b"second").unwrap();
        let refused = stage.commit(file, "m/n/b", true).err().unwrap();
        assert!(refused.to_string().contains("exists"), "{refused}");
        assert_eq!(names(&dir.path().join("m/n")), ["b"]);
        assert_eq!(std::fs::read(dir.path().join("m/n/b")).unwrap(), b"moved");
        // Dropped uncommitted: nothing is left, the target untouched.
        let (stage, mut file) = b.stage("m/n/b", 0o600).unwrap();
        file.write_all(b"lost").unwrap();
        drop((stage, file));
        assert_eq!(names(&dir.path().join("m/n")), ["b"]);
        assert_eq!(std::fs::read(dir.path().join("m/n/b")).unwrap(), b"moved");
        // A failed fill leaves nothing either.
        let failed = write_atomic(&*b, "m/n/b", 0o600, |_| {
            Err(StoreError::NoSuchFile("x".into()))
        });
        assert!(failed.is_err());
        assert_eq!(names(&dir.path().join("m/n")), ["b"]);
        // A name of NAME_MAX bytes still gets a staged file beside it.
        let long = format!("m/{}", "n".repeat(255));
        b.write_small(&long, b"", 0o600).unwrap();
        // Something that is not a regular file is never replaced.
        assert!(matches!(
            b.write_small("m/n", b"", 0o600),
            Err(StoreError::NotRegular { .. })
        ));
        assert!(matches!(
            b.rename("m/n/b", &long, true),
            Err(StoreError::Io { .. })
        ));
    }
}
