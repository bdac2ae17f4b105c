//! The store: a directory of `.tvlt` containers plus `.tvault/` (configuration and keyrings).
//!
//! ```text
//! STORE/.tvault/store.json        format version, default chunk size
//! STORE/.tvault/users/NAME.json   one keyring per user
//! STORE/REL.tvlt                  the encrypted form of plaintext file REL
//! ```
//! Every path goes through the gate in `dir.rs` (no symlink is ever followed, only regular
//! files and directories are opened, small files are read with a cap), and every write is
//! atomic, so an interrupted command leaves the store as it was.

mod dir;
mod draft;
mod node;

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::container::{self, Container, ContainerError, KeySlot, Reader, Writer};
use crate::crypto::{PrivateKey, SecretKey};
use crate::keyring::{self, Keyring, KeyringError};

pub use dir::{Entry, Gate, Kind, SetTime, TempFile};
pub use draft::StoreDraft;
pub use node::{Meta, Node};

pub const META_DIR: &str = ".tvault";
/// Per-directory policy naming the users that files created through the mount are
/// encrypted to (besides their writer).
pub const RECIPIENTS_FILE: &str = ".tvault-recipients";
pub const CONTAINER_EXT: &str = "tvlt";
const STORE_FORMAT: &str = "tensorvault-store";
const STORE_VERSION: u32 = 1;
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o755;
/// Caps on the small files the store parses: a planted `/dev/zero`-sized file is refused.
pub const MAX_CONFIG_LEN: u64 = 64 << 10;
pub const MAX_KEYRING_LEN: u64 = 64 << 10;
pub const MAX_POLICY_LEN: u64 = 64 << 10;
const CONFIG_REL: &str = ".tvault/store.json";
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
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
            || matches!(self, StoreError::NoSuchFile(_))
    }

    /// The errno this error means to a process using the mount.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            StoreError::NoSuchFile(_) => libc::ENOENT,
            StoreError::FileExists(_) => libc::EEXIST,
            StoreError::InvalidPath { .. } => libc::EINVAL,
            _ => libc::EIO,
        }
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
pub fn validate_rel(rel: &str) -> Result<()> {
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

/// One stored file as seen by listings.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub rel: String,
}

/// An entry of a store directory as the mount shows it: a container `NAME.tvlt` is the file
/// `NAME`; other files, links and special files are not shown.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub name: String,
    pub is_dir: bool,
}

/// The longest file name the mount accepts: `NAME.tvlt` must fit in `NAME_MAX`.
pub const MAX_NAME_LEN: usize = 255 - 1 - CONTAINER_EXT.len();

pub struct Store {
    gate: Gate,
    chunk_log2: u8,
}

/// The container of plaintext path `rel` (validated), relative to the store root.
pub fn container_rel(rel: &str) -> Result<String> {
    validate_rel(rel)?;
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidPath {
            rel: rel.to_string(),
            why: "file name longer than 250 bytes",
        });
    }
    Ok(format!("{rel}.{CONTAINER_EXT}"))
}

impl Store {
    pub fn init(root: &Path, chunk_log2: u8) -> Result<Store> {
        container::chunk_log2_from_size(1u64 << chunk_log2).map_err(container_err(root))?;
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let gate = Gate::open(root)?;
        if gate.kind(META_DIR)?.is_some() {
            return Err(StoreError::AlreadyAStore(root.to_path_buf()));
        }
        gate.create_dir_all(USERS_REL, 0o755)?;
        let config = StoreConfig {
            format: STORE_FORMAT.into(),
            version: STORE_VERSION,
            chunk_size: 1u64 << chunk_log2,
        };
        let json = serde_json::to_string_pretty(&config).unwrap_or_default() + "\n";
        let path = gate.display_path(CONFIG_REL);
        gate.write_atomic(CONFIG_REL, 0o644, |f| {
            f.write_all(json.as_bytes()).map_err(io_err(&path))
        })?;
        Ok(Store { gate, chunk_log2 })
    }

    pub fn open(root: &Path) -> Result<Store> {
        let gate = match Gate::open(root) {
            Err(e) if e.is_not_found() => return Err(StoreError::NotAStore(root.to_path_buf())),
            other => other?,
        };
        let path = gate.display_path(CONFIG_REL);
        let bytes = match gate.read_capped(CONFIG_REL, MAX_CONFIG_LEN) {
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
        Ok(Store { gate, chunk_log2 })
    }

    /// The store's path, for messages and for finding what lives beside it.
    pub fn root(&self) -> &Path {
        self.gate.root_path()
    }

    /// The gate every access to the store's directory goes through.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    pub fn default_chunk_log2(&self) -> u8 {
        self.chunk_log2
    }

