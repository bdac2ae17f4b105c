//! What tvault survives: process hygiene, abuse of the control socket, several users at once,
//! and being killed at random moments.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;

/// A small deterministic generator for delays and choices (fixed seeds, repeatable runs).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fsck_clean(store: &std::path::Path) {
    let out = tvault(
        &["fsck", s(store), "--user", "alice", "--remove-temp"],
        "pw-alice\n",
    );
    assert!(
        out.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn get(store: &std::path::Path, rel: &str) -> Vec<u8> {
    let out = tvault(
        &["get", s(store), rel, "-o", "-", "--user", "alice"],
        "pw-alice\n",
    );
    assert!(
        out.status.success(),
        "get {rel}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn no_core_dumps_and_no_secrets_in_logs() {
    let mut fx = MountFixture::new();
    let marker = b"PLAINTEXT-MARKER-0123456789-do-not-log".repeat(100);
    let src = fx.plain_file("m.bin", &marker);
    ok(&["put", s(&fx.store), s(&src), "--to", "alice"], "");
    fx.mount(&[]); // RUST_LOG=info
    let pid = fx.daemon_pid().unwrap();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    fx.unlock(ALICE, "pw-alice");
    assert!(!fx
        .tvault_as(BOB, &["unlock", s(&fx.mnt)], "pw-wrong-secret\n")
        .status
        .success());
    assert_eq!(
        fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("m.bin"))], "")
            .stdout,
        marker
    );
    let w = fx.python_as(
        ALICE,
        "import sys; open(sys.argv[1],'wb').write(b'WRITTEN-SECRET-abcdef'*50)",
        &[s(&fx.mnt.join("w.bin"))],
    );
    assert!(w.status.success());
    fx.unmount();
    let logs = fx.daemon_log() + &fs::read_to_string(host_log(&fx.store)).unwrap();
    for secret in [
        "pw-alice",
        "pw-wrong-secret",
        "PLAINTEXT-MARKER",
        "WRITTEN-SECRET",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
    let keyring: serde_json::Value =
        serde_json::from_slice(&fs::read(fx.store.join(".tvault/users/alice.json")).unwrap())
            .unwrap();
    let sealed = keyring["sealed_private_key"]["ciphertext"]
        .as_str()
        .unwrap();
    assert!(!logs.contains(sealed));
}

#[test]
fn control_socket_abuse_does_not_stop_other_users() {
    let mut fx = MountFixture::new();
    let src = fx.plain_file("f", b"still served");
    ok(&["put", s(&fx.store), s(&src), "--to", "alice"], "");
    fx.mount(&[]);
    let socket = run(
        {
            let mut c = Command::new(python());
            c.args([
                "-c",
                "import hashlib,os,sys; print(os.path.realpath(sys.argv[1]))",
                s(&fx.mnt),
            ]);
            c
        },
        "",
    );
    let real = stdout(&socket).trim().to_string();
    let code = r#"
import hashlib, socket, sys, threading, time
path = "/run/tvault/" + hashlib.sha256(sys.argv[1].encode()).hexdigest()[:32] + ".sock"
def ask(payload):
    s = socket.socket(socket.AF_UNIX); s.connect(path)
    try:
        s.sendall(payload); s.shutdown(socket.SHUT_WR)
        return s.recv(1 << 20)
    except OSError as e:
        return repr(e).encode()
# Malformed, oversized and forbidden requests get errors (or a cut connection), never a crash.
for payload in [b"garbage\n", b"{}\n", b'{"op":"unlock"}\n', b"x" * 200000, b'{"op":"umount"}\n']:
    print(ask(payload)[:60])
# Then 100 clients that connect and stall (more than this uid's quota).
held = []
for _ in range(100):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path); held.append(s)
    except OSError:
        pass
