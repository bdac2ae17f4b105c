//! Real FUSE mounts read by real processes running as other uids. Needs root and /dev/fuse.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::mount::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;
const NOBODY: u32 = 1003;

/// A model directory: a ~6 MB safetensors file with several tensors, plus companions.
fn put_model(fx: &MountFixture, to: &str) -> Vec<u8> {
    let model = fx.path("model");
    fs::create_dir_all(&model).unwrap();
    let st = safetensors_bytes(&[
        ("embed", "F32", &[1000, 256], 4),
        ("layer.0", "F32", &[256, 1024], 4),
        ("layer.1", "F16", &[256, 1024], 2),
        ("small", "I64", &[3], 8),
        ("layer.2", "F32", &[256, 2048], 4),
    ]);
    fs::write(model.join("model.safetensors"), &st).unwrap();
    fs::write(model.join("config.json"), b"{\"model_type\": \"tiny\"}\n").unwrap();
    ok(&["put", s(&fx.store), s(&model), "--to", to], "");
    st
}

fn denied(out: &std::process::Output) -> bool {
    !out.status.success() && stderr(out).contains("Permission denied")
}

#[test]
fn only_unlocked_users_with_a_key_slot_can_read() {
    let mut fx = MountFixture::new();
    let st = put_model(&fx, "alice");
    fs::write(fx.store.join("stray.txt"), b"not a container").unwrap();
    fx.mount(&[]);
    let file = fx.mnt.join("model/model.safetensors");

    // The listing shows plaintext names and sizes; store metadata and strays are hidden.
    let names: Vec<_> = fs::read_dir(&fx.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["model"]);
    assert_eq!(fs::metadata(&file).unwrap().len(), st.len() as u64);
    assert!(fs::metadata(fx.mnt.join(".tvault")).is_err());

    assert!(
        denied(&fx.as_uid(ALICE, "cat", &[s(&file)], "")),
        "before unlock"
    );
    fx.unlock(ALICE, "pw-alice");
    let out = fx.as_uid(ALICE, "sha256sum", &[s(&file)], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let plain = fx.plain_file("plain.safetensors", &st);
    let expected = String::from_utf8(
        Command::new("sha256sum")
            .arg(&plain)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        stdout(&out).split_whitespace().next(),
        expected.split_whitespace().next()
    );
    let head = fx.as_uid(ALICE, "head", &["-c", "100", s(&file)], "");
    assert_eq!(head.stdout, &st[..100]);
    let cfg = fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("model/config.json"))], "");
    assert_eq!(stdout(&cfg), "{\"model_type\": \"tiny\"}\n");

    // bob has a keyring but no slot; uid 1003 has no keyring at all.
    assert!(
        denied(&fx.as_uid(BOB, "cat", &[s(&file)], "")),
        "bob locked"
    );
    fx.unlock(BOB, "pw-bob");
    assert!(
        denied(&fx.as_uid(BOB, "cat", &[s(&file)], "")),
        "bob without a slot"
    );
    assert!(
        denied(&fx.as_uid(NOBODY, "cat", &[s(&file)], "")),
        "no keyring"
    );
    let out = fx.tvault_as(NOBODY, &["unlock", s(&fx.mnt)], "whatever\n");
    assert!(
        !out.status.success() && stderr(&out).contains("no keyring"),
        "{}",
        stderr(&out)
    );
    // root is just another uid without a keyring: it gets no plaintext either.
    assert!(fs::read(&file).is_err());

    let status = fx.status();
    assert_eq!(status["unlocked"].as_array().unwrap().len(), 2);
    assert!(status["opens_denied"].as_u64().unwrap() >= 4);
    // Each refusal is in the audit log with its reason.
    let audit = fs::read_to_string(host_log(&fx.store)).unwrap();
    for reason in ["locked", "no-key-slot", "no-keyring"] {
        assert!(
            audit.contains(&format!("\"reason\":\"{reason}\"")),
            "{reason}: {audit}"
        );
    }
}

