//! Bundles end to end, without a host: write one, store it, export it, read it back, and catch
//! every kind of tampering with the right error.

use guild_replay::archive::{self, ArchiveError, ArchiveLimits};
use guild_replay::tree::{self, TreeLimits};
use guild_replay::{
    Action, BlobStore, Bundle, BundleWriter, DirStore, Effect, FORMAT, HostKey, RunResult, Sealed, Tape, ToolRef,
    Unsigned, VerifyError,
};
use std::io::{Read, Write};

struct Scene {
    _dir: tempfile::TempDir,
    store: DirStore,
    key: HostKey,
    sealed: Sealed,
}

fn scene() -> Scene {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(dir.path().join("store")).expect("store");
    let key = HostKey::generate().expect("key");
    let mount = dir.path().join("mount");
    std::fs::create_dir_all(mount.join("sub")).expect("mkdir");
    std::fs::write(mount.join("sub/file.txt"), "mounted contents").expect("write");

    let mut writer = BundleWriter::new(&store);
    let component = writer.add_blob(b"\0asm component bytes").expect("component");
    let input = writer.add_blob(br#"{"path":"/data"}"#).expect("input");
    let output = writer.add_blob(br#"{"ok":true}"#).expect("output");
    let tree = tree::capture(&mount, &store, TreeLimits::default()).expect("tree");
    writer.add_tree(&tree.root, TreeLimits::default()).expect("add tree");
    let mut tape = Tape::new();
    tape.push(0, Effect::RandomSeed { seed: "ab".repeat(32) }).expect("push");
    tape.push(
        0,
        Effect::Mount {
            guest_path: "/data".into(),
            access: "read-only".into(),
            tree: tree.root,
            entries: tree.entries,
            bytes: tree.bytes,
        },
    )
    .expect("push");
    tape.push(1234, Effect::WallClock { seconds: 1_800_000_000, nanoseconds: 1 }).expect("push");
    let action = Action {
        format: FORMAT.into(),
        component,
        tool: ToolRef { name: "wc".into(), version: "0.1.0".into(), revision: None },
        input,
        policy: guild_vocab::EffectivePolicy::default(),
        limits: guild_vocab::Limits { fuel_units: 1000, ..Default::default() },
        engine: guild_vocab::EngineFingerprint { engine: "wasmtime 48.0.8".into(), ..Default::default() },
        principal: None,
        action_digest: None,
    };
    let result = RunResult {
        outcome: guild_vocab::Outcome::Output { output: String::new() },
        output: Some(output),
        fuel_used_units: 5000,
        output_trees: vec![],
        tape_head: tape.head(),
        tape_events: tape.events().len() as u64,
    };
    let exec = serde_json::json!({"host": "test"});
    let sealed = writer.seal(&action, &tape, &result, &exec, &key).expect("seal");
    store.put_bundle(&sealed.id, &sealed.manifest, &sealed.signature).expect("put bundle");
    Scene { _dir: dir, store, key, sealed }
}

fn open(scene: &Scene) -> Result<Bundle, VerifyError> {
    Bundle::open(&scene.store, &scene.sealed.manifest, &scene.sealed.signature, Some(&scene.key.public()))
}

fn export(scene: &Scene) -> Vec<u8> {
    let mut out = Vec::new();
    archive::export(&scene.store, &scene.sealed.manifest, &scene.sealed.signature, &mut out).expect("export");
    out
}

fn open_archive(bytes: &[u8]) -> Result<Bundle, String> {
    let imported = archive::import(bytes, ArchiveLimits::default()).map_err(|e| e.to_string())?;
    Bundle::open(&imported.store, &imported.manifest, &imported.signature, None).map_err(|e| e.to_string())
}

/// Rewrite the tar inside an archive with `edit` applied to each (name, bytes) entry.
fn rewrite(archive_bytes: &[u8], edit: impl Fn(&str, &mut Vec<u8>)) -> Vec<u8> {
    let mut entries = Vec::new();
    let decoder = zstd::stream::Decoder::new(archive_bytes).expect("zstd");
    let mut tar = tar::Archive::new(decoder);
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read");
        edit(&name, &mut bytes);
        entries.push((name, bytes));
    }
    pack(&entries)
}

fn pack(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in entries {
        // Names are written raw: the tar crate refuses to write `..`, a hostile packer does not.
        let mut header = tar::Header::new_gnu();
        let raw = &mut header.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, bytes.as_slice()).expect("append");
    }
    let tar_bytes = builder.into_inner().expect("tar");
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).expect("zstd");
    encoder.write_all(&tar_bytes).expect("write");
    encoder.finish().expect("finish")
}

