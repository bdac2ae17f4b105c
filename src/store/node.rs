//! What a mount path is in the store, read without a key: a directory, a container with
//! its plaintext length and chunk size (from the fixed header), or a link, plus the times
//! and owner the mount shows.

use super::{container_err, container_rel, Kind, Meta, Result, Status, Store, StoreError};
use crate::container::{ContainerError, FixedHeader, Ownership, Source, FIXED_HEADER_LEN};

#[derive(Debug, Clone)]
pub enum Node {
    Dir(Meta),
    File {
        meta: Meta,
        plaintext_len: u64,
        chunk_size: u64,
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
    /// header does not parse or a link file that does not ([`StoreError::BadLink`]).
    pub(crate) fn node(&self, rel: &str) -> Result<Option<Node>> {
        match self.backend.stat(rel)? {
            Some(Status {
                kind: Kind::Dir,
                meta,
            }) => return Ok(Some(Node::Dir(meta))),
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
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        let header = blob
            .read_exact_at(&mut fixed, 0)
            .map_err(ContainerError::from)
            .and_then(|()| FixedHeader::decode(&fixed))
            .map_err(container_err(&path))?;
        Ok(Some(Node::File {
            meta: blob.meta(),
            plaintext_len: header.plaintext_len,
            chunk_size: header.chunk_size(),
        }))
    }
}