#[test]
fn python_safetensors_load_file_safe_open_and_mmap() {
    let mut fx = MountFixture::new();
    let st = put_model(&fx, "alice");
    let plain = fx.plain_file("plain.safetensors", &st);
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let mounted = fx.mnt.join("model/model.safetensors");
    let code = r#"
import mmap, sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
mounted, plain = sys.argv[1], sys.argv[2]
a, b = load_file(mounted), load_file(plain)
assert a.keys() == b.keys(), (a.keys(), b.keys())
for k in a:
    assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
with safe_open(mounted, framework="numpy") as f:
    assert f.get_tensor("layer.1").tobytes() == b["layer.1"].tobytes()
with open(mounted, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    assert m[:] == open(plain, "rb").read()
print("ok")
"#;
    let out = fx.python_as(ALICE, code, &[s(&mounted), s(&plain)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ok");
}

#[test]
fn one_tensor_decrypts_only_its_chunks() {
    let mut fx = MountFixture::new();
    let model = fx.path("big");
    fs::create_dir_all(&model).unwrap();
    // 40 MiB of tensors; the one we want is 1 MiB in the middle.
    let mut tensors: Vec<(String, &str, Vec<u64>, u64)> = (0..20)
        .map(|i| (format!("w{i:02}"), "F32", vec![512, 1024], 4))
        .collect();
    tensors.insert(10, ("wanted".into(), "F32", vec![256, 1024], 4));
    let spec: Vec<(&str, &str, &[u64], u64)> = tensors
        .iter()
        .map(|(n, d, sh, e)| (n.as_str(), *d, sh.as_slice(), *e))
        .collect();
    let st = safetensors_bytes(&spec);
    fs::write(model.join("m.safetensors"), &st).unwrap();
    ok(
        &[
            "put",
            s(&fx.store),
            s(&model.join("m.safetensors")),
            "--to",
            "alice",
        ],
        "",
    );
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let code = r#"
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="numpy") as f:
    t = f.get_tensor("wanted")
print(t.nbytes)
"#;
    let out = fx.python_as(ALICE, code, &[s(&fx.mnt.join("m.safetensors"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), (1u64 << 20).to_string());
    let decrypted = fx.status()["bytes_decrypted"].as_u64().unwrap();
    // Header chunks + the 1 MiB tensor + kernel readahead: far less than the 41 MiB file.
    assert!(
        decrypted < 8 << 20,
        "decrypted {decrypted} of {} bytes",
        st.len()
    );
    eprintln!(
        "get_tensor(1 MiB of {} bytes) decrypted {decrypted} bytes",
        st.len()
    );
}

#[test]
fn random_preads_match_the_plaintext() {
    let mut fx = MountFixture::new();
    let data = pseudo_random(3 * 65536 + 12345, 42);
    let src = fx.plain_file("data.bin", &data);
    for chunk in ["4K", "64K"] {
        ok(
            &[
                "put",
                s(&fx.store),
                s(&src),
                "--to",
                "alice",
                "--as",
                &format!("r{chunk}.bin"),
                "--chunk-size",
                chunk,
            ],
            "",
        );
    }
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let code = r#"
import os, random, sys
plain = open(sys.argv[1], "rb").read()
rng = random.Random(7)
for path in sys.argv[2:]:
    fd = os.open(path, os.O_RDONLY)
    for i in range(2000):
        off = rng.choice([rng.randrange(0, len(plain) + 5000), rng.randrange(0, 4) * 4096 - rng.randrange(0, 3)])
        off = max(off, 0)
        n = rng.choice([1, 7, 4095, 4096, 4097, 65536, 65537, 200000])
        got = os.pread(fd, n, off)
        assert got == plain[off:off + n], (path, off, n, len(got))
    os.close(fd)
print("ok")
"#;
    let out = fx.python_as(
        ALICE,
        code,
        &[
            s(&src),
            s(&fx.mnt.join("r4K.bin")),
            s(&fx.mnt.join("r64K.bin")),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn lock_refuses_new_opens_and_force_cuts_off_open_files() {
    let mut fx = MountFixture::new();
    let data = pseudo_random(300_000, 5);
    let src = fx.plain_file("d.bin", &data);
    ok(&["put", s(&fx.store), s(&src), "--to", "alice"], "");
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let file = fx.mnt.join("d.bin");
    // A holder process reads, waits for a line on stdin, then reads again.
    let holder_code = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
assert len(os.pread(fd, 1000, 0)) == 1000
print("opened", flush=True)
sys.stdin.readline()
try:
    os.pread(fd, 1000, 200000)
    print("read-ok", flush=True)
except OSError as e:
    print("read-failed", e.errno, flush=True)
"#;
    let mut holder = Command::new("setpriv")
        .args([
            "--reuid=1001",
            "--regid=1001",
            "--clear-groups",
            "--",
            &python(),
            "-c",
            holder_code,
            s(&file),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "opened");

    let refused = fx.tvault_as(ALICE, &["lock", s(&fx.mnt)], "");
    assert!(
        !refused.status.success() && stderr(&refused).contains("still open"),
        "{}",
        stderr(&refused)
    );
    let forced = fx.tvault_as(ALICE, &["lock", s(&fx.mnt), "--force"], "");
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(
        stdout(&forced).contains("1 open file(s) invalidated"),
        "{}",
        stdout(&forced)
    );

    std::io::Write::write_all(holder.stdin.as_mut().unwrap(), b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        "read-failed 13",
        "reads on a handle opened before the lock"
    );
    let _ = holder.wait();
    assert!(
        denied(&fx.as_uid(ALICE, "cat", &[s(&file)], "")),
        "new opens after lock"
    );
    // Unlocking again restores access.
    fx.unlock(ALICE, "pw-alice");
    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&file)], "").stdout, data);
}

#[test]
fn store_changes_apply_without_remount() {
    let mut fx = MountFixture::new();
    let v1 = fx.plain_file("v1", b"version one");
    ok(
        &[
            "put",
            s(&fx.store),
            s(&v1),
            "--to",
            "alice",
            "--as",
            "f.txt",
        ],
        "",
    );
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let file = fx.mnt.join("f.txt");
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&file)], "")),
        "version one"
    );
    assert!(denied(&fx.as_uid(BOB, "cat", &[s(&file)], "")));

    ok(
        &["grant", s(&fx.store), "f.txt", "bob", "--user", "alice"],
        "pw-alice\n",
    );
    assert_eq!(
        stdout(&fx.as_uid(BOB, "cat", &[s(&file)], "")),
        "version one",
        "grantee reads at once"
    );
    ok(&["revoke", s(&fx.store), "f.txt", "bob"], "");
    assert!(
        denied(&fx.as_uid(BOB, "cat", &[s(&file)], "")),
        "revoked user refused at once"
    );

    // Replaced content is seen by the next open (the kernel page cache is not reused).
    let v2 = fx.plain_file("v2", b"version two, longer");
    ok(
        &[
            "put",
            s(&fx.store),
            s(&v2),
            "--to",
            "alice",
            "--as",
            "f.txt",
            "--force",
        ],
        "",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100)); // attribute TTL
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&file)], "")),
        "version two, longer"
    );

    // New files and new users appear too.
    let mut args = vec!["user", "add", s(&fx.store), "carol", "--uid", "1003"];
    args.extend(FAST_KDF);
    ok(&args, "pw-carol\n");
    ok(
        &[
            "put",
            s(&fx.store),
            s(&v1),
            "--to",
            "carol",
            "--as",
            "new/dir/g.txt",
        ],
        "",
    );
    fx.unlock(NOBODY, "pw-carol");
    assert_eq!(
        stdout(&fx.as_uid(NOBODY, "cat", &[s(&fx.mnt.join("new/dir/g.txt"))], "")),
        "version one"
    );
}

