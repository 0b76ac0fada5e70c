//! The tools the daemon serves: each component registered by its blake3 digest under a name,
//! with the grants and limits the operator gave it and its input schema compiled once, so a
//! request is validated before anything runs.

use crate::config::{ConfigError, DaemonConfig};
use guild_replay::Digest;
use guild_runtime::egress::{Secret, SecretGrant, SecretSource};
use guild_runtime::{Access, CommandConfig, Grants, Limits, Mount, Runtime, Tool};
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

/// A registered tool.
pub struct RegisteredTool {
    /// The name clients call.
    pub name: String,
    /// The loaded component.
    pub tool: Arc<Tool>,
    /// Grants every run of it gets.
    pub grants: Grants,
    /// Limits every run of it gets.
    pub limits: Limits,
    /// Where its bytes can be read again (to hand them to Redis workers).
    pub source: ToolSource,
    validator: Option<jsonschema::Validator>,
}

/// Input that does not match the tool's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput {
    /// JSON pointer into the input (`/pattern`); `/` for the whole input.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl RegisteredTool {
    /// Register `tool` as `name`; its input schema is compiled here. A schema that does not
    /// compile leaves the tool's own check (the SDK validates input) as the only one.
    pub fn new(name: String, tool: Arc<Tool>, grants: Grants, limits: Limits, source: ToolSource) -> Self {
        let validator = match jsonschema::validator_for(&tool.info().input_schema) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(tool = %name, error = %e, "the tool's input schema does not compile; input is not checked by the daemon");
                None
            }
        };
        Self { name, tool, grants, limits, source, validator }
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

    /// Check `input` against the tool's input schema.
    ///
    /// # Errors
    /// [`InvalidInput`], with a JSON pointer to the field, for the first way `input` breaks the
    /// schema. A tool whose schema did not compile accepts any input here.
    pub fn validate(&self, input: &serde_json::Value) -> Result<(), InvalidInput> {
        let Some(validator) = &self.validator else { return Ok(()) };
        let Err(error) = validator.validate(input) else { return Ok(()) };
        let mut field = error.instance_path().as_str().to_string();
        match error.kind() {
            jsonschema::error::ValidationErrorKind::Required { property } => {
                field = format!("{field}/{}", property.as_str().unwrap_or_default());
            }
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                if let Some(first) = unexpected.first() {
                    field = format!("{field}/{first}");
                }
            }
            _ => {}
        }
        if field.is_empty() {
            field = "/".into();
        }
        Err(InvalidInput { field, message: error.to_string() })
    }
}

/// Registered tools by name. Read on every request; written only by uploads.
#[derive(Default)]
pub struct Registry {
    tools: RwLock<BTreeMap<String, Arc<RegisteredTool>>>,
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

impl Registry {
    /// The tool called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<RegisteredTool>> {
        self.tools.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Every tool, by name.
    pub fn all(&self) -> Vec<Arc<RegisteredTool>> {
        self.tools.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Add a tool; the same component under the same name again is a no-op.
    ///
    /// # Errors
    /// [`RegisterError::NameTaken`] when a different component is registered under the tool's name.
    pub fn insert(&self, tool: RegisteredTool) -> Result<Arc<RegisteredTool>, RegisterError> {
        let mut tools = self.tools.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = tools.get(&tool.name) {
            if existing.tool.digest() == tool.tool.digest() {
                return Ok(existing.clone());
            }
            return Err(RegisterError::NameTaken { name: tool.name, existing: *existing.tool.digest() });
        }
        let tool = Arc::new(tool);
        tools.insert(tool.name.clone(), tool.clone());
        Ok(tool)
    }

    /// Load and register every spec, in order.
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
            let mut grants = spec.grants.clone();
            // A command asks for nothing: the operator's `--dir` mounts are its grant.
            if spec.only_requested_mounts && !tool.is_command() {
                let asked = &tool.info().capabilities.dirs;
                grants.mounts.retain(|m| asked.iter().any(|d| d.guest_path == m.guest_path));
            }
            self.insert(RegisteredTool::new(name, tool, grants, spec.limits.clone(), spec.source.clone()))
                .map_err(|e| fail(e.to_string()))?;
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
                });
            }
        }
        Ok(specs)
    }
}
