//! A tool name's revisions and how calls are routed between them: which revision is
//! `current`, which (at most one) is the `candidate` and on what share of calls it runs, what
//! it is shadowed on, its guard rails, and the flags that switch the tool off. Pure data and
//! pure decisions: the daemon keeps a record per name, persists it (a file, or Redis for a
//! fleet) and swaps it whole on every change; routing a call reads it and hashes two strings.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Basis points in 100%: a share of calls is routed in 1/10 000ths.
pub const BASIS_POINTS: u32 = 10_000;

/// Revisions a tool name keeps; adding one past it is refused (`revisions_full`).
pub const REVISIONS_MAX: usize = 256;

/// Longest note, reason or actor name kept in a record, bytes.
pub const ROLLOUT_TEXT_BYTES_MAX: usize = 1024;

/// Tenants a canary may be restricted to, or a tool disabled for one by one.
pub const ROLLOUT_TENANTS_MAX: usize = 1024;

/// Longest tool name, bytes.
pub const TOOL_NAME_BYTES_MAX: usize = 64;

/// Longest tenant name kept in a record (a canary's tenants, a flag's tenant), bytes.
pub const TENANT_NAME_BYTES_MAX: usize = 128;

/// Check a tool name: 1 to [`TOOL_NAME_BYTES_MAX`] bytes of ASCII letters, digits, `-`, `_`
/// and `.`, not starting with `.` (names go into URLs, metric labels, Redis fields and MCP).
///
/// # Errors
/// [`RolloutError::Invalid`] saying what is wrong.
pub fn check_tool_name(name: &str) -> Result<(), RolloutError> {
    let fine = !name.is_empty()
        && name.len() <= TOOL_NAME_BYTES_MAX
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if fine {
        return Ok(());
    }
    Err(RolloutError::Invalid(format!(
        "tool name {:?} is not 1 to {TOOL_NAME_BYTES_MAX} letters, digits, `-`, `_` or `.` (not starting with `.`)",
        name.chars().take(80).collect::<String>()
    )))
}

/// Everything about one tool name: its revisions, which one callers get, the candidate and
/// its ramp, and the flags. `generation` grows by one with every change, so a node can tell
/// a newer record from an older one (and Redis can refuse a write based on a stale read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRecord {
    /// The name clients call.
    pub name: String,
    /// Every revision, oldest first; revision `n` is at index `n - 1`.
    pub revisions: Vec<Revision>,
    /// The revision callers get (from 1).
    pub current: u32,
    /// The revision being tried, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
    /// Whether the tool is switched off, globally or for some tenants.
    #[serde(default)]
    pub flags: Flags,
    /// Grows by one with every change.
    pub generation: u64,
}

/// One revision of a tool name: a component and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    /// Its number under the name, from 1.
    pub revision: u32,
    /// blake3 of its component, lowercase hex.
    pub component: String,
    /// The version its `describe` gives.
    pub version: String,
    /// The description its `describe` gives.
    pub description: String,
    /// When it was added, unix ms.
    pub added_unix_ms: u64,
    /// Who added it: a tenant's name, or `config`.
    pub added_by: String,
    /// What the one who added it said.
    #[serde(default)]
    pub note: String,
    /// Why it was rolled back, when it was (automatically or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
}

/// The revision being tried: the share of calls it gets, the share it shadows, the tenants it
/// is limited to, and the guard rails that roll it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// The candidate revision.
    pub revision: u32,
    /// Share of calls it answers, basis points (0 to 10 000).
    pub ramp_bp: u32,
    /// Share of the current revision's calls it is also run on, against their tapes, basis
    /// points.
    #[serde(default)]
    pub shadow_bp: u32,
    /// Only these tenants' calls are ramped or shadowed; empty: everyone's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// When the rollout started, unix ms.
    pub started_unix_ms: u64,
    /// Who started it.
    pub started_by: String,
    /// The gate report the rollout points at (its digest), when it was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_report: Option<String>,
    /// Whether it was started over a failed gate with `force`.
    #[serde(default)]
    pub forced: bool,
    /// What rolls it back automatically.
    #[serde(default)]
    pub guard: GuardRails,
}

