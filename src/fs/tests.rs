//! The core against a temporary store, without root or FUSE: every change is recorded
//! before it takes effect, refused when it cannot be recorded, and every denial is recorded
//! with its true reason.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use super::error::FsResult;
use super::inodes::ROOT;
use super::*;
use crate::audit::{AuditError, Decision, Event, EventKind};
use crate::crypto::KdfParams;
use crate::keyring::Keyring;
use crate::store::SetTime;

pub(super) const ALICE: u32 = 1001;
pub(super) const BOB: u32 = 1002;
/// Has no keyring in the store.
const EVE: u32 = 1003;
const FAST: KdfParams = KdfParams {
    m_kib: 64,
    t: 1,
    p: 1,
};

/// Checks run at the moment an event is recorded (to see the store as it was then).
type Probe = Box<dyn Fn(&Event) + Send + Sync>;

/// A recorder that keeps events, fails on demand, and can look at the store as each event
/// is recorded.
#[derive(Default)]
struct Journal {
    events: Mutex<Vec<Event>>,
    failing: AtomicBool,
    probe: Mutex<Option<Probe>>,
    /// Runs once, at the first event it matches (taken out first, so what it does is
    /// recorded without it): another caller's operation between authorize and act.
    hook: Mutex<Option<Hook>>,
}

/// (which event, what to do then).
type Hook = (Box<dyn Fn(&Event) -> bool + Send>, Box<dyn FnOnce() + Send>);

impl Recorder for Journal {
    fn record(&self, event: &Event) -> Result<(), AuditError> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(AuditError::Io {
                path: PathBuf::from("journal"),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        if let Some(probe) = &*crate::sync::lock(&self.probe) {
            probe(event);
        }
        let hook = {
            let mut hook = crate::sync::lock(&self.hook);
            match hook.take() {
                Some((matches, run)) if matches(event) => Some(run),
                other => {
                    *hook = other;
                    None
                }
            }
        };
        if let Some(run) = hook {
            run();
        }
        crate::sync::lock(&self.events).push(event.clone());
        Ok(())
    }
}

impl Journal {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *crate::sync::lock(&self.events))
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }
}

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) root: PathBuf,
    pub(super) core: Arc<Core>,
    journal: Arc<Journal>,
}

pub(super) fn caller(uid: u32) -> Caller {
    Caller {
        uid,
        gid: uid,
        pid: 0,
    }
}

pub(super) fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::init(&root, 12).unwrap();
    for (user, uid) in [("alice", ALICE), ("bob", BOB)] {
        let (keyring, _) = Keyring::create(user, uid, user.as_bytes(), FAST).unwrap();
        store.add_user(&keyring).unwrap();
    }
    let access = Arc::new(Access::new());
    access.unlock(&store, ALICE, b"alice").unwrap();
    access.unlock(&store, BOB, b"bob").unwrap();
    let journal = Arc::new(Journal::default());
    let core = Core::new(store, access, 16 << 20, false, journal.clone());
    Fixture {
        _dir: dir,
        root,
        core,
        journal,
    }
}

impl Fixture {
    pub(super) fn container(&self, rel: &str) -> PathBuf {
        self.root.join(format!("{rel}.tvlt"))
    }

    /// Writes `data` to a new file `rel` in the root as `uid`.
    pub(super) fn put(&self, uid: u32, rel: &str, data: &[u8]) {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let (_, opened) = self
            .core
            .create(caller(uid), (ROOT, name(rel)), (0o644, 0o022), flags)
            .unwrap();
        assert_eq!(
            self.core.write(opened.fh, 0, data).unwrap() as usize,
            data.len()
        );
        self.core.release(opened.fh).unwrap();
    }

    pub(super) fn ino(&self, rel: &str) -> u64 {
        self.core.lookup(caller(0), ROOT, name(rel)).unwrap().ino
    }

