//! Owners, groups and modes in the store through the real `tvault` binary: `put --owner`
//! keeps the source's mode and group, `get` restores them, `chown [-R]`, `inspect` shows them,
//! and version 1 files (no ownership record) still read and can be given owners.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use serde_json::Value;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// What `inspect STORE REL --json` shows without a key.
fn inspect(store: &Path, rel: &str) -> Value {
    serde_json::from_str(&ok(&["inspect", s(store), rel, "--json"], "")).unwrap()
}

/// Owner (None: root), gid and mode of a store directory, read from its `.tvault-dir` as
/// docs/FORMAT.md lays it out: "TVDR" ‖ 1 ‖ owner_len ‖ owner ‖ gid u32le ‖ mode u16le.
fn dir_meta(dir: &Path) -> (Option<String>, u32, u16) {
    let b = fs::read(dir.join(".tvault-dir")).unwrap();
    assert_eq!(&b[..5], b"TVDR\x01", "{dir:?}");
    let n = usize::from(b[5]);
    assert_eq!(b.len(), 6 + n + 6, "{dir:?}: nothing after the record");
    let owner = (n > 0).then(|| String::from_utf8(b[6..6 + n].to_vec()).unwrap());
    let gid = u32::from_le_bytes(b[6 + n..10 + n].try_into().unwrap());
    let mode = u16::from_le_bytes(b[10 + n..12 + n].try_into().unwrap());
    (owner, gid, mode)
}

fn get(store: &Path, rel: &str, out: &Path, user: &str) {
    ok(
        &["get", s(store), rel, "-o", s(out), "--user", user],
        &format!("pw-{user}\n"),
    );
}

#[test]
fn put_keeps_mode_and_group_and_get_restores_them() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    assert_eq!(dir_meta(&store), (None, 0, 0o1777), "init: the root");
    let src = tmp.path().join("model");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("config.json"), b"{}\n").unwrap();
    fs::write(src.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
    chmod(&src.join("config.json"), 0o640);
    chmod(&src.join("sub/run.sh"), 0o4755);
    chmod(&src.join("sub"), 0o750);
    // Only root may give a file a group it is not in; the record keeps whatever it has.
    let _ = std::os::unix::fs::chown(src.join("config.json"), None, Some(1234));
    let config_gid = fs::metadata(src.join("config.json")).unwrap().gid();
    let src_meta = fs::metadata(&src).unwrap();
    let (gid, src_mode) = (src_meta.gid(), (src_meta.mode() & 0o7777) as u16);
    ok(
        &[
            "put",
            s(&store),
            s(&src),
            "--to",
            "alice,bob",
            "--owner",
            "bob",
        ],
        "",
    );
    let config = inspect(&store, "model/config.json");
    assert_eq!(
        (&config["owner"], &config["owner_uid"], &config["gid"]),
        (&"bob".into(), &1002.into(), &config_gid.into())
    );
    assert_eq!(config["mode"], "0640");
    assert_eq!(config["version"], 2);
    assert_eq!(config["readers"], serde_json::json!(["alice", "bob"]));
    assert_eq!(inspect(&store, "model/sub/run.sh")["mode"], "4755");
    // Directories made for the files: the owner, the source directory's mode and group.
    assert_eq!(
        dir_meta(&store.join("model")),
        (Some("bob".into()), gid, src_mode)
    );
    assert_eq!(
        dir_meta(&store.join("model/sub")),
        (Some("bob".into()), gid, 0o750)
    );
    let text = ok(&["inspect", s(&store), "model/config.json"], "");
    let line = format!("owner bob (uid 1002), group {config_gid}, mode 0640 -rw-r-----");
    assert!(text.contains(&line), "{text}");

    // get restores the mode bits (never setuid) and, run as root, the owner and group.
    let out = tmp.path().join("config.out");
    get(&store, "model/config.json", &out, "alice");
    let meta = fs::metadata(&out).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!((meta.uid(), meta.gid()), (1002, config_gid));
    }
    let out = tmp.path().join("run.out");
    get(&store, "model/sub/run.sh", &out, "alice");
    assert_eq!(fs::metadata(&out).unwrap().mode() & 0o7777, 0o755);

    // The owner defaults to the first --to user, and must be a user (or root).
    let one = tmp.path().join("one.bin");
    fs::write(&one, b"1").unwrap();
    ok(&["put", s(&store), s(&one), "--to", "alice,bob"], "");
    assert_eq!(inspect(&store, "one.bin")["owner"], "alice");
    let err = fails(
        &[
            "put",
            s(&store),
            s(&one),
            "--to",
            "alice",
            "--as",
            "two.bin",
            "--owner",
            "eve",
        ],
        "",
    );
    assert!(err.contains("no user \"eve\""), "{err}");
    ok(
        &[
            "put",
            s(&store),
            s(&one),
            "--to",
            "alice",
            "--as",
            "root.bin",
            "--owner",
            "root",
        ],
        "",
    );
    let root = inspect(&store, "root.bin");
    assert_eq!(
        (&root["owner"], &root["owner_uid"]),
        (&"root".into(), &0.into())
    );
}

