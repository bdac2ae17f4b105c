//! The optional local disk cache of a remote store's **ciphertext** (`mount --disk-cache
//! DIR`): units of [`super::blocks`] kept as files, bounded in bytes, shared by every user of
//! the mount, and checked as they are read back.
//!
//! Only what the object store holds is written here, so the cache is as safe to lose or to
//! show as the bucket itself; plaintext never reaches it. The directory must belong to the
//! daemon's user with no group or other permission (it is created so if missing), and is
//! reached through its descriptor: names are fixed-length hex, opened without following links.
//!
//! A unit's file is `SHA-256(identity ‖ 0 ‖ index) ‖ data`, named by the first 20 bytes of
//! `SHA-256(identity ‖ 0 ‖ index)` in hex. The leading digest binds the file to the unit it
//! was written for, and a digest of the data follows it (`CHECK`): a torn write, a damaged
//! disk or a file put under another name is discarded and fetched again, so a bad cache costs
//! a refetch, not an `EIO`. (Integrity against an attacker comes from the container layer,
//! which authenticates every chunk it decrypts; the check here is against damage.)
//!
//! Lock order: `state` is a leaf, never held across file I/O.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use lru::LruCache;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

use super::blocks::UNIT;
use super::{Result, StoreError};
use crate::crypto;
use crate::sync::lock;
use std::sync::Mutex;

/// The bound when `--disk-cache-size` is not given.
pub(crate) const DEFAULT_DISK_CACHE_BYTES: u64 = 10 << 30;
const NAME_HEX: usize = 40;
/// Bytes before a unit's data: the unit digest and the data digest.
const HEADER: usize = 64;

struct State {
    /// Entry name → file size, least recently used first.
    entries: LruCache<String, u64>,
    bytes: u64,
}

