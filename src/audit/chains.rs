//! The chains a store holds, read through the store (so that a store that is not a local
//! directory is read the same way): one per host in `.tvault/audit/`, and the single log of
//! older versions, `.tvault/audit.jsonl`, with their rotated files.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::files::{rotated_name, rotation_number};
use super::host::{chain_file, chain_host, CHAIN_DIR};
use super::{DEFAULT_LOG_NAME, KEEP_ROTATED};
use crate::container::Source;
use crate::store::{Blob, Store, StoreError};

/// One chain of a store: its files, oldest first, named inside `.tvault/`; the last is always
/// the current file, which may be missing (deleted) and then fails to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The host that writes it; `None` for the single log of older versions.
    pub host: Option<String>,
    pub files: Vec<String>,
}

impl Chain {
    /// How the chain is named in reports.
    pub fn label(&self) -> &str {
        self.host.as_deref().unwrap_or("(single log)")
    }
}

/// Every chain found in `store`, the single log first, then by host id.
pub fn store_chains(store: &Store) -> Result<Vec<Chain>, StoreError> {
    let mut out = Vec::new();
    let legacy: Vec<u32> = store
        .list_meta("")?
        .iter()
        .filter_map(|e| match e.name.strip_prefix(DEFAULT_LOG_NAME)? {
            "" => Some(0),
            rest => rotation_number(rest.strip_prefix('.')?).filter(|n| *n <= KEEP_ROTATED),
        })
        .collect();
    if !legacy.is_empty() {
        out.push(Chain {
            host: None,
            files: files_of(DEFAULT_LOG_NAME, &legacy),
        });
    }
    let mut hosts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for entry in store.list_meta(CHAIN_DIR)? {
        if let Some((host, n)) = chain_host(&entry.name) {
            hosts.entry(host.to_string()).or_default().push(n);
        }
    }
    for (host, numbers) in hosts {
        let base = format!("{CHAIN_DIR}/{}", chain_file(&host));
        out.push(Chain {
            files: files_of(&base, &numbers),
            host: Some(host),
        });
    }
    Ok(out)
}

/// `BASE.N` for the numbers found, highest (oldest) first, then `BASE` itself.
fn files_of(base: &str, numbers: &[u32]) -> Vec<String> {
    let mut rotated: Vec<u32> = numbers.iter().copied().filter(|&n| n > 0).collect();
    rotated.sort_unstable_by(|a, b| b.cmp(a));
    rotated.dedup();
    let mut files: Vec<String> = rotated
        .into_iter()
        .map(|n| {
            rotated_name(Path::new(base), n)
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.push(base.to_string());
    files
}

/// The full names of a chain's files (for messages and `verify_with`).
pub fn display_files(store: &Store, chain: &Chain) -> Vec<PathBuf> {
    chain.files.iter().map(|f| store.meta_display(f)).collect()
}

/// Opens the chain file whose full name is `shown` (one of [`display_files`]).
pub fn open_chain_file(store: &Store, chain: &Chain, shown: &Path) -> io::Result<Box<dyn Read>> {
    let name = chain
        .files
        .iter()
        .find(|f| store.meta_display(f) == shown)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not a file of this chain"))?;
    let blob = store.open_meta(name).map_err(|e| match e {
        StoreError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    })?;
    let size = blob.size()?;
    Ok(Box::new(BlobRead { blob, at: 0, size }))
}

/// A store file read front to back, by position, up to the size it had when opened.
struct BlobRead {
    blob: Blob,
    at: u64,
    size: u64,
}

impl Read for BlobRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.size - self.at).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.blob.read_exact_at(&mut buf[..n], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn chains_are_found_by_host_and_read_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::init(&root, 16).unwrap();
        assert!(store_chains(&store).unwrap().is_empty());
        let meta = root.join(".tvault");
        fs::create_dir(meta.join("audit")).unwrap();
        for name in [
            "audit.jsonl",
            "audit.jsonl.2",
            "audit/b.jsonl",
            "audit/a.jsonl.1",
            "audit/a.jsonl",
            "audit/a.jsonl.3",
            "audit/c.jsonl.1",
            "audit/.x.jsonl",
            "audit/notes.txt",
            "audit/a.jsonl.9",
        ] {
            fs::write(meta.join(name), format!("{name}\n")).unwrap();
        }
        let chains = store_chains(&store).unwrap();
        let got: Vec<(Option<&str>, Vec<&str>)> = chains
            .iter()
            .map(|c| {
                (
                    c.host.as_deref(),
                    c.files.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (None, vec!["audit.jsonl.2", "audit.jsonl"]),
                (
                    Some("a"),
                    vec!["audit/a.jsonl.3", "audit/a.jsonl.1", "audit/a.jsonl"]
                ),
                (Some("b"), vec!["audit/b.jsonl"]),
                // A current file that is gone is still named: opening it fails.
                (Some("c"), vec!["audit/c.jsonl.1", "audit/c.jsonl"]),
            ]
        );
        let a = &chains[1];
        let shown = display_files(&store, a);
        let mut text = String::new();
        open_chain_file(&store, a, &shown[0])
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "audit/a.jsonl.3\n");
        let c = &chains[3];
        let missing = display_files(&store, c);
        assert_eq!(
            open_chain_file(&store, c, &missing[1])
                .err()
                .unwrap()
                .kind(),
            io::ErrorKind::NotFound
        );
        // A planted link is refused, not followed.
        fs::remove_file(meta.join("audit/b.jsonl")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", meta.join("audit/b.jsonl")).unwrap();
        let b = &store_chains(&store).unwrap()[2];
        assert!(open_chain_file(&store, b, &display_files(&store, b)[0]).is_err());
    }
}
