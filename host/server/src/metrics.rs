//! Prometheus metrics for `GET /metrics`: runs by tool, tenant and outcome; run duration and
//! fuel; the queue; rejections; egress decisions; GPU time; bundle bytes; the audit log; build
//! information. Names follow Prometheus conventions (base units, `_total` counters).

use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the daemon exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// The result cache's series.
    pub cache: CacheMetrics,
    /// `guild_runs_total`: finished runs by tool, revision, tenant and outcome.
    pub runs: IntCounterVec,
    /// Wall time of a run (queue wait excluded), by tool and revision.
    pub run_seconds: HistogramVec,
    /// `guild_shadow_runs_total`: candidate runs against a live call's tape, by tool and verdict
    /// (`identical`, `output_changed`, …, `skipped` when the shadow lane was full, `failed` when
    /// it could not run).
    pub shadow_runs: IntCounterVec,
    /// `guild_rollbacks_total`: candidates rolled back, by tool and trigger (`guard`, `admin`).
    pub rollbacks: IntCounterVec,
    /// `guild_rollout_ramp_ratio`: the share of calls a tool's candidate answers (0 to 1).
    pub rollout_ramp: GaugeVec,
    /// Time a run waited for a slot.
    pub queue_wait_seconds: Histogram,
    /// Fuel a run burnt, by tool and revision.
    pub run_fuel_units: HistogramVec,
    /// Runs waiting for a slot.
    pub queue_depth: IntGauge,
    /// `guild_runs_in_flight`: runs executing on this node now.
    pub runs_in_flight: IntGauge,
    /// `guild_runs_committing`: finished runs here whose audit record waits for the log's group
    /// commit (their slots already free).
    pub runs_committing: IntGauge,
    /// Runs refused before starting, by reason.
    pub rejections: IntCounterVec,
    /// Outgoing HTTP requests by decision (`attempted`, `refused`).
    pub egress: IntCounterVec,
    /// GPU time used by runs.
    pub gpu_seconds: CounterVec,
    /// What runs cost under `[pricing]`, by tenant, tool, resource and currency (the exact
    /// figures are in the answers and the audit log; Prometheus counts in floats).
    pub cost: CounterVec,
    /// LLM tokens runs used, by tenant, tool, upstream (the `[[pricing.llm]]` URL) and kind.
    pub tokens: IntCounterVec,
    /// Each configured budget, by tenant, budget (`tenant`, `tool:NAME`, `agent`: each agent's)
    /// and unit (`money` in `[pricing]`'s currency, or `tokens`): what burn-rate alerts divide by.
    pub budget_limit: GaugeVec,
    /// Each tenant's budget period, seconds.
    pub budget_period_seconds: IntGaugeVec,
    /// Bytes of sealed bundles.
    pub bundle_bytes: IntCounter,
    /// Audit records written.
    pub audit_records: IntCounter,
    /// API errors by code.
    pub api_errors: IntCounterVec,
    /// The shared Redis queue, read from Redis at each scrape (with `--redis`).
    pub redis: RedisMetrics,
    /// The Redis series' own registry, rendered only by a node that uses Redis (elsewhere
    /// `guild_redis_up` would read 0 and page).
    redis_registry: Option<Registry>,
    /// `guild_queue_depth_max`: this node's `queue.depth_max`, what `guild_queue_depth` fills.
    pub queue_depth_max: IntGauge,
    /// `guild_fuel_used_units_total`: fuel the tenant's runs burnt, the figure
    /// `tenants.fuel_budget_units` counts against.
    pub fuel_used: IntCounterVec,
    /// `guild_fuel_budget_units` and `guild_fuel_budget_period_seconds`: each tenant's fuel
    /// budget and its period (tenants that have one).
    pub fuel_budget: IntGaugeVec,
    /// See [`Metrics::fuel_budget`].
    pub fuel_budget_period_seconds: IntGaugeVec,
    /// `guild_egress_breaker_open{upstream}`: 1 while this process's breaker for the upstream
    /// refuses requests, else 0 (set at each scrape).
    pub breaker_open: IntGaugeVec,
    /// `guild_telemetry_spans_dropped_total`: spans that never reached the OTLP collector (a
    /// full export queue, a failed export); set at each scrape.
    pub spans_dropped: IntCounter,
    spans_dropped_sync: std::sync::Mutex<()>,
    /// The latest run whose trace was sampled, in each bucket of `guild_run_duration_seconds`,
    /// shown to an OpenMetrics scraper as exemplars.
    run_exemplars: std::sync::Mutex<crate::openmetrics::Exemplars>,
}

