//! Keyed egress limits and upstream back-pressure, kept for one node or a fleet: the
//! [`EgressGate`] the egress hook asks before each live request.
//!
//! A limit is a rate with a burst, kept as GCRA (the generic cell rate algorithm: one
//! "theoretical arrival time" per key, µs), so a check is one read and one write: a request that
//! would come too soon waits until its time, up to the limit's `wait_ms_max`, and is refused past
//! it. A limit may also (or instead) bound how many requests (or runs) are in flight at once: each
//! holds a place until it ends — in Redis a member of a sorted set scored by when its hold lapses,
//! renewed while it lasts, so a node that dies holding one frees it within
//! [`GATE_HOLD_LEASE_MS`] — and one that finds every place taken waits up to `wait_ms_max`. A throttle is an upstream's own `429`/`503` with `Retry-After`: until then no request goes
//! to it (one waits if the throttle ends within its limit's bound). In Redis (`redis/gate.rs`)
//! every node and worker shares both, under the queue's hash tag; in process (one node), a map.

use crate::QueueError;
use guild_vocab::egress::gate::{EgressGate, GateFuture, GatePass, GateRefusal};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default longest an upstream's `Retry-After` holds it back, ms (5 minutes): a longer one is cut
/// to this (`egress_throttle_ms_max`).
pub const EGRESS_THROTTLE_MS_MAX_DEFAULT: u64 = 300_000;
/// Default most limit keys (one per agent label under a per-agent run limit, say) and most
/// throttles one node holds in process (Redis expires its own): past it, keys whose time has
/// passed are dropped, and a request or run needing a new one is refused while none has.
pub const GATE_KEYS_MAX_DEFAULT: usize = 100_000;
/// How long a place held under a concurrency limit in Redis lasts unless renewed, ms; the holder
/// renews it every third of this, so a holder that dies frees it within this.
pub const GATE_HOLD_LEASE_MS: u64 = 30_000;

/// One keyed limit: requests per second with a burst, requests in flight at once, or both, and
/// how long a request may wait for room.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressLimit {
    /// `upstream:scheme://host:port` or `secret:NAME` (or, for run limits, `run:…`).
    pub key: String,
    /// Sustained requests per second; none: no rate.
    pub rate_per_second: Option<f64>,
    /// Requests (runs) in flight at once; none: no bound.
    pub concurrency_max: Option<u32>,
    /// Requests that may go at once (1: none ahead of the rate).
    pub burst: u32,
    /// Longest a request waits for room, ms; past it, it is refused.
    pub wait_ms_max: u64,
    /// The setting, for messages (`egress_limits[0]`).
    pub setting: String,
}

impl EgressLimit {
    /// What its state is kept under: its key and its rate and burst, so a limit a reload
    /// changes starts afresh rather than from room counted at the old rate.
    pub(crate) fn state_key(&self) -> String {
        format!("{}#{}/{}", self.key, self.rate_per_second.unwrap_or(0.0), self.burst)
    }

    /// What its places in flight are kept under: its key (a reload changing the bound keeps
    /// counting the places already held).
    pub(crate) fn hold_key(&self) -> String {
        format!("{}#in-flight", self.key)
    }

