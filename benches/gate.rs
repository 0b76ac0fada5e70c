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
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}
