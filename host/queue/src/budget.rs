//! Budgets in money and LLM tokens, per period: what a tenant, one of its tools or one of its
//! agents may spend before its next run is refused (429 `budget_exhausted`) and its running
//! runs' LLM requests are denied. Periods are aligned to the Unix epoch (a period of 3600 s
//! starts on the hour, UTC), so every node of a fleet agrees on when one ends.
//!
//! A run's [`BudgetPlan`] names the budgets it counts against and what it reserved. The API node
//! that admits a run reserves its worst case (its limits priced) before it starts and settles
//! the difference when it ends; a [`RunMeter`] charges its LLM tokens, and their price, as each
//! response comes in — on whichever machine runs it. The state lives in a [`BudgetStore`]: in
//! process ([`LocalBudgets`]) or in Redis, shared by the fleet ([`crate::RedisQueue`]).

use crate::QueueError;
use guild_replay::cost::{MeterFuture, Price, PriceTable, TokenMeter};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Default most agent labels one tenant may spend under in one budget period: a caller names
/// its agent freely, so their number is bounded (`tenants.agents_max`).
pub const AGENTS_MAX_DEFAULT: u64 = 100;
/// Longest agent label, bytes.
pub const AGENT_LABEL_BYTES_MAX: usize = 64;
/// Most tokens one LLM answer is charged (2^40): what an answer says past it is taken as this,
/// so no answer can overflow a budget's count.
pub const TOKENS_PER_ANSWER_MAX: u64 = 1 << 40;

/// Check a caller-supplied agent label: 1 to [`AGENT_LABEL_BYTES_MAX`] bytes of letters,
/// digits and `.`, `_`, `-`, `:`, `@`.
///
/// # Errors
/// A message saying what a label may hold.
pub fn check_agent_label(label: &str) -> Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= AGENT_LABEL_BYTES_MAX
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("agent label {label:?} is not 1 to {AGENT_LABEL_BYTES_MAX} letters, digits or any of . _ - : @"))
    }
}

/// One budget a run counts against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetLine {
    /// `tenant`, `tool:NAME` or `agent:LABEL`.
    pub key: String,
    /// Money per period, in the price table's currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub money: Option<Price>,
    /// LLM tokens (input and output together) per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// The settings that raise it, for the messages: money's and tokens'
    /// (`tenants.cost_budget`, `tenants.token_budget`).
    pub settings: (String, String),
}

/// The budgets one run counts against, and what it reserved of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetPlan {
    /// The tenant whose budgets they are.
    pub tenant: String,
    /// The budgets' period, seconds.
    pub period_s: u64,
    /// The start of the period the reservation was made in, seconds since the Unix epoch.
    pub period_start_unix_s: u64,
    /// The budgets, each with its limits.
    pub lines: Vec<BudgetLine>,
    /// The caller's agent label, counted against `agents_max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Most agent labels the tenant may spend under in one period.
    pub agents_max: u64,
    /// Money held back until the run settles: its worst case.
    pub reserved: Price,
}

/// A budget that refuses: which, and when the period ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// What is spent.
    pub spent: Spent,
    /// Seconds until the next period starts.
    pub retry_after_s: u64,
}

/// Which budget is spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spent {
    /// Money: spent plus reserved would pass `budget`.
    Money {
        /// The budget's key (`tenant`, `tool:NAME`, `agent:LABEL`).
        key: String,
        /// The budget, a decimal string.
        budget: String,
        /// The setting that raises it.
        setting: String,
    },
    /// Money: what one run could cost at most is more than the whole budget (waiting for the
    /// next period cannot help).
    TooSmall {
        /// The budget's key.
        key: String,
        /// The budget, a decimal string.
        budget: String,
        /// What the run reserves: its limits priced.
        worst_case: String,
        /// The setting that raises it.
        setting: String,
    },
    /// Tokens: `budget` are used.
    Tokens {
        /// The budget's key.
        key: String,
        /// The budget, tokens.
        budget: u64,
        /// The setting that raises it.
        setting: String,
    },
    /// The tenant has spent under `agents_max` other agent labels this period.
    Agents {
        /// The bound.
        agents_max: u64,
    },
}

