//! The daemon's side of changing a tool safely: each change to a tool's record read, applied,
//! written (compare-and-set), its new revisions loaded, installed here and audited; uploads as
//! revisions; the guard rails' automatic rollback; following Redis; the replay gate over the
//! audit log's newest runs, its signed report, and shadow runs.

use super::Daemon;
use crate::registry::{Base, Named, RegisteredTool, revision_of};
use crate::rollout::gate::{GateOutcome, ShadowSample, recorded_runs};
use crate::rollout::{Actor, CHANGE_ATTEMPTS_MAX, ChangeError, FOLLOW_INTERVAL, describe_change};
use guild_audit::{AuditEntry, AuditEvent};
use guild_replay::{BlobStore, Digest};
use guild_runtime::{CandidateCheck, GateReport, ReplayOptions, Tool};
use guild_vocab::{Candidate, Disabled, RolloutError, ToolRecord};
use std::sync::Arc;

impl Daemon {
    /// Read `name`'s record, apply `change`, load any revision it adds, write it (refused and
    /// tried again if another node wrote since it was read), install it here and audit it as
    /// `kind`. Returns what `change` returned and the installed name.
    ///
    /// # Errors
    /// [`ChangeError::Unknown`], [`ChangeError::Rollout`] from `change`, [`ChangeError::Store`]
    /// when the store or a component fails, [`ChangeError::Contended`], and
    /// [`ChangeError::NotAudited`] when everything but the audit record was done.
    pub async fn change_tool<T>(
        &self,
        name: &str,
        actor: &Actor<'_>,
        kind: &str,
        mut change: impl FnMut(&mut ToolRecord) -> Result<T, RolloutError>,
    ) -> Result<(T, Arc<Named>), ChangeError> {
        guild_vocab::rollout::bounded("the reason", actor.reason)?;
        let _one = self.rollout().changing.lock().await;
        for _ in 0..CHANGE_ATTEMPTS_MAX {
            let local = self.tools().named(name).ok_or_else(|| ChangeError::Unknown(name.to_string()))?;
            let stored = self.rollout().records.read(name).await.map_err(ChangeError::Store)?;
            let read = stored.as_ref().map_or(0, |r| r.generation);
            let mut record = stored.unwrap_or_else(|| local.record.clone());
            let out = change(&mut record)?;
            let named = self.load_named(record.clone(), local.base.clone(), Some(&local)).await?;
            if !self.rollout().records.put(&record, read).await.map_err(ChangeError::Store)? {
                continue;
            }
            let named = self.install_named(named);
            let detail = format!("{} (generation {}): {}", describe_change(&record), record.generation, actor.reason);
            self.audit_tool_event(kind, actor.name, name, &detail).await?;
            return Ok((out, named));
        }
        Err(ChangeError::Contended(name.to_string()))
    }

