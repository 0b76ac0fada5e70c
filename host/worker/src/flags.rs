//! The tool records (flags) a worker checks before it runs a job: read from Redis, refreshed when
//! their generation counter moved and at most every [`FLAGS_REFRESH`], so a tool the operator
//! switched off stops running on every worker within a second — jobs already queued included.

use guild_queue::RedisQueue;
use guild_vocab::{Disabled, ToolRecord};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a worker trusts the tool records it read.
pub(crate) const FLAGS_REFRESH: Duration = Duration::from_millis(250);

/// The tool records as last read from Redis.
pub(crate) struct Flags {
    state: Mutex<State>,
}

struct State {
    generation: Option<u64>,
    checked: Option<Instant>,
    records: HashMap<String, ToolRecord>,
}

impl Flags {
    /// Nothing read yet.
    pub(crate) fn new() -> Self {
        Self { state: Mutex::new(State { generation: None, checked: None, records: HashMap::new() }) }
    }

    /// Why `tool` must not run for `tenant`, if the operator switched it off. Redis unreachable
    /// keeps the last records read (the job itself then cannot complete either).
    pub(crate) async fn disabled(&self, queue: &RedisQueue, tool: &str, tenant: &str) -> Option<Disabled> {
        let mut state = self.state.lock().await;
        if state.checked.is_none_or(|at| at.elapsed() >= FLAGS_REFRESH) {
            state.checked = Some(Instant::now());
            if let Ok(generation) = queue.tools_generation().await
                && state.generation != Some(generation)
            {
                match queue.tool_records().await {
                    Ok(records) => {
                        state.records = records.into_iter().map(|r| (r.name.clone(), r)).collect();
                        state.generation = Some(generation);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the tool records; keeping the last ones"),
                }
            }
        }
        state.records.get(tool).and_then(|r| r.disabled_for(tenant)).cloned()
    }
}
