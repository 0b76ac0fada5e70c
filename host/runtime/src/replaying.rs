//! Replaying a bundle: the same component, re-run with every effect answered from the tape (no
//! real clock, no real randomness, mounts rebuilt from their recorded trees), then compared with
//! what was recorded: the tape event by event, the outcome, the output, the fuel, the output
//! trees. The first difference is reported with its class. GPU dispatches are answered from
//! the tape too; with `recompute_gpu` each is also re-run here and compared.

use crate::gpu::GpuReplay;
use crate::record::{Divergence, Recorder};
use crate::recording::{output_trees, sealed_tree_limits};
use crate::run::Runtime;
use crate::run::types::{Execution, RunEnv};
use crate::{Access, Limits, RunError};
use guild_replay::tree::{self, Materialize, TreeLimits};
use guild_replay::{BlobStore, Bundle, Digest, Effect, Event};
use guild_vocab::{EffectivePolicy, Grants, Mount};
use guild_vocab::{LimitHit, Outcome};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Replay even when the bundle was recorded by a different engine configuration.
    pub allow_engine_mismatch: bool,
    /// Re-run every GPU dispatch on this host (its device, or the CPU reference) and compare
    /// with the recording: exactly for deterministic kernels, within tolerance otherwise.
    pub recompute_gpu: bool,
    /// Wall-clock backstop of a replay whose original did not time out, in ms (0: the default,
    /// [`REPLAY_BACKSTOP_MS_DEFAULT`] or ten times the recorded timeout, whichever is longer).
    /// A replay is bound by fuel, like its original; this only stops one that cannot finish on
    /// this machine, and says so ([`ReplayError::TooSlow`]).
    pub backstop_ms: u64,
}

/// Default wall-clock backstop of a replay.
pub const REPLAY_BACKSTOP_MS_DEFAULT: u64 = 300_000;

/// How many times its recorded timeout a replay may take by default.
const REPLAY_BACKSTOP_FACTOR: u64 = 10;

/// A bundle that cannot be replayed at all.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Recorded by another engine.
    #[error(
        "engine mismatch: the bundle was recorded by {expected}, this host runs {found}; \
         pass --allow-engine-mismatch to replay anyway"
    )]
    EngineMismatch {
        /// The engine that recorded the bundle: its wasmtime version and fingerprint id.
        expected: String,
        /// This host's engine, written the same way.
        found: String,
    },
    /// The bundle verifies but does not describe a replayable run.
    #[error("the bundle cannot be replayed: {0}")]
    Invalid(String),
    /// The host failed while replaying.
    #[error("replay failed on this host: {0}")]
    Host(String),
    /// The replay ran past its wall-clock backstop where the original had finished: this
    /// machine is too slow or too busy, which says nothing about the bundle.
    #[error(
        "replay too slow: it ran past its wall-clock backstop of {} where the original run finished \
         (this says nothing about the bundle); replay on a less busy machine or raise --backstop",
        crate::human_ms(*backstop_ms)
    )]
    TooSlow {
        /// The wall-clock backstop the replay ran past ([`ReplayOptions::backstop_ms`] or its
        /// default).
        backstop_ms: u64,
    },
}

/// The kind of difference a replay found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceClass {
    /// The guest observed or did something else: a different effect, fuel, or tape.
    Nondeterminism,
    /// The same kind of ending, but different output (or tool error, or output tree).
    OutputMismatch,
    /// A different kind of ending: output vs error vs limit vs trap, or a different limit/trap.
    TrapMismatch,
    /// A recomputed GPU dispatch differs from the recording beyond what its kernel allows.
    GpuMismatch,
}

/// The first difference between a bundle and its replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// What kind of difference: it decides the exit code of `guild replay` (13 to 16).
    pub class: DivergenceClass,
    /// What differs, for people.
    pub what: String,
    /// The first diverging tape event, when the difference is on the tape.
    pub seq: Option<u64>,
    /// What the bundle says.
    pub expected: String,
    /// What the replay did.
    pub found: String,
    /// Fuel burnt at the divergence.
    pub fuel: Option<u64>,
}