#[test]
fn wrong_passphrases_are_refused_then_rate_limited() {
    let mut fx = MountFixture::new();
    fx.mount(&[]);
    for attempt in 0..3 {
        let out = fx.tvault_as(ALICE, &["unlock", s(&fx.mnt)], "wrong\n");
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("wrong passphrase"),
            "attempt {attempt}: {}",
            stderr(&out)
        );
    }
    let out = fx.tvault_as(ALICE, &["unlock", s(&fx.mnt)], "pw-alice\n");
    assert!(
        stderr(&out).contains("too many failed attempts"),
        "{}",
        stderr(&out)
    );
    // Other users are not slowed down by alice's failures.
    fx.unlock(BOB, "pw-bob");
}

#[test]
fn a_tampered_chunk_fails_only_the_reads_that_touch_it() {
    let mut fx = MountFixture::new();
    let data = pseudo_random(16 * 4096, 9);
    let src = fx.plain_file("t.bin", &data);
    ok(
        &[
            "put",
            s(&fx.store),
            s(&src),
            "--to",
            "alice",
            "--chunk-size",
            "4K",
        ],
        "",
    );
    // Flip one byte of chunk 3's ciphertext in the backing file.
    let backing = fx.store.join("t.bin.tvlt");
    let mut bytes = fs::read(&backing).unwrap();
    let slots_len = u32::from_le_bytes(bytes[60..64].try_into().unwrap()) as usize;
    bytes[64 + slots_len + 3 * 4096 + 17] ^= 1;
    fs::write(&backing, &bytes).unwrap();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let code = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
res = []
for chunk in [0, 3, 5, 15]:
    try:
        os.pread(fd, 4096, chunk * 4096)
        res.append("ok")
    except OSError as e:
        res.append(str(e.errno))
print(" ".join(res))
"#;
    let out = fx.python_as(ALICE, code, &[s(&fx.mnt.join("t.bin"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "ok 5 ok ok",
        "EIO (5) only for chunk 3"
    );
    assert!(fx.status()["integrity_failures"].as_u64().unwrap() >= 1);
}

#[test]
fn concurrent_readers_of_different_uids() {
    let mut fx = MountFixture::new();
    let data = pseudo_random(8 << 20, 11);
    let src = fx.plain_file("c.bin", &data);
    ok(&["put", s(&fx.store), s(&src), "--to", "alice,bob"], "");
    fx.mount(&["--cache-size", "4M"]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let file = fx.mnt.join("c.bin");
    let spawn = |uid: u32| {
        Command::new("setpriv")
            .args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &uid.to_string(),
                "--clear-groups",
                "--",
                "sha256sum",
                s(&file),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let readers: Vec<_> = (0..4)
        .map(|i| spawn(if i % 2 == 0 { ALICE } else { BOB }))
        .collect();
    let expected =
        String::from_utf8(Command::new("sha256sum").arg(&src).output().unwrap().stdout).unwrap();
    for r in readers {
        let out = wait_with_timeout(r, "concurrent sha256sum");
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            stdout(&out).split_whitespace().next(),
            expected.split_whitespace().next()
        );
    }
    let cache = &fx.status()["cache"];
    assert!(
        cache["bytes"].as_u64().unwrap() <= 4 << 20,
        "cache bound: {cache}"
    );
    // Buffers: the cache's, a few in flight, and at most one partly used 2 MiB slab more.
    assert!(
        cache["buffer_bytes"].as_u64().unwrap() <= 8 << 20,
        "buffer memory: {cache}"
    );
}

#[test]
fn sigkill_of_the_daemon_leaves_the_store_intact() {
    let mut fx = MountFixture::new();
    let data = pseudo_random(1 << 20, 13);
    let src = fx.plain_file("k.bin", &data);
    ok(&["put", s(&fx.store), s(&src), "--to", "alice"], "");
    let backing_before = fs::read(fx.store.join("k.bin.tvlt")).unwrap();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    assert_eq!(
        fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("k.bin"))], "")
            .stdout,
        data
    );
    let pid = fx.daemon_pid().unwrap();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("k.bin"))], "");
    assert!(!out.status.success(), "a dead daemon serves nothing");
    // `tvault umount` detaches the dead mount; a new mount then works.
    let out = run(
        {
            let mut c = Command::new(&fx.bin);
            c.args(["umount", s(&fx.mnt)]);
            c
        },
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_mounted(&fx.mnt));
    assert_eq!(
        fs::read(fx.store.join("k.bin.tvlt")).unwrap(),
        backing_before
    );
    fx.unmount();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    assert_eq!(
        fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("k.bin"))], "")
            .stdout,
        data
    );
}