/// When a ramping candidate is rolled back automatically: its calls against the current
/// revision's over a sliding window, once both have a minimum sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardRails {
    /// The sliding window, s.
    pub window_s: u64,
    /// Calls the candidate must have had in the window before it is judged.
    pub min_calls: u64,
    /// Largest share of the candidate's calls that may fail (any outcome but output), percent.
    pub error_rate_max_percent: f64,
    /// Largest share of the candidate's calls that may trap, percent.
    pub trap_rate_max_percent: f64,
    /// Largest candidate p99 duration as a multiple of the current revision's (when the current
    /// one has at least `min_calls` in the window).
    pub p99_ratio_max: f64,
    /// Largest mean fuel per call of the candidate as a multiple of the current revision's.
    pub fuel_ratio_max: f64,
}

/// Default [`GuardRails::window_s`].
pub const GUARD_WINDOW_S_DEFAULT: u64 = 60;
/// Default [`GuardRails::min_calls`].
pub const GUARD_MIN_CALLS_DEFAULT: u64 = 20;

impl Default for GuardRails {
    fn default() -> Self {
        Self {
            window_s: GUARD_WINDOW_S_DEFAULT,
            min_calls: GUARD_MIN_CALLS_DEFAULT,
            error_rate_max_percent: 10.0,
            trap_rate_max_percent: 1.0,
            p99_ratio_max: 3.0,
            fuel_ratio_max: 2.0,
        }
    }
}

/// Switches that turn a tool (every revision of it) off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flags {
    /// Off for everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
    /// Off for these tenants.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, Disabled>,
}

/// Why, by whom and since when a tool is off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disabled {
    /// What the operator said; callers see it.
    pub reason: String,
    /// The admin who switched it off.
    pub by: String,
    /// When, unix ms.
    pub at_unix_ms: u64,
}

/// Which revision a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The revision that answers.
    pub revision: u32,
    /// Whether it is the candidate's ramp that chose it.
    pub candidate: bool,
    /// The candidate revision to shadow this call with, if it was picked for a shadow run.
    pub shadow: Option<u32>,
}

/// A change to a tool's record that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// No such revision.
    #[error("tool {name:?} has no revision {revision}; `guild tool revisions {name}` lists them")]
    NoRevision {
        /// The tool.
        name: String,
        /// The revision asked for.
        revision: u32,
    },
    /// No candidate to promote, ramp or roll back.
    #[error(
        "tool {0:?} has no candidate; start one with `guild rollout start`, or roll back to a revision with --to N"
    )]
    NoCandidate(String),
    /// The candidate asked for is the current revision.
    #[error("revision {revision} is already the current revision of {name:?}")]
    AlreadyCurrent {
        /// The tool.
        name: String,
        /// The revision.
        revision: u32,
    },
    /// Too many revisions.
    #[error("tool {0:?} has {REVISIONS_MAX} revisions, the most kept; no more can be added")]
    Full(String),
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
}

impl RolloutError {
    /// The stable error code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            RolloutError::NoRevision { .. } => "unknown_revision",
            RolloutError::NoCandidate(_) => "no_candidate",
            RolloutError::AlreadyCurrent { .. } => "already_current",
            RolloutError::Full(_) => "revisions_full",
            RolloutError::Invalid(_) => "bad_request",
        }
    }
}

/// Which part of a stable hash of `(tenant, key)` a call falls in, 0 to 9 999: the same
/// tenant and key (an idempotency key, or the run id) always land in the same place, so a
/// retried call stays on its revision. 64-bit FNV-1a, a fixed function no toolchain changes.
pub fn route_point(tenant: &str, key: &str, salt: u64) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET ^ salt;
    for byte in tenant.as_bytes().iter().chain([0u8].iter()).chain(key.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // Fold the high bits in: FNV's low bits alone are weakly mixed for short keys.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    u32::try_from(hash % u64::from(BASIS_POINTS)).expect("below 10 000")
}

