//! Recording and replaying effects. A [`Recorder`] is the tape of one run, shared by every host
//! implementation that hands the guest something from outside: the clocks, the random seed, the
//! mounts, the log, HTTP exchanges and GPU dispatches. Live, it takes real values and writes them down; replaying, it answers
//! from the bundle's tape and notes the first event where the guest asked for something else.
//! Checking a candidate revision, it answers from another revision's tape by content, not by
//! position ([`Lane`]), and notes what the candidate asked for that the tape lacks, and what the
//! tape holds that the candidate never asked for.
//!
//! Each event carries the fuel burnt when it happened, read from a gauge that a store call hook
//! updates every time the guest enters the host.

use crate::LimitHit;
use crate::guard::Stop;
use guild_replay::{Effect, Event, TAPE_EVENTS_MAX, Tape};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// Where a replay first differed from its bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// The first differing event.
    pub seq: u64,
    /// What the bundle recorded there (none: the original run ended sooner).
    pub expected: Option<Event>,
    /// What the replay did there (none: the replay ended sooner).
    pub found: Option<Event>,
}

/// The tape of one run, live or replaying.
///
/// Everything it holds is host memory the guest made it hold, so it is bounded twice: by
/// [`TAPE_EVENTS_MAX`] events and by `recording_bytes_max` bytes of events and attached blobs
/// together. Past either, nothing more is recorded and the guest is stopped as the host call
/// that went past returns ([`LimitHit::Tape`], [`LimitHit::Recording`]).
#[derive(Clone)]
pub(crate) struct Recorder {
    state: Arc<Mutex<RecorderState>>,
    /// Fuel left, as of the guest's latest entry into the host.
    fuel_left: Arc<AtomicU64>,
    fuel_limit: u64,
    recording_bytes_max: u64,
    /// Where a limit this recorder hits stops the run.
    stop: Arc<Stop>,
    /// A hermetic run's clocks: live readings come from here instead of the real clocks.
    synthetic: Option<Arc<SyntheticClock>>,
}

/// The clocks of a hermetic run: virtual time that depends only on what the guest did. Each
/// reading (of either clock) takes [`SyntheticClock::STEP`]; waiting on a timer takes exactly the
/// time waited for, at once (`virtual_time.rs`). The monotonic clock reads the virtual time
/// elapsed, from 0; the wall clock `wall_base` plus that.
#[derive(Debug)]
pub(crate) struct SyntheticClock {
    wall_base: Duration,
    /// Virtual time elapsed, ns.
    elapsed_ns: AtomicU64,
}

impl SyntheticClock {
    /// How far each reading is from the one before it.
    pub(crate) const STEP: Duration = Duration::from_micros(1);

    pub(crate) fn new(wall_base: Duration) -> Self {
        Self { wall_base, elapsed_ns: AtomicU64::new(0) }
    }

    /// The virtual time now, then one step more: never wrapping, so time never runs backwards
    /// (a timer until `u64::MAX` leaves it there).
    fn read(&self) -> u64 {
        let step = u64::try_from(Self::STEP.as_nanos()).unwrap_or(1);
        self.elapsed_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| Some(e.saturating_add(step)))
            .unwrap_or_else(|e| e)
    }

    /// The next wall-clock reading, since the Unix epoch.
    pub(crate) fn wall(&self) -> Duration {
        self.wall_base.saturating_add(Duration::from_nanos(self.read()))
    }

    /// The next monotonic reading, ns.
    pub(crate) fn monotonic(&self) -> u64 {
        self.read()
    }

    /// Let `ns` of virtual time pass (a timer of that length, waited for).
    pub(crate) fn advance(&self, ns: u64) {
        let _ = self.elapsed_ns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| Some(e.saturating_add(ns)));
    }

    /// Let virtual time pass until the monotonic clock reads `ns` (a timer until then).
    pub(crate) fn advance_to(&self, ns: u64) {
        self.elapsed_ns.fetch_max(ns, Ordering::Relaxed);
    }
}

