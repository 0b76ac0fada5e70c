//! Tenants: who a bearer token belongs to, which tools it may call, and how much it may run —
//! a token-bucket rate limit, a cap on runs at once, and a fuel budget per period. Tokens are
//! kept only as blake3 digests and compared in constant time.

use crate::config::TenantConfig;
use guild_queue::{BudgetLine, BudgetPlan, BudgetStore};
use guild_replay::Digest;
use guild_replay::cost::Price;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which tools a tenant may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolAccess {
    /// Every registered tool.
    All,
    /// Only these names.
    Named(Vec<String>),
}

impl ToolAccess {
    fn from_names(names: &[String]) -> Self {
        if names.iter().any(|n| n == "*") { Self::All } else { Self::Named(names.to_vec()) }
    }

    /// May `tool` be called?
    pub fn allows(&self, tool: &str) -> bool {
        match self {
            Self::All => true,
            Self::Named(names) => names.iter().any(|n| n == tool),
        }
    }
}

/// One tenant and its live counters.
#[derive(Debug)]
pub struct Tenant {
    /// Name in logs, metrics and the audit log.
    pub name: String,
    token: Option<blake3::Hash>,
    /// Tools it may call.
    pub tools: ToolAccess,
    /// May upload components.
    pub admin: bool,
    bucket: Mutex<TokenBucket>,
    concurrency_max: u32,
    running: AtomicU32,
    budget: Option<Mutex<FuelBudget>>,
    /// Its money and token budgets (the tenant's, its tools', each agent's).
    budgets: Budgets,
    /// HTTP requests of this tenant being served at once (one tenant cannot hold every
    /// connection, say by sending bodies slowly).
    requests: Arc<tokio::sync::Semaphore>,
    requests_max: usize,
    /// Its runs' priority when the request names none, and the most a request may name.
    pub priority: (u8, u8),
    /// Runs it takes per turn while other tenants wait.
    pub weight: u32,
    /// What the config said, so a reload keeps the state (buckets, budget) of an unchanged one.
    source: Option<TenantConfig>,
}

pub use crate::http::TENANT_REQUESTS_MAX_DEFAULT;

/// Why a tenant may not start a run now, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The token bucket is empty.
    RateLimited {
        /// When a token will be there.
        retry_after: Duration,
        /// The configured rate.
        rate_per_second: f64,
    },
    /// As many runs as its cap are queued or running.
    Concurrency {
        /// The tenant's cap on runs queued or running at once.
        concurrency_max: u32,
    },
    /// This period's fuel is spent (or reserved by runs in flight).
    FuelBudget {
        /// When the period ends.
        retry_after: Duration,
        /// The tenant's fuel budget per period, in fuel units.
        budget_units: u64,
    },
    /// This period's money is spent (or reserved by runs in flight) past what one more run of
    /// the tool could cost.
    /// A money or token budget (the tenant's, its tool's or its agent's) is spent, or the
    /// tenant has spent under as many agent labels as it may this period.
    Budget(guild_queue::Exhausted),
    /// A run-level limit (`[[run_limits]]`) would make the run wait past its bound.
    RunLimit(guild_vocab::egress::GateRefusal),
    /// A `[[run_limits]]` entry's `concurrency_max`: as many of its runs are in flight, and one
    /// did not end within its `wait_ms_max`.
    RunConcurrency(guild_vocab::egress::GateRefusal),
}

