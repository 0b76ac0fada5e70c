//! Capability lanes and the order jobs are taken in.
//!
//! A job's [`Needs`] (a GPU from its tool's `describe`, a minimum of memory, a CPU architecture,
//! operator labels) name its *lane*; a worker's [`Advertisement`] says which lanes it can serve,
//! and it reads only those. Within a lane, jobs wait by priority ([`PRIORITY_MAX`] first), and
//! within a priority the tenants with queued jobs take turns (deficit round robin: a tenant of
//! weight `w` gets `w` jobs per turn), and within a tenant its agent labels take turns, one job
//! each. So one tenant's flood delays another tenant's single job by at most `w` jobs per worker
//! slot, wherever it was submitted. The Redis queue keeps these turns in Lua
//! (`redis/lua/common.lua`'s `enqueue`, `redis/lua/take.lua`); the in-process queue keeps the
//! same ones in memory (`embedded.rs`, through [`FairTurns`]).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// The lane of a job that needs nothing in particular: every worker serves it.
pub const DEFAULT_LANE: &str = "default";
/// Priorities run from 0 to this; higher is taken first.
pub const PRIORITY_MAX: u8 = 9;
/// A tenant's priority when its config names none.
pub const PRIORITY_DEFAULT: u8 = 4;
/// Distinct lanes one queue holds (each a set of needs of some configured tool); a job that
/// would make one more is refused, naming this limit.
pub const LANES_MAX: usize = 1_024;
/// Operator labels one worker advertises or one tool needs.
pub const LABELS_MAX: usize = 32;
/// Bytes of one label's key or value.
pub const LABEL_BYTES_MAX: usize = 64;
/// A tenant's weight at most: jobs it takes per turn.
pub const WEIGHT_MAX: u32 = 1_000;

/// What a job needs of the worker that runs it. Empty: any worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Needs {
    /// A GPU adapter (the tool's `describe` says it uses GPU kernels).
    pub gpu: bool,
    /// Bytes of memory the machine has at least.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes_min: Option<u64>,
    /// The CPU architecture, as Rust names it (`x86_64`, `aarch64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Operator labels the worker must carry with these values (`zone = "eu"`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What a worker has, as it tells the queue with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Advertisement {
    /// Its GPU, when it serves GPU work: the adapter (or, when the operator chose `--gpu cpu`,
    /// `cpu-reference`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuAdvert>,
    /// Bytes of memory the machine has (none where it cannot be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The CPU architecture (`std::env::consts::ARCH`).
    pub arch: String,
    /// Operator labels (`guild worker --label zone=eu`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A worker's GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuAdvert {
    /// The adapter's name (`llvmpipe (LLVM 15.0.6, 256 bits)`), or `cpu-reference`.
    pub adapter: String,
    /// Its largest buffer, bytes (none for the CPU reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

impl Needs {
    /// True when nothing in particular is needed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The lane's name: [`DEFAULT_LANE`] for no needs, else the needs in one fixed order
    /// (`gpu,arch=x86_64,memory>=17179869184,label:zone=eu`), so equal needs share a lane.
    pub fn lane(&self) -> String {
        if self.is_empty() {
            return DEFAULT_LANE.to_string();
        }
        let mut parts = Vec::new();
        if self.gpu {
            parts.push("gpu".to_string());
        }
        if let Some(arch) = &self.arch {
            parts.push(format!("arch={arch}"));
        }
        if let Some(bytes) = self.memory_bytes_min {
            parts.push(format!("memory>={bytes}"));
        }
        parts.extend(self.labels.iter().map(|(k, v)| format!("label:{k}={v}")));
        parts.join(",")
    }

    /// How many things it asks for: a worker reads its most demanding lanes first.
    pub fn weight(&self) -> usize {
        usize::from(self.gpu)
            + usize::from(self.arch.is_some())
            + usize::from(self.memory_bytes_min.is_some())
            + self.labels.len()
    }

    /// Whether `worker` has all of it.
    pub fn met_by(&self, worker: &Advertisement) -> bool {
        (!self.gpu || worker.gpu.is_some())
            && self.arch.as_ref().is_none_or(|arch| *arch == worker.arch)
            && self.memory_bytes_min.is_none_or(|min| worker.memory_bytes.is_some_and(|has| has >= min))
            && self.labels.iter().all(|(k, v)| worker.labels.get(k) == Some(v))
    }

    /// Check the labels against [`LABELS_MAX`] and [`LABEL_BYTES_MAX`], and the architecture's
    /// characters (a `,` or `=` in it could make two sets of needs one lane's name).
    ///
    /// # Errors
    /// A message naming the label or the architecture and what it may hold.
    pub fn check(&self) -> Result<(), String> {
        if let Some(arch) = &self.arch {
            let ok = (1..=LABEL_BYTES_MAX).contains(&arch.len())
                && arch.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(format!("arch {arch:?}: 1 to {LABEL_BYTES_MAX} letters, digits or any of . _ -"));
            }
        }
        check_labels(&self.labels)
    }
}

