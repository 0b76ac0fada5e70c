//! What pricing a run and entering it in the usage ledger cost, printed as Markdown (`cargo bench
//! --bench cost`): the work the daemon adds to every recorded run when `[pricing]` is set —
//! `PriceTable::price_with_tokens` over the run's quantities (six priced resources and one LLM
//! upstream's tokens) and `Usage::add` into a ledger already holding a day of hours for 20
//! tenants × 10 tools; then a run's budgets (tenant, tool and agent: reserve before, settle
//! after) in process, and — with a `redis-server` of its own on a loopback port — the same
//! budgets and the ledger entry as a fleet keeps them in Redis.

use guild_replay::cost::{LlmPrice, Price, PriceTable, Quantities, TokenCount, UsageStyle};
use guild_server::usage::{Filter, GroupBy, USAGE_HOURS_KEPT_DEFAULT, USAGE_ROWS_MAX_DEFAULT, Usage};
use std::time::Instant;

#[path = "support/redis.rs"]
mod bench_redis;

/// Runs timed.
const RUNS: u32 = 200_000;

fn price(text: &str) -> Price {
    Price::parse(text).expect("a price")
}

fn main() {
    let table = PriceTable {
        currency: "USD".into(),
        fuel_per_million: price("0.0000025"),
        wall_second: price("0.000016"),
        memory_mib_second: price("0.0000000025"),
        egress_request: price("0.0000005"),
        egress_mib: price("0.00009"),
        bundle_mib: price("0.000023"),
        gpu_device_ms: price("0.00005"),
        gpu_cpu_ms: price("0.00001"),
        egress: Vec::new(),
        llm: vec![LlmPrice {
            url: "https://api.openai.com/v1/".into(),
            style: UsageStyle::Openai,
            input_pointer: None,
            output_pointer: None,
            input_token: price("0.0000025"),
            output_token: price("0.00001"),
            usage_required: false,
        }],
    };
    let quantities = Quantities {
        fuel_units: 3_141_592,
        wall_time_us: 1_234,
        memory_bytes_peak: 3 << 20,
        egress_requests: 1,
        egress_bytes: 2_048,
        gpu_device_us: 0,
        gpu_cpu_us: 0,
        bundle_bytes: 9_000,
    };
    let tokens = [TokenCount { input: 812, output: 95 }];
    let usage = Usage::new(USAGE_HOURS_KEPT_DEFAULT, USAGE_ROWS_MAX_DEFAULT);
    let hour_ms = 3_600_000u64;
    let start_ms = 1_764_460_800_000u64;
    for h in 0..24 {
        for t in 0..20 {
            for tool in 0..10 {
                let cost = table.price(&quantities);
                usage.add(start_ms + h * hour_ms, (&format!("tenant-{t}"), None, None), &format!("tool-{tool}"), &cost);
            }
        }
    }
    let (tenant, tool) = ("tenant-7".to_string(), "tool-3".to_string());
    let now_ms = start_ms + 23 * hour_ms;

    let started = Instant::now();
    for _ in 0..RUNS {
        std::hint::black_box(table.price_with_tokens(std::hint::black_box(&quantities), &tokens));
    }
    let priced = started.elapsed() / RUNS;

    let cost = table.price_with_tokens(&quantities, &tokens);
    let started = Instant::now();
    for _ in 0..RUNS {
        usage.add(now_ms, (&tenant, None, None), &tool, std::hint::black_box(&cost));
    }
    let entered = started.elapsed() / RUNS;

    let started = Instant::now();
    let rows = usage.query(&Filter::default(), GroupBy::parse("tenant,tool").expect("group"));
    let queried = started.elapsed();

    println!("| step | per run | runs timed |");
    println!("|---|---|---|");
    println!("| price a run (6 resources + 1 LLM upstream's tokens) | {:.2} µs | {RUNS} |", priced.as_secs_f64() * 1e6);
    println!("| enter it in the usage ledger (4 800 rows held) | {:.2} µs | {RUNS} |", entered.as_secs_f64() * 1e6);
    println!("| together | {:.2} µs | |", (priced + entered).as_secs_f64() * 1e6);
    println!();
    println!(
        "`GET /v1/usage?group_by=tenant,tool` over the ledger: {} rows in {:.2} ms.",
        rows.len(),
        queried.as_secs_f64() * 1e3
    );
    budgets(&cost);
}

/// A run's three budgets, reserved and settled: in process, then in Redis with its ledger entry.
fn budgets(cost: &guild_replay::cost::Cost) {
    use guild_queue::{BudgetLine, BudgetPlan, BudgetStore, LocalBudgets};
    let line = |key: &str| BudgetLine {
        key: key.into(),
        money: Some(price("1000000")),
        tokens: Some(u64::MAX / 2),
        settings: (String::new(), String::new()),
    };
    let plan = BudgetPlan {
        tenant: "tenant-7".into(),
        period_s: 86_400,
        period_start_unix_s: guild_queue::period_start(guild_queue::now_unix_s(), 86_400),
        lines: vec![line("tenant"), line("tool:tool-3"), line("agent:planner")],
        agent: Some("planner".into()),
        agents_max: 100,
        reserved: price("0.05"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let local = LocalBudgets::new();
    let started = Instant::now();
    for _ in 0..RUNS {
        runtime.block_on(async {
            local.reserve(&plan).await.expect("store").expect("room");
            local.settle(&plan, cost.total.0).await.expect("store");
        });
    }
    let in_process = started.elapsed() / RUNS;
    println!();
    println!("| a run's budgets (tenant, tool, agent) | per run | runs timed |");
    println!("|---|---|---|");
    println!("| reserve and settle, in process | {:.2} µs | {RUNS} |", in_process.as_secs_f64() * 1e6);

    let Some(server) = bench_redis::BenchRedis::start() else { return };
    const FLEET_RUNS: u32 = 5_000;
    let by_resource: Vec<(String, rust_decimal::Decimal)> =
        cost.lines.iter().map(|l| (l.resource.clone(), l.amount.0)).collect();
    let timed = runtime.block_on(async {
        let queue = server.queue().await;
        let started = Instant::now();
        for _ in 0..FLEET_RUNS {
            queue.reserve(&plan).await.expect("redis").expect("room");
            queue.settle(&plan, cost.total.0).await.expect("redis");
        }
        let budgets = started.elapsed() / FLEET_RUNS;
        let row = r#"["tenant-7",null,"planner","tool-3","USD"]"#;
        let started = Instant::now();
        for _ in 0..FLEET_RUNS {
            queue
                .usage_add((1_764_460_800, "tenant-7"), (row, row), (10_000, 3600), cost.total.0, &by_resource)
                .await
                .expect("redis");
        }
        (budgets, started.elapsed() / FLEET_RUNS)
    });
    drop(server);
    println!(
        "| reserve and settle, in Redis (two scripts, loopback) | {:.1} µs | {FLEET_RUNS} |",
        timed.0.as_secs_f64() * 1e6
    );
    println!(
        "| enter it in the fleet's ledger in Redis (one script, {} resources) | {:.1} µs | {FLEET_RUNS} |",
        by_resource.len(),
        timed.1.as_secs_f64() * 1e6
    );
}
