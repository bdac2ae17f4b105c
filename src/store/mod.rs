//! The store: `.tvlt` containers plus `.tvault/` (configuration and keyrings), kept in a
//! backing storage reached only through [`Backend`].
//!
//! ```text
//! STORE/.tvault/store.json        format version, default chunk size
//! STORE/.tvault/users/NAME.json   one keyring per user
//! STORE/REL.tvlt                  the encrypted form of plaintext file REL
//! STORE/DIR/.tvault-dir           owner, group and mode of directory DIR (and of the root)
//! STORE/REL.tvln                  symbolic link REL (its target in the clear)
//! ```
//! Every path goes through the backend, which never follows a link, opens only regular files
//! and directories and reads small files with a cap (`backend.rs`; the local directory
//! backend is the gate in `dir.rs`), and every write is atomic, so an interrupted command
//! leaves the store as it was. By job: `users.rs` (keyrings), `policy.rs` (recipients of new
//! files), `files.rs` (put, read, grant, revoke, listings), `namespace.rs` (what the mount
//! shows and changes), `node.rs` (what a mount path is), `links.rs` (symbolic links,
//! `REL.tvln`), `draft.rs` (new versions written through the mount), `ownership.rs` (owners,
//! groups and modes: `.tvault-dir`, chown).

mod backend;
mod blocks;
mod dir;
mod disk_cache;
mod draft;
mod files;
mod links;
mod location;
mod meta;
mod namespace;
mod node;
mod ownership;
mod policy;
pub(crate) mod s3;
mod users;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::container::{self, ContainerError};
use crate::keyring::KeyringError;

pub(crate) use backend::{Backend, Blob, Entry, Kind, Meta, SetTime, Stage, Status, Usage};
use dir::Gate;
pub(crate) use draft::StoreDraft;
pub(crate) use files::PutOptions;
pub use links::{Link, LinkError, MAX_TARGET_LEN};
pub(crate) use links::{MountKind, LINK_EXT, LINK_MODE, MAX_LINK_LEN};
pub use location::{is_remote, StoreLocation};
#[cfg(test)]
pub(crate) use meta::not_local;
pub(crate) use node::Node;
pub use ownership::DirMetaError;
pub(crate) use ownership::{decode_dir_meta, legacy_dir, DIR_META_FILE, MAX_DIR_META_LEN};
pub use policy::parse_policy;
pub(crate) use users::read_keyring;