    /// µs between requests at the rate.
    pub(crate) fn interval_us(&self) -> u64 {
        Duration::try_from_secs_f64(1.0 / self.rate_per_second.unwrap_or(f64::INFINITY))
            .map_or(u64::MAX, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .max(1)
    }

    /// µs a request may come early: the burst.
    pub(crate) fn tolerance_us(&self) -> u64 {
        self.interval_us().saturating_mul(u64::from(self.burst.max(1) - 1))
    }

    fn applies(&self, upstream: &str, secrets: &[String]) -> bool {
        match self.key.split_once(':') {
            Some(("upstream", key)) => key == upstream,
            Some(("secret", name)) => secrets.iter().any(|s| s == name),
            _ => false,
        }
    }

    /// What the limit holds back, as its messages name it: the key's subject (`tenant alice`, or
    /// `upstream https://…`), the unit (`runs`, `requests`) and the one refused (`this run`,
    /// `this one`).
    fn named(&self) -> (String, &'static str, &'static str) {
        match self.key.split_once(':') {
            Some(("run", name)) => (name.to_string(), "runs", "this run"),
            Some((what, name)) => (format!("{what} {name}"), "requests", "this one"),
            None => (self.key.clone(), "requests", "this one"),
        }
    }

    /// Why a request (run) that waited `waited_ms` for a place in flight is refused.
    fn busy(&self, waited_ms: u64) -> GateRefusal {
        let (subject, unit, one) = self.named();
        let max = self.concurrency_max.unwrap_or(0);
        let reason = format!(
            "{subject} allows {max} in flight at once and that many {unit} are: {one} waited {waited_ms} ms for one \
             to end, the limit's wait_ms_max ({}: raise concurrency_max or wait_ms_max)",
            self.setting
        );
        GateRefusal { reason, retry_after_ms: 1000 }
    }

    fn refusal(&self, wait_us: u64) -> GateRefusal {
        let (subject, unit, one) = self.named();
        GateRefusal {
            reason: format!(
                "{subject} is limited to {} {unit}/s (burst {}): {one} would wait {} ms, past the limit's {} ms ({}: \
                 raise rate_per_second, burst or wait_ms_max)",
                self.rate_per_second.unwrap_or(0.0),
                self.burst,
                wait_us.div_ceil(1000),
                self.wait_ms_max,
                self.setting
            ),
            retry_after_ms: wait_us.div_ceil(1000),
        }
    }
}

/// What one check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    /// Go after this many µs (room was taken).
    Go(u64),
    /// The upstream is throttled for this many more ms.
    Throttled(u64),
    /// Limit number `index` would make it wait this many µs, past its bound.
    Refused(usize, u64),
    /// The node holds as many limit keys as it may, none of them past.
    Full(usize),
}

/// Where the gates' state lives (cheap to clone: a reservation given back on its own).
#[derive(Clone)]
enum Backend {
    /// One node: theoretical arrival times by key (µs since the epoch), throttles by upstream.
    Local {
        arrivals: Arc<Mutex<HashMap<String, u64>>>,
        throttles: Arc<Mutex<HashMap<String, u64>>>,
        /// Places in flight by hold key (an entry leaves when its count is back to 0).
        holds: Arc<Mutex<HashMap<String, u32>>>,
        /// Most keys in each map.
        keys_max: usize,
    },
    /// A fleet.
    Redis(crate::RedisQueue),
}

/// Room taken under some limits by a request that waits for its turn: given back if the request
/// never goes (its run timed out or was cancelled while it waited, or a throttle came), so a run
/// that dies waiting holds no one else back.
struct Reserved {
    backend: Backend,
    /// Each limit's key and interval, µs.
    keys: Vec<(String, u64)>,
    armed: bool,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let keys = std::mem::take(&mut self.keys);
        match &self.backend {
            Backend::Local { arrivals, .. } => {
                let now = now_us();
                let mut arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                for (key, interval) in keys {
                    if let Some(tat) = arrivals.get_mut(&key) {
                        *tat = tat.saturating_sub(interval).max(now);
                    }
                }
            }
            Backend::Redis(queue) => {
                let queue = queue.clone();
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        if let Err(e) = queue.gate_give_back(&keys).await {
                            tracing::warn!(error = %e, "room a request never used could not be given back");
                        }
                    });
                }
            }
        }
    }
}

/// Places held under concurrency limits by one request (or run): given back when dropped, and,
/// in Redis, renewed while held.
#[must_use = "the places are given back as soon as this drops: keep it while the request (run) is in flight"]
pub struct Held {
    backend: Backend,
    /// Each limit's hold key.
    keys: Vec<String>,
    /// This holder's name in Redis's sets.
    holder: String,
    renewing: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(renewing) = self.renewing.take() {
            renewing.abort();
        }
        let keys = std::mem::take(&mut self.keys);
        match &self.backend {
            Backend::Local { holds, .. } => {
                let mut holds = holds.lock().unwrap_or_else(|p| p.into_inner());
                for key in keys {
                    if let Some(n) = holds.get_mut(&key) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            holds.remove(&key);
                        }
                    }
                }
            }
            Backend::Redis(queue) => {
                let (queue, holder) = (queue.clone(), std::mem::take(&mut self.holder));
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        if let Err(e) = queue.gate_release(&keys, &holder).await {
                            // Its hold lapses on its own within GATE_HOLD_LEASE_MS.
                            tracing::warn!(error = %e, "a place in flight could not be given back");
                        }
                    });
                }
            }
        }
    }
}

