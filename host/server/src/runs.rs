//! The run table: every run the daemon accepted, queued, running or finished, by run id, and
//! the idempotency keys that name them. Bounded: finished runs beyond `runs_kept_max` are
//! forgotten oldest first (their bundles and audit records stay). On start the table is
//! refilled from the audit log, so run ids and idempotency keys survive a restart.

use crate::principal::Owner;
use guild_replay::Digest;
use guild_runtime::{Failure, RunStatus};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A run's id: 32 hex characters, random.
pub(crate) type RunId = String;

/// A new random run id.
pub fn new_run_id() -> RunId {
    let mut bytes = [0u8; 16];
    // Without randomness, fall back to a digest of the time: unique enough, never a panic.
    if getrandom::fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes.copy_from_slice(&Digest::of(&now.as_nanos().to_le_bytes()).as_bytes()[..16]);
    }
    let mut id = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        let _ = std::fmt::Write::write_fmt(&mut id, format_args!("{byte:02x}"));
    }
    id
}

/// What an idempotency key must name the same of: the tool and the input's digest (both are in
/// the audit log, so the check survives a restart).
pub(crate) fn request_digest(tool: &str, input_digest: &Digest) -> Digest {
    Digest::of(format!("{tool}\0{input_digest}").as_bytes())
}

/// How a finished run ended, small enough to keep many of (the output itself is in the bundle).
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Succeeded (the tool returned output), failed, or dead (a job out of attempts).
    pub status: RunStatus,
    /// Why it failed; none on success.
    pub error: Option<Failure>,
    /// The sealed bundle.
    pub bundle: Option<Digest>,
    /// Fuel units the run burnt (0 when it never started).
    pub fuel_used_units: u64,
    /// Wall time of the run, µs.
    pub wall_time_us: u64,
    /// Which revision of the tool's name ran (none for a run that never reached one).
    pub revision: Option<u32>,
    /// For a cached tool's call: what the result cache did (a hit's bundle is the earlier run's).
    pub cache: Option<crate::cache::CacheState>,
    /// What the run cost under `[pricing]`, from what its bundle records; `None` without a
    /// price table or a bundle (and, for now, for a job a worker ran).
    pub cost: Option<Arc<guild_replay::cost::Cost>>,
    /// The OpenTelemetry trace the run belongs to (32 hex digits), when tracing was on where
    /// it ran; its bundle's `exec.json` names it too.
    pub trace_id: Option<String>,
}

impl Finished {
    /// A run that ended as `status` for `failure` without running to a bundle: no fuel, no
    /// time, nothing else known.
    pub(crate) fn failed(status: RunStatus, failure: Failure) -> Self {
        Self {
            status,
            error: Some(failure),
            bundle: None,
            fuel_used_units: 0,
            wall_time_us: 0,
            revision: None,
            cache: None,
            cost: None,
            trace_id: None,
        }
    }

    /// The run's label in metrics and the audit log: `output`, `dead`, or why it failed
    /// (`tool_error`, `limit`, `denied`, …).
    pub fn label(&self) -> &'static str {
        self.status.label(self.error.as_ref())
    }

    /// What went wrong, for a person; empty on success.
    pub fn message(&self) -> &str {
        self.error.as_ref().map(|f| f.message.as_str()).unwrap_or_default()
    }
}

/// The JSON a client sees for a run (`POST /v1/runs`, `GET /v1/runs/{id}`): its id, status
/// word and tool, and once finished its output, error, bundle and figures. The output is the
/// tool's own JSON text, checked once by the runtime and carried through as it is — never
/// parsed into a tree and written out again.
#[derive(Debug, Serialize)]
pub(crate) struct RunBody<'a> {
    /// The run id.
    pub(crate) id: &'a str,
    /// `queued`, `waiting_for_capability` (a Redis job whose lane no live worker reads),
    /// `running`, `succeeded`, `failed` or `dead`.
    pub(crate) status: &'a str,
    /// The tool's name.
    pub(crate) tool: &'a str,
    /// For a job in Redis: attempts started so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) attempts: Option<u32>,
    /// For a job waiting for a capability: its lane, naming what it needs (`gpu`,
    /// `label:zone=eu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) waiting_for: Option<&'a str>,
    /// Once finished.
    #[serde(flatten)]
    pub(crate) finished: Option<FinishedBody<'a>>,
}