#[test]
fn a_bundle_verifies_from_the_store_and_from_its_archive() {
    let scene = scene();
    let bundle = open(&scene).expect("verifies");
    assert_eq!(bundle.id, scene.sealed.id);
    assert_eq!(bundle.signer, scene.key.public());
    assert_eq!(bundle.tape.events().len(), 3);
    assert_eq!(bundle.input(&scene.store).expect("input"), r#"{"path":"/data"}"#);

    let packed = export(&scene);
    assert_eq!(packed, export(&scene), "the same bundle must pack to the same bytes");
    let again = open_archive(&packed).expect("archive verifies");
    assert_eq!(again.id, bundle.id);
}

#[test]
fn blobs_are_shared_between_bundles() {
    let scene = scene();
    let count = || {
        std::fs::read_dir(scene.store.root().join("blobs"))
            .expect("dir")
            .flatten()
            .map(|shard| std::fs::read_dir(shard.path()).expect("shard").count())
            .sum::<usize>()
    };
    let before = count();
    let mut writer = BundleWriter::new(&scene.store);
    writer.add_blob(b"\0asm component bytes").expect("same component");
    assert_eq!(count(), before);
}

/// Changes an archive entry (name, bytes) in place.
type EntryEdit = dyn Fn(&str, &mut Vec<u8>);

#[test]
fn tampering_with_any_part_is_caught_with_its_class() {
    let scene = scene();
    let packed = export(&scene);
    let flip_last = |bytes: &mut Vec<u8>| {
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
    };
    let cases: Vec<(&str, Box<EntryEdit>, &str)> = vec![
        (
            "a blob byte",
            Box::new(move |n, b| {
                if n.starts_with("blobs/") {
                    flip_last(b)
                }
            }),
            "corrupt",
        ),
        (
            "the manifest",
            Box::new(|n, b| {
                if n == "manifest.json" {
                    *b = String::from_utf8_lossy(b).replace("\"format\"", "\"format\" ").into_bytes()
                }
            }),
            "manifest is invalid",
        ),
        (
            "the tape",
            Box::new(|n, b| {
                if n == "tape.jsonl" {
                    *b = String::from_utf8_lossy(b).replace("1234", "1235").into_bytes()
                }
            }),
            "corrupt",
        ),
        (
            "the signature",
            Box::new(|n, b| {
                if n == "signature" {
                    let s = String::from_utf8_lossy(b).into_owned();
                    let i = s.find("\"signature\":\"").expect("field") + 13;
                    let mut s = s.into_bytes();
                    s[i] = if s[i] == b'0' { b'1' } else { b'0' };
                    *b = s
                }
            }),
            "signature does not verify",
        ),
        (
            "result.json",
            Box::new(|n, b| {
                if n == "result.json" {
                    *b = String::from_utf8_lossy(b).replace("5000", "5001").into_bytes()
                }
            }),
            "corrupt",
        ),
    ];
    for (what, edit, expected) in cases {
        let err = open_archive(&rewrite(&packed, edit)).expect_err(what);
        assert!(err.contains(expected), "{what}: {err}");
    }
}

#[test]
fn a_consistent_forgery_fails_the_signature() {
    // Re-hash everything after an edit: digests line up, but the signature no longer does.
    let scene = scene();
    let bundle = open(&scene).expect("verifies");
    let mut result = bundle.result.clone();
    result.fuel_used_units += 1;
    let mut writer = BundleWriter::new(&scene.store);
    writer.add_blob(b"\0asm component bytes").expect("blob");
    let forged = writer
        .seal(&bundle.action, &bundle.tape, &result, &bundle.exec, &HostKey::generate().expect("key"))
        .expect("seal");
    let err = Bundle::open(&scene.store, &forged.manifest, &scene.sealed.signature, None).expect_err("forged");
    assert!(matches!(err, VerifyError::Signature(_)), "{err}");
    let err = Bundle::open(&scene.store, &forged.manifest, &forged.signature, Some(&scene.key.public()))
        .expect_err("wrong key");
    assert!(err.to_string().contains("not by the required key"), "{err}");
}

/// Seal `count` variants of the scene's bundle (another exec each, named by `batch` and a
/// number) in one batch: one signature.
fn seal_batch(scene: &Scene, batch: &str, count: usize) -> Vec<Sealed> {
    let bundle = open(scene).expect("verifies");
    let unsigned: Vec<Unsigned> = (0..count)
        .map(|i| {
            let mut writer = BundleWriter::new(&scene.store);
            for blob in &bundle.manifest.blobs {
                writer.add_stored(blob).expect("stored");
            }
            let exec = serde_json::json!({"host": "test", "batch": batch, "run": i});
            writer.finish(&bundle.action, &bundle.tape, &bundle.result, &exec).expect("finish")
        })
        .collect();
    let ids: Vec<_> = unsigned.iter().map(|u| u.id).collect();
    unsigned.into_iter().zip(scene.key.sign_batch(&ids)).map(|(u, s)| u.sign(&s)).collect()
}

#[test]
fn each_bundle_of_a_batch_verifies_alone_from_its_archive_and_no_other_signature_fits() {
    let scene = scene();
    let batch = seal_batch(&scene, "first", 5);
    let archives: Vec<Vec<u8>> = batch
        .iter()
        .map(|sealed| {
            let mut out = Vec::new();
            archive::export(&scene.store, &sealed.manifest, &sealed.signature, &mut out).expect("export");
            out
        })
        .collect();
    for (sealed, packed) in batch.iter().zip(&archives) {
        assert_eq!(open_archive(packed).expect("verifies alone").id, sealed.id);
    }
    let text = String::from_utf8(batch[1].signature.clone()).expect("utf-8");
    assert!(text.contains(r#""leaf_index":1,"#) && text.contains(r#""tree_size":5"#), "{text}");

    // Another bundle's signature document, from the same batch or from another one.
    let signature_of = |sealed: &Sealed| {
        let signature = sealed.signature.clone();
        move |name: &str, bytes: &mut Vec<u8>| {
            if name == "signature" {
                bytes.clone_from(&signature)
            }
        }
    };
    let swapped = open_archive(&rewrite(&archives[1], signature_of(&batch[2]))).expect_err("swapped in the batch");
    assert!(swapped.contains("batch signature does not verify") && swapped.contains("as leaf 2 of 5"), "{swapped}");
    let other_batch = seal_batch(&scene, "second", 3);
    let moved = open_archive(&rewrite(&archives[1], signature_of(&other_batch[1]))).expect_err("another batch");
    assert!(moved.contains("as leaf 1 of 3"), "{moved}");

    // The document's batch edited in place.
    let edit_signature = |from: &'static str, to: &'static str| {
        move |name: &str, bytes: &mut Vec<u8>| {
            if name == "signature" {
                let text = String::from_utf8_lossy(bytes).into_owned();
                assert!(text.contains(from), "{text} has no {from}");
                *bytes = text.replacen(from, to, 1).into_bytes();
            }
        }
    };
    let cases: [(&str, &str, &str); 3] = [
        (r#""leaf_index":1"#, r#""leaf_index":0"#, "as leaf 0 of 5"),
        (r#""leaf_index":1"#, r#""leaf_index":5"#, "cannot place a bundle at leaf 5 of 5"),
        (r#""tree_size":5"#, r#""tree_size":6"#, "as leaf 1 of 6"),
    ];
    for (from, to, expected) in cases {
        let err = open_archive(&rewrite(&archives[1], edit_signature(from, to))).expect_err(to);
        assert!(err.contains(expected), "{from} -> {to}: {err}");
    }
    let flip_path = |name: &str, bytes: &mut Vec<u8>| {
        if name == "signature" {
            let at = String::from_utf8_lossy(bytes).find(r#""path":[""#).expect("a path") + 9;
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
        }
    };
    let err = open_archive(&rewrite(&archives[1], flip_path)).expect_err("a path node");
    assert!(err.contains("batch signature does not verify"), "{err}");
}

#[test]
fn a_bundle_signed_alone_in_the_form_before_batching_still_verifies() {
    let scene = scene();
    let single = scene.key.sign_single(&scene.sealed.id);
    assert!(single.format.is_none() && single.batch.is_none());
    let signature = guild_replay::canonical::to_canonical_bytes(&single).expect("json");
    assert!(!String::from_utf8_lossy(&signature).contains("format"));
    let bundle = Bundle::open(&scene.store, &scene.sealed.manifest, &signature, Some(&scene.key.public()))
        .expect("the single form verifies");
    assert_eq!(bundle.id, scene.sealed.id);
    let mut out = Vec::new();
    archive::export(&scene.store, &scene.sealed.manifest, &signature, &mut out).expect("export");
    assert_eq!(open_archive(&out).expect("from its archive").id, scene.sealed.id);
    let other = scene.key.sign_single(&guild_replay::Digest::of(b"another bundle"));
    let other = guild_replay::canonical::to_canonical_bytes(&other).expect("json");
    let err = Bundle::open(&scene.store, &scene.sealed.manifest, &other, None).expect_err("another id's");
    assert!(matches!(err, VerifyError::Signature(guild_replay::SignatureError::Invalid { .. })), "{err}");
}

#[test]
fn malformed_archives_get_clear_errors() {
    let scene = scene();
    let packed = export(&scene);
    let truncated = &packed[..packed.len() / 2];
    assert!(open_archive(truncated).expect_err("truncated").contains("not a readable bundle archive"));
    assert!(open_archive(b"plain text").expect_err("text").contains("not a readable bundle archive"));

    let escaping = rewrite(&packed, |_, _| {});
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let decoder = zstd::stream::Decoder::new(escaping.as_slice()).expect("zstd");
    for entry in tar::Archive::new(decoder).entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut bytes = Vec::new();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        entry.read_to_end(&mut bytes).expect("read");
        entries.push((name, bytes));
    }
    let mut with_escape = entries.clone();
    with_escape.push(("../../etc/evil".into(), b"x".to_vec()));
    assert!(open_archive(&pack(&with_escape)).expect_err("escape").contains("is not part of a bundle"));
    let mut duplicated = entries.clone();
    duplicated.push(entries[0].clone());
    assert!(open_archive(&pack(&duplicated)).expect_err("dup").contains("appears twice"));
    let mut stray = entries.clone();
    stray.push((format!("blobs/{}", "0".repeat(64)), b"zz".to_vec()));
    assert!(open_archive(&pack(&stray)).expect_err("stray blob").contains("is corrupt"));
    let missing: Vec<_> = entries.iter().filter(|(n, _)| n != "tape.jsonl").cloned().collect();
    assert!(open_archive(&pack(&missing)).expect_err("missing").contains("has no tape.jsonl"));

    let tight = ArchiveLimits { total_bytes_max: 100, ..ArchiveLimits::default() };
    let err = archive::import(packed.as_slice(), tight).err().expect("bomb guard");
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
}

#[test]
fn a_decompression_bomb_entry_is_refused_before_it_is_read() {
    // 64 MiB of zeros compresses to a few KiB; the header's size is checked before reading.
    let bomb = pack(&[("blobs/".to_string() + &"ab".repeat(32), vec![0u8; 64 << 20])]);
    assert!(bomb.len() < 1 << 20, "the bomb is small on disk: {} bytes", bomb.len());
    let limits = ArchiveLimits { entry_bytes_max: 1 << 20, ..ArchiveLimits::default() };
    let err = archive::import(bomb.as_slice(), limits).err().expect("refused");
    assert!(err.to_string().contains("entry_bytes_max"), "{err}");
}

#[test]
fn a_tree_entry_escaping_its_root_is_refused() {
    let scene = scene();
    let bundle = open(&scene).expect("verifies");
    let evil_file = scene.store.put(b"evil").expect("put");
    let node = format!(
        r#"{{"dirs":[],"files":[{{"digest":"{evil_file}","name":"../escape","size_bytes":4}}],"symlinks":[]}}"#
    );
    let evil_root = scene.store.put(node.as_bytes()).expect("put");
    let mut tape = Tape::new();
    tape.push(
        0,
        Effect::Mount { guest_path: "/data".into(), access: "read-only".into(), tree: evil_root, entries: 1, bytes: 4 },
    )
    .expect("push");
    let result = RunResult { tape_head: tape.head(), tape_events: 1, ..bundle.result.clone() };
    let mut writer = BundleWriter::new(&scene.store);
    for digest in [bundle.action.component, bundle.action.input] {
        writer.add_blob(&scene.store.get(&digest.digest).expect("blob")).expect("add");
    }
    writer.add_blob(&scene.store.get(&bundle.result.output.expect("output").digest).expect("blob")).expect("add");
    writer.add_blob(node.as_bytes()).expect("node");
    writer.add_blob(b"evil").expect("file");
    let sealed = writer.seal(&bundle.action, &tape, &result, &bundle.exec, &scene.key).expect("seal");
    let err = Bundle::open(&scene.store, &sealed.manifest, &sealed.signature, None).expect_err("escape");
    assert!(err.to_string().contains("is not a plain name"), "{err}");
}

/// A seeded stand-in for the fuzz target (`fuzz/`): thousands of mutated archives, each must be
/// rejected or accepted with an answer, never a panic or a hang.
#[test]
#[expect(clippy::cast_possible_truncation, reason = "random bits cut to the size needed")]
fn mutated_archives_never_crash_the_reader() {
    let scene = scene();
    let packed = export(&scene);
    let tar_bytes = {
        let mut out = Vec::new();
        zstd::stream::Decoder::new(packed.as_slice()).expect("zstd").read_to_end(&mut out).expect("read");
        out
    };
    let mut state: u64 = 0x5eed_1234_abcd_0001;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut accepted = 0;
    for round in 0..2000 {
        // Mutate the tar inside (so the zstd layer does not reject everything up front).
        let mut mutated = tar_bytes.clone();
        match round % 4 {
            0 => {
                let i = (next() as usize) % mutated.len();
                mutated[i] ^= 1 << (next() % 8);
            }
            1 => mutated.truncate((next() as usize) % mutated.len()),
            2 => {
                let i = (next() as usize) % mutated.len();
                let len = ((next() % 64) as usize).min(mutated.len() - i);
                for byte in &mut mutated[i..i + len] {
                    *byte = next() as u8;
                }
            }
            _ => {
                let i = (next() as usize) % mutated.len();
                mutated.insert(i, next() as u8);
            }
        }
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).expect("zstd");
        encoder.write_all(&mutated).expect("write");
        let archive_bytes = encoder.finish().expect("finish");
        if open_archive(&archive_bytes).is_ok() {
            accepted += 1;
        }
    }
    // Flips in tar padding or header fields the reader ignores leave a valid bundle; anything
    // that reaches content must not verify.
    assert!(accepted < 1000, "{accepted} of 2000 mutations accepted");
}

#[test]
fn a_signature_document_has_one_encoding_and_a_size_bound() {
    let scene = scene();
    let open_with = |signature: &[u8]| Bundle::open(&scene.store, &scene.sealed.manifest, signature, None);
    open_with(&scene.sealed.signature).expect("as written");
    let text = String::from_utf8(scene.sealed.signature.clone()).expect("utf-8");
    let malformed = |signature: &[u8]| match open_with(signature) {
        Err(VerifyError::Signature(guild_replay::SignatureError::Malformed(why))) => why,
        other => panic!("expected a malformed signature, got {:?}", other.map(|b| b.id)),
    };
    // The same signature, re-encoded: each would verify by value, none is its one encoding.
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    let upper = text.replace(
        &value["signature"].as_str().expect("hex").to_string(),
        &value["signature"].as_str().expect("hex").to_uppercase(),
    );
    assert!(malformed(upper.as_bytes()).contains("one encoding"));
    let pretty = serde_json::to_vec_pretty(&value).expect("json");
    assert!(malformed(&pretty).contains("one encoding"));
    let escaped = text.replace("guild-signature/2", "guild-signature\\u002f2");
    assert_ne!(escaped, text);
    assert!(malformed(escaped.as_bytes()).contains("one encoding"));
    let single = guild_replay::canonical::to_canonical_bytes(&scene.key.sign_single(&scene.sealed.id)).expect("json");
    open_with(&single).expect("the single form as written");
    let nulls = String::from_utf8(single).expect("utf-8").replacen('{', r#"{"batch":null,"format":null,"#, 1);
    assert!(malformed(nulls.as_bytes()).contains("one encoding"));
    // Past the bound it is refused before it is parsed (a long path would otherwise be read whole).
    let mut huge = text.into_bytes();
    huge.extend(std::iter::repeat_n(b' ', guild_replay::SIGNATURE_DOCUMENT_BYTES_MAX));
    assert!(malformed(&huge).contains("SIGNATURE_DOCUMENT_BYTES_MAX"));
}
