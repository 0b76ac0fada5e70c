//! The tools the daemon serves: each component registered by its blake3 digest under a name,
//! with the grants and limits the operator gave it and its input schema compiled once, so a
//! request is validated before anything runs.

use crate::cache::CachePolicy;
use crate::config::{ConfigError, DaemonConfig};
use guild_replay::Digest;
use guild_runtime::egress::{Secret, SecretGrant, SecretSource};
use guild_runtime::{Access, CommandConfig, Grants, Limits, Mount, Runtime, Tool};
use guild_vocab::{Disabled, Revision, ToolRecord};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// Where a tool's component comes from.
#[derive(Debug, Clone)]
pub enum ToolSource {
    /// A file on disk.
    File(PathBuf),
    /// Bytes carried by the binary (the example tools of `guild serve` with no config).
    Embedded {
        /// Shown in errors.
        label: String,
        /// The component's bytes, built into the binary.
        bytes: &'static [u8],
    },
}

/// One tool to register.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    /// Where the component's bytes come from: a file, or bytes built into the binary.
    pub source: ToolSource,
    /// The name clients call it by; `None`: the name it gives in `describe`.
    pub name: Option<String>,
    /// Refuse unless the component's digest is this.
    pub digest: Option<Digest>,
    /// What its runs are granted.
    pub grants: Grants,
    /// The limits each run of the tool is held to (a tenant's fuel budget may lower its fuel).
    pub limits: Limits,
    /// Which config entry it came from, for errors.
    pub field: String,
    /// Keep only the mounts the tool asks for (grants shared by many tools, e.g. `--dir`).
    pub only_requested_mounts: bool,
    /// For a WASI command: its description, allowed environment and fixed arguments (its name
    /// is `name`, else the file's stem). Ignored for `guild-tool` components.
    pub command: CommandSpec,
    /// How its results are cached; `None`: not at all.
    pub cache: Option<CachePolicy>,
    /// What a Redis worker must have to run it (its lane), besides a GPU when it uses one.
    pub needs: guild_queue::Needs,
}

/// What the config says about a WASI command.
#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    /// Description for agents; `None`: a generic one.
    pub description: Option<String>,
    /// Environment variables a caller may set.
    pub env: Vec<String>,
    /// Arguments before the caller's.
    pub args: Vec<String>,
}

/// One revision of a registered tool: its component, loaded, with what every run of it gets.
pub struct RegisteredTool {
    /// The name clients call.
    pub name: String,
    /// Which revision of the name this is (from 1).
    pub revision: u32,
    /// The loaded component.
    pub tool: Arc<Tool>,
    /// Grants every run of it gets.
    pub grants: Grants,
    /// Limits every run of it gets.
    pub limits: Limits,
    /// Where its bytes can be read again (to hand them to Redis workers).
    pub source: ToolSource,
    /// How its results are cached (hermetic runs); `None`: not at all.
    pub cache: Option<CachePolicy>,
    /// What a Redis worker must have to run it: the operator's needs, and a GPU when its
    /// `describe` says it uses GPU kernels. Its jobs wait in the lane these name.
    pub needs: guild_queue::Needs,
    /// Whether the daemon checks input against the tool's input schema (it compiled).
    checks_input: bool,
}

/// Input that does not match the tool's schema, or could not be checked against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput {
    /// JSON pointer into the input (`/pattern`); `/` for the whole input.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// The check itself stopped (past the schema checker's limits): whether the input matches
    /// is not known.
    pub unchecked: bool,
}

impl InvalidInput {
    /// The refusal in words, as the API and MCP give it.
    pub fn describe(&self) -> String {
        if self.unchecked {
            format!("input could not be checked against the tool's schema: {}", self.message)
        } else {
            format!("input does not match the tool's schema at {}: {}", self.field, self.message)
        }
    }
}