print("READY", flush=True)
time.sleep(float(sys.argv[2]))
"#;
    let stall = Command::new("setpriv")
        .args(["--reuid=1003", "--regid=1003", "--clear-groups", "--"])
        .arg(python())
        .args(["-c", code, &real, "6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // While uid 1003 stalls its connections, alice unlocks and reads.
    let start = Instant::now();
    fx.unlock(ALICE, "pw-alice");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "unlock waited on the stalled clients"
    );
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("f"))], "")),
        "still served"
    );
    let out = wait_with_timeout(stall, "stalling clients");
    let text = stdout(&out);
    assert!(text.contains("READY"), "{text}{}", stderr(&out));
    assert!(
        !text.contains("\"ok\": true") && !text.contains("\"ok\":true"),
        "{text}"
    );
    assert!(fx.status()["pid"].as_u64().is_some(), "daemon alive");
}

#[test]
fn several_users_reading_writing_and_locking_at_once() {
    let secs: u64 = std::env::var("TVAULT_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let mut fx = MountFixture::new();
    let mut args = vec!["user", "add", s(&fx.store), "carol", "--uid", "1003"];
    args.extend(FAST_KDF);
    ok(&args, "pw-carol\n");
    let shared = pseudo_random(3 << 20, 77);
    let src = fx.plain_file("shared.bin", &shared);
    ok(
        &["put", s(&fx.store), s(&src), "--to", "alice,bob,carol"],
        "",
    );
    fx.mount(&["--cache-size", "8M"]);
    let pid = fx.daemon_pid().unwrap();
    for (uid, pw) in [(ALICE, "pw-alice"), (BOB, "pw-bob"), (1003, "pw-carol")] {
        fx.unlock(uid, pw);
    }
    // Writers keep a model of each file they own and check every read against it.
    let writer = r#"
import hashlib, os, random, sys, time
d, seed, until = sys.argv[1], int(sys.argv[2]), time.time() + float(sys.argv[3])
rng = random.Random(seed); model = {}; ops = 0
while time.time() < until:
    name = f"{d}/w{seed}-{rng.randrange(4)}.bin"
    if rng.random() < 0.5 or name not in model:
        data = rng.randbytes(rng.choice([1, 5000, 65536, 300000]))
        with open(name, "wb") as f: f.write(data)
        model[name] = data
    else:
        assert open(name, "rb").read() == model[name], name
    ops += 1
print(ops)
"#;
    let reader = r#"
import hashlib, sys, time
path, want, until = sys.argv[1], sys.argv[2], time.time() + float(sys.argv[3])
n = 0
while time.time() < until:
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == want
    n += 1
print(n)
"#;
    let want =
        String::from_utf8(Command::new("sha256sum").arg(&src).output().unwrap().stdout).unwrap();
    let want = want.split_whitespace().next().unwrap().to_string();
    let dur = secs.to_string();
    let spawn = |uid: u32, code: &str, args: Vec<String>| {
        Command::new("setpriv")
            .args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &uid.to_string(),
                "--clear-groups",
                "--",
            ])
            .arg(python())
            .arg("-c")
            .arg(code)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mnt = s(&fx.mnt).to_string();
    let shared_path = format!("{mnt}/shared.bin");
    let workers = vec![
        spawn(ALICE, writer, vec![mnt.clone(), "1".into(), dur.clone()]),
        spawn(BOB, writer, vec![mnt.clone(), "2".into(), dur.clone()]),
        spawn(
            ALICE,
            reader,
            vec![shared_path.clone(), want.clone(), dur.clone()],
        ),
        spawn(
            BOB,
            reader,
            vec![shared_path.clone(), want.clone(), dur.clone()],
        ),
    ];
    // Meanwhile carol locks and unlocks; while locked she is refused.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut max_rss_kb = 0u64;
    let mut cycles = 0;
    while Instant::now() < deadline {
        // The kernel sends the release of carol's last `head` after it exits: until the
        // daemon has it, `lock` says the file is still open.
        let since = Instant::now();
        loop {
            let out = fx.tvault_as(1003, &["lock", s(&fx.mnt)], "");
            if out.status.success() {
                break;
            }
            assert!(
                stderr(&out).contains("still open") && since.elapsed() < Duration::from_secs(10),
                "lock: {}",
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!fx
            .as_uid(1003, "head", &["-c", "10", &shared_path], "")
            .status
            .success());
        fx.unlock(1003, "pw-carol");
        assert_eq!(
            fx.as_uid(1003, "head", &["-c", "10", &shared_path], "")
                .stdout,
            &shared[..10]
        );
        cycles += 1;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss = status.lines().find(|l| l.starts_with("VmRSS")).unwrap();
        max_rss_kb = max_rss_kb.max(rss.split_whitespace().nth(1).unwrap().parse().unwrap());
    }
    for w in workers {
        let out = wait_with_timeout(w, "stress worker");
        assert!(out.status.success(), "worker failed: {}", stderr(&out));
        assert!(stdout(&out).trim().parse::<u64>().unwrap() > 0);
    }
    assert!(cycles > 0);
    // The cache is 8 MiB; the daemon's resident memory stays within the cache bound plus a
    // fixed overhead (session buffers, thread stacks, write sessions).
    assert!(
        max_rss_kb < 8 * 1024 + 96 * 1024,
        "daemon RSS {max_rss_kb} KiB"
    );
    fx.unmount();
    fsck_clean(&fx.store);
}

#[test]
fn killed_at_random_moments_the_store_stays_clean() {
    let iterations: u64 = std::env::var("TVAULT_FAULT_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut rng = Lcg(2026);
    let mut fx = MountFixture::new();
    let old = pseudo_random(2 << 20, 1);
    let new = pseudo_random(2 << 20, 2);
    let (old_src, new_src) = (fx.plain_file("old", &old), fx.plain_file("new", &new));
    ok(
        &[
            "put",
            s(&fx.store),
            s(&old_src),
            "--to",
            "alice",
            "--as",
            "f.bin",
        ],
        "",
    );
    let kill_after = |mut cmd: Command, rng: &mut Lcg, stdin: &str| {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _ = std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin.as_bytes());
        std::thread::sleep(Duration::from_micros(rng.below(40_000)));
        let _ = child.kill();
        let _ = child.wait();
    };
    for i in 0..iterations {
        // put --force of a new version, killed at a random moment.
        let mut put = Command::new(TVAULT);
        put.args([
            "put",
            s(&fx.store),
            s(if i % 2 == 0 { &new_src } else { &old_src }),
            "--to",
            "alice",
            "--as",
            "f.bin",
            "--force",
        ]);
        kill_after(put, &mut rng, "");
        let got = get(&fx.store, "f.bin");
        assert!(
            got == old || got == new,
            "put iteration {i}: neither version"
        );
        // grant / revoke --rekey, killed at a random moment.
        let mut cmd = Command::new(TVAULT);
        if i % 2 == 0 {
            cmd.args(["grant", s(&fx.store), "f.bin", "bob", "--user", "alice"]);
        } else {
            cmd.args([
                "revoke",
                s(&fx.store),
                "f.bin",
                "bob",
                "--rekey",
                "--user",
                "alice",
            ]);
        }
        kill_after(cmd, &mut rng, "pw-alice\n");
        let after = get(&fx.store, "f.bin");
        assert_eq!(after, got, "grant/revoke iteration {i} changed the content");
        fsck_clean(&fx.store);
    }
    // A daemon serving a write, killed mid-write.
    for i in 0..iterations / 4 {
        fx.mount(&[]);
        fx.unlock(ALICE, "pw-alice");
        let before = get(&fx.store, "f.bin");
        let data = if before == old { &new_src } else { &old_src };
        let writer = Command::new("setpriv")
            .args([
                "--reuid=1001",
                "--regid=1001",
                "--clear-groups",
                "--",
                "cp",
                s(data),
                s(&fx.mnt.join("f.bin")),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        Command::new("kill")
            .args(["-9", &fx.daemon_pid().unwrap().to_string()])
            .status()
            .unwrap();
        let _ = wait_with_timeout(writer, "writer");
        fx.unmount();
        let got = get(&fx.store, "f.bin");
        assert!(
            got == old || got == new,
            "daemon iteration {i}: neither version"
        );
        fsck_clean(&fx.store);
    }
}

/// A tmpfs of `size` mounted at `dir` for one test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);
impl Tmpfs {
    fn new(dir: std::path::PathBuf, size: &str) -> Self {
        fs::create_dir_all(&dir).unwrap();
        let opts = format!("size={size}");
        assert!(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs", s(&dir)])
            .status()
            .unwrap()
            .success());
        Tmpfs(dir)
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn put_into_a_full_disk_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let small = Tmpfs::new(tmp.path().join("small"), "3m");
    let store = store_with_users(&small.0);
    let keep = tmp.path().join("keep.bin");
    fs::write(&keep, pseudo_random(500_000, 1)).unwrap();
    ok(&["put", s(&store), s(&keep), "--to", "alice"], "");
    let big = tmp.path().join("big.bin");
    fs::write(&big, pseudo_random(5 << 20, 2)).unwrap();
    let err = fails(&["put", s(&store), s(&big), "--to", "alice"], "");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(get(&store, "keep.bin"), fs::read(&keep).unwrap());
    let leftovers: Vec<_> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("tmp-") || n.starts_with("big"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    fsck_clean(&store);
}

#[test]
fn backing_store_turning_read_only_or_vanishing_under_a_mount() {
    let mut fx = MountFixture::new();
    let src = fx.plain_file("f", b"content");
    ok(&["put", s(&fx.store), s(&src), "--to", "alice"], "");
    // The store becomes read-only: reads go on, writes fail with EROFS, nothing hangs.
    assert!(Command::new("mount")
        .args(["--bind", s(&fx.store), s(&fx.store)])
        .status()
        .unwrap()
        .success());
    struct Unbind(std::path::PathBuf);
    impl Drop for Unbind {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let bind = Unbind(fx.store.clone());
    // The audit log lives outside the store so that it stays writable.
    let audit = fx.path("audit.jsonl");
    fx.mount(&["--audit-log", s(&audit)]);
    fx.unlock(ALICE, "pw-alice");
    assert!(Command::new("mount")
        .args(["-o", "remount,ro,bind", s(&fx.store)])
        .status()
        .unwrap()
        .success());
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("f"))], "")),
        "content"
    );
    let code = "import errno,sys\ntry:\n    open(sys.argv[1],'wb').write(b'x')\n    print('ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])";
    let out = fx.python_as(ALICE, code, &[s(&fx.mnt.join("new.bin"))]);
    assert_eq!(stdout(&out).trim(), "EROFS", "{}", stderr(&out));
    let out = fx.python_as(ALICE, code, &[s(&fx.mnt.join("f"))]);
    assert_eq!(stdout(&out).trim(), "EROFS", "{}", stderr(&out));
    drop(bind);
    // The store is moved away and something else put at its path (a link to `/`, say): the
    // daemon holds the store's directory open, so it keeps serving the store it mounted and
    // never follows what now sits at the old path.
    let moved = fx.path("moved-away");
    fs::rename(&fx.store, &moved).unwrap();
    std::os::unix::fs::symlink("/", &fx.store).unwrap();
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("f"))], "")),
        "content"
    );
    let out = fx.as_uid(ALICE, "ls", &[s(&fx.mnt)], "");
    assert_eq!(stdout(&out).trim(), "f", "{}", stderr(&out));
    assert!(
        fx.status()["pid"].as_u64().is_some(),
        "daemon still answers"
    );
    fs::remove_file(&fx.store).unwrap();
    fs::rename(&moved, &fx.store).unwrap();
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("f"))], "")),
        "content"
    );
    fx.unmount();
    assert!(!fx.daemon_log().contains("panic"), "{}", fx.daemon_log());
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    rss_field(pid, "VmHWM:")
}

