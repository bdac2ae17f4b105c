//! The mount daemon: wires the store, access sessions, FUSE frontend and control socket
//! together, and owns the process's lifecycle (signals, unmount, cleanup).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use serde_json::{json, Value};

use crate::access::{Access, UnlockError};
use crate::audit::{self, AuditLog, Event, EventKind};
use crate::control::{self, Handler, Peer, Request};
use crate::fs::Core;
use crate::fuse::FuseAdapter;
use crate::store::Store;

pub struct MountOptions {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub cache_bytes: u64,
    /// The mount's kernel readahead window.
    pub readahead_bytes: u64,
    pub read_only: bool,
    pub audit_log: Option<PathBuf>,
    pub audit_key: Option<PathBuf>,
    pub audit_max_size: Option<u64>,
}

/// Written to `STORE/.tvault/daemon.json` while mounted, so that store commands (grant,
/// revoke) can find the daemon that holds the audit log.
pub const DAEMON_FILE: &str = "daemon.json";

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

/// One line of /proc/self/mountinfo.
pub struct MountEntry {
    pub point: PathBuf,
    /// "major:minor".
    pub dev: String,
    /// e.g. "fuse.tvault", "ext4".
    pub fstype: String,
}

/// Mounts from /proc/self/mountinfo, in mount order (the last one at a path is on top).
pub fn mounts() -> Vec<MountEntry> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// `id parent major:minor root point options [optional fields…] - fstype source super-options`
fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (front, back) = line.split_once(" - ")?;
    let mut fields = front.split(' ');
    let dev = fields.nth(2)?.to_string();
    let point = fields.nth(1)?;
    Some(MountEntry {
        point: PathBuf::from(unescape_mountinfo(point)),
        dev,
        fstype: back.split(' ').next()?.to_string(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.point == path)
}

/// Detaches the mount at `mountpoint` lazily (`MNT_DETACH`, so open files do not keep it),
/// with `fusermount3 -uz` when not root.
pub fn detach(mountpoint: &Path) -> std::io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_encoded_bytes())?;
    // SAFETY: `path` is NUL-terminated and outlives the call, which only reads it.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let umount_error = std::io::Error::last_os_error();
    match std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mountpoint)
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => Err(umount_error),
    }
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
    if top.fstype != "fuse.tvault" {
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
        let taken = self
            .unmounter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
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

/// Why the daemon refused a control request; the `Display` is the reply's error text.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Unlock(UnlockError),
    #[error("the audit log cannot be written; unlock refused")]
    UnlockNotAudited(#[source] audit::AuditError),
    #[error("uid {0} is not unlocked on this mount")]
    NotUnlocked(u32),
    #[error(
        "{} file(s) still open by uid {uid}: {}; close them, or use --force to lock anyway \
         (reads on them then fail, and mappings get SIGBUS)",
        open.len(),
        open.join(", ")
    )]
    FilesOpen { uid: u32, open: Vec<String> },
    /// Something only root or the daemon's owner may do.
    #[error("only root or the user who mounted may {0}")]
    NotOwner(&'static str),
    #[error("unknown audit event {0:?}")]
    UnknownAuditEvent(String),
    #[error(transparent)]
    Audit(audit::AuditError),
}

struct DaemonControl {
    shared: Arc<Core>,
    audit: Arc<AuditLog>,
    unmount: Arc<Unmount>,
    owner_uid: u32,
    read_only: bool,
    store_path: PathBuf,
}

impl DaemonControl {
    fn status(&self, peer: Peer) -> Value {
        let privileged = peer.uid == 0 || peer.uid == self.owner_uid;
        let visible = |uid: u32| privileged || uid == peer.uid;
        let s = &self.shared;
        let users: Vec<_> = s
            .access
            .sessions()
            .into_iter()
            .filter(|u| visible(u.uid))
            .map(|u| json!({"user": u.name, "uid": u.uid, "data_keys": u.cached_keys()}))
            .collect();
        let open: Vec<_> = s
            .open_files()
            .into_iter()
            .filter(|f| visible(f.uid))
            .map(|f| json!({"path": f.path, "uid": f.uid, "user": f.user}))
            .collect();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "store": self.store_path.display().to_string(),
            "mountpoint": self.unmount.mountpoint.display().to_string(),
            "pid": std::process::id(),
            "read_only": self.read_only,
            "unlocked": users,
            "open_files": open,
            "cache": {
                "bytes": s.cache.bytes(),
                "capacity": s.cache.capacity(),
                "buffer_bytes": s.buffer_bytes(),
                "metadata_bytes": s.metadata_bytes(),
                "hits": load(&s.cache.hits),
                "misses": load(&s.cache.misses),
            },
            "bytes_decrypted": load(&s.stats.bytes_decrypted),
            "opens_allowed": load(&s.stats.opens_allowed),
            "opens_denied": load(&s.stats.opens_denied),
            "integrity_failures": load(&s.stats.integrity_failures),
            "audit": {
                "path": self.audit.path().display().to_string(),
                "entries_written": self.audit.entries_written(),
                "events_coalesced": self.audit.events_coalesced(),
                "last_entry_time": self.audit.last_entry_time().map(audit::format_time),
                "last_hash": if privileged { Some(self.audit.last_hash()) } else { None },
                "key": privileged.then(|| self.audit.key_path().display().to_string()),
            },
        })
    }
}

