//! The store's one boundary to its backing storage: [`Backend`], and [`Blob`], an open file
//! of it. `Store` reaches its storage only through this trait, so another kind of storage
//! is one more implementation, not a change to `Store`, the filesystem core or the CLI.
//! The local directory backend is `Gate` (`dir.rs`).
//!
//! Whoever can write the backing storage (a backup or sync job, another host's admin) may
//! plant links, FIFOs or huge files in it, and the mount daemon runs as root. Every backend
//! keeps this contract (docs/SECURITY.md, "The store is hostile input"):
//!
//! - Paths are store-relative with `/` separators (`""` is the root), and nothing resolves
//!   outside the store. **A link is never followed**, at the path or on the way to it: such a
//!   path is refused with [`StoreError::Symlink`]. `stat` and `list` report a link as
//!   [`Kind::Symlink`] (so that it is skipped, or removed by `remove_file`, never its target).
//! - **Only regular files and directories are used.** `open` and `read_capped` refuse anything
//!   else with [`StoreError::NotRegular`], and opening never blocks (a FIFO cannot hang it).
//! - **Reads are bounded.** `read_capped` refuses a file over its cap
//!   ([`StoreError::TooLarge`]), even one that grows while it is read. A [`Blob`] is read by
//!   position (`pread`), never mapped: a file cut short under a reader gives an error, not
//!   SIGBUS.
//! - **Replacement is atomic and durable.** A staged file is invisible at its target until
//!   [`Stage::commit`], which makes its content durable and then puts it in place in one step;
//!   a stage dropped uncommitted leaves nothing behind. Temporary names are
//!   [`crate::fsutil::temp_name`]s, which `fsck` recognizes. Directory changes (`mkdir`,
//!   removals, `rename`) are durable when they return, and `rename` with `noreplace` never
//!   replaces anything.
//! - **Errors are [`StoreError`]s** naming the [`Backend::display_path`]; a missing path is
//!   [`StoreError::is_not_found`].

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::SystemTime;

use super::{Result, StoreError};
use crate::container::Source;

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
    pub fn describe(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Other => "a FIFO, socket or device",
        }
    }
}

/// Times of a store entry (owners and modes come from ownership records, not the backing
/// storage).
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// What [`Backend::stat`] finds at a path.
#[derive(Debug, Clone, Copy)]
pub struct Status {
    pub kind: Kind,
    pub meta: Meta,
}

/// One directory entry with a UTF-8 name (others are never shown or used).
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
}

/// Time to set with [`Backend::set_times`].
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

/// Space on the backing storage, as `statvfs` gives it (counts of `fragment_size` blocks).
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub block_size: u64,
    pub fragment_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

/// An open regular file of the store, read by position, with its times and owner as of the
/// open. Containers are read as `Container<Blob>` / `Reader<Blob>`: one dynamic call per read,
/// straight into the caller's buffer.
pub struct Blob {
    source: Box<dyn Source>,
    meta: Meta,
}

impl Blob {
    pub fn new(source: impl Source + 'static, meta: Meta) -> Blob {
        Blob {
            source: Box::new(source),
            meta,
        }
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }
}

impl Source for Blob {
    fn size(&self) -> io::Result<u64> {
        self.source.size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.source.read_exact_at(buf, offset)
    }

    fn will_need(&self, offset: u64, len: u64) {
        self.source.will_need(offset, len)
    }
}

/// A new file being written beside its target (see [`Backend::stage`]). Dropping it
/// uncommitted removes it.
pub trait Stage: Send {
    /// Makes `file` (the one `stage` returned, now complete) durable and puts it at `target`
    /// atomically, replacing what is there unless `noreplace` (then `EEXIST`, nothing
    /// replaced). `target` may differ from the path it was staged for (the file was renamed
    /// meanwhile). Returns the committed content, for reading back.
    fn commit(self: Box<Self>, file: File, target: &str, noreplace: bool) -> Result<Blob>;
}

