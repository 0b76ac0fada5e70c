//! Checking a candidate revision of a tool against a recorded run of the current one: the
//! rollout gate (the last runs of the current revision), and shadow runs (a live primary run's
//! fresh bundle). The candidate runs on the recording's input, mounts (rebuilt from their trees;
//! writable ones in a temporary directory) and seed, with every effect answered from the
//! original tape by content — clock readings in their recorded order, HTTP exchanges by method,
//! URL and body, GPU dispatches by kernel and inputs — never a real request, never a real write.
//! The run is then classified ([`CandidateVerdict`]).

use crate::gpu::GpuReplay;
use crate::record::{CandidateFindings, Recorder};
use crate::recording::{output_trees, sealed_tree_limits};
use crate::replaying::{
    ReplayLimits, check_engine, gpu_outputs, host, http_bodies, materialize_mounts, recorded_seed, replay_limits,
};
use crate::run::types::RunEnv;
use crate::run::{Runtime, Tool};
use crate::{Access, ReplayError, ReplayOptions};
use guild_replay::tree::TreeLimits;
use guild_replay::{BlobStore, Bundle, Digest, Effect, MemoryStore};
use guild_vocab::{EffectivePolicy, Grants, LimitHit, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Output differences a check keeps; past it the diff is cut (`output_diff_truncated`).
pub const OUTPUT_DIFF_ENTRIES_MAX: usize = 64;

/// Characters of a message (a trap's, a tool error's) a check's `detail` quotes.
const DETAIL_QUOTE_CHARS_MAX: usize = 200;

/// How a candidate's run on a recorded input compares with the recorded run.
///
/// When several apply, the first in this order is the verdict — the order of how much each
/// should stop a rollout: `trap`, `limit`, `new_effect`, `missing_effect`, `error_changed`,
/// `output_changed`, `identical`. Log lines, fuel and extra or fewer clock readings never make
/// a difference (new code logs, burns fuel and reads the time differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateVerdict {
    /// The candidate trapped where the original did not.
    Trap,
    /// The candidate hit a limit where the original did not (or another limit than it).
    Limit,
    /// The candidate asked for an HTTP exchange or a GPU dispatch the tape does not have; it
    /// was refused, as a denied request is.
    NewEffect,
    /// The tape has an HTTP exchange or a GPU dispatch the candidate never asked for.
    MissingEffect,
    /// A different ending: a tool error where there was output, output where there was an
    /// error (a tool error, a trap, a limit), or a different tool error.
    ErrorChanged,
    /// Output both times, but a different one (or different writable-mount trees).
    OutputChanged,
    /// The same ending, the same output, the same effects.
    Identical,
}

impl CandidateVerdict {
    /// Every verdict, in precedence order.
    pub const ALL: [Self; 7] = [
        Self::Trap,
        Self::Limit,
        Self::NewEffect,
        Self::MissingEffect,
        Self::ErrorChanged,
        Self::OutputChanged,
        Self::Identical,
    ];

    /// The verdict as serialized: `trap`, `limit`, `new_effect`, ...
    pub fn label(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::Limit => "limit",
            Self::NewEffect => "new_effect",
            Self::MissingEffect => "missing_effect",
            Self::ErrorChanged => "error_changed",
            Self::OutputChanged => "output_changed",
            Self::Identical => "identical",
        }
    }
}

/// One difference between the recorded output and the candidate's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputChange {
    /// Where, as a JSON pointer (RFC 6901) into both outputs; `""` is the whole output.
    pub path: String,
    /// The recorded value there; absent when only the candidate has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The candidate's value there; absent when only the recording has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// What running a candidate on one recorded run found. As JSON:
