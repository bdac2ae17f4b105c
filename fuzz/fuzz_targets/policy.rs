//! `.tvault-recipients` files: anyone who can write a directory of the store can write one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tensorvault::store::parse_policy;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for name in parse_policy(&text) {
        assert!(!name.is_empty());
        assert!(
            !name.contains([',', ' ', '\t', '\n', '#']),
            "separator or comment inside {name:?}"
        );
        // Names go on to keyring lookup, which must refuse anything that is not a user name
        // without touching the file system outside the store.
        if tensorvault::keyring::validate_name(&name).is_ok() {
            assert!(!name.contains('/') && name != "." && name != "..");
        }
    }
});
