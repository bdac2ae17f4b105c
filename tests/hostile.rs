//! A hostile store writer and hostile neighbours against a live mount: planted links, FIFOs
//! and huge files, containers rewritten in place or truncated under readers, and users who
//! try to exhaust what the daemon holds for everyone. Needs root and /dev/fuse.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command};

use common::mount::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;
const NOBODY: u32 = 1003;

fn put(fx: &MountFixture, rel: &str, data: &[u8], to: &str) {
    let src = fx.path(&format!("src-{}", rel.replace('/', "_")));
    fs::write(&src, data).unwrap();
    let dir = fx.path("put-staging");
    let _ = fs::remove_dir_all(&dir);
    let target = dir.join(rel);
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::rename(&src, &target).unwrap();
    let top = rel.split('/').next().unwrap();
    ok(
        &[
            "put",
            s(&fx.store),
            s(&dir.join(top)),
            "--to",
            to,
            "--force",
        ],
        "",
    );
}

/// Names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn line(out: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    l.trim_end().to_string()
}

fn fd_targets(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn planted_symlinks_never_lead_the_daemon_outside_the_store() {
    let mut fx = MountFixture::new();
    put(&fx, "real/m.bin", b"alice's weights", "alice");
    // A root-only directory outside the store, and links to it planted by a store writer.
    let outside = fx.path("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("secret"), b"root only").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).unwrap();
    symlink(&outside, fx.store.join("lnk")).unwrap();
    symlink(outside.join("secret"), fx.store.join("leak.tvlt")).unwrap();
    symlink(fx.store.join("real"), fx.store.join("alias")).unwrap();
    fs::create_dir_all(fx.store.join("payload/sitecustomize")).unwrap();
    fs::write(
        fx.store.join("payload/sitecustomize/__init__.py"),
        b"import os\n",
    )
    .unwrap();
    let before = listing(&outside);
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let m = |p: &str| s(&fx.mnt.join(p)).to_string();

    // The mount shows neither link, to anyone.
    let shown = listing(&fx.mnt);
    assert!(
        !shown
            .iter()
            .any(|n| n == "lnk" || n == "leak" || n == "alias"),
        "{shown:?}"
    );
    for uid in [ALICE, BOB, NOBODY] {
        let out = fx.as_uid(uid, "ls", &[&m("lnk")], "");
        assert!(
            !out.status.success(),
            "uid {uid} listed through the link: {}",
            stdout(&out)
        );
        assert!(!fx.as_uid(uid, "cat", &[&m("leak")], "").status.success());
    }
    // The exploit: moving a directory into the link's target. Refused, and nothing moved.
    let out = fx.as_uid(
        ALICE,
        "mv",
        &[&m("payload/sitecustomize"), &m("lnk/sitecustomize")],
        "",
    );
    assert!(!out.status.success(), "mv through a link succeeded");
    assert!(fx.store.join("payload/sitecustomize/__init__.py").exists());
    // Creating, removing and renaming through the link all fail.
    for args in [
        vec!["mkdir", &*m("lnk/new")],
        vec!["touch", &*m("lnk/f")],
        vec!["rmdir", &*m("lnk/sub")],
        vec!["mv", &*m("lnk/sub"), &*m("moved")],
        vec!["rm", &*m("lnk/secret")],
    ] {
        let out = fx.as_uid(ALICE, args[0], &args[1..], "");
        assert!(!out.status.success(), "{args:?} succeeded");
    }
    let out = fx.as_uid(ALICE, "cp", &[&m("real/m.bin"), &m("lnk/copied")], "");
    assert!(!out.status.success());
    assert_eq!(
        listing(&outside),
        before,
        "something changed outside the store"
    );
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"root only");
    // The real path still works, the aliased one does not.
    let out = fx.as_uid(ALICE, "cat", &[&m("real/m.bin")], "");
    assert_eq!(out.stdout, b"alice's weights");
    assert!(!fx
        .as_uid(ALICE, "cat", &[&m("alias/m.bin")], "")
        .status
        .success());
    fx.unmount();
    // fsck names every link.
    let out = tvault(&["fsck", s(&fx.store)], "");
    let text = stdout(&out) + &stderr(&out);
    for name in ["lnk", "leak.tvlt", "alias"] {
        assert!(
            text.lines()
                .any(|l| l.contains(name) && l.contains("symbolic link")),
            "fsck did not report {name}: {text}"
        );
    }
}

#[test]
fn a_container_rewritten_in_place_never_serves_the_old_plaintext() {
    let mut fx = MountFixture::new();
    // Four bytes shorter: alice's name, her key slot's label and the file's owner, is two
    // bytes longer than bob's.
    let a_plain = pseudo_random(299_996, 1);
    let b_plain = pseudo_random(300_000, 2);
    put(&fx, "a.bin", &a_plain, "alice");
    put(&fx, "b.bin", &b_plain, "bob");
    let a_path = fx.store.join("a.bin.tvlt");
    let a_bytes = fs::read(&a_path).unwrap();
    let b_bytes = fs::read(fx.store.join("b.bin.tvlt")).unwrap();
    assert_eq!(a_bytes.len(), b_bytes.len(), "same-size containers");
    let mtime = fs::metadata(&a_path).unwrap().modified().unwrap();
    // What `dd conv=notrunc` followed by `touch -m -d @OLD` does: same inode, size and mtime.
    let overwrite = |bytes: &[u8]| {
        let mut f = fs::OpenOptions::new().write(true).open(&a_path).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
        f.set_modified(mtime).unwrap();
    };
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let a_mnt = fx.mnt.join("a.bin");
    let plain_a = fx.plain_file("plain-a", &a_plain);

    // Closed: alice read it (daemon cache and page cache hold her plaintext), then it changes.
    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&a_mnt)], "").stdout, a_plain);
    overwrite(&b_bytes);
    let out = fx.as_uid(BOB, "cat", &[s(&a_mnt)], "");
    assert!(out.stdout != a_plain, "bob was served alice's plaintext");
    assert_eq!(
        out.stdout, b_plain,
        "bob reads the container he is authorized for"
    );
    assert!(!fx.as_uid(ALICE, "cat", &[s(&a_mnt)], "").status.success());

    // Open: alice holds her version open (and mapped) while it changes under her.
    overwrite(&a_bytes);
    let code = r#"