fn rss_field(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kb * 1024
}

/// Starts `tvault unlock` as `uid`; returns the process and when it started.
fn start_unlock(fx: &MountFixture, uid: u32, passphrase: &str) -> (std::process::Child, Instant) {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        "--",
    ])
    .arg(&fx.bin)
    .args(["unlock", s(&fx.mnt)])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        format!("{passphrase}\n").as_bytes(),
    )
    .unwrap();
    drop(child.stdin.take());
    (child, start)
}

/// Waits for an unlock started by `start_unlock`, asserts it succeeded, returns how long it took.
fn finish_unlock((child, start): (std::process::Child, Instant)) -> Duration {
    let out = wait_with_timeout(child, "unlock");
    let took = start.elapsed();
    assert!(out.status.success(), "unlock: {}", stderr(&out));
    took
}

/// Issue 11, finding 9: unlocks of different uids no longer queue behind one another. While
/// carol's Argon2id (1 GiB, 4 passes: allowed, but seconds) runs, dave's default unlock
/// (64 MiB, 3 passes) takes less than half of carol's time and finishes first; and two
/// unlocks at the 1 GiB cap do not run at once (the daemon's peak memory stays below 2 GiB).
#[test]
fn a_slow_unlock_does_not_delay_other_users() {
    let mut fx = MountFixture::new();
    let users = [
        (
            "carol",
            "1003",
            &["--kdf-memory", "1048576", "--kdf-iterations", "4"][..],
        ),
        (
            "erin",
            "1005",
            &["--kdf-memory", "1048576", "--kdf-iterations", "1"][..],
        ),
        ("dave", "1004", &[][..]),
    ];
    for (name, uid, kdf) in users {
        let mut args = vec!["user", "add", s(&fx.store), name, "--uid", uid];
        args.extend(kdf);
        ok(&args, &format!("pw-{name}\n"));
    }
    let (carol, erin, dave) = (1003, 1005, 1004);
    fx.mount(&[]);
    let pid = fx.daemon_pid().unwrap();
    let dave_alone = finish_unlock(start_unlock(&fx, dave, "pw-dave"));
    let carol_alone = finish_unlock(start_unlock(&fx, carol, "pw-carol"));
    // Carol again; once her Argon2id is filling its memory, dave unlocks.
    let base = rss_field(pid, "VmRSS:");
    let slow = start_unlock(&fx, carol, "pw-carol");
    while rss_field(pid, "VmRSS:") < base + (256 << 20) {
        assert!(
            slow.1.elapsed() < Duration::from_secs(60),
            "carol's KDF never ran"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let dave_during = finish_unlock(start_unlock(&fx, dave, "pw-dave"));
    let mut slow = slow;
    let carol_running = slow.0.try_wait().unwrap().is_none();
    let carol_during = finish_unlock(slow);
    eprintln!(
        "unlock times: dave alone {dave_alone:?}, dave during carol's {dave_during:?}; \
         carol alone {carol_alone:?}, carol with dave {carol_during:?}"
    );
    assert!(
        dave_during < carol_alone / 2,
        "dave's unlock took {dave_during:?} beside carol's ({carol_alone:?} alone)"
    );
    assert!(
        carol_running,
        "carol's unlock ended before dave's ({dave_during:?}): no overlap was tested"
    );
    // Two unlocks at the memory cap at once: the second waits for the first's memory.
    let both = [
        start_unlock(&fx, carol, "pw-carol"),
        start_unlock(&fx, erin, "pw-erin"),
    ];
    let both: Vec<Duration> = both.into_iter().map(finish_unlock).collect();
    let peak = peak_rss(pid);
    eprintln!(
        "carol and erin (1 GiB each) together: {:?} and {:?}; daemon peak RSS {} MiB",
        both[0],
        both[1],
        peak >> 20
    );
    assert!(
        peak < (1u64 << 30) + (768 << 20),
        "daemon peak RSS {} MiB: two 1 GiB unlocks ran at once",
        peak >> 20
    );
}

/// Issue 11, finding 10: a client that sends one byte a second never completes a request,
/// yet used to keep its connection (and so all 16 of its uid's) forever. Every connection is
/// now cut off at the 10 s request deadline, other uids are served meanwhile, and the
/// trickling uid can connect again afterwards.
#[test]
fn trickling_control_clients_are_cut_off_at_the_deadline() {
    let mut fx = MountFixture::new();
    let src = fx.plain_file("f", b"still served");
    ok(&["put", s(&fx.store), s(&src), "--to", "alice"], "");
    let mut args = vec!["user", "add", s(&fx.store), "carol", "--uid", "1003"];
    args.extend(FAST_KDF);
    ok(&args, "pw-carol\n");
    fx.mount(&[]);
    let real = fs::canonicalize(&fx.mnt).unwrap();
    let code = r#"
import hashlib, json, select, socket, sys, time
path = "/run/tvault/" + hashlib.sha256(sys.argv[1].encode()).hexdigest()[:32] + ".sock"
start = time.time(); until = start + float(sys.argv[2])
socks = []
for _ in range(16):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.sendall(b"{"); socks.append(s)
# The uid's quota is full while the 16 are held: a 17th is turned away.
extra = socket.socket(socket.AF_UNIX); extra.connect(path)
extra.sendall(b'{"op":"status"}\n')
print("BUSY", extra.recv(4096).decode().strip(), flush=True)
closed = []
while socks and time.time() < until:
    for s in list(socks):
        try:
            if select.select([s], [], [], 0)[0]:
                closed.append([time.time() - start, s.recv(4096).decode(errors="replace")])
                socks.remove(s)
            else:
                s.sendall(b" ")
        except OSError as e:
            closed.append([time.time() - start, repr(e)]); socks.remove(s)
    time.sleep(1)
print("RESULT", json.dumps({"closed": closed, "still_open": len(socks)}), flush=True)
"#;
    let trickle = Command::new("setpriv")
        .args(["--reuid=1003", "--regid=1003", "--clear-groups", "--"])
        .arg(python())
        .args(["-c", code, s(&real), "40"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Meanwhile another uid unlocks and reads.
    let start = Instant::now();
    fx.unlock(ALICE, "pw-alice");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "alice's unlock waited on the trickling clients"
    );
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("f"))], "")),
        "still served"
    );
    let out = wait_with_timeout(trickle, "trickling clients");
    let text = stdout(&out);
    assert!(
        text.contains("BUSY") && text.contains("too many connections"),
        "{text}{}",
        stderr(&out)
    );
    let result: serde_json::Value = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("{text}{}", stderr(&out)));
    assert_eq!(result["still_open"], 0, "{result}");
    let closed = result["closed"].as_array().unwrap();
    assert_eq!(closed.len(), 16, "{result}");
    let times: Vec<f64> = closed.iter().map(|c| c[0].as_f64().unwrap()).collect();
    let last = times.iter().cloned().fold(0.0, f64::max);
    let first = times.iter().cloned().fold(f64::MAX, f64::min);
    eprintln!("trickling connections cut off after {first:.1} s to {last:.1} s");
    assert!(
        first >= 9.0 && last < 20.0,
        "cut off between {first:.1} s and {last:.1} s: {result}"
    );
    assert!(
        closed.iter().any(|c| c[1]
            .as_str()
            .unwrap_or("")
            .contains("request not complete within 10 s")),
        "{result}"
    );
    // The uid's connections were given back.
    fx.unlock(1003, "pw-carol");
}