///
/// ```json
/// {"bundle": "<64 hex>", "verdict": "output_changed",
///  "detail": "the output differs in 1 place(s), first at /greeting",
///  "output_diff": [{"path": "/greeting", "before": "hello barbara", "after": "hello, barbara!"}],
///  "output_diff_truncated": false, "effect": null,
///  "fuel_recorded_units": 41210, "fuel_candidate_units": 41876, "fuel_delta": 666,
///  "wall_time_us": 31, "notes": []}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateCheck {
    /// The recorded run's bundle id.
    pub bundle: Digest,
    /// How the candidate's run compares.
    pub verdict: CandidateVerdict,
    /// What differs, for people.
    pub detail: String,
    /// With `output_changed`: where the outputs differ, at most [`OUTPUT_DIFF_ENTRIES_MAX`]
    /// entries, in document order.
    #[serde(default)]
    pub output_diff: Vec<OutputChange>,
    /// Whether `output_diff` was cut at [`OUTPUT_DIFF_ENTRIES_MAX`].
    #[serde(default)]
    pub output_diff_truncated: bool,
    /// With `new_effect` or `missing_effect`: the first such effect, named (`http GET
    /// http://example.com/x`, `gpu dispatch matmul v1`).
    #[serde(default)]
    pub effect: Option<String>,
    /// Fuel the recorded run burnt.
    pub fuel_recorded_units: u64,
    /// Fuel the candidate burnt.
    pub fuel_candidate_units: u64,
    /// `fuel_candidate_units - fuel_recorded_units`: negative when the candidate is cheaper.
    pub fuel_delta: i64,
    /// Wall time of the candidate's call, µs.
    pub wall_time_us: u64,
    /// Something a reader should know that is no difference (an allowed engine mismatch,
    /// clock readings past the recorded ones).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Runtime {
    /// Run `candidate` against the recording in `bundle`, whose parts are in `store`: the
    /// bundle's input, its mounts rebuilt from their recorded trees (writable ones in a
    /// temporary directory, so no real file is written), its seed, its limits, and every effect
    /// answered from its tape by content. A clock is answered with its recorded readings in
    /// order, then the last of them again (a read past the recorded ones is noted, not a
    /// difference); an HTTP request with the first unused recorded exchange of the same method,
    /// URL and body digest, else refused as denied and named as a new effect; a GPU dispatch
    /// likewise by kernel, inputs and parameters. Nothing is sent, dispatched or stored.
    ///
    /// Load `candidate` once ([`Runtime::load`]) and check it against many bundles: a check
    /// then costs one instantiation and call, plus rebuilding the bundle's mounts, if any.
    ///
    /// # Errors
    /// [`ReplayError::EngineMismatch`] when another engine configuration recorded the bundle,
    /// unless `allow_engine_mismatch`; [`ReplayError::Invalid`] when the candidate describes
    /// itself with another tool name than the bundle's, does not ask for a mount the recording
    /// had, or when the bundle's input, seed, mounts or recorded bodies cannot be read;
    /// [`ReplayError::Host`] when this host fails. A candidate that differs is a verdict, not an
    /// error; so is one that runs past the replay backstop (`limit`).
    pub async fn check_candidate(
        &self,
        bundle: &Bundle,
        store: &dyn BlobStore,
        candidate: &Tool,
        options: &ReplayOptions,
    ) -> Result<CandidateCheck, ReplayError> {
        let invalid = |what: String| ReplayError::Invalid(what);
        let mut notes = Vec::new();
        check_engine(self.fingerprint(), bundle, options, &mut notes)?;
        let name = &candidate.info().name;
        if *name != bundle.action.tool.name {
            return Err(invalid(format!(
                "the candidate describes itself as {name} {}, the bundle records a run of {}",
                candidate.info().version,
                bundle.action.tool.name
            )));
        }
        let ReplayLimits { limits, timed_out, backstop_ms } = replay_limits(bundle, options);
        let input = bundle.input(store).map_err(|e| invalid(e.to_string()))?;
        let events = bundle.tape.events();
        let seed = recorded_seed(events)?;
        let (workdir, policy) = candidate_mounts(bundle, store, candidate, &limits)?;
        let stop = Arc::new(crate::guard::Stop::default());
        let mut recorder = Recorder::candidate(
            limits.fuel_units,
            limits.recording_bytes_max,
            stop.clone(),
            events.to_vec(),
            wall_unrecorded(bundle),
        );
        // A hermetic run's timers were on virtual time: so are its candidate's.
        if let Some(action) = &bundle.action.action_digest {
            recorder = recorder.with_synthetic_clock(crate::hermetic::clock_of(action));
        }
        for event in events.iter().take_while(|e| matches!(e.effect, Effect::RandomSeed { .. } | Effect::Mount { .. }))
        {
            recorder.record(event.effect.clone());
        }
        let cancel = match bundle.result.outcome {
            Outcome::Cancelled { after_ms } => crate::cancel::cancel_after(after_ms),
            _ => crate::cancel::CancellationToken::new(),
        };
        let env = RunEnv {
            seed,
            recorder: Some(recorder.clone()),
            replay_bodies: Some(http_bodies(events, store)?),
            secrets: Vec::new(),
            replay_gpu: Some(GpuReplay {
                outputs: Arc::new(gpu_outputs(events, store)?),
                recompute: false,
                checks: Arc::new(Mutex::new(Vec::new())),
            }),
            cancel: cancel.clone(),
            stop,
            passthrough: None,
            meter: None,
            gate: None,
        };
        let execution = self.execute(candidate, &input, &policy, &limits, env).await.map_err(host);
        cancel.cancel();
        let mut execution = execution?;
        if !timed_out && matches!(execution.outcome, Outcome::Limit(LimitHit::Timeout { .. })) {
            notes.push(format!("the candidate ran past the {backstop_ms} ms backstop where the original finished"));
        }
        let trees_changed = self.trees_changed(bundle, &policy, &limits, &mut execution.outcome)?;
        drop(workdir);
        let findings = recorder.candidate_findings();
        clock_notes(&findings, &mut notes);
        let fuel_recorded_units = bundle.result.fuel_used_units;
        let fuel_candidate_units = execution.fuel_used_units;
        let mut check = CandidateCheck {
            bundle: bundle.id,
            verdict: CandidateVerdict::Identical,
            detail: String::new(),
            output_diff: Vec::new(),
            output_diff_truncated: false,
            effect: None,
            fuel_recorded_units,
            fuel_candidate_units,
            fuel_delta: signed_delta(fuel_candidate_units, fuel_recorded_units),
            wall_time_us: u64::try_from(execution.wall_time.as_micros()).unwrap_or(u64::MAX),
            notes,
        };
        classify(&mut check, bundle, store, &execution.outcome, &findings, trees_changed);
        Ok(check)
    }

    /// Whether the writable mounts' trees after the candidate differ from the recorded ones.
    /// They are captured into a scratch store: a check stores nothing. A tree grown past what
    /// a bundle records ends the candidate's run with that limit, as it would a live run.
    fn trees_changed(
        &self,
        bundle: &Bundle,
        policy: &EffectivePolicy,
        limits: &crate::Limits,
        outcome: &mut Outcome,
    ) -> Result<Option<String>, ReplayError> {
        if !policy.mounts.iter().any(|m| m.access == Access::ReadWrite) {
            return Ok(None);
        }
        let scratch = MemoryStore::default();
        let tree_limits = sealed_tree_limits(TreeLimits::default(), limits);
        let (trees, overflow) = output_trees(&scratch, policy, tree_limits, None).map_err(host)?;
        if let Some(hit) = overflow {
            *outcome = Outcome::Limit(hit);
        }
        if trees == bundle.result.output_trees {
            return Ok(None);
        }
        let changed: Vec<&str> =
            trees.iter().filter(|t| !bundle.result.output_trees.contains(t)).map(|t| t.guest_path.as_str()).collect();
        Ok(Some(format!("the writable mounts' trees differ after the run ({})", changed.join(", "))))
    }
}

