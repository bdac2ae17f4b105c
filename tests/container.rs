//! `.tvlt` container tests through the public API: byte-exact round trips, random-access reads,
//! tamper detection with the exact `ContainerError` each alteration produces, key-slot rewrites
//! and concurrent reads. The byte layout itself is pinned by tests/vectors.rs. Every container
//! here ends its slot section with [`owned`]'s ownership record, which (like the key slots) is
//! outside the header MAC: changes to it are the only ones a reader does not refuse.

use std::io::Cursor;
use std::ops::Range;
use std::sync::OnceLock;

use proptest::prelude::*;

use tensorvault::container::{
    self, Container, ContainerError, FixedHeader, KeySlot, Ownership, Reader, Writer,
    FIXED_HEADER_LEN, TABLE_ENTRY_LEN,
};
use tensorvault::crypto::{FileKeys, PrivateKey, SecretKey};

const MAC_LEN: usize = 32;
/// The length of [`owned`]'s record: owner length, "alice", gid, mode.
const RECORD_LEN: usize = 1 + 5 + 4 + 2;

/// The ownership record of the test containers.
fn owned() -> Ownership {
    Ownership::new(Some("alice".into()), 1001, 0o640)
}

/// Where the ownership record of a container lies: the end of the slot section.
fn record(bytes: &[u8]) -> Range<usize> {
    let data = Regions::of(bytes).data;
    data - RECORD_LEN..data
}

/// Fixed identities keep the tests reproducible apart from the nonces the code draws itself.
fn alice() -> PrivateKey {
    PrivateKey::from_bytes(&[0xa1; 32])
}

fn bob() -> PrivateKey {
    PrivateKey::from_bytes(&[0xb0; 32])
}

/// Deterministic bytes that differ from chunk to chunk (xorshift64).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Encrypts `data` for `who`, feeding the writer in pieces of `piece` bytes.
fn encrypt_in_pieces(
    data: &[u8],
    log2: u8,
    who: &[(&str, &PrivateKey)],
    piece: usize,
) -> (Vec<u8>, SecretKey) {
    let dk = SecretKey::generate().unwrap();
    let recipients: Vec<_> = who
        .iter()
        .map(|(n, k)| (n.to_string(), k.public_key()))
        .collect();
    let mut w = Writer::new(Cursor::new(Vec::new()), &dk, log2, &recipients, &owned()).unwrap();
    for p in data.chunks(piece.max(1)) {
        w.write_all(p).unwrap();
    }
    (w.finish().unwrap().into_inner(), dk)
}

fn encrypt(data: &[u8], log2: u8, who: &[(&str, &PrivateKey)]) -> (Vec<u8>, SecretKey) {
    // An odd piece size so writes straddle chunk boundaries.
    encrypt_in_pieces(data, log2, who, 7919)
}

/// Builds a container from the low-level public API with a chosen file id and data key, as a
/// writer that re-encrypted a file in place would: what a chunk rollback needs.
fn encrypt_with_id(
    data: &[u8],
    log2: u8,
    dk: &SecretKey,
    file_id: [u8; 16],
    who: &[(&str, &PrivateKey)],
) -> Vec<u8> {
    let slots: Vec<_> = who
        .iter()
        .map(|(n, k)| KeySlot::seal(&file_id, n, &k.public_key(), dk).unwrap())
        .collect();
    let slots = container::encode_slot_section(&slots, &owned()).unwrap();
    let header = FixedHeader {
        version: container::VERSION,
        file_id,
        chunk_log2: log2,
        plaintext_len: data.len() as u64,
        slots_len: slots.len() as u32,
    };
    let keys = FileKeys::derive(dk, &file_id);
    let (mut body, mut table) = (Vec::new(), Vec::new());
    let n = header.chunk_count();
    for i in 0..n {
        let (s, e) = header.chunk_range(i);
        let mut buf = data[s as usize..e as usize].to_vec();
        let (nonce, tag) = keys.seal_chunk(i, i + 1 == n, &mut buf).unwrap();
        body.extend_from_slice(&buf);
        table.extend_from_slice(&nonce);
        table.extend_from_slice(&tag);
    }
    let encoded = header.encode();
    let mac = keys.header_mac(&[&header.maced(), &table]);
    [&encoded[..], &slots, &body, &table, &mac].concat()
}

fn open(bytes: Vec<u8>, label: &str, key: &PrivateKey) -> Result<Reader<Vec<u8>>, ContainerError> {
    let c = Container::parse(bytes)?;
    let dk = c.unwrap_key(label, key)?;
    c.open(&dk)
}

/// Opens as `label` and reads everything twice (chunk by chunk, then in one `read_at`).
fn read_all(bytes: Vec<u8>, label: &str, key: &PrivateKey) -> Result<Vec<u8>, ContainerError> {
    let r = open(bytes, label, key)?;
    r.verify_all()?;
    let mut out = vec![0u8; r.len() as usize + 17];
    let n = r.read_at(0, &mut out)?;
    assert_eq!(n as u64, r.len());
    out.truncate(n);
    Ok(out)
}

