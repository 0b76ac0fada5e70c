//! `guild mcp`: the daemon's run pipeline served to one MCP client over stdio. The client
//! launched this process, so there is no token: calls are made as one local tenant (or the
//! config's `--tenant`). Stdout carries only the protocol; logs go to stderr.

use crate::args::{Global, McpArgs};
use crate::exit::{Exit, Failure};
use crate::run_cmd::home_dir;
use crate::serve_cmd::{extra_tools, new_token, open_runtime, start_config};
use guild_server::{DaemonSetup, Tenant};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Most `guild mcp` processes sharing one home at once (each keeps its own audit log).
const SESSIONS_MAX: usize = 64;

pub(crate) fn mcp(global: &Global, args: McpArgs) -> Result<Exit, Failure> {
    let home = home_dir(global)?;
    let config = start_config(args.config.as_deref())?;
    let (state_dir, _lock) = session_state(&config.state.clone().unwrap_or_else(|| home.clone()).join("mcp"))?;
    // Nobody presents this token: the stdio client is trusted as the process's launcher.
    let default_token = if config.tenants.is_empty() { Some(new_token()?) } else { None };
    let (runtime, store) = open_runtime(global, &config, &home)?;
    let extra_tools = extra_tools(&args.tools, args.config.is_none());
    let drain = Duration::from_millis(config.queue.drain_timeout_ms);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::host(format!("cannot start the async runtime: {e}")))?;
    tokio.block_on(async {
        let setup = DaemonSetup { config, runtime, store, state_dir, default_token, extra_tools };
        let daemon = guild_server::start(setup).await.map_err(|e| Failure::usage(e.to_string()))?.daemon;
        let tenant = pick_tenant(&daemon.tenants(), args.tenant.as_deref())?;
        let tools: Vec<String> = daemon.tools().all().iter().map(|t| t.name.clone()).collect();
        tracing::info!(tenant = %tenant.name, tools = ?tools, "serving MCP on stdio");
        let served = guild_server::serve_stdio(daemon.clone(), tenant).await;
        let drained =
            daemon.drain(drain).await.map_err(|e| Failure::host(format!("bundles could not be written: {e}")))?;
        served.map_err(|e| Failure::host(e.to_string()))?;
        if !drained {
            tracing::warn!("the drain deadline passed with runs still queued or running");
        }
        Ok(Exit::Success)
    })
}

fn pick_tenant(tenants: &[Arc<Tenant>], name: Option<&str>) -> Result<Arc<Tenant>, Failure> {
    match (name, tenants) {
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(Failure::usage("the config has several tenants; choose one with --tenant NAME")),
        (Some(name), _) => tenants
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or_else(|| Failure::usage(format!("the config has no tenant named {name:?}"))),
    }
}

/// A state directory of its own under `root` (`session-N`, held by a lock for the process's
/// life), so that MCP clients running several `guild mcp` at once never interleave one audit log.
fn session_state(root: &Path) -> Result<(PathBuf, File), Failure> {
    for n in 0..SESSIONS_MAX {
        let dir = root.join(format!("session-{n}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::host(format!("cannot create the state directory {}: {e}", dir.display())))?;
        let lock = File::create(dir.join("lock"))
            .map_err(|e| Failure::host(format!("cannot create {}: {e}", dir.join("lock").display())))?;
        if lock.try_lock().is_ok() {
            return Ok((dir, lock));
        }
    }
    Err(Failure::host(format!(
        "{SESSIONS_MAX} guild mcp processes already use {}; stop one or set another GUILD_HOME",
        root.display()
    )))
}
