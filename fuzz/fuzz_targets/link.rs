//! `.tvln` link files: anyone who can write a directory of the store can write one, and the
//! mount reads them on every lookup.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tensorvault::store::{Link, MAX_TARGET_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(link) = Link::decode(data) else {
        return;
    };
    // What the mount hands the kernel is a valid symlink target.
    assert!(!link.target.is_empty() && link.target.len() <= MAX_TARGET_LEN);
    assert!(!link.target.contains(&0));
    assert!(link.own.mode <= 0o7777);
    // One encoding per link: what parses is exactly what a writer would have written.
    assert_eq!(link.encode().expect("a decoded link encodes"), data);
});