/// The recorded run's mounts rebuilt in a temporary directory (none when it had none: most
/// checks then touch no file system at all), and the candidate's policy over them.
fn candidate_mounts(
    bundle: &Bundle,
    store: &dyn BlobStore,
    candidate: &Tool,
    limits: &crate::Limits,
) -> Result<(Option<tempfile::TempDir>, EffectivePolicy), ReplayError> {
    let events = bundle.tape.events();
    let workdir = match events.iter().any(|e| matches!(e.effect, Effect::Mount { .. })) {
        true => Some(tempfile::tempdir().map_err(|e| ReplayError::Host(e.to_string()))?),
        false => None,
    };
    let grants = match &workdir {
        Some(dir) => materialize_mounts(events, store, dir.path(), limits)?,
        None => Grants::default(),
    };
    let info = candidate.info();
    let policy = EffectivePolicy::resolve(&info.name, &grants, &info.capabilities)
        .map_err(|e| ReplayError::Invalid(format!("the candidate cannot be given the recorded mounts: {e}")))?;
    Ok((workdir, policy))
}

/// Clock reads past or short of the recorded ones: noted, never a difference.
fn clock_notes(findings: &CandidateFindings, notes: &mut Vec<String>) {
    if findings.extra_clock_reads > 0 {
        notes.push(format!(
            "the candidate read a clock {} times more than the recording did (answered with the last reading)",
            findings.extra_clock_reads
        ));
    }
    if findings.unread_clock_readings > 0 {
        notes.push(format!("the candidate left {} recorded clock reading(s) unread", findings.unread_clock_readings));
    }
}

