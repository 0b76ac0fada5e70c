//! Work that may hold a thread for long — a mount's tree, a bundle's outputs, a GPU dispatch —
//! done without stalling the async workers that serve everyone else.

/// Run work that can take long (capturing a mount's tree, hashing a writable mount's outputs,
/// waiting on a GPU dispatch) without stalling the async workers: on a multi-threaded runtime tokio hands
/// this worker's other tasks (a daemon's HTTP requests) to another thread meanwhile. Skipped
/// when there is no such work, since the hand-off itself costs a few microseconds.
pub(crate) fn off_the_async_workers<T>(heavy: bool, work: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if heavy && multi_thread { tokio::task::block_in_place(work) } else { work() }
}
