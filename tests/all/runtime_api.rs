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

/// An upstream on `port` that accepts connections and holds them unanswered until `answer` is
/// set, then answers each request `200 {}`.
fn upstream(port: u16, answer: Arc<std::sync::atomic::AtomicBool>) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the port");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            if !answer.load(std::sync::atomic::Ordering::SeqCst) {
                held.push(stream);
                continue;
            }
            let mut stream = stream;
            let mut buffer = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buffer);
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
            let _ = std::io::Write::write_all(&mut stream, reply);
        }
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn http_get_grants(port: u16) -> Grants {
    let rule = guild_runtime::egress::EgressRule::parse(&format!("http://127.0.0.1:{port}")).expect("rule");
    Grants { egress: vec![rule], ..Grants::default() }
}

fn get(port: u16) -> String {
    format!(r#"{{"url":"http://127.0.0.1:{port}/x"}}"#)
}

/// Outgoing connections are bounded host-wide: while the only one is held by a run waiting on a
/// slow upstream, another run's request waits its connect timeout and is refused, clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_connections_are_bounded_across_runs() {
    let port = free_port();
    upstream(port, Arc::default());
    let config = RuntimeConfig { http_connections_max: 1, ..RuntimeConfig::default() };
    let runtime = Arc::new(Runtime::new(config).expect("runtime"));
    let (tool, _) = runtime.load_file(guild_test_artifacts::HTTP_GET.as_ref()).await.expect("load");
    let waiting = Limits { http_timeout_ms: 2_000, timeout_ms: 5_000, ..Limits::default() };
    let holder = {
        let (runtime, tool, limits) = (runtime.clone(), tool.clone(), waiting.clone());
        tokio::spawn(async move { runtime.run(&tool, &get(port), &http_get_grants(port), &limits).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let quick = Limits { http_connect_timeout_ms: 200, ..Limits::default() };
    let refused = runtime.run(&tool, &get(port), &http_get_grants(port), &quick).await.expect("run");
    assert!(
        refused.egress_denials.iter().any(|d| d.contains("http_connections_max")),
        "{:?} {:?}",
        refused.outcome,
        refused.egress_denials
    );
    let held = holder.await.expect("task").expect("run");
    assert!(held.egress_denials.iter().any(|d| d.contains("did not answer")), "{:?}", held.egress_denials);
}

/// A breaker's probe whose run is stopped mid-request (a timeout drops its future) counts as a
/// failure: the breaker lets a new probe through after its cool-down instead of refusing for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_dropped_mid_request_does_not_stick_the_breaker_open() {
    let port = free_port();
    let breakers = guild_runtime::egress::BreakerSettings { failures_to_open: 1, open_ms: 300, upstreams_max: 16 };
    let runtime = Arc::new(Runtime::new(RuntimeConfig { breakers, ..RuntimeConfig::default() }).expect("runtime"));
    let (tool, _) = runtime.load_file(guild_test_artifacts::HTTP_GET.as_ref()).await.expect("load");
    let grants = http_get_grants(port);
    // Nothing listens: refused, and the breaker opens.
    let report = runtime.run(&tool, &get(port), &grants, &Limits::default()).await.expect("run");
    assert!(report.egress_upstream_failures >= 1, "{:?}", report.egress_denials);
    let open = runtime.run(&tool, &get(port), &grants, &Limits::default()).await.expect("run");
    assert!(open.egress_denials.iter().any(|d| d.contains("circuit open")), "{:?}", open.egress_denials);
    // After the cool-down the probe goes to an upstream that never answers, and its run times out.
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    let answer = Arc::new(std::sync::atomic::AtomicBool::new(false));
    upstream(port, answer.clone());
    let cut = Limits { timeout_ms: 400, ..Limits::default() };
    let probe = runtime.run(&tool, &get(port), &grants, &cut).await.expect("run");
    assert!(matches!(probe.outcome, Outcome::Limit(guild_runtime::LimitHit::Timeout { .. })), "{:?}", probe.outcome);
    // The upstream works now: once the cool-down is over, a probe reaches it.
    answer.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut answered = None;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let report = runtime.run(&tool, &get(port), &grants, &Limits::default()).await.expect("run");
        if matches!(report.outcome, Outcome::Output { .. }) {
            answered = Some(report);
            break;
        }
    }
    assert!(answered.is_some(), "the breaker stayed open after its probe was dropped");
}

/// Loaded tools are bounded (`tools_loaded_max`, least recently used dropped first), and
/// concurrent loads of one component share one compile: every caller gets the same tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_tools_are_bounded_and_concurrent_loads_share_one() {
    let config = RuntimeConfig { tools_loaded_max: 1, ..RuntimeConfig::default() };
    let runtime = Arc::new(Runtime::new(config).expect("runtime"));
    let echo = std::fs::read(ECHO).expect("echo");
    let loads: Vec<_> = (0..4)
        .map(|_| {
            let (runtime, echo) = (runtime.clone(), echo.clone());
            tokio::spawn(async move { runtime.load(&echo).await.expect("load") })
        })
        .collect();
    let mut loaded = Vec::new();
    for load in loads {
        loaded.push(load.await.expect("task"));
    }
    let compiled = loaded.iter().filter(|(_, source)| *source == guild_runtime::CacheSource::Compiled).count();
    assert_eq!(
        compiled,
        1,
        "one compile for four concurrent loads: {:?}",
        loaded.iter().map(|l| l.1).collect::<Vec<_>>()
    );
    assert!(loaded.windows(2).all(|w| Arc::ptr_eq(&w[0].0, &w[1].0)), "every caller got the same tool");
    let (_, again) = runtime.load(&echo).await.expect("load");
    assert_eq!(again, guild_runtime::CacheSource::Memory);
    runtime.load_file(HOSTILE.as_ref()).await.expect("load");
    let (_, evicted) = runtime.load(&echo).await.expect("load");
    assert_ne!(evicted, guild_runtime::CacheSource::Memory, "one tool kept: echo was dropped for hostile");
}

