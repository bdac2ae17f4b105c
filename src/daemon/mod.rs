//! The mount daemon: wires the store, access sessions, FUSE frontend and control socket
//! together, and owns the process's lifecycle (signals, unmount, cleanup).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use serde_json::{json, Value};

use crate::access::{Access, Denial, UnlockError};
use crate::audit::{self, AuditLog, Event, EventKind};
use crate::control::{self, Handler, Peer, Request};
use crate::fs::{Answer, Caller, Core, Verdict};
use crate::fuse::FuseAdapter;
use crate::store::{Store, StoreOptions};

mod host;
mod mounts;
mod requests;

pub use host::find_daemon;
pub use mounts::{detach, is_mount_point, mounts, MountEntry};
use requests::DaemonControl;

pub struct MountOptions {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub cache_bytes: u64,
    /// The mount's kernel readahead window.
    pub readahead_bytes: u64,
    /// How read-only opens are served, and the locked RAM whole-file copies may take.
    pub data_path: crate::fs::DataPath,
    pub eager_bytes: u64,
    pub read_only: bool,
    pub audit_log: Option<PathBuf>,
    pub audit_key: Option<PathBuf>,
    pub audit_max_size: Option<u64>,
    /// How the backend reaches a remote store (timeout, disk cache).
    pub store_options: StoreOptions,
    /// Names this host's audit chain and daemon file in the store (validated).
    pub host_id: String,
}

/// The kernel's name for the filesystem type of a tvault mount (`subtype=tvault`).
pub const FSTYPE: &str = "fuse.tvault";
/// A tvault mount's source in the mount table is this followed by the store's canonical path.
pub const SOURCE_PREFIX: &str = "tvault:";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}: mountpoint does not exist")]
    NoMountpoint(String),
    #[error("{0}: mountpoint is not a directory")]
    NotADirectory(String),
    #[error("{0}: already a mount point (unmount it first, or pick another directory)")]
    InUse(String),
    #[error(
        "{0}: a dead FUSE mount of another kind ({1}) is in the way; unmount it (`umount -l`) first"
    )]
    DeadForeignMount(String, String),
    #[error(
        "{0}: transport endpoint is not connected, but no mount sits on it: it lies inside a \
         dead FUSE mount; unmount that one (`tvault umount` or `umount -l`) first"
    )]
    InsideDeadMount(String),
    #[error("{path}: cannot detach the dead tvault mount there: {source}")]
    Detach {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cannot mount store {store} at {mountpoint}: the mountpoint is the store or inside it, and \
         the mount would serve its own backing files; choose a mountpoint outside the store"
    )]
    MountpointInStore { store: String, mountpoint: String },
    #[error(
        "cannot mount store {store} at {mountpoint}: the store is inside the mountpoint, so the \
         mount would hide and serve its own backing files; choose a mountpoint outside the store"
    )]
    StoreInMountpoint { store: String, mountpoint: String },
    #[error("{path}: cannot mount: {source}")]
    Mount {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("audit log: {0}")]
    Audit(#[from] audit::AuditError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A mountpoint whose daemon died answers `stat` with ENOTCONN until the dead mount is
/// removed. If it is a tvault mount, detach it (its daemon is gone, so nothing is served
/// there) and say so; another filesystem's dead mount is not ours to remove.
fn recover_dead_mount(given: &Path) -> Result<(), DaemonError> {
    let display = given.display().to_string();
    let absolute =
        std::path::absolute(given).map_err(|_| DaemonError::NoMountpoint(display.clone()))?;
    // The mountpoint itself cannot be resolved, but its parent can, unless the ENOTCONN came
    // from a dead mount further up.
    let resolved = match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map_err(|_| DaemonError::InsideDeadMount(display.clone()))?
            .join(name),
        _ => absolute,
    };
    let Some(top) = mounts().into_iter().rev().find(|m| m.point == resolved) else {
        return Err(DaemonError::InsideDeadMount(display));
    };
    if top.fstype != FSTYPE {
        return Err(DaemonError::DeadForeignMount(display, top.fstype));
    }
    detach(&resolved).map_err(|source| DaemonError::Detach {
        path: display,
        source,
    })?;
    log::warn!(
        "{}: the tvault mount there was dead (its daemon is gone; ENOTCONN): detached it",
        resolved.display()
    );
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: every open file of every user
/// holds a descriptor of the daemon's (the container), besides its sockets and the
/// /dev/fuse clones, and the usual soft limit of 1024 is soon reached on a shared host.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes, and setrlimit reads, a properly sized rlimit that lives on
    // this stack frame; neither keeps the pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            log::warn!(
                "cannot read the open-file limit: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                log::warn!(
                    "cannot raise the open-file limit from {} to {}: {}",
                    limit.rlim_cur,
                    limit.rlim_max,
                    std::io::Error::last_os_error()
                );
                return;
            }
            limit = raised;
        }
    }
    log::info!(
        "open-file limit: {} (raise the hard limit, e.g. LimitNOFILE=, for more)",
        limit.rlim_cur
    );
}

