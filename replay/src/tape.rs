//! The tape: every effect a guest observed, in order. Each [`Event`] carries its `seq`, the fuel
//! the guest had burnt when it happened, and a link of a hash chain over all events before it,
//! so the tape's head digest commits to the whole history. New kinds of effect (HTTP exchanges,
//! GPU dispatches) are new [`Effect`] variants, not a new format.

use crate::Digest;
use crate::canonical::to_canonical_bytes;
use serde::{Deserialize, Serialize};

/// What the chain starts from.
const GENESIS: &[u8] = b"guild tape v1";

/// Most events one tape holds; a guest that reads the clock more often than this is stopped.
pub const TAPE_EVENTS_MAX: u64 = 1_000_000;

/// One effect the guest observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// The seed all of the guest's randomness was drawn from.
    RandomSeed {
        /// 32 bytes, hex.
        seed: String,
    },
    /// A directory mounted into the sandbox, as the guest could read it when the run began.
    Mount {
        /// Where the guest saw it.
        guest_path: String,
        /// `read-only` or `read-write`.
        access: String,
        /// Root of its Merkle tree.
        tree: Digest,
        /// Entries in the tree.
        entries: u64,
        /// Bytes of file contents.
        bytes: u64,
    },
    /// A wall-clock reading.
    WallClock {
        /// Seconds since the Unix epoch.
        seconds: u64,
        /// Nanoseconds past the second.
        nanoseconds: u32,
    },
    /// A monotonic-clock reading.
    MonotonicClock {
        /// Nanoseconds from an arbitrary start.
        nanoseconds: u64,
    },
    /// An outgoing HTTP exchange, as the guest saw it. Secrets stay as their placeholders.
    Http {
        /// What the guest asked for.
        request: HttpRequestRecord,
        /// What came back, when something did.
        response: Option<HttpResponseRecord>,
        /// Why the guest got an error instead (a denial, a network failure), as it saw it.
        error: Option<String>,
    },
    /// A GPU dispatch: which kernel (name, version, digest of its WGSL), on what (input digests,
    /// parameters), where it ran (adapter and driver, or the CPU reference), and what came out
    /// (output digests; the outputs themselves are blobs of the bundle).
    GpuDispatch {
        /// The kernel's name in the host's catalogue, as the guest passed it (`matmul`).
        kernel: String,
        /// The kernel's semantic version in that catalogue, bumped whenever its results change.
        version: u32,
        /// blake3 of the kernel's WGSL source.
        wgsl: Digest,
        /// The input buffers.
        inputs: Vec<TensorRecord>,
        /// Scalar parameters, as `f32:3f800000` (type and bits, so floats round-trip exactly).
        params: Vec<String>,
        /// The output buffers; their digests are absent when the dispatch failed.
        outputs: Vec<TensorRecord>,
        /// Adapter and driver, or `cpu-reference`.
        device: String,
        /// Why the dispatch failed, when it failed for a reason outside the guest (no adapter, a
        /// lost device, a deadline): `unavailable: ...`, `lost: ...` or `limit: ...`.
        error: Option<String>,
    },
    /// A log line, or a line of stdout or stderr.
    Log {
        /// `trace`, `debug`, `info`, `warn` or `error` (stdout lines are `info`, stderr `warn`).
        level: String,
        /// `tool`, `stdout` or `stderr`.
        source: String,
        /// The line, without its newline.
        message: String,
    },
}

impl Effect {
    /// The kind's name, as serialized.
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::RandomSeed { .. } => "random_seed",
            Effect::Mount { .. } => "mount",
            Effect::WallClock { .. } => "wall_clock",
            Effect::MonotonicClock { .. } => "monotonic_clock",
            Effect::Log { .. } => "log",
            Effect::Http { .. } => "http",
            Effect::GpuDispatch { .. } => "gpu_dispatch",
        }
    }
}

/// An HTTP request as a guest made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequestRecord {
    /// The HTTP method as the guest sent it (`GET`).
    pub method: String,
    /// The URL as the guest wrote it: scheme, authority, path and query (placeholders included).
    pub url: String,
    /// Headers in order, values with `{{secret:NAME}}` placeholders as the guest wrote them.
    pub headers: Vec<(String, String)>,
    /// The body's blob, when there was one.
    pub body: Option<Digest>,
    /// The body's size.
    pub body_bytes: u64,
    /// Headers the host added after recording the guest's request, in the order sent: today
    /// the W3C `traceparent` (and `tracestate`) that put the upstream in the run's trace. A
    /// replay neither needs nor compares them; they show an auditor what the upstream saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_added: Vec<(String, String)>,
}

