//! What keyed limits add to a run or a request, printed as Markdown (`cargo bench --bench
//! limits`): one check of a request against its upstream's and its secret's limits (GCRA), in
//! process and — with a `redis-server` of its own on a loopback port — in Redis as a fleet keeps
//! them; the same for a run against a tenant's run limit; and a request under an in-flight
//! limit (`concurrency_max`: a place taken, and given back when the request ends). The limits
//! are generous, so every check passes without waiting: what is timed is the bookkeeping.

use guild_queue::{EgressGates, EgressLimit};
use guild_vocab::egress::EgressGate;
use std::time::Instant;

#[path = "support/redis.rs"]
mod bench_redis;

/// Checks timed in process.
const LOCAL: u32 = 200_000;
/// Checks timed in Redis.
const SHARED: u32 = 5_000;

fn limits() -> Vec<EgressLimit> {
    let limit = |key: &str| EgressLimit {
        key: key.into(),
        rate_per_second: Some(1e9),
        concurrency_max: None,
        burst: 1_000_000,
        wait_ms_max: 0,
        setting: "bench".into(),
    };
    vec![limit("upstream:https://api.example.com:443"), limit("secret:TOKEN"), limit("run:tenant alice")]
}

/// An in-flight limit on another upstream: 10 000 places, never all taken here.
fn in_flight() -> Vec<EgressLimit> {
    vec![EgressLimit {
        key: "upstream:https://pay.example.com:443".into(),
        rate_per_second: None,
        concurrency_max: Some(10_000),
        burst: 1,
        wait_ms_max: 0,
        setting: "bench".into(),
    }]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let secrets = vec!["TOKEN".to_string()];
    let upstream = "https://api.example.com:443";
    let run = [limits()[2].clone()];
    let local = EgressGates::local(limits(), 300_000);
    let held_local = EgressGates::local(in_flight(), 300_000);
    let (request, runs, held) = runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..LOCAL {
            local.admit(upstream, &secrets).await.expect("room");
        }
        let request = started.elapsed() / LOCAL;
        let started = Instant::now();
        for _ in 0..LOCAL {
            let _ = local.admit_run(&run).await.expect("room");
        }
        let runs = started.elapsed() / LOCAL;
        let started = Instant::now();
        for _ in 0..LOCAL {
            drop(held_local.admit("https://pay.example.com:443", &[]).await.expect("a place"));
        }
        (request, runs, started.elapsed() / LOCAL)
    });
    println!("| check | per check | checks timed |");
    println!("|---|---|---|");
    println!(
        "| a request, its upstream's and its secret's limits, in process | {:.2} µs | {LOCAL} |",
        request.as_secs_f64() * 1e6
    );
    println!("| a run, its tenant's run limit, in process | {:.2} µs | {LOCAL} |", runs.as_secs_f64() * 1e6);
    println!(
        "| a request under an in-flight limit (a place taken and given back), in process | {:.2} µs | {LOCAL} |",
        held.as_secs_f64() * 1e6
    );

    let Some(server) = bench_redis::BenchRedis::start() else { return };
    let (request, runs, held) = runtime.block_on(async {
        let queue = server.queue().await;
        let shared = EgressGates::shared(limits(), 300_000, queue.clone());
        let held_shared = EgressGates::shared(in_flight(), 300_000, queue);
        let started = Instant::now();
        for _ in 0..SHARED {
            shared.admit(upstream, &secrets).await.expect("room");
        }
        let request = started.elapsed() / SHARED;
        let started = Instant::now();
        for _ in 0..SHARED {
            let _ = shared.admit_run(&run).await.expect("room");
        }
        let runs = started.elapsed() / SHARED;
        let started = Instant::now();
        for _ in 0..SHARED {
            // Given back by a task of its own (ZREM), which runs at the next await.
            drop(held_shared.admit("https://pay.example.com:443", &[]).await.expect("a place"));
        }
        (request, runs, started.elapsed() / SHARED)
    });
    drop(server);
    println!("| a request, in Redis (one script, loopback) | {:.1} µs | {SHARED} |", request.as_secs_f64() * 1e6);
    println!("| a run, in Redis (one script, loopback) | {:.1} µs | {SHARED} |", runs.as_secs_f64() * 1e6);
    println!(
        "| a request under an in-flight limit, in Redis (a script, then a ZREM) | {:.1} µs | {SHARED} |",
        held.as_secs_f64() * 1e6
    );
}
