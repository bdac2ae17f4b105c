//! Audit before effect, by construction. Every open and every change to the mount runs
//! through [`Core::change`]: it decides (`authorize`, which has no effect), records the
//! decision, and only then acts. An allowed operation whose record cannot be written is
//! refused (`EACCES`, fail closed); a denial is recorded with its true reason. The acting
//! step receives a [`Recorded`] proof, which only `change` can make, and every helper that
//! changes the store or what a process can read asks for one: a handler cannot act first.

use std::sync::Arc;

use super::error::{FsError, FsResult};
use super::{Caller, Core};
use crate::access::{Denial, UserSession};
use crate::audit::{AuditError, AuditLog, Event, EventKind};

/// Where decisions are recorded: the audit log (tests use one that fails on demand).
pub trait Recorder: Send + Sync {
    fn record(&self, event: &Event) -> Result<(), AuditError>;
}

impl Recorder for AuditLog {
    fn record(&self, event: &Event) -> Result<(), AuditError> {
        AuditLog::record(self, event)
    }
}

/// Proof that an allowed operation was recorded before it acts.
pub(super) struct Recorded(());

/// Why an operation does not go ahead.
pub(super) enum Refusal {
    /// A decision against the caller: recorded as a denial with `Denial::code()`.
    Denied(Denial),
    /// Nothing was decided (no such file, a name the mount never shows, an I/O error, a
    /// bound reached): not recorded, answered with its errno.
    Failed(FsError),
}

impl From<FsError> for Refusal {
    fn from(e: FsError) -> Refusal {
        Refusal::Failed(e)
    }
}

/// For checks outside `Core::change` (lookups, `access`): the errno, nothing recorded.
impl From<Refusal> for FsError {
    fn from(r: Refusal) -> FsError {
        match r {
            Refusal::Denied(d) => d.into(),
            Refusal::Failed(e) => e,
        }
    }
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Refusal {
        Refusal::Denied(d)
    }
}

/// What `authorize` grants: the unlocked user, and what the acting step needs.
pub(super) struct Allowed<A> {
    pub user: Arc<UserSession>,
    pub value: A,
}

/// One operation as the audit log names it.
pub(super) struct Op<'a> {
    pub kind: EventKind,
    pub caller: Caller,
    pub path: &'a str,
    pub target: Option<&'a str>,
    pub flags: Option<i32>,
}

impl<'a> Op<'a> {
    pub fn new(kind: EventKind, caller: Caller, path: &'a str) -> Self {
        Op {
            kind,
            caller,
            path,
            target: None,
            flags: None,
        }
    }

    pub fn target(mut self, target: &'a str) -> Self {
        self.target = Some(target);
        self
    }

    pub fn flags(mut self, flags: i32) -> Self {
        self.flags = Some(flags);
        self
    }

    fn event(&self) -> Event {
        let mut e = Event::from_pid(self.kind, self.caller.pid)
            .uid(self.caller.uid)
            .path(self.path);
        if let Some(target) = self.target {
            e = e.target(target);
        }
        if let Some(flags) = self.flags {
            e = e.open_flags(flags);
        }
        e
    }
}

impl Core {
    /// Authorize → record → act (see the module doc).
    pub(super) fn change<A, T>(
        &self,
        op: Op<'_>,
        authorize: impl FnOnce() -> Result<Allowed<A>, Refusal>,
        act: impl FnOnce(Allowed<A>, &Recorded) -> FsResult<T>,
    ) -> FsResult<T> {
        let opening = matches!(op.kind, EventKind::Open | EventKind::WriteOpen);
        let allowed = match authorize() {
            Ok(allowed) => allowed,
            Err(Refusal::Failed(e)) => return Err(e),
            Err(Refusal::Denied(denial)) => {
                if opening {
                    Core::count(&self.stats.opens_denied);
                }
                self.record_denial(&op, &denial);
                return Err(denial.into());
            }
        };
        let event = op.event().user(&allowed.user.name).allow();
        if self.audit.record(&event).is_err() {
            // The reason is logged by the audit log.
            if opening {
                Core::count(&self.stats.opens_denied);
            }
            return Err(FsError::new(libc::EACCES));
        }
        if opening {
            Core::count(&self.stats.opens_allowed);
        }
        act(allowed, &Recorded(()))
    }

    /// Records a denial, in the audit log and among the caller's recent denials (which
    /// `tvault status` shows it); one that is an integrity failure is recorded as such too.
    /// All best effort: the operation is refused either way.
    fn record_denial(&self, op: &Op<'_>, denial: &Denial) {
        let _ = self.audit.record(&op.event().deny(denial.code()));
        self.denials
            .note(op.caller.uid, op.kind.as_str(), op.path, denial);
        if let Denial::Integrity(why) = denial {
            log::error!("{}: {why}", op.path);
            let _ = self.audit.record(
                &Event::from_pid(EventKind::IntegrityFailure, op.caller.pid)
                    .uid(op.caller.uid)
                    .path(op.path)
                    .detail(why.to_string()),
            );
        }
    }

    /// The unlocked session of the caller, which every change needs; `EROFS` on a read-only
    /// mount.
    pub(super) fn writer(&self, caller: Caller) -> Result<Arc<UserSession>, Refusal> {
        if self.read_only {
            return Err(FsError::new(libc::EROFS).into());
        }
        self.unlocked(caller)
    }

    /// The unlocked session of the caller: denied `locked` or `no-keyring` otherwise.
    pub(super) fn unlocked(&self, caller: Caller) -> Result<Arc<UserSession>, Refusal> {
        self.access
            .unlocked(&self.store, caller.uid)
            .map_err(Refusal::Denied)
    }
}
