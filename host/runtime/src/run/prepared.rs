//! A run in two steps: [`Runtime::prepare`] (policy, limits, each mount's tree captured and,
//! for a hermetic run, the action digest computed from exactly those trees) and
//! [`Runtime::run_prepared`] (the guest called, the result judged, the bundle sealed), so that a
//! host caching results can look the digest up in between. [`Runtime::run_as`] is both at once.

use super::{Entry, RunEnv, RunFor, Runtime, Tool};
use crate::Limits;
use crate::blocking::off_the_async_workers;
use crate::cancel::CancellationToken;
use crate::command::Passthrough;
use crate::error::RunError;
use crate::guard::Stop;
use crate::hermetic::{ActionParts, Hermetic, NotCacheable, RunMode, action_digest, clock_of, seed_of, verdict};
use crate::outcome::RunReport;
use crate::record::{Recorder, fresh_seed};
use crate::recording::{capture_mounts, record_prelude, snapshot_mounts};
use guild_vocab::{Access, EffectivePolicy, Grants, Outcome};
use std::sync::Arc;

/// A run made ready by [`Runtime::prepare`]: its policy resolved, its mounts captured and, for
/// a hermetic run, its action digest known. [`Runtime::run_prepared`] runs it; dropping it runs
/// nothing (the captured trees stay in the store, where the next run of the same mount finds
/// them).
pub struct Prepared {
    policy: EffectivePolicy,
    input: String,
    seed: [u8; 32],
    mounts: Vec<crate::recording::CapturedMount>,
    action: Option<Result<guild_replay::Digest, NotCacheable>>,
}

impl Prepared {
    /// For a hermetic run: its action digest, or why no result of it may ever stand for one (the
    /// host records nothing, a mount is writable — such a run is made live). `None` for a live run.
    pub fn action(&self) -> Option<Result<&guild_replay::Digest, &NotCacheable>> {
        self.action.as_ref().map(Result::as_ref)
    }
}

impl Runtime {
    /// Make a run ready without starting it: resolve its policy, check its limits, capture every
    /// mount's tree (when recording) and, for [`RunMode::Hermetic`], compute its action digest
    /// from exactly those trees ([`Prepared::action`]). A host caching results looks the digest
    /// up before it decides to run.
    ///
    /// # Errors
    /// As [`Runtime::run`], for the parts of a run that happen before the guest starts.
    pub async fn prepare(
        &self,
        tool: &Tool,
        input: &str,
        grants: &Grants,
        limits: &Limits,
        mode: RunMode,
    ) -> Result<Prepared, RunError> {
        let policy = EffectivePolicy::resolve(&tool.info.name, grants, &tool.capabilities_for(grants))?;
        self.check_limits(limits)?;
        // A command's fixed arguments become part of its recorded input, so replay needs no config.
        let input = tool.with_args_prefix(input).into_owned();
        let mounts = match &self.recording {
            Some(recording) => off_the_async_workers(!policy.mounts.is_empty(), || {
                capture_mounts(recording.store.as_ref(), &policy, recording.tree_limits, Some(&recording.file_digests))
            })?,
            None => Vec::new(),
        };
        let mount_bytes: u64 = mounts.iter().map(|m| m.bytes).sum();
        let action = match mode {
            RunMode::Live => None,
            RunMode::Hermetic { .. } if self.recording.is_none() => Some(Err(NotCacheable::NotRecorded)),
            RunMode::Hermetic { .. } if matches!(tool.entry, Entry::Preview1(..)) => Some(Err(NotCacheable::Preview1)),
            RunMode::Hermetic { .. } if mount_bytes > self.hermetic.mount_bytes_max => {
                Some(Err(NotCacheable::MountsTooLarge { bytes: mount_bytes, bytes_max: self.hermetic.mount_bytes_max }))
            }
            RunMode::Hermetic { revision, .. } => {
                Some(match policy.mounts.iter().find(|m| m.access == Access::ReadWrite) {
                    Some(mount) => Err(NotCacheable::WritableMount { guest_path: mount.guest_path.clone() }),
                    None => {
                        let mounted: Vec<_> = mounts.iter().map(|m| m.mounted.clone()).collect();
                        let parts = ActionParts {
                            component: tool.digest,
                            revision,
                            input: &input,
                            mounts: &mounted,
                            engine: &self.fingerprint,
                        };
                        Ok(action_digest(&parts, &policy, limits))
                    }
                })
            }
        };
        let seed = match (&action, mode) {
            (Some(Ok(action)), RunMode::Hermetic { scope, .. }) => {
                // A hermetic run is recorded (else it is not hermetic): the host key is there.
                let secret = self.recording.as_ref().map(|r| r.key.derive_secret("guild hermetic seed secret v1"));
                seed_of(action, scope.as_ref(), &secret.unwrap_or_default())
            }
            _ => fresh_seed(),
        };
        Ok(Prepared { policy, input, seed, mounts, action })
    }

