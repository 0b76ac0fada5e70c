//! The usage ledger: what runs cost, summed per hour, principal (tenant and subject), agent
//! label, tool and currency. It is fed by each run's cost as its audit record is written. On one
//! node it is held here and refilled from the audit log at start (each record keeps its run's
//! cost), so it is exactly as durable as the log; with `--redis` every API node adds to, and
//! answers from, the one ledger the fleet shares in Redis (exact decimal strings, one hash per
//! hour). `GET /v1/usage` answers from it, as JSON or CSV, grouped as the caller asks.

use guild_replay::cost::{Cost, Price};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Default hours of usage kept (90 days); older hours leave as new ones come.
pub const USAGE_HOURS_KEPT_DEFAULT: u64 = 90 * 24;
/// Default most rows the ledger holds before a new subject's runs are counted in its tenant's
/// row instead of one of their own (access tokens can name any number of subjects; tenants,
/// tools and hours are bounded by the config and `USAGE_HOURS_KEPT_DEFAULT`).
pub const USAGE_ROWS_MAX_DEFAULT: usize = 1_000_000;
/// Default most rows one hour of the fleet's ledger in Redis holds before a new subject's or
/// agent's runs count in its tenant's row: an hour is read whole to answer a question.
pub const USAGE_ROWS_PER_HOUR_MAX_DEFAULT: usize = 10_000;

/// One hour's sums of one tenant's runs of one tool, in one currency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    /// The hour's start, seconds since the Unix epoch.
    hour_unix_s: u64,
    tenant: String,
    /// An access token's subject; `None` for the tenant's static token.
    subject: Option<String>,
    /// The caller's agent label.
    agent: Option<String>,
    tool: String,
    currency: String,
}

/// Whose runs a row counts: tenant, subject, agent label.
pub type Who<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

/// A row of an answer before it is written out: period start, tenant, tool, agent, currency
/// (each but the currency `None` when not grouped by it).
type GroupKey = (Option<u64>, Option<String>, Option<String>, Option<String>, String);

/// What the runs of a key cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Sums {
    runs: u64,
    total: Decimal,
    by_resource: BTreeMap<String, Decimal>,
}

/// The ledger. Its entries are at most (hours kept) × (principals) × (tools) × (currencies): the
/// tenants and tools are the configured ones, the subjects those whose runs finished in the
/// hours kept, and older hours leave.
pub struct Usage {
    rows: Mutex<Ledger>,
    hours_kept: u64,
    rows_max: usize,
    /// With `--redis`: the ledger the fleet shares, added to and answered from instead.
    shared: Option<guild_queue::RedisQueue>,
    /// Rows one hour of the fleet's ledger holds at most.
    rows_per_hour_max: usize,
}

/// The rows, and the newest hour among them (older hours leave when a newer one starts).
#[derive(Default)]
struct Ledger {
    rows: BTreeMap<Key, Sums>,
    newest_hour_unix_s: u64,
}

/// How `GET /v1/usage` groups rows: any of `hour`, `day`, `tenant`, `tool`, `agent` (the
/// currency always).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupBy {
    /// By hour (else all hours of a row's other keys together).
    pub hour: bool,
    /// By day (UTC).
    pub day: bool,
    /// By tenant.
    pub tenant: bool,
    /// By tool.
    pub tool: bool,
    /// By agent label.
    pub agent: bool,
}

impl GroupBy {
    /// Parse `tenant,tool,hour`.
    ///
    /// # Errors
    /// A message naming the word that is not one of `hour`, `day`, `tenant`, `tool`, `agent`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut group = Self::default();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "hour" => group.hour = true,
                "day" => group.day = true,
                "tenant" => group.tenant = true,
                "tool" => group.tool = true,
                "agent" => group.agent = true,
                other => return Err(format!("group_by: {other:?} is not one of hour, day, tenant, tool, agent")),
            }
        }
        Ok(group)
    }
}

