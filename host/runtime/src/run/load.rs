//! Loading components: read, check the header, compile or take from the caches (one load per
//! digest at a time), link against exactly the interfaces Guild provides, and ask the tool to
//! describe itself.

use super::Entry;
use super::types::Preview1;
use super::{DESCRIBE_FUEL_UNITS, DESCRIBE_TIMEOUT_MS, Runtime, StoreHooks, Tool};
use crate::Limits;
use crate::bindings::GuildToolPre;
use crate::cache::CacheSource;
use crate::command::{CommandConfig, command_info};
use crate::egress::hook::EgressRun;
use crate::error::LoadError;
use crate::gpu::GpuRun;
use crate::record::fresh_seed;
use crate::schema_check::CompiledSchema;
use crate::state::HostState;
use guild_replay::BlobStore;
use guild_replay::Digest;
use guild_vocab::EffectivePolicy;
use guild_vocab::ToolInfo;
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::Engine;
use wasmtime_wasi::p2::bindings::CommandPre;

pub(super) struct LoadedTools {
    by_digest: HashMap<Digest, (Arc<Tool>, u64)>,
    clock: u64,
    max: usize,
    /// Loads in progress, one lock per component (an entry lives while someone loads it).
    loading: HashMap<Digest, Arc<tokio::sync::Mutex<()>>>,
}

impl LoadedTools {
    /// No tools yet; at most `max` kept (least recently used first out).
    pub(super) fn new(max: usize) -> Self {
        Self { by_digest: HashMap::new(), clock: 0, max, loading: HashMap::new() }
    }
}

/// A caller's turn at loading one component; the entry goes when no one else waits for it.
struct LoadingGuard<'a> {
    runtime: &'a Runtime,
    digest: Digest,
    lock: Arc<tokio::sync::Mutex<()>>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for LoadingGuard<'_> {
    fn drop(&mut self) {
        let mut tools = self.runtime.tools.lock().unwrap_or_else(|p| p.into_inner());
        // This guard, the map's entry and `lock` itself: three references when no one waits.
        if Arc::strong_count(&self.lock) <= 3 {
            tools.loading.remove(&self.digest);
        }
    }
}

