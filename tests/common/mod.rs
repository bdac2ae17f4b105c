//! Helpers shared by the integration tests: running the real `tvault` binary, building
//! safetensors files, and stores with fast-KDF users.
#![allow(dead_code)]

pub mod mount;
pub mod s3;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const TVAULT: &str = env!("CARGO_BIN_EXE_tvault");

/// Cheap Argon2id settings so tests do not spend seconds per unlock.
pub const FAST_KDF: [&str; 4] = ["--kdf-memory", "1024", "--kdf-iterations", "1"];

/// The state directory (audit keys, store ids seen) of every tvault process the tests
/// start, instead of /var/lib/tvault. One per test binary run: a key is named after its
/// store's random id (or, for `--audit-log`, its log's path), unique to each test, but the
/// id a host remembers for an S3 store is keyed by its bucket, prefix and endpoint, which
/// an earlier run may have used for another store.
pub fn state_dir() -> PathBuf {
    std::env::temp_dir().join(format!("tvault-test-state-{}", std::process::id()))
}

/// The host id a mount or store command started by the tests uses by default.
pub fn host_id() -> String {
    tensorvault::audit::default_host_id().unwrap()
}

/// This host's audit chain in `store`.
pub fn host_log(store: &Path) -> PathBuf {
    store
        .join(".tvault/audit")
        .join(tensorvault::audit::chain_file(&host_id()))
}

/// The id of `store` (made by its first mount or recorded change).
pub fn store_id(store: &Path) -> String {
    std::fs::read_to_string(store.join(".tvault/store-id"))
        .unwrap()
        .trim()
        .to_string()
}

/// The key of `host`'s chain of `store`, in the tests' state directory.
pub fn host_key(store: &Path, host: &str) -> PathBuf {
    state_dir()
        .join(tensorvault::audit::KEY_DIR)
        .join(store_id(store))
        .join(format!("{host}.key"))
}

pub fn tvault(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(TVAULT)
        .args(args)
        .env("RUST_LOG", "error")
        .env(tensorvault::audit::STATE_DIR_ENV, state_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tvault");
    let mut input = child.stdin.take().expect("stdin");
    // The child may exit (e.g. on a usage error) before reading its stdin.
    if let Err(e) = input.write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    drop(input);
    child.wait_with_output().expect("wait tvault")
}

/// Runs tvault and asserts success, returning stdout.
pub fn ok(args: &[&str], stdin: &str) -> String {
    let out = tvault(args, stdin);
    assert!(
        out.status.success(),
        "tvault {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs tvault and asserts failure, returning stderr.
pub fn fails(args: &[&str], stdin: &str) -> String {
    let out = tvault(args, stdin);
    assert!(
        !out.status.success(),
        "tvault {args:?} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Creates a store with users alice (uid 1001, passphrase "pw-alice") and bob (1002, "pw-bob").
pub fn store_with_users(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    ok(&["init", s(&store)], "");
    for (name, uid) in [("alice", "1001"), ("bob", "1002")] {
        let mut args = vec!["user", "add", s(&store), name, "--uid", uid];
        args.extend(FAST_KDF);
        ok(&args, &format!("pw-{name}\n"));
    }
    store
}

/// Builds a safetensors file: (name, dtype, shape, element size in bytes) with deterministic data.
pub fn safetensors_bytes(tensors: &[(&str, &str, &[u64], u64)]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut offset = 0u64;
    let mut data = Vec::new();
    for (name, dtype, shape, elem) in tensors {
        let n: u64 = shape.iter().product::<u64>() * elem;
        entries.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
            offset + n
        ));
        data.extend((0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(name.len() as u8)));
        offset += n;
    }
    let mut header = format!("{{{}}}", entries.join(","));
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// Deterministic pseudo-random bytes (xorshift), for plaintexts that do not compress.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// True if `haystack` contains any `window`-byte run of `needle`.
pub fn contains_run(haystack: &[u8], needle: &[u8], window: usize) -> bool {
    if needle.len() < window {
        return false;
    }
    let runs: std::collections::HashSet<&[u8]> =
        needle.windows(window).step_by(window / 2).collect();
    haystack.windows(window).any(|w| runs.contains(w))
}

/// Who holds a key slot for `rel`, sorted, from the output of `tvault access --json`.
pub fn readers_in(access_json: &str, rel: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(access_json).unwrap();
    let file = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == rel)
        .unwrap_or_else(|| panic!("{rel} not in access: {v}"));
    let mut names: Vec<String> = file["readers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}
