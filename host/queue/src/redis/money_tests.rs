//! Money in Redis: the budget and ledger scripts on a real `redis-server` (started here on a
//! free loopback port), adding and comparing exact decimal strings.

use super::{RedisQueue, RedisSettings};
use rust_decimal::Decimal;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of the test's own, stopped when dropped.
pub(super) struct Server(Child, pub(super) u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) async fn server() -> (Server, RedisQueue) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts (scripts/setup.sh installs it)");
    let server = Server(child, port);
    let queue = RedisQueue::open(RedisSettings::new(format!("redis://127.0.0.1:{port}/"))).expect("settings");
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.ping().await.is_err() {
        assert!(Instant::now() < deadline, "redis-server did not answer on port {}", server.1);
        tokio::time::sleep(Duration::from_millis(600)).await; // past the breaker's open time
    }
    (server, queue)
}

#[tokio::test]
async fn redis_keeps_budgets_and_the_ledger_in_exact_decimals() {
    let (_server, queue) = server().await;
    crate::budget::tests::scenarios(&queue, "alice").await;

    // 10,000 tiny charges sum exactly: Lua never holds an amount as a number.
    let tiny = Decimal::new(1, 10); // 0.0000000001
    let resources = [("fuel".to_string(), tiny)];
    for _ in 0..10_000 {
        queue.usage_add((3600, "t"), ("row", "tenant-row"), (10, 60), tiny, &resources).await.expect("added");
    }
    // Amounts with more digits than a double holds, and a carry across the point.
    let big = Decimal::from_str_exact("12345678901234567.8901234567").expect("decimal");
    queue.usage_add((3600, "t"), ("big", "tenant-row"), (10, 60), big, &[]).await.expect("added");
    queue.usage_add((3600, "t"), ("big", "tenant-row"), (10, 60), Decimal::new(1, 10), &[]).await.expect("added");
    let hour = queue.usage_hour((3600, "t"), 10).await.expect("read");
    assert_eq!((hour["row"].runs, hour["row"].total), (10_000, Decimal::new(1, 6)));
    assert_eq!(hour["row"].by_resource["fuel"], Decimal::new(1, 6));
    assert_eq!(hour["big"].total, Decimal::from_str_exact("12345678901234567.8901234568").expect("decimal"));

    // Past rows_max rows in an hour a new row's runs count in the fallback row.
    for row in ["a", "b", "c", "d"] {
        queue.usage_add((7200, "t"), (row, "tenant-row"), (2, 60), Decimal::ONE, &[]).await.expect("added");
    }
    let hour = queue.usage_hour((7200, "t"), 2).await.expect("read");
    let mut rows: Vec<(&str, u64)> = hour.iter().map(|(row, sums)| (row.as_str(), sums.runs)).collect();
    rows.sort_unstable();
    assert_eq!(rows, [("a", 1), ("b", 1), ("tenant-row", 2)], "c and d count as their tenant's: {hour:?}");
    // An hour holding more than its rows can is refused whole, not read into memory.
    let refused = queue.usage_hour((7200, "t"), 0).await.expect_err("past the bound");
    assert!(refused.to_string().contains("not read"), "{refused}");
    assert!(queue.usage_hour((10_800, "t"), 0).await.expect("an empty hour").is_empty());
    // Another tenant's rows are its own: the first tenant's flood crowds nothing out.
    queue.usage_add((7200, "u"), ("u-row", "u-fallback"), (2, 60), Decimal::ONE, &[]).await.expect("added");
    let other = queue.usage_hour((7200, "u"), 2).await.expect("read");
    assert_eq!(other.keys().collect::<Vec<_>>(), ["u-row"]);
}

#[tokio::test]
async fn redis_keeps_egress_limits_and_throttles_for_the_fleet() {
    let (_server, queue) = server().await;
    let queue_for_fleet = queue.clone();
    let upstream = "http://up:1";
    let gates = crate::EgressGates::shared(
        crate::gate::tests::limits(upstream),
        crate::EGRESS_THROTTLE_MS_MAX_DEFAULT,
        queue.clone(),
    );
    crate::gate::tests::scenarios(&gates, upstream).await;
    // Another node's gates see the same state: the slow upstream's room is still taken.
    let other = crate::EgressGates::shared(crate::gate::tests::limits(upstream), 60_000, queue);
    let refused = guild_vocab::egress::EgressGate::admit(&other, "http://up:1-busy", &[]).await;
    assert!(refused.is_err(), "the throttle is the fleet's");
    let (a, b) = (
        crate::EgressGates::shared(Vec::new(), 60_000, queue_for_fleet.clone()),
        crate::EgressGates::shared(Vec::new(), 60_000, queue_for_fleet),
    );
    crate::gate::tests::in_flight(&a, &b).await;
}
