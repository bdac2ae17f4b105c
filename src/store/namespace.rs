//! The store as the mount shows and changes it: directory listings, and the namespace
//! operations (mkdir, rmdir, unlink, rename, times), each by validated path.

use super::{container_rel, validate_rel, Kind, Result, SetTime, Store, StoreError};
use super::{CONTAINER_EXT, DIR_MODE, META_DIR};

/// An entry of a store directory as the mount shows it: a container `NAME.tvlt` is the file
/// `NAME`; other files, links and special files are not shown.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub name: String,
    pub is_dir: bool,
}

impl Store {
    /// What the mount shows in directory `rel`, sorted by name: subdirectories and files
    /// (containers). One pass over the directory.
    pub(crate) fn list_mount_dir(&self, rel: &str) -> Result<Vec<MountEntry>> {
        let suffix = format!(".{CONTAINER_EXT}");
        let mut out: Vec<MountEntry> = Vec::new();
        for entry in self.backend.list(rel)? {
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

    /// Whether `rel` is a directory of the store (`""` is the root).
    pub(crate) fn is_dir(&self, rel: &str) -> bool {
        matches!(self.backend.kind(rel), Ok(Some(Kind::Dir)))
    }

    /// Creates directory `rel`, refusing a name a file already has.
    pub(crate) fn mkdir(&self, rel: &str) -> Result<()> {
        if self.exists(rel)? {
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
    pub(crate) fn rename_file(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        self.backend
            .rename(&container_rel(from)?, &container_rel(to)?, noreplace)
    }

    /// Renames directory `from` to `to` (an empty directory `to` is replaced, as rename(2)
    /// does, unless `noreplace`).
    pub(crate) fn rename_dir(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        validate_rel(from)?;
        validate_rel(to)?;
        self.backend.rename(from, to, noreplace)
    }

    /// Sets the times of stored file `rel`, or of directory `rel` with `dir`.
    pub(crate) fn set_times(
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
        self.backend.set_times(&target, atime, mtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container;
    use std::fs;

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
}