pub(crate) struct DiskCache {
    dir: OwnedFd,
    path: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

impl DiskCache {
    /// Opens (creating it 0700 if missing) the cache at `path`, bounded by `max_bytes`
    /// (0: [`DEFAULT_DISK_CACHE_BYTES`]), and takes stock of what an earlier mount left.
    pub(crate) fn open(path: &Path, max_bytes: u64) -> Result<DiskCache> {
        let bad = |why: String| StoreError::BadDiskCache {
            path: path.to_path_buf(),
            why,
        };
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(bad(format!("cannot create it: {e}")))
            }
            _ => {}
        }
        let dir = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| bad(format!("cannot open it as a directory (not a link): {e}")))?;
        let st = rfs::fstat(&dir).map_err(|e| bad(e.to_string()))?;
        let euid = crate::system::euid();
        if st.st_uid != euid || st.st_mode & 0o077 != 0 {
            return Err(bad(format!(
                "must belong to uid {euid} with no group or other permission \
                 (chown {euid} and chmod 700 it, or name a new directory)"
            )));
        }
        let cache = DiskCache {
            dir,
            path: path.to_path_buf(),
            max_bytes: match max_bytes {
                0 => DEFAULT_DISK_CACHE_BYTES,
                n => n,
            },
            state: Mutex::new(State {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
        };
        cache.take_stock().map_err(|e| bad(e.to_string()))?;
        Ok(cache)
    }

    /// Files from an earlier mount, oldest first; leftover temporary files are removed.
    fn take_stock(&self) -> std::io::Result<()> {
        let mut found = Vec::new();
        for entry in rfs::Dir::read_from(&self.dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if crate::fsutil::is_temp_name(name) {
                let _ = rfs::unlinkat(&self.dir, name, AtFlags::empty());
                continue;
            }
            if !is_entry_name(name) {
                continue;
            }
            if let Ok(st) = rfs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                    found.push((st.st_mtime, name.to_string(), st.st_size as u64));
                }
            }
        }
        found.sort();
        let mut state = lock(&self.state);
        for (_, name, size) in found {
            state.bytes += size;
            state.entries.put(name, size);
        }
        let evicted = self.evict(&mut state);
        drop(state);
        self.remove(evicted);
        Ok(())
    }

    /// The data of unit `index` of `identity` if the cache holds it intact; a damaged file
    /// is removed.
    pub(crate) fn get(&self, identity: &str, index: u64) -> Option<Vec<u8>> {
        let digest = unit_digest(identity, index);
        let name = hex::encode(&digest[..NAME_HEX / 2]);
        let known = lock(&self.state).entries.get(&name).is_some();
        if !known {
            return None;
        }
        match self.read(&name, &digest) {
            Some(data) => Some(data),
            None => {
                log::warn!(
                    "disk cache {}: {name} is damaged; fetching it again",
                    self.path.display()
                );
                self.forget(&name);
                None
            }
        }
    }

    fn read(&self, name: &str, digest: &[u8; 32]) -> Option<Vec<u8>> {
        let fd = rfs::openat(
            &self.dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let file = File::from(fd);
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.size() > HEADER as u64 + UNIT {
            return None;
        }
        let mut bytes = Vec::with_capacity(meta.size() as usize);
        file.take(HEADER as u64 + UNIT)
            .read_to_end(&mut bytes)
            .ok()?;
        let (head, data) = bytes.split_at_checked(HEADER)?;
        if head[..32] != digest[..] || head[32..] != crypto::sha256(data)[..] {
            return None;
        }
        Some(data.to_vec())
    }

    /// Keeps `data` as unit `index` of `identity`. Failures only cost a later refetch.
    pub(crate) fn put(&self, identity: &str, index: u64, data: &[u8]) {
        let digest = unit_digest(identity, index);
        let name = hex::encode(&digest[..NAME_HEX / 2]);
        if lock(&self.state).entries.contains(&name) {
            return;
        }
        if let Err(e) = self.write(&name, &digest, data) {
            log::warn!("disk cache {}: cannot write: {e}", self.path.display());
            return;
        }
        let size = (HEADER + data.len()) as u64;
        let mut state = lock(&self.state);
        if let Some(old) = state.entries.put(name, size) {
            state.bytes -= old;
        }
        state.bytes += size;
        let evicted = self.evict(&mut state);
        drop(state);
        self.remove(evicted);
    }

    fn write(&self, name: &str, digest: &[u8; 32], data: &[u8]) -> std::io::Result<()> {
        let temp = crate::fsutil::temp_name()?;
        let fd = rfs::openat(
            &self.dir,
            &*temp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut file = File::from(fd);
        let written = file
            .write_all(digest)
            .and_then(|()| file.write_all(&crypto::sha256(data)))
            .and_then(|()| file.write_all(data));
        let renamed = written.and_then(|()| {
            rfs::renameat(&self.dir, &*temp, &self.dir, name).map_err(std::io::Error::from)
        });
        if renamed.is_err() {
            let _ = rfs::unlinkat(&self.dir, &*temp, AtFlags::empty());
        }
        renamed
    }

    /// Takes least recently used entries out of `state` until it is within the bound.
    fn evict(&self, state: &mut State) -> Vec<String> {
        let mut gone = Vec::new();
        while state.bytes > self.max_bytes {
            match state.entries.pop_lru() {
                Some((name, size)) => {
                    state.bytes -= size;
                    gone.push(name);
                }
                None => break,
            }
        }
        gone
    }

    fn forget(&self, name: &str) {
        let mut state = lock(&self.state);
        if let Some(size) = state.entries.pop(name) {
            state.bytes -= size;
        }
        drop(state);
        self.remove(vec![name.to_string()]);
    }

    fn remove(&self, names: Vec<String>) {
        for name in names {
            let _ = rfs::unlinkat(&self.dir, &*name, AtFlags::empty());
        }
    }

    /// Bytes the cache holds now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        lock(&self.state).bytes
    }
}

fn unit_digest(identity: &str, index: u64) -> [u8; 32] {
    let mut input = Vec::with_capacity(identity.len() + 9);
    input.extend_from_slice(identity.as_bytes());
    input.push(0);
    input.extend_from_slice(&index.to_le_bytes());
    crypto::sha256(&input)
}

fn is_entry_name(name: &str) -> bool {
    name.len() == NAME_HEX && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
