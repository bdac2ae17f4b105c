//! The audit log of a real mount: one line per decision, tamper evidence, fail-closed.

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

    let log = fx.store.join(".tvault/audit.jsonl");
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
    let log = fx.store.join(".tvault/audit.jsonl");
    let rotated = fx.store.join(".tvault/audit.jsonl.1");
    assert!(rotated.exists(), "rotation happened");
    let opens = of_event(&entries(&rotated), "open").len() + of_event(&entries(&log), "open").len();
    assert_eq!(opens, 2 * 12 * 5);
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
    let all = entries(&fx.store.join(".tvault/audit.jsonl"));
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
    let all = entries(&fx.store.join(".tvault/audit.jsonl"));
    for event in ["create", "write-open", "rename", "unlink"] {
        let found = of_event(&all, event);
        assert_eq!(found.len(), 1, "{event}: {all:#?}");
        assert_eq!(found[0]["decision"], "allow");
        assert_eq!(found[0]["uid"], ALICE);
    }
    assert_eq!(of_event(&all, "rename")[0]["target"], "b");
}