/// What a throttle is kept under: the upstream, and the secrets a request carried (an
/// upstream's 429 is most often about the credential): requests with other credentials, or none,
/// are not held back by it.
fn throttle_key(upstream: &str, secrets: &[String]) -> String {
    if secrets.is_empty() {
        return upstream.to_string();
    }
    let mut names: Vec<&str> = secrets.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    format!("{upstream} with {}", names.join(","))
}

/// The host's keyed egress limits and throttles.
pub struct EgressGates {
    /// The limits in force (swapped whole by a config reload).
    limits: std::sync::RwLock<Vec<EgressLimit>>,
    throttle_ms_max: std::sync::atomic::AtomicU64,
    backend: Backend,
}

/// Renew a holder's places every third of [`GATE_HOLD_LEASE_MS`] until aborted.
async fn renew_holds(queue: crate::RedisQueue, keys: Vec<String>, holder: String) {
    loop {
        tokio::time::sleep(Duration::from_millis(GATE_HOLD_LEASE_MS / 3)).await;
        if let Err(e) = queue.gate_renew(&keys, &holder).await {
            tracing::warn!(error = %e, "a place in flight could not be renewed");
        }
    }
}

/// 128 random bits: a holder's name.
fn rand_id() -> u128 {
    let mut bytes = [0u8; 16];
    // The OS's generator; a failure (never seen) leaves a name that is still unique enough with
    // the time mixed in.
    let _ = getrandom::fill(&mut bytes);
    u128::from_le_bytes(bytes) ^ u128::from(now_us())
}

fn now_us() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros())
        .unwrap_or(u64::MAX)
}

impl EgressGates {
    /// Gates kept in this process.
    pub fn local(limits: Vec<EgressLimit>, throttle_ms_max: u64) -> Self {
        let backend = Backend::Local {
            arrivals: Arc::default(),
            throttles: Arc::default(),
            holds: Arc::default(),
            keys_max: GATE_KEYS_MAX_DEFAULT,
        };
        Self { limits: limits.into(), throttle_ms_max: throttle_ms_max.into(), backend }
    }

    /// The same, holding at most `keys_max` keys of each kind (for the bound's test).
    #[cfg(test)]
    fn local_with_keys_max(limits: Vec<EgressLimit>, throttle_ms_max: u64, keys_max: usize) -> Self {
        let backend =
            Backend::Local { arrivals: Arc::default(), throttles: Arc::default(), holds: Arc::default(), keys_max };
        Self { limits: limits.into(), throttle_ms_max: throttle_ms_max.into(), backend }
    }

