//! Keyring files (`.tvault/users/NAME.json`): anyone who can write the store can plant one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tensorvault::keyring::Keyring;

/// The passphrase of the seed keyring (tests/vectors/keyring.json).
const PASSPHRASE: &[u8] = b"correct horse battery staple";

fuzz_target!(|data: &[u8]| {
    let Ok(keyring) = Keyring::from_json(data) else {
        return;
    };
    // What was accepted serializes to a file that is accepted again, unchanged.
    let json = keyring.to_json();
    let again = Keyring::from_json(json.as_bytes()).expect("to_json output must parse");
    assert_eq!(again.name, keyring.name);
    assert_eq!(again.uid, keyring.uid);
    assert_eq!(again.public_key, keyring.public_key);
    assert_eq!(again.kdf_params(), keyring.kdf_params());
    assert_eq!(again.to_json(), json);
    // Unlock runs Argon2id with the file's own parameters; only cheap ones are tried so that
    // an execution stays well under a millisecond or so. (Parameter bounds are checked by
    // from_json above, whatever their size.)
    match keyring.kdf_params() {
        Some(p) if u64::from(p.m_kib) * u64::from(p.t) <= 1024 && p.p <= 4 => {
            if let Ok(private) = keyring.unlock(PASSPHRASE) {
                assert_eq!(private.public_key(), keyring.public_key);
            }
        }
        Some(_) => {}
        None => assert!(keyring.unlock(PASSPHRASE).is_err()),
    }
});