/// An HTTP response as a guest received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpResponseRecord {
    /// The HTTP status code the guest received (100–599).
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// The body's blob.
    pub body: Digest,
    /// The body's size.
    pub body_bytes: u64,
}

/// A GPU buffer as a dispatch saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRecord {
    /// `f32`, `u32` or `i32`.
    pub dtype: String,
    /// Dimensions, outermost first.
    pub shape: Vec<u32>,
    /// blake3 of its little-endian bytes (absent for the outputs of a failed dispatch).
    pub digest: Option<Digest>,
}

/// An effect with its place on the tape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Position, from 0.
    pub seq: u64,
    /// Fuel the guest had burnt when the effect happened.
    pub fuel: u64,
    /// What the guest observed or did: a clock reading, a log line, an HTTP exchange, ...
    pub effect: Effect,
    /// blake3(previous link ‖ canonical {seq, fuel, effect}).
    pub chain: Digest,
}

#[derive(Serialize)]
struct Link<'a> {
    seq: u64,
    fuel: u64,
    effect: &'a Effect,
}

/// The next link of the chain, and the size of the event's canonical form (about its size on the
/// tape, where it is written with its chain link too).
fn link(previous: &Digest, seq: u64, fuel: u64, effect: &Effect) -> (Digest, u64) {
    let mut hasher = blake3::Hasher::new();
    hasher.update(previous.as_bytes());
    let body = to_canonical_bytes(&Link { seq, fuel, effect })
        .expect("an effect is strings and integers, which always serialize");
    hasher.update(&body);
    (Digest::from_bytes(*hasher.finalize().as_bytes()), body.len() as u64)
}

/// Bytes an event takes besides its effect's text: on its JSON line, the `chain` field and its hex
/// digest; in memory, the `Event` itself. Counted so that [`Tape::bytes`] bounds both.
const EVENT_OVERHEAD_BYTES: u64 = 80 + std::mem::size_of::<Event>() as u64;

/// The digest a tape with no events has as its head.
pub fn genesis() -> Digest {
    Digest::of(GENESIS)
}

/// A tape is malformed or its chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapeError {
    /// A line is not an event.
    #[error("tape line {line} is not an event: {reason}")]
    Malformed {
        /// The tape's line that does not parse, counted from 1 (0: the tape is not UTF-8).
        line: usize,
        /// Why it does not parse: the JSON parser's or UTF-8 decoder's message.
        reason: String,
    },
    /// Events are out of order.
    #[error("tape event at line {line} has seq {found}, expected {expected}")]
    Sequence {
        /// The tape's line out of order, counted from 1.
        line: usize,
        /// The seq that line should carry: its position, from 0.
        expected: u64,
        /// The seq it carries.
        found: u64,
    },
    /// Fuel went backwards.
    #[error("tape event {seq} says fuel {found}, less than the {previous} before it")]
    FuelBackwards {
        /// The event whose fuel is lower than its predecessor's.
        seq: u64,
        /// The fuel units it records.
        found: u64,
        /// The fuel before.
        previous: u64,
    },
    /// The hash chain does not hold.
    #[error("tape hash chain broken at event {seq}: expected {expected}, found {found}")]
    Chain {
        /// The first event whose link does not follow from the ones before it.
        seq: u64,
        /// The recomputed link.
        expected: Digest,
        /// The recorded link.
        found: Digest,
    },
    /// Too many events.
    #[error("tape holds more than {limit} events (TAPE_EVENTS_MAX)")]
    TooLong {
        /// Events a tape may hold: [`TAPE_EVENTS_MAX`](crate::TAPE_EVENTS_MAX).
        limit: u64,
    },
}

/// An append-only, hash-chained list of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tape {
    events: Vec<Event>,
    head: Digest,
    /// About the memory the events take.
    bytes: u64,
}