fn read_all_with_key(bytes: Vec<u8>, dk: &SecretKey) -> Result<Vec<u8>, ContainerError> {
    let r = Container::parse(bytes)?.open(dk)?;
    r.verify_all()?;
    let mut out = vec![0u8; r.len() as usize];
    r.read_at(0, &mut out)?;
    Ok(out)
}

/// Region boundaries of a container, from its header.
struct Regions {
    data: usize,
    table: usize,
    mac: usize,
    total: usize,
    cs: usize,
    len: usize,
}

impl Regions {
    fn of(bytes: &[u8]) -> Regions {
        let h = FixedHeader::decode(bytes).unwrap();
        let l = h.layout().unwrap();
        Regions {
            data: l.data as usize,
            table: l.table as usize,
            mac: l.mac as usize,
            total: l.total as usize,
            cs: h.chunk_size() as usize,
            len: h.plaintext_len as usize,
        }
    }

    fn chunk(&self, i: usize) -> Range<usize> {
        let start = self.data + i * self.cs;
        start..(start + self.cs).min(self.table)
    }

    fn entry(&self, i: usize) -> Range<usize> {
        let start = self.table + i * TABLE_ENTRY_LEN;
        start..start + TABLE_ENTRY_LEN
    }
}

fn swap(b: &mut [u8], x: Range<usize>, y: Range<usize>) {
    let (bx, by) = (b[x.clone()].to_vec(), b[y.clone()].to_vec());
    b[x].copy_from_slice(&by);
    b[y].copy_from_slice(&bx);
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

fn round_trip(log2: u8) {
    let cs = 1usize << log2;
    let alice = alice();
    for size in [0, 1, cs - 1, cs, cs + 1, (5 << 20) + 3] {
        let data = pseudo_random(size, size as u64 + u64::from(log2));
        let (bytes, _) = encrypt(&data, log2, &[("alice", &alice)]);
        // Total-length rule: header + slots + ciphertext + 28 B per chunk + MAC.
        let chunks = container::chunk_count(size as u64, log2) as usize;
        assert_eq!(chunks, size.div_ceil(cs).max(1));
        let slots_len = 2 + 1 + 5 + 92 + RECORD_LEN;
        assert_eq!(
            bytes.len(),
            FIXED_HEADER_LEN + slots_len + size + TABLE_ENTRY_LEN * chunks + MAC_LEN,
            "log2 {log2} size {size}"
        );
        let r = open(bytes, "alice", &alice).unwrap();
        assert_eq!(r.len(), size as u64);
        assert_eq!(r.is_empty(), size == 0);
        assert_eq!(r.chunk_count(), chunks as u64);
        r.verify_all().unwrap();
        let mut out = vec![0u8; size + 3];
        assert_eq!(r.read_at(0, &mut out).unwrap(), size);
        assert!(out[..size] == data[..], "log2 {log2} size {size}: read_at");
        let mut chunk = vec![0u8; cs];
        let mut joined = Vec::with_capacity(size);
        for i in 0..r.chunk_count() {
            let n = r.read_chunk(i, &mut chunk).unwrap();
            joined.extend_from_slice(&chunk[..n]);
        }
        assert!(joined == data, "log2 {log2} size {size}: read_chunk");
        assert!(matches!(
            r.read_chunk(r.chunk_count(), &mut chunk),
            Err(ContainerError::ChunkOutOfRange { index, count })
                if index == chunks as u64 && count == chunks as u64
        ));
    }
}

#[test]
fn round_trip_4k_chunks() {
    round_trip(12);
}

#[test]
fn round_trip_64k_chunks() {
    round_trip(16);
}

#[test]
fn round_trip_1m_chunks() {
    round_trip(20);
}

/// How the plaintext is fed to the writer does not matter.
#[test]
fn write_piece_size_does_not_matter() {
    let alice = alice();
    let data = pseudo_random(3 * 4096 + 5, 9);
    for piece in [1, 4095, 4096, 4097, 100_000] {
        let (bytes, _) = encrypt_in_pieces(&data, 12, &[("alice", &alice)], piece);
        assert_eq!(
            read_all(bytes, "alice", &alice).unwrap(),
            data,
            "piece {piece}"
        );
    }
}

#[test]
fn bad_chunk_sizes_are_refused() {
    let dk = SecretKey::generate().unwrap();
    for log2 in [0, 11, 21, 64] {
        assert!(matches!(
            Writer::new(Cursor::new(Vec::new()), &dk, log2, &[], &owned()),
            Err(ContainerError::ChunkSize(n)) if n == log2
        ));
    }
    for size in [0u64, 2048, 4095, 6000, 1 << 21] {
        assert!(container::chunk_log2_from_size(size).is_err(), "{size}");
    }
    assert_eq!(container::chunk_log2_from_size(4096).unwrap(), 12);
    assert_eq!(container::chunk_log2_from_size(1 << 20).unwrap(), 20);
}

// ---------------------------------------------------------------------------------------------
// Random access
// ---------------------------------------------------------------------------------------------

/// A read request, turned into an offset by `offset_for` once the file size is known.
#[derive(Debug, Clone)]
enum At {
    Anywhere(u32),
    NearBoundary { chunk: u32, delta: i8 },
    PastEnd(u32),
    NearMax(u32),
}

fn at_strategy() -> impl Strategy<Value = At> {
    prop_oneof![
        any::<u32>().prop_map(At::Anywhere),
        (any::<u32>(), -3i8..=3).prop_map(|(chunk, delta)| At::NearBoundary { chunk, delta }),
        any::<u32>().prop_map(At::PastEnd),
        any::<u32>().prop_map(At::NearMax),
    ]
}

fn offset_for(at: &At, len: u64, cs: u64) -> u64 {
    match *at {
        At::Anywhere(a) => u64::from(a) % (len + 1),
        At::NearBoundary { chunk, delta } => {
            let k = u64::from(chunk) % (len / cs + 2);
            (k * cs).saturating_add_signed(i64::from(delta))
        }
        At::PastEnd(a) => len + u64::from(a % 10_000),
        At::NearMax(a) => u64::MAX - u64::from(a % 10),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// `read_at` returns exactly the plaintext bytes of any range, short only at EOF, and
    /// leaves the rest of the buffer alone.
    #[test]
    fn read_at_matches_plaintext(
        log2 in 12u8..=14,
        len in prop_oneof![0usize..64, 0usize..70_000],
        reads in prop::collection::vec((at_strategy(), 0usize..50_000), 1..16),
    ) {
        let alice = alice();
        let data = pseudo_random(len, len as u64);
        let (bytes, _) = encrypt(&data, log2, &[("alice", &alice)]);
        let r = open(bytes, "alice", &alice).unwrap();
        let cs = 1u64 << log2;
        for (at, n) in reads {
            let offset = offset_for(&at, len as u64, cs);
            let mut buf = vec![0xAAu8; n];
            let got = r.read_at(offset, &mut buf).unwrap();
            let want = if offset >= len as u64 { 0 } else { n.min(len - offset as usize) };
            prop_assert_eq!(got, want, "offset {} len {}", offset, n);
            if want > 0 {
                let o = offset as usize;
                prop_assert!(buf[..want] == data[o..o + want], "offset {} len {}", offset, n);
            }
            prop_assert!(buf[want..].iter().all(|&b| b == 0xAA), "wrote past the read");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tampering
// ---------------------------------------------------------------------------------------------

/// A three-chunk file (two full 4 KiB chunks and a 100-byte one) for alice only.
fn tamper_base() -> &'static (Vec<u8>, Vec<u8>, SecretKey) {
    static BASE: OnceLock<(Vec<u8>, Vec<u8>, SecretKey)> = OnceLock::new();
    BASE.get_or_init(|| {
        let data = pseudo_random(2 * 4096 + 100, 77);
        let (bytes, dk) = encrypt(&data, 12, &[("alice", &alice())]);
        (data, bytes, dk)
    })
}

/// The error a single-byte change at `pos` of a one-recipient ("alice") container must give
/// when opened as alice, from the reader's verification order in docs/FORMAT.md. (A change
/// inside the ownership record may also go unnoticed: see [`unnoticed`].)
fn expected_error(original: &[u8], tampered: &[u8], pos: usize, err: &ContainerError) -> bool {
    use ContainerError::*;
    let r = Regions::of(original);
    let actual = tampered.len() as u64;
    let size_or_overflow = |h: FixedHeader| match h.layout() {
        None => matches!(err, LayoutOverflow { plaintext_len, slots_len }
            if *plaintext_len == h.plaintext_len && *slots_len == h.slots_len),
        Some(l) => {
            matches!(err, SizeMismatch { expected, actual: a } if *expected == l.total && *a == actual)
        }
    };
    let h = FixedHeader::decode(original).unwrap();
    let label_start = FIXED_HEADER_LEN + 2;
    match pos {
        0..=3 => matches!(err, NotAContainer),
        4 | 5 => match u16::from_le_bytes([tampered[4], tampered[5]]) {
            // Version 1 has no record: its bytes are left over after the last slot.
            1 => matches!(err, TrailingSlotBytes(n) if *n == RECORD_LEN),
            v => matches!(err, UnsupportedVersion(x) if *x == v),
        },
        6 => {
            let log2 = tampered[6];
            if !(12..=20).contains(&log2) {
                return matches!(err, ChunkSize(x) if *x == log2);
            }
            let h2 = FixedHeader {
                chunk_log2: log2,
                ..h
            };
            if h2.layout().unwrap().total != actual {
                size_or_overflow(h2)
            } else {
                matches!(err, HeaderAuthentication)
            }
        }
        7 | 32..=59 => {
            matches!(err, ReservedNotZero { offset, value } if *offset == pos && *value == tampered[pos])
        }
        8..=23 => matches!(err, SlotAuthentication(l) if l == "alice"),
        24..=31 => {
            let len = u64::from_le_bytes(tampered[24..32].try_into().unwrap());
            size_or_overflow(FixedHeader {
                plaintext_len: len,
                ..h
            })
        }
        60..=63 => {
            let sl = u32::from_le_bytes(tampered[60..64].try_into().unwrap());
            if !(2..=container::MAX_SLOTS_LEN).contains(&sl) {
                matches!(err, SlotsLenOutOfRange(x) if *x == sl)
            } else {
                size_or_overflow(FixedHeader { slots_len: sl, ..h })
            }
        }
        // Slot count: more slots than the section holds, or, after fewer, slot bytes that
        // are no ownership record.
        64 | 65 => matches!(
            err,
            TruncatedSlot { .. } | Ownership(_) | TrailingRecordBytes(_)
        ),
        // Label length and label.
        p if p < label_start + 1 + 5 => {
            matches!(
                err,
                TruncatedSlot { .. }
                    | Ownership(_)
                    | TrailingRecordBytes(_)
                    | LabelNotUtf8 { index: 0 }
                    | EmptyLabel
                    | LabelControlCharacter(_)
            ) || matches!(err, NoSlot(l) if l == "alice")
        }
        // Ephemeral key, nonce, wrapped key.
        p if p < r.data - RECORD_LEN => matches!(err, SlotAuthentication(l) if l == "alice"),
        // The record: its length, an owner name that is not one, mode bits out of range.
        p if p < r.data => matches!(err, Ownership(_) | TrailingRecordBytes(_)),
        p if p < r.table => {
            matches!(err, ChunkAuthentication { index } if *index == ((p - r.data) / r.cs) as u64)
        }
        p if p < r.total => matches!(err, HeaderAuthentication),
        _ => unreachable!(),
    }
}

/// Whether a change at `pos` that a reader accepted is one it may accept: inside the
/// ownership record (outside the MAC, docs/FORMAT.md), giving the right plaintext and another
/// record, valid but not the one written.
fn unnoticed(original: &[u8], tampered: &[u8], pos: usize, plain: &[u8], expected: &[u8]) -> bool {
    let seen = Container::parse(tampered.to_vec()).map(|c| c.ownership().clone());
    record(original).contains(&pos) && plain == expected && seen.is_ok_and(|o| o != owned())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Any single-byte change anywhere in a one-recipient container is refused, with the error
    /// its region calls for; never a panic, never plaintext.
    #[test]
    fn any_byte_change_is_caught(pos in 0usize..(2 * 4096 + 100 + 64 + 100 + RECORD_LEN + 3 * 28 + 32), xor in 1u8..=255) {
        let (data, bytes, _) = tamper_base();
        prop_assert_eq!(bytes.len(), 2 * 4096 + 100 + 64 + 100 + RECORD_LEN + 3 * 28 + 32);
        let mut b = bytes.clone();
        b[pos] ^= xor;
        match read_all(b.clone(), "alice", &alice()) {
            Ok(plain) => prop_assert!(
                unnoticed(bytes, &b, pos, &plain, data),
                "change at {} (xor {:#x}) went unnoticed", pos, xor
            ),
            Err(e) => prop_assert!(expected_error(bytes, &b, pos, &e), "pos {} xor {:#x}: {:?}", pos, xor, e),
        }
    }

    /// With two recipients, alice's view is unaffected only by changes inside bob's slot and
    /// the ownership record (neither is covered by the header MAC); anything else is refused.
    /// Never wrong plaintext.
    #[test]
    fn two_recipient_changes(pos in 0usize..4096, xor in 1u8..=255) {
        static FILE: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
        let (data, bytes) = FILE.get_or_init(|| {
            let data = pseudo_random(3000, 5);
            let (bytes, _) = encrypt(&data, 12, &[("alice", &alice()), ("bob", &bob())]);
            (data, bytes)
        });
        let pos = pos % bytes.len();
        // bob's slot follows alice's: label length, "bob", then 92 bytes of key material.
        let bob_len = FIXED_HEADER_LEN + 2 + 1 + 5 + 92;
        let (bob_label, bob_key) = (bob_len + 1..bob_len + 4, bob_len + 4..bob_len + 4 + 92);
        let record = bob_key.end..bob_key.end + RECORD_LEN;
        let mut b = bytes.clone();
        b[pos] ^= xor;
        match read_all(b, "alice", &alice()) {
            Ok(plain) => {
                prop_assert!(&plain == data, "wrong plaintext after a change at {}", pos);
                prop_assert!(
                    bob_label.contains(&pos) || bob_key.contains(&pos) || record.contains(&pos),
                    "change at {} went unnoticed", pos
                );
            }
            // A changed label may be refused (not UTF-8, control character); bob's key
            // material is never looked at when alice opens the file.
            Err(e) => prop_assert!(!bob_key.contains(&pos), "pos {}: {:?}", pos, e),
        }
    }
}

/// Exhaustive version of `any_byte_change_is_caught` on a small file: every byte, two flips.
#[test]
fn every_byte_of_a_small_file_is_covered() {
    let alice = alice();
    let data = pseudo_random(100, 1);
    let (bytes, _) = encrypt(&data, 12, &[("alice", &alice)]);
    let mut unnoticed_changes = 0;
    for pos in 0..bytes.len() {
        for xor in [0x01, 0x80] {
            let mut b = bytes.clone();
            b[pos] ^= xor;
            match read_all(b.clone(), "alice", &alice) {
                Ok(plain) => {
                    assert!(unnoticed(&bytes, &b, pos, &plain, &data), "change at {pos}");
                    unnoticed_changes += 1;
                }
                Err(err) => assert!(expected_error(&bytes, &b, pos, &err), "pos {pos}: {err:?}"),
            }
        }
    }
    // Exactly these: the 5 name bytes xor 1 (still a name), the 4 gid bytes both ways, the
    // mode's low byte both ways and its high byte xor 1 (0o0640 to 0o0240 stays within
    // 0o7777).
    assert_eq!(unnoticed_changes, 5 + 8 + 2 + 1);
}

#[test]
fn every_truncation_is_refused() {
    let alice = alice();
    let (bytes, _) = encrypt(&pseudo_random(4096 + 10, 2), 12, &[("alice", &alice)]);
    for cut in 0..bytes.len() {
        let r = read_all(bytes[..cut].to_vec(), "alice", &alice);
        match cut {
            0..=63 => assert!(
                matches!(r, Err(ContainerError::TruncatedHeader(n)) if n == cut as u64),
                "cut {cut}"
            ),
            _ => assert!(
                matches!(r, Err(ContainerError::SizeMismatch { expected, actual })
                    if expected == bytes.len() as u64 && actual == cut as u64),
                "cut {cut}"
            ),
        }
    }
}

#[test]
fn header_changes() {
    let (data, bytes, dk) = tamper_base();
    let alice = alice();
    let r = Regions::of(bytes);

    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::NotAContainer)
    ));

    let mut b = bytes.clone();
    b[4] = 3;
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::UnsupportedVersion(3))
    ));

    for (at, v) in [(7, 1), (32, 1), (59, 0x80)] {
        let mut b = bytes.clone();
        b[at] = v;
        assert!(matches!(
            read_all(b, "alice", &alice),
            Err(ContainerError::ReservedNotZero { offset, value }) if offset == at && value == v
        ));
    }

    // The file id is bound by the slot AAD and, when the slot is bypassed, by the header MAC.
    let mut b = bytes.clone();
    b[8] ^= 1;
    assert!(matches!(
        read_all(b.clone(), "alice", &alice),
        Err(ContainerError::SlotAuthentication(l)) if l == "alice"
    ));
    assert!(matches!(
        read_all_with_key(b, dk),
        Err(ContainerError::HeaderAuthentication)
    ));

    // A shorter plaintext_len with the body cut to match: the length rule holds, the MAC not.
    let mut b = bytes.clone();
    b.drain(r.entry(2));
    b.drain(r.chunk(2));
    b[24..32].copy_from_slice(&8192u64.to_le_bytes());
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::HeaderAuthentication)
    ));

    // A larger chunk size with the same chunk count (a one-chunk file): only the MAC notices.
    let (small, _) = encrypt(&data[..1000], 12, &[("alice", &alice)]);
    let mut b = small.clone();
    b[6] = 13;
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::HeaderAuthentication)
    ));

    // The slot-section length is outside the MAC but fixed by the total-length rule.
    let mut b = bytes.clone();
    b[60] += 1;
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::SizeMismatch { .. })
    ));
}

