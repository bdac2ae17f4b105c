//! Which running mount a path names: the mountpoint, anything inside the mount (a directory, a
//! file, a name not there yet), or anything inside the store a mount serves.
//!
//! Found against the kernel's mount table, never by opening what is on the mount: a caller who
//! is locked, or may not search a directory there, can still `stat` its way down as far as it
//! is allowed, and the rest of the path is taken as written. The mount table's entries are
//! canonical, so the path is resolved as far as it can be (symbolic links included) before it
//! is compared with them.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::daemon::{self, MountEntry, FSTYPE, SOURCE_PREFIX};
use crate::store::CONTAINER_EXT;

/// A place on a running mount.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OnMount {
    /// The mountpoint, canonical (as the mount table and the control socket name it).
    pub mountpoint: PathBuf,
    /// The path inside the mount, `/`-separated, no leading `/`; empty for the mountpoint.
    pub rel: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("{path}: {source}")]
    Absolute { path: String, source: io::Error },
    #[error(
        "no tvault mount contains {0}: mount the store with `tvault mount STORE MOUNTPOINT`, \
         or give a path on a mount"
    )]
    NotOnMount(String),
    #[error(
        "{path} is tvault's own metadata in the store mounted at {mountpoint}; the mount does \
         not show it: give a path on the mount"
    )]
    StoreMetadata { path: String, mountpoint: String },
    #[error(
        "{path} is in the store {store}, mounted at {mountpoints}: give a path on one of them"
    )]
    SeveralMounts {
        path: String,
        store: String,
        mountpoints: String,
    },
    #[error("{0}: not UTF-8, and no name on a tvault mount is")]
    NotUtf8(String),
}

/// The mount `path` is on, and where on it.
pub(crate) fn resolve(path: &Path) -> Result<OnMount, ResolveError> {
    let absolute = std::path::absolute(path).map_err(|source| ResolveError::Absolute {
        path: path.display().to_string(),
        source,
    })?;
    locate(&resolve_what_resolves(&absolute), &daemon::mounts()).map_err(|e| match e {
        // Named as the caller wrote it.
        ResolveError::NotOnMount(_) => ResolveError::NotOnMount(path.display().to_string()),
        e => e,
    })
}

/// `absolute` with its longest prefix that `canonicalize` resolves resolved, and the rest
/// applied to it as written (`..` drops the name before it): the rest is what the caller
/// cannot resolve (a name not there, a directory it may not search, a dead mount).
fn resolve_what_resolves(absolute: &Path) -> PathBuf {
    let parts: Vec<Component<'_>> = absolute.components().collect();
    for split in (1..=parts.len()).rev() {
        let head: PathBuf = parts[..split].iter().collect();
        if let Ok(mut resolved) = std::fs::canonicalize(&head) {
            for part in &parts[split..] {
                match part {
                    Component::ParentDir => {
                        resolved.pop();
                    }
                    Component::Normal(name) => resolved.push(name),
                    Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                }
            }
            return resolved;
        }
    }
    absolute.to_path_buf()
}

/// Where `path` (absolute, resolved) is in the mount table `table` (in mount order).
fn locate(path: &Path, table: &[MountEntry]) -> Result<OnMount, ResolveError> {
    let display = || path.display().to_string();
    // The filesystem the path is on: the deepest mount point above it, and of several at that
    // point the last mounted, which is on top.
    let on = table
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.point))
        .max_by_key(|(i, m)| (m.point.components().count(), *i))
        .map(|(_, m)| m);
    if let Some(mount) = on.filter(|m| m.fstype == FSTYPE) {
        let rel = rel_names(path, &mount.point)?;
        return Ok(OnMount {
            mountpoint: mount.point.clone(),
            rel: rel.join("/"),
        });
    }
    // Else a path in the store of a running mount. A mount's source names its store; a
    // look-alike mount made by someone else gets no daemon behind it, since control sockets
    // live in the runtime directory only tvault daemons write.
    let mut serving: Vec<(&Path, &Path)> = table
        .iter()
        .filter(|m| m.fstype == FSTYPE)
        .filter_map(|m| {
            let store = Path::new(m.source.strip_prefix(SOURCE_PREFIX)?);
            (store.is_absolute() && path.starts_with(store)).then_some((m.point.as_path(), store))
        })
        .collect();
    serving.sort();
    serving.dedup();
    let (mountpoint, store) = match serving.as_slice() {
        [] => return Err(ResolveError::NotOnMount(display())),
        [one] => *one,
        several => {
            let list: Vec<String> = several
                .iter()
                .map(|(m, _)| m.display().to_string())
                .collect();
            return Err(ResolveError::SeveralMounts {
                path: display(),
                store: several[0].1.display().to_string(),
                mountpoints: list.join(", "),
            });
        }
    };
    let mut rel = rel_names(path, store)?;
    if rel
        .first()
        .is_some_and(|first| first == crate::store::META_DIR)
    {
        return Err(ResolveError::StoreMetadata {
            path: display(),
            mountpoint: mountpoint.display().to_string(),
        });
    }
    // `STORE/REL.tvlt` is `MOUNT/REL`.
    if let Some(last) = rel.last_mut() {
        let suffix = format!(".{CONTAINER_EXT}");
        if let Some(stem) = last.strip_suffix(&suffix).filter(|s| !s.is_empty()) {
            *last = stem.to_string();
        }
    }
    Ok(OnMount {
        mountpoint: mountpoint.to_path_buf(),
        rel: rel.join("/"),
    })
}

