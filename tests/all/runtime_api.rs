//! The runtime as the daemon and workers will use it: concurrent runs from one `Runtime`,
//! deterministic fuel, and a clear refusal when every run slot is taken.

use guild_runtime::{EngineSettings, Grants, Limits, Outcome, RunError, Runtime, RuntimeConfig};
use guild_test_artifacts::{ECHO, HOSTILE};
use std::sync::Arc;

fn runtime(concurrent_runs_max: u32) -> Arc<Runtime> {
    let config = RuntimeConfig {
        engine: EngineSettings { concurrent_runs_max, ..EngineSettings::default() },
        ..RuntimeConfig::default()
    };
    Arc::new(Runtime::new(config).expect("runtime"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_are_isolated() {
    let runtime = runtime(16);
    let (tool, _) = runtime.load_file(ECHO.as_ref()).await.expect("load");
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (runtime, tool) = (runtime.clone(), tool.clone());
        tasks.push(tokio::spawn(async move {
            let input = format!(r#"{{"message":"run {i}"}}"#);
            let report = runtime.run(&tool, &input, &Grants::default(), &Limits::default()).await.expect("run");
            (i, report.outcome)
        }));
    }
    for task in tasks {
        let (i, outcome) = task.await.expect("task");
        assert_eq!(outcome, Outcome::Output { output: format!(r#"{{"message":"run {i}"}}"#) });
    }
}

#[tokio::test]
async fn fuel_is_deterministic() {
    let runtime = runtime(2);
    let (tool, _) = runtime.load_file(HOSTILE.as_ref()).await.expect("load");
    let input = r#"{"attack":"spin","rounds":100000}"#;
    let mut fuel = Vec::new();
    for _ in 0..3 {
        let report = runtime.run(&tool, input, &Grants::default(), &Limits::default()).await.expect("run");
        assert!(matches!(report.outcome, Outcome::Output { .. }), "{:?}", report.outcome);
        fuel.push(report.fuel_used_units);
    }
    assert!(fuel[0] > 100_000, "{fuel:?}");
    assert!(fuel.iter().all(|f| *f == fuel[0]), "{fuel:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_refuses_with_busy_instead_of_waiting() {
    let runtime = runtime(1);
    let (hostile, _) = runtime.load_file(HOSTILE.as_ref()).await.expect("load");
    let (echo, _) = runtime.load_file(ECHO.as_ref()).await.expect("load");
    let sleeper = {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let limits = Limits { timeout_ms: 1500, ..Limits::default() };
            runtime.run(&hostile, r#"{"attack":"sleep"}"#, &Grants::default(), &limits).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let busy = runtime.run(&echo, r#"{"message":"x"}"#, &Grants::default(), &Limits::default()).await;
    assert!(matches!(busy, Err(RunError::Busy { slots: 1 })), "{busy:?}");
    let slept = sleeper.await.expect("task").expect("run");
    assert!(matches!(slept.outcome, Outcome::Limit(_)), "{:?}", slept.outcome);
    // The slot is free again.
    let after = runtime.run(&echo, r#"{"message":"x"}"#, &Grants::default(), &Limits::default()).await;
    assert!(matches!(after.map(|r| r.outcome), Ok(Outcome::Output { .. })));
}

/// A cancelled run stops promptly whether the guest computes (stopped at an epoch check) or
/// waits in a host call (dropped), and ends in `Outcome::Cancelled` rather than a limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_stops_computing_or_waiting() {
    let runtime = runtime(4);
    let (hostile, _) = runtime.load_file(HOSTILE.as_ref()).await.expect("load");
    // Enough fuel and time that only the cancellation can stop either attack within the test.
    let limits = Limits { fuel_units: u64::MAX / 2, timeout_ms: 60_000, ..Limits::default() };
    for attack in ["loop", "sleep"] {
        let cancel = guild_runtime::CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            canceller.cancel();
        });
        let started = std::time::Instant::now();
        let input = format!(r#"{{"attack":"{attack}"}}"#);
        let report = runtime.run_cancellable(&hostile, &input, &Grants::default(), &limits, cancel).await.expect("run");
        assert!(
            matches!(report.outcome, Outcome::Cancelled { after_ms } if after_ms >= 200),
            "{attack}: {:?}",
            report.outcome
        );
        assert!(started.elapsed().as_secs() < 10, "{attack}: stopped promptly ({:?})", started.elapsed());
    }
}
