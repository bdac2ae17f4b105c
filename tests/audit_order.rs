//! Audit before effect, through a real mount: a change that cannot be recorded is refused
//! (EACCES) and leaves nothing behind, in the mount and in the store; once the log is
//! writable again the same change works and its record is in the log; and every refused
//! change is recorded with the reason it was refused for. Needs root and /dev/fuse.
//!
//! Recording is made to fail as in `audit_mount.rs`: the log lives on a small tmpfs that is
//! filled up, and opens of a probe file are repeated until one is refused. What is left of
//! the log's last page is then shorter than a line naming the probe file; every change below
//! names a much longer path, so its line cannot fit either.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::mount::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;
/// A uid with no keyring in the store.
const NOBODY: u32 = 1003;

/// The file whose opens probe whether the log still takes lines: its record is short.
const PROBE: &str = "f";

/// A store name whose records are far longer than the probe's.
fn long(tag: &str) -> String {
    format!("{tag}-{}", "n".repeat(120))
}

/// Stores `data` at `rel` for `to` with the CLI (before mounting).
fn put(fx: &MountFixture, rel: &str, data: &[u8], to: &str) {
    put_mode(fx, rel, data, to, 0o644);
}

/// `put` of a source with permission bits `mode`, which the stored file keeps.
fn put_mode(fx: &MountFixture, rel: &str, data: &[u8], to: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let src = fx.plain_file(&format!("src-{}", rel.replace('/', "_")), data);
    fs::set_permissions(&src, fs::Permissions::from_mode(mode)).unwrap();
    ok(&["put", s(&fx.store), s(&src), "--to", to, "--as", rel], "");
}

/// Makes directory `rel` in the store (before mounting), owned by alice: the legacy default
/// of a directory without metadata is root's, which alice could not remove from the sticky
/// root or touch.
fn make_dir(fx: &MountFixture, rel: &str) {
    fs::create_dir(fx.store.join(rel)).unwrap();
    ok(&["chown", s(&fx.store), rel, "alice"], "");
}

/// One entry of the store or of the mount as `snapshot` sees it.
#[derive(Clone, PartialEq, Eq)]
struct Node {
    dir: bool,
    len: u64,
    /// A file's bytes (store only: through the mount only its size is read).
    bytes: Option<Vec<u8>>,
    mtime: SystemTime,
}

type Snapshot = BTreeMap<String, Node>;

/// `root` (as `.`) and every entry under it but the store's own `.tvault`, with the bytes
/// of each file if `read` (the store; through the mount reading would be an open, which is
/// recorded). Directory mtimes show even a temporary file that was made and removed again.
fn snapshot(root: &Path, read: bool) -> Snapshot {
    fn walk(root: &Path, dir: &Path, read: bool, out: &mut Snapshot) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if rel == ".tvault" {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            let node = Node {
                dir: meta.is_dir(),
                len: meta.len(),
                bytes: (read && meta.is_file()).then(|| fs::read(&path).unwrap()),
                mtime: meta.modified().unwrap(),
            };
            out.insert(rel, node);
            if meta.is_dir() {
                walk(root, &path, read, out);
            }
        }
    }
    let mut out = Snapshot::new();
    let meta = fs::metadata(root).unwrap();
    let top = Node {
        dir: true,
        len: meta.len(),
        bytes: None,
        mtime: meta.modified().unwrap(),
    };
    out.insert(".".into(), top);
    walk(root, root, read, &mut out);
    out
}

/// What changed from `before` to `after`, one line per entry.
fn changes(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, a) in before {
        match after.get(rel) {
            None => out.push(format!("{rel}: removed")),
            Some(b) if a.dir != b.dir => out.push(format!("{rel}: changed type")),
            Some(b) => {
                if a.len != b.len {
                    out.push(format!("{rel}: size {} -> {}", a.len, b.len));
                } else if a.bytes != b.bytes {
                    out.push(format!("{rel}: content changed"));
                }
                if a.mtime != b.mtime {
                    out.push(format!(
                        "{rel}: mtime {} -> {}",
                        epoch(a.mtime),
                        epoch(b.mtime)
                    ));
                }
            }
        }
    }
    for (rel, b) in after {
        if !before.contains_key(rel) {
            let what = if b.dir { "directory" } else { "file" };
            out.push(format!("{rel}: {what} added ({} bytes)", b.len));
        }
    }
    out
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// `touch -d 2001-01-01` in whatever time zone the test runs.
fn in_2001(t: SystemTime) -> bool {
    (978_220_800.0..978_480_000.0).contains(&epoch(t))
}

