//! `tvault fsck` through the real binary: a clean store passes; each kind of damage is
//! reported with its path and the documented exit status (0 clean or warnings only, 1
//! errors, 2 could not check).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;

struct Fixture {
    _dir: tempfile::TempDir,
    store: PathBuf,
    /// alice and bob can read it; 3 chunks of 4 KiB plus a partial one.
    shared: PathBuf,
    /// Only bob can read it.
    bobs: PathBuf,
    alice_pass: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_users(dir.path());
    let src = dir.path().join("weights.bin");
    fs::write(&src, pseudo_random(3 * 4096 + 100, 1)).unwrap();
    ok(
        &[
            "put",
            s(&store),
            s(&src),
            "--to",
            "alice,bob",
            "--as",
            "team/weights.bin",
            "--chunk-size",
            "4K",
        ],
        "",
    );
    let other = dir.path().join("notes.txt");
    fs::write(&other, b"bob's notes\n").unwrap();
    ok(
        &[
            "put",
            s(&store),
            s(&other),
            "--to",
            "bob",
            "--as",
            "notes.txt",
        ],
        "",
    );
    let alice_pass = dir.path().join("alice.pass");
    fs::write(&alice_pass, "pw-alice\n").unwrap();
    Fixture {
        shared: store.join("team/weights.bin.tvlt"),
        bobs: store.join("notes.txt.tvlt"),
        store,
        alice_pass,
        _dir: dir,
    }
}

/// Runs fsck; returns (exit code, stdout, stderr).
fn fsck(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut all = vec!["fsck"];
    all.extend_from_slice(args);
    let out = tvault(&all, stdin);
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn as_alice(f: &Fixture) -> (i32, String, String) {
    fsck(
        &[
            s(&f.store),
            "--user",
            "alice",
            "--passphrase-file",
            s(&f.alice_pass),
        ],
        "",
    )
}

/// The line of `out` that reports `severity` for `path`.
fn line_for<'a>(out: &'a str, severity: &str, path: &Path) -> &'a str {
    let prefix = format!("{severity}: {}: ", path.display());
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
}

#[test]
fn clean_store_passes_with_and_without_a_key() {
    let f = fixture();
    let (code, out, err) = fsck(&[s(&f.store)], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.trim_end()
            .ends_with("2 files, 2 keyrings checked: clean"),
        "{out}"
    );

    // alice can read one file; bob's own file is skipped, by path.
    let (code, out, err) = as_alice(&f);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "skipped: {}: alice holds no key slot",
            f.bobs.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("1 authenticated as alice, 1 skipped: clean"),
        "{out}"
    );

    // The passphrase may come on stdin too; JSON lists what was verified.
    let (code, out, _) = fsck(&[s(&f.store), "--user", "bob", "--json"], "pw-bob\n");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clean"], true);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["files"], 2);
    assert_eq!(v["verified"].as_array().unwrap().len(), 2);
    assert_eq!(v["skipped"].as_array().unwrap().len(), 0);
}

#[test]
fn truncated_container_is_an_error_with_its_path() {
    let f = fixture();
    let bytes = fs::read(&f.shared).unwrap();
    fs::write(&f.shared, &bytes[..bytes.len() - 28]).unwrap();
    let (code, out, _) = fsck(&[s(&f.store)], "");
    assert_eq!(code, 1, "{out}");
    let line = line_for(&out, "error", &f.shared);
    assert!(line.contains("truncated or extended"), "{line}");
    assert!(out.contains("1 error"), "{out}");

    // Cut inside the fixed header: still reported, still the same path.
    fs::write(&f.shared, &bytes[..40]).unwrap();
    let (code, out, _) = fsck(&[s(&f.store), "--json"], "");
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clean"], false);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{out}");
    assert_eq!(problems[0]["severity"], "error");
    assert_eq!(problems[0]["kind"], "container");
    assert_eq!(problems[0]["path"], s(&f.shared));
}