/// Check operator labels: at most [`LABELS_MAX`], each key and value 1 to [`LABEL_BYTES_MAX`]
/// letters, digits or `. _ - /`.
///
/// # Errors
/// A message naming the label and what it may hold.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > LABELS_MAX {
        return Err(format!("{} labels; at most {LABELS_MAX} (LABELS_MAX)", labels.len()));
    }
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= LABEL_BYTES_MAX
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    };
    for (k, v) in labels {
        if !ok(k) || !ok(v) {
            return Err(format!(
                "label {k:?} = {v:?}: keys and values are 1 to {LABEL_BYTES_MAX} letters, digits or any of . _ - /"
            ));
        }
    }
    Ok(())
}

/// Parse `KEY=VALUE` (a worker's `--label`).
///
/// # Errors
/// A message when there is no `=`.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("label {text:?} is not KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

/// The memory this worker may use, bytes: the machine's (`MemTotal` of `/proc/meminfo`), or its
/// cgroup's limit when lower (a container's `memory.max`); none where neither can be read.
pub fn machine_memory_bytes() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    });
    // cgroup v2 says "max" for no limit; v1 a huge number.
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok());
    match (machine, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// Where a job waits and in whose turn: its lane, its priority, and the fairness keys (tenant,
/// then agent label) whose turns it takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Place {
    /// 0 to [`PRIORITY_MAX`]; higher is taken first.
    pub priority: u8,
    /// The tenant's name.
    pub tenant: String,
    /// The caller's agent label ('' for none).
    pub agent: String,
}

/// Deficit round robin over priorities, tenants and agents, in memory: who goes next among the
/// waiting items. Holds only what waits (an emptied tenant or agent leaves the rings), so it
/// is bounded by the items put in.
#[derive(Debug)]
pub struct FairTurns<T> {
    /// Per priority, the tenants with waiting items, in turn order.
    priorities: BTreeMap<u8, Ring<T>>,
    len: usize,
}

#[derive(Debug)]
struct Ring<T> {
    order: VecDeque<String>,
    tenants: HashMap<String, TenantTurn<T>>,
}

#[derive(Debug)]
struct TenantTurn<T> {
    /// Items it takes per turn (its latest push says).
    weight: u32,
    /// Items it may still take in its current turn.
    credit: u32,
    order: VecDeque<String>,
    agents: HashMap<String, VecDeque<T>>,
}

impl<T> Default for FairTurns<T> {
    fn default() -> Self {
        Self { priorities: BTreeMap::new(), len: 0 }
    }
}

impl<T> FairTurns<T> {
    /// Items waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Put `item` at the back of its agent's line; its tenant takes `weight` items per turn
    /// (1 to [`WEIGHT_MAX`]).
    pub fn push(&mut self, place: &Place, weight: u32, item: T) {
        let ring = self
            .priorities
            .entry(place.priority)
            .or_insert_with(|| Ring { order: VecDeque::new(), tenants: HashMap::new() });
        let tenant = ring.tenants.entry(place.tenant.clone()).or_insert_with(|| {
            ring.order.push_back(place.tenant.clone());
            TenantTurn { weight, credit: 0, order: VecDeque::new(), agents: HashMap::new() }
        });
        tenant.weight = weight.clamp(1, WEIGHT_MAX);
        let line = tenant.agents.entry(place.agent.clone()).or_insert_with(|| {
            tenant.order.push_back(place.agent.clone());
            VecDeque::new()
        });
        line.push_back(item);
        self.len += 1;
    }

