//! Many hosts on one store: each host's daemon writes a chain of its own, named by its host
//! id, under a key of its own kept in that host's state directory.
//!
//! ```text
//! STORE/.tvault/audit/HOST.jsonl (+ .1 … .5)    HOST's chain (in the store, or its mirror)
//! STATE/audit-keys/STORE_ID/HOST.key (+ .head)  HOST's key and head record, on HOST only
//! STATE/audit-logs/STORE_ID/HOST.jsonl          HOST's chain, for a store that is not local
//! ```
//! The store id (`.tvault/store-id`) names the key, not the store's path: one shared store is
//! often mounted at different paths on different hosts, and an auditor who collects every
//! host's `STORE_ID/` key directory into one finds each chain's key by its host id.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::key::{state_dir, KEY_DIR};
use super::mirror::Mirror;
use super::{AuditError, AuditLog};
use crate::store::{Store, StoreError};

/// Environment variable giving the host id (for `mount` without `--host-id`, and for the
/// store commands that record changes); the host name when unset.
pub const HOST_ID_ENV: &str = "TVAULT_HOST_ID";
/// Directory of the per-host chains, in `STORE/.tvault/`.
pub const CHAIN_DIR: &str = "audit";
/// Directory of local copies of chains mirrored into stores that are not local, in the
/// state directory.
const LOCAL_LOG_DIR: &str = "audit-logs";
const MAX_HOST_ID: usize = 64;

/// Why `id` cannot name a host, if it cannot: it must be usable as a file name in any store.
pub fn host_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > MAX_HOST_ID {
        return Some("it must be 1 to 64 characters long");
    }
    if id.starts_with('.') {
        return Some("it must not start with '.'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some("only letters, digits, '.', '_' and '-' are allowed");
    }
    None
}

