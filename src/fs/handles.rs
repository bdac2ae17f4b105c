//! The open-file table: handles of open files and listings of open directories, by handle
//! number. Both maps are leaf locks (see the lock order on `Core`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::attr::Kind;
use super::eager::CopyRef;
use super::limits::Charge;
use super::prefetch::ReadAhead;
use super::versions::{FileVersion, PageRef};
use super::write::OpenSession;
use crate::access::UserSession;
use crate::sync::{read, write};

/// One open(2) of a file.
pub(super) struct Handle {
    /// The committed version a read-only handle reads (close-to-open consistency).
    pub file: Option<Arc<FileVersion>>,
    /// The write session of a handle open for writing (it reads the session's content).
    pub write: Option<Arc<OpenSession>>,
    pub user: Arc<UserSession>,
    pub ino: u64,
    pub rel: String,
    /// The prefetch policy's state for this handle's reads.
    pub ahead: ReadAhead,
    /// Bytes this handle read through the daemon (the `auto` data path copies a version
    /// whole once a handle has read half of it).
    pub read_bytes: AtomicU64,
    /// The plaintext copy the kernel reads for this handle (passthrough), held while open.
    _copy: Option<CopyRef>,
    /// This handle's place in the uid's bound on open handles.
    _slot: Charge,
    /// Counts this handle among those that may fill the inode's page cache.
    _pages: PageRef,
}

impl Handle {
    pub fn new(
        reads: Reads,
        user: Arc<UserSession>,
        ino: u64,
        rel: String,
        slot: Charge,
        pages: PageRef,
        copy: Option<CopyRef>,
    ) -> Self {
        let (file, write) = match reads {
            Reads::Version(f) => {
                f.readers.fetch_add(1, Ordering::Relaxed);
                (Some(f), None)
            }
            Reads::Session(s) => (None, Some(s)),
        };
        Handle {
            file,
            write,
            user,
            ino,
            rel,
            ahead: ReadAhead::default(),
            read_bytes: AtomicU64::new(0),
            _copy: copy,
            _slot: slot,
            _pages: pages,
        }
    }
}

/// What a handle reads.
pub(super) enum Reads {
    Version(Arc<FileVersion>),
    Session(Arc<OpenSession>),
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            f.readers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

/// An open directory's entries, `.` and `..` first.
pub type Listing = Vec<DirEntry>;

/// What one listing entry takes besides its name's bytes (the entry, the map slot).
pub(super) const LISTING_ENTRY: usize = std::mem::size_of::<DirEntry>() + 16;

pub(super) struct OpenFiles {
    pub handles: RwLock<HashMap<u64, Arc<Handle>>>,
    /// Listings of open directories, taken at opendir, so that a long directory is read in
    /// one pass however many readdir calls it takes; each charged to its opener.
    dirs: RwLock<HashMap<u64, (Arc<Listing>, Charge)>>,
    next_fh: AtomicU64,
}

impl OpenFiles {
    pub fn new() -> Self {
        OpenFiles {
            handles: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    fn next(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        read(&self.handles).get(&fh).cloned()
    }

    pub fn add(&self, handle: Handle) -> u64 {
        let fh = self.next();
        write(&self.handles).insert(fh, Arc::new(handle));
        fh
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        write(&self.handles).remove(&fh)
    }

    /// Whether any handle is open on inode `ino`.
    pub fn holds(&self, ino: u64) -> bool {
        read(&self.handles).values().any(|h| h.ino == ino)
    }

    pub fn add_listing(&self, listing: Listing, charge: Charge) -> u64 {
        let fh = self.next();
        write(&self.dirs).insert(fh, (Arc::new(listing), charge));
        fh
    }

    pub fn listing(&self, fh: u64) -> Option<Arc<Listing>> {
        read(&self.dirs).get(&fh).map(|(l, _)| l.clone())
    }

    pub fn remove_listing(&self, fh: u64) {
        write(&self.dirs).remove(&fh);
    }
}
