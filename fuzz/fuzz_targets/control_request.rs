//! A control-socket request line, as `control::handle_connection` parses it from any local
//! user.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tensorvault::control::Request;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > tensorvault::control::MAX_REQUEST {
        return;
    }
    let Ok(request) = serde_json::from_slice::<Request>(data) else {
        return;
    };
    // What the daemon accepted re-serializes to something it accepts identically.
    let text = serde_json::to_string(&request).expect("serialize");
    let again: Request = serde_json::from_str(&text).expect("round trip");
    assert_eq!(serde_json::to_string(&again).expect("serialize"), text);
});