struct RecorderState {
    tape: Tape,
    /// Bytes events refer to by digest (HTTP bodies), for the bundle.
    blobs: Vec<Vec<u8>>,
    blob_bytes: u64,
    /// No more is recorded once a limit was hit.
    full: bool,
    expected: Option<Vec<Event>>,
    divergence: Option<Divergence>,
    /// Set when checking a candidate against `expected`: answers by content, not position.
    candidate: Option<CandidateTape>,
}

/// A kind of recorded effect a candidate is answered from. Clock readings are taken in their
/// recorded order; HTTP exchanges and GPU dispatches by what was asked, whatever their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Wall,
    Monotonic,
    Http,
    Gpu,
}

impl Lane {
    fn of(effect: &Effect) -> Option<Self> {
        match effect {
            Effect::WallClock { .. } => Some(Self::Wall),
            Effect::MonotonicClock { .. } => Some(Self::Monotonic),
            Effect::Http { .. } => Some(Self::Http),
            Effect::GpuDispatch { .. } => Some(Self::Gpu),
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// New effects a candidate check keeps, in full; past it they are only counted.
pub(crate) const CANDIDATE_NEW_EFFECTS_KEPT_MAX: usize = 16;

/// How a candidate is answered from another revision's tape.
struct CandidateTape {
    /// Positions in `expected` of each lane's events, in tape order.
    lanes: [Vec<usize>; 4],
    /// Whether each position of `expected` has answered the candidate.
    used: Vec<bool>,
    /// Per lane, how many of its events are used or skipped: clocks are taken in order.
    cursors: [usize; 4],
    /// Clock readings asked for past the recorded ones (answered with the last one).
    extra_clock_reads: u64,
    /// What the wall clock reads when the tape never read it.
    wall_unrecorded: Duration,
    /// What the candidate asked for that the tape lacks (the first few).
    new_effects: Vec<Effect>,
    new_effects_count: u64,
}

/// What a candidate check found on the tape, once the candidate's call ended.
#[derive(Debug, Default)]
pub(crate) struct CandidateFindings {
    /// Requests and dispatches the tape lacks, the first [`CANDIDATE_NEW_EFFECTS_KEPT_MAX`].
    pub(crate) new_effects: Vec<Effect>,
    /// All of them.
    pub(crate) new_effects_count: u64,
    /// Recorded HTTP exchanges and GPU dispatches the candidate never asked for, in tape order.
    pub(crate) missing_effects: Vec<Effect>,
    /// Clock readings past the recorded ones.
    pub(crate) extra_clock_reads: u64,
    /// Recorded clock readings the candidate never asked for.
    pub(crate) unread_clock_readings: u64,
}

impl Recorder {
    /// Record real effects, holding at most `recording_bytes_max` bytes.
    pub(crate) fn live(fuel_limit: u64, recording_bytes_max: u64, stop: Arc<Stop>) -> Self {
        Self::new(fuel_limit, recording_bytes_max, stop, None)
    }

    /// Answer from `expected` and compare.
    pub(crate) fn replaying(fuel_limit: u64, recording_bytes_max: u64, stop: Arc<Stop>, expected: Vec<Event>) -> Self {
        Self::new(fuel_limit, recording_bytes_max, stop, Some(expected))
    }

    /// Answer a candidate revision from another revision's `expected` tape, by content: its own
    /// effects are recorded (and bounded) as a live run's, never compared by position. A clock
    /// the tape never read reads `wall_unrecorded` (since the Unix epoch), or 0 for the
    /// monotonic clock: a candidate check never reads a real clock.
    pub(crate) fn candidate(
        fuel_limit: u64,
        recording_bytes_max: u64,
        stop: Arc<Stop>,
        expected: Vec<Event>,
        wall_unrecorded: Duration,
    ) -> Self {
        let mut lanes: [Vec<usize>; 4] = Default::default();
        for (position, event) in expected.iter().enumerate() {
            if let Some(lane) = Lane::of(&event.effect) {
                lanes[lane.index()].push(position);
            }
        }
        let tape = CandidateTape {
            lanes,
            used: vec![false; expected.len()],
            cursors: [0; 4],
            extra_clock_reads: 0,
            wall_unrecorded,
            new_effects: Vec::new(),
            new_effects_count: 0,
        };
        let recorder = Self::new(fuel_limit, recording_bytes_max, stop, Some(expected));
        recorder.lock().candidate = Some(tape);
        recorder
    }

    /// Whether this recorder answers a candidate by content.
    pub(crate) fn is_candidate(&self) -> bool {
        self.lock().candidate.is_some()
    }

    fn new(fuel_limit: u64, recording_bytes_max: u64, stop: Arc<Stop>, expected: Option<Vec<Event>>) -> Self {
        Self {
            state: Arc::new(Mutex::new(RecorderState {
                tape: Tape::new(),
                blobs: Vec::new(),
                blob_bytes: 0,
                full: false,
                expected,
                divergence: None,
                candidate: None,
            })),
            fuel_left: Arc::new(AtomicU64::new(fuel_limit)),
            fuel_limit,
            recording_bytes_max,
            stop,
            synthetic: None,
        }
    }

    /// Take live clock readings from `clock` instead of the real clocks (a hermetic run).
    pub(crate) fn with_synthetic_clock(mut self, clock: SyntheticClock) -> Self {
        self.synthetic = Some(Arc::new(clock));
        self
    }

    /// A hermetic run's virtual time, which its timers advance.
    pub(crate) fn synthetic(&self) -> Option<Arc<SyntheticClock>> {
        self.synthetic.clone()
    }

    /// Refuse to record past a limit: raise it once, and record nothing more.
    fn overflow(&self, state: &mut RecorderState, hit: LimitHit) {
        if !state.full {
            state.full = true;
            self.stop.now(hit);
        }
    }

    fn bytes_held(state: &RecorderState) -> u64 {
        state.tape.bytes().saturating_add(state.blob_bytes)
    }

    fn lock(&self) -> MutexGuard<'_, RecorderState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gauge the store's call hook writes.
    pub(crate) fn fuel_gauge(&self) -> Arc<AtomicU64> {
        self.fuel_left.clone()
    }

    fn fuel_used(&self) -> u64 {
        self.fuel_limit.saturating_sub(self.fuel_left.load(Ordering::Relaxed))
    }

    /// Append an effect observed now. Past a limit the effect is dropped and the guest is stopped
    /// as its host call returns.
    pub(crate) fn record(&self, effect: Effect) {
        let fuel = self.fuel_used();
        let mut state = self.lock();
        if state.full {
            return;
        }
        let event = match state.tape.push(fuel, effect) {
            Ok(event) => event.clone(),
            Err(_) => {
                self.overflow(&mut state, LimitHit::Tape { limit_events: TAPE_EVENTS_MAX });
                return;
            }
        };
        if Self::bytes_held(&state) > self.recording_bytes_max {
            let limit_bytes = self.recording_bytes_max;
            self.overflow(&mut state, LimitHit::Recording { limit_bytes });
        }
        if state.divergence.is_none()
            && state.candidate.is_none()
            && let Some(expected) = &state.expected
        {
            let original = usize::try_from(event.seq).ok().and_then(|seq| expected.get(seq));
            let same = original.is_some_and(|o| o.fuel == event.fuel && o.effect == event.effect);
            if !same {
                state.divergence = Some(Divergence { seq: event.seq, expected: original.cloned(), found: Some(event) });
            }
        }
    }

    /// Keep `bytes` for the bundle; events name them by the returned digest. `None` when that
    /// would take the recording past `recording_bytes_max` (the guest is then stopped, and the
    /// bytes are not kept).
    pub(crate) fn attach_blob(&self, bytes: &[u8]) -> Option<guild_replay::Digest> {
        let mut state = self.lock();
        let held = Self::bytes_held(&state).saturating_add(bytes.len() as u64);
        if state.full || held > self.recording_bytes_max {
            let limit_bytes = self.recording_bytes_max;
            self.overflow(&mut state, LimitHit::Recording { limit_bytes });
            return None;
        }
        state.blob_bytes += bytes.len() as u64;
        state.blobs.push(bytes.to_vec());
        Some(guild_replay::Digest::of(bytes))
    }

    /// The attached blobs, leaving none.
    pub(crate) fn take_blobs(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.lock().blobs)
    }

    /// When replaying, the effect the bundle recorded at the next position.
    pub(crate) fn expected_next(&self) -> Option<Effect> {
        let state = self.lock();
        let next = state.tape.events().len();
        state.expected.as_ref()?.get(next).map(|e| e.effect.clone())
    }

    /// The recorded reading a clock answers with: replaying, the next event (whatever it is);
    /// for a candidate, the next unread reading of that clock, or its last reading once all
    /// were read (time stands still past the tape: a read beyond the recorded ones is not an
    /// effect of its own, only counted); `None` live.
    pub(crate) fn clock_answer(&self, lane: Lane) -> Option<Effect> {
        let mut state = self.lock();
        let RecorderState { expected, candidate, tape, .. } = &mut *state;
        let expected = expected.as_ref()?;
        let Some(candidate) = candidate else {
            return expected.get(tape.events().len()).map(|e| e.effect.clone());
        };
        let positions = &candidate.lanes[lane.index()];
        let cursor = &mut candidate.cursors[lane.index()];
        let position = match positions.get(*cursor) {
            Some(&position) => {
                *cursor += 1;
                candidate.used[position] = true;
                position
            }
            None => {
                candidate.extra_clock_reads += 1;
                match (positions.last(), lane) {
                    (Some(&last), _) => last,
                    (None, Lane::Wall) => {
                        let at = candidate.wall_unrecorded;
                        return Some(Effect::WallClock { seconds: at.as_secs(), nanoseconds: at.subsec_nanos() });
                    }
                    (None, _) => return Some(Effect::MonotonicClock { nanoseconds: 0 }),
                }
            }
        };
        Some(expected[position].effect.clone())
    }

    /// For a candidate, the first recorded `lane` event not yet used that `matches`, marked
    /// used. `None` when there is none, or when this recorder is not a candidate's.
    pub(crate) fn take_matching(&self, lane: Lane, matches: impl Fn(&Effect) -> bool) -> Option<Effect> {
        let mut state = self.lock();
        let RecorderState { expected, candidate, .. } = &mut *state;
        let (expected, candidate) = (expected.as_ref()?, candidate.as_mut()?);
        let position = candidate.lanes[lane.index()]
            .iter()
            .copied()
            .find(|&p| !candidate.used[p] && matches(&expected[p].effect))?;
        candidate.used[position] = true;
        Some(expected[position].effect.clone())
    }

    /// For a candidate, note an effect it asked for that the tape lacks (the guest was refused).
    pub(crate) fn note_new_effect(&self, effect: Effect) {
        let mut state = self.lock();
        if let Some(candidate) = state.candidate.as_mut() {
            candidate.new_effects_count += 1;
            if candidate.new_effects.len() < CANDIDATE_NEW_EFFECTS_KEPT_MAX {
                candidate.new_effects.push(effect);
            }
        }
    }

    /// For a candidate whose call ended: what it asked for that the tape lacks, and the HTTP
    /// exchanges and GPU dispatches of the tape it never asked for. Empty for other recorders.
    pub(crate) fn candidate_findings(&self) -> CandidateFindings {
        let mut state = self.lock();
        let RecorderState { expected, candidate, .. } = &mut *state;
        let (Some(expected), Some(candidate)) = (expected.as_ref(), candidate.as_mut()) else {
            return CandidateFindings::default();
        };
        let unused = |lane: Lane| candidate.lanes[lane.index()].iter().filter(|&&p| !candidate.used[p]);
        let mut missing: Vec<usize> = unused(Lane::Http).chain(unused(Lane::Gpu)).copied().collect();
        missing.sort_unstable();
        let unread_clock_readings = (unused(Lane::Wall).count() + unused(Lane::Monotonic).count()) as u64;
        CandidateFindings {
            new_effects: std::mem::take(&mut candidate.new_effects),
            new_effects_count: candidate.new_effects_count,
            missing_effects: missing.into_iter().map(|p| expected[p].effect.clone()).collect(),
            extra_clock_reads: candidate.extra_clock_reads,
            unread_clock_readings,
        }
    }

    /// The finished tape, and where a replay first diverged (including a replay that ended
    /// before or after the original).
    /// Look at the tape recorded so far.
    pub(crate) fn with_tape<R>(&self, look: impl FnOnce(&Tape) -> R) -> R {
        look(&self.lock().tape)
    }

    pub(crate) fn finish(&self) -> (Tape, Option<Divergence>) {
        let mut state = self.lock();
        let mut divergence = state.divergence.clone();
        if divergence.is_none()
            && state.candidate.is_none()
            && let Some(expected) = &state.expected
        {
            let recorded = state.tape.events().len();
            if recorded < expected.len() {
                divergence =
                    Some(Divergence { seq: recorded as u64, expected: Some(expected[recorded].clone()), found: None });
            }
        }
        // Taken, not copied: a tape at its limit is the largest thing a run holds.
        (std::mem::take(&mut state.tape), divergence)
    }
}

/// The wall clock a guest reads: real and recorded, or answered from the tape.
pub(crate) struct TapeWallClock(pub(crate) Recorder);

impl HostWallClock for TapeWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        let now = match self.0.clock_answer(Lane::Wall) {
            Some(Effect::WallClock { seconds, nanoseconds }) => Duration::new(seconds, nanoseconds),
            _ => match &self.0.synthetic {
                Some(clock) => clock.wall(),
                None => SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
            },
        };
        self.0.record(Effect::WallClock { seconds: now.as_secs(), nanoseconds: now.subsec_nanos() });
        now
    }
}

