//! `tvault audit` on logs written through the library, and `tvault access`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use tensorvault::audit::{self, AuditLog, Event, EventKind};

/// Six entries: opens by alice and bob, allowed and denied, and an unlock.
fn write_log(log: &Path, key: &Path) -> String {
    let audit = AuditLog::open(log, key, None).unwrap();
    let events = [
        Event::from_pid(EventKind::Unlock, std::process::id())
            .uid(1001)
            .user("alice")
            .allow(),
        Event::new(EventKind::Open)
            .uid(1001)
            .user("alice")
            .pid(4242)
            .path("m/model.safetensors")
            .open_flags(0)
            .allow(),
        Event::new(EventKind::Open)
            .uid(1002)
            .user("bob")
            .pid(4243)
            .path("m/model.safetensors")
            .open_flags(0)
            .deny("locked"),
        Event::new(EventKind::Open)
            .uid(1001)
            .user("alice")
            .pid(4244)
            .path("other/config.json")
            .open_flags(0)
            .deny("no-key-slot"),
        Event::new(EventKind::Open)
            .uid(1003)
            .pid(4245)
            .path("m/config.json")
            .open_flags(0)
            .deny("no-keyring"),
        Event::new(EventKind::Lock).uid(1001).user("alice"),
    ];
    for event in &events {
        audit.record(event).unwrap();
    }
    let last = audit.last_hash();
    audit.close().unwrap();
    last
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    let key = tmp.path().join("audit.key");
    let last = write_log(&log, &key);
    (tmp, log, key, last)
}

#[test]
fn verify_passes_on_an_untouched_log() {
    let (_tmp, log, key, last) = setup();
    let out = ok(&["audit", s(&log), "--verify", "--key", s(&key)], "");
    assert_eq!(
        out.trim(),
        format!(
            "6 entries, chain intact; last hash {last} (keep it elsewhere to detect tail truncation)"
        )
    );
    // LOG.key beside the log is found without --key.
    fs::rename(&key, audit::default_paths(Path::new("/"), Some(&log)).1).unwrap();
    ok(&["audit", s(&log), "--verify", "--expect-last", &last], "");
    let out = ok(&["audit", s(&log), "--verify", "--json"], "");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["entries"], 6);
    assert_eq!(report["last_hash"], last.as_str());
}

#[test]
fn verify_names_the_broken_line() {
    let (_tmp, log, key, _) = setup();
    let orig = lines(&log);
    let check = |content: Vec<String>, line: u64| {
        put_lines(&log, &content);
        let err = fails(&["audit", s(&log), "--verify", "--key", s(&key)], "");
        assert!(
            err.contains(&format!("{}, line {line}:", log.display())),
            "expected line {line}: {err}"
        );
    };
    let mut edited = orig.clone();
    edited[2] = edited[2].replace("\"locked\"", "\"no-keyring\"");
    check(edited, 3);
    let mut inserted = orig.clone();
    inserted.insert(3, orig[1].clone());
    check(inserted, 4);
    let mut deleted = orig.clone();
    deleted.remove(1);
    check(deleted, 2);
    let mut reordered = orig.clone();
    reordered.swap(3, 4);
    check(reordered, 4);
    put_lines(&log, &orig);
    ok(&["audit", s(&log), "--verify", "--key", s(&key)], "");
}

#[test]
fn cut_tail_is_caught_against_the_recorded_hash() {
    let (_tmp, log, key, last) = setup();
    let orig = lines(&log);
    put_lines(&log, &orig[..4]);
    // On its own the shorter log is a valid chain...
    let out = ok(&["audit", s(&log), "--verify", "--key", s(&key)], "");
    assert!(out.starts_with("4 entries, chain intact"), "{out}");
    // ...but the hash recorded earlier is gone.
    let err = fails(
        &[
            "audit",
            s(&log),
            "--verify",
            "--key",
            s(&key),
            "--expect-last",
            &last,
        ],
        "",
    );
    assert!(err.contains("cut off the end"), "{err}");
}

