//! Stopping a run from outside: a client that no longer wants the answer cancels its run's
//! [`CancellationToken`]. A guest parked in a host call is dropped at once; a guest computing
//! is stopped at its next epoch check. Either way the run ends in [`crate::Outcome::Cancelled`]
//! and its bundle says so.

use std::time::Duration;
use wasmtime::{Store, Trap, UpdateDeadline};

pub use tokio_util::sync::CancellationToken;

/// Epoch ticks between two looks at the cancellation token while a guest computes (`EPOCH_TICK_MS` each, ~50 ms):
/// a cancelled run stops within that, and a run that is not cancelled pays one callback per
/// interval.
pub const CANCEL_CHECK_TICKS: u64 = 5;

/// The trap a computing guest is stopped with once its token is cancelled.
#[derive(Debug, thiserror::Error)]
#[error("the run was cancelled")]
pub(crate) struct Cancelled;

/// Arm the store's wall-clock deadline of `deadline_ticks` epochs. Without a token the deadline
/// traps as it always did; with one, the deadline is walked in steps of [`CANCEL_CHECK_TICKS`],
/// looking at the token at each step, and traps with `Trap::Interrupt` (a timeout) at the end.
pub(crate) fn arm_deadline<T>(store: &mut Store<T>, deadline_ticks: u64, cancel: Option<&CancellationToken>) {
    let Some(cancel) = cancel.cloned() else {
        store.set_epoch_deadline(deadline_ticks);
        store.epoch_deadline_trap();
        return;
    };
    let first = CANCEL_CHECK_TICKS.min(deadline_ticks);
    let mut ticks_left = deadline_ticks - first;
    store.set_epoch_deadline(first);
    store.epoch_deadline_callback(move |_| {
        if cancel.is_cancelled() {
            return Err(wasmtime::Error::new(Cancelled));
        }
        if ticks_left == 0 {
            return Err(wasmtime::Error::new(Trap::Interrupt));
        }
        let step = CANCEL_CHECK_TICKS.min(ticks_left);
        ticks_left -= step;
        Ok(UpdateDeadline::Continue(step))
    });
}

/// A token that cancels itself after `after_ms`: a replay stops a cancelled run when the
/// original was stopped (wall time, as a timeout is). A thread, not a task: `guild replay`
/// runs on a current-thread runtime that a computing guest keeps busy.
pub(crate) fn cancel_after(after_ms: u64) -> CancellationToken {
    let token = CancellationToken::new();
    let timer = token.clone();
    let spawned = std::thread::Builder::new().name("guild-cancel-after".into()).spawn(move || {
        std::thread::sleep(Duration::from_millis(after_ms));
        timer.cancel();
    });
    if spawned.is_err() {
        // No thread for the timer: stop at once rather than never (the outcome still matches).
        token.cancel();
    }
    token
}

/// Milliseconds of wall time, for [`crate::Outcome::Cancelled`].
pub(crate) fn elapsed_ms(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}