/// The finished part of a [`RunBody`].
#[derive(Debug, Serialize)]
pub(crate) struct FinishedBody<'a> {
    /// The tool's output, as it wrote it (null when it failed, or when it cannot be read back).
    pub(crate) output: Option<Box<RawValue>>,
    /// Why it failed (null on success).
    pub(crate) error: Option<&'a Failure>,
    /// The bundle's id, 64 hex characters.
    pub(crate) bundle: Option<String>,
    /// Fuel burnt.
    pub(crate) fuel_used_units: u64,
    /// Wall time of the run, µs.
    pub(crate) wall_time_us: u64,
    /// Which revision of the tool's name ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) revision: Option<u32>,
    /// For a job in Redis: the worker that ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) worker: Option<&'a str>,
    /// For a cached tool: whether the answer is an earlier (or concurrent) run's, whose bundle
    /// it names, with no fuel charged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cached: Option<bool>,
    /// For a cached tool: `hit`, `merged`, `stored`, or `miss: WHY` (`miss: http request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cache: Option<String>,
    /// Under `[pricing]`: what the run cost, `{currency, total, lines: [{resource, quantity,
    /// unit, unit_price, amount}]}`, amounts as exact decimal strings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cost: Option<&'a guild_replay::cost::Cost>,
    /// The OpenTelemetry trace the run belongs to, when tracing was on where it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trace_id: Option<&'a str>,
}

impl<'a> FinishedBody<'a> {
    /// The body's finished part for `finished`, with `output` (the tool's JSON text).
    pub(crate) fn new(finished: &'a Finished, output: Option<String>) -> Self {
        Self {
            // The runtime checked the text is JSON; this only wraps it (a cheap scan, no tree).
            output: output.and_then(|text| RawValue::from_string(text).ok()),
            error: finished.error.as_ref(),
            bundle: finished.bundle.map(|b| b.to_hex()),
            fuel_used_units: finished.fuel_used_units,
            wall_time_us: finished.wall_time_us,
            revision: finished.revision,
            worker: None,
            cached: finished.cache.as_ref().map(crate::cache::CacheState::cached),
            cache: finished.cache.as_ref().map(ToString::to_string),
            cost: finished.cost.as_deref(),
            trace_id: finished.trace_id.as_deref(),
        }
    }
}

/// Where a run is.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Waiting for a slot.
    Queued,
    /// Holding one of this daemon's slots, its tool executing (a job sent to Redis stays
    /// `Queued` here until it finishes).
    Running,
    /// Done; see [`Finished`].
    Finished(Arc<Finished>),
}

impl RunState {
    /// The word the API uses.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Finished(f) => f.status.as_str(),
        }
    }
}

/// One run's entry.
#[derive(Debug, Clone)]
pub struct RunEntry {
    /// The run id: 32 random hex characters, not the bundle id.
    pub id: RunId,
    /// The tenant that submitted it, by name: the only one (besides an admin) it answers.
    pub tenant: String,
    /// The subject it ran for within the tenant (an OAuth access token's `sub`, as recorded);
    /// `None` for a tenant's static token.
    pub subject: Option<String>,
    /// The caller's agent label, when it gave one.
    pub agent: Option<String>,
    /// The tool's name.
    pub tool: String,
    /// blake3 of tool name and input: an idempotency key must name the same request.
    pub request_digest: Digest,
    /// When this node first knew of the run, ms since the Unix epoch: when it was submitted, or
    /// for a run restored from the audit log, when its record was written.
    pub at_unix_ms: u64,
    /// Watch this to learn when it changes state.
    pub state: watch::Receiver<RunState>,
}

