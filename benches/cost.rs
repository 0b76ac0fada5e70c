//! What pricing a run and entering it in the usage ledger cost, printed as Markdown (`cargo bench
//! --bench cost`): the work the daemon adds to every recorded run when `[pricing]` is set —
//! `PriceTable::price_with_tokens` over the run's quantities (six priced resources and one LLM
//! upstream's tokens) and `Usage::add` into a ledger already holding a day of hours for 20
//! tenants × 10 tools.

use guild_replay::cost::{LlmPrice, Price, PriceTable, Quantities, TokenCount, UsageStyle};
use guild_server::usage::{Filter, GroupBy, USAGE_HOURS_KEPT_DEFAULT, USAGE_ROWS_MAX_DEFAULT, Usage};
use std::time::Instant;

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
}