/// A hermetic run reads its mounts as `prepare` captured them (the tree its action digest
/// names), not as the host's directory holds them when the guest gets there: a file changed in
/// between is not seen, and the run's result still stands for its digest.
#[tokio::test]
async fn a_hermetic_run_reads_its_mounts_as_captured_whatever_the_host_does_meanwhile() {
    use guild_replay::{DirStore, HostKey};
    use guild_runtime::{Access, Mount, RecordingConfig, RunMode};
    let home = tempfile::tempdir().expect("home");
    let store = Arc::new(DirStore::open(home.path().join("store")).expect("store"));
    let recording = RecordingConfig::new(store, Arc::new(HostKey::generate().expect("key")));
    let runtime =
        Runtime::new(RuntimeConfig { recording: Some(recording), ..RuntimeConfig::default() }).expect("runtime");
    let (hash, _) = runtime.load_file(guild_test_artifacts::HASH.as_ref()).await.expect("load");
    let data = crate::tree(&[("a.txt", "alpha\n"), ("b/c.txt", "gamma\n")]);
    let grants = Grants {
        mounts: vec![Mount {
            host_path: data.path().to_path_buf(),
            guest_path: "/data".into(),
            access: Access::ReadOnly,
        }],
        ..Grants::default()
    };
    let input = r#"{"path":"/data"}"#;
    let limits = Limits::default();
    let before = runtime.run(&hash, input, &grants, &limits).await.expect("run");
    let mode = RunMode::Hermetic { revision: Some(1), scope: None };
    let prepared = runtime.prepare(&hash, input, &grants, &limits, mode).await.expect("prepare");
    let action = *prepared.action().expect("hermetic").expect("an action digest");
    // The host's directory changes after the capture, before the guest reads it.
    std::fs::write(data.path().join("a.txt"), "ALPHA\n").expect("edit");
    std::fs::write(data.path().join("new.txt"), "more\n").expect("add");
    let cancel = guild_runtime::CancellationToken::new();
    let report = runtime.run_prepared(&hash, prepared, &grants, &limits, cancel, None).await.expect("run");
    assert_eq!(report.outcome, before.outcome, "the guest read the captured tree");
    let hermetic = report.hermetic.expect("hermetic");
    assert_eq!(hermetic.action, Some(action));
    assert_eq!(hermetic.reusable, Ok(()));
    // The same action prepared now names the new tree: another digest.
    let now = runtime.prepare(&hash, input, &grants, &limits, mode).await.expect("prepare");
    assert_ne!(*now.action().expect("hermetic").expect("digest"), action);
}