pub(crate) const META_DIR: &str = ".tvault";
/// Per-directory policy naming the users that files created through the mount are
/// encrypted to (besides their writer).
pub(crate) const RECIPIENTS_FILE: &str = ".tvault-recipients";
pub(crate) const CONTAINER_EXT: &str = "tvlt";
const STORE_FORMAT: &str = "tensorvault-store";
const STORE_VERSION: u32 = 1;
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o755;
/// Caps on the small files the store parses: a planted `/dev/zero`-sized file is refused.
pub(crate) const MAX_CONFIG_LEN: u64 = 64 << 10;
pub(crate) const MAX_KEYRING_LEN: u64 = 64 << 10;
pub(crate) const MAX_POLICY_LEN: u64 = 64 << 10;
pub(crate) const CONFIG_REL: &str = ".tvault/store.json";
const USERS_REL: &str = ".tvault/users";
/// Plaintext is streamed through buffers of this size.
const IO_BUF: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: not a tensorvault store (no .tvault/store.json; create one with `tvault init`)")]
    NotAStore(PathBuf),
    #[error("{0}: already a tensorvault store")]
    AlreadyAStore(PathBuf),
    #[error("{path}: malformed store configuration: {why}")]
    BadConfig { path: PathBuf, why: String },
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("uid {uid} already belongs to user {name:?}")]
    UidTaken { uid: u32, name: String },
    #[error("no user {0:?} in this store (see `tvault user list`)")]
    NoSuchUser(String),
    #[error("invalid store path {rel:?}: {why}")]
    InvalidPath { rel: String, why: &'static str },
    #[error("{0:?} is not in the store")]
    NoSuchFile(String),
    #[error("{0:?} already exists in the store (use --force to replace it)")]
    FileExists(String),
    #[error("user {user:?} holds no key slot for {rel:?}")]
    NoAccess { rel: String, user: String },
    #[error(
        "key slot {label:?} of {rel:?} names no user of this store; import their public key first"
    )]
    UnknownRecipient { rel: String, label: String },
    #[error("{path}: {source}")]
    Keyring {
        path: PathBuf,
        #[source]
        source: KeyringError,
    },
    #[error(transparent)]
    KeyringOp(#[from] KeyringError),
    #[error("{path}: {source}")]
    Container {
        path: PathBuf,
        #[source]
        source: ContainerError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: is (or passes through) a symbolic link; tvault never follows links inside a store (remove it, or replace it with the real file or directory)")]
    Symlink(PathBuf),
    #[error(
        "{path}: is {what}, not a regular file or directory; tvault never opens one (remove it)"
    )]
    NotRegular { path: PathBuf, what: &'static str },
    #[error("{path}: larger than the {limit}-byte limit for this kind of file (truncated, replaced, or not written by tvault)")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: directory metadata {why}; tvault never guesses a directory's owner and mode (remove it, then set them with `tvault chown`)")]
    BadDirMeta { path: PathBuf, why: DirMetaError },
    #[error("{path}: {why} (not written by tvault, or damaged; remove it)")]
    BadLink { path: PathBuf, why: LinkError },
    #[error("{0}: not a local directory; give the audit log a local path (--audit-log)")]
    NotLocal(PathBuf),
    #[error(transparent)]
    S3(#[from] s3::S3Error),
    #[error("{url}: not a store URL: {why}")]
    BadUrl { url: String, why: String },
    #[error("{0}: unsupported store URL (a store is a local directory or s3://BUCKET/PREFIX)")]
    UnsupportedUrl(String),
    #[error("{0}: the object store keeps no settable times (an object's times are those of its last upload); not changed")]
    TimesUnsupported(PathBuf),
    #[error("{path}: cannot use it as the disk cache: {why}")]
    BadDiskCache { path: PathBuf, why: String },
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
            || matches!(self, StoreError::NoSuchFile(_))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

fn io_err(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn container_err(path: &Path) -> impl FnOnce(ContainerError) -> StoreError + '_ {
    move |source| match source {
        ContainerError::Io(source) => StoreError::Io {
            path: path.to_path_buf(),
            source,
        },
        source => StoreError::Container {
            path: path.to_path_buf(),
            source,
        },
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreConfig {
    format: String,
    version: u32,
    chunk_size: u64,
}

/// Checks a store-relative path: plain components only, no `.tvault` at the top, UTF-8.
pub(crate) fn validate_rel(rel: &str) -> Result<()> {
    let bad = |why| {
        Err(StoreError::InvalidPath {
            rel: rel.to_string(),
            why,
        })
    };
    if rel.is_empty() {
        return bad("empty");
    }
    if rel.starts_with('/') {
        return bad("must be relative to the store");
    }
    if rel.contains('\0') {
        return bad("contains NUL");
    }
    for (i, part) in rel.split('/').enumerate() {
        match part {
            "" => return bad("empty path component"),
            "." | ".." => return bad("'.' and '..' are not allowed"),
            META_DIR if i == 0 => return bad(".tvault is reserved"),
            _ => {}
        }
    }
    Ok(())
}

/// The uid shown for an owner who is not (or no longer) a user of the store.
pub(crate) const NOBODY_UID: u32 = 65534;

/// The longest file name the mount accepts: `NAME.tvlt` must fit in `NAME_MAX`.
pub(crate) const MAX_NAME_LEN: usize = 255 - 1 - CONTAINER_EXT.len();

/// The container of plaintext path `rel` (validated), relative to the store root.
pub(crate) fn container_rel(rel: &str) -> Result<String> {
    stored_rel(rel, CONTAINER_EXT)
}

/// `rel` (validated, its name short enough for `NAME.ext` to fit `NAME_MAX`) with `ext`.
pub(crate) fn stored_rel(rel: &str, ext: &str) -> Result<String> {
    validate_rel(rel)?;
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidPath {
            rel: rel.to_string(),
            why: "file name longer than 250 bytes",
        });
    }
    Ok(format!("{rel}.{ext}"))
}

/// How to reach a store beyond where it is: settings of remote backends (a local directory
/// has none).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// The longest one request to an object store may take, retries included (default:
    /// `TVAULT_S3_TIMEOUT`, else 30 s).
    pub s3_timeout: Option<Duration>,
    /// A local directory for the ciphertext cache of a remote store.
    pub disk_cache: Option<PathBuf>,
    /// The disk cache's bound in bytes (0: the default).
    pub disk_cache_bytes: u64,
}

/// The backend of the store at `location` (a directory, or an `s3://` URL), created first
/// with `create`.
pub(crate) fn backend_at(
    location: &Path,
    create: bool,
    options: &StoreOptions,
) -> Result<Box<dyn Backend>> {
    match StoreLocation::parse(location)? {
        StoreLocation::S3(s3) => Ok(Box::new(s3::S3Backend::connect(&s3, options, create)?)),
        StoreLocation::Dir(path) => {
            if options.disk_cache.is_some() {
                log::warn!(
                    "{}: a local store is read directly; the disk cache is for remote stores",
                    path.display()
                );
            }
            let gate = if create {
                Gate::create(&path)?
            } else {
                Gate::open(&path)?
            };
            Ok(Box::new(gate))
        }
    }
}

pub struct Store {
    backend: Box<dyn Backend>,
    /// Where the store is, as it was named when opened.
    root: PathBuf,
    chunk_log2: u8,
}

impl Store {
    pub fn init(root: &Path, chunk_log2: u8) -> Result<Store> {
        container::chunk_log2_from_size(1u64 << chunk_log2).map_err(container_err(root))?;
        let backend = backend_at(root, true, &StoreOptions::default())?;
        if backend.kind(META_DIR)?.is_some() {
            return Err(StoreError::AlreadyAStore(root.to_path_buf()));
        }
        backend.create_dir_all(USERS_REL, DIR_MODE)?;
        let config = StoreConfig {
            format: STORE_FORMAT.into(),
            version: STORE_VERSION,
            chunk_size: 1u64 << chunk_log2,
        };
        let json = serde_json::to_string_pretty(&config).unwrap_or_default() + "\n";
        backend.write_small(CONFIG_REL, json.as_bytes(), 0o644)?;
        let store = Store {
            root: backend.display_path(""),
            backend,
            chunk_log2,
        };
        // Explicit, though it is the default: the root's mode is a decision, not an accident.
        store.write_dir_meta("", &legacy_dir())?;
        Ok(store)
    }

    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, &StoreOptions::default())
    }

    /// Opens the store at `root` with `options` for its backend (the mount's).
    pub fn open_with(root: &Path, options: &StoreOptions) -> Result<Store> {
        let backend = match backend_at(root, false, options) {
            Err(e) if e.is_not_found() => return Err(StoreError::NotAStore(root.to_path_buf())),
            other => other?,
        };
        let path = backend.display_path(CONFIG_REL);
        let bytes = match backend.read_capped(CONFIG_REL, MAX_CONFIG_LEN) {
            Err(e) if e.is_not_found() => return Err(StoreError::NotAStore(root.to_path_buf())),
            other => other?,
        };
        let bad = |why: String| StoreError::BadConfig {
            path: path.clone(),
            why,
        };
        let config: StoreConfig = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if config.format != STORE_FORMAT || config.version != STORE_VERSION {
            return Err(bad(format!(
                "unsupported format {:?} version {}",
                config.format, config.version
            )));
        }
        let chunk_log2 =
            container::chunk_log2_from_size(config.chunk_size).map_err(|e| bad(e.to_string()))?;
        Ok(Store {
            root: backend.display_path(""),
            backend,
            chunk_log2,
        })
    }

    /// The store's path (or URL), for messages and for finding what lives beside it.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Names this store among all this host reaches (see [`Backend::location_key`]).
    pub(crate) fn location_key(&self) -> String {
        self.backend.location_key()
    }

    /// Whether the store is a directory of this host (not an object store).
    pub(crate) fn is_local(&self) -> bool {
        !is_remote(&self.root)
    }

    pub(crate) fn default_chunk_log2(&self) -> u8 {
        self.chunk_log2
    }

    /// Writes a small file of tvault's own into `.tvault/` atomically (e.g. `daemon.json`).
    pub(crate) fn write_meta(&self, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
        self.backend
            .write_small(&format!("{META_DIR}/{name}"), bytes, mode)
    }

    /// Reads a small file of tvault's own from `.tvault/`, refused beyond `cap` bytes.
    pub(crate) fn read_meta(&self, name: &str, cap: u64) -> Result<Vec<u8>> {
        self.backend.read_capped(&format!("{META_DIR}/{name}"), cap)
    }

    pub(crate) fn remove_meta(&self, name: &str) -> Result<()> {
        self.backend.remove_file(&format!("{META_DIR}/{name}"))
    }

    /// Space on the store's backing storage.
    pub(crate) fn usage(&self) -> Result<Usage> {
        self.backend.usage()
    }

    /// Replaces `target` atomically with what `fill` writes (see [`backend::write_atomic`]).
    fn write_atomic(&self, target: &str, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
        backend::write_atomic(&*self.backend, target, FILE_MODE, fill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KdfParams;

    /// Cheap Argon2id parameters for keyrings made by tests.
    pub(super) const FAST: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn rel_validation() {
        for bad in ["", "/a", "a//b", "a/../b", "./a", ".tvault/x"] {
            assert!(validate_rel(bad).is_err(), "{bad}");
        }
        for good in [
            "a",
            "model/config.json",
            "x/.tvault",
            ".hidden",
            "a/.b.tmp-0123456789ab",
        ] {
            validate_rel(good).unwrap();
        }
    }
}