impl Exhausted {
    /// What a caller or operator is told: the budget, whose it is, and what to change.
    pub fn message(&self, tenant: &str) -> String {
        let whose = |key: &str| match key.split_once(':') {
            Some(("tool", tool)) => format!("tool {tool}'s"),
            Some(("agent", agent)) => format!("agent {agent}'s"),
            _ => "the tenant's".to_string(),
        };
        let wait = self.retry_after_s;
        match &self.spent {
            Spent::Money { key, budget, setting } => format!(
                "tenant {tenant}: {} budget of {budget} for this period is spent (or reserved by runs in flight); \
                 the next period starts in {wait} s, or raise {setting}",
                whose(key)
            ),
            Spent::TooSmall { key, budget, worst_case, setting } => format!(
                "tenant {tenant}: a run of this tool could cost up to {worst_case} (its limits priced), more than \
                 {} whole budget of {budget} for a period; lower the tool's limits (fuel, timeout, memory, HTTP \
                 requests and bodies, recording bytes) or raise {setting}",
                whose(key)
            ),
            Spent::Tokens { key, budget, setting } => format!(
                "tenant {tenant}: {} token budget of {budget} tokens for this period is spent; the next period \
                 starts in {wait} s, or raise {setting}",
                whose(key)
            ),
            Spent::Agents { agents_max } => format!(
                "tenant {tenant} has spent under {agents_max} agent labels this period; reuse one, wait {wait} s \
                 for the next period, or raise tenants.agents_max"
            ),
        }
    }
}

/// The start of the period of `period_s` seconds that `now_unix_s` falls in.
pub fn period_start(now_unix_s: u64, period_s: u64) -> u64 {
    let period_s = period_s.max(1);
    now_unix_s - now_unix_s % period_s
}

/// Seconds since the Unix epoch.
pub fn now_unix_s() -> u64 {
    crate::now_unix_ms() / 1000
}

impl BudgetPlan {
    /// Seconds until the period now running ends.
    pub fn retry_after_s(&self, now_unix_s: u64) -> u64 {
        period_start(now_unix_s, self.period_s) + self.period_s.max(1) - now_unix_s
    }

    fn exhausted(&self, spent: Spent) -> Exhausted {
        Exhausted { spent, retry_after_s: self.retry_after_s(now_unix_s()) }
    }

    fn money_spent(&self, line: &BudgetLine) -> Spent {
        if line.money.is_some_and(|limit| self.reserved.0 > limit.0) {
            return Spent::TooSmall {
                key: line.key.clone(),
                budget: line.money.map(|m| m.0.normalize().to_string()).unwrap_or_default(),
                worst_case: self.reserved.0.normalize().to_string(),
                setting: line.settings.0.clone(),
            };
        }
        Spent::Money {
            key: line.key.clone(),
            budget: line.money.map(|m| m.0.normalize().to_string()).unwrap_or_default(),
            setting: line.settings.0.clone(),
        }
    }

    fn tokens_spent(&self, line: &BudgetLine) -> Spent {
        Spent::Tokens {
            key: line.key.clone(),
            budget: line.tokens.unwrap_or_default(),
            setting: line.settings.1.clone(),
        }
    }

    /// The line with `key`, for a store's answer naming it.
    pub(crate) fn spent_of(&self, kind: &str, key: &str) -> Spent {
        match (kind, self.lines.iter().find(|l| l.key == key)) {
            ("money", Some(line)) => self.money_spent(line),
            ("tokens", Some(line)) => self.tokens_spent(line),
            _ => Spent::Agents { agents_max: self.agents_max },
        }
    }

