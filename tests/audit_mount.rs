//! The audit log of a real mount: one line per decision (repeated denials counted), tamper
//! evidence, fail-closed, floods by other uids, and a key that the store cannot plant.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::mount::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;
const NOBODY: u32 = 1003;

fn entries(log: &std::path::Path) -> Vec<serde_json::Value> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("well-formed JSON line"))
        .collect()
}

fn of_event<'a>(all: &'a [serde_json::Value], event: &str) -> Vec<&'a serde_json::Value> {
    all.iter().filter(|e| e["event"] == event).collect()
}

/// How many events a line stands for (`count`, else one).
fn events(entry: &serde_json::Value) -> u64 {
    entry["count"].as_u64().unwrap_or(1)
}

/// Every entry of a log and its rotated files, oldest first.
fn all_entries(log: &std::path::Path) -> Vec<serde_json::Value> {
    tensorvault::audit::with_rotated(log)
        .iter()
        .flat_map(|f| entries(f))
        .collect()
}

#[test]
fn every_decision_is_one_audit_line_with_its_fields() {
    let mut fx = MountFixture::new();
    let v = fx.plain_file("v", b"secret weights");
    ok(
        &["put", s(&fx.store), s(&v), "--to", "alice", "--as", "m.bin"],
        "",
    );
    fx.mount(&[]);
    let file = fx.mnt.join("m.bin");
    assert!(!fx.as_uid(ALICE, "cat", &[s(&file)], "").status.success()); // deny: locked
    assert!(!fx
        .tvault_as(ALICE, &["unlock", s(&fx.mnt)], "wrong\n")
        .status
        .success());
    fx.unlock(ALICE, "pw-alice");
    assert!(fx.as_uid(ALICE, "cat", &[s(&file)], "").status.success()); // allow
    assert!(!fx.as_uid(NOBODY, "cat", &[s(&file)], "").status.success()); // deny: no-keyring
    fx.unlock(BOB, "pw-bob");
    assert!(!fx.as_uid(BOB, "cat", &[s(&file)], "").status.success()); // deny: no-key-slot
    assert!(fx
        .tvault_as(ALICE, &["lock", s(&fx.mnt)], "")
        .status
        .success());
    let status = fx.status();
    assert!(
        status["audit"]["entries_written"].as_u64().unwrap() >= 8,
        "{status}"
    );
    fx.unmount();

    let log = host_log(&fx.store);
    let all = entries(&log);
    let opens = of_event(&all, "open");
    assert_eq!(opens.len(), 4, "exactly one line per open: {opens:#?}");
    let find = |uid: u32| opens.iter().find(|e| e["uid"] == uid).copied().unwrap();
    let denied_locked = opens
        .iter()
        .find(|e| e["uid"] == ALICE && e["decision"] == "deny")
        .unwrap();
    assert_eq!(denied_locked["reason"], "locked");
    let allowed = opens.iter().find(|e| e["decision"] == "allow").unwrap();
    assert_eq!(allowed["uid"], ALICE);
    assert_eq!(allowed["user"], "alice");
    assert_eq!(allowed["process"], "cat");
    assert!(
        allowed["exe"].as_str().unwrap().ends_with("/cat"),
        "{allowed}"
    );
    assert_eq!(allowed["path"], "m.bin");
    assert!(
        allowed["flags"].as_str().unwrap().contains("O_RDONLY"),
        "{allowed}"
    );
    assert!(allowed["pid"].as_u64().unwrap() > 0);
    assert!(allowed["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(find(NOBODY)["reason"], "no-keyring");
    assert_eq!(find(BOB)["reason"], "no-key-slot");
    assert_eq!(of_event(&all, "unlock-failed").len(), 1);
    assert_eq!(of_event(&all, "unlock").len(), 2);
    assert_eq!(of_event(&all, "lock").len(), 1);
    assert_eq!(of_event(&all, "mount").len(), 1);
    assert_eq!(of_event(&all, "unmount").len(), 1);
    let verify = ok(&["audit", s(&log), "--verify"], "");
    assert!(verify.contains("chain intact"), "{verify}");
    // The readable table names the process and decision.
    let table = ok(&["audit", s(&log), "--decision", "deny"], "");
    assert!(
        table.contains("no-key-slot") && table.contains("cat"),
        "{table}"
    );
}

#[test]
fn concurrent_opens_keep_the_chain_intact_and_rotation_links_files() {
    let mut fx = MountFixture::new();
    let v = fx.plain_file("v", b"x");
    ok(
        &["put", s(&fx.store), s(&v), "--to", "alice", "--as", "f"],
        "",
    );
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let file = fx.mnt.join("f");
    let batch = |n: usize| {
        let children: Vec<_> = (0..n)
            .map(|i| {
                Command::new("setpriv")
                    .args([
                        "--reuid",
                        if i % 3 == 0 { "1003" } else { "1001" },
                        "--regid",
                        "1001",
                        "--clear-groups",
                        "--",
                    ])
                    .args([
                        "sh",
                        "-c",
                        &format!(
                            "for i in 1 2 3 4 5; do cat {} >/dev/null 2>&1; done",
                            s(&file)
                        ),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            wait_with_timeout(c, "cat batch");
        }
    };
    batch(12);
    // SIGHUP rotates: the new file's first line links to the old file's last hash.
    Command::new("kill")
        .args(["-HUP", &fx.daemon_pid().unwrap().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    batch(12);
    fx.unmount();
    let log = host_log(&fx.store);
    let rotated = host_log(&fx.store).with_extension("jsonl.1");
    assert!(rotated.exists(), "rotation happened");
    let all = all_entries(&log);
    let opens = of_event(&all, "open");
    // Every open is accounted for; uid 1003's identical denials are counted, not repeated.
    assert_eq!(opens.iter().map(|e| events(e)).sum::<u64>(), 2 * 12 * 5);
    let denied: Vec<_> = opens.iter().filter(|e| e["uid"] == NOBODY).collect();
    assert_eq!(denied.iter().map(|e| events(e)).sum::<u64>(), 2 * 4 * 5);
    assert!(denied.len() <= 4, "{denied:#?}");
    let allowed = opens.iter().filter(|e| e["decision"] == "allow").count();
    assert_eq!(
        allowed,
        2 * 8 * 5,
        "every allowed open has a line of its own"
    );
    let verify = ok(&["audit", s(&log), "--verify"], "");
    assert!(verify.contains("chain intact"), "{verify}");
}

#[test]
fn an_unwritable_audit_log_fails_closed() {
    let mut fx = MountFixture::new();
    let v = fx.plain_file("v", b"data");
    ok(
        &["put", s(&fx.store), s(&v), "--to", "alice", "--as", "f"],
        "",
    );
    let small = fx.path("auditfs");
    fs::create_dir(&small).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs", s(&small)])
        .status()
        .unwrap()
        .success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(small.clone());
    let log = small.join("audit.jsonl");
    fx.mount(&["--audit-log", s(&log)]);
    fx.unlock(ALICE, "pw-alice");
    let file = fx.mnt.join("f");
    assert!(fx.as_uid(ALICE, "cat", &[s(&file)], "").status.success());
    // Fill the audit filesystem: opens must now be refused, not go unrecorded.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}/fill", s(&small)), "bs=64k"])
        .stderr(Stdio::null())
        .status();
    // The log's last page may still take a few lines; after that every open is refused.
    let refused = (0..500).find_map(|_| {
        let out = fx.as_uid(ALICE, "cat", &[s(&file)], "");
        (!out.status.success()).then(|| stderr(&out))
    });
    let refused = refused.expect("opens kept succeeding with a full audit filesystem");
    assert!(refused.contains("Permission denied"), "{refused}");
    assert!(
        !fx.as_uid(ALICE, "cat", &[s(&file)], "").status.success(),
        "stays closed"
    );
    fs::remove_file(small.join("fill")).unwrap();
    assert!(
        fx.as_uid(ALICE, "cat", &[s(&file)], "").status.success(),
        "recovers once writable"
    );
    // The failed writes left no broken line behind: the chain is whole.
    fx.unmount();
    let out = ok(&["audit", s(&log), "--rotated", "--verify"], "");
    assert!(
        out.contains("chain intact, every entry authenticated"),
        "{out}"
    );
}

#[test]
fn xattrs_inspect_and_store_changes_while_mounted() {
    let mut fx = MountFixture::new();
    let model = safetensors_bytes(&[("a", "F32", &[64, 64], 4), ("b", "I8", &[10], 1)]);
    let src = fx.plain_file("m.safetensors", &model);
    ok(&["put", s(&fx.store), s(&src), "--to", "alice,bob"], "");
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let file = fx.mnt.join("m.safetensors");
    let out = fx.as_uid(ALICE, "getfattr", &["-d", s(&file)], "");
    let text = stdout(&out);
    assert!(
        text.contains("user.tvault.recipients=\"alice,bob\""),
        "{text}{}",
        stderr(&out)
    );
    assert!(text.contains("user.tvault.chunk_size=\"65536\""), "{text}");
    assert!(text.contains("user.tvault.tensor_count=\"2\""), "{text}");
    assert!(text.contains("user.tvault.header_len="), "{text}");
    // A user who cannot open the file sees no tensor metadata.
    let out = fx.as_uid(NOBODY, "getfattr", &["-d", s(&file)], "");
    assert!(!stdout(&out).contains("tensor_count"), "{}", stdout(&out));
    // inspect works on the mounted (decrypted) view.
    let out = fx.tvault_as(ALICE, &["inspect", s(&file), "--json"], "");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["tensor_count"], 2);
    // A grant and a revoke made while mounted go to the daemon's audit log.
    ok(&["revoke", s(&fx.store), "m.safetensors", "bob"], "");
    ok(
        &[
            "grant",
            s(&fx.store),
            "m.safetensors",
            "bob",
            "--user",
            "alice",
        ],
        "pw-alice\n",
    );
    fx.unmount();
    let all = entries(&host_log(&fx.store));
    let grant = of_event(&all, "grant");
    assert_eq!(grant.len(), 1);
    assert_eq!(grant[0]["path"], "m.safetensors");
    assert_eq!(grant[0]["target"], "bob");
    assert_eq!(of_event(&all, "revoke").len(), 1);
}

#[test]
fn writes_are_audited() {
    let mut fx = MountFixture::new();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let code = "import os,sys; d=sys.argv[1]; open(d+'/a','wb').write(b'1'); open(d+'/a','r+b').write(b'2'); os.rename(d+'/a', d+'/b'); os.unlink(d+'/b')";
    let out = fx.python_as(ALICE, code, &[s(&fx.mnt)]);
    assert!(out.status.success(), "{}", stderr(&out));
    fx.unmount();
    let all = entries(&host_log(&fx.store));
    for event in ["create", "write-open", "rename", "unlink"] {
        let found = of_event(&all, event);
        assert_eq!(found.len(), 1, "{event}: {all:#?}");
        assert_eq!(found[0]["decision"], "allow");
        assert_eq!(found[0]["uid"], ALICE);
    }
    assert_eq!(of_event(&all, "rename")[0]["target"], "b");
}

/// Finding 5 of issue 11: a uid with no keyring looping `open()` wrote 60,556 lines in 10 s
/// and filled a small disk, after which every user's opens were refused.
#[test]
fn a_denial_flood_is_counted_bounded_and_does_not_lock_out_others() {
    let mut fx = MountFixture::new();
    let v = fx.plain_file("v", b"bob's weights");
    ok(
        &["put", s(&fx.store), s(&v), "--to", "bob", "--as", "m.bin"],
        "",
    );
    // A small filesystem for the log, and no size flags: the defaults must be safe.
    let small = Tmpfs::new(fx.path("auditfs"), "2m");
    let log = small.path().join("audit.jsonl");
    fx.mount(&["--audit-log", s(&log)]);
    fx.unlock(BOB, "pw-bob");
    let file = fx.mnt.join("m.bin");
    assert!(fx.as_uid(BOB, "cat", &[s(&file)], "").status.success());

    const OPENS: usize = 20_000;
    const CREATES: usize = 3_000;
    let flood = r#"
import os, sys, time
path, d, opens, creates = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
denied = 0
for i in range(opens):
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError:
        denied += 1
for i in range(creates):
    try:
        os.close(os.open(f"{d}/flood-{i}", os.O_WRONLY | os.O_CREAT, 0o644))
    except PermissionError:
        denied += 1
print(denied)
"#;
    let start = std::time::Instant::now();
    let mut bob_opens = 1;
    let flood_out = std::thread::scope(|scope| {
        let flooder = scope.spawn(|| {
            fx.python_as(
                NOBODY,
                flood,
                &[
                    s(&file),
                    s(&fx.mnt),
                    &OPENS.to_string(),
                    &CREATES.to_string(),
                ],
            )
        });
        // Meanwhile bob keeps working, and every one of his opens is logged.
        while !flooder.is_finished() {
            let out = fx.as_uid(BOB, "cat", &[s(&file)], "");
            assert!(
                out.status.success(),
                "bob refused during the flood: {}",
                stderr(&out)
            );
            assert_eq!(out.stdout, b"bob's weights");
            bob_opens += 1;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        flooder.join().unwrap()
    });
    assert!(flood_out.status.success(), "{}", stderr(&flood_out));
    let denied: u64 = stdout(&flood_out).trim().parse().unwrap();
    assert_eq!(
        denied as usize,
        OPENS + CREATES,
        "every attempt was refused"
    );
    let flood_secs = start.elapsed().as_secs_f64();

    // While still mounted, the counts come out once their windows end and the uid's budget
    // allows: every denial is in the log, in a bounded number of lines.
    let nobody = |all: &[serde_json::Value]| -> (usize, u64) {
        let mine: Vec<_> = all.iter().filter(|e| e["uid"] == NOBODY).collect();
        (mine.len(), mine.iter().map(|e| events(e)).sum())
    };
    let wait = std::time::Instant::now();
    while nobody(&all_entries(&log)).1 < denied {
        assert!(
            wait.elapsed() < std::time::Duration::from_secs(90),
            "counts not written: {:?}",
            nobody(&all_entries(&log))
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let all = all_entries(&log);
    let (lines, counted) = nobody(&all);
    assert_eq!(counted, denied, "nothing dropped, nothing counted twice");
    // At most the burst plus one line per 5 s of the uid's budget (and the counts at close).
    let bound = 60 + (start.elapsed().as_secs_f64() / 5.0).ceil() as usize + 2;
    assert!(
        lines <= bound,
        "{lines} lines by the flooding uid (bound {bound})"
    );
    let suppressed: Vec<_> = all
        .iter()
        .filter(|e| e["event"] == "suppressed" && e["uid"] == NOBODY)
        .collect();
    assert!(
        !suppressed.is_empty(),
        "distinct paths over budget are tallied"
    );
    let bob_lines = all
        .iter()
        .filter(|e| e["uid"] == BOB && e["event"] == "open" && e["decision"] == "allow")
        .count();
    assert_eq!(bob_lines, bob_opens, "each of bob's opens has its own line");
    let bytes: u64 = tensorvault::audit::with_rotated(&log)
        .iter()
        .map(|f| fs::metadata(f).unwrap().len())
        .sum();
    eprintln!(
        "flood: {denied} denials in {flood_secs:.1} s -> {lines} lines by uid {NOBODY} \
         ({} suppressed lines), {bob_lines} allowed opens by bob, log {bytes} bytes in {} file(s)",
        suppressed.len(),
        tensorvault::audit::with_rotated(&log).len()
    );
    assert!(bytes < 256 << 10, "{bytes} bytes");
    // Nothing of bob's was pushed out: the retained chain starts at the log's beginning.
    let out = ok(&["audit", s(&log), "--rotated", "--verify"], "");
    assert!(out.contains("start: the log's first entry"), "{out}");
    let table = ok(&["audit", s(&log), "--rotated", "--user", "1003"], "");
    assert!(
        table.contains("suppressed") && table.contains("COUNT"),
        "{table}"
    );
    fx.unmount();
    let (_, after) = nobody(&all_entries(&log));
    assert_eq!(after, denied, "unmount adds no count twice");
}

/// Finding 6 of issue 11: a store writer replaced the log and the key beside it with a
/// forged chain and key of their own; `--verify` said intact, and the next mount adopted the
/// planted key and appended to the forged chain.
#[test]
fn a_planted_log_and_key_in_the_store_are_not_adopted() {
    const WRITER: u32 = 1004;
    let mut fx = MountFixture::new();
    let v = fx.plain_file("v", b"data");
    ok(
        &["put", s(&fx.store), s(&v), "--to", "alice", "--as", "f"],
        "",
    );
    fx.mount(&[]);
    let key = fx.status()["audit"]["key"].as_str().unwrap().to_string();
    assert!(
        !key.starts_with(s(&fx.store)),
        "the key is kept outside the store: {key}"
    );
    fx.unlock(ALICE, "pw-alice");
    assert!(fx
        .as_uid(ALICE, "cat", &[s(&fx.mnt.join("f"))], "")
        .status
        .success());
    fx.unmount();
    let meta = fx.store.join(".tvault/audit");
    let log = host_log(&fx.store);
    assert!(!meta.join("audit.key").exists());
    ok(&["audit", s(&log), "--verify"], "");

    // Someone who can write the store's .tvault/ plants a chain signed with their own key.
    std::os::unix::fs::chown(&meta, Some(WRITER), Some(WRITER)).unwrap();
    let forge = r#"
import hashlib, hmac, json, os, sys
log, key_path = sys.argv[1], sys.argv[2]
key = os.urandom(32)
prev = os.urandom(32).hex()
lines = []
for seq, event in enumerate([{"event": "mount"},
                             {"event": "open", "uid": 1001, "user": "alice", "path": "f", "decision": "allow"}], 1):
    entry = {"time": "2026-01-01T00:00:00.000Z", "seq": seq, **event, "prev": prev}
    entry["mac"] = hmac.new(key, json.dumps(entry, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()
    line = json.dumps(entry, separators=(",", ":"))
    lines.append(line)
    prev = hashlib.sha256(line.encode()).hexdigest()
os.rename(log, log + ".genuine")
with open(log, "w") as f:
    f.write("\n".join(lines) + "\n")
fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, (key.hex() + "\n").encode())
os.close(fd)
print(prev)
"#;
    // Beside the log, where older versions kept a key.
    let planted = log.with_extension("jsonl.key");
    let out = fx.python_as(WRITER, forge, &[s(&log), s(&planted)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let forged_last = stdout(&out).trim().to_string();
    let forged = fs::read(&log).unwrap();
    // The forgery is a valid chain under its own key (what the old verifier accepted)...
    let trusted_copy = fx.path("planted-copy.key");
    fs::copy(&planted, &trusted_copy).unwrap();
    let out = ok(
        &["audit", s(&log), "--verify", "--key", s(&trusted_copy)],
        "",
    );
    assert!(out.contains("chain intact"), "{out}");
    // ...but not under the log's key, and the planted key itself is refused.
    let err = fails(&["audit", s(&log), "--verify"], "");
    assert!(err.contains("line 1: MAC mismatch"), "{err}");
    let err = fails(&["audit", s(&log), "--verify", "--key", s(&planted)], "");
    assert!(err.contains(&format!("owned by uid {WRITER}")), "{err}");

    // The next mount does not adopt the planted key nor append to the forged chain: it moves
    // the forgery aside and starts a new chain that says why.
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    assert!(fx
        .as_uid(ALICE, "cat", &[s(&fx.mnt.join("f"))], "")
        .status
        .success());
    fx.unmount();
    assert!(
        fx.daemon_log()
            .contains("audit key beside the log is not used"),
        "{}",
        fx.daemon_log()
    );
    assert_eq!(
        fs::read(log.with_extension("jsonl.1")).unwrap(),
        forged,
        "moved aside as it was"
    );
    let fresh = entries(&log);
    assert_eq!(fresh[0]["event"], "rotate");
    assert_eq!(fresh[0]["reason"], "corrupt-tail");
    assert!(
        fresh[0]["detail"]
            .as_str()
            .unwrap()
            .contains("owned by uid 1004"),
        "{}",
        fresh[0]
    );
    assert!(fresh.iter().all(|e| e["prev"] != forged_last.as_str()));
    assert!(of_event(&fresh, "open")
        .iter()
        .any(|e| e["uid"] == ALICE && e["decision"] == "allow"));
    // The new lines are under the real key, not the planted one.
    let err = fails(
        &["audit", s(&log), "--verify", "--key", s(&trusted_copy)],
        "",
    );
    assert!(err.contains("line 1: MAC mismatch"), "{err}");
    // And --verify does not call what happened intact: the current file restarts the chain,
    // and across the files the forgery breaks it.
    let err = fails(&["audit", s(&log), "--verify"], "");
    assert!(err.contains("the chain restarts at seq"), "{err}");
    let err = fails(&["audit", s(&log), "--rotated", "--verify"], "");
    let first_file = format!("{}.1, line 1: MAC mismatch", log.display());
    assert!(err.contains(&first_file), "{err}");
}

#[test]
fn the_daemon_refuses_audit_keys_it_cannot_trust() {
    const WRITER: u32 = 1004;
    let fx = MountFixture::new();
    let good = fx.path("good.key");
    fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
    let mode = |p: &std::path::Path, m: u32| {
        fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    mode(&good, 0o600);
    let refused = |key: &std::path::Path, why: &str| {
        let out = fx.mount_refused(&["--audit-key", s(key)]);
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
        assert!(!is_mounted(&fx.mnt));
    };
    // A key in the store, owned by whoever can write there.
    let planted = fx.store.join(".tvault/audit.key");
    fs::copy(&good, &planted).unwrap();
    std::os::unix::fs::chown(&planted, Some(WRITER), Some(WRITER)).unwrap();
    refused(&planted, "owned by uid 1004");
    // Group or other permission bits.
    let loose = fx.path("loose.key");
    fs::copy(&good, &loose).unwrap();
    mode(&loose, 0o640);
    refused(&loose, "accessible to group or others (mode 640)");
    // A symbolic link, even to a good key.
    let link = fx.path("link.key");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    refused(&link, "symbolic link");
    // A directory others can write (they could swap the key).
    let open_dir = fx.path("open-dir");
    fs::create_dir(&open_dir).unwrap();
    mode(&open_dir, 0o777);
    refused(&open_dir.join("k.key"), "group or others can write it");
    // Nothing was logged through a refused key.
    assert!(!host_log(&fx.store).exists());
}
