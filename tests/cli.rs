//! End-to-end tests of the store commands through the real `tvault` binary.

mod common;

use std::fs;

use common::*;

fn model_dir(root: &std::path::Path) -> std::path::PathBuf {
    let dir = root.join("tiny-model");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(&[("w", "F32", &[256, 300], 4), ("b", "BF16", &[300], 2)]),
    )
    .unwrap();
    fs::write(dir.join("config.json"), b"{\"hidden_size\": 300}\n").unwrap();
    fs::write(dir.join("sub/tokenizer.json"), pseudo_random(70_000, 3)).unwrap();
    dir
}

#[test]
fn put_get_round_trip_for_a_model_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let model = model_dir(tmp.path());
    ok(&["put", s(&store), s(&model), "--to", "alice,bob"], "");
    for rel in ["model.safetensors", "config.json", "sub/tokenizer.json"] {
        let backing = fs::read(store.join(format!("tiny-model/{rel}.tvlt"))).unwrap();
        let plain = fs::read(model.join(rel)).unwrap();
        assert!(!contains_run(&backing, &plain, 64), "{rel} leaks plaintext");
        for user in ["alice", "bob"] {
            let out = tmp.path().join(format!("{user}.out"));
            ok(
                &[
                    "get",
                    s(&store),
                    &format!("tiny-model/{rel}"),
                    "-o",
                    s(&out),
                    "--user",
                    user,
                ],
                &format!("pw-{user}\n"),
            );
            assert_eq!(fs::read(&out).unwrap(), plain, "{rel} for {user}");
        }
    }
    // --as names the destination prefix; --chunk-size is per file.
    ok(
        &[
            "put",
            s(&store),
            s(&model),
            "--to",
            "alice",
            "--as",
            "renamed/m",
            "--chunk-size",
            "4K",
        ],
        "",
    );
    let out = ok(
        &[
            "get",
            s(&store),
            "renamed/m/config.json",
            "-o",
            "-",
            "--user",
            "alice",
        ],
        "pw-alice\n",
    );
    assert_eq!(out, "{\"hidden_size\": 300}\n");
}

#[test]
fn round_trip_sizes_across_chunk_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    for chunk in [4096usize, 65536] {
        for size in [0, 1, chunk - 1, chunk, chunk + 1, 3 * 1024 * 1024 + 5] {
            let src = tmp.path().join(format!("f-{chunk}-{size}.bin"));
            let data = pseudo_random(size, size as u64);
            fs::write(&src, &data).unwrap();
            let rel = format!("sizes/{chunk}/{size}.bin");
            let cs = chunk.to_string();
            ok(
                &[
                    "put",
                    s(&store),
                    s(&src),
                    "--to",
                    "alice",
                    "--as",
                    &rel,
                    "--chunk-size",
                    &cs,
                ],
                "",
            );
            let out = tmp.path().join("out.bin");
            ok(
                &["get", s(&store), &rel, "-o", s(&out), "--user", "alice"],
                "pw-alice\n",
            );
            assert_eq!(fs::read(&out).unwrap(), data, "size {size} chunk {chunk}");
        }
    }
}

#[test]
fn access_is_per_key_slot_and_grant_revoke_work() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let src = tmp.path().join("secret.bin");
    fs::write(&src, b"only for alice").unwrap();
    ok(&["put", s(&store), s(&src), "--to", "alice"], "");
    let out = tmp.path().join("bob.out");
    let err = fails(
        &[
            "get",
            s(&store),
            "secret.bin",
            "-o",
            s(&out),
            "--user",
            "bob",
        ],
        "pw-bob\n",
    );
    assert!(err.contains("no key slot"), "{err}");
    assert!(!out.exists());

    ok(
        &["grant", s(&store), "secret.bin", "bob", "--user", "alice"],
        "pw-alice\n",
    );
    ok(
        &[
            "get",
            s(&store),
            "secret.bin",
            "-o",
            s(&out),
            "--user",
            "bob",
        ],
        "pw-bob\n",
    );
    assert_eq!(fs::read(&out).unwrap(), b"only for alice");

    // A grant by someone who cannot read the file is refused.
    let err = fails(
        &[
            "grant",
            s(&store),
            "secret.bin",
            "alice",
            "--user",
            "nobody",
        ],
        "x\n",
    );
    assert!(err.contains("no user \"nobody\""), "{err}");

    let before = fs::read(store.join("secret.bin.tvlt")).unwrap();
    ok(&["revoke", s(&store), "secret.bin", "bob"], "");
    let after = fs::read(store.join("secret.bin.tvlt")).unwrap();
    // Without --rekey only the slot section changes: data (14 B), table and MAC are identical.
    assert_eq!(before[before.len() - 74..], after[after.len() - 74..]);
    fails(
        &["get", s(&store), "secret.bin", "-o", "-", "--user", "bob"],
        "pw-bob\n",
    );

    ok(
        &["grant", s(&store), "secret.bin", "bob", "--user", "alice"],
        "pw-alice\n",
    );
    ok(
        &[
            "revoke",
            s(&store),
            "secret.bin",
            "bob",
            "--rekey",
            "--user",
            "alice",
        ],
        "pw-alice\n",
    );
    let rekeyed = fs::read(store.join("secret.bin.tvlt")).unwrap();
    assert_ne!(after[after.len() - 74..], rekeyed[rekeyed.len() - 74..]);
    let out = ok(
        &["get", s(&store), "secret.bin", "-o", "-", "--user", "alice"],
        "pw-alice\n",
    );
    assert_eq!(out, "only for alice");
}