    /// Add `tool` (whose bytes are `bytes`) as a revision of `name` — a new name gets it as
    /// revision 1, current. Never changes what callers of an existing name get. Returns the
    /// revision number, whether it is new, and the name.
    ///
    /// # Errors
    /// As [`Daemon::change_tool`]; [`ChangeError::Store`] when the component cannot be kept.
    pub async fn add_revision(
        &self,
        name: &str,
        tool: &Arc<Tool>,
        bytes: &[u8],
        actor: &Actor<'_>,
    ) -> Result<(u32, bool, Arc<Named>), ChangeError> {
        guild_vocab::check_tool_name(name)?;
        guild_vocab::rollout::bounded("the note", actor.reason)?;
        if let Some(named) = self.tools().named(name) {
            let serves = &named.current().tool.info().name;
            if *serves != tool.info().name {
                return Err(ChangeError::Rollout(RolloutError::Invalid(format!(
                    "the component describes itself as {:?}, but {name:?} serves {serves:?}: a revision is the same tool, changed; upload it under its own name",
                    tool.info().name
                ))));
            }
        }
        let components = self.rollout().components.clone();
        let digest = *tool.digest();
        let owned = bytes.to_vec();
        tokio::task::spawn_blocking(move || components.keep(&digest, &owned))
            .await
            .map_err(|e| ChangeError::Store(e.to_string()))?
            .map_err(ChangeError::Store)?;
        if let Some(redis) = &self.rollout().components.redis {
            redis.put_component(&digest, bytes).await.map_err(|e| ChangeError::Store(e.to_string()))?;
        }
        let revision = revision_of(tool, actor.name, actor.reason);
        if self.tools().named(name).is_none() {
            let _one = self.rollout().changing.lock().await;
            if self.tools().named(name).is_none() {
                let stored = self.rollout().records.read(name).await.map_err(ChangeError::Store)?;
                if stored.is_none() {
                    let record = ToolRecord::new(name, revision.clone());
                    let named = self.load_named(record.clone(), Base::default(), None).await?;
                    if self.rollout().records.put(&record, 0).await.map_err(ChangeError::Store)? {
                        let named = self.install_named(named);
                        let detail = format!("revision 1 ({digest}) of a new tool: {}", actor.reason);
                        self.audit_tool_event("tool_revision_added", actor.name, name, &detail).await?;
                        return Ok((1, true, named));
                    }
                }
                // Another node made the name meanwhile: take its record, then add to it.
                self.follow_once().await;
            }
        }
        if let Some(named) = self.tools().named(name)
            && let Some(known) = named.record.find(&digest.to_hex())
        {
            // The same component again: its revision, unchanged (and nothing to audit).
            return Ok((known.revision, false, named.clone()));
        }
        let ((number, added), named) =
            self.change_tool(name, actor, "tool_revision_added", |record| record.add(revision.clone())).await?;
        Ok((number, added, named))
    }

    /// Start (or change) a rollout of `candidate` on `name`.
    ///
    /// # Errors
    /// As [`Daemon::change_tool`].
    pub async fn start_rollout(
        &self,
        name: &str,
        candidate: Candidate,
        actor: &Actor<'_>,
    ) -> Result<Arc<Named>, ChangeError> {
        let (_, named) =
            self.change_tool(name, actor, "rollout_started", |record| record.start(candidate.clone())).await?;
        Ok(named)
    }

    /// Make `name`'s candidate current.
    ///
    /// # Errors
    /// As [`Daemon::change_tool`]; [`ChangeError::Gate`] when the candidate was started over a
    /// failed gate and `force` is not given again.
    pub async fn promote(&self, name: &str, force: bool, actor: &Actor<'_>) -> Result<Arc<Named>, ChangeError> {
        let kind = if force { "rollout_promoted_forced" } else { "rollout_promoted" };
        let (_, named) = self
            .change_tool(name, actor, kind, |record| {
                if let Some(candidate) = &record.candidate
                    && candidate.forced
                    && !force
                {
                    return Err(RolloutError::Invalid(
                        "the candidate was started over a failed gate with --force; promote it with --force too (\"force\": true)".into(),
                    ));
                }
                record.promote()
            })
            .await?;
        self.rollout().guards.forget(name);
        Ok(named)
    }

