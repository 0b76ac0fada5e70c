//! Entry points for fuzzing the parsers of what clients send (`fuzz/`, cargo-fuzz) and the seeded
//! mutation tests below, which run the same inputs on stable in the normal test suite: a run
//! request body, an MCP frame, the daemon's config file. Each must give a verdict for any bytes,
//! never a panic, and (for the MCP frame) never leave a request unanswered.

use std::path::Path;

/// Parse bytes as a `POST /v1/runs` body; whether they were a run request.
pub fn run_request(bytes: &[u8]) -> bool {
    crate::api::parse_run_request(bytes, (None, None)).is_ok()
}

/// Screen bytes as one MCP frame. Returns `true` unless the frame carried a request id and
/// would get no answer (a bug).
pub fn mcp_frame(bytes: &[u8]) -> bool {
    use crate::jsonrpc::{Screened, screen};
    match screen(bytes) {
        Screened::Pass(_) | Screened::Reply(_) => true,
        // Only a notification, a response or an empty frame may go unanswered.
        Screened::Drop(_) => {
            let id = serde_json::from_slice::<serde_json::Value>(bytes).ok().and_then(|v| v.get("id").cloned());
            let method = serde_json::from_slice::<serde_json::Value>(bytes).ok().and_then(|v| v.get("method").cloned());
            !(matches!(id, Some(serde_json::Value::String(_) | serde_json::Value::Number(_))) && method.is_some())
        }
    }
}

/// Load text as the daemon's config (no environment overrides); whether it was valid.
pub fn config(text: &str) -> bool {
    crate::config::DaemonConfig::load(text, Path::new("fuzz.toml"), std::iter::empty()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded xorshift: the same mutations on every run, so a failure reproduces from its round.
    struct Mutator(u64);

    impl Mutator {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        #[expect(clippy::cast_possible_truncation, reason = "random bits cut to the size needed")]
        fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
            let mut bytes = seed.to_vec();
            for _ in 0..=(self.next() % 4) {
                if bytes.is_empty() {
                    bytes.push(self.next() as u8);
                    continue;
                }
                let at = (self.next() as usize) % bytes.len();
                match self.next() % 5 {
                    0 => bytes[at] ^= 1 << (self.next() % 8),
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, ALPHABET[(self.next() as usize) % ALPHABET.len()]),
                    3 => {
                        let len = ((self.next() % 16) as usize).min(bytes.len() - at);
                        let copy: Vec<u8> = bytes[at..at + len].to_vec();
                        bytes.splice(at..at, copy);
                    }
                    _ => bytes[at] = self.next() as u8,
                }
            }
            bytes
        }
    }

    /// Bytes that matter to JSON and TOML parsers, inserted at random.
    const ALPHABET: &[u8] = b"{}[]\",:\\u0\"d8=\n#'.";

    const ROUNDS: usize = 3000;

    #[test]
    fn mutated_run_requests_are_parsed_or_refused_never_a_panic() {
        let seeds: [&[u8]; 3] = [
            br#"{"tool":"echo","input":{"message":"hi"},"async":true,"idempotency_key":"k"}"#,
            br#"{"tool":"wc","input":{"path":"/data","deep":[1,2,{"x":null}]}}"#,
            br#"{"tool":"echo"}"#,
        ];
        let mut mutator = Mutator(0x5eed_0001);
        let accepted = (0..ROUNDS).filter(|i| run_request(&mutator.mutate(seeds[i % seeds.len()]))).count();
        assert!(run_request(seeds[0]) && accepted > 0 && accepted < ROUNDS, "{accepted} of {ROUNDS} accepted");
    }

    #[test]
    fn mutated_mcp_frames_always_get_their_answer() {
        let seeds: [&[u8]; 4] = [
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"\ud83d\ude00"}}}"#,
            br#"{"jsonrpc":"2.0","id":"a","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            br#"[{"jsonrpc":"2.0","id":2,"method":"ping"}]"#,
        ];
        let mut mutator = Mutator(0x5eed_0002);
        for round in 0..ROUNDS {
            let frame = mutator.mutate(seeds[round % seeds.len()]);
            assert!(mcp_frame(&frame), "round {round}: a request went unanswered: {}", String::from_utf8_lossy(&frame));
        }
    }

    #[test]
    fn mutated_configs_are_loaded_or_refused_never_a_panic() {
        let seed = r#"
listen = "127.0.0.1:8480"
request_bytes_max = 4096

[queue]
runs_in_flight_max = 2

[http]
connections_max = 16

[[tools]]
path = "/nonexistent/echo.wasm"
allow_hosts = ["GET https://api.example.com/v1/"]
[tools.limits]
fuel_units = 1000

[[tenants]]
name = "a"
token_blake3 = "0000000000000000000000000000000000000000000000000000000000000000"
tools = ["*"]
"#;
        assert!(config(seed), "the seed is a valid config");
        let mut mutator = Mutator(0x5eed_0003);
        for _ in 0..ROUNDS {
            let text = String::from_utf8_lossy(&mutator.mutate(seed.as_bytes())).into_owned();
            let _ = config(&text);
        }
    }
}