/// The backing storage of a store. See the module doc for the contract every implementation
/// keeps.
pub trait Backend: Send + Sync {
    /// The full name of `rel` (path or URL), for messages.
    fn display_path(&self, rel: &str) -> PathBuf;

    /// Names this store among every store this host reaches, for what the host remembers
    /// about it: the root's full name, and for remote storage the endpoint too (the same
    /// bucket and prefix on two servers are two stores).
    fn location_key(&self) -> String {
        self.display_path("").to_string_lossy().into_owned()
    }

    /// What `rel` is, without following it; `None` if nothing is there.
    fn stat(&self, rel: &str) -> Result<Option<Status>>;

    /// The entries of directory `rel` with UTF-8 names, unsorted, without `.` and `..`.
    fn list(&self, rel: &str) -> Result<Vec<Entry>>;

    /// Opens regular file `rel` for reading.
    fn open(&self, rel: &str) -> Result<Blob>;

    /// The whole content of small regular file `rel`, refused beyond `cap` bytes.
    fn read_capped(&self, rel: &str, cap: u64) -> Result<Vec<u8>>;

    /// A new empty file with permission bits `mode`, beside `rel` (so that committing it at
    /// `rel` is atomic), to be written through the returned `File`: random access, as a
    /// draft needs.
    fn stage(&self, rel: &str, mode: u32) -> Result<(Box<dyn Stage>, File)>;

    /// Creates directory `rel`; its parent must exist.
    fn mkdir(&self, rel: &str, mode: u32) -> Result<()>;

    /// Removes the empty directory `rel`.
    fn remove_dir(&self, rel: &str) -> Result<()>;

    /// Removes file (or link) `rel`; never a directory.
    fn remove_file(&self, rel: &str) -> Result<()>;

    /// Renames `from` to `to`, replacing `to` (a file, or an empty directory for a directory)
    /// unless `noreplace`.
    fn rename(&self, from: &str, to: &str, noreplace: bool) -> Result<()>;

    /// Sets the access and/or modification time of file or directory `rel`.
    fn set_times(&self, rel: &str, atime: Option<SetTime>, mtime: Option<SetTime>) -> Result<()>;

    /// Space used and free.
    fn usage(&self) -> Result<Usage>;

    /// Directory `rel` as a local directory descriptor, for the audit log, which appends and
    /// rotates by name inside it. Storage that is not a local filesystem has none.
    fn local_dir(&self, rel: &str) -> Result<OwnedFd> {
        Err(StoreError::NotLocal(self.display_path(rel)))
    }

    /// What `rel` is, `None` if it does not exist.
    fn kind(&self, rel: &str) -> Result<Option<Kind>> {
        Ok(self.stat(rel)?.map(|st| st.kind))
    }

    /// Creates `rel` and every missing directory above it.
    fn create_dir_all(&self, rel: &str, mode: u32) -> Result<()> {
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

    /// Writes small file `rel` atomically with permission bits `mode`.
    fn write_small(&self, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
        write_atomic(self, rel, mode, |f| {
            f.write_all(bytes).map_err(|source| StoreError::Io {
                path: self.display_path(rel),
                source,
            })
        })
    }
}

/// Creates `rel` atomically with permission bits `mode`: `fill` writes the content into a
/// staged file; on any error the staged file is removed and `rel` is untouched. An existing
/// `rel` that is not a regular file is refused, never replaced.
pub(crate) fn write_atomic<B: Backend + ?Sized>(
    backend: &B,
    rel: &str,
    mode: u32,
    fill: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    match backend.kind(rel)? {
        None | Some(Kind::File) => {}
        Some(kind) => {
            return Err(StoreError::NotRegular {
                path: backend.display_path(rel),
                what: kind.describe(),
            })
        }
    }
    let (stage, mut file) = backend.stage(rel, mode)?;
    fill(&mut file)?;
    stage.commit(file, rel, false).map(drop)
}
