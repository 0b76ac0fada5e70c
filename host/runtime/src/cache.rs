//! The compiled-component cache on disk: `<home>/cache/<engine fingerprint>/<component blake3>.cwasm`
//! (a preview-1 module's: `<module blake3>.module.cwasm`),
//! with a `.blake3` sidecar holding the artifact's own hash so that a truncated or damaged file
//! is recompiled instead of loaded. Keyed by the fingerprint, an engine upgrade never loads an
//! artifact built by another engine.
//!
//! A compiled artifact is machine code the host will run, so only a cache no one else can write
//! is read: the directory and its parent must belong to this process's user and be writable by
//! no one else (directories the cache creates are `0700`). The sidecar is an unkeyed hash: it
//! catches damage, not a forger — the ownership check is what keeps other users out, and this
//! user could run its own code anyway.

use crate::error::LoadError;
use guild_replay::Digest;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

/// Where a loaded tool's compiled code came from; reported so cold and warm paths can be measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheSource {
    /// Already loaded in this process.
    Memory,
    /// Deserialized from the disk cache.
    Disk,
    /// Compiled now (and written to the disk cache).
    Compiled,
}

/// The on-disk half of the cache.
#[derive(Clone)]
pub(crate) struct DiskCache {
    dir: Option<PathBuf>,
}

impl DiskCache {
    /// A cache under `dir` (created on first write), or none.
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// Load `digest` from disk, or compile `bytes` and store the artifact.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(Component, CacheSource), LoadError> {
        if let Some(component) = self.dir.as_deref().and_then(|dir| load(engine, dir, digest)) {
            return Ok((component, CacheSource::Disk));
        }
        let artifact = engine.precompile_component(bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let component = deserialize(engine, &artifact).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        if let Some(dir) = &self.dir {
            // A cache that cannot be written only costs a recompile next time.
            let _ = store(dir, digest, &artifact);
        }
        Ok((component, CacheSource::Compiled))
    }