    /// How long a store keeps a period's state, seconds.
    pub(crate) fn ttl_s(&self) -> u64 {
        // A period's state outlives it by one more period: a run reserved in it may settle in
        // the next.
        self.period_s.max(1).saturating_mul(2).saturating_add(60)
    }
}

/// Where budgets' state lives: spent and reserved money and used tokens per budget and period,
/// and the agent labels a tenant spent under.
pub trait BudgetStore: Send + Sync {
    /// Reserve `plan.reserved` against each of its budgets, in the period now running (its
    /// `period_start_unix_s`), and count its agent.
    ///
    /// # Errors
    /// The outer error when the store cannot be reached; the inner `Exhausted` when a budget
    /// would pass its limit (nothing is then reserved).
    fn reserve<'a>(&'a self, plan: &'a BudgetPlan) -> MeterFuture<'a, Result<Result<(), Exhausted>, QueueError>>;

    /// The run ended having cost `spent` beyond what its meter charged: give back its reservation
    /// (in its period, if that still exists) and keep `spent` in the period now running.
    ///
    /// # Errors
    /// When the store cannot be reached.
    fn settle<'a>(&'a self, plan: &'a BudgetPlan, spent: Decimal) -> MeterFuture<'a, Result<(), QueueError>>;

    /// Charge `tokens` and `money` to each of the plan's budgets in the period now running.
    ///
    /// # Errors
    /// When the store cannot be reached.
    fn spend<'a>(
        &'a self,
        plan: &'a BudgetPlan,
        tokens: u64,
        money: Decimal,
    ) -> MeterFuture<'a, Result<(), QueueError>>;

    /// Whether every budget of the plan still has room, in the period now running: tokens used
    /// below the limit, money spent and reserved not past it.
    ///
    /// # Errors
    /// As [`BudgetStore::reserve`].
    fn check<'a>(&'a self, plan: &'a BudgetPlan) -> MeterFuture<'a, Result<Result<(), Exhausted>, QueueError>>;
}

/// One tenant's state in one period.
#[derive(Debug, Default)]
struct Period {
    money: HashMap<String, Decimal>,
    tokens: HashMap<String, u64>,
    agents: HashSet<String>,
}

/// Budgets kept in this process (one API node, no Redis). Holds, per tenant, the period now
/// running and the one before (a run reserved in it may still settle): at most tenants × 2 ×
/// (1 + tools + `agents_max`) entries.
#[derive(Debug, Default)]
pub struct LocalBudgets {
    periods: Mutex<HashMap<(String, u64), Period>>,
}