/// The Redis queue's state: gauges set from Redis when `/metrics` is scraped, so every API node
/// shows the same figures.
pub struct RedisMetrics {
    /// Jobs by state: `waiting` (not yet delivered), `pending` (held by a worker), `delayed`
    /// (backing off before a retry), `dead` (in the dead-letter stream).
    pub jobs: IntGaugeVec,
    /// Counts since the queue was created: `completed`, `claims` (taken over from dead
    /// workers), `retries`, `duplicates` (attempts that finished after another had).
    pub events: IntGaugeVec,
    /// Jobs each live worker completed since it started.
    pub worker_completed: IntGaugeVec,
    /// Jobs each live worker runs now.
    pub worker_running: IntGaugeVec,
    /// 1 while Redis answers, 0 while the circuit breaker refuses runs.
    pub up: IntGauge,
    /// Jobs finished per second across the fleet, between the last two scrapes.
    pub throughput: Gauge,
    /// Workers the queue needs: the slots busy now plus those that would drain the waiting
    /// jobs within `WORKERS_DRAIN_TARGET_S` at the mean job time (busy slots ÷ throughput,
    /// Little's law), over the live workers' mean slots; what an autoscaler follows.
    pub workers_needed: IntGauge,
    /// Per lane: jobs queued in it.
    pub lane_jobs: IntGaugeVec,
    /// Per lane: live workers that read it.
    pub lane_workers: IntGaugeVec,
    /// Per lane: jobs queued where no live worker reads the lane (they wait, naming it, rather
    /// than run degraded).
    pub waiting_for_capability: IntGaugeVec,
    /// Per lane: workers able to read it that would drain its queued jobs within
    /// `WORKERS_DRAIN_TARGET_S` at the fleet's mean job time (at least 1 while it has jobs).
    pub lane_workers_needed: IntGaugeVec,
    /// The last scrape's completed count, and when.
    last: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
    /// The mean job time last measured (busy slots ÷ throughput), s: used while nothing runs.
    mean_job_s: std::sync::Mutex<Option<f64>>,
}

/// How soon the workers an autoscaler is asked for should drain the waiting jobs, seconds.
pub(crate) const WORKERS_DRAIN_TARGET_S: f64 = 30.0;