    /// Roll `name` back: to revision `to` at once, or (without) send every call back to the
    /// current revision and mark the candidate rolled back.
    ///
    /// # Errors
    /// As [`Daemon::change_tool`].
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<u32>,
        actor: &Actor<'_>,
        trigger: &str,
    ) -> Result<Arc<Named>, ChangeError> {
        let kind = if trigger == "guard" { "rollout_rolled_back_automatically" } else { "rollout_rolled_back" };
        let (_, named) = self.change_tool(name, actor, kind, |record| record.rollback(to, actor.reason)).await?;
        self.metrics().rollbacks.with_label_values(&[name, trigger]).inc();
        self.rollout().guards.forget(name);
        Ok(named)
    }

    /// Switch `name` off (for `tenant`, or everyone) with `actor.reason`, or back on.
    ///
    /// # Errors
    /// As [`Daemon::change_tool`].
    pub async fn set_flag(
        &self,
        name: &str,
        tenant: Option<&str>,
        disabled: bool,
        actor: &Actor<'_>,
    ) -> Result<Arc<Named>, ChangeError> {
        let flag = disabled.then(|| Disabled {
            reason: actor.reason.to_string(),
            by: actor.name.to_string(),
            at_unix_ms: guild_queue::now_unix_ms(),
        });
        let kind = if disabled { "tool_disabled" } else { "tool_enabled" };
        let (_, named) = self.change_tool(name, actor, kind, |record| record.set_flag(tenant, flag.clone())).await?;
        Ok(named)
    }

    /// Count a finished call of `tool` for its rollout's guard rails, and roll the candidate
    /// back (in the background) when they are broken.
    /// A call answered from another run (a cache hit) is not counted: it burnt no fuel and
    /// took no run's time, and would make the revision with more hits look cheaper and faster.
    pub(crate) fn guard_call(self: &Arc<Self>, tool: &RegisteredTool, finished: &crate::runs::Finished) {
        if finished.cache.as_ref().is_some_and(crate::cache::CacheState::cached) {
            return;
        }
        let Some(named) = self.tools().named(&tool.name) else { return };
        let Some(candidate) = named.record.candidate.as_ref().filter(|c| c.ramp_bp > 0) else { return };
        let by_candidate = tool.revision == candidate.revision;
        if !by_candidate && tool.revision != named.record.current {
            return;
        }
        let Some(reason) = self.rollout().guards.observe(&tool.name, candidate, by_candidate, finished) else { return };
        let (daemon, name) = (self.clone(), tool.name.clone());
        let judged = (candidate.revision, candidate.started_unix_ms);
        tracing::warn!(tool = %name, revision = candidate.revision, %reason, "guard rails broken: rolling the candidate back");
        tokio::spawn(async move {
            let actor = Actor { name: "guard", reason: &reason };
            let kind = "rollout_rolled_back_automatically";
            // Only the rollout that was judged: one an admin started since is left alone.
            let rolled = daemon
                .change_tool(&name, &actor, kind, |record| match &record.candidate {
                    Some(c) if (c.revision, c.started_unix_ms) == judged => record.rollback(None, &reason),
                    _ => Err(RolloutError::NoCandidate(record.name.clone())),
                })
                .await;
            match rolled {
                Ok(_) => {
                    daemon.metrics().rollbacks.with_label_values(&[&name, "guard"]).inc();
                    daemon.rollout().guards.forget(&name);
                }
                Err(ChangeError::Rollout(RolloutError::NoCandidate(_))) => {
                    tracing::info!(tool = %name, "the judged rollout had already ended; nothing rolled back");
                }
                Err(e) => tracing::error!(tool = %name, error = %e, "the automatic rollback failed"),
            }
        });
    }

    /// Load the revisions of `record` (reusing those `reuse` has).
    async fn load_named(&self, record: ToolRecord, base: Base, reuse: Option<&Named>) -> Result<Named, ChangeError> {
        self.rollout().components.named(self.runtime(), record, base, reuse, false).await.map_err(ChangeError::Store)
    }

    /// Install `named` here and tell whoever watches the tool list.
    pub(crate) fn install_named(&self, named: Named) -> Arc<Named> {
        let name = named.record.name.clone();
        let ramp = named.record.candidate.as_ref().map_or(0.0, |c| f64::from(c.ramp_bp) / 10_000.0);
        let current = named.record.current;
        self.tools().install(named);
        self.metrics().register_tool(&name, current);
        self.metrics().rollout_ramp.with_label_values(&[&name]).set(ramp);
        self.tools_changed();
        self.tools().named(&name).expect("just installed")
    }

    pub(crate) async fn audit_tool_event(
        &self,
        kind: &str,
        actor: &str,
        tool: &str,
        detail: &str,
    ) -> Result<(), ChangeError> {
        let event = AuditEvent { kind: kind.into(), actor: actor.into(), detail: detail.into() };
        let mut entry = AuditEntry::event(event, tool, "");
        entry.tool = tool.to_string();
        self.audit().append(entry).await.map_err(|e| ChangeError::NotAudited(e.to_string()))?;
        self.metrics().audit_records.inc();
        tracing::info!(tool, kind, actor, detail, "tool changed");
        Ok(())
    }

    /// With Redis: install every record that is newer there than here. Returns whether every
    /// one was (false: Redis or a component failed; worth trying again).
    pub(crate) async fn follow_once(&self) -> bool {
        let Some(redis) = self.rollout().records.redis() else { return true };
        let records = match redis.tool_records().await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tool records from Redis");
                return false;
            }
        };
        let mut all = true;
        for record in records {
            let local = self.tools().named(&record.name);
            if local.as_ref().is_some_and(|l| l.record.generation >= record.generation) {
                continue;
            }
            // A tool from a config file is served only by nodes whose config names it.
            if local.is_none() && record.revisions.first().is_some_and(|r| r.added_by == "config") {
                continue;
            }
            let base = local.as_ref().map(|l| l.base.clone()).unwrap_or_default();
            match self.load_named(record, base, local.as_deref()).await {
                Ok(named) => {
                    self.install_named(named);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a tool record from Redis cannot be installed here");
                    all = false;
                }
            }
        }
        all
    }

    /// With Redis: follow the tool records for as long as the daemon runs.
    pub(crate) async fn follow(self: Arc<Self>) {
        let Some(redis) = self.rollout().records.redis().cloned() else { return };
        let mut seen = None;
        loop {
            tokio::time::sleep(FOLLOW_INTERVAL).await;
            if self.is_draining() {
                return;
            }
            let Ok(generation) = redis.tools_generation().await else { continue };
            if seen == Some(generation) {
                continue;
            }
            // Records are read after this generation was: a change since bumps it again.
            if self.follow_once().await {
                seen = Some(generation);
            }
        }
    }
}

