//! Hostile guests: each attack ends with the right exit code and message, within its limit, and
//! nothing outside the mount is read or written.

use crate::{Guild, listing, mount, tree};
use guild_test_artifacts::HOSTILE;
use std::time::Duration;

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let ran = Guild::new().run_tool(HOSTILE, r#"{"attack":"loop"}"#, &["--fuel", "50000000"]);
    ran.expect_code(3).expect_stderr("fuel exhausted: used 50000000 of 50000000 units (raise --fuel)");
    assert_eq!(ran.summary()["fuel_used_units"], 50_000_000);
    assert!(ran.elapsed < Duration::from_secs(10), "{:?}", ran.elapsed);
}

#[test]
fn infinite_loop_hits_the_deadline_when_fuel_is_plentiful() {
    let ran =
        Guild::new().run_tool(HOSTILE, r#"{"attack":"loop"}"#, &["--fuel", "1000000000000000", "--timeout", "500ms"]);
    ran.expect_code(3).expect_stderr("timed out after 500ms (raise --timeout)");
    let wall_us = ran.summary()["wall_time_us"].as_u64().expect("wall time");
    assert!((500_000..5_000_000).contains(&wall_us), "{wall_us} µs");
}

#[test]
fn sleeping_in_a_host_call_still_hits_the_deadline() {
    let ran = Guild::new().run_tool(HOSTILE, r#"{"attack":"sleep"}"#, &["--timeout", "300ms"]);
    ran.expect_code(3).expect_stderr("timed out after 300ms (raise --timeout)");
    assert!(ran.elapsed < Duration::from_secs(5), "{:?}", ran.elapsed);
}

#[test]
fn memory_bomb_stops_at_the_memory_limit() {
    let ran = Guild::new().run_tool(HOSTILE, r#"{"attack":"memory"}"#, &["--memory", "32MiB"]);
    ran.expect_code(3).expect_stderr("memory limit 32 MiB reached (raise --memory)");
    let peak = ran.summary()["memory_bytes_peak"].as_u64().expect("peak");
    assert!(peak <= 32 << 20, "peak {peak} above the limit");
}

#[test]
fn deep_recursion_exhausts_the_fixed_wasm_stack() {
    let guild = Guild::new();
    guild.run_tool(HOSTILE, r#"{"attack":"recursion","depth":1000}"#, &[]).expect_code(0);
    guild
        .run_tool(HOSTILE, r#"{"attack":"recursion","depth":1000000000000}"#, &[])
        .expect_code(3)
        .expect_stderr("wasm stack of 1 MiB exhausted");
}

#[test]
fn huge_output_is_refused() {
    let guild = Guild::new();
    let input = r#"{"attack":"output","bytes":2000000}"#;
    guild
        .run_tool(HOSTILE, input, &[])
        .expect_code(3)
        .expect_stderr("exceeds the limit of 1 MiB (raise --output-bytes)");
    let ran = guild.run_tool(HOSTILE, input, &["--output-bytes", "4MiB"]);
    ran.expect_code(0);
    assert_eq!(ran.json()["padding"].as_str().map(str::len), Some(2_000_000));
}

#[test]
fn log_and_stdout_floods_hit_the_log_budget() {
    let guild = Guild::new();
    for attack in ["log-flood", "stdout-flood"] {
        let ran = guild.run_tool(HOSTILE, &format!(r#"{{"attack":"{attack}"}}"#), &["--log-bytes", "64KiB"]);
        ran.expect_code(3).expect_stderr("log limit of 64 KiB reached (raise --log-bytes)");
        assert!(ran.summary()["log_lines"].as_u64().expect("count") > 100, "{attack}");
    }
}

#[test]
fn a_panic_is_a_trap_with_the_panic_message() {
    Guild::new()
        .run_tool(HOSTILE, r#"{"attack":"panic"}"#, &[])
        .expect_code(1)
        .expect_stderr("the hostile fixture panicked on purpose");
}

/// An outer directory holding a secret and the mounted `data/`, which has a symlink pointing out.
fn escape_scene() -> tempfile::TempDir {
    let scene = tree(&[("secret.txt", "TOP-SECRET"), ("data/inside.txt", "fine")]);
    std::os::unix::fs::symlink(scene.path().join("secret.txt"), scene.path().join("data/link")).expect("symlink");
    std::os::unix::fs::symlink("../secret.txt", scene.path().join("data/relative-link")).expect("symlink");
    scene
}

#[test]
fn escapes_by_dotdot_absolute_paths_and_symlinks_are_refused() {
    let scene = escape_scene();
    let before = listing(scene.path());
    let outer = scene.path().join("secret.txt").display().to_string();
    let input = serde_json::json!({
        "attack": "escape",
        "read": ["/data/../secret.txt", "../secret.txt", "/secret.txt", outer, "/data/link",
                 "/data/relative-link", "/etc/passwd", "/data/./../data/../secret.txt"],
        "write": ["/data/../planted.txt", "/planted.txt", "/data/link", "/data/relative-link",
                  "/tmp/planted.txt"],
    });
    let ran = Guild::new().run_tool(
        HOSTILE,
        &input.to_string(),
        &["--dir", &mount(&scene.path().join("data"), "/data", "rw")],
    );
    ran.expect_code(4).expect_stderr("every escape was refused");
    assert!(!ran.stdout.contains("TOP-SECRET") && !ran.stderr.contains("TOP-SECRET"));
    assert_eq!(listing(scene.path()), before, "something was written");
    assert_eq!(std::fs::read_to_string(scene.path().join("secret.txt")).expect("secret"), "TOP-SECRET");
}

#[test]
fn a_read_only_mount_refuses_writes_inside_it() {
    let scene = escape_scene();
    let before = listing(scene.path());
    let input = r#"{"attack":"escape","read":[],"write":["/data/new.txt","/data/inside.txt"]}"#;
    Guild::new().run_tool(HOSTILE, input, &["--dir", &mount(&scene.path().join("data"), "/data", "ro")]).expect_code(4);
    assert_eq!(listing(scene.path()), before);
    assert_eq!(std::fs::read_to_string(scene.path().join("data/inside.txt")).expect("file"), "fine");
}

#[test]
fn a_read_write_mount_allows_writes_inside_it() {
    let scene = escape_scene();
    let input = r#"{"attack":"escape","read":["/data/inside.txt"],"write":["/data/new.txt"]}"#;
    let ran = Guild::new().run_tool(HOSTILE, input, &["--dir", &mount(&scene.path().join("data"), "/data", "rw")]);
    ran.expect_code(0);
    assert_eq!(std::fs::read_to_string(scene.path().join("data/new.txt")).expect("written"), "escaped");
}