impl Runtime {
    /// Read and load a component file.
    ///
    /// # Errors
    /// [`LoadError::Read`] when the file cannot be read; then as [`Runtime::load`].
    /// A command is named by the file's stem.
    pub async fn load_file(&self, path: &std::path::Path) -> Result<(Arc<Tool>, CacheSource), LoadError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| LoadError::Read { path: path.display().to_string(), source })?;
        let (tool, source) = self.load(&bytes).await?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let named = tool.configured(CommandConfig { name: stem, env_allowed: None, ..CommandConfig::default() });
        Ok((named.map_or(tool, Arc::new), source))
    }

    /// Load a component: from memory if this process has it, else from the disk cache, else by
    /// compiling it. Then link it and call `describe` once. Concurrent loads of the same
    /// component wait for the first (one compile, one `describe`).
    ///
    /// # Errors
    /// [`LoadError`] when the bytes are not a component of the `guild-tool` world, import what
    /// Guild does not provide, or `describe` fails.
    ///
    /// The example on [`Runtime`] loads a tool, runs it and replays the run.
    pub async fn load(&self, bytes: &[u8]) -> Result<(Arc<Tool>, CacheSource), LoadError> {
        if let Header::CoreModule = check_header(bytes)?
            && !crate::adapt::imports_preview1(bytes)
        {
            return Err(LoadError::CoreModule);
        }
        let digest = Digest::of(bytes);
        let _loading = self.loading(&digest).await;
        if let Some(tool) = self.loaded(&digest) {
            return Ok((tool, CacheSource::Memory));
        }
        self.load_new(digest, bytes).await
    }

    /// The component named `digest`: from memory, else its bytes from `fetch` (once, however
    /// many callers ask at the same time), checked against the digest and loaded.
    ///
    /// # Errors
    /// What `fetch` returns, [`LoadError::Invalid`] when the bytes are not `digest`, or what
    /// [`Runtime::load`] returns.
    pub async fn load_by_digest<F, Fut>(&self, digest: &Digest, fetch: F) -> Result<Arc<Tool>, LoadError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, LoadError>>,
    {
        if let Some(tool) = self.loaded(digest) {
            return Ok(tool);
        }
        let _loading = self.loading(digest).await;
        if let Some(tool) = self.loaded(digest) {
            return Ok(tool);
        }
        // Fetching and compiling (or reading the compiled code from disk) is a job's first cost
        // on a new worker: its own span, saying which.
        let span = guild_telemetry::span!(
            "load",
            otel.name = "load component",
            guild.component = %digest,
            guild.cache = tracing::field::Empty,
        );
        let loaded = async {
            let bytes = fetch().await?;
            if Digest::of(&bytes) != *digest {
                return Err(LoadError::Invalid(format!(
                    "the bytes fetched for component {digest} have another digest"
                )));
            }
            if let Header::CoreModule = check_header(&bytes)?
                && !crate::adapt::imports_preview1(&bytes)
            {
                return Err(LoadError::CoreModule);
            }
            self.load_new(*digest, &bytes).await
        };
        let (tool, source) = tracing::Instrument::instrument(loaded, span.clone()).await?;
        span.record(
            "guild.cache",
            match source {
                crate::cache::CacheSource::Memory => "memory",
                crate::cache::CacheSource::Disk => "disk",
                crate::cache::CacheSource::Compiled => "compiled",
            },
        );
        Ok(tool)
    }

    /// The command component a preview-1 module becomes, linked: from the disk cache (keyed by
    /// the module's digest), else adapted now, off the async workers; then compiled like any
    /// component (and cached by its own digest). Runs of `module` granted a writable mount use
    /// it (see [`Preview1`]); bundles still name the module, which replay adapts again.
    pub(crate) async fn adapted(&self, module: &Preview1) -> Result<CommandPre<HostState>, LoadError> {
        module
            .adapted
            .get_or_try_init(|| async {
                let (disk, engine, owned) = (self.disk.clone(), self.engine.clone(), module.bytes.clone());
                let component = tokio::task::spawn_blocking(move || {
                    let digest = Digest::of(&owned);
                    let adapted = match disk.adapted(&digest) {
                        Some(component) => component,
                        None => {
                            let component = crate::adapt::adapt_preview1(&owned)?;
                            disk.keep_adapted(&digest, &component);
                            component
                        }
                    };
                    Ok::<_, LoadError>(disk.load_or_compile(&engine, &Digest::of(&adapted), &adapted)?.0)
                })
                .await
                .map_err(|e| LoadError::Adapt(format!("the adapting task failed: {e}")))??;
                let instance_pre =
                    self.linker.instantiate_pre(&component).map_err(|e| link_error(&e, &component, &self.engine))?;
                CommandPre::new(instance_pre).map_err(|e| LoadError::Adapt(format!("{e:#}")))
            })
            .await
            .cloned()
    }

    /// Hold the load of `digest` for this caller: concurrent loads of one component queue here.
    async fn loading(&self, digest: &Digest) -> LoadingGuard<'_> {
        let lock = {
            let mut tools = self.tools.lock().unwrap_or_else(|p| p.into_inner());
            tools.loading.entry(*digest).or_default().clone()
        };
        let held = lock.clone().lock_owned().await;
        LoadingGuard { runtime: self, digest: *digest, lock, _held: held }
    }

    async fn load_new(&self, digest: Digest, bytes: &[u8]) -> Result<(Arc<Tool>, CacheSource), LoadError> {
        if let Header::CoreModule = check_header(bytes)? {
            return self.load_preview1(digest, bytes).await;
        }
        // Compiling takes ~100 ms of CPU per component, and storing it writes megabytes: off
        // the async workers, so a daemon keeps answering while a new tool loads.
        let (disk, engine, owned) = (self.disk.clone(), self.engine.clone(), bytes.to_vec());
        let store = self.recording.as_ref().map(|r| r.store.clone());
        let (component, source) = tokio::task::spawn_blocking(move || {
            let compiled = disk.load_or_compile(&engine, &digest, &owned)?;
            if let Some(store) = store {
                // Bundles refer to the component by digest; keep it (once) in the store.
                store.put(&owned).map_err(|e| LoadError::Store(e.to_string()))?;
            }
            Ok::<_, LoadError>(compiled)
        })
        .await
        .map_err(|e| LoadError::Invalid(format!("the compilation task failed: {e}")))??;
        let instance_pre =
            self.linker.instantiate_pre(&component).map_err(|e| link_error(&e, &component, &self.engine))?;
        let pre = match GuildToolPre::new(instance_pre.clone()) {
            Ok(pre) => pre,
            Err(not_a_tool) => match CommandPre::new(instance_pre) {
                Ok(command) => return Ok((self.load_command(digest, command, bytes.len()), source)),
                Err(_) => return Err(LoadError::WrongWorld(format!("{not_a_tool:#}"))),
            },
        };
        let info = self.describe(&pre).await?;
        let output_schema = match &info.output_schema {
            Some(schema) => Some(CompiledSchema::compile(schema, self.schema_check, &self.disk).map_err(|e| {
                LoadError::Describe(format!(
                    "the output schema does not compile ({e}); every output is checked against it, so it must be a valid JSON Schema"
                ))
            })?),
            None => None,
        };
        let tool = Arc::new(Tool {
            digest,
            info,
            entry: Entry::Tool(pre),
            size_bytes: bytes.len() as u64,
            output_schema,
            input_schema: std::sync::OnceLock::new(),
            schema_check: (self.schema_check, self.disk.clone()),
        });
        self.remember(tool.clone());
        Ok((tool, source))
    }

    /// A preview-1 module: compiled (or from the disk cache), kept in the store like a component
    /// (bundles name the module), linked against wasmtime-wasi's preview 1; it must export
    /// `_start`.
    async fn load_preview1(&self, digest: Digest, bytes: &[u8]) -> Result<(Arc<Tool>, CacheSource), LoadError> {
        let (disk, engine, owned) = (self.disk.clone(), self.engine.clone(), bytes.to_vec());
        let store = self.recording.as_ref().map(|r| r.store.clone());
        let (module, source) = tokio::task::spawn_blocking(move || {
            let compiled = disk.load_or_compile_module(&engine, &digest, &owned)?;
            if let Some(store) = store {
                store.put(&owned).map_err(|e| LoadError::Store(e.to_string()))?;
            }
            Ok::<_, LoadError>(compiled)
        })
        .await
        .map_err(|e| LoadError::Invalid(format!("the compilation task failed: {e}")))??;
        if !matches!(module.get_export("_start"), Some(wasmtime::ExternType::Func(_))) {
            return Err(LoadError::NoStart);
        }
        let pre = self.module_linker.instantiate_pre(&module).map_err(|e| module_link_error(&e, &module))?;
        let preview1 = Preview1 { module: pre, bytes: bytes.into(), adapted: tokio::sync::OnceCell::new() };
        let config = CommandConfig::default();
        let version = digest.to_hex()[..COMMAND_VERSION_HEX_CHARS].to_string();
        let tool = Arc::new(Tool {
            digest,
            info: command_info(&config, version),
            entry: Entry::Preview1(Arc::new(preview1), config),
            size_bytes: bytes.len() as u64,
            output_schema: None,
            input_schema: std::sync::OnceLock::new(),
            schema_check: (self.schema_check, self.disk.clone()),
        });
        self.remember(tool.clone());
        Ok((tool, source))
    }

    /// A command has no `describe`: it is named `command` until configured
    /// ([`Tool::configured`]), and versioned by its digest.
    fn load_command(&self, digest: Digest, pre: CommandPre<HostState>, size: usize) -> Arc<Tool> {
        let config = CommandConfig::default();
        let version = digest.to_hex()[..COMMAND_VERSION_HEX_CHARS].to_string();
        let info = command_info(&config, version);
        let tool = Arc::new(Tool {
            digest,
            info,
            entry: Entry::Command(pre, config),
            size_bytes: size as u64,
            output_schema: None,
            input_schema: std::sync::OnceLock::new(),
            schema_check: (self.schema_check, self.disk.clone()),
        });
        self.remember(tool.clone());
        tool
    }

    fn loaded(&self, digest: &Digest) -> Option<Arc<Tool>> {
        let mut tools = self.tools.lock().unwrap_or_else(|p| p.into_inner());
        tools.clock += 1;
        let now = tools.clock;
        tools.by_digest.get_mut(digest).map(|(tool, used)| {
            *used = now;
            tool.clone()
        })
    }

    fn remember(&self, tool: Arc<Tool>) {
        let mut tools = self.tools.lock().unwrap_or_else(|p| p.into_inner());
        if tools.by_digest.len() >= tools.max {
            let oldest = tools.by_digest.iter().min_by_key(|(_, (_, used))| *used).map(|(d, _)| *d);
            if let Some(oldest) = oldest {
                tools.by_digest.remove(&oldest);
            }
        }
        tools.clock += 1;
        let now = tools.clock;
        tools.by_digest.insert(tool.digest, (tool, now));
    }

    async fn describe(&self, pre: &GuildToolPre<HostState>) -> Result<ToolInfo, LoadError> {
        // `describe` only returns constants: a tool that computes for longer is broken or
        // hostile, and loading it must not cost a full run's budget.
        let limits = Limits { fuel_units: DESCRIBE_FUEL_UNITS, timeout_ms: DESCRIBE_TIMEOUT_MS, ..Limits::default() };
        let no_egress = Arc::new(EgressRun::new(String::new(), Vec::new(), Vec::new(), limits.clone(), None, None));
        let no_gpu = GpuRun::new(self.gpu.clone(), "", false, &limits, None, None);
        let mut store = self
            .new_store(
                &EffectivePolicy::default(),
                &limits,
                &fresh_seed(),
                None,
                StoreHooks {
                    egress: no_egress,
                    gpu: no_gpu,
                    cancel: None,
                    stop: Arc::default(),
                    command: None,
                    preview1: false,
                },
            )
            .map_err(|e| LoadError::Describe(e.to_string()))?;
        let instance = pre.instantiate_async(&mut store).await.map_err(|e| LoadError::Describe(format!("{e:#}")))?;
        let info = instance
            .guild_tool_tool()
            .call_describe(&mut store)
            .await
            .map_err(|e| LoadError::Describe(format!("{e:#}")))?;
        crate::info::tool_info_from_wit(info).map_err(LoadError::Describe)
    }
}

