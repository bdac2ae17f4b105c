//! The store: a directory of `.tvlt` containers plus `.tvault/` (configuration and keyrings).
//!
//! ```text
//! STORE/.tvault/store.json        format version, default chunk size
//! STORE/.tvault/users/NAME.json   one keyring per user
//! STORE/REL.tvlt                  the encrypted form of plaintext file REL
//! ```
//! Every write goes through `fsutil::write_atomic`, so an interrupted command leaves the
//! store as it was.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::container::{self, Container, ContainerError, Draft, KeySlot, Reader, Writer};
use crate::crypto::{PrivateKey, PublicKey, SecretKey};
use crate::fsutil::{self, write_atomic};
use crate::keyring::{self, Keyring, KeyringError};

pub const META_DIR: &str = ".tvault";
/// Per-directory policy naming the users that files created through the mount are
/// encrypted to (besides their writer).
pub const RECIPIENTS_FILE: &str = ".tvault-recipients";
pub const CONTAINER_EXT: &str = "tvlt";
const STORE_FORMAT: &str = "tensorvault-store";
const STORE_VERSION: u32 = 1;
const FILE_MODE: u32 = 0o600;
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
            _ if fsutil::is_temp_name(part) => return bad("reserved temporary-file name"),
            _ => {}
        }
    }
    Ok(())
}

/// One stored file as seen by listings.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub rel: String,
    pub path: PathBuf,
}

pub struct Store {
    root: PathBuf,
    chunk_log2: u8,
}

impl Store {
    pub fn init(root: &Path, chunk_log2: u8) -> Result<Store> {
        container::chunk_log2_from_size(1u64 << chunk_log2).map_err(container_err(root))?;
        let meta = root.join(META_DIR);
        if meta.exists() {
            return Err(StoreError::AlreadyAStore(root.to_path_buf()));
        }
        fs::create_dir_all(meta.join("users")).map_err(io_err(&meta))?;
        let config = StoreConfig {
            format: STORE_FORMAT.into(),
            version: STORE_VERSION,
            chunk_size: 1u64 << chunk_log2,
        };
        let json = serde_json::to_string_pretty(&config).unwrap_or_default() + "\n";
        let path = meta.join("store.json");
        write_atomic(
            &path,
            0o644,
            |f| f.write_all(json.as_bytes()).map_err(io_err(&path)),
            io_err(&path),
        )?;
        Ok(Store {
            root: root.to_path_buf(),
            chunk_log2,
        })
    }

    pub fn open(root: &Path) -> Result<Store> {
        let path = root.join(META_DIR).join("store.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore(root.to_path_buf()))
            }
            Err(e) => return Err(io_err(&path)(e)),
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
            root: root.to_path_buf(),
            chunk_log2,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn default_chunk_log2(&self) -> u8 {
        self.chunk_log2
    }

    fn users_dir(&self) -> PathBuf {
        self.root.join(META_DIR).join("users")
    }

    fn user_path(&self, name: &str) -> Result<PathBuf> {
        keyring::validate_name(name)?;
        Ok(self.users_dir().join(format!("{name}.json")))
    }

    pub fn user(&self, name: &str) -> Result<Keyring> {
        let path = self.user_path(name)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchUser(name.to_string()))
            }
            Err(e) => return Err(io_err(&path)(e)),
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

    /// All keyrings, sorted by name. A malformed keyring file is an error, not skipped: an
    /// admin must hear about it.
    pub fn users(&self) -> Result<Vec<Keyring>> {
        let dir = self.users_dir();
        let mut users = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if fsutil::is_temp_name(name) {
                continue;
            }
            users.push(self.user(name)?);
        }
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    pub fn user_by_uid(&self, uid: u32) -> Result<Option<Keyring>> {
        Ok(self.users()?.into_iter().find(|k| k.uid == uid))
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
        let path = self.user_path(&keyring.name)?;
        let json = keyring.to_json();
        write_atomic(
            &path,
            FILE_MODE,
            |f| f.write_all(json.as_bytes()).map_err(io_err(&path)),
            io_err(&path),
        )
    }

    pub fn unlock(&self, name: &str, passphrase: &[u8]) -> Result<(Keyring, PrivateKey)> {
        let keyring = self.user(name)?;
        let private = keyring.unlock(passphrase)?;
        Ok((keyring, private))
    }

