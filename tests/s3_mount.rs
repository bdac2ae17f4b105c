//! The mount of an `s3://` store, against a real S3-compatible server (s3s-fs) on loopback:
//! reads and writes by users with key slots (EACCES for the rest), ciphertext only on the
//! server and in the disk cache, EIO within the timeout during an outage (and recovery), and
//! atomic replacement by an interrupted or concurrent `put --force`.

mod common;

use std::fs;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::mount::*;
use common::s3::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;
const NOBODY: u32 = 1003;
const MIB: usize = 1 << 20;

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn denied(out: &std::process::Output) -> bool {
    !out.status.success() && stderr(out).contains("Permission denied")
}

/// A store on a fresh server with alice and bob, and a fixture (not mounted) for it.
fn s3_fixture(server: &S3Server, bucket: &str) -> (S3Store, MountFixture) {
    let store = server.store(bucket, "store");
    store.init_with_users();
    let fx = MountFixture::for_store(store.url.clone().into(), server.env());
    (store, fx)
}

/// `put` of `data` as REL for `to`.
fn put(store: &S3Store, fx: &MountFixture, rel: &str, data: &[u8], to: &str) {
    let src = fx.path(&format!("src-{}", rel.replace('/', "_")));
    fs::write(&src, data).unwrap();
    store.ok(&["put", &store.url, s(&src), "--to", to, "--as", rel], "");
}

/// A Python process of `uid` that reads files on request and answers each request with one
/// line: `ok SHA256 LEN SECONDS` or `err ERRNO 0 SECONDS`. Requests: `whole PATH` (open,
/// read to the end, close) and `pread PATH OFFSET LEN` (on a descriptor kept open per path).
struct Reader {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

const READER: &str = r#"
import hashlib, os, sys, time
fds = {}
print("ready", flush=True)
for line in sys.stdin:
    op, path, *rest = line.split()
    t0 = time.monotonic()
    try:
        if op == "whole":
            with open(path, "rb") as f:
                data = f.read()
        else:
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY)
            data = os.pread(fds[path], int(rest[1]), int(rest[0]))
        print("ok", hashlib.sha256(data).hexdigest(), len(data), f"{time.monotonic() - t0:.3f}", flush=True)
    except OSError as e:
        print("err", e.errno, 0, f"{time.monotonic() - t0:.3f}", flush=True)
"#;

#[derive(Debug, PartialEq)]
enum Answer {
    Ok(String),
    Err(i32),
}