    pub fn user(&self, name: &str) -> Result<Keyring> {
        read_keyring(&self.gate, name)
    }

    /// Names of the keyring files in `.tvault/users/`. Links and special files are skipped
    /// with a warning (`fsck` reports them).
    fn user_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in self.gate.list(USERS_REL)? {
            let Some(name) = entry.name.strip_suffix(".json") else {
                continue;
            };
            if entry.kind != Kind::File {
                // Debug only: this runs on every unlock and denied open; fsck reports it.
                log::debug!(
                    "{}: skipped: {} is not a keyring",
                    self.gate
                        .display_path(&format!("{USERS_REL}/{}", entry.name))
                        .display(),
                    entry.kind.describe()
                );
                continue;
            }
            names.push(name.to_string());
        }
        names.sort();
        Ok(names)
    }

    /// All keyrings, sorted by name. A malformed keyring file is an error, not skipped: an
    /// admin must hear about it.
    pub fn users(&self) -> Result<Vec<Keyring>> {
        self.user_names()?.iter().map(|n| self.user(n)).collect()
    }

    /// The keyring registered for `uid`. Unreadable keyrings of other users are skipped with a
    /// warning, so that one bad file does not lock every user out.
    pub fn user_by_uid(&self, uid: u32) -> Result<Option<Keyring>> {
        for name in self.user_names()? {
            match self.user(&name) {
                Ok(k) if k.uid == uid => return Ok(Some(k)),
                Ok(_) => {}
                Err(e) => log::warn!("skipping keyring {name:?}: {e}"),
            }
        }
        Ok(None)
    }

    /// Adds a new user; refuses an existing name or a uid that already has a keyring (the
    /// mount maps each uid to exactly one keyring).
    pub fn add_user(&self, keyring: &Keyring) -> Result<()> {
        for other in self.users()? {
            if other.name == keyring.name {
                return Err(StoreError::UserExists(other.name));
            }
            if other.uid == keyring.uid {
                return Err(StoreError::UidTaken {
                    uid: other.uid,
                    name: other.name,
                });
            }
        }
        self.save_user(keyring)
    }

    /// Writes (or replaces) a keyring atomically.
    pub fn save_user(&self, keyring: &Keyring) -> Result<()> {
        let rel = user_rel(&keyring.name)?;
        let path = self.gate.display_path(&rel);
        let json = keyring.to_json();
        self.gate.write_atomic(&rel, FILE_MODE, |f| {
            f.write_all(json.as_bytes()).map_err(io_err(&path))
        })
    }

    /// Writes a small file of tvault's own into `.tvault/` atomically (e.g. `daemon.json`).
    pub fn write_meta(&self, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let rel = format!("{META_DIR}/{name}");
        let path = self.gate.display_path(&rel);
        self.gate
            .write_atomic(&rel, mode, |f| f.write_all(bytes).map_err(io_err(&path)))
    }

    /// Reads a small file of tvault's own from `.tvault/`, refused beyond `cap` bytes.
    pub fn read_meta(&self, name: &str, cap: u64) -> Result<Vec<u8>> {
        self.gate.read_capped(&format!("{META_DIR}/{name}"), cap)
    }

    pub fn remove_meta(&self, name: &str) -> Result<()> {
        self.gate.remove_file(&format!("{META_DIR}/{name}"))
    }

    /// Whether plaintext path `rel` is stored (as a regular container file).
    pub fn exists(&self, rel: &str) -> Result<bool> {
        Ok(self.gate.kind(&container_rel(rel)?)? == Some(Kind::File))
    }

    /// Whether `rel` is a directory of the store (`""` is the root).
    pub fn is_dir(&self, rel: &str) -> bool {
        self.gate.is_dir(rel)
    }

    /// Every stored file, sorted by path.
    pub fn files(&self) -> Result<Vec<StoredFile>> {
        self.files_under("")
    }

    /// Every stored file under directory `dir` (`""`: the whole store), sorted by path. Only
    /// that directory is walked: what lies elsewhere (a path too long to open, a directory
    /// that cannot be read) does not concern it.
    pub fn files_under(&self, dir: &str) -> Result<Vec<StoredFile>> {
        if !dir.is_empty() {
            validate_rel(dir)?;
        }
        let mut out = Vec::new();
        self.walk(dir, &mut out)?;
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    fn walk(&self, dir: &str, out: &mut Vec<StoredFile>) -> Result<()> {
        for entry in self.gate.list(dir)? {
            let name = &entry.name;
            if dir.is_empty() && name == META_DIR {
                continue;
            }
            let rel = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            match entry.kind {
                Kind::Dir => self.walk(&rel, out)?,
                Kind::File => {
                    if let Some(stem) = rel.strip_suffix(&format!(".{CONTAINER_EXT}")) {
                        if validate_rel(stem).is_ok() {
                            out.push(StoredFile {
                                rel: stem.to_string(),
                            });
                        }
                    }
                }
                Kind::Symlink | Kind::Other => {}
            }
        }
        Ok(())
    }

    /// What the mount shows in directory `rel`, sorted by name: subdirectories and files
    /// (containers). One pass over the directory.
    pub fn list_mount_dir(&self, rel: &str) -> Result<Vec<MountEntry>> {
        let suffix = format!(".{CONTAINER_EXT}");
        let mut out: Vec<MountEntry> = Vec::new();
        for entry in self.gate.list(rel)? {
            if rel.is_empty() && entry.name == META_DIR {
                continue;
            }
            match entry.kind {
                Kind::Dir => out.push(MountEntry {
                    name: entry.name,
                    is_dir: true,
                }),
                Kind::File => {
                    if let Some(stem) = entry.name.strip_suffix(&suffix) {
                        if !stem.is_empty() {
                            out.push(MountEntry {
                                name: stem.to_string(),
                                is_dir: false,
                            });
                        }
                    }
                }
                // Never shown: the mount has no links or special files (docs/SECURITY.md).
                Kind::Symlink | Kind::Other => {}
            }
        }
        // A directory `x` and a container `x.tvlt` side by side: the directory wins (sorted
        // first, kept by dedup), as in lookups.
        out.sort_by(|a, b| a.name.cmp(&b.name).then(b.is_dir.cmp(&a.is_dir)));
        out.dedup_by(|later, earlier| later.name == earlier.name);
        Ok(out)
    }

    /// Opens the container file of `rel` for reading (a regular file, never through a link).
    pub fn open_container_file(&self, rel: &str) -> Result<File> {
        match self.gate.open_file(&container_rel(rel)?) {
            Err(e) if e.is_not_found() => Err(StoreError::NoSuchFile(rel.to_string())),
            other => other,
        }
    }

    /// Reads and structurally checks the container of `rel` (no key needed).
    pub fn open_container(&self, rel: &str) -> Result<Container<File>> {
        let file = self.open_container_file(rel)?;
        let path = self.gate.display_path(&container_rel(rel)?);
        Container::parse(file).map_err(container_err(&path))
    }

    /// Opens `rel` for reading with `user`'s private key: unwraps the data key from their slot
    /// and verifies the header MAC.
    pub fn reader(&self, rel: &str, user: &str, private: &PrivateKey) -> Result<Reader<File>> {
        let path = self.gate.display_path(&container_rel(rel)?);
        let container = self.open_container(rel)?;
        let data_key = unwrap_for(&container, rel, user, private)?;
        container.open(&data_key).map_err(container_err(&path))
    }

    /// Encrypts `source` into the store as `rel`, for `recipients`. With `replace` false an
    /// existing `rel` is refused. `progress` receives bytes processed so far.
    pub fn put(
        &self,
        rel: &str,
        source: &Path,
        recipients: &[Keyring],
        chunk_log2: u8,
        replace: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let target = container_rel(rel)?;
        let path = self.gate.display_path(&target);
        if !replace && self.gate.kind(&target)?.is_some() {
            return Err(StoreError::FileExists(rel.to_string()));
        }
        if let Some((parent, _)) = rel.rsplit_once('/') {
            self.gate.create_dir_all(parent, DIR_MODE)?;
        }
        let mut input = File::open(source).map_err(io_err(source))?;
        let data_key = SecretKey::generate().map_err(|e| container_err(&path)(e.into()))?;
        let slots: Vec<_> = recipients
            .iter()
            .map(|k| (k.name.clone(), k.public_key))
            .collect();
        self.gate.write_atomic(&target, FILE_MODE, |file| {
            let out = BufWriter::with_capacity(IO_BUF, file);
            let mut writer =
                Writer::new(out, &data_key, chunk_log2, &slots).map_err(container_err(&path))?;
            let mut buf = zeroize::Zeroizing::new(vec![0u8; IO_BUF]);
            let mut done = 0u64;
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(source)(e)),
                };
                writer.write_all(&buf[..n]).map_err(container_err(&path))?;
                done += n as u64;
                progress(done);
            }
            let mut out = writer.finish().map_err(container_err(&path))?;
            out.flush().map_err(io_err(&path))
        })
    }

    /// `granter` (who can read `rel`) adds a key slot for `grantee`. Returns false if the
    /// grantee already had one. The data is not re-encrypted.
    pub fn grant(
        &self,
        rel: &str,
        granter: &str,
        private: &PrivateKey,
        grantee: &Keyring,
    ) -> Result<bool> {
        let target = container_rel(rel)?;
        let path = self.gate.display_path(&target);
        let container = self.open_container(rel)?;
        if container.slot(&grantee.name).is_some() {
            return Ok(false);
        }
        let data_key = unwrap_for(&container, rel, granter, private)?;
        // Refuse to extend access to a file whose header was tampered with.
        container
            .verify_header(&data_key)
            .map_err(container_err(&path))?;
        let file_id = container.header().file_id;
        let mut slots = container.slots().to_vec();
        slots.push(
            KeySlot::seal(&file_id, &grantee.name, &grantee.public_key, &data_key)
                .map_err(container_err(&path))?,
        );
        self.rewrite_slots(&target, &container, &slots)?;
        Ok(true)
    }

    /// Removes `user`'s key slot. Without `rekey`, the data key is unchanged: a revoked user
    /// who kept the key can still decrypt the current ciphertext. With `rekey` (a remaining
    /// reader's name and key) the file is re-encrypted under a new data key for the others.
    pub fn revoke(&self, rel: &str, user: &str, rekey: Option<(&str, &PrivateKey)>) -> Result<()> {
        let target = container_rel(rel)?;
        let path = self.gate.display_path(&target);
        let container = self.open_container(rel)?;
        if container.slot(user).is_none() {
            return Err(StoreError::NoAccess {
                rel: rel.to_string(),
                user: user.to_string(),
            });
        }
        let remaining: Vec<KeySlot> = container
            .slots()
            .iter()
            .filter(|s| s.label != user)
            .cloned()
            .collect();
        let Some((reader_name, private)) = rekey else {
            return self.rewrite_slots(&target, &container, &remaining);
        };
        let recipients = remaining
            .iter()
            .map(|s| match self.user(&s.label) {
                Err(StoreError::NoSuchUser(_)) => Err(StoreError::UnknownRecipient {
                    rel: rel.to_string(),
                    label: s.label.clone(),
                }),
                other => other,
            })
            .collect::<Result<Vec<_>>>()?;
        let data_key = unwrap_for(&container, rel, reader_name, private)?;
        let reader = container.open(&data_key).map_err(container_err(&path))?;
        self.reencrypt(&target, &reader, &recipients)
    }

    /// The users a file created at `rel` through the mount is encrypted to: `writer` plus the
    /// names in the nearest `.tvault-recipients` in `rel`'s directory or above. Names that
    /// are not users of the store are skipped (with a warning): a policy typo must not
    /// widen access, and it does not block the writer. A policy file that cannot be used (not
    /// UTF-8 in places, too large, a link) is read as far as it is valid or, if it cannot be
    /// read at all, counts as naming nobody: access is never widened by a broken policy.
    pub fn recipients_for_new(&self, rel: &str, writer: &Keyring) -> Result<Vec<Keyring>> {
        validate_rel(rel)?;
        let mut recipients = vec![writer.clone()];
        let mut dir = Path::new(rel).parent();
        while let Some(d) = dir {
            let d_str = d.to_str().unwrap_or_default();
            let policy = if d_str.is_empty() {
                RECIPIENTS_FILE.to_string()
            } else {
                format!("{d_str}/{RECIPIENTS_FILE}")
            };
            let shown = self.gate.display_path(&policy);
            match self.gate.read_capped(&policy, MAX_POLICY_LEN) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    for name in parse_policy(&text) {
                        match self.user(&name) {
                            Ok(k) if !recipients.iter().any(|r| r.name == k.name) => {
                                recipients.push(k)
                            }
                            Ok(_) => {}
                            Err(e) => log::warn!("{}: skipping {name:?}: {e}", shown.display()),
                        }
                    }
                    break;
                }
                Err(e) if e.is_not_found() => dir = d.parent(),
                Err(e) => {
                    log::warn!(
                        "{}: ignored, new files get no extra recipients: {e}",
                        shown.display()
                    );
                    break;
                }
            }
        }
        Ok(recipients)
    }

    /// Keyrings for key-slot labels (the recipients of an existing file, when it is
    /// rewritten). Labels that name no user of the store are skipped with a warning.
    pub fn keyrings_for<'a>(&self, labels: impl Iterator<Item = &'a str>) -> Vec<Keyring> {
        labels
            .filter_map(|label| match self.user(label) {
                Ok(k) => Some(k),
                Err(e) => {
                    log::warn!("dropping recipient {label:?} on rewrite: {e}");
                    None
                }
            })
            .collect()
    }

    /// Creates directory `rel`, refusing a name a file already has.
    pub fn mkdir(&self, rel: &str) -> Result<()> {
        if self.exists(rel)? {
            return Err(StoreError::FileExists(rel.to_string()));
        }
        self.gate.mkdir(rel, DIR_MODE)
    }

    pub fn rmdir(&self, rel: &str) -> Result<()> {
        validate_rel(rel)?;
        self.gate.remove_dir(rel)
    }

    /// Removes the stored file `rel`.
    pub fn remove(&self, rel: &str) -> Result<()> {
        self.gate.remove_file(&container_rel(rel)?)
    }

    /// Renames stored file `from` to `to`, replacing a stored `to` unless `noreplace`.
    pub fn rename_file(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        self.gate
            .rename(&container_rel(from)?, &container_rel(to)?, noreplace)
    }

    /// Renames directory `from` to `to` (an empty directory `to` is replaced, as rename(2)
    /// does, unless `noreplace`).
    pub fn rename_dir(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        validate_rel(from)?;
        validate_rel(to)?;
        self.gate.rename(from, to, noreplace)
    }

    /// Sets the times of stored file `rel`, or of directory `rel` with `dir`.
    pub fn set_times(
        &self,
        rel: &str,
        dir: bool,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> Result<()> {
        let target = if dir {
            if !rel.is_empty() {
                validate_rel(rel)?;
            }
            rel.to_string()
        } else {
            container_rel(rel)?
        };
        self.gate.set_times(&target, atime, mtime)
    }

    fn rewrite_slots(
        &self,
        target: &str,
        container: &Container<File>,
        slots: &[KeySlot],
    ) -> Result<()> {
        let path = self.gate.display_path(target);
        self.gate.write_atomic(target, FILE_MODE, |file| {
            let mut out = BufWriter::with_capacity(IO_BUF, file);
            container
                .write_with_slots(slots, &mut out)
                .map_err(container_err(&path))?;
            out.flush().map_err(io_err(&path))
        })
    }

    /// Re-encrypts the plaintext of `reader` under a fresh data key and file id, chunk by chunk
    /// in memory, keeping its chunk size.
    fn reencrypt(&self, target: &str, reader: &Reader<File>, recipients: &[Keyring]) -> Result<()> {
        let path = self.gate.display_path(target);
        let data_key = SecretKey::generate().map_err(|e| container_err(&path)(e.into()))?;
        let slots: Vec<_> = recipients
            .iter()
            .map(|k| (k.name.clone(), k.public_key))
            .collect();
        self.gate.write_atomic(target, FILE_MODE, |file| {
            let out = BufWriter::with_capacity(IO_BUF, file);
            let mut writer = Writer::new(out, &data_key, reader.header().chunk_log2, &slots)
                .map_err(container_err(&path))?;
            let mut chunk = zeroize::Zeroizing::new(vec![0u8; reader.chunk_size() as usize]);
            let mut cipher = Vec::new();
            for index in 0..reader.chunk_count() {
                let n = reader
                    .read_chunk_with(index, &mut chunk, &mut cipher)
                    .map_err(container_err(&path))?;
                writer
                    .write_all(&chunk[..n])
                    .map_err(container_err(&path))?;
            }
            let mut out = writer.finish().map_err(container_err(&path))?;
            out.flush().map_err(io_err(&path))
        })
    }
}