impl Daemon {
    /// Check revision `candidate` of `name` against the newest `last` recorded runs of its current
    /// revision (within `since_s` seconds, if given), keep the signed report and audit the check.
    ///
    /// # Errors
    /// [`ChangeError::Unknown`]; [`ChangeError::Rollout`] for a `last` past
    /// `rollout.check_runs_max`, an unknown revision, or a candidate that is the current
    /// revision; [`ChangeError::Store`] when the audit log cannot be read, a revision is not
    /// loaded here, or the report cannot be kept or signed; [`ChangeError::NotAudited`].
    pub async fn check_revision(
        &self,
        name: &str,
        candidate: u32,
        last: Option<u64>,
        since_s: Option<u64>,
        actor: &Actor<'_>,
    ) -> Result<GateOutcome, ChangeError> {
        let config = self.rollout().config();
        guild_vocab::rollout::bounded("the reason", actor.reason)?;
        let invalid = |m: String| ChangeError::Rollout(guild_vocab::RolloutError::Invalid(m));
        let last = last.unwrap_or(config.check_runs_default);
        if last == 0 || last > config.check_runs_max {
            return Err(invalid(format!(
                "a check takes 1 to {} recorded runs (rollout.check_runs_max), not {last}",
                config.check_runs_max
            )));
        }
        let named = self.tools().named(name).ok_or_else(|| ChangeError::Unknown(name.to_string()))?;
        if named.record.revision(candidate).is_none() {
            return Err(ChangeError::Rollout(guild_vocab::RolloutError::NoRevision {
                name: name.to_string(),
                revision: candidate,
            }));
        }
        if candidate == named.record.current {
            return Err(ChangeError::Rollout(guild_vocab::RolloutError::AlreadyCurrent {
                name: name.to_string(),
                revision: candidate,
            }));
        }
        let current = named.current().clone();
        let tool = named.revision(candidate).cloned().ok_or_else(|| {
            ChangeError::Store(format!("revision {candidate} of {name:?} is not loaded on this node"))
        })?;
        let since_unix_ms = since_s.map(|s| guild_queue::now_unix_ms().saturating_sub(s.saturating_mul(1000)));
        let (path, wanted, digest) = (self.audit().path().to_path_buf(), name.to_string(), *current.tool.digest());
        let bundles = tokio::task::spawn_blocking(move || recorded_runs(&path, &wanted, &digest, last, since_unix_ms))
            .await
            .map_err(|e| ChangeError::Store(e.to_string()))?
            .map_err(ChangeError::Store)?;
        let mut checks = Vec::with_capacity(bundles.len());
        let mut failures = Vec::new();
        for id in &bundles {
            match self.check_one(id, &tool).await {
                Ok(check) => checks.push(check),
                Err(e) => failures.push(format!("run {id} could not be checked: {e}")),
            }
        }
        let report = GateReport::new(name, *current.tool.digest(), *tool.tool.digest(), checks);
        failures.splice(0..0, config.gate.evaluate(&report));
        let (report_digest, signature_digest) = self.keep_signed(&report).await?;
        let passed = failures.is_empty();
        let outcome = GateOutcome {
            passed,
            failures,
            report_digest,
            signature_digest,
            candidate_revision: candidate,
            current_revision: current.revision,
            report,
        };
        let counts = serde_json::to_string(&outcome.report.counts).unwrap_or_default();
        let detail = format!(
            "candidate revision {candidate} against {} runs of revision {}: {counts}, fuel delta mean {:.0}; {}; report {report_digest}: {}",
            outcome.report.runs(),
            current.revision,
            outcome.report.fuel_delta_mean,
            if passed { "passed" } else { "failed" },
            actor.reason
        );
        self.audit_tool_event("rollout_checked", actor.name, name, &detail).await?;
        Ok(outcome)
    }