    /// Put `limits` and `throttle_ms_max` in force for the requests checked from now on (a
    /// config reload; room already taken stays taken).
    pub fn set_limits(&self, limits: Vec<EgressLimit>, throttle_ms_max: u64) {
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
        self.throttle_ms_max.store(throttle_ms_max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Gates the fleet shares in `queue`'s Redis.
    pub fn shared(limits: Vec<EgressLimit>, throttle_ms_max: u64, queue: crate::RedisQueue) -> Self {
        Self { limits: limits.into(), throttle_ms_max: throttle_ms_max.into(), backend: Backend::Redis(queue) }
    }

    async fn check(&self, upstream: &str, applying: &[&EgressLimit]) -> Result<Checked, QueueError> {
        match &self.backend {
            Backend::Redis(queue) => queue.gate_check(upstream, applying).await,
            Backend::Local { arrivals, throttles, keys_max, .. } => {
                let now = now_us();
                if let Some(until) = throttles.lock().unwrap_or_else(|p| p.into_inner()).get(upstream)
                    && *until > now
                {
                    return Ok(Checked::Throttled((*until - now).div_ceil(1000)));
                }
                let mut arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                let fresh = applying.iter().filter(|l| !arrivals.contains_key(&l.state_key())).count();
                if fresh > 0 && arrivals.len() + fresh > *keys_max {
                    // A key whose time has passed holds no room: as good as absent.
                    arrivals.retain(|_, tat| *tat > now);
                    if arrivals.len() + fresh > *keys_max {
                        return Ok(Checked::Full(*keys_max));
                    }
                }
                let mut wait = 0;
                for (index, limit) in applying.iter().enumerate() {
                    let tat = arrivals.get(&limit.state_key()).copied().unwrap_or(0).max(now);
                    let delay = tat.saturating_sub(now).saturating_sub(limit.tolerance_us());
                    if delay > limit.wait_ms_max.saturating_mul(1000) {
                        return Ok(Checked::Refused(index, delay));
                    }
                    wait = wait.max(delay);
                }
                for limit in applying {
                    let tat = arrivals.get(&limit.state_key()).copied().unwrap_or(0).max(now);
                    arrivals.insert(limit.state_key(), tat.saturating_add(limit.interval_us()));
                }
                Ok(Checked::Go(wait))
            }
        }
    }

    async fn throttle(&self, upstream: &str, ms: u64) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Redis(queue) => queue.gate_throttle(upstream, ms).await,
            Backend::Local { throttles, keys_max, .. } => {
                let now = now_us();
                let mut throttles = throttles.lock().unwrap_or_else(|p| p.into_inner());
                if throttles.len() >= *keys_max {
                    throttles.retain(|_, until| *until > now);
                }
                // Past the bound a new throttle is not kept (logged): the upstream answers for itself.
                if throttles.len() < *keys_max || throttles.contains_key(upstream) {
                    let until = now.saturating_add(ms.saturating_mul(1000));
                    let entry = throttles.entry(upstream.to_string()).or_default();
                    *entry = (*entry).max(until);
                } else {
                    tracing::warn!(upstream, keys_max, "throttle not kept: this node holds as many as it may");
                }
                Ok(())
            }
        }
    }
}