#[test]
fn slot_changes() {
    let (_, bytes, dk) = tamper_base();
    let alice = alice();
    let eph = FIXED_HEADER_LEN + 2 + 1 + 5;
    // Ephemeral key (including its ignored top bit), nonce, wrapped key, tag.
    for at in [eph, eph + 31, eph + 32, eph + 44, eph + 44 + 32, eph + 91] {
        for xor in [0x01, 0x80] {
            let mut b = bytes.clone();
            b[at] ^= xor;
            assert!(
                matches!(read_all(b.clone(), "alice", &alice),
                    Err(ContainerError::SlotAuthentication(l)) if l == "alice"),
                "slot byte {at} xor {xor:#x}"
            );
            // Slots are outside the MAC: with the data key in hand the file still opens.
            assert_eq!(&read_all_with_key(b, dk).unwrap(), &tamper_base().0);
        }
    }
    // A low-order ephemeral key makes the shared secret all-zero: refused.
    let mut b = bytes.clone();
    b[eph..eph + 32].fill(0);
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::SlotAuthentication(_))
    ));
    // Another recipient's key does not open alice's slot.
    let c = Container::parse(bytes.clone()).unwrap();
    assert!(matches!(
        c.unwrap_key("alice", &bob()),
        Err(ContainerError::SlotAuthentication(l)) if l == "alice"
    ));
    assert!(matches!(c.unwrap_key("bob", &bob()), Err(ContainerError::NoSlot(l)) if l == "bob"));
    // A changed label byte: no slot for alice any more.
    let mut b = bytes.clone();
    b[FIXED_HEADER_LEN + 3] = b'A';
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::NoSlot(_))
    ));
    // Slot count, label length, UTF-8 and control characters are checked structurally. The
    // section is the count, then 1 + 5 ("alice") + 92 bytes.
    let structural = |at: usize, v: u8| {
        let mut b = bytes.clone();
        b[at] = v;
        read_all(b, "alice", &alice).unwrap_err()
    };
    assert!(matches!(
        structural(64, 2),
        ContainerError::TruncatedSlot { index: 1, count: 2 }
    ));
    // No slots: the slot's bytes are read as an ownership record, and are not one.
    assert!(matches!(
        structural(64, 0),
        ContainerError::Ownership(_) | ContainerError::TrailingRecordBytes(_)
    ));
    // A label running one byte past the record.
    assert!(matches!(
        structural(66, (5 + RECORD_LEN + 1) as u8),
        ContainerError::TruncatedSlot { index: 0, count: 1 }
    ));
    // "alic", the 92 key bytes from the "e" on, and one byte before the record: the record
    // then starts a byte early and does not parse.
    assert!(matches!(
        structural(66, 4),
        ContainerError::Ownership(_) | ContainerError::TrailingRecordBytes(_)
    ));
    assert!(matches!(
        structural(67, 0xff),
        ContainerError::LabelNotUtf8 { index: 0 }
    ));
    assert!(matches!(
        structural(67, b'\n'),
        ContainerError::LabelControlCharacter(l) if l == "\nlice"
    ));
    assert!(matches!(structural(66, 0), ContainerError::EmptyLabel));
}

