//! The store's [`Backend`] on an S3 bucket: store path `REL` is object `PREFIX/REL`.
//!
//! S3 has objects and key prefixes, nothing else, so the contract's other kinds never occur:
//! there are no links to follow and no FIFOs to block on; every entry is a file or a
//! directory. A directory exists when some key lies below `DIR/`; `mkdir` makes it exist
//! while empty by writing its marker `DIR/.tvault-s3-dir` (docs/FORMAT.md), which listings
//! hide. What S3 cannot do atomically is said where it happens: a directory rename copies
//! and deletes key by key, and `noreplace` is a check before the write (plus `If-None-Match`
//! on single PUTs, where the server honours it).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as Key;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::client::Client;
use super::errors::Fault;
use super::location::entry_name;
use super::read::ObjectVersion;
use super::upload::{S3Stage, StageDir};
use super::DIR_MARKER;
use crate::store::blocks::BlockPool;
use crate::store::{
    Backend, Blob, Entry, Kind, Meta, Result, SetTime, Stage, Status, StoreError, Usage,
};

/// Copies and deletes in flight at once when a directory is renamed.
const PARALLEL_KEYS: usize = 8;
/// What `usage` reports: S3 has no capacity to ask about (as s3fs, a large fixed size).
const REPORTED_BYTES: u64 = 1 << 50;
const REPORTED_BLOCK: u64 = 4096;

pub struct S3Backend {
    pub(super) client: Arc<Client>,
    /// Ciphertext units of every object read, bounded (and the disk cache, if any).
    pub(super) pool: Arc<BlockPool>,
    pub(super) stage_dir: StageDir,
    /// The times shown for a directory without a marker (only its keys say it exists).
    pub(super) opened: SystemTime,
}

fn meta_of(object: &ObjectMeta) -> Meta {
    let t: SystemTime = object.last_modified.into();
    Meta {
        atime: t,
        mtime: t,
        ctime: t,
    }
}

/// HEAD of `key`: `None` if there is no such object.
pub(super) fn head(client: &Client, rel: &str, key: &Key) -> Result<Option<ObjectMeta>> {
    let store = client.store.clone();
    found(
        client,
        rel,
        client.run(rel, async move { store.head(key).await }),
    )
}

fn found<T>(client: &Client, rel: &str, r: std::result::Result<T, Fault>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Fault::NotFound) => Ok(None),
        Err(f) => Err(client.error(rel, f)),
    }
}

/// The directory of `rel` and its name.
fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