import mmap, sys
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
ok = m[:] == open(sys.argv[2], "rb").read()
print("ready" if ok else "wrong", flush=True)
sys.stdin.readline()
"#;
    let (mut alice, mut alice_out) = spawn_python_as(ALICE, code, &[s(&a_mnt), s(&plain_a)]);
    assert_eq!(line(&mut alice_out), "ready");
    overwrite(&b_bytes);
    let out = fx.as_uid(BOB, "cat", &[s(&a_mnt)], "");
    assert!(out.stdout != a_plain, "bob was served alice's open version");
    let mapped = fx.python_as(
        BOB,
        "import mmap,sys; f=open(sys.argv[1],'rb'); m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); sys.stdout.buffer.write(m[:])",
        &[s(&a_mnt)],
    );
    assert!(
        !contains_run(&mapped.stdout, &a_plain, 4096),
        "bob's mapping shows alice's plaintext"
    );
    alice.stdin.take().unwrap().write_all(b"\n").unwrap();
    let _ = alice.wait();
}

#[test]
fn one_uid_cannot_take_every_open_file() {
    let mut fx = MountFixture::new();
    put(&fx, "a.bin", b"alice", "alice");
    put(&fx, "b.bin", b"bob", "bob");
    // 512 descriptors: 384 handles for the mount, 96 per uid.
    fx.mount_wrapped(&["prlimit", "--nofile=512:512", "--"], &[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let code = r#"
import sys
files, err = [], None
for _ in range(1000):
    try:
        files.append(open(sys.argv[1], "rb"))
    except OSError as e:
        err = e.errno
        break
print(len(files), err, flush=True)
sys.stdin.readline()
"#;
    let (mut alice, mut out) = spawn_python_as(ALICE, code, &[s(&fx.mnt.join("a.bin"))]);
    let got = line(&mut out);
    let (count, err) = got.split_once(' ').unwrap();
    let count: usize = count.parse().unwrap();
    assert_eq!(err, "24", "alice gets EMFILE ({got})");
    assert!((64..=200).contains(&count), "alice held {count} handles");
    // Everyone else still opens, and status answers.
    let out2 = fx.as_uid(BOB, "cat", &[s(&fx.mnt.join("b.bin"))], "");
    assert_eq!(out2.stdout, b"bob", "{}", stderr(&out2));
    assert!(fx.status()["pid"].is_u64());
    alice.stdin.take().unwrap().write_all(b"\n").unwrap();
    let _ = alice.wait();
    let again = fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("a.bin"))], "");
    assert_eq!(again.stdout, b"alice");
    // Open files hold one descriptor per version, none once closed.
    let pid = fx.daemon_pid().unwrap();
    let held = fd_targets(pid)
        .iter()
        .filter(|t| t.ends_with(".tvlt"))
        .count();
    assert_eq!(
        held,
        0,
        "descriptors of closed files: {:?}",
        fd_targets(pid)
    );
}

