//! Replay bundles end to end: every shipped tool and hostile fixture, run on one store and
//! replayed from its exported archive on another; altered bundles rejected with the right exit
//! code; each divergence class reported.

use crate::{Guild, Ran, mount, tree};
use guild_replay::{Action, BlobStore, Bundle, BundleWriter, DirStore, Effect, HostKey, RunResult, Tape};
use guild_test_artifacts::{ECHO, GREP, HASH, HOSTILE, JSON_QUERY, WC};
use std::path::{Path, PathBuf};

fn bundle_id(ran: &Ran) -> String {
    ran.summary()["bundle"].as_str().unwrap_or_else(|| panic!("no bundle id: {ran:?}")).to_string()
}

fn export(guild: &Guild, id: &str, dir: &Path) -> PathBuf {
    let file = dir.join(format!("{}.tar.zst", &id[..12]));
    guild.run(&["bundle", "export", id, "-o", file.to_str().expect("utf-8")]).expect_code(0);
    file
}

fn replay_json(guild: &Guild, bundle: &str) -> (Ran, serde_json::Value) {
    let ran = guild.run(&["replay", bundle, "--json"]);
    let report = ran.json();
    (ran, report)
}

#[test]
fn every_tool_and_fixture_replays_identically_on_another_store() {
    let recorder = Guild::new();
    let auditor = Guild::new();
    let files = tempfile::tempdir().expect("tempdir");
    let docs = tree(&[("a.txt", "alpha beta\ngamma\n"), ("sub/b.json", r#"{"k":[1,2,3]}"#)]);
    let data = mount(docs.path(), "/data", "ro");
    let scratch = tree(&[("keep.txt", "kept")]);
    let scratch_rw = mount(scratch.path(), "/data", "rw");
    let cases: Vec<(&str, &str, Vec<&str>, i32)> = vec![
        (ECHO, r#"{"message":"hi"}"#, vec![], 0),
        (WC, "{}", vec!["--dir", &data], 0),
        (GREP, r#"{"pattern":"a"}"#, vec!["--dir", &data], 0),
        (HASH, r#"{"path":"/data"}"#, vec!["--dir", &data], 0),
        (HASH, r#"{"text":"x"}"#, vec![], 0),
        (JSON_QUERY, r#"{"path":"/data/sub/b.json","query":"k[-1]"}"#, vec!["--dir", &data], 0),
        (JSON_QUERY, r#"{"document":{},"query":"nope"}"#, vec![], 1),
        (HOSTILE, r#"{"attack":"entropy"}"#, vec![], 0),
        (HOSTILE, r#"{"attack":"spin","rounds":100000}"#, vec![], 0),
        (HOSTILE, r#"{"attack":"loop"}"#, vec!["--fuel", "20000000"], 3),
        (HOSTILE, r#"{"attack":"memory"}"#, vec!["--memory", "32MiB"], 3),
        (HOSTILE, r#"{"attack":"recursion","depth":1000000000000}"#, vec![], 3),
        (HOSTILE, r#"{"attack":"output","bytes":2000000}"#, vec![], 3),
        (HOSTILE, r#"{"attack":"log-flood"}"#, vec!["--log-bytes", "16KiB"], 3),
        (HOSTILE, r#"{"attack":"stdout-flood"}"#, vec!["--log-bytes", "16KiB"], 3),
        (HOSTILE, r#"{"attack":"panic"}"#, vec![], 1),
        (
            HOSTILE,
            r#"{"attack":"escape","read":["/data/../x","/etc/passwd"],"write":["/data/../y"]}"#,
            vec!["--dir", &scratch_rw],
            4,
        ),
        (
            HOSTILE,
            r#"{"attack":"escape","read":["/data/keep.txt"],"write":["/data/new.txt"]}"#,
            vec!["--dir", &scratch_rw],
            0,
        ),
        (HOSTILE, r#"{"attack":"sleep"}"#, vec!["--timeout", "200ms"], 3),
    ];
    for (tool, input, extra, code) in cases {
        let ran = recorder.run_tool(tool, input, &extra);
        ran.expect_code(code);
        let id = bundle_id(&ran);
        recorder.run(&["bundle", "verify", &id]).expect_code(0);
        let file = export(&recorder, &id, files.path());
        let (replayed, report) = replay_json(&auditor, file.to_str().expect("utf-8"));
        assert_eq!(replayed.code, 0, "{tool} {input}: {report:#}");
        let report = &report["report"];
        if !input.contains("sleep") {
            assert_eq!(report["fuel_replayed_units"], report["fuel_recorded_units"], "{tool} {input}");
        }
        assert!(report["mismatch"].is_null(), "{tool} {input}: {report:#}");
    }
}

#[test]
fn clocks_and_randomness_come_from_the_tape() {
    let guild = Guild::new();
    let first = guild.run_tool(HOSTILE, r#"{"attack":"entropy"}"#, &[]);
    let second = guild.run_tool(HOSTILE, r#"{"attack":"entropy"}"#, &[]);
    assert_ne!(first.json()["value"], second.json()["value"], "randomness must differ between runs");
    let id = bundle_id(&first);
    let inspect = guild.run(&["bundle", "inspect", &id]);
    inspect.expect_code(0);
    assert!(inspect.stdout.contains("random seed") && inspect.stdout.contains("wall clock"), "{}", inspect.stdout);
    let (ran, report) = replay_json(&guild, &id);
    assert_eq!(ran.code, 0, "{report:#}");
}

#[test]
fn altered_archives_and_wrong_keys_are_rejected() {
    let guild = Guild::new();
    let other = Guild::new();
    let files = tempfile::tempdir().expect("tempdir");
    let id = bundle_id(&guild.run_tool(ECHO, r#"{"message":"audit me"}"#, &[]));
    let file = export(&guild, &id, files.path());
    let bytes = std::fs::read(&file).expect("archive");

    let truncated = files.path().join("truncated.tar.zst");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    other
        .run(&["bundle", "verify", truncated.to_str().expect("utf-8")])
        .expect_code(10)
        .expect_stderr("invalid bundle");
    other.run(&["replay", truncated.to_str().expect("utf-8")]).expect_code(10);

    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let flipped_file = files.path().join("flipped.tar.zst");
    std::fs::write(&flipped_file, &flipped).expect("write");
    let ran = other.run(&["bundle", "verify", flipped_file.to_str().expect("utf-8")]);
    assert!(ran.code == 10 || ran.code == 11, "{ran:?}");

    let path = file.to_str().expect("utf-8");
    let key = guild.run(&["key", "show"]).stdout.trim().to_string();
    let stranger = other.run(&["key", "show"]).stdout.trim().to_string();
    other.run(&["bundle", "verify", path, "--key", &key]).expect_code(0);
    other.run(&["bundle", "verify", path, "--key", &stranger]).expect_code(11).expect_stderr("not by the required key");
    other.run(&["replay", path, "--key", &stranger]).expect_code(11);
    other.run(&["bundle", "verify", "0123456789ab"]).expect_code(2).expect_stderr("no bundle");
}

/// Re-seal a stored bundle with `edit` applied, signed by the same host key, as a forger with
/// the key (or a buggy host) would: the bundle verifies, so only replay can tell.
fn reseal(
    guild: &Guild,
    id: &str,
    edit: impl FnOnce(&dyn BlobStore, &mut Action, &mut Tape, &mut RunResult),
) -> String {
    let store = DirStore::open(guild.home().join("store")).expect("store");
    let id = store.resolve(id).expect("id");
    let (manifest, signature) = store.get_bundle(&id).expect("bundle");
    let bundle = Bundle::open(&store, &manifest, &signature, None).expect("valid");
    let (mut action, mut tape, mut result) = (bundle.action.clone(), bundle.tape.clone(), bundle.result.clone());
    edit(&store, &mut action, &mut tape, &mut result);
    result.tape_head = tape.head();
    result.tape_events = tape.events().len() as u64;
    let mut writer = BundleWriter::new(&store);
    for blob in &bundle.manifest.blobs {
        writer.add_stored(blob).expect("stored");
    }
    if let Some(output) = result.output {
        writer.add_stored(&output).expect("output");
    }
    let key = HostKey::load_or_create(&guild.home().join("keys/host.key")).expect("key");
    let sealed = writer.seal(&action, &tape, &result, &bundle.exec, &key).expect("seal");
    store.put_bundle(&sealed.id, &sealed.manifest, &sealed.signature).expect("put");
    sealed.id.to_hex()
}

fn retape(tape: &Tape, mut edit: impl FnMut(&mut Effect)) -> Tape {
    let mut out = Tape::new();
    for event in tape.events() {
        let mut effect = event.effect.clone();
        edit(&mut effect);
        out.push(event.fuel, effect).expect("push");
    }
    out
}

#[test]
fn each_divergence_class_is_reported_with_its_exit_code() {
    let guild = Guild::new();
    let docs = tree(&[("a.txt", "one two three\n")]);
    let ran = guild.run_tool(WC, "{}", &["--dir", &mount(docs.path(), "/data", "ro")]);
    let id = bundle_id(&ran);
    assert!(guild.run(&["replay", &id]).expect_code(0).stdout.contains("replay identical"));

    let edited_log = reseal(&guild, &id, |_, _, tape, _| {
        *tape = retape(tape, |effect| {
            if let Effect::Log { message, .. } = effect {
                *message = "a different line".into();
            }
        });
    });
    let ran = guild.run(&["replay", &edited_log]);
    ran.expect_code(13);
    assert!(ran.stdout.contains("nondeterminism: tape event 2 at seq 2 (fuel"), "{ran:?}");
    assert!(ran.stdout.contains("a different line"), "{ran:?}");

    let other_output = reseal(&guild, &id, |store, _, _, result| {
        let bytes = br#"{"files":[],"total":{"lines":0,"words":0,"bytes":0}}"#;
        let digest = store.put(bytes).expect("put");
        result.output = Some(guild_replay::BlobRef { digest, size_bytes: bytes.len() as u64 });
    });
    assert!(guild.run(&["replay", &other_output]).expect_code(14).stdout.contains("output_mismatch: output"));

    let other_ending = reseal(&guild, &id, |_, _, _, result| {
        result.outcome = guild_runtime::Outcome::Trap { message: "the tool trapped".into() };
        result.output = None;
    });
    let ran = guild.run(&["replay", &other_ending]);
    ran.expect_code(15);
    assert!(ran.stdout.contains("trap_mismatch"), "{ran:?}");

    let other_fuel = reseal(&guild, &id, |_, _, _, result| result.fuel_used_units += 1);
    assert!(guild.run(&["replay", &other_fuel]).expect_code(13).stdout.contains("nondeterminism: fuel used"));
}

#[tokio::test]
async fn a_bundle_from_another_engine_is_refused_unless_allowed() {
    use guild_runtime::{
        EngineSettings, Grants, Limits, RecordingConfig, ReplayError, ReplayOptions, Runtime, RuntimeConfig,
    };
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::open(dir.path().join("store")).expect("store"));
    let recording = RecordingConfig::new(store.clone(), Arc::new(HostKey::generate().expect("key")));
    let config = |wasm_stack_bytes| RuntimeConfig {
        engine: EngineSettings { concurrent_runs_max: 2, wasm_stack_bytes, ..EngineSettings::default() },
        recording: Some(recording.clone()),
        ..RuntimeConfig::default()
    };
    let recorder = Runtime::new(config(1 << 20)).expect("runtime");
    let (tool, _) = recorder.load_file(ECHO.as_ref()).await.expect("load");
    let report = recorder.run(&tool, r#"{"message":"m"}"#, &Grants::default(), &Limits::default()).await.expect("run");
    let id = report.bundle.expect("recorded");
    let (manifest, signature) = store.get_bundle(&id).expect("bundle");
    let bundle = Bundle::open(store.as_ref(), &manifest, &signature, None).expect("valid");

    let other = Runtime::new(config(2 << 20)).expect("runtime");
    let refused = other.replay(&bundle, store.as_ref(), &ReplayOptions::default()).await;
    assert!(matches!(refused, Err(ReplayError::EngineMismatch { .. })), "{refused:?}");
    let allowed = other
        .replay(&bundle, store.as_ref(), &ReplayOptions { allow_engine_mismatch: true, ..ReplayOptions::default() })
        .await
        .expect("replays");
    assert!(allowed.mismatch.is_none(), "{allowed:?}");
    assert!(allowed.notes[0].contains("engine mismatch allowed"));
}

#[test]
fn bundles_are_signed_as_a_batch_and_those_signed_alone_before_batching_still_verify_and_replay() {
    let guild = Guild::new();
    let auditor = Guild::new();
    let files = tempfile::tempdir().expect("tempdir");
    let id = bundle_id(&guild.run_tool(ECHO, r#"{"message":"signed before batching"}"#, &[]));
    let store = DirStore::open(guild.home().join("store")).expect("store");
    let digest = store.resolve(&id).expect("id");
    let (manifest, signature) = store.get_bundle(&digest).expect("bundle");
    // A lone `guild run` signs its bundle as a batch of one.
    let written: guild_replay::BundleSignature = serde_json::from_slice(&signature).expect("a signature document");
    assert_eq!(written.format.as_deref(), Some(guild_replay::SIGNATURE_FORMAT));
    let batch = written.batch.expect("its place in the batch");
    assert_eq!((batch.tree_size, batch.leaf_index, batch.path.len()), (1, 0, 0));

    // The same bundle as a host wrote it before batching: a signature over the id alone.
    let key = HostKey::load_or_create(&guild.home().join("keys/host.key")).expect("key");
    let single = guild_replay::canonical::to_canonical_bytes(&key.sign_single(&digest)).expect("json");
    store.put_bundle(&digest, &manifest, &single).expect("put");
    let public = guild.run(&["key", "show"]).stdout.trim().to_string();
    guild.run(&["bundle", "verify", &id, "--key", &public]).expect_code(0);
    assert!(guild.run(&["replay", &id]).expect_code(0).stdout.contains("replay identical"));
    let file = export(&guild, &id, files.path());
    let path = file.to_str().expect("utf-8");
    auditor.run(&["bundle", "verify", path, "--key", &public]).expect_code(0);
    assert!(auditor.run(&["replay", path, "--key", &public]).expect_code(0).stdout.contains("replay identical"));

    // Its single signature given a batch it never had: refused as a bad signature.
    let mut posing: serde_json::Value = serde_json::from_slice(&single).expect("json");
    posing["format"] = guild_replay::SIGNATURE_FORMAT.into();
    posing["batch"] = serde_json::json!({"leaf_index": 0, "path": [], "tree_size": 1});
    store.put_bundle(&digest, &manifest, &serde_json::to_vec(&posing).expect("json")).expect("put");
    guild.run(&["bundle", "verify", &id]).expect_code(11).expect_stderr("batch signature does not verify");
    guild.run(&["replay", &id]).expect_code(11);
}