impl LocalBudgets {
    /// No budget spent yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<(String, u64), Period>) -> T) -> T {
        let mut periods = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut periods)
    }

    /// Count a run that finished in the period now running — read back from the audit log at
    /// start — as spent: `tokens` and `money` against each of `plan`'s budgets, and its agent.
    pub fn restore(&self, plan: &BudgetPlan, tokens: u64, money: Decimal) {
        self.with(|periods| {
            let period = periods.entry((plan.tenant.clone(), plan.period_start_unix_s)).or_default();
            for line in &plan.lines {
                let used = period.tokens.entry(line.key.clone()).or_default();
                *used = used.saturating_add(tokens);
                let spent = period.money.entry(line.key.clone()).or_default();
                *spent = spent.saturating_add(money);
            }
            if let Some(agent) = &plan.agent
                && (period.agents.len() as u64) < plan.agents_max
            {
                period.agents.insert(agent.clone());
            }
        });
    }

    fn reserve_now(&self, plan: &BudgetPlan) -> Result<(), Exhausted> {
        let now = plan.period_start_unix_s;
        let period_s = plan.period_s.max(1);
        self.with(|periods| {
            // Periods before the one before this leave.
            periods.retain(|(tenant, start), _| tenant != &plan.tenant || start.saturating_add(period_s) >= now);
            let period = periods.entry((plan.tenant.clone(), now)).or_default();
            if let Some(agent) = &plan.agent
                && !period.agents.contains(agent)
                && period.agents.len() as u64 >= plan.agents_max
            {
                return Err(plan.exhausted(Spent::Agents { agents_max: plan.agents_max }));
            }
            for line in &plan.lines {
                let money = period.money.get(&line.key).copied().unwrap_or_default();
                if line.money.is_some_and(|limit| money.saturating_add(plan.reserved.0) > limit.0) {
                    return Err(plan.exhausted(plan.money_spent(line)));
                }
                let tokens = period.tokens.get(&line.key).copied().unwrap_or_default();
                if line.tokens.is_some_and(|limit| tokens >= limit) {
                    return Err(plan.exhausted(plan.tokens_spent(line)));
                }
            }
            for line in &plan.lines {
                let money = period.money.entry(line.key.clone()).or_default();
                *money = money.saturating_add(plan.reserved.0);
            }
            if let Some(agent) = &plan.agent {
                period.agents.insert(agent.clone());
            }
            Ok(())
        })
    }

    fn settle_now(&self, plan: &BudgetPlan, spent: Decimal) {
        let current = period_start(now_unix_s(), plan.period_s);
        self.with(|periods| {
            if let Some(reserved_in) = periods.get_mut(&(plan.tenant.clone(), plan.period_start_unix_s)) {
                for line in &plan.lines {
                    if let Some(money) = reserved_in.money.get_mut(&line.key) {
                        *money = money.saturating_sub(plan.reserved.0).max(Decimal::ZERO);
                    }
                }
            }
            let period = periods.entry((plan.tenant.clone(), current)).or_default();
            for line in &plan.lines {
                let money = period.money.entry(line.key.clone()).or_default();
                *money = money.saturating_add(spent);
            }
        });
    }

    fn spend_now(&self, plan: &BudgetPlan, tokens: u64, spent: Decimal) {
        let current = period_start(now_unix_s(), plan.period_s);
        self.with(|periods| {
            let period = periods.entry((plan.tenant.clone(), current)).or_default();
            for line in &plan.lines {
                let used = period.tokens.entry(line.key.clone()).or_default();
                *used = used.saturating_add(tokens);
                let money = period.money.entry(line.key.clone()).or_default();
                *money = money.saturating_add(spent);
            }
        });
    }

    fn check_now(&self, plan: &BudgetPlan) -> Result<(), Exhausted> {
        let current = period_start(now_unix_s(), plan.period_s);
        self.with(|periods| {
            let Some(period) = periods.get(&(plan.tenant.clone(), current)) else { return Ok(()) };
            for line in &plan.lines {
                let money = period.money.get(&line.key).copied().unwrap_or_default();
                if line.money.is_some_and(|limit| money > limit.0) {
                    return Err(plan.exhausted(plan.money_spent(line)));
                }
                let tokens = period.tokens.get(&line.key).copied().unwrap_or_default();
                if line.tokens.is_some_and(|limit| tokens >= limit) {
                    return Err(plan.exhausted(plan.tokens_spent(line)));
                }
            }
            Ok(())
        })
    }
}

impl BudgetStore for LocalBudgets {
    fn reserve<'a>(&'a self, plan: &'a BudgetPlan) -> MeterFuture<'a, Result<Result<(), Exhausted>, QueueError>> {
        Box::pin(async move { Ok(self.reserve_now(plan)) })
    }

    fn settle<'a>(&'a self, plan: &'a BudgetPlan, spent: Decimal) -> MeterFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.settle_now(plan, spent);
            Ok(())
        })
    }

    fn spend<'a>(
        &'a self,
        plan: &'a BudgetPlan,
        tokens: u64,
        money: Decimal,
    ) -> MeterFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            self.spend_now(plan, tokens, money);
            Ok(())
        })
    }

    fn check<'a>(&'a self, plan: &'a BudgetPlan) -> MeterFuture<'a, Result<Result<(), Exhausted>, QueueError>> {
        Box::pin(async move { Ok(self.check_now(plan)) })
    }
}

