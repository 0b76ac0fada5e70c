//! Identical calls in flight at once run once: the first call of an action (for one tenant)
//! leads, and the others wait for what it stored — bounded in number per action
//! (`flight_waiters_max`, past which a call runs on its own) and in time by their caller.

use super::{CacheKey, Cached};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a leader's flight ended with: the entry it stored, or `None` when its result was not
/// stored (it failed, or was not reusable): each waiter then runs on its own.
type Landing = Option<Option<Arc<Cached>>>;

struct Flight {
    landed: watch::Sender<Landing>,
    waiters: AtomicUsize,
}

/// The flights of one daemon, by key.
pub(crate) struct Flights {
    flights: Mutex<HashMap<CacheKey, Arc<Flight>>>,
    waiters_max: usize,
}

/// How a call joined the flights.
pub(crate) enum Joined<'a> {
    /// It is the first: it runs, and lands the flight with what it stored.
    Leader(Leader<'a>),
    /// Another identical call is running: wait for it.
    Waiter(Waiter),
    /// As many calls as may wait for that one already do: run on its own, unmerged.
    Crowded,
}

/// The leading call of a flight. Dropped without [`Leader::land`] (its run failed, or its task
/// was dropped), it lands the flight with nothing, so no waiter waits forever.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: CacheKey,
    flight: Arc<Flight>,
}

/// A call waiting for a flight's leader.
pub(crate) struct Waiter {
    landed: watch::Receiver<Landing>,
    flight: Arc<Flight>,
}

impl Flights {
    pub(crate) fn new(waiters_max: usize) -> Self {
        Self { flights: Mutex::new(HashMap::new()), waiters_max }
    }

    /// Lead the flight of `key`, or wait for the one under way.
    pub(crate) fn join(&self, key: CacheKey) -> Joined<'_> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(&key) {
            if flight.waiters.fetch_add(1, Ordering::AcqRel) >= self.waiters_max {
                flight.waiters.fetch_sub(1, Ordering::AcqRel);
                return Joined::Crowded;
            }
            return Joined::Waiter(Waiter { landed: flight.landed.subscribe(), flight: flight.clone() });
        }
        let flight = Arc::new(Flight { landed: watch::Sender::new(None), waiters: AtomicUsize::new(0) });
        flights.insert(key, flight.clone());
        Joined::Leader(Leader { flights: self, key, flight })
    }

    /// Flights under way.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Leader<'_> {
    /// End the flight: its waiters get `stored` (or run on their own if `None`).
    pub(crate) fn land(self, stored: Option<Arc<Cached>>) {
        self.flight.landed.send_replace(Some(stored));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            flights.remove(&self.key);
        }
        drop(flights);
        self.flight.landed.send_if_modified(|landed| {
            if landed.is_some() {
                return false;
            }
            *landed = Some(None);
            true
        });
    }
}

impl Waiter {
    /// Wait for the leader: the entry it stored, or `None` (run on your own).
    pub(crate) async fn landed(mut self) -> Option<Arc<Cached>> {
        let landed = match self.landed.wait_for(Option::is_some).await {
            Ok(landed) => landed.clone().flatten(),
            // The leader is gone without landing (cannot happen: its drop lands).
            Err(_) => None,
        };
        self.flight.waiters.fetch_sub(1, Ordering::AcqRel);
        landed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::EntryRecord;
    use guild_replay::Digest;

    fn cached() -> Arc<Cached> {
        let record = EntryRecord {
            tenant: "acme".into(),
            tool: "hash".into(),
            revision: 1,
            action: Digest::of(b"a"),
            bundle: Digest::of(b"b"),
            fuel_used_units: 1,
            output_bytes: 2,
            stored_unix_ms: 0,
        };
        Arc::new(Cached { record, output: Arc::from("{}") })
    }

    #[tokio::test]
    async fn one_call_leads_the_others_wait_for_what_it_stored_and_past_the_bound_run_alone() {
        let flights = Flights::new(2);
        let key = CacheKey::new("acme", &Digest::of(b"a"));
        let Joined::Leader(leader) = flights.join(key) else { panic!("the first call leads") };
        let (Joined::Waiter(first), Joined::Waiter(second)) = (flights.join(key), flights.join(key)) else {
            panic!("the next two wait")
        };
        assert!(matches!(flights.join(key), Joined::Crowded), "a third waiter is one too many");
        leader.land(Some(cached()));
        assert_eq!(first.landed().await.map(|c| c.record.bundle), Some(Digest::of(b"b")));
        assert!(second.landed().await.is_some());
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_leader_dropped_without_landing_sends_its_waiters_off_on_their_own() {
        let flights = Flights::new(8);
        let key = CacheKey::new("acme", &Digest::of(b"a"));
        let Joined::Leader(leader) = flights.join(key) else { panic!("the first call leads") };
        let Joined::Waiter(waiter) = flights.join(key) else { panic!("the next waits") };
        drop(leader);
        assert!(waiter.landed().await.is_none());
        assert!(matches!(flights.join(key), Joined::Leader(_)), "the next call leads a new flight");
    }
}
