//! Reading an object: ranged GETs pinned to the version seen at open (`If-Match` on its
//! ETag), so that a replacement by another writer gives an error, never a mix of versions.

use std::io;
use std::sync::Arc;

use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore};

use super::client::{io_error, Client};
use crate::container::Source;

/// One version of one object, read by range.
pub struct ObjectVersion {
    pub client: Arc<Client>,
    pub key: Key,
    /// The store path, for messages.
    pub rel: String,
    pub etag: Option<String>,
    pub size: u64,
}

impl ObjectVersion {
    /// Bytes `[offset, offset + len)` of this version.
    pub fn fetch(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let url = || self.client.url(&self.rel);
        let end = offset
            .checked_add(len as u64)
            .filter(|end| *end <= self.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: read past the end ({} bytes)", url(), self.size),
                )
            })?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let options = GetOptions {
            if_match: self.etag.clone(),
            range: Some(GetRange::Bounded(offset..end)),
            ..GetOptions::default()
        };
        let store = self.client.store.clone();
        let bytes = self
            .client
            .run(&self.rel, async move {
                store.get_opts(&self.key, options).await?.bytes().await
            })
            .map_err(|fault| io_error(fault, &url()))?;
        if bytes.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: asked for {len} bytes, got {}", url(), bytes.len()),
            ));
        }
        Ok(bytes.to_vec())
    }
}

/// Each read is one GET (until the block reader of `blocks.rs` takes this place).
impl Source for ObjectVersion {
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.fetch(offset, buf.len())?;
        buf.copy_from_slice(&bytes);
        Ok(())
    }
}