impl RunEntry {
    /// Whose run it is.
    pub(crate) fn owner(&self) -> Owner<'_> {
        Owner { tenant: &self.tenant, subject: self.subject.as_deref() }
    }
}

/// Outcome of [`RunTable::insert`].
pub enum Inserted {
    /// A new run: update its state through the sender.
    New(RunEntry, watch::Sender<RunState>),
    /// The idempotency key already names this run.
    Existing(RunEntry),
    /// The key names a run of a different request.
    Conflict(RunId),
}

/// Every run this daemon knows, by id, with the idempotency keys that name them; at most
/// `runs_kept_max` finished runs are kept.
pub struct RunTable {
    inner: Mutex<Inner>,
    runs_kept_max: usize,
}

struct Inner {
    runs: HashMap<RunId, RunEntry>,
    /// Runs by (tenant, subject, idempotency key): a key is its principal's.
    keys: HashMap<(String, Option<String>, String), RunId>,
    /// Runs in the order they were added, for eviction.
    order: VecDeque<(RunId, Option<String>)>,
    /// Each tenant's runs in the order they were added: what one tenant's list walks, whatever
    /// the other tenants run.
    by_tenant: HashMap<String, VecDeque<RunId>>,
}

impl RunTable {
    /// An empty table keeping at most `runs_kept_max` runs.
    pub fn new(runs_kept_max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                runs: HashMap::new(),
                keys: HashMap::new(),
                order: VecDeque::new(),
                by_tenant: HashMap::new(),
            }),
            runs_kept_max,
        }
    }

    /// Add a run, unless its tenant's idempotency key already names one.
    pub fn insert(
        &self,
        tenant: &str,
        (subject, agent): (Option<&str>, Option<&str>),
        tool: &str,
        request_digest: Digest,
        idempotency_key: Option<&str>,
        state: RunState,
    ) -> Inserted {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = idempotency_key
            && let Some(id) = inner.keys.get(&(tenant.to_string(), subject.map(str::to_string), key.to_string()))
            && let Some(entry) = inner.runs.get(id)
        {
            return if entry.request_digest == request_digest {
                Inserted::Existing(entry.clone())
            } else {
                Inserted::Conflict(entry.id.clone())
            };
        }
        let (sender, receiver) = watch::channel(state);
        let entry = RunEntry {
            id: new_run_id(),
            tenant: tenant.to_string(),
            subject: subject.map(str::to_string),
            agent: agent.map(str::to_string),
            tool: tool.to_string(),
            request_digest,
            at_unix_ms: guild_queue::now_unix_ms(),
            state: receiver,
        };
        inner.add(entry.clone(), idempotency_key, self.runs_kept_max);
        Inserted::New(entry, sender)
    }

    /// Put back a run finished before a restart (from the audit log), whose record was written
    /// at `at_unix_ms`.
    pub fn restore(
        &self,
        (id, at_unix_ms): (RunId, u64),
        (tenant, subject, agent): (&str, Option<&str>, Option<&str>),
        tool: &str,
        input_digest: &Digest,
        idempotency_key: Option<&str>,
        finished: Finished,
    ) {
        let (_, receiver) = watch::channel(RunState::Finished(Arc::new(finished)));
        let entry = RunEntry {
            id,
            tenant: tenant.to_string(),
            subject: subject.map(str::to_string),
            agent: agent.map(str::to_string),
            tool: tool.to_string(),
            request_digest: request_digest(tool, input_digest),
            at_unix_ms,
            state: receiver,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.add(entry, idempotency_key, self.runs_kept_max);
    }

    /// The run with this id.
    pub fn get(&self, id: &str) -> Option<RunEntry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).runs.get(id).cloned()
    }

    /// The run a tenant's idempotency key names.
    pub fn by_key(&self, (tenant, subject): (&str, Option<&str>), key: &str) -> Option<RunEntry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = inner.keys.get(&(tenant.to_string(), subject.map(str::to_string), key.to_string()))?;
        inner.runs.get(id).cloned()
    }

    /// The finished runs that sealed a bundle and that `mine` says are the caller's, newest
    /// first, at most `limit`, starting after run `after` (a cursor: the last run of the page
    /// before). `None` when `after` names no run of the caller's here (any more).
    pub(crate) fn recent_bundles(
        &self,
        mine: impl Fn(Owner<'_>) -> bool,
        after: Option<&str>,
        limit: usize,
    ) -> Option<Vec<(RunEntry, Arc<Finished>)>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest_first = inner.order.iter().rev().filter_map(|(id, _)| inner.runs.get(id));
        if let Some(after) = after {
            newest_first.by_ref().find(|e| e.id == after && mine(e.owner()))?;
        }
        Some(
            newest_first
                .filter(|e| mine(e.owner()))
                .filter_map(|e| match &*e.state.borrow() {
                    RunState::Finished(finished) if finished.bundle.is_some() => Some((e.clone(), finished.clone())),
                    _ => None,
                })
                .take(limit)
                .collect(),
        )
    }

    /// The runs `wanted` picks, in any state, newest first, at most `limit`, among `tenant`'s
    /// runs (or every tenant's), starting after run `after` (a cursor: the last run of the page
    /// before), looking at no more than `scan_max` runs in all, the cursor's search included
    /// (the lock is held meanwhile). `None` when `after` names no run `wanted` picks among those
    /// looked at; else the runs, and whether the scan stopped at `scan_max` with older runs
    /// unseen.
    pub(crate) fn recent(
        &self,
        (tenant, wanted): (Option<&str>, impl Fn(&RunEntry) -> bool),
        after: Option<&str>,
        limit: usize,
        scan_max: usize,
    ) -> Option<(Vec<RunEntry>, bool)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Box<dyn Iterator<Item = &RunId>> = match tenant {
            Some(tenant) => match inner.by_tenant.get(tenant) {
                Some(theirs) => Box::new(theirs.iter().rev()),
                None => Box::new(std::iter::empty()),
            },
            None => Box::new(inner.order.iter().rev().map(|(id, _)| id)),
        };
        let mut newest_first = ids.filter_map(|id| inner.runs.get(id)).take(scan_max);
        let mut scanned = 0;
        if let Some(after) = after {
            let found = newest_first.by_ref().inspect(|_| scanned += 1).find(|e| e.id == after && wanted(e));
            if found.is_none() {
                return (scanned == scan_max).then(|| (Vec::new(), true));
            }
        }
        let mut found = Vec::new();
        for entry in newest_first {
            scanned += 1;
            if wanted(entry) {
                found.push(entry.clone());
                if found.len() == limit {
                    return Some((found, false));
                }
            }
        }
        Some((found, scanned == scan_max))
    }

    /// Runs held now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).runs.len()
    }

    /// True when no run is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn add(&mut self, entry: RunEntry, idempotency_key: Option<&str>, kept_max: usize) {
        let key = idempotency_key.map(str::to_string);
        if let Some(key) = &key {
            self.keys.insert((entry.tenant.clone(), entry.subject.clone(), key.clone()), entry.id.clone());
        }
        self.order.push_back((entry.id.clone(), key));
        self.by_tenant.entry(entry.tenant.clone()).or_default().push_back(entry.id.clone());
        self.runs.insert(entry.id.clone(), entry);
        // Runs in progress are never forgotten: they go back to the end (at most one pass).
        let mut rotations = 0;
        while self.runs.len() > kept_max && rotations < self.order.len() {
            let Some((oldest, key)) = self.order.pop_front() else { break };
            let in_progress =
                self.runs.get(&oldest).is_some_and(|e| !matches!(*e.state.borrow(), RunState::Finished(_)));
            if in_progress {
                self.order.push_back((oldest, key));
                rotations += 1;
                continue;
            }
            if let Some(entry) = self.runs.remove(&oldest) {
                if let Some(theirs) = self.by_tenant.get_mut(&entry.tenant) {
                    // The tenant's oldest, unless runs in progress were passed over.
                    if let Some(at) = theirs.iter().position(|id| *id == oldest) {
                        theirs.remove(at);
                    }
                    if theirs.is_empty() {
                        self.by_tenant.remove(&entry.tenant);
                    }
                }
                if let Some(key) = key {
                    self.keys.remove(&(entry.tenant, entry.subject, key));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished() -> Finished {
        Finished {
            status: RunStatus::Succeeded,
            error: None,
            bundle: None,
            fuel_used_units: 1,
            wall_time_us: 1,
            revision: None,
            cache: None,
            cost: None,
            trace_id: None,
        }
    }

    #[test]
    fn idempotency_keys_return_the_first_run_or_conflict() {
        let table = RunTable::new(10);
        let request = Digest::of(b"wc {}");
        let Inserted::New(first, _tx) = table.insert("a", (None, None), "wc", request, Some("k1"), RunState::Queued)
        else {
            panic!("first insert is new")
        };
        match table.insert("a", (None, None), "wc", request, Some("k1"), RunState::Queued) {
            Inserted::Existing(again) => assert_eq!(again.id, first.id),
            _ => panic!("same key, same request: the first run"),
        }
        assert!(matches!(
            table.insert("a", (None, None), "wc", Digest::of(b"other"), Some("k1"), RunState::Queued),
            Inserted::Conflict(_)
        ));
        assert!(
            matches!(table.insert("b", (None, None), "wc", request, Some("k1"), RunState::Queued), Inserted::New(..)),
            "keys are per tenant"
        );
    }

    #[test]
    fn a_tenants_list_walks_its_own_runs_and_stops_at_the_scan_bound() {
        let table = RunTable::new(1_000);
        let add = |tenant: &str, n: usize| {
            (0..n)
                .map(|i| {
                    match table.insert(tenant, (None, None), "wc", Digest::of(&i.to_le_bytes()), None, RunState::Queued)
                    {
                        Inserted::New(entry, _) => entry.id,
                        _ => panic!("new"),
                    }
                })
                .collect::<Vec<_>>()
        };
        let mine = add("a", 3);
        add("b", 500);
        let all = |_: &RunEntry| true;
        // Another tenant's 500 newer runs do not crowd a's out of a scan bound of 10.
        let (found, cut) = table.recent((Some("a"), all), None, 50, 10).expect("listed");
        assert_eq!(
            found.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            mine.iter().rev().cloned().collect::<Vec<_>>()
        );
        assert!(!cut);
        // Across every tenant (an admin's list), the bound stops the scan and says so.
        let (found, cut) = table.recent((None, all), None, 50, 10).expect("listed");
        assert_eq!((found.len(), cut), (10, true));
        // A cursor is looked for within the bound too: one past it is not reached.
        let (found, cut) = table.recent((None, all), Some(&mine[0]), 50, 10).expect("the scan stopped");
        assert!(found.is_empty() && cut);
        assert!(table.recent((Some("a"), all), Some("no-such-run"), 50, 10).is_none());
        // After a's second run: its first.
        let (found, _) = table.recent((Some("a"), all), Some(&mine[1]), 50, 10).expect("listed");
        assert_eq!(found.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![mine[0].clone()]);
    }

    #[test]
    fn finished_runs_are_evicted_oldest_first_but_running_ones_are_kept() {
        let table = RunTable::new(2);
        let Inserted::New(running, _keep) =
            table.insert("a", (None, None), "wc", Digest::of(b"1"), None, RunState::Running)
        else {
            panic!()
        };
        let Inserted::New(done, tx) =
            table.insert("a", (None, None), "wc", Digest::of(b"2"), Some("k"), RunState::Queued)
        else {
            panic!()
        };
        let _ = tx.send(RunState::Finished(Arc::new(finished())));
        table.insert("a", (None, None), "wc", Digest::of(b"3"), None, RunState::Queued);
        assert!(table.get(&running.id).is_some(), "in progress: kept");
        assert!(table.get(&done.id).is_none(), "oldest finished: evicted");
        assert!(matches!(
            table.insert("a", (None, None), "wc", Digest::of(b"2"), Some("k"), RunState::Queued),
            Inserted::New(..)
        ));
    }
}
