//! The eager data path's decisions, against a temporary store without FUSE: which opens get
//! a copy, that one copy serves a version, what a lock does to it, and `auto`'s rule.

use std::os::fd::AsRawFd;

use super::tests::{caller, fixture, ALICE};
use super::DataPath;

const LEN: usize = 3 << 20;

fn data() -> Vec<u8> {
    (0..LEN as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// Reads the copy an open got, as the kernel would (pread on its file).
fn read_copy(copy: &super::Copy, at: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: pread into our own buffer from the copy's descriptor.
    let n = unsafe {
        libc::pread(
            copy.fd().as_raw_fd(),
            buf.as_mut_ptr().cast(),
            len,
            at as libc::off_t,
        )
    };
    buf.truncate(n.max(0) as usize);
    buf
}

#[test]
fn eager_opens_share_one_copy_until_the_holder_locks() {
    let fx = fixture();
    fx.core.set_data_path(DataPath::Eager, 64 << 20);
    fx.core.set_passthrough(true);
    let data = data();
    fx.put(ALICE, "m.bin", &data);
    let ino = fx.ino("m.bin");
    let a = fx.core.open(caller(ALICE), ino, libc::O_RDONLY).unwrap();
    let copy = a.passthrough.clone().expect("an eager open gets a copy");
    assert_eq!(
        read_copy(&copy, 1 << 20, 4096),
        data[1 << 20..(1 << 20) + 4096]
    );
    assert_eq!(fx.core.copy_bytes(), (LEN as u64, 64 << 20));
    let b = fx.core.open(caller(ALICE), ino, libc::O_RDONLY).unwrap();
    assert_eq!(
        b.passthrough.as_ref().map(|c| c.id),
        Some(copy.id),
        "one copy"
    );
    // Writing beside passthrough files: served on an inode of its own (ESTALE, retried).
    let w = fx.core.open(caller(ALICE), ino, libc::O_WRONLY);
    assert_eq!(w.map(|_| ()).map_err(|e| e.errno()), Err(libc::ESTALE));

    fx.core.access.lock(ALICE);
    fx.core.invalidate_open_files_of(ALICE);
    assert!(read_copy(&copy, 0, 4096).is_empty(), "emptied by the lock");
    assert_eq!(fx.core.copy_bytes().0, 0);
    fx.core.release(a.fh).unwrap();
    fx.core.release(b.fh).unwrap();
}

#[test]
fn auto_copies_only_what_was_read_whole_and_is_not_in_the_page_cache() {
    let fx = fixture();
    fx.core.set_data_path(DataPath::Auto, 64 << 20);
    fx.core.set_passthrough(true);
    let data = data();
    fx.put(ALICE, "m.bin", &data);
    let ino = fx.ino("m.bin");
    // A partial reader: chunked, and it marks nothing.
    let part = fx.core.open(caller(ALICE), ino, libc::O_RDONLY).unwrap();
    assert!(part.passthrough.is_none());
    fx.core.read(caller(ALICE), part.fh, 1 << 20, 4096).unwrap();
    fx.core.release(part.fh).unwrap();
    fx.core.versions.forget_pages(ino);
    let again = fx.core.open(caller(ALICE), ino, libc::O_RDONLY).unwrap();
    assert!(again.passthrough.is_none(), "a partial read does not copy");
    fx.core.release(again.fh).unwrap();
    // Read whole: the kernel's page cache holds it, so the next open is chunked too...
    assert_eq!(fx.read_all(ALICE, "m.bin").unwrap(), data);
    let cached = fx.core.open(caller(ALICE), ino, libc::O_RDONLY).unwrap();
    assert!(cached.passthrough.is_none());
    fx.core.release(cached.fh).unwrap();
    // ...until those pages are forgotten (a lock, a rename): then it is copied whole.
    fx.core.versions.forget_pages(ino);
    let eager = fx.core.open(caller(ALICE), ino, libc::O_RDONLY).unwrap();
    let copy = eager
        .passthrough
        .clone()
        .expect("read whole, not cached: copied");
    assert_eq!(read_copy(&copy, LEN - 100, 100), data[LEN - 100..]);
    fx.core.release(eager.fh).unwrap();
    // Without passthrough from the kernel, nothing is copied.
    fx.core.set_passthrough(false);
    fx.core.versions.forget_pages(ino);
    let plain = fx.core.open(caller(ALICE), ino, libc::O_RDONLY).unwrap();
    assert!(plain.passthrough.is_none());
    fx.core.release(plain.fh).unwrap();
}

#[test]
fn a_damaged_chunk_means_no_copy_is_recorded_and_not_tried_again() {
    let fx = fixture();
    fx.core.set_data_path(DataPath::Eager, 64 << 20);
    fx.core.set_passthrough(true);
    fx.put(ALICE, "m.bin", &data());
    // A store writer flips one byte of chunk data (the header and table stay valid).
    let path = fx.container("m.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let ino = fx.ino("m.bin");
    let stats = |fx: &super::tests::Fixture| {
        let s = &fx.core.stats;
        (
            s.integrity_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            s.bytes_decrypted.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let first = fx.core.open(caller(ALICE), ino, libc::O_RDONLY).unwrap();
    assert!(first.passthrough.is_none(), "no copy of a damaged file");
    assert_eq!(stats(&fx).0, 1, "the failure is counted");
    fx.core.release(first.fh).unwrap();
    fx.core.versions.forget_pages(ino);
    let before = stats(&fx);
    let again = fx.core.open(caller(ALICE), ino, libc::O_RDONLY).unwrap();
    assert!(again.passthrough.is_none());
    assert_eq!(stats(&fx), before, "not decrypted whole again");
    // Served chunked: a chunk away from the damage still reads.
    assert_eq!(
        fx.core
            .read(caller(ALICE), again.fh, 0, 4096)
            .unwrap()
            .as_slice(),
        &data()[..4096]
    );
    fx.core.release(again.fh).unwrap();
}
