//! Lanes, priorities and fair turns on a real `redis-server`: the take script's order, what a
//! job waiting for a capability shows, retries back in their lane, and the lanes' bound.

use super::money_tests::server;
use crate::{
    Advertisement, DEFAULT_LANE, Job, JobResult, JobState, LANES_MAX, Needs, RedisQueue, RedisSettings, WorkerStats,
    now_unix_ms,
};
use guild_replay::Digest;
use guild_vocab::{Grants, Limits, RunStatus};
use std::time::{Duration, Instant};

fn job(id: &str, tenant: &str, agent: Option<&str>, priority: u8, needs: Needs) -> Job {
    Job {
        id: id.into(),
        tenant: tenant.into(),
        subject: None,
        tool: "echo".into(),
        tool_digest: Digest::of(b"component"),
        revision: None,
        input: "{}".into(),
        input_digest: Digest::of(b"{}"),
        grants: Grants::default(),
        limits: Limits::default(),
        idempotency_key: None,
        attempts_max: 3,
        submitted_unix_ms: now_unix_ms(),
        cache: None,
        pricing: None,
        budget: None,
        agent: agent.map(str::to_string),
        priority,
        needs,
        weight: 1,
        delay_ms: None,
        trace: None,
    }
}

fn lanes(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A job of `tenant`'s with `weight`, in the default lane at priority 4.
fn weighted(id: &str, tenant: &str, weight: u32) -> Job {
    Job { weight, ..job(id, tenant, None, 4, Needs::default()) }
}

/// Jobs `{heavy}0`…`{heavy}5` of tenant `heavy` at `weight`, each followed by the same-numbered
/// job `{light}N` of tenant `light` at weight 1.
async fn six_each(queue: &RedisQueue, heavy: &str, weight: u32, light: &str) {
    for i in 0..6 {
        queue.submit(&weighted(&format!("{heavy}{i}"), heavy, weight)).await.expect("submitted");
        queue.submit(&weighted(&format!("{light}{i}"), light, 1)).await.expect("submitted");
    }
}

/// The ids of the jobs `takes` takes of one job each from `lanes` give, in order.
async fn taken_one_at_a_time(queue: &RedisQueue, lanes: &[String], takes: usize) -> Vec<String> {
    let mut order = Vec::new();
    for _ in 0..takes {
        let taken = queue.take("w1", lanes, 1, Duration::ZERO).await.expect("taken");
        order.extend(taken.into_iter().map(|l| l.job.id));
    }
    order
}

#[tokio::test]
async fn tenants_and_agents_take_turns_and_priorities_go_first() {
    let (_server, queue) = server().await;
    queue.ensure_groups().await.expect("groups");
    for i in 0..50 {
        queue.submit(&job(&format!("a{i:02}"), "a", None, 4, Needs::default())).await.expect("submitted");
    }
    queue.submit(&job("b0", "b", Some("x"), 4, Needs::default())).await.expect("submitted");
    queue.submit(&job("b1", "b", Some("y"), 4, Needs::default())).await.expect("submitted");
    queue.submit(&job("b2", "b", Some("x"), 4, Needs::default())).await.expect("submitted");
    queue.submit(&job("urgent", "c", None, 9, Needs::default())).await.expect("submitted");
    let default = lanes(&[DEFAULT_LANE]);
    let order = taken_one_at_a_time(&queue, &default, 9).await;
    // Agents x and y of tenant b alternate; tenant a waits its turn however many it queued.
    assert_eq!(order, ["urgent", "a00", "b0", "a01", "b1", "a02", "b2", "a03", "a04"]);
    let stats = queue.stats().await.expect("stats");
    assert_eq!((stats.depth, stats.pending), (45, 9));

    // A taken job holds a lease like any other: renewed, then settled.
    let lease = queue.take("w1", &default, 1, Duration::ZERO).await.expect("taken").remove(0);
    assert_eq!((lease.job.id.as_str(), lease.attempt), ("a05", 1));
    assert!(queue.renew("w1", &lease).await.expect("renewed"));
    let result = result_of(&lease.job, "w1");
    let retried = queue.fail("w1", &lease, 0, &result, &result).await.expect("failed");
    assert!(matches!(retried, crate::Disposition::Retry { .. }));
    assert_eq!(queue.promote().await.expect("promoted"), 1);
    let all = queue.take("w1", &default, 100, Duration::ZERO).await.expect("taken");
    assert_eq!(all.len(), 45, "the retry is back in its tenant's line");
    assert!(all.iter().any(|l| l.job.id == "a05" && l.attempt == 2));
}

#[tokio::test]
async fn a_tenant_of_weight_three_takes_three_jobs_a_turn() {
    let (_server, queue) = server().await;
    queue.ensure_groups().await.expect("groups");
    for i in 0..5 {
        queue.submit(&weighted(&format!("h{i}"), "heavy", 3)).await.expect("submitted");
    }
    for i in 0..4 {
        queue.submit(&job(&format!("l{i}"), "light", None, 4, Needs::default())).await.expect("submitted");
    }
    let default = lanes(&[DEFAULT_LANE]);
    let order = taken_one_at_a_time(&queue, &default, 9).await;
    // Three for the heavy tenant, one for the light one, and so on; once a tenant's line is
    // empty the other takes every turn. The heavy tenant left two jobs into a turn of three.
    assert_eq!(order, ["h0", "h1", "h2", "l0", "h3", "h4", "l1", "l2", "l3"]);
    // A tenant that left mid-turn and came back starts a fresh turn: the credit it left with is
    // gone (else it would take two, not three).
    for i in 0..4 {
        queue.submit(&weighted(&format!("k{i}"), "heavy", 3)).await.expect("submitted");
    }
    queue.submit(&job("m0", "light", None, 4, Needs::default())).await.expect("submitted");
    let taken = queue.take("w1", &default, 5, Duration::ZERO).await.expect("taken");
    let order: Vec<_> = taken.into_iter().map(|l| l.job.id).collect();
    assert_eq!(order, ["k0", "k1", "k2", "m0", "k3"]);
}

#[tokio::test]
async fn a_tenant_whose_weight_changes_takes_turns_of_its_new_weight() {
    let (_server, queue) = server().await;
    queue.ensure_groups().await.expect("groups");
    six_each(&queue, "a", 5, "b").await;
    let default = lanes(&[DEFAULT_LANE]);
    // One job into a turn of five, then the tenant's weight drops to 1: its turn ends at once.
    assert_eq!(taken_one_at_a_time(&queue, &default, 1).await, ["a0"]);
    queue.submit(&weighted("a6", "a", 1)).await.expect("submitted");
    assert_eq!(taken_one_at_a_time(&queue, &default, 2).await, ["a1", "b0"]);
    // Weight 2 now: turns of two, the credit of the turn of five gone with it.
    queue.submit(&weighted("a7", "a", 2)).await.expect("submitted");
    let taken = queue.take("w1", &default, 6, Duration::ZERO).await.expect("taken");
    let order: Vec<_> = taken.into_iter().map(|l| l.job.id).collect();
    assert_eq!(order, ["a2", "a3", "b1", "a4", "a5", "b2"]);
}

#[tokio::test]
async fn a_weight_lowered_mid_turn_then_raised_gives_a_whole_turn() {
    let (_server, queue) = server().await;
    queue.ensure_groups().await.expect("groups");
    six_each(&queue, "c", 2, "d").await;
    let default = lanes(&[DEFAULT_LANE]);
    // Into a turn of two, the weight drops to 1 (the turn ends), then rises to 3: the next turn
    // is a whole three, not what was left of the turn of two.
    assert_eq!(taken_one_at_a_time(&queue, &default, 1).await, ["c0"]);
    queue.submit(&weighted("c6", "c", 1)).await.expect("submitted");
    assert_eq!(taken_one_at_a_time(&queue, &default, 2).await, ["c1", "d0"]);
    queue.submit(&weighted("c7", "c", 3)).await.expect("submitted");
    assert_eq!(taken_one_at_a_time(&queue, &default, 4).await, ["c2", "c3", "c4", "d1"]);
}

#[tokio::test]
async fn a_job_waits_in_its_lane_for_a_worker_that_has_what_it_needs() {
    let (_server, queue) = server().await;
    queue.ensure_groups().await.expect("groups");
    let gpu = Needs { gpu: true, ..Needs::default() };
    queue.submit(&job("g0", "a", None, 4, gpu.clone())).await.expect("submitted");
    queue.submit(&job("c0", "a", None, 4, Needs::default())).await.expect("submitted");
    // A worker without a GPU reads only the default lane.
    let cpu = queue.take("cpu", &lanes(&[DEFAULT_LANE]), 10, Duration::ZERO).await.expect("taken");
    assert_eq!(cpu.iter().map(|l| l.job.id.as_str()).collect::<Vec<_>>(), ["c0"]);
    let status = queue.status("g0").await.expect("read").expect("known");
    assert_eq!((status.state, status.waiting_for_capability.as_deref()), (JobState::Queued, Some("gpu")));
    let stats = queue.stats().await.expect("stats");
    let lane = stats.lanes.iter().find(|l| l.lane == "gpu").expect("the gpu lane");
    assert_eq!((lane.depth, lane.workers), (1, 0));
    let known = queue.lanes().await.expect("lanes");
    assert!(known.iter().any(|(name, needs)| name == "gpu" && *needs == gpu));

    // A worker with a GPU says so, and the job no longer waits for a capability.
    let advertisement = Advertisement {
        gpu: Some(crate::GpuAdvert { adapter: "llvmpipe".into(), memory_bytes: None }),
        ..Advertisement::default()
    };
    let heartbeat = WorkerStats {
        name: "gpu".into(),
        seen_unix_ms: now_unix_ms(),
        advertisement,
        lanes: lanes(&["gpu", DEFAULT_LANE]),
        ..WorkerStats::default()
    };
    queue.heartbeat(&heartbeat).await.expect("heartbeat");
    let status = queue.status("g0").await.expect("read").expect("known");
    assert_eq!(status.waiting_for_capability, None);
    let stats = queue.stats().await.expect("stats");
    assert_eq!(stats.lanes.iter().find(|l| l.lane == "gpu").map(|l| l.workers), Some(1));
    let taken = queue.take("gpu", &heartbeat.lanes, 10, Duration::ZERO).await.expect("taken");
    assert_eq!(taken.iter().map(|l| l.job.id.as_str()).collect::<Vec<_>>(), ["g0"]);
    assert_eq!(taken[0].job.needs, gpu);

    // A worker that stops says so: the lane has no reader at once.
    queue.submit(&job("g1", "a", None, 4, gpu.clone())).await.expect("submitted");
    queue.retire(&heartbeat).await.expect("retired");
    let status = queue.status("g1").await.expect("read").expect("known");
    assert_eq!(status.waiting_for_capability.as_deref(), Some("gpu"));
    assert!(queue.stats().await.expect("stats").workers.is_empty());
}

#[tokio::test]
async fn a_waiting_worker_wakes_when_a_job_arrives_and_lanes_are_bounded() {
    let (_server, queue) = server().await;
    queue.ensure_groups().await.expect("groups");
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let taken = queue.take("w", &lanes(&[DEFAULT_LANE]), 1, Duration::from_secs(8)).await.expect("taken");
            (taken, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    queue.submit(&job("late", "a", None, 4, Needs::default())).await.expect("submitted");
    let (taken, waited) = waiting.await.expect("joined");
    assert_eq!(taken.len(), 1);
    assert!(waited < Duration::from_secs(4), "woken by the submission, not the timeout: {waited:?}");
    // A lane's wake tokens are bounded (lua/common.lua WAKE_TOKENS_MAX) however many jobs wait.
    for i in 0..100 {
        queue.submit(&job(&format!("w{i}"), "a", None, 4, Needs::default())).await.expect("submitted");
    }
    let tokens: u64 =
        redis::cmd("LLEN").arg("guild:{default}:wake:default").query_async(&mut queue.conn()).await.expect("llen");
    assert_eq!(tokens, 64);

    for i in 1..LANES_MAX {
        let needs = Needs { labels: [("n".to_string(), i.to_string())].into(), ..Needs::default() };
        queue.submit(&job(&format!("l{i}"), "a", None, 4, needs)).await.expect("room for the lane");
    }
    let one_more = Needs { labels: [("n".to_string(), "last".to_string())].into(), ..Needs::default() };
    let refused = queue.submit(&job("over", "a", None, 4, one_more)).await.expect_err("one lane too many");
    assert!(refused.to_string().contains("LANES_MAX"), "{refused}");
    assert!(queue.status("over").await.expect("read").is_none(), "nothing of the refused job is kept");
}

fn result_of(job: &Job, worker: &str) -> JobResult {
    JobResult {
        id: job.id.clone(),
        tenant: job.tenant.clone(),
        subject: None,
        agent: None,
        tool: job.tool.clone(),
        tool_digest: job.tool_digest,
        revision: None,
        input_digest: job.input_digest,
        idempotency_key: None,
        status: RunStatus::Failed,
        error: None,
        output: None,
        bundle: None,
        fuel_used_units: 0,
        wall_time_us: 0,
        policy: None,
        attempt: 1,
        worker: worker.into(),
        cache: None,
        cost: None,
        tokens: Vec::new(),
        trace: None,
    }
}

#[tokio::test]
async fn a_job_held_to_its_turn_is_taken_at_that_time_not_before() {
    let (_server, queue) = server().await;
    queue.ensure_groups().await.expect("groups");
    let mut held = job("later", "a", None, 4, Needs::default());
    held.delay_ms = Some(400);
    queue.submit(&held).await.expect("submitted");
    let default = lanes(&[DEFAULT_LANE]);
    assert!(queue.take("w", &default, 1, Duration::ZERO).await.expect("taken").is_empty(), "not yet");
    let status = queue.status("later").await.expect("read").expect("known");
    assert_eq!((status.state.word(), status.waiting_for_capability), ("queued", None));
    let started = Instant::now();
    let taken = queue.take("w", &default, 1, Duration::from_secs(5)).await.expect("taken");
    let waited = started.elapsed();
    assert_eq!(taken.len(), 1, "taken once its time came");
    // Woken at its time, not at the end of the wait (nothing else wakes the worker).
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_millis(1_500), "{waited:?}");

    // A cancel request outlasts the longest a job may be held to its turn.
    queue.request_cancel("later").await.expect("asked");
    let ttl: u64 =
        redis::cmd("TTL").arg("guild:{default}:cancel:later").query_async(&mut queue.conn()).await.expect("ttl");
    assert!(ttl > queue.settings().results_ttl_s + crate::CANCEL_HELD_FOR_TURN_S - 60, "{ttl}");
}

#[tokio::test]
async fn a_job_cancelled_while_queued_is_taken_marked_so_and_an_unknown_id_stays_unknown() {
    let (_server, queue) = server().await;
    queue.ensure_groups().await.expect("groups");
    for id in ["keep", "stop"] {
        queue.submit(&job(id, "a", None, 4, Needs::default())).await.expect("submitted");
    }
    queue.request_cancel("stop").await.expect("asked");
    // A request for a job Redis does not know makes no job of it.
    queue.request_cancel("nobody").await.expect("asked");
    assert!(queue.status("nobody").await.expect("read").is_none());
    assert!(queue.cancel_requested("nobody").await.expect("read"));

    // A job an earlier version queued has no `cancel` field: its request is the key alone.
    queue.submit(&job("old", "a", None, 4, Needs::default())).await.expect("submitted");
    let mut conn = queue.conn();
    let _: i64 =
        redis::cmd("HDEL").arg("guild:{default}:job:old").arg("cancel").query_async(&mut conn).await.expect("hdel");
    let _: () = redis::cmd("SET").arg("guild:{default}:cancel:old").arg(1).query_async(&mut conn).await.expect("set");

    let default = lanes(&[DEFAULT_LANE]);
    let taken = queue.take("w", &default, 3, Duration::ZERO).await.expect("taken");
    let asked: Vec<_> = taken.iter().map(|l| (l.job.id.as_str(), l.cancel_asked)).collect();
    assert_eq!(asked, [("keep", Some(false)), ("stop", Some(true)), ("old", Some(true))]);

    // A dead job an operator retries starts afresh: a cancel asked of it before it died is gone.
    queue.submit(&Job { attempts_max: 1, ..job("dies", "a", None, 4, Needs::default()) }).await.expect("submitted");
    let lease = queue.take("w", &default, 1, Duration::ZERO).await.expect("taken").remove(0);
    queue.request_cancel("dies").await.expect("asked");
    let result = result_of(&lease.job, "w");
    let said = queue.fail("w", &lease, 0, &result, &result).await.expect("failed");
    assert!(matches!(said, crate::Disposition::Dead), "{said:?}");
    assert!(queue.requeue("dies").await.expect("retried"));
    let again = queue.take("w", &default, 1, Duration::ZERO).await.expect("taken").remove(0);
    assert_eq!((again.job.id.as_str(), again.cancel_asked), ("dies", Some(false)));
    assert!(!queue.cancel_requested("dies").await.expect("read"));
}

#[tokio::test]
async fn jobs_an_earlier_version_queued_in_its_stream_move_to_their_lanes() {
    let (_server, queue) = server().await;
    queue.ensure_groups().await.expect("groups");
    let mut conn = queue.conn();
    // What an earlier version's submit left: an entry in `jobs`, a hash naming it, no lane.
    let old = "guild:{default}:jobs";
    let _: String = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(old)
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("group");
    let body = serde_json::to_string(&job("old", "a", None, 4, Needs::default())).expect("json");
    let entry: String =
        redis::cmd("XADD").arg(old).arg("*").arg("job").arg("old").query_async(&mut conn).await.expect("xadd");
    let _: i64 = redis::cmd("HSET")
        .arg("guild:{default}:job:old")
        .arg(&["body", &body, "state", "queued", "attempts", "0", "attempts_max", "3", "tenant", "a", "tool", "echo"])
        .arg(&["entry", &entry, "worker", ""])
        .query_async(&mut conn)
        .await
        .expect("hset");
    let default = lanes(&[DEFAULT_LANE]);
    assert!(queue.take("w", &default, 1, Duration::ZERO).await.expect("taken").is_empty(), "not in a lane yet");
    assert_eq!(queue.migrate_legacy("w").await.expect("moved"), 1);
    assert_eq!(queue.migrate_legacy("w").await.expect("nothing left"), 0);
    let taken = queue.take("w", &default, 1, Duration::ZERO).await.expect("taken");
    assert_eq!(taken.iter().map(|l| (l.job.id.as_str(), l.attempt)).collect::<Vec<_>>(), [("old", 1)]);
    let left: u64 = redis::cmd("XLEN").arg(old).query_async(&mut conn).await.expect("xlen");
    assert_eq!(left, 0, "the old entry is settled");
}

#[tokio::test]
async fn a_completion_takes_its_slots_next_job_in_turn_and_stands_when_none_is_left() {
    let (server, queue) = server().await;
    // The same jobs in a second queue on the same server, drained by plain takes: the order to
    // match.
    let url = format!("redis://127.0.0.1:{}/", server.1);
    let plain = RedisQueue::open(RedisSettings { queue: "plain".into(), ..RedisSettings::new(url) }).expect("queue");
    let submissions = [
        ("a0", "a", Some("x"), 4),
        ("a1", "a", Some("y"), 4),
        ("a2", "a", Some("x"), 4),
        ("b0", "b", None, 4),
        ("b1", "b", None, 4),
        ("c0", "c", None, 6),
        ("b2", "b", None, 4),
    ];
    for q in [&queue, &plain] {
        q.ensure_groups().await.expect("groups");
        for (id, tenant, agent, priority) in submissions {
            q.submit(&job(id, tenant, agent, priority, Needs::default())).await.expect("submitted");
        }
    }
    let default = lanes(&[DEFAULT_LANE]);
    let mut expected = Vec::new();
    while let Some(taken) = plain.take("w1", &default, 1, Duration::ZERO).await.expect("taken").pop() {
        expected.push((taken.job.id.clone(), taken.attempt));
    }
    assert_eq!(expected.len(), submissions.len());
    let mut lease = queue.take("w1", &default, 1, Duration::ZERO).await.expect("taken").pop().expect("a job");
    let mut order = vec![(lease.job.id.clone(), lease.attempt)];
    loop {
        let mut result = result_of(&lease.job, "w1");
        result.status = RunStatus::Succeeded;
        result.output = Some(format!("\"{}\"", lease.job.id));
        let (said, mut next) = queue.complete_take("w1", &lease, &result, &default, 1).await.expect("settled");
        assert_eq!(said, crate::Completion::Recorded);
        let done = queue.status(&lease.job.id).await.expect("read").expect("known");
        assert_eq!(done.result.and_then(|r| r.output), result.output, "completed");
        assert!(next.len() <= 1, "one slot, one job");
        match next.pop() {
            Some(taken) => {
                order.push((taken.job.id.clone(), taken.attempt));
                lease = taken;
            }
            None => break,
        }
    }
    assert_eq!(order, expected, "the same turns as plain takes: priority, tenants, agents; first attempts");
    let stats = queue.stats().await.expect("stats");
    assert_eq!((stats.completed, stats.pending), (submissions.len() as u64, 0), "{stats:?}");

    // A completion that lost its lease is a duplicate and still takes the slot's next job; a
    // stream without its consumer group takes none, the completion standing all the same.
    queue.submit(&job("d0", "d", None, 4, Needs::default())).await.expect("submitted");
    queue.submit(&job("d1", "d", None, 4, Needs::default())).await.expect("submitted");
    let stale = crate::Lease { entry: "0-1".into(), ..lease.clone() };
    let (said, next) =
        queue.complete_take("w1", &stale, &result_of(&stale.job, "w1"), &default, 1).await.expect("settled");
    assert_eq!(said, crate::Completion::Duplicate);
    assert_eq!(next.iter().map(|l| l.job.id.as_str()).collect::<Vec<_>>(), ["d0"]);
    let _: String = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg("guild:{default}:leases")
        .arg("workers")
        .query_async::<i64>(&mut queue.conn())
        .await
        .map(|n| n.to_string())
        .expect("destroyed");
    let (said, next) =
        queue.complete_take("w1", &next[0], &result_of(&next[0].job, "w1"), &default, 1).await.expect("settled");
    assert_eq!((said, next.len()), (crate::Completion::Recorded, 0), "no group: completed, nothing taken");
    assert_eq!(queue.status("d1").await.expect("read").expect("known").state.word(), "queued", "d1 left queued");
}