impl RegisteredTool {
    /// Register `tool` as `name`; its input schema is compiled here (in the schema checker,
    /// under its limits). A schema that does not compile leaves the tool's own check (the SDK
    /// validates input) as the only one.
    pub fn new(name: String, tool: Arc<Tool>, grants: Grants, limits: Limits, source: ToolSource) -> Self {
        let checks_input = match tool.input_schema() {
            Ok(_) => true,
            // The checker itself did not start: every input is refused with that error, rather
            // than let through unchecked.
            Err(e @ guild_runtime::SchemaCheckError::Host(_)) => {
                tracing::error!(tool = %name, error = %e, "the schema checker could not start; the tool's input is refused");
                true
            }
            Err(e) => {
                tracing::warn!(tool = %name, error = %e, "the tool's input schema does not compile; input is not checked by the daemon");
                false
            }
        };
        let needs = guild_queue::Needs { gpu: tool.info().capabilities.gpu, ..guild_queue::Needs::default() };
        Self { name, revision: 1, tool, grants, limits, source, cache: None, needs, checks_input }
    }

    /// The same registration as revision `revision`.
    pub fn as_revision(self, revision: u32) -> Self {
        Self { revision, ..self }
    }

    /// The component's bytes, read again from where it was registered from.
    ///
    /// # Errors
    /// The I/O error when the file the tool was registered from can no longer be read; an embedded
    /// tool cannot fail. The bytes are not checked against the registered digest.
    pub fn component_bytes(&self) -> std::io::Result<std::borrow::Cow<'static, [u8]>> {
        match &self.source {
            ToolSource::File(path) => std::fs::read(path).map(std::borrow::Cow::Owned),
            ToolSource::Embedded { bytes, .. } => Ok(std::borrow::Cow::Borrowed(bytes)),
        }
    }

    /// Check `input` (JSON text) against the tool's input schema, in the schema checker (bounded by the
    /// runtime's [`guild_runtime::SchemaCheckLimits`]).
    ///
    /// # Errors
    /// [`InvalidInput`], with a JSON pointer to the field, for the first way `input` breaks the
    /// schema; with the field `/` when the check ran past the checker's limits (the input is
    /// then refused unchecked). A tool whose schema did not compile accepts any input here.
    pub fn validate(&self, input: &str) -> Result<(), InvalidInput> {
        if !self.checks_input {
            return Ok(());
        }
        let whole = |message: String| InvalidInput { field: "/".into(), message, unchecked: true };
        let schema = self.tool.input_schema().map_err(|e| whole(e.to_string()))?;
        match schema.check(input) {
            Ok(None) => Ok(()),
            Ok(Some(violation)) => {
                let field = if violation.field.is_empty() { "/".into() } else { violation.field };
                Err(InvalidInput { field, message: violation.message, unchecked: false })
            }
            Err(e) => Err(whole(e.to_string())),
        }
    }
}

/// What every revision of a name is granted and held to: the operator's config entry for it
/// (an uploaded name gets none and the default limits).
#[derive(Debug, Clone, Default)]
pub struct Base {
    /// Grants every run of the name gets.
    pub grants: Grants,
    /// Limits every run of the name gets.
    pub limits: Limits,
    /// Keep only the mounts each revision asks for (grants shared by many tools, e.g. `--dir`).
    pub only_requested_mounts: bool,
    /// How every revision's results are cached; `None`: not at all.
    pub cache: Option<CachePolicy>,
    /// What a Redis worker must have to run the name (besides a GPU when a revision uses one).
    pub needs: guild_queue::Needs,
}

impl Base {
    /// Register `tool` (from `source`) as revision `revision` of `name` under this base.
    pub fn register(&self, name: &str, revision: u32, tool: Arc<Tool>, source: ToolSource) -> RegisteredTool {
        let mut grants = self.grants.clone();
        // A command asks for nothing: the operator's `--dir` mounts are its grant.
        if self.only_requested_mounts && !tool.is_command() {
            let asked = &tool.info().capabilities.dirs;
            grants.mounts.retain(|m| asked.iter().any(|d| d.guest_path == m.guest_path));
        }
        let registered = RegisteredTool::new(name.to_string(), tool, grants, self.limits.clone(), source);
        let gpu = registered.needs.gpu || self.needs.gpu;
        RegisteredTool {
            cache: self.cache.clone(),
            needs: guild_queue::Needs { gpu, ..self.needs.clone() },
            ..registered.as_revision(revision)
        }
    }
}

/// One tool name: its record (revisions, current, candidate, flags) and its revisions that
/// are loaded here. Swapped whole on every change; a call reads one snapshot.
pub struct Named {
    /// Revisions, current, candidate and flags, as persisted and shared.
    pub record: ToolRecord,
    /// What every revision of the name gets.
    pub base: Base,
    revisions: BTreeMap<u32, Arc<RegisteredTool>>,
}

