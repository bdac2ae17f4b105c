//! Owners, modes and POSIX permission checks through a real mount, exercised by other uids
//! with ordinary tools (`mkdir`, `mv`, `chmod`, `touch`, `cp -a`, `tar`, `rsync`, Python):
//! what `stat` shows, who may change what, the planted-file attack, `access(2)` and
//! `tvault why`. Needs root and /dev/fuse.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Output;

use common::mount::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;
/// A uid with no keyring in the store.
const NOBODY: u32 = 1003;

fn sh(fx: &MountFixture, uid: u32, script: &str) -> Output {
    fx.as_uid(uid, "sh", &["-c", script], "")
}

fn sh_ok(fx: &MountFixture, uid: u32, script: &str) -> String {
    let out = sh(fx, uid, script);
    assert!(
        out.status.success(),
        "uid {uid}: {script}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs `script` as `uid` and expects it to fail with `message` on stderr.
fn sh_fails(fx: &MountFixture, uid: u32, script: &str, message: &str) {
    let out = sh(fx, uid, script);
    assert!(!out.status.success(), "uid {uid}: {script} succeeded");
    assert!(
        stderr(&out).contains(message),
        "uid {uid}: {script}: expected {message:?}, got {}",
        stderr(&out)
    );
}

/// (uid, gid, permission bits) of a mount path, as `stat` shows it.
fn owner_mode(path: &std::path::Path) -> (u32, u32, u32) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

fn mounted() -> MountFixture {
    let mut fx = MountFixture::new();
    fx.mount(&[]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    fx
}

#[test]
fn creators_own_what_they_make_with_the_mode_they_ask_for() {
    let mut fx = mounted();
    let m = s(&fx.mnt).to_string();
    let root = owner_mode(&fx.mnt);
    assert_eq!(root, (0, 0, 0o1777), "the store's root is like /tmp");

    sh_ok(&fx, ALICE, &format!("umask 022; mkdir {m}/alice-out"));
    assert_eq!(owner_mode(&fx.mnt.join("alice-out")), (ALICE, ALICE, 0o755));
    sh_ok(&fx, ALICE, &format!("umask 077; echo hi > {m}/alice-out/f"));
    assert_eq!(
        owner_mode(&fx.mnt.join("alice-out/f")),
        (ALICE, ALICE, 0o600)
    );
    sh_ok(&fx, ALICE, &format!("umask 022; echo hi > {m}/g"));
    assert_eq!(owner_mode(&fx.mnt.join("g")), (ALICE, ALICE, 0o644));

    // chmod by the owner works, and survives a remount; by anyone else it is EPERM.
    sh_ok(
        &fx,
        ALICE,
        &format!("chmod 640 {m}/g && chmod 750 {m}/alice-out"),
    );
    assert_eq!(owner_mode(&fx.mnt.join("g")).2, 0o640);
    sh_fails(
        &fx,
        BOB,
        &format!("chmod 666 {m}/g"),
        "Operation not permitted",
    );
    sh_fails(
        &fx,
        BOB,
        &format!("chmod 777 {m}/alice-out"),
        "Operation not permitted",
    );
    // chown to someone else is refused, as for any unprivileged user (root included);
    // chown to oneself changes nothing and is allowed (cp -a does it).
    sh_fails(
        &fx,
        ALICE,
        &format!("chown {BOB} {m}/g"),
        "Operation not permitted",
    );
    let out = fx.as_uid(0, "chown", &[&BOB.to_string(), &format!("{m}/g")], "");
    assert!(
        !out.status.success(),
        "root gave a file away through the mount"
    );
    sh_ok(&fx, ALICE, &format!("chown {ALICE}:{ALICE} {m}/g"));

    fx.unmount();
    fx.mount(&[]);
    assert_eq!(owner_mode(&fx.mnt.join("g")), (ALICE, ALICE, 0o640));
    assert_eq!(owner_mode(&fx.mnt.join("alice-out")), (ALICE, ALICE, 0o750));
    fx.unmount();
}

#[test]
fn directory_and_file_modes_are_enforced() {
    let mut fx = mounted();
    let m = s(&fx.mnt).to_string();
    sh_ok(
        &fx,
        ALICE,
        &format!("umask 022; mkdir {m}/a && echo data > {m}/a/f"),
    );
    // bob may not add, remove or rename entries in alice's 0755 directory.
    sh_fails(
        &fx,
        BOB,
        &format!("echo x > {m}/a/new"),
        "Permission denied",
    );
    sh_fails(&fx, BOB, &format!("mkdir {m}/a/d"), "Permission denied");
    sh_fails(&fx, BOB, &format!("rm -f {m}/a/f"), "Permission denied");
    sh_fails(
        &fx,
        BOB,
        &format!("mv {m}/a/f {m}/stolen"),
        "Permission denied",
    );
    // The sticky root: bob may not remove or replace what alice made there.
    sh_ok(&fx, ALICE, &format!("echo top > {m}/top"));
    sh_fails(
        &fx,
        BOB,
        &format!("rm -f {m}/top"),
        "Operation not permitted",
    );
    sh_fails(&fx, BOB, &format!("rmdir {m}/a"), "Operation not permitted");
    // Without search permission nothing inside can be reached (once the kernel's entry
    // cache, one second, has expired).
    sh_ok(&fx, ALICE, &format!("chmod 700 {m}/a"));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    sh_fails(&fx, BOB, &format!("stat {m}/a/f"), "Permission denied");
    sh_fails(&fx, BOB, &format!("ls {m}/a"), "Permission denied");
    // A file without write permission cannot be rewritten or truncated, even by its owner.
    sh_ok(&fx, ALICE, &format!("chmod 444 {m}/top"));
    sh_fails(
        &fx,
        ALICE,
        &format!("echo new > {m}/top"),
        "Permission denied",
    );
    sh_fails(
        &fx,
        ALICE,
        &format!("truncate -s 0 {m}/top"),
        "Permission denied",
    );
    assert_eq!(sh_ok(&fx, ALICE, &format!("cat {m}/top")), "top\n");
    // Read permission is needed to read, on top of the key slot.
    sh_ok(&fx, ALICE, &format!("chmod 200 {m}/top"));
    sh_fails(&fx, ALICE, &format!("cat {m}/top"), "Permission denied");
    sh_ok(
        &fx,
        ALICE,
        &format!("chmod 644 {m}/top && rm {m}/top && rm -r {m}/a"),
    );
    fx.unmount();
}

/// The reported exploit: bob, who shares a file with alice, moves it into her output
/// directory under the name her job writes next; her job truncates and writes it.
#[test]
fn a_file_planted_where_a_job_writes_does_not_carry_its_output_back() {
    let mut fx = mounted();
    let m = s(&fx.mnt).to_string();
    let notes = fx.plain_file("notes.txt", b"shared notes\n");
    ok(
        &[
            "put",
            s(&fx.store),
            s(&notes),
            "--to",
            "bob",
            "--to",
            "alice",
            "--as",
            "shared/notes.txt",
        ],
        "",
    );
    sh_ok(&fx, BOB, &format!("chmod 666 {m}/shared/notes.txt"));
    sh_ok(&fx, ALICE, &format!("umask 022; mkdir {m}/alice-out"));
    sh_fails(
        &fx,
        BOB,
        &format!("mv {m}/shared/notes.txt {m}/alice-out/train.log"),
        "Permission denied",
    );
    assert!(fs::metadata(fx.mnt.join("shared/notes.txt")).is_ok());

    // Where bob may put files (a world-writable directory), the rewrite leaves him out:
    // a new version is encrypted to its writer and the directory's policy, and to the old
    // readers only when the writer owns the file.
    sh_ok(&fx, ALICE, &format!("mkdir -m 777 {m}/drop"));
    sh_ok(
        &fx,
        BOB,
        &format!("mv {m}/shared/notes.txt {m}/drop/train.log"),
    );
    sh_ok(
        &fx,
        ALICE,
        &format!("echo secret output > {m}/drop/train.log"),
    );
    assert_eq!(
        sh_ok(&fx, ALICE, &format!("cat {m}/drop/train.log")),
        "secret output\n"
    );
    sh_fails(
        &fx,
        BOB,
        &format!("cat {m}/drop/train.log"),
        "Permission denied",
    );
    // The owner's own rewrite keeps the readers it had.
    let mine = fx.plain_file("mine.txt", b"v1\n");
    ok(
        &[
            "put",
            s(&fx.store),
            s(&mine),
            "--to",
            "bob",
            "--to",
            "alice",
            "--as",
            "mine.txt",
        ],
        "",
    );
    sh_ok(
        &fx,
        BOB,
        &format!("chmod 644 {m}/mine.txt; echo v2 > {m}/mine.txt"),
    );
    assert_eq!(sh_ok(&fx, ALICE, &format!("cat {m}/mine.txt")), "v2\n");
    fx.unmount();
}

#[test]
fn access_answers_what_open_then_decides() {
    let mut fx = MountFixture::new();
    let data = fx.plain_file("w.bin", b"weights");
    ok(
        &[
            "put",
            s(&fx.store),
            s(&data),
            "--to",
            "alice",
            "--as",
            "w.bin",
        ],
        "",
    );
    fx.mount(&[]);
    let probe = r#"
import os, sys
p = sys.argv[1]
for name, mode, flags in (("r", os.R_OK, os.O_RDONLY), ("w", os.W_OK, os.O_WRONLY)):
    said = os.access(p, mode)
    try:
        os.close(os.open(p, flags))
        did = True
    except PermissionError:
        did = False
    print(f"{name}={said}/{did}")
"#;
    let path = fx.mnt.join("w.bin");
    let ask = |uid| stdout(&fx.python_as(uid, probe, &[s(&path)]));
    // No keyring, locked, no key slot: access says no, and open agrees.
    assert_eq!(ask(NOBODY), "r=False/False\nw=False/False\n");
    assert_eq!(
        ask(ALICE),
        "r=False/False\nw=False/False\n",
        "alice is locked"
    );
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    assert_eq!(
        ask(BOB),
        "r=False/False\nw=False/False\n",
        "bob has no slot"
    );
    assert_eq!(ask(ALICE), "r=True/True\nw=True/True\n");
    sh_ok(&fx, ALICE, &format!("chmod 444 {}", s(&path)));
    assert_eq!(ask(ALICE), "r=True/True\nw=False/False\n", "mode 0444");
    fx.unmount();
}

#[test]
fn why_names_the_reason_and_the_fix() {
    let mut fx = MountFixture::new();
    let data = fx.plain_file("w.bin", b"weights");
    ok(
        &[
            "put",
            s(&fx.store),
            s(&data),
            "--to",
            "alice",
            "--as",
            "m/w.bin",
        ],
        "",
    );
    fx.mount(&[]);
    let path = fx.mnt.join("m/w.bin");
    let why = |uid| fx.tvault_as(uid, &["why", s(&path)], "");
    let expect = |out: Output, code: i32, words: &[&str]| {
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        let text = format!("{}{}", stdout(&out), stderr(&out));
        for w in words {
            assert!(text.contains(w), "expected {w:?} in:\n{text}");
        }
    };
    expect(why(NOBODY), 1, &["no keyring", "tvault user add"]);
    expect(why(ALICE), 1, &["locked", "tvault unlock"]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    expect(why(BOB), 1, &["no key slot", "tvault grant"]);
    expect(why(ALICE), 0, &["can read", "can write"]);
    sh_ok(&fx, ALICE, &format!("chmod 200 {}", s(&path)));
    expect(why(ALICE), 1, &["no read permission", "chmod"]);
    // Any path on the mount works, the mountpoint too.
    let out = fx.tvault_as(ALICE, &["why", s(&fx.mnt)], "");
    expect(out, 0, &["can read"]);
    // A refusal is in the daemon log once, at info level.
    sh_fails(&fx, BOB, &format!("cat {}", s(&path)), "Permission denied");
    let log = fx.daemon_log();
    assert!(log.contains("denied: uid 1002 open"), "{log}");
    fx.unmount();
}

#[test]
fn touch_cp_tar_rsync_and_copytree_into_the_mount_exit_0() {
    let mut fx = mounted();
    let m = s(&fx.mnt).to_string();
    // A source tree owned by alice, with modes and old times to keep.
    let src = fx.path("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    fs::write(src.join("sub/b.bin"), pseudo_random(200_000, 7)).unwrap();
    fs::write(src.join("sub/deeper/c"), b"").unwrap();
    fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    let out = std::process::Command::new("chown")
        .args(["-R", &format!("{ALICE}:{ALICE}"), s(&src)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let src = s(&src).to_string();
    sh_ok(
        &fx,
        ALICE,
        &format!("touch -d 2020-01-02 {src}/a.txt {src}/sub"),
    );

    sh_ok(
        &fx,
        ALICE,
        &format!("mkdir {m}/d && touch {m}/d && touch -d 2021-03-04 {m}/d"),
    );
    sh_ok(
        &fx,
        ALICE,
        &format!("touch {m}/new-file && touch -d 2021-03-04 {m}/new-file"),
    );
    sh_ok(
        &fx,
        ALICE,
        &format!("cp -a {src} {m}/cp && diff -r {src} {m}/cp"),
    );
    sh_ok(
        &fx,
        ALICE,
        &format!("tar -C {src} -cf - . | (mkdir {m}/tar && tar -C {m}/tar -xf -) && diff -r {src} {m}/tar"),
    );
    if std::process::Command::new("rsync")
        .arg("--version")
        .output()
        .is_ok()
    {
        sh_ok(
            &fx,
            ALICE,
            &format!("rsync -a {src}/ {m}/rsync/ && diff -r {src} {m}/rsync"),
        );
    } else {
        eprintln!("rsync not installed: skipped (scripts/setup.sh installs it)");
    }
    let out = fx.python_as(
        ALICE,
        "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2])",
        &[&src, &format!("{m}/copytree")],
    );
    assert!(out.status.success(), "copytree: {}", stderr(&out));
    sh_ok(&fx, ALICE, &format!("diff -r {src} {m}/copytree"));
    // Modes and times came along.
    for dst in ["cp", "tar", "copytree"] {
        let (uid, _, mode) = owner_mode(&fx.mnt.join(dst).join("a.txt"));
        assert_eq!((uid, mode), (ALICE, 0o640), "{dst}");
        let a = fs::metadata(fx.mnt.join(dst).join("a.txt"))
            .unwrap()
            .mtime();
        let b = fs::metadata(format!("{src}/a.txt")).unwrap().mtime();
        assert_eq!(a, b, "{dst}: mtime");
    }
    fx.unmount();
}
