//! Hermetic runs: the action digest that names a computation, the seed and clocks derived from
//! it, and the check, on the run's own tape, that nothing outside the digest reached the guest.
//!
//! A host caching results (the daemon's result cache) asks for a hermetic run with
//! [`RunMode::Hermetic`]. The run is prepared as any other — policy resolved, every mount's
//! Merkle tree captured — and its [`action digest`](Prepared::action) is computed from exactly
//! those trees, before the guest starts. The run's seed comes from the digest and its clocks read
//! a synthetic time that also comes from it (each reading still goes on the tape, so a replay
//! answers from the tape as for any run), so two hermetic runs of one action see the same world.
//! After the run, [`Hermetic::reusable`] says whether the result may stand for the action:
//! only output, no HTTP request (sent or refused), no GPU dispatch on a device (the CPU reference
//! is bit-exact; a device is not), no writable mount. Its read-only mounts are rebuilt from the
//! trees captured before the run (`recording::snapshot_mounts`), its file metadata and listings
//! fixed (`quota.rs`) and its timers on the same virtual time as its clocks (`virtual_time.rs`):
//! the guest reads exactly what the digest names.

use crate::record::SyntheticClock;
use guild_replay::{Digest, Effect, Tape};
use guild_vocab::{Access, EffectivePolicy, EngineFingerprint, Limits, Outcome};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// How a run is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunMode {
    /// A fresh random seed and the real clocks.
    #[default]
    Live,
    /// The seed and clock readings derived from the action digest, and the tape checked for
    /// effects outside it (a cacheable tool's run). The revision is part of the digest.
    Hermetic {
        /// The revision of the tool's name that runs, when the host keeps revisions.
        revision: Option<u32>,
        /// Mixed into the seed, not the action digest: whose run it is (a digest of the tenant),
        /// so that two tenants' runs of one action draw different random numbers.
        scope: Option<Digest>,
    },
}

/// Why a hermetic run's result may not stand for its action digest: the run is answered as
/// usual, and not cached. Its `Display` is what a caller sees after `miss: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotCacheable {
    /// The host records nothing, so no signed bundle could vouch for a reused result.
    NotRecorded,
    /// A mount is writable: the run's effect is outside its answer.
    WritableMount {
        /// Where the tool sees it.
        guest_path: String,
    },
    /// The tool made, or tried to make, an outgoing HTTP request.
    HttpRequest,
    /// A GPU dispatch ran on a device, whose results are not bit-for-bit reproducible.
    GpuDevice,
    /// The run ended without output (its outcome's label: `trap`, `limit`, `tool_error`, …).
    Outcome(&'static str),
    /// The guest saw something of the host's its action digest does not name (more file
    /// identities than a hermetic run numbers: `cache.hermetic_identities_max`).
    HostMetadata,
    /// The mounts hold more than a hermetic run rebuilds for each run.
    MountsTooLarge {
        /// What they hold, bytes.
        bytes: u64,
        /// What a hermetic run rebuilds at most, bytes (`HermeticBounds::mount_bytes_max`).
        bytes_max: u64,
    },
    /// A preview-1 module: its timers run on wasmtime-wasi's own preview 1, on the real clock,
    /// which a hermetic run's virtual time cannot reach.
    Preview1,
}

impl fmt::Display for NotCacheable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRecorded => f.write_str("not recorded"),
            Self::WritableMount { guest_path } => write!(f, "writable mount {guest_path}"),
            Self::HttpRequest => f.write_str("http request"),
            Self::GpuDevice => f.write_str("gpu dispatch on a device"),
            Self::Outcome(label) => write!(f, "outcome {label}"),
            Self::Preview1 => f.write_str("preview-1 module"),
            Self::HostMetadata => f.write_str("more file identities asked for than a hermetic run numbers"),
            Self::MountsTooLarge { bytes, bytes_max } => write!(
                f,
                "mounts hold {bytes} bytes, more than the {bytes_max} a hermetic run rebuilds (cache.hermetic_mount_bytes_max)"
            ),
        }
    }
}

