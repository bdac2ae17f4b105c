//! One audit-log line, as `tvault audit --verify` reads it from a log anyone may have edited.
#![no_main]

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use tensorvault::audit;

/// The audit key of the seed lines (fuzz/seeds/audit_line/).
const KEY: [u8; 32] = [0x42; 32];

fn sign(entry: &audit::Entry) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&KEY).expect("any key length");
    mac.update(&entry.canonical());
    let mut signed = entry.clone();
    signed.mac = Some(hex::encode(mac.finalize().into_bytes()));
    serde_json::to_vec(&signed).expect("serialize")
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|data: &[u8]| {
    let verified = audit::verify_line(&KEY, data);
    let _ = audit::line_hash(data);
    let Ok(entry) = audit::parse_entry(data) else {
        assert!(
            verified.is_err(),
            "verify_line accepted what parse_entry refuses"
        );
        return;
    };
    let _ = entry.parsed_time();
    if let Ok(v) = &verified {
        assert_eq!(v, &entry);
        // A verified line is canonical: signing its entry again reproduces it byte for byte.
        assert_eq!(
            sign(&entry),
            data,
            "verified line is not what the writer would write"
        );
    }
    // Whatever parsed, once signed by the writer, must verify (unless `prev` is not a hash,
    // which the verifier refuses on purpose), and any change of the mac must not.
    let line = sign(&entry);
    let result = audit::verify_line(&KEY, &line);
    if is_hex64(&entry.prev) {
        assert_eq!(
            result.as_ref().ok(),
            Some(&audit::Entry {
                mac: entry_mac(&line),
                ..entry.clone()
            })
        );
        let wrong = audit::verify_line(&[0x43; 32], &line);
        assert!(wrong.is_err(), "verified under the wrong key");
    } else {
        assert!(result.is_err());
    }
});

fn entry_mac(line: &[u8]) -> Option<String> {
    audit::parse_entry(line).ok().and_then(|e| e.mac)
}
