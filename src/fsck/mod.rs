//! Consistency checks of a whole store, for `tvault fsck`.
//!
//! Without a key, [`check`] looks at everything a reader of the store directory can: the
//! store configuration, every keyring file, every `.tvlt` container (fixed header, key
//! slots and ownership record, and the total-length rule that ties the chunk table to the
//! file size), every `.tvault-recipients` policy, `.tvault-dir` directory metadata and `.tvln`
//! link file, and temporary files and directories left behind by an interrupted writer.
//! With a user's private key it also authenticates, for every file that user holds a key
//! slot for, the slot, the header MAC and every chunk.
//!
//! Nothing here prints: every finding is a [`Problem`] in the returned [`Report`], with the
//! path it concerns. The caller decides how to show it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::container::{Container, ContainerError};
use crate::crypto::PrivateKey;
use crate::fsutil;
use crate::keyring::{self, Keyring};
use crate::store::{
    self, Backend, Entry, Kind as PathKind, Link, Store, StoreError, CONTAINER_EXT, DIR_META_FILE,
    LINK_EXT, MAX_DIR_META_LEN, MAX_KEYRING_LEN, MAX_LINK_LEN, MAX_POLICY_LEN, META_DIR,
    RECIPIENTS_FILE,
};

/// A temporary file modified more recently than this may belong to a writer that is still
/// running (a `put`, or a draft of a file open for writing on a mount): it is reported but
/// never removed.
pub const TEMP_MIN_AGE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing, but every file that was readable still is (e.g. a leftover temporary
    /// file, a key slot for someone who is not a user of the store).
    Warning,
    /// Damage or an inconsistency: a file, keyring or the configuration cannot be used as is.
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `.tvault/store.json` or the layout of `.tvault/`.
    Config,
    /// A keyring file (`.tvault/users/NAME.json`).
    Keyring,
    /// The structure of a `.tvlt` container (checked without a key).
    Container,
    /// A key slot, header MAC or chunk that failed authentication (checked with a key).
    Authentication,
    /// Who a file is encrypted to, or a `.tvault-recipients` policy.
    Recipients,
    /// A symbolic link of the mount (`.tvln`).
    Link,
    /// Who owns a file or directory: a `.tvault-dir`, or an owner who is not a user.
    Ownership,
    /// A temporary file left by an interrupted writer.
    TempFile,
    /// Something in the store that tvault ignores (e.g. a name that is not UTF-8).
    Ignored,
    /// An I/O error while reading the store.
    Io,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Keyring => "keyring",
            Kind::Container => "container",
            Kind::Authentication => "authentication",
            Kind::Recipients => "recipients",
            Kind::Link => "link",
            Kind::Ownership => "ownership",
            Kind::TempFile => "temp-file",
            Kind::Ignored => "ignored",
            Kind::Io => "io",
        }
    }
}

/// One finding, about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub kind: Kind,
    pub path: PathBuf,
    pub message: String,
}

/// How to check.
#[derive(Default)]
pub struct Options<'a> {
    /// Authenticate every chunk of every file this user (name, unlocked private key) holds a
    /// key slot for.
    pub verify_as: Option<(&'a str, &'a PrivateKey)>,
    /// Delete leftover temporary files older than [`TEMP_MIN_AGE`].
    pub remove_temp: bool,
}

/// The outcome of [`check`].
#[derive(Debug, Default)]
pub struct Report {
    /// Every finding, in the order the store was walked (sorted by path within a directory).
    pub problems: Vec<Problem>,
    /// `.tvlt` files examined.
    pub containers: usize,
    /// Keyring files examined.
    pub keyrings: usize,
    /// With [`Options::verify_as`]: files whose every chunk authenticated.
    pub verified: Vec<PathBuf>,
    /// With [`Options::verify_as`]: structurally sound files the user holds no key slot for.
    pub skipped: Vec<PathBuf>,
    /// Temporary files deleted because of [`Options::remove_temp`].
    pub removed: Vec<PathBuf>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == severity)
            .count()
    }

    /// No errors (warnings alone leave a store clean).
    pub fn is_clean(&self) -> bool {
        self.errors() == 0
    }

    fn push(&mut self, severity: Severity, kind: Kind, path: &Path, message: impl Into<String>) {
        self.problems.push(Problem {
            severity,
            kind,
            path: path.to_path_buf(),
            message: message.into(),
        });
    }

    fn error(&mut self, kind: Kind, path: &Path, message: impl Into<String>) {
        self.push(Severity::Error, kind, path, message);
    }

    fn warning(&mut self, kind: Kind, path: &Path, message: impl Into<String>) {
        self.push(Severity::Warning, kind, path, message);
    }
}