/// Which rows a question is about.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this tenant's (a non-admin caller always gets only its own).
    pub tenant: Option<String>,
    /// Only this subject's runs (an access token's caller gets only its own).
    pub subject: Option<String>,
    /// Only this tool's.
    pub tool: Option<String>,
    /// Only this agent label's.
    pub agent: Option<String>,
    /// From this time on, seconds since the Unix epoch (the hour it falls in included).
    pub from_unix_s: Option<u64>,
    /// Before this time, seconds since the Unix epoch.
    pub to_unix_s: Option<u64>,
}

/// One row of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The hour or day's start (RFC 3339, UTC), when grouped by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// The tenant, when grouped by tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The tool, when grouped by tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The agent label, when grouped by agent (`null` for runs that named none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<Option<String>>,
    /// The currency.
    pub currency: String,
    /// Runs priced.
    pub runs: u64,
    /// What they cost, exact.
    pub total: Price,
    /// By resource (`fuel`, `wall_time`, …), exact.
    pub by_resource: BTreeMap<String, Price>,
}

impl Usage {
    /// An empty ledger keeping `hours_kept` hours and, past `rows_max` rows, counting a new
    /// subject's or agent's runs in its tenant's row.
    pub fn new(hours_kept: u64, rows_max: usize) -> Self {
        Self {
            rows: Mutex::new(Ledger::default()),
            hours_kept: hours_kept.max(1),
            rows_max,
            shared: None,
            rows_per_hour_max: USAGE_ROWS_PER_HOUR_MAX_DEFAULT,
        }
    }

    /// Add to and answer from the ledger `queue`'s Redis holds for the fleet; past
    /// `rows_per_hour_max` rows in one hour a new subject's or agent's runs count in its
    /// tenant's row there.
    pub fn shared(mut self, queue: guild_queue::RedisQueue, rows_per_hour_max: usize) -> Self {
        self.shared = Some(queue);
        self.rows_per_hour_max = rows_per_hour_max.max(1);
        self
    }

    /// Add a run of `tool` for `who` that finished at `time_unix_ms` and cost `cost`: to the
    /// fleet's ledger with `--redis` (a failure is logged: the audit record keeps the cost),
    /// else here.
    pub async fn record(&self, time_unix_ms: u64, who: Who<'_>, tool: &str, cost: &Cost) {
        let Some(queue) = &self.shared else { return self.add(time_unix_ms, who, tool, cost) };
        let (tenant, subject, agent) = who;
        let row = |subject: Option<&str>, agent: Option<&str>| {
            serde_json::json!([tenant, subject, agent, tool, cost.currency]).to_string()
        };
        let by_resource: Vec<(String, Decimal)> = cost.lines.iter().map(|l| (l.resource.clone(), l.amount.0)).collect();
        let hour_unix_s = time_unix_ms / 1000 / 3600 * 3600;
        let added = queue
            .usage_add(
                (hour_unix_s, tenant),
                (&row(subject, agent), &row(None, None)),
                (self.rows_per_hour_max as u64, self.hours_kept.saturating_mul(3600)),
                cost.total.0,
                &by_resource,
            )
            .await;
        if let Err(e) = added {
            tracing::error!(tenant, tool, error = %e, "a run's cost could not be added to the fleet's usage ledger");
        }
    }