#[test]
fn daemon_memory_is_bounded_whatever_the_headers_hold() {
    let mut fx = MountFixture::new();
    // Safetensors files with ~6 MB headers (one-element tensors, many of them).
    let files = 16;
    for f in 0..files {
        let names: Vec<String> = (0..80_000)
            .map(|i| format!("f{f}.layer.{i:06}.weight"))
            .collect();
        let tensors: Vec<(&str, &str, &[u64], u64)> = names
            .iter()
            .map(|n| (n.as_str(), "F32", &[1u64][..], 4))
            .collect();
        put(
            &fx,
            &format!("m/f{f}.safetensors"),
            &safetensors_bytes(&tensors),
            "alice",
        );
    }
    fx.mount(&["--cache-size", "64M"]);
    fx.unlock(ALICE, "pw-alice");
    let pid = fx.daemon_pid().unwrap();
    let base = rss_kib(pid);
    let code = r#"
import sys, glob
held = []
for p in sorted(glob.glob(sys.argv[1] + "/*.safetensors")):
    f = open(p, "rb"); f.read(8); held.append(f)
print(len(held), flush=True)
sys.stdin.readline()
"#;
    let (mut alice, mut out) = spawn_python_as(ALICE, code, &[s(&fx.mnt.join("m"))]);
    assert_eq!(line(&mut out), files.to_string(), "every file opens");
    let grown = rss_kib(pid).saturating_sub(base);
    let status = fx.status();
    let meta = status["cache"]["metadata_bytes"].as_u64().unwrap();
    // Metadata is bounded by half the cache size (at least 64 MiB), whatever the files hold;
    // decrypted chunks by the cache size.
    assert!(meta <= 64 << 20, "metadata {meta} bytes");
    assert!(
        grown < (64 + 64 + 48) * 1024,
        "daemon grew by {grown} KiB for {files} open files"
    );
    alice.stdin.take().unwrap().write_all(b"\n").unwrap();
    let _ = alice.wait();
    // A file deleted through the mount holds nothing once its last handle closed.
    let f0 = fx.mnt.join("m/f0.safetensors");
    assert!(fx
        .as_uid(ALICE, "head", &["-c", "8", s(&f0)], "")
        .status
        .success());
    assert!(fx.as_uid(ALICE, "rm", &[s(&f0)], "").status.success());
    let deleted: Vec<_> = fd_targets(pid)
        .into_iter()
        .filter(|t| t.contains("(deleted)"))
        .collect();
    assert!(deleted.is_empty(), "deleted files still held: {deleted:?}");
    assert_eq!(fx.status()["cache"]["metadata_bytes"].as_u64(), Some(0));
}

#[test]
fn fifos_links_and_huge_files_in_the_store_never_block_or_kill_the_daemon() {
    let mut fx = MountFixture::new();
    put(&fx, "team/a.bin", b"alice's", "alice");
    let mkfifo = |p: &Path| {
        assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
    };
    mkfifo(&fx.store.join("hang.tvlt"));
    mkfifo(&fx.store.join("team/.tvault-recipients"));
    symlink("/dev/zero", fx.store.join(".tvault/users/zzz.json")).unwrap();
    fx.mount(&[]);
    // Nobody hangs on the FIFO, and it is not shown.
    let out = fx.as_uid(NOBODY, "stat", &[s(&fx.mnt.join("hang"))], "");
    assert!(!out.status.success());
    assert!(!listing(&fx.mnt).contains(&"hang".to_string()));
    // The link to /dev/zero among the keyrings neither hangs nor kills the daemon.
    fx.unlock(ALICE, "pw-alice");
    assert_eq!(
        fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("team/a.bin"))], "")
            .stdout,
        b"alice's"
    );
    // A FIFO as the directory's policy: new files there are created (for the writer alone).
    let out = fx.as_uid(
        ALICE,
        "cp",
        &[s(&fx.bin), s(&fx.mnt.join("team/new.bin"))],
        "",
    );
    assert!(
        out.status.success(),
        "create under a FIFO policy: {}",
        stderr(&out)
    );
    // A policy that is not UTF-8 still lets files be created; its valid names still count.
    fs::remove_file(fx.store.join("team/.tvault-recipients")).unwrap();
    fs::write(
        fx.store.join("team/.tvault-recipients"),
        b"bob\n\xff\xfe junk\n",
    )
    .unwrap();
    let out = fx.as_uid(
        ALICE,
        "cp",
        &[s(&fx.bin), s(&fx.mnt.join("team/new2.bin"))],
        "",
    );
    assert!(
        out.status.success(),
        "create under a non-UTF-8 policy: {}",
        stderr(&out)
    );
    let access = ok(&["access", s(&fx.store), "team/new2.bin"], "");
    assert!(access.contains("bob"), "{access}");
    assert!(fx.status()["pid"].is_u64(), "the daemon lives");
    fx.unmount();
    // A keyring file too large to be one is refused by name.
    fs::remove_file(fx.store.join(".tvault/users/zzz.json")).unwrap();
    let big = fs::File::create(fx.store.join(".tvault/users/big.json")).unwrap();
    big.set_len(100 << 20).unwrap();
    let err = fails(&["user", "list", s(&fx.store)], "");
    assert!(err.contains("big.json") && err.contains("limit"), "{err}");
    fs::remove_file(fx.store.join(".tvault/users/big.json")).unwrap();
    // fsck reports the FIFO.
    let out = tvault(&["fsck", s(&fx.store)], "");
    let text = stdout(&out) + &stderr(&out);
    assert!(
        text.contains("hang.tvlt") && text.contains("FIFO"),
        "{text}"
    );
}

