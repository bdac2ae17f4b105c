//! Where the audit key lives, and when it is trusted.
//!
//! Anyone who can write the store can replace the log and anything beside it, so the key is
//! kept outside the store: by default `$TVAULT_STATE_DIR/audit-keys/<log id>.key`
//! (`/var/lib/tvault` when the variable is unset), where the log id is the first 16 bytes,
//! in hex, of the SHA-256 of the log's absolute path with its directory canonicalized. A key
//! beside the log (`STORE/.tvault/audit.key`, `LOG.key`, where older versions kept it) is never
//! read; its presence only earns a warning.
//!
//! The writer (the daemon, or the CLI appending a grant) takes a key only if it is a regular
//! file, not a symbolic link, owned by the writer's effective uid, with no group or other
//! permission bit, in a directory owned by that uid or root that group and others cannot
//! write (above it, sticky directories such as `/tmp` are accepted). The verifier accepts a key
//! owned by the caller or root that group and others cannot write; read bits only earn a
//! warning, since the log is then only as good as the key's secrecy.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{io_err, AuditError, DEFAULT_LOG_NAME, KEY_LEN};
use crate::crypto;
use crate::fsutil;
use crate::system::euid;

/// Environment variable naming the state directory (the audit keys live in its `audit-keys/`).
pub const STATE_DIR_ENV: &str = "TVAULT_STATE_DIR";
/// The state directory when [`STATE_DIR_ENV`] is unset.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tvault";
/// Subdirectory of the state directory that holds one key (and head record) per log.
pub const KEY_DIR: &str = "audit-keys";
/// Name an older tvault gave the key, in `STORE/.tvault/`.
pub const LEGACY_KEY_NAME: &str = "audit.key";
/// A key file longer than this is not a key.
const MAX_KEY_FILE: u64 = 1024;

/// The audit key: 32 bytes, wiped on drop.
pub type Key = Zeroizing<Vec<u8>>;

/// The state directory: `$TVAULT_STATE_DIR`, else `/var/lib/tvault`.
pub fn state_dir() -> PathBuf {
    match std::env::var_os(STATE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_STATE_DIR),
    }
}

/// The path a log's id is made from: absolute, with symlinks resolved above the log's own
/// directory, so that `/srv/./models` and a symlinked store path name the same log. The
/// log's directory itself is taken by name: whoever can write the store can replace
/// `STORE/.tvault` with a link to somewhere else, and the log found there must then be
/// checked against this log's key and head record, not get a fresh key of its own.
fn canonical_log(log: &Path) -> PathBuf {
    let abs = std::path::absolute(log).unwrap_or_else(|_| log.to_path_buf());
    let (Some(dir), Some(name)) = (abs.parent(), abs.file_name()) else {
        return abs;
    };
    match (dir.parent(), dir.file_name()) {
        (Some(above), Some(dir_name)) => fs::canonicalize(above)
            .map(|a| a.join(dir_name).join(name))
            .unwrap_or_else(|_| abs.clone()),
        // The log's directory is `/` or ends in `..`: resolve it whole.
        _ => fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or_else(|_| abs.clone()),
    }
}

/// The id of a log (which names its default key): 32 hex digits of the SHA-256 of its path
/// as `canonical_log` makes it. Moving the log (or the store holding it) changes the id.
pub fn log_id(log: &Path) -> String {
    let digest = crypto::sha256(canonical_log(log).as_os_str().as_bytes());
    hex::encode(&digest[..16])
}

/// The default key of a log: `STATE/audit-keys/<log id>.key`.
pub fn default_key_path(log: &Path) -> PathBuf {
    state_dir()
        .join(KEY_DIR)
        .join(format!("{}.key", log_id(log)))
}

/// `(log, key)` for a store: the log is `STORE/.tvault/audit.jsonl`, or `log` when given
/// (`--audit-log FILE`); the key is that log's `default_key_path` (an explicit
/// `--audit-key` overrides it).
pub fn default_paths(store_root: &Path, log: Option<&Path>) -> (PathBuf, PathBuf) {
    let log = log.map_or_else(
        || {
            store_root
                .join(crate::store::META_DIR)
                .join(DEFAULT_LOG_NAME)
        },
        Path::to_path_buf,
    );
    let key = default_key_path(&log);
    (log, key)
}