/// What a replay found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The bundle replayed.
    pub bundle: Digest,
    /// `None` when the replay is identical.
    pub mismatch: Option<Mismatch>,
    /// Fuel the original run burnt.
    pub fuel_recorded_units: u64,
    /// Fuel the replay burnt.
    pub fuel_replayed_units: u64,
    /// Tape events compared.
    pub tape_events: u64,
    /// Wall time of the replayed call.
    pub wall_time: Duration,
    /// Something a reader should know (an allowed engine mismatch, a timed-out original).
    pub notes: Vec<String>,
    /// GPU dispatches recomputed (with `recompute_gpu`), in tape order.
    pub gpu_checks: Vec<crate::GpuCheck>,
}

impl Runtime {
    /// Replay `bundle`, whose parts are in `store`: load its component, rebuild its mounts from
    /// their recorded trees, re-run it with every effect answered from the tape, and report the
    /// first difference (if any) with its class, `seq` and fuel.
    ///
    /// # Errors
    /// [`ReplayError::EngineMismatch`] when another engine configuration recorded the bundle,
    /// unless `allow_engine_mismatch`; [`ReplayError::Invalid`] when its component, input, seed,
    /// mounts or recorded bodies cannot be read or loaded, or the component is not the tool the
    /// bundle names; [`ReplayError::Host`] when this host fails; [`ReplayError::TooSlow`] when the
    /// replay runs past its backstop where the original finished. A replay that differs is a
    /// [`ReplayReport::mismatch`], not an error.
    ///
    /// The example on [`Runtime`] loads a tool, runs it and replays the run.
    pub async fn replay(
        &self,
        bundle: &Bundle,
        store: &dyn BlobStore,
        options: &ReplayOptions,
    ) -> Result<ReplayReport, ReplayError> {
        let invalid = |what: String| ReplayError::Invalid(what);
        let mut notes = Vec::new();
        check_engine(self.fingerprint(), bundle, options, &mut notes)?;
        let component = store.get(&bundle.action.component.digest).map_err(|e| invalid(e.to_string()))?;
        let (tool, _) = self.load(&component).await.map_err(|e| invalid(e.to_string()))?;
        // A command is named by whoever ran it, and its input was admitted then: it replays
        // under the recorded name, with whatever environment the input sets.
        let named = tool.configured(crate::CommandConfig {
            name: bundle.action.tool.name.clone(),
            env_allowed: None,
            ..crate::CommandConfig::default()
        });
        let tool = named.map_or(tool, Arc::new);
        if tool.info().name != bundle.action.tool.name || tool.info().version != bundle.action.tool.version {
            return Err(invalid(format!(
                "the component describes itself as {} {}, the bundle says {} {}",
                tool.info().name,
                tool.info().version,
                bundle.action.tool.name,
                bundle.action.tool.version
            )));
        }
        let ReplayLimits { limits, timed_out, backstop_ms } = replay_limits(bundle, options);
        let input = bundle.input(store).map_err(|e| invalid(e.to_string()))?;
        let events = bundle.tape.events();
        let seed = recorded_seed(events)?;
        let workdir = tempfile::tempdir().map_err(|e| ReplayError::Host(e.to_string()))?;
        let grants = materialize_mounts(events, store, workdir.path(), &limits)?;
        let policy = EffectivePolicy::resolve(&tool.info().name, &grants, &tool.capabilities_for(&grants))
            .map_err(|e| invalid(e.to_string()))?;
        let stop = Arc::new(crate::guard::Stop::default());
        let mut recorder =
            Recorder::replaying(limits.fuel_units, limits.recording_bytes_max, stop.clone(), events.to_vec());
        // A hermetic run's timers were on virtual time: so are the replay's (its clock readings
        // come from the tape either way).
        if let Some(action) = &bundle.action.action_digest {
            recorder = recorder.with_synthetic_clock(crate::hermetic::clock_of(action));
        }
        // The prelude is the recorded one: the seed, and each mount rebuilt from exactly the
        // tree it names (capturing the rebuilt directory again would give the same digest).
        for event in events.iter().take_while(|e| matches!(e.effect, Effect::RandomSeed { .. } | Effect::Mount { .. }))
        {
            recorder.record(event.effect.clone());
        }
        let replay_bodies = http_bodies(events, store)?;
        // A cancelled run is stopped after the same wall time as the original was.
        let cancel = match bundle.result.outcome {
            Outcome::Cancelled { after_ms } => crate::cancel::cancel_after(after_ms),
            _ => crate::cancel::CancellationToken::new(),
        };
        let replay_gpu = GpuReplay {
            outputs: Arc::new(gpu_outputs(events, store)?),
            recompute: options.recompute_gpu,
            checks: Arc::new(Mutex::new(Vec::new())),
        };
        let env = RunEnv {
            seed,
            recorder: Some(recorder.clone()),
            replay_bodies: Some(replay_bodies),
            secrets: Vec::new(),
            replay_gpu: Some(replay_gpu.clone()),
            cancel: cancel.clone(),
            stop,
            passthrough: None,
            meter: None,
            gate: None,
        };
        let execution = self.execute(&tool, &input, &policy, &limits, env).await.map_err(host);
        cancel.cancel();
        let mut execution = execution?;
        if !timed_out && matches!(execution.outcome, Outcome::Limit(LimitHit::Timeout { .. })) {
            return Err(ReplayError::TooSlow { backstop_ms });
        }
        let (trees, overflow) =
            output_trees(store, &policy, sealed_tree_limits(TreeLimits::default(), &limits), None).map_err(host)?;
        if let Some(hit) = overflow {
            execution.outcome = Outcome::Limit(hit);
        }
        let (tape, divergence) = recorder.finish();
        let cancelled = matches!(bundle.result.outcome, Outcome::Cancelled { .. });
        if timed_out {
            notes.push("the original run timed out: where it stopped depends on wall time, so the fuel and the tape's length are not compared".into());
        }
        if cancelled {
            notes.push("the original run was cancelled: the replay was stopped after the same wall time, so the fuel and the tape's length are not compared".into());
        }
        let timed_out = timed_out || cancelled;
        let gpu_checks = replay_gpu.checks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mismatch = compare(bundle, store, &execution, divergence, &tape, &trees, timed_out)
            .or_else(|| gpu_mismatch(&gpu_checks));
        Ok(ReplayReport {
            bundle: bundle.id,
            mismatch,
            fuel_recorded_units: bundle.result.fuel_used_units,
            fuel_replayed_units: execution.fuel_used_units,
            tape_events: tape.events().len() as u64,
            wall_time: execution.wall_time,
            notes,
            gpu_checks,
        })
    }
}