fn user_rel(name: &str) -> Result<String> {
    keyring::validate_name(name)?;
    Ok(format!("{USERS_REL}/{name}.json"))
}

/// The keyring of user `name` in the store behind `gate`, checked to be named for `name`.
/// Needs no valid `store.json`, so that `fsck` can read it in a damaged store.
pub fn read_keyring(gate: &Gate, name: &str) -> Result<Keyring> {
    let rel = user_rel(name)?;
    let path = gate.display_path(&rel);
    let bytes = match gate.read_capped(&rel, MAX_KEYRING_LEN) {
        Err(e) if e.is_not_found() => return Err(StoreError::NoSuchUser(name.to_string())),
        other => other?,
    };
    let keyring = Keyring::from_json(&bytes).map_err(|source| StoreError::Keyring {
        path: path.clone(),
        source,
    })?;
    if keyring.name != name {
        return Err(StoreError::Keyring {
            path,
            source: KeyringError::Malformed(format!(
                "file is named for {name:?} but holds {:?}",
                keyring.name
            )),
        });
    }
    Ok(keyring)
}

fn unwrap_for(
    container: &Container<File>,
    rel: &str,
    user: &str,
    private: &PrivateKey,
) -> Result<SecretKey> {
    match container.unwrap_key(user, private) {
        Err(ContainerError::NoSlot(_)) => Err(StoreError::NoAccess {
            rel: rel.to_string(),
            user: user.to_string(),
        }),
        other => other.map_err(|source| StoreError::Container {
            path: PathBuf::from(rel),
            source,
        }),
    }
}