#[test]
fn table_and_mac_changes() {
    let (_, bytes, _) = tamper_base();
    let alice = alice();
    let r = Regions::of(bytes);
    for at in [
        r.table,
        r.entry(1).start + 11,
        r.entry(1).start + 12,
        r.mac - 1,
        r.mac,
        r.total - 1,
    ] {
        let mut b = bytes.clone();
        b[at] ^= 0x20;
        assert!(
            matches!(
                read_all(b, "alice", &alice),
                Err(ContainerError::HeaderAuthentication)
            ),
            "byte {at}"
        );
    }
}

#[test]
fn chunk_changes() {
    let (data, bytes, _) = tamper_base();
    let alice = alice();
    let r = Regions::of(bytes);
    for i in 0..3 {
        let mut b = bytes.clone();
        b[r.chunk(i).end - 1] ^= 0x01;
        // The header still authenticates; only chunk i is refused, and only when read.
        let reader = open(b.clone(), "alice", &alice).unwrap();
        let mut buf = vec![0u8; 4096];
        for j in 0..3 {
            let got = reader.read_chunk(j, &mut buf);
            if j == i as u64 {
                assert!(
                    matches!(got, Err(ContainerError::ChunkAuthentication { index }) if index == j)
                );
            } else {
                let n = got.unwrap();
                assert_eq!(&buf[..n], &data[j as usize * 4096..j as usize * 4096 + n]);
            }
        }
        assert!(matches!(
            reader.read_at(0, &mut vec![0u8; r.len]),
            Err(ContainerError::ChunkAuthentication { index }) if index == i as u64
        ));
        // A failed read leaves no plaintext in the caller's buffer.
        let mut out = vec![0xAAu8; 4096];
        assert!(reader.read_chunk(i as u64, &mut out).is_err());
        let n = r.chunk(i).len();
        assert!(out[..n].iter().all(|&x| x == 0));
        assert!(out[n..].iter().all(|&x| x == 0xAA));
    }
}