fn check_tenants(tenants: &[String]) -> Result<(), RolloutError> {
    if tenants.len() > ROLLOUT_TENANTS_MAX {
        return Err(RolloutError::Invalid(format!(
            "a canary names at most {ROLLOUT_TENANTS_MAX} tenants, not {}",
            tenants.len()
        )));
    }
    if tenants.iter().any(|t| t.is_empty() || t.len() > TENANT_NAME_BYTES_MAX) {
        return Err(RolloutError::Invalid(format!("a tenant name is 1 to {TENANT_NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// The salt the shadow draw uses, so the ramp and the shadow pick independent slices.
const SHADOW_SALT: u64 = 0x5348_4144_4f57;

/// Check a note, reason or actor name against [`ROLLOUT_TEXT_BYTES_MAX`].
///
/// # Errors
/// [`RolloutError::Invalid`] naming `what` when it is longer.
pub fn bounded(what: &str, text: &str) -> Result<(), RolloutError> {
    if text.len() > ROLLOUT_TEXT_BYTES_MAX {
        return Err(RolloutError::Invalid(format!(
            "{what} is {} bytes; the most kept is {ROLLOUT_TEXT_BYTES_MAX}",
            text.len()
        )));
    }
    Ok(())
}

/// Percent (0 to 100, fractions allowed) as basis points.
///
/// # Errors
/// [`RolloutError::Invalid`] when it is not a number from 0 to 100.
pub fn percent_to_bp(what: &str, percent: f64) -> Result<u32, RolloutError> {
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return Err(RolloutError::Invalid(format!("{what} must be from 0 to 100, not {percent}")));
    }
    // Checked above: a finite number from 0 to 100, so 0 to 10 000 after scaling.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bp = (percent * 100.0).round() as u32;
    Ok(bp)
}

impl ToolRecord {
    /// Check a record read from a file or Redis (or about to be written): a valid name,
    /// revisions numbered 1, 2, … up to [`REVISIONS_MAX`], a current (and candidate) revision
    /// among them, shares within 100%, texts and tenant lists within their limits.
    ///
    /// # Errors
    /// [`RolloutError::Invalid`] naming the first thing wrong.
    pub fn validate(&self) -> Result<(), RolloutError> {
        let bad = |m: String| Err(RolloutError::Invalid(format!("the record of tool {:?}: {m}", self.name)));
        check_tool_name(&self.name)?;
        if self.revisions.is_empty() || self.revisions.len() > REVISIONS_MAX {
            return bad(format!("it has {} revisions; 1 to {REVISIONS_MAX} are kept", self.revisions.len()));
        }
        for (i, r) in self.revisions.iter().enumerate() {
            if usize::try_from(r.revision).ok() != Some(i + 1) {
                return bad(format!("revision {} is listed at place {}", r.revision, i + 1));
            }
            if r.component.len() != 64 || !r.component.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("revision {} names no blake3 digest", r.revision));
            }
            for (what, text) in [("note", &r.note), ("actor", &r.added_by), ("version", &r.version)] {
                bounded(what, text)?;
            }
            bounded("description", &r.description)?;
            if let Some(why) = &r.rolled_back {
                bounded("reason", why)?;
            }
        }
        if self.revision(self.current).is_none() {
            return bad(format!("its current revision {} is not one of its revisions", self.current));
        }
        if let Some(c) = &self.candidate {
            if self.revision(c.revision).is_none() || c.revision == self.current {
                return bad(format!("its candidate revision {} is not another of its revisions", c.revision));
            }
            if c.ramp_bp > BASIS_POINTS || c.shadow_bp > BASIS_POINTS {
                return bad("a share past 100%".into());
            }
            check_tenants(&c.tenants)?;
            bounded("actor", &c.started_by)?;
        }
        if self.flags.tenants.len() > ROLLOUT_TENANTS_MAX {
            return bad(format!(
                "it is disabled for {} tenants; at most {ROLLOUT_TENANTS_MAX}",
                self.flags.tenants.len()
            ));
        }
        for (tenant, d) in
            self.flags.disabled.iter().map(|d| ("", d)).chain(self.flags.tenants.iter().map(|(t, d)| (t.as_str(), d)))
        {
            if tenant.len() > TENANT_NAME_BYTES_MAX {
                return bad("a tenant name past its limit".into());
            }
            bounded("reason", &d.reason)?;
            bounded("actor", &d.by)?;
        }
        Ok(())
    }

    /// A new name whose first revision is `first`, current.
    pub fn new(name: &str, first: Revision) -> Self {
        let first = Revision { revision: 1, ..first };
        Self {
            name: name.to_string(),
            revisions: vec![first],
            current: 1,
            candidate: None,
            flags: Flags::default(),
            generation: 1,
        }
    }

    /// Revision `n`.
    pub fn revision(&self, n: u32) -> Option<&Revision> {
        let index = usize::try_from(n.checked_sub(1)?).ok()?;
        self.revisions.get(index)
    }

    fn revision_mut(&mut self, n: u32) -> Option<&mut Revision> {
        let index = usize::try_from(n.checked_sub(1)?).ok()?;
        self.revisions.get_mut(index)
    }

    /// The revision whose component is `component` (hex).
    pub fn find(&self, component: &str) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.component == component)
    }

    /// The current revision.
    pub fn current_revision(&self) -> &Revision {
        self.revision(self.current).unwrap_or(&self.revisions[0])
    }

    /// Why `tenant` may not call the tool now, if it may not.
    pub fn disabled_for(&self, tenant: &str) -> Option<&Disabled> {
        self.flags.disabled.as_ref().or_else(|| self.flags.tenants.get(tenant))
    }

    /// Which revision answers `tenant`'s call with routing key `key` (its idempotency key, else
    /// its run id). Costs two short hashes.
    pub fn route(&self, tenant: &str, key: &str) -> Route {
        let current = Route { revision: self.current, candidate: false, shadow: None };
        let Some(candidate) = &self.candidate else { return current };
        if !candidate.tenants.is_empty() && !candidate.tenants.iter().any(|t| t == tenant) {
            return current;
        }
        if candidate.ramp_bp > 0 && route_point(tenant, key, 0) < candidate.ramp_bp {
            return Route { revision: candidate.revision, candidate: true, shadow: None };
        }
        if candidate.shadow_bp > 0 && route_point(tenant, key, SHADOW_SALT) < candidate.shadow_bp {
            return Route { shadow: Some(candidate.revision), ..current };
        }
        current
    }

    fn changed(&mut self) {
        self.generation += 1;
    }

    /// Add a revision (never changing what callers get). The same component again is not added:
    /// its existing revision number comes back with `false`.
    ///
    /// # Errors
    /// [`RolloutError::Full`] past [`REVISIONS_MAX`]; [`RolloutError::Invalid`] for a note or
    /// actor name past [`ROLLOUT_TEXT_BYTES_MAX`].
    pub fn add(&mut self, revision: Revision) -> Result<(u32, bool), RolloutError> {
        if let Some(existing) = self.find(&revision.component) {
            return Ok((existing.revision, false));
        }
        if self.revisions.len() >= REVISIONS_MAX {
            return Err(RolloutError::Full(self.name.clone()));
        }
        bounded("the note", &revision.note)?;
        bounded("the actor", &revision.added_by)?;
        let n = u32::try_from(self.revisions.len() + 1).expect("at most REVISIONS_MAX revisions");
        self.revisions.push(Revision { revision: n, rolled_back: None, ..revision });
        self.changed();
        Ok((n, true))
    }

    /// Start (or change) a rollout of `candidate` (replacing any other candidate).
    ///
    /// # Errors
    /// [`RolloutError::NoRevision`], [`RolloutError::AlreadyCurrent`], or
    /// [`RolloutError::Invalid`] for shares past 100% or too many tenants.
    pub fn start(&mut self, candidate: Candidate) -> Result<(), RolloutError> {
        if self.revision(candidate.revision).is_none() {
            return Err(RolloutError::NoRevision { name: self.name.clone(), revision: candidate.revision });
        }
        if candidate.revision == self.current {
            return Err(RolloutError::AlreadyCurrent { name: self.name.clone(), revision: candidate.revision });
        }
        if candidate.ramp_bp > BASIS_POINTS || candidate.shadow_bp > BASIS_POINTS {
            return Err(RolloutError::Invalid("a share of calls is at most 100%".into()));
        }
        bounded("the actor", &candidate.started_by)?;
        check_tenants(&candidate.tenants)?;
        if let Some(r) = self.revision_mut(candidate.revision) {
            r.rolled_back = None;
        }
        self.candidate = Some(candidate);
        self.changed();
        Ok(())
    }

    /// Make the candidate current; the candidate is cleared.
    ///
    /// # Errors
    /// [`RolloutError::NoCandidate`].
    pub fn promote(&mut self) -> Result<u32, RolloutError> {
        let candidate = self.candidate.take().ok_or_else(|| RolloutError::NoCandidate(self.name.clone()))?;
        self.current = candidate.revision;
        self.changed();
        Ok(candidate.revision)
    }

    /// Roll back: with `to`, make that revision current at once (the candidate, if any, is
    /// cleared); without, send every call back to the current revision and mark the candidate
    /// rolled back with `reason`.
    ///
    /// # Errors
    /// [`RolloutError::NoRevision`] for an unknown `to`; [`RolloutError::NoCandidate`] with no
    /// `to` and no candidate.
    pub fn rollback(&mut self, to: Option<u32>, reason: &str) -> Result<u32, RolloutError> {
        bounded("the reason", reason)?;
        if let Some(to) = to {
            if self.revision(to).is_none() {
                return Err(RolloutError::NoRevision { name: self.name.clone(), revision: to });
            }
            let left = self.current;
            if left == to && self.candidate.is_none() {
                return Err(RolloutError::AlreadyCurrent { name: self.name.clone(), revision: to });
            }
            if let Some(candidate) = self.candidate.take()
                && candidate.revision != to
                && let Some(r) = self.revision_mut(candidate.revision)
            {
                r.rolled_back = Some(reason.to_string());
            }
            if left != to
                && let Some(r) = self.revision_mut(left)
            {
                r.rolled_back = Some(reason.to_string());
            }
            self.current = to;
            if let Some(r) = self.revision_mut(to) {
                r.rolled_back = None;
            }
            self.changed();
            return Ok(to);
        }
        let candidate = self.candidate.take().ok_or_else(|| RolloutError::NoCandidate(self.name.clone()))?;
        if let Some(r) = self.revision_mut(candidate.revision) {
            r.rolled_back = Some(reason.to_string());
        }
        self.changed();
        Ok(self.current)
    }

    /// Switch the tool off (for `tenant`, or everyone), or back on (`disabled: None`).
    ///
    /// # Errors
    /// [`RolloutError::Invalid`] for a reason past [`ROLLOUT_TEXT_BYTES_MAX`] or too many
    /// tenants.
    pub fn set_flag(&mut self, tenant: Option<&str>, disabled: Option<Disabled>) -> Result<(), RolloutError> {
        if let Some(d) = &disabled {
            bounded("the reason", &d.reason)?;
            bounded("the actor", &d.by)?;
        }
        match (tenant, disabled) {
            (None, Some(disabled)) => self.flags.disabled = Some(disabled),
            // On for everyone: every switch off, global and per tenant, is cleared.
            (None, None) => self.flags = Flags::default(),
            (Some(tenant), Some(disabled)) => {
                if tenant.len() > TENANT_NAME_BYTES_MAX {
                    return Err(RolloutError::Invalid(format!(
                        "a tenant name is at most {TENANT_NAME_BYTES_MAX} bytes"
                    )));
                }
                if !self.flags.tenants.contains_key(tenant) && self.flags.tenants.len() >= ROLLOUT_TENANTS_MAX {
                    return Err(RolloutError::Invalid(format!(
                        "a tool is disabled for at most {ROLLOUT_TENANTS_MAX} tenants one by one; disable it for everyone"
                    )));
                }
                self.flags.tenants.insert(tenant.to_string(), disabled);
            }
            (Some(tenant), None) => {
                self.flags.tenants.remove(tenant);
            }
        }
        self.changed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(component: &str) -> Revision {
        Revision {
            revision: 0,
            component: component.into(),
            version: "1.0.0".into(),
            description: String::new(),
            added_unix_ms: 1,
            added_by: "config".into(),
            note: String::new(),
            rolled_back: None,
        }
    }

    fn candidate(revision: u32, ramp_bp: u32) -> Candidate {
        Candidate {
            revision,
            ramp_bp,
            shadow_bp: 0,
            tenants: Vec::new(),
            started_unix_ms: 1,
            started_by: "admin".into(),
            gate_report: None,
            forced: false,
            guard: GuardRails::default(),
        }
    }

    #[test]
    fn adding_a_revision_never_changes_what_callers_get() {
        let mut record = ToolRecord::new("t", revision("aa"));
        assert_eq!(record.add(revision("bb")).expect("added"), (2, true));
        assert_eq!(record.add(revision("bb")).expect("known"), (2, false));
        assert_eq!(record.current, 1);
        for key in 0..1000 {
            assert_eq!(record.route("x", &key.to_string()).revision, 1);
        }
    }

    #[test]
    fn a_ramp_sends_its_share_and_a_key_stays_on_its_revision() {
        let mut record = ToolRecord::new("t", revision("aa"));
        record.add(revision("bb")).expect("added");
        record.start(candidate(2, 2000)).expect("started");
        let to_candidate = (0..10_000).filter(|k| record.route("x", &k.to_string()).candidate).count();
        // 20% of 10 000 with a binomial sd of 40: far inside 5 sd.
        assert!((1800..=2200).contains(&to_candidate), "{to_candidate}");
        for k in 0..100 {
            let key = format!("key-{k}");
            assert_eq!(record.route("x", &key), record.route("x", &key));
        }
    }

    #[test]
    fn a_canary_limited_to_tenants_leaves_the_others_alone() {
        let mut record = ToolRecord::new("t", revision("aa"));
        record.add(revision("bb")).expect("added");
        record.start(Candidate { tenants: vec!["a".into()], ..candidate(2, BASIS_POINTS) }).expect("started");
        assert_eq!(record.route("a", "k").revision, 2);
        assert_eq!(record.route("b", "k").revision, 1);
    }

    #[test]
    fn rollback_and_promotion_move_the_current_revision() {
        let mut record = ToolRecord::new("t", revision("aa"));
        record.add(revision("bb")).expect("added");
        record.start(candidate(2, 5000)).expect("started");
        assert_eq!(record.rollback(None, "errors").expect("rolled back"), 1);
        assert_eq!(record.revision(2).and_then(|r| r.rolled_back.clone()).as_deref(), Some("errors"));
        assert!(record.candidate.is_none());
        record.start(candidate(2, 5000)).expect("again");
        assert_eq!(record.promote().expect("promoted"), 2);
        assert_eq!(record.route("x", "k").revision, 2);
        assert_eq!(record.rollback(Some(1), "bad").expect("to 1"), 1);
        assert_eq!(record.current, 1);
        assert!(matches!(record.rollback(Some(9), "x"), Err(RolloutError::NoRevision { .. })));
        assert!(matches!(record.start(candidate(1, 1)), Err(RolloutError::AlreadyCurrent { .. })));
    }

    #[test]
    fn flags_switch_a_tool_off_for_everyone_or_one_tenant() {
        let mut record = ToolRecord::new("t", revision("aa"));
        let off = Disabled { reason: "incident 42".into(), by: "admin".into(), at_unix_ms: 1 };
        record.set_flag(Some("a"), Some(off.clone())).expect("set");
        assert!(record.disabled_for("a").is_some());
        assert!(record.disabled_for("b").is_none());
        record.set_flag(None, Some(off)).expect("set");
        assert!(record.disabled_for("b").is_some());
        record.set_flag(None, None).expect("cleared");
        assert!(record.disabled_for("a").is_none(), "on for everyone clears the tenants' switches too");
    }

    #[test]
    fn the_revision_list_is_bounded() {
        let mut record = ToolRecord::new("t", revision("0"));
        for i in 1..REVISIONS_MAX {
            record.add(revision(&i.to_string())).expect("room");
        }
        assert!(matches!(record.add(revision("last")), Err(RolloutError::Full(_))));
    }

    #[test]
    fn a_record_that_does_not_hold_together_is_refused() {
        let hex = "ab".repeat(32);
        let mut record = ToolRecord::new("t", revision(&hex));
        record.add(revision(&"cd".repeat(32))).expect("added");
        assert_eq!(record.validate(), Ok(()));
        let broken = |change: &dyn Fn(&mut ToolRecord)| {
            let mut r = record.clone();
            change(&mut r);
            r.validate().expect_err("refused")
        };
        broken(&|r| r.current = 99);
        broken(&|r| r.revisions[1].revision = 7);
        broken(&|r| r.revisions.clear());
        broken(&|r| r.name = "../etc".into());
        broken(&|r| r.revisions[0].note = "x".repeat(ROLLOUT_TEXT_BYTES_MAX + 1));
        broken(&|r| r.revisions[0].component = "nothex".into());
        broken(&|r| r.candidate = Some(candidate(0, 1)));
        broken(&|r| r.candidate = Some(Candidate { tenants: vec!["t".repeat(500)], ..candidate(2, 1) }));
        let many: Vec<String> = (0..=ROLLOUT_TENANTS_MAX).map(|n| n.to_string()).collect();
        broken(&|r| r.candidate = Some(Candidate { tenants: many.clone(), ..candidate(2, 1) }));
        let mut r = record.clone();
        assert!(r.start(Candidate { tenants: many.clone(), ..candidate(2, 1) }).is_err(), "a canary past its tenants");
        // A candidate that names no revision is refused by rollback too, without panicking.
        let mut r = record.clone();
        r.candidate = Some(candidate(0, 1));
        assert_eq!(r.rollback(None, "x"), Ok(1));
    }

    #[test]
    fn tool_names_are_plain() {
        for good in ["greet", "http-get", "json_query", "a.b", "x1"] {
            assert_eq!(check_tool_name(good), Ok(()), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "..", "x\ny", " ", &"l".repeat(65)] {
            assert!(check_tool_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shares_are_checked() {
        assert_eq!(percent_to_bp("p", 20.0), Ok(2000));
        assert_eq!(percent_to_bp("p", 0.25), Ok(25));
        assert!(percent_to_bp("p", 101.0).is_err());
        assert!(percent_to_bp("p", f64::NAN).is_err());
    }
}