impl Reader {
    fn new(uid: u32) -> Reader {
        let (mut child, out) = spawn_python_as(uid, READER, &[]);
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut reader = Reader {
            child,
            stdin,
            lines,
        };
        assert_eq!(reader.line(), "ready");
        reader
    }

    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(COMMAND_TIMEOUT)
            .expect("the reader answered in time (a hang on the mount?)")
    }

    /// Sends one request; returns the answer and how long the read took.
    fn ask(&mut self, request: &str) -> (Answer, Duration) {
        writeln!(self.stdin, "{request}").unwrap();
        let line = self.line();
        let f: Vec<&str> = line.split_whitespace().collect();
        let took = Duration::from_secs_f64(f[3].parse().unwrap());
        match f[0] {
            "ok" => (Answer::Ok(f[1].to_string()), took),
            _ => (Answer::Err(f[1].parse().unwrap()), took),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_mount_of_an_s3_store_serves_users_with_key_slots_only() {
    let server = S3Server::start();
    let (store, mut fx) = s3_fixture(&server, "models");
    let model = fx.path("model");
    fs::create_dir_all(&model).unwrap();
    let st = safetensors_bytes(&[
        ("embed", "F32", &[1000, 256], 4),
        ("layer.0", "F16", &[256, 1024], 2),
        ("small", "I64", &[3], 8),
    ]);
    fs::write(model.join("model.safetensors"), &st).unwrap();
    fs::write(model.join("config.json"), b"{\"model_type\": \"tiny\"}\n").unwrap();
    store.ok(&["put", &store.url, s(&model), "--to", "alice"], "");
    fx.mount(&[]);
    let file = fx.mnt.join("model/model.safetensors");

    let names: Vec<_> = fs::read_dir(&fx.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["model"]);
    assert_eq!(fs::metadata(&file).unwrap().len(), st.len() as u64);
    assert!(denied(&fx.as_uid(ALICE, "cat", &[s(&file)], "")), "locked");
    fx.unlock(ALICE, "pw-alice");
    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&file)], "").stdout, st);

    // cp -a of the model directory, as alice, into a directory of hers.
    let copy = fx.path("copy");
    fs::create_dir(&copy).unwrap();
    std::os::unix::fs::chown(&copy, Some(ALICE), Some(ALICE)).unwrap();
    let out = fx.as_uid(ALICE, "cp", &["-a", s(&fx.mnt.join("model")), s(&copy)], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(copy.join("model/model.safetensors")).unwrap(), st);
    assert_eq!(
        fs::read(copy.join("model/config.json")).unwrap(),
        b"{\"model_type\": \"tiny\"}\n"
    );

    // Python safetensors: load_file and a lazy get_tensor agree with the plaintext (compared
    // as bytes: the test data holds NaNs).
    let plain = fx.plain_file("plain.safetensors", &st);
    let out = fx.python_as(
        ALICE,
        r#"
import sys
from safetensors.numpy import load_file
from safetensors import safe_open
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
with safe_open(sys.argv[1], framework="np") as f:
    assert f.get_tensor("small").tobytes() == b["small"].tobytes()
print("same")
"#,
        &[s(&file), s(&plain)],
    );
    assert_eq!(stdout(&out).trim(), "same", "{}", stderr(&out));

    // bob holds no slot; uid 1003 has no keyring.
    fx.unlock(BOB, "pw-bob");
    assert!(denied(&fx.as_uid(BOB, "cat", &[s(&file)], "")), "bob");
    assert!(denied(&fx.as_uid(NOBODY, "cat", &[s(&file)], "")), "nobody");

    // Writes through the mount land on the server sealed, and read back (mount and CLI).
    let written = pseudo_random(3 * MIB + 123, 11);
    let src = fx.plain_file("written.bin", &written);
    let out_dir = fx.mnt.join("out");
    let out = fx.as_uid(ALICE, "mkdir", &[s(&out_dir)], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let dst = out_dir.join("new.bin");
    let out = fx.as_uid(ALICE, "cp", &[s(&src), s(&dst)], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&dst)], "").stdout, written);
    let got = store.run(
        &[
            "get",
            &store.url,
            "out/new.bin",
            "-o",
            "-",
            "--user",
            "alice",
        ],
        "pw-alice\n",
    );
    assert!(got.stdout == written, "get after a write through the mount");
    assert!(store.dir.join("out/new.bin.tvlt").is_file());
    for (path, bytes) in files_under(server.data_dir()) {
        for p in [&st, &written] {
            assert!(!contains_run(&bytes, p, 32), "plaintext in {path:?}");
        }
    }
    let out = fx.as_uid(ALICE, "rm", &[s(&dst)], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!store.dir.join("out/new.bin.tvlt").exists());
}