/// The names of `path` below `base` (which it starts with).
fn rel_names(path: &Path, base: &Path) -> Result<Vec<String>, ResolveError> {
    let below = path.strip_prefix(base).unwrap_or(Path::new(""));
    below
        .components()
        .map(|c| {
            c.as_os_str()
                .to_str()
                .map(str::to_string)
                .ok_or_else(|| ResolveError::NotUtf8(path.display().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(point: &str, fstype: &str, source: &str) -> MountEntry {
        MountEntry {
            point: PathBuf::from(point),
            dev: "0:1".into(),
            fstype: fstype.into(),
            source: source.into(),
        }
    }

    fn table() -> Vec<MountEntry> {
        vec![
            entry("/", "ext4", "/dev/sda1"),
            entry("/mnt/models", FSTYPE, "tvault:/srv/store"),
            entry("/mnt/models/scratch", "tmpfs", "tmpfs"),
            entry("/mnt/two", FSTYPE, "tvault:/srv/shared"),
            entry("/mnt/three", FSTYPE, "tvault:/srv/shared"),
        ]
    }

    fn at(path: &str) -> Result<OnMount, ResolveError> {
        locate(Path::new(path), &table())
    }

    fn on(mountpoint: &str, rel: &str) -> OnMount {
        OnMount {
            mountpoint: PathBuf::from(mountpoint),
            rel: rel.into(),
        }
    }

    #[test]
    fn paths_on_a_mount_name_it() {
        assert_eq!(at("/mnt/models").unwrap(), on("/mnt/models", ""));
        assert_eq!(
            at("/mnt/models/a/b.json").unwrap(),
            on("/mnt/models", "a/b.json")
        );
        // Another filesystem mounted inside the mount is not the mount.
        assert!(matches!(
            at("/mnt/models/scratch/x"),
            Err(ResolveError::NotOnMount(_))
        ));
        assert!(matches!(
            at("/mnt/modelsx"),
            Err(ResolveError::NotOnMount(_))
        ));
        assert!(matches!(at("/etc"), Err(ResolveError::NotOnMount(_))));
    }

    #[test]
    fn the_top_mount_at_a_point_counts() {
        let mut t = table();
        t.push(entry("/mnt/models", "ext4", "/dev/sdb"));
        assert!(locate(Path::new("/mnt/models/a"), &t).is_err());
        t.push(entry("/mnt/models", FSTYPE, "tvault:/srv/store"));
        assert_eq!(
            locate(Path::new("/mnt/models/a"), &t).unwrap(),
            on("/mnt/models", "a")
        );
    }

    #[test]
    fn paths_in_a_mounted_store_name_its_mount() {
        assert_eq!(at("/srv/store").unwrap(), on("/mnt/models", ""));
        assert_eq!(
            at("/srv/store/m/model.safetensors.tvlt").unwrap(),
            on("/mnt/models", "m/model.safetensors")
        );
        assert_eq!(at("/srv/store/m").unwrap(), on("/mnt/models", "m"));
        assert!(matches!(
            at("/srv/store/.tvault/users/alice.json"),
            Err(ResolveError::StoreMetadata { .. })
        ));
        assert!(matches!(
            at("/srv/storex"),
            Err(ResolveError::NotOnMount(_))
        ));
        let err = at("/srv/shared/x").unwrap_err().to_string();
        assert!(err.contains("/mnt/three, /mnt/two"), "{err}");
    }

    #[test]
    fn what_does_not_resolve_is_applied_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(real.join("d")).unwrap();
        std::os::unix::fs::symlink(real.join("d"), real.join("link")).unwrap();
        let given = real.join("link/missing/../gone/./x");
        assert_eq!(resolve_what_resolves(&given), real.join("d/gone/x"));
        assert_eq!(resolve_what_resolves(&real.join("link")), real.join("d"));
    }
}
