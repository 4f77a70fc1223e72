//! Arbitrary client messages through a SCRAM-SHA-512 exchange over a password file: no panic,
//! and no proof but the right one is accepted (an arbitrary one never is).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_session::broker::password::{PasswordFile, hash_entry};

fuzz_target!(|data: &[u8]| {
    // First byte: where the client-first message ends; the rest is client-final.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(rest.len());
    let (first, last) = rest.split_at(cut);
    let Ok(entry) = hash_entry("u", b"p", b"0123456789ab", 1) else {
        return;
    };
    let Ok(file) = PasswordFile::parse(&entry) else {
        return;
    };
    if let Ok((server, _)) = file.scram_start(first, b"server-nonce") {
        // Random bytes cannot hold the proof of a password they do not know.
        assert!(server.finish(last).is_err());
    }
});