/// Every entry of the audit log and its rotated files, through `tvault audit --json`.
fn log_entries(log: &Path) -> Vec<serde_json::Value> {
    ok(&["audit", s(log), "--rotated", "--json"], "")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The chain of `log` is whole and every entry authenticated.
fn assert_chain_intact(log: &Path) {
    let out = ok(&["audit", s(log), "--rotated", "--verify"], "");
    assert!(
        out.contains("chain intact, every entry authenticated"),
        "{out}"
    );
}

/// How many events a line stands for (`count`, else one).
fn events(entry: &serde_json::Value) -> u64 {
    entry["count"].as_u64().unwrap_or(1)
}

/// One line per entry: the fields these tests look at.
fn brief(entries: &[&serde_json::Value]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "{} {} uid={} path={} target={} reason={} process={} count={}",
                e["event"],
                e["decision"],
                e["uid"],
                e["path"],
                e["target"],
                e["reason"],
                e["process"],
                e["count"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A mount whose audit log is on a small tmpfs that can be filled so that recording fails.
/// Drops in order: the mount, then the tmpfs, then the temporary directory holding both.
struct Unrecordable {
    small: Option<Tmpfs>,
    fx: MountFixture,
    log: PathBuf,
}

impl Unrecordable {
    /// A store with the probe file and what `prepare` adds (for alice), mounted with its log
    /// on a 512 KiB tmpfs, alice unlocked.
    fn new(prepare: impl FnOnce(&MountFixture)) -> Unrecordable {
        let mut fx = MountFixture::new();
        put(&fx, PROBE, b"probe", "alice");
        prepare(&fx);
        let small = Tmpfs::new(fx.path("auditfs"), "512k");
        let log = small.path().join("audit.jsonl");
        fx.mount(&["--audit-log", s(&log)]);
        fx.unlock(ALICE, "pw-alice");
        let u = Unrecordable {
            small: Some(small),
            fx,
            log,
        };
        let out = u.probe();
        assert!(out.status.success(), "probe: {}", stderr(&out));
        u
    }

    fn probe(&self) -> Output {
        self.fx
            .as_uid(ALICE, "cat", &[s(&self.fx.mnt.join(PROBE))], "")
    }

    fn fill_path(&self) -> PathBuf {
        self.small.as_ref().unwrap().path().join("fill")
    }

    /// Fills the log's filesystem, then opens the probe file until an open is refused: from
    /// then on no line at least as long as the probe's fits.
    fn fill(&self) {
        let mut dd = Command::new("dd");
        dd.args([
            "if=/dev/zero",
            &format!("of={}", s(&self.fill_path())),
            "bs=64k",
        ]);
        let out = run(dd, "");
        assert!(
            stderr(&out).contains("No space left on device"),
            "dd: {}",
            stderr(&out)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.probe();
            if !out.status.success() {
                assert!(
                    stderr(&out).contains("Permission denied"),
                    "probe refused for another reason: {}",
                    stderr(&out)
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "opens kept succeeding with a full audit filesystem"
            );
        }
    }

    /// Frees the log's filesystem: opens are recorded (and allowed) again.
    fn free(&self) {
        fs::remove_file(self.fill_path()).unwrap();
        let out = self.probe();
        assert!(
            out.status.success(),
            "opens recover once the log is writable: {}",
            stderr(&out)
        );
    }
}

impl Drop for Unrecordable {
    fn drop(&mut self) {
        self.fx.unmount();
        drop(self.small.take());
    }
}

/// The record a change must leave once it is allowed.
struct Record<'a> {
    event: &'a str,
    path: &'a str,
    target: Option<&'a str>,
    /// The recorded `process` (the command's name), where the command is a fixed binary.
    process: Option<&'a str>,
}

/// The core of the "cannot be recorded" tests: with recording failing, `change` (run as
/// alice) is refused with EACCES and neither the store nor the mount shows any difference,
/// not even once the log is writable again; then the same change succeeds, `effect` checks
/// what it did, and the log holds exactly one allowed record of it and an intact chain.
fn refused_until_recorded(
    prepare: impl FnOnce(&MountFixture),
    change: impl Fn(&MountFixture) -> Output,
    effect: impl FnOnce(&MountFixture),
    record: Record,
) {
    let mut u = Unrecordable::new(prepare);
    u.fill();
    let (store, mount) = (snapshot(&u.fx.store, true), snapshot(&u.fx.mnt, false));
    let out = change(&u.fx);
    let in_store = changes(&store, &snapshot(&u.fx.store, true));
    let in_mount = changes(&mount, &snapshot(&u.fx.mnt, false));
    assert!(
        !out.status.success()
            && stderr(&out).contains("Permission denied")
            && in_store.is_empty()
            && in_mount.is_empty(),
        "with recording failing, {} {}: exit {}, stderr {:?}\nthe store changed: {in_store:#?}\nthe mount changed: {in_mount:#?}",
        record.event,
        record.path,
        out.status,
        stderr(&out)
    );

    u.free();
    let in_store = changes(&store, &snapshot(&u.fx.store, true));
    let in_mount = changes(&mount, &snapshot(&u.fx.mnt, false));
    assert!(
        in_store.is_empty() && in_mount.is_empty(),
        "the refused change took effect later\nin the store: {in_store:#?}\nin the mount: {in_mount:#?}"
    );
    let out = change(&u.fx);
    assert!(
        out.status.success(),
        "once recordable, {} {}: {}",
        record.event,
        record.path,
        stderr(&out)
    );
    effect(&u.fx);

    u.fx.unmount();
    let all = log_entries(&u.log);
    let found: Vec<_> = all
        .iter()
        .filter(|e| e["event"] == record.event && e["path"] == record.path)
        .collect();
    let allowed: Vec<_> = found
        .iter()
        .copied()
        .filter(|e| e["decision"] == "allow")
        .collect();
    assert_eq!(
        allowed.len(),
        1,
        "exactly one allowed {} record for {} (the change that took effect); found:\n{}",
        record.event,
        record.path,
        brief(&found)
    );
    let e = allowed[0];
    assert_eq!(e["uid"], ALICE, "{e}");
    if let Some(process) = record.process {
        assert_eq!(e["process"], process, "{e}");
    }
    if let Some(target) = record.target {
        assert_eq!(e["target"], target, "{e}");
    }
    assert_chain_intact(&u.log);
}

fn cat(fx: &MountFixture, rel: &str) -> Vec<u8> {
    let out = fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join(rel))], "");
    assert!(out.status.success(), "cat {rel}: {}", stderr(&out));
    out.stdout
}