/// What the wall clock reads for a candidate when the recorded run never read it: when that
/// run finished (from `exec.json`), or the Unix epoch when the bundle does not say.
fn wall_unrecorded(bundle: &Bundle) -> Duration {
    Duration::from_millis(bundle.exec.get("finished_at_unix_ms").and_then(Value::as_u64).unwrap_or(0))
}

/// `a - b` as a signed number, saturating.
fn signed_delta(a: u64, b: u64) -> i64 {
    if a >= b { i64::try_from(a - b).unwrap_or(i64::MAX) } else { i64::try_from(b - a).map_or(i64::MIN, |d| -d) }
}

/// Fill in `check`'s verdict, detail, effect and output diff.
fn classify(
    check: &mut CandidateCheck,
    bundle: &Bundle,
    store: &dyn BlobStore,
    found: &Outcome,
    findings: &CandidateFindings,
    trees_changed: Option<String>,
) {
    let recorded = &bundle.result.outcome;
    let output_changed = match found {
        Outcome::Output { output } => {
            let expected = bundle.result.output.as_ref().map(|b| b.digest);
            matches!(recorded, Outcome::Output { .. }) && expected != Some(Digest::of(output.as_bytes()))
        }
        _ => false,
    };
    check.verdict = verdict(recorded, found, findings, output_changed || trees_changed.is_some());
    check.detail = match check.verdict {
        CandidateVerdict::Trap => format!("the candidate trapped: {}", quote(&found.message())),
        CandidateVerdict::Limit => format!("the candidate hit a limit: {}", quote(&found.message())),
        CandidateVerdict::NewEffect => {
            check.effect = findings.new_effects.first().map(name_effect);
            format!(
                "the candidate asked for {} the recording does not have; it was refused ({} in all)",
                check.effect.as_deref().unwrap_or("an effect"),
                findings.new_effects_count
            )
        }
        CandidateVerdict::MissingEffect => {
            check.effect = findings.missing_effects.first().map(name_effect);
            format!(
                "the recording has {} that the candidate never asked for ({} in all)",
                check.effect.as_deref().unwrap_or("an effect"),
                findings.missing_effects.len()
            )
        }
        CandidateVerdict::ErrorChanged => {
            format!("recorded {}; the candidate: {}", quote(&recorded.message()), quote(&found.message()))
        }
        CandidateVerdict::OutputChanged => {
            let mut parts = Vec::new();
            if output_changed && let Outcome::Output { output } = found {
                parts.push(diff_outputs(check, bundle, store, output));
            }
            parts.extend(trees_changed);
            parts.join("; ")
        }
        CandidateVerdict::Identical => format!("the same {}", recorded.label()),
    };
}