#[test]
fn get_to_a_device_writes_into_it_instead_of_replacing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let src = tmp.path().join("a.bin");
    fs::write(&src, b"data").unwrap();
    ok(&["put", s(&store), s(&src), "--to", "alice"], "");
    ok(
        &[
            "get",
            s(&store),
            "a.bin",
            "-o",
            "/dev/null",
            "--user",
            "alice",
        ],
        "pw-alice\n",
    );
    let meta = fs::metadata("/dev/null").unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &meta.file_type()
    ));
}

#[test]
fn wrong_passphrase_is_refused_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let src = tmp.path().join("a.bin");
    fs::write(&src, b"data").unwrap();
    ok(&["put", s(&store), s(&src), "--to", "alice"], "");
    let out = tmp.path().join("out");
    let err = fails(
        &["get", s(&store), "a.bin", "-o", s(&out), "--user", "alice"],
        "wrong\n",
    );
    assert!(err.contains("wrong passphrase for \"alice\""), "{err}");
    assert!(!out.exists());
    let err = fails(
        &["get", s(&store), "a.bin", "-o", s(&out), "--user", "alice"],
        "",
    );
    assert!(err.contains("no passphrase on stdin"), "{err}");
}

#[test]
fn passwd_reseals_without_touching_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let src = tmp.path().join("a.bin");
    fs::write(&src, b"data").unwrap();
    ok(&["put", s(&store), s(&src), "--to", "alice"], "");
    let container = fs::read(store.join("a.bin.tvlt")).unwrap();
    let mut args = vec!["user", "passwd", s(&store), "alice"];
    args.extend(FAST_KDF);
    ok(&args, "pw-alice\nnew-pass\n");
    assert_eq!(fs::read(store.join("a.bin.tvlt")).unwrap(), container);
    fails(
        &["get", s(&store), "a.bin", "-o", "-", "--user", "alice"],
        "pw-alice\n",
    );
    let pass_file = tmp.path().join("pass");
    fs::write(&pass_file, "new-pass\n").unwrap();
    let out = ok(
        &[
            "get",
            s(&store),
            "a.bin",
            "-o",
            "-",
            "--user",
            "alice",
            "--passphrase-file",
            s(&pass_file),
        ],
        "",
    );
    assert_eq!(out, "data");
}

#[test]
fn import_export_and_list() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let key = ok(&["user", "export", s(&store), "bob"], "");
    let key = key.trim();
    assert!(key.starts_with("tvault-x25519:"));
    let other = tmp.path().join("other");
    ok(&["init", s(&other)], "");
    ok(
        &[
            "user",
            "import",
            s(&other),
            "bob",
            "--uid",
            "1002",
            "--public-key",
            key,
        ],
        "",
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["user", "list", s(&other), "--json"], "")).unwrap();
    assert_eq!(listed[0]["name"], "bob");
    assert_eq!(listed[0]["uid"], 1002);
    assert_eq!(listed[0]["has_private_key"], false);
    // Files put for an imported recipient are readable in the original store with bob's key.
    let src = tmp.path().join("for-bob.txt");
    fs::write(&src, b"hello bob").unwrap();
    ok(&["put", s(&other), s(&src), "--to", "bob"], "");
    fs::copy(
        other.join("for-bob.txt.tvlt"),
        store.join("for-bob.txt.tvlt"),
    )
    .unwrap();
    let out = ok(
        &["get", s(&store), "for-bob.txt", "-o", "-", "--user", "bob"],
        "pw-bob\n",
    );
    assert_eq!(out, "hello bob");
    // An imported user has no private key to unlock.
    let err = fails(
        &["get", s(&other), "for-bob.txt", "-o", "-", "--user", "bob"],
        "x\n",
    );
    assert!(err.contains("no private key"), "{err}");
    fails(
        &[
            "user",
            "import",
            s(&other),
            "eve",
            "--uid",
            "7",
            "--public-key",
            "nonsense",
        ],
        "",
    );
    let err = fails(
        &[
            "user",
            "import",
            s(&other),
            "eve",
            "--uid",
            "1002",
            "--public-key",
            key,
        ],
        "",
    );
    assert!(err.contains("uid 1002 already belongs"), "{err}");
}

