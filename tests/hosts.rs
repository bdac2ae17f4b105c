//! Many hosts on one store: two daemons (two mountpoints, two host ids, two state
//! directories: two "hosts") mounting one store on this machine. What one host changes the
//! other sees at its next open, whole; each host writes its own audit chain; `tvault audit
//! STORE --verify` checks them all with the keys collected from each host, and catches a
//! forged, replayed or deleted chain.
//!
//! (No test over NFS: this machine's kernel has neither nfsd nor an NFS client.)

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::mount::*;
use common::*;
use sha2::{Digest, Sha256};

const ALICE: u32 = 1001;
const BOB: u32 = 1002;
const CAROL: u32 = 1003;

/// One "host": a host id, a state directory of its own, and (once mounted) a daemon serving
/// the shared store at a mountpoint of its own.
struct Host {
    id: &'static str,
    state: PathBuf,
    mnt: PathBuf,
    bin: PathBuf,
    log: PathBuf,
    daemon: Option<Child>,
}

impl Host {
    fn new(fx: &MountFixture, id: &'static str) -> Host {
        let state = fx.path(&format!("state-{id}"));
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let mnt = fx.path(&format!("mnt-{id}"));
        fs::create_dir(&mnt).unwrap();
        fs::set_permissions(&mnt, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Host {
            id,
            state,
            mnt,
            bin: fx.bin.clone(),
            log: fx.path(&format!("daemon-{id}.log")),
            daemon: None,
        }
    }

    /// `tvault ARGS` as root on this host (the build's binary: the fixture's fresh copy,
    /// for other uids, may still be held open by a process forked meanwhile).
    fn tvault(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = Command::new(TVAULT);
        cmd.args(args)
            .env("RUST_LOG", "error")
            .env(tensorvault::audit::STATE_DIR_ENV, &self.state)
            .env(tensorvault::audit::HOST_ID_ENV, self.id);
        run(cmd, stdin)
    }

    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.tvault(args, stdin);
        assert!(
            out.status.success(),
            "host {}: tvault {args:?}: {}",
            self.id,
            stderr(&out)
        );
        stdout(&out)
    }