#[test]
fn mount_errors_are_clear() {
    let mut fx = MountFixture::new();
    let not_store = fx.path("empty");
    fs::create_dir(&not_store).unwrap();
    let err = fails(&["mount", s(&not_store), s(&fx.mnt), "--foreground"], "");
    assert!(err.contains("not a tensorvault store"), "{err}");
    let err = fails(
        &[
            "mount",
            s(&fx.store),
            s(&fx.path("missing")),
            "--foreground",
        ],
        "",
    );
    assert!(err.contains("mountpoint does not exist"), "{err}");
    fx.mount(&[]);
    let err = fails(&["mount", s(&fx.store), s(&fx.mnt), "--foreground"], "");
    assert!(err.contains("already a mount point"), "{err}");
    let err = fails(&["unlock", s(&fx.path("empty"))], "pw\n");
    assert!(err.contains("no tvault mount contains"), "{err}");
    for bad in ["3K", "32M", "6000"] {
        let err = fails(&["mount", s(&fx.store), s(&fx.mnt), "--readahead", bad], "");
        assert!(
            err.contains("multiple of 4K from 4K to 16M"),
            "{bad}: {err}"
        );
    }
}

/// The mount's kernel readahead window (what one first access through mmap decrypts) is
/// 512 KiB unless `--readahead` says otherwise.
#[test]
fn readahead_window_follows_the_mount_option() {
    use std::os::unix::fs::MetadataExt;
    let knob = |mnt: &std::path::Path| {
        let dev = fs::metadata(mnt).unwrap().dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
            .unwrap()
            .trim()
            .to_string()
    };
    let mut fx = MountFixture::new();
    fx.mount(&[]);
    assert_eq!(knob(&fx.mnt), "512");
    fx.unmount();
    fx.mount(&["--readahead", "1M"]);
    assert_eq!(knob(&fx.mnt), "1024");
}

