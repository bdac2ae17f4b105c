//! Writing an object: the store layer writes a sealed container (ciphertext only) into a
//! local temporary file, and [`Stage::commit`] uploads it, in one PUT or, above
//! [`MULTIPART_MIN`], as a multipart upload whose parts go up in parallel. Either way the
//! object appears whole when the upload completes: until then readers get the old version,
//! and a failed upload (aborted) leaves it.
//!
//! Temporary files live in a private directory of the user (`tvault-s3-staging-UID`, or a
//! fresh `tvault-s3-staging-UID-RANDOM` where another user took that name; mode 0700, under `$TVAULT_STATE_DIR` or the system temporary directory; never in the store or
//! a mount) and are unlinked as soon as they are created: nothing is left behind, even by a
//! crash.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use object_store::path::Path as Key;
use object_store::{ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload};

use super::client::Client;
use super::errors::{Fault, S3Error};
use super::read::ObjectVersion;
use crate::fsutil;
use crate::store::blocks::BlockPool;
use crate::store::{Blob, Meta, Result, Stage, StoreError};

/// Files up to this size go up in one PUT; larger ones as multipart uploads.
pub const MULTIPART_MIN: u64 = 16 << 20;
/// The part size, unless the file needs larger parts to fit S3's part count.
const PART_SIZE: u64 = 16 << 20;
const MAX_PARTS: u64 = 10_000;
/// Parts in flight at once (each a buffer of one part).
const PARALLEL_PARTS: usize = 4;

/// The private directory staged files are made in.
pub struct StageDir {
    path: PathBuf,
    /// Made for this backend alone (the shared name was taken): removed when dropped.
    own: bool,
}