/// A hermetic run's digest and whether its result may stand for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hermetic {
    /// The action digest the run was made under (its seed and clocks came from it); `None` when
    /// the run could not be hermetic at all (see `reusable`) and was made live.
    pub action: Option<Digest>,
    /// `Ok` when the tape shows no effect outside the digest and the run ended in output.
    pub reusable: Result<(), NotCacheable>,
}

impl Serialize for Hermetic {
    /// `{"action": "<hex>" | null, "reusable": bool, "not_reusable": "<why>"}` (the last only
    /// when not reusable).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut doc = serializer.serialize_struct("Hermetic", 3)?;
        doc.serialize_field("action", &self.action)?;
        doc.serialize_field("reusable", &self.reusable.is_ok())?;
        if let Err(why) = &self.reusable {
            doc.serialize_field("not_reusable", &why.to_string())?;
        }
        doc.end()
    }
}

/// A mount as the action digest names it: where the guest sees it, how, and what it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct MountedTree {
    pub(crate) guest_path: String,
    pub(crate) access: Access,
    pub(crate) tree: Digest,
}

/// Everything an action digest covers, hashed as canonical JSON. The host paths of mounts are
/// left out (two nodes mounting the same tree from different places run the same action); so
/// are the limits that bound time rather than the computation (fuel is checked against what
/// the cached run burnt, and timeouts against nothing: a hermetic run's result does not depend
/// on how long it took).
#[derive(Serialize)]
struct ActionDocument<'a> {
    kind: &'static str,
    component: Digest,
    revision: Option<u32>,
    input: Digest,
    mounts: &'a [MountedTree],
    policy: PolicyPart<'a>,
    limits: Limits,
    engine: &'a str,
}

#[derive(Serialize)]
struct PolicyPart<'a> {
    egress: &'a [guild_vocab::EgressRule],
    tool_hosts: &'a [guild_vocab::EgressRule],
    secret_grants: Vec<(&'a str, &'a [guild_vocab::EgressRule])>,
}

/// The parts of an action that are not the run's policy.
pub(crate) struct ActionParts<'a> {
    pub(crate) component: Digest,
    pub(crate) revision: Option<u32>,
    pub(crate) input: &'a str,
    pub(crate) mounts: &'a [MountedTree],
    pub(crate) engine: &'a EngineFingerprint,
}

/// The action digest of `parts` under `policy` and `limits`.
pub(crate) fn action_digest(parts: &ActionParts<'_>, policy: &EffectivePolicy, limits: &Limits) -> Digest {
    // Equal JSON values are one input however they were spelled.
    let input = match serde_json::from_str::<serde_json::Value>(parts.input) {
        Ok(value) => guild_replay::canonical::to_canonical_bytes(&value)
            .map(|bytes| Digest::of(&bytes))
            .unwrap_or_else(|_| Digest::of(parts.input.as_bytes())),
        Err(_) => Digest::of(parts.input.as_bytes()),
    };
    let limits = Limits {
        fuel_units: 0,
        timeout_ms: 0,
        http_connect_timeout_ms: 0,
        http_timeout_ms: 0,
        gpu_dispatch_timeout_ms: 0,
        ..limits.clone()
    };
    let document = ActionDocument {
        kind: "guild action v1",
        component: parts.component,
        revision: parts.revision,
        input,
        mounts: parts.mounts,
        policy: PolicyPart {
            egress: &policy.egress,
            tool_hosts: &policy.tool_hosts,
            secret_grants: policy.secret_grants.iter().map(|g| (g.name.as_str(), g.rules.as_slice())).collect(),
        },
        limits,
        engine: &parts.engine.id,
    };
    // Every part is plain data: serializing it cannot fail.
    let bytes = guild_replay::canonical::to_canonical_bytes(&document).unwrap_or_default();
    Digest::of(&bytes)
}

/// Default bytes of read-only mounts a hermetic run rebuilds from their trees before each run
/// (its snapshot); larger mounts are run live, and their results not cached.
pub const HERMETIC_MOUNT_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Default file identities a hermetic run's guest may ask for (wasi-libc asks on every `stat`);
/// past it the host's own are answered, and the run's result is not cached.
pub const HERMETIC_IDENTITIES_MAX: usize = 1_000_000;

