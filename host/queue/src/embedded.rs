//! The bounded run queue: at most `runs_in_flight_max` runs execute at once and at most
//! `depth_max` wait behind them. A run that finds the queue full is refused at once with an
//! estimate of when to retry — backpressure, never unbounded memory.
//!
//! A run passes three stages: waiting ([`Ticket`]), executing ([`Slot`]) and committing
//! ([`Commit`]: its audit record waits for the log's group commit). The execution slot is given
//! back when the run's guest has returned and its bundle is sealed, so the next run computes
//! while this one's record waits for the disk; at most `runs_committing_max` runs commit at
//! once, and a run that finds that stage full keeps its slot until there is room.
//!
//! A freed slot goes to the waiting run whose turn it is, not the one that came first: the
//! highest priority, then the tenants' and agents' turns of [`FairTurns`] (the policy the Redis
//! queue keeps across the fleet), so one tenant's flood holds another's run back by at most its
//! weight's worth of runs per slot.

use crate::{FairTurns, Place};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// The queue. Shared by every request handler and async run.
#[derive(Debug)]
pub struct RunQueue {
    slots: Mutex<Slots>,
    runs_in_flight_max: usize,
    committing: Arc<Semaphore>,
    runs_committing_max: usize,
    depth_max: usize,
    waiting: AtomicUsize,
    /// Exponentially weighted mean run time, µs: what `Retry-After` is estimated from.
    mean_run_us: AtomicU64,
    closed: AtomicBool,
}

/// The execution slots: how many are free, and the runs waiting for one in turn order (each
/// handed its slot through its channel).
#[derive(Debug, Default)]
struct Slots {
    free: usize,
    waiting: FairTurns<oneshot::Sender<()>>,
}

/// The queue is full (or draining).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFull {
    /// Runs waiting when refused.
    pub depth: usize,
    /// Seconds until a slot is likely (at least 1).
    pub retry_after_s: u64,
    /// True when refused because the daemon is shutting down.
    pub draining: bool,
}

/// A place in the queue; [`Ticket::start`] waits for a slot to run in.
#[derive(Debug)]
pub struct Ticket {
    queue: Arc<RunQueue>,
    waiting: bool,
    place: Place,
    weight: u32,
}

/// A slot: the run executes while this is held.
#[derive(Debug)]
pub struct Slot {
    queue: Arc<RunQueue>,
    held: bool,
}

/// A finished run whose audit record is not yet durable; [`RunQueue::drained`] waits for these.
#[derive(Debug)]
pub struct Commit {
    _permit: Option<OwnedSemaphorePermit>,
}

impl RunQueue {
    /// A queue with these bounds: `runs_in_flight_max` executing, `depth_max` waiting,
    /// `runs_committing_max` waiting for their audit record to be durable.
    pub fn new(runs_in_flight_max: usize, depth_max: usize, runs_committing_max: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(Slots { free: runs_in_flight_max, waiting: FairTurns::default() }),
            runs_in_flight_max,
            committing: Arc::new(Semaphore::new(runs_committing_max)),
            runs_committing_max,
            depth_max,
            waiting: AtomicUsize::new(0),
            mean_run_us: AtomicU64::new(1_000),
            closed: AtomicBool::new(false),
        })
    }

    /// Take a place in the queue, in `place`'s turn (its tenant taking `weight` runs per turn).
    ///
    /// # Errors
    /// [`QueueFull`] with `draining` set once the queue is closed; otherwise, when every slot is
    /// busy and `depth_max` runs already wait, with a `retry_after_s` estimated from recent run
    /// times.
    pub fn enter(self: &Arc<Self>, place: Place, weight: u32) -> Result<Ticket, QueueFull> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueFull { depth: self.depth(), retry_after_s: 5, draining: true });
        }
        // A run that can start at once does not count as waiting.
        let free = self.lock().free;
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        if free == 0 && waiting >= self.depth_max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueFull { depth: waiting, retry_after_s: self.retry_after_s(waiting), draining: false });
        }
        Ok(Ticket { queue: self.clone(), waiting: true, place, weight })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot came back: hand it to the waiting run whose turn it is (one whose caller went away
    /// is passed over), else keep it free.
    fn give_back(&self) {
        let mut slots = self.lock();
        while let Some(waiter) = slots.waiting.pop() {
            if waiter.send(()).is_ok() {
                return;
            }
        }
        slots.free += 1;
    }

    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an estimate clamped to 1..=60 seconds; `as` from a float saturates"
    )]
    fn retry_after_s(&self, waiting: usize) -> u64 {
        let mean = self.mean_run_us.load(Ordering::Relaxed) as f64;
        let seconds = (waiting as f64 + 1.0) * mean / self.runs_in_flight_max as f64 / 1e6;
        seconds.ceil().clamp(1.0, 60.0) as u64
    }

    /// Runs waiting for a slot.
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Runs executing now.
    pub fn in_flight(&self) -> usize {
        self.runs_in_flight_max - self.lock().free
    }

    /// Finished runs whose audit record is not yet durable.
    pub fn committing(&self) -> usize {
        self.runs_committing_max - self.committing.available_permits()
    }

    /// Note how long a run took, for `Retry-After` estimates.
    pub fn observe(&self, run_time: Duration) {
        let sample = u64::try_from(run_time.as_micros()).unwrap_or(u64::MAX).min(u64::MAX / 2);
        let old = self.mean_run_us.load(Ordering::Relaxed);
        self.mean_run_us.store(old - old / 8 + sample / 8, Ordering::Relaxed);
    }

    /// Refuse new runs from now on (draining).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Wait until no run is waiting, running or committing, or `deadline` passes; true when
    /// idle.
    pub async fn drained(&self, deadline: Duration) -> bool {
        let wait = async {
            while self.depth() > 0 || self.in_flight() > 0 || self.committing() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }
}