    /// Run what [`Runtime::prepare`] made ready, on behalf of `run_for` (as
    /// [`Runtime::run_as`]). A hermetic run's report says whether its result may stand for its
    /// action digest ([`RunReport::hermetic`]); its bundle names the digest.
    ///
    /// # Errors
    /// As [`Runtime::run`].
    pub async fn run_prepared(
        &self,
        tool: &Tool,
        prepared: Prepared,
        grants: &Grants,
        limits: &Limits,
        cancel: CancellationToken,
        run_for: Option<&RunFor<'_>>,
    ) -> Result<RunReport, RunError> {
        self.run_prepared_inner(tool, prepared, grants, limits, cancel, run_for, None).await
    }

    #[allow(clippy::too_many_arguments)] // the public entries above each fix some of them
    pub(super) async fn run_prepared_inner(
        &self,
        tool: &Tool,
        prepared: Prepared,
        grants: &Grants,
        limits: &Limits,
        cancel: CancellationToken,
        run_for: Option<&RunFor<'_>>,
        passthrough: Option<&Passthrough>,
    ) -> Result<RunReport, RunError> {
        let Prepared { policy, input, seed, mounts, action } = prepared;
        let input = input.as_str();
        let stop = Arc::new(Stop::default());
        let recorder = self.recording.as_ref().map(|_| {
            let mut recorder = Recorder::live(limits.fuel_units, limits.recording_bytes_max, stop.clone());
            if let Some(Ok(action)) = &action {
                recorder = recorder.with_synthetic_clock(clock_of(action));
            }
            record_prelude(&recorder, &seed, &mounts);
            recorder
        });
        let secrets = grants
            .secrets
            .iter()
            .filter(|s| policy.secret_grants.iter().any(|g| g.name == s.name()))
            .cloned()
            .collect();
        let env = RunEnv {
            seed,
            recorder: recorder.clone(),
            replay_bodies: None,
            secrets,
            replay_gpu: None,
            cancel,
            stop,
            passthrough: passthrough.cloned(),
            meter: run_for.and_then(|r| r.meter.clone()),
            gate: run_for.and_then(|r| r.gate.clone()),
        };
        // A hermetic run reads its read-only mounts as they were captured, rebuilt from their
        // trees (files linked from the store): what the action digest names, whatever happens
        // to the host's directories meanwhile.
        let snapshot = match (&action, &self.recording) {
            (Some(Ok(_)), Some(recording)) if !mounts.is_empty() => {
                Some(off_the_async_workers(true, || snapshot_mounts(recording, &mounts, &policy))?)
            }
            _ => None,
        };
        let run_policy = snapshot.as_ref().map_or(&policy, |(_, policy)| policy);
        let mut execution = self.execute(tool, input, run_policy, limits, env).await?;
        drop(snapshot);
        let hermetic = match (&action, &recorder) {
            (Some(Ok(digest)), Some(recorder)) => {
                let reusable = recorder.with_tape(|tape| {
                    verdict(&execution.outcome, execution.egress_requests, tape, &policy, execution.host_identity_read)
                });
                Some(Hermetic { action: Some(*digest), reusable })
            }
            (Some(Err(why)), ..) => Some(Hermetic { action: None, reusable: Err(why.clone()) }),
            _ => None,
        };
        let action_digest = hermetic.as_ref().and_then(|h| h.action);
        let (bundle, bundle_bytes, quantities, priced) = match (&self.recording, &recorder) {
            (Some(recording), Some(recorder)) => {
                let writable = policy.mounts.iter().any(|m| m.access == crate::Access::ReadWrite);
                // Measured from what the bundle will hold (its tape is sealed into it next), as
                // `guild bundle cost` measures it; the bytes it records once they are written.
                let wall_time_us = u64::try_from(execution.wall_time.as_micros()).unwrap_or(u64::MAX);
                let (measured, exchanges) = recorder.with_tape(|tape| {
                    let gpu = (execution.gpu_time.device_us, execution.gpu_time.cpu_us);
                    let measured = guild_replay::cost::Quantities::measure(
                        execution.fuel_used_units,
                        (wall_time_us, execution.memory_bytes_peak, gpu),
                        tape.events(),
                        0,
                    );
                    let exchanges = guild_replay::cost::exchanges(tape.events()).collect::<Vec<_>>();
                    (measured, exchanges)
                });
                let seal = crate::trace::stage("seal");
                let (unsigned, overflow, priced) = off_the_async_workers(writable, || {
                    recording.seal_unsigned(
                        &self.fingerprint,
                        tool,
                        input,
                        &policy,
                        limits,
                        &execution,
                        recorder,
                        run_for,
                        action_digest,
                        (&measured, &exchanges),
                    )
                })?;
                // Awaited, not blocked on: the signer may be signing this id with others'.
                let signature = recording.sign(unsigned.id).await?;
                let sealed = off_the_async_workers(writable, || recording.store_signed(unsigned, &signature))?;
                seal.record("guild.bundle.id", tracing::field::display(&sealed.id));
                drop(seal);
                if let Some(hit) = overflow {
                    execution.outcome = Outcome::Limit(hit);
                }
                (Some(sealed.id), sealed.size_bytes, Some((priced.quantities, exchanges)), Some(priced))
            }
            _ => (None, 0, None, None),
        };
        let (quantities, http_exchanges) = match quantities {
            Some((quantities, exchanges)) => (Some(quantities), exchanges),
            None => (None, Vec::new()),
        };
        // A limit found while sealing (a writable mount grown too large) means no output.
        let hermetic = hermetic.map(|h| match (&h.reusable, &execution.outcome) {
            (Ok(()), outcome @ Outcome::Limit(_)) => {
                Hermetic { reusable: Err(NotCacheable::Outcome(outcome.label())), ..h }
            }
            _ => h,
        });
        Ok(RunReport {
            tool: tool.info.name.clone(),
            tool_version: tool.info.version.clone(),
            component: tool.digest,
            outcome: execution.outcome,
            fuel_used_units: execution.fuel_used_units,
            memory_bytes_peak: execution.memory_bytes_peak,
            wall_time: execution.wall_time,
            logs: execution.logs,
            policy,
            limits: limits.clone(),
            bundle,
            egress_denials: execution.egress_denials,
            egress_refusals: execution.egress_refusals,
            egress_requests: execution.egress_requests,
            egress_upstream_failures: execution.egress_upstream_failures,
            bundle_bytes,
            quantities,
            http_exchanges,
            cost: priced.as_ref().and_then(|p| p.cost.clone()),
            tokens: priced.map(|p| p.tokens).unwrap_or_default(),
            egress_throttled_ms: execution.egress_throttled_ms,
            egress_limited: execution.egress_limited,
            hermetic,
        })
    }
}