impl Refusal {
    /// Stable code for the API and the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::Concurrency { .. } => "concurrency_limited",
            Self::FuelBudget { .. } => "fuel_budget_exhausted",
            Self::Budget(_) => "budget_exhausted",
            Self::RunLimit(_) => "rate_limited",
            Self::RunConcurrency(_) => "concurrency_limited",
        }
    }

    /// Seconds for `Retry-After` (at least 1).
    pub fn retry_after_s(&self) -> u64 {
        match self {
            Self::Budget(exhausted) => exhausted.retry_after_s.max(1),
            Self::RunLimit(refused) | Self::RunConcurrency(refused) => refused.retry_after_ms.div_ceil(1000).max(1),
            Self::RateLimited { retry_after, .. } | Self::FuelBudget { retry_after, .. } => {
                // Whole seconds rounded up, at least one.
                (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1)
            }
            Self::Concurrency { .. } => 1,
        }
    }

    /// The message for the caller, saying what to change.
    pub fn message(&self, tenant: &str) -> String {
        match self {
            Self::RateLimited { rate_per_second, .. } => format!(
                "tenant {tenant} is over its rate limit of {rate_per_second} runs/s; retry later or raise \
                 tenants.rate_per_second / burst"
            ),
            Self::Concurrency { concurrency_max } => format!(
                "tenant {tenant} already has {concurrency_max} runs queued or running; wait for one or raise \
                 tenants.concurrency_max"
            ),
            Self::FuelBudget { budget_units, .. } => format!(
                "tenant {tenant} has used its fuel budget of {budget_units} units for this period; retry after the \
                 period or raise tenants.fuel_budget_units"
            ),
            Self::Budget(exhausted) => exhausted.message(tenant),
            Self::RunLimit(refused) | Self::RunConcurrency(refused) => refused.reason.clone(),
        }
    }
}

#[derive(Debug)]
struct TokenBucket {
    rate_per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_second).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate_per_second))
        }
    }
}

#[derive(Debug)]
struct FuelBudget {
    budget_units: u64,
    period: Duration,
    started: Instant,
    /// Fuel burnt this period plus fuel reserved by runs in flight.
    committed_units: u64,
}

impl FuelBudget {
    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.started) >= self.period {
            self.started = now;
            self.committed_units = 0;
        }
    }
}

/// A budget's limits: money per period (in `[pricing]`'s currency) and LLM tokens per period.
type Limits = (Option<Price>, Option<u64>);

/// A tenant's money and token budgets, as configured.
#[derive(Debug, Default)]
struct Budgets {
    period_s: u64,
    tenant: Limits,
    tools: BTreeMap<String, Limits>,
    agent: Limits,
    agents_max: u64,
}

impl Budgets {
    fn from_config(config: &TenantConfig) -> Self {
        // Parsed as validation parsed them (a budget that did not parse was refused there).
        let money = |m: &Option<String>| m.as_deref().and_then(|m| Price::parse(m).ok());
        Self {
            period_s: config.budget_period_s.max(1),
            tenant: (money(&config.cost_budget), config.token_budget),
            tools: config.tool_budgets.iter().map(|(tool, b)| (tool.clone(), (money(&b.cost), b.tokens))).collect(),
            agent: (money(&config.agent_cost_budget), config.agent_token_budget),
            agents_max: config.agents_max,
        }
    }
}

/// A started run's hold on its tenant: the concurrency slot, the fuel and the money it
/// reserved. Dropping it without [`Admission::settle`] refunds the whole reservation.
pub struct Admission {
    tenant: Arc<Tenant>,
    /// Fuel the run may burn: its limit, lowered to what is left of the budget.
    pub fuel_units: u64,
    /// The budgets it counts against, where they are kept, and what it reserved of them.
    budget: Option<(Arc<dyn BudgetStore>, BudgetPlan)>,
    /// The start of the fuel-budget period its fuel was reserved in.
    fuel_period: Option<Instant>,
    /// Its places under run limits' `concurrency_max`, given back when it ends.
    held: Option<guild_queue::Held>,
    settled: bool,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("tenant", &self.tenant.name)
            .field("fuel_units", &self.fuel_units)
            .field("budget", &self.budget.as_ref().map(|(_, plan)| plan))
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// Keep `held` (places under run limits' `concurrency_max`) until the run ends.
    pub fn hold(&mut self, held: Option<guild_queue::Held>) {
        self.held = held;
    }