/// The monotonic clock a guest reads, in nanoseconds since the run's store was made.
pub(crate) struct TapeMonotonicClock {
    pub(crate) recorder: Recorder,
    pub(crate) start: Instant,
}

impl HostMonotonicClock for TapeMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let now = match self.recorder.clock_answer(Lane::Monotonic) {
            Some(Effect::MonotonicClock { nanoseconds }) => nanoseconds,
            _ => match &self.recorder.synthetic {
                Some(clock) => clock.monotonic(),
                None => u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX),
            },
        };
        self.recorder.record(Effect::MonotonicClock { nanoseconds: now });
        now
    }
}

/// A random stream derived from a recorded seed: blake3 in key-derivation mode, then its
/// extendable output. Stable across Rust and crate versions, unlike a library's `StdRng`.
pub(crate) struct SeededRandom(blake3::OutputReader);

impl SeededRandom {
    pub(crate) fn new(seed: &[u8; 32], purpose: &str) -> Self {
        let key = blake3::derive_key(&format!("guild random v1 {purpose}"), seed);
        Self(blake3::Hasher::new_keyed(&key).finalize_xof())
    }
}

impl rand::TryRng for SeededRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        self.0.fill(&mut bytes);
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        self.0.fill(&mut bytes);
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

/// A fresh seed from the operating system, or a fixed one if it has none to give.
pub(crate) fn fresh_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        // Without OS randomness, derive from the time: runs stay recordable and replayable.
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        seed = *blake3::hash(&nanos.to_le_bytes()).as_bytes();
    }
    seed
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn seeded_random_is_reproducible_and_purpose_bound() {
        let seed = [7u8; 32];
        let (mut a, mut b) = (SeededRandom::new(&seed, "secure"), SeededRandom::new(&seed, "secure"));
        assert_eq!(a.next_u64(), b.next_u64());
        let mut other = SeededRandom::new(&seed, "insecure");
        assert_ne!(SeededRandom::new(&seed, "secure").next_u64(), other.next_u64());
    }

    fn recorder(expected: Option<Vec<Event>>) -> Recorder {
        Recorder::new(100, 1 << 20, Arc::default(), expected)
    }

    #[test]
    fn past_its_byte_limit_a_recorder_keeps_nothing_more_and_stops_the_guest() {
        let stop: Arc<Stop> = Arc::default();
        let recorder = Recorder::live(100, 1024, stop.clone());
        assert!(recorder.attach_blob(&[1; 512]).is_some());
        assert!(recorder.attach_blob(&[2; 600]).is_none(), "512 + 600 bytes exceed 1024");
        assert_eq!(stop.hit(), Some(LimitHit::Recording { limit_bytes: 1024 }));
        recorder.record(Effect::Log { level: "info".into(), source: "tool".into(), message: "late".into() });
        assert!(recorder.finish().0.events().is_empty(), "nothing is recorded after the limit");
        assert_eq!(recorder.take_blobs().len(), 1);
    }

    fn get(url: &str) -> Effect {
        let request = guild_replay::HttpRequestRecord {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            body_bytes: 0,
            host_added: Vec::new(),
        };
        Effect::Http { request, response: None, error: Some("denied: test".into()) }
    }

    fn is_get(url: &str) -> impl Fn(&Effect) -> bool + '_ {
        move |e| matches!(e, Effect::Http { request, .. } if request.url == url)
    }

    #[test]
    fn a_candidate_is_answered_by_content_and_told_what_it_added_and_left_out() {
        let mut tape = Tape::new();
        let wall = |seconds| Effect::WallClock { seconds, nanoseconds: 0 };
        for effect in [wall(10), get("http://a/"), get("http://b/"), wall(20), get("http://c/")] {
            tape.push(1, effect).expect("room");
        }
        let candidate =
            Recorder::candidate(100, 1 << 20, Arc::default(), tape.events().to_vec(), Duration::from_secs(99));
        assert!(candidate.is_candidate());
        // Out of the recorded order, and each exchange only once.
        assert_eq!(candidate.take_matching(Lane::Http, is_get("http://b/")), Some(get("http://b/")));
        assert_eq!(candidate.take_matching(Lane::Http, is_get("http://b/")), None);
        assert_eq!(candidate.take_matching(Lane::Http, is_get("http://a/")), Some(get("http://a/")));
        // Clocks in their recorded order, then the last reading again; a clock never read: 0.
        let clock = TapeWallClock(candidate.clone());
        let readings: Vec<u64> = (0..3).map(|_| clock.now().as_secs()).collect();
        assert_eq!(readings, [10, 20, 20]);
        assert_eq!(candidate.clock_answer(Lane::Monotonic), Some(Effect::MonotonicClock { nanoseconds: 0 }));
        candidate.note_new_effect(get("http://new/"));
        let findings = candidate.candidate_findings();
        assert_eq!(findings.new_effects, [get("http://new/")]);
        assert_eq!(findings.missing_effects, [get("http://c/")]);
        assert_eq!((findings.extra_clock_reads, findings.unread_clock_readings), (2, 0));
        assert!(candidate.finish().1.is_none(), "a candidate is never compared by position");

        let never_read = Recorder::candidate(100, 1 << 20, Arc::default(), Vec::new(), Duration::from_secs(99));
        assert_eq!(TapeWallClock(never_read).now(), Duration::from_secs(99));
    }

    #[test]
    fn replay_answers_from_the_tape_and_reports_the_first_difference() {
        let live = recorder(None);
        let clock = TapeWallClock(live.clone());
        let first = clock.now();
        live.record(Effect::Log { level: "info".into(), source: "tool".into(), message: "a".into() });
        let (tape, none) = live.finish();
        assert!(none.is_none());

        let replay = recorder(Some(tape.events().to_vec()));
        assert_eq!(TapeWallClock(replay.clone()).now(), first);
        replay.record(Effect::Log { level: "info".into(), source: "tool".into(), message: "b".into() });
        let (_, divergence) = replay.finish();
        let divergence = divergence.expect("differs");
        assert_eq!(divergence.seq, 1);
        assert!(matches!(divergence.found.map(|e| e.effect), Some(Effect::Log { message, .. }) if message == "b"));

        let short = recorder(Some(tape.events().to_vec()));
        TapeWallClock(short.clone()).now();
        assert_eq!(short.finish().1.map(|d| (d.seq, d.found.is_none())), Some((1, true)));
    }
}