impl StageDir {
    /// Makes the directory, or checks the one there: a real directory (not a link), this
    /// user's, open to nobody else.
    pub fn new() -> io::Result<StageDir> {
        let base = std::env::var_os("TVAULT_STATE_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        StageDir::under(&base)
    }

    /// `BASE/tvault-s3-staging-UID`, shared by this user's backends; where another user has
    /// taken that name (anyone can, in `/tmp`), a fresh `...-UID-RANDOM` of this backend's
    /// own instead, so that squatting the name cannot stop this user's S3 commands.
    fn under(base: &Path) -> io::Result<StageDir> {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let shared = base.join(format!("tvault-s3-staging-{uid}"));
        match make_private(&shared, uid, true) {
            Ok(()) => {
                return Ok(StageDir {
                    path: shared,
                    own: false,
                })
            }
            Err(e) if e.kind() != io::ErrorKind::PermissionDenied => return Err(e),
            Err(e) => log::warn!("{e}; staging in a directory of this process's own instead"),
        }
        let random = fsutil::temp_name()?;
        let path = base.join(format!("tvault-s3-staging-{uid}-{random}"));
        make_private(&path, uid, false)?;
        Ok(StageDir { path, own: true })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new empty file, already unlinked.
    pub fn file(&self) -> io::Result<File> {
        let path = self.path.join(fsutil::temp_name()?);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(file)
    }
}

impl Drop for StageDir {
    fn drop(&mut self) {
        if self.own {
            // Empty: staged files are unlinked as soon as they are made.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Makes `path` a directory of mode 0700 (`reuse`: or takes the one there), and checks that
/// it is a real directory (not a link) of `uid`, open to nobody else.
fn make_private(path: &Path, uid: u32, reuse: bool) -> io::Result<()> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if reuse && e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot make the staging directory {}: {e}", path.display()),
            ))
        }
    }
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: not a private directory of uid {uid} (a directory it owns, mode 0700); \
                 remove it, or set TVAULT_STATE_DIR elsewhere",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// A staged object: what it commits to is decided at commit.
pub struct S3Stage {
    pub client: Arc<Client>,
    pub pool: Arc<BlockPool>,
}

fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

impl Stage for S3Stage {
    fn commit(self: Box<Self>, file: File, target: &str, noreplace: bool) -> Result<Blob> {
        let client = &self.client;
        let key = client.key(target)?;
        let local = |source| StoreError::Io {
            path: client.url(target).into(),
            source,
        };
        let size = file.metadata().map_err(local)?.len();
        if noreplace && super::objects::head(client, target, &key)?.is_some() {
            return Err(client.error(target, Fault::Exists));
        }
        let etag = if size <= MULTIPART_MIN {
            let bytes = read_at(&file, 0, size).map_err(local)?;
            // If-None-Match: * where the server honours it; the check above where not.
            let mode = if noreplace {
                PutMode::Create
            } else {
                PutMode::Overwrite
            };
            let store = client.store.clone();
            let put = client.call(target, async move {
                store
                    .put_opts(&key, PutPayload::from(bytes), PutOptions::from(mode))
                    .await
            })?;
            put.e_tag
        } else {
            upload_parts(client, target, &key, &file, size)?
        };
        let key = client.key(target)?;
        let version = ObjectVersion {
            client: client.clone(),
            key,
            rel: target.to_string(),
            etag,
            size,
        };
        let now = SystemTime::now();
        let meta = Meta {
            atime: now,
            mtime: now,
            ctime: now,
        };
        Ok(version.blob(&self.pool, meta))
    }
}

/// Parts of `size / MAX_PARTS` at least, in whole MiB.
fn part_size(size: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    PART_SIZE.max(needed)
}

/// A multipart upload of `file`, `PARALLEL_PARTS` parts at a time; aborted on any failure,
/// so the old object stays and no parts are left to pay for.
fn upload_parts(
    client: &Arc<Client>,
    rel: &str,
    key: &Key,
    file: &File,
    size: u64,
) -> Result<Option<String>> {
    let store = client.store.clone();
    let path = key.clone();
    let mut upload = client.call(rel, async move {
        store
            .put_multipart_opts(&path, PutMultipartOptions::default())
            .await
    })?;
    let part = part_size(size);
    let timeout = client.timeout();
    let mut in_flight = std::collections::VecDeque::new();
    let mut sent: Result<()> = Ok(());
    let mut offset = 0;
    while offset < size && sent.is_ok() {
        let len = part.min(size - offset);
        let bytes = match read_at(file, offset, len) {
            Ok(b) => b,
            Err(e) => {
                sent = Err(StoreError::Io {
                    path: client.url(rel).into(),
                    source: e,
                });
                break;
            }
        };
        let put = upload.put_part(PutPayload::from(bytes));
        in_flight.push_back(client.spawn(async move { tokio::time::timeout(timeout, put).await }));
        offset += len;
        if in_flight.len() >= PARALLEL_PARTS {
            if let Some(next) = in_flight.pop_front() {
                sent = finish_part(client, rel, next);
            }
        }
    }
    while let Some(next) = in_flight.pop_front() {
        let done = finish_part(client, rel, next);
        if sent.is_ok() {
            sent = done;
        }
    }
    let completed = sent.and_then(|()| client.call(rel, upload.complete()));
    match completed {
        Ok(put) => Ok(put.e_tag),
        Err(e) => {
            if let Err(abort) = client.run(rel, upload.abort()) {
                log::warn!(
                    "{}: cannot abort the failed multipart upload ({abort:?}); the bucket's \
                     lifecycle rule for incomplete uploads removes its parts",
                    client.url(rel)
                );
            }
            Err(e)
        }
    }
}

type PartTask = tokio::task::JoinHandle<
    std::result::Result<object_store::Result<()>, tokio::time::error::Elapsed>,
>;

fn finish_part(client: &Client, rel: &str, task: PartTask) -> Result<()> {
    match client.block_on(task) {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(client.error(rel, client.classify(rel, &e))),
        Ok(Err(_)) => Err(StoreError::S3(S3Error::Timeout {
            url: client.url(rel),
            secs: client.timeout().as_secs(),
        })),
        Err(join) => Err(StoreError::Io {
            path: client.url(rel).into(),
            source: io::Error::other(join),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_the_part_count() {
        assert_eq!(part_size(MULTIPART_MIN + 1), PART_SIZE);
        let huge = 1u64 << 40;
        assert!(huge.div_ceil(part_size(huge)) <= MAX_PARTS);
        assert_eq!(part_size(huge) % (1 << 20), 0);
    }

    #[test]
    fn staged_files_are_private_and_leave_nothing() {
        let base = tempfile::tempdir().unwrap();
        let dir = StageDir::under(base.path()).unwrap();
        let path = dir.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        let f = dir.file().unwrap();
        f.write_all_at(b"sealed", 0).unwrap();
        let names = |p: &Path| std::fs::read_dir(p).unwrap().count();
        assert_eq!(names(&path), 0, "unlinked at once");
        assert_eq!(read_at(&f, 1, 4).unwrap(), b"eale");
        // Reused by the next backend of the same user.
        assert_eq!(StageDir::under(base.path()).unwrap().path(), path);
    }

    /// Another user (or a link, or loose permissions) at the shared name in a world-writable
    /// directory must not stop this user's S3 commands, nor get the staged files.
    #[test]
    fn a_squatted_staging_name_gets_a_directory_of_its_own() {
        let base = tempfile::tempdir().unwrap();
        let uid = crate::system::euid();
        let shared = base.path().join(format!("tvault-s3-staging-{uid}"));
        let elsewhere = base.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &shared).unwrap();
        let dir = StageDir::under(base.path()).unwrap();
        let own = dir.path().to_path_buf();
        assert_ne!(own, shared);
        let meta = std::fs::symlink_metadata(&own).unwrap();
        assert!(meta.is_dir() && meta.mode() & 0o777 == 0o700);
        let f = dir.file().unwrap();
        f.write_all_at(b"sealed", 0).unwrap();
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        drop(dir);
        assert!(!own.exists(), "removed with its backend");
        std::fs::remove_file(&shared).unwrap();
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let loose = StageDir::under(base.path()).unwrap();
        assert_ne!(
            loose.path(),
            shared,
            "a directory others can read is not used"
        );
    }
}
