//! Hostile guests pushing on what the host holds for them: recordings, tapes, writable mounts,
//! open files, outputs, fuel and wall time. Each is stopped with the right limit and exit code,
//! the host's own memory stays bounded, the run is still sealed, and its bundle replays to the
//! same ending (every stop is deterministic).

use crate::{Guild, Ran, mount, tree};
use guild_test_artifacts::{COSTLY_SCHEMA, HOSTILE, LIAR};

/// The bundle a run sealed, replayed by a fresh auditor's `guild replay`.
fn replays_identically(guild: &Guild, ran: &Ran) {
    let bundle = ran.summary()["bundle"].as_str().unwrap_or_else(|| panic!("no bundle: {ran:?}")).to_string();
    let replay = guild.run(&["replay", &bundle]);
    assert_eq!(replay.code, 0, "the stop is deterministic, so the replay is identical: {replay:?}");
    assert!(replay.stdout.contains("replay identical"), "{replay:?}");
}

fn rss_mib(ran: &Ran) -> u64 {
    ran.summary()["host_rss_bytes_peak"].as_u64().expect("this host reports its peak memory") >> 20
}

#[test]
fn refused_posts_are_recorded_small_and_stop_at_the_recording_limit() {
    let guild = Guild::new();
    // No egress grant: every 64 KiB POST is refused before its body is read. (The resources
    // the guest leaks per request are allowed, so the recording's own limit is what stops it.)
    let input = r#"{"attack":"refused-posts","url":"http://127.0.0.1:9/upload","body_bytes":65536,"count":10000000}"#;
    let ran = guild.run_tool(HOSTILE, input, &["--recording-bytes", "1MiB", "--wasi-resources", "1000000"]);
    ran.expect_code(3).expect_stderr("recording limit of 1 MiB reached");
    let summary = ran.summary();
    let refused = summary["egress_refusals"].as_u64().expect("count");
    assert!(refused > 1000, "{summary}");
    assert!(summary["egress_denials"].as_array().expect("reasons").len() <= 16, "the reasons kept are bounded");
    // Thousands of refused 64 KiB bodies (hundreds of MiB had they been recorded), and the host
    // held one MiB of recording for them.
    assert!(rss_mib(&ran) < 150, "host peak {} MiB after {refused} refusals", rss_mib(&ran));
    replays_identically(&guild, &ran);
}

#[test]
fn a_clock_flood_stops_at_the_recording_limit_at_the_same_read_every_time() {
    let guild = Guild::new();
    let input = r#"{"attack":"clock-flood","reads":10000000}"#;
    let ran = guild.run_tool(HOSTILE, input, &["--recording-bytes", "8MiB"]);
    ran.expect_code(3).expect_stderr("recording limit of 8 MiB reached");
    assert!(rss_mib(&ran) < 200, "host peak {} MiB", rss_mib(&ran));
    replays_identically(&guild, &ran);
}

#[test]
fn the_tape_event_limit_stops_the_guest_at_that_host_call() {
    let guild = Guild::new();
    let input = r#"{"attack":"clock-flood","reads":10000000}"#;
    let ran = guild.run_tool(HOSTILE, input, &["--recording-bytes", "2GiB", "--timeout", "60s"]);
    ran.expect_code(3).expect_stderr("tape limit of 1000000 events reached");
    replays_identically(&guild, &ran);
}

#[test]
fn writes_past_a_mount_quota_fail_for_the_guest_and_end_the_run_at_the_limit() {
    let guild = Guild::new();
    let data = tree(&[]);
    let rw = mount(data.path(), "/data", "rw");
    let flood = r#"{"attack":"write-flood","name":"big.bin","bytes":10485760,"chunk_bytes":65536,"more_files":0}"#;
    let ran = guild.run_tool(HOSTILE, flood, &["--dir", &rw, "--mount-write-bytes", "1MiB"]);
    ran.expect_code(3).expect_stderr("mount /data: write quota reached").expect_stderr("raise --mount-write-bytes");
    let written = std::fs::metadata(data.path().join("big.bin")).expect("the file").len();
    assert!(written <= 1 << 20, "{written} bytes landed past the quota");
    replays_identically(&guild, &ran);

    let files = r#"{"attack":"write-flood","name":"f","bytes":1,"chunk_bytes":1,"more_files":1000}"#;
    let ran = guild.run_tool(HOSTILE, files, &["--dir", &rw, "--mount-write-entries", "20"]);
    ran.expect_code(3).expect_stderr("raise --mount-write-entries");
    let created = std::fs::read_dir(data.path()).expect("dir").count();
    assert!(created <= 21, "{created} entries in the mount");
}