/// Checks the store at `root`. Fails only when `root` is not a store at all (no `.tvault`
/// directory) or cannot be listed; everything else is reported as a [`Problem`].
pub fn check(root: &Path, options: &Options) -> Result<Report, StoreError> {
    let backend = open_backend(root)?;
    let mut report = Report::default();
    let mut fsck = Fsck {
        root,
        backend: &*backend,
        options,
        report: &mut report,
        users: BTreeMap::new(),
    };
    fsck.config();
    fsck.keyrings();
    fsck.tree("")?;
    Ok(report)
}

/// The store root, which must hold a `.tvault` directory (not a link to one).
fn open_backend(root: &Path) -> Result<Box<dyn Backend>, StoreError> {
    let backend = match store::backend_at(root, false, &store::StoreOptions::default()) {
        Err(e) if e.is_not_found() => return Err(StoreError::NotAStore(root.to_path_buf())),
        other => other?,
    };
    match backend.kind(META_DIR)? {
        Some(PathKind::Dir) => Ok(backend),
        _ => Err(StoreError::NotAStore(root.to_path_buf())),
    }
}

/// The keyring of user `name` in the store at `root`, read like `Store::user` but without
/// needing a valid store.json (so that a damaged store can still be checked with a key).
pub fn read_keyring(root: &Path, name: &str) -> Result<Keyring, StoreError> {
    store::read_keyring(&*open_backend(root)?, name)
}

struct Fsck<'a> {
    root: &'a Path,
    backend: &'a dyn Backend,
    options: &'a Options<'a>,
    report: &'a mut Report,
    /// Keyrings that parsed, by name (to check key-slot labels and policies against).
    users: BTreeMap<String, Keyring>,
}