/// Refuse a bundle another engine configuration recorded, unless `options` allow it (then say
/// so in `notes`).
pub(crate) fn check_engine(
    ours: &guild_vocab::EngineFingerprint,
    bundle: &Bundle,
    options: &ReplayOptions,
    notes: &mut Vec<String>,
) -> Result<(), ReplayError> {
    if bundle.action.engine != *ours {
        let (expected, found) = (bundle.action.engine.to_string(), ours.to_string());
        if !options.allow_engine_mismatch {
            return Err(ReplayError::EngineMismatch { expected, found });
        }
        notes.push(format!("engine mismatch allowed: recorded by {expected}, replayed on {found}"));
    }
    Ok(())
}

/// What a re-run of a bundle is bound by.
pub(crate) struct ReplayLimits {
    /// The recorded limits, with the timeout replaced by the backstop unless the run timed out.
    pub(crate) limits: Limits,
    /// Whether the original run timed out.
    pub(crate) timed_out: bool,
    /// The wall-clock backstop, ms.
    pub(crate) backstop_ms: u64,
}

/// A re-run is bound by the recorded ending: a run that timed out (or was cancelled) is stopped
/// after the same wall time; any other is bound by its fuel, with only a generous backstop
/// against a machine that cannot finish it.
pub(crate) fn replay_limits(bundle: &Bundle, options: &ReplayOptions) -> ReplayLimits {
    let mut limits: Limits = bundle.action.limits.clone();
    let timed_out = matches!(bundle.result.outcome, Outcome::Limit(LimitHit::Timeout { .. }));
    let backstop_ms = match options.backstop_ms {
        0 => REPLAY_BACKSTOP_MS_DEFAULT.max(limits.timeout_ms.saturating_mul(REPLAY_BACKSTOP_FACTOR)),
        ms => ms,
    };
    if !timed_out {
        limits.timeout_ms = backstop_ms;
    }
    ReplayLimits { limits, timed_out, backstop_ms }
}

