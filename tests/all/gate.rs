//! The rollout gate end to end: runs of `greet` 1.0.0 (`rev-v1`) recorded into a real store,
//! then each later revision (`rev-v2`..`rev-v5`) run on those recordings with every effect
//! answered from the tape, classified, gathered into a `GateReport` and judged by a
//! `GatePolicy`. A loopback server proves that a candidate's requests are never sent.

use guild_replay::{Bundle, DirStore, HostKey};
use guild_runtime::{
    Access, CandidateCheck, CandidateVerdict, GatePolicy, GateReport, Grants, Limits, Mount, RecordingConfig,
    ReplayError, ReplayOptions, Runtime, RuntimeConfig, Tool,
};
use guild_test_artifacts::{ECHO, HOSTILE, REV_V1, REV_V2, REV_V3, REV_V4, REV_V5};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Names greeted by the recorded runs: three are longer than 5 bytes.
const NAMES: [&str; 8] = ["ada", "grace", "barbara", "al", "margaret", "linus", "edsger", "kay"];

/// Recorded runs per test.
const RUNS: usize = 20;

/// A recording runtime on its own store.
struct Lab {
    _home: tempfile::TempDir,
    store: Arc<DirStore>,
    runtime: Runtime,
}

impl Lab {
    fn new() -> Self {
        let home = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(DirStore::open(home.path().join("store")).expect("store"));
        let key = Arc::new(HostKey::generate().expect("key"));
        let recording = RecordingConfig::new(store.clone(), key);
        let runtime =
            Runtime::new(RuntimeConfig { recording: Some(recording), ..RuntimeConfig::default() }).expect("runtime");
        Self { _home: home, store, runtime }
    }

    async fn load(&self, path: &str) -> Arc<Tool> {
        self.runtime.load_file(path.as_ref()).await.expect("load").0
    }

    /// Run `tool` on each input with `grants`, and open each run's bundle.
    async fn record(&self, tool: &str, inputs: &[String], grants: &Grants) -> Vec<Bundle> {
        let tool = self.load(tool).await;
        let mut bundles = Vec::new();
        for input in inputs {
            let report = self.runtime.run(&tool, input, grants, &Limits::default()).await.expect("run");
            let id = report.bundle.expect("the runtime records");
            let (manifest, signature) = self.store.get_bundle(&id).expect("stored");
            bundles.push(Bundle::open(self.store.as_ref(), &manifest, &signature, None).expect("a valid bundle"));
        }
        bundles
    }

    /// Check `candidate` against every bundle.
    async fn check(&self, candidate: &str, bundles: &[Bundle]) -> Vec<CandidateCheck> {
        let candidate = self.load(candidate).await;
        let mut checks = Vec::new();
        for bundle in bundles {
            let options = ReplayOptions::default();
            let check = self.runtime.check_candidate(bundle, self.store.as_ref(), &candidate, &options).await;
            checks.push(check.expect("checked"));
        }
        checks
    }
}

/// The input of recorded run `n`; with `url`, where v3 sends its probe.
fn input(n: usize, url: Option<&str>) -> String {
    let name = NAMES[n % NAMES.len()];
    match url {
        Some(url) => serde_json::json!({"name": name, "n": n, "url": url}).to_string(),
        None => serde_json::json!({"name": name, "n": n}).to_string(),
    }
}

fn inputs(url: Option<&str>) -> Vec<String> {
    (0..RUNS).map(|n| input(n, url)).collect()
}

/// A loopback HTTP server answering every request `200 ok`, counting the requests it got.
fn counting_server() -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, count)
}

fn report(bundles: &[Bundle], candidate: &str, checks: Vec<CandidateCheck>) -> GateReport {
    let current = bundles[0].action.component.digest;
    let candidate = guild_replay::Digest::of(&std::fs::read(candidate).expect("component"));
    GateReport::new("greet", current, candidate, checks)
}

#[tokio::test]
async fn gate_an_unchanged_revision_is_identical_on_every_recorded_run() {
    let lab = Lab::new();
    let bundles = lab.record(REV_V1, &inputs(None), &Grants::default()).await;
    assert!(
        bundles.iter().all(|b| b.tape.events().iter().any(|e| e.effect.kind() == "wall_clock")),
        "every run read the wall clock"
    );
    let checks = lab.check(REV_V1, &bundles).await;
    assert!(checks.iter().all(|c| c.verdict == CandidateVerdict::Identical), "{checks:#?}");
    for check in &checks {
        assert!(check.fuel_recorded_units > 0);
        assert_eq!((check.fuel_delta, check.fuel_candidate_units), (0, check.fuel_recorded_units), "{check:#?}");
    }
    let report = report(&bundles, REV_V1, checks);
    assert_eq!(report.counts.identical, RUNS as u64);
    assert_eq!(report.fuel_delta_mean, 0.0);
    assert!(GatePolicy::default().evaluate(&report).is_empty(), "{}", report.table());
    let policy = GatePolicy { min_runs: RUNS as u64 + 1, ..GatePolicy::default() };
    assert!(policy.evaluate(&report)[0].contains("gate.min_runs"));
}

