//! What a daemon keeps per host in a store that many hosts mount: its audit chain (with the
//! mirror for a store that is not a local directory) and its daemon file,
//! `.tvault/daemons/HOST.json`, through which this host's store commands find it.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;

use super::*;
use crate::audit::{Mirror, MIRROR_INTERVAL};

/// Directory of the daemon files, in `.tvault/`.
const DAEMON_DIR: &str = "daemons";

/// `daemons/HOST.json`, inside `.tvault/`.
fn daemon_file(host: &str) -> String {
    format!("{DAEMON_DIR}/{host}.json")
}

/// The mount table's source of a mount of `store`: how a store command on this host tells
/// that a mountpoint named in a daemon file really serves this store.
fn mount_source(store: &Store) -> String {
    let path = std::fs::canonicalize(store.root()).unwrap_or_else(|_| store.root().to_path_buf());
    format!("{SOURCE_PREFIX}{}", path.display())
}

/// The mountpoint of this host's running daemon for `store`, if its daemon file names one
/// that the kernel's mount table shows as a tvault mount of this very store (a file another
/// host wrote, or one left by a dead daemon, names nothing here).
pub fn find_daemon(store: &Store, host: &str) -> Option<PathBuf> {
    let bytes = store.read_meta(&daemon_file(host), 64 << 10).ok()?;
    let info: Value = serde_json::from_slice(&bytes).ok()?;
    if info["host"].as_str() != Some(host) {
        return None;
    }
    let point = PathBuf::from(info["mountpoint"].as_str()?);
    let source = mount_source(store);
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.point == point)
        .filter(|m| m.fstype == FSTYPE && m.source == source)
        .map(|m| m.point)
}

/// The audit log the daemon appends to: `--audit-log FILE` as given, else this host's chain.
pub(super) fn open_audit(
    opts: &MountOptions,
    store: &Store,
) -> Result<(AuditLog, Option<Mirror>), DaemonError> {
    if let Some(log) = &opts.audit_log {
        let (path, default_key) = audit::default_paths(store.root(), Some(log));
        let key = opts.audit_key.clone().unwrap_or(default_key);
        log::info!("audit log {}, key {}", path.display(), key.display());
        return Ok((AuditLog::open(&path, &key, opts.audit_max_size)?, None));
    }
    let opened = audit::open_host_log(
        store,
        &opts.host_id,
        opts.audit_key.as_deref(),
        opts.audit_max_size,
    )?;
    log::info!(
        "audit log {} (host {}), key {}",
        opened.log.path().display(),
        opts.host_id,
        opened.log.key_path().display()
    );
    if let Some(mirror) = &opened.mirror {
        log::info!(
            "the store is not a local directory: the log is kept at {} and mirrored into it",
            mirror.local().display()
        );
    }
    Ok((opened.log, opened.mirror))
}

/// Writes this host's daemon file; returns what was written, so that only that is removed.
pub(super) fn write_daemon_file(store: &Store, host: &str, info: &Value) -> Option<Vec<u8>> {
    let bytes = info.to_string().into_bytes();
    let written = store
        .create_meta_dir(DAEMON_DIR)
        .and_then(|()| store.write_meta(&daemon_file(host), &bytes, 0o644));
    match written {
        Ok(()) => Some(bytes),
        Err(e) => {
            log::info!("cannot write {}: {e}", daemon_file(host));
            None
        }
    }
}

/// Removes this host's daemon file if it is still the one this daemon wrote.
pub(super) fn remove_daemon_file(store: &Store, host: &str, written: &[u8]) {
    let name = daemon_file(host);
    if store.read_meta(&name, 64 << 10).ok().as_deref() == Some(written) {
        let _ = store.remove_meta(&name);
    }
}

pub(super) enum Wake {
    Sync,
    Stop,
}

/// The mirror's thread: syncs every [`MIRROR_INTERVAL`], and at once when nudged.
pub(super) struct MirrorTask {
    mirror: Arc<Mirror>,
    nudge: Sender<Wake>,
    thread: JoinHandle<()>,
}

impl MirrorTask {
    pub(super) fn start(mirror: Mirror, core: Arc<Core>) -> std::io::Result<MirrorTask> {
        let mirror = Arc::new(mirror);
        let (nudge, wake) = mpsc::channel::<Wake>();
        let for_thread = mirror.clone();
        let thread = std::thread::Builder::new()
            .name("tvault-audit-mirror".into())
            .spawn(move || loop {
                match wake.recv_timeout(MIRROR_INTERVAL) {
                    Ok(Wake::Sync) | Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = for_thread.sync(&core.store) {
                            log::error!("audit mirror: {e}");
                        }
                    }
                    Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(MirrorTask {
            mirror,
            nudge,
            thread,
        })
    }

    /// A handle that asks for a sync now (after a rotation).
    pub(super) fn nudger(&self) -> Sender<Wake> {
        self.nudge.clone()
    }

    /// Stops the thread, then (the log being closed) sends what is left.
    pub(super) fn finish(self, store: &Store) {
        let _ = self.nudge.send(Wake::Stop);
        let _ = self.thread.join();
        if let Err(e) = self.mirror.sync(store) {
            log::error!("audit mirror at unmount: {e}");
        }
    }
}