/// Checks a host id given by the administrator.
pub fn validate_host_id(id: &str) -> Result<(), AuditError> {
    match host_id_problem(id) {
        Some(why) => Err(AuditError::BadHostId {
            id: id.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// This host's id when none is given: `$TVAULT_HOST_ID`, else the host name.
pub fn default_host_id() -> Result<String, AuditError> {
    let id = match std::env::var(HOST_ID_ENV) {
        Ok(id) if !id.is_empty() => id,
        _ => crate::system::hostname().unwrap_or_default(),
    };
    validate_host_id(&id)?;
    Ok(id)
}

/// `HOST.jsonl`, as named inside [`CHAIN_DIR`].
pub fn chain_file(host: &str) -> String {
    format!("{host}.jsonl")
}

/// The host a chain file inside [`CHAIN_DIR`] belongs to, and its rotation number (0 for
/// the current file): `HOST.jsonl` or `HOST.jsonl.N`.
pub fn chain_host(name: &str) -> Option<(&str, u32)> {
    let (base, n) = match name.rsplit_once(".jsonl.") {
        Some((base, n)) => (base, super::files::rotation_number(n)?),
        None => (name.strip_suffix(".jsonl")?, 0),
    };
    (host_id_problem(base).is_none() && n <= super::KEEP_ROTATED).then_some((base, n))
}

/// Where HOST keeps its key for the store with id `store_id`: in the state directory,
/// `audit-keys/STORE_ID/HOST.key`.
pub fn host_key_path(store_id: &str, host: &str) -> PathBuf {
    host_key_dir(store_id).join(format!("{host}.key"))
}

/// The directory of a store's keys on this host (what an auditor collects).
pub fn host_key_dir(store_id: &str) -> PathBuf {
    state_dir().join(KEY_DIR).join(store_id)
}

/// Directory of the store ids this host has seen, one file per store location, in the state
/// directory.
const SEEN_ID_DIR: &str = "audit-store-ids";

/// Checks that `store` still has the id `id` this host first saw at its location, and
/// (`remember`) notes it the first time. Whoever can write the store could otherwise delete a
/// host's chain and give the store a new id: the host would start a fresh chain under a fresh
/// key, which verifies, and nothing would show that the history was cut.
pub fn check_store_id(store: &Store, id: &str, remember: bool) -> Result<(), AuditError> {
    let location = match store.is_local().then(|| fs::canonicalize(store.root())) {
        Some(Ok(root)) => root.to_string_lossy().into_owned(),
        _ => store.location_key(),
    };
    let name = hex::encode(&crate::crypto::sha256(location.as_bytes())[..16]);
    let dir = state_dir().join(SEEN_ID_DIR);
    let seen = dir.join(name);
    match fs::read_to_string(&seen) {
        Ok(text) => {
            let first = text.lines().next().unwrap_or("").trim();
            if first == id {
                return Ok(());
            }
            Err(AuditError::StoreIdChanged {
                location,
                id: id.to_string(),
                first: first.to_string(),
                seen,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && remember => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(super::io_err(&dir))?;
            let text = format!("{id}\n{location}\n");
            crate::fsutil::write_atomic(
                &seen,
                0o600,
                |f| std::io::Write::write_all(f, text.as_bytes()).map_err(super::io_err(&seen)),
                super::io_err(&seen),
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(super::io_err(&seen)(e)),
    }
}

/// This host's chain of one store, as the daemon (or a store command) appends to it.
pub struct HostLog {
    pub log: AuditLog,
    /// For a store that is not a local directory: copies the local log into it.
    pub mirror: Option<Mirror>,
}

/// Opens HOST's chain of `store` with its key (`key`, else [`host_key_path`]): in the
/// store's `.tvault/audit/` when the store is a local directory, else in the state directory,
/// mirrored into the store by the returned [`Mirror`].
pub fn open_host_log(
    store: &Store,
    host: &str,
    key: Option<&Path>,
    max_size: Option<u64>,
) -> Result<HostLog, AuditError> {
    validate_host_id(host)?;
    let store_id = store.ensure_id()?;
    check_store_id(store, &store_id, true)?;
    let key_path = key.map_or_else(|| host_key_path(&store_id, host), Path::to_path_buf);
    let name = chain_file(host);
    match store.local_meta_dir(CHAIN_DIR) {
        Ok(dir) => {
            let path = store.meta_display(&format!("{CHAIN_DIR}/{name}"));
            let log = AuditLog::open_in(dir, &path, &key_path, max_size)?;
            Ok(HostLog { log, mirror: None })
        }
        Err(StoreError::NotLocal(_)) => {
            store.create_meta_dir(CHAIN_DIR)?;
            let dir = state_dir().join(LOCAL_LOG_DIR).join(&store_id);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(super::io_err(&dir))?;
            let path = dir.join(&name);
            let log = AuditLog::open(&path, &key_path, max_size)?;
            let mirror = Mirror::new(path, format!("{CHAIN_DIR}/{name}"));
            Ok(HostLog {
                log,
                mirror: Some(mirror),
            })
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_and_chain_names() {
        for good in ["gpu01", "node-17.cluster", "a", "A_b", &"x".repeat(64)] {
            assert_eq!(host_id_problem(good), None, "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "a b",
            "é",
            &"x".repeat(65),
            "a\n",
        ] {
            assert!(host_id_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(chain_host("gpu01.jsonl"), Some(("gpu01", 0)));
        assert_eq!(chain_host("gpu01.jsonl.3"), Some(("gpu01", 3)));
        assert_eq!(chain_host("a.b.jsonl.5"), Some(("a.b", 5)));
        for other in [
            "gpu01.jsonl.6",
            "gpu01.jsonl.+1",
            ".x.jsonl",
            "x.json",
            ".tvault-tmp-0123.jsonl",
            "jsonl",
        ] {
            assert_eq!(chain_host(other), None, "{other}");
        }
        let key = host_key_path("ab", "gpu01");
        assert!(
            key.ends_with("audit-keys/ab/gpu01.key"),
            "{}",
            key.display()
        );
    }

    #[test]
    fn a_local_store_holds_the_chain_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), 16).unwrap();
        let key = dir.path().join("keys/h.key");
        let opened = open_host_log(&store, "h1", Some(&key), None).unwrap();
        assert!(opened.mirror.is_none());
        opened
            .log
            .record(&crate::audit::Event::from_pid(
                crate::audit::EventKind::Mount,
                1,
            ))
            .unwrap();
        opened.log.close().unwrap();
        let log = dir.path().join("s/.tvault/audit/h1.jsonl");
        assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 1);
        assert!(store.id().unwrap().is_some(), "the id was made");
        assert!(matches!(
            open_host_log(&store, "../x", Some(&key), None),
            Err(AuditError::BadHostId { .. })
        ));
    }

    /// Deleting a host's chain and giving the store a new id would start a fresh chain under
    /// a fresh key, which verifies: the host refuses the new id instead.
    #[test]
    fn a_replaced_store_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::init(&root, 16).unwrap();
        let key = dir.path().join("keys/h.key");
        let opened = open_host_log(&store, "h3", Some(&key), None).unwrap();
        opened.log.close().unwrap();
        let id = store.id().unwrap().unwrap();
        check_store_id(&store, &id, false).unwrap();
        fs::remove_dir_all(root.join(".tvault/audit")).unwrap();
        let forged = "ab".repeat(16);
        fs::write(root.join(".tvault/store-id"), format!("{forged}\n")).unwrap();
        let err = open_host_log(&store, "h3", Some(&key), None).err().unwrap();
        assert!(err.to_string().contains(&id), "{err}");
        let AuditError::StoreIdChanged { seen, .. } = err else {
            panic!("another error");
        };
        assert!(check_store_id(&store, &forged, false).is_err());
        fs::remove_file(seen).unwrap();
    }

    /// A store that is not a local directory: the chain is kept in the state directory and
    /// mirrored into the store, where the store's chains are found and verify.
    #[test]
    fn a_store_that_is_not_local_gets_a_mirrored_chain() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        Store::init(&root, 16).unwrap();
        let store = crate::store::not_local(&root);
        let key = dir.path().join("keys/h.key");
        let opened = open_host_log(&store, "h2", Some(&key), None).unwrap();
        let mirror = opened.mirror.expect("mirror mode");
        assert!(mirror.local().starts_with(state_dir().join(LOCAL_LOG_DIR)));
        assert!(
            !root.join(".tvault/audit/h2.jsonl").exists(),
            "not appended in place"
        );
        for i in 0..3 {
            opened
                .log
                .record(&crate::audit::Event::from_pid(
                    crate::audit::EventKind::Mount,
                    i,
                ))
                .unwrap();
        }
        opened.log.close().unwrap();
        mirror.sync(&store).unwrap();
        let chains = crate::audit::store_chains(&store).unwrap();
        assert_eq!(chains.len(), 1);
        let files = crate::audit::display_files(&store, &chains[0]);
        let k = super::super::key::read_trusted(&key).unwrap().unwrap();
        let head = super::super::read_head(&super::super::head_path(&key)).unwrap();
        let report = crate::audit::verify_with(
            &files,
            |shown| crate::audit::open_chain_file(&store, &chains[0], shown),
            Some(&k),
            None,
            head.as_ref(),
        )
        .unwrap();
        assert_eq!(report.entries, 3);
        assert_eq!(report.head, crate::audit::HeadCheck::Matched { seq: 3 });
        fs::remove_dir_all(mirror.local().parent().unwrap()).unwrap();
    }
}
