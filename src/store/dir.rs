//! The gate to the backing store directory: the only code that touches it.
//!
//! Whoever can write the store (a backup or sync job, another host's admin) may plant
//! symlinks, FIFOs or huge files in it, and the mount daemon runs as root. So every path is
//! resolved beneath the store root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: a
//! symlink anywhere in a path is refused, never followed, and nothing can resolve outside the
//! root. Changes (`mkdirat`, `unlinkat`, `renameat`, `utimensat`) act on a name inside a
//! directory opened that way, so they cannot follow a link either. Only regular files and
//! directories are opened (files with `O_NONBLOCK`, so a FIFO cannot block the opener), and
//! small files are read with a size cap.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

use super::{Result, StoreError};
use crate::fsutil;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// What a store path is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket or device: never opened.
    Other,
}

impl Kind {
    fn of(file_type: FileType) -> Kind {
        match file_type {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Other => "a FIFO, socket or device",
        }
    }
}

/// One directory entry with a UTF-8 name (others are never shown or used).
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
}

/// Time to set with [`Gate::set_times`].
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(std::time::SystemTime),
}

/// The open store root. Paths given to it are store-relative with `/` separators; `""` is
/// the root itself.
pub struct Gate {
    root: OwnedFd,
    path: PathBuf,
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
            root,
            path: path.to_path_buf(),
        })
    }

    pub fn root_path(&self) -> &Path {
        &self.path
    }

    /// The full path of `rel`, for messages.
    pub fn display_path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
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
        rfs::openat2(&self.root, dot(rel), flags | OFlags::CLOEXEC, mode, RESOLVE)
            .map_err(|e| self.err(rel, e))
    }

    /// A directory of the store, opened for reading.
    pub fn open_dir(&self, rel: &str) -> Result<OwnedFd> {
        self.resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
    }

    /// Status of `rel` without following it; `None` if it does not exist.
    pub fn stat(&self, rel: &str) -> Result<Option<Stat>> {
        match self.resolve(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => rfs::fstat(&fd).map(Some).map_err(|e| self.err(rel, e)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What `rel` is, `None` if it does not exist. A path through a symlink is an error.
    pub fn kind(&self, rel: &str) -> Result<Option<Kind>> {
        Ok(self
            .stat(rel)?
            .map(|st| Kind::of(FileType::from_raw_mode(st.st_mode))))
    }

    pub fn is_dir(&self, rel: &str) -> bool {
        matches!(self.kind(rel), Ok(Some(Kind::Dir)))
    }

    /// Opens a regular file for reading. Anything else (a directory, FIFO, device, socket or
    /// symlink) is refused; a FIFO does not block because the open is non-blocking.
    pub fn open_file(&self, rel: &str) -> Result<File> {
        let fd = self.resolve(
            rel,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )?;
        let st = rfs::fstat(&fd).map_err(|e| self.err(rel, e))?;
        let kind = Kind::of(FileType::from_raw_mode(st.st_mode));
        if kind != Kind::File {
            return Err(StoreError::NotRegular {
                path: self.display_path(rel),
                what: kind.describe(),
            });
        }
        Ok(File::from(fd))
    }

    /// The whole content of a small regular file, refused beyond `cap` bytes.
    pub fn read_capped(&self, rel: &str, cap: u64) -> Result<Vec<u8>> {
        let file = self.open_file(rel)?;
        let too_large = || StoreError::TooLarge {
            path: self.display_path(rel),
            limit: cap,
        };
        let size = file.metadata().map_err(|e| self.io_err(rel, e))?.len();
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

    /// The entries of directory `rel` with UTF-8 names, unsorted, without `.` and `..`.
    pub fn list(&self, rel: &str) -> Result<Vec<Entry>> {
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
                    Ok(st) => Kind::of(FileType::from_raw_mode(st.st_mode)),
                    Err(_) => continue,
                },
                t => Kind::of(t),
            };
            out.push(Entry {
                name: name.to_string(),
                kind,
            });
        }
        Ok(out)
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

    /// Creates directory `rel` (its parent must exist) and makes the entry durable.
    pub fn mkdir(&self, rel: &str, mode: u32) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        rfs::mkdirat(&dir, name, Mode::from_raw_mode(mode)).map_err(|e| self.err(rel, e))?;
        self.sync_fd(rel, &dir)
    }

    /// Creates `rel` and every missing directory above it.
    pub fn create_dir_all(&self, rel: &str, mode: u32) -> Result<()> {
        let mut at = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            match self.kind(&at)? {
                Some(Kind::Dir) => {}
                None => match self.mkdir(&at, mode) {
                    Err(StoreError::Io { source, .. })
                        if source.kind() == io::ErrorKind::AlreadyExists => {}
                    other => other?,
                },
                Some(kind) => {
                    return Err(StoreError::NotRegular {
                        path: self.display_path(&at),
                        what: kind.describe(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Removes the empty directory `rel`.
    pub fn remove_dir(&self, rel: &str) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        rfs::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(|e| self.err(rel, e))?;
        self.sync_fd(rel, &dir)
    }

    /// Removes the file (or link) `rel`; never a directory.
    pub fn remove_file(&self, rel: &str) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        rfs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| self.err(rel, e))?;
        self.sync_fd(rel, &dir)
    }

    /// Renames `from` to `to` (replacing `to` unless `noreplace`) and makes both directory
    /// entries durable.
    pub fn rename(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
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

    /// Sets the access and/or modification time of `rel` (a file or directory).
    pub fn set_times(
        &self,
        rel: &str,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> Result<()> {
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
                let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
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
            return rfs::futimens(&self.root, &times).map_err(|e| self.err(rel, e));
        }
        let (dir, name) = self.parent(rel)?;
        rfs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| self.err(rel, e))
    }

    pub fn statvfs(&self) -> Result<rfs::StatVfs> {
        rfs::fstatvfs(&self.root).map_err(|e| self.err("", e))
    }

    /// Creates an empty temporary file in the directory of `rel` (so that renaming it over
    /// `rel` is atomic), with permission bits `mode`. The name has a fixed length, so a
    /// target name that fits in `NAME_MAX` always has a temporary file that fits too.
    pub fn create_temp_beside(&self, rel: &str, mode: u32) -> Result<(TempFile, File)> {
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
                    return Ok((
                        TempFile {
                            dir,
                            name,
                            rel,
                            pending: true,
                        },
                        File::from(fd),
                    ));
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(self.err(rel, e)),
            }
        }
    }

    /// Creates `rel` atomically with permission bits `mode`: `fill` writes the content into a
    /// fresh temporary file; on any error the temporary file is removed and `rel` is
    /// untouched. An existing `rel` that is not a regular file is refused, never replaced.
    pub fn write_atomic(
        &self,
        rel: &str,
        mode: u32,
        fill: impl FnOnce(&mut File) -> Result<()>,
    ) -> Result<()> {
        match self.kind(rel)? {
            None | Some(Kind::File) => {}
            Some(kind) => {
                return Err(StoreError::NotRegular {
                    path: self.display_path(rel),
                    what: kind.describe(),
                })
            }
        }
        let (temp, mut file) = self.create_temp_beside(rel, mode)?;
        fill(&mut file)?;
        temp.commit(self, &file, rel)
    }
}

/// A temporary file in the store, removed when dropped unless committed.
pub struct TempFile {
    dir: OwnedFd,
    name: String,
    rel: String,
    /// Still to be removed on drop (false once renamed into place).
    pending: bool,
}

impl TempFile {
    /// Makes `file` (this temporary file's content) durable and renames it over `target`.
    pub fn commit(self, gate: &Gate, file: &File, target: &str) -> Result<()> {
        self.commit_with(gate, file, target, rfs::RenameFlags::empty())
    }

    /// As [`TempFile::commit`], failing (`EEXIST`) if something is at `target` already.
    pub fn commit_new(self, gate: &Gate, file: &File, target: &str) -> Result<()> {
        self.commit_with(gate, file, target, rfs::RenameFlags::NOREPLACE)
    }

    fn commit_with(
        mut self,
        gate: &Gate,
        file: &File,
        target: &str,
        flags: rfs::RenameFlags,
    ) -> Result<()> {
        file.sync_all().map_err(|e| gate.io_err(&self.rel, e))?;
        let (to_dir, to_name) = gate.parent(target)?;
        rfs::renameat_with(&self.dir, self.name.as_str(), &to_dir, to_name, flags)
            .map_err(|e| gate.err(target, e))?;
        // Renamed: nothing left to remove (the directory fd still closes on drop).
        self.pending = false;
        gate.sync_fd(target, &to_dir)
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
    use std::os::unix::fs::symlink;

    fn gate() -> (tempfile::TempDir, Gate) {
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate::open(dir.path()).unwrap();
        (dir, gate)
    }

    #[test]
    fn symlinks_are_never_followed() {
        let (dir, gate) = gate();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"root only").unwrap();
        symlink(outside.path(), dir.path().join("lnk")).unwrap();
        symlink(outside.path().join("secret"), dir.path().join("f.tvlt")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        assert!(matches!(
            gate.open_file("lnk/secret"),
            Err(StoreError::Symlink(_))
        ));
        assert!(matches!(
            gate.open_file("f.tvlt"),
            Err(StoreError::Symlink(_))
        ));
        assert!(matches!(gate.list("lnk"), Err(StoreError::Symlink(_))));
        assert!(gate.mkdir("lnk/new", 0o755).is_err());
        assert!(gate.create_temp_beside("lnk/x", 0o600).is_err());
        assert!(gate.rename("d", "lnk/d", false).is_err());
        assert!(gate.remove_file("lnk/secret").is_err());
        assert!(gate
            .set_times("lnk/secret", Some(SetTime::Now), None)
            .is_err());
        // The link itself is seen as a link, and removing it removes only the link.
        assert_eq!(gate.kind("lnk").unwrap(), Some(Kind::Symlink));
        gate.remove_file("lnk").unwrap();
        assert!(outside.path().join("secret").exists());
        let names: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "nothing was created outside the store");
        assert!(matches!(
            gate.open_file("../x"),
            Err(StoreError::Symlink(_)) | Err(StoreError::Io { .. })
        ));
    }

    #[test]
    fn only_regular_files_open_and_reads_are_capped() {
        let (dir, gate) = gate();
        let fifo = dir.path().join("hang.tvlt");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // Returns at once (no writer needed) and refuses the FIFO.
        assert!(matches!(
            gate.open_file("hang.tvlt"),
            Err(StoreError::NotRegular { .. })
        ));
        assert_eq!(gate.kind("hang.tvlt").unwrap(), Some(Kind::Other));
        std::fs::write(dir.path().join("big"), vec![b'x'; 100]).unwrap();
        assert_eq!(gate.read_capped("big", 100).unwrap().len(), 100);
        assert!(matches!(
            gate.read_capped("big", 99),
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[test]
    fn temp_files_commit_or_vanish() {
        let (dir, gate) = gate();
        gate.mkdir("m", 0o755).unwrap();
        gate.write_atomic("m/a", 0o600, |f| {
            std::io::Write::write_all(f, b"one").map_err(|e| StoreError::Io {
                path: PathBuf::new(),
                source: e,
            })
        })
        .unwrap();
        assert_eq!(std::fs::read(dir.path().join("m/a")).unwrap(), b"one");
        let failed = gate.write_atomic("m/a", 0o600, |_| Err(StoreError::NoSuchFile("x".into())));
        assert!(failed.is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("m")).unwrap().count(), 1);
        // A name of NAME_MAX bytes still gets a temporary file beside it.
        let long = "n".repeat(255);
        gate.write_atomic(&format!("m/{long}"), 0o600, |_| Ok(()))
            .unwrap();
        std::fs::create_dir(dir.path().join("m/dir")).unwrap();
        assert!(matches!(
            gate.write_atomic("m/dir", 0o600, |_| Ok(())),
            Err(StoreError::NotRegular { .. })
        ));
    }
}