fn container(fx: &MountFixture, rel: &str) -> PathBuf {
    fx.store.join(format!("{rel}.tvlt"))
}

const CONTENT: &[u8] = b"alice's weights, unchanged\n";

/// One test per kind of change, all with the same shape (see `refused_until_recorded`).
mod every_change_is_refused_when_it_cannot_be_recorded {
    use super::*;

    #[test]
    fn create() {
        let name = long("new");
        refused_until_recorded(
            |_| {},
            |fx| {
                let path = fx.mnt.join(&name);
                fx.as_uid(ALICE, "sh", &["-c", "echo x > \"$1\"", "sh", s(&path)], "")
            },
            |fx| {
                assert!(container(fx, &name).is_file());
                assert_eq!(cat(fx, &name), b"x\n");
            },
            Record {
                event: "create",
                path: &name,
                target: None,
                process: Some("sh"),
            },
        );
    }

    #[test]
    fn truncate_command() {
        let name = long("trunc");
        refused_until_recorded(
            |fx| put(fx, &name, CONTENT, "alice"),
            |fx| fx.as_uid(ALICE, "truncate", &["-s", "0", s(&fx.mnt.join(&name))], ""),
            |fx| {
                assert_eq!(cat(fx, &name), b"");
                assert_eq!(fs::metadata(fx.mnt.join(&name)).unwrap().len(), 0);
            },
            // coreutils `truncate` opens the file for writing, then calls ftruncate(2).
            Record {
                event: "write-open",
                path: &name,
                target: None,
                process: Some("truncate"),
            },
        );
    }