/// The seed the tape's first event records.
pub(crate) fn recorded_seed(events: &[Event]) -> Result<[u8; 32], ReplayError> {
    match events.first().map(|e| &e.effect) {
        Some(Effect::RandomSeed { seed }) => {
            Ok(*seed.parse::<Digest>().map_err(|e| ReplayError::Invalid(format!("random seed: {e}")))?.as_bytes())
        }
        _ => Err(ReplayError::Invalid("the tape does not start with the random seed".into())),
    }
}

/// The response bodies the tape's HTTP exchanges name, read from the bundle.
pub(crate) fn http_bodies(
    events: &[Event],
    store: &dyn BlobStore,
) -> Result<HashMap<Digest, bytes::Bytes>, ReplayError> {
    let mut bodies = HashMap::new();
    for event in events {
        if let Effect::Http { response: Some(response), .. } = &event.effect {
            let bytes = store.get(&response.body).map_err(|e| ReplayError::Invalid(e.to_string()))?;
            bodies.insert(response.body, bytes::Bytes::from(bytes));
        }
    }
    Ok(bodies)
}

/// The GPU outputs the tape's dispatches name, read from the bundle.
pub(crate) fn gpu_outputs(events: &[Event], store: &dyn BlobStore) -> Result<HashMap<Digest, Vec<u8>>, ReplayError> {
    let mut outputs = HashMap::new();
    for event in events {
        if let Effect::GpuDispatch { outputs: records, .. } = &event.effect {
            for digest in records.iter().filter_map(|r| r.digest) {
                let bytes = store.get(&digest).map_err(|e| ReplayError::Invalid(e.to_string()))?;
                outputs.insert(digest, bytes);
            }
        }
    }
    Ok(outputs)
}

/// The first recomputed dispatch that differs beyond its kernel's allowance.
fn gpu_mismatch(checks: &[crate::GpuCheck]) -> Option<Mismatch> {
    let (index, check) = checks.iter().enumerate().find(|(_, c)| c.mismatch.is_some())?;
    Some(Mismatch {
        class: DivergenceClass::GpuMismatch,
        what: format!("gpu dispatch {} ({}) recomputed on {}", index + 1, check.kernel, check.recomputed_on),
        seq: None,
        expected: format!("the outputs recorded on {}", check.recorded_on),
        found: check.mismatch.clone().unwrap_or_default(),
        fuel: None,
    })
}

pub(crate) fn host(error: RunError) -> ReplayError {
    ReplayError::Host(error.to_string())
}