/// Where older versions kept the key of `log`: `audit.key` beside a log in `.tvault/`, and
/// `LOG.key`. Never read: only named in a warning.
pub fn legacy_key_paths(log: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let parent = log.parent().unwrap_or(Path::new(""));
    if parent.file_name().and_then(|n| n.to_str()) == Some(crate::store::META_DIR) {
        out.push(parent.join(LEGACY_KEY_NAME));
    }
    out.push(suffixed(log, ".key"));
    out
}

pub(super) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Who may own the key and its directories, and which permission bits are refused.
#[derive(Clone, Copy)]
pub(super) enum Trust {
    /// The writer: owned by the effective uid, no group or other bits.
    Writer,
    /// The verifier: owned by the caller or root, not writable by group or others.
    Reader,
}

impl Trust {
    fn owner_ok(self, uid: u32) -> bool {
        let me = euid();
        match self {
            Trust::Writer => uid == me,
            Trust::Reader => uid == me || uid == 0,
        }
    }

    fn owner_text(self) -> String {
        match self {
            Trust::Writer => format!("uid {} (who runs the daemon)", euid()),
            Trust::Reader => format!("you (uid {}) or root", euid()),
        }
    }
}

/// Checks the directory that holds a key and every directory above it: each must be owned by
/// `euid` or root and not writable by group or others, except that directories above the
/// key's own may be sticky (`/tmp`): there nobody else can rename or remove our entries.
/// Both the path as written and its canonical form are walked, so that a symlink on the way
/// cannot sit in a directory others could change.
fn check_dirs(dir: &Path) -> Result<(), AuditError> {
    let canonical = fs::canonicalize(dir).map_err(io_err(dir))?;
    let literal = std::path::absolute(dir).map_err(io_err(dir))?;
    let walks = canonical
        .ancestors()
        .enumerate()
        .chain(literal.ancestors().enumerate());
    for (depth, d) in walks {
        let meta = fs::symlink_metadata(d).map_err(io_err(d))?;
        if meta.file_type().is_symlink() {
            // Its target is on the canonical walk; the directory holding it is checked next.
            continue;
        }
        check_dir(d, &meta, depth == 0)?;
    }
    Ok(())
}

fn check_dir(d: &Path, meta: &fs::Metadata, holds_the_key: bool) -> Result<(), AuditError> {
    let me = euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(AuditError::KeyDirOwner {
            path: d.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode();
    let sticky = mode & libc::S_ISVTX != 0;
    if mode & 0o022 != 0 && (holds_the_key || !sticky) {
        return Err(AuditError::KeyDirWritable {
            path: d.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// Opens a key or head record and checks it against `trust`; `None` if it does not exist
/// (with `create`, it is created, mode 0600, instead).
pub(super) fn open_trusted(
    path: &Path,
    trust: Trust,
    create: bool,
) -> Result<Option<File>, AuditError> {
    let mut options = fs::OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY);
    if create {
        options.write(true).create(true).mode(0o600);
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(AuditError::KeySymlink(path.to_path_buf()))
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(AuditError::KeyNotFile(path.to_path_buf()));
    }
    if !trust.owner_ok(meta.uid()) {
        return Err(AuditError::KeyOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            expected: trust.owner_text(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    match trust {
        Trust::Writer if mode & 0o077 != 0 => {
            return Err(AuditError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            })
        }
        Trust::Reader if mode & 0o022 != 0 => {
            return Err(AuditError::KeyWritable {
                path: path.to_path_buf(),
                mode,
            })
        }
        Trust::Reader if mode & 0o044 != 0 => log::warn!(
            "{}: readable by group or others (mode {mode:03o}): whoever read the audit key \
             can forge entries that verify",
            path.display()
        ),
        _ => {}
    }
    Ok(Some(file))
}

/// The first [`MAX_KEY_FILE`] bytes (and one more, to tell a longer file).
pub(super) fn read_small(path: &Path, file: &File) -> Result<Key, AuditError> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_LEN * 2 + 1));
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    Ok(bytes)
}

/// Opens and checks a key file, and reads the key; `None` if it does not exist.
fn open_checked(path: &Path, trust: Trust) -> Result<Option<Key>, AuditError> {
    match open_trusted(path, trust, false)? {
        Some(file) => parse_key(path, &read_small(path, &file)?).map(Some),
        None => Ok(None),
    }
}

/// A key file holds 64 hex digits (optionally followed by a newline) or 32 raw bytes.
fn parse_key(path: &Path, bytes: &[u8]) -> Result<Key, AuditError> {
    let bad = |why| AuditError::BadKey {
        path: path.to_path_buf(),
        why,
    };
    let text = bytes.trim_ascii();
    if text.len() == 2 * KEY_LEN && text.iter().all(u8::is_ascii_hexdigit) {
        let key = hex::decode(text).map_err(|_| bad("invalid hex"))?;
        return Ok(Zeroizing::new(key));
    }
    if bytes.len() == KEY_LEN {
        return Ok(Zeroizing::new(bytes.to_vec()));
    }
    Err(bad("expected 64 hex digits or 32 raw bytes"))
}

/// Reads a key for verification ([`Trust::Reader`] rules); `None` if the file does not exist.
pub fn read_trusted(path: &Path) -> Result<Option<Key>, AuditError> {
    check_parent(path)?;
    open_checked(path, Trust::Reader)
}

/// [`check_dirs`] on the directory of `path`, if it exists (a missing one holds no key).
pub(super) fn check_parent(path: &Path) -> Result<(), AuditError> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) if dir.exists() => check_dirs(dir),
        Some(_) => Ok(()),
        None => check_dirs(Path::new(".")),
    }
}

/// The key for writing: its directory is created (mode 0700) if missing, and a fresh random
/// key (hex, mode 0600) if there is none; any key or directory that fails the
/// [`Trust::Writer`] rules is refused.
pub(super) fn load_or_create(path: &Path) -> Result<Key, AuditError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| AuditError::KeyDirCreate {
                path: dir.clone(),
                source,
            })?;
    }
    check_dirs(&dir)?;
    if let Some(key) = open_checked(path, Trust::Writer)? {
        return Ok(key);
    }
    create_key(path)?;
    open_checked(path, Trust::Writer)?.ok_or_else(|| AuditError::BadKey {
        path: path.to_path_buf(),
        why: "the key vanished right after it was created",
    })
}