#[test]
fn chunk_swaps() {
    let (_, bytes, _) = tamper_base();
    let alice = alice();
    let r = Regions::of(bytes);

    let mut b = bytes.clone();
    swap(&mut b, r.chunk(0), r.chunk(1));
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::ChunkAuthentication { index: 0 })
    ));

    let mut b = bytes.clone();
    swap(&mut b, r.chunk(0), r.chunk(1));
    swap(&mut b, r.entry(0), r.entry(1));
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::HeaderAuthentication)
    ));

    // Only the table entries swapped.
    let mut b = bytes.clone();
    swap(&mut b, r.entry(0), r.entry(1));
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::HeaderAuthentication)
    ));
}

#[test]
fn cross_file_chunk_swap() {
    let (data, bytes, _) = tamper_base();
    let alice = alice();
    let r = Regions::of(bytes);
    // Same plaintext, chunk size and recipient: only the data key and file id differ.
    let (other, _) = encrypt(data, 12, &[("alice", &alice)]);
    for i in 0..3 {
        let mut b = bytes.clone();
        b[r.chunk(i)].copy_from_slice(&other[r.chunk(i)]);
        assert!(matches!(
            read_all(b.clone(), "alice", &alice),
            Err(ContainerError::ChunkAuthentication { index }) if index == i as u64
        ));
        b[r.entry(i)].copy_from_slice(&other[r.entry(i)]);
        assert!(matches!(
            read_all(b, "alice", &alice),
            Err(ContainerError::HeaderAuthentication)
        ));
    }
}