#[test]
fn background_daemon_mounts_and_umount_stops_it() {
    let fx = MountFixture::new();
    let v = fx.plain_file("v", b"hello");
    ok(&["put", s(&fx.store), s(&v), "--to", "alice"], "");
    let out = ok(&["mount", s(&fx.store), s(&fx.mnt)], "");
    assert!(out.contains("mounted"), "{out}");
    assert!(is_mounted(&fx.mnt));
    let pid = fx.status()["pid"].as_u64().unwrap();
    fx.unlock(ALICE, "pw-alice");
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("v"))], "")),
        "hello"
    );
    let err = String::from_utf8_lossy(&fx.tvault_as(ALICE, &["umount", s(&fx.mnt)], "").stderr)
        .into_owned();
    assert!(err.contains("only root or the user who mounted"), "{err}");
    ok(&["umount", s(&fx.mnt)], "");
    assert!(!is_mounted(&fx.mnt));
    // The detached daemon is reparented, so it may linger as a zombie: "exited" means gone
    // or in state Z.
    let start = std::time::Instant::now();
    let running = || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|st| {
                !st.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    };
    while running() && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!running(), "daemon still running after umount");
}

#[test]
fn unlocking_again_keeps_open_files_and_locking_everyone_drops_plaintext() {
    let mut fx = MountFixture::new();
    let data = pseudo_random(200_000, 3);
    let src = fx.plain_file("d.bin", &data);
    ok(&["put", s(&fx.store), s(&src), "--to", "alice"], "");
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let code = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.pread(fd, 10, 0)
print("opened", flush=True)
sys.stdin.readline()
print(len(os.pread(fd, 1000, 150000)), flush=True)
"#;
    let mut holder = Command::new("setpriv")
        .args([
            "--reuid=1001",
            "--regid=1001",
            "--clear-groups",
            "--",
            &python(),
            "-c",
            code,
            s(&fx.mnt.join("d.bin")),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    fx.unlock(ALICE, "pw-alice");
    std::io::Write::write_all(holder.stdin.as_mut().unwrap(), b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        "1000",
        "the handle still reads after a second unlock"
    );
    let _ = holder.wait();
    assert!(fx.status()["cache"]["bytes"].as_u64().unwrap() > 0);
    assert!(fx
        .tvault_as(ALICE, &["lock", s(&fx.mnt)], "")
        .status
        .success());
    assert_eq!(
        fx.status()["cache"]["bytes"],
        0,
        "no plaintext kept with nobody unlocked"
    );
}

#[test]
fn concurrent_wrong_passphrases_cannot_outrun_the_rate_limit() {
    let mut fx = MountFixture::new();
    fx.mount(&[]);
    let attempts: Vec<_> = (0..12)
        .map(|_| {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=1001", "--regid=1001", "--clear-groups", "--"])
                .arg(&fx.bin)
                .args(["unlock", s(&fx.mnt)])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn().unwrap();
            std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"wrong\n").unwrap();
            drop(child.stdin.take());
            child
        })
        .collect();
    let tried = attempts
        .into_iter()
        .map(|c| stderr(&wait_with_timeout(c, "unlock")))
        .filter(|e| e.contains("wrong passphrase"))
        .count();
    assert!(
        tried <= 3,
        "{tried} passphrases were tried despite the backoff"
    );
}

#[test]
fn daemon_memory_stays_within_the_cache_bound_while_streaming() {
    let mut fx = MountFixture::new();
    let src = fx.path("big.bin");
    let data = pseudo_random(8 << 20, 5);
    {
        use std::io::Write;
        let mut f = fs::File::create(&src).unwrap();
        for _ in 0..40 {
            f.write_all(&data).unwrap(); // 320 MiB
        }
    }
    ok(&["put", s(&fx.store), s(&src), "--to", "alice"], "");
    fs::remove_file(&src).unwrap();
    fx.mount(&["--cache-size", "32M"]);
    fx.unlock(ALICE, "pw-alice");
    let out = fx.as_uid(
        ALICE,
        "dd",
        &[
            &format!("if={}", s(&fx.mnt.join("big.bin"))),
            "of=/dev/null",
            "bs=1M",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let status = fs::read_to_string(format!("/proc/{}/status", fx.daemon_pid().unwrap())).unwrap();
    let kb = |key: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // The mapped ciphertext is released as it is decrypted, so the peak resident set is the
    // cache plus a fixed overhead, not the file size.
    assert!(
        kb("VmHWM:") <= (32 + 64) * 1024,
        "peak RSS {} KiB with a 32 MiB cache (now anon {} KiB, file {} KiB)",
        kb("VmHWM:"),
        kb("RssAnon:"),
        kb("RssFile:")
    );
}

/// A key slot the store's writer planted for bob, wrapping a key of its own choosing,
/// authenticates (it is sealed to bob's public key) but its key does not match the header.
/// Bob must get EIO even when alice has the file open and its reader is cached.
#[test]
fn a_planted_slot_opens_nothing_even_while_the_file_is_cached() {
    use tensorvault::container::{Container, KeySlot};
    use tensorvault::crypto::SecretKey;
    use tensorvault::store::Store;

    let mut fx = MountFixture::new();
    let data = pseudo_random(3 * 65536 + 5, 21);
    let src = fx.plain_file("p.bin", &data);
    ok(&["put", s(&fx.store), s(&src), "--to", "alice"], "");
    let backing = fx.store.join("p.bin.tvlt");
    let bytes = fs::read(&backing).unwrap();
    let container = Container::parse(bytes.as_slice()).unwrap();
    let bob = Store::open(&fx.store).unwrap().user("bob").unwrap();
    let planted = KeySlot::seal(
        &container.header().file_id,
        "bob",
        &bob.public_key,
        &SecretKey::generate().unwrap(),
    )
    .unwrap();
    let mut slots = container.slots().to_vec();
    slots.push(planted);
    let mut forged = Vec::new();
    container.write_with_slots(&slots, &mut forged).unwrap();
    fs::write(&backing, &forged).unwrap();

    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let file = fx.mnt.join("p.bin");
    let out = fx.as_uid(ALICE, "cat", &[s(&file)], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, data, "alice reads her file (now cached)");
    let out = fx.as_uid(BOB, "cat", &[s(&file)], "");
    assert!(!out.status.success(), "bob read with a planted slot");
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    let audit = fs::read_to_string(host_log(&fx.store)).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"deny\"") && l.contains("integrity") && l.contains("p.bin")),
        "{audit}"
    );
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

/// Re-seals the keyring at `path` with `t` Argon2id passes, as `user add` did before the KDF
/// caps existed (it now refuses to).
fn reseal_with_passes(path: &std::path::Path, passphrase: &str, t: u32) {
    use tensorvault::{crypto, keyring::Keyring};
    let json = fs::read(path).unwrap();
    let keyring = Keyring::from_json(&json).unwrap();
    let private = keyring.unlock(passphrase.as_bytes()).unwrap();
    let params = crypto::KdfParams {
        m_kib: 1024,
        t,
        p: 1,
    };
    let salt: [u8; 16] = crypto::random_array().unwrap();
    let key = crypto::passphrase_key(passphrase.as_bytes(), &salt, &params).unwrap();
    // FORMAT.md: "tensorvault v1 keyring" ‖ public key ‖ name.
    let mut aad = b"tensorvault v1 keyring".to_vec();
    aad.extend_from_slice(keyring.public_key.as_bytes());
    aad.extend_from_slice(keyring.name.as_bytes());
    let (nonce, sealed) = crypto::seal_secret(&key, &private.to_bytes(), &aad).unwrap();
    let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let record = &mut value["sealed_private_key"];
    record["kdf"]["t"] = t.into();
    record["kdf"]["salt"] = hex::encode(salt).into();
    record["nonce"] = hex::encode(nonce).into();
    record["ciphertext"] = hex::encode(sealed).into();
    fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

/// Issue 11, finding 9: the daemon runs no Argon2id over the caps. A keyring sealed over them
/// (before they existed, or by hand) is refused with a named error before anything is
/// allocated, without stopping other users; `user passwd` re-seals it within the caps.
#[test]
fn an_over_cap_keyring_is_refused_by_the_mount_until_passwd_reseals_it() {
    let mut fx = MountFixture::new();
    for (name, uid) in [("carol", "1003"), ("dave", "1004")] {
        let mut args = vec!["user", "add", s(&fx.store), name, "--uid", uid];
        args.extend(FAST_KDF);
        ok(&args, &format!("pw-{name}\n"));
    }
    let users = fx.store.join(".tvault/users");
    reseal_with_passes(&users.join("carol.json"), "pw-carol", 17);
    // dave's keyring claims 4 GiB, the most a keyring file may (the passphrase no longer fits
    // it, but the daemon must not get as far as finding out).
    let dave = fs::read_to_string(users.join("dave.json")).unwrap();
    let edited = dave.replace("\"m_kib\": 1024", "\"m_kib\": 4194304");
    assert_ne!(edited, dave);
    fs::write(users.join("dave.json"), edited).unwrap();
    let src = fx.plain_file("f", b"for carol");
    ok(&["put", s(&fx.store), s(&src), "--to", "alice,carol"], "");
    fx.mount(&[]);
    let pid = fx.daemon_pid().unwrap();
    let out = fx.tvault_as(NOBODY, &["unlock", s(&fx.mnt)], "pw-carol\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("keyring of \"carol\"") && err.contains("t=17 is over the cap"),
        "{err}"
    );
    let start = std::time::Instant::now();
    let out = fx.tvault_as(1004, &["unlock", s(&fx.mnt)], "pw-dave\n");
    let took = start.elapsed();
    assert!(
        stderr(&out).contains("m=4194304 KiB, t=1 is over the cap"),
        "{}",
        stderr(&out)
    );
    assert!(
        took < std::time::Duration::from_secs(5),
        "refusal took {took:?}"
    );
    let peak = peak_rss(pid);
    assert!(
        peak < 1 << 30,
        "daemon peak RSS {peak} bytes: it ran the 4 GiB KDF"
    );
    // Other users unlock as before.
    fx.unlock(ALICE, "pw-alice");
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("f"))], "")),
        "for carol"
    );
    // The CLI (in carol's own process) still opens her keyring, to re-seal it within the caps.
    let mut args = vec!["user", "passwd", s(&fx.store), "carol"];
    args.extend(FAST_KDF);
    ok(&args, "pw-carol\npw-carol-2\n");
    fx.unlock(NOBODY, "pw-carol-2");
    assert_eq!(
        stdout(&fx.as_uid(NOBODY, "cat", &[s(&fx.mnt.join("f"))], "")),
        "for carol"
    );
}

