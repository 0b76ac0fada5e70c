//! The `guild` command line: output and summary, exit codes, errors people can act on, the
//! compiled-component cache.

use crate::{Guild, mount, tree};
use guild_test_artifacts::{ECHO, FOREIGN_IMPORT, HOSTILE, OTHER_WORLD};

#[test]
fn run_prints_output_on_stdout_and_a_summary_on_stderr() {
    let ran = Guild::new().run(&["run", ECHO, "--input", r#"{"message":"héllo"}"#]);
    ran.expect_code(0);
    assert_eq!(ran.json(), serde_json::json!({"message": "héllo"}));
    let summary: Vec<&str> = ran.stderr.lines().collect();
    assert_eq!(summary.len(), 1, "{ran:?}");
    assert!(summary[0].contains("echo 0.1.0 ok · fuel ") && summary[0].contains(" ms"), "{ran:?}");
}

#[test]
fn input_can_come_from_a_file_or_stdin() {
    let dir = tree(&[("in.json", r#"{"message":"from a file"}"#)]);
    let guild = Guild::new();
    let path = dir.path().join("in.json");
    let ran = guild.run(&["run", ECHO, "--input-file", path.to_str().expect("utf-8")]);
    assert_eq!(ran.expect_code(0).json()["message"], "from a file");

    let mut child = guild
        .command()
        .args(["run", ECHO, "--input-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(br#"{"message":"from stdin"}"#).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"message":"from stdin"}"#);
}

#[test]
fn describe_prints_the_tool_info_with_its_digest() {
    let ran = Guild::new().run(&["describe", ECHO]);
    let info = ran.expect_code(0).json();
    assert_eq!(info["name"], "echo");
    assert_eq!(info["input_schema"]["required"], serde_json::json!(["message"]));
    assert!(info["output_schema"]["properties"]["message"].is_object());
    let bytes = std::fs::read(ECHO).expect("echo.wasm");
    assert_eq!(info["component"], blake3::hash(&bytes).to_hex().as_str());

    let hostile = Guild::new().run(&["describe", HOSTILE]).json();
    assert_eq!(hostile["capabilities"]["dirs"][0]["guest_path"], "/data");
    assert_eq!(hostile["capabilities"]["dirs"][0]["access"], "read-write");
}

#[test]
fn an_import_the_host_does_not_link_is_refused_by_name() {
    Guild::new()
        .run(&["describe", FOREIGN_IMPORT])
        .expect_code(5)
        .expect_stderr("the component imports fixture:foreign/store@0.1.0, which Guild does not provide");
}

#[test]
fn bad_input_is_a_usage_error() {
    let guild = Guild::new();
    guild.run(&["run", ECHO, "--input", "{not json"]).expect_code(2).expect_stderr("input is not valid JSON");
    guild
        .run(&["run", ECHO, "--input", r#"{"message":1}"#])
        .expect_code(2)
        .expect_stderr("tool error (invalid_input): input does not match the schema");
    guild
        .run(&["run", ECHO, "--input", r#"{"message":"x","extra":true}"#])
        .expect_code(2)
        .expect_stderr("unknown field");
    guild.run(&["run", ECHO, "--dir", "no-separator"]).expect_code(2).expect_stderr("HOST::GUEST");
    guild.run(&["run", ECHO, "--memory", "lots"]).expect_code(2).expect_stderr("is not a size");
    guild.run(&["run", ECHO, "--timeout", "soon"]).expect_code(2).expect_stderr("is not a duration");
    guild.run(&["run", ECHO, "--memory", "8GiB"]).expect_code(2).expect_stderr("above this host's ceiling");
    guild.run(&["run", "/nonexistent/tool.wasm"]).expect_code(2).expect_stderr("cannot read /nonexistent/tool.wasm");
}

#[test]
fn a_mount_the_tool_did_not_ask_for_is_denied() {
    let dir = tree(&[("a.txt", "a")]);
    let guild = Guild::new();
    guild
        .run(&["run", ECHO, "--input", r#"{"message":"x"}"#, "--dir", &mount(dir.path(), "/data", "ro")])
        .expect_code(4)
        .expect_stderr("tool echo does not ask for a directory at /data; it asks for no directories");
    guild
        .run(&["run", HOSTILE, "--dir", &mount(dir.path(), "/elsewhere", "ro")])
        .expect_code(4)
        .expect_stderr("it asks for /data (read-write)");
    guild
        .run(&["run", HOSTILE, "--dir", &mount(&dir.path().join("missing"), "/data", "ro")])
        .expect_code(4)
        .expect_stderr("cannot mount");
}

#[test]
fn files_that_are_not_guild_tools_are_refused_clearly() {
    let dir = tree(&[("notes.txt", "just text"), ("module.wasm", "")]);
    std::fs::write(dir.path().join("module.wasm"), b"\0asm\x01\0\0\0").expect("core module");
    let guild = Guild::new();
    let text = dir.path().join("notes.txt");
    guild
        .run(&["run", text.to_str().expect("utf-8")])
        .expect_code(5)
        .expect_stderr("does not start with the `\\0asm` header");
    let module = dir.path().join("module.wasm");
    guild
        .run(&["run", module.to_str().expect("utf-8")])
        .expect_code(5)
        .expect_stderr("core WebAssembly module that imports no wasi_snapshot_preview1, not a component");
    // An empty component exports nothing a host can call.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").expect("empty component");
    guild
        .run(&["describe", empty.to_str().expect("utf-8")])
        .expect_code(5)
        .expect_stderr("exports neither guild:tool/tool@0.1.0 nor wasi:cli/run (it is a component of another world)");
    // A plain WASI command is not a guild-tool component, but it runs as a command.
    let command = guild.run(&["run", OTHER_WORLD]);
    assert_eq!(command.expect_code(0).stdout, "I am a command, not a Guild tool\n");
    let mut truncated = std::fs::read(ECHO).expect("echo");
    truncated.truncate(truncated.len() / 2);
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, truncated).expect("write");
    guild.run(&["run", broken.to_str().expect("utf-8")]).expect_code(5).expect_stderr("invalid component");
}

#[test]
fn a_mount_too_large_to_record_is_refused_with_the_flag_to_raise() {
    let dir = tree(&[("a.txt", "0123456789"), ("b.txt", "0123456789")]);
    let guild = Guild::new();
    let data = mount(dir.path(), "/data", "rw");
    guild
        .run(&["run", HOSTILE, "--input", r#"{"attack":"spin","rounds":1}"#, "--dir", &data, "--mount-bytes", "15"])
        .expect_code(2)
        .expect_stderr("a mount is too large to record")
        .expect_stderr("raise --mount-bytes");
    guild
        .run(&["run", HOSTILE, "--input", r#"{"attack":"spin","rounds":1}"#, "--dir", &data, "--mount-entries", "1"])
        .expect_code(2)
        .expect_stderr("raise --mount-entries");
    guild.run(&["run", HOSTILE, "--input", r#"{"attack":"spin","rounds":1}"#, "--dir", &data]).expect_code(0);
}

#[test]
fn help_documents_the_exit_codes() {
    let ran = Guild::new().run(&["run", "--help"]);
    ran.expect_code(0);
    for line in [
        "0  success",
        "1  the tool returned an error",
        "2  usage error",
        "3  a limit ended the run",
        "4  a capability was denied",
        "5  the component is invalid",
    ] {
        assert!(ran.stdout.contains(line), "missing {line:?} in {}", ran.stdout);
    }
    let replay = Guild::new().run(&["replay", "--help"]);
    assert!(replay.stdout.contains("13 nondeterminism") && replay.stdout.contains("17 replay too slow"));
    assert!(!replay.stdout.contains("output JSON is on stdout"), "replay's own codes only");
}

#[test]
fn compiled_components_are_cached_on_disk_and_a_corrupt_entry_is_recompiled() {
    let guild = Guild::new();
    let input = r#"{"message":"cache"}"#;
    assert_eq!(guild.run_tool(ECHO, input, &[]).expect_code(0).summary()["cache"], "compiled");
    assert_eq!(guild.run_tool(ECHO, input, &[]).expect_code(0).summary()["cache"], "disk");

    let artifacts: Vec<_> =
        walk(guild.home()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "cwasm")).collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    std::fs::write(&artifacts[0], b"garbage").expect("corrupt");
    let ran = guild.run_tool(ECHO, input, &[]);
    assert_eq!(ran.expect_code(0).summary()["cache"], "compiled");
    assert_eq!(ran.json()["message"], "cache");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    crate::listing(dir).into_iter().map(|p| dir.join(p)).collect()
}