/// The verdict, by the precedence [`CandidateVerdict`] states.
fn verdict(
    recorded: &Outcome,
    found: &Outcome,
    findings: &CandidateFindings,
    output_changed: bool,
) -> CandidateVerdict {
    if matches!(found, Outcome::Trap { .. }) && !matches!(recorded, Outcome::Trap { .. }) {
        return CandidateVerdict::Trap;
    }
    if let Outcome::Limit(hit) = found {
        let same_limit =
            matches!(recorded, Outcome::Limit(was) if std::mem::discriminant(was) == std::mem::discriminant(hit));
        if !same_limit {
            return CandidateVerdict::Limit;
        }
    }
    if findings.new_effects_count > 0 {
        return CandidateVerdict::NewEffect;
    }
    if !findings.missing_effects.is_empty() {
        return CandidateVerdict::MissingEffect;
    }
    let ending_changed = match (recorded, found) {
        (Outcome::ToolError { kind: k1, message: m1 }, Outcome::ToolError { kind: k2, message: m2 }) => {
            k1 != k2 || m1 != m2
        }
        _ => recorded.label() != found.label(),
    };
    if ending_changed {
        return CandidateVerdict::ErrorChanged;
    }
    if output_changed {
        return CandidateVerdict::OutputChanged;
    }
    CandidateVerdict::Identical
}

/// Compare the recorded output with the candidate's `output`, filling in `check`'s diff, and
/// say what differs.
fn diff_outputs(check: &mut CandidateCheck, bundle: &Bundle, store: &dyn BlobStore, output: &str) -> String {
    let recorded = bundle.result.output.as_ref().and_then(|b| store.get(&b.digest).ok());
    let before = recorded.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok());
    let after = serde_json::from_str::<Value>(output).ok();
    let (Some(before), Some(after)) = (before, after) else {
        return "the output differs (one side is not readable JSON)".to_string();
    };
    let mut diff = Vec::new();
    check.output_diff_truncated = !json_diff(&before, &after, &mut String::new(), &mut diff);
    let first = diff.first().map_or("", |c| c.path.as_str());
    let shown = if first.is_empty() { "the whole output".to_string() } else { first.to_string() };
    let count = if check.output_diff_truncated { format!("more than {}", diff.len()) } else { diff.len().to_string() };
    check.output_diff = diff;
    format!("the output differs in {count} place(s), first at {shown}")
}

/// Append the differences between `before` and `after` under `path` to `out`, objects member by
/// member (in key order) and arrays element by element. Returns `false` once `out` holds
/// [`OUTPUT_DIFF_ENTRIES_MAX`] entries and more were left out. Written here rather than taken
/// from a JSON Patch crate: a gate wants (pointer, before, after) triples, which a patch (a
/// list of operations to replay) does not give.
fn json_diff(before: &Value, after: &Value, path: &mut String, out: &mut Vec<OutputChange>) -> bool {
    if before == after {
        return true;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut keys: Vec<&String> = b.keys().chain(a.keys().filter(|k| !b.contains_key(*k))).collect();
            keys.sort_unstable();
            keys.into_iter().all(|key| {
                let segment = key.replace('~', "~0").replace('/', "~1");
                child_diff(&segment, b.get(key), a.get(key), path, out)
            })
        }
        (Value::Array(b), Value::Array(a)) => {
            (0..b.len().max(a.len())).all(|index| child_diff(&index.to_string(), b.get(index), a.get(index), path, out))
        }
        _ => one_change(out, path, Some(before), Some(after)),
    }
}

/// Compare one member or element, at `path` + `/segment`: recursively when both sides have it,
/// else as one change. `false` when `out` is full.
fn child_diff(
    segment: &str,
    before: Option<&Value>,
    after: Option<&Value>,
    path: &mut String,
    out: &mut Vec<OutputChange>,
) -> bool {
    let len = path.len();
    path.push('/');
    path.push_str(segment);
    let kept = match (before, after) {
        (Some(b), Some(a)) => json_diff(b, a, path, out),
        (b, a) => one_change(out, path, b, a),
    };
    path.truncate(len);
    kept
}

/// Append one difference; `false` when `out` is full.
fn one_change(out: &mut Vec<OutputChange>, path: &str, before: Option<&Value>, after: Option<&Value>) -> bool {
    if out.len() >= OUTPUT_DIFF_ENTRIES_MAX {
        return false;
    }
    out.push(OutputChange { path: path.to_string(), before: before.cloned(), after: after.cloned() });
    true
}

/// An effect named for people: `http GET <url>`, `gpu dispatch <kernel> v<version>`.
fn name_effect(effect: &Effect) -> String {
    match effect {
        Effect::Http { request, .. } => format!("http {} {}", request.method, request.url),
        Effect::GpuDispatch { kernel, version, .. } => format!("gpu dispatch {kernel} v{version}"),
        other => other.kind().to_string(),
    }
}

