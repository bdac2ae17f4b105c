//! Inode numbers for store paths. A path keeps its number for the life of the mount (numbers
//! are never reused), so the kernel's cached lookups stay valid across store changes; what a
//! path *is* (file, directory, gone) is always read fresh from the backing store.

use std::collections::HashMap;

pub const ROOT: u64 = 1;

#[derive(Default)]
pub struct Inodes {
    by_path: HashMap<String, u64>,
    paths: HashMap<u64, String>,
    /// Inodes moved off their path while handles were open on them (see [`Inodes::detach`]):
    /// they keep the path for those handles, but lookups of it get a new inode.
    detached: HashMap<u64, String>,
    next: u64,
}

impl Inodes {
    pub fn new() -> Self {
        let mut table = Inodes {
            by_path: HashMap::new(),
            paths: HashMap::new(),
            detached: HashMap::new(),
            next: ROOT + 1,
        };
        table.by_path.insert(String::new(), ROOT);
        table.paths.insert(ROOT, String::new());
        table
    }

    /// The store path ("" for the root) of inode `ino`.
    pub fn path(&self, ino: u64) -> Option<&str> {
        self.paths
            .get(&ino)
            .or_else(|| self.detached.get(&ino))
            .map(String::as_str)
    }

    pub fn get_or_insert(&mut self, rel: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(rel) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_path.insert(rel.to_string(), ino);
        self.paths.insert(ino, rel.to_string());
        ino
    }
}

impl Inodes {
    /// Gives the path of `ino` a new inode number for later lookups, while `ino` keeps the
    /// path for the handles already open on it (their reads, writes and commits). The kernel
    /// then caches the two apart: each inode has its own page cache.
    pub fn detach(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(rel) = self.paths.remove(&ino) {
            self.by_path.remove(&rel);
            self.detached.insert(ino, rel);
        }
    }

    pub fn is_detached(&self, ino: u64) -> bool {
        self.detached.contains_key(&ino)
    }

    /// Detached inodes at `rel`.
    pub fn detached_at(&self, rel: &str) -> Vec<u64> {
        self.detached
            .iter()
            .filter(|(_, p)| p.as_str() == rel)
            .map(|(&i, _)| i)
            .collect()
    }

    /// Forgets a detached inode once nothing holds it.
    pub fn forget_detached(&mut self, ino: u64) {
        self.detached.remove(&ino);
    }

    /// Moves `from` (and, for a directory, everything under it) to `to`, keeping inode
    /// numbers. Whatever `to` named before loses its path.
    pub fn rename(&mut self, from: &str, to: &str) {
        let under = |p: &str, root: &str| p == root || p.starts_with(&format!("{root}/"));
        let replaced: Vec<String> = self
            .by_path
            .keys()
            .filter(|p| under(p, to))
            .cloned()
            .collect();
        for path in replaced {
            if let Some(ino) = self.by_path.remove(&path) {
                self.paths.remove(&ino);
            }
        }
        self.detached.retain(|_, p| !under(p, to));
        for p in self.detached.values_mut() {
            if under(p, from) {
                *p = format!("{to}{}", &p[from.len()..]);
            }
        }
        let moving: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| under(p, from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (path, ino) in moving {
            self.by_path.remove(&path);
            let new_path = format!("{to}{}", &path[from.len()..]);
            self.by_path.insert(new_path.clone(), ino);
            self.paths.insert(ino, new_path);
        }
    }

    /// Forgets a removed path; a later file of the same name gets a new inode number.
    pub fn remove(&mut self, rel: &str) {
        if let Some(ino) = self.by_path.remove(rel) {
            self.paths.remove(&ino);
        }
        self.detached.retain(|_, p| p != rel);
    }
}

/// `parent/name` as a store path.
pub fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_numbers() {
        let mut t = Inodes::new();
        assert_eq!(t.path(ROOT), Some(""));
        let a = t.get_or_insert("a");
        let b = t.get_or_insert("a/b");
        assert_ne!(a, b);
        assert_eq!(t.get_or_insert("a"), a);
        assert_eq!(t.path(b), Some("a/b"));
        assert_eq!(child_path("", "x"), "x");
        let c = t.get_or_insert("c");
        t.rename("a", "c");
        assert_eq!(t.path(a), Some("c"));
        assert_eq!(t.path(b), Some("c/b"));
        assert_eq!(t.path(c), None, "the replaced target loses its path");
        assert_eq!(t.get_or_insert("c/b"), b);
        t.remove("c/b");
        assert_eq!(t.path(b), None);
        assert_eq!(child_path("a", "x"), "a/x");
        // A detached inode keeps its path (and follows renames); lookups get a new one.
        let f = t.get_or_insert("d/f");
        t.detach(f);
        assert!(t.is_detached(f));
        let g = t.get_or_insert("d/f");
        assert_ne!(f, g);
        assert_eq!(t.path(f), Some("d/f"));
        assert_eq!(t.detached_at("d/f"), vec![f]);
        t.rename("d", "e");
        assert_eq!((t.path(f), t.path(g)), (Some("e/f"), Some("e/f")));
        t.rename("x", "e/f");
        assert_eq!(t.path(f), None, "a replaced target loses its path");
        let h = t.get_or_insert("e/h");
        t.detach(h);
        t.remove("e/h");
        assert_eq!(t.path(h), None);
    }
}
