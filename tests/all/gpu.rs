//! GPU work end to end on lavapipe (Mesa's Vulkan on the CPU): the `matmul` and `similar` tools
//! through the real binary, quotas and bad requests, and replay with the GPU hidden from the
//! process (no adapter, GPU work off), then recomputed on this host's device.

use crate::{Guild, Ran, mount, tree};
use guild_test_artifacts::{MATMUL, SIMILAR};

/// Hide every Vulkan driver from a process: it sees no adapter at all.
const NO_VULKAN: (&str, &str) = ("VK_ICD_FILENAMES", "/nonexistent/icd.json");

fn bundle_id(ran: &Ran) -> String {
    ran.summary()["bundle"].as_str().unwrap_or_else(|| panic!("no bundle id: {ran:?}")).to_string()
}

fn run_env(guild: &Guild, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut command = guild.command();
    command.args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir());
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("guild starts");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: std::time::Duration::ZERO,
    }
}

#[test]
fn matmul_runs_on_the_device_and_replays_with_the_gpu_hidden() {
    let recorder = Guild::new();
    let input = r#"{"a":[[1,2,3],[4,5,6]],"b":[[1,0],[0,1],[1,1]]}"#;
    let ran = run_env(&recorder, &["run", MATMUL, "--input", input, "--summary-json", "--gpu", "device"], &[]);
    ran.expect_code(0);
    assert_eq!(ran.json()["c"], serde_json::json!([[4.0, 5.0], [10.0, 11.0]]));
    let id = bundle_id(&ran);
    let inspect = recorder.run(&["bundle", "inspect", &id]);
    inspect.expect_code(0);
    assert!(inspect.stdout.contains("gpu matmul v1") && inspect.stdout.contains("llvmpipe"), "{inspect:#?}");

    let files = tempfile::tempdir().expect("tempdir");
    let archive = files.path().join("run.tar.zst");
    recorder.run(&["bundle", "export", &id, "-o", archive.to_str().expect("utf-8")]).expect_code(0);
    let archive = archive.to_str().expect("utf-8");
    let auditor = Guild::new();
    let hidden = [NO_VULKAN, ("GUILD_GPU", "off")];
    let replayed = run_env(&auditor, &["replay", archive, "--json"], &hidden);
    replayed.expect_code(0);
    assert!(replayed.json()["report"]["mismatch"].is_null(), "{replayed:#?}");
    // The hidden host really has no device to offer.
    let none = run_env(&auditor, &["gpu", "info"], &[NO_VULKAN]);
    assert!(none.stdout.contains("adapter:  none"), "{none:#?}");

    let recomputed = run_env(&auditor, &["replay", archive, "--recompute-gpu", "--json"], &[]);
    recomputed.expect_code(0);
    let checks = &recomputed.json()["report"]["gpu_checks"];
    assert_eq!(checks.as_array().map(Vec::len), Some(1), "{recomputed:#?}");
    assert!(
        checks[0]["mismatch"].is_null() && checks[0]["recomputed_on"].as_str().is_some_and(|d| d.contains("llvmpipe"))
    );
    // Without an adapter, auto mode recomputes on the CPU reference, within tolerance.
    let on_cpu = run_env(&auditor, &["replay", archive, "--recompute-gpu"], &[NO_VULKAN]);
    on_cpu.expect_code(0);
    assert!(on_cpu.stdout.contains("recomputed on cpu-reference and agrees within tolerance"), "{on_cpu:#?}");
}

#[test]
fn a_larger_random_run_replays_and_recomputes() {
    let guild = Guild::new();
    let input = r#"{"random":{"m":130,"k":77,"n":65,"seed":9},"repeat":3}"#;
    let ran = run_env(&guild, &["run", MATMUL, "--input", input, "--summary-json"], &[]);
    ran.expect_code(0);
    assert_eq!(ran.json()["dispatches"], 3);
    let id = bundle_id(&ran);
    let replayed = run_env(&guild, &["replay", &id, "--recompute-gpu", "--json"], &[]);
    replayed.expect_code(0);
    assert_eq!(replayed.json()["report"]["gpu_checks"].as_array().map(Vec::len), Some(3));
}

