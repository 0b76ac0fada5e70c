//! Reloading the config while serving (SIGHUP): the new file is read, validated and every tool it
//! names loaded before anything changes, so a bad file is refused with its field named and the
//! old config stays in force. What a reload changes: the tools (a component the config names
//! anew becomes the current revision; grants, limits, egress rules and secrets are re-read) and
//! the tenants (an unchanged tenant keeps its rate bucket, concurrency and fuel budget), and the
//! `[rollout]` gate's policy and bounds, the `[pricing]` table, and the egress and run limits
//! (`[[egress_limits]]`, `egress_throttle_ms_max`, `[[run_limits]]`). Other sections (listen address, queue, Redis, HTTP
//! bounds, the shadow lane's size) take effect at the next start.

use crate::config::{ConfigError, DaemonConfig};
use crate::daemon::Daemon;
use crate::registry::{Registry, ToolSpec};
use guild_audit::{AuditEntry, AuditEvent};
use std::sync::Arc;

impl Daemon {
    /// Put `config` (and the tools besides it, as at start) in force.
    ///
    /// # Errors
    /// [`ConfigError`], naming the field, when a tool cannot be loaded or registered or a secret
    /// read; nothing has changed then. A failure to write the audit record is logged, not
    /// returned: the reload has happened.
    pub async fn reload(&self, config: &DaemonConfig, extra_tools: Vec<ToolSpec>) -> Result<String, ConfigError> {
        let requests_max = config.http.tenant_requests_max;
        let tenants = if config.tenants.is_empty() {
            // The default tenant of a config without tenants holds a token only the start knew.
            None
        } else {
            let old = self.tenants();
            Some(
                config
                    .tenants
                    .iter()
                    .map(|c| {
                        old.iter().find(|t| t.made_from(c, requests_max)).cloned().unwrap_or_else(|| {
                            Arc::new(crate::tenants::Tenant::from_config(c).with_requests_max(requests_max))
                        })
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let mut specs = ToolSpec::from_config(config)?;
        specs.extend(extra_tools);
        let scratch = Registry::default();
        scratch.load(self.runtime(), specs).await?;
        let configured = scratch.names();
        let _one = self.rollout().changing.lock().await;
        let mut deployed = Vec::new();
        for named in &configured {
            let made_current = crate::start::adopt(self.runtime(), self.tools(), self.rollout(), named, true)
                .await
                .map_err(|message| ConfigError::new("tools", message))?;
            if let Some(revision) = made_current {
                deployed.push((named.record.name.clone(), revision, *named.current().tool.digest()));
            }
        }
        for (tool, revision, digest) in &deployed {
            // A deploy through the config skips the gate: say so where every change is said.
            let detail =
                format!("revision {revision} ({digest}) made current by the reloaded config, without the replay gate");
            if let Err(e) = self.audit_tool_event("tool_revision_added", "config", tool, &detail).await {
                tracing::error!(error = %e, "the config deploy's audit record was not written");
            }
        }
        let mut dropped = Vec::new();
        for named in self.tools().names() {
            let from_config = named.record.revisions.first().is_some_and(|r| r.added_by == "config");
            if from_config && !configured.iter().any(|c| c.record.name == named.record.name) {
                self.tools().remove(&named.record.name);
                dropped.push(named.record.name.clone());
            }
        }
        // The gate's policy and bounds; the shadow lane keeps its size until the next start.
        *self.rollout().config.write().unwrap_or_else(|p| p.into_inner()) = config.rollout.clone();
        self.set_pricing(config.pricing.clone());
        self.set_limits(config);
        let tenant_count = match tenants {
            Some(tenants) => {
                for tenant in &tenants {
                    self.metrics().register_tenant(&tenant.name);
                }
                let n = tenants.len();
                self.set_tenants(tenants);
                n
            }
            None => self.tenants().len(),
        };
        for tool in self.tools().all() {
            self.metrics().register_tool(&tool.name, tool.revision);
            if tool.cache.is_some() {
                self.metrics().register_cached_tool(&tool.name);
            }
        }
        // Lowered bounds apply at once, not at the next store; a tool no longer cached keeps
        // no entries.
        self.cache().retain(&crate::start::cached_tools(self.tools()));
        self.tools_changed();
        let summary = format!(
            "{} tools from the config ({} made a new revision current), {} no longer served ({}), {tenant_count} tenants, \
             the [rollout] gate, [pricing], [[egress_limits]], [[run_limits]]; other sections ([queue], [redis], [http], [schema_check], listen, rollout.shadow_in_flight_max) take \
             effect at the next start",
            configured.len(),
            deployed.len(),
            dropped.len(),
            dropped.join(", ")
        );
        let event = AuditEvent { kind: "config_reloaded".into(), actor: "operator".into(), detail: summary.clone() };
        match self.audit().append(AuditEntry::event(event, "config", "")).await {
            Ok(_) => self.metrics().audit_records.inc(),
            Err(e) => tracing::error!(error = %e, "the config reload's audit record was not written"),
        }
        Ok(summary)
    }
}