/// `text`'s first line, cut to [`DETAIL_QUOTE_CHARS_MAX`] characters.
fn quote(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(DETAIL_QUOTE_CHARS_MAX) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guild_vocab::ToolErrorKind;
    use serde_json::json;

    fn diff(before: Value, after: Value) -> (Vec<OutputChange>, bool) {
        let mut out = Vec::new();
        let complete = json_diff(&before, &after, &mut String::new(), &mut out);
        (out, complete)
    }

    #[test]
    fn the_diff_names_each_changed_member_by_json_pointer() {
        let (changes, complete) = diff(
            json!({"greeting": "hello ada", "length": 3, "a/b": [1, 2], "gone": true}),
            json!({"greeting": "hello, ada!", "length": 3, "a/b": [1, 3, 4], "new": null}),
        );
        assert!(complete);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/a~1b/1", "/a~1b/2", "/gone", "/greeting", "/new"]);
        assert_eq!(changes[3].before, Some(json!("hello ada")));
        assert_eq!(changes[3].after, Some(json!("hello, ada!")));
        assert_eq!((changes[2].after.clone(), changes[4].before.clone()), (None, None));
        assert_eq!(diff(json!(1), json!("1")).0[0].path, "");
    }

    #[test]
    fn the_diff_is_bounded() {
        let before: Vec<u32> = (0..100).collect();
        let after: Vec<u32> = (1..101).collect();
        let (changes, complete) = diff(json!(before), json!(after));
        assert!(!complete);
        assert_eq!(changes.len(), OUTPUT_DIFF_ENTRIES_MAX);
    }

    fn output() -> Outcome {
        Outcome::Output { output: String::new() }
    }

    fn failed(message: &str) -> Outcome {
        Outcome::ToolError { kind: ToolErrorKind::Failed, message: message.into() }
    }

    #[test]
    fn verdicts_follow_their_precedence() {
        let none = CandidateFindings::default();
        let new = CandidateFindings { new_effects_count: 1, ..CandidateFindings::default() };
        let trap = Outcome::Trap { message: "unreachable".into() };
        let fuel = Outcome::Limit(LimitHit::Fuel { used_units: 10, limit_units: 10 });
        assert_eq!(verdict(&output(), &trap, &new, true), CandidateVerdict::Trap);
        assert_eq!(verdict(&trap, &trap, &none, false), CandidateVerdict::Identical);
        assert_eq!(verdict(&output(), &fuel, &new, false), CandidateVerdict::Limit);
        assert_eq!(verdict(&fuel, &fuel, &none, false), CandidateVerdict::Identical);
        assert_eq!(verdict(&output(), &failed("x"), &new, true), CandidateVerdict::NewEffect);
        assert_eq!(verdict(&output(), &failed("x"), &none, false), CandidateVerdict::ErrorChanged);
        assert_eq!(verdict(&failed("x"), &failed("y"), &none, false), CandidateVerdict::ErrorChanged);
        assert_eq!(verdict(&failed("x"), &failed("x"), &none, false), CandidateVerdict::Identical);
        assert_eq!(verdict(&trap, &output(), &none, false), CandidateVerdict::ErrorChanged);
        assert_eq!(verdict(&output(), &output(), &none, true), CandidateVerdict::OutputChanged);
        assert_eq!(verdict(&output(), &output(), &none, false), CandidateVerdict::Identical);
    }

    #[test]
    fn fuel_delta_is_signed_and_saturates() {
        assert_eq!(signed_delta(10, 3), 7);
        assert_eq!(signed_delta(3, 10), -7);
        assert_eq!(signed_delta(u64::MAX, 0), i64::MAX);
        assert_eq!(signed_delta(0, u64::MAX), i64::MIN);
    }

    #[test]
    fn verdicts_serialize_in_snake_case() {
        for verdict in CandidateVerdict::ALL {
            assert_eq!(serde_json::to_value(verdict).ok(), Some(json!(verdict.label())));
        }
    }
}