    #[test]
    fn truncate_by_path() {
        let name = long("trunc");
        refused_until_recorded(
            |fx| put(fx, &name, CONTENT, "alice"),
            |fx| {
                fx.python_as(
                    ALICE,
                    "import os, sys; os.truncate(sys.argv[1], 0)",
                    &[s(&fx.mnt.join(&name))],
                )
            },
            |fx| {
                assert_eq!(cat(fx, &name), b"");
                assert_eq!(fs::metadata(fx.mnt.join(&name)).unwrap().len(), 0);
            },
            // truncate(2): no open, a new version committed by path.
            Record {
                event: "truncate",
                path: &name,
                target: None,
                process: None,
            },
        );
    }

    #[test]
    fn unlink() {
        let name = long("rm");
        refused_until_recorded(
            |fx| put(fx, &name, CONTENT, "alice"),
            |fx| fx.as_uid(ALICE, "rm", &[s(&fx.mnt.join(&name))], ""),
            |fx| {
                assert!(!container(fx, &name).exists());
                assert!(!fx.mnt.join(&name).exists());
            },
            Record {
                event: "unlink",
                path: &name,
                target: None,
                process: Some("rm"),
            },
        );
    }

    #[test]
    fn rename() {
        let (from, to) = (long("from"), long("to"));
        refused_until_recorded(
            |fx| put(fx, &from, CONTENT, "alice"),
            |fx| {
                let (a, b) = (fx.mnt.join(&from), fx.mnt.join(&to));
                fx.as_uid(ALICE, "mv", &[s(&a), s(&b)], "")
            },
            |fx| {
                assert!(!container(fx, &from).exists());
                assert!(container(fx, &to).is_file());
                assert_eq!(cat(fx, &to), CONTENT);
            },
            Record {
                event: "rename",
                path: &from,
                target: Some(&to),
                process: Some("mv"),
            },
        );
    }

    #[test]
    fn mkdir() {
        let name = long("dir");
        refused_until_recorded(
            |_| {},
            |fx| fx.as_uid(ALICE, "mkdir", &[s(&fx.mnt.join(&name))], ""),
            |fx| {
                assert!(fx.store.join(&name).is_dir());
                assert!(fx.mnt.join(&name).is_dir());
            },
            Record {
                event: "mkdir",
                path: &name,
                target: None,
                process: Some("mkdir"),
            },
        );
    }

    #[test]
    fn rmdir() {
        let name = long("dir");
        refused_until_recorded(
            |fx| make_dir(fx, &name),
            |fx| fx.as_uid(ALICE, "rmdir", &[s(&fx.mnt.join(&name))], ""),
            |fx| {
                assert!(!fx.store.join(&name).exists());
                assert!(!fx.mnt.join(&name).exists());
            },
            Record {
                event: "rmdir",
                path: &name,
                target: None,
                process: Some("rmdir"),
            },
        );
    }

    fn touch(fx: &MountFixture, name: &str) -> Output {
        let path = fx.mnt.join(name);
        fx.as_uid(ALICE, "touch", &["-m", "-d", "2001-01-01", s(&path)], "")
    }

    #[test]
    fn set_times_of_a_file() {
        let name = long("touch");
        refused_until_recorded(
            |fx| put(fx, &name, CONTENT, "alice"),
            |fx| touch(fx, &name),
            |fx| {
                let mtime = |p: PathBuf| fs::metadata(p).unwrap().modified().unwrap();
                assert!(in_2001(mtime(container(fx, &name))));
                assert!(in_2001(mtime(fx.mnt.join(&name))));
                assert_eq!(cat(fx, &name), CONTENT);
            },
            Record {
                event: "set-times",
                path: &name,
                target: None,
                process: Some("touch"),
            },
        );
    }

    #[test]
    fn set_times_of_a_directory() {
        let name = long("touchdir");
        refused_until_recorded(
            |fx| make_dir(fx, &name),
            |fx| touch(fx, &name),
            |fx| {
                let mtime = |p: PathBuf| fs::metadata(p).unwrap().modified().unwrap();
                assert!(in_2001(mtime(fx.store.join(&name))));
                assert!(in_2001(mtime(fx.mnt.join(&name))));
            },
            Record {
                event: "set-times",
                path: &name,
                target: None,
                process: Some("touch"),
            },
        );
    }

