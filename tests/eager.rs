//! The eager data path through a real mount: whole-file copies in locked RAM read by the
//! kernel through FUSE passthrough. Who may open, what a forced lock ends, what other users
//! keep, writers beside passthrough readers, the budget, and `auto`'s choice.

mod common;

use std::fs;

use common::mount::*;
use common::*;

const ALICE: u32 = 1001;
const BOB: u32 = 1002;
const NOBODY: u32 = 1003;

const MIB: usize = 1 << 20;

fn denied(out: &std::process::Output) -> bool {
    !out.status.success() && stderr(out).contains("Permission denied")
}

fn copies(fx: &MountFixture) -> (u64, bool) {
    let st = fx.status();
    (
        st["copies"]["bytes"].as_u64().unwrap(),
        st["copies"]["passthrough"].as_bool().unwrap(),
    )
}

fn decrypted(fx: &MountFixture) -> u64 {
    fx.status()["bytes_decrypted"].as_u64().unwrap()
}

/// A store file `name` of `len` pseudo-random bytes for `to`; returns the plaintext.
fn put(fx: &MountFixture, name: &str, len: usize, to: &str) -> Vec<u8> {
    let data = pseudo_random(len, len as u64);
    let src = fx.plain_file(name, &data);
    ok(&["put", s(&fx.store), s(&src), "--to", to], "");
    data
}

#[test]
fn eager_opens_read_the_whole_file_from_one_copy_and_others_are_refused() {
    let mut fx = MountFixture::new();
    let data = put(&fx, "w.bin", 9 * MIB + 123, "alice");
    let st = safetensors_bytes(&[
        ("a", "F32", &[512, 1024], 4),
        ("b", "F16", &[7], 2),
        ("c", "F32", &[256, 1024], 4),
    ]);
    let st_src = fx.plain_file("m.safetensors", &st);
    ok(&["put", s(&fx.store), s(&st_src), "--to", "alice"], "");
    fx.mount(&["--data-path", "eager"]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let file = fx.mnt.join("w.bin");

    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&file)], "").stdout, data);
    let (bytes, passthrough) = copies(&fx);
    assert!(passthrough, "this kernel takes passthrough files (as root)");
    assert_eq!(bytes, data.len() as u64, "one copy of the whole file");
    let after_first = decrypted(&fx);
    assert_eq!(after_first, data.len() as u64);
    // A second open reads the same copy: nothing more is decrypted.
    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&file)], "").stdout, data);
    assert_eq!(decrypted(&fx), after_first);

    // Frameworks read it like any file: safetensors maps it.
    let code = r#"
import sys
from safetensors.numpy import load_file
import numpy as np
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
assert a.keys() == b.keys()
for k in a:
    assert np.array_equal(a[k], b[k]), k
print("same")
"#;
    let plain = fx.plain_file("plain.safetensors", &st);
    let out = fx.python_as(ALICE, code, &[s(&fx.mnt.join("m.safetensors")), s(&plain)]);
    assert_eq!(stdout(&out).trim(), "same", "{}", stderr(&out));

    // The copy changes nothing about who may open: no slot, no keyring, locked.
    assert!(denied(&fx.as_uid(BOB, "cat", &[s(&file)], "")));
    assert!(denied(&fx.as_uid(NOBODY, "cat", &[s(&file)], "")));
    // Every open is audited, copy or not.
    let audit = fs::read_to_string(host_log(&fx.store)).unwrap();
    let opens = audit
        .lines()
        .filter(|l| l.contains("\"w.bin\"") && l.contains("\"open\""))
        .count();
    assert!(opens >= 3, "{audit}");
}

/// A process of `uid` that opens (and maps) `path`, reads at 0, then on each line on stdin
/// reads again at `at` and reports.
fn holder(
    uid: u32,
    path: &str,
    at: usize,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    let code = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
at = int(sys.argv[2])
assert len(os.pread(fd, 4096, 0)) == 4096
print("opened", flush=True)
while sys.stdin.readline():
    try:
        got = os.pread(fd, 4096, at)
        print("read", len(got), got[:8].hex(), flush=True)
    except OSError as e:
        print("read-failed", e.errno, flush=True)
"#;
    let (child, mut out) = spawn_python_as(uid, code, &[path, &at.to_string()]);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "opened");
    (child, out)
}

fn ask(child: &mut std::process::Child, out: &mut impl std::io::BufRead) -> String {
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim().to_string()
}

