//! The store as the mount shows and changes it: directory listings, and the namespace
//! operations (mkdir, rmdir, unlink, rename, times), each by validated path. Links have
//! their own operations in `links.rs`.

use super::links::LINK_EXT;
use super::{container_rel, validate_rel, Kind, MountKind, Result, SetTime, Store, StoreError};
use super::{CONTAINER_EXT, DIR_MODE, META_DIR};

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
            if rel.is_empty() && entry.name == META_DIR {
                continue;
            }
            match entry.kind {
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

    /// Creates directory `rel`, refusing a name a file or link already has.
    pub(crate) fn mkdir(&self, rel: &str) -> Result<()> {
        if self.mount_kind(rel)?.is_some() {
            return Err(StoreError::FileExists(rel.to_string()));
        }
        self.backend.mkdir(rel, DIR_MODE)
    }

    pub(crate) fn rmdir(&self, rel: &str) -> Result<()> {
        validate_rel(rel)?;
        self.backend.remove_dir(rel)
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
    fn rename_dir(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        validate_rel(from)?;
        validate_rel(to)?;
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
    }
}