impl S3Backend {
    fn errno(&self, rel: &str, errno: i32) -> StoreError {
        StoreError::Io {
            path: self.display_path(rel),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    /// The listing prefix of directory `rel` (`KEY/`), `None` for a whole bucket's root.
    fn dir_prefix(&self, rel: &str) -> Result<Option<String>> {
        let key = self.client.key(rel)?;
        let key: &str = key.as_ref();
        Ok((!key.is_empty()).then(|| format!("{key}/")))
    }

    /// Up to `max` keys below directory `rel` (`delimited`: its entries, not their contents).
    pub(super) fn some_keys(&self, rel: &str, delimited: bool, max: usize) -> Result<Vec<String>> {
        let prefix = self.dir_prefix(rel)?;
        let opts = PaginatedListOptions {
            delimiter: delimited.then_some("/".into()),
            max_keys: Some(max),
            ..PaginatedListOptions::default()
        };
        let store = self.client.store.clone();
        let page = self.client.call(rel, async move {
            store.list_paginated(prefix.as_deref(), opts).await
        })?;
        let objects = page.result.objects.into_iter().map(|o| o.location);
        Ok(objects
            .chain(page.result.common_prefixes)
            .map(|k| k.as_ref().to_string())
            .collect())
    }

    /// Every object key below directory `rel`.
    fn all_keys(&self, rel: &str) -> Result<Vec<Key>> {
        let prefix = self.client.key(rel)?;
        let store = self.client.store.clone();
        let objects: Vec<ObjectMeta> = self.client.call(rel, async move {
            let stream = if prefix.as_ref().is_empty() {
                store.list(None)
            } else {
                store.list(Some(&prefix))
            };
            stream.collect::<Vec<_>>().await.into_iter().collect()
        })?;
        Ok(objects.into_iter().map(|o| o.location).collect())
    }

    fn is_dir(&self, rel: &str) -> Result<bool> {
        Ok(matches!(
            self.stat(rel)?,
            Some(Status {
                kind: Kind::Dir,
                ..
            })
        ))
    }

    /// Runs `op` on every item, `PARALLEL_KEYS` at a time, each under the timeout; the first
    /// failure is returned (after the others finish).
    fn each<I, F, Fut>(&self, rel: &str, items: Vec<I>, op: F) -> Result<()>
    where
        F: Fn(Arc<object_store::aws::AmazonS3>, I) -> Fut,
        Fut: std::future::Future<Output = object_store::Result<()>>,
    {
        let timeout = self.client.timeout();
        let store = self.client.store.clone();
        let results: Vec<_> = self.client.block_on(
            futures::stream::iter(items.into_iter().map(|item| {
                let fut = op(store.clone(), item);
                async move { tokio::time::timeout(timeout, fut).await }
            }))
            .buffer_unordered(PARALLEL_KEYS)
            .collect(),
        );
        for r in results {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.client.error(rel, self.client.classify(rel, &e))),
                Err(_) => {
                    return Err(StoreError::S3(super::errors::S3Error::Timeout {
                        url: self.client.url(rel),
                        secs: timeout.as_secs(),
                    }))
                }
            }
        }
        Ok(())
    }

    /// Moves every key of directory `from` below `to`: all copies first, then the deletes,
    /// so a failure part way leaves `from` whole (and the copies made are removed).
    fn rename_dir(&self, from: &str, to: &str) -> Result<()> {
        let from_prefix = format!("{}/", self.client.key(from)?.as_ref());
        let to_key = self.client.key(to)?;
        let mut pairs = Vec::new();
        for key in self.all_keys(from)? {
            let Some(below) = key.as_ref().strip_prefix(&from_prefix) else {
                continue;
            };
            let dest = Key::parse(format!("{}/{below}", to_key.as_ref())).map_err(|_| {
                StoreError::InvalidPath {
                    rel: format!("{to}/{below}"),
                    why: "not a valid object key",
                }
            })?;
            pairs.push((key, dest));
        }
        if pairs.is_empty() {
            return Err(self.errno(from, libc::ENOENT));
        }
        let copied = self.each(from, pairs.clone(), |store, (a, b)| async move {
            store.copy(&a, &b).await
        });
        if let Err(e) = copied {
            let made: Vec<Key> = pairs.into_iter().map(|(_, b)| b).collect();
            let _ = self.each(to, made, |store, k| async move { store.delete(&k).await });
            return Err(e);
        }
        let sources: Vec<Key> = pairs.into_iter().map(|(a, _)| a).collect();
        self.each(
            from,
            sources,
            |store, k| async move { store.delete(&k).await },
        )
    }
}

impl Backend for S3Backend {
    fn display_path(&self, rel: &str) -> PathBuf {
        PathBuf::from(self.client.url(rel))
    }

    fn location_key(&self) -> String {
        format!("{} at {}", self.client.url(""), self.client.endpoint())
    }