impl EgressGates {
    /// Take a place under every limit of `bounded` (those with a `concurrency_max`) at once, or
    /// none, waiting (looking again every 10 to 30 ms, at random) up to the `wait_ms_max` of the
    /// one found full.
    ///
    /// # Errors
    /// A [`GateRefusal`] naming the limit still full at the bound, or saying the store cannot be
    /// read.
    async fn hold(&self, bounded: &[&EgressLimit]) -> Result<Option<Held>, GateRefusal> {
        if bounded.is_empty() {
            return Ok(None);
        }
        let keys: Vec<String> = bounded.iter().map(|l| l.hold_key()).collect();
        let maxes: Vec<u32> = bounded.iter().map(|l| l.concurrency_max.unwrap_or(u32::MAX)).collect();
        let holder = format!("{:032x}", rand_id());
        let started = std::time::Instant::now();
        loop {
            // Waiters look again at random times 10 to 30 ms apart: none comes round more often
            // than another, however long it has waited.
            let pause = Duration::from_millis(10 + u64::try_from(rand_id() % 21).unwrap_or(0));
            let full = match &self.backend {
                Backend::Local { holds, keys_max, .. } => {
                    let mut holds = holds.lock().unwrap_or_else(|p| p.into_inner());
                    let fresh = keys.iter().filter(|k| !holds.contains_key(*k)).count();
                    if fresh > 0 && holds.len() + fresh > *keys_max {
                        return Err(full(*keys_max));
                    }
                    match keys.iter().zip(&maxes).position(|(k, max)| holds.get(k).copied().unwrap_or(0) >= *max) {
                        Some(index) => Some(index),
                        None => {
                            for key in &keys {
                                *holds.entry(key.clone()).or_default() += 1;
                            }
                            None
                        }
                    }
                }
                Backend::Redis(queue) => queue.gate_hold(&keys, &maxes, &holder).await.map_err(|e| GateRefusal {
                    reason: format!("{UNCHECKED} the concurrency limits cannot be checked: {e}"),
                    retry_after_ms: 1000,
                })?,
            };
            let Some(index) = full else {
                let renewing = match &self.backend {
                    Backend::Redis(queue) => {
                        Some(tokio::spawn(renew_holds(queue.clone(), keys.clone(), holder.clone())))
                    }
                    Backend::Local { .. } => None,
                };
                return Ok(Some(Held { backend: self.backend.clone(), keys, holder, renewing }));
            };
            let waited = started.elapsed();
            if waited + pause > Duration::from_millis(bounded[index].wait_ms_max) {
                return Err(bounded[index].busy(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX)));
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Take room for one run under `limits` (run-level limits: keyed by tenant, tool or agent),
    /// up to their bounds: a place in flight under those with a `concurrency_max` (waited for;
    /// held until the returned [`Held`] drops: when the run ends), then its turn under those
    /// with a rate — taken, not waited for: the run starts after [`RunAdmitted::wait`].
    ///
    /// # Errors
    /// A [`RunRefused`] naming the limit that would make it wait past its bound, or saying the
    /// store cannot be read.
    pub async fn admit_run(&self, limits: &[EgressLimit]) -> Result<RunAdmitted, RunRefused> {
        if limits.is_empty() {
            return Ok(RunAdmitted { held: None, wait: Duration::ZERO });
        }
        let bounded: Vec<&EgressLimit> = limits.iter().filter(|l| l.concurrency_max.is_some()).collect();
        let refused = |refusal: GateRefusal, in_flight: bool| {
            let unavailable = refusal.reason.starts_with(UNCHECKED);
            let reason = refusal.reason.trim_start_matches(UNCHECKED).trim_start().to_string();
            RunRefused { refusal: GateRefusal { reason, ..refusal }, in_flight, unavailable }
        };
        let held = self.hold(&bounded).await.map_err(|r| refused(r, true))?;
        let rate = |r| refused(r, false);
        let rated: Vec<&EgressLimit> = limits.iter().filter(|l| l.rate_per_second.is_some()).collect();
        if rated.is_empty() {
            return Ok(RunAdmitted { held, wait: Duration::ZERO });
        }
        let checked = self.check("", &rated).await.map_err(|e| {
            rate(GateRefusal {
                reason: format!("{UNCHECKED} the run limits cannot be checked: {e}"),
                retry_after_ms: 1000,
            })
        })?;
        match checked {
            Checked::Go(us) => Ok(RunAdmitted { held, wait: Duration::from_micros(us) }),
            Checked::Throttled(_) => Ok(RunAdmitted { held, wait: Duration::ZERO }),
            Checked::Refused(index, us) => Err(rate(rated[index].refusal(us))),
            Checked::Full(max) => Err(rate(full(max))),
        }
    }
}

/// A run admitted under its run limits.
#[derive(Debug)]
pub struct RunAdmitted {
    /// Its places in flight, to keep until it ends.
    pub held: Option<Held>,
    /// When its turn comes under the rates: it starts no sooner.
    pub wait: Duration,
}

/// Why a run was refused under its run limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRefused {
    /// What to tell the caller.
    pub refusal: GateRefusal,
    /// True when a `concurrency_max` refused it (as many runs in flight); false for a rate.
    pub in_flight: bool,
    /// True when the limits could not be checked (Redis away): not the caller's doing.
    pub unavailable: bool,
}

/// How a refusal that is the store's, not a limit's, begins.
const UNCHECKED: &str = "[unchecked]";

/// Why a request or run needing a new limit key is refused while the node holds `max` live ones.
fn full(max: usize) -> GateRefusal {
    GateRefusal {
        reason: format!(
            "this node holds {max} limit keys in use (GATE_KEYS_MAX_DEFAULT: agent labels under a per-agent limit, \
             say); retry in a moment, when some have passed"
        ),
        retry_after_ms: 1000,
    }
}

impl EgressGate for EgressGates {
    fn admit<'a>(&'a self, upstream: &'a str, secrets: &'a [String]) -> GateFuture<'a, Result<GatePass, GateRefusal>> {
        Box::pin(async move {
            let all: Vec<EgressLimit> = {
                let limits = self.limits.read().unwrap_or_else(|p| p.into_inner());
                limits.iter().filter(|l| l.applies(upstream, secrets)).cloned().collect()
            };
            // A place in flight first (it waits for one to end), then the rate's turn.
            let bounded: Vec<&EgressLimit> = all.iter().filter(|l| l.concurrency_max.is_some()).collect();
            let unmarked = |r: GateRefusal| GateRefusal {
                reason: r.reason.trim_start_matches(UNCHECKED).trim_start().to_string(),
                ..r
            };
            let pass = match self.hold(&bounded).await.map_err(unmarked)? {
                Some(held) => GatePass::holding(held),
                None => GatePass::free(),
            };
            let applying: Vec<&EgressLimit> = all.iter().filter(|l| l.rate_per_second.is_some()).collect();
            let throttled_under = throttle_key(upstream, secrets);
            // A throttled upstream may be waited for within its own limit's bound, in all.
            let throttle_wait = Duration::from_millis(
                applying.iter().filter(|l| l.key.starts_with("upstream:")).map(|l| l.wait_ms_max).max().unwrap_or(0),
            );
            let started = std::time::Instant::now();
            let unreadable = |e: QueueError| GateRefusal {
                // Fails closed: a limit that cannot be read is not known to have room.
                reason: format!("the egress limits cannot be checked: {e}"),
                retry_after_ms: 1000,
            };
            let throttled = |ms: u64| GateRefusal {
                reason: format!(
                    "upstream {throttled_under} asked to be left alone for {ms} ms more (its Retry-After); no such \
                     request goes to it until then"
                ),
                retry_after_ms: ms,
            };
            loop {
                match self.check(&throttled_under, &applying).await.map_err(unreadable)? {
                    Checked::Go(0) => return Ok(pass),
                    Checked::Go(us) => {
                        let mut reserved = Reserved {
                            backend: self.backend.clone(),
                            keys: applying.iter().map(|l| (l.state_key(), l.interval_us())).collect(),
                            armed: true,
                        };
                        tokio::time::sleep(Duration::from_micros(us)).await;
                        // A throttle that came while it waited holds it back too (its room
                        // goes back as `reserved` drops).
                        if let Checked::Throttled(ms) = self.check(&throttled_under, &[]).await.map_err(unreadable)? {
                            return Err(throttled(ms));
                        }
                        reserved.armed = false;
                        return Ok(pass);
                    }
                    Checked::Throttled(ms) if started.elapsed() + Duration::from_millis(ms) <= throttle_wait => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    Checked::Throttled(ms) => return Err(throttled(ms)),
                    Checked::Refused(index, us) => return Err(applying[index].refusal(us)),
                    Checked::Full(max) => return Err(full(max)),
                }
            }
        })
    }

    fn answered<'a>(
        &'a self,
        (upstream, secrets): (&'a str, &'a [String]),
        status: u16,
        retry_after_ms: Option<u64>,
    ) -> GateFuture<'a, ()> {
        Box::pin(async move {
            let Some(ms) = retry_after_ms.filter(|ms| *ms > 0 && matches!(status, 429 | 503)) else { return };
            let ms = ms.min(self.throttle_ms_max.load(std::sync::atomic::Ordering::Relaxed));
            if ms == 0 {
                return; // throttles are off (egress_throttle_ms_max = 0)
            }
            let key = throttle_key(upstream, secrets);
            tracing::warn!(upstream = %key, status, retry_after_ms = ms, "upstream asked to be left alone: throttled");
            if let Err(e) = self.throttle(&key, ms).await {
                tracing::error!(upstream = %key, error = %e, "the upstream's throttle could not be kept");
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn limit(key: &str, rate: f64, burst: u32, wait_ms_max: u64) -> EgressLimit {
        EgressLimit {
            key: key.into(),
            rate_per_second: Some(rate),
            concurrency_max: None,
            burst,
            wait_ms_max,
            setting: "egress_limits[0]".into(),
        }
    }

    /// What every backend must do: space requests at the rate after the burst, refuse past the
    /// wait bound, key by upstream and by secret, and hold a throttled upstream back.
    /// Concurrency limits on `gates` and, for the fleet, `other` (another node's gates on the
    /// same store; the same gates in process): at most 2 in flight to an upstream, then a wait
    /// bounded by `wait_ms_max`, a place given back when its request ends; a run limit's place
    /// is held until its `Held` drops.
    pub(crate) async fn in_flight(gates: &EgressGates, other: &EgressGates) {
        let upstream = "http://in-flight:1";
        let bounded = EgressLimit {
            key: format!("upstream:{upstream}"),
            rate_per_second: None,
            concurrency_max: Some(2),
            burst: 1,
            wait_ms_max: 150,
            setting: "egress_limits[1]".into(),
        };
        for g in [gates, other] {
            g.set_limits(vec![bounded.clone()], EGRESS_THROTTLE_MS_MAX_DEFAULT);
        }
        let first = gates.admit(upstream, &[]).await.expect("a place");
        let second = other.admit(upstream, &[]).await.expect("a second place, on another node");
        assert!(first.holds() && second.holds());
        let started = std::time::Instant::now();
        let refused = gates.admit(upstream, &[]).await.expect_err("both places are taken");
        assert!(started.elapsed() >= Duration::from_millis(100), "it waited for a place first");
        assert!(
            refused.reason.contains("allows 2 in flight at once and that many requests are")
                && refused.reason.contains("egress_limits[1]"),
            "{}",
            refused.reason
        );
        // A place given back while one waits goes to it.
        let waiting = async { gates.admit(upstream, &[]).await };
        let freeing = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(first);
        };
        let (third, ()) = tokio::join!(waiting, freeing);
        let third = third.expect("the freed place");
        drop((second, third));
        // Given back in Redis by a spawned task: a moment later both places are free again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = (gates.admit(upstream, &[]).await, other.admit(upstream, &[]).await);
        assert!(again.0.is_ok() && again.1.is_ok(), "places come back when requests end");
        drop(again);
        tokio::time::sleep(Duration::from_millis(50)).await;

        // A run limit's place lasts as long as its run.
        let run = vec![EgressLimit { key: "run:tenant t".into(), wait_ms_max: 0, ..bounded.clone() }];
        let one = gates.admit_run(&run).await.expect("a place").held.expect("held");
        let two = other.admit_run(&run).await.expect("a place").held.expect("held");
        let refused = gates.admit_run(&run).await.expect_err("two runs in flight");
        assert!(
            refused.in_flight && refused.refusal.reason.contains("allows 2 in flight at once and that many runs are")
        );
        drop((one, two));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _three = gates.admit_run(&run).await.expect("room again");
    }

    pub(crate) async fn scenarios(gates: &EgressGates, upstream: &str) {
        let secret = vec!["TOKEN".to_string()];
        let started = std::time::Instant::now();
        for _ in 0..4 {
            gates.admit(upstream, &secret).await.expect("room, after a wait");
        }
        let took = started.elapsed();
        // Burst 2 at 20/s: two at once, then 50 ms apart.
        assert!(took >= Duration::from_millis(95), "{took:?}");
        // A request that would wait past 200 ms is refused, naming the limit.
        let other = format!("{upstream}-slow");
        gates.admit(&other, &[]).await.expect("the first");
        let refused = gates.admit(&other, &[]).await.expect_err("1/s: the next would wait ~1 s");
        assert!(refused.reason.contains("limited to 1 requests/s") && refused.reason.contains("egress_limits[0]"));
        // No limit applies elsewhere.
        gates.admit("http://elsewhere:1", &[]).await.expect("free");
        // A 429 with Retry-After holds the upstream back.
        let throttled = format!("{upstream}-busy");
        gates.answered((&throttled, &[]), 429, Some(2_000)).await;
        let refused = gates.admit(&throttled, &[]).await.expect_err("throttled");
        assert!(refused.reason.contains("Retry-After") && refused.retry_after_ms > 1_000, "{refused:?}");
        gates.answered((&throttled, &[]), 200, Some(9_000)).await; // only 429 and 503 throttle
        // A 429 to a request carrying a secret holds back only the requests carrying it.
        let keyed = format!("{upstream}-keyed");
        gates.answered((&keyed, &secret), 429, Some(2_000)).await;
        assert!(gates.admit(&keyed, &secret).await.is_err(), "the same credential waits");
        gates.admit(&keyed, &[]).await.expect("another (none) does not");
        // A request that dies waiting gives its room back: the next one waits no longer.
        let give = vec!["GIVE".to_string()];
        gates.admit(upstream, &give).await.expect("the first at once");
        for _ in 0..3 {
            // Each would wait ~200 ms more than the last; each dies after 10 ms.
            let cut = tokio::time::timeout(Duration::from_millis(10), gates.admit(upstream, &give)).await;
            assert!(cut.is_err(), "it was waiting");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        gates.admit(upstream, &give).await.expect("room");
        assert!(
            started.elapsed() < Duration::from_millis(350),
            "the dead ones' room came back: {:?}",
            started.elapsed()
        );
    }

    pub(crate) fn limits(upstream: &str) -> Vec<EgressLimit> {
        vec![
            limit("secret:TOKEN", 20.0, 2, 1_000),
            limit(&format!("upstream:{upstream}-slow"), 1.0, 1, 200),
            limit("secret:GIVE", 5.0, 1, 2_000),
        ]
    }

    #[tokio::test]
    async fn a_node_holds_at_most_its_keys_and_throttles() {
        let gates = EgressGates::local_with_keys_max(Vec::new(), 60_000, 2);
        // One run a second under each agent's limit: each new label is a key that stays a second.
        let agent = |label: &str| vec![limit(&format!("run:tenant a agent {label}"), 1.0, 1, 0)];
        gates.admit_run(&agent("x")).await.expect("a key");
        gates.admit_run(&agent("y")).await.expect("a second");
        let refused = gates.admit_run(&agent("z")).await.expect_err("a third label past the bound");
        assert!(refused.refusal.reason.contains("GATE_KEYS_MAX_DEFAULT"), "{}", refused.refusal.reason);
        assert!(gates.admit_run(&agent("x")).await.is_err(), "a key held is still counted (and x waits a second)");
        // Throttles past the bound are not kept.
        for upstream in ["http://a:1", "http://b:1", "http://c:1"] {
            gates.answered((upstream, &[]), 429, Some(5_000)).await;
        }
        assert!(gates.admit("http://a:1", &[]).await.is_err() && gates.admit("http://b:1", &[]).await.is_err());
        gates.admit("http://c:1", &[]).await.expect("its throttle was not kept");
        // Places in flight: one key per per-agent in-flight limit, at most two held at once.
        let in_flight = |label: &str| {
            vec![EgressLimit {
                concurrency_max: Some(1),
                rate_per_second: None,
                ..limit(&format!("run:tenant a agent {label}"), 1.0, 1, 0)
            }]
        };
        let x = gates.admit_run(&in_flight("x")).await.expect("a key").held;
        let y = gates.admit_run(&in_flight("y")).await.expect("a second").held;
        let refused = gates.admit_run(&in_flight("z")).await.expect_err("a third key past the bound");
        assert!(refused.refusal.reason.contains("GATE_KEYS_MAX_DEFAULT"), "{}", refused.refusal.reason);
        drop((x, y));
        let _z = gates.admit_run(&in_flight("z")).await.expect("keys whose places came back are gone");
    }

    #[tokio::test]
    async fn in_process_concurrency_limits_hold_places_until_requests_end() {
        let gates = EgressGates::local(Vec::new(), EGRESS_THROTTLE_MS_MAX_DEFAULT);
        in_flight(&gates, &gates).await;
    }

    #[tokio::test]
    async fn in_process_gates_space_refuse_and_throttle() {
        let gates = EgressGates::local(limits("http://up:1"), EGRESS_THROTTLE_MS_MAX_DEFAULT);
        scenarios(&gates, "http://up:1").await;
    }
}
