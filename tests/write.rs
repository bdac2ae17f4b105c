//! Writing through a real mount: saves land encrypted and atomically, for the writer.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::mount::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;

fn py_ok(fx: &MountFixture, uid: u32, code: &str, args: &[&str]) -> String {
    let out = fx.python_as(uid, code, args);
    assert!(out.status.success(), "python failed: {}", stderr(&out));
    stdout(&out)
}

/// Every container in the store opens and authenticates for alice (the CLI `get`), and no
/// backing file holds a 64-byte run of `plain`.
fn assert_store_consistent(fx: &MountFixture, plain: &[&[u8]]) {
    for entry in walk(&fx.store) {
        let name = entry.to_string_lossy().to_string();
        if name.contains("/.tvault/") {
            continue;
        }
        let bytes = fs::read(&entry).unwrap();
        for p in plain {
            assert!(!contains_run(&bytes, p, 64), "{name} holds plaintext");
        }
        if let Some(rel) = name
            .strip_prefix(&format!("{}/", fx.store.display()))
            .and_then(|r| r.strip_suffix(".tvlt"))
        {
            let out = tvault(
                &[
                    "get",
                    s(&fx.store),
                    rel,
                    "-o",
                    "/dev/null",
                    "--user",
                    "alice",
                ],
                "pw-alice\n",
            );
            assert!(
                out.status.success(),
                "{rel}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

const SAVE_LOAD: &str = r#"
import sys, numpy as np
from safetensors.numpy import save_file, load_file
path, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
t = {"w": rng.standard_normal((512, 300), dtype=np.float32), "b": rng.integers(0, 9, 77).astype(np.int64)}
save_file(t, path, metadata={"step": str(seed)})
back = load_file(path)
assert back.keys() == t.keys() and all(back[k].tobytes() == t[k].tobytes() for k in t)
open(sys.argv[3], "wb").write(open(path, "rb").read())
print("ok")
"#;

#[test]
fn save_file_through_the_mount_lands_encrypted_and_survives_remount() {
    let mut fx = MountFixture::new();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let out_dir = fx.mnt.join("ckpt");
    let mk = fx.as_uid(ALICE, "mkdir", &[s(&out_dir)], "");
    assert!(mk.status.success(), "{}", stderr(&mk));
    let target = out_dir.join("model.safetensors");
    let copy = fx.plain_file("copy-v1", b"");
    fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    assert_eq!(
        py_ok(&fx, ALICE, SAVE_LOAD, &[s(&target), "1", s(&copy)]).trim(),
        "ok"
    );
    let v1 = fs::read(&copy).unwrap();
    let backing = fx.store.join("ckpt/model.safetensors.tvlt");
    let backing_v1 = fs::read(&backing).unwrap();
    assert!(!contains_run(&backing_v1, &v1, 64), "plaintext on disk");
    // The saver's temporary file was renamed away: only the target remains.
    let names: Vec<_> = fs::read_dir(fx.store.join("ckpt"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".tvault-dir")
        .collect();
    assert_eq!(names, vec!["model.safetensors.tvlt"]);

    // Overwrite: new content under a new data key; no ciphertext run of v1 survives.
    let copy2 = fx.plain_file("copy-v2", b"");
    fs::set_permissions(&copy2, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    py_ok(&fx, ALICE, SAVE_LOAD, &[s(&target), "2", s(&copy2)]);
    let backing_v2 = fs::read(&backing).unwrap();
    assert_ne!(backing_v1[8..24], backing_v2[8..24], "new file id");
    assert!(
        !contains_run(&backing_v2, &backing_v1[200..], 64),
        "old ciphertext reused"
    );

    fx.unmount();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let out = fx.as_uid(ALICE, "cat", &[s(&target)], "");
    assert_eq!(out.stdout, fs::read(&copy2).unwrap(), "after remount");
    // The writer's key slot is there, so the CLI reads it too; others have none.
    let got = tvault(
        &[
            "get",
            s(&fx.store),
            "ckpt/model.safetensors",
            "-o",
            "-",
            "--user",
            "alice",
        ],
        "pw-alice\n",
    );
    assert_eq!(got.stdout, fs::read(&copy2).unwrap());
    fx.unlock(BOB, "pw-bob");
    assert!(!fx.as_uid(BOB, "cat", &[s(&target)], "").status.success());
    assert_store_consistent(&fx, &[&v1, &fs::read(&copy2).unwrap()]);
}

#[test]
fn differential_random_writes_truncates_and_reads() {
    let mut fx = MountFixture::new();
    // Small chunks so that a few thousand operations cross many chunk boundaries.
    fs::write(
        fx.store.join(".tvault/store.json"),
        "{\"format\":\"tensorvault-store\",\"version\":1,\"chunk_size\":4096}\n",
    )
    .unwrap();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let code = r#"
import os, random, sys
path = sys.argv[1]
rng = random.Random(1234)
model = bytearray()
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
for step in range(3000):
    op = rng.random()
    if op < 0.45:
        off = rng.randrange(0, len(model) + 9000)
        data = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 100, 4095, 4096, 4097, 9000])))
        assert os.pwrite(fd, data, off) == len(data)
        if off > len(model):
            model.extend(b"\0" * (off - len(model)))
        model[off:off + len(data)] = data
    elif op < 0.55:
        size = rng.randrange(0, len(model) + 6000)
        os.ftruncate(fd, size)
        if size < len(model):
            del model[size:]
        else:
            model.extend(b"\0" * (size - len(model)))
    elif op < 0.9:
        off = rng.randrange(0, len(model) + 100)
        n = rng.choice([1, 4096, 5000, 20000])
        got = os.pread(fd, n, off)
        assert got == bytes(model[off:off + n]), ("read", step, off, n)
    elif op < 0.97:
        os.close(fd)  # commits
        assert open(path, "rb").read() == bytes(model), ("reopen", step)
        fd = os.open(path, os.O_RDWR)
    else:
        os.fsync(fd)
        assert os.fstat(fd).st_size == len(model)
os.close(fd)
assert open(path, "rb").read() == bytes(model)
assert os.stat(path).st_size == len(model)
print(len(model))
"#;
    let out = py_ok(&fx, ALICE, code, &[s(&fx.mnt.join("fsx.bin"))]);
    let len: usize = out.trim().parse().unwrap();
    fx.unmount();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let out = fx.as_uid(ALICE, "wc", &["-c", s(&fx.mnt.join("fsx.bin"))], "");
    assert_eq!(
        stdout(&out).split_whitespace().next(),
        Some(len.to_string().as_str())
    );
    assert_store_consistent(&fx, &[]);
}

#[test]
fn writes_need_an_unlocked_writer_and_a_key_slot() {
    let mut fx = MountFixture::new();
    let v = fx.plain_file("v", b"alice's file");
    ok(
        &["put", s(&fx.store), s(&v), "--to", "alice", "--as", "a.txt"],
        "",
    );
    fx.mount(&[]);
    let file = fx.mnt.join("a.txt");
    fn try_write(fx: &MountFixture, uid: u32, path: &std::path::Path) -> std::process::Output {
        fx.python_as(
            uid,
            "import sys; open(sys.argv[1], 'ab').write(b'x')",
            &[s(path)],
        )
    }
    let out = try_write(&fx, ALICE, &fx.mnt.join("new.txt"));
    assert!(
        stderr(&out).contains("Permission denied"),
        "not unlocked: {}",
        stderr(&out)
    );
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    assert!(
        stderr(&try_write(&fx, BOB, &file)).contains("Permission denied"),
        "bob has no slot"
    );
    assert!(
        !fx.as_uid(BOB, "rm", &["-f", s(&file)], "").status.success(),
        "bob cannot delete it"
    );
    assert!(!fx
        .as_uid(BOB, "mv", &[s(&file), s(&fx.mnt.join("b.txt"))], "")
        .status
        .success());
    assert!(try_write(&fx, ALICE, &file).status.success());
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&file)], "")),
        "alice's filex"
    );

    // A policy file adds recipients to new files in its directory tree.
    fs::create_dir_all(fx.store.join("shared/deep")).unwrap();
    fs::write(
        fx.store.join("shared/.tvault-recipients"),
        "# team\nalice bob\n",
    )
    .unwrap();
    let shared_file = fx.mnt.join("shared/deep/s.txt");
    assert!(try_write(&fx, ALICE, &shared_file).status.success());
    assert_eq!(stdout(&fx.as_uid(BOB, "cat", &[s(&shared_file)], "")), "x");
    // bob holds a slot now and the mode lets him write, so he may rewrite it; the new
    // version is encrypted to him and to the policy, which names alice too.
    let chmod = fx.as_uid(ALICE, "chmod", &["666", s(&shared_file)], "");
    assert!(chmod.status.success(), "{}", stderr(&chmod));
    assert!(try_write(&fx, BOB, &shared_file).status.success());
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&shared_file)], "")),
        "xx"
    );

    fx.unmount();
    fx.mount(&["--read-only"]);
    fx.unlock(ALICE, "pw-alice");
    let out = try_write(&fx, ALICE, &file);
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&file)], "")),
        "alice's filex"
    );
}

