//! `.tvlt` containers crafted by an insider: someone who holds a file's data key (any of its
//! recipients, or a writer through the mount) can make any header, chunk table and chunks
//! authenticate for every other recipient. The reader must still never panic, never read out
//! of bounds, and return exactly the plaintext that was sealed.
//!
//! Input: 4 bytes (bit 0 of the first: re-seal every chunk; the rest choose a read range),
//! then a container. A container that parses is re-authenticated under a fixed data key
//! (its chunks optionally re-sealed, its header MAC recomputed), then opened and read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tensorvault::container::{Container, TABLE_ENTRY_LEN};
use tensorvault::crypto::{FileKeys, SecretKey, NONCE_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(c) = Container::parse(rest) else {
        return;
    };
    let h = *c.header();
    let layout = h.layout().expect("parse checked the layout");
    let (data_at, table_at, mac_at) = (
        layout.data as usize,
        layout.table as usize,
        layout.mac as usize,
    );
    let mut bytes = rest.to_vec();
    let data_key = SecretKey::from_bytes([7; 32]);
    let keys = FileKeys::derive(&data_key, &h.file_id);
    let reseal = sel[0] & 1 == 1;
    // The plaintext the insider sealed: the container's data region as it was.
    let plain = bytes[data_at..table_at].to_vec();
    if reseal {
        let count = h.chunk_count();
        for index in 0..count {
            let (start, end) = h.chunk_range(index);
            let chunk = &mut bytes[data_at + start as usize..data_at + end as usize];
            let (nonce, tag) = keys
                .seal_chunk(index, index + 1 == count, chunk)
                .expect("seal");
            let e = table_at + index as usize * TABLE_ENTRY_LEN;
            bytes[e..e + NONCE_LEN].copy_from_slice(&nonce);
            bytes[e + NONCE_LEN..e + TABLE_ENTRY_LEN].copy_from_slice(&tag);
        }
    }
    let mac = keys.header_mac(&[&h.maced(), &bytes[table_at..mac_at]]);
    bytes[mac_at..].copy_from_slice(&mac);

    let c = Container::parse(&bytes[..]).expect("only the MAC and chunks changed");
    c.verify_header(&data_key)
        .expect("header MAC was recomputed");
    let reader = c.open(&data_key).expect("header MAC was recomputed");
    let len = reader.len();
    assert_eq!(len, plain.len() as u64);
    let start = u64::from(sel[1]) * 61 % (len + 2);
    let want = usize::from(u16::from_le_bytes([sel[2], sel[3]]));
    let mut buf = vec![0u8; want];
    match reader.read_at(start, &mut buf) {
        Ok(n) => {
            assert_eq!(n as u64, (want as u64).min(len.saturating_sub(start)));
            if reseal && n > 0 {
                assert_eq!(&buf[..n], &plain[start as usize..start as usize + n]);
            }
        }
        Err(e) => assert!(!reseal, "resealed container failed to read: {e}"),
    }
    let all = reader.verify_all();
    assert!(
        !reseal || all.is_ok(),
        "resealed container failed to verify"
    );
    let mut chunk = vec![0u8; reader.chunk_size() as usize];
    for index in 0..reader.chunk_count() {
        let (s, e) = h.chunk_range(index);
        match reader.read_chunk(index, &mut chunk) {
            Ok(n) => {
                assert_eq!(n as u64, e - s);
                if reseal {
                    assert_eq!(&chunk[..n], &plain[s as usize..e as usize]);
                }
            }
            Err(_) => assert!(!reseal),
        }
    }
    assert!(reader.read_chunk(reader.chunk_count(), &mut chunk).is_err());
});