/// Writes a fresh key atomically and without replacing one that another process created in
/// the meantime: the key is written (and synced) under a temporary name, then hard-linked to
/// `path`, which fails if `path` exists.
fn create_key(path: &Path) -> Result<(), AuditError> {
    let key: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(crypto::random_array()?);
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.as_ref())));
    let tag: [u8; 6] = crypto::random_array()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = path.with_file_name(format!(
        ".{name}{}new-{}",
        fsutil::TEMP_MARKER,
        hex::encode(tag)
    ));
    fsutil::write_atomic(
        &staging,
        0o600,
        |f: &mut File| f.write_all(text.as_bytes()).map_err(io_err(&staging)),
        io_err(&staging),
    )?;
    let linked = fs::hard_link(&staging, path);
    let _ = fs::remove_file(&staging);
    match linked {
        Ok(()) => {}
        // Another process won the race: use its key.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    }
    log::info!("created audit key {}", path.display());
    fsutil::sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn default_locations() {
        let (log, key) = default_paths(Path::new("/s"), None);
        assert_eq!(log, Path::new("/s/.tvault/audit.jsonl"));
        assert!(
            key.starts_with(state_dir().join(KEY_DIR)),
            "{}",
            key.display()
        );
        assert_eq!(key, default_key_path(&log));
        let name = key.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 32 + ".key".len());
        // The id follows the log, not the store, and does not depend on how the path is spelt.
        let (other, other_key) =
            default_paths(Path::new("/s"), Some(Path::new("/var/log/a.jsonl")));
        assert_eq!(other, Path::new("/var/log/a.jsonl"));
        assert_ne!(other_key, key);
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("meta")).unwrap();
        let log = dir.path().join("meta/x.jsonl");
        let spelt = dir.path().join(".").join("meta/../meta/x.jsonl");
        assert_eq!(log_id(&log), log_id(&spelt));
        // Links above the log's directory are resolved...
        let link = dir.path().join("link");
        symlink(dir.path(), &link).unwrap();
        assert_eq!(log_id(&log), log_id(&link.join("meta/x.jsonl")));
        // ...but not the directory itself: a redirected one keeps the log's id.
        symlink(dir.path().join("meta"), dir.path().join("redirect")).unwrap();
        assert_ne!(log_id(&log), log_id(&dir.path().join("redirect/x.jsonl")));
        assert_eq!(
            legacy_key_paths(Path::new("/s/.tvault/audit.jsonl")),
            [
                PathBuf::from("/s/.tvault/audit.key"),
                PathBuf::from("/s/.tvault/audit.jsonl.key")
            ]
        );
    }

    #[test]
    fn writer_creates_and_checks_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("keys/sub/a.key");
        let first = load_or_create(&key).unwrap();
        assert_eq!(first.len(), KEY_LEN);
        for d in [dir.path().join("keys"), dir.path().join("keys/sub")] {
            assert_eq!(
                fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_to_string(&key).unwrap().trim().len(), 64);
        assert_eq!(
            load_or_create(&key).unwrap(),
            first,
            "an existing key is kept"
        );
        // No staging files left behind.
        assert_eq!(fs::read_dir(key.parent().unwrap()).unwrap().count(), 1);

        // Any group or other bit is refused.
        for mode in [0o640, 0o604, 0o660] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            assert!(matches!(
                load_or_create(&key),
                Err(AuditError::KeyPermissions { mode: m, .. }) if m == mode
            ));
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        // A symlink to a good key is refused, and so is a non-file.
        let link = key.with_file_name("link.key");
        symlink(&key, &link).unwrap();
        assert!(matches!(
            load_or_create(&link),
            Err(AuditError::KeySymlink(_))
        ));
        assert!(matches!(
            read_trusted(&link),
            Err(AuditError::KeySymlink(_))
        ));
        let sub = key.with_file_name("dir.key");
        fs::create_dir(&sub).unwrap();
        assert!(matches!(
            load_or_create(&sub),
            Err(AuditError::KeyNotFile(_))
        ));
        // A directory that group or others can write is refused, for the writer and reader.
        let parent = key.parent().unwrap();
        fs::set_permissions(parent, fs::Permissions::from_mode(0o770)).unwrap();
        assert!(matches!(
            load_or_create(&key),
            Err(AuditError::KeyDirWritable { .. })
        ));
        assert!(matches!(
            read_trusted(&key),
            Err(AuditError::KeyDirWritable { .. })
        ));
        fs::set_permissions(parent, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(
            matches!(load_or_create(&key), Err(AuditError::KeyDirWritable { .. })),
            "sticky is accepted only above the key's own directory"
        );
        fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).unwrap();
        // A symlink to the key's directory that lies where others can write is refused too.
        let open_dir = dir.path().join("open");
        fs::create_dir(&open_dir).unwrap();
        fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o777)).unwrap();
        symlink(parent, open_dir.join("keys")).unwrap();
        let via_link = open_dir.join("keys/a.key");
        assert!(
            matches!(read_trusted(&via_link), Err(AuditError::KeyDirWritable { path, .. }) if path == open_dir)
        );
        assert!(read_trusted(&key).unwrap().is_some());
        // Raw 32-byte keys are accepted; anything else is refused.
        fs::write(&key, [9u8; 32]).unwrap();
        assert_eq!(load_or_create(&key).unwrap().as_slice(), &[9u8; 32]);
        fs::write(&key, b"short").unwrap();
        assert!(matches!(
            load_or_create(&key),
            Err(AuditError::BadKey { .. })
        ));
    }

    /// Runs as root in CI: a key owned by another uid is refused by the writer and reader.
    #[test]
    fn keys_owned_by_someone_else_are_refused() {
        if euid() != 0 {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("a.key");
        load_or_create(&key).unwrap();
        std::os::unix::fs::chown(&key, Some(1004), None).unwrap();
        assert!(matches!(
            load_or_create(&key),
            Err(AuditError::KeyOwner { owner: 1004, .. })
        ));
        assert!(matches!(
            read_trusted(&key),
            Err(AuditError::KeyOwner { owner: 1004, .. })
        ));
        std::os::unix::fs::chown(&key, Some(0), None).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(1004), None).unwrap();
        assert!(matches!(
            load_or_create(&key),
            Err(AuditError::KeyDirOwner { owner: 1004, .. })
        ));
        std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
        // The reader accepts a root-owned key that others may read, with a warning only.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_trusted(&key).unwrap().is_some());
        fs::set_permissions(&key, fs::Permissions::from_mode(0o622)).unwrap();
        assert!(matches!(
            read_trusted(&key),
            Err(AuditError::KeyWritable { .. })
        ));
        assert!(read_trusted(&dir.path().join("missing.key"))
            .unwrap()
            .is_none());
    }
}