/// Default bytes a hermetic run's open directory listings may hold at once (each entry its name
/// plus 32); one more listing answers `insufficient-memory`.
pub const HERMETIC_LISTINGS_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// What a hermetic run may hold of its mounts: past each bound it is run live (the mounts) or
/// answered as the host would be (identities, listings), and its result not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HermeticBounds {
    /// Bytes of read-only mounts rebuilt as its snapshot ([`HERMETIC_MOUNT_BYTES_MAX`]).
    pub mount_bytes_max: u64,
    /// File identities numbered for the guest ([`HERMETIC_IDENTITIES_MAX`]).
    pub identities_max: usize,
    /// Bytes its open directory listings hold at once ([`HERMETIC_LISTINGS_BYTES_MAX`]).
    pub listings_bytes_max: u64,
}

impl Default for HermeticBounds {
    fn default() -> Self {
        Self {
            mount_bytes_max: HERMETIC_MOUNT_BYTES_MAX,
            identities_max: HERMETIC_IDENTITIES_MAX,
            listings_bytes_max: HERMETIC_LISTINGS_BYTES_MAX,
        }
    }
}

/// The seed of a hermetic run of `action` for `scope` (whose run it is), keyed by `secret` (the
/// host's, derived from its signing key): the same for one host, action and tenant, and not
/// computable by another tenant who knows the action digest and the tenant's name.
pub(crate) fn seed_of(action: &Digest, scope: Option<&Digest>, secret: &[u8; 32]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(b"guild hermetic seed v1");
    hasher.update(action.as_bytes());
    if let Some(scope) = scope {
        hasher.update(scope.as_bytes());
    }
    *hasher.finalize().as_bytes()
}

/// The synthetic clocks of a hermetic run of `action`: the wall clock starts at 2001-09-09
/// 01:46:40 UTC (10⁹ s after the Unix epoch) plus a fraction of a second taken from the digest,
/// the monotonic clock at 0; each reading of either is [`SyntheticClock::STEP`] after the last.
pub(crate) fn clock_of(action: &Digest) -> SyntheticClock {
    let bytes = blake3::derive_key("guild hermetic clock v1", action.as_bytes());
    let fraction = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) % 1_000_000_000;
    SyntheticClock::new(Duration::new(1_000_000_000, fraction))
}