/// Issue 11, finding 11: a passphrase of the longest length `user add` accepts unlocks a mount
/// even when every byte needs six in the JSON request; a longer one is refused by the client
/// with a named error instead of being cut off by the daemon.
#[test]
fn the_longest_allowed_passphrase_unlocks_and_a_longer_one_is_named() {
    let mut fx = MountFixture::new();
    let longest = "\u{1}".repeat(8192);
    let file = fx.path("longest");
    fs::write(&file, format!("{longest}\n")).unwrap();
    let mut args = vec!["user", "add", s(&fx.store), "carol", "--uid", "1003"];
    args.extend(FAST_KDF);
    args.extend(["--passphrase-file", s(&file)]);
    ok(&args, "");
    let src = fx.plain_file("f", b"long passphrase");
    ok(&["put", s(&fx.store), s(&src), "--to", "carol"], "");
    fx.mount(&[]);
    fx.unlock(NOBODY, &longest);
    assert_eq!(
        stdout(&fx.as_uid(NOBODY, "cat", &[s(&fx.mnt.join("f"))], "")),
        "long passphrase"
    );
    let out = fx.tvault_as(ALICE, &["unlock", s(&fx.mnt)], &"x".repeat(70_000));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("over the daemon's limit of 65536"),
        "{}",
        stderr(&out)
    );
}

