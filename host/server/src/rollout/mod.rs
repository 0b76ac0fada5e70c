//! Changing a tool safely: revisions, the replay gate, the canary ramp, shadow runs, automatic
//! and manual rollback, and flags. Every change is one read–change–write of the tool's record
//! ([`guild_vocab::ToolRecord`]) in its store (`records.rs`: a file, or Redis for a fleet), the
//! new revisions loaded before the record is installed here, and an audit record naming who did
//! it and why. Other nodes follow Redis's generation counter (`follow`).

pub mod gate;
pub mod guard;
pub mod records;

use crate::daemon::Daemon;
use crate::registry::{Base, Named, RegisteredTool, revision_of};
use guild_audit::{AuditEntry, AuditEvent};
use guild_runtime::Tool;
use guild_vocab::{Candidate, Disabled, RolloutError, ToolRecord};
use std::sync::Arc;
use std::time::Duration;

/// How often a node of a fleet polls Redis for changed tool records.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Writes of one record tried before a change is given up as contended.
const CHANGE_ATTEMPTS_MAX: usize = 8;

/// Why a change to a tool was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No tool has the name.
    #[error("no tool is named {0:?}")]
    Unknown(String),
    /// The record refuses the change.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// The record could not be read or written, or a revision loaded.
    #[error("{0}")]
    Store(String),
    /// Other nodes kept changing the record.
    #[error("tool {0:?} is being changed by other nodes; try again")]
    Contended(String),
    /// The gate refused the candidate.
    #[error("{0}")]
    Gate(String),
    /// The change was made (and is in force) but its audit record could not be written.
    #[error("the change was made but its audit record could not be written: {0}")]
    NotAudited(String),
}

impl ChangeError {
    /// The stable error code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            ChangeError::Unknown(_) => "unknown_tool",
            ChangeError::Rollout(e) => e.code(),
            ChangeError::Store(_) | ChangeError::NotAudited(_) => "host_failure",
            ChangeError::Contended(_) => "conflict",
            ChangeError::Gate(_) => "gate_failed",
        }
    }
}

/// Who asks for a change, and why: both go into the audit record.
pub struct Actor<'a> {
    /// The admin tenant, or `guard` / `config` for the host itself.
    pub name: &'a str,
    /// What they said.
    pub reason: &'a str,
}

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
    pub(crate) fn guard_call(self: &Arc<Self>, tool: &RegisteredTool, finished: &crate::runs::Finished) {
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

    /// With Redis: install every record that is newer there than here. Returns the generation
    /// counter read.
    pub(crate) async fn follow_once(&self) -> Option<u64> {
        let redis = self.rollout().records.redis()?;
        let generation = redis.tools_generation().await.ok()?;
        let records = match redis.tool_records().await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tool records from Redis");
                return None;
            }
        };
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
                Err(e) => tracing::warn!(error = %e, "a tool record from Redis cannot be installed here"),
            }
        }
        Some(generation)
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
            if let Some(read) = self.follow_once().await {
                seen = Some(read.min(generation));
            }
        }
    }
}

/// One line for the audit record: the state a change left.
fn describe_change(record: &ToolRecord) -> String {
    let mut text = format!("current revision {}", record.current);
    if let Some(c) = &record.candidate {
        text.push_str(&format!(
            ", candidate revision {} at {}% (shadow {}%)",
            c.revision,
            f64::from(c.ramp_bp) / 100.0,
            f64::from(c.shadow_bp) / 100.0
        ));
        if !c.tenants.is_empty() {
            text.push_str(&format!(" for {} named tenants", c.tenants.len()));
        }
        if c.forced {
            text.push_str(", started with force over its gate");
        }
    }
    if let Some(d) = &record.flags.disabled {
        text.push_str(&format!(", disabled: {}", d.reason));
    }
    if !record.flags.tenants.is_empty() {
        text.push_str(&format!(", disabled for {} tenants", record.flags.tenants.len()));
    }
    text
}

/// The state the daemon keeps for rollouts.
pub struct RolloutState {
    /// Where records are kept.
    pub records: records::RecordStore,
    /// Where revisions' components are kept.
    pub components: records::Components,
    /// One change at a time on this node.
    pub changing: tokio::sync::Mutex<()>,
    /// Ramping candidates' guard rails.
    pub guards: guard::Guards,
    /// Shadow runs' lane and newest verdicts.
    pub shadows: gate::Shadows,
    /// The `[rollout]` config: the gate's policy and bounds (replaced by a config reload).
    pub config: std::sync::RwLock<crate::config::RolloutConfig>,
}

impl RolloutState {
    /// The `[rollout]` config in force now.
    pub fn config(&self) -> crate::config::RolloutConfig {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