impl Default for Tape {
    fn default() -> Self {
        Self { events: Vec::new(), head: genesis(), bytes: 0 }
    }
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append `effect`, observed with `fuel` burnt.
    ///
    /// # Errors
    /// [`TapeError::TooLong`] when the tape already holds [`TAPE_EVENTS_MAX`] events.
    pub fn push(&mut self, fuel: u64, effect: Effect) -> Result<&Event, TapeError> {
        let seq = self.events.len() as u64;
        if seq >= TAPE_EVENTS_MAX {
            return Err(TapeError::TooLong { limit: TAPE_EVENTS_MAX });
        }
        let fuel = fuel.max(self.events.last().map_or(0, |e| e.fuel));
        let (chain, bytes) = link(&self.head, seq, fuel, &effect);
        self.head = chain;
        self.bytes += bytes + EVENT_OVERHEAD_BYTES;
        self.events.push(Event { seq, fuel, effect, chain });
        Ok(self.events.last().expect("just pushed"))
    }

    /// The events, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// About how many bytes the tape holds in memory while it is recorded (more than its JSON
    /// lines take): what a recorder bounds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The last link of the chain (the genesis digest when empty).
    pub fn head(&self) -> Digest {
        self.head
    }

    /// One canonical JSON object per line.
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for event in &self.events {
            out.extend(to_canonical_bytes(event).expect("a tape event is plain data"));
            out.push(b'\n');
        }
        out
    }

    /// Parse and check a tape: order, fuel, and every link of the chain.
    ///
    /// # Errors
    /// [`TapeError::Malformed`] when the bytes are not UTF-8 or a line is not an event;
    /// [`TapeError::Sequence`] when a `seq` is out of order; [`TapeError::FuelBackwards`] when fuel
    /// decreases; [`TapeError::Chain`] when a link does not match; [`TapeError::TooLong`] past
    /// [`TAPE_EVENTS_MAX`] events.
    pub fn from_jsonl(bytes: &[u8]) -> Result<Self, TapeError> {
        let mut tape = Tape::new();
        let text = std::str::from_utf8(bytes)
            .map_err(|e| TapeError::Malformed { line: 0, reason: format!("not UTF-8: {e}") })?;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let event: Event =
                serde_json::from_str(raw).map_err(|e| TapeError::Malformed { line, reason: e.to_string() })?;
            let expected = tape.events.len() as u64;
            if expected >= TAPE_EVENTS_MAX {
                return Err(TapeError::TooLong { limit: TAPE_EVENTS_MAX });
            }
            if event.seq != expected {
                return Err(TapeError::Sequence { line, expected, found: event.seq });
            }
            let previous = tape.events.last().map_or(0, |e| e.fuel);
            if event.fuel < previous {
                return Err(TapeError::FuelBackwards { seq: event.seq, found: event.fuel, previous });
            }
            let (chain, bytes) = link(&tape.head, event.seq, event.fuel, &event.effect);
            if chain != event.chain {
                return Err(TapeError::Chain { seq: event.seq, expected: chain, found: event.chain });
            }
            tape.head = chain;
            tape.bytes += bytes + EVENT_OVERHEAD_BYTES;
            tape.events.push(event);
        }
        Ok(tape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tape {
        let mut tape = Tape::new();
        tape.push(0, Effect::RandomSeed { seed: "00".repeat(32) }).expect("push");
        tape.push(120, Effect::WallClock { seconds: 1_700_000_000, nanoseconds: 5 }).expect("push");
        tape.push(300, Effect::Log { level: "info".into(), source: "tool".into(), message: "hi".into() })
            .expect("push");
        tape
    }

    #[test]
    fn round_trips_and_the_head_commits_to_everything() {
        let tape = sample();
        let parsed = Tape::from_jsonl(&tape.to_jsonl()).expect("parses");
        assert_eq!(parsed, tape);
        assert_ne!(tape.head(), genesis());
        let mut other = Tape::new();
        other.push(0, Effect::RandomSeed { seed: "00".repeat(32) }).expect("push");
        other.push(121, Effect::WallClock { seconds: 1_700_000_000, nanoseconds: 5 }).expect("push");
        assert_ne!(other.events()[1].chain, tape.events()[1].chain);
    }

    #[test]
    fn edits_break_the_chain() {
        let text = String::from_utf8(sample().to_jsonl()).expect("utf-8");
        let edited = text.replace("\"hi\"", "\"ho\"");
        assert!(matches!(Tape::from_jsonl(edited.as_bytes()), Err(TapeError::Chain { seq: 2, .. })));
        let dropped: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        assert!(matches!(Tape::from_jsonl(dropped.as_bytes()), Err(TapeError::Sequence { .. })));
        assert!(matches!(Tape::from_jsonl(b"{not json}\n"), Err(TapeError::Malformed { line: 1, .. })));
    }
}