impl Handler for DaemonControl {
    type Error = Refusal;

    fn handle(&self, peer: Peer, request: &Request) -> Result<Value, Refusal> {
        let comm = crate::system::process_comm(peer.pid as u32).unwrap_or_default();
        match request {
            Request::Unlock { passphrase } => {
                let result =
                    self.shared
                        .access
                        .unlock(&self.shared.store, peer.uid, passphrase.as_bytes());
                let event = |kind| Event::from_pid(kind, peer.pid as u32).uid(peer.uid);
                match result {
                    Ok(user) => {
                        let recorded = self
                            .audit
                            .record(&event(EventKind::Unlock).user(&user).allow());
                        if let Err(e) = recorded {
                            // Fail closed: no unaudited session.
                            self.shared.access.lock(peer.uid);
                            return Err(Refusal::UnlockNotAudited(e));
                        }
                        Ok(json!({"user": user, "uid": peer.uid}))
                    }
                    Err(e) => {
                        let reason = match &e {
                            UnlockError::NoKeyring(_) => "no-keyring",
                            UnlockError::WrongPassphrase(_) => "wrong-passphrase",
                            UnlockError::RateLimited { .. } => "rate-limited",
                            UnlockError::KdfOverCap { .. } => "kdf-over-cap",
                            UnlockError::Store(_) | UnlockError::Keyring(_) => "store-error",
                        };
                        if let Err(audit) = self
                            .audit
                            .record(&event(EventKind::UnlockFailed).deny(reason))
                        {
                            log::error!("audit log: failed unlock of uid {}: {audit}", peer.uid);
                        }
                        Err(Refusal::Unlock(e))
                    }
                }
            }
            Request::Lock { force } => {
                let Some(session) = self.shared.access.session(peer.uid) else {
                    return Err(Refusal::NotUnlocked(peer.uid));
                };
                let open: Vec<String> = self
                    .shared
                    .open_files()
                    .into_iter()
                    .filter(|f| f.uid == peer.uid)
                    .map(|f| f.path)
                    .collect();
                if !open.is_empty() && !force {
                    return Err(Refusal::FilesOpen {
                        uid: peer.uid,
                        open,
                    });
                }
                self.shared.access.lock(peer.uid);
                let invalidated = self.shared.invalidate_open_files_of(peer.uid);
                // With nobody unlocked, no decrypted chunk or derived key needs to stay.
                if self.shared.access.sessions().is_empty() {
                    self.shared.forget_plaintext();
                }
                // The lock has happened either way: refusing to report it would not undo it.
                if let Err(e) = self.audit.record(
                    &Event::from_pid(EventKind::Lock, peer.pid as u32)
                        .uid(peer.uid)
                        .user(&session.name)
                        .detail(format!("force={force} invalidated={invalidated}")),
                ) {
                    log::error!("audit log: lock of uid {}: {e}", peer.uid);
                }
                Ok(json!({"user": session.name, "uid": peer.uid, "invalidated": invalidated}))
            }
            Request::Status => Ok(self.status(peer)),
            Request::AuditNote {
                event,
                path,
                target,
                user,
                detail,
            } => {
                // Only whoever could write the audit log directly may add to it.
                if peer.uid != 0 && peer.uid != self.owner_uid {
                    return Err(Refusal::NotOwner("add audit entries"));
                }
                let kind = match event.as_str() {
                    "grant" => EventKind::Grant,
                    "revoke" => EventKind::Revoke,
                    other => return Err(Refusal::UnknownAuditEvent(other.to_string())),
                };
                let mut e = Event::from_pid(kind, peer.pid as u32)
                    .uid(peer.uid)
                    .path(path)
                    .target(target)
                    .allow();
                if let Some(user) = user {
                    e = e.user(user);
                }
                if let Some(detail) = detail {
                    e = e.detail(detail);
                }
                self.audit.record(&e).map_err(Refusal::Audit)?;
                Ok(json!({}))
            }
            Request::Umount => {
                if peer.uid != 0 && peer.uid != self.owner_uid {
                    return Err(Refusal::NotOwner("unmount"));
                }
                log::info!(
                    "unmount requested by uid {} (pid {}, {comm})",
                    peer.uid,
                    peer.pid
                );
                let unmount = self.unmount.clone();
                // Reply first: the unmount tears down the process.
                std::thread::spawn(move || unmount.trigger());
                Ok(json!({}))
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
    let store = Store::open(&opts.store)?;
    let store_path =
        std::fs::canonicalize(store.root()).unwrap_or_else(|_| store.root().to_path_buf());
    // Serving the store's own directory through itself deadlocks the first lookup (and then
    // SIGTERM too), whichever contains the other.
    let names = || {
        (
            store_path.display().to_string(),
            mountpoint.display().to_string(),
        )
    };
    if mountpoint.starts_with(&store_path) {
        let (store, mountpoint) = names();
        return Err(DaemonError::MountpointInStore { store, mountpoint });
    }
    if store_path.starts_with(&mountpoint) {
        let (store, mountpoint) = names();
        return Err(DaemonError::StoreInMountpoint { store, mountpoint });
    }
    let socket = control::socket_path(&mountpoint).map_err(|source| DaemonError::Socket {
        path: display.clone(),
        source,
    })?;
    let listener = control::bind(&socket).map_err(|source| DaemonError::Socket {
        path: socket.display().to_string(),
        source,
    })?;

    // The key is kept outside the store (by default under /var/lib/tvault), never beside the
    // log: whoever can write the store could have planted one there.
    let (audit_path, default_key) = audit::default_paths(store.root(), opts.audit_log.as_deref());
    let key_path = opts.audit_key.clone().unwrap_or(default_key);
    log::info!(
        "audit log {}, key {}",
        audit_path.display(),
        key_path.display()
    );
    // A log in the store is opened in `.tvault` as the store gate opens it: never through a
    // link a store writer planted there.
    let opened = match opts.audit_log {
        None => store
            .audit_dir()
            .map_err(DaemonError::from)
            .and_then(|dir| {
                AuditLog::open_in(dir, &audit_path, &key_path, opts.audit_max_size)
                    .map_err(DaemonError::from)
            }),
        Some(_) => {
            AuditLog::open(&audit_path, &key_path, opts.audit_max_size).map_err(DaemonError::from)
        }
    };
    let audit = match opened {
        Ok(log) => Arc::new(log),
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    let access = Arc::new(Access::new());
    let shared = Core::new(
        store,
        access,
        opts.cache_bytes,
        opts.read_only,
        audit.clone(),
    );
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("tvault:{}", store_path.display())),
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
            .detail(format!("store={}", store_path.display()))
    };
    audit.record(&mount_event(EventKind::Mount))?;
    let daemon_info =
        json!({"pid": std::process::id(), "socket": socket, "mountpoint": mountpoint});
    // Through the store gate: a link planted at daemon.json is replaced, never written through.
    if let Err(e) = shared
        .store
        .write_meta(DAEMON_FILE, daemon_info.to_string().as_bytes(), 0o644)
    {
        log::info!("cannot write {DAEMON_FILE}: {e}");
    }
    on_ready();
    let result = session.run();
    shared.access.lock_all();
    shared.forget_plaintext();
    let _ = std::fs::remove_file(&socket);
    let _ = shared.store.remove_meta(DAEMON_FILE);
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
    result.map_err(|source| DaemonError::Mount {
        path: display,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let m = parse_mountinfo_line(
            "36 35 0:52 / /mnt/a\\040b rw,nosuid shared:1 master:2 - fuse.tvault tvault:/s rw,user_id=0",
        )
        .unwrap();
        assert_eq!(m.point, Path::new("/mnt/a b"));
        assert_eq!(m.dev, "0:52");
        assert_eq!(m.fstype, "fuse.tvault");
        assert!(parse_mountinfo_line("garbage").is_none());
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }
}