/// User names in a `.tvault-recipients` file: separated by newlines, commas or spaces;
/// `#` starts a comment.
pub fn parse_policy(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split([',', ' ', '\t']))
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// Turns a path relative to a source directory into a store path with '/' separators.
pub fn rel_from_path(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KdfParams;
    use std::fs;

    const FAST: KdfParams = KdfParams {
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

    #[test]
    fn policy_files() {
        assert_eq!(
            parse_policy("alice\n# team\nbob, carol # ml\n\n"),
            ["alice", "bob", "carol"]
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), container::DEFAULT_CHUNK_LOG2).unwrap();
        let mk = |name: &str, uid| {
            let (k, _) = Keyring::create(name, uid, b"pw", FAST).unwrap();
            store.add_user(&k).unwrap();
            k
        };
        let (alice, bob, _carol) = (mk("alice", 1), mk("bob", 2), mk("carol", 3));
        fs::create_dir_all(dir.path().join("team/sub")).unwrap();
        fs::write(
            dir.path().join("team/.tvault-recipients"),
            "bob carol ghost\n",
        )
        .unwrap();
        let names = |v: Vec<Keyring>| v.into_iter().map(|k| k.name).collect::<Vec<_>>();
        assert_eq!(
            names(store.recipients_for_new("team/sub/x", &alice).unwrap()),
            ["alice", "bob", "carol"]
        );
        assert_eq!(
            names(store.recipients_for_new("other/x", &bob).unwrap()),
            ["bob"]
        );
        assert_eq!(
            names(store.recipients_for_new("x", &alice).unwrap()),
            ["alice"]
        );
    }

    #[test]
    fn mount_listing_hides_links_and_prefers_directories() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), container::DEFAULT_CHUNK_LOG2).unwrap();
        fs::create_dir(dir.path().join("x")).unwrap();
        fs::write(dir.path().join("x.tvlt"), b"").unwrap();
        fs::write(dir.path().join("y.tvlt"), b"").unwrap();
        fs::write(dir.path().join("notes.txt"), b"").unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("z")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("w.tvlt")).unwrap();
        let listed: Vec<_> = store
            .list_mount_dir("")
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.is_dir))
            .collect();
        assert_eq!(listed, [("x".to_string(), true), ("y".to_string(), false)]);
    }

    #[test]
    fn users_unique_by_name_and_uid() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), container::DEFAULT_CHUNK_LOG2).unwrap();
        let (a, _) = Keyring::create("alice", 1001, b"pw", FAST).unwrap();
        store.add_user(&a).unwrap();
        assert!(matches!(store.add_user(&a), Err(StoreError::UserExists(_))));
        let (b, _) = Keyring::create("bob", 1001, b"pw", FAST).unwrap();
        assert!(matches!(
            store.add_user(&b),
            Err(StoreError::UidTaken { .. })
        ));
        assert_eq!(store.user_by_uid(1001).unwrap().unwrap().name, "alice");
        assert!(matches!(
            Store::init(dir.path(), 16),
            Err(StoreError::AlreadyAStore(_))
        ));
    }
}