    /// Add a run of `tool` for `who` that finished at `time_unix_ms` and cost `cost`, here.
    pub fn add(&self, time_unix_ms: u64, (tenant, subject, agent): Who<'_>, tool: &str, cost: &Cost) {
        // A record from a clock ahead of this one counts now: a future hour would push the
        // hours kept forward and drop real ones.
        let time_unix_ms = time_unix_ms.min(guild_queue::now_unix_ms());
        let hour_unix_s = time_unix_ms / 1000 / 3600 * 3600;
        let mut key = Key {
            hour_unix_s,
            tenant: tenant.into(),
            subject: subject.map(str::to_string),
            agent: agent.map(str::to_string),
            tool: tool.into(),
            currency: cost.currency.clone(),
        };
        let mut ledger = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if hour_unix_s > ledger.newest_hour_unix_s {
            // A new hour: the hours past the kept ones leave (keys sort by hour first).
            ledger.newest_hour_unix_s = hour_unix_s;
            let oldest_kept = hour_unix_s.saturating_sub((self.hours_kept - 1) * 3600);
            let first_kept = Key {
                hour_unix_s: oldest_kept,
                tenant: String::new(),
                subject: None,
                agent: None,
                tool: String::new(),
                currency: String::new(),
            };
            ledger.rows = ledger.rows.split_off(&first_kept);
        }
        let oldest_kept = ledger.newest_hour_unix_s.saturating_sub((self.hours_kept - 1) * 3600);
        if hour_unix_s < oldest_kept {
            return; // older than what is kept (a record read back from long ago)
        }
        let named = key.subject.is_some() || key.agent.is_some();
        if named && ledger.rows.len() >= self.rows_max && !ledger.rows.contains_key(&key) {
            // Past the bound a new subject or agent gets no row of its own: its runs count as
            // its tenant's.
            key.subject = None;
            key.agent = None;
        }
        ledger.rows.entry(key).or_default().add(&Sums::of(cost));
    }

    /// The rows `filter` selects, summed as `group` says, in key order: from the fleet's ledger
    /// with `--redis` (the filter's tenant's, else `tenants`'), else from here.
    ///
    /// # Errors
    /// A message when the fleet's ledger cannot be read.
    pub async fn answer(&self, filter: &Filter, group: GroupBy, tenants: &[String]) -> Result<Vec<Row>, String> {
        let Some(queue) = &self.shared else { return Ok(self.query(filter, group)) };
        let now_hour = guild_queue::now_unix_s() / 3600 * 3600;
        let oldest = now_hour.saturating_sub((self.hours_kept - 1) * 3600);
        let first = filter.from_unix_s.map_or(oldest, |from| (from / 3600 * 3600).max(oldest));
        let last = filter.to_unix_s.map_or(now_hour, |to| to.saturating_sub(1) / 3600 * 3600).min(now_hour);
        let mut grouped = BTreeMap::new();
        let asked: Vec<&str> = match &filter.tenant {
            Some(tenant) => vec![tenant.as_str()],
            None => tenants.iter().map(String::as_str).collect(),
        };
        // One hour of one tenant at a time: what is held is the answer's rows, not the ledger's.
        let hours: Vec<u64> = (first..=last).step_by(3600).collect();
        let asked: Vec<(u64, String)> = hours.iter().flat_map(|h| asked.iter().map(|t| (*h, t.to_string()))).collect();
        for (hour_unix_s, tenant) in asked {
            let rows = queue
                .usage_hour((hour_unix_s, &tenant), self.rows_per_hour_max)
                .await
                .map_err(|e| format!("the fleet's usage ledger: {e}"))?;
            for (row, sums) in rows {
                let Ok((tenant, subject, agent, tool, currency)) =
                    serde_json::from_str::<(String, Option<String>, Option<String>, String, String)>(&row)
                else {
                    continue; // not a row this version writes
                };
                let key = Key { hour_unix_s, tenant, subject, agent, tool, currency };
                let sums =
                    Sums { runs: sums.runs, total: sums.total, by_resource: sums.by_resource.into_iter().collect() };
                fold(&mut grouped, (&key, &sums), filter, group);
            }
        }
        Ok(rows_of(grouped))
    }

    /// The rows `filter` selects, summed as `group` says, in key order (this node's ledger).
    pub fn query(&self, filter: &Filter, group: GroupBy) -> Vec<Row> {
        let ledger = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut grouped = BTreeMap::new();
        for entry in &ledger.rows {
            fold(&mut grouped, entry, filter, group);
        }
        rows_of(grouped)
    }

    /// Keys held (for the bound's test).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.rows.lock().unwrap_or_else(|p| p.into_inner()).rows.len()
    }
}

impl Sums {
    fn of(cost: &Cost) -> Self {
        Self {
            runs: 1,
            total: cost.total.0,
            by_resource: cost.lines.iter().fold(BTreeMap::new(), |mut by, line| {
                let amount: &mut Decimal = by.entry(line.resource.clone()).or_default();
                *amount = amount.checked_add(line.amount.0).unwrap_or(Decimal::MAX);
                by
            }),
        }
    }

