//! `safetensors::parse` over a whole file's bytes with its true length: the header the mount's
//! prefetcher and `tvault inspect` read from decrypted (attacker-chosen) plaintext.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tensorvault::safetensors;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let Ok(header) = safetensors::parse(data, len) else {
        return;
    };
    // What a validated header promises its users.
    assert_eq!(
        header.file_len(),
        len,
        "accepted header does not cover the file"
    );
    assert_eq!(header.data_start(), 8 + header.header_len);
    let mut next = 0u64;
    for t in &header.tensors {
        assert_eq!(t.begin, next, "tensors are not contiguous");
        assert!(t.end >= t.begin);
        next = t.end;
    }
    // The prefetcher's lookup, at every tensor boundary and around it.
    for t in &header.tensors {
        for off in [t.begin, t.end.saturating_sub(1), t.end] {
            let abs = header.data_start() + off;
            if let Some(found) = header.tensor_at_file_offset(abs) {
                assert!(found.begin <= off && off < found.end);
            }
        }
    }
    let _ = header.tensor_at_file_offset(len);
    let _ = header.tensor_at_file_offset(0);
    // The same header must parse from a prefix holding just 8 + N bytes.
    let n = header.data_start() as usize;
    assert_eq!(safetensors::parse(&data[..n], len).as_ref(), Ok(&header));
});