#[test]
fn inspect_plain_and_encrypted() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let model = model_dir(tmp.path());
    let plain: serde_json::Value = serde_json::from_str(&ok(
        &["inspect", s(&model.join("model.safetensors")), "--json"],
        "",
    ))
    .unwrap();
    assert_eq!(plain["tensor_count"], 2);
    assert_eq!(plain["tensors"][0]["name"], "w");
    assert_eq!(plain["tensors"][0]["shape"], serde_json::json!([256, 300]));
    assert_eq!(plain["tensors"][1]["dtype"], "BF16");
    ok(&["put", s(&store), s(&model), "--to", "alice"], "");
    let enc: serde_json::Value = serde_json::from_str(&ok(
        &[
            "inspect",
            s(&store),
            "tiny-model/model.safetensors",
            "--user",
            "alice",
            "--json",
        ],
        "pw-alice\n",
    ))
    .unwrap();
    assert_eq!(enc["tensors"], plain["tensors"]);
    let table = ok(
        &[
            "inspect",
            s(&store),
            "tiny-model/model.safetensors",
            "--user",
            "alice",
        ],
        "pw-alice\n",
    );
    assert!(
        table.contains("F32") && table.contains("[256, 300]"),
        "{table}"
    );
}

#[test]
fn malformed_safetensors_refuses_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let dir = tmp.path().join("batch");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("a.txt"), b"fine").unwrap();
    fs::write(
        dir.join("good.safetensors"),
        safetensors_bytes(&[("x", "F16", &[4], 2)]),
    )
    .unwrap();
    let mut bad = safetensors_bytes(&[("x", "F16", &[4], 2)]);
    bad.truncate(bad.len() - 1);
    fs::write(dir.join("bad.safetensors"), &bad).unwrap();
    let err = fails(&["put", s(&store), s(&dir), "--to", "alice"], "");
    assert!(err.contains("bad.safetensors"), "{err}");
    assert!(!store.join("batch").exists(), "nothing may be written");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "huge-header",
            200_000_000u64.to_le_bytes().to_vec(),
            "limit",
        ),
        ("short", vec![1, 2, 3], "too short"),
        (
            "bad-dtype",
            safetensors_bytes(&[("x", "F12", &[1], 4)]),
            "f12",
        ),
    ];
    for (name, bytes, reason) in cases {
        let path = tmp.path().join(format!("{name}.safetensors"));
        fs::write(&path, bytes).unwrap();
        let err = fails(&["put", s(&store), s(&path), "--to", "alice"], "");
        assert!(err.to_lowercase().contains(reason), "{name}: {err}");
    }
}

#[test]
fn existing_files_need_force_and_bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let src = tmp.path().join("a.bin");
    fs::write(&src, b"v1").unwrap();
    ok(&["put", s(&store), s(&src), "--to", "alice"], "");
    fs::write(&src, b"v2").unwrap();
    let err = fails(&["put", s(&store), s(&src), "--to", "alice"], "");
    assert!(err.contains("already exists"), "{err}");
    ok(&["put", s(&store), s(&src), "--to", "alice", "--force"], "");
    assert_eq!(
        ok(
            &["get", s(&store), "a.bin", "-o", "-", "--user", "alice"],
            "pw-alice\n"
        ),
        "v2"
    );

    let err = fails(&["put", s(&store), s(&src), "--to", "mallory"], "");
    assert!(err.contains("no user \"mallory\""), "{err}");
    let err = fails(
        &[
            "put",
            s(&store),
            s(&src),
            "--to",
            "alice",
            "--as",
            "../escape",
        ],
        "",
    );
    assert!(err.contains("invalid store path"), "{err}");
    let err = fails(
        &[
            "put",
            s(&store),
            s(&src),
            "--to",
            "alice",
            "--chunk-size",
            "3000",
        ],
        "",
    );
    assert!(err.contains("chunk size"), "{err}");
    let err = fails(&["user", "list", s(tmp.path())], "");
    assert!(err.contains("not a tensorvault store"), "{err}");
    let err = fails(
        &["get", s(&store), "missing", "-o", "-", "--user", "alice"],
        "",
    );
    assert!(err.contains("not in the store"), "{err}");
    // A corrupted container is reported with its path, not a panic.
    fs::write(store.join("a.bin.tvlt"), b"garbage").unwrap();
    let err = fails(
        &["get", s(&store), "a.bin", "-o", "-", "--user", "alice"],
        "pw-alice\n",
    );
    assert!(err.contains("a.bin.tvlt"), "{err}");
}

