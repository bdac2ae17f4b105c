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
    let report: Vec<&str> = out.lines().collect();
    assert_eq!(
        report[0],
        format!(
            "6 entries (6 events) in 1 file: chain intact, every entry authenticated under {}",
            key.display()
        )
    );
    assert_eq!(
        report[1],
        "start: the log's first entry (seq 1); nothing is missing before it"
    );
    assert_eq!(
        report[2],
        "end: reaches the daemon's head record (seq 6); nothing was cut off"
    );
    assert_eq!(
        report[3],
        format!("last hash {last} (keep it elsewhere to detect tail truncation)")
    );
    ok(
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
    let out = ok(
        &["audit", s(&log), "--verify", "--key", s(&key), "--json"],
        "",
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["intact"], true);
    assert_eq!(report["authenticated"], true);
    assert_eq!(report["entries"], 6);
    assert_eq!(report["start"]["kind"], "beginning");
    assert_eq!(report["head"]["status"], "matched");
    assert_eq!(report["last_hash"], last.as_str());
}

#[test]
fn verify_never_trusts_a_key_beside_the_log() {
    // The log lies in a store's .tvault/ with its key beside it, as older versions kept
    // them, and as anyone who can write the store can plant them.
    let tmp = tempfile::tempdir().unwrap();
    let meta = tmp.path().join("store/.tvault");
    fs::create_dir_all(&meta).unwrap();
    let log = meta.join("audit.jsonl");
    let beside = meta.join("audit.key");
    write_log(&log, &beside);
    fs::copy(&beside, audit::legacy_key_paths(&log)[1].clone()).unwrap();
    let out = tvault(&["audit", s(&log), "--verify"], "");
    assert_eq!(out.status.code(), Some(2), "unauthenticated");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NOT AUTHENTICATED"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    let default_key = state_dir()
        .join(audit::KEY_DIR)
        .join(format!("{}.key", audit::log_id(&log)));
    assert!(
        err.contains("NOT authenticated") && err.contains(s(&default_key)) && err.contains("--key"),
        "{err}"
    );
    // Without a key the hash chain is still checked.
    let mut content = lines(&log);
    content.remove(2);
    put_lines(&log, &content);
    let out = tvault(&["audit", s(&log), "--verify"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3: prev does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A key owned by someone else is refused even when named.
    std::os::unix::fs::chown(&beside, Some(1004), Some(1004)).unwrap();
    let err = fails(&["audit", s(&log), "--verify", "--key", s(&beside)], "");
    assert!(err.contains("owned by uid 1004"), "{err}");
}

#[test]
fn logs_of_older_versions_still_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/audit-legacy");
    for name in ["audit.jsonl", "audit.jsonl.1", "legacy.key"] {
        fs::copy(data.join(name), tmp.path().join(name)).unwrap();
    }
    let key = tmp.path().join("legacy.key");
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let log = tmp.path().join("audit.jsonl");
    let out = ok(
        &["audit", s(&log), "--rotated", "--verify", "--key", s(&key)],
        "",
    );
    assert!(
        out.starts_with("8 entries (8 events) in 2 files: chain intact"),
        "{out}"
    );
    assert!(out.contains("start: the log's first entry"), "{out}");
    // The newest file alone starts at a rotate entry: the report says what is missing.
    let out = ok(&["audit", s(&log), "--verify", "--key", s(&key)], "");
    assert!(
        out.contains("start: seq 6, a rotate entry: the 5 entries before it were rotated out"),
        "{out}"
    );
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
    let (tmp, log, key, last) = setup();
    let orig = lines(&log);
    put_lines(&log, &orig[..4]);
    // The head record beside the key knows where the chain ended...
    let err = fails(&["audit", s(&log), "--verify", "--key", s(&key)], "");
    assert!(
        err.contains("ends at seq 4 but the writer's head record says it reached seq 6"),
        "{err}"
    );
    // ...and so does a hash kept elsewhere, with a copy of the key that has no head record.
    let copy = tmp.path().join("copy.key");
    fs::copy(&key, &copy).unwrap();
    let out = ok(&["audit", s(&log), "--verify", "--key", s(&copy)], "");
    assert!(
        out.starts_with("4 entries (4 events) in 1 file: chain intact"),
        "{out}"
    );
    assert!(
        out.contains("a cut tail is caught only with --expect-last"),
        "{out}"
    );
    let err = fails(
        &[
            "audit",
            s(&log),
            "--verify",
            "--key",
            s(&copy),
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
    let (log, _) = audit::default_paths(&store, None);
    // Where the CLI (run with the tests' state directory) looks for the key of this log.
    let key = state_dir()
        .join(audit::KEY_DIR)
        .join(format!("{}.key", audit::log_id(&log)));
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
    assert!(
        out.contains("chain intact, every entry authenticated"),
        "{out}"
    );
    assert!(out.contains("start: the log's first entry"), "{out}");
    // Without the oldest file, the report says the start is missing.
    let oldest = audit::with_rotated(&log)[0].clone();
    let kept = tmp.path().join("oldest");
    fs::rename(&oldest, &kept).unwrap();
    let out = ok(&["audit", s(&log), "--rotated", "--verify"], "");
    assert!(out.contains("before it were rotated out"), "{out}");
    fs::rename(&kept, &oldest).unwrap();
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
    // A copy elsewhere has no key of its own: --verify says it cannot authenticate it.
    let elsewhere = tmp.path().join("copy.jsonl");
    fs::copy(&log, &elsewhere).unwrap();
    let out = tvault(&["audit", s(&elsewhere), "--verify"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key"));
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
        "TIME", "USER", "PROCESS", "PATH", "EVENT", "DECISION", "COUNT", "REASON",
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

#[test]
fn counted_lines_in_filters_and_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    let key = tmp.path().join("audit.key");
    let audit = AuditLog::open(&log, &key, None).unwrap();
    let denied = Event::new(EventKind::Open)
        .uid(1003)
        .pid(4245)
        .path("m/config.json")
        .open_flags(0)
        .deny("no-keyring");
    for _ in 0..50 {
        audit.record(&denied).unwrap();
    }
    audit
        .record(
            &Event::new(EventKind::Open)
                .uid(1001)
                .user("alice")
                .path("m/config.json")
                .allow(),
        )
        .unwrap();
    // Closing writes the count of the repeats.
    audit.close().unwrap();
    let denials = json_lines(&ok(
        &[
            "audit",
            s(&log),
            "--json",
            "--decision",
            "deny",
            "--user",
            "1003",
        ],
        "",
    ));
    assert_eq!(denials.len(), 2, "{denials:?}");
    assert!(denials[0].get("count").is_none());
    assert_eq!(denials[1]["count"], 49);
    assert!(denials[1]["first"].as_str().unwrap() <= denials[1]["last"].as_str().unwrap());
    assert_eq!(denials[1]["path"], "m/config.json");
    let table = ok(&["audit", s(&log), "--decision", "deny"], "");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // "uid 1003" is two words in the data rows.
    assert_eq!(rows[0][6], "COUNT", "{table}");
    assert_eq!(rows[1][7], "1", "{table}");
    assert_eq!(rows[2][7], "49", "{table}");
    let out = ok(&["audit", s(&log), "--verify", "--key", s(&key)], "");
    assert!(out.starts_with("3 entries (51 events) in 1 file"), "{out}");
}

#[test]
fn grant_and_revoke_without_a_mount_use_the_key_outside_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let plain = tmp.path().join("w.bin");
    fs::write(&plain, b"weights").unwrap();
    ok(
        &[
            "put",
            s(&store),
            s(&plain),
            "--to",
            "alice",
            "--as",
            "w.bin",
        ],
        "",
    );
    ok(
        &["grant", s(&store), "w.bin", "bob", "--user", "alice"],
        "pw-alice\n",
    );
    ok(&["revoke", s(&store), "w.bin", "bob"], "");
    let log = host_log(&store);
    let events: Vec<String> = lines(&log)
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
        .collect();
    assert_eq!(events, ["\"grant\"", "\"revoke\""]);
    // No key in the store; the key is in the state directory, root-only.
    assert!(!store.join(".tvault/audit.key").exists());
    let key = host_key(&store, &host_id());
    let mode = fs::metadata(&key).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let out = ok(&["audit", s(&log), "--verify"], "");
    assert!(
        out.starts_with("2 entries (2 events) in 1 file: chain intact, every entry authenticated"),
        "{out}"
    );
    assert!(
        out.contains("end: reaches the daemon's head record (seq 2)"),
        "{out}"
    );
}

#[test]
fn a_redirected_log_directory_is_checked_against_the_same_key_and_head() {
    let tmp = tempfile::tempdir().unwrap();
    let meta = tmp.path().join("store/.tvault");
    fs::create_dir_all(&meta).unwrap();
    let log = meta.join("audit.jsonl");
    let key = state_dir()
        .join(audit::KEY_DIR)
        .join(format!("{}.key", audit::log_id(&log)));
    write_log(&log, &key);
    ok(&["audit", s(&log), "--verify"], "");
    // Whoever can write the store swaps .tvault for a link to a directory of their own.
    let id = audit::log_id(&log);
    fs::rename(&meta, tmp.path().join("store/.tvault-was")).unwrap();
    let theirs = tmp.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::symlink(&theirs, &meta).unwrap();
    assert_eq!(audit::log_id(&log), id, "the log keeps its id");
    // The next writer finds no log where the head record says there was one, and says so.
    let audit = AuditLog::open(&log, &key, None).unwrap();
    audit
        .record(&Event::new(EventKind::Lock).uid(1001).user("alice"))
        .unwrap();
    audit.close().unwrap();
    let first: serde_json::Value =
        serde_json::from_str(&lines(&theirs.join("audit.jsonl"))[0]).unwrap();
    assert_eq!(first["reason"], "missing-log");
    let err = fails(&["audit", s(&log), "--verify"], "");
    assert!(
        err.contains("the chain restarts at seq 7 (missing-log"),
        "{err}"
    );
}