/// One live run's token meter: it marks each request to one of `pricing`'s LLM upstreams (whose
/// answer must then come uncompressed, and say its usage where the table requires it); with a
/// plan, it asks the store before each whether the run's budgets have room, and charges the
/// tokens each answer says, and their price, to every one of them.
pub struct RunMeter {
    store: Arc<dyn BudgetStore>,
    plan: Option<BudgetPlan>,
    pricing: Arc<PriceTable>,
}

impl RunMeter {
    /// A meter for the run `plan` is for (none: a run counting against no budget), pricing
    /// tokens with `pricing`.
    pub fn new(store: Arc<dyn BudgetStore>, plan: Option<BudgetPlan>, pricing: Arc<PriceTable>) -> Self {
        Self { store, plan, pricing }
    }
}

impl TokenMeter for RunMeter {
    fn admit<'a>(&'a self, url: &'a str) -> MeterFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            if !self.pricing.llm.iter().any(|llm| llm.matches(url)) {
                return Ok(false);
            }
            let Some(plan) = &self.plan else { return Ok(true) };
            match self.store.check(plan).await {
                Ok(Ok(())) => Ok(true),
                Ok(Err(exhausted)) => Err(exhausted.message(&plan.tenant)),
                // Fails closed: a budget that cannot be read is not known to have room.
                Err(e) => Err(format!("the budgets of tenant {} cannot be checked: {e}", plan.tenant)),
            }
        })
    }

    fn spent<'a>(&'a self, url: &'a str, status: u16, body: &'a [u8]) -> MeterFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(llm) = self.pricing.llm.iter().find(|llm| llm.matches(url)) else { return Ok(()) };
            if llm.usage_required && (200..300).contains(&status) && !llm.reports_usage(body) {
                return Err(format!(
                    "the answer of LLM upstream {} says no token usage, which its price table requires \
                     (usage_required); ask for it (a stream: stream_options.include_usage)",
                    llm.url
                ));
            }
            let Some(plan) = &self.plan else { return Ok(()) };
            let used = llm.count(body);
            let tokens = used.input.saturating_add(used.output).min(TOKENS_PER_ANSWER_MAX);
            let money = Decimal::from(used.input)
                .saturating_mul(llm.input_token.0)
                .saturating_add(Decimal::from(used.output).saturating_mul(llm.output_token.0));
            if tokens == 0 && money.is_zero() {
                return Ok(());
            }
            if let Err(e) = self.store.spend(plan, tokens, money).await {
                tracing::warn!(tenant = %plan.tenant, error = %e, tokens, "an LLM response's tokens could not be charged to the budgets");
            }
            Ok(())
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn plan(lines: Vec<BudgetLine>, reserved: &str) -> BudgetPlan {
        BudgetPlan {
            tenant: "alice".into(),
            period_s: 3600,
            period_start_unix_s: period_start(now_unix_s(), 3600),
            lines,
            agent: None,
            agents_max: 2,
            reserved: Price::parse(reserved).expect("decimal"),
        }
    }

    pub(crate) fn line(key: &str, money: Option<&str>, tokens: Option<u64>) -> BudgetLine {
        BudgetLine {
            key: key.into(),
            money: money.map(|m| Price::parse(m).expect("decimal")),
            tokens,
            settings: (format!("{key}.budget"), format!("{key}.tokens")),
        }
    }

    #[test]
    fn periods_start_on_the_epochs_multiples() {
        assert_eq!(period_start(7_205, 3600), 7_200);
        assert_eq!(period_start(7_200, 3600), 7_200);
        let p = plan(Vec::new(), "0");
        assert_eq!(p.retry_after_s(7_205), 3595);
        assert_eq!(p.retry_after_s(7_200), 3600);
    }

    /// What every store must do: reserve, refuse past a budget, settle, charge tokens, bound
    /// agents. Run on the in-process store here and on Redis in `redis/money_tests.rs`.
    pub(crate) async fn scenarios(store: &dyn BudgetStore, tenant: &str) {
        let reserve = |plan: BudgetPlan| async move { store.reserve(&plan).await.expect("store") };
        let run = BudgetPlan {
            tenant: tenant.into(),
            ..plan(vec![line("tenant", Some("2.5"), None), line("tool:wc", Some("10"), None)], "1")
        };
        assert_eq!(reserve(run.clone()).await, Ok(()));
        assert_eq!(reserve(run.clone()).await, Ok(()));
        let refused = reserve(run.clone()).await.expect_err("2 reserved + 1 passes 2.5");
        assert!(matches!(&refused.spent, Spent::Money { key, budget, .. } if key == "tenant" && budget == "2.5"));
        assert!(refused.message(tenant).contains("tenant.budget"), "{}", refused.message(tenant));
        // The first run cost 0.25: the rest of its reservation comes back.
        store.settle(&run, Decimal::new(25, 2)).await.expect("store");
        assert_eq!(reserve(run.clone()).await, Ok(()), "1.25 + 1 fits in 2.5");
        assert_eq!(store.check(&run).await.expect("store"), Ok(()), "2.25 of 2.5");

        let tokens =
            BudgetPlan { tenant: format!("{tenant}-tokens"), ..plan(vec![line("tenant", None, Some(100))], "0") };
        assert_eq!(reserve(tokens.clone()).await, Ok(()));
        store.spend(&tokens, 60, Decimal::ZERO).await.expect("store");
        assert_eq!(store.check(&tokens).await.expect("store"), Ok(()));
        store.spend(&tokens, 40, Decimal::ZERO).await.expect("store");
        let spent = store.check(&tokens).await.expect("store").expect_err("100 of 100 used");
        assert!(matches!(spent.spent, Spent::Tokens { budget: 100, .. }));
        assert!(spent.message(tenant).contains("tenant.tokens"), "{}", spent.message(tenant));
        assert!(reserve(tokens.clone()).await.is_err(), "and the next run is refused");

        let mut agents =
            BudgetPlan { tenant: format!("{tenant}-agents"), ..plan(vec![line("tenant", Some("100"), None)], "0") };
        for agent in ["a", "b", "a"] {
            agents.agent = Some(agent.into());
            assert_eq!(reserve(agents.clone()).await, Ok(()), "{agent}");
        }
        agents.agent = Some("c".into());
        let refused = reserve(agents.clone()).await.expect_err("a third label");
        assert_eq!(refused.spent, Spent::Agents { agents_max: 2 });

        // A run that could cost more than the whole budget is told so: waiting cannot help.
        let huge =
            BudgetPlan { tenant: format!("{tenant}-small"), ..plan(vec![line("tenant", Some("0.01"), None)], "0.05") };
        let refused = reserve(huge).await.expect_err("0.05 > 0.01");
        assert!(matches!(refused.spent, Spent::TooSmall { .. }), "{refused:?}");
        assert!(refused.message(tenant).contains("lower the tool's limits"), "{}", refused.message(tenant));
    }

    #[tokio::test]
    async fn the_in_process_store_keeps_budgets() {
        scenarios(&LocalBudgets::new(), "alice").await;
        assert!(check_agent_label("planner-7@team.a").is_ok());
        assert!(check_agent_label("").is_err() && check_agent_label("a b").is_err());
        assert!(check_agent_label(&"x".repeat(AGENT_LABEL_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn ten_thousand_tiny_charges_sum_exactly() {
        let store = LocalBudgets::new();
        let run = plan(vec![line("tenant", Some("1"), None)], "0");
        let tiny = Decimal::new(1, 10); // 0.0000000001
        for _ in 0..10_000 {
            store.spend_now(&run, 0, tiny);
        }
        let current = period_start(now_unix_s(), 3600);
        let money = store.with(|p| p[&("alice".to_string(), current)].money["tenant"]);
        assert_eq!(money, Decimal::new(1, 6), "10,000 × 1e-10 is exactly 1e-6");
    }
}