    fn add(&mut self, other: &Sums) {
        self.runs += other.runs;
        self.total = self.total.checked_add(other.total).unwrap_or(Decimal::MAX);
        for (resource, amount) in &other.by_resource {
            let to = self.by_resource.entry(resource.clone()).or_default();
            *to = to.checked_add(*amount).unwrap_or(Decimal::MAX);
        }
    }
}

/// Add one ledger row to the answer's groups, if `filter` selects it.
fn fold(grouped: &mut BTreeMap<GroupKey, Sums>, (key, sums): (&Key, &Sums), filter: &Filter, group: GroupBy) {
    let hour_end = key.hour_unix_s + 3600;
    let kept = filter.tenant.as_ref().is_none_or(|t| *t == key.tenant)
        && filter.subject.as_ref().is_none_or(|s| Some(s) == key.subject.as_ref())
        && filter.agent.as_ref().is_none_or(|a| Some(a) == key.agent.as_ref())
        && filter.tool.as_ref().is_none_or(|t| *t == key.tool)
        && filter.from_unix_s.is_none_or(|from| hour_end > from)
        && filter.to_unix_s.is_none_or(|to| key.hour_unix_s < to);
    if !kept {
        return;
    }
    let period = match (group.hour, group.day) {
        (true, _) => Some(key.hour_unix_s),
        (false, true) => Some(key.hour_unix_s / 86_400 * 86_400),
        _ => None,
    };
    let at = (
        period,
        group.tenant.then(|| key.tenant.clone()),
        group.tool.then(|| key.tool.clone()),
        group.agent.then(|| key.agent.clone().unwrap_or_default()),
        key.currency.clone(),
    );
    grouped.entry(at).or_default().add(sums);
}

fn rows_of(grouped: BTreeMap<GroupKey, Sums>) -> Vec<Row> {
    grouped
        .into_iter()
        .map(|((period, tenant, tool, agent, currency), sums)| Row {
            period: period.map(rfc3339),
            tenant,
            tool,
            agent: agent.map(|a| (!a.is_empty()).then_some(a)),
            currency,
            runs: sums.runs,
            total: Price(sums.total),
            by_resource: sums.by_resource.into_iter().map(|(r, a)| (r, Price(a))).collect(),
        })
        .collect()
}

/// `rows` as CSV: `period,tenant,tool,agent,currency,runs,total` (empty cells for what is not grouped).
pub fn csv(rows: &[Row]) -> String {
    let mut text = String::from("period,tenant,tool,agent,currency,runs,total\n");
    for row in rows {
        let cell = |v: &Option<String>| csv_cell(v.as_deref().unwrap_or(""));
        text.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            cell(&row.period),
            cell(&row.tenant),
            cell(&row.tool),
            cell(&row.agent.clone().flatten()),
            csv_cell(&row.currency),
            row.runs,
            row.total.0.normalize()
        ));
    }
    text
}