#[test]
fn cp_r_a_model_directory_then_load_it() {
    let mut fx = MountFixture::new();
    let src = fx.path("hf-model");
    fs::create_dir_all(src.join("tok")).unwrap();
    let st = safetensors_bytes(&[("w", "F32", &[700, 300], 4), ("b", "F16", &[300], 2)]);
    fs::write(src.join("model.safetensors"), &st).unwrap();
    fs::write(src.join("config.json"), b"{\"model_type\": \"x\"}").unwrap();
    fs::write(src.join("tok/tokenizer.json"), pseudo_random(200_000, 4)).unwrap();
    Command::new("chmod")
        .args(["-R", "a+rX", s(&src)])
        .status()
        .unwrap();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let out = fx.as_uid(ALICE, "cp", &["-r", s(&src), s(&fx.mnt)], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let diff = fx.as_uid(
        ALICE,
        "diff",
        &["-r", s(&src), s(&fx.mnt.join("hf-model"))],
        "",
    );
    assert!(diff.status.success(), "{}{}", stdout(&diff), stderr(&diff));
    let code = r#"
import json, os, sys
from safetensors.numpy import load_file
d = sys.argv[1]
cfg = json.load(open(os.path.join(d, "config.json")))
w = load_file(os.path.join(d, "model.safetensors"))
print(cfg["model_type"], sorted(w), w["w"].shape)
"#;
    assert_eq!(
        py_ok(&fx, ALICE, code, &[s(&fx.mnt.join("hf-model"))]).trim(),
        "x ['b', 'w'] (700, 300)"
    );
    assert_store_consistent(&fx, &[&st]);
}

const WRITE_SEEDED: &str = r#"
import hashlib, random, sys
path, seed, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
h = hashlib.sha256()
with open(path, "wb") as f:
    for _ in range(mb * 16):
        block = rng.randbytes(65536)
        h.update(block)
        f.write(block)
print(h.hexdigest())
"#;

#[test]
fn concurrent_writers_to_different_files() {
    let mut fx = MountFixture::new();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let uid = if i % 2 == 0 { ALICE } else { BOB };
            let path = fx.mnt.join(format!("w{i}.bin"));
            let child = Command::new("setpriv")
                .args([
                    "--reuid",
                    &uid.to_string(),
                    "--regid",
                    &uid.to_string(),
                    "--clear-groups",
                    "--",
                ])
                .arg(python())
                .args(["-c", WRITE_SEEDED, s(&path), &i.to_string(), "12"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (uid, path, child)
        })
        .collect();
    for (uid, path, child) in writers {
        let out = wait_with_timeout(child, "writer");
        assert!(out.status.success(), "{}", stderr(&out));
        let expected = stdout(&out).trim().to_string();
        let sum = fx.as_uid(uid, "sha256sum", &[s(&path)], "");
        assert_eq!(
            stdout(&sum).split_whitespace().next(),
            Some(expected.as_str()),
            "{}",
            path.display()
        );
    }
    let status = fx.status();
    assert!(status["open_files"].as_array().unwrap().is_empty());
}

#[test]
fn sigkill_during_a_large_write_keeps_the_previous_version() {
    let mut fx = MountFixture::new();
    let old = pseudo_random(300_000, 21);
    let src = fx.plain_file("old.bin", &old);
    ok(
        &[
            "put",
            s(&fx.store),
            s(&src),
            "--to",
            "alice",
            "--as",
            "big.bin",
        ],
        "",
    );
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let target = fx.mnt.join("big.bin");
    let writer = Command::new("setpriv")
        .args(["--reuid=1001", "--regid=1001", "--clear-groups", "--"])
        .arg(python())
        .args(["-c", WRITE_SEEDED, s(&target), "5", "400"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the draft has grown, then kill the daemon mid-write.
    let start = std::time::Instant::now();
    loop {
        let draft_size: u64 = fs::read_dir(&fx.store)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("tmp-"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum();
        if draft_size > 20 << 20 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "draft never grew"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Command::new("kill")
        .args(["-9", &fx.daemon_pid().unwrap().to_string()])
        .status()
        .unwrap();
    let _ = wait_with_timeout(writer, "killed writer");
    fx.unmount();
    // The old version is intact and authentic; the abandoned draft is not a container.
    let got = tvault(
        &["get", s(&fx.store), "big.bin", "-o", "-", "--user", "alice"],
        "pw-alice\n",
    );
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(got.stdout, old);
    assert_store_consistent(&fx, &[]);
    fx.mount(&[]);
    let names: Vec<_> = fs::read_dir(&fx.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["big.bin"], "drafts stay hidden");
}

#[test]
fn disk_full_gives_enospc_and_keeps_the_old_version() {
    let mut fx = MountFixture::new();
    // A tiny tmpfs holds the store, so the disk fills up during the write.
    let small = fx.path("small");
    fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs", s(&small)])
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(small.clone());
    Command::new("cp")
        .args(["-a", &format!("{}/.", s(&fx.store)), s(&small)])
        .status()
        .unwrap();
    fx.store = small.clone();
    let old = pseudo_random(100_000, 8);
    let src = fx.plain_file("old.bin", &old);
    ok(
        &[
            "put",
            s(&fx.store),
            s(&src),
            "--to",
            "alice",
            "--as",
            "f.bin",
        ],
        "",
    );
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let code = r#"
import errno, sys
try:
    with open(sys.argv[1], "wb") as f:
        for _ in range(200):
            f.write(b"x" * 65536)
    print("no error")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"#;
    let out = py_ok(&fx, ALICE, code, &[s(&fx.mnt.join("f.bin"))]);
    assert_eq!(out.trim(), "ENOSPC");
    assert_eq!(
        fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("f.bin"))], "")
            .stdout,
        old,
        "old version intact"
    );
    fx.unmount();
    let leftovers: Vec<_> = fs::read_dir(&small)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written drafts remain: {leftovers:?}"
    );
}

#[test]
fn moving_a_directory_or_touching_a_file_needs_its_key_slots() {
    let mut fx = MountFixture::new();
    let v = fx.plain_file("v", b"alice's config");
    ok(
        &[
            "put",
            s(&fx.store),
            s(&v),
            "--to",
            "alice",
            "--as",
            "model/config.json",
        ],
        "",
    );
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let dir = fx.mnt.join("model");
    let out = fx.as_uid(BOB, "mv", &[s(&dir), s(&fx.mnt.join("moved"))], "");
    assert!(!out.status.success(), "bob moved alice's directory");
    let out = fx.as_uid(
        BOB,
        "touch",
        &["-d", "2001-01-01", s(&dir.join("config.json"))],
        "",
    );
    assert!(!out.status.success(), "bob changed alice's file times");
    assert!(fx
        .as_uid(ALICE, "mv", &[s(&dir), s(&fx.mnt.join("moved"))], "")
        .status
        .success());
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("moved/config.json"))], "")),
        "alice's config"
    );
}