    fn mount(&mut self, store: &Path) {
        let log = fs::File::create(&self.log).unwrap();
        let child = Command::new(TVAULT)
            .args(["mount", s(store), s(&self.mnt), "--foreground"])
            .args(["--host-id", self.id])
            .env("RUST_LOG", "info")
            .env(tensorvault::audit::STATE_DIR_ENV, &self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let start = Instant::now();
        // Up once its daemon file is written, just after the mount.
        let info = store
            .join(".tvault/daemons")
            .join(format!("{}.json", self.id));
        while !is_mounted(&self.mnt) || !info.exists() {
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(Child::try_wait) {
                panic!(
                    "host {}: daemon exited with {status}: {}",
                    self.id,
                    self.daemon_log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mount did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn unlock(&self, uid: u32, passphrase: &str) {
        let out = self.unlock_as(uid, passphrase);
        assert!(
            out.status.success(),
            "unlock {uid} on {}: {}",
            self.id,
            stderr(&out)
        );
    }

    fn unlock_as(&self, uid: u32, passphrase: &str) -> Output {
        let mut cmd = setpriv(uid);
        cmd.arg(&self.bin)
            .args(["unlock", s(&self.mnt)])
            .env("RUST_LOG", "error");
        run(cmd, &format!("{passphrase}\n"))
    }

    /// SHA-256 of the file read whole by `uid` through this host's mount; `Err(stderr)` if
    /// the read fails.
    fn read_hash(&self, uid: u32, rel: &str) -> Result<String, String> {
        let mut cmd = setpriv(uid);
        cmd.arg("sha256sum").arg(self.mnt.join(rel));
        let out = run(cmd, "");
        if !out.status.success() {
            return Err(stderr(&out));
        }
        Ok(stdout(&out)
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string())
    }

    fn as_uid(&self, uid: u32, program: &str, args: &[&str]) -> Output {
        let mut cmd = setpriv(uid);
        cmd.arg(program).args(args);
        run(cmd, "")
    }

    fn unmount(&mut self) {
        if is_mounted(&self.mnt) {
            let mut cmd = Command::new(TVAULT);
            cmd.args(["umount", s(&self.mnt)]);
            let _ = run(cmd, "");
        }
        if let Some(mut child) = self.daemon.take() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            let path = std::ffi::CString::new(s(&self.mnt)).unwrap();
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }

    /// This host's key directory for the store (what an auditor collects from it).
    fn key_dir(&self, store: &Path) -> PathBuf {
        self.state.join("audit-keys").join(store_id(store))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Keys of `hosts` copied into one directory, as an auditor collects them.
fn collect_keys(fx: &MountFixture, store: &Path, hosts: &[&Host]) -> PathBuf {
    let dir = fx.path("collected-keys");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for host in hosts {
        for entry in fs::read_dir(host.key_dir(store)).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// Until `f` holds or 3 s (the kernel caches entries and attributes for 1 s) have passed.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(3), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Alice rewrites `rel` (now `before`) through host A many times while bob reads it through
/// host B: every read is one whole version, and B's next open after the last commit sees the
/// last one.
fn rewrites_are_seen_whole(
    fx: &MountFixture,
    (a, b): (&Host, &Host),
    rel: &str,
    before: &[u8],
    versions: &[Vec<u8>],
) {
    let mut known: Vec<String> = versions.iter().map(|v| sha(v)).collect();
    known.push(sha(before));
    let reader = r#"
import hashlib, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
end = time.time() + seconds
while time.time() < end:
    with open(path, "rb") as f:
        print(hashlib.sha256(f.read()).hexdigest(), flush=True)
"#;
    let target = b.mnt.join(rel);
    let mut cmd = setpriv(BOB);
    cmd.arg(python()).args(["-c", reader, s(&target), "4"]);
    let reads = std::thread::spawn(move || run(cmd, ""));
    let sources: Vec<PathBuf> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| fx.plain_file(&format!("version-{i}"), v))
        .collect();
    for round in 0..12 {
        let src = &sources[round % sources.len()];
        let out = a.as_uid(ALICE, "cp", &[s(src), s(&a.mnt.join(rel))]);
        assert!(out.status.success(), "cp on a: {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(150));
    }
    let out = reads.join().unwrap();
    assert!(out.status.success(), "reader on b: {}", stderr(&out));
    let hashes: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert!(hashes.len() > 5, "too few reads: {}", hashes.len());
    for h in &hashes {
        assert!(known.contains(h), "a read on b saw a mix of versions: {h}");
    }
    let last = &sha(&versions[11 % versions.len()]);
    assert_eq!(
        &b.read_hash(BOB, rel).unwrap(),
        last,
        "b's next open sees a's last commit"
    );
}

#[test]
fn two_hosts_see_each_others_changes_whole() {
    let fx = MountFixture::new();
    let store = fx.store.clone();
    let mut a = Host::new(&fx, "host-a");
    let mut b = Host::new(&fx, "host-b");
    let v1 = pseudo_random(3 << 20, 1);
    let src = fx.plain_file("v1", &v1);
    a.ok(
        &[
            "put",
            s(&store),
            s(&src),
            "--to",
            "alice,bob",
            "--as",
            "m/w.bin",
        ],
        "",
    );
    a.mount(&store);
    b.mount(&store);
    // Each daemon has a file of its own, naming its own mountpoint.
    let daemons = store.join(".tvault/daemons");
    for h in [&a, &b] {
        let info: serde_json::Value =
            serde_json::from_slice(&fs::read(daemons.join(format!("{}.json", h.id))).unwrap())
                .unwrap();
        assert_eq!(info["host"], h.id);
        assert_eq!(info["mountpoint"], s(&h.mnt));
    }
    for h in [&a, &b] {
        h.unlock(ALICE, "pw-alice");
        h.unlock(BOB, "pw-bob");
    }
    assert_eq!(b.read_hash(BOB, "m/w.bin").unwrap(), sha(&v1));

    // A rewrite on a, read on b during and after it: whole versions only (same size, so the
    // kernel's cached size never cuts one).
    let versions = [pseudo_random(3 << 20, 2), pseudo_random(3 << 20, 3)];
    rewrites_are_seen_whole(&fx, (&a, &b), "m/w.bin", &v1, &versions);

    // A larger version put by b's administrator, read at once on both hosts, whose kernels
    // still cache the old size with the inode's attributes: each open of a new version makes
    // the kernel forget them, so the read is not cut at the old size.
    let v4 = pseudo_random(5 << 20, 4);
    let src = fx.plain_file("v4", &v4);
    for h in [&a, &b] {
        let out = h.as_uid(BOB, "stat", &[s(&h.mnt.join("m/w.bin"))]);
        assert!(stdout(&out).contains("Size: 3145728"), "{}", stdout(&out));
    }
    b.ok(
        &[
            "put",
            s(&store),
            s(&src),
            "--to",
            "alice,bob",
            "--as",
            "m/w.bin",
            "--force",
        ],
        "",
    );
    assert_eq!(b.read_hash(BOB, "m/w.bin").unwrap(), sha(&v4));
    assert_eq!(a.read_hash(ALICE, "m/w.bin").unwrap(), sha(&v4));

    // Revoke on a: bob's session on b still holds the data key, but the next open on b is
    // refused (the slot is checked at every open).
    a.ok(&["revoke", s(&store), "m/w.bin", "bob"], "");
    let refused = b.read_hash(BOB, "m/w.bin").unwrap_err();
    assert!(refused.contains("Permission denied"), "{refused}");
    // Grant on b (alice's passphrase): bob reads on a again.
    b.ok(
        &["grant", s(&store), "m/w.bin", "bob", "--user", "alice"],
        "pw-alice\n",
    );
    assert_eq!(a.read_hash(BOB, "m/w.bin").unwrap(), sha(&v4));

    // A user added on a unlocks on b; a passphrase changed on a is the one b takes.
    let mut add = vec!["user", "add", s(&store), "carol", "--uid", "1003"];
    add.extend(FAST_KDF);
    a.ok(&add, "pw-carol\n");
    b.unlock(CAROL, "pw-carol");
    a.ok(
        &["grant", s(&store), "m/w.bin", "carol", "--user", "alice"],
        "pw-alice\n",
    );
    assert_eq!(b.read_hash(CAROL, "m/w.bin").unwrap(), sha(&v4));
    let mut passwd = vec!["user", "passwd", s(&store), "carol"];
    passwd.extend(FAST_KDF);
    let new_pass = fx.plain_file("carol-new", b"pw-carol-2\n");
    passwd.extend(["--new-passphrase-file", s(&new_pass)]);
    a.ok(&passwd, "pw-carol\n");
    assert!(
        !b.unlock_as(CAROL, "pw-carol").status.success(),
        "the old passphrase"
    );
    b.unlock(CAROL, "pw-carol-2");

    // Two hosts writing one file at once: the last commit wins, whole, and both hosts agree.
    let x = pseudo_random(4 << 20, 5);
    let y = pseudo_random(4 << 20, 6);
    let (px, py) = (fx.plain_file("x", &x), fx.plain_file("y", &y));
    for _ in 0..4 {
        let (ta, tb) = (a.mnt.join("m/w.bin"), b.mnt.join("m/w.bin"));
        let (px, py) = (px.clone(), py.clone());
        let wa = std::thread::spawn(move || {
            let mut c = setpriv(ALICE);
            c.arg("cp").arg(&px).arg(&ta);
            run(c, "")
        });
        let wb = std::thread::spawn(move || {
            let mut c = setpriv(ALICE);
            c.arg("cp").arg(&py).arg(&tb);
            run(c, "")
        });
        for out in [wa.join().unwrap(), wb.join().unwrap()] {
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let on_a = a.read_hash(ALICE, "m/w.bin").unwrap();
        assert!(on_a == sha(&x) || on_a == sha(&y), "a mix: {on_a}");
        eventually("b reads what a reads", || {
            b.read_hash(ALICE, "m/w.bin").ok() == Some(on_a.clone())
        });
    }

    // Deletes: rm through a's mount, then a container removed from the store directly (what
    // a host without a mount, or another host's administrator, does).
    let out = a.as_uid(ALICE, "rm", &[s(&a.mnt.join("m/w.bin"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually("b no longer finds the file", || {
        b.read_hash(ALICE, "m/w.bin")
            .is_err_and(|e| e.contains("No such file"))
    });
    let src = fx.plain_file("v5", b"five");
    a.ok(
        &["put", s(&store), s(&src), "--to", "alice", "--as", "m/five"],
        "",
    );
    assert_eq!(b.read_hash(ALICE, "m/five").unwrap(), sha(b"five"));
    fs::remove_file(store.join("m/five.tvlt")).unwrap();
    eventually("neither host finds the removed container", || {
        [&a, &b].iter().all(|h| {
            h.read_hash(ALICE, "m/five")
                .is_err_and(|e| e.contains("No such file"))
        })
    });

    // The grants and revokes above went to the daemon of the host that made them.
    b.unmount();
    assert!(
        !daemons.join("host-b.json").exists(),
        "b removed its own file"
    );
    assert!(daemons.join("host-a.json").exists(), "and not a's");
    a.unmount();
    assert!(!daemons.join("host-a.json").exists());
    let chain = |h: &Host| -> Vec<serde_json::Value> {
        fs::read_to_string(store.join(".tvault/audit").join(format!("{}.jsonl", h.id)))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let events = |h: &Host, kind: &str| chain(h).iter().filter(|e| e["event"] == kind).count();
    assert_eq!((events(&a, "revoke"), events(&b, "revoke")), (1, 0));
    assert_eq!((events(&a, "grant"), events(&b, "grant")), (1, 1));
    assert!(chain(&b)[0]["detail"]
        .as_str()
        .unwrap()
        .contains("host=host-b"));

    // Both chains verify together with both hosts' keys...
    let keys = collect_keys(&fx, &store, &[&a, &b]);
    let out = a.ok(&["audit", s(&store), "--verify", "--keys", s(&keys)], "");
    assert!(
        out.contains("host-a: ok:") && out.contains("host-b: ok:"),
        "{out}"
    );
    // ...while host a alone holds only its own: b's chain cannot be authenticated (exit 2).
    let out = a.tvault(&["audit", s(&store), "--verify"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stdout(&out).contains("host-a: ok:"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("host-b: NOT VERIFIED"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("copy host-b.key"), "{}", stdout(&out));
    // The merged listing tags each entry with its host, in time order.
    let merged: Vec<serde_json::Value> = a
        .ok(&["audit", s(&store), "--json"], "")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(merged.len(), chain(&a).len() + chain(&b).len());
    let times: Vec<&str> = merged.iter().map(|e| e["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(merged.iter().any(|e| e["host"] == "host-a"));
    assert!(merged.iter().any(|e| e["host"] == "host-b"));
    let table = a.ok(&["audit", s(&store), "--decision", "allow"], "");
    assert!(table.lines().next().unwrap().starts_with("TIME"), "{table}");
    assert!(table.contains("host-b"), "{table}");
}

/// The adversaries of a shared store's audit (docs/SECURITY.md, "Many hosts"): another host's
/// administrator (a store writer who holds only their own host's key) forging, replaying or
/// deleting a host's chain. Chains written by store commands, without a mount.
#[test]
fn forged_replayed_and_deleted_chains_are_caught() {
    let fx = MountFixture::new();
    let store = fx.store.clone();
    let a = Host::new(&fx, "a");
    let b = Host::new(&fx, "b");
    let src = fx.plain_file("f", b"data");
    a.ok(
        &["put", s(&store), s(&src), "--to", "alice", "--as", "f"],
        "",
    );
    for h in [&a, &b] {
        h.ok(
            &["grant", s(&store), "f", "bob", "--user", "alice"],
            "pw-alice\n",
        );
        h.ok(&["revoke", s(&store), "f", "bob"], "");
    }
    let chain_a = store.join(".tvault/audit/a.jsonl");
    let chain_b = store.join(".tvault/audit/b.jsonl");
    let keys = collect_keys(&fx, &store, &[&a, &b]);
    let verify = || a.tvault(&["audit", s(&store), "--verify", "--keys", s(&keys)], "");
    let out = verify();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // A single file still works as before, with this host's key found from the store's id.
    a.ok(&["audit", s(&chain_a), "--verify"], "");
    let genuine_b = fs::read(&chain_b).unwrap();

    // Host a's administrator forges b's chain: a's own chain under b's name, valid under a's
    // key, fails under b's.
    fs::copy(&chain_a, &chain_b).unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("a: ok:"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("b: FAILED:") && stdout(&out).contains("MAC mismatch"),
        "{}",
        stdout(&out)
    );

    // Replay: b's chain put back as an older copy after b wrote more. The head record
    // collected with b's key says how far b's chain reached.
    fs::write(&chain_b, &genuine_b).unwrap();
    b.ok(
        &["grant", s(&store), "f", "bob", "--user", "alice"],
        "pw-alice\n",
    );
    collect_keys(&fx, &store, &[&a, &b]);
    let out = verify();
    assert!(out.status.success(), "{}", stdout(&out));
    fs::write(&chain_b, &genuine_b).unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("b: FAILED:") && stdout(&out).contains("head record"),
        "{}",
        stdout(&out)
    );

    // Deleting b's chain: its key in the collection names the missing chain.
    fs::remove_file(&chain_b).unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("the store holds no chain for host b"),
        "{}",
        stdout(&out)
    );

    // One edited line in a's chain is caught too.
    let text = fs::read_to_string(&chain_a).unwrap();
    fs::write(&chain_a, text.replacen("\"revoke\"", "\"grant\"", 1)).unwrap();
    let out = verify();
    assert!(stdout(&out).contains("a: FAILED:"), "{}", stdout(&out));
}

#[test]
fn host_ids_are_checked() {
    let fx = MountFixture::new();
    for bad in ["../x", ".hidden", "a b", ""] {
        let out = fx.mount_refused(&["--host-id", bad]);
        assert!(
            stderr(&out).contains("invalid host id"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
    assert!(
        !fx.store.join(".tvault/audit").exists(),
        "nothing was written"
    );
}