#[test]
fn chown_changes_owners_without_keys_and_recurses() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let src = tmp.path().join("m");
    fs::create_dir_all(src.join("a/b")).unwrap();
    for rel in ["x.bin", "a/y.bin", "a/b/z.bin"] {
        fs::write(src.join(rel), rel).unwrap();
        chmod(&src.join(rel), 0o6750);
    }
    ok(&["put", s(&store), s(&src), "--to", "alice"], "");
    // Not recursive: the directory only.
    let out = ok(&["chown", s(&store), "m", "bob"], "");
    assert!(out.contains("1 of 1 entries changed"), "{out}");
    assert_eq!(dir_meta(&store.join("m")).0.as_deref(), Some("bob"));
    assert_eq!(inspect(&store, "m/x.bin")["owner"], "alice");
    // Recursive: every directory and file, keeping groups and modes (a file loses setuid
    // and setgid, as chown(2) clears them).
    let out = ok(&["chown", s(&store), "m/", "bob", "-R"], "");
    assert!(out.contains("5 of 6 entries changed"), "{out}");
    for dir in ["m/a", "m/a/b"] {
        assert_eq!(
            dir_meta(&store.join(dir)).0.as_deref(),
            Some("bob"),
            "{dir}"
        );
    }
    for rel in ["m/x.bin", "m/a/y.bin", "m/a/b/z.bin"] {
        let v = inspect(&store, rel);
        assert_eq!(
            (&v["owner"], &v["mode"]),
            (&"bob".into(), &"0750".into()),
            "{rel}"
        );
    }
    // Files still decrypt for their readers: only the record changed.
    let out = tmp.path().join("z.out");
    get(&store, "m/a/b/z.bin", &out, "alice");
    assert_eq!(fs::read(&out).unwrap(), b"a/b/z.bin");
    // The store's root (root's since init); a file alone; errors name what is wrong.
    assert_eq!(dir_meta(&store).0, None);
    ok(&["chown", s(&store), "", "bob"], "");
    assert_eq!(dir_meta(&store), (Some("bob".into()), 0, 0o1777));
    ok(&["chown", s(&store), "m/x.bin", "alice"], "");
    assert_eq!(inspect(&store, "m/x.bin")["owner"], "alice");
    let err = fails(&["chown", s(&store), "m/nothing", "bob"], "");
    assert!(err.contains("\"m/nothing\" is not in the store"), "{err}");
    let err = fails(&["chown", s(&store), "m", "eve"], "");
    assert!(err.contains("no user \"eve\""), "{err}");
    // Each change is audited, like grant and revoke.
    let log = host_log(&store);
    let chowns: Vec<Value> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "chown")
        .collect();
    assert_eq!(chowns.len(), 1 + 5 + 1 + 1);
    assert_eq!(chowns[0]["path"], "m");
    assert_eq!(chowns[0]["target"], "bob");
    assert_eq!(chowns[0]["detail"], "from alice");
    ok(&["audit", s(&log), "--verify"], "");
}

/// A store written before owners existed: version 1 containers and directories without
/// `.tvault-dir`. Built from the committed vectors (alice's keyring and a version 1 file).
#[test]
fn version_1_files_still_read_and_are_given_owners() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ok(&["init", s(&store)], "");
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    fs::copy(
        vectors.join("users/alice.json"),
        store.join(".tvault/users/alice.json"),
    )
    .unwrap();
    fs::remove_file(store.join(".tvault-dir")).unwrap();
    fs::create_dir(store.join("old")).unwrap();
    fs::copy(
        vectors.join("two-recipients.tvlt"),
        store.join("old/w.bin.tvlt"),
    )
    .unwrap();
    let before = fs::read(store.join("old/w.bin.tvlt")).unwrap();

    let v = inspect(&store, "old/w.bin");
    assert_eq!(v["version"], 1);
    assert_eq!(
        (&v["owner"], &v["mode"], &v["gid"]),
        (&"alice".into(), &"0644".into(), &0.into())
    );
    let text = ok(&["inspect", s(&store), "old/w.bin"], "");
    assert!(text.contains("version 1 has no ownership record"), "{text}");
    let pass = "correct horse battery staple\n";
    let out = tmp.path().join("w.out");
    ok(
        &[
            "get",
            s(&store),
            "old/w.bin",
            "-o",
            s(&out),
            "--user",
            "alice",
        ],
        pass,
    );
    let plain: Vec<u8> = (0..13288u64).map(|i| ((i + 4) % 251) as u8).collect();
    assert_eq!(fs::read(&out).unwrap(), plain);
    assert_eq!(fs::metadata(&out).unwrap().mode() & 0o7777, 0o644);
    assert!(!store.join("old/.tvault-dir").exists());

    // chown -R from the root gives every entry a record; the data is untouched.
    ok(&["chown", s(&store), "", "alice", "-R"], "");
    assert_eq!(dir_meta(&store), (Some("alice".into()), 0, 0o1777));
    assert_eq!(
        dir_meta(&store.join("old")),
        (Some("alice".into()), 0, 0o1777)
    );
    let v = inspect(&store, "old/w.bin");
    // The first slot's user already owned it: nothing to write.
    assert_eq!(v["version"], 1);
    ok(&["chown", s(&store), "old/w.bin", "root"], "");
    let v = inspect(&store, "old/w.bin");
    assert_eq!((&v["version"], &v["owner"]), (&2.into(), &"root".into()));
    let after = fs::read(store.join("old/w.bin.tvlt")).unwrap();
    let slots = |b: &[u8]| u32::from_le_bytes(b[60..64].try_into().unwrap()) as usize;
    assert_eq!(before[6..60], after[6..60], "header fields but the version");
    assert_eq!(before[64 + slots(&before)..], after[64 + slots(&after)..]);
    ok(
        &[
            "get",
            s(&store),
            "old/w.bin",
            "-o",
            s(&out),
            "--user",
            "alice",
        ],
        pass,
    );
    assert_eq!(fs::read(&out).unwrap(), plain);
    // fsck is clean apart from the keyless user bob named by a slot of the vector.
    let report = ok(&["fsck", s(&store)], "");
    assert!(!report.contains("error"), "{report}");
}