/// Whether a finished hermetic run's result may stand for its action: it ended in output, the
/// tape holds no HTTP exchange or device GPU dispatch, the guest attempted no request, and
/// nothing was mounted writable.
pub(crate) fn verdict(
    outcome: &Outcome,
    egress_requests: u32,
    tape: &Tape,
    policy: &EffectivePolicy,
    host_identity_read: bool,
) -> Result<(), NotCacheable> {
    if host_identity_read {
        return Err(NotCacheable::HostMetadata);
    }
    if let Some(mount) = policy.mounts.iter().find(|m| m.access == Access::ReadWrite) {
        return Err(NotCacheable::WritableMount { guest_path: mount.guest_path.clone() });
    }
    if egress_requests > 0 || tape.events().iter().any(|e| matches!(e.effect, Effect::Http { .. })) {
        return Err(NotCacheable::HttpRequest);
    }
    let on_device = |e: &Effect| matches!(e, Effect::GpuDispatch { device, .. } if device != guild_gpu::CPU_REFERENCE);
    if tape.events().iter().any(|e| on_device(&e.effect)) {
        return Err(NotCacheable::GpuDevice);
    }
    if !matches!(outcome, Outcome::Output { .. }) {
        return Err(NotCacheable::Outcome(outcome.label()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(input: &'a str, mounts: &'a [MountedTree], engine: &'a EngineFingerprint) -> ActionParts<'a> {
        ActionParts { component: Digest::of(b"component"), revision: Some(1), input, mounts, engine }
    }

    #[test]
    fn the_action_digest_names_the_computation_not_its_spelling_or_its_time_bounds() {
        let engine = EngineFingerprint { id: "e1".into(), ..Default::default() };
        let policy = EffectivePolicy::default();
        let limits = Limits::default();
        let base = action_digest(&parts(r#"{"a":1,"b":2}"#, &[], &engine), &policy, &limits);
        // The same JSON spelled otherwise, more fuel or more time: the same action.
        assert_eq!(base, action_digest(&parts(r#"{ "b": 2, "a": 1 }"#, &[], &engine), &policy, &limits));
        let roomier = Limits { fuel_units: 1, timeout_ms: 99_000, ..Limits::default() };
        assert_eq!(base, action_digest(&parts(r#"{"a":1,"b":2}"#, &[], &engine), &policy, &roomier));
        // Another input, mount tree, memory bound, engine or revision: another action.
        assert_ne!(base, action_digest(&parts(r#"{"a":1,"b":3}"#, &[], &engine), &policy, &limits));
        let tree = |t: &[u8]| MountedTree { guest_path: "/data".into(), access: Access::ReadOnly, tree: Digest::of(t) };
        let one = [tree(b"one")];
        let with_tree = action_digest(&parts(r#"{"a":1,"b":2}"#, &one, &engine), &policy, &limits);
        assert_ne!(base, with_tree);
        let two = [tree(b"two")];
        assert_ne!(with_tree, action_digest(&parts(r#"{"a":1,"b":2}"#, &two, &engine), &policy, &limits));
        let smaller = Limits { memory_bytes_max: 1 << 20, ..Limits::default() };
        assert_ne!(base, action_digest(&parts(r#"{"a":1,"b":2}"#, &[], &engine), &policy, &smaller));
        let other_engine = EngineFingerprint { id: "e2".into(), ..Default::default() };
        assert_ne!(base, action_digest(&parts(r#"{"a":1,"b":2}"#, &[], &other_engine), &policy, &limits));
        let mut next = parts(r#"{"a":1,"b":2}"#, &[], &engine);
        next.revision = Some(2);
        assert_ne!(base, action_digest(&next, &policy, &limits));
    }

    #[test]
    fn a_hermetic_run_s_seed_and_clock_come_from_its_action_alone() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let secret = [9u8; 32];
        assert_eq!(seed_of(&a, None, &secret), seed_of(&a, None, &secret));
        assert_ne!(seed_of(&a, None, &secret), seed_of(&b, None, &secret));
        let (alice, bob) = (Digest::of(b"alice"), Digest::of(b"bob"));
        assert_ne!(seed_of(&a, Some(&alice), &secret), seed_of(&a, Some(&bob), &secret), "tenants draw apart");
        assert_ne!(seed_of(&a, Some(&alice), &secret), seed_of(&a, Some(&alice), &[8u8; 32]), "keyed by the host");
        let (first, again) = (clock_of(&a), clock_of(&a));
        assert_eq!(first.wall(), again.wall());
        let (earlier, later) = (first.wall(), first.wall());
        assert!(later > earlier, "each reading is later than the last");
        assert_eq!(clock_of(&a).monotonic(), 0);
        // Timers move virtual time forward, never back, and it never wraps.
        let clock = clock_of(&a);
        clock.advance(5_000);
        assert_eq!(clock.monotonic(), 5_000);
        clock.advance_to(1_000);
        assert_eq!(clock.monotonic(), 6_000, "a timer in the past waits for nothing");
        clock.advance_to(u64::MAX);
        assert_eq!((clock.monotonic(), clock.monotonic()), (u64::MAX, u64::MAX));
    }

    #[test]
    fn a_result_stands_for_its_action_only_when_nothing_outside_it_reached_the_guest() {
        let output = Outcome::Output { output: "{}".into() };
        let tape = Tape::new();
        let policy = EffectivePolicy::default();
        assert_eq!(verdict(&output, 0, &tape, &policy, false), Ok(()));
        assert_eq!(verdict(&output, 1, &tape, &policy, false), Err(NotCacheable::HttpRequest));
        let trap = Outcome::Trap { message: "boom".into() };
        assert_eq!(verdict(&trap, 0, &tape, &policy, false), Err(NotCacheable::Outcome("trap")));
        let writable = EffectivePolicy {
            mounts: vec![guild_vocab::Mount {
                host_path: "/tmp".into(),
                guest_path: "/out".into(),
                access: Access::ReadWrite,
            }],
            ..EffectivePolicy::default()
        };
        assert_eq!(
            verdict(&output, 0, &tape, &writable, false),
            Err(NotCacheable::WritableMount { guest_path: "/out".into() })
        );
        assert_eq!(NotCacheable::HttpRequest.to_string(), "http request");
    }
}