#[test]
fn a_read_during_an_outage_fails_with_eio_within_the_timeout_and_works_after() {
    let mut server = S3Server::start();
    let (store, mut fx) = s3_fixture(&server, "outage");
    let a = pseudo_random(MIB, 1);
    let b = pseudo_random(MIB, 2);
    let c = pseudo_random(32 * MIB, 3);
    for (rel, data) in [("a.bin", &a), ("b.bin", &b), ("c.bin", &c)] {
        put(&store, &fx, rel, data, "alice");
    }
    const TIMEOUT: u64 = 2;
    fx.mount(&["--s3-timeout", &TIMEOUT.to_string()]);
    fx.unlock(ALICE, "pw-alice");
    let path = |rel: &str| fx.mnt.join(rel).to_str().unwrap().to_string();
    let (pa, pb, pc) = (path("a.bin"), path("b.bin"), path("c.bin"));
    let mut reader = Reader::new(ALICE);
    assert_eq!(reader.ask(&format!("whole {pa}")).0, Answer::Ok(sha(&a)));
    assert_eq!(
        reader.ask(&format!("pread {pc} 0 4096")).0,
        Answer::Ok(sha(&c[..4096]))
    );
    let bound = Duration::from_secs(3 * TIMEOUT + 4);
    let at = 30 * MIB;

    // Hung server: a new open and a read of an open file both fail with EIO, in time.
    server.pause();
    for request in [format!("whole {pb}"), format!("pread {pc} {at} 65536")] {
        let (answer, took) = reader.ask(&request);
        eprintln!("{request} against a hung server: {answer:?} in {took:?}");
        assert_eq!(answer, Answer::Err(libc::EIO), "{request}");
        assert!(took < bound, "{request} took {took:?}");
    }
    server.unpause();
    assert_eq!(reader.ask(&format!("whole {pb}")).0, Answer::Ok(sha(&b)));
    assert_eq!(
        reader.ask(&format!("pread {pc} {at} 65536")).0,
        Answer::Ok(sha(&c[at..at + 65536]))
    );

    // Server gone (connection refused), then back on the same address.
    server.stop();
    let at = 20 * MIB;
    let (answer, took) = reader.ask(&format!("pread {pc} {at} 65536"));
    eprintln!("pread against a stopped server: {answer:?} in {took:?}");
    assert_eq!(answer, Answer::Err(libc::EIO));
    assert!(took < bound, "took {took:?}");
    server.resume();
    assert_eq!(
        reader.ask(&format!("pread {pc} {at} 65536")).0,
        Answer::Ok(sha(&c[at..at + 65536]))
    );
    assert_eq!(reader.ask(&format!("whole {pc}")).0, Answer::Ok(sha(&c)));
}

/// True once the server holds a part of a multipart upload (s3s-fs keeps parts as
/// `.upload_id-UUID.part-N` in its data directory until the upload completes).
fn upload_part_landed(server: &S3Server) -> bool {
    fs::read_dir(server.data_dir())
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
}

#[test]
fn an_interrupted_put_leaves_the_old_version_and_readers_see_old_or_new() {
    let server = S3Server::start();
    let (store, mut fx) = s3_fixture(&server, "atomic");
    let old = pseudo_random(48 * MIB, 1);
    let new = pseudo_random(48 * MIB, 2);
    put(&store, &fx, "big.bin", &old, "alice");
    let new_src = fx.plain_file("new.bin", &new);
    let force = [
        "put",
        store.url.as_str(),
        s(&new_src),
        "--to",
        "alice",
        "--as",
        "big.bin",
        "--force",
    ];
    let get = |user: &str| {
        store.run(
            &["get", &store.url, "big.bin", "-o", "-", "--user", user],
            &format!("pw-{user}\n"),
        )
    };

    // SIGKILL of `put --force` once its multipart upload is under way.
    let mut child = store
        .command(&force)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !upload_part_landed(&server) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("put --force ended ({status}) before any multipart part was uploaded");
        }
        assert!(start.elapsed() < COMMAND_TIMEOUT, "no upload started");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(child.try_wait().unwrap().is_none(), "put finished too soon");
    child.kill().unwrap();
    child.wait().unwrap();
    let out = get("alice");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout == old,
        "the old version, whole, after the interrupted put"
    );
    store.ok(&["fsck", &store.url, "--user", "alice"], "pw-alice\n");

    // Through the mount, while a put --force runs to completion: a file open across the
    // replacement reads old bytes or fails (EIO), never new ones; so does each whole read.
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let file = fx.mnt.join("big.bin");
    let mut reader = Reader::new(ALICE);
    let pinned = format!("pread {} 0 {MIB}", s(&file));
    assert_eq!(reader.ask(&pinned).0, Answer::Ok(sha(&old[..MIB])));
    let (old_sha, new_sha) = (sha(&old), sha(&new));
    let writer = store
        .command(&force)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let writer = std::thread::spawn(move || wait_with_timeout(writer, "put --force"));
    let (mut seen, mut failed) = (Vec::new(), 0);
    while !writer.is_finished() {
        match reader.ask(&format!("whole {}", s(&file))).0 {
            Answer::Ok(h) => seen.push(h),
            Answer::Err(e) => {
                assert_eq!(
                    e,
                    libc::EIO,
                    "a read that spans the replacement fails with EIO"
                );
                failed += 1;
            }
        }
    }
    assert!(writer.join().unwrap().status.success());
    for h in &seen {
        assert!(*h == old_sha || *h == new_sha, "a mix of versions was read");
    }
    eprintln!(
        "during the replacement: {} whole reads, {failed} failed",
        seen.len()
    );
    let at = 40 * MIB;
    match reader.ask(&format!("pread {} {at} {MIB}", s(&file))).0 {
        Answer::Ok(h) => assert_eq!(h, sha(&old[at..at + MIB]), "old bytes or an error"),
        Answer::Err(e) => assert_eq!(e, libc::EIO),
    }
    std::thread::sleep(Duration::from_millis(1100)); // attribute TTL
    assert_eq!(
        reader.ask(&format!("whole {}", s(&file))).0,
        Answer::Ok(new_sha)
    );
}