/// Sets the kernel's readahead window for this mount (`--readahead`, 512 KiB by default,
/// whatever the system has configured). Larger windows mean fewer, larger requests for
/// whole-file loads; but every first access through mmap pays for one window (a safetensors
/// header read, one small tensor). Side by side on the 1.1 GB model: 128K / 512K / 1M gave
/// `dd` 1.8 / 2.1 / 2.1 GB/s, `load_file` 1.16 / 1.03 / 1.08 s and one small tensor 2.0 /
/// 2.9 / 4.0 ms (docs/PERFORMANCE.md).
fn set_readahead(mountpoint: &Path, bytes: u64) {
    let Some(mount) = mounts().into_iter().rev().find(|m| m.point == mountpoint) else {
        return;
    };
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", mount.dev);
    if let Err(e) = std::fs::write(&knob, (bytes / 1024).to_string()) {
        log::info!("cannot set readahead ({knob}): {e}");
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, so all zeros is a valid value; sigemptyset and
    // sigaddset write only `set`, and pthread_sigmask reads it (no old mask is asked for).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Unmounts once, from whichever of the signal thread and the control socket asks first.
struct Unmount {
    unmounter: Mutex<Option<SessionUnmounter>>,
    mountpoint: PathBuf,
}

impl Unmount {
    fn trigger(&self) {
        let taken = crate::sync::lock(&self.unmounter).take();
        let Some(mut unmounter) = taken else { return };
        if let Err(e) = unmounter.unmount() {
            // Busy (a file is still open): detach now; the daemon exits when the last
            // handle closes.
            log::warn!("unmount: {e}; detaching lazily");
            if let Ok(path) = CString::new(self.mountpoint.as_os_str().as_encoded_bytes()) {
                // SAFETY: `path` is NUL-terminated and outlives the call, which only reads it.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// Mounts and serves until unmounted (by `tvault umount`, SIGINT/SIGTERM, or an outside
/// `umount`). `on_ready` runs once the mount is live and the control socket answers.
pub fn run(opts: &MountOptions, on_ready: impl FnOnce()) -> Result<(), DaemonError> {
    // Before any thread exists, so that every thread inherits the mask and only the signal
    // thread below receives them.
    let signals = block_signals();
    raise_fd_limit();
    let display = opts.mountpoint.display().to_string();
    let meta = match std::fs::metadata(&opts.mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            recover_dead_mount(&opts.mountpoint)?;
            std::fs::metadata(&opts.mountpoint)
        }
        other => other,
    }
    .map_err(|_| DaemonError::NoMountpoint(display.clone()))?;
    if !meta.is_dir() {
        return Err(DaemonError::NotADirectory(display));
    }
    let mountpoint = std::fs::canonicalize(&opts.mountpoint)
        .map_err(|_| DaemonError::NoMountpoint(display.clone()))?;
    if is_mount_point(&mountpoint) {
        return Err(DaemonError::InUse(display));
    }
    let store = Store::open_with(&opts.store, &opts.store_options)?;
    // An object store (s3://) has no local path to canonicalize, and cannot overlap.
    let store_path = match store.is_local() {
        true => std::fs::canonicalize(store.root()).unwrap_or_else(|_| store.root().to_path_buf()),
        false => store.root().to_path_buf(),
    };
    // Serving the store's own directory through itself deadlocks the first lookup (and then
    // SIGTERM too), whichever contains the other.
    let names = || {
        (
            store_path.display().to_string(),
            mountpoint.display().to_string(),
        )
    };
    if store.is_local() && mountpoint.starts_with(&store_path) {
        let (store, mountpoint) = names();
        return Err(DaemonError::MountpointInStore { store, mountpoint });
    }
    if store.is_local() && store_path.starts_with(&mountpoint) {
        let (store, mountpoint) = names();
        return Err(DaemonError::StoreInMountpoint { store, mountpoint });
    }
    let socket = control::socket_path(&mountpoint);
    let listener = control::bind(&socket).map_err(|source| DaemonError::Socket {
        path: socket.display().to_string(),
        source,
    })?;

    // The key is kept outside the store (by default under /var/lib/tvault), never beside the
    // log: whoever can write the store could have planted one there.
    let (audit, mirror) = match host::open_audit(opts, &store) {
        Ok(opened) => opened,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    let audit = Arc::new(audit);
    let access = Arc::new(Access::new());
    let shared = Core::new(
        store,
        access,
        opts.cache_bytes,
        opts.read_only,
        audit.clone(),
    );
    // Copies are locked RAM: a budget near the machine's memory would only trade them for
    // the OOM killer.
    let ram = crate::ramfile::physical_memory();
    let eager_bytes = match ram {
        0 => opts.eager_bytes,
        ram => opts.eager_bytes.min(ram / 4 * 3),
    };
    if eager_bytes < opts.eager_bytes {
        log::warn!(
            "--eager-memory {} is over three quarters of the RAM: using {eager_bytes}",
            opts.eager_bytes
        );
    }
    shared.set_data_path(opts.data_path, eager_bytes);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("{SOURCE_PREFIX}{}", store_path.display())),
        MountOption::CUSTOM("subtype=tvault".into()),
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.read_only {
        // The kernel itself then refuses every write with EROFS.
        config.mount_options.push(MountOption::RO);
    }
    // Other users must reach the mount (allow_other); tvault itself decides every open.
    config.acl = SessionACL::All;
    config.n_threads = Some(
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2),
    );
    config.clone_fd = true;
    let mut session = Session::new(FuseAdapter::new(shared.clone()), &mountpoint, &config)
        .map_err(|source| {
            let _ = std::fs::remove_file(&socket);
            DaemonError::Mount {
                path: display.clone(),
                source,
            }
        })?;
    shared.set_invalidator(crate::fuse::invalidator(session.notifier()));
    set_readahead(&mountpoint, opts.readahead_bytes);
    let unmount = Arc::new(Unmount {
        unmounter: Mutex::new(Some(session.unmount_callable())),
        mountpoint: mountpoint.clone(),
    });
    // SAFETY: getuid has no preconditions.
    let owner_uid = unsafe { libc::getuid() };
    let handler = DaemonControl {
        shared: shared.clone(),
        audit: audit.clone(),
        unmount: unmount.clone(),
        owner_uid,
        read_only: opts.read_only,
        store_path: store_path.clone(),
    };
    control::serve(listener, Arc::new(handler)).map_err(|source| DaemonError::Socket {
        path: socket.display().to_string(),
        source,
    })?;
    let mirror = match mirror {
        Some(m) => Some(
            host::MirrorTask::start(m, shared.clone()).map_err(|source| DaemonError::Mount {
                path: display.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let signal_nudge = mirror.as_ref().map(host::MirrorTask::nudger);
    let signal_unmount = unmount.clone();
    let signal_audit = audit.clone();
    std::thread::Builder::new()
        .name("tvault-signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `signals` is the initialised set blocked above and `sig` a valid int to
            // write; sigwait keeps neither pointer.
            if unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
                if sig == libc::SIGHUP {
                    if let Err(e) = signal_audit.rotate() {
                        log::error!("audit log rotation: {e}");
                    }
                    if let Some(nudge) = &signal_nudge {
                        let _ = nudge.send(host::Wake::Sync);
                    }
                    continue;
                }
                log::info!("signal {sig}: unmounting");
                signal_unmount.trigger();
                return;
            }
        })
        .map_err(|source| DaemonError::Mount {
            path: display.clone(),
            source,
        })?;
    let mount_event = |kind| {
        Event::from_pid(kind, std::process::id())
            .uid(owner_uid)
            .path(mountpoint.display().to_string())
            .detail(format!(
                "store={} host={}",
                store_path.display(),
                opts.host_id
            ))
    };
    audit.record(&mount_event(EventKind::Mount))?;
    let daemon_info = json!({"pid": std::process::id(), "socket": socket,
        "mountpoint": mountpoint, "host": opts.host_id});
    // Through the store gate: a link planted at the daemon file is replaced, never written
    // through.
    let daemon_file = host::write_daemon_file(&shared.store, &opts.host_id, &daemon_info);
    on_ready();
    let result = session.run();
    shared.access.lock_all();
    shared.forget_plaintext();
    let _ = std::fs::remove_file(&socket);
    if let Some(written) = &daemon_file {
        host::remove_daemon_file(&shared.store, &opts.host_id, written);
    }
    // Counted denials first, so that nothing follows the unmount entry.
    if let Err(e) = audit.write_pending() {
        log::error!("audit log at unmount: {e}");
    }
    if let Err(e) = audit
        .record(&mount_event(EventKind::Unmount))
        .and_then(|()| audit.close())
    {
        log::error!("audit log at unmount: {e}");
    }
    if let Some(mirror) = mirror {
        mirror.finish(&shared.store);
    }
    result.map_err(|source| DaemonError::Mount {
        path: display,
        source,
    })
}