/// Each of a hermetic run's bounds, hit: mounts too large to snapshot are run live and not
/// cached; past the file identities it numbers, the run is not reusable; past its listings'
/// bytes, the guest is told `insufficient-memory`.
#[tokio::test]
async fn a_hermetic_run_at_each_of_its_bounds() {
    use guild_replay::{DirStore, HostKey};
    use guild_runtime::{Access, HermeticBounds, Mount, NotCacheable, RecordingConfig, RunMode};
    let home = tempfile::tempdir().expect("home");
    let store = Arc::new(DirStore::open(home.path().join("store")).expect("store"));
    let recording = RecordingConfig::new(store, Arc::new(HostKey::generate().expect("key")));
    let bounded = |hermetic| {
        Runtime::new(RuntimeConfig { recording: Some(recording.clone()), hermetic, ..RuntimeConfig::default() })
            .expect("runtime")
    };
    let data = crate::tree(&[("a.txt", "alpha\n"), ("b/c.txt", "gamma\n")]);
    let grants = Grants {
        mounts: vec![Mount {
            host_path: data.path().to_path_buf(),
            guest_path: "/data".into(),
            access: Access::ReadOnly,
        }],
        ..Grants::default()
    };
    let (input, limits) = (r#"{"path":"/data"}"#, Limits::default());
    let mode = RunMode::Hermetic { revision: Some(1), scope: None };

    let runtime = bounded(HermeticBounds { mount_bytes_max: 8, ..HermeticBounds::default() });
    let (hash, _) = runtime.load_file(guild_test_artifacts::HASH.as_ref()).await.expect("load");
    let prepared = runtime.prepare(&hash, input, &grants, &limits, mode).await.expect("prepare");
    let refused = prepared.action().expect("hermetic").expect_err("12 bytes of mounts, 8 allowed");
    assert_eq!(*refused, NotCacheable::MountsTooLarge { bytes: 12, bytes_max: 8 });
    assert!(refused.to_string().contains("cache.hermetic_mount_bytes_max"), "{refused}");

    let runtime = bounded(HermeticBounds { identities_max: 1, ..HermeticBounds::default() });
    let (hash, _) = runtime.load_file(guild_test_artifacts::HASH.as_ref()).await.expect("load");
    let prepared = runtime.prepare(&hash, input, &grants, &limits, mode).await.expect("prepare");
    let cancel = guild_runtime::CancellationToken::new();
    let report = runtime.run_prepared(&hash, prepared, &grants, &limits, cancel, None).await.expect("run");
    let reusable = report.hermetic.expect("hermetic").reusable;
    assert_eq!(reusable, Err(NotCacheable::HostMetadata), "more files than identities numbered");

    let runtime = bounded(HermeticBounds { listings_bytes_max: 16, ..HermeticBounds::default() });
    let (hash, _) = runtime.load_file(guild_test_artifacts::HASH.as_ref()).await.expect("load");
    let prepared = runtime.prepare(&hash, input, &grants, &limits, mode).await.expect("prepare");
    let cancel = guild_runtime::CancellationToken::new();
    let report = runtime.run_prepared(&hash, prepared, &grants, &limits, cancel, None).await.expect("run");
    assert!(!matches!(report.outcome, guild_runtime::Outcome::Output { .. }), "{:?}", report.outcome);
    assert!(format!("{:?}", report.outcome).to_lowercase().contains("memory"), "{:?}", report.outcome);
}