impl RedisMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let jobs = IntGaugeVec::new(Opts::new("redis_queue_jobs", "Jobs in the Redis queue by state."), &["state"])?;
        let events = IntGaugeVec::new(
            Opts::new("redis_queue_events", "Queue events counted in Redis since the queue was created."),
            &["event"],
        )?;
        let worker_completed = IntGaugeVec::new(
            Opts::new("redis_worker_completed_jobs", "Jobs a live worker completed since it started."),
            &["worker"],
        )?;
        let worker_running =
            IntGaugeVec::new(Opts::new("redis_worker_running_jobs", "Jobs a live worker runs now."), &["worker"])?;
        let up = IntGauge::new("redis_up", "1 while Redis answers the daemon, 0 while runs are refused with 503.")?;
        for state in ["waiting", "pending", "delayed", "dead"] {
            jobs.with_label_values(&[state]);
        }
        for event in ["completed", "claims", "retries", "duplicates"] {
            events.with_label_values(&[event]);
        }
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(worker_completed.clone()))?;
        registry.register(Box::new(worker_running.clone()))?;
        registry.register(Box::new(up.clone()))?;
        let throughput =
            Gauge::new("redis_jobs_per_second", "Jobs finished per second across the fleet (between scrapes).")?;
        let workers_needed = IntGauge::new(
            "redis_workers_needed",
            "Workers the queue needs: busy slots plus those draining the waiting jobs within 30 s, over the mean slots per worker.",
        )?;
        registry.register(Box::new(throughput.clone()))?;
        registry.register(Box::new(workers_needed.clone()))?;
        let lane = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let gauge = IntGaugeVec::new(Opts::new(name, help), &["lane"])?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let lane_jobs = lane("redis_lane_jobs", "Jobs queued in a capability lane.")?;
        let lane_workers = lane("redis_lane_workers", "Live workers that read a capability lane.")?;
        let waiting_for_capability = lane(
            "redis_jobs_waiting_for_capability",
            "Jobs queued in a lane no live worker reads: they wait for a worker with what they need.",
        )?;
        let lane_workers_needed = lane(
            "redis_lane_workers_needed",
            "Workers able to read a lane that would drain its queued jobs within 30 s at the fleet's mean job time.",
        )?;
        Ok(Self {
            jobs,
            events,
            worker_completed,
            worker_running,
            up,
            throughput,
            workers_needed,
            lane_jobs,
            lane_workers,
            waiting_for_capability,
            lane_workers_needed,
            last: std::sync::Mutex::new(None),
            mean_job_s: std::sync::Mutex::new(None),
        })
    }

    /// Set every gauge from `stats`, read from Redis at scrape time, and mark Redis up; workers
    /// no longer in `stats` drop out.
    pub fn set(&self, stats: &guild_queue::QueueStats) {
        self.up.set(1);
        for (state, value) in
            [("waiting", stats.depth), ("pending", stats.pending), ("delayed", stats.delayed), ("dead", stats.dead)]
        {
            self.jobs.with_label_values(&[state]).set(value as i64);
        }
        for (event, value) in [
            ("completed", stats.completed),
            ("claims", stats.claims),
            ("retries", stats.retries),
            ("duplicates", stats.duplicates),
        ] {
            self.events.with_label_values(&[event]).set(value as i64);
        }
        // Only live workers: a restarted worker's old name goes away.
        self.worker_completed.reset();
        self.worker_running.reset();
        for worker in &stats.workers {
            self.worker_completed.with_label_values(&[&worker.name]).set(worker.completed as i64);
            self.worker_running.with_label_values(&[&worker.name]).set(worker.running as i64);
        }
        self.scaling(stats);
    }

    /// The throughput since the last scrape and the workers needed now.
    fn scaling(&self, stats: &guild_queue::QueueStats) {
        let now = std::time::Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            match *last {
                Some((at, completed)) if now.duration_since(at).as_secs_f64() >= 1.0 => {
                    let done = stats.completed.saturating_sub(completed) as f64;
                    self.throughput.set(done / now.duration_since(at).as_secs_f64());
                    *last = Some((now, stats.completed));
                }
                Some(_) => {}
                None => *last = Some((now, stats.completed)),
            }
        }
        let busy: u64 = stats.workers.iter().map(|w| w.running).sum();
        let throughput = self.throughput.get();
        // The mean job time, measured while jobs run and remembered while none does (workers
        // scaled to zero come back for a backlog at the last pace, not a slot per job).
        let mean_job_s = {
            let mut mean = self.mean_job_s.lock().unwrap_or_else(|p| p.into_inner());
            if throughput > 0.0 && busy > 0 {
                *mean = Some(busy as f64 / throughput);
            }
            *mean
        };
        // Each waiting job needs a slot for the mean job time; without a measured time yet, a
        // slot each.
        let waiting = stats.depth.saturating_add(stats.delayed) as f64;
        let for_waiting = match mean_job_s {
            Some(mean) => waiting * mean / WORKERS_DRAIN_TARGET_S,
            None => waiting,
        };
        let slots: u64 = stats.workers.iter().map(|w| w.slots.max(1)).sum();
        let per_worker = if stats.workers.is_empty() { 1.0 } else { slots as f64 / stats.workers.len() as f64 };
        let needed = ((busy as f64 + for_waiting) / per_worker).ceil();
        // Finite, at least 0 and at most a billion here, so the cast keeps it whole.
        #[allow(clippy::cast_possible_truncation)]
        let needed = if needed.is_finite() { needed.clamp(0.0, 1e9) as i64 } else { 0 };
        self.workers_needed.set(needed);
        // Per lane, the same estimate for its queued jobs alone (lanes that went away drop out).
        let mean_job_s = mean_job_s.unwrap_or(WORKERS_DRAIN_TARGET_S);
        for gauge in [&self.lane_jobs, &self.lane_workers, &self.waiting_for_capability, &self.lane_workers_needed] {
            gauge.reset();
        }
        for lane in &stats.lanes {
            let label = [lane.lane.as_str()];
            self.lane_jobs.with_label_values(&label).set(lane.depth as i64);
            self.lane_workers.with_label_values(&label).set(lane.workers as i64);
            let waiting = if lane.workers == 0 && lane.lane != guild_queue::DEFAULT_LANE { lane.depth } else { 0 };
            self.waiting_for_capability.with_label_values(&label).set(waiting as i64);
            let slots = (lane.depth as f64 * mean_job_s / WORKERS_DRAIN_TARGET_S / per_worker).ceil();
            #[allow(clippy::cast_possible_truncation)]
            let slots = if slots.is_finite() { slots.clamp(0.0, 1e9) as i64 } else { 0 };
            self.lane_workers_needed.with_label_values(&label).set(if lane.depth > 0 { slots.max(1) } else { 0 });
        }
    }
}