impl Named {
    /// A name and its loaded revisions.
    pub fn new(record: ToolRecord, base: Base, revisions: BTreeMap<u32, Arc<RegisteredTool>>) -> Self {
        Self { record, base, revisions }
    }

    /// The revision callers get.
    ///
    /// # Panics
    /// Never for a `Named` the registry holds: it installs only names whose current revision
    /// is loaded.
    pub fn current(&self) -> &Arc<RegisteredTool> {
        self.revisions.get(&self.record.current).expect("the current revision is loaded")
    }

    /// Revision `n`, when it is loaded here.
    pub fn revision(&self, n: u32) -> Option<&Arc<RegisteredTool>> {
        self.revisions.get(&n)
    }

    /// The loaded revisions.
    pub fn loaded(&self) -> &BTreeMap<u32, Arc<RegisteredTool>> {
        &self.revisions
    }
}

/// Where a call goes: the revision that answers it, and the candidate to shadow it with.
pub struct Routed {
    /// The revision that answers.
    pub tool: Arc<RegisteredTool>,
    /// Whether the candidate's ramp chose it.
    pub candidate: bool,
    /// The candidate to run against this call's tape afterwards, if it was drawn for a shadow.
    pub shadow: Option<Arc<RegisteredTool>>,
}

/// Why a call cannot be routed.
pub enum Unroutable {
    /// No tool has the name.
    Unknown,
    /// The tool is switched off for the caller.
    Disabled(Disabled),
}

/// Registered tools by name. Read on every request; written by uploads and rollouts.
#[derive(Default)]
pub struct Registry {
    tools: RwLock<BTreeMap<String, Arc<Named>>>,
}

/// A tool could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The name is taken by another component.
    #[error("a different component is already registered as {name:?} ({existing}); upload it under another name")]
    NameTaken {
        /// The tool name asked for, already another component's.
        name: String,
        /// Its component digest.
        existing: Digest,
    },
}

/// A revision record for `tool`, added now by `by`.
pub fn revision_of(tool: &Tool, by: &str, note: &str) -> Revision {
    Revision {
        revision: 0,
        component: tool.digest().to_hex(),
        version: tool.info().version.clone(),
        description: tool.info().description.clone(),
        added_unix_ms: guild_queue::now_unix_ms(),
        added_by: by.to_string(),
        note: note.to_string(),
        rolled_back: None,
    }
}

impl RegisteredTool {
    /// What the operator set up for a WASI command, for those who call it: the arguments every
    /// run gets before the caller's, and the mounts at their guest paths and access (host paths
    /// stay the operator's). `None` for a `guild-tool` component, whose own `describe` says it.
    pub fn command_setup(&self) -> Option<serde_json::Value> {
        if !self.tool.is_command() {
            return None;
        }
        let mounts: Vec<serde_json::Value> = self
            .grants
            .mounts
            .iter()
            .map(|m| serde_json::json!({"guest_path": m.guest_path, "access": m.access}))
            .collect();
        Some(serde_json::json!({"args_prefix": self.tool.args_prefix(), "mounts": mounts}))
    }

    /// The description clients see: the tool's own, and for a command what its operator set up
    /// (fixed arguments not to repeat, and where its files are).
    pub fn description(&self) -> String {
        let own = self.tool.info().description.clone();
        if !self.tool.is_command() {
            return own;
        }
        let mut notes = Vec::new();
        let prefix = self.tool.args_prefix();
        if !prefix.is_empty() {
            notes.push(format!(
                "Every run already gets the arguments {} first (do not repeat them in `args`).",
                prefix.join(" ")
            ));
        }
        if self.grants.mounts.is_empty() {
            notes.push("No files are mounted.".to_string());
        } else {
            let mounts: Vec<String> =
                self.grants.mounts.iter().map(|m| format!("{} ({})", m.guest_path, m.access)).collect();
            notes.push(format!("Mounted: {}.", mounts.join(", ")));
        }
        let own = own.trim_end();
        let end = if own.is_empty() || own.ends_with(['.', '!', '?']) { "" } else { "." };
        format!("{own}{end} {}", notes.join(" "))
    }
}