#[tokio::test]
async fn gate_a_changed_greeting_is_output_changed_on_exactly_the_long_names() {
    let lab = Lab::new();
    let bundles = lab.record(REV_V1, &inputs(None), &Grants::default()).await;
    let checks = lab.check(REV_V2, &bundles).await;
    for (n, check) in checks.iter().enumerate() {
        let name = NAMES[n % NAMES.len()];
        assert_eq!(check.fuel_delta, check.fuel_candidate_units as i64 - check.fuel_recorded_units as i64);
        assert!(check.fuel_candidate_units > 0, "{check:#?}");
        if name.len() <= 5 {
            assert_eq!(check.verdict, CandidateVerdict::Identical, "{name}: {check:#?}");
            continue;
        }
        assert_eq!(check.verdict, CandidateVerdict::OutputChanged, "{name}: {check:#?}");
        assert_eq!(check.output_diff.len(), 1, "{check:#?}");
        let change = &check.output_diff[0];
        assert_eq!(change.path, "/greeting");
        assert_eq!(change.before, Some(serde_json::json!(format!("hello {name}"))));
        assert_eq!(change.after, Some(serde_json::json!(format!("hello, {name}!"))));
        assert!(check.detail.contains("/greeting"), "{}", check.detail);
    }
    let report = report(&bundles, REV_V2, checks);
    let long = (0..RUNS).filter(|n| NAMES[n % NAMES.len()].len() > 5).count() as u64;
    assert_eq!((report.counts.output_changed, report.counts.identical), (long, RUNS as u64 - long));
    let table = report.table();
    assert_eq!(table.lines().count(), RUNS + 3, "{table}");
    assert!(table.contains("output_changed") && table.contains("mean fuel delta"), "{table}");
    let reasons = GatePolicy::default().evaluate(&report);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("gate.output_changed_percent_max"), "{reasons:?}");
    let lenient = GatePolicy { output_changed_percent_max: 50.0, ..GatePolicy::default() };
    assert!(lenient.evaluate(&report).is_empty());
    let back: GateReport = serde_json::from_str(&serde_json::to_string(&report).expect("json")).expect("parses");
    assert_eq!(back, report);
}

#[tokio::test]
async fn gate_a_new_request_is_refused_named_and_never_sent() {
    let (port, requests) = counting_server();
    let url = format!("http://127.0.0.1:{port}/v3-probe");
    let lab = Lab::new();
    let mut recorded = inputs(Some(&url));
    recorded.truncate(RUNS / 2);
    recorded.extend((RUNS / 2..RUNS).map(|n| input(n, None)));
    let bundles = lab.record(REV_V1, &recorded, &Grants::default()).await;
    let checks = lab.check(REV_V3, &bundles).await;
    for (n, check) in checks.iter().enumerate() {
        assert_eq!(check.verdict, CandidateVerdict::NewEffect, "{check:#?}");
        let expected = if n < RUNS / 2 { url.clone() } else { "http://127.0.0.1:9/v3-probe".to_string() };
        assert_eq!(check.effect.as_deref(), Some(format!("http GET {expected}").as_str()), "{check:#?}");
        assert!(check.detail.contains(&expected), "{}", check.detail);
    }
    assert_eq!(requests.load(Ordering::SeqCst), 0, "a candidate check never sends a request");
    let reasons = GatePolicy::default().evaluate(&report(&bundles, REV_V3, checks));
    assert!(reasons.iter().any(|r| r.contains("gate.new_effects_max")), "{reasons:?}");
}

