//! Inode numbers for store paths. A path keeps its number for the life of the mount (numbers
//! are never reused), so the kernel's cached lookups stay valid across store changes; what a
//! path *is* (file, directory, gone) is always read fresh from the backing store.

use std::collections::HashMap;

pub const ROOT: u64 = 1;

#[derive(Default)]
pub struct Inodes {
    by_path: HashMap<String, u64>,
    paths: HashMap<u64, String>,
    next: u64,
}

impl Inodes {
    pub fn new() -> Self {
        let mut table = Inodes {
            by_path: HashMap::new(),
            paths: HashMap::new(),
            next: ROOT + 1,
        };
        table.by_path.insert(String::new(), ROOT);
        table.paths.insert(ROOT, String::new());
        table
    }

    /// The store path ("" for the root) of inode `ino`.
    pub fn path(&self, ino: u64) -> Option<&str> {
        self.paths.get(&ino).map(String::as_str)
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
    }
}
