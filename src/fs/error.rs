//! The filesystem core's error: the errno a process sees, with the error behind it. Every
//! errno the mount returns is decided here, from the typed errors of the layers below.

use std::fmt;

use crate::access::{Denial, ModeNeed};
use crate::container::ContainerError;
use crate::store::StoreError;

use super::limits::LimitError;
use super::session::WriteError;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An errno and, when there is one worth logging, what caused it.
#[derive(Debug)]
pub struct FsError {
    errno: i32,
    source: Option<Source>,
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// A plain refusal (`ENOENT`, `EACCES`, `EISDIR`…): nothing went wrong, nothing to log.
    pub const fn new(errno: i32) -> FsError {
        FsError {
            errno,
            source: None,
        }
    }

    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// What went wrong, when something did (an I/O or integrity error): worth logging.
    pub fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    fn caused(errno: i32, source: impl Into<Source>) -> FsError {
        FsError {
            errno,
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.errno);
        match &self.source {
            Some(source) => write!(f, "{source} ({text})"),
            None => write!(f, "{text}"),
        }
    }
}

/// The OS error inside an I/O error, or `EIO`.
fn os_errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> FsError {
        let errno = match &e {
            StoreError::Io { source, .. } => os_errno(source),
            StoreError::NoSuchFile(_) => libc::ENOENT,
            StoreError::FileExists(_) => libc::EEXIST,
            StoreError::InvalidPath { .. } => libc::EINVAL,
            // Links and special files in the store are never shown: to the mount they do
            // not exist.
            StoreError::Symlink(_) | StoreError::NotRegular { .. } => libc::ENOENT,
            StoreError::TimesUnsupported(_) => libc::EOPNOTSUPP,
            _ => libc::EIO,
        };
        FsError::caused(errno, e)
    }
}

impl From<ContainerError> for FsError {
    /// A container that does not authenticate (or parse) is an I/O error to the reader; an
    /// OS error keeps its errno.
    fn from(e: ContainerError) -> FsError {
        let errno = match &e {
            ContainerError::Io(source) => os_errno(source),
            _ => libc::EIO,
        };
        FsError::caused(errno, e)
    }
}

impl From<WriteError> for FsError {
    fn from(e: WriteError) -> FsError {
        match e {
            WriteError::Store(e) => e.into(),
            WriteError::Container(e) => e.into(),
            e @ WriteError::TooLarge => FsError::caused(libc::EFBIG, e),
            e @ WriteError::Poisoned => FsError::caused(libc::EIO, e),
            e => FsError::caused(libc::EIO, e),
        }
    }
}

impl From<LimitError> for FsError {
    fn from(e: LimitError) -> FsError {
        FsError::new(match e {
            LimitError::PerUid => libc::EMFILE,
            LimitError::Total => libc::ENFILE,
        })
    }
}

impl From<Denial> for FsError {
    /// A decision is `EACCES`; a store or container that could not be read to decide is
    /// `EIO` (with the cause, for the log).
    fn from(d: Denial) -> FsError {
        match d {
            Denial::NoKeyring | Denial::Locked | Denial::NoKeySlot => FsError::new(libc::EACCES),
            Denial::Integrity(e) => FsError::caused(libc::EIO, e),
            Denial::StoreError(e) => FsError::caused(libc::EIO, e),
            // Like the kernel: changing what one does not own is EPERM, missing bits EACCES.
            Denial::Mode(m) => FsError::new(match m.need {
                ModeNeed::Owner | ModeNeed::Chown | ModeNeed::Sticky | ModeNeed::Policy => {
                    libc::EPERM
                }
                ModeNeed::Read | ModeNeed::Write | ModeNeed::Execute => libc::EACCES,
            }),
        }
    }
}