    /// Where the container for plaintext path `rel` lives.
    pub fn container_path(&self, rel: &str) -> Result<PathBuf> {
        validate_rel(rel)?;
        Ok(self.root.join(format!("{rel}.{CONTAINER_EXT}")))
    }

    /// Every stored file, sorted by path.
    pub fn files(&self) -> Result<Vec<StoredFile>> {
        let mut out = Vec::new();
        self.walk(&self.root, "", &mut out)?;
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    fn walk(&self, dir: &Path, prefix: &str, out: &mut Vec<StoredFile>) -> Result<()> {
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if (prefix.is_empty() && name == META_DIR) || fsutil::is_temp_name(&name) {
                continue;
            }
            let kind = entry.file_type().map_err(io_err(&entry.path()))?;
            if kind.is_dir() {
                self.walk(&entry.path(), &format!("{prefix}{name}/"), out)?;
            } else if kind.is_file() {
                if let Some(stem) = name.strip_suffix(&format!(".{CONTAINER_EXT}")) {
                    let rel = format!("{prefix}{stem}");
                    if validate_rel(&rel).is_ok() {
                        out.push(StoredFile {
                            rel,
                            path: entry.path(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Maps and structurally checks the container of `rel` (no key needed).
    pub fn open_container(&self, rel: &str) -> Result<Container<Mmap>> {
        let path = self.container_path(rel)?;
        open_container_at(&path).map_err(|e| match e {
            StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                StoreError::NoSuchFile(rel.to_string())
            }
            e => e,
        })
    }

    /// Opens `rel` for reading with `user`'s private key: unwraps the data key from their slot
    /// and verifies the header MAC.
    pub fn reader(&self, rel: &str, user: &str, private: &PrivateKey) -> Result<Reader<Mmap>> {
        let path = self.container_path(rel)?;
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
        let target = self.container_path(rel)?;
        if !replace && target.exists() {
            return Err(StoreError::FileExists(rel.to_string()));
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut input = File::open(source).map_err(io_err(source))?;
        let data_key = SecretKey::generate().map_err(|e| container_err(&target)(e.into()))?;
        let slots: Vec<_> = recipients
            .iter()
            .map(|k| (k.name.clone(), k.public_key))
            .collect();
        write_atomic(
            &target,
            FILE_MODE,
            |file| {
                let out = BufWriter::with_capacity(IO_BUF, file);
                let mut writer = Writer::new(out, &data_key, chunk_log2, &slots)
                    .map_err(container_err(&target))?;
                let mut buf = zeroize::Zeroizing::new(vec![0u8; IO_BUF]);
                let mut done = 0u64;
                loop {
                    let n = match input.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(io_err(source)(e)),
                    };
                    writer
                        .write_all(&buf[..n])
                        .map_err(container_err(&target))?;
                    done += n as u64;
                    progress(done);
                }
                let mut out = writer.finish().map_err(container_err(&target))?;
                out.flush().map_err(io_err(&target))
            },
            io_err(&target),
        )
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
        let path = self.container_path(rel)?;
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
        self.rewrite_slots(&path, &container, &slots)?;
        Ok(true)
    }

    /// Removes `user`'s key slot. Without `rekey`, the data key is unchanged: a revoked user
    /// who kept the key can still decrypt the current ciphertext. With `rekey` (a remaining
    /// reader's name and key) the file is re-encrypted under a new data key for the others.
    pub fn revoke(&self, rel: &str, user: &str, rekey: Option<(&str, &PrivateKey)>) -> Result<()> {
        let path = self.container_path(rel)?;
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
            return self.rewrite_slots(&path, &container, &remaining);
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
        self.reencrypt(&path, &reader, &recipients)
    }

    /// The users a file created at `rel` through the mount is encrypted to: `writer` plus the
    /// names in the nearest `.tvault-recipients` in `rel`'s directory or above. Names that
    /// are not users of the store are skipped (with a warning): a policy typo must not
    /// widen access, and it does not block the writer.
    pub fn recipients_for_new(&self, rel: &str, writer: &Keyring) -> Result<Vec<Keyring>> {
        validate_rel(rel)?;
        let mut recipients = vec![writer.clone()];
        let mut dir = Path::new(rel).parent();
        while let Some(d) = dir {
            let policy = self.root.join(d).join(RECIPIENTS_FILE);
            match fs::read_to_string(&policy) {
                Ok(text) => {
                    for name in parse_policy(&text) {
                        match self.user(&name) {
                            Ok(k) if !recipients.iter().any(|r| r.name == k.name) => {
                                recipients.push(k)
                            }
                            Ok(_) => {}
                            Err(e) => log::warn!("{}: skipping {name:?}: {e}", policy.display()),
                        }
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => dir = d.parent(),
                Err(e) => return Err(io_err(&policy)(e)),
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

    /// Starts a new version of `rel` as a draft container in a temporary file beside it.
    pub fn start_draft(
        &self,
        rel: &str,
        data_key: &SecretKey,
        chunk_log2: u8,
        recipients: &[(String, PublicKey)],
    ) -> Result<(PathBuf, Draft)> {
        let target = self.container_path(rel)?;
        let (temp, file) =
            fsutil::create_temp_beside(&target, FILE_MODE).map_err(io_err(&target))?;
        match Draft::create(file, data_key, chunk_log2, recipients) {
            Ok(draft) => Ok((temp, draft)),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(container_err(&target)(e))
            }
        }
    }

    /// Completes a draft and atomically replaces `rel` with it. On failure the draft's file
    /// is removed and `rel` keeps its previous version.
    pub fn commit_draft(
        &self,
        rel: &str,
        temp: &Path,
        draft: Draft,
        plaintext_len: u64,
    ) -> Result<()> {
        let target = self.container_path(rel)?;
        let result = draft
            .finish(plaintext_len)
            .map_err(container_err(&target))
            .and_then(|file| fsutil::commit_temp(temp, &file, &target).map_err(io_err(&target)));
        if result.is_err() {
            let _ = fs::remove_file(temp);
        }
        result
    }

    fn rewrite_slots(
        &self,
        path: &Path,
        container: &Container<Mmap>,
        slots: &[KeySlot],
    ) -> Result<()> {
        write_atomic(
            path,
            FILE_MODE,
            |file| {
                let mut out = BufWriter::with_capacity(IO_BUF, file);
                container
                    .write_with_slots(slots, &mut out)
                    .map_err(container_err(path))?;
                out.flush().map_err(io_err(path))
            },
            io_err(path),
        )
    }

    /// Re-encrypts the plaintext of `reader` under a fresh data key and file id, chunk by chunk
    /// in memory, keeping its chunk size.
    fn reencrypt(&self, path: &Path, reader: &Reader<Mmap>, recipients: &[Keyring]) -> Result<()> {
        let data_key = SecretKey::generate().map_err(|e| container_err(path)(e.into()))?;
        let slots: Vec<_> = recipients
            .iter()
            .map(|k| (k.name.clone(), k.public_key))
            .collect();
        write_atomic(
            path,
            FILE_MODE,
            |file| {
                let out = BufWriter::with_capacity(IO_BUF, file);
                let mut writer = Writer::new(out, &data_key, reader.header().chunk_log2, &slots)
                    .map_err(container_err(path))?;
                let mut chunk = zeroize::Zeroizing::new(vec![0u8; reader.chunk_size() as usize]);
                for index in 0..reader.chunk_count() {
                    let n = reader
                        .read_chunk(index, &mut chunk)
                        .map_err(container_err(path))?;
                    writer.write_all(&chunk[..n]).map_err(container_err(path))?;
                }
                let mut out = writer.finish().map_err(container_err(path))?;
                out.flush().map_err(io_err(path))
            },
            io_err(path),
        )
    }
}

pub fn open_container_at(path: &Path) -> Result<Container<Mmap>> {
    let file = File::open(path).map_err(io_err(path))?;
    Container::map(&file).map_err(container_err(path))
}

fn unwrap_for(
    container: &Container<Mmap>,
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

    const FAST: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn rel_validation() {
        for bad in [
            "",
            "/a",
            "a//b",
            "a/../b",
            "./a",
            ".tvault/x",
            "a/.b.tmp-0123456789ab",
        ] {
            assert!(validate_rel(bad).is_err(), "{bad}");
        }
        for good in ["a", "model/config.json", "x/.tvault", ".hidden"] {
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