#[tokio::test]
async fn gate_a_trapping_revision_is_trap_and_a_failing_one_error_changed() {
    let lab = Lab::new();
    let bundles = lab.record(REV_V1, &inputs(None), &Grants::default()).await;
    let traps = lab.check(REV_V4, &bundles).await;
    assert!(traps.iter().all(|c| c.verdict == CandidateVerdict::Trap), "{traps:#?}");
    assert!(traps[0].detail.contains("trapped"), "{}", traps[0].detail);
    let report_v4 = report(&bundles, REV_V4, traps);
    assert_eq!(report_v4.counts.trap, RUNS as u64);
    assert!(GatePolicy::default().evaluate(&report_v4).iter().any(|r| r.contains("gate.traps_max")));

    let checks = lab.check(REV_V5, &bundles).await;
    for (n, check) in checks.iter().enumerate() {
        let expected = if n % 10 < 3 { CandidateVerdict::ErrorChanged } else { CandidateVerdict::Identical };
        assert_eq!(check.verdict, expected, "run {n}: {check:#?}");
        if expected == CandidateVerdict::ErrorChanged {
            assert!(check.detail.contains(&format!("revision 5 fails call {n}")), "{}", check.detail);
        }
    }
    let report_v5 = report(&bundles, REV_V5, checks);
    assert_eq!(report_v5.counts.error_changed, 6);
    let tolerant = GatePolicy { errors_changed_max: 6, ..GatePolicy::default() };
    assert!(tolerant.evaluate(&report_v5).is_empty());
    assert_eq!(GatePolicy::default().evaluate(&report_v5).len(), 1);
}

#[tokio::test]
async fn gate_a_recorded_request_the_candidate_never_makes_is_a_missing_effect() {
    let (port, requests) = counting_server();
    let url = format!("http://127.0.0.1:{port}/v3-probe");
    let rule = guild_runtime::egress::EgressRule::parse(&format!("http://127.0.0.1:{port}")).expect("rule");
    let grants = Grants { egress: vec![rule], ..Grants::default() };
    let lab = Lab::new();
    let recorded: Vec<String> = (0..4).map(|n| input(n, Some(&url))).collect();
    let bundles = lab.record(REV_V3, &recorded, &grants).await;
    let sent = requests.load(Ordering::SeqCst);
    assert_eq!(sent, 4, "the recorded runs made real requests");

    let checks = lab.check(REV_V1, &bundles).await;
    for check in &checks {
        assert_eq!(check.verdict, CandidateVerdict::MissingEffect, "{check:#?}");
        assert_eq!(check.effect.as_deref(), Some(format!("http GET {url}").as_str()));
    }
    // The same revision is answered from the tape, without sending anything.
    let same = lab.check(REV_V3, &bundles).await;
    assert!(same.iter().all(|c| c.verdict == CandidateVerdict::Identical), "{same:#?}");
    assert_eq!(requests.load(Ordering::SeqCst), sent, "checks send nothing");
    let reasons = GatePolicy::default().evaluate(&report(&bundles, REV_V1, checks));
    assert!(reasons.iter().any(|r| r.contains("gate.missing_effects_max")), "{reasons:?}");
}

#[tokio::test]
async fn gate_a_candidate_of_another_tool_is_refused() {
    let lab = Lab::new();
    let bundles = lab.record(REV_V1, &inputs(None)[..1], &Grants::default()).await;
    let echo = lab.load(ECHO).await;
    let refused = lab.runtime.check_candidate(&bundles[0], lab.store.as_ref(), &echo, &ReplayOptions::default()).await;
    match refused {
        Err(ReplayError::Invalid(why)) => assert!(why.contains("echo") && why.contains("greet"), "{why}"),
        other => panic!("expected an invalid candidate, got {other:?}"),
    }
}

#[tokio::test]
async fn gate_a_candidate_writes_only_into_a_rebuilt_mount() {
    let lab = Lab::new();
    let scratch = crate::tree(&[("keep.txt", "kept")]);
    let mount =
        Mount { host_path: scratch.path().to_path_buf(), guest_path: "/data".into(), access: Access::ReadWrite };
    let grants = Grants { mounts: vec![mount], ..Grants::default() };
    let input = r#"{"attack":"escape","read":["/data/keep.txt"],"write":["/data/new.txt"]}"#.to_string();
    let bundles = lab.record(HOSTILE, &[input], &grants).await;
    assert!(!bundles[0].result.output_trees.is_empty(), "the recorded run wrote into its mount");
    std::fs::remove_file(scratch.path().join("new.txt")).expect("the live run wrote the real file");
    let checks = lab.check(HOSTILE, &bundles).await;
    assert_eq!(checks[0].verdict, CandidateVerdict::Identical, "{checks:#?}");
    assert_eq!(crate::listing(scratch.path()), [std::path::PathBuf::from("keep.txt")], "nothing real was written");
}