impl Ticket {
    /// Wait for a slot.
    ///
    /// # Errors
    /// [`QueueFull`] with `draining` set only if the queue's slots were closed, which the daemon
    /// never does.
    pub async fn start(mut self) -> Result<Slot, QueueFull> {
        let handed = {
            let mut slots = self.queue.lock();
            if slots.free > 0 && slots.waiting.is_empty() {
                slots.free -= 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                slots.waiting.push(&self.place, self.weight, tx);
                Some(Handed { rx: Some(rx), queue: self.queue.clone() })
            }
        };
        if let Some(mut handed) = handed {
            handed.wait().await;
        }
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
        self.waiting = false;
        Ok(Slot { queue: self.queue.clone(), held: true })
    }
}

/// A run's wait for a slot handed to it. Dropped before it was awaited to the end (the caller
/// went away), a slot already sent goes back to the queue rather than be lost.
struct Handed {
    rx: Option<oneshot::Receiver<()>>,
    queue: Arc<RunQueue>,
}

impl Handed {
    async fn wait(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            // The sender lives in the queue until it is sent (never dropped unsent but by
            // `give_back` skipping a closed receiver): a receive error cannot happen here.
            let _ = rx.await;
        }
        self.rx = None;
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.queue.give_back();
            } else {
                // Its place goes, so callers that leave cannot grow the waiting list.
                self.queue.lock().waiting.retain(|tx| !tx.is_closed());
            }
        }
    }
}

impl Slot {
    /// The run has finished executing: wait for room in the committing stage, then give the
    /// execution slot back. The returned [`Commit`] is held until the run's audit record is
    /// durable.
    pub async fn commit(mut self) -> Commit {
        // The committing stage's semaphore is never closed.
        let committing = self.queue.committing.clone().acquire_owned().await.ok();
        self.held = false;
        self.queue.give_back();
        Commit { _permit: committing }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            self.queue.give_back();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.waiting {
            self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(tenant: &str) -> Place {
        Place { priority: crate::PRIORITY_DEFAULT, tenant: tenant.into(), agent: String::new() }
    }

    #[tokio::test]
    async fn full_queue_refuses_with_retry_after_and_frees_on_drop() {
        let queue = RunQueue::new(1, 2, 4);
        let running = queue.enter(place("t"), 1).expect("first").start().await.expect("slot");
        let a = queue.enter(place("t"), 1).expect("waits 1");
        let b = queue.enter(place("t"), 1).expect("waits 2");
        let full = queue.enter(place("t"), 1).expect_err("third waiter is over depth 2");
        assert_eq!(full.depth, 2);
        assert!(full.retry_after_s >= 1);
        assert!(!full.draining);
        drop(a);
        let c = queue.enter(place("t"), 1).expect("a place came back");
        assert_eq!(queue.depth(), 2);
        drop((b, c, running));
        assert_eq!(queue.depth(), 0);
        assert_eq!(queue.in_flight(), 0);
        queue.close();
        assert!(queue.enter(place("t"), 1).expect_err("closed").draining);
        assert!(queue.drained(Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_tenant_whose_turn_it_is_and_a_gone_caller_loses_nothing() {
        let queue = RunQueue::new(1, 1_000, 4);
        let running = queue.enter(place("a"), 1).expect("enter").start().await.expect("slot");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for (i, tenant) in ["a", "a", "a", "a", "b"].into_iter().enumerate() {
            let ticket = queue.enter(place(tenant), 1).expect("enter");
            let order = order.clone();
            waiting.push(tokio::spawn(async move {
                let slot = ticket.start().await.expect("slot");
                order.lock().expect("order").push(format!("{tenant}{i}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            }));
            tokio::task::yield_now().await;
        }
        // A caller that leaves while waiting takes no slot with it.
        let gone = queue.enter(place("c"), 1).expect("enter");
        let gone = tokio::spawn(gone.start());
        tokio::time::sleep(Duration::from_millis(10)).await;
        gone.abort();
        drop(running);
        for task in waiting {
            task.await.expect("ran");
        }
        assert_eq!(*order.lock().expect("order"), ["a0", "b4", "a1", "a2", "a3"]);
        assert_eq!((queue.in_flight(), queue.depth()), (0, 0));
        assert!(queue.enter(place("d"), 1).expect("enter").start().await.is_ok(), "the slot came back");
    }

    #[tokio::test]
    async fn a_committing_run_frees_its_slot_and_holds_the_drain() {
        let queue = RunQueue::new(1, 4, 1);
        let first = queue.enter(place("t"), 1).expect("enter").start().await.expect("slot");
        let waiting = queue.enter(place("t"), 1).expect("enter");
        let committing = first.commit().await;
        assert_eq!((queue.in_flight(), queue.committing()), (0, 1));
        // The next run executes while the first one's record waits for the disk.
        let second = waiting.start().await.expect("the slot came back");
        assert_eq!(queue.in_flight(), 1);
        // The committing stage is full: the second run keeps its slot until there is room.
        let held = tokio::spawn(second.commit());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!held.is_finished());
        assert_eq!(queue.in_flight(), 1);
        queue.close();
        assert!(!queue.drained(Duration::from_millis(30)).await, "a run not yet committed holds the drain");
        drop(committing);
        let second = held.await.expect("the second run commits once the first is durable");
        assert_eq!((queue.in_flight(), queue.committing()), (0, 1));
        drop(second);
        assert!(queue.drained(Duration::from_millis(50)).await);
    }
}
