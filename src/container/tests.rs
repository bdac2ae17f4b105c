//! Unit tests of the container format.

use super::*;
use std::io::Cursor;

pub(crate) fn encrypt(data: &[u8], log2: u8, who: &[(&str, &PrivateKey)]) -> Vec<u8> {
    let dk = SecretKey::generate().unwrap();
    let recipients: Vec<_> = who
        .iter()
        .map(|(n, k)| (n.to_string(), k.public_key()))
        .collect();
    let mut w = Writer::new(Cursor::new(Vec::new()), &dk, log2, &recipients, &owned()).unwrap();
    // Feed in odd-sized pieces to exercise chunk boundaries.
    for piece in data.chunks(1000) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The ownership record the tests' containers carry.
fn owned() -> Ownership {
    Ownership::new(Some("alice".into()), 1001, 0o640)
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
    let mut d = Draft::create(
        file,
        &dk,
        12,
        &[("alice".into(), alice.public_key())],
        &owned(),
    )
    .unwrap();
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
        Draft::create(
            f,
            &dk,
            12,
            &[("alice".into(), alice.public_key())],
            &owned(),
        )
        .unwrap()
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

/// A version 1 container, as earlier builds wrote it: no ownership record.
fn encrypt_v1(data: &[u8], who: &[(&str, &PrivateKey)]) -> (Vec<u8>, SecretKey) {
    let v2 = encrypt(data, 12, who);
    let c = Container::parse(v2.clone()).unwrap();
    let dk = c.unwrap_key(who[0].0, who[0].1).unwrap();
    let slots = encode_slots(c.slots()).unwrap();
    let mut header = *c.header();
    header.version = VERSION_1;
    header.slots_len = slots.len() as u32;
    let data_at = FIXED_HEADER_LEN + c.header().slots_len as usize;
    ([&header.encode()[..], &slots, &v2[data_at..]].concat(), dk)
}

#[test]
fn ownership_record_round_trips_and_rewrites_alone() {
    let alice = PrivateKey::generate().unwrap();
    let enc = encrypt(b"owned data", 12, &[("alice", &alice)]);
    let c = Container::parse(enc.clone()).unwrap();
    assert_eq!(c.header().version, VERSION);
    assert_eq!(c.ownership(), &owned());
    let root = Ownership::new(None, 0, 0o1777);
    let mut out = Vec::new();
    c.write_with_ownership(&root, &mut out).unwrap();
    let r = open(out.clone(), &alice).unwrap();
    assert_eq!(r.ownership(), &root);
    let mut buf = [0u8; 10];
    r.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"owned data");
    // Only the slot section changed: header fields, data, table and MAC are the same bytes.
    let (old, new) = (c.header().slots_len as usize, r.header().slots_len as usize);
    assert_eq!(old - new, 5, "the owner name is gone");
    assert_eq!(enc[..60], out[..60]);
    assert_eq!(enc[FIXED_HEADER_LEN + old..], out[FIXED_HEADER_LEN + new..]);
    // Granting keeps the record.
    let bob = PrivateKey::generate().unwrap();
    let c = Container::parse(out).unwrap();
    let dk = c.unwrap_key("alice", &alice).unwrap();
    let mut slots = c.slots().to_vec();
    slots.push(KeySlot::seal(&c.header().file_id, "bob", &bob.public_key(), &dk).unwrap());
    let mut granted = Vec::new();
    c.write_with_slots(&slots, &mut granted).unwrap();
    assert_eq!(Container::parse(granted).unwrap().ownership(), &root);
    // A record the format cannot hold is refused, not written.
    let bad = Ownership {
        owner: Some("x".repeat(33)),
        gid: 0,
        mode: 0o644,
    };
    assert!(matches!(
        c.write_with_ownership(&bad, &mut Vec::new()),
        Err(ContainerError::Ownership(_))
    ));
}

#[test]
fn version_1_reads_with_its_default_and_upgrades_without_a_key() {
    let alice = PrivateKey::generate().unwrap();
    let bob = PrivateKey::generate().unwrap();
    let (v1, _) = encrypt_v1(b"legacy", &[("bob", &bob), ("alice", &alice)]);
    let c = Container::parse(v1.clone()).unwrap();
    assert_eq!(c.header().version, VERSION_1);
    assert_eq!(c.ownership(), &Ownership::new(Some("bob".into()), 0, 0o644));
    let r = open(v1.clone(), &alice).unwrap();
    assert_eq!(r.len(), 6);
    // Revoking the first slot's user keeps the owner: the default becomes a record.
    let kept: Vec<_> = c.slots()[1..].to_vec();
    let mut revoked = Vec::new();
    c.write_with_slots(&kept, &mut revoked).unwrap();
    let r = open(revoked, &alice).unwrap();
    assert_eq!(r.header().version, VERSION);
    assert_eq!(r.ownership().owner.as_deref(), Some("bob"));
    // chown of a version 1 file: version 2 with the record, still authenticated.
    let mut chowned = Vec::new();
    c.write_with_ownership(&owned(), &mut chowned).unwrap();
    let r = open(chowned, &alice).unwrap();
    assert_eq!(r.ownership(), &owned());
    r.verify_all().unwrap();
}

#[test]
fn slot_section_is_checked_as_strictly_in_version_2() {
    let alice = PrivateKey::generate().unwrap();
    let enc = encrypt(b"x", 12, &[("alice", &alice)]);
    let c = Container::parse(enc.clone()).unwrap();
    let section_len = c.header().slots_len as usize;
    let section = enc[FIXED_HEADER_LEN..FIXED_HEADER_LEN + section_len].to_vec();
    let rest = enc[FIXED_HEADER_LEN + section_len..].to_vec();
    let with_section = |s: &[u8], version: u16| {
        let mut h = *c.header();
        h.slots_len = s.len() as u32;
        h.version = version;
        [&h.encode()[..], s, &rest].concat()
    };
    let parse = |b: Vec<u8>| Container::parse(b).map(|_| ());
    parse(with_section(&section, VERSION)).unwrap();
    let mut trailing = section.clone();
    trailing.push(0);
    assert!(matches!(
        parse(with_section(&trailing, VERSION)),
        Err(ContainerError::TrailingRecordBytes(1))
    ));
    assert!(matches!(
        parse(with_section(&section[..section_len - 1], VERSION)),
        Err(ContainerError::Ownership(_))
    ));
    // Version 1 has no record: the record's bytes are trailing bytes.
    assert!(matches!(
        parse(with_section(&section, VERSION_1)),
        Err(ContainerError::TrailingSlotBytes(12))
    ));
    assert!(matches!(
        parse(with_section(&section, 3)),
        Err(ContainerError::UnsupportedVersion(3))
    ));
    let mut bad_mode = section.clone();
    bad_mode[section_len - 1] |= 0x10;
    assert!(matches!(
        parse(with_section(&bad_mode, VERSION)),
        Err(ContainerError::Ownership(_))
    ));
    // The stat path reads the same record.
    let (header, ownership) = read_ownership(&enc[..]).unwrap();
    assert_eq!((header, ownership), (*c.header(), owned()));
}