/// Rebuild each recorded mount under `workdir` and grant it at its guest path.
pub(crate) fn materialize_mounts(
    events: &[Event],
    store: &dyn BlobStore,
    workdir: &std::path::Path,
    limits: &Limits,
) -> Result<Grants, ReplayError> {
    let mut grants = Grants::default();
    for (index, event) in events.iter().enumerate() {
        let Effect::Mount { guest_path, access, tree: root, .. } = &event.effect else { continue };
        let dir = workdir.join(format!("mount-{index}"));
        std::fs::create_dir(&dir).map_err(|e| ReplayError::Host(e.to_string()))?;
        let access = match access.as_str() {
            "read-only" => Access::ReadOnly,
            "read-write" => Access::ReadWrite,
            other => return Err(ReplayError::Invalid(format!("mount {guest_path} has unknown access {other:?}"))),
        };
        // The bundle was verified, digests included, before it got here; a read-only mount can
        // share the store's files.
        let how = match access {
            Access::ReadOnly => Materialize::LinkReadOnly,
            Access::ReadWrite => Materialize::Copy,
        };
        tree::materialize(store, root, &dir, sealed_tree_limits(TreeLimits::default(), limits), how)
            .map_err(|e| ReplayError::Invalid(format!("mount {guest_path}: {e}")))?;
        grants.mounts.push(Mount { host_path: dir, guest_path: guest_path.clone(), access });
    }
    Ok(grants)
}

fn show_event(event: &Option<Event>) -> String {
    match event {
        Some(event) => serde_json::json!({"seq": event.seq, "fuel": event.fuel, "effect": event.effect}).to_string(),
        None => "nothing (the run had ended)".to_string(),
    }
}

fn compare(
    bundle: &Bundle,
    store: &dyn BlobStore,
    execution: &Execution,
    divergence: Option<Divergence>,
    tape: &guild_replay::Tape,
    trees: &[guild_replay::OutputTree],
    timed_out: bool,
) -> Option<Mismatch> {
    let mismatch = |class, what: &str, expected: String, found: String| Mismatch {
        class,
        what: what.to_string(),
        seq: None,
        expected,
        found,
        fuel: None,
    };
    if let Some(d) = divergence.filter(|d| !timed_out || (d.expected.is_some() && d.found.is_some())) {
        let fuel = d.found.as_ref().or(d.expected.as_ref()).map(|e| e.fuel);
        return Some(Mismatch {
            class: DivergenceClass::Nondeterminism,
            what: format!("tape event {}", d.seq),
            seq: Some(d.seq),
            expected: show_event(&d.expected),
            found: show_event(&d.found),
            fuel,
        });
    }
    let recorded = &bundle.result.outcome;
    let replayed = execution.outcome.without_output();
    let show = |outcome: &Outcome| serde_json::to_string(outcome).expect("an outcome is plain data");
    if recorded.label() != replayed.label() {
        return Some(mismatch(DivergenceClass::TrapMismatch, "how the run ended", show(recorded), show(&replayed)));
    }
    if let Outcome::Output { output } = &execution.outcome {
        let expected = bundle.result.output.map(|b| b.digest);
        if expected != Some(Digest::of(output.as_bytes())) {
            let original = expected
                .and_then(|d| store.get(&d).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            return Some(mismatch(DivergenceClass::OutputMismatch, "output", original, output.clone()));
        }
    } else if *recorded != replayed && !matches!(recorded, Outcome::Cancelled { .. }) {
        let class = if matches!(replayed, Outcome::ToolError { .. }) {
            DivergenceClass::OutputMismatch
        } else {
            DivergenceClass::TrapMismatch
        };
        return Some(mismatch(class, "how the run ended", show(recorded), show(&replayed)));
    }
    if timed_out {
        return None;
    }
    if bundle.result.fuel_used_units != execution.fuel_used_units {
        return Some(mismatch(
            DivergenceClass::Nondeterminism,
            "fuel used",
            bundle.result.fuel_used_units.to_string(),
            execution.fuel_used_units.to_string(),
        ));
    }
    if bundle.result.tape_head != tape.head() {
        return Some(mismatch(
            DivergenceClass::Nondeterminism,
            "tape head",
            bundle.result.tape_head.to_hex(),
            tape.head().to_hex(),
        ));
    }
    if bundle.result.output_trees != trees {
        let show = |t: &[guild_replay::OutputTree]| serde_json::to_string(t).expect("output trees are plain data");
        return Some(mismatch(
            DivergenceClass::OutputMismatch,
            "output trees",
            show(&bundle.result.output_trees),
            show(trees),
        ));
    }
    None
}
