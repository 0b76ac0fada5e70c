//! Preview-1 modules as command components, for the runs that need one: a core module importing
//! `wasi_snapshot_preview1` is wrapped into a `wasi:cli/command` component with the adapter
//! wasmtime publishes for this version (`wasi-preview1-component-adapter-provider`), encoded by
//! `wit-component` — the way `wasm-tools component new --adapt` does it. A preview-1 module
//! otherwise runs on wasmtime-wasi's own preview 1 (`run/types.rs`, `Preview1`); a run granted a
//! writable mount runs the adapted component, whose filesystem calls pass the mounts' write
//! quotas. Bundles name the module; the adapted component is derived (the same adapter, the same
//! bytes) and cached under the module's digest (`cache.rs`).

use crate::error::LoadError;
use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER;

/// The import module name of WASI preview 1.
pub(crate) const PREVIEW1: &str = "wasi_snapshot_preview1";

/// Whether `module` (a core module) imports anything from `wasi_snapshot_preview1`.
pub(crate) fn imports_preview1(module: &[u8]) -> bool {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        match payload {
            Ok(wasmparser::Payload::ImportSection(reader)) => {
                return reader.into_imports().any(|import| import.is_ok_and(|i| i.module == PREVIEW1));
            }
            // Imports come before code: past them there are none.
            Ok(wasmparser::Payload::CodeSectionStart { .. }) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    false
}

/// The command component wrapping the preview-1 `module`.
pub(crate) fn adapt_preview1(module: &[u8]) -> Result<Vec<u8>, LoadError> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .map_err(adapt_error)?
        .adapter(PREVIEW1, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER)
        .map_err(adapt_error)?
        .validate(true)
        .encode()
        .map_err(adapt_error)
}

fn adapt_error(error: impl std::fmt::Display) -> LoadError {
    LoadError::Adapt(format!("{error:#}"))
}