#[test]
fn truncating_a_container_under_readers_gives_eio_not_a_dead_mount() {
    let mut fx = MountFixture::new();
    let data = pseudo_random(8 << 20, 9);
    put(&fx, "big.bin", &data, "alice");
    put(&fx, "w.bin", &data, "alice");
    put(&fx, "b.bin", b"bob's", "bob");
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    // A sequential reader, mid-file, when the store writer cuts the container in half.
    let code = r#"
import os, sys
f = open(sys.argv[1], "rb", buffering=0)
f.read(1 << 20)
print("ready", flush=True)
sys.stdin.readline()
try:
    while f.read(1 << 20):
        pass
    print("eof", flush=True)
except OSError as e:
    print(e.errno, flush=True)
"#;
    let (mut reader, mut out) = spawn_python_as(ALICE, code, &[s(&fx.mnt.join("big.bin"))]);
    assert_eq!(line(&mut out), "ready");
    // A writer with the file open for update.
    let wcode = r#"
import sys
f = open(sys.argv[1], "r+b", buffering=0)
f.write(b"x" * 100)
print("ready", flush=True)
sys.stdin.readline()
try:
    f.seek(6 << 20); f.write(b"y" * 100); f.close(); print("ok", flush=True)
except OSError as e:
    print(e.errno, flush=True)
"#;
    let (mut writer, mut wout) = spawn_python_as(ALICE, wcode, &[s(&fx.mnt.join("w.bin"))]);
    assert_eq!(line(&mut wout), "ready");
    for name in ["big.bin.tvlt", "w.bin.tvlt"] {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(fx.store.join(name))
            .unwrap();
        f.set_len(4 << 20).unwrap();
    }
    reader.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert_eq!(line(&mut out), "5", "the reader gets EIO");
    writer.stdin.take().unwrap().write_all(b"\n").unwrap();
    let w = line(&mut wout);
    assert!(w == "5" || w == "ok", "the writer gets EIO or commits: {w}");
    let _ = (reader.wait(), writer.wait());
    // The daemon and every other file keep working.
    let out = fx.as_uid(BOB, "cat", &[s(&fx.mnt.join("b.bin"))], "");
    assert_eq!(out.stdout, b"bob's", "{}", stderr(&out));
    let pread = fx.python_as(
        ALICE,
        "import os,sys\ntry:\n fd=os.open(sys.argv[1],os.O_RDONLY); os.pread(fd,100,7<<20); print('read')\nexcept OSError as e: print(e.errno)",
        &[s(&fx.mnt.join("big.bin"))],
    );
    assert!(stdout(&pread).trim() == "5", "{}", stdout(&pread));
    assert!(fx.status()["pid"].is_u64());
}

#[test]
fn every_name_the_mount_accepts_can_be_committed() {
    let mut fx = MountFixture::new();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let src = fx.plain_file("src", b"content");
    for name in [
        "n".repeat(250),
        ".model.safetensors.tmp-0123456789ab".to_string(),
        ".tvault-tmp-0123456789abcdef01234567".to_string(),
    ] {
        let dst = fx.mnt.join(&name);
        let out = fx.as_uid(ALICE, "cp", &[s(&src), s(&dst)], "");
        assert!(out.status.success(), "cp to {name}: {}", stderr(&out));
        assert_eq!(
            fx.as_uid(ALICE, "cat", &[s(&dst)], "").stdout,
            b"content",
            "{name}"
        );
    }
    let out = fx.as_uid(
        ALICE,
        "cp",
        &[s(&src), s(&fx.mnt.join("n".repeat(251)))],
        "",
    );
    assert!(
        stderr(&out).contains("File name too long"),
        "{}",
        stderr(&out)
    );
    // A long directory is listed once, entry by entry.
    for i in 0..5000 {
        fs::create_dir(fx.store.join(format!("d{i:05}"))).unwrap();
    }
    let out = fx.as_uid(ALICE, "ls", &["-f", s(&fx.mnt)], "");
    let names: Vec<_> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(names.iter().filter(|n| n.starts_with('d')).count(), 5000);
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "duplicates in the listing");
}