    #[test]
    fn write() {
        let name = long("write");
        refused_until_recorded(
            |fx| put(fx, &name, CONTENT, "alice"),
            |fx| {
                let of = format!("of={}", s(&fx.mnt.join(&name)));
                fx.as_uid(ALICE, "dd", &[&of, "conv=notrunc", "status=none"], "X")
            },
            |fx| {
                let mut want = CONTENT.to_vec();
                want[0] = b'X';
                assert_eq!(cat(fx, &name), want);
            },
            Record {
                event: "write-open",
                path: &name,
                target: None,
                process: Some("dd"),
            },
        );
    }
}

/// Notes a problem unless `out` is a failure whose stderr names `error`.
fn expect_error(problems: &mut Vec<String>, what: &str, out: &Output, error: &str) {
    if out.status.success() || !stderr(out).contains(error) {
        problems.push(format!(
            "{what}: want \"{error}\", got exit {} and stderr {:?}",
            out.status,
            stderr(out).trim()
        ));
    }
}

/// The changes `each_denial_is_recorded_with_its_true_reason` tries, and the events each
/// must be refused (and recorded) as.
const RM: &str = "rm";
const MV: &str = "mv";
/// coreutils `truncate`: an open for writing, then ftruncate(2).
const TRUNCATE_COMMAND: &str = "truncate -s 0";
/// truncate(2) by path: no open.
const TRUNCATE_BY_PATH: &str = "truncate(2)";
/// `touch` opens the file for writing, then (that refused) sets the times by path.
/// `touch -m` to the current time, which anyone with write permission may ask for (an
/// explicit time only the owner).
const TOUCH_NOW: &str = "touch -m";

fn events_of(change: &str) -> &'static [&'static str] {
    match change {
        RM => &["unlink"],
        MV => &["rename"],
        TRUNCATE_COMMAND => &["write-open"],
        TRUNCATE_BY_PATH => &["truncate"],
        TOUCH_NOW => &["write-open", "set-times"],
        _ => unreachable!("{change}"),
    }
}

/// Runs `change` as `uid` on the mount's `rel` (`mv` moves it to `to`).
fn attempt(fx: &MountFixture, uid: u32, change: &str, rel: &str, to: &str) -> Output {
    let path = fx.mnt.join(rel);
    let path = s(&path);
    match change {
        RM => fx.as_uid(uid, "rm", &[path], ""),
        MV => fx.as_uid(uid, "mv", &[path, s(&fx.mnt.join(to))], ""),
        TRUNCATE_COMMAND => fx.as_uid(uid, "truncate", &["-s", "0", path], ""),
        TRUNCATE_BY_PATH => {
            fx.python_as(uid, "import os, sys; os.truncate(sys.argv[1], 0)", &[path])
        }
        TOUCH_NOW => fx.as_uid(uid, "touch", &["-m", path], ""),
        _ => unreachable!("{change}"),
    }
}

/// What users without a key slot, a keyring or an unlocked one try: each is allowed by the
/// files' modes (0666 in a 0777 root), so the reason is the missing key.
const ALL_CHANGES: &[&str] = &[RM, MV, TRUNCATE_COMMAND, TRUNCATE_BY_PATH, TOUCH_NOW];

/// Changes that `uid` tries on `file` and that must fail with `error`, each recorded as
/// denied with `reason`.
struct Refusal {
    uid: u32,
    file: &'static str,
    /// Where `mv` tries to move it.
    to: &'static str,
    changes: &'static [&'static str],
    error: &'static str,
    reason: &'static str,
}

impl Refusal {
    fn attempt(&self, fx: &MountFixture, problems: &mut Vec<String>) {
        for &change in self.changes {
            let out = attempt(fx, self.uid, change, self.file, self.to);
            let what = format!("uid {}: {change} {}", self.uid, self.file);
            expect_error(problems, &what, &out, self.error);
        }
    }

    /// Each change has a deny of each of its events with `reason`, and no other reason
    /// nor any allow; a rename's names its target.
    fn check(&self, log: &[serde_json::Value], problems: &mut Vec<String>) {
        for &change in self.changes {
            for &event in events_of(change) {
                let found: Vec<_> = log
                    .iter()
                    .filter(|e| {
                        e["uid"] == self.uid && e["event"] == event && e["path"] == self.file
                    })
                    .collect();
                let denied: Vec<_> = found.iter().filter(|e| e["decision"] == "deny").collect();
                let reasons: BTreeSet<&str> =
                    denied.iter().filter_map(|e| e["reason"].as_str()).collect();
                let allowed = found.iter().any(|e| e["decision"] == "allow");
                let untargeted = change == MV && denied.iter().any(|e| e["target"] != self.to);
                if reasons != BTreeSet::from([self.reason]) || allowed || untargeted {
                    problems.push(format!(
                        "uid {} {change} {}: want {event} denied with reason {:?} only, the \
                         log has {event} denials with reasons {reasons:?}{}{}",
                        self.uid,
                        self.file,
                        self.reason,
                        if untargeted {
                            format!(" (not all with target {:?})", self.to)
                        } else {
                            String::new()
                        },
                        if allowed { " and an allow" } else { "" }
                    ));
                }
            }
        }
    }
}