/// Issue 11, finding 9: `user add` and `user passwd` refuse Argon2id parameters above the caps
/// (1 GiB, 16 passes) with a named error, before asking for any passphrase.
#[test]
fn kdf_parameters_over_the_caps_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let over: [&[&str]; 2] = [
        &["--kdf-memory", "1048577", "--kdf-iterations", "1"],
        &["--kdf-memory", "1024", "--kdf-iterations", "17"],
    ];
    for kdf in over {
        let mut args = vec!["user", "add", s(&store), "carol", "--uid", "1003"];
        args.extend(kdf);
        let err = fails(&args, "");
        assert!(err.contains("over the cap of m=1048576 KiB"), "{err}");
        assert!(!store.join(".tvault/users/carol.json").exists());
        let before = fs::read(store.join(".tvault/users/alice.json")).unwrap();
        let mut args = vec!["user", "passwd", s(&store), "alice"];
        args.extend(kdf);
        let err = fails(&args, "pw-alice\nnew-pass\n");
        assert!(err.contains("over the cap"), "{err}");
        assert_eq!(
            fs::read(store.join(".tvault/users/alice.json")).unwrap(),
            before
        );
    }
    // At the caps is allowed (iterations only, to keep the test cheap).
    let mut args = vec!["user", "add", s(&store), "carol", "--uid", "1003"];
    args.extend(["--kdf-memory", "8", "--kdf-iterations", "16"]);
    ok(&args, "pw\n");
}

/// Issue 11, finding 11: a passphrase longer than the mount's unlock request can carry is
/// refused when it is set, not discovered at the first unlock.
#[test]
fn passphrases_too_long_to_unlock_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let long = tmp.path().join("long");
    for len in [8193, 70_000] {
        fs::write(&long, "x".repeat(len) + "\n").unwrap();
        let mut args = vec!["user", "add", s(&store), "carol", "--uid", "1003"];
        args.extend(FAST_KDF);
        args.extend(["--passphrase-file", s(&long)]);
        let err = fails(&args, "");
        assert!(
            err.contains(&format!("the passphrase is {len} bytes; at most 8192")),
            "{err}"
        );
        assert!(!store.join(".tvault/users/carol.json").exists());
        let mut args = vec!["user", "passwd", s(&store), "alice"];
        args.extend(FAST_KDF);
        args.extend(["--new-passphrase-file", s(&long)]);
        let err = fails(&args, "pw-alice\n");
        assert!(err.contains("at most 8192"), "{err}");
    }
    // alice's old passphrase still opens her keyring.
    let src = tmp.path().join("a.bin");
    fs::write(&src, b"data").unwrap();
    ok(&["put", s(&store), s(&src), "--to", "alice"], "");
    let out = ok(
        &["get", s(&store), "a.bin", "-o", "-", "--user", "alice"],
        "pw-alice\n",
    );
    assert_eq!(out, "data");
}

/// Issue 11, finding 11: a bad chunk size in `store.json` (or `init --chunk-size`) is named as
/// given, not as "2^0".
#[test]
fn bad_chunk_sizes_are_reported_as_given() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with_users(tmp.path());
    let config_path = store.join(".tvault/store.json");
    let config = fs::read_to_string(&config_path).unwrap();
    let value: serde_json::Value = serde_json::from_str(&config).unwrap();
    let original = value["chunk_size"].as_u64().unwrap();
    for bad in [3u64, 65537, 0] {
        let edited = config.replace(
            &format!("\"chunk_size\": {original}"),
            &format!("\"chunk_size\": {bad}"),
        );
        assert_ne!(edited, config, "store.json layout changed: {config}");
        fs::write(&config_path, edited).unwrap();
        let err = fails(&["user", "list", s(&store)], "");
        assert!(
            err.contains(&format!("invalid chunk size {bad} bytes")) && !err.contains("2^"),
            "{err}"
        );
        let err = fails(
            &[
                "init",
                s(&tmp.path().join(format!("s{bad}"))),
                "--chunk-size",
                &bad.to_string(),
            ],
            "",
        );
        assert!(
            err.contains(&format!("invalid chunk size {bad} bytes")),
            "{err}"
        );
    }
}