#[test]
fn writers_cannot_grow_the_daemon_without_bound() {
    let mut fx = MountFixture::new();
    fx.mount(&["--cache-size", "64M"]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let pid = fx.daemon_pid().unwrap();
    let base = rss_kib(pid);
    // One write a terabyte into a new file: its chunk table would not fit the writer's bound.
    let code = r#"
import errno, os, sys
fd = os.open(sys.argv[1] + "/huge.bin", os.O_WRONLY | os.O_CREAT, 0o600)
try:
    os.pwrite(fd, b"x", 1 << 40)
    print("wrote", flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
os.close(fd)
files, err = [], None
for i in range(5000):
    try:
        fd = os.open("%s/w%05d.bin" % (sys.argv[1], i), os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(fd, os.urandom(100), 0)
        files.append(fd)
    except OSError as e:
        err = errno.errorcode[e.errno]
        break
print(len(files), err, flush=True)
sys.stdin.readline()
"#;
    let (mut alice, mut out) = spawn_python_as(ALICE, code, &[s(&fx.mnt)]);
    assert_eq!(line(&mut out), "EFBIG");
    let got = line(&mut out);
    let (count, err) = got.split_once(' ').unwrap();
    assert!(
        err == "EMFILE" && count.parse::<usize>().unwrap() >= 10,
        "files open for writing: {got}"
    );
    let grown = rss_kib(pid).saturating_sub(base);
    assert!(grown < (64 + 48) * 1024, "daemon grew by {grown} KiB");
    // Another user still writes.
    let src = fx.plain_file("src", b"bob's");
    let out2 = fx.as_uid(BOB, "cp", &[s(&src), s(&fx.mnt.join("bob.bin"))], "");
    assert!(out2.status.success(), "{}", stderr(&out2));
    alice.stdin.take().unwrap().write_all(b"\n").unwrap();
    let _ = alice.wait();
    assert_eq!(
        fx.as_uid(BOB, "cat", &[s(&fx.mnt.join("bob.bin"))], "")
            .stdout,
        b"bob's"
    );
}

#[test]
fn a_write_far_past_the_end_is_refused_before_anything_is_sealed() {
    let mut fx = MountFixture::new();
    put(&fx, "f.bin", b"small", "alice");
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let pid = fx.daemon_pid().unwrap();
    let base = rss_kib(pid);
    let f_mnt = fx.mnt.join("f.bin");
    // One 64 KiB write at 1 TiB, one truncate(2) to 1 TiB: each would make a commit seal
    // 16 million chunks (and the draft index them all at once).
    let out = fx.python_as(
        ALICE,
        r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
for what in ("pwrite", "ftruncate"):
    try:
        if what == "pwrite":
            os.pwrite(fd, b"x" * 65536, 1 << 40)
        else:
            os.ftruncate(fd, 1 << 40)
        print(what, "ok")
    except OSError as e:
        print(what, e.errno)
os.pwrite(fd, b"still writable", 0)
os.close(fd)
"#,
        &[s(&f_mnt)],
    );
    assert_eq!(
        stdout(&out),
        "pwrite 27\nftruncate 27\n",
        "{}",
        stderr(&out)
    );
    let grown = rss_kib(pid).saturating_sub(base);
    assert!(grown < 64 * 1024, "the daemon grew by {grown} KiB");
    assert_eq!(
        fx.as_uid(ALICE, "cat", &[s(&f_mnt)], "").stdout,
        b"still writable"
    );
    assert!(fx.status()["pid"].is_u64(), "the daemon lives");
}

/// What a helper process printed after its "ready" line, once it is told to go on.
fn finish(mut child: Child, mut out: BufReader<std::process::ChildStdout>) -> Vec<u8> {
    use std::io::Read;
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    let _ = child.wait();
    rest
}

/// A reader that holds `argv[1]` open (read once, checked against `argv[2]`), and on a line
/// from stdin reads it again and writes what it got to stdout.
const HOLDING_READER: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
want = open(sys.argv[2], "rb").read()
print("ready" if os.pread(fd, 1 << 21, 0) == want else "wrong", flush=True)
sys.stdin.readline()
sys.stdout.buffer.write(os.pread(fd, 1 << 21, 0)); sys.stdout.flush()
"#;

#[test]
fn no_two_versions_share_a_page_cache_not_even_through_a_private_mapping() {
    let mut fx = MountFixture::new();
    let a_plain = pseudo_random(299_996, 11);
    let b_plain = pseudo_random(300_000, 12);
    put(&fx, "a.bin", &a_plain, "alice");
    put(&fx, "b.bin", &b_plain, "bob");
    let a_path = fx.store.join("a.bin.tvlt");
    let b_bytes = fs::read(fx.store.join("b.bin.tvlt")).unwrap();
    assert_eq!(fs::metadata(&a_path).unwrap().len(), b_bytes.len() as u64);
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let a_mnt = fx.mnt.join("a.bin");
    let plain_a = fx.plain_file("plain-a", &a_plain);
    // Alice (a store writer too) holds her version open; its pages are cached.
    let (alice, mut alice_out) = spawn_python_as(ALICE, HOLDING_READER, &[s(&a_mnt), s(&plain_a)]);
    assert_eq!(line(&mut alice_out), "ready");
    // She puts bob's container in its place, in place, and waits for bob to load it.
    let mut f = fs::OpenOptions::new().write(true).open(&a_path).unwrap();
    f.write_all(&b_bytes).unwrap();
    f.sync_all().unwrap();
    // Bob maps it privately, as safetensors does (FOPEN_DIRECT_IO does not prevent that:
    // the faults go through the inode's page cache), and reads it.
    let mapped = fx.python_as(
        BOB,
        "import mmap,sys; f=open(sys.argv[1],'rb'); m=mmap.mmap(f.fileno(),0,flags=mmap.MAP_PRIVATE,prot=mmap.PROT_READ); sys.stdout.buffer.write(m[:])",
        &[s(&a_mnt)],
    );
    assert!(
        mapped.stdout == b_plain,
        "bob's mapping: {}",
        stderr(&mapped)
    );
    // Alice's open file still reads her version, not one page of bob's.
    let got = finish(alice, alice_out);
    assert!(
        !contains_run(&got, &b_plain, 4096),
        "alice's open file shows bob's plaintext"
    );
    assert!(got == a_plain, "alice keeps the version she opened");
    assert!(fx.as_uid(BOB, "cat", &[s(&a_mnt)], "").stdout == b_plain);
}

#[test]
fn a_revoked_reader_never_sees_what_is_written_after_the_revoke() {
    let mut fx = MountFixture::new();
    let old = pseudo_random(200_000, 21);
    let new = pseudo_random(200_000, 22);
    put(&fx, "f.bin", &old, "alice,bob");
    // Bob may write it (alice owns it).
    ok(&["chmod", s(&fx.store), "f.bin", "666"], "");
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let f_mnt = fx.mnt.join("f.bin");
    let plain_old = fx.plain_file("plain-old", &old);
    let plain_new = fx.plain_file("plain-new", &new);
    // Alice keeps the file open across her revocation (allowed: she keeps what she had).
    let (alice, mut alice_out) =
        spawn_python_as(ALICE, HOLDING_READER, &[s(&f_mnt), s(&plain_old)]);
    assert_eq!(line(&mut alice_out), "ready");
    ok(
        &[
            "revoke",
            s(&fx.store),
            "f.bin",
            "alice",
            "--rekey",
            "--user",
            "bob",
        ],
        "pw-bob\n",
    );
    assert!(!fx.as_uid(ALICE, "cat", &[s(&f_mnt)], "").status.success());
    // Bob then rewrites the file in place through the mount.
    let out = fx.as_uid(
        BOB,
        "dd",
        &[
            &format!("if={}", s(&plain_new)),
            &format!("of={}", s(&f_mnt)),
            "bs=64k",
            "status=none",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // What bob wrote after the revoke never reaches alice's old descriptor.
    let got = finish(alice, alice_out);
    assert!(
        !contains_run(&got, &new, 4096),
        "the revoked reader sees data written after the revoke"
    );
    assert!(got == old, "alice's descriptor keeps the version it opened");
    assert!(fx.as_uid(BOB, "cat", &[s(&f_mnt)], "").stdout == new);
}

#[test]
fn a_write_session_is_joined_only_by_openers_of_the_version_it_builds_on() {
    let mut fx = MountFixture::new();
    let secret = b"BOB-SECRET-".repeat(20_000);
    let own = b"alice-own--".repeat(20_000);
    put(&fx, "f.bin", &secret, "bob");
    put(&fx, "a.bin", &own, "alice");
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let f_mnt = fx.mnt.join("f.bin");
    // Bob has his file open for writing (a long save, say).
    let code = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"bob-uncommitted", 0)
print("ready", flush=True)
sys.stdin.readline()
os.close(fd)
"#;
    let (bob, mut out) = spawn_python_as(BOB, code, &[s(&f_mnt)]);
    assert_eq!(line(&mut out), "ready");
    // Alice, a store writer, puts a container of her own at bob's path, and opens it.
    fs::copy(fx.store.join("a.bin.tvlt"), fx.store.join("staged")).unwrap();
    fs::rename(fx.store.join("staged"), fx.store.join("f.bin.tvlt")).unwrap();
    let read = fx.python_as(
        ALICE,
        "import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); sys.stdout.buffer.write(os.pread(fd, 1 << 20, 0))",
        &[s(&f_mnt)],
    );
    assert!(
        !contains_run(&read.stdout, &secret, 64)
            && !contains_run(&read.stdout, b"bob-uncommitted", 15),
        "alice read bob's session: {:?}",
        String::from_utf8_lossy(&read.stdout[..read.stdout.len().min(64)])
    );
    assert!(
        read.stdout == own,
        "alice reads what she was authorized for: {}",
        stderr(&read)
    );
    finish(bob, out);
}

/// Who holds a key slot for `rel`, from `tvault access --json`.
fn readers(fx: &MountFixture, rel: &str) -> Vec<String> {
    readers_in(&ok(&["access", s(&fx.store), "--json"], ""), rel)
}

#[test]
fn a_writer_whose_file_was_renamed_over_never_overwrites_the_replacement() {
    let mut fx = MountFixture::new();
    put(&fx, "a", b"shared by alice and bob", "alice,bob");
    put(&fx, "p", b"bob's private file", "bob");
    // A root without the sticky bit: bob may replace alice's file there.
    ok(&["chmod", s(&fx.store), "", "777"], "");
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let code = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.write(fd, b"ALICE WAS HERE")
print("ready", flush=True)
sys.stdin.readline()
os.close(fd)
"#;
    let (alice, mut out) = spawn_python_as(ALICE, code, &[s(&fx.mnt.join("a"))]);
    assert_eq!(line(&mut out), "ready");
    // Bob (who holds slots for both) moves his private file over the shared one.
    let mv = fx.as_uid(BOB, "mv", &[s(&fx.mnt.join("p")), s(&fx.mnt.join("a"))], "");
    assert!(mv.status.success(), "{}", stderr(&mv));
    // Alice closes: what she wrote went to the replaced file, not over bob's.
    finish(alice, out);
    assert_eq!(
        fx.as_uid(BOB, "cat", &[s(&fx.mnt.join("a"))], "").stdout,
        b"bob's private file"
    );
    assert_eq!(
        readers(&fx, "a"),
        ["bob"],
        "the replacement keeps its recipients"
    );
}

#[test]
fn directory_listings_held_open_are_bounded_per_uid() {
    let mut fx = MountFixture::new();
    put(&fx, "b.bin", b"bob's", "bob");
    for i in 0..5000 {
        fs::create_dir(
            fx.store
                .join(format!("a-directory-with-a-longish-name-{i:05}")),
        )
        .unwrap();
    }
    fx.mount(&[]);
    fx.unlock(BOB, "pw-bob");
    let pid = fx.daemon_pid().unwrap();
    let base = rss_kib(pid);
    // A uid without a keyring opens the large directory again and again.
    let code = r#"
import os, sys
fds, err = [], None
for _ in range(900):
    try:
        fds.append(os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY))
    except OSError as e:
        err = e.errno
        break
print(len(fds), err, flush=True)
sys.stdin.readline()
"#;
    let (nobody, mut out) = spawn_python_as(NOBODY, code, &[s(&fx.mnt)]);
    let got = line(&mut out);
    let (count, err) = got.split_once(' ').unwrap();
    let count: usize = count.parse().unwrap();
    assert_eq!(err, "24", "EMFILE for the uid's listings ({got})");
    assert!(count < 500, "{count} listings held");
    let grown = rss_kib(pid).saturating_sub(base);
    assert!(grown < 96 * 1024, "the daemon grew by {grown} KiB");
    // Others still list and read.
    let ls = fx.as_uid(BOB, "ls", &[s(&fx.mnt)], "");
    assert!(stdout(&ls).contains("b.bin"), "{}", stderr(&ls));
    assert_eq!(
        fx.as_uid(BOB, "cat", &[s(&fx.mnt.join("b.bin"))], "")
            .stdout,
        b"bob's"
    );
    finish(nobody, out);
    // Released listings are given back.
    let ls = fx.as_uid(NOBODY, "ls", &[s(&fx.mnt)], "");
    assert!(ls.status.success(), "{}", stderr(&ls));
}

#[test]
fn an_overlong_path_does_not_stop_others_from_moving_directories() {
    let mut fx = MountFixture::new();
    put(&fx, "d1/x", b"bob's", "bob");
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    // Alice builds a directory path longer than PATH_MAX: a chain as deep as the daemon can
    // create, and another moved to its bottom.
    let out = fx.python_as(
        ALICE,
        r#"
import os, sys
top = os.open(sys.argv[1], os.O_RDONLY)
os.mkdir("b" * 200, dir_fd=top)
os.mkdir("b" * 200 + "/" + "c" * 200, dir_fd=top)
d = top
for i in range(16):
    n = ("a%02d" % i) + "a" * 240
    os.mkdir(n, dir_fd=d)
    d = os.open(n, os.O_RDONLY, dir_fd=d)
os.rename("b" * 200, "moved", src_dir_fd=top, dst_dir_fd=d)
print("deep")
"#,
        &[s(&fx.mnt)],
    );
    assert_eq!(stdout(&out), "deep\n", "{}", stderr(&out));
    let mv = fx.as_uid(
        BOB,
        "mv",
        &[s(&fx.mnt.join("d1")), s(&fx.mnt.join("d2"))],
        "",
    );
    assert!(mv.status.success(), "bob's rename: {}", stderr(&mv));
    assert_eq!(
        fx.as_uid(BOB, "cat", &[s(&fx.mnt.join("d2/x"))], "").stdout,
        b"bob's"
    );
    fx.unmount();
    // The CLI's directory targets are not disturbed either.
    ok(
        &["grant", s(&fx.store), "d2", "alice", "--user", "bob"],
        "pw-bob\n",
    );
}

#[test]
fn a_directory_named_like_the_policy_cannot_stand_in_for_it() {
    let mut fx = MountFixture::new();
    put(&fx, "team/models/a.bin", b"x", "alice");
    fs::write(fx.store.join("team/.tvault-recipients"), "bob\n").unwrap();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    let shadow = fx.mnt.join("team/models/.tvault-recipients");
    assert!(!fx
        .as_uid(ALICE, "mkdir", &[s(&shadow)], "")
        .status
        .success());
    let moved = fx.as_uid(ALICE, "mkdir", &[s(&fx.mnt.join("team/models/d"))], "");
    assert!(moved.status.success());
    assert!(!fx
        .as_uid(
            ALICE,
            "mv",
            &[s(&fx.mnt.join("team/models/d")), s(&shadow)],
            ""
        )
        .status
        .success());
    let out = fx.as_uid(
        ALICE,
        "cp",
        &[s(&fx.bin), s(&fx.mnt.join("team/models/new.bin"))],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    fx.unmount();
    assert_eq!(
        readers(&fx, "team/models/new.bin"),
        ["alice", "bob"],
        "the team policy still applies"
    );
}

#[test]
fn one_uid_cannot_fill_the_daemon_with_partly_written_chunks() {
    let mut fx = MountFixture::new();
    fx.mount(&["--cache-size", "64M"]);
    fx.unlock(ALICE, "pw-alice");
    let pid = fx.daemon_pid().unwrap();
    let base = rss_kib(pid);
    // 24 files open for writing, every one of 255 chunks of each written but for its first
    // and last byte: 390 MB of partly written chunks if each session may hold 16 MiB.
    let code = r#"
import os, sys
fds = []
for i in range(24):
    fd = os.open(f"{sys.argv[1]}/w{i}", os.O_WRONLY | os.O_CREAT, 0o644)
    for c in range(255):
        os.pwrite(fd, b"x" * 65534, c * 65536 + 1)
    fds.append(fd)
print("ready", flush=True)
sys.stdin.readline()
for fd in fds:
    os.close(fd)
print("closed", flush=True)
"#;
    let (alice, mut out) = spawn_python_as(ALICE, code, &[s(&fx.mnt)]);
    assert_eq!(line(&mut out), "ready");
    let grown = rss_kib(pid).saturating_sub(base);
    assert!(grown < 96 * 1024, "the daemon grew by {grown} KiB");
    assert_eq!(finish(alice, out), b"closed\n");
    // Chunks sealed early read back like any others.
    let check = fx.python_as(
        ALICE,
        r#"
import sys
want = b"".join(b"\0" + b"x" * 65534 + (b"\0" if c < 254 else b"") for c in range(255))
print(open(sys.argv[1] + "/w7", "rb").read() == want)
"#,
        &[s(&fx.mnt)],
    );
    assert_eq!(stdout(&check), "True\n", "{}", stderr(&check));
}