#[test]
fn a_sparse_write_past_a_files_end_is_charged_for_the_gap() {
    let guild = Guild::new();
    let data = tree(&[]);
    let input = r#"{"attack":"sparse-write","name":"sparse.bin","offset":1099511627776}"#;
    let ran = guild.run_tool(HOSTILE, input, &["--dir", &mount(data.path(), "/data", "rw")]);
    ran.expect_code(3).expect_stderr("mount /data: write quota reached");
    let size = std::fs::metadata(data.path().join("sparse.bin")).map(|m| m.len()).unwrap_or(0);
    assert!(size < 1 << 20, "a {size}-byte file would be read whole to seal the run");
}

#[test]
fn a_large_written_file_is_sealed_by_streaming_and_replays() {
    let guild = Guild::new();
    let data = tree(&[]);
    let input = r#"{"attack":"write-flood","name":"out.bin","bytes":33554432,"chunk_bytes":1048576,"more_files":0}"#;
    let ran = guild.run_tool(HOSTILE, input, &["--dir", &mount(data.path(), "/data", "rw"), "--timeout", "60s"]);
    ran.expect_code(0);
    // The host streamed the 32 MiB output tree into the store.
    assert!(rss_mib(&ran) < 32 + 150, "host peak {} MiB", rss_mib(&ran));
    replays_identically(&guild, &ran);
}

#[test]
fn open_files_stop_at_the_resource_limit_far_below_the_process_limit() {
    let guild = Guild::new();
    let data = tree(&[]);
    let input = r#"{"attack":"open-files","name":"held.txt","count":100000}"#;
    let ran = guild.run_tool(HOSTILE, input, &["--dir", &mount(data.path(), "/data", "rw")]);
    ran.expect_code(3).expect_stderr("WASI resource limit of 256 reached").expect_stderr("raise --wasi-resources");
    replays_identically(&guild, &ran);
    let ran = guild.run_tool(HOSTILE, input, &["--dir", &mount(data.path(), "/data", "rw"), "--wasi-resources", "64"]);
    ran.expect_code(3).expect_stderr("WASI resource limit of 64 reached");
}

#[test]
fn huge_outputs_are_refused_before_they_are_copied() {
    let guild = Guild::new();
    // 200 MiB of output: past wasmtime's own 128 MiB copy bound, and far past the output limit.
    let input = r#"{"attack":"output","bytes":209715200}"#;
    let ran = guild.run_tool(HOSTILE, input, &["--memory", "1GiB", "--timeout", "60s"]);
    ran.expect_code(3).expect_stderr("output exceeds the limit of 1 MiB (raise --output-bytes)");
    assert!(!ran.stderr.contains("hostcalls"), "{ran:?}");
    // The guest's memory is its own; the host never copied its output.
    assert!(rss_mib(&ran) < 1024 + 150, "host peak {} MiB", rss_mib(&ran));
}

