//! `protocol::decode` on any UTF-8 text: it never panics, and every refusal
//! carries one of the stable error codes documented in DESIGN.md §3.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The stable `error.code` values (DESIGN.md §3, README).
const DOCUMENTED: &[&str] = &[
    "bad_json",
    "bad_message",
    "unknown_type",
    "not_in_room",
    "room_name_too_long",
    "too_many_rooms",
    "user_offline",
    "forbidden",
    "rate_limited",
    "payload_too_large",
];

fuzz_target!(|data: &[u8]| {
    // Text frames reach the hub only after the UTF-8 check.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(refusal) = switchboard::protocol::decode(text) {
        let code = refusal.code.code();
        assert!(
            DOCUMENTED.contains(&code),
            "undocumented error code {code:?} for {text:?}"
        );
    }
});