/// Issue 11, finding 11: after the daemon is killed, `tvault mount` finds the dead mount
/// (ENOTCONN, a fuse.tvault entry in mountinfo), detaches it, says so, and mounts.
#[test]
fn mount_recovers_the_dead_mount_of_a_killed_daemon() {
    let mut fx = MountFixture::new();
    let src = fx.plain_file("f", b"after a crash");
    ok(&["put", s(&fx.store), s(&src), "--to", "alice"], "");
    fx.mount(&[]);
    let pid = fx.daemon_pid().unwrap();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let start = std::time::Instant::now();
    loop {
        match fs::metadata(&fx.mnt) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => break,
            _ => {
                assert!(start.elapsed().as_secs() < 10, "the mount did not die");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    assert!(is_mounted(&fx.mnt));
    // Below the dead mount there is nothing to recover; the error says where the problem is.
    let err = fails(
        &[
            "mount",
            s(&fx.store),
            s(&fx.mnt.join("sub")),
            "--foreground",
        ],
        "",
    );
    assert!(err.contains("inside a dead FUSE mount"), "{err}");
    // As an admin would: plain `tvault mount` (a background daemon; the fixture's cleanup
    // unmounts it with `tvault umount`).
    let mut cmd = Command::new(&fx.bin);
    cmd.args(["mount", s(&fx.store), s(&fx.mnt)])
        .env("RUST_LOG", "warn");
    let out = run(cmd, "");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("the tvault mount there was dead") && said.contains("detached it"),
        "{said}"
    );
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let here = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(s(&fx.mnt)))
        .count();
    assert_eq!(here, 1, "the dead mount is still stacked there");
    fx.unlock(ALICE, "pw-alice");
    assert_eq!(
        stdout(&fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("f"))], "")),
        "after a crash"
    );
}