#[test]
fn flipped_chunk_byte_is_found_only_with_a_key() {
    let f = fixture();
    let mut bytes = fs::read(&f.shared).unwrap();
    // Layout: 64-byte header, slots, then chunk ciphertexts; flip a byte of chunk 2.
    let slots_len = u32::from_le_bytes(bytes[60..64].try_into().unwrap()) as usize;
    bytes[64 + slots_len + 2 * 4096 + 17] ^= 0x01;
    fs::write(&f.shared, &bytes).unwrap();

    let (code, out, _) = fsck(&[s(&f.store)], "");
    assert_eq!(
        code, 0,
        "structure is intact, so no error without a key: {out}"
    );

    let (code, out, _) = as_alice(&f);
    assert_eq!(code, 1, "{out}");
    let line = line_for(&out, "error", &f.shared);
    assert!(line.contains("chunk 2 failed authentication"), "{line}");
}

#[test]
fn malformed_keyring_is_an_error_with_its_path() {
    let f = fixture();
    let bob = f.store.join(".tvault/users/bob.json");
    let text = fs::read_to_string(&bob).unwrap();
    fs::write(&bob, &text[..text.len() / 2]).unwrap();
    let (code, out, _) = fsck(&[s(&f.store)], "");
    assert_eq!(code, 1, "{out}");
    line_for(&out, "error", &bob);
    // bob's slots now name nobody the store knows: a warning per file, not an error; and
    // the file bob put is owned by nobody the store knows.
    line_for(&out, "warning", &f.shared);
    assert!(out.contains("1 error, 3 warnings"), "{out}");

    // A keyring renamed to another user's file name is inconsistent too.
    fs::write(&bob, &text).unwrap();
    let carol = f.store.join(".tvault/users/carol.json");
    fs::copy(&bob, &carol).unwrap();
    let (code, out, _) = fsck(&[s(&f.store)], "");
    assert_eq!(code, 1, "{out}");
    assert!(
        line_for(&out, "error", &carol).contains("holds the keyring of \"bob\""),
        "{out}"
    );
}

#[test]
fn leftover_temp_file_is_a_warning_and_can_be_removed() {
    let f = fixture();
    let temp = f.store.join("team/.tvault-tmp-0123456789abcdef01234567");
    fs::write(&temp, b"half a draft").unwrap();
    // Named as earlier versions named them.
    let keyring_temp = f.store.join(".tvault/users/.alice.json.tmp-a1b2c3d4e5f6");
    fs::write(&keyring_temp, b"{").unwrap();

    let (code, out, _) = fsck(&[s(&f.store)], "");
    assert_eq!(code, 0, "temp files alone leave the store clean: {out}");
    assert!(
        line_for(&out, "warning", &temp).contains("--remove-temp"),
        "{out}"
    );
    line_for(&out, "warning", &keyring_temp);
    assert!(out.contains("clean, 2 warnings"), "{out}");

    // A fresh one may belong to a running writer: kept.
    let (code, out, _) = fsck(&[s(&f.store), "--remove-temp"], "");
    assert_eq!(code, 0);
    assert!(
        line_for(&out, "warning", &temp).contains("not removed"),
        "{out}"
    );
    assert!(temp.exists());

    let old = SystemTime::now() - Duration::from_secs(600);
    for path in [&temp, &keyring_temp] {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let (code, out, _) = fsck(&[s(&f.store), "--remove-temp"], "");
    assert_eq!(code, 0);
    assert!(
        line_for(&out, "warning", &temp).ends_with("removed"),
        "{out}"
    );
    assert!(!temp.exists() && !keyring_temp.exists());
    let (code, out, _) = fsck(&[s(&f.store)], "");
    assert_eq!(code, 0);
    assert!(out.trim_end().ends_with(": clean"), "{out}");
}

#[test]
fn cannot_check_exits_2() {
    let f = fixture();
    let (code, _, err) = fsck(&[s(&f.store), "--user", "alice"], "wrong\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    let (code, _, err) = fsck(&[s(&f.store), "--user", "nobody"], "x\n");
    assert_eq!(code, 2, "{err}");
    let not_a_store = f.store.join("team");
    let (code, _, err) = fsck(&[s(&not_a_store)], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a tensorvault store"), "{err}");
}