    pub(super) fn read_all(&self, uid: u32, rel: &str) -> FsResult<Vec<u8>> {
        let opened = self.core.open(caller(uid), self.ino(rel), libc::O_RDONLY)?;
        let mut out = Vec::new();
        loop {
            let data = self
                .core
                .read(caller(uid), opened.fh, out.len() as u64, 5000)?;
            if data.as_slice().is_empty() {
                break;
            }
            out.extend_from_slice(data.as_slice());
        }
        self.core.release(opened.fh)?;
        Ok(out)
    }

    fn mtime(path: &Path) -> std::time::SystemTime {
        std::fs::metadata(path).unwrap().modified().unwrap()
    }
}

pub(super) fn errno<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
    r.expect_err("should fail").errno()
}

fn kinds(events: &[Event]) -> Vec<(EventKind, Option<Decision>, Option<String>)> {
    events
        .iter()
        .map(|e| (e.kind, e.decision, e.reason.clone()))
        .collect()
}

fn allowed(kind: EventKind) -> (EventKind, Option<Decision>, Option<String>) {
    (kind, Some(Decision::Allow), None)
}

fn denied(kind: EventKind, reason: &str) -> (EventKind, Option<Decision>, Option<String>) {
    (kind, Some(Decision::Deny), Some(reason.to_string()))
}

#[test]
fn reads_and_writes_round_trip_across_chunks() {
    let fx = fixture();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
    fx.put(ALICE, "f", &data);
    assert_eq!(fx.read_all(ALICE, "f").unwrap(), data);
    assert_eq!(fx.core.getattr(fx.ino("f")).unwrap().size, 20_000);
    // Read-write handle: reads what it wrote before it is committed.
    let rw = fx
        .core
        .open(caller(ALICE), fx.ino("f"), libc::O_RDWR)
        .unwrap();
    fx.core.write(rw.fh, 4090, b"abcdefghij").unwrap();
    let seen = fx.core.read(caller(ALICE), rw.fh, 4088, 14).unwrap();
    assert_eq!(&seen.as_slice()[2..12], b"abcdefghij");
    fx.core.release(rw.fh).unwrap();
    let mut expected = data.clone();
    expected[4090..4100].copy_from_slice(b"abcdefghij");
    assert_eq!(
        fx.read_all(BOB, "f").map_err(|e| e.errno()),
        Err(libc::EACCES)
    );
    assert_eq!(fx.read_all(ALICE, "f").unwrap(), expected);
}

#[test]
fn every_change_is_recorded_before_it_takes_effect() {
    let fx = fixture();
    fx.put(ALICE, "f", b"hello world");
    fx.core
        .mkdir(caller(ALICE), (ROOT, name("d")), (0o755, 0))
        .unwrap();
    fx.journal.take();
    // At the moment each record is written, the change it records has not happened yet.
    let root = fx.root.clone();
    *crate::sync::lock(&fx.journal.probe) = Some(Box::new(move |e: &Event| {
        let path = e.path.clone().unwrap_or_default();
        let container = root.join(format!("{path}.tvlt"));
        match e.kind {
            EventKind::Create => assert!(!container.exists(), "{path} created before its record"),
            EventKind::Mkdir => {
                assert!(!root.join(&path).exists(), "{path} made before its record")
            }
            EventKind::Rmdir => assert!(
                root.join(&path).is_dir(),
                "{path} removed before its record"
            ),
            EventKind::Unlink => assert!(container.exists(), "{path} removed before its record"),
            EventKind::Rename => assert!(container.exists(), "{path} moved before its record"),
            EventKind::SetTimes => {
                assert!(Fixture::mtime(&container) > UNIX_EPOCH + Duration::from_secs(1 << 30))
            }
            _ => {}
        }
    }));
    fx.put(ALICE, "g", b"new");
    fx.core
        .mkdir(caller(ALICE), (ROOT, name("e")), (0o755, 0))
        .unwrap();
    fx.core.rmdir(caller(ALICE), ROOT, name("e")).unwrap();
    let old = SetTime::At(UNIX_EPOCH + Duration::from_secs(1000));
    fx.core
        .setattr(
            caller(ALICE),
            fx.ino("g"),
            None,
            Changes {
                mtime: Some(old),
                ..Default::default()
            },
        )
        .unwrap();
    fx.core
        .rename(caller(ALICE), (ROOT, name("g")), (ROOT, name("h")), false)
        .unwrap();
    fx.core.unlink(caller(ALICE), ROOT, name("h")).unwrap();
    assert_eq!(
        kinds(&fx.journal.take()),
        [
            allowed(EventKind::Create),
            allowed(EventKind::Mkdir),
            allowed(EventKind::Rmdir),
            allowed(EventKind::SetTimes),
            allowed(EventKind::Rename),
            allowed(EventKind::Unlink),
        ]
    );
    assert!(!fx.container("h").exists() && !fx.container("g").exists());
}

