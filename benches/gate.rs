//! What the rollout gate costs, printed as a Markdown table (`cargo bench --bench gate`): recorded
//! runs checked per second for a small tool. 200 runs of `greet` 1.0.0 (`rev-v1`) are recorded,
//! then checked against `rev-v1` itself (every run identical) and against `rev-v2` (the output
//! changes on long names, so those checks also read the recorded output and diff it), with one
//! loaded candidate per pass, as the gate does; then replayed, for comparison. Bundles are opened
//! before timing: the figure is the check, not reading the store.

use guild_replay::{Bundle, DirStore, HostKey};
use guild_runtime::{CandidateVerdict, Grants, Limits, RecordingConfig, ReplayOptions, Runtime, RuntimeConfig};
use guild_test_artifacts::{REV_V1, REV_V2};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Recorded runs checked per pass.
const RUNS: usize = 200;

/// Names greeted by the recorded runs: half are longer than 5 bytes.
const NAMES: [&str; 4] = ["ada", "barbara", "kay", "margaret"];

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio");
    rt.block_on(bench());
}

async fn bench() {
    let home = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::open(home.path().join("store")).expect("store"));
    let recording = RecordingConfig::new(store.clone(), Arc::new(HostKey::generate().expect("key")));
    let runtime =
        Runtime::new(RuntimeConfig { recording: Some(recording), ..RuntimeConfig::default() }).expect("runtime");
    let (v1, _) = runtime.load_file(REV_V1.as_ref()).await.expect("load");
    let mut bundles = Vec::with_capacity(RUNS);
    for n in 0..RUNS {
        let input = serde_json::json!({"name": NAMES[n % NAMES.len()], "n": n}).to_string();
        let report = runtime.run(&v1, &input, &Grants::default(), &Limits::default()).await.expect("run");
        let (manifest, signature) = store.get_bundle(&report.bundle.expect("recorded")).expect("stored");
        bundles.push(Bundle::open(store.as_ref(), &manifest, &signature, None).expect("bundle"));
    }
    println!("| candidate | checks/s | median check | verdicts |");
    println!("|---|---|---|---|");
    for (name, path) in [("rev-v1 (identical)", REV_V1), ("rev-v2 (output changed on half)", REV_V2)] {
        let (candidate, _) = runtime.load_file(path.as_ref()).await.expect("load");
        let options = ReplayOptions::default();
        // One pass to warm up (instance pool, caches), one measured.
        for bundle in &bundles[..10] {
            runtime.check_candidate(bundle, store.as_ref(), &candidate, &options).await.expect("check");
        }
        let mut samples = Vec::with_capacity(RUNS);
        let mut changed = 0;
        let started = Instant::now();
        for bundle in &bundles {
            let one = Instant::now();
            let check = runtime.check_candidate(bundle, store.as_ref(), &candidate, &options).await.expect("check");
            samples.push(one.elapsed());
            changed += usize::from(check.verdict != CandidateVerdict::Identical);
        }
        let total = started.elapsed();
        samples.sort();
        println!(
            "| {name} | {:.0} | {} | {} identical, {changed} changed |",
            RUNS as f64 / total.as_secs_f64(),
            us(samples[RUNS / 2]),
            RUNS - changed
        );
    }
    // For comparison: replaying the same bundles (`guild replay`'s path: the component read
    // from the store and found loaded by its digest, compared event by event).
    let mut samples = Vec::with_capacity(RUNS);
    let started = Instant::now();
    for bundle in &bundles {
        let one = Instant::now();
        let report = runtime.replay(bundle, store.as_ref(), &ReplayOptions::default()).await.expect("replay");
        samples.push(one.elapsed());
        assert!(report.mismatch.is_none(), "{report:?}");
    }
    let total = started.elapsed();
    samples.sort();
    println!(
        "| replay of rev-v1, for comparison | {:.0} | {} | {RUNS} identical |",
        RUNS as f64 / total.as_secs_f64(),
        us(samples[RUNS / 2])
    );
    routing(&runtime).await;
}

/// Calls routed per measurement of the routing cost.
const ROUTES: usize = 1_000_000;

/// What routing adds to a call: `Registry::route` for a name with a candidate at 20% (a read
/// lock, two short hashes, an `Arc` clone), against looking the name up alone.
async fn routing(runtime: &Runtime) {
    use guild_server::registry::{Base, Named, Registry, ToolSource};
    let base = Base::default();
    let load = |path: &'static str| async move { runtime.load_file(path.as_ref()).await.expect("load").0 };
    let (v1, v2) = (load(REV_V1).await, load(REV_V2).await);
    let revision = |tool: &guild_runtime::Tool| guild_vocab::Revision {
        revision: 0,
        component: tool.digest().to_hex(),
        version: tool.info().version.clone(),
        description: String::new(),
        added_unix_ms: 0,
        added_by: "bench".into(),
        note: String::new(),
        rolled_back: None,
    };
    let mut record = guild_vocab::ToolRecord::new("greet", revision(&v1));
    record.add(revision(&v2)).expect("added");
    record
        .start(guild_vocab::Candidate {
            revision: 2,
            ramp_bp: 2000,
            shadow_bp: 0,
            tenants: Vec::new(),
            started_unix_ms: 0,
            started_by: "bench".into(),
            gate_report: None,
            forced: false,
            guard: guild_vocab::GuardRails::default(),
        })
        .expect("started");
    let source = ToolSource::File(REV_V1.into());
    let loaded = [
        (1, Arc::new(base.register("greet", 1, v1, source.clone()))),
        (2, Arc::new(base.register("greet", 2, v2, source))),
    ];
    let registry = Registry::default();
    registry.install(Named::new(record, base, loaded.into_iter().collect()));
    let keys: Vec<String> = (0..1024).map(|i| format!("{i:032x}")).collect();
    let time = |f: &dyn Fn(&str) -> bool| {
        let started = Instant::now();
        let mut hits = 0usize;
        for i in 0..ROUTES {
            hits += usize::from(f(&keys[i % keys.len()]));
        }
        (started.elapsed(), hits)
    };
    let (lookup, _) = time(&|_| registry.get("greet").is_some());
    let (routed, to_candidate) = time(&|key| registry.route("greet", "tenant", key).is_ok_and(|r| r.candidate));
    let ns = |d: Duration| d.as_secs_f64() * 1e9 / ROUTES as f64;
    println!();
    println!("| routing ({ROUTES} calls) | ns per call |");
    println!("|---|---|");
    println!("| name lookup alone (`Registry::get`) | {:.0} |", ns(lookup));
    println!(
        "| `Registry::route`, candidate at 20% ({:.1}% routed to it) | {:.0} |",
        to_candidate as f64 * 100.0 / ROUTES as f64,
        ns(routed)
    );
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}