#[test]
fn each_denial_is_recorded_with_its_true_reason() {
    let mut fx = MountFixture::new();
    // Modes that let everyone change these, so that key slots decide who may.
    for f in ["a.bin", "t.bin", "gone.bin"] {
        put_mode(&fx, f, CONTENT, "alice", 0o666);
    }
    ok(&["chmod", s(&fx.store), "", "777"], "");
    // A store writer flips one byte of t.bin's chunk table: alice's slot still opens, the
    // header MAC does not verify.
    let tampered = container(&fx, "t.bin");
    let mut bytes = fs::read(&tampered).unwrap();
    let slots_len = u32::from_le_bytes(bytes[60..64].try_into().unwrap()) as usize;
    let plain_len = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    bytes[64 + slots_len + plain_len + 3] ^= 0x20;
    fs::write(&tampered, &bytes).unwrap();
    let before = snapshot(&fx.store, true);

    // Refused for what the uid lacks: a slot (bob has a keyring, unlocked), a keyring
    // (NOBODY), an unlocked one (alice, locked).
    let no_slot = Refusal {
        uid: BOB,
        file: "a.bin",
        to: "b.bin",
        changes: ALL_CHANGES,
        error: "Permission denied",
        reason: "no-key-slot",
    };
    let no_keyring = Refusal {
        uid: NOBODY,
        reason: "no-keyring",
        ..no_slot
    };
    let locked = Refusal {
        uid: ALICE,
        to: "c.bin",
        reason: "locked",
        ..no_slot
    };
    // A container alice holds a slot for but that does not authenticate: an integrity
    // failure, not a missing slot. (Not `touch`: its open alone records one.)
    let integrity = Refusal {
        uid: ALICE,
        file: "t.bin",
        to: "t2.bin",
        changes: &[RM, MV, TRUNCATE_BY_PATH],
        error: "Input/output error",
        reason: "integrity",
    };

    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let mut problems = Vec::new();
    for refusal in [&no_slot, &no_keyring, &integrity] {
        refusal.attempt(&fx, &mut problems);
    }
    // Names that do not exist: ENOENT, and nothing denied. gone.bin is known to the kernel
    // (looked up just now) when its container is removed behind the mount's back, so the
    // unlink can reach the daemon; missing.bin never existed.
    assert!(fs::metadata(fx.mnt.join("gone.bin")).is_ok());
    fs::remove_file(container(&fx, "gone.bin")).unwrap();
    for (change, rel, to) in [
        (RM, "gone.bin", ""),
        (RM, "missing.bin", ""),
        (MV, "missing.bin", "x.bin"),
    ] {
        let out = attempt(&fx, ALICE, change, rel, to);
        let what = format!("alice: {change} {rel}");
        expect_error(&mut problems, &what, &out, "No such file or directory");
    }
    let out = fx.tvault_as(ALICE, &["lock", s(&fx.mnt)], "");
    assert!(out.status.success(), "lock: {}", stderr(&out));
    locked.attempt(&fx, &mut problems);
    fx.unmount();

    // Nothing that was refused changed the store (gone.bin was removed by the test, and
    // with it the store root's mtime).
    let mut after = snapshot(&fx.store, true);
    after.insert("gone.bin.tvlt".into(), before["gone.bin.tvlt"].clone());
    after.insert(".".into(), before["."].clone());
    let changed = changes(&before, &after);
    if !changed.is_empty() {
        problems.push(format!("refused changes changed the store: {changed:#?}"));
    }

    // Denials are counted, not lost: read once the mount wrote its pending counts.
    let log = host_log(&fx.store);
    let all = log_entries(&log);
    for refusal in [&no_slot, &no_keyring, &integrity, &locked] {
        refusal.check(&all, &mut problems);
    }
    let failures: u64 = all
        .iter()
        .filter(|e| e["event"] == "integrity-failure" && e["path"] == "t.bin")
        .map(events)
        .sum();
    if failures < integrity.changes.len() as u64 {
        problems.push(format!(
            "integrity-failure entries for t.bin: want one per refused change ({}), the \
             log counts {failures}",
            integrity.changes.len()
        ));
    }
    for name in ["missing.bin", "x.bin", "gone.bin"] {
        let found: Vec<_> = all
            .iter()
            .filter(|e| e["path"] == name || e["target"] == name)
            .collect();
        if !found.is_empty() {
            problems.push(format!(
                "{name} does not exist, yet the log has:\n{}",
                brief(&found)
            ));
        }
    }
    let allowed: Vec<_> = all
        .iter()
        .filter(|e| e["decision"] == "allow" && e["path"] == "a.bin")
        .collect();
    if !allowed.is_empty() {
        problems.push(format!("allowed changes of a.bin:\n{}", brief(&allowed)));
    }
    assert_chain_intact(&log);
    let relevant: Vec<_> = all.iter().filter(|e| e["path"].is_string()).collect();
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\nthe log's entries with a path:\n{}",
        problems.len(),
        problems.join("\n"),
        brief(&relevant)
    );
}