impl Registry {
    /// The current revision of the tool called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<RegisteredTool>> {
        self.named(name).map(|n| n.current().clone())
    }

    /// The name `name`: its record and loaded revisions.
    pub fn named(&self, name: &str) -> Option<Arc<Named>> {
        self.tools.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Every tool's current revision, by name.
    pub fn all(&self) -> Vec<Arc<RegisteredTool>> {
        self.tools.read().unwrap_or_else(|p| p.into_inner()).values().map(|n| n.current().clone()).collect()
    }

    /// Every name, with its record.
    pub fn names(&self) -> Vec<Arc<Named>> {
        self.tools.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Which revision answers `tenant`'s call to `name` with routing key `key` (its idempotency
    /// key, else a fresh random one), and whether to shadow it.
    ///
    /// # Errors
    /// [`Unroutable::Unknown`] for no such name, [`Unroutable::Disabled`] when its flags switch
    /// it off for `tenant`.
    pub fn route(&self, name: &str, tenant: &str, key: &str) -> Result<Routed, Unroutable> {
        let named = self.named(name).ok_or(Unroutable::Unknown)?;
        if let Some(disabled) = named.record.disabled_for(tenant) {
            return Err(Unroutable::Disabled(disabled.clone()));
        }
        let route = named.record.route(tenant, key);
        // A revision not loaded here (yet) is answered by the current one.
        let tool = named.revision(route.revision).unwrap_or_else(|| named.current()).clone();
        let candidate = route.candidate && tool.revision == route.revision;
        let shadow = route.shadow.and_then(|n| named.revision(n).cloned());
        Ok(Routed { tool, candidate, shadow })
    }

    /// Put `named` in place of what the name held (if anything), unless what is there is
    /// newer. Returns whether it was installed.
    pub fn install(&self, named: Named) -> bool {
        let mut tools = self.tools.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = tools.get(&named.record.name)
            && existing.record.generation > named.record.generation
        {
            return false;
        }
        tools.insert(named.record.name.clone(), Arc::new(named));
        true
    }

    /// Stop serving `name` here (its record stays in the store).
    pub fn remove(&self, name: &str) -> bool {
        self.tools.write().unwrap_or_else(|p| p.into_inner()).remove(name).is_some()
    }

    /// Register a tool as revision 1 of a new name; the same component under the same name again
    /// is a no-op.
    ///
    /// # Errors
    /// [`RegisterError::NameTaken`] when a different component is registered under the tool's name.
    pub fn insert(&self, tool: RegisteredTool, base: Base, by: &str) -> Result<Arc<RegisteredTool>, RegisterError> {
        let mut tools = self.tools.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = tools.get(&tool.name) {
            if existing.current().tool.digest() == tool.tool.digest() {
                return Ok(existing.current().clone());
            }
            return Err(RegisterError::NameTaken { name: tool.name, existing: *existing.current().tool.digest() });
        }
        let record = ToolRecord::new(&tool.name, revision_of(&tool.tool, by, ""));
        let tool = Arc::new(tool.as_revision(1));
        let revisions = BTreeMap::from([(1, tool.clone())]);
        tools.insert(tool.name.clone(), Arc::new(Named::new(record, base, revisions)));
        Ok(tool)
    }

    /// Load and register every spec, in order, each as revision 1 of its name.
    ///
    /// # Errors
    /// [`ConfigError`], naming the spec's field, when a component cannot be loaded, its digest is
    /// not the one the config pins, or its name is taken by another component. The specs before it
    /// stay registered.
    pub async fn load(&self, runtime: &Runtime, specs: Vec<ToolSpec>) -> Result<(), ConfigError> {
        for spec in specs {
            let fail = |message: String| ConfigError { field: spec.field.clone(), message };
            let started = std::time::Instant::now();
            let (tool, code) = match &spec.source {
                ToolSource::File(path) => runtime.load_file(path).await,
                ToolSource::Embedded { bytes, .. } => runtime.load(bytes).await,
            }
            .map_err(|e| fail(format!("cannot register {}: {e}", spec.label())))?;
            // Compiling a tool takes seconds the first time; say what the start is waiting on.
            tracing::info!(
                tool = %spec.label(),
                component = %tool.digest(),
                code = ?code,
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "tool loaded"
            );
            if let Some(pin) = spec.digest
                && pin != *tool.digest()
            {
                return Err(fail(format!(
                    "{} has digest {} but the config pins {pin}; update the pin if the change is intended",
                    spec.label(),
                    tool.digest()
                )));
            }
            let name = spec.name.clone().unwrap_or_else(|| tool.info().name.clone());
            // A command runs, and is recorded, under the name clients call it by.
            let tool = match tool.configured(CommandConfig {
                name: name.clone(),
                description: spec.command.description.clone().unwrap_or_default(),
                env_allowed: Some(spec.command.env.clone()),
                args_prefix: spec.command.args.clone(),
            }) {
                Some(command) => Arc::new(command),
                None => tool,
            };
            let base = Base {
                grants: spec.grants.clone(),
                limits: spec.limits.clone(),
                only_requested_mounts: spec.only_requested_mounts,
                cache: spec.cache.clone(),
                needs: spec.needs.clone(),
            };
            let registered = base.register(&name, 1, tool, spec.source.clone());
            self.insert(registered, base, "config").map_err(|e| fail(e.to_string()))?;
        }
        Ok(())
    }
}

impl ToolSpec {
    fn label(&self) -> String {
        match &self.source {
            ToolSource::File(path) => path.display().to_string(),
            ToolSource::Embedded { label, .. } => label.clone(),
        }
    }

    /// The specs a config's `[[tools]]` describe: directories expanded to their `*.wasm` files,
    /// secrets read from where `[secrets]` says.
    ///
    /// # Errors
    /// [`ConfigError`], naming the field, when a granted secret's source does not parse or cannot
    /// be read, a `digest` is not a blake3 digest, or a directory `path` has a `name` or `digest`
    /// or cannot be listed.
    pub fn from_config(config: &DaemonConfig) -> Result<Vec<ToolSpec>, ConfigError> {
        let mut specs = Vec::new();
        for (i, tool) in config.tools.iter().enumerate() {
            let field = format!("tools[{i}]");
            let fail = |f: &str, message: String| ConfigError { field: format!("{field}{f}"), message };
            let grants = Grants {
                mounts: tool
                    .mounts
                    .iter()
                    .map(|m| Mount {
                        host_path: m.host.clone(),
                        guest_path: m.guest.clone(),
                        access: if m.access == "rw" { Access::ReadWrite } else { Access::ReadOnly },
                    })
                    .collect(),
                egress: tool.allow_hosts.clone(),
                secrets: tool
                    .secrets
                    .iter()
                    .map(|g| {
                        // Validation made sure every granted secret is defined, with a valid source.
                        let source = config.secrets.get(&g.name).map(String::as_str).unwrap_or_default();
                        Secret::read(
                            &g.name,
                            &SecretSource::parse(source).map_err(|e| format!("secret {}: {e}", g.name))?,
                        )
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|m| fail(".secrets", m))?,
                secret_grants: tool
                    .secrets
                    .iter()
                    .map(|g| SecretGrant { name: g.name.clone(), rules: vec![g.to.clone()] })
                    .collect(),
            };
            let digest = tool
                .digest
                .as_deref()
                .map(str::parse::<Digest>)
                .transpose()
                .map_err(|e| fail(".digest", e.to_string()))?;
            let paths = if tool.path.is_dir() {
                if tool.name.is_some() || digest.is_some() {
                    return Err(fail(".path", "a directory of tools takes neither `name` nor `digest`".into()));
                }
                let mut paths: Vec<PathBuf> = std::fs::read_dir(&tool.path)
                    .map_err(|e| fail(".path", format!("cannot read {}: {e}", tool.path.display())))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                    .collect();
                paths.sort();
                paths
            } else {
                vec![tool.path.clone()]
            };
            for path in paths {
                specs.push(ToolSpec {
                    source: ToolSource::File(path),
                    name: tool.name.clone(),
                    digest,
                    grants: grants.clone(),
                    limits: tool.limits.clone(),
                    field: format!("{field}.path"),
                    only_requested_mounts: false,
                    command: CommandSpec {
                        description: tool.description.clone(),
                        env: tool.env.clone(),
                        args: tool.args.clone(),
                    },
                    cache: tool.cache.as_ref().and_then(crate::cache::CacheSetting::policy),
                    needs: tool.needs.clone(),
                });
            }
        }
        Ok(specs)
    }
}