#[test]
fn a_forced_lock_empties_the_copy_and_other_users_keep_reading() {
    let mut fx = MountFixture::new();
    let data = put(&fx, "shared.bin", 6 * MIB, "alice,bob");
    fx.mount(&["--data-path", "eager"]);
    fx.unlock(ALICE, "pw-alice");
    fx.unlock(BOB, "pw-bob");
    let file = fx.mnt.join("shared.bin");
    let at = 5 * MIB;
    let expect = format!("read 4096 {}", hex(&data[at..at + 8]));

    let (mut a, mut a_out) = holder(ALICE, s(&file), at);
    assert_eq!(copies(&fx).0, data.len() as u64, "alice reads a copy");
    // A mapping of alice's, touched after the lock, must die rather than read plaintext.
    let map_code = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
assert len(m[:4096]) == 4096
print("mapped", flush=True)
sys.stdin.readline()
print("byte", m[int(sys.argv[2])], flush=True)
"#;
    let (mut mapper, mut m_out) =
        spawn_python_as(ALICE, map_code, &[s(&file), &(at + 4096).to_string()]);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut m_out, &mut line).unwrap();
    assert_eq!(line.trim(), "mapped");
    assert_eq!(
        copies(&fx).0,
        data.len() as u64,
        "the mapping shares alice's copy"
    );
    // Bob opens while alice holds the copy: he is served chunked (on an inode of his own),
    // never through her copy.
    let (mut b, mut b_out) = holder(BOB, s(&file), at);
    assert_eq!(ask(&mut a, &mut a_out), expect);
    assert_eq!(ask(&mut b, &mut b_out), expect);

    let forced = fx.tvault_as(ALICE, &["lock", s(&fx.mnt), "--force"], "");
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(
        copies(&fx).0,
        0,
        "alice's copy is emptied and its memory freed"
    );

    // Alice's open descriptor reads nothing any more; her mapping faults (SIGBUS).
    assert_eq!(ask(&mut a, &mut a_out), "read 0");
    let touched = ask(&mut mapper, &mut m_out);
    assert!(
        !touched.contains("byte"),
        "a mapping read plaintext after the lock: {touched}"
    );
    let died = mapper.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&died),
        Some(libc::SIGBUS),
        "the mapping faults"
    );
    // Bob's open file is not disturbed by alice's lock.
    assert_eq!(ask(&mut b, &mut b_out), expect);
    assert!(denied(&fx.as_uid(ALICE, "cat", &[s(&file)], "")));
    drop((a.stdin.take(), b.stdin.take()));
    let _ = (a.wait(), b.wait());

    // Unlocked again, alice gets a fresh copy.
    fx.unlock(ALICE, "pw-alice");
    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&file)], "").stdout, data);
    assert_eq!(copies(&fx).0, data.len() as u64);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_writer_beside_passthrough_readers_gets_its_own_inode() {
    let mut fx = MountFixture::new();
    let old = put(&fx, "f.bin", 3 * MIB, "alice");
    fx.mount(&["--data-path", "eager"]);
    fx.unlock(ALICE, "pw-alice");
    let file = fx.mnt.join("f.bin");
    let (mut r, mut r_out) = holder(ALICE, s(&file), 2 * MIB);
    let new = pseudo_random(4 * MIB, 99);
    let new_src = fx.plain_file("new.bin", &new);
    let out = fx.as_uid(ALICE, "cp", &[s(&new_src), s(&file)], "");
    assert!(
        out.status.success(),
        "write beside a reader: {}",
        stderr(&out)
    );
    // The open reader keeps its version; a new open reads the new one, from a new copy.
    assert_eq!(
        ask(&mut r, &mut r_out),
        format!("read 4096 {}", hex(&old[2 * MIB..2 * MIB + 8]))
    );
    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&file)], "").stdout, new);
    drop(r.stdin.take());
    let _ = r.wait();
}

#[test]
fn files_over_the_budget_and_partial_readers_stay_chunked() {
    let mut fx = MountFixture::new();
    let big = put(&fx, "big.bin", 8 * MIB, "alice");
    let other = put(&fx, "other.bin", 3 * MIB, "alice");
    fx.mount(&["--eager-memory", "6M"]);
    fx.unlock(ALICE, "pw-alice");

    // Over the budget: chunked, whatever is read.
    let big_path = fx.mnt.join("big.bin");
    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&big_path)], "").stdout, big);
    assert_eq!(copies(&fx).0, 0);

    // `auto` (the default): one 4 KiB read from the middle decrypts a chunk, not the file.
    let path = fx.mnt.join("other.bin");
    let before = decrypted(&fx);
    let code =
        "import os,sys\nfd=os.open(sys.argv[1],os.O_RDONLY)\nprint(len(os.pread(fd,4096,1500000)))";
    let out = fx.python_as(ALICE, code, &[s(&path)]);
    assert_eq!(stdout(&out).trim(), "4096", "{}", stderr(&out));
    assert!(
        decrypted(&fx) - before < MIB as u64,
        "a partial read stays partial"
    );
    assert_eq!(copies(&fx).0, 0);
    // A whole read marks the version; while the kernel's page cache holds it, that serves.
    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&path)], "").stdout, other);
    assert_eq!(copies(&fx).0, 0);
    // Renamed, its inode's pages are gone: the next open copies it whole.
    let moved = fx.mnt.join("moved.bin");
    let out = fx.as_uid(ALICE, "mv", &[s(&path), s(&moved)], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fx.as_uid(ALICE, "cat", &[s(&moved)], "").stdout, other);
    assert_eq!(copies(&fx).0, other.len() as u64);
    fx.unmount();

    // `chunked` never copies.
    fx.mount(&["--data-path", "chunked"]);
    fx.unlock(ALICE, "pw-alice");
    for _ in 0..2 {
        assert_eq!(
            fx.as_uid(ALICE, "cat", &[s(&fx.mnt.join("moved.bin"))], "")
                .stdout,
            other
        );
    }
    let st = fx.status();
    assert_eq!(st["copies"]["bytes"], 0);
    assert_eq!(st["copies"]["passthrough"], false);
}
