//! Preview-1 modules under Guild's rules: they run on wasmtime-wasi's own preview 1 (as under
//! `wasmtime run`), with the same fuel, time, memory, output bounds, recording and replay; a run
//! granted a writable mount runs the module adapted into a component, whose filesystem charges
//! the mount's write quota. The modules here are encoded in the test (wasm-encoder), so they need
//! no preview-1 toolchain; the suite's own programs are used when `../shared/wasi-testsuite` exists.

use crate::{Guild, mount};
use guild_replay::{BlobStore, Bundle, DirStore, HostKey};
use guild_runtime::{
    CommandOutput, Grants, LimitHit, Limits, Mount, Outcome, RecordingConfig, ReplayOptions, Runtime, RuntimeConfig,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasm_encoder::{
    CodeSection, ConstExpr, DataSection, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    ImportSection, MemorySection, MemoryType, Module, TypeSection, ValType,
};

/// What the encoded `_start` does.
enum Body {
    /// Write `text` to fd 1, then `proc_exit(code)`.
    PrintAndExit { text: &'static str, code: i32 },
    /// Write `text` to fd 1 `times` times (stops at the output bound).
    Flood { text: &'static str, times: i32 },
    /// Loop forever.
    Spin,
    /// Write `text` to fd 1, then loop forever.
    PrintThenSpin { text: &'static str },
    /// Grow memory by one page at a time, forever.
    Grow,
    /// `unreachable`.
    Trap,
}

/// A preview-1 command module: imports `fd_write` and `proc_exit`, exports `memory` and `_start`.
fn module(body: Body) -> Vec<u8> {
    const IOVEC: i32 = 0;
    const WRITTEN: i32 = 8;
    const TEXT: i32 = 16;
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], []);
    types.ty().function([ValType::I32; 4], [ValType::I32]);
    types.ty().function([], []);
    let mut imports = ImportSection::new();
    imports.import("wasi_snapshot_preview1", "proc_exit", EntityType::Function(0));
    imports.import("wasi_snapshot_preview1", "fd_write", EntityType::Function(1));
    let mut functions = FunctionSection::new();
    functions.function(2);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType { minimum: 1, maximum: None, memory64: false, shared: false, page_size_log2: None });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export("_start", ExportKind::Func, 2);
    let text = match body {
        Body::PrintAndExit { text, .. } | Body::Flood { text, .. } | Body::PrintThenSpin { text } => text,
        _ => "",
    };
    let text_len = i32::try_from(text.len()).expect("a short text");
    let mut start = Function::new([(1, ValType::I32)]);
    let mut sink = start.instructions();
    // The iovec: (TEXT, len).
    sink.i32_const(IOVEC).i32_const(TEXT).i32_store(wasm_encoder::MemArg { offset: 0, align: 2, memory_index: 0 });
    sink.i32_const(IOVEC).i32_const(text_len).i32_store(wasm_encoder::MemArg { offset: 4, align: 2, memory_index: 0 });
    let write = |sink: &mut wasm_encoder::InstructionSink<'_>| {
        sink.i32_const(1).i32_const(IOVEC).i32_const(1).i32_const(WRITTEN).call(1).drop();
    };
    match body {
        Body::PrintAndExit { code, .. } => {
            write(&mut sink);
            sink.i32_const(code).call(0);
        }
        Body::Flood { times, .. } => {
            sink.block(wasm_encoder::BlockType::Empty).loop_(wasm_encoder::BlockType::Empty);
            sink.local_get(0).i32_const(times).i32_ge_s().br_if(1);
            write(&mut sink);
            sink.local_get(0).i32_const(1).i32_add().local_set(0).br(0).end().end();
        }
        Body::Spin => {
            sink.loop_(wasm_encoder::BlockType::Empty).br(0).end();
        }
        Body::PrintThenSpin { .. } => {
            write(&mut sink);
            sink.loop_(wasm_encoder::BlockType::Empty).br(0).end();
        }
        Body::Grow => {
            sink.loop_(wasm_encoder::BlockType::Empty).i32_const(1).memory_grow(0).drop().br(0).end();
        }
        Body::Trap => {
            sink.unreachable();
        }
    }
    sink.end();
    let mut code = CodeSection::new();
    code.function(&start);
    let mut data = DataSection::new();
    data.active(0, &ConstExpr::i32_const(TEXT), text.bytes());
    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&memories)
        .section(&exports)
        .section(&code)
        .section(&data);
    module.finish()
}

