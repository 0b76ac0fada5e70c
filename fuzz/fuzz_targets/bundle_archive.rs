//! Fuzz the bundle reader: any bytes as a `.tar.zst` bundle must give a verdict, never a panic.
#![no_main]

use guild_replay::Bundle;
use guild_replay::archive::{self, ArchiveLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ArchiveLimits { entries_max: 1000, entry_bytes_max: 1 << 20, total_bytes_max: 4 << 20 };
    if let Ok(imported) = archive::import(data, limits) {
        let _ = Bundle::open(&imported.store, &imported.manifest, &imported.signature, None);
    }
});