/// A CSV cell: quoted when it holds a comma, quote or line break (RFC 4180), and led by `'`
/// when it starts like a spreadsheet formula (`=`, `+`, `-`, `@`), so a name is never run.
pub fn csv_cell(cell: &str) -> String {
    let cell = if cell.starts_with(['=', '+', '-', '@']) { format!("'{cell}") } else { cell.to_string() };
    if cell.contains([',', '"', '\n', '\r']) { format!("\"{}\"", cell.replace('"', "\"\"")) } else { cell }
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2026-11-30T03:00:00Z`).
fn rfc3339(unix_s: u64) -> String {
    let (days, secs) = (unix_s / 86_400, unix_s % 86_400);
    // Civil from days (Howard Hinnant's algorithm), for dates after 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guild_replay::cost::{CostLine, Price};

    fn cost(total: &str) -> Cost {
        let amount = Price::parse(total).expect("price");
        let line = CostLine {
            resource: "fuel".into(),
            quantity: amount,
            unit: "million fuel units".into(),
            unit_price: Price::parse("1").expect("price"),
            amount,
            upstream: None,
        };
        Cost { currency: "USD".into(), total: amount, lines: vec![line] }
    }

    const HOUR_MS: u64 = 3_600_000;

    #[test]
    fn runs_sum_exactly_per_hour_tenant_and_tool_and_group_as_asked() {
        let usage = Usage::new(USAGE_HOURS_KEPT_DEFAULT, USAGE_ROWS_MAX_DEFAULT);
        let t0 = 1_764_471_600_000; // 2025-11-30T03:00:00Z
        usage.add(t0, ("alice", None, None), "wc", &cost("0.1"));
        usage.add(t0 + 10, ("alice", Some("agent-7"), None), "wc", &cost("0.2"));
        usage.add(t0 + HOUR_MS, ("alice", None, None), "echo", &cost("0.0000001"));
        usage.add(t0 + HOUR_MS, ("bob", None, None), "wc", &cost("5"));
        let all = usage.query(&Filter::default(), GroupBy::default());
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].runs, all[0].total.0.normalize().to_string()), (4, "5.3000001".into()));
        let alices = usage.query(
            &Filter { tenant: Some("alice".into()), ..Filter::default() },
            GroupBy::parse("hour,tool").expect("group"),
        );
        let shown: Vec<(String, String, String)> = alices
            .iter()
            .map(|r| {
                (
                    r.period.clone().unwrap_or_default(),
                    r.tool.clone().unwrap_or_default(),
                    r.total.0.normalize().to_string(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("2025-11-30T03:00:00Z".to_string(), "wc".to_string(), "0.3".to_string()),
                ("2025-11-30T04:00:00Z".to_string(), "echo".to_string(), "0.0000001".to_string())
            ]
        );
        let later =
            usage.query(&Filter { from_unix_s: Some(t0 / 1000 + 3600), ..Filter::default() }, GroupBy::default());
        assert_eq!(later[0].runs, 2);
        assert!(GroupBy::parse("hour,week").is_err());
        let agents = usage.query(&Filter { subject: Some("agent-7".into()), ..Filter::default() }, GroupBy::default());
        assert_eq!(
            (agents[0].runs, agents[0].total.0.normalize().to_string()),
            (1, "0.2".into()),
            "a subject's own runs"
        );
        assert_eq!(csv(&alices).lines().next(), Some("period,tenant,tool,agent,currency,runs,total"));
    }

    #[test]
    fn only_the_hours_kept_stay() {
        let usage = Usage::new(2, USAGE_ROWS_MAX_DEFAULT);
        for hour in 0..5 {
            usage.add(hour * HOUR_MS, ("alice", None, None), "wc", &cost("1"));
        }
        assert_eq!(usage.len(), 2, "the 2 newest hours");
        assert_eq!(usage.query(&Filter::default(), GroupBy::default())[0].runs, 2);
    }

    #[test]
    fn past_its_rows_a_new_subject_counts_in_its_tenants_row() {
        let usage = Usage::new(USAGE_HOURS_KEPT_DEFAULT, 2);
        for subject in ["a", "b", "c", "d"] {
            usage.add(HOUR_MS, ("alice", Some(subject), None), "wc", &cost("1"));
        }
        assert_eq!(usage.len(), 3, "a, b, then one row of the tenant's for c and d");
        let tenants = usage.query(&Filter { subject: None, ..Filter::default() }, GroupBy::default());
        assert_eq!(tenants[0].runs, 4, "no run is lost");
        let c = usage.query(&Filter { subject: Some("c".into()), ..Filter::default() }, GroupBy::default());
        assert!(c.is_empty(), "c's runs are the tenant's now");
        usage.add(HOUR_MS, ("alice", Some("a"), None), "wc", &cost("1"));
        assert_eq!(usage.len(), 3, "a row that exists goes on counting");
    }

    #[test]
    fn cells_are_quoted_when_they_must_be() {
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("@alice"), "'@alice");
        assert_eq!(csv_cell("=1+1,2"), "\"'=1+1,2\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