impl Fsck<'_> {
    /// Entries of store directory `rel`, sorted by name so that reports are stable.
    fn sorted_entries(&self, rel: &str) -> Result<Vec<Entry>, StoreError> {
        let mut entries = self.backend.list(rel)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn join(dir: &str, name: &str) -> String {
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    }

    /// Reports a link or special file: tvault never follows, opens or shows one.
    fn special(&mut self, rel: &str, kind: PathKind) {
        let path = self.backend.display_path(rel);
        let why = match kind {
            PathKind::Symlink => "symbolic link: never followed or shown by tvault (a store writer may have planted it; remove it)",
            _ => "FIFO, socket or device: never opened or shown by tvault (remove it)",
        };
        self.report.warning(Kind::Ignored, &path, why);
    }

    fn store_error(&mut self, path: &Path, e: StoreError) {
        match e {
            StoreError::Io { path, source } => {
                self.report.error(Kind::Io, &path, source.to_string())
            }
            e => self.report.error(Kind::Io, path, e.to_string()),
        }
    }

    fn config(&mut self) {
        let path = self.root.join(META_DIR).join("store.json");
        match Store::open(self.root) {
            Ok(_) => {}
            Err(StoreError::NotAStore(_)) => self.report.error(
                Kind::Config,
                &path,
                "missing: the store configuration is gone (was `tvault init` interrupted?)",
            ),
            Err(StoreError::BadConfig { why, .. }) => self.report.error(Kind::Config, &path, why),
            Err(StoreError::Io { path, source }) => {
                self.report.error(Kind::Io, &path, source.to_string())
            }
            Err(e) => self.report.error(Kind::Config, &path, e.to_string()),
        }
        // Drafts of store.json (or of anything else written into .tvault/ atomically).
        match self.sorted_entries(META_DIR) {
            Ok(entries) => {
                for entry in entries {
                    let rel = Self::join(META_DIR, &entry.name);
                    match entry.kind {
                        PathKind::Symlink | PathKind::Other => self.special(&rel, entry.kind),
                        PathKind::File if fsutil::is_temp_name(&entry.name) => self.temp_file(&rel),
                        _ => {}
                    }
                }
            }
            Err(e) => self.store_error(&self.root.join(META_DIR), e),
        }
    }

    fn keyrings(&mut self) {
        let dir_rel = format!("{META_DIR}/users");
        let dir = self.backend.display_path(&dir_rel);
        let entries = match self.sorted_entries(&dir_rel) {
            Ok(entries) => entries,
            Err(e) if e.is_not_found() => {
                self.report.error(
                    Kind::Config,
                    &dir,
                    "missing: the store has no users directory",
                );
                return;
            }
            Err(e) => {
                self.store_error(&dir, e);
                return;
            }
        };
        // uid -> first keyring name holding it.
        let mut uids: BTreeMap<u32, String> = BTreeMap::new();
        for entry in entries {
            let rel = Self::join(&dir_rel, &entry.name);
            let path = self.backend.display_path(&rel);
            let file_name = entry.name.clone();
            if entry.kind != PathKind::File {
                if entry.kind != PathKind::Dir {
                    self.special(&rel, entry.kind);
                }
                continue;
            }
            if fsutil::is_temp_name(&file_name) {
                self.temp_file(&rel);
                continue;
            }
            let Some(name) = file_name.strip_suffix(".json") else {
                self.report.warning(
                    Kind::Ignored,
                    &path,
                    "not a keyring file (keyrings are NAME.json): ignored by tvault",
                );
                continue;
            };
            self.report.keyrings += 1;
            let bytes = match self.backend.read_capped(&rel, MAX_KEYRING_LEN) {
                Ok(b) => b,
                Err(e) => {
                    self.store_error(&path, e);
                    continue;
                }
            };
            let keyring = match Keyring::from_json(&bytes) {
                Ok(k) => k,
                Err(e) => {
                    self.report.error(Kind::Keyring, &path, e.to_string());
                    continue;
                }
            };
            if let Err(e) = keyring::validate_name(name) {
                self.report.error(Kind::Keyring, &path, e.to_string());
                continue;
            }
            if keyring.name != name {
                self.report.error(
                    Kind::Keyring,
                    &path,
                    format!(
                        "file is named for {name:?} but holds the keyring of {:?}",
                        keyring.name
                    ),
                );
                continue;
            }
            if let Some(other) = uids.get(&keyring.uid) {
                self.report.error(
                    Kind::Keyring,
                    &path,
                    format!(
                        "uid {} also belongs to {other:?}: a mount could unlock only one of them",
                        keyring.uid
                    ),
                );
            } else {
                uids.insert(keyring.uid, keyring.name.clone());
            }
            self.users.insert(keyring.name.clone(), keyring);
        }
    }

    /// Walks the store's files (everything but the top-level `.tvault`), depth first.
    fn tree(&mut self, dir: &str) -> Result<(), StoreError> {
        let entries = match self.sorted_entries(dir) {
            Ok(entries) => entries,
            // The root itself must be listable; a subdirectory that is not is reported.
            Err(e) if !dir.is_empty() => {
                self.store_error(&self.backend.display_path(dir), e);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let name = entry.name;
            if dir.is_empty() && name == META_DIR {
                continue;
            }
            let rel = Self::join(dir, &name);
            let path = self.backend.display_path(&rel);
            match entry.kind {
                PathKind::File if name == DIR_META_FILE => self.dir_meta(&rel),
                kind if name == DIR_META_FILE => self.report.error(
                    Kind::Ownership,
                    &path,
                    format!(
                        "{}, not directory metadata: the directory cannot be shown (remove it, \
                         then set the owner with `tvault chown`)",
                        kind.describe()
                    ),
                ),
                PathKind::Dir if fsutil::is_temp_name(&name) => self.temp_dir(&rel),
                PathKind::Dir => self.tree(&rel)?,
                PathKind::Symlink | PathKind::Other => self.special(&rel, entry.kind),
                PathKind::File if fsutil::is_temp_name(&name) => self.temp_file(&rel),
                PathKind::File if name == RECIPIENTS_FILE => self.policy(&rel),
                PathKind::File if name.ends_with(&format!(".{LINK_EXT}")) => self.link(&rel),
                PathKind::File => {
                    if let Some(stem) = rel.strip_suffix(&format!(".{CONTAINER_EXT}")) {
                        match store::validate_rel(stem) {
                            Ok(()) => self.container(&rel),
                            Err(e) => self.report.warning(
                                Kind::Ignored,
                                &path,
                                format!("{e}: ignored by tvault"),
                            ),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn temp_file(&mut self, rel: &str) {
        let path = &self.backend.display_path(rel);
        const WHAT: &str = "leftover temporary file from an interrupted write";
        if !self.options.remove_temp {
            self.report.warning(
                Kind::TempFile,
                path,
                format!("{WHAT} (remove it with --remove-temp)"),
            );
            return;
        }
        let age = self.backend.stat(rel).map(|st| {
            let modified = st.map_or(SystemTime::UNIX_EPOCH, |st| st.meta.mtime);
            SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default()
        });
        match age {
            Ok(age) if age < TEMP_MIN_AGE => self.report.warning(
                Kind::TempFile,
                path,
                format!(
                    "temporary file modified {}s ago, maybe by a writer still running: not removed",
                    age.as_secs()
                ),
            ),
            Ok(_) => match self.backend.remove_file(rel) {
                Ok(()) => {
                    self.report
                        .warning(Kind::TempFile, path, format!("{WHAT}: removed"));
                    self.report.removed.push(path.to_path_buf());
                }
                Err(e) => self.report.warning(
                    Kind::TempFile,
                    path,
                    format!("{WHAT}: cannot remove it: {e}"),
                ),
            },
            Err(e) => self
                .report
                .warning(Kind::TempFile, path, format!("{WHAT}: {e}")),
        }
    }

    /// A link file must parse, and show: a directory or container of the same name hides it
    /// (left by a store writer, or by a rename that replaced a file by a link, or a link by
    /// a file, interrupted between its two steps).
    fn link(&mut self, rel: &str) {
        let path = &self.backend.display_path(rel);
        let stem = rel
            .strip_suffix(&format!(".{LINK_EXT}"))
            .unwrap_or_default();
        if let Err(e) = store::validate_rel(stem) {
            return self
                .report
                .warning(Kind::Ignored, path, format!("{e}: ignored by tvault"));
        }
        match self.backend.read_capped(rel, MAX_LINK_LEN) {
            Ok(bytes) => {
                if let Err(e) = Link::decode(&bytes) {
                    return self.report.error(Kind::Link, path, e.to_string());
                }
            }
            Err(e @ StoreError::TooLarge { .. }) => {
                return self.report.error(Kind::Link, path, e.to_string())
            }
            Err(e) => return self.store_error(path, e),
        }
        let container = format!("{stem}.{CONTAINER_EXT}");
        for (other, what) in [(stem, PathKind::Dir), (container.as_str(), PathKind::File)] {
            if self.backend.kind(other).ok().flatten() == Some(what) {
                self.report.warning(
                    Kind::Link,
                    path,
                    format!(
                        "hidden by {}: the mount shows that instead (remove the one you do not want)",
                        self.backend.display_path(other).display()
                    ),
                );
            }
        }
    }

    /// A directory of an interrupted mkdir or rmdir: it held only its `.tvault-dir`, and is
    /// removed (with it) under the same rules as a temporary file.
    fn temp_dir(&mut self, rel: &str) {
        let path = &self.backend.display_path(rel);
        const WHAT: &str = "leftover temporary directory from an interrupted mkdir or rmdir";
        let meta = Self::join(rel, DIR_META_FILE);
        let only_meta = self.backend.list(rel).map(|entries| {
            entries
                .iter()
                .all(|e| e.name == DIR_META_FILE && e.kind == PathKind::File)
        });
        let old = self.backend.stat(rel).is_ok_and(|st| {
            let modified = st.map_or(SystemTime::UNIX_EPOCH, |st| st.meta.mtime);
            SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default()
                >= TEMP_MIN_AGE
        });
        let message = match only_meta {
            Err(e) => format!("{WHAT}: {e}"),
            Ok(false) => format!("{WHAT}, but not empty: not removed (look inside)"),
            Ok(true) if !self.options.remove_temp => {
                format!("{WHAT} (remove it with --remove-temp)")
            }
            Ok(true) if !old => format!("{WHAT}, maybe of one still running: not removed"),
            Ok(true) => {
                let removed = match self.backend.remove_file(&meta) {
                    Err(e) if !e.is_not_found() => Err(e),
                    _ => self.backend.remove_dir(rel),
                };
                match removed {
                    Ok(()) => {
                        self.report.removed.push(path.to_path_buf());
                        format!("{WHAT}: removed")
                    }
                    Err(e) => format!("{WHAT}: cannot remove it: {e}"),
                }
            }
        };
        self.report.warning(Kind::TempFile, path, message);
    }

    /// A directory's `.tvault-dir`: it must parse (a mount shows the directory only then),
    /// and name a user of the store.
    fn dir_meta(&mut self, rel: &str) {
        let path = &self.backend.display_path(rel);
        let ownership = match self.backend.read_capped(rel, MAX_DIR_META_LEN) {
            Ok(bytes) => store::decode_dir_meta(&bytes),
            Err(e) => {
                self.store_error(path, e);
                return;
            }
        };
        match ownership {
            Ok(o) => self.owner_is_a_user(path, o.owner.as_deref()),
            Err(e) => self.report.error(
                Kind::Ownership,
                path,
                format!(
                    "directory metadata {e}: the directory cannot be shown (remove it, then set \
                     the owner with `tvault chown`)"
                ),
            ),
        }
    }

    /// An owner who is not a user of the store shows as uid 65534 on a mount.
    fn owner_is_a_user(&mut self, path: &Path, owner: Option<&str>) {
        if let Some(owner) = owner.filter(|o| !self.users.contains_key(*o)) {
            self.report.warning(
                Kind::Ownership,
                path,
                format!(
                    "owner {owner:?} is not a user of this store: a mount shows uid 65534 \
                     (change it with `tvault chown`)"
                ),
            );
        }
    }

    fn policy(&mut self, rel: &str) {
        let path = &self.backend.display_path(rel);
        let text = match self.backend.read_capped(rel, MAX_POLICY_LEN) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                self.store_error(path, e);
                return;
            }
        };
        for name in store::parse_policy(&text) {
            if !self.users.contains_key(&name) {
                self.report.warning(
                    Kind::Recipients,
                    path,
                    format!("{name:?} is not a user of this store: new files here are not encrypted to it"),
                );
            }
        }
    }

    fn container(&mut self, rel: &str) {
        let path = &self.backend.display_path(rel);
        self.report.containers += 1;
        let file = match self.backend.open(rel) {
            Ok(f) => f,
            Err(e) => {
                self.store_error(path, e);
                return;
            }
        };
        let container = match Container::parse(file) {
            Ok(c) => c,
            Err(ContainerError::Io(e)) => {
                self.report.error(Kind::Io, path, e.to_string());
                return;
            }
            Err(e) => {
                self.report.error(Kind::Container, path, e.to_string());
                return;
            }
        };
        self.owner_is_a_user(path, container.ownership().owner.as_deref());
        if container.slots().is_empty() {
            self.report.warning(
                Kind::Recipients,
                path,
                "no key slots: nobody can read this file",
            );
        }
        for slot in container.slots() {
            if !self.users.contains_key(&slot.label) {
                self.report.warning(
                    Kind::Recipients,
                    path,
                    format!(
                        "key slot for {:?}, who is not a user of this store (import their public key, or revoke)",
                        slot.label
                    ),
                );
            }
        }
        let Some((user, private)) = self.options.verify_as else {
            return;
        };
        if container.slot(user).is_none() {
            self.report.skipped.push(path.to_path_buf());
            return;
        }
        let data_key = match container.unwrap_key(user, private) {
            Ok(k) => k,
            Err(e) => {
                self.report.error(
                    Kind::Authentication,
                    path,
                    format!("{e} (the slot was altered, or written for another key)"),
                );
                return;
            }
        };
        let reader = match container.open(&data_key) {
            Ok(r) => r,
            Err(e) => {
                self.report.error(Kind::Authentication, path, e.to_string());
                return;
            }
        };
        match reader.verify_all() {
            Ok(()) => self.report.verified.push(path.to_path_buf()),
            Err(e) => self.report.error(Kind::Authentication, path, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;