#[test]
fn chunk_rollback() {
    let (data, bytes, dk) = tamper_base();
    let alice = alice();
    let r = Regions::of(bytes);
    let file_id = Container::parse(&bytes[..]).unwrap().header().file_id;
    // The previous version of the same file: same data key and file id, other plaintext.
    let mut old_data = data.clone();
    old_data[4096..8192].copy_from_slice(&pseudo_random(4096, 1234));
    let older = encrypt_with_id(&old_data, 12, dk, file_id, &[("alice", &alice)]);
    assert_eq!(read_all(older.clone(), "alice", &alice).unwrap(), old_data);

    let mut b = bytes.clone();
    b[r.chunk(1)].copy_from_slice(&older[r.chunk(1)]);
    assert!(matches!(
        read_all(b.clone(), "alice", &alice),
        Err(ContainerError::ChunkAuthentication { index: 1 })
    ));
    b[r.entry(1)].copy_from_slice(&older[r.entry(1)]);
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::HeaderAuthentication)
    ));
}

#[test]
fn truncation_and_extension() {
    let (_, bytes, _) = tamper_base();
    let alice = alice();
    let r = Regions::of(bytes);
    let total = bytes.len() as u64;
    for cut in [1, 32, 32 + 28, 100, 100 + 4096] {
        let b = bytes[..bytes.len() - cut].to_vec();
        assert!(matches!(
            read_all(b, "alice", &alice),
            Err(ContainerError::SizeMismatch { expected, actual })
                if expected == total && actual == total - cut as u64
        ));
    }
    // Appending anything, even a well-formed extra table entry, is refused by length.
    for extra in [1usize, 28, 4096 + 28] {
        let mut b = bytes.clone();
        b.extend(std::iter::repeat_n(0u8, extra));
        assert!(matches!(
            read_all(b, "alice", &alice),
            Err(ContainerError::SizeMismatch { expected, actual })
                if expected == total && actual == total + extra as u64
        ));
    }
    // Dropping the last chunk and its entry, keeping the rest byte for byte.
    let mut b = bytes.clone();
    b.drain(r.entry(2));
    b.drain(r.chunk(2));
    assert!(matches!(
        read_all(b, "alice", &alice),
        Err(ContainerError::SizeMismatch { .. })
    ));
}

