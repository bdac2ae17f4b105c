//! The S3 backend: a store kept in an S3-compatible object store (`s3://BUCKET/PREFIX`),
//! behind the same [`Backend`](crate::store::Backend) trait as a local directory. By job:
//! `location.rs` (the URL and the key of each store path), `settings.rs` and `profile.rs`
//! (the AWS environment and shared files), `client.rs` (the `object_store` client on a
//! runtime of its own, timeouts), `errors.rs` (named failures), `objects.rs` (the backend),
//! `read.rs` (ranged reads pinned to one version), `upload.rs` (staging and uploads).

mod client;
mod errors;
mod location;
mod objects;
mod profile;
mod read;
mod settings;
mod upload;

use std::sync::Arc;
use std::time::SystemTime;

use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

pub use errors::S3Error;
pub use location::{S3Location, DIR_MARKER};
pub use objects::S3Backend;
pub use settings::parse_timeout;

use crate::store::blocks::{BlockPool, RemoteReadOptions};
use crate::store::{Result, StoreError, StoreOptions};
use client::Client;
use settings::S3Settings;
use upload::StageDir;

impl S3Backend {
    /// Connects to the bucket of `location` and checks that it exists (and that the
    /// credentials work) with one small listing. `create`: also marks the prefix as a
    /// directory, so that the store's root exists before anything is in it.
    pub fn connect(
        location: &S3Location,
        options: &StoreOptions,
        create: bool,
    ) -> Result<S3Backend> {
        let settings = S3Settings::from_env(options.s3_timeout)
            .map_err(|e| StoreError::S3(S3Error::Settings(e)))?;
        let client = Arc::new(Client::new(location, &settings)?);
        let stage_dir = StageDir::new().map_err(|source| StoreError::Io {
            path: client.url("").into(),
            source,
        })?;
        let pool = BlockPool::new(&RemoteReadOptions {
            disk_cache: options.disk_cache.clone(),
            disk_cache_bytes: options.disk_cache_bytes,
            memory_bytes: 0,
        })?;
        let backend = S3Backend {
            client,
            pool,
            stage_dir,
            opened: SystemTime::now(),
        };
        backend.some_keys("", true, 1)?;
        if create {
            let marker = backend.client.marker("")?;
            if objects::head(&backend.client, "", &marker)?.is_none() {
                let store = backend.client.store.clone();
                backend.client.call("", async move {
                    let opts = PutOptions::from(PutMode::Overwrite);
                    store.put_opts(&marker, PutPayload::new(), opts).await
                })?;
            }
        }
        Ok(backend)
    }
}
