//! Timers on a hermetic run's virtual time. A hermetic run's clocks read virtual time
//! ([`SyntheticClock`]); a timer on the real clock would then never seem to pass (a guest that
//! sleeps 10 ms and reads the clock again sees 1 µs gone) and would make the run's result depend
//! on how fast the host is. So Guild links its own `wasi:clocks/monotonic-clock` in front of
//! wasmtime-wasi's: in a hermetic run (live, replayed or checked as a candidate) a timer lets the
//! virtual time it waits for pass at once and is ready at once; in any other run it is
//! wasmtime-wasi's own, on the real clock.

use crate::record::SyntheticClock;
use std::sync::Arc;
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::{self, Duration as WasiDuration, Instant};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

/// What `wasi:clocks/monotonic-clock` sees of a run: wasmtime-wasi's clocks and resource table,
/// and the run's virtual time when it is hermetic.
pub(crate) struct VirtualClock<'a> {
    pub(crate) clocks: WasiClocksCtxView<'a>,
    pub(crate) synthetic: Option<&'a Arc<SyntheticClock>>,
}

pub(crate) struct VirtualClockData;

impl HasData for VirtualClockData {
    type Data<'a> = VirtualClock<'a>;
}

/// A timer whose time has passed.
struct Passed;

#[async_trait::async_trait]
impl Pollable for Passed {
    async fn ready(&mut self) {}
}

fn passed(table: &mut ResourceTable) -> wasmtime::Result<Resource<DynPollable>> {
    let timer = table.push(Passed)?;
    subscribe(table, timer)
}

impl monotonic_clock::Host for VirtualClock<'_> {
    fn now(&mut self) -> wasmtime::Result<Instant> {
        monotonic_clock::Host::now(&mut self.clocks)
    }

    fn resolution(&mut self) -> wasmtime::Result<Instant> {
        monotonic_clock::Host::resolution(&mut self.clocks)
    }

    fn subscribe_instant(&mut self, when: Instant) -> wasmtime::Result<Resource<DynPollable>> {
        match self.synthetic {
            Some(clock) => {
                clock.advance_to(when);
                passed(self.clocks.table)
            }
            None => monotonic_clock::Host::subscribe_instant(&mut self.clocks, when),
        }
    }

    fn subscribe_duration(&mut self, duration: WasiDuration) -> wasmtime::Result<Resource<DynPollable>> {
        match self.synthetic {
            Some(clock) => {
                clock.advance(duration);
                passed(self.clocks.table)
            }
            None => monotonic_clock::Host::subscribe_duration(&mut self.clocks, duration),
        }
    }
}

/// Link Guild's `wasi:clocks/monotonic-clock` in place of wasmtime-wasi's.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> VirtualClock<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<_, VirtualClockData>(linker, view)?;
    linker.allow_shadowing(false);
    Ok(())
}
