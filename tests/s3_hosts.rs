//! Two hosts on one `s3://` store: two daemons (two mountpoints, two host ids, two state
//! directories) against a real S3-compatible server (s3s-fs) on loopback. What one host
//! changes the other sees at its next open, whole; each host's audit chain is mirrored into
//! the bucket, and `tvault audit s3://... --verify` verifies both with the collected keys.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mount::*;
use common::s3::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;

/// Host `id`'s settings: the server's, its own state directory and its host id.
fn host_env(server: &S3Server, state: &Path, id: &str) -> Vec<(String, String)> {
    let mut env = server.env();
    env.push((
        tensorvault::audit::STATE_DIR_ENV.into(),
        state.to_str().unwrap().into(),
    ));
    env.push(("TVAULT_HOST_ID".into(), id.into()));
    env
}

/// `uid`'s view of REL through `fx`: its bytes, or None if it cannot be read.
fn read(fx: &MountFixture, uid: u32, rel: &str) -> Option<Vec<u8>> {
    let out = fx.as_uid(uid, "cat", &[s(&fx.mnt.join(rel))], "");
    out.status.success().then_some(out.stdout)
}

/// Until `f` holds, for at most 3 s (the kernel caches entries and attributes for 1 s).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(3), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_as(fx: &MountFixture, uid: u32, rel: &str, data: &[u8]) {
    let src = fx.plain_file(&format!("src-{}", data.len()), data);
    let out = fx.as_uid(uid, "cp", &[s(&src), s(&fx.mnt.join(rel))], "");
    assert!(out.status.success(), "write {rel}: {}", stderr(&out));
}

#[test]
fn two_hosts_on_one_s3_store_see_each_others_changes_and_both_chains_verify() {
    let server = S3Server::start();
    let store = server.store("shared", "cluster");
    store.init_with_users();
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env_a = host_env(&server, state_a.path(), "a");
    let mut a = MountFixture::for_store(store.url.clone().into(), env_a.clone());
    let mut b = MountFixture::for_store(
        store.url.clone().into(),
        host_env(&server, state_b.path(), "b"),
    );
    // Store commands run on host a: their audit notes go to a's daemon, into a's chain.
    let cli = S3Store {
        url: store.url.clone(),
        dir: store.dir.clone(),
        env: env_a,
    };
    a.mount(&["--host-id", "a"]);
    b.mount(&["--host-id", "b"]);
    for fx in [&a, &b] {
        fx.unlock(ALICE, "pw-alice");
        fx.unlock(BOB, "pw-bob");
    }

    // A write on one host, then a rewrite on the other: each is seen at the next open.
    let v1 = b"version one, written on host a".to_vec();
    write_as(&a, ALICE, "f.txt", &v1);
    eventually("b sees a's write", || {
        read(&b, ALICE, "f.txt") == Some(v1.clone())
    });
    let v2 = pseudo_random(300_000, 2);
    write_as(&b, ALICE, "f.txt", &v2);
    eventually("a sees b's rewrite", || {
        read(&a, ALICE, "f.txt") == Some(v2.clone())
    });

    // put --force and a grant by the command line; both hosts follow, whole.
    let v3 = pseudo_random(2 << 20, 3);
    let src = a.plain_file("v3.bin", &v3);
    cli.ok(
        &[
            "put",
            &store.url,
            s(&src),
            "--to",
            "alice",
            "--as",
            "f.txt",
            "--force",
        ],
        "",
    );
    for fx in [&a, &b] {
        eventually("the put is seen", || {
            read(fx, ALICE, "f.txt") == Some(v3.clone())
        });
        assert_eq!(read(fx, BOB, "f.txt"), None, "bob has no slot yet");
    }
    cli.ok(
        &["grant", &store.url, "f.txt", "bob", "--user", "alice"],
        "pw-alice\n",
    );
    eventually("bob reads on b after the grant", || {
        read(&b, BOB, "f.txt") == Some(v3.clone())
    });

    // A delete on a is seen on b.
    let out = a.as_uid(ALICE, "rm", &[s(&a.mnt.join("f.txt"))], "");
    assert!(out.status.success(), "{}", stderr(&out));
    eventually("b sees the delete", || !b.mnt.join("f.txt").exists());

    // Each host's chain is in the bucket after unmount; both verify with both keys.
    a.unmount();
    b.unmount();
    for id in ["a", "b"] {
        assert!(
            store
                .dir
                .join(format!(".tvault/audit/{id}.jsonl"))
                .is_file(),
            "host {id}'s chain is mirrored into the store"
        );
    }
    let keys = tempfile::tempdir().unwrap();
    for state in [state_a.path(), state_b.path()] {
        for (path, bytes) in files_under(&state.join("audit-keys")) {
            fs::write(keys.path().join(path.file_name().unwrap()), bytes).unwrap();
        }
    }
    let report = store.ok(
        &["audit", &store.url, "--verify", "--keys", s(keys.path())],
        "",
    );
    assert!(
        report.contains("a: ok:") && report.contains("b: ok:"),
        "{report}"
    );
    let merged: Vec<serde_json::Value> = store
        .ok(&["audit", &store.url, "--json"], "")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for id in ["a", "b"] {
        assert!(
            merged.iter().any(|e| e["host"] == id),
            "host {id}'s entries are merged in"
        );
    }
    assert!(
        merged
            .iter()
            .any(|e| e["event"] == "grant" && e["host"] == "a"),
        "the grant is in a's chain"
    );
}