    /// Two one-key listings at once: the first key from `KEY` on (sorted, so `KEY` itself
    /// if it exists) and the first below `KEY/`; a directory wins over an object of the same
    /// name. Listings rather than HEADs: some servers (s3s-fs) fail, and retry, a HEAD of a
    /// key that is a directory on their disk.
    fn stat(&self, rel: &str) -> Result<Option<Status>> {
        let opened = Meta {
            atime: self.opened,
            mtime: self.opened,
            ctime: self.opened,
        };
        if rel.is_empty() {
            let marker = self.client.marker(rel)?;
            let meta = head(&self.client, rel, &marker)?;
            return Ok(Some(Status {
                kind: Kind::Dir,
                meta: meta.as_ref().map_or(opened, meta_of),
            }));
        }
        let key = self.client.key(rel)?;
        let marker = self.client.marker(rel)?;
        let below = format!("{}/", key.as_ref());
        let store = self.client.store.clone();
        let one = |delimiter: bool| PaginatedListOptions {
            delimiter: delimiter.then_some("/".into()),
            max_keys: Some(1),
            ..PaginatedListOptions::default()
        };
        let (exact, under) = self.client.call(rel, async {
            futures::try_join!(
                store.list_paginated(Some(key.as_ref()), one(false)),
                store.list_paginated(Some(&below), one(true)),
            )
        })?;
        let under = under.result;
        if !under.objects.is_empty() || !under.common_prefixes.is_empty() {
            let meta = match under.objects.first() {
                Some(m) if m.location == marker => meta_of(m),
                _ => opened,
            };
            return Ok(Some(Status {
                kind: Kind::Dir,
                meta,
            }));
        }
        Ok(exact
            .result
            .objects
            .first()
            .filter(|o| o.location == key)
            .map(|o| Status {
                kind: Kind::File,
                meta: meta_of(o),
            }))
    }

    /// Keys whose name is not a store path component (too long, `.`, control characters)
    /// are skipped; the marker is not shown.
    fn list(&self, rel: &str) -> Result<Vec<Entry>> {
        let prefix = self.dir_prefix(rel)?;
        let list_key = prefix
            .as_deref()
            .map(|p| Key::from_iter(p.trim_end_matches('/').split('/')));
        let store = self.client.store.clone();
        let listing = self.client.call(rel, async move {
            store.list_with_delimiter(list_key.as_ref()).await
        })?;
        if !rel.is_empty() && listing.objects.is_empty() && listing.common_prefixes.is_empty() {
            let errno = match self.stat(rel)? {
                Some(_) => libc::ENOTDIR,
                None => libc::ENOENT,
            };
            return Err(self.errno(rel, errno));
        }
        let name_of = |key: &Key| entry_name(prefix.as_deref(), key.as_ref()).map(str::to_string);
        let dirs: BTreeSet<String> = listing.common_prefixes.iter().filter_map(name_of).collect();
        let mut out: Vec<Entry> = dirs
            .iter()
            .map(|name| Entry {
                name: name.clone(),
                kind: Kind::Dir,
            })
            .collect();
        for object in &listing.objects {
            if let Some(name) = name_of(&object.location).filter(|n| !dirs.contains(n)) {
                out.push(Entry {
                    name,
                    kind: Kind::File,
                });
            }
        }
        Ok(out)
    }

    fn open(&self, rel: &str) -> Result<Blob> {
        let key = self.client.key(rel)?;
        let Some(object) = head(&self.client, rel, &key)? else {
            return Err(self.errno(rel, libc::ENOENT));
        };
        let meta = meta_of(&object);
        let version = ObjectVersion {
            client: self.client.clone(),
            key,
            rel: rel.to_string(),
            etag: object.e_tag,
            size: object.size,
        };
        Ok(version.blob(&self.pool, meta))
    }

    /// One GET: the size is checked before the body is read.
    fn read_capped(&self, rel: &str, cap: u64) -> Result<Vec<u8>> {
        let key = self.client.key(rel)?;
        let store = self.client.store.clone();
        let got = self.client.call(rel, async move {
            let got = store.get(&key).await?;
            if got.meta.size > cap {
                return Ok(None);
            }
            got.bytes().await.map(Some)
        })?;
        match got {
            Some(bytes) if bytes.len() as u64 <= cap => Ok(bytes.to_vec()),
            _ => Err(StoreError::TooLarge {
                path: self.display_path(rel),
                limit: cap,
            }),
        }
    }

    /// `mode` has no meaning on S3; the local staged file is the owner's alone (0600).
    fn stage(&self, rel: &str, _mode: u32) -> Result<(Box<dyn Stage>, std::fs::File)> {
        self.client.key(rel)?;
        let file = self.stage_dir.file().map_err(|source| StoreError::Io {
            path: self.stage_dir.path().to_path_buf(),
            source,
        })?;
        let stage = S3Stage {
            client: self.client.clone(),
            pool: self.pool.clone(),
        };
        Ok((Box::new(stage), file))
    }

