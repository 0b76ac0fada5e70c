//! guild-server: the daemon. Tenants call registered tools over HTTP and MCP; every run goes through
//! the same pipeline as `guild run` (grants, limits, recording), behind tenant admission
//! (token-bucket rate limit, concurrency cap, fuel budget) and a bounded queue, and leaves a
//! signed bundle and a hash-chained, fsynced audit record (written through `guild-audit`).
//!
//! Modules: `config` (the TOML file and its `GUILD_*` overrides), `tenants`, `registry` (tools,
//! schemas), `runs` (the run table and idempotency keys), `metrics`, `daemon` (state,
//! the run pipeline, who may see what), `auth` (who is calling, before the body is read, for
//! REST and MCP), `api` (routes, error bodies), `drain` (the shutdown token the daemon's loops
//! share), `bundles` (serving bundles to their owners), `http` (the bounded listener),
//! `descriptors` (the descriptor budget), `jsonrpc` (one answer per MCP frame), `mcp` (the Model
//! Context Protocol server over the same pipeline) with `mcp_stdio` and `mcp_http` (its
//! transports), `remote` (the API node's side of Redis; the worker is `guild-worker`), `rollout` (revisions,
//! the replay gate, canary ramps, shadow runs, rollback and flags, kept in a file or Redis), `start`
//! (assembly and graceful shutdown), `fuzz` (entry points for cargo-fuzz and seeded mutation
//! tests).

mod api;
mod api_cache;
mod api_error;
mod api_tools;
mod auth;
mod bundles;
pub mod cache;
pub mod config;
pub mod console;
mod daemon;
pub mod descriptors;
mod drain;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
mod jsonrpc;
mod mcp;
mod mcp_http;
mod mcp_resources;
mod mcp_shapes;
mod mcp_stdio;
mod mcp_tasks;
mod metrics;
pub mod oauth;
mod openmetrics;
mod principal;
pub mod registry;
mod reload;
mod remote;
pub mod rollout;
mod runs;
mod start;
mod tenants;
pub mod usage;

pub use api::{OPENAPI_JSON, router};
pub use daemon::{Daemon, Rejection, RunRequest, Submitted};
pub use guild_queue::RunQueue;
pub use http::serve;
pub use mcp::{GuildMcp, PROGRESS_INTERVAL_MS, serve_stdio};
pub use mcp_resources::{BUNDLE_URI_PREFIX, MCP_BUNDLE_BLOB_BYTES_MAX, MCP_RESOURCES_PAGE_MAX};
pub use mcp_shapes::mcp_tool;
pub use mcp_tasks::{TASK_META_KEY, TASK_POLL_INTERVAL_MS};
pub use metrics::Metrics;
pub use remote::{REMOTE_WAITERS_MAX, Remote};
pub use runs::{RunTable, new_run_id};
pub use start::{DaemonParts, DaemonSetup, StartError, host_name, run, shared_store, start};
pub use tenants::{TENANT_REQUESTS_MAX_DEFAULT, Tenant, ToolAccess};