#[test]
fn default_key_for_a_store_log_and_rotated_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let (log, key) = audit::default_paths(&store, None);
    let audit = AuditLog::open(&log, &key, Some(600)).unwrap();
    for i in 0..6 {
        audit
            .record(
                &Event::new(EventKind::Open)
                    .uid(1001)
                    .path(format!("f{i}"))
                    .allow(),
            )
            .unwrap();
    }
    drop(audit);
    assert!(log.with_file_name("audit.jsonl.1").exists());
    let out = ok(&["audit", s(&log), "--rotated", "--verify"], "");
    assert!(out.contains("chain intact"), "{out}");
    // All six opens are listed across the files, oldest first.
    let out = ok(
        &[
            "audit",
            s(&log),
            "--rotated",
            "--json",
            "--decision",
            "allow",
        ],
        "",
    );
    let paths: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].to_string())
        .collect();
    assert_eq!(paths.len(), 6, "{out}");
    assert_eq!(paths[0], "\"f0\"");
    assert_eq!(paths[5], "\"f5\"");
    // Without a key beside it, --verify asks for one.
    let elsewhere = tmp.path().join("copy.jsonl");
    fs::copy(&log, &elsewhere).unwrap();
    let err = fails(&["audit", s(&elsewhere), "--verify"], "");
    assert!(err.contains("--key"), "{err}");
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn filters_and_json_output() {
    let (_tmp, log, _key, _) = setup();
    let raw = lines(&log);
    // --json prints the lines exactly as stored.
    let out = ok(&["audit", s(&log), "--json"], "");
    assert_eq!(out.lines().collect::<Vec<_>>(), raw);

    let alice = json_lines(&ok(&["audit", s(&log), "--json", "--user", "alice"], ""));
    assert_eq!(alice.len(), 4);
    assert!(alice.iter().all(|e| e["user"] == "alice"));
    let by_uid = json_lines(&ok(&["audit", s(&log), "--json", "--user", "1003"], ""));
    assert_eq!(by_uid.len(), 1);
    assert_eq!(by_uid[0]["reason"], "no-keyring");

    let denied = json_lines(&ok(&["audit", s(&log), "--json", "--decision", "deny"], ""));
    let reasons: Vec<_> = denied.iter().map(|e| e["reason"].clone()).collect();
    assert_eq!(reasons, ["locked", "no-key-slot", "no-keyring"]);

    let under_m = json_lines(&ok(&["audit", s(&log), "--json", "--path", "m/*"], ""));
    assert_eq!(under_m.len(), 3);
    let configs = json_lines(&ok(
        &[
            "audit",
            s(&log),
            "--json",
            "--path",
            "*config.json",
            "--user",
            "alice",
            "--decision",
            "deny",
        ],
        "",
    ));
    assert_eq!(configs.len(), 1);
    assert_eq!(configs[0]["path"], "other/config.json");

    assert_eq!(
        json_lines(&ok(
            &["audit", s(&log), "--json", "--since", "2000-01-01"],
            ""
        ))
        .len(),
        6
    );
    assert!(ok(
        &[
            "audit",
            s(&log),
            "--json",
            "--since",
            "2999-01-01T00:00:00Z"
        ],
        ""
    )
    .is_empty());
    let err = fails(&["audit", s(&log), "--since", "yesterday"], "");
    assert!(err.contains("RFC 3339"), "{err}");

    // The default table.
    let table = ok(&["audit", s(&log), "--decision", "deny"], "");
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    for col in [
        "TIME", "USER", "PROCESS", "PATH", "EVENT", "DECISION", "REASON",
    ] {
        assert!(rows[0].contains(col), "{table}");
    }
    assert!(rows[1].contains("bob(1002)") && rows[1].contains("locked"));
    assert!(rows[1].contains("m/model.safetensors") && rows[1].contains("deny"));
    assert!(rows[3].contains("uid 1003"));
}

#[test]
fn unreadable_lines_are_skipped_with_a_warning() {
    let (_tmp, log, _key, _) = setup();
    let mut content = lines(&log);
    content.insert(2, "{not json".into());
    put_lines(&log, &content);
    let out = tvault(&["audit", s(&log), "--json"], "");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
}

fn readers(store: &Path, rel: &str) -> Vec<String> {
    let out = ok(&["access", s(store), "--json"], "");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let file = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == rel)
        .unwrap_or_else(|| panic!("{rel} not in {out}"));
    file["readers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn access_matrix_follows_put_grant_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let weights = tmp.path().join("w.safetensors");
    fs::write(&weights, safetensors_bytes(&[("w", "F32", &[4, 4], 4)])).unwrap();
    let config = tmp.path().join("config.json");
    fs::write(&config, b"{}").unwrap();
    ok(
        &[
            "put",
            s(&store),
            s(&weights),
            "--to",
            "alice",
            "--as",
            "m/w.safetensors",
        ],
        "",
    );
    ok(
        &[
            "put",
            s(&store),
            s(&config),
            "--to",
            "alice,bob",
            "--as",
            "m/config.json",
        ],
        "",
    );
    assert_eq!(readers(&store, "m/w.safetensors"), ["alice"]);
    assert_eq!(readers(&store, "m/config.json"), ["alice", "bob"]);

    let table = ok(&["access", s(&store)], "");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["FILE", "alice", "bob"], "{table}");
    assert_eq!(rows[1], ["m/config.json", "x", "x"], "{table}");
    assert_eq!(rows[2], ["m/w.safetensors", "x", "-"], "{table}");

    ok(
        &[
            "grant",
            s(&store),
            "m/w.safetensors",
            "bob",
            "--user",
            "alice",
        ],
        "pw-alice\n",
    );
    assert_eq!(readers(&store, "m/w.safetensors"), ["alice", "bob"]);
    ok(&["revoke", s(&store), "m/w.safetensors", "bob"], "");
    assert_eq!(readers(&store, "m/w.safetensors"), ["alice"]);
    ok(&["revoke", s(&store), "m/config.json", "alice"], "");
    assert_eq!(readers(&store, "m/config.json"), ["bob"]);

    // One file, a directory, or nothing that exists.
    let one = ok(&["access", s(&store), "m/config.json"], "");
    assert_eq!(one.lines().count(), 2, "{one}");
    assert!(one
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .eq(["m/config.json", "-", "x"]));
    assert_eq!(ok(&["access", s(&store), "m"], "").lines().count(), 3);
    let err = fails(&["access", s(&store), "nope"], "");
    assert!(err.contains("not in the store"), "{err}");
}
