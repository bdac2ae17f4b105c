//! What a mount path is in the store, read without a key: a directory with its owner, group
//! and mode (from `.tvault-dir`), a container with its plaintext length and chunk size (from
//! the fixed header) and its owner, group and mode (from the slot section), or a link, plus
//! the times of the backing entry.

use super::{container_err, container_rel, Kind, Meta, Result, Status, Store, StoreError};
use crate::container::{self, Ownership};

#[derive(Debug, Clone)]
pub enum Node {
    Dir {
        meta: Meta,
        /// Its `.tvault-dir`, or the legacy default.
        ownership: Ownership,
    },
    File {
        meta: Meta,
        plaintext_len: u64,
        chunk_size: u64,
        /// Its record, or a version 1 container's default.
        ownership: Ownership,
    },
    /// `REL.tvln`: its owner, and the length of its target (the size `lstat` shows).
    Link {
        meta: Meta,
        own: Ownership,
        target_len: u64,
    },
}

impl Store {
    /// What mount path `rel` is: `None` if nothing is there. A directory wins over a
    /// container of the same name, and a container over a link (as in listings). An OS
    /// symlink or special file, at the path or on the way to it, is an error
    /// ([`StoreError::Symlink`], [`StoreError::NotRegular`]), as is a container whose fixed
    /// header or slot section does not parse, a link file that does not
    /// ([`StoreError::BadLink`]), and a directory whose `.tvault-dir` cannot be used
    /// ([`StoreError::BadDirMeta`]).
    pub(crate) fn node(&self, rel: &str) -> Result<Option<Node>> {
        match self.backend.stat(rel)? {
            Some(Status {
                kind: Kind::Dir,
                meta,
            }) => {
                let ownership = self.dir_ownership(rel)?;
                return Ok(Some(Node::Dir { meta, ownership }));
            }
            _ if rel.is_empty() => {
                return Err(StoreError::NotRegular {
                    path: self.backend.display_path(""),
                    what: "not a directory",
                })
            }
            _ => {}
        }
        let blob = match self.open_container_file(rel) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return self.link_node(rel),
            Err(e) => return Err(e),
        };
        let path = self.backend.display_path(&container_rel(rel)?);
        let (header, ownership) = container::read_ownership(&blob).map_err(container_err(&path))?;
        Ok(Some(Node::File {
            meta: blob.meta(),
            plaintext_len: header.plaintext_len,
            chunk_size: header.chunk_size(),
            ownership,
        }))
    }
}