/// `bytes` written as `NAME.wasm` in a fresh directory.
fn module_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).expect("write module");
    (dir, path)
}

fn recording_runtime(home: &Path) -> (Runtime, Arc<DirStore>) {
    let store = Arc::new(DirStore::open(home.join("store")).expect("store"));
    let recording = RecordingConfig::new(store.clone(), Arc::new(HostKey::generate().expect("key")));
    let config =
        RuntimeConfig { recording: Some(recording), cache_dir: Some(home.join("cache")), ..RuntimeConfig::default() };
    (Runtime::new(config).expect("runtime"), store)
}

async fn replays_identically(runtime: &Runtime, store: &DirStore, bundle: guild_replay::Digest) {
    let (manifest, signature) = store.get_bundle(&bundle).expect("bundle stored");
    let bundle = Bundle::open(store, &manifest, &signature, None).expect("bundle verifies");
    let replayed = runtime.replay(&bundle, store, &ReplayOptions::default()).await.expect("replays");
    assert_eq!(replayed.mismatch, None, "{replayed:?}");
    assert_eq!(replayed.fuel_replayed_units, replayed.fuel_recorded_units);
}

#[test]
fn guild_run_gives_a_preview1_modules_own_exit_code_and_134_for_a_trap() {
    let guild = Guild::new();
    let (_dir, exits) = module_file("exits", &module(Body::PrintAndExit { text: "hello\n", code: 33 }));
    // proc_exit(33) is 33, as under `wasmtime run` (the published adapter made it 1).
    let ran = guild.run(&["run", exits.to_str().expect("utf-8"), "--summary-json", "--"]);
    ran.expect_code(33);
    assert!(ran.stdout == "hello\n", "{ran:?}");
    let bundle = ran.summary()["bundle"].as_str().expect("bundle").to_string();
    guild.run(&["replay", &bundle]).expect_code(0);
    let (_dir, traps) = module_file("traps", &module(Body::Trap));
    guild.run(&["run", traps.to_str().expect("utf-8"), "--"]).expect_code(134).expect_stderr("unreachable");
}

#[test]
fn fuel_time_memory_and_output_limits_stop_a_preview1_module() {
    let guild = Guild::new();
    let (_spin_dir, spin) = module_file("spin", &module(Body::Spin));
    let spin = spin.to_str().expect("utf-8");
    guild.run(&["run", spin, "--fuel", "50000000", "--"]).expect_code(3).expect_stderr("fuel");
    let ran = guild.run(&["run", spin, "--fuel", "1000000000000", "--timeout", "300ms", "--"]);
    ran.expect_code(3).expect_stderr("timed out");
    let (_grow_dir, grow) = module_file("grow", &module(Body::Grow));
    guild.run(&["run", grow.to_str().expect("utf-8"), "--memory", "4MiB", "--"]).expect_code(3).expect_stderr("memory");
    let (_flood_dir, flood) = module_file("flood", &module(Body::Flood { text: "0123456789", times: 1000 }));
    let ran = guild.run(&["run", flood.to_str().expect("utf-8"), "--output-bytes", "5000", "--"]);
    ran.expect_code(3).expect_stderr("--output-bytes");
    // What fitted was passed through as it was written: the first 500 of 1000 writes.
    assert_eq!(ran.stdout, "0123456789".repeat(500), "{ran:?}");
}