    /// Load the preview-1 module `digest` from disk (`<digest>.module.cwasm`), or compile `bytes`
    /// and store the artifact.
    pub(crate) fn load_or_compile_module(
        &self,
        engine: &Engine,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(Module, CacheSource), LoadError> {
        let key = format!("{digest}.module");
        if let Some(artifact) = self.dir.as_deref().and_then(|dir| read_artifact(dir, &key))
            && let Ok(module) = deserialize_module(engine, &artifact)
        {
            return Ok((module, CacheSource::Disk));
        }
        let artifact = engine.precompile_module(bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let module = deserialize_module(engine, &artifact).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        if let Some(dir) = &self.dir {
            let _ = store(dir, &key, &artifact);
        }
        Ok((module, CacheSource::Compiled))
    }
}

impl DiskCache {
    /// Guild's own component `bytes` (not a tool's), compiled, from the first of `caches` that
    /// keeps it under `key` — its file mapped, not read, copied or hashed, so that loading
    /// megabytes of code costs only the pages that run — else compiled now and kept in each of
    /// `caches`.
    ///
    /// The sidecar hash is not checked here: a tool's artifact is read whole anyway, but this one
    /// is read at every start of every process. What makes it safe to map is what makes any
    /// artifact safe to load: a directory only this user can write (checked), files written whole
    /// and renamed into place, and wasmtime's own check of the engine that produced it.
    pub(crate) fn load_or_compile_own(
        caches: &[&DiskCache],
        engine: &Engine,
        key: &str,
        bytes: &[u8],
    ) -> Result<Component, LoadError> {
        for dir in caches.iter().filter_map(|cache| cache.dir.as_deref()) {
            if !only_this_user_writes(dir) {
                continue;
            }
            let (artifact_path, _) = paths(dir, &key);
            if only_this_user_writes_file(&artifact_path)
                && let Ok(component) = deserialize_file(engine, &artifact_path)
            {
                return Ok(component);
            }
        }
        let artifact = engine.precompile_component(bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let component = deserialize(engine, &artifact).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        for dir in caches.iter().filter_map(|cache| cache.dir.as_deref()) {
            // A cache that cannot be written only costs a compile in the next process.
            let _ = store(dir, &key, &artifact);
        }
        Ok(component)
    }

    /// The component a preview-1 module with digest `module` was adapted into, when the cache
    /// holds it whole (`<module blake3>.adapted.wasm`, its blake3 in the sidecar).
    pub(crate) fn adapted(&self, module: &Digest) -> Option<Vec<u8>> {
        let dir = self.dir.as_deref()?;
        let (component_path, sum_path) = adapted_paths(dir, module);
        let component = std::fs::read(&component_path).ok()?;
        let sum = std::fs::read_to_string(&sum_path).ok()?;
        if Digest::of(&component).to_hex() != sum.trim() {
            let _ = std::fs::remove_file(&component_path);
            return None;
        }
        Some(component)
    }

    /// Keep the component adapted from the module with digest `module`; a cache that cannot be
    /// written only costs adapting it again next time.
    pub(crate) fn keep_adapted(&self, module: &Digest, component: &[u8]) {
        let Some(dir) = self.dir.as_deref() else { return };
        let (component_path, sum_path) = adapted_paths(dir, module);
        let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).and_then(|()| {
            write_atomically(&component_path, component)?;
            write_atomically(&sum_path, Digest::of(component).to_hex().as_bytes())
        });
    }
}

fn adapted_paths(dir: &Path, module: &Digest) -> (PathBuf, PathBuf) {
    (dir.join(format!("{module}.adapted.wasm")), dir.join(format!("{module}.adapted.blake3")))
}

/// The artifact and sidecar paths for `key` (a component's digest, or `<digest>.module`).
fn paths(dir: &Path, key: &dyn std::fmt::Display) -> (PathBuf, PathBuf) {
    (dir.join(format!("{key}.cwasm")), dir.join(format!("{key}.blake3")))
}

fn load(engine: &Engine, dir: &Path, digest: &Digest) -> Option<Component> {
    deserialize(engine, &read_artifact(dir, digest)?).ok()
}

/// The artifact kept under `key`, when only this user can have written it and it is whole.
fn read_artifact(dir: &Path, key: &dyn std::fmt::Display) -> Option<Vec<u8>> {
    if !only_this_user_writes(dir) {
        return None;
    }
    let (artifact_path, sum_path) = paths(dir, key);
    let artifact = std::fs::read(&artifact_path).ok()?;
    let sum = std::fs::read_to_string(&sum_path).ok()?;
    if Digest::of(&artifact).to_hex() != sum.trim() {
        let _ = std::fs::remove_file(&artifact_path);
        return None;
    }
    Some(artifact)
}

fn store(dir: &Path, digest: &dyn std::fmt::Display, artifact: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let (artifact_path, sum_path) = paths(dir, digest);
    write_atomically(&artifact_path, artifact)?;
    write_atomically(&sum_path, Digest::of(artifact).to_hex().as_bytes())
}

/// Write to a temporary file beside `path` and rename it into place, so concurrent processes
/// never see half a file.
///
/// The temporary file has a random name (processes in different containers sharing a cache
/// volume can have the same pid) and mode 0600 whatever the umask, so the file kept is whole and
/// this user's alone.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp.").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

/// Whether `file` is a file of this process's user that no one else may write (one kept by
/// `write_atomically`, in a directory `only_this_user_writes` has checked).
fn only_this_user_writes_file(file: &Path) -> bool {
    std::fs::symlink_metadata(file).is_ok_and(|meta| meta.is_file() && mine_alone(&meta))
}

/// Whether `dir` and its parent belong to this process's user and no one else may write them.
fn only_this_user_writes(dir: &Path) -> bool {
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .all(|d| std::fs::metadata(d).is_ok_and(|meta| meta.is_dir() && mine_alone(&meta)))
}

/// Whether `meta` names this process's user as owner and gives no one else write permission.
fn mine_alone(meta: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let me = unsafe { libc::geteuid() };
    meta.uid() == me && meta.mode() & 0o022 == 0
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` is either what `precompile_component` just produced in this process,
    // or a file read from a cache directory that only this user can write
    // (`only_this_user_writes`), whose blake3 matches the sidecar written with it (so it is
    // whole). wasmtime also checks that a compatible engine produced it.
    unsafe { Component::deserialize(engine, artifact) }
}

#[allow(unsafe_code)]
fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file is this user's, writable by no one else, in a directory only this user can
    // write (`only_this_user_writes_file` and `only_this_user_writes`, checked by the caller), and
    // was written whole, under a temporary name renamed into place (`write_atomically`); wasmtime
    // checks that a compatible engine produced it. It stays mapped
    // while the component lives: a file replaced by rename keeps its mapping.
    unsafe { Component::deserialize_file(engine, path) }
}

#[allow(unsafe_code)]
fn deserialize_module(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: as for `deserialize`: produced by `precompile_module` in this process, or read
    // whole from a cache directory only this user can write.
    unsafe { Module::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_cache_others_can_write_is_not_read() {
        let home = tempfile::tempdir().expect("tempdir");
        let dir = home.path().join("cache");
        std::fs::DirBuilder::new().mode(0o700).create(&dir).expect("mkdir");
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(only_this_user_writes(&dir));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(!only_this_user_writes(&dir), "world-writable");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o775)).expect("chmod");
        assert!(!only_this_user_writes(&dir), "a group-writable parent can swap the directory");
    }
}