/// Every `reason` label of `guild_rejections_total`.
const REJECTION_REASONS: &[&str] = &[
    "rate_limited",
    "concurrency_limited",
    "fuel_budget_exhausted",
    "queue_full",
    "draining",
    "queue_unavailable",
    "tool_disabled",
];

/// Buckets for run wall time: 50 µs to ~30 s.
const RUN_SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// The result cache's series.
pub struct CacheMetrics {
    /// `guild_cache_requests_total`: calls of cached tools by tool and result (`hit`, `merged`,
    /// `stored`, `miss` — run and not stored — and `rejected`: an entry that failed its check).
    pub requests: IntCounterVec,
    /// `guild_cache_fuel_saved_units_total`: fuel the answered runs burnt once, not again.
    pub fuel_saved_units: IntCounterVec,
    /// `guild_cache_verify_total`: sampled hits replayed in the background, by tool and result
    /// (`match`, `mismatch`, and `skipped` when `CACHE_VERIFY_IN_FLIGHT_MAX` replays were already running).
    pub verify: IntCounterVec,
    /// `guild_cache_entries`: entries held, by tool (as of the last scrape).
    pub entries: IntGaugeVec,
    /// `guild_cache_bytes`: bytes of output held, by tool (as of the last scrape).
    pub bytes: IntGaugeVec,
}

impl CacheMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("cache_requests_total", "Calls of cached tools by tool and cache result."),
            &["tool", "result"],
        )?;
        let fuel_saved_units = IntCounterVec::new(
            Opts::new(
                "cache_fuel_saved_units_total",
                "Fuel not burnt again because a call was answered from the cache.",
            ),
            &["tool"],
        )?;
        let verify = IntCounterVec::new(
            Opts::new("cache_verify_total", "Sampled cache hits replayed in the background, by tool and result."),
            &["tool", "result"],
        )?;
        let entries = IntGaugeVec::new(Opts::new("cache_entries", "Result cache entries held, by tool."), &["tool"])?;
        let bytes =
            IntGaugeVec::new(Opts::new("cache_bytes", "Bytes of output the result cache holds, by tool."), &["tool"])?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(fuel_saved_units.clone()))?;
        registry.register(Box::new(verify.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        Ok(Self { requests, fuel_saved_units, verify, entries, bytes })
    }
}

impl Metrics {
    /// Runs refused before starting since the process began, summed over tenants, by reason,
    /// largest first (what the console's node summary shows).
    pub(crate) fn rejections_by_reason(&self) -> Vec<(String, u64)> {
        use prometheus::core::Collector;
        let mut by_reason = std::collections::BTreeMap::<String, u64>::new();
        for family in self.rejections.collect() {
            for metric in family.get_metric() {
                let reason = metric.get_label().iter().find(|l| l.name() == "reason").map(|l| l.value().to_string());
                // An integer counter's value, carried as a non-negative whole f64.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let count = metric.get_counter().get_value().max(0.0) as u64;
                *by_reason.entry(reason.unwrap_or_default()).or_default() += count;
            }
        }
        let mut sorted: Vec<_> = by_reason.into_iter().filter(|(_, n)| *n > 0).collect();
        sorted.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        sorted
    }

