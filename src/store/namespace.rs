//! The store as the mount shows and changes it: directory listings, and the namespace
//! operations (mkdir, rmdir, unlink, rename, times), each by validated path. Links have
//! their own operations in `links.rs`.

use std::io;

use super::links::LINK_EXT;
use super::ownership::{dir_meta_rel, DIR_META_FILE, MAX_DIR_META_LEN};
use super::{container_rel, validate_rel, Kind, MountKind, Result, SetTime, Store, StoreError};
use super::{CONTAINER_EXT, DIR_MODE, FILE_MODE, META_DIR};
use crate::container::Ownership;
use crate::fsutil;

/// `name` in directory `dir` (`""`: the root).
fn child(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// A fresh temporary name beside `rel`, for a directory being made or removed.
fn temp_beside(rel: &str) -> io::Result<String> {
    let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
    Ok(child(parent, &fsutil::temp_name()?))
}

/// An entry of a store directory as the mount shows it: a container `NAME.tvlt` is the file
/// `NAME`, a link file `NAME.tvln` the link `NAME`; other files, OS symlinks and special
/// files are not shown.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub name: String,
    pub kind: MountKind,
}

impl Store {
    /// What the mount shows in directory `rel`, sorted by name: subdirectories and files
    /// (containers). One pass over the directory.
    pub(crate) fn list_mount_dir(&self, rel: &str) -> Result<Vec<MountEntry>> {
        let file_suffix = format!(".{CONTAINER_EXT}");
        let link_suffix = format!(".{LINK_EXT}");
        let mut out: Vec<MountEntry> = Vec::new();
        for entry in self.backend.list(rel)? {
            if (rel.is_empty() && entry.name == META_DIR) || entry.name == DIR_META_FILE {
                continue;
            }
            match entry.kind {
                // A directory being made or removed (or left by a crash, which fsck reports).
                Kind::Dir if fsutil::is_temp_name(&entry.name) => {}
                Kind::Dir => out.push(MountEntry {
                    name: entry.name,
                    kind: MountKind::Dir,
                }),
                Kind::File => {
                    let (stem, kind) = match entry.name.strip_suffix(&file_suffix) {
                        Some(stem) => (stem, MountKind::File),
                        None => match entry.name.strip_suffix(&link_suffix) {
                            Some(stem) => (stem, MountKind::Link),
                            None => continue,
                        },
                    };
                    if !stem.is_empty() {
                        out.push(MountEntry {
                            name: stem.to_string(),
                            kind,
                        });
                    }
                }
                // Never shown: OS symlinks and special files in the store are not the mount's
                // (docs/SECURITY.md); its links are `.tvln` files.
                Kind::Symlink | Kind::Other => {}
            }
        }
        // Several kinds under one name (`x`, `x.tvlt`, `x.tvln`): a directory wins, then a
        // file (sorted first, kept by dedup), as in lookups.
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.kind.cmp(&b.kind)));
        out.dedup_by(|later, earlier| later.name == earlier.name);
        Ok(out)
    }

    /// Whether `rel` is a directory of the store (`""` is the root).
    pub(crate) fn is_dir(&self, rel: &str) -> bool {
        matches!(self.backend.kind(rel), Ok(Some(Kind::Dir)))
    }

    /// Creates directory `rel` with `ownership` in its `.tvault-dir`, refusing a name a file
    /// or link already has (and, `EEXIST`, one a directory has). The directory appears complete or
    /// not at all: it is made under a temporary name, given its `.tvault-dir`, then renamed
    /// into place without replacing anything, so nobody ever sees it with the legacy default
    /// (root's, 0o1777) instead of its own mode.
    pub(crate) fn mkdir(&self, rel: &str, ownership: &Ownership) -> Result<()> {
        if self.mount_kind(rel)?.is_some() {
            return Err(StoreError::FileExists(rel.to_string()));
        }
        let temp = temp_beside(rel).map_err(super::io_err(&self.backend.display_path(rel)))?;
        self.backend.mkdir(&temp, DIR_MODE)?;
        let made = self
            .write_dir_meta(&temp, ownership)
            .and_then(|()| self.backend.rename(&temp, rel, true));
        if made.is_err() {
            self.discard_temp_dir(&temp);
        }
        made
    }

    /// Creates directory `rel` and every missing one above it, each with the ownership
    /// `ownership_of` gives for its path (see [`Store::mkdir`]); existing ones are kept as
    /// they are.
    pub(crate) fn mkdir_all(
        &self,
        rel: &str,
        ownership_of: &mut dyn FnMut(&str) -> Ownership,
    ) -> Result<()> {
        validate_rel(rel)?;
        let mut at = String::new();
        for part in rel.split('/') {
            at = child(&at, part);
            match self.backend.kind(&at)? {
                Some(Kind::Dir) => {}
                None => match self.mkdir(&at, &ownership_of(&at)) {
                    // Made meanwhile by someone else: theirs stays.
                    Err(StoreError::Io { source, .. })
                        if source.kind() == io::ErrorKind::AlreadyExists && self.is_dir(&at) => {}
                    other => other?,
                },
                Some(kind) => {
                    return Err(StoreError::NotRegular {
                        path: self.backend.display_path(&at),
                        what: kind.describe(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Removes directory `rel`, which must be empty but for its `.tvault-dir` (a
    /// `.tvault-recipients` policy keeps it: an administrator put it there, and removing the
    /// directory through the mount must not drop it). A directory holding only `.tvault-dir`
    /// is first renamed to a temporary name, so that it never shows without its metadata
    /// under its own name; if something got into it meanwhile, it is put back as it was.
    pub(crate) fn rmdir(&self, rel: &str) -> Result<()> {
        validate_rel(rel)?;
        let entries = self.backend.list(rel)?;
        if entries.len() != 1 || entries[0].name != DIR_META_FILE {
            // Empty (no metadata yet), or not empty: rmdir(2) decides (ENOTEMPTY).
            return self.backend.remove_dir(rel);
        }
        let saved = self
            .backend
            .read_capped(&dir_meta_rel(rel), MAX_DIR_META_LEN)?;
        let temp = temp_beside(rel).map_err(super::io_err(&self.backend.display_path(rel)))?;
        self.backend.rename(rel, &temp, true)?;
        let removed = self
            .backend
            .remove_file(&dir_meta_rel(&temp))
            .and_then(|()| self.backend.remove_dir(&temp));
        if let Err(e) = removed {
            let restored = self
                .backend
                .write_small(&dir_meta_rel(&temp), &saved, FILE_MODE)
                .and_then(|()| self.backend.rename(&temp, rel, true));
            if let Err(r) = restored {
                log::error!(
                    "{}: left as {} after a failed rmdir: {r}",
                    self.backend.display_path(rel).display(),
                    self.backend.display_path(&temp).display()
                );
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes a directory made by [`Store::mkdir`] that did not get into place (best
    /// effort: `fsck` reports a leftover).
    fn discard_temp_dir(&self, temp: &str) {
        let _ = self.backend.remove_file(&dir_meta_rel(temp));
        if let Err(e) = self.backend.remove_dir(temp) {
            log::warn!(
                "cannot remove {}: {e}",
                self.backend.display_path(temp).display()
            );
        }
    }

    /// Removes the stored file `rel`.
    pub(crate) fn remove(&self, rel: &str) -> Result<()> {
        self.backend.remove_file(&container_rel(rel)?)
    }

    /// Renames stored file `from` to `to`, replacing a stored `to` unless `noreplace`.
    fn rename_file(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        self.backend
            .rename(&container_rel(from)?, &container_rel(to)?, noreplace)
    }

    /// Renames directory `from` to `to` (an empty directory `to` is replaced, as rename(2)
    /// does, unless `noreplace`).
    /// A directory replaces only an empty one, as rename(2) says; an empty directory still
    /// holds its `.tvault-dir`, so it is removed first (`ENOTEMPTY` if it holds more) and
    /// the move then replaces nothing.
    fn rename_dir(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        validate_rel(from)?;
        validate_rel(to)?;
        if !noreplace && self.is_dir(to) {
            self.rmdir(to)?;
            return self.backend.rename(from, to, true);
        }
        self.backend.rename(from, to, noreplace)
    }

    /// Removes mount path `rel`, a `kind` of entry (a directory must be empty).
    pub(crate) fn remove_entry(&self, rel: &str, kind: MountKind) -> Result<()> {
        match kind {
            MountKind::Dir => self.rmdir(rel),
            MountKind::File => self.remove(rel),
            MountKind::Link => self.remove_link(rel),
        }
    }

    /// Renames mount path `from`, a `kind` of entry, to `to`, replacing an entry of the same
    /// kind there unless `noreplace`. One of another kind has another name in the store: the
    /// caller removes it afterwards (see `links.rs` for what shows meanwhile).
    pub(crate) fn rename_entry(
        &self,
        from: &str,
        to: &str,
        kind: MountKind,
        noreplace: bool,
    ) -> Result<()> {
        match kind {
            MountKind::Dir => self.rename_dir(from, to, noreplace),
            MountKind::File => self.rename_file(from, to, noreplace),
            MountKind::Link => self.rename_link(from, to, noreplace),
        }
    }

    /// Sets the times of mount path `rel`, a `kind` of entry.
    pub(crate) fn set_times(
        &self,
        rel: &str,
        kind: MountKind,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> Result<()> {
        let target = match kind {
            MountKind::Dir => {
                if !rel.is_empty() {
                    validate_rel(rel)?;
                }
                rel.to_string()
            }
            MountKind::File => container_rel(rel)?,
            MountKind::Link => return self.set_link_times(rel, atime, mtime),
        };
        self.backend.set_times(&target, atime, mtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container;
    use std::fs;

    #[test]
    fn mount_listing_hides_os_links_and_prefers_directories_then_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), container::DEFAULT_CHUNK_LOG2).unwrap();
        fs::create_dir(dir.path().join("x")).unwrap();
        fs::write(dir.path().join("x.tvlt"), b"").unwrap();
        fs::write(dir.path().join("y.tvlt"), b"").unwrap();
        fs::write(dir.path().join("notes.txt"), b"").unwrap();
        fs::create_dir(dir.path().join(".tvault-tmp-0123456789abcdef01234567")).unwrap();
        fs::create_dir(dir.path().join("x").join(".tvault-dir")).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("z")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("w.tvlt")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("v.tvln")).unwrap();
        // Links under names a directory or a file holds too are not shown.
        fs::write(dir.path().join("x.tvln"), b"").unwrap();
        fs::write(dir.path().join("y.tvln"), b"").unwrap();
        let listed: Vec<_> = store
            .list_mount_dir("")
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.kind))
            .collect();
        assert_eq!(
            listed,
            [
                ("x".to_string(), MountKind::Dir),
                ("y".to_string(), MountKind::File)
            ]
        );
        assert!(store.list_mount_dir("x").unwrap().is_empty());
    }
    #[test]
    fn mkdir_writes_metadata_and_rmdir_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), container::DEFAULT_CHUNK_LOG2).unwrap();
        let alice = Ownership::new(Some("alice".into()), 1001, 0o750);
        store.mkdir("d", &alice).unwrap();
        assert_eq!(store.dir_ownership("d").unwrap(), alice);
        let names = |p: &std::path::Path| {
            let mut v: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&dir.path().join("d")), [".tvault-dir"]);
        assert!(
            !names(dir.path())
                .iter()
                .any(|n| n.starts_with(".tvault-tmp")),
            "no temporary directory is left"
        );
        let exists = store.mkdir("d", &alice).unwrap_err();
        assert!(matches!(&exists, StoreError::FileExists(_)), "{exists}");
        assert_eq!(store.dir_ownership("d").unwrap(), alice, "not replaced");
        // Nested, keeping what exists.
        let mut asked = Vec::new();
        store
            .mkdir_all("d/e/f", &mut |rel| {
                asked.push(rel.to_string());
                Ownership::new(None, 0, 0o755)
            })
            .unwrap();
        assert_eq!(asked, ["d/e", "d/e/f"]);
        assert_eq!(store.dir_ownership("d").unwrap(), alice);
        // rmdir: a directory holding only its metadata goes; one with more stays as it was.
        let not_empty = store.rmdir("d/e").unwrap_err();
        assert!(
            matches!(&not_empty, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOTEMPTY)),
            "{not_empty}"
        );
        assert_eq!(names(&dir.path().join("d/e")), [".tvault-dir", "f"]);
        store.rmdir("d/e/f").unwrap();
        store.rmdir("d/e").unwrap();
        // A policy file keeps its directory, as before.
        fs::write(dir.path().join("d/.tvault-recipients"), "bob\n").unwrap();
        assert!(store.rmdir("d").is_err());
        assert_eq!(store.dir_ownership("d").unwrap(), alice);
        fs::remove_file(dir.path().join("d/.tvault-recipients")).unwrap();
        store.rmdir("d").unwrap();
        // A legacy directory (no metadata) is removed as before.
        fs::create_dir(dir.path().join("old")).unwrap();
        store.rmdir("old").unwrap();
        assert_eq!(names(dir.path()), [".tvault", ".tvault-dir"]);
    }
}