    async fn check_one(&self, id: &Digest, candidate: &RegisteredTool) -> Result<CandidateCheck, String> {
        let (bundle, store) = crate::bundles::open(self, id).await?;
        self.runtime()
            .check_candidate(&bundle, store.as_ref(), &candidate.tool, &ReplayOptions::default())
            .await
            .map_err(|e| e.to_string())
    }

    /// Keep `report` in the store as canonical JSON, and its signature beside it.
    async fn keep_signed(&self, report: &GateReport) -> Result<(Digest, Digest), ChangeError> {
        let store_error = |e: String| ChangeError::Store(format!("cannot keep the gate report: {e}"));
        let bytes = guild_replay::canonical::to_canonical_bytes(report).map_err(|e| store_error(e.to_string()))?;
        let digest = self.store().put(&bytes).map_err(|e| store_error(e.to_string()))?;
        let signature = self.runtime().sign(digest).await.map_err(|e| store_error(e.to_string()))?;
        let signed = guild_replay::canonical::to_canonical_bytes(&signature).map_err(|e| store_error(e.to_string()))?;
        let signature_digest = self.store().put(&signed).map_err(|e| store_error(e.to_string()))?;
        Ok((digest, signature_digest))
    }

    /// After a live call of the current revision sealed `bundle`, run `candidate` against its
    /// tape in the shadow lane (skipped when the lane is full) and count the verdict. Never
    /// touches the caller's answer, quota or any real upstream.
    pub(crate) fn shadow(self: &Arc<Self>, bundle: Digest, candidate: Arc<RegisteredTool>) {
        let shadows = &self.rollout().shadows;
        let Ok(permit) = shadows.lane.clone().try_acquire_owned() else {
            self.metrics().shadow_runs.with_label_values(&[&candidate.name, "skipped"]).inc();
            return;
        };
        let daemon = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let verdict = match daemon.check_one(&bundle, &candidate).await {
                Ok(check) => {
                    let label = check.verdict.label();
                    daemon.rollout().shadows.keep(
                        &candidate.name,
                        ShadowSample { bundle, revision: candidate.revision, check: check.clone() },
                    );
                    label
                }
                Err(e) => {
                    tracing::warn!(tool = %candidate.name, %bundle, error = %e, "a shadow run could not be made");
                    "failed"
                }
            };
            daemon.metrics().shadow_runs.with_label_values(&[&candidate.name, verdict]).inc();
        });
    }
}
