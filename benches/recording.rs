//! What recording and replay cost, printed as a Markdown table (`cargo bench --bench recording`).
//!
//! Measured: a run of `wc` over a ~4 MiB mounted tree with and without recording (the first
//! recorded run stores the tree; later ones find every blob already stored); a trivial warm call
//! unrecorded, recorded into a write-behind store (as a long-running host records), and recorded
//! with every write in the call (as `guild run` does); the size of a typical bundle; replay time
//! against the original run; and verification throughput.

use guild_replay::archive;
use guild_replay::{Bundle, DirStore, HostKey};
use guild_runtime::{Access, Grants, Limits, Mount, Outcome, RecordingConfig, Runtime, RuntimeConfig, Tool};
use guild_test_artifacts::{ECHO, WC};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: usize = 41;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio");
    rt.block_on(bench());
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn row(what: &str, result: String) {
    println!("| {what} | {result} |");
}

fn data_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let line = "the quick brown fox jumps over the lazy dog and keeps on running\n";
    for i in 0..40 {
        let sub = dir.path().join(format!("d{}", i % 5));
        std::fs::create_dir_all(&sub).expect("mkdir");
        // Distinct contents, so nothing deduplicates.
        let text = format!("file {i}\n{}", line.repeat(1600));
        std::fs::write(sub.join(format!("f{i}.txt")), text).expect("write");
    }
    dir
}

async fn run(runtime: &Runtime, tool: &Tool, input: &str, grants: &Grants) -> (Duration, Option<guild_replay::Digest>) {
    let started = Instant::now();
    let report = runtime.run(tool, input, grants, &Limits::default()).await.expect("run");
    assert!(matches!(report.outcome, Outcome::Output { .. }), "{:?}", report.outcome);
    (started.elapsed(), report.bundle)
}

async fn bench() {
    let home = tempfile::tempdir().expect("tempdir");
    // The store a long-running host uses: writes land in the background.
    let store = Arc::new(
        DirStore::open_write_behind(home.path().join("store"), guild_replay::PENDING_BYTES_MAX_DEFAULT).expect("store"),
    );
    let recording = RecordingConfig::new(store.clone(), Arc::new(HostKey::generate().expect("key")));
    let plain = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let recorded =
        Runtime::new(RuntimeConfig { recording: Some(recording), ..RuntimeConfig::default() }).expect("runtime");
    let data = data_tree();
    let grants = Grants {
        mounts: vec![Mount {
            host_path: data.path().to_path_buf(),
            guest_path: "/data".into(),
            access: Access::ReadOnly,
        }],
        ..Grants::default()
    };
    let data_bytes: u64 = walk_bytes(data.path());
    let (wc_plain, _) = plain.load_file(WC.as_ref()).await.expect("load");
    let (wc_recorded, _) = recorded.load_file(WC.as_ref()).await.expect("load");

    println!("| measurement | result |");
    println!("|---|---|");
    let (first, _) = run(&recorded, &wc_recorded, "{}", &grants).await;
    let mut unrecorded = Vec::new();
    let mut steady = Vec::new();
    let mut ratios = Vec::new();
    let mut last_bundle = None;
    for _ in 0..RUNS {
        // Pairs, back to back: this VM's speed drifts, so the overhead is the median of each
        // pair's ratio rather than a ratio of medians taken minutes apart.
        let (plain_took, _) = run(&plain, &wc_plain, "{}", &grants).await;
        let (took, bundle) = run(&recorded, &wc_recorded, "{}", &grants).await;
        unrecorded.push(plain_took);
        steady.push(took);
        ratios.push(took.as_secs_f64() / plain_took.as_secs_f64());
        last_bundle = bundle;
    }
    ratios.sort_by(f64::total_cmp);
    let overhead = ratios[ratios.len() / 2];
    let (unrecorded, steady) = (median(unrecorded), median(steady));
    row(
        &format!("wc over {:.1} MiB in 40 files, unrecorded, median of {RUNS}", data_bytes as f64 / 1048576.0),
        ms(unrecorded),
    );
    row("same, recorded: first run (stores the tree)", ms(first));
    row(&format!("same, recorded: later runs (tree already stored), median of {RUNS}"), ms(steady));
    row("recording overhead, later runs (median of paired ratios)", format!("{:+.1}%", (overhead - 1.0) * 100.0));

    let id = last_bundle.expect("bundle");
    let (manifest, signature) = store.get_bundle(&id).expect("bundle");
    let mut archive_bytes = Vec::new();
    archive::export(store.as_ref(), &manifest, &signature, &mut archive_bytes).expect("export");
    row(
        "bundle archive of that run (.tar.zst, with component and tree)",
        format!("{:.1} KiB", archive_bytes.len() as f64 / 1024.0),
    );

    let mut replays = Vec::new();
    let bundle = Bundle::open(store.as_ref(), &manifest, &signature, None).expect("valid");
    for _ in 0..RUNS {
        let started = Instant::now();
        let report = recorded.replay(&bundle, store.as_ref(), &Default::default()).await.expect("replay");
        assert!(report.mismatch.is_none(), "{report:?}");
        replays.push(started.elapsed());
    }
    row(&format!("replay of that bundle (rebuild the tree, run, compare), median of {RUNS}"), ms(median(replays)));

    let mut verifies = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        Bundle::open(store.as_ref(), &manifest, &signature, None).expect("valid");
        verifies.push(started.elapsed());
    }
    let verify = median(verifies);
    let bundle_bytes: u64 = bundle.manifest.blobs.iter().map(|b| b.size_bytes).sum();
    row(
        &format!("verify that bundle ({:.1} MiB of blobs), median of {RUNS}", bundle_bytes as f64 / 1048576.0),
        format!("{} ({:.0} MiB/s)", ms(verify), bundle_bytes as f64 / 1048576.0 / verify.as_secs_f64()),
    );

    let sync_store = Arc::new(DirStore::open(home.path().join("store-sync")).expect("store"));
    let sync = Runtime::new(RuntimeConfig {
        recording: Some(RecordingConfig::new(sync_store, Arc::new(HostKey::generate().expect("key")))),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let none = Grants::default();
    let input = r#"{"message":"hello"}"#;
    let echo = (
        plain.load_file(ECHO.as_ref()).await.expect("load").0,
        recorded.load_file(ECHO.as_ref()).await.expect("load").0,
        sync.load_file(ECHO.as_ref()).await.expect("load").0,
    );
    let mut calls = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2000 {
        calls.0.push(run(&plain, &echo.0, input, &none).await.0);
        calls.1.push(run(&recorded, &echo.1, input, &none).await.0);
        calls.2.push(run(&sync, &echo.2, input, &none).await.0);
    }
    let started = Instant::now();
    store.flush().expect("flush");
    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    row("warm call of echo, unrecorded, p50 of 2000", us(median(calls.0)));
    row("warm call of echo, recorded into the write-behind store, p50 of 2000", us(median(calls.1)));
    row("warm call of echo, recorded with every store write in the call, p50 of 2000", us(median(calls.2)));
    row("write-behind backlog left after those calls, flushed in", ms(started.elapsed()));
}

fn walk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| if e.path().is_dir() { walk_bytes(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) })
        .sum()
}