/// An empty file still has one (empty, final) chunk with a table entry under the MAC.
#[test]
fn empty_file_has_one_authenticated_chunk() {
    let alice = alice();
    let (bytes, _) = encrypt(&[], 12, &[("alice", &alice)]);
    let r = Regions::of(&bytes);
    assert_eq!(r.table, r.data);
    assert_eq!(r.mac - r.table, TABLE_ENTRY_LEN);
    let reader = open(bytes.clone(), "alice", &alice).unwrap();
    assert_eq!(reader.chunk_count(), 1);
    assert_eq!(reader.read_chunk(0, &mut []).unwrap(), 0);
    let mut b = bytes.clone();
    b[r.table + 15] ^= 1;
    let reader = open(b.clone(), "alice", &alice);
    assert!(matches!(reader, Err(ContainerError::HeaderAuthentication)));
}

// ---------------------------------------------------------------------------------------------
// Key slots
// ---------------------------------------------------------------------------------------------

#[test]
fn grant_like_slot_rewrite_keeps_data() {
    let (alice, bob) = (alice(), bob());
    let data = pseudo_random(10_000, 3);
    let (bytes, _) = encrypt(&data, 12, &[("alice", &alice)]);
    let c = Container::parse(bytes.clone()).unwrap();
    let dk = c.unwrap_key("alice", &alice).unwrap();
    c.verify_header(&dk).unwrap();
    let mut slots = c.slots().to_vec();
    slots.push(KeySlot::seal(&c.header().file_id, "bob", &bob.public_key(), &dk).unwrap());
    let mut granted = Vec::new();
    c.write_with_slots(&slots, &mut granted).unwrap();

    // Only the slot section and its length changed.
    let (old, new) = (Regions::of(&bytes), Regions::of(&granted));
    assert_eq!(new.data - old.data, 1 + 3 + 92);
    assert_eq!(granted[..60], bytes[..60]);
    assert_eq!(granted[new.data..], bytes[old.data..]);
    assert_eq!(read_all(granted.clone(), "alice", &alice).unwrap(), data);
    assert_eq!(read_all(granted.clone(), "bob", &bob).unwrap(), data);

    // Revoking without re-encryption: the slot is gone, the data untouched.
    let c = Container::parse(granted).unwrap();
    let kept: Vec<_> = c
        .slots()
        .iter()
        .filter(|s| s.label != "alice")
        .cloned()
        .collect();
    let mut revoked = Vec::new();
    c.write_with_slots(&kept, &mut revoked).unwrap();
    assert!(matches!(
        read_all(revoked.clone(), "alice", &alice),
        Err(ContainerError::NoSlot(l)) if l == "alice"
    ));
    assert_eq!(read_all(revoked, "bob", &bob).unwrap(), data);

    // No slots at all is a valid container (count 0): readable only with the data key.
    let mut none = Vec::new();
    c.write_with_slots(&[], &mut none).unwrap();
    assert_eq!(Regions::of(&none).data, FIXED_HEADER_LEN + 2 + RECORD_LEN);
    let c = Container::parse(none.clone()).unwrap();
    assert!(c.slots().is_empty());
    assert_eq!(read_all_with_key(none, &dk).unwrap(), data);

    // Two slots with one label are refused.
    let c = Container::parse(bytes).unwrap();
    let twice = [c.slots()[0].clone(), c.slots()[0].clone()];
    assert!(matches!(
        c.write_with_slots(&twice, &mut Vec::new()),
        Err(ContainerError::DuplicateSlot(l)) if l == "alice"
    ));
}

