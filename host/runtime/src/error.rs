//! The runtime's errors, one enum per stage: setting up the engine, loading a component, and
//! starting a run. What happens *inside* a run (tool errors, traps, limits) is not an error of the
//! host but an [`crate::Outcome`].

use guild_vocab::{Failure, FailureCode, PolicyError};

/// Setting up the runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A setting is out of range.
    #[error("invalid runtime setting: {0}")]
    Config(String),
    /// wasmtime refused the configuration.
    #[error("could not start the wasm engine: {0}")]
    Engine(String),
    /// The cache directory could not be prepared.
    #[error("cannot use cache directory {path}: {source}")]
    CacheDir {
        /// The cache directory, as configured.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// A component could not be loaded as a Guild tool.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The component file given to [`crate::Runtime::load_file`].
        path: String,
        /// The operating system's error (not found, permission denied, ...).
        source: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error("not a WebAssembly component: the file does not start with the `\\0asm` header")]
    NotWasm,
    /// A core module that imports no WASI preview 1, so it is neither a component nor a
    /// preview-1 command that Guild runs.
    #[error(
        "this is a core WebAssembly module that imports no wasi_snapshot_preview1, not a component: \
         build the tool with `--target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// A preview-1 module that exports no `_start`: a reactor, not a command.
    #[error(
        "this WASI preview-1 module exports no `_start` function, so it is not a command (a reactor \
         module has no entry Guild can call); build it as a binary (a `main`), not a library"
    )]
    NoStart,
    /// A preview-1 module the published adapter could not turn into a component.
    #[error("cannot adapt this WASI preview-1 module into a component: {0}")]
    Adapt(String),
    /// wasmtime could not compile it.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// It imports something Guild does not provide.
    #[error(
        "the component imports {0}, which Guild does not provide; a tool may import WASI 0.2 \
         cli, clocks, random and filesystem, wasi:http/outgoing-handler (under egress rules) and \
         guild:tool/log"
    )]
    UnsupportedImport(String),
    /// It is a component of another world.
    #[error(
        "the component exports neither guild:tool/tool@0.1.0 nor wasi:cli/run (it is a component \
         of another world); build it against wit/ with guild-sdk, or as a WASI command: {0}"
    )]
    WrongWorld(String),
    /// `describe` failed or returned nonsense.
    #[error("the component's describe() failed: {0}")]
    Describe(String),
    /// The component could not be kept in the bundle store.
    #[error("cannot store the component for recording: {0}")]
    Store(String),
    /// The component's bytes could not be fetched from where they are kept (a worker's Redis);
    /// worth trying again.
    #[error("cannot fetch the component: {0}")]
    Unavailable(String),
}

/// A run could not start. Once started, every run ends in an [`crate::Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The grants are not acceptable for this tool.
    #[error("capability denied: {0}")]
    Denied(#[from] PolicyError),
    /// The requested limits exceed what this engine was built for.
    #[error("{0}")]
    Limits(String),
    /// Every run slot is taken.
    #[error("all {slots} run slots are busy; retry, or raise concurrent_runs_max")]
    Busy {
        /// How many runs the pools hold.
        slots: u32,
    },
    /// The host failed (not the tool).
    #[error("host failure: {0}")]
    Host(String),
    /// The run could not be recorded (the store failed); its result is not trusted either.
    #[error("the run could not be recorded: {0}")]
    Record(String),
}

impl RunError {
    /// The stable code of a run that could not start: `denied`, `bad_limits`, `busy` or
    /// `host_failure` (the API maps it to its HTTP status).
    pub fn code(&self) -> FailureCode {
        match self {
            Self::Denied(_) => FailureCode::Denied,
            Self::Limits(_) => FailureCode::BadLimits,
            Self::Busy { .. } => FailureCode::Busy,
            Self::Host(_) | Self::Record(_) => FailureCode::HostFailure,
        }
    }

    /// The failure a run that could not start records: its code and message.
    pub fn failure(&self) -> Failure {
        Failure::host(self.code(), self.to_string())
    }
}
