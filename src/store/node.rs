//! What a mount path is in the store, read without a key: a directory, or a container with
//! its plaintext length and chunk size (from the fixed header), plus the times and owner the
//! mount shows.

use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::Stat;

use super::{container_err, container_rel, Result, Store, StoreError};
use crate::container::{ContainerError, FixedHeader, FIXED_HEADER_LEN};

/// Times and owner of a store entry.
#[derive(Debug, Clone)]
pub struct Meta {
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    fn of(st: &Stat) -> Meta {
        Meta {
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }
}

fn time(secs: i64, nsecs: u64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nsecs.min(999_999_999) as u32),
        Err(_) => UNIX_EPOCH,
    }
}

#[derive(Debug, Clone)]
pub enum Node {
    Dir(Meta),
    File {
        meta: Meta,
        plaintext_len: u64,
        chunk_size: u64,
    },
}

impl Store {
    /// What mount path `rel` is: `None` if nothing is there. A directory wins over a
    /// container of the same name (as in listings). A link or special file, at the path or
    /// on the way to it, is an error ([`StoreError::Symlink`], [`StoreError::NotRegular`]),
    /// as is a container whose fixed header does not parse.
    pub fn node(&self, rel: &str) -> Result<Option<Node>> {
        match self.gate.stat(rel)? {
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                return Ok(Some(Node::Dir(Meta::of(&st))))
            }
            _ if rel.is_empty() => {
                return Err(StoreError::NotRegular {
                    path: self.gate.display_path(""),
                    what: "not a directory",
                })
            }
            _ => {}
        }
        let file = match self.open_container_file(rel) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let path = self.gate.display_path(&container_rel(rel)?);
        let st = rustix::fs::fstat(&file).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        let header = file
            .read_exact_at(&mut fixed, 0)
            .map_err(ContainerError::from)
            .and_then(|()| FixedHeader::decode(&fixed))
            .map_err(container_err(&path))?;
        Ok(Some(Node::File {
            meta: Meta::of(&st),
            plaintext_len: header.plaintext_len,
            chunk_size: header.chunk_size(),
        }))
    }
}