/// A process of `uid` that runs `code` (Python), prints a line when ready and waits for a
/// line on stdin before it exits.
struct Held {
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Held {
    fn spawn(uid: u32, code: &str, args: &[&str]) -> Held {
        let (child, out) = spawn_python_as(uid, code, args);
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Held {
            child: Some(child),
            lines,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(COMMAND_TIMEOUT)
            .expect("a line from the held process")
    }

    fn finish(mut self) {
        let mut child = self.child.take().unwrap();
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let out = wait_with_timeout(child, "held process");
        assert!(out.status.success());
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn create_is_recorded_before_the_file_exists() {
    let name = format!("sub/{}", long("created"));
    let mut u = Unrecordable::new(|fx| fs::create_dir(fx.store.join("sub")).unwrap());
    let path = u.fx.mnt.join(&name);
    let create = "import os, sys; os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))";
    u.fill();
    let store = snapshot(&u.fx.store, true);
    let out = u.fx.python_as(ALICE, create, &[s(&path)]);
    assert!(
        stderr(&out).contains("PermissionError"),
        "a create that cannot be recorded is refused: exit {}, {}",
        out.status,
        stderr(&out)
    );
    // Neither the container nor a temporary file of it is in the store, and the mount does
    // not show one.
    let left = changes(&store, &snapshot(&u.fx.store, true));
    assert!(
        left.is_empty(),
        "the refused create left this in the store: {left:#?}"
    );
    let listing: Vec<_> = fs::read_dir(u.fx.mnt.join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listing.is_empty(), "{listing:?}");
    assert!(!path.exists());
    u.free();
    let left = changes(&store, &snapshot(&u.fx.store, true));
    assert!(left.is_empty(), "and not later either: {left:#?}");

    // Recordable again: the record is in the log while the new file is still open, before
    // anything was written to it or it was closed.
    let hold = "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\nprint('created', flush=True)\nsys.stdin.readline()\nos.write(fd, b'x')\nos.close(fd)";
    let held = Held::spawn(ALICE, hold, &[s(&path)]);
    assert_eq!(held.line(), "created");
    let raw = fs::read_to_string(&u.log).unwrap();
    let recorded: Vec<serde_json::Value> = raw
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["event"] == "create" && e["path"] == name.as_str())
        .collect();
    assert_eq!(recorded.len(), 1, "{raw}");
    assert_eq!(recorded[0]["decision"], "allow");
    assert_eq!(recorded[0]["uid"], ALICE);
    held.finish();
    assert!(container(&u.fx, &name).is_file());
    assert_eq!(cat(&u.fx, &name), b"x");
    u.fx.unmount();
    let creates: Vec<_> = log_entries(&u.log)
        .into_iter()
        .filter(|e| e["event"] == "create" && e["path"] == name.as_str())
        .collect();
    assert_eq!(
        creates.len(),
        1,
        "only the create that took effect: {creates:#?}"
    );
    assert_chain_intact(&u.log);
}
