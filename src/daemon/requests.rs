//! Answers the control socket's requests (unlock, lock, status, umount, audit notes).

use super::*;

/// Why the daemon refused a control request; the `Display` is the reply's error text.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
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
    #[error("{0}: {1}")]
    Why(String, crate::fs::FsError),
}

pub(super) struct DaemonControl {
    pub shared: Arc<Core>,
    pub audit: Arc<AuditLog>,
    pub unmount: Arc<Unmount>,
    /// The daemon's own uid: it may see every session and unmount, like root.
    pub owner_uid: u32,
    pub read_only: bool,
    pub store_path: PathBuf,
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
        // Only the caller's own, whoever calls: a uid's denials say which files it tried,
        // and the audit log already shows everyone's to whoever may read it.
        let denials: Vec<_> = s
            .denials_of(peer.uid)
            .into_iter()
            .map(|d| {
                let mut out = json!({
                    "time": audit::format_time(d.last),
                    "op": d.op,
                    "path": d.path,
                    "reason": d.reason,
                    "count": d.count,
                });
                // As `why` reports a mode denial: what was missing where, and whom to ask.
                if let Some(m) = &d.mode {
                    out["detail"] = json!(m.to_string());
                    out["owner"] = json!(m.owner.as_deref().unwrap_or("root"));
                    out["mode"] = json!(format!("{:04o}", m.mode));
                    out["entry"] = json!(m.path);
                }
                out
            })
            .collect();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "store": self.store_path.display().to_string(),
            "mountpoint": self.unmount.mountpoint.display().to_string(),
            "pid": std::process::id(),
            "read_only": self.read_only,
            "unlocked": users,
            "open_files": open,
            "uid": peer.uid,
            "denials": denials,
            "cache": {
                "bytes": s.cache.bytes(),
                "capacity": s.cache.capacity(),
                "buffer_bytes": s.buffer_bytes(),
                "metadata_bytes": s.metadata_bytes(),
                "hits": load(&s.cache.hits),
                "misses": load(&s.cache.misses),
            },
            "copies": {
                "bytes": s.copy_bytes().0,
                "budget": s.copy_bytes().1,
                "passthrough": s.passthrough_available(),
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

impl DaemonControl {
    /// `tvault why`: the fs core's verdicts for the peer, each with its reason code and the
    /// reason in words (the CLI adds the fix, which names the mountpoint).
    fn why(&self, peer: Peer, path: &str) -> Result<Value, Refusal> {
        let caller = Caller {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid as u32,
        };
        let why = self
            .shared
            .why_path(caller, path)
            .map_err(|e| Refusal::Why(path.to_string(), e))?;
        let verdict = |v: &Verdict| match v {
            Verdict::Allowed => json!({"allowed": true}),
            Verdict::Denied(d) => {
                let mut out =
                    json!({"allowed": false, "reason": d.code(), "detail": d.to_string()});
                if let Denial::Mode(m) = d {
                    out["owner"] = json!(m.owner.as_deref().unwrap_or("root"));
                    out["mode"] = json!(format!("{:04o}", m.mode));
                    out["entry"] = json!(m.path);
                }
                out
            }
            Verdict::Failed(e) => json!({
                "allowed": false,
                "reason": errno_reason(e.errno()),
                "detail": e.to_string(),
            }),
        };
        let answer = |a: &Answer| {
            let mut out = verdict(&a.verdict);
            if let Some(also) = &a.also {
                out["also"] = verdict(also);
            }
            out
        };
        let session = self.shared.access.session(peer.uid);
        Ok(json!({
            "path": path,
            "store": self.store_path.display().to_string(),
            "uid": peer.uid,
            "user": session.map(|s| s.name.clone()),
            "kind": match why.kind {
                Some(crate::fs::Kind::Dir) => "directory",
                Some(crate::fs::Kind::File) => "file",
                Some(crate::fs::Kind::Symlink) => "symbolic link",
                None => "entry",
            },
            "read": answer(&why.read),
            "write": answer(&why.write),
        }))
    }
}

/// Reason codes for the errors (not decisions) `tvault why` can meet.
fn errno_reason(errno: i32) -> &'static str {
    match errno {
        libc::EROFS => "read-only",
        libc::ENOENT => "not-found",
        libc::EMFILE | libc::ENFILE => "too-many-open-files",
        _ => "error",
    }
}

impl Handler for DaemonControl {
    type Error = Refusal;

    fn handle(&self, peer: Peer, request: &Request) -> Result<Value, Refusal> {
        let comm = crate::system::process_comm(peer.pid as u32).unwrap_or_default();
        match request {
            Request::Unlock { passphrase } => {
                let before = self.shared.access.session(peer.uid).map(|s| s.name.clone());
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
                        // A session under another keyring replaced the old one, which is
                        // locked: its handles, passthrough ones included, are cut off.
                        if before.is_some_and(|name| name != user) {
                            self.shared.invalidate_open_files_of(peer.uid);
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
            Request::Why { path } => self.why(peer, path),
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
                    "chown" => EventKind::Chown,
                    "chmod" => EventKind::Chmod,
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
