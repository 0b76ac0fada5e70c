//! `guild tool new NAME`: write a tool crate that builds to a working component with one
//! command (`cargo build --release`; its `.cargo/config.toml` selects `wasm32-wasip2`). With
//! `--lang python|js`, a Python or JavaScript tool instead (`scaffold_lang.rs`).

use crate::args::{NewToolArgs, ToolLang};
use crate::exit::{Exit, Failure};
use std::path::{Path, PathBuf};

/// The SDK of the source tree this binary was built from.
const BUILT_SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk");

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
guild-sdk = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }

# Small, fast components.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true

# Not part of any enclosing workspace.
[workspace]
"#;

const CARGO_CONFIG: &str = r#"[build]
target = "wasm32-wasip2"
"#;

const LIB_RS: &str = r#"//! `{name}`: counts the words of a text and lists the most frequent ones.
//! Replace this with what your tool does.

use guild_sdk::prelude::*;
use std::collections::BTreeMap;

/// What the tool accepts. Doc comments become descriptions in the input JSON Schema.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The text to look at.
    text: String,
    /// How many of the most frequent words to return.
    #[serde(default = "default_top")]
    top: usize,
}

fn default_top() -> usize {
    3
}

/// What the tool returns.
#[derive(Serialize, JsonSchema)]
struct Output {
    /// Number of words.
    words: usize,
    /// The most frequent words, most frequent first.
    most_frequent: Vec<(String, usize)>,
}

fn run(input: Input) -> Result<Output, ToolError> {
    if input.top > 100 {
        return Err(ToolError::invalid_input("top must be at most 100"));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for word in input.text.split_whitespace() {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    let words = counts.values().sum();
    let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(input.top);
    guild_sdk::log::info(format!("counted {words} words"));
    Ok(Output { words, most_frequent: ranked })
}

guild_sdk::export_tool! {
    run: run,
    describe: Info::new("{name}", "Counts the words of a text and lists the most frequent ones."),
}
"#;

const README_MD: &str = r#"# {name}

A Guild tool.

Build it (the target, `wasm32-wasip2`, is set in `.cargo/config.toml`; install it once with
`rustup target add wasm32-wasip2`):

    cargo build --release

Run it:

    guild run target/wasm32-wasip2/release/{artifact}.wasm --input '{"text": "the cat saw the dog"}'

See what it declares (name, input schema, capabilities):

    guild describe target/wasm32-wasip2/release/{artifact}.wasm

To read files, ask for a directory in `describe` (`.dir("/data", Access::ReadOnly, "why")`) and
mount one when running: `guild run ... --dir ./docs::/data:ro`.
"#;

pub(crate) fn new_tool(args: NewToolArgs) -> Result<Exit, Failure> {
    check_name(&args.name)?;
    let dir = args.path.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        return Err(Failure::usage(format!("{} already exists; choose another name or --path", dir.display())));
    }
    if args.lang != ToolLang::Rust {
        return new_lang_tool(&args, &dir);
    }
    let sdk = sdk_dir(args.sdk.as_deref())?;
    let artifact = args.name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{name}", &args.name)
            .replace("{artifact}", &artifact)
            .replace("{sdk}", &sdk.display().to_string().replace('\\', "/"))
    };
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        (".cargo/config.toml", CARGO_CONFIG.to_string()),
        ("src/lib.rs", fill(LIB_RS)),
        ("README.md", fill(README_MD)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (relative, contents) in files {
        write(&dir.join(relative), &contents)?;
    }
    crate::out!("created {} ({} tool)", dir.display(), args.name);
    crate::out!("build:  cd {} && cargo build --release", dir.display());
    crate::out!(
        "run:    guild run {}/target/wasm32-wasip2/release/{artifact}.wasm --input '{{\"text\": \"hello hello world\"}}'",
        dir.display()
    );
    Ok(Exit::Success)
}

fn new_lang_tool(args: &NewToolArgs, dir: &Path) -> Result<Exit, Failure> {
    if args.sdk.is_some() {
        return Err(Failure::usage("--sdk is for Rust tools; Python and JavaScript tools need no SDK"));
    }
    let artifact = args.name.replace('-', "_");
    for (relative, contents) in crate::scaffold_lang::files(args.lang, &args.name, &artifact) {
        write(&dir.join(relative), &contents)?;
    }
    let lang = match args.lang {
        ToolLang::Python => "Python",
        _ => "JavaScript",
    };
    crate::out!("created {} ({} tool in {lang}; see its README.md)", dir.display(), args.name);
    crate::out!("build:  cd {} && {}", dir.display(), crate::scaffold_lang::build_hint(args.lang, &artifact));
    crate::out!("run:    guild run {}/{artifact}.wasm --input '{{\"text\": \"hello hello world\"}}'", dir.display());
    Ok(Exit::Success)
}

fn check_name(name: &str) -> Result<(), Failure> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && name.len() <= 64;
    if !valid {
        return Err(Failure::usage(format!(
            "{name:?} is not a tool name: use lowercase letters, digits and '-', starting with a letter (at most 64)"
        )));
    }
    Ok(())
}

fn sdk_dir(given: Option<&Path>) -> Result<PathBuf, Failure> {
    let candidate = given.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(BUILT_SDK_DIR));
    let manifest = candidate.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(Failure::usage(format!(
            "guild-sdk not found at {}; pass --sdk with the path to Guild's sdk/ directory",
            candidate.display()
        )));
    }
    candidate.canonicalize().map_err(|e| Failure::usage(format!("cannot resolve {}: {e}", candidate.display())))
}

fn write(path: &Path, contents: &str) -> Result<(), Failure> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::usage(format!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::write(path, contents).map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("word-count").is_ok());
        assert!(check_name("a1").is_ok());
        for bad in ["", "1a", "Word", "a_b", "a-", "a b", "../x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