#[test]
fn guild_run_passes_a_commands_output_through_as_it_is_written() {
    // The program writes, then never exits: only a stream passed through as written shows it
    // (held until exit, it was lost with the run).
    let guild = Guild::new();
    let (_dir, path) = module_file("early", &module(Body::PrintThenSpin { text: "early\n" }));
    let path = path.to_str().expect("utf-8");
    let ran = guild.run(&["run", path, "--fuel", "1000000000000", "--timeout", "1s", "--summary-json", "--"]);
    ran.expect_code(3);
    assert_eq!(ran.stdout, "early\n", "{ran:?}");
    assert_eq!(ran.summary()["status"], "limit", "{ran:?}");
    // A pipe sees it before the run ends.
    let mut child = guild
        .command()
        .args(["run", path, "--fuel", "1000000000000", "--timeout", "5s", "--"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("guild starts");
    let started = std::time::Instant::now();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(child.stdout.as_mut().expect("stdout"), &mut first).expect("read what it wrote");
    let waited = started.elapsed();
    assert_eq!(&first, b"early\n");
    let _ = child.kill();
    let _ = child.wait();
    assert!(waited < std::time::Duration::from_secs(4), "seen after {waited:?}, before its 5 s timeout ended it");
}

#[tokio::test]
async fn a_preview1_module_runs_as_itself_is_recorded_by_its_digest_and_replays() {
    let home = tempfile::tempdir().expect("tempdir");
    let (runtime, store) = recording_runtime(home.path());
    let bytes = module(Body::PrintAndExit { text: "hi\n", code: 0 });
    let (tool, _) = runtime.load(&bytes).await.expect("a preview-1 module loads");
    assert!(tool.is_command() && tool.is_preview1());
    // The module is what runs, what the store keeps and what bundles name.
    assert_eq!(*tool.digest(), guild_replay::Digest::of(&bytes));
    assert_eq!(store.get(tool.digest()).ok().as_deref(), Some(bytes.as_slice()));
    let report = runtime.run(&tool, "{}", &Grants::default(), &Limits::default()).await.expect("run");
    let Outcome::Output { output } = &report.outcome else { panic!("{:?}", report.outcome) };
    let output = CommandOutput::parse(output).expect("command output");
    assert_eq!((output.exit_code, output.stdout.as_slice()), (0, b"hi\n".as_slice()));
    replays_identically(&runtime, &store, report.bundle.expect("recorded")).await;
    // Only preview-1 runs granted a writable mount adapt the module; none did.
    assert!(!adapted_in(home.path()), "no run needed the adapter");
}

/// Whether the cache under `home` holds a component adapted from a module.
fn adapted_in(home: &Path) -> bool {
    let Ok(engines) = std::fs::read_dir(home.join("cache")) else { return false };
    engines.flatten().any(|fp| {
        std::fs::read_dir(fp.path())
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| f.file_name().to_string_lossy().ends_with(".adapted.wasm"))
    })
}

/// The WASI test suite's prebuilt programs, when this machine has them.
fn suite_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("WASI_TESTSUITE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/wasi-testsuite"),
    };
    dir.join("tests").is_dir().then_some(dir)
}

#[tokio::test]
async fn a_writable_mount_runs_the_adapted_module_under_its_write_quota_and_replays() {
    let Some(suite) = suite_dir() else {
        eprintln!("skipped: no WASI test suite (../shared/wasi-testsuite or WASI_TESTSUITE)");
        return;
    };
    let tests = suite.join("tests/rust/testsuite/wasm32-wasip1");
    let module_path = tests.join("file_pread_pwrite.wasm");
    let bytes = std::fs::read(&module_path).expect("suite program");
    let scratch = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let (runtime, store) = recording_runtime(home.path());
    let (tool, _) = runtime.load(&bytes).await.expect("a preview-1 module loads");
    assert_eq!(*tool.digest(), guild_replay::Digest::of(&bytes));
    let grants = Grants {
        mounts: vec![Mount {
            host_path: scratch.path().to_path_buf(),
            guest_path: "/fs-tests.dir".into(),
            access: guild_runtime::Access::ReadWrite,
        }],
        ..Grants::default()
    };
    let input = r#"{"args": ["/fs-tests.dir"]}"#;
    let report = runtime.run(&tool, input, &grants, &Limits::default()).await.expect("run");
    let Outcome::Output { output } = &report.outcome else { panic!("{:?}", report.outcome) };
    assert_eq!(CommandOutput::parse(output).expect("command output").exit_code, 0, "{output}");
    assert!(adapted_in(home.path()), "the writable run adapted the module, cached by its digest");
    replays_identically(&runtime, &store, report.bundle.expect("recorded")).await;

    // The quota holds on this path: a few bytes of quota stop the same program.
    let tight = Limits { mount_write_bytes_max: 8, ..Limits::default() };
    let report = runtime.run(&tool, input, &grants, &tight).await.expect("run");
    assert!(matches!(report.outcome, Outcome::Limit(LimitHit::MountWrite { .. })), "{:?}", report.outcome);

    // Read-only, the same program runs on preview 1 itself, and cannot write: it fails, and the
    // directory stays as it was.
    let untouched = tempfile::tempdir().expect("tempdir");
    let read_only = Grants {
        mounts: vec![Mount {
            host_path: untouched.path().to_path_buf(),
            guest_path: "/fs-tests.dir".into(),
            access: guild_runtime::Access::ReadOnly,
        }],
        ..Grants::default()
    };
    let report = runtime.run(&tool, input, &read_only, &Limits::default()).await.expect("run");
    assert!(!matches!(&report.outcome, Outcome::Output { output } if output.contains(r#""exit_code":0"#)));
    assert_eq!(std::fs::read_dir(untouched.path()).expect("dir").count(), 0, "{:?}", report.outcome);

    // `guild run` on the module, then `guild replay` of its bundle.
    let guild = Guild::new();
    let dir = mount(scratch.path(), "/fs-tests.dir", "rw");
    let module_arg = module_path.to_str().expect("utf-8");
    let ran = guild.run(&["run", module_arg, "--summary-json", "--dir", &dir, "--", "/fs-tests.dir"]);
    let bundle = ran.expect_code(0).summary()["bundle"].as_str().expect("bundle").to_string();
    guild.run(&["replay", &bundle]).expect_code(0);
}

/// A module importing `imports` (module, name; each a `(i32) -> ()` function, as `proc_exit`),
/// exporting only those named in `exports` (each a `() -> ()` function doing nothing).
fn bare_module(imports: &[(&str, &str)], exports: &[&str]) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], []);
    types.ty().function([ValType::I32], []);
    let mut import_section = ImportSection::new();
    for (module, name) in imports {
        import_section.import(module, name, EntityType::Function(1));
    }
    let mut functions = FunctionSection::new();
    let mut export_section = ExportSection::new();
    let mut code = CodeSection::new();
    for (n, name) in exports.iter().enumerate() {
        functions.function(0);
        let index = u32::try_from(imports.len() + n).expect("few functions");
        export_section.export(name, ExportKind::Func, index);
        let mut body = Function::new([]);
        body.instructions().end();
        code.function(&body);
    }
    let mut module = Module::new();
    module.section(&types).section(&import_section).section(&functions).section(&export_section).section(&code);
    module.finish()
}