/// Total bytes in the files under `dir`.
fn bytes_under(dir: &std::path::Path) -> usize {
    files_under(dir).iter().map(|(_, b)| b.len()).sum()
}

#[test]
fn the_disk_cache_holds_ciphertext_only_within_its_bound_and_survives_corruption() {
    let server = S3Server::start();
    let (store, mut fx) = s3_fixture(&server, "cached");
    let big = pseudo_random(12 * MIB, 5);
    let small = pseudo_random(MIB, 6);
    put(&store, &fx, "big.bin", &big, "alice");
    put(&store, &fx, "small.bin", &small, "alice");
    let cache = fx.path("cache");
    const BOUND: usize = 4 * MIB;
    let flags = [
        "--disk-cache",
        s(&cache),
        "--disk-cache-size",
        &BOUND.to_string(),
    ];
    let flags: Vec<&str> = flags.to_vec();
    fx.mount(&flags);
    fx.unlock(ALICE, "pw-alice");
    let cat = |fx: &MountFixture, rel: &str| fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join(rel))], "");
    assert!(cat(&fx, "big.bin").stdout == big);
    assert!(cat(&fx, "small.bin").stdout == small);
    let used = bytes_under(&cache);
    eprintln!("disk cache after reading 13 MiB: {used} bytes (bound {BOUND})");
    assert!(used > 0, "the cache was used");
    assert!(used <= BOUND, "{used} bytes in the cache, over {BOUND}");
    for (path, bytes) in files_under(&cache) {
        for p in [&big, &small] {
            assert!(!contains_run(&bytes, p, 32), "plaintext in {path:?}");
        }
    }

    // Flip bytes all through every cache file; a fresh mount with the same cache still reads
    // the right bytes (corrupt blocks are detected and fetched again).
    fx.unmount();
    let mut flipped = 0;
    for (path, mut bytes) in files_under(&cache) {
        for i in (bytes.len() / 2..bytes.len()).step_by(4096) {
            bytes[i] ^= 0xff;
            flipped += 1;
        }
        fs::write(&path, bytes).unwrap();
    }
    assert!(flipped > 0);
    fx.mount(&flags);
    fx.unlock(ALICE, "pw-alice");
    assert!(
        cat(&fx, "small.bin").stdout == small,
        "small after corruption"
    );
    assert!(cat(&fx, "big.bin").stdout == big, "big after corruption");
    assert!(bytes_under(&cache) <= BOUND);
}
