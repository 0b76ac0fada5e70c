//! Fuzz what a client sends the API: any bytes as a `POST /v1/runs` body, and as an MCP frame
//! (which must never leave a request unanswered).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = guild_server::fuzz::run_request(data);
    assert!(guild_server::fuzz::mcp_frame(data), "a request frame would get no answer");
});
