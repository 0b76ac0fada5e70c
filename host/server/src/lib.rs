//! guild-server: the daemon's HTTP API over the same run pipeline `guild run` uses. Runs are
//! recorded into the host's store; any client holding a bearer token can run a registered tool,
//! read its result and fetch its bundle.
//!
//! Routes: `GET /healthz`, `GET /v1/tools`, `POST /v1/runs`, `GET /v1/runs/{id}` (the run id is
//! its bundle id), `GET /v1/bundles/{id}`. Every error
//! is a JSON body `{"error": {"code", "message"}}` with its status.

mod api;

pub use api::{ServerConfig, ServerError, router, serve};