#[test]
fn a_timed_out_run_is_charged_the_fuel_it_burnt() {
    let ran =
        Guild::new().run_tool(HOSTILE, r#"{"attack":"loop"}"#, &["--fuel", "1000000000000000", "--timeout", "1s"]);
    ran.expect_code(3).expect_stderr("timed out after 1s");
    let fuel = ran.summary()["fuel_used_units"].as_u64().expect("fuel");
    // Fuel burns at billions of units a second; before, a timed-out run was charged its fuel
    // at its last host call (a few thousand units).
    assert!(fuel > 100_000_000, "charged {fuel} units for a second of spinning");
}

#[test]
fn replay_is_bound_by_fuel_and_a_slow_replay_is_not_a_divergence() {
    let guild = Guild::new();
    // A run that computes for a while and finishes well within its timeout.
    let ran = guild.run_tool(HOSTILE, r#"{"attack":"spin","rounds":300000000}"#, &["--timeout", "60s"]);
    ran.expect_code(0);
    let bundle = ran.summary()["bundle"].as_str().expect("bundle").to_string();
    let slow = guild.run(&["replay", &bundle, "--backstop", "20ms"]);
    assert_eq!(slow.code, 17, "{slow:?}");
    assert!(
        slow.stderr.contains("replay too slow") && slow.stderr.contains("says nothing about the bundle"),
        "{slow:?}"
    );
    guild.run(&["replay", &bundle]).expect_code(0);
}

#[test]
fn output_that_breaks_the_contract_is_a_tool_failure_on_record() {
    let guild = Guild::new();
    let raw = |text: &str| serde_json::json!({ "raw": text }).to_string();
    let surrogate = guild.run_tool(LIAR, &raw(r#"{"s":"a\ud800b"}"#), &[]);
    surrogate.expect_code(1).expect_stderr("not valid JSON");
    replays_identically(&guild, &surrogate);
    guild
        .run_tool(LIAR, &raw("[1,2]"), &[])
        .expect_code(1)
        .expect_stderr("does not match its declared output schema at /");
    guild.run_tool(LIAR, &raw(r#"{"s":7}"#), &[]).expect_code(1).expect_stderr("declared output schema at /s");
    guild.run_tool(LIAR, &raw("not json"), &[]).expect_code(1).expect_stderr("not valid JSON");
    guild
        .run_tool(LIAR, &raw(r#"{"s":"a","n":{"k":1,"k":2}}"#), &[])
        .expect_code(1)
        .expect_stderr("appears twice in one object");
    let fine = guild.run_tool(LIAR, &raw(r#"{"s":"ok \ud83d\ude00"}"#), &[]);
    fine.expect_code(0);
    assert_eq!(fine.json()["s"], "ok 😀");
}

/// A tool's own output schema can describe a check that runs for hours (here 2^22 visits of
/// one rule); the host's schema checker stops it at its fuel limit, and the run fails on record
/// with the limit named, in a fraction of a second rather than the 14.6 s it took unbounded.
#[test]
fn an_output_too_costly_to_check_fails_the_run_at_the_checkers_limit() {
    let guild = Guild::new();
    let started = std::time::Instant::now();
    let costly = guild.run_tool(COSTLY_SCHEMA, r#"{"out":"x"}"#, &[]);
    costly.expect_code(1).expect_stderr("could not be checked").expect_stderr("schema_check.fuel_units");
    eprintln!("the costly check failed after {:?}", started.elapsed());
    replays_identically(&guild, &costly);
    let fine = guild.run_tool(COSTLY_SCHEMA, r#"{"out":"xy"}"#, &[]);
    fine.expect_code(0);
    assert_eq!(fine.json()["out"], "xy");
}

#[test]
fn hard_links_cost_their_files_bytes() {
    let guild = Guild::new();
    let data = tree(&[]);
    let input = r#"{"attack":"hard-links","name":"big","bytes":4194304,"links":10}"#;
    let ran =
        guild.run_tool(HOSTILE, input, &["--dir", &mount(data.path(), "/data", "rw"), "--mount-write-bytes", "10MiB"]);
    ran.expect_code(3).expect_stderr("mount /data: write quota reached").expect_stderr("raise --mount-write-bytes");
    let links = std::fs::read_dir(data.path()).expect("dir").count();
    assert!(links <= 3, "{links} entries: each link recorded 4 MiB more");
    replays_identically(&guild, &ran);
}

#[test]
fn a_mount_that_outgrows_what_a_bundle_records_ends_the_run_sealed() {
    let guild = Guild::new();
    let data = tree(&[]);
    // 70 directories stay well inside the entry quota but nest deeper than a tree records.
    let ran = guild.run_tool(
        HOSTILE,
        r#"{"attack":"nested-dirs","depth":70}"#,
        &["--dir", &mount(data.path(), "/data", "rw")],
    );
    ran.expect_code(3).expect_stderr("mount /data: after the run it holds").expect_stderr("more than a bundle records");
    assert!(!ran.stderr.contains(&data.path().display().to_string()), "the host's path is not shown: {ran:?}");
    replays_identically(&guild, &ran);
}

/// Run the hostile fixture's file-system `steps` with `args`.
fn steps(guild: &Guild, steps: serde_json::Value, args: &[&str]) -> Ran {
    let input = serde_json::json!({ "attack": "steps", "steps": steps }).to_string();
    guild.run_tool(HOSTILE, &input, args)
}

#[test]
fn the_quota_charges_what_sealing_will_store() {
    let guild = Guild::new();
    // Links made while the file is empty, then the file grown: each link is one more copy.
    let data = tree(&[]);
    let rw = mount(data.path(), "/data", "rw");
    let mut linked = vec![serde_json::json!({"do": "write", "path": "/data/f", "offset": 0, "bytes": 0})];
    for i in 0..10 {
        linked.push(serde_json::json!({"do": "link", "from": "/data/f", "to": format!("/data/f.{i}")}));
    }
    linked.push(serde_json::json!({"do": "write", "path": "/data/f", "offset": 0, "bytes": 1_048_576}));
    let ran = steps(&guild, serde_json::Value::Array(linked), &["--dir", &rw, "--mount-write-bytes", "4MiB"]);
    ran.expect_code(3).expect_stderr("mount /data: write quota reached");
    replays_identically(&guild, &ran);

    // Symlinks cost their names and targets.
    let data = tree(&[]);
    let rw = mount(data.path(), "/data", "rw");
    let links = serde_json::json!([{"do": "symlinks", "path": "/data/l", "count": 1000, "target_bytes": 4000}]);
    steps(&guild, links, &["--dir", &rw, "--mount-write-bytes", "1MiB"])
        .expect_code(3)
        .expect_stderr("mount /data: write quota reached");
    let made = std::fs::read_dir(data.path()).expect("dir").count();
    assert!(made < 300, "{made} links of 4000 bytes within a 1 MiB quota");

    // One byte changed in a 2 MiB file that was there before: sealing stores the file again.
    let data = tree(&[("big.bin", &"b".repeat(2 << 20))]);
    let rw = mount(data.path(), "/data", "rw");
    let touch = serde_json::json!([{"do": "write", "path": "/data/big.bin", "offset": 0, "bytes": 1}]);
    steps(&guild, touch.clone(), &["--dir", &rw, "--mount-write-bytes", "1MiB"])
        .expect_code(3)
        .expect_stderr("mount /data: write quota reached");
    steps(&guild, touch, &["--dir", &rw, "--mount-write-bytes", "3MiB"]).expect_code(0);
}

#[test]
fn names_a_bundle_cannot_record_and_moves_between_mounts_are_refused() {
    let guild = Guild::new();
    let (data, other) = (tree(&[]), tree(&[("moved/a.txt", "from the other mount")]));
    let args = ["--dir", &mount(data.path(), "/data", "rw"), "--dir", &mount(other.path(), "/other", "rw")];
    let backslash = serde_json::json!([{"do": "write", "path": "/data/x\\y", "offset": 0, "bytes": 1}]);
    let ran = steps(&guild, backslash, &args);
    ran.expect_code(1).expect_stderr("step 0");
    assert_eq!(std::fs::read_dir(data.path()).expect("dir").count(), 0, "nothing was created");
    replays_identically(&guild, &ran);
    let across = serde_json::json!([{"do": "rename", "from": "/other/moved", "to": "/data/moved"}]);
    steps(&guild, across, &args).expect_code(1).expect_stderr("step 0");
    assert!(other.path().join("moved/a.txt").exists() && !data.path().join("moved").exists());
    // The mount is still recordable: the next run is sealed as usual.
    let fine = serde_json::json!([{"do": "write", "path": "/data/ok.txt", "offset": 0, "bytes": 3}]);
    steps(&guild, fine, &args).expect_code(0);
}

#[test]
fn a_name_a_bundle_cannot_record_already_in_a_mount_is_named_before_the_run() {
    let guild = Guild::new();
    let data = tree(&[("x\\y", "put there by the operator")]);
    let input = serde_json::json!({"attack": "steps", "steps": []}).to_string();
    guild
        .run_tool(HOSTILE, &input, &["--dir", &mount(data.path(), "/data", "rw")])
        .expect_code(2)
        .expect_stderr("a name a bundle cannot record");
}