#[test]
fn slot_from_another_file_does_not_open() {
    let (alice, bob) = (alice(), bob());
    let (a, _) = encrypt(b"file a", 12, &[("alice", &alice), ("bob", &bob)]);
    let (b, _) = encrypt(b"file b", 12, &[("bob", &bob)]);
    let ca = Container::parse(a).unwrap();
    let cb = Container::parse(b).unwrap();
    // alice's slot of file a, pasted into file b next to bob's.
    let mut slots = cb.slots().to_vec();
    slots.push(ca.slot("alice").unwrap().clone());
    let mut out = Vec::new();
    cb.write_with_slots(&slots, &mut out).unwrap();
    assert!(matches!(
        read_all(out.clone(), "alice", &alice),
        Err(ContainerError::SlotAuthentication(l)) if l == "alice"
    ));
    assert_eq!(read_all(out, "bob", &bob).unwrap(), b"file b");

    // Relabelled: bob's slot of file b presented as alice's.
    let mut relabelled = cb.slot("bob").unwrap().clone();
    relabelled.label = "alice".into();
    let mut out = Vec::new();
    cb.write_with_slots(&[relabelled], &mut out).unwrap();
    assert!(matches!(
        read_all(out, "alice", &bob),
        Err(ContainerError::SlotAuthentication(_))
    ));
}

/// The header MAC commits to the data key: a slot that honestly wraps a different key for
/// this very file id opens, but the file does not.
#[test]
fn slot_wrapping_another_data_key_is_caught_by_the_mac() {
    let alice = alice();
    let (bytes, _) = encrypt(b"payload", 12, &[("alice", &alice)]);
    let c = Container::parse(bytes).unwrap();
    let wrong = SecretKey::generate().unwrap();
    let slot = KeySlot::seal(&c.header().file_id, "alice", &alice.public_key(), &wrong).unwrap();
    let mut out = Vec::new();
    c.write_with_slots(&[slot], &mut out).unwrap();
    let c = Container::parse(out).unwrap();
    let got = c.unwrap_key("alice", &alice).unwrap();
    assert_eq!(got.as_bytes(), wrong.as_bytes());
    assert!(matches!(
        c.verify_header(&got),
        Err(ContainerError::HeaderAuthentication)
    ));
    assert!(matches!(
        c.open(&got),
        Err(ContainerError::HeaderAuthentication)
    ));
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

const _: () = {
    const fn assert_sync<T: Sync + Send>() {}
    assert_sync::<Reader<Vec<u8>>>();
    assert_sync::<Reader<std::fs::File>>();
    assert_sync::<Reader<&[u8]>>();
};

#[test]
fn concurrent_reads_agree() {
    let alice = alice();
    let data = pseudo_random(300_000, 11);
    let (bytes, _) = encrypt(&data, 12, &[("alice", &alice)]);
    // Through a file, as the mount reads it.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, &bytes).unwrap();
    let c = Container::parse(file.reopen().unwrap()).unwrap();
    let dk = c.unwrap_key("alice", &alice).unwrap();
    let reader = c.open(&dk).unwrap();
    let reader = &reader;
    let data = &data;
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let mut x = t * 7919 + 1;
                for _ in 0..200 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let offset = (x >> 20) % (data.len() as u64 + 100);
                    let len = ((x >> 8) % 20_000) as usize;
                    let mut buf = vec![0u8; len];
                    let n = reader.read_at(offset, &mut buf).unwrap();
                    let o = offset as usize;
                    let want = if o >= data.len() {
                        0
                    } else {
                        len.min(data.len() - o)
                    };
                    assert_eq!(n, want);
                    assert!(buf[..n] == data[o.min(data.len())..o.min(data.len()) + n]);
                }
            });
        }
    });
}

/// A reader of a file gives what a reader of the same bytes in memory gives, and an error,
/// not a panic or SIGBUS, once the file was truncated underneath (as a store writer can).
#[test]
fn chunks_read_from_a_file_match_and_truncation_is_an_error() {
    use std::io::Write;
    let data = pseudo_random(5 * 4096 + 123, 77);
    let (bytes, _) = encrypt(&data, 12, &[("alice", &alice())]);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&bytes).unwrap();
    let reader = open(bytes.clone(), "alice", &alice()).unwrap();
    let c = Container::parse(file.reopen().unwrap()).unwrap();
    let dk = c.unwrap_key("alice", &alice()).unwrap();
    let from_file = c.open(&dk).unwrap();
    let (mut a, mut b, mut scratch) = (vec![0; 4096], vec![0; 4096], Vec::new());
    for index in 0..reader.chunk_count() {
        let n = reader.read_chunk(index, &mut a).unwrap();
        let m = from_file
            .read_chunk_with(index, &mut b, &mut scratch)
            .unwrap();
        assert_eq!((n, &a[..n]), (m, &b[..m]), "chunk {index}");
    }
    file.as_file().set_len(bytes.len() as u64 / 2).unwrap();
    assert!(matches!(
        from_file.read_chunk_with(from_file.chunk_count() - 1, &mut b, &mut scratch),
        Err(ContainerError::Io(_))
    ));
    // A chunk table larger than the reader's limit is refused before it is read.
    let c = Container::parse(bytes.clone()).unwrap();
    let dk = c.unwrap_key("alice", &alice()).unwrap();
    assert!(matches!(
        c.open_with_limit(&dk, 10),
        Err(ContainerError::TableTooLarge { .. })
    ));
}