#[test]
fn similar_ranks_a_mounted_file_by_cosine_similarity() {
    let guild = Guild::new();
    let items = r#"[{"id":"north","vector":[0,1,0]},{"id":"east","vector":[1,0,0]},
        {"id":"north-east","vector":[1,1,0]},{"id":"up","vector":[0,0,1]},{"id":"south","vector":[0,-1,0]}]"#;
    let docs = tree(&[("emb.json", items)]);
    let data = mount(docs.path(), "/data", "ro");
    let input = r#"{"file":"/data/emb.json","query":[0.1,1,0],"k":3}"#;
    let ran = run_env(&guild, &["run", SIMILAR, "--input", input, "--dir", &data, "--summary-json"], &[]);
    ran.expect_code(0);
    let out = ran.json();
    let ids: Vec<&str> = out["matches"].as_array().expect("matches").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["north", "north-east", "east"]);
    assert_eq!(out["rows"], 5);
    let replayed = run_env(&guild, &["replay", &bundle_id(&ran), "--json"], &[NO_VULKAN, ("GUILD_GPU", "off")]);
    replayed.expect_code(0);
}

#[test]
fn quotas_and_bad_requests_get_clear_errors() {
    let guild = Guild::new();
    let random = r#"{"random":{"m":64,"k":64,"n":64}}"#;
    run_env(&guild, &["run", MATMUL, "--input", random, "--gpu-buffer-bytes", "20KiB"], &[])
        .expect_code(3)
        .expect_stderr("gpu buffer bytes quota: 32 KiB requested of 20 KiB (raise --gpu-buffer-bytes)");
    run_env(&guild, &["run", MATMUL, "--input", random, "--gpu-buffers", "2"], &[])
        .expect_code(3)
        .expect_stderr("(raise --gpu-buffers)");
    let twice = r#"{"random":{"m":4,"k":4,"n":4},"repeat":2}"#;
    run_env(&guild, &["run", MATMUL, "--input", twice, "--gpu-dispatches", "1"], &[])
        .expect_code(3)
        .expect_stderr("(raise --gpu-dispatches)");
    let mismatched = r#"{"a":[[1,2,3],[4,5,6]],"b":[[1,0],[0,1]]}"#;
    run_env(&guild, &["run", MATMUL, "--input", mismatched], &[])
        .expect_code(1)
        .expect_stderr("gpu matmul: inner dimensions differ: a is [2, 3] and b is [2, 2]");
    let unknown = r#"{"a":[[1]],"b":[[1]],"op":"conv2d"}"#;
    run_env(&guild, &["run", MATMUL, "--input", unknown], &[])
        .expect_code(1)
        .expect_stderr("unknown gpu kernel \"conv2d\"; the catalogue has: add, mul,");
    let add = r#"{"a":[[1,2]],"b":[[3,4]],"op":"add"}"#;
    let ran = run_env(&guild, &["run", MATMUL, "--input", add], &[]);
    ran.expect_code(0);
    assert_eq!(ran.json()["c"], serde_json::json!([[4.0, 6.0]]));
    run_env(&guild, &["run", MATMUL, "--input", add], &[("GUILD_GPU", "off")])
        .expect_code(1)
        .expect_stderr("GPU work is off on this host");
    run_env(&guild, &["run", MATMUL, "--input", add, "--gpu", "device"], &[NO_VULKAN])
        .expect_code(1)
        .expect_stderr("no GPU adapter on this host");
    let fallback = run_env(&guild, &["run", MATMUL, "--input", add, "--summary-json"], &[NO_VULKAN]);
    fallback.expect_code(0);
    let inspect = guild.run(&["bundle", "inspect", &bundle_id(&fallback)]);
    assert!(inspect.stdout.contains("on cpu-reference"), "{inspect:#?}");
}

#[test]
fn gpu_info_names_the_adapter_and_the_catalogue() {
    let guild = Guild::new();
    let info = run_env(&guild, &["gpu", "info", "--json"], &[]);
    info.expect_code(0);
    let info = info.json();
    assert!(info["adapter"]["name"].as_str().is_some_and(|n| n.contains("llvmpipe")), "{info:#}");
    let kernels = info["kernels"].as_array().expect("kernels");
    assert_eq!(kernels.len(), 11);
    assert!(kernels.iter().all(|k| k["hash"].as_str().is_some_and(|h| h.len() == 64)), "{info:#}");
}
