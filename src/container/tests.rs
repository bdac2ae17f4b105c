//! Unit tests of the container format.

use super::*;
use std::io::Cursor;

pub(crate) fn encrypt(data: &[u8], log2: u8, who: &[(&str, &PrivateKey)]) -> Vec<u8> {
    let dk = SecretKey::generate().unwrap();
    let recipients: Vec<_> = who
        .iter()
        .map(|(n, k)| (n.to_string(), k.public_key()))
        .collect();
    let mut w = Writer::new(Cursor::new(Vec::new()), &dk, log2, &recipients).unwrap();
    // Feed in odd-sized pieces to exercise chunk boundaries.
    for piece in data.chunks(1000) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn open(bytes: Vec<u8>, key: &PrivateKey) -> Result<Reader<Vec<u8>>> {
    let c = Container::parse(bytes)?;
    let dk = c.unwrap_key("alice", key)?;
    c.open(&dk)
}

#[test]
fn round_trip_sizes() {
    let alice = PrivateKey::generate().unwrap();
    for log2 in [12u8, 16] {
        let cs = 1usize << log2;
        for size in [0, 1, cs - 1, cs, cs + 1, 3 * cs + 17] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let enc = encrypt(&data, log2, &[("alice", &alice)]);
            let r = open(enc, &alice).unwrap();
            assert_eq!(r.len(), size as u64);
            let mut out = vec![0u8; size + 10];
            assert_eq!(r.read_at(0, &mut out).unwrap(), size);
            assert_eq!(&out[..size], &data[..]);
            r.verify_all().unwrap();
        }
    }
}

#[test]
fn slots_rewrite_keeps_data() {
    let alice = PrivateKey::generate().unwrap();
    let bob = PrivateKey::generate().unwrap();
    let enc = encrypt(b"hello world", 12, &[("alice", &alice)]);
    let c = Container::parse(enc).unwrap();
    let dk = c.unwrap_key("alice", &alice).unwrap();
    let mut slots = c.slots().to_vec();
    slots.push(KeySlot::seal(&c.header().file_id, "bob", &bob.public_key(), &dk).unwrap());
    let mut out = Vec::new();
    c.write_with_slots(&slots, &mut out).unwrap();
    let c2 = Container::parse(out).unwrap();
    let dk2 = c2.unwrap_key("bob", &bob).unwrap();
    let r = c2.open(&dk2).unwrap();
    let mut buf = [0u8; 11];
    r.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello world");
}

#[test]
fn relabelled_slot_does_not_open() {
    let alice = PrivateKey::generate().unwrap();
    let enc = encrypt(b"x", 12, &[("alice", &alice)]);
    let c = Container::parse(enc).unwrap();
    let mut slots = c.slots().to_vec();
    slots[0].label = "mallory".into();
    let mut out = Vec::new();
    c.write_with_slots(&slots, &mut out).unwrap();
    let c2 = Container::parse(out).unwrap();
    assert!(matches!(
        c2.unwrap_key("mallory", &alice),
        Err(ContainerError::SlotAuthentication(_))
    ));
}

#[test]
fn draft_in_any_order_reads_back() {
    let alice = PrivateKey::generate().unwrap();
    let dk = SecretKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.tvlt");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut d = Draft::create(file, &dk, 12, &[("alice".into(), alice.public_key())]).unwrap();
    let mut scratch = Vec::new();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    // Chunk 2 first (final, 1808 bytes), then 0, then 1 sealed twice.
    d.seal(2, &data[8192..], true, &mut scratch).unwrap();
    d.seal(0, &data[..4096], false, &mut scratch).unwrap();
    d.seal(1, &[0u8; 4096], false, &mut scratch).unwrap();
    d.seal(1, &data[4096..8192], false, &mut scratch).unwrap();
    let mut out = vec![0u8; 4096];
    assert_eq!(d.open(1, &mut out).unwrap(), 4096);
    assert_eq!(out, &data[4096..8192]);
    assert_eq!(d.sealed(2), Some((1808, true)));
    assert!(d.open(3, &mut out).is_err());
    let file = d.finish(data.len() as u64).unwrap();
    drop(file);
    let r = open(std::fs::read(&path).unwrap(), &alice).unwrap();
    let mut back = vec![0u8; data.len()];
    r.read_at(0, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn draft_refuses_to_finish_with_gaps_or_wrong_final_flag() {
    let dk = SecretKey::generate().unwrap();
    let alice = PrivateKey::generate().unwrap();
    let mk = || {
        let f = tempfile::tempfile().unwrap();
        Draft::create(f, &dk, 12, &[("alice".into(), alice.public_key())]).unwrap()
    };
    let mut scratch = Vec::new();
    let mut d = mk();
    d.seal(1, &[1u8; 10], true, &mut scratch).unwrap();
    assert!(d.finish(4106).is_err(), "chunk 0 missing");
    let mut d = mk();
    d.seal(0, &[1u8; 4096], true, &mut scratch).unwrap();
    d.seal(1, &[1u8; 10], true, &mut scratch).unwrap();
    assert!(d.finish(4106).is_err(), "chunk 0 sealed as last");
    let mut d = mk();
    d.seal(0, &[], true, &mut scratch).unwrap();
    assert!(d.finish(0).is_ok(), "empty file");
}

#[test]
fn hostile_headers_do_not_panic() {
    let alice = PrivateKey::generate().unwrap();
    let enc = encrypt(&[1u8; 5000], 12, &[("alice", &alice)]);
    for i in 0..enc.len().min(300) {
        for v in [0u8, 0xff, 0x80] {
            let mut b = enc.clone();
            b[i] = v;
            let _ = open(b, &alice);
        }
    }
    for cut in 0..enc.len() {
        assert!(Container::parse(&enc[..cut]).is_err());
    }
}