/// The interfaces a Guild host links, by `package/interface` without version: WASI 0.2 cli,
/// clocks, filesystem, io, random and sockets (sockets linked, and denied), `wasi:http` for
/// egress, and `guild:tool`.
const LINKED_INTERFACES: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/preopens",
    "wasi:filesystem/types",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:random/random",
    "wasi:sockets/instance-network",
    "wasi:sockets/ip-name-lookup",
    "wasi:sockets/network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:http/outgoing-handler",
    "wasi:http/types",
    "guild:tool/gpu",
    "guild:tool/log",
    "guild:tool/types",
];

/// Why linking failed: the first import the host does not link, read from the component's own
/// import list; otherwise (a linked interface with other functions or types) wasmtime's account.
fn link_error(error: &wasmtime::Error, component: &wasmtime::component::Component, engine: &Engine) -> LoadError {
    let foreign = component.component_type().imports(engine).map(|(name, _)| name.to_string()).find(|name| {
        let interface = name.split('@').next().unwrap_or(name);
        !LINKED_INTERFACES.contains(&interface)
    });
    match foreign {
        Some(name) => LoadError::UnsupportedImport(name),
        None => LoadError::Invalid(format!("{error:#}")),
    }
}

/// Why a preview-1 module did not link: the first import outside `wasi_snapshot_preview1`, else
/// wasmtime's account (a preview-1 function of another type, say).
fn module_link_error(error: &wasmtime::Error, module: &wasmtime::Module) -> LoadError {
    match module.imports().find(|import| import.module() != crate::adapt::PREVIEW1) {
        Some(import) => LoadError::UnsupportedImport(format!("{}::{}", import.module(), import.name())),
        None => LoadError::Invalid(format!("{error:#}")),
    }
}

/// What a file's header says it is.
enum Header {
    Component,
    CoreModule,
}

/// Hex digits of the digest a command's version shows (48 bits: enough to tell builds apart).
const COMMAND_VERSION_HEX_CHARS: usize = 12;

fn check_header(bytes: &[u8]) -> Result<Header, LoadError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotWasm);
    }
    if bytes[4..8] == CORE_VERSION {
        return Ok(Header::CoreModule);
    }
    Ok(Header::Component)
}
