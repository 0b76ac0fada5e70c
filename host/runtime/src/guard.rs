//! The store's call hook: every time a guest crosses into the host and back, this is where a run
//! is held to the limits that a host implementation cannot answer with an error of its own.
//!
//! - A limit raised inside a host call that must not return an error to the guest (a clock read
//!   past the tape's bounds, a recording past `recording_bytes_max`) stops the guest as that call
//!   returns: the same call, for the same run, on every machine, so replay stops where the
//!   original did.
//! - A limit the guest is first told about as an error (a write past a mount's quota) stops it at
//!   its next call into the host, and ends the run with that limit whatever the tool returns.
//! - The guest's fuel is noted on every entry into the host, for the recorder's events.
//! - What the host copies out of the guest in one crossing is bounded: [`HOSTCALL_BYTES_MAX`]
//!   for a host call's arguments, and `output_bytes_max` for what `run` returns, so an
//!   oversized output is refused before it is copied (wasmtime's "hostcall fuel").

use crate::LimitHit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::{CallHook, StoreContextMut};

/// Bytes a guest may hand the host in one host call's arguments (a log line, a file write, a GPU
/// buffer): wasmtime's own default, named here because Guild switches it around `run`'s return.
pub const HOSTCALL_BYTES_MAX: usize = 128 * 1024 * 1024;

/// A limit that stops the run at the guest's next crossing into or out of the host.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    hit: Mutex<Option<LimitHit>>,
    /// Set with `hit`: the host call now returning must not return to the guest.
    at_once: AtomicBool,
    /// Set with `hit`.
    raised: AtomicBool,
}

impl Stop {
    /// Stop the guest as the current host call returns (the first limit raised wins).
    pub(crate) fn now(&self, hit: LimitHit) {
        self.raise(hit, true);
    }

    /// Stop the guest at its next call into the host, after it has seen the failure.
    pub(crate) fn next(&self, hit: LimitHit) {
        self.raise(hit, false);
    }

    fn raise(&self, hit: LimitHit, at_once: bool) {
        let mut slot = self.hit.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(hit);
            self.at_once.store(at_once, Ordering::Release);
            self.raised.store(true, Ordering::Release);
        }
    }

    /// The limit that stopped (or will stop) the run, if any.
    pub(crate) fn hit(&self) -> Option<LimitHit> {
        if !self.raised.load(Ordering::Acquire) {
            return None;
        }
        self.hit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn check(&self, returning_from_host: bool) -> wasmtime::Result<()> {
        if !self.raised.load(Ordering::Acquire) || (returning_from_host && !self.at_once.load(Ordering::Acquire)) {
            return Ok(());
        }
        match self.hit() {
            Some(hit) => Err(wasmtime::Error::new(hit)),
            None => Ok(()),
        }
    }
}

/// What the call hook needs, kept in the store's state (see [`Guarded`]).
pub(crate) struct Guard {
    pub(crate) stop: Arc<Stop>,
    /// Fuel left as of the guest's latest entry into the host (the recorder stamps events with it).
    pub(crate) fuel_gauge: Option<Arc<AtomicU64>>,
    /// Largest output `run` may return, in bytes.
    pub(crate) output_bytes_max: usize,
    /// Host-to-guest calls in progress (the host lowers arguments through the guest's allocator,
    /// so `run` is not the only one).
    depth: u32,
    /// True once the outermost call into the guest returned: what follows is the host copying
    /// its result out.
    returned: bool,
}

impl Guard {
    pub(crate) fn new(stop: Arc<Stop>, fuel_gauge: Option<Arc<AtomicU64>>, output_bytes_max: u64) -> Self {
        let output_bytes_max = usize::try_from(output_bytes_max).unwrap_or(usize::MAX);
        Self { stop, fuel_gauge, output_bytes_max, depth: 0, returned: false }
    }

    /// True when the last crossing was the guest's outermost call returning: an error now comes
    /// from copying its result out (an output past `output_bytes_max`).
    pub(crate) fn returned(&self) -> bool {
        self.returned
    }
}

/// A store state that holds a [`Guard`]: the run's state does, and the hook needs no more of it.
pub(crate) trait Guarded: 'static {
    /// The guard.
    fn guard(&self) -> &Guard;
    /// The guard, to change.
    fn guard_mut(&mut self) -> &mut Guard;
}

/// Install the hook on `store`.
pub(crate) fn install<T: Guarded>(store: &mut wasmtime::Store<T>, fuel_metering: bool) {
    store.call_hook(move |mut context: StoreContextMut<'_, T>, hook| {
        match hook {
            CallHook::CallingHost => {
                if fuel_metering
                    && let Some(gauge) = &context.data().guard().fuel_gauge
                    && let Ok(left) = context.get_fuel()
                {
                    gauge.store(left, Ordering::Relaxed);
                }
                context.data().guard().stop.check(false)?;
                context.set_hostcall_fuel(HOSTCALL_BYTES_MAX);
            }
            CallHook::ReturningFromHost => context.data().guard().stop.check(true)?,
            CallHook::CallingWasm => {
                let guard = context.data_mut().guard_mut();
                guard.depth += 1;
                guard.returned = false;
                context.set_hostcall_fuel(HOSTCALL_BYTES_MAX);
            }
            CallHook::ReturningFromWasm => {
                let guard = context.data_mut().guard_mut();
                guard.depth = guard.depth.saturating_sub(1);
                guard.returned = guard.depth == 0;
                if guard.returned {
                    let cap = guard.output_bytes_max;
                    context.set_hostcall_fuel(cap);
                }
            }
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_limit_wins_and_a_deferred_one_waits_for_the_next_call() {
        let stop = Stop::default();
        assert!(stop.check(true).is_ok() && stop.check(false).is_ok());
        stop.next(LimitHit::Log { limit_bytes: 1 });
        stop.now(LimitHit::Tape { limit_events: 2 });
        assert_eq!(stop.hit(), Some(LimitHit::Log { limit_bytes: 1 }));
        assert!(stop.check(true).is_ok(), "the guest first sees the failure");
        let error = stop.check(false).expect_err("stopped at the next call");
        assert_eq!(error.downcast_ref::<LimitHit>(), Some(&LimitHit::Log { limit_bytes: 1 }));
    }

    #[test]
    fn an_immediate_limit_stops_the_returning_call() {
        let stop = Stop::default();
        stop.now(LimitHit::Tape { limit_events: 2 });
        assert!(stop.check(true).is_err());
    }
}
