//! Builds the example tools written in other languages, with the toolchains `scripts/setup.sh`
//! installs (pinned): Python tools (a directory with `app.py`) with componentize-py, JavaScript
//! tools (a directory with `package.json`) with their own `npm run build` (componentize-js).
//!
//! Each build takes tens of seconds, so a tool is rebuilt only when its sources, the WIT or the
//! toolchain changed since its last build (a stamp file beside the component).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `scripts/setup.sh` installs componentize-py (`pip install --target`).
const PYTHON_TOOLCHAIN: &str = ".toolchains/python";

/// The language a non-Rust tool is written in.
#[derive(Clone, Copy)]
pub(crate) enum Lang {
    Python,
    JavaScript,
}

/// A tool under `tools/` that is not a Rust crate.
pub(crate) struct LangTool {
    pub(crate) dir: PathBuf,
    pub(crate) lang: Lang,
    /// `summarize-csv` → `summarize_csv`, as Rust artifacts are named.
    pub(crate) artifact: String,
}

/// Every Python or JavaScript tool directly under `dir`, sorted.
pub(crate) fn lang_tools_in(dir: &Path) -> Vec<LangTool> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    entries.sort();
    entries
        .into_iter()
        .filter(|d| !d.join("Cargo.toml").exists())
        .filter_map(|d| {
            let lang = if d.join("app.py").is_file() {
                Lang::Python
            } else if d.join("package.json").is_file() {
                Lang::JavaScript
            } else {
                return None;
            };
            let name = d.file_name()?.to_str()?.to_string();
            Some(LangTool { artifact: name.replace('-', "_"), dir: d, lang })
        })
        .collect()
}

/// The source files of `tool` that its build reads (not `node_modules`, not caches).
fn sources(tool: &LangTool) -> Vec<PathBuf> {
    let names: &[&str] = match tool.lang {
        Lang::Python => &["app.py"],
        Lang::JavaScript => &["app.js", "build.mjs", "package.json", "package-lock.json"],
    };
    names.iter().map(|n| tool.dir.join(n)).filter(|p| p.exists()).collect()
}

/// Tell cargo which files rebuild `tool`.
pub(crate) fn watch(root: &Path, tool: &LangTool) {
    for source in sources(tool) {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    if let Lang::Python = tool.lang {
        println!("cargo:rerun-if-changed={}", root.join(PYTHON_TOOLCHAIN).display());
    }
}

/// Build `tool` into `out_dir/<artifact>.wasm` unless its stamp says nothing changed.
pub(crate) fn build(root: &Path, tool: &LangTool, out_dir: &Path) -> PathBuf {
    let out = out_dir.join(format!("{}.wasm", tool.artifact));
    let stamp_path = out.with_extension("stamp");
    let stamp = stamp(root, tool);
    if out.exists() && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return out;
    }
    std::fs::create_dir_all(out_dir).expect("target directory is writable");
    let _ = std::fs::remove_file(&stamp_path);
    let status = match tool.lang {
        Lang::Python => python(root, tool, &out),
        Lang::JavaScript => javascript(tool, &out),
    };
    assert!(status.success(), "building {} failed (see the output above)", tool.dir.display());
    std::fs::write(&stamp_path, stamp).expect("target directory is writable");
    out
}

fn python(root: &Path, tool: &LangTool, out: &Path) -> std::process::ExitStatus {
    let toolchain = root.join(PYTHON_TOOLCHAIN);
    let script = toolchain.join("bin/componentize-py");
    assert!(
        script.is_file(),
        "componentize-py is not installed in {} (needed to build {}); run `bash scripts/setup.sh`",
        toolchain.display(),
        tool.dir.display()
    );
    Command::new("python3")
        .arg(&script)
        .arg("--wit-path")
        .arg(root.join("wit"))
        .args(["--world", "guild-tool", "--quiet", "componentize", "app", "--output"])
        .arg(out)
        .current_dir(&tool.dir)
        .env("PYTHONPATH", &toolchain)
        // Keep the source tree free of __pycache__ (it is watched for changes).
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .unwrap_or_else(|e| {
            panic!("python3 could not be started ({e}); install Python 3.11 and pip, then run `bash scripts/setup.sh`")
        })
}

fn javascript(tool: &LangTool, out: &Path) -> std::process::ExitStatus {
    let componentize_js = tool.dir.join("node_modules/@bytecodealliance/componentize-js");
    assert!(
        componentize_js.is_dir(),
        "{} is missing (needed to build {}); run `bash scripts/setup.sh`",
        componentize_js.display(),
        tool.dir.display()
    );
    Command::new("node").arg("build.mjs").arg(out).current_dir(&tool.dir).status().unwrap_or_else(|e| {
        panic!("node could not be started ({e}); install Node.js 20, then run `bash scripts/setup.sh`")
    })
}

/// A digest of everything the build reads: the sources, the WIT, the toolchain's version.
fn stamp(root: &Path, tool: &LangTool) -> String {
    let mut hasher = DefaultHasher::new();
    let mut inputs = sources(tool);
    inputs.push(root.join("wit/guild.wit"));
    match tool.lang {
        Lang::Python => inputs.extend(dist_info(&root.join(PYTHON_TOOLCHAIN))),
        Lang::JavaScript => {
            inputs.push(tool.dir.join("node_modules/@bytecodealliance/componentize-js/package.json"));
        }
    }
    for input in inputs {
        input.hash(&mut hasher);
        std::fs::read(&input).unwrap_or_default().hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// The `*.dist-info/METADATA` files of an installed Python toolchain (they name its version).
fn dist_info(toolchain: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(toolchain)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path().join("METADATA"))).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    found.sort();
    found
}
