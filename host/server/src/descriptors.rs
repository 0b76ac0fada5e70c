//! File descriptors: the files a guest opens come out of the same per-process table as the
//! daemon's own listener, connections, Redis connections and store files. Each run's share is
//! bounded by its `wasi_resources_max`; at start the daemon (and a worker) raises its soft limit
//! to the hard one and checks that every run at its bound still leaves room for its own, so a
//! guest opening files can never stop the daemon from accepting a connection.

/// Descriptors kept for the process besides its client connections: the store's and the audit
/// log's files, Redis connections, the engine's and the runtime's own.
pub const DESCRIPTORS_RESERVED: u64 = 256;

/// What the process needs, and what it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Runs at once.
    pub runs: u64,
    /// WASI resources (hence at most descriptors) one run may hold.
    pub resources_per_run: u64,
    /// Client connections at once.
    pub connections: u64,
    /// Outgoing HTTP connections of all runs at once, idle pooled ones included.
    pub egress_connections: u64,
}

impl Budget {
    /// Descriptors the process may need at most.
    pub fn needed(&self) -> u64 {
        self.runs
            .saturating_mul(self.resources_per_run)
            .saturating_add(self.connections)
            .saturating_add(self.egress_connections)
            .saturating_add(DESCRIPTORS_RESERVED)
    }

    /// Check the budget against `limit` descriptors.
    ///
    /// # Errors
    /// A message naming the settings to change when it does not fit.
    pub fn check(&self, limit: u64) -> Result<(), String> {
        let needed = self.needed();
        if needed <= limit {
            return Ok(());
        }
        Err(format!(
            "file descriptors: {} runs × {} WASI resources + {} connections + {} outgoing connections + \
             {DESCRIPTORS_RESERVED} reserved = {needed}, more than this process may open ({limit}, `ulimit -n`); lower \
             queue.runs_in_flight_max (or --concurrency), the tools' limits.wasi_resources_max, http.connections_max \
             or egress_connections_max, or raise the limit",
            self.runs, self.resources_per_run, self.connections, self.egress_connections
        ))
    }
}

/// Raise this process's soft descriptor limit to its hard limit; returns the limit now in force.
///
/// # Errors
/// When the limits cannot be read.
pub fn raise_limit() -> Result<u64, String> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer to a local.
    #[allow(unsafe_code)]
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if read != 0 {
        return Err(format!("cannot read the descriptor limit: {}", std::io::Error::last_os_error()));
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads one `rlimit` through a valid pointer to a local.
        #[allow(unsafe_code)]
        let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
        if set == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_names_what_to_lower() {
        let budget = Budget { runs: 64, resources_per_run: 256, connections: 1024, egress_connections: 256 };
        assert_eq!(budget.needed(), 64 * 256 + 1024 + 256 + DESCRIPTORS_RESERVED);
        assert!(budget.check(20_000).is_ok());
        let error = budget.check(4096).expect_err("does not fit");
        assert!(error.contains("runs_in_flight_max") && error.contains("wasi_resources_max"), "{error}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        assert!(raise_limit().expect("readable") >= 1024);
    }
}