    /// Register every metric; `version` and `wasmtime` label the build-info gauge.
    ///
    /// # Errors
    /// The [`prometheus::Error`] when a metric's name, labels or help text is invalid or used
    /// twice: a mistake in this list, not something the environment can cause.
    pub fn new(version: &str, wasmtime: &str, redis: bool) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("guild".into()), None)?;
        let runs = IntCounterVec::new(
            Opts::new("runs_total", "Finished runs by tool, revision, tenant and outcome."),
            &["tool", "revision", "tenant", "outcome"],
        )?;
        let shadow_runs = IntCounterVec::new(
            Opts::new("shadow_runs_total", "Candidate runs against a live call's tape, by tool and verdict."),
            &["tool", "verdict"],
        )?;
        let rollbacks = IntCounterVec::new(
            Opts::new("rollbacks_total", "Candidates rolled back, by tool and trigger."),
            &["tool", "trigger"],
        )?;
        let rollout_ramp =
            GaugeVec::new(Opts::new("rollout_ramp_ratio", "Share of calls a tool's candidate answers."), &["tool"])?;
        let run_seconds = HistogramVec::new(
            HistogramOpts::new("run_duration_seconds", "Wall time of a run, instantiate to result.")
                .buckets(RUN_SECONDS_BUCKETS.to_vec()),
            &["tool", "revision"],
        )?;
        let queue_wait_seconds = Histogram::with_opts(
            HistogramOpts::new("queue_wait_seconds", "Time a run waited for a slot.")
                .buckets(RUN_SECONDS_BUCKETS.to_vec()),
        )?;
        let run_fuel_units = HistogramVec::new(
            HistogramOpts::new("run_fuel_units", "Fuel a run burnt (about one unit per wasm instruction).")
                .buckets(prometheus::exponential_buckets(1e4, 10.0, 8)?),
            &["tool", "revision"],
        )?;
        let queue_depth = IntGauge::new("queue_depth", "Runs waiting for a slot.")?;
        let runs_in_flight = IntGauge::new("runs_in_flight", "Runs executing now.")?;
        let runs_committing =
            IntGauge::new("runs_committing", "Finished runs whose audit record waits for the group commit.")?;
        let rejections = IntCounterVec::new(
            Opts::new("rejections_total", "Runs refused before starting, by tenant and reason."),
            &["tenant", "reason"],
        )?;
        let egress = IntCounterVec::new(
            Opts::new("egress_requests_total", "Outgoing HTTP requests of runs, by tool and decision."),
            &["tool", "decision"],
        )?;
        let gpu_seconds =
            CounterVec::new(Opts::new("gpu_seconds_total", "GPU time used by runs, by tool."), &["tool"])?;
        let bundle_bytes = IntCounter::new("bundle_bytes_total", "Bytes of sealed replay bundles.")?;
        let cost = CounterVec::new(
            Opts::new("cost_total", "What runs cost under [pricing], by tenant, tool, resource and currency."),
            &["tenant", "tool", "resource", "currency"],
        )?;
        registry.register(Box::new(cost.clone()))?;
        let tokens = IntCounterVec::new(
            Opts::new("tokens_total", "LLM tokens runs used, read from their recorded responses."),
            &["tenant", "tool", "upstream", "kind"],
        )?;
        registry.register(Box::new(tokens.clone()))?;
        let budget_limit = GaugeVec::new(
            Opts::new("budget_limit", "Each configured money or token budget per period (for burn-rate alerts)."),
            &["tenant", "budget", "unit"],
        )?;
        registry.register(Box::new(budget_limit.clone()))?;
        let budget_period_seconds =
            IntGaugeVec::new(Opts::new("budget_period_seconds", "Each tenant's budget period, seconds."), &["tenant"])?;
        registry.register(Box::new(budget_period_seconds.clone()))?;
        let audit_records = IntCounter::new("audit_records_total", "Records appended to the audit log.")?;
        let api_errors = IntCounterVec::new(Opts::new("api_errors_total", "API error responses by code."), &["code"])?;
        let build = IntGaugeVec::new(
            Opts::new("build_info", "Build information; the value is always 1."),
            &["version", "wasmtime"],
        )?;
        build.with_label_values(&[version, wasmtime]).set(1);
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(shadow_runs.clone()))?;
        registry.register(Box::new(rollbacks.clone()))?;
        registry.register(Box::new(rollout_ramp.clone()))?;
        registry.register(Box::new(run_seconds.clone()))?;
        registry.register(Box::new(queue_wait_seconds.clone()))?;
        registry.register(Box::new(run_fuel_units.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(runs_in_flight.clone()))?;
        registry.register(Box::new(runs_committing.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(egress.clone()))?;
        registry.register(Box::new(gpu_seconds.clone()))?;
        registry.register(Box::new(bundle_bytes.clone()))?;
        registry.register(Box::new(audit_records.clone()))?;
        registry.register(Box::new(api_errors.clone()))?;
        registry.register(Box::new(build))?;
        let redis_registry = Registry::new_custom(Some("guild".into()), None)?;
        let redis_metrics = RedisMetrics::new(&redis_registry)?;
        let cache = CacheMetrics::new(&registry)?;
        let queue_depth_max = IntGauge::new("queue_depth_max", "This node's queue.depth_max: runs that may wait.")?;
        registry.register(Box::new(queue_depth_max.clone()))?;
        let fuel_used = IntCounterVec::new(
            Opts::new("fuel_used_units_total", "Fuel the tenant's runs burnt (what fuel_budget_units counts)."),
            &["tenant"],
        )?;
        registry.register(Box::new(fuel_used.clone()))?;
        let fuel_budget = IntGaugeVec::new(
            Opts::new("fuel_budget_units", "Each tenant's fuel budget per period (tenants.fuel_budget_units)."),
            &["tenant"],
        )?;
        registry.register(Box::new(fuel_budget.clone()))?;
        let fuel_budget_period_seconds = IntGaugeVec::new(
            Opts::new("fuel_budget_period_seconds", "Each tenant's fuel budget period (tenants.fuel_budget_period_s)."),
            &["tenant"],
        )?;
        registry.register(Box::new(fuel_budget_period_seconds.clone()))?;
        let breaker_open = IntGaugeVec::new(
            Opts::new(
                "egress_breaker_open",
                "1 while this process's circuit breaker for an upstream refuses requests.",
            ),
            &["upstream"],
        )?;
        registry.register(Box::new(breaker_open.clone()))?;
        let spans_dropped =
            IntCounter::new("telemetry_spans_dropped_total", "Spans that never reached the OTLP collector.")?;
        registry.register(Box::new(spans_dropped.clone()))?;
        Ok(Self {
            redis: redis_metrics,
            redis_registry: redis.then_some(redis_registry),
            queue_depth_max,
            fuel_used,
            fuel_budget,
            fuel_budget_period_seconds,
            breaker_open,
            spans_dropped,
            spans_dropped_sync: std::sync::Mutex::new(()),
            run_exemplars: std::sync::Mutex::default(),
            cache,
            registry,
            runs,
            shadow_runs,
            rollbacks,
            rollout_ramp,
            run_seconds,
            queue_wait_seconds,
            run_fuel_units,
            queue_depth,
            runs_in_flight,
            runs_committing,
            rejections,
            egress,
            gpu_seconds,
            cost,
            tokens,
            budget_limit,
            budget_period_seconds,
            bundle_bytes,
            audit_records,
            api_errors,
        })
    }

    /// Count the tokens a run of `tool` for `tenant` used, per LLM upstream, in
    /// `guild_tokens_total`.
    pub fn count_tokens(&self, tenant: &str, tool: &str, tokens: &[(String, guild_replay::cost::TokenCount)]) {
        for (upstream, used) in tokens {
            for (kind, count) in [("input", used.input), ("output", used.output)] {
                if count > 0 {
                    self.tokens.with_label_values(&[tenant, tool, upstream, kind]).inc_by(count);
                }
            }
        }
    }

    /// Show `tenants`' budgets (and only theirs: a reloaded config's removed ones leave).
    pub fn show_budgets(&self, tenants: &[std::sync::Arc<crate::tenants::Tenant>]) {
        self.budget_limit.reset();
        self.budget_period_seconds.reset();
        self.fuel_budget.reset();
        self.fuel_budget_period_seconds.reset();
        for tenant in tenants {
            if let Some((units, period_s)) = tenant.fuel_budget() {
                self.fuel_budget.with_label_values(&[&tenant.name]).set(i64::try_from(units).unwrap_or(i64::MAX));
                let period = i64::try_from(period_s).unwrap_or(i64::MAX);
                self.fuel_budget_period_seconds.with_label_values(&[&tenant.name]).set(period);
            }
            let limits = tenant.budget_limits();
            if limits.is_empty() {
                continue;
            }
            let period = i64::try_from(tenant.budget_period_s()).unwrap_or(i64::MAX);
            self.budget_period_seconds.with_label_values(&[&tenant.name]).set(period);
            for (budget, unit, limit) in limits {
                self.budget_limit.with_label_values(&[tenant.name.as_str(), &budget, unit]).set(limit);
            }
        }
    }

    /// Count `cost` of a run of `tool` for `tenant` in `guild_cost_total` (Prometheus counts in
    /// floats; the exact figures are the answer's and the audit log's).
    pub fn count_cost(&self, tenant: &str, tool: &str, cost: &guild_replay::cost::Cost) {
        for line in &cost.lines {
            let amount = line.amount.0.to_string().parse::<f64>().unwrap_or(0.0);
            self.cost.with_label_values(&[tenant, tool, &line.resource, &cost.currency]).inc_by(amount);
        }
    }

    /// Start a cached tool's series at zero.
    pub fn register_cached_tool(&self, tool: &str) {
        for result in ["hit", "merged", "stored", "miss", "rejected"] {
            self.cache.requests.with_label_values(&[tool, result]);
        }
        self.cache.fuel_saved_units.with_label_values(&[tool]);
        self.cache.entries.with_label_values(&[tool]);
        self.cache.bytes.with_label_values(&[tool]);
    }

    /// Start a tool's series at zero (its current revision's), so dashboards show it before
    /// its first run.
    pub fn register_tool(&self, tool: &str, revision: u32) {
        for decision in ["attempted", "refused"] {
            self.egress.with_label_values(&[tool, decision]);
        }
        let revision = revision.to_string();
        self.gpu_seconds.with_label_values(&[tool]);
        self.run_seconds.with_label_values(&[tool, &revision]);
        self.run_fuel_units.with_label_values(&[tool, &revision]);
        self.rollout_ramp.with_label_values(&[tool]);
    }

    /// Start a tenant's rejection and fuel series at zero.
    pub fn register_tenant(&self, tenant: &str) {
        self.fuel_used.with_label_values(&[tenant]);
        for reason in REJECTION_REASONS {
            self.rejections.with_label_values(&[tenant, reason]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.families();
        let mut out = Vec::new();
        // Encoding into a Vec fails only on invalid metric names, which `new` rules out.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Observe a run of `tool`'s `revision` that took `seconds`, in `guild_run_duration_seconds`;
    /// with `trace_id` (a run whose trace is sampled), as its bucket's exemplar.
    pub fn observe_run(&self, (tool, revision): (&str, &str), seconds: f64, trace_id: Option<&str>) {
        self.run_seconds.with_label_values(&[tool, revision]).observe(seconds);
        if let Some(trace_id) = trace_id {
            let unix_s =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            let exemplar = crate::openmetrics::Exemplar { trace_id: trace_id.to_string(), value: seconds, unix_s };
            let mut kept = self.run_exemplars.lock().unwrap_or_else(|p| p.into_inner());
            kept.keep(&[("tool", tool), ("revision", revision)], RUN_SECONDS_BUCKETS, exemplar);
        }
    }

    /// [`Metrics::render`] as OpenMetrics text, with the runs' exemplars.
    pub fn render_openmetrics(&self) -> String {
        let families = self.families();
        let kept = self.run_exemplars.lock().unwrap_or_else(|p| p.into_inner());
        let exemplars = std::collections::HashMap::from([("guild_run_duration_seconds".to_string(), &*kept)]);
        crate::openmetrics::encode(&families, &exemplars)
    }

    /// Every family, the Redis series' with Redis, the dropped-span count brought up to date.
    fn families(&self) -> Vec<prometheus::proto::MetricFamily> {
        {
            // Two scrapes at once add the difference once.
            let _one = self.spans_dropped_sync.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = guild_telemetry::spans_dropped();
            self.spans_dropped.inc_by(dropped.saturating_sub(self.spans_dropped.get()));
        }
        let mut families = self.registry.gather();
        if let Some(redis) = &self.redis_registry {
            families.extend(redis.gather());
            families.sort_by(|a, b| a.name().cmp(b.name()));
        }
        families
    }

    /// Show which upstreams' breakers are open now (`upstreams`: every tracked one, with
    /// whether it is open); one no longer tracked leaves.
    pub fn show_breakers(&self, upstreams: &[(String, bool)]) {
        self.breaker_open.reset();
        for (upstream, open) in upstreams {
            self.breaker_open.with_label_values(&[upstream]).set(i64::from(*open));
        }
    }
}
