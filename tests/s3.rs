//! Every store command on an `s3://BUCKET/PREFIX` store, against a real S3-compatible server
//! (s3s-fs) on loopback: the same behaviour as on a directory, only ciphertext on the server,
//! the standard AWS settings (keys, profiles), and named errors for a missing bucket, wrong
//! credentials and a server that is down or hangs.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::s3::*;
use common::*;
use serde_json::Value;

fn readers(store: &S3Store, rel: &str) -> Vec<String> {
    readers_in(&store.ok(&["access", &store.url, "--json"], ""), rel)
}

#[test]
fn every_store_command_works_on_an_s3_store() {
    let server = S3Server::start();
    let store = server.store("models", "team/a");
    let url = store.url.as_str();
    store.init_with_users();
    // init created the prefix (the bucket existed already).
    assert!(store.dir.join(".tvault/store.json").is_file());
    let err = store.fails(&["init", url], "");
    assert!(err.contains("already"), "{err}");

    let users: Value =
        serde_json::from_str(&store.ok(&["user", "list", url, "--json"], "")).unwrap();
    assert_eq!(users.as_array().map(Vec::len), Some(2), "{users}");

    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    fs::create_dir_all(&model).unwrap();
    let st = safetensors_bytes(&[
        ("embed", "F32", &[512, 256], 4),
        ("layer.0", "F16", &[256, 1024], 2),
        ("small", "I64", &[3], 8),
    ]);
    let weights = pseudo_random(3 << 20, 7);
    fs::write(model.join("model.safetensors"), &st).unwrap();
    fs::write(model.join("weights.bin"), &weights).unwrap();
    fs::write(model.join("config.json"), b"{\"model_type\": \"tiny\"}\n").unwrap();
    store.ok(&["put", url, model.to_str().unwrap(), "--to", "alice"], "");

    // inspect: without a key, then with alice's.
    let meta: Value =
        serde_json::from_str(&store.ok(&["inspect", url, "model/model.safetensors", "--json"], ""))
            .unwrap();
    assert_eq!(meta["readers"], serde_json::json!(["alice"]), "{meta}");
    let text = store.ok(
        &["inspect", url, "model/model.safetensors", "--user", "alice"],
        "pw-alice\n",
    );
    assert!(text.contains("layer.0"), "{text}");

    // get: the bytes come back; bob, without a slot, is refused.
    let get = |rel: &str, user: &str| {
        store.run(
            &["get", url, rel, "-o", "-", "--user", user],
            &format!("pw-{user}\n"),
        )
    };
    assert_eq!(get("model/model.safetensors", "alice").stdout, st);
    assert_eq!(get("model/weights.bin", "alice").stdout, weights);
    let out = get("model/weights.bin", "bob");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key slot"));

    // grant / access / revoke (plain and with re-encryption).
    store.ok(
        &["grant", url, "model", "bob", "--user", "alice"],
        "pw-alice\n",
    );
    assert_eq!(readers(&store, "model/weights.bin"), ["alice", "bob"]);
    assert_eq!(get("model/weights.bin", "bob").stdout, weights);
    store.ok(&["revoke", url, "model/config.json", "bob"], "");
    assert_eq!(readers(&store, "model/config.json"), ["alice"]);
    store.ok(
        &[
            "revoke",
            url,
            "model/weights.bin",
            "bob",
            "--rekey",
            "--user",
            "alice",
        ],
        "pw-alice\n",
    );
    assert!(!get("model/weights.bin", "bob").status.success());
    assert_eq!(get("model/weights.bin", "alice").stdout, weights);
    let table = store.ok(&["access", url, "model"], "");
    assert!(table.contains("model/config.json"), "{table}");

    // chown / chmod, seen by inspect.
    store.ok(&["chown", url, "model", "bob", "-R"], "");
    store.ok(&["chmod", url, "model/config.json", "640"], "");
    let meta: Value =
        serde_json::from_str(&store.ok(&["inspect", url, "model/config.json", "--json"], ""))
            .unwrap();
    assert_eq!(
        (&meta["owner"], &meta["mode"]),
        (&"bob".into(), &"0640".into())
    );

    // put --force replaces; put without it refuses.
    let v2 = tmp.path().join("v2.json");
    fs::write(&v2, b"{\"model_type\": \"two\"}\n").unwrap();
    let put_v2 = [
        "put",
        url,
        v2.to_str().unwrap(),
        "--to",
        "alice",
        "--as",
        "model/config.json",
    ];
    store.fails(&put_v2, "");
    let mut forced = put_v2.to_vec();
    forced.push("--force");
    store.ok(&forced, "");
    assert_eq!(
        get("model/config.json", "alice").stdout,
        b"{\"model_type\": \"two\"}\n"
    );

    // fsck finds nothing wrong, with and without a key.
    store.ok(&["fsck", url], "");
    store.ok(&["fsck", url, "--user", "alice"], "pw-alice\n");

    // The server holds ciphertext only: no run of any plaintext appears in any of its files.
    let files = files_under(server.data_dir());
    assert!(files
        .iter()
        .any(|(p, _)| p.ends_with("model/weights.bin.tvlt")));
    for (path, bytes) in &files {
        for plain in [&st, &weights] {
            assert!(!contains_run(bytes, plain, 32), "plaintext in {path:?}");
        }
    }
}