    /// The run burnt `used` units and cost `cost` (`None`: not priced): keep those, refund the
    /// rest of the reservations. Its tokens' money was charged as their responses came in.
    pub fn settle(mut self, used: u64, cost: Option<&guild_replay::cost::Cost>) {
        self.tenant.refund((self.fuel_units, self.fuel_period), used);
        let spent = cost.map_or(Decimal::ZERO, guild_replay::cost::Cost::amount_besides_tokens);
        settle_budget(self.budget.take(), spent);
        self.settled = true;
    }

    /// The budgets the run counts against, for its token meter.
    pub fn budget(&self) -> Option<&(Arc<dyn BudgetStore>, BudgetPlan)> {
        self.budget.as_ref()
    }
}

/// Give back a budget reservation, keeping `spent`: at once in process (before the run's
/// answer, so the caller's next run sees it), on a task of its own when the store is remote (a
/// drop cannot wait).
fn settle_budget(budget: Option<(Arc<dyn BudgetStore>, BudgetPlan)>, spent: Decimal) {
    let Some((store, plan)) = budget else { return };
    let mut settle = Box::pin(async move {
        if let Err(e) = store.settle(&plan, spent).await {
            tracing::warn!(tenant = %plan.tenant, error = %e, "a run's budget reservation could not be settled");
        }
    });
    if futures_util::FutureExt::now_or_never(settle.as_mut()).is_some() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn(settle)),
        Err(_) => tracing::warn!("a run's budget reservation could not be settled: no runtime to wait on its store"),
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.settled {
            self.tenant.refund((self.fuel_units, self.fuel_period), 0);
            settle_budget(self.budget.take(), Decimal::ZERO);
        }
        self.tenant.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tenant {
    /// A tenant from its config entry (already validated).
    pub fn from_config(config: &TenantConfig) -> Self {
        let token = config.token_blake3.as_deref().and_then(|t| t.parse::<Digest>().ok());
        let now = Instant::now();
        Self {
            name: config.name.clone(),
            // No digest (an OAuth-only tenant), or an unparsable one (rejected by validation),
            // matches no token.
            token: token.map(|d| blake3::Hash::from(*d.as_bytes())),
            tools: ToolAccess::from_names(&config.tools),
            admin: config.admin,
            bucket: Mutex::new(TokenBucket {
                rate_per_second: config.rate_per_second,
                burst: f64::from(config.burst),
                tokens: f64::from(config.burst),
                last: now,
            }),
            concurrency_max: config.concurrency_max,
            running: AtomicU32::new(0),
            budget: config.fuel_budget_units.map(|budget_units| {
                Mutex::new(FuelBudget {
                    budget_units,
                    period: Duration::from_secs(config.fuel_budget_period_s),
                    started: now,
                    committed_units: 0,
                })
            }),
            budgets: Budgets::from_config(config),
            requests: Arc::new(tokio::sync::Semaphore::new(TENANT_REQUESTS_MAX_DEFAULT)),
            requests_max: TENANT_REQUESTS_MAX_DEFAULT,
            priority: (config.priority, config.priority_max.unwrap_or(config.priority).max(config.priority)),
            weight: config.weight,
            source: Some(config.clone()),
        }
    }

    /// Whether this tenant was made from exactly `config` with `requests_max` (a reloaded
    /// config that did not change it keeps this tenant, its buckets and budget).
    pub fn made_from(&self, config: &TenantConfig, requests_max: usize) -> bool {
        self.source.as_ref() == Some(config) && self.requests_max == requests_max.max(1)
    }

    /// Serve at most `requests_max` HTTP requests of this tenant at once.
    pub fn with_requests_max(mut self, requests_max: usize) -> Self {
        let requests_max = requests_max.max(1);
        self.requests = Arc::new(tokio::sync::Semaphore::new(requests_max));
        self.requests_max = requests_max;
        self
    }

    /// A place among this tenant's requests in flight, held while its request is served.
    ///
    /// # Errors
    /// A message naming the limit when the tenant has that many in flight.
    pub fn request_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, String> {
        self.requests.clone().try_acquire_owned().map_err(|_| {
            format!(
                "tenant {} has {} requests in flight already (http.tenant_requests_max); wait for one to finish",
                self.name, self.requests_max
            )
        })
    }

    /// Does `token` belong to this tenant? (Constant-time comparison of digests.)
    pub fn owns(&self, token_digest: &blake3::Hash) -> bool {
        self.token.as_ref() == Some(token_digest)
    }

    /// Take a rate-limit token, a concurrency slot and a fuel reservation of up to `fuel_units`.
    ///
    /// # Errors
    /// `Refusal::Concurrency` when `concurrency_max` runs of the tenant are queued or running;
    /// `Refusal::RateLimited` when its token bucket is empty and `Refusal::FuelBudget` when this
    /// period's fuel is spent or reserved, each with how long to wait.
    pub fn admit(self: &Arc<Self>, fuel_units: u64) -> Result<Admission, Refusal> {
        let now = Instant::now();
        let running = self.running.fetch_add(1, Ordering::AcqRel);
        // From here every early return must give the slot back: the Admission's drop does.
        let mut admission = Admission {
            tenant: self.clone(),
            fuel_units: 0,
            budget: None,
            fuel_period: None,
            held: None,
            settled: false,
        };
        if running >= self.concurrency_max {
            return Err(Refusal::Concurrency { concurrency_max: self.concurrency_max });
        }
        {
            let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(retry_after) = bucket.take(now) {
                return Err(Refusal::RateLimited { retry_after, rate_per_second: bucket.rate_per_second });
            }
        }
        admission.fuel_units = match &self.budget {
            None => fuel_units,
            Some(budget) => {
                let mut budget = budget.lock().unwrap_or_else(|p| p.into_inner());
                budget.roll(now);
                let left = budget.budget_units.saturating_sub(budget.committed_units);
                if left == 0 {
                    let retry_after = budget.period.saturating_sub(now.saturating_duration_since(budget.started));
                    return Err(Refusal::FuelBudget { retry_after, budget_units: budget.budget_units });
                }
                let reserved = fuel_units.min(left);
                budget.committed_units += reserved;
                admission.fuel_period = Some(budget.started);
                reserved
            }
        };
        Ok(admission)
    }

    /// Each configured budget as `(budget, unit, limit)`: budget `tenant`, `tool:NAME` or
    /// `agent` (each agent's), unit `money` or `tokens`; the limit as a float, for metrics.
    pub fn budget_limits(&self) -> Vec<(String, &'static str, f64)> {
        let b = &self.budgets;
        let named = [("tenant".to_string(), b.tenant), ("agent".to_string(), b.agent)];
        let tools = b.tools.iter().map(|(tool, limits)| (format!("tool:{tool}"), *limits));
        let mut shown = Vec::new();
        for (budget, (money, tokens)) in named.into_iter().chain(tools) {
            if let Some(money) = money {
                shown.push((
                    budget.clone(),
                    "money",
                    rust_decimal::prelude::ToPrimitive::to_f64(&money.0).unwrap_or(f64::MAX),
                ));
            }
            if let Some(tokens) = tokens {
                shown.push((budget, "tokens", tokens as f64));
            }
        }
        shown
    }

    /// Its fuel budget and that budget's period, seconds (`None` without one).
    pub fn fuel_budget(&self) -> Option<(u64, u64)> {
        let budget = self.budget.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
        Some((budget.budget_units, budget.period.as_secs()))
    }

    /// The period of its money and token budgets, seconds.
    pub fn budget_period_s(&self) -> u64 {
        self.budgets.period_s
    }

    /// The budgets a run of `tool` for `agent` counts against.
    fn lines(&self, tool: &str, agent: Option<&str>) -> Vec<BudgetLine> {
        let b = &self.budgets;
        let line = |key: String, (money, tokens): Limits, (m, t): (String, String)| {
            (money.is_some() || tokens.is_some()).then_some(BudgetLine { key, money, tokens, settings: (m, t) })
        };
        let named = |m: &str, t: &str| (m.to_string(), t.to_string());
        let mut lines = Vec::new();
        lines.extend(line("tenant".into(), b.tenant, named("tenants.cost_budget", "tenants.token_budget")));
        if let Some(limits) = b.tools.get(tool) {
            let base = format!("tenants.tool_budgets.{tool}");
            lines.extend(line(format!("tool:{tool}"), *limits, (format!("{base}.cost"), format!("{base}.tokens"))));
        }
        if let Some(agent) = agent {
            let settings = named("tenants.agent_cost_budget", "tenants.agent_token_budget");
            lines.extend(line(format!("agent:{agent}"), b.agent, settings));
        }
        lines
    }

    /// The budgets a run of `tool` for `agent` at `unix_s` counts against, holding `reserved`;
    /// `None` when it counts against none.
    pub fn plan_for(&self, (tool, agent): (&str, Option<&str>), reserved: Decimal, unix_s: u64) -> Option<BudgetPlan> {
        let lines = self.lines(tool, agent);
        if lines.is_empty() {
            return None;
        }
        // An agent's label counts against the bound only where it has budgets of its own.
        let counted = agent.filter(|_| self.budgets.agent.0.is_some() || self.budgets.agent.1.is_some());
        Some(BudgetPlan {
            tenant: self.name.clone(),
            period_s: self.budgets.period_s,
            period_start_unix_s: guild_queue::period_start(unix_s, self.budgets.period_s),
            lines,
            agent: counted.map(str::to_string),
            agents_max: self.budgets.agents_max,
            reserved: Price(reserved),
        })
    }

    /// Reserve what the run could cost at most (`worst_case`, priced only when one of its
    /// budgets is in money) of every budget a run of `tool` for `agent` counts against, in
    /// `store`, for `admission`'s run.
    ///
    /// # Errors
    /// `Refusal::Budget` when one would pass its limit, or the tenant has spent under
    /// `agents_max` other agent labels this period; the store's error when it cannot be reached.
    pub async fn reserve_budgets(
        &self,
        admission: &mut Admission,
        (tool, agent): (&str, Option<&str>),
        worst_case: impl FnOnce() -> Decimal,
        store: &Arc<dyn BudgetStore>,
    ) -> Result<Result<(), Refusal>, guild_queue::QueueError> {
        let Some(mut plan) = self.plan_for((tool, agent), Decimal::ZERO, guild_queue::now_unix_s()) else {
            return Ok(Ok(()));
        };
        if plan.lines.iter().any(|l| l.money.is_some()) {
            plan.reserved = Price(worst_case());
        }
        match store.reserve(&plan).await? {
            Ok(()) => {
                admission.budget = Some((store.clone(), plan));
                Ok(Ok(()))
            }
            Err(exhausted) => Ok(Err(Refusal::Budget(exhausted))),
        }
    }

    /// Give back a fuel reservation of `reserved` made in the period that started at `period`,
    /// keeping the `used` units. A reservation of an earlier period left with that period: the
    /// units burnt count in the period now running.
    fn refund(&self, (reserved, period): (u64, Option<Instant>), used: u64) {
        if let Some(budget) = &self.budget {
            let mut budget = budget.lock().unwrap_or_else(|p| p.into_inner());
            budget.roll(Instant::now());
            budget.committed_units = if period == Some(budget.started) {
                budget.committed_units.saturating_sub(reserved.saturating_sub(used))
            } else {
                budget.committed_units.saturating_add(used.min(reserved))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(rate: f64, burst: u32, concurrency: u32, budget: Option<u64>) -> Arc<Tenant> {
        Arc::new(Tenant::from_config(&TenantConfig {
            name: "t".into(),
            token_blake3: Some(Digest::of(b"secret").to_hex()),
            tools: vec!["wc".into()],
            admin: false,
            rate_per_second: rate,
            burst,
            concurrency_max: concurrency,
            fuel_budget_units: budget,
            fuel_budget_period_s: 3600,
            ..budgeted("1", 3600).source.clone().expect("made from a config")
        }))
    }

    async fn reserve(
        t: &Tenant,
        a: &mut Admission,
        worst: rust_decimal::Decimal,
        store: &Arc<dyn BudgetStore>,
    ) -> Result<(), Refusal> {
        t.reserve_budgets(a, ("wc", None), || worst, store).await.expect("in process")
    }

    #[tokio::test]
    async fn a_cost_budget_reserves_the_worst_case_keeps_the_cost_and_refuses_past_it() {
        use rust_decimal::Decimal;
        let store: Arc<dyn BudgetStore> = Arc::new(guild_queue::LocalBudgets::new());
        let t = tenant(1000.0, 1000, 10, None);
        let d = |s: &str| s.parse::<Decimal>().expect("decimal");
        let mut a = t.admit(1).expect("admitted");
        reserve(&t, &mut a, d("0.6"), &store).await.expect("0.6 of 1");
        let mut b = t.admit(1).expect("admitted");
        let refused = reserve(&t, &mut b, d("0.6"), &store).await.expect_err("0.6 + 0.6 > 1");
        assert_eq!(refused.code(), "budget_exhausted");
        assert!(refused.message("t").contains("tenants.cost_budget"), "{}", refused.message("t"));
        a.settle(1, Some(&cost("0.1"))); // 0.5 of the reservation comes back
        tokio::task::yield_now().await;
        reserve(&t, &mut b, d("0.6"), &store).await.expect("0.1 spent + 0.6 reserved");
        drop(b); // unsettled: all of it comes back
        tokio::task::yield_now().await;
        let mut c = t.admit(1).expect("admitted");
        reserve(&t, &mut c, d("0.9"), &store).await.expect("0.1 spent + 0.9");
    }

    fn cost(total: &str) -> guild_replay::cost::Cost {
        guild_replay::cost::Cost {
            currency: "USD".into(),
            total: Price::parse(total).expect("decimal"),
            lines: Vec::new(),
        }
    }

    fn budgeted(budget: &str, period_s: u64) -> Arc<Tenant> {
        Arc::new(Tenant::from_config(&TenantConfig {
            name: "t".into(),
            token_blake3: None,
            tools: vec!["*".into()],
            admin: false,
            rate_per_second: 1000.0,
            burst: 1000,
            concurrency_max: 10,
            fuel_budget_units: None,
            fuel_budget_period_s: 3600,
            cost_budget: Some(budget.into()),
            token_budget: None,
            budget_period_s: period_s,
            tool_budgets: BTreeMap::new(),
            agent_cost_budget: None,
            agent_token_budget: None,
            agents_max: 10,
            priority: guild_queue::PRIORITY_DEFAULT,
            priority_max: None,
            weight: 1,
        }))
    }

    #[test]
    fn a_fuel_reservation_of_an_ended_period_takes_nothing_back_from_the_next() {
        let t = Arc::new(Tenant::from_config(&TenantConfig {
            fuel_budget_units: Some(100),
            fuel_budget_period_s: 1,
            ..budgeted("1", 3600).source.clone().expect("made from a config")
        }));
        let first = t.admit(90).expect("90 of 100");
        std::thread::sleep(Duration::from_millis(1100));
        let _second = t.admit(90).expect("a new period");
        first.settle(10, None); // its 10 units count now; its old reservation left with its period
        assert_eq!(t.admit(1).expect_err("90 + 10 spent").code(), "fuel_budget_exhausted");
    }

    #[tokio::test]
    async fn a_cost_budget_holds_as_written_never_overflows_and_ends_with_its_period() {
        use rust_decimal::Decimal;
        let store: Arc<dyn BudgetStore> = Arc::new(guild_queue::LocalBudgets::new());
        // Written with spaces, as validation accepted it: still in force.
        let t = budgeted(" 0.5 ", 3600);
        let mut a = t.admit(1).expect("admitted");
        assert!(reserve(&t, &mut a, Decimal::ONE, &store).await.is_err(), "1 is past 0.5");
        // The largest amounts saturate instead of panicking.
        let store: Arc<dyn BudgetStore> = Arc::new(guild_queue::LocalBudgets::new());
        let t = budgeted("79228162514264337593543950335", 3600);
        for _ in 0..3 {
            let mut a = t.admit(1).expect("admitted");
            let _ = reserve(&t, &mut a, Decimal::MAX, &store).await;
            a.settle(1, Some(&cost("79228162514264337593543950335")));
            tokio::task::yield_now().await;
        }
        // A run reserved in one period and settled in the next takes nothing back from it.
        let store: Arc<dyn BudgetStore> = Arc::new(guild_queue::LocalBudgets::new());
        let t = budgeted("1", 1);
        let mut a = t.admit(1).expect("admitted");
        reserve(&t, &mut a, "0.9".parse().expect("decimal"), &store).await.expect("0.9 of 1");
        // Into the next period (periods of 1 s start on whole seconds).
        let now_ms = guild_queue::now_unix_ms();
        tokio::time::sleep(Duration::from_millis(1000 - now_ms % 1000 + 50)).await;
        let mut b = t.admit(1).expect("admitted");
        reserve(&t, &mut b, "0.9".parse().expect("decimal"), &store).await.expect("a new period");
        a.settle(1, Some(&cost("0.05")));
        tokio::task::yield_now().await;
        let mut c = t.admit(1).expect("admitted");
        // 0.9 reserved + 0.05 spent this period: 0.1 more would pass 1.
        assert!(reserve(&t, &mut c, "0.1".parse().expect("decimal"), &store).await.is_err());
    }

    #[test]
    fn token_digest_identifies_the_tenant() {
        let t = tenant(1.0, 1, 1, None);
        assert!(t.owns(&blake3::hash(b"secret")));
        assert!(!t.owns(&blake3::hash(b"guess")));
        assert!(t.tools.allows("wc") && !t.tools.allows("grep"));
    }

    #[test]
    fn bucket_allows_burst_then_refuses_with_a_wait() {
        let t = tenant(0.5, 2, 100, None);
        let a = t.admit(10).expect("first");
        let b = t.admit(10).expect("second");
        let refusal = t.admit(10).expect_err("third is over the burst");
        assert_eq!(refusal.code(), "rate_limited");
        assert!(refusal.retry_after_s() >= 1);
        drop((a, b));
    }

    #[test]
    fn concurrency_cap_counts_live_admissions() {
        let t = tenant(1000.0, 1000, 2, None);
        let a = t.admit(1).expect("one");
        let _b = t.admit(1).expect("two");
        assert_eq!(t.admit(1).expect_err("three").code(), "concurrency_limited");
        drop(a);
        t.admit(1).expect("a slot came back");
    }

    #[test]
    fn fuel_budget_reserves_caps_and_refunds() {
        let t = tenant(1000.0, 1000, 10, Some(100));
        let a = t.admit(70).expect("reserve 70");
        let b = t.admit(70).expect("only 30 left");
        assert_eq!(b.fuel_units, 30);
        assert_eq!(t.admit(1).expect_err("all reserved").code(), "fuel_budget_exhausted");
        a.settle(10, None); // 60 refunded
        b.settle(30, None);
        assert_eq!(t.admit(100).expect("60 left").fuel_units, 60);
    }
}