/// Issue 11, finding 11: a mountpoint that is the store or inside it, or a store inside the
/// mountpoint, used to deadlock (and ignore SIGTERM); it is refused with a named error,
/// also through a symlink.
#[test]
fn mounting_a_store_at_or_inside_itself_is_refused() {
    let fx = MountFixture::new();
    let inside = fx.store.join("sub");
    fs::create_dir(&inside).unwrap();
    let link = fx.path("link-to-store");
    std::os::unix::fs::symlink(&fx.store, &link).unwrap();
    let in_store = "the mountpoint is the store or inside it";
    let cases = [
        (fx.store.clone(), in_store),
        (inside, in_store),
        (link, in_store),
        (
            fx.tmp.path().to_path_buf(),
            "the store is inside the mountpoint",
        ),
    ];
    for (mnt, why) in cases {
        let mut cmd = Command::new(&fx.bin);
        cmd.args(["mount", s(&fx.store), s(&mnt), "--foreground"]);
        let out = run(cmd, "");
        assert!(!out.status.success(), "{}", s(&mnt));
        assert!(stderr(&out).contains(why), "{}: {}", s(&mnt), stderr(&out));
        assert!(!is_mounted(&mnt));
    }
}

/// Issue 11, finding 3: the daemon raises its soft open-file limit to the hard limit.
#[test]
fn the_daemon_raises_its_open_file_limit() {
    use std::os::unix::process::CommandExt;
    let fx = MountFixture::new();
    // Keep our hard limit (raising it needs CAP_SYS_RESOURCE, which a container may lack).
    let mut ours = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes a properly sized rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut ours) };
    assert_eq!(rc, 0);
    let hard = ours.rlim_max.min(65536);
    assert!(hard > 1024, "the hard open-file limit is only {hard}");
    let log = fx.path("nofile.log");
    let mut cmd = Command::new(&fx.bin);
    cmd.args(["mount", s(&fx.store), s(&fx.mnt), "--foreground"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let start = std::time::Instant::now();
    while !is_mounted(&fx.mnt) {
        assert!(
            start.elapsed().as_secs() < 20,
            "mount did not come up: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let limits = fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let hard = hard.to_string();
    assert_eq!(fields[3..5], [hard.as_str(), hard.as_str()], "{line}");
    let mut umount = Command::new(&fx.bin);
    umount.args(["umount", s(&fx.mnt)]);
    assert!(run(umount, "").status.success());
    wait_with_timeout(child, "daemon");
    let said = fs::read_to_string(&log).unwrap();
    assert!(said.contains(&format!("open-file limit: {hard}")), "{said}");
}
