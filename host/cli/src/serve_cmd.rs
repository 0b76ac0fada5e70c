//! `guild serve`: the daemon. Loads the given tools once, records every run into the store with
//! writes in the background, and serves the HTTP API until SIGTERM or Ctrl-C, then drains.

use crate::args::{Global, ServeArgs};
use crate::exit::{Exit, Failure};
use crate::run_cmd::{home_dir, host_key, store_dir};
use guild_replay::{Digest, DirStore, PENDING_BYTES_MAX_DEFAULT};
use guild_runtime::{EngineSettings, Limits, RecordingConfig, Runtime, RuntimeConfig};
use guild_server::ServerConfig;
use std::sync::Arc;

/// Largest request body the API accepts.
const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;

pub(crate) fn serve(global: &Global, args: ServeArgs) -> Result<Exit, Failure> {
    let token = bearer_token(global)?;
    let home = home_dir(global)?;
    let store = Arc::new(
        DirStore::open_write_behind(store_dir(global)?, PENDING_BYTES_MAX_DEFAULT)
            .map_err(|e| Failure::host(format!("cannot open the bundle store: {e}")))?,
    );
    let config = RuntimeConfig {
        cache_dir: Some(home.join("cache")),
        engine: EngineSettings::default(),
        recording: Some(RecordingConfig::new(store.clone(), Arc::new(host_key(global)?))),
        ..RuntimeConfig::default()
    };
    let runtime = Arc::new(Runtime::new(config).map_err(|e| Failure::host(e.to_string()))?);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::host(format!("cannot start the async runtime: {e}")))?;
    let result = tokio.block_on(async {
        let mut tools = Vec::new();
        for path in &args.tools {
            let (tool, _) = runtime
                .load_file(path)
                .await
                .map_err(|e| Failure::usage(format!("cannot register {}: {e}", path.display())))?;
            tools.push(tool);
        }
        let server = ServerConfig {
            token_digests: vec![Digest::of(token.as_bytes())],
            tools,
            limits: Limits::default(),
            egress: args.allow_hosts.clone(),
            request_bytes_max: REQUEST_BYTES_MAX,
        };
        let count = server.tools.len();
        let router = guild_server::router(server, runtime.clone(), store.clone());
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| Failure::usage(format!("cannot listen on {}: {e}", args.listen)))?;
        let addr = listener.local_addr().map_err(|e| Failure::host(e.to_string()))?;
        eprintln!("guild: serving {count} tools on http://{addr}");
        guild_server::serve(listener, router, shutdown_signal()).await.map_err(|e| Failure::host(e.to_string()))
    });
    store.flush().map_err(|e| Failure::host(format!("bundles could not be written: {e}")))?;
    result.map(|()| Exit::Success)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    eprintln!("guild: shutting down; finishing requests in flight");
}

/// `GUILD_TOKEN`, else the token kept under the home, else a new one (printed once).
fn bearer_token(global: &Global) -> Result<String, Failure> {
    if let Ok(token) = std::env::var("GUILD_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_string());
    }
    let path = home_dir(global)?.join("token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_string());
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| Failure::host(format!("no randomness for a token: {e}")))?;
    let token = Digest::from_bytes(secret).to_hex();
    write_private(&path, &token)
        .map_err(|e| Failure::host(format!("cannot keep the token in {}: {e}", path.display())))?;
    eprintln!("guild: generated an API token (kept in {}): {token}", path.display());
    Ok(token)
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}
