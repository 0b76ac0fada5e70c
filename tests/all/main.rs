//! End-to-end tests: the real `guild` binary and the real runtime, against the real example tools
//! and hostile fixtures built for wasm32-wasip2 by `guild-test-artifacts`, on real directories.
//! One test binary with a module per area, so it links once.

mod cache;
mod cli;
mod commands;
mod commands_preview1;
mod console;
mod contained;
mod cost;
mod daemon;
mod egress;
mod failover;
mod gate;
mod gpu;
mod hostile;
mod isolation;
mod lanes;
mod lang;
mod limits;
mod mcp;
mod oauth;
mod redis;
mod replay;
mod rollout;
mod runtime_api;
mod scaffold;
mod serve;
mod telemetry;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A `guild` with its own fresh home directory.
pub(crate) struct Guild {
    home: tempfile::TempDir,
    /// A home kept between test runs (compiled-component cache, host key), when set; `home`
    /// then holds only this `Guild`'s bundle store.
    shared_home: Option<PathBuf>,
}

/// What one `guild` invocation did.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

impl Ran {
    /// The stdout parsed as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The `--summary-json` line on stderr.
    pub(crate) fn summary(&self) -> serde_json::Value {
        let line = self.stderr.lines().last().unwrap_or_else(|| panic!("no summary: {self:?}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {self:?}"))
    }

    /// Assert the exit code, showing everything when it is wrong.
    #[track_caller]
    pub(crate) fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }

    /// Assert stderr mentions `text`.
    #[track_caller]
    pub(crate) fn expect_stderr(&self, text: &str) -> &Self {
        assert!(self.stderr.contains(text), "stderr lacks {text:?}: {self:#?}");
        self
    }
}

impl Guild {
    pub(crate) fn new() -> Self {
        Self { home: tempfile::tempdir().expect("tempdir"), shared_home: None }
    }

    /// A `guild` whose compiled-component cache lives in `shared_home` (kept between runs, so
    /// large components compile once), with a fresh bundle store of its own.
    pub(crate) fn with_shared_cache(shared_home: &Path) -> Self {
        Self { home: tempfile::tempdir().expect("tempdir"), shared_home: Some(shared_home.to_path_buf()) }
    }

    pub(crate) fn home(&self) -> &Path {
        self.home.path()
    }

    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_guild"));
        match &self.shared_home {
            Some(shared) => command.env("GUILD_HOME", shared).env("GUILD_STORE", self.home.path()),
            None => command.env("GUILD_HOME", self.home.path()).env_remove("GUILD_STORE"),
        };
        command.env_remove("RUST_BACKTRACE");
        command
    }

    /// Run `guild ARGS...` to completion.
    pub(crate) fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Ran {
        let started = Instant::now();
        let output = self.command().args(args).output().expect("guild starts");
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// `guild ARGS` naming a bundle that a daemon still running on this home has just sealed.
    /// The daemon's store writes behind its answer (a few milliseconds, longer on a loaded
    /// machine), so another process may not find the bundle at first: tried again while it says
    /// "no bundle", for up to 5 s.
    pub(crate) fn run_landed<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Ran {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let ran = self.run(args);
            if ran.code == 0 || !ran.stderr.contains("no bundle") || Instant::now() > deadline {
                return ran;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `guild run COMPONENT --input INPUT --summary-json EXTRA...`.
    pub(crate) fn run_tool(&self, component: &str, input: &str, extra: &[&str]) -> Ran {
        let mut args = vec!["run", component, "--input", input, "--summary-json"];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

/// A directory tree for a test: `files` are (relative path, contents).
pub(crate) fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, contents) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("has parent")).expect("mkdir");
        std::fs::write(full, contents).expect("write");
    }
    dir
}

/// `HOST::GUEST:MODE` for `--dir`.
pub(crate) fn mount(host: &Path, guest: &str, mode: &str) -> String {
    format!("{}::{guest}:{mode}", host.display())
}

/// Every file under `dir`, relative, sorted: to prove nothing was written where it must not be.
pub(crate) fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("readable").flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(dir).expect("under dir").to_path_buf());
            if entry.file_type().expect("file type").is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}
