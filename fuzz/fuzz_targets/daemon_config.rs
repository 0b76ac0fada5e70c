//! Fuzz the daemon's config parser: any text as a config file must be loaded or refused with
//! the field named, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = guild_server::fuzz::config(text);
    }
});