#[test]
fn a_change_that_cannot_be_recorded_is_refused_and_leaves_no_trace() {
    let fx = fixture();
    fx.put(ALICE, "f", b"hello world");
    fx.core
        .mkdir(caller(ALICE), (ROOT, name("d")), (0o755, 0))
        .unwrap();
    let (f, d) = (fx.ino("f"), fx.ino("d"));
    let before = std::fs::read(fx.container("f")).unwrap();
    let mtime = Fixture::mtime(&fx.container("f"));
    fx.journal.take();
    fx.journal.fail(true);
    let me = caller(ALICE);
    let create = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    assert_eq!(
        errno(
            fx.core
                .create(me, (ROOT, name("new")), (0o644, 0o022), create)
        ),
        libc::EACCES
    );
    assert_eq!(
        errno(fx.core.mkdir(me, (ROOT, name("e")), (0o755, 0))),
        libc::EACCES
    );
    assert_eq!(errno(fx.core.rmdir(me, ROOT, name("d"))), libc::EACCES);
    assert_eq!(errno(fx.core.unlink(me, ROOT, name("f"))), libc::EACCES);
    let moved = fx
        .core
        .rename(me, (ROOT, name("f")), (ROOT, name("g")), false);
    assert_eq!(errno(moved), libc::EACCES);
    assert_eq!(
        errno(fx.core.setattr(
            me,
            f,
            None,
            Changes {
                size: Some(0),
                ..Default::default()
            }
        )),
        libc::EACCES
    );
    let epoch = Some(SetTime::At(UNIX_EPOCH));
    assert_eq!(
        errno(fx.core.setattr(
            me,
            f,
            None,
            Changes {
                mtime: epoch,
                ..Default::default()
            }
        )),
        libc::EACCES
    );
    assert_eq!(
        errno(fx.core.setattr(
            me,
            d,
            None,
            Changes {
                mtime: epoch,
                ..Default::default()
            }
        )),
        libc::EACCES
    );
    assert_eq!(
        errno(fx.core.open(me, f, libc::O_WRONLY | libc::O_TRUNC)),
        libc::EACCES
    );
    assert_eq!(errno(fx.core.open(me, f, libc::O_RDONLY)), libc::EACCES);
    // Nothing changed in the store, not even a temporary file.
    let mut names: Vec<_> = std::fs::read_dir(&fx.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".tvault", ".tvault-dir", "d", "f.tvlt"]);
    assert_eq!(std::fs::read(fx.container("f")).unwrap(), before);
    assert_eq!(Fixture::mtime(&fx.container("f")), mtime);
    assert!(fx.journal.take().is_empty());
    // And all of it works once recording does.
    fx.journal.fail(false);
    assert_eq!(fx.read_all(ALICE, "f").unwrap(), b"hello world");
    fx.core
        .setattr(
            me,
            f,
            None,
            Changes {
                size: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(fx.read_all(ALICE, "f").unwrap(), b"hello");
    fx.core.rmdir(me, ROOT, name("d")).unwrap();
    assert!(!fx.root.join("d").exists());
}

#[test]
fn each_denial_is_recorded_with_its_true_reason() {
    let fx = fixture();
    fx.put(ALICE, "f", &[7u8; 10_000]);
    // A root without the sticky bit, so that key slots decide removals.
    let open_root = crate::container::Ownership::new(None, 0, 0o777);
    fx.core.store.set_ownership("", &open_root).unwrap();
    fx.journal.take();
    let f = fx.ino("f");
    // Bob is unlocked but holds no slot for alice's file.
    let bob = caller(BOB);
    assert_eq!(errno(fx.core.unlink(bob, ROOT, name("f"))), libc::EACCES);
    let moved = fx
        .core
        .rename(bob, (ROOT, name("f")), (ROOT, name("g")), false);
    assert_eq!(errno(moved), libc::EACCES);
    assert_eq!(
        errno(fx.core.setattr(
            bob,
            f,
            None,
            Changes {
                size: Some(0),
                ..Default::default()
            }
        )),
        libc::EACCES
    );
    assert_eq!(errno(fx.core.open(bob, f, libc::O_RDONLY)), libc::EACCES);
    assert_eq!(
        kinds(&fx.journal.take()),
        [
            denied(EventKind::Unlink, "no-key-slot"),
            denied(EventKind::Rename, "no-key-slot"),
            // The file is alice's 0644: the mode refuses before the slot is looked at.
            denied(EventKind::Truncate, "mode"),
            denied(EventKind::Open, "no-key-slot"),
        ]
    );
    // A uid with no keyring, and alice once locked.
    assert_eq!(
        errno(fx.core.unlink(caller(EVE), ROOT, name("f"))),
        libc::EACCES
    );
    assert_eq!(
        errno(fx.core.mkdir(caller(EVE), (ROOT, name("d")), (0o755, 0))),
        libc::EACCES
    );
    fx.core.access.lock(ALICE);
    assert_eq!(
        errno(fx.core.unlink(caller(ALICE), ROOT, name("f"))),
        libc::EACCES
    );
    assert_eq!(
        kinds(&fx.journal.take()),
        [
            denied(EventKind::Unlink, "no-keyring"),
            denied(EventKind::Mkdir, "no-keyring"),
            denied(EventKind::Unlink, "locked"),
        ]
    );
    fx.core
        .access
        .unlock(&fx.core.store, ALICE, b"alice")
        .unwrap();
    // A name that does not exist decides nothing: ENOENT, no record.
    assert_eq!(
        errno(fx.core.unlink(caller(ALICE), ROOT, name("nope"))),
        libc::ENOENT
    );
    assert!(fx.journal.take().is_empty());
    // A tampered container: an integrity failure, not a missing slot.
    let path = fx.container("f");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        errno(fx.core.unlink(caller(ALICE), ROOT, name("f"))),
        libc::EIO
    );
    assert_eq!(
        kinds(&fx.journal.take()),
        [
            denied(EventKind::Unlink, "integrity"),
            (EventKind::IntegrityFailure, None, None),
        ]
    );
    assert!(path.exists());
}

