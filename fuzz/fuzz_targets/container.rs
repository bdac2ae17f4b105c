//! `.tvlt` containers: anyone who can write the store (or a backup) controls these bytes.
//!
//! Input: 4 bytes choosing a read range, then the container. Every input is parsed
//! structurally; a parsed one must re-encode to exactly its bytes (version 1: to version 2
//! with the same slots, ownership and data); slots for the test-vector
//! users are opened with their private keys, and a container whose header authenticates is
//! read at the chosen range and verified chunk by chunk. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tensorvault::container::{self, Container, ContainerError};
use tensorvault::crypto::PrivateKey;

/// Private keys of the test-vector users (tests/vectors/two-recipients.json).
const USERS: [(&str, &str); 2] = [
    (
        "alice",
        "d6958ed9ab6c42e661615f814c1b84a050a69bb74b1ecd1ec5c91fd392adf65b",
    ),
    (
        "bob",
        "bf376f092eeb594eb79c665abf08f20d887bd8545bf9cab8f04cc9c7ef86c272",
    ),
];

fn key(hex_text: &str) -> PrivateKey {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut b).expect("hex");
    PrivateKey::from_bytes(&b)
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, bytes)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(c) = Container::parse(bytes) else {
        return;
    };
    let h = *c.header();
    let layout = h.layout().expect("parse checked the layout");
    assert_eq!(layout.total, bytes.len() as u64);
    // Parsing is canonical: writing the same slots back reproduces the input (a version 1
    // input comes back as version 2, its default ownership as a record, the rest unchanged).
    let mut out = Vec::new();
    c.write_with_slots(c.slots(), &mut out).expect("re-encode");
    let mut same_record = Vec::new();
    c.write_with_ownership(c.ownership(), &mut same_record)
        .expect("re-encode");
    assert_eq!(out, same_record, "slots and record rewrite differently");
    if h.version == container::VERSION {
        assert_eq!(out, bytes, "parse/encode round trip changed the container");
    } else {
        let v2 = Container::parse(&out[..]).expect("a version 1 file rewritten parses");
        assert_eq!(v2.header().version, container::VERSION);
        assert_eq!(v2.slots(), c.slots());
        assert_eq!(v2.ownership(), c.ownership());
        let data = v2.header().layout().expect("parsed").data as usize;
        assert_eq!(out[data..], bytes[layout.data as usize..], "data, table or MAC changed");
    }

    for (label, hex_key) in USERS {
        if c.slot(label).is_none() {
            assert!(matches!(
                c.unwrap_key(label, &key(hex_key)),
                Err(ContainerError::NoSlot(_))
            ));
            continue;
        }
        let Ok(data_key) = c.unwrap_key(label, &key(hex_key)) else {
            continue;
        };
        if c.verify_header(&data_key).is_err() {
            continue;
        }
        let c = Container::parse(bytes).expect("parsed once already");
        let reader = c.open(&data_key).expect("header verified");
        let len = reader.len();
        let start = u64::from(u16::from_le_bytes([sel[0], sel[1]]));
        let start = if len == 0 { start } else { start % (len + 2) };
        let want = usize::from(u16::from_le_bytes([sel[2], sel[3]]));
        let mut buf = vec![0u8; want];
        if let Ok(n) = reader.read_at(start, &mut buf) {
            assert_eq!(n as u64, (want as u64).min(len.saturating_sub(start)));
        }
        let _ = reader.verify_all();
        let mut chunk = vec![0u8; reader.chunk_size() as usize];
        let _ = reader.read_chunk(reader.chunk_count(), &mut chunk);
        let _ = reader.read_chunk(u64::MAX, &mut chunk);
        let _ = reader.read_at(u64::MAX, &mut buf);
        let _ = reader.read_at(u64::MAX - 1, &mut buf);
    }
});