    fn mkdir(&self, rel: &str, _mode: u32) -> Result<()> {
        let (parent, _) = split(rel);
        if !parent.is_empty() && !self.is_dir(parent)? {
            return Err(self.errno(parent, libc::ENOENT));
        }
        if self.stat(rel)?.is_some() {
            return Err(self.errno(rel, libc::EEXIST));
        }
        let marker = self.client.marker(rel)?;
        let store = self.client.store.clone();
        let opts = PutOptions::from(PutMode::Create);
        self.client.call(rel, async move {
            store.put_opts(&marker, PutPayload::new(), opts).await
        })?;
        Ok(())
    }

    /// Removes the marker of a directory holding nothing else (`ENOTEMPTY` otherwise).
    fn remove_dir(&self, rel: &str) -> Result<()> {
        let marker = self.client.marker(rel)?;
        let keys = self.some_keys(rel, true, 2)?;
        if keys.is_empty() {
            return Err(self.errno(rel, libc::ENOENT));
        }
        if keys.iter().any(|k| k != marker.as_ref()) {
            return Err(self.errno(rel, libc::ENOTEMPTY));
        }
        let store = self.client.store.clone();
        self.client
            .call(rel, async move { store.delete(&marker).await })
    }

    fn remove_file(&self, rel: &str) -> Result<()> {
        let key = self.client.key(rel)?;
        match self.stat(rel)?.map(|st| st.kind) {
            Some(Kind::File) => {}
            Some(_) => return Err(self.errno(rel, libc::EISDIR)),
            None => return Err(self.errno(rel, libc::ENOENT)),
        }
        let store = self.client.store.clone();
        self.client
            .call(rel, async move { store.delete(&key).await })
    }

    /// Copy, then delete (S3 has no rename). A file moves in one copy; a directory key by key.
    fn rename(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        if to == from || to.starts_with(&format!("{from}/")) {
            return Err(self.errno(to, libc::EINVAL));
        }
        let Some(source) = self.stat(from)? else {
            return Err(self.errno(from, libc::ENOENT));
        };
        let target = self.stat(to)?;
        match (source.kind, target.map(|t| t.kind)) {
            (_, Some(_)) if noreplace => Err(self.errno(to, libc::EEXIST)),
            (Kind::Dir, Some(Kind::File)) => Err(self.errno(to, libc::ENOTDIR)),
            (Kind::File, Some(Kind::Dir)) => Err(self.errno(to, libc::EISDIR)),
            (Kind::Dir, Some(Kind::Dir))
                if !self
                    .some_keys(to, true, 2)?
                    .iter()
                    .all(|k| k.rsplit('/').next() == Some(DIR_MARKER)) =>
            {
                Err(self.errno(to, libc::ENOTEMPTY))
            }
            (Kind::Dir, _) => self.rename_dir(from, to),
            _ => {
                let (a, b) = (self.client.key(from)?, self.client.key(to)?);
                let store = self.client.store.clone();
                self.client.call(from, async move {
                    store.copy(&a, &b).await?;
                    store.delete(&a).await
                })
            }
        }
    }

    /// S3 cannot change an object's times without rewriting it: refused, never pretended.
    fn set_times(&self, rel: &str, _atime: Option<SetTime>, _mtime: Option<SetTime>) -> Result<()> {
        Err(StoreError::TimesUnsupported(self.display_path(rel)))
    }

    fn usage(&self) -> Result<Usage> {
        let blocks = REPORTED_BYTES / REPORTED_BLOCK;
        Ok(Usage {
            block_size: REPORTED_BLOCK,
            fragment_size: REPORTED_BLOCK,
            blocks,
            blocks_free: blocks,
            blocks_available: blocks,
            files: u32::MAX.into(),
            files_free: u32::MAX.into(),
        })
    }
}
