//! Log lines from a tool. Each is recorded with the run; past the run's log budget
//! (`--log-bytes`) the host ends the run with a limit error.
//!
//! Outside WebAssembly (a tool's native unit tests) lines go to stderr.

use crate::bindings::guild::tool::log as wit;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something looks wrong but the tool goes on.
    Warn,
    /// Something failed.
    Error,
}

/// Emit one log line at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    emit(level, message.as_ref());
}

/// Emit an info line.
pub fn info(message: impl AsRef<str>) {
    emit(Level::Info, message.as_ref());
}

/// Emit a debug line.
pub fn debug(message: impl AsRef<str>) {
    emit(Level::Debug, message.as_ref());
}

/// Emit a warning.
pub fn warn(message: impl AsRef<str>) {
    emit(Level::Warn, message.as_ref());
}

/// Emit an error line.
pub fn error(message: impl AsRef<str>) {
    emit(Level::Error, message.as_ref());
}

#[cfg(target_arch = "wasm32")]
fn emit(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    wit::log(level, message);
}

#[cfg(not(target_arch = "wasm32"))]
fn emit(level: Level, message: &str) {
    // Keeps the import referenced so native builds check it; never called off wasm.
    let _ = wit::log as fn(wit::Level, &str);
    eprintln!("[{level:?}] {message}");
}