#[test]
fn a_broken_write_session_fails_its_handles_instead_of_committing() {
    let fx = fixture();
    fx.put(ALICE, "f", b"committed");
    let f = fx.ino("f");
    let opened = fx.core.open(caller(ALICE), f, libc::O_WRONLY).unwrap();
    fx.core.write(opened.fh, 0, b"half-done").unwrap();
    let session = crate::sync::lock(&fx.core.sessions)
        .get(&f)
        .cloned()
        .unwrap();
    // A panic while the session is held (as a bug in sealing would cause).
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = session.with(|_| -> Result<(), session::WriteError> { panic!("bug") });
    }));
    assert!(panicked.is_err());
    drop(session);
    assert_eq!(errno(fx.core.write(opened.fh, 0, b"more")), libc::EIO);
    assert_eq!(errno(fx.core.commit(opened.fh)), libc::EIO);
    assert_eq!(errno(fx.core.release(opened.fh)), libc::EIO);
    assert_eq!(fx.read_all(ALICE, "f").unwrap(), b"committed");
    // No draft is left behind.
    let names: Vec<_> = std::fs::read_dir(&fx.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn names_the_mount_never_shows_cannot_be_made_or_found() {
    let fx = fixture();
    let me = caller(ALICE);
    for hidden in [".tvault", ".tvault-recipients", ".tvault-dir"] {
        assert_eq!(
            errno(fx.core.mkdir(me, (ROOT, name(hidden)), (0o755, 0))),
            libc::EPERM
        );
        assert_eq!(
            errno(fx.core.lookup(caller(0), ROOT, name(hidden))),
            libc::ENOENT
        );
    }
    let long = "x".repeat(251);
    assert_eq!(
        errno(fx.core.mkdir(me, (ROOT, name(&long)), (0o755, 0))),
        libc::ENAMETOOLONG
    );
    assert!(fx.journal.take().is_empty());
    // A link planted in the store is not shown and not followed.
    std::os::unix::fs::symlink("/etc", fx.root.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", fx.root.join("p.tvlt")).unwrap();
    assert_eq!(
        errno(fx.core.lookup(caller(0), ROOT, name("link"))),
        libc::ENOENT
    );
    assert_eq!(
        errno(fx.core.lookup(caller(0), ROOT, name("p"))),
        libc::ENOENT
    );
    let listing = fx.core.readdir(fx.core.opendir(me, ROOT).unwrap()).unwrap();
    let names: Vec<&str> = listing.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, [".", ".."]);
}

#[test]
fn a_file_saved_beside_its_target_and_renamed_over_it_reads_back() {
    // What safetensors' `save_file` does: write a hidden file, close it, rename it over the
    // target, open the target.
    let fx = fixture();
    fx.put(ALICE, "model", b"old version");
    let _ = fx.read_all(ALICE, "model").unwrap();
    fx.put(ALICE, ".model.tmp", b"new version, longer");
    fx.core
        .rename(
            caller(ALICE),
            (ROOT, name(".model.tmp")),
            (ROOT, name("model")),
            false,
        )
        .unwrap();
    assert_eq!(fx.read_all(ALICE, "model").unwrap(), b"new version, longer");
    assert_eq!(fx.core.getattr(fx.ino("model")).unwrap().size, 19);
}

#[test]
fn a_file_renamed_while_open_for_writing_commits_at_its_new_name() {
    // What `tempfile`'s `persist` does: rename the file, then close it.
    let fx = fixture();
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
    let (_, opened) = fx
        .core
        .create(caller(ALICE), (ROOT, name(".tmp")), (0o644, 0o022), flags)
        .unwrap();
    fx.core
        .write(opened.fh, 0, b"written before the rename")
        .unwrap();
    fx.core
        .rename(
            caller(ALICE),
            (ROOT, name(".tmp")),
            (ROOT, name("model")),
            false,
        )
        .unwrap();
    fx.core.release(opened.fh).unwrap();
    assert_eq!(
        fx.read_all(ALICE, "model").unwrap(),
        b"written before the rename"
    );
    assert!(!fx.container(".tmp").exists());
}

#[test]
fn commits_do_not_leak_descriptors() {
    let fx = fixture();
    fx.put(ALICE, "f", b"v0");
    let f = fx.ino("f");
    let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = open_fds();
    for i in 0..200u32 {
        let opened = fx
            .core
            .open(caller(ALICE), f, libc::O_WRONLY | libc::O_TRUNC)
            .unwrap();
        fx.core.write(opened.fh, 0, &i.to_le_bytes()).unwrap();
        fx.core.release(opened.fh).unwrap();
    }
    // Other tests in this process open files meanwhile; a leak per commit would be 200.
    let after = open_fds();
    assert!(
        after < before + 100,
        "{before} descriptors before, {after} after"
    );
    assert_eq!(fx.read_all(ALICE, "f").unwrap(), 199u32.to_le_bytes());
}

#[test]
fn a_create_racing_another_create_does_not_replace_the_file_it_made() {
    let fx = fixture();
    // Between alice's create being authorized (no file there) and its act, bob creates
    // the same name and writes to it. Alice holds no slot for bob's file: her create must
    // not replace it.
    let core = fx.core.clone();
    *crate::sync::lock(&fx.journal.hook) = Some((
        Box::new(|e: &Event| {
            e.kind == EventKind::Create
                && e.uid == Some(ALICE)
                && e.decision == Some(Decision::Allow)
        }),
        Box::new(move || {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
            let (_, opened) = core
                .create(caller(BOB), (ROOT, name("f")), (0o644, 0o022), flags)
                .unwrap();
            core.write(opened.fh, 0, b"bob's weights").unwrap();
            core.release(opened.fh).unwrap();
        }),
    ));
    let flags = libc::O_WRONLY | libc::O_CREAT;
    let created = fx
        .core
        .create(caller(ALICE), (ROOT, name("f")), (0o644, 0o022), flags);
    assert_eq!(errno(created), libc::EEXIST);
    assert_eq!(fx.read_all(BOB, "f").unwrap(), b"bob's weights");
}

#[test]
fn a_rename_onto_a_free_name_does_not_replace_a_file_made_there_meanwhile() {
    let fx = fixture();
    fx.put(ALICE, "a", b"alice's");
    fx.journal.take();
    // Alice's rename is authorized with nothing at "b"; before it acts, bob creates "b".
    // Alice holds no slot for it: replacing it is not what was authorized.
    let core = fx.core.clone();
    *crate::sync::lock(&fx.journal.hook) = Some((
        Box::new(|e: &Event| e.kind == EventKind::Rename && e.decision == Some(Decision::Allow)),
        Box::new(move || {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
            let (_, opened) = core
                .create(caller(BOB), (ROOT, name("b")), (0o644, 0o022), flags)
                .unwrap();
            core.write(opened.fh, 0, b"bob's weights").unwrap();
            core.release(opened.fh).unwrap();
        }),
    ));
    let renamed = fx
        .core
        .rename(caller(ALICE), (ROOT, name("a")), (ROOT, name("b")), false);
    assert_eq!(errno(renamed), libc::EEXIST);
    assert_eq!(fx.read_all(BOB, "b").unwrap(), b"bob's weights");
    assert_eq!(fx.read_all(ALICE, "a").unwrap(), b"alice's");
}

#[test]
fn a_key_is_remembered_only_once_its_mac_verified() {
    let fx = fixture();
    fx.put(ALICE, "g", &[1u8; 5000]);
    let alice = fx.core.access.session(ALICE).unwrap();
    let keys = alice.cached_keys();
    let path = fx.container("g");
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    // The slot unwraps (it is outside the MAC), but the header MAC fails: nothing remembered.
    assert_eq!(
        fx.read_all(ALICE, "g").map_err(|e| e.errno()),
        Err(libc::EIO)
    );
    assert_eq!(alice.cached_keys(), keys);
    std::fs::write(&path, &good).unwrap();
    assert_eq!(fx.read_all(ALICE, "g").unwrap(), [1u8; 5000]);
    assert_eq!(alice.cached_keys(), keys + 1);
}

#[test]
fn denials_are_kept_for_the_denied_uid_only() {
    let fx = fixture();
    fx.put(ALICE, "f", &[7u8; 100]);
    let f = fx.ino("f");
    assert_eq!(
        errno(fx.core.open(caller(BOB), f, libc::O_RDONLY)),
        libc::EACCES
    );
    assert_eq!(
        errno(fx.core.open(caller(BOB), f, libc::O_RDONLY)),
        libc::EACCES
    );
    assert_eq!(
        errno(fx.core.mkdir(caller(EVE), (ROOT, name("d")), (0o755, 0))),
        libc::EACCES
    );
    let bob = fx.core.denials_of(BOB);
    assert_eq!(bob.len(), 1);
    assert_eq!(
        (bob[0].op, bob[0].path.as_str(), bob[0].reason, bob[0].count),
        ("open", "f", "no-key-slot", 2)
    );
    let eve = fx.core.denials_of(EVE);
    assert_eq!((eve[0].op, eve[0].reason), ("mkdir", "no-keyring"));
    assert!(fx.core.denials_of(ALICE).is_empty());
}

#[test]
fn links_are_made_read_listed_moved_and_removed_without_a_key_slot() {
    let fx = fixture();
    // Open directories, so that key slots (not modes) decide what bob may move.
    let open_root = crate::container::Ownership::new(None, 0, 0o777);
    fx.core.store.set_ownership("", &open_root).unwrap();
    fx.put(ALICE, "f", b"alice's data");
    fx.core
        .mkdir(caller(ALICE), (ROOT, name("d")), (0o777, 0))
        .unwrap();
    fx.journal.take();
    let attr = fx
        .core
        .symlink(caller(ALICE), ROOT, name("l"), b"d/../f")
        .unwrap();
    assert_eq!((attr.kind, attr.perm, attr.size), (Kind::Symlink, 0o777, 6));
    let events = fx.journal.take();
    assert_eq!(kinds(&events), [allowed(EventKind::Symlink)]);
    assert_eq!(events[0].target.as_deref(), Some("d/../f"));
    let l = fx.ino("l");
    assert_eq!(l, attr.ino);
    assert_eq!(fx.core.getattr(l).unwrap().kind, Kind::Symlink);
    // Targets are no secret: anyone reads them, unrecorded, locked or without a keyring.
    fx.core.access.lock(BOB);
    assert_eq!(fx.core.readlink(l).unwrap(), b"d/../f");
    assert!(fx.journal.take().is_empty());
    assert_eq!(errno(fx.core.readlink(fx.ino("f"))), libc::EINVAL);
    // Making one needs a session, like mkdir.
    assert_eq!(
        errno(fx.core.symlink(caller(BOB), ROOT, name("m"), b"f")),
        libc::EACCES
    );
    assert_eq!(
        errno(fx.core.symlink(caller(EVE), ROOT, name("m"), b"f")),
        libc::EACCES
    );
    assert_eq!(
        kinds(&fx.journal.take()),
        [
            denied(EventKind::Symlink, "locked"),
            denied(EventKind::Symlink, "no-keyring")
        ]
    );
    fx.core.access.unlock(&fx.core.store, BOB, b"bob").unwrap();
    // One name, one kind.
    for taken in ["f", "d", "l"] {
        assert_eq!(
            errno(fx.core.symlink(caller(ALICE), ROOT, name(taken), b"x")),
            libc::EEXIST
        );
    }
    assert_eq!(
        errno(fx.core.mkdir(caller(ALICE), (ROOT, name("l")), (0o755, 0))),
        libc::EEXIST
    );
    let create = libc::O_WRONLY | libc::O_CREAT;
    assert_eq!(
        errno(
            fx.core
                .create(caller(ALICE), (ROOT, name("l")), (0o644, 0o022), create)
        ),
        libc::EEXIST
    );
    assert_eq!(
        errno(fx.core.rmdir(caller(ALICE), ROOT, name("l"))),
        libc::ENOTDIR
    );
    for bad in [&b""[..], &[b'a'; 4096]] {
        assert!(fx
            .core
            .symlink(caller(ALICE), ROOT, name("m"), bad)
            .is_err());
    }
    // An open that reaches a link (the kernel resolves them first) is refused.
    assert_eq!(
        errno(fx.core.open(caller(ALICE), l, libc::O_RDONLY)),
        libc::ELOOP
    );
    assert_eq!(
        errno(fx.core.open(caller(ALICE), l, libc::O_WRONLY)),
        libc::ELOOP
    );
    let dh = fx.core.opendir(caller(ALICE), ROOT).unwrap();
    let listed: Vec<_> = fx
        .core
        .readdir(dh)
        .unwrap()
        .iter()
        .map(|e| (e.name.clone(), e.kind))
        .collect();
    fx.core.releasedir(dh);
    assert_eq!(
        listed[2..],
        [
            ("d".to_string(), Kind::Dir),
            ("f".to_string(), Kind::File),
            ("l".to_string(), Kind::Symlink)
        ]
    );
    // Times (lutimes: tar x, cp -a) are the link file's.
    let old = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let attr = fx
        .core
        .setattr(
            caller(ALICE),
            l,
            None,
            Changes {
                mtime: Some(SetTime::At(old)),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(attr.mtime, old);
    assert_eq!(Fixture::mtime(&fx.root.join("l.tvln")), old);
    // Bob holds no slot for f, yet moves and removes alice's link (in directories whose
    // modes let him); replacing f by a link needs a slot for f.
    fx.journal.take();
    fx.core
        .rename(
            caller(BOB),
            (ROOT, name("l")),
            (fx.ino("d"), name("l2")),
            false,
        )
        .unwrap();
    assert_eq!(fx.core.readlink(l).unwrap(), b"d/../f", "the inode moved");
    let d = fx.ino("d");
    assert_eq!(
        errno(
            fx.core
                .rename(caller(BOB), (d, name("l2")), (ROOT, name("f")), false)
        ),
        libc::EACCES
    );
    assert_eq!(
        errno(
            fx.core
                .rename(caller(ALICE), (d, name("l2")), (ROOT, name("d")), false)
        ),
        libc::EISDIR
    );
    fx.core
        .mkdir(caller(ALICE), (d, name("e")), (0o755, 0))
        .unwrap();
    assert_eq!(
        errno(
            fx.core
                .rename(caller(ALICE), (d, name("e")), (d, name("l2")), false)
        ),
        libc::ENOTDIR
    );
    assert_eq!(
        kinds(&fx.journal.take()),
        [
            allowed(EventKind::Rename),
            denied(EventKind::Rename, "no-key-slot"),
            allowed(EventKind::Mkdir),
        ]
    );
    fx.core.unlink(caller(BOB), d, name("l2")).unwrap();
    assert_eq!(errno(fx.core.readlink(l)), libc::ENOENT);
    assert!(!fx.root.join("d/l2.tvln").exists());
}

#[test]
fn a_link_and_a_file_replace_each_other_like_two_files() {
    let fx = fixture();
    fx.put(ALICE, "f", b"old file");
    fx.core
        .symlink(caller(ALICE), ROOT, name("l"), b"target")
        .unwrap();
    fx.journal.take();
    // The link replaces the file: the file's container goes.
    let root = fx.root.clone();
    *crate::sync::lock(&fx.journal.probe) = Some(Box::new(move |e: &Event| {
        if e.kind == EventKind::Rename && e.path.as_deref() == Some("l") {
            assert!(root.join("l.tvln").exists(), "moved before its record");
        }
    }));
    fx.core
        .rename(caller(ALICE), (ROOT, name("l")), (ROOT, name("f")), false)
        .unwrap();
    assert_eq!(
        fx.core.lookup(caller(0), ROOT, name("f")).unwrap().kind,
        Kind::Symlink
    );
    assert!(!fx.container("f").exists() && !fx.root.join("l.tvln").exists());
    assert_eq!(
        errno(fx.core.lookup(caller(0), ROOT, name("l"))),
        libc::ENOENT
    );
    // A file replaces the link: the link file goes.
    fx.put(ALICE, "g", b"new file");
    fx.core
        .rename(caller(ALICE), (ROOT, name("g")), (ROOT, name("f")), false)
        .unwrap();
    assert_eq!(
        fx.core.lookup(caller(0), ROOT, name("f")).unwrap().kind,
        Kind::File
    );
    assert!(!fx.root.join("f.tvln").exists());
    assert_eq!(fx.read_all(ALICE, "f").unwrap(), b"new file");
    // RENAME_NOREPLACE refuses either kind at the target.
    fx.core
        .symlink(caller(ALICE), ROOT, name("l"), b"target")
        .unwrap();
    for (from, to) in [("l", "f"), ("f", "l")] {
        assert_eq!(
            errno(
                fx.core
                    .rename(caller(ALICE), (ROOT, name(from)), (ROOT, name(to)), true)
            ),
            libc::EEXIST
        );
    }
    // A symlink that cannot be recorded is refused and leaves nothing.
    fx.journal.fail(true);
    assert_eq!(
        errno(fx.core.symlink(caller(ALICE), ROOT, name("m"), b"x")),
        libc::EACCES
    );
    assert!(!fx.root.join("m.tvln").exists());
}