    /// The next item: highest priority, then the tenant whose turn it is (it keeps the turn for
    /// its weight's worth of items), then its agent whose turn it is (one item each).
    pub fn pop(&mut self) -> Option<T> {
        let (&priority, ring) = self.priorities.iter_mut().next_back()?;
        let name = ring.order.front()?.clone();
        let tenant = ring.tenants.get_mut(&name)?;
        // A turn's credit is read as at most the tenant's weight now (its latest push may have
        // lowered it), as the Redis queue reads it.
        tenant.credit = if tenant.credit == 0 { tenant.weight } else { tenant.credit.min(tenant.weight) };
        let agent = tenant.order.pop_front()?;
        let line = tenant.agents.get_mut(&agent)?;
        let item = line.pop_front();
        if line.is_empty() {
            tenant.agents.remove(&agent);
        } else {
            tenant.order.push_back(agent);
        }
        tenant.credit -= 1;
        if tenant.order.is_empty() {
            ring.tenants.remove(&name);
            ring.order.pop_front();
        } else if tenant.credit == 0 {
            ring.order.rotate_left(1);
        }
        if ring.order.is_empty() {
            self.priorities.remove(&priority);
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    /// Drop every item `keep` says no to (callers that went away), keeping the turns' order.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut removed = 0;
        self.priorities.retain(|_, ring| {
            ring.tenants.retain(|_, tenant| {
                tenant.agents.retain(|_, line| {
                    let before = line.len();
                    line.retain(&mut keep);
                    removed += before - line.len();
                    !line.is_empty()
                });
                tenant.order.retain(|a| tenant.agents.contains_key(a));
                !tenant.order.is_empty()
            });
            ring.order.retain(|t| ring.tenants.contains_key(t));
            !ring.order.is_empty()
        });
        self.len -= removed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(priority: u8, tenant: &str, agent: &str) -> Place {
        Place { priority, tenant: tenant.into(), agent: agent.into() }
    }

    #[test]
    fn lanes_name_needs_in_one_order_and_workers_serve_what_they_have() {
        assert_eq!(Needs::default().lane(), DEFAULT_LANE);
        let needs = Needs {
            gpu: true,
            memory_bytes_min: Some(1 << 30),
            arch: Some("x86_64".into()),
            labels: [("zone".to_string(), "eu".to_string())].into(),
        };
        assert_eq!(needs.lane(), "gpu,arch=x86_64,memory>=1073741824,label:zone=eu");
        let mut worker = Advertisement {
            gpu: Some(GpuAdvert { adapter: "llvmpipe".into(), memory_bytes: None }),
            memory_bytes: Some(2 << 30),
            arch: "x86_64".into(),
            labels: [("zone".to_string(), "eu".to_string())].into(),
        };
        assert!(needs.met_by(&worker));
        assert!(Needs::default().met_by(&Advertisement::default()));
        worker.gpu = None;
        assert!(!needs.met_by(&worker), "no GPU");
        worker.gpu = Some(GpuAdvert::default());
        worker.memory_bytes = Some(1 << 29);
        assert!(!needs.met_by(&worker), "too little memory");
        worker.memory_bytes = None;
        assert!(!needs.met_by(&worker), "memory unknown");
        worker.memory_bytes = Some(1 << 31);
        worker.labels.insert("zone".into(), "us".into());
        assert!(!needs.met_by(&worker), "another zone");
        let many: BTreeMap<String, String> = (0..=LABELS_MAX).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(check_labels(&many).expect_err("too many").contains("LABELS_MAX"));
        assert!(check_labels(&[("a b".to_string(), "v".to_string())].into()).is_err());
        assert_eq!(parse_label("zone=eu"), Ok(("zone".into(), "eu".into())));
        assert!(parse_label("zone").is_err());
    }

    #[test]
    fn a_flooding_tenant_takes_turns_with_a_single_job() {
        let mut turns = FairTurns::default();
        for i in 0..1_000 {
            turns.push(&place(4, "a", ""), 1, format!("a{i}"));
        }
        turns.push(&place(4, "b", ""), 1, "b0".to_string());
        let first: Vec<String> = (0..3).filter_map(|_| turns.pop()).collect();
        assert_eq!(first, ["a0", "b0", "a1"]);
        assert_eq!(turns.len(), 998);
    }

    #[test]
    fn weights_priorities_and_agents_order_the_turns() {
        let mut turns = FairTurns::default();
        for i in 0..4 {
            turns.push(&place(4, "heavy", ""), 2, format!("h{i}"));
            turns.push(&place(4, "light", ""), 1, format!("l{i}"));
        }
        turns.push(&place(9, "late", ""), 1, "urgent".to_string());
        let order: Vec<String> = std::iter::from_fn(|| turns.pop()).collect();
        assert_eq!(order, ["urgent", "h0", "h1", "l0", "h2", "h3", "l1", "l2", "l3"]);

        let mut turns = FairTurns::default();
        for i in 0..3 {
            turns.push(&place(4, "t", "noisy"), 1, format!("n{i}"));
        }
        turns.push(&place(4, "t", "quiet"), 1, "q0".to_string());
        let order: Vec<String> = std::iter::from_fn(|| turns.pop()).collect();
        assert_eq!(order, ["n0", "q0", "n1", "n2"]);
        assert!(turns.is_empty());
    }

    #[test]
    fn a_weight_changed_mid_turn_holds_from_the_next_item_as_in_redis() {
        let mut turns = FairTurns::default();
        for i in 0..6 {
            turns.push(&place(4, "a", ""), 5, format!("a{i}"));
            turns.push(&place(4, "b", ""), 1, format!("b{i}"));
        }
        assert_eq!(turns.pop().as_deref(), Some("a0"));
        turns.push(&place(4, "a", ""), 1, "a6".to_string());
        let order: Vec<String> = (0..2).filter_map(|_| turns.pop()).collect();
        assert_eq!(order, ["a1", "b0"], "weight 1 now: the turn of five ends");
        turns.push(&place(4, "a", ""), 2, "a7".to_string());
        let order: Vec<String> = (0..6).filter_map(|_| turns.pop()).collect();
        assert_eq!(order, ["a2", "a3", "b1", "a4", "a5", "b2"]);
    }

    #[test]
    fn retained_items_keep_their_turns() {
        let mut turns = FairTurns::default();
        for i in 0..3 {
            turns.push(&place(4, "a", ""), 1, i);
            turns.push(&place(4, "b", ""), 1, 10 + i);
        }
        turns.retain(|i| *i != 10 && *i != 11 && *i != 12);
        assert_eq!(turns.len(), 3);
        let order: Vec<i32> = std::iter::from_fn(|| turns.pop()).collect();
        assert_eq!(order, [0, 1, 2]);
    }
}