#[test]
fn settings_come_from_the_standard_aws_variables_and_profiles() {
    let server = S3Server::start();
    let store = server.store("bkt", "p");
    let home = tempfile::tempdir().unwrap();
    fs::create_dir(home.path().join(".aws")).unwrap();
    fs::write(
        home.path().join(".aws/credentials"),
        format!("[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[tvtest]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )
    .unwrap();
    fs::write(
        home.path().join(".aws/config"),
        format!("[profile tvtest]\nregion = {REGION}\n"),
    )
    .unwrap();
    // Keys and region from the profile in ~/.aws; only the endpoint in the environment.
    let mut cmd = store.command(&["init", &store.url]);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_REGION")
        .env("HOME", home.path())
        .env("AWS_PROFILE", "tvtest");
    let out = common::mount::run(cmd, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(store.dir.join(".tvault/store.json").is_file());

    // The same profile from files named by AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE.
    let elsewhere = tempfile::tempdir().unwrap();
    let (creds, config) = (
        elsewhere.path().join("creds"),
        elsewhere.path().join("conf"),
    );
    fs::rename(home.path().join(".aws/credentials"), &creds).unwrap();
    fs::rename(home.path().join(".aws/config"), &config).unwrap();
    let mut cmd = store.command(&["user", "list", &store.url]);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_REGION")
        .env("HOME", home.path())
        .env("AWS_PROFILE", "tvtest")
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .env("AWS_CONFIG_FILE", &config);
    let out = common::mount::run(cmd, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Plain http is for loopback; elsewhere it needs AWS_ALLOW_HTTP=true (refused before
    // any connection, so the address need not answer).
    let mut cmd = store.command(&["user", "list", &store.url]);
    cmd.env("AWS_ENDPOINT_URL", "http://192.0.2.1:9000");
    let out = common::mount::run(cmd, "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AWS_ALLOW_HTTP"), "{err}");
}

#[test]
fn a_missing_bucket_and_wrong_credentials_are_named() {
    let server = S3Server::start();
    let store = server.store("present", "p");
    store.init_with_users();

    let missing = S3Store {
        url: "s3://no-such-bucket/p".into(),
        dir: server.data_dir().join("no-such-bucket"),
        env: server.env(),
    };
    let err = missing.fails(&["init", &missing.url], "");
    assert!(err.contains("no-such-bucket"), "{err}");
    assert!(!missing.dir.exists(), "the bucket is not created");

    let mut cmd = store.command(&["user", "list", &store.url]);
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let out = common::mount::run(cmd, "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("credential"), "{err}");

    let mut cmd = store.command(&["user", "list", &store.url]);
    cmd.env("AWS_ACCESS_KEY_ID", "unknown-key");
    let out = common::mount::run(cmd, "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("credential"), "{err}");
}

/// Runs `tvault ARGS` on `store` with `TVAULT_S3_TIMEOUT=secs`; returns its output and time.
fn timed(store: &S3Store, args: &[&str], secs: u64) -> (std::process::Output, Duration) {
    let mut cmd = store.command(args);
    cmd.env("TVAULT_S3_TIMEOUT", secs.to_string());
    let start = Instant::now();
    let out = common::mount::run(cmd, "pw-alice\n");
    (out, start.elapsed())
}

#[test]
fn commands_fail_within_the_timeout_while_the_server_is_down_or_hangs() {
    let mut server = S3Server::start();
    let store = server.store("outage", "p");
    store.init_with_users();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.bin");
    fs::write(&src, pseudo_random(100_000, 3)).unwrap();
    store.ok(
        &["put", &store.url, src.to_str().unwrap(), "--to", "alice"],
        "",
    );
    let get = [
        "get",
        store.url.as_str(),
        "f.bin",
        "-o",
        "-",
        "--user",
        "alice",
    ];
    const TIMEOUT: u64 = 2;
    // Retries are bounded in time too: the whole command ends within a few timeouts.
    let bound = Duration::from_secs(4 * TIMEOUT + 5);

    // A server that accepts connections and never answers (stopped with SIGSTOP).
    server.pause();
    for args in [
        &get[..],
        &["user", "list", &store.url],
        &["access", &store.url],
    ] {
        let (out, took) = timed(&store, args, TIMEOUT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} succeeded against a hung server"
        );
        assert!(took < bound, "{args:?} took {took:?}: {err}");
        assert!(err.to_lowercase().contains("time"), "{args:?}: {err}");
        eprintln!("{args:?} against a hung server: {took:?}: {}", err.trim());
    }
    server.unpause();
    assert!(timed(&store, &get, TIMEOUT).0.status.success());

    // A server that is gone (connection refused).
    server.stop();
    let (out, took) = timed(&store, &get, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(took < bound, "took {took:?}: {err}");
    // Refused connections are retried until the timeout: the message names the endpoint or
    // the timeout that ended the retries.
    assert!(
        err.contains("127.0.0.1") || err.contains(&format!("within {TIMEOUT} s")),
        "{err}"
    );
    eprintln!("get against a stopped server: {took:?}: {}", err.trim());

    server.resume();
    let (out, _) = timed(&store, &get, TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, fs::read(&src).unwrap());
}
