//! Reading an object: ranged GETs pinned to the version seen at open (`If-Match` on its
//! ETag), so that a replacement by another writer gives an error, never a mix of versions.

use std::io;
use std::sync::Arc;

use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore};

use super::client::{io_error, Client};
use crate::store::blocks::{remote_source, BlockPool, Fetch};
use crate::store::{Blob, Meta};

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
    /// This version as a blob read through the backend's block pool, its units named by the
    /// key and ETag (or, from a server that gives no ETag, the size and time).
    pub fn blob(self, pool: &Arc<BlockPool>, meta: Meta) -> Blob {
        let version = match &self.etag {
            Some(etag) => etag.clone(),
            None => format!("{}@{:?}", self.size, meta.mtime),
        };
        let identity = format!("{}\n{version}", self.key.as_ref());
        let size = self.size;
        Blob::new(remote_source(pool, Arc::new(self), size, identity), meta)
    }
}

impl Fetch for ObjectVersion {
    /// Bytes `[offset, offset + len)` of this version.
    fn fetch(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
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