#[tokio::test]
async fn a_preview1_module_that_is_no_command_or_imports_more_is_refused_by_name() {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let preview1 = ("wasi_snapshot_preview1", "proc_exit");
    let reactor = bare_module(&[preview1], &["_initialize"]);
    let refused = runtime.load(&reactor).await.err().expect("a reactor is refused");
    assert!(matches!(refused, guild_runtime::LoadError::NoStart), "{refused}");
    let foreign = bare_module(&[preview1, ("env", "host_secret")], &["_start"]);
    let refused = runtime.load(&foreign).await.err().expect("an unknown import is refused");
    assert!(refused.to_string().contains("env::host_secret"), "{refused}");
    let command = bare_module(&[preview1], &["_start"]);
    let (tool, _) = runtime.load(&command).await.expect("a preview-1 command loads");
    assert!(tool.is_preview1());
}

#[test]
fn the_daemon_serves_a_configured_preview1_module_over_http() {
    use crate::daemon::{Daemon, config_file, token_digest};
    use serde_json::json;
    let guild = Guild::new();
    let (_dir, path) = module_file("legacy", &module(Body::PrintAndExit { text: "from preview 1\n", code: 33 }));
    let config = format!(
        r#"
[[tools]]
path = "{path}"
name = "legacy"
description = "An old wasm32-wasip1 program"
args = ["--quiet"]

[[tenants]]
name = "root"
token_blake3 = "{root}"
tools = ["*"]
"#,
        path = path.display(),
        root = token_digest("root-token"),
    );
    let config = config_file(guild.home(), &config);
    let daemon = Daemon::start(&guild, &["--config", &config], &[]);
    let tools = daemon.call("GET", "/v1/tools", "root-token", "").json();
    let listed = tools["tools"].as_array().and_then(|t| t.iter().find(|t| t["name"] == "legacy")).cloned();
    let listed = listed.unwrap_or_else(|| panic!("the module is listed: {tools}"));
    assert_eq!(listed["command"]["args_prefix"], json!(["--quiet"]), "{listed}");
    let reply = daemon.run("root-token", json!({"tool": "legacy", "input": {}}));
    assert_eq!(reply.status, 200, "{}", reply.json());
    let body = reply.json();
    // proc_exit(33) is the program's answer: a succeeded run whose output says 33.
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(
        (body["output"]["exit_code"].as_i64(), body["output"]["stdout"].as_str()),
        (Some(33), Some("from preview 1\n"))
    );
    daemon.terminate();
}
