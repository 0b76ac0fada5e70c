//! The Python and JavaScript halves of `guild tool new --lang`: a tool directory that builds to a
//! component with one command (componentize-py, or `npm run build` with componentize-js).
//!
//! The WIT contract is embedded in this binary and written into each scaffold, so a tool builds
//! anywhere, not only inside Guild's source tree. The JavaScript build script is the one the
//! example tool `tools/markdown-links` is built and tested with.

use crate::args::ToolLang;

/// Guild's tool contract, as this binary was built against it.
const GUILD_WIT: &str = include_str!("../../../wit/guild.wit");
/// The build script of the JavaScript example tool, shared with every JavaScript scaffold.
const JS_BUILD_MJS: &str = include_str!("../../../tools/markdown-links/build.mjs");

const PYTHON_APP: &str = include_str!("templates/python_app.py");
const PYTHON_README: &str = include_str!("templates/python_README.md");
const JS_APP: &str = include_str!("templates/js_app.js");
const JS_README: &str = include_str!("templates/js_README.md");

/// The toolchain versions a scaffold pins; the same ones `scripts/setup.sh` installs for tests.
pub(crate) const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

const JS_PACKAGE_JSON: &str = r#"{
  "name": "{name}",
  "version": "0.1.0",
  "description": "A Guild tool",
  "private": true,
  "type": "module",
  "scripts": {
    "build": "node build.mjs {artifact}.wasm"
  },
  "devDependencies": {
    "@bytecodealliance/componentize-js": "0.22.0",
    "@bytecodealliance/jco": "1.35.0",
    "@bytecodealliance/preview2-shim": "0.25.0"
  }
}
"#;

/// The files of a `lang` scaffold named `name`, as (relative path, contents).
pub(crate) fn files(lang: ToolLang, name: &str, artifact: &str) -> Vec<(&'static str, String)> {
    let fill = |template: &str| template.replace("{name}", name).replace("{artifact}", artifact);
    match lang {
        ToolLang::Rust => Vec::new(),
        ToolLang::Python => vec![
            ("app.py", fill(PYTHON_APP)),
            ("README.md", fill(PYTHON_README).replace("0.25.1", COMPONENTIZE_PY_VERSION)),
            ("wit/guild.wit", GUILD_WIT.to_string()),
            (".gitignore", "*.wasm\n.venv/\n__pycache__/\n".to_string()),
        ],
        ToolLang::Js => vec![
            ("app.js", fill(JS_APP)),
            ("build.mjs", JS_BUILD_MJS.to_string()),
            ("package.json", fill(JS_PACKAGE_JSON)),
            ("README.md", fill(JS_README)),
            ("wit/guild.wit", GUILD_WIT.to_string()),
            (".gitignore", "*.wasm\nnode_modules/\n".to_string()),
        ],
    }
}

/// The build command to print after scaffolding.
pub(crate) fn build_hint(lang: ToolLang, artifact: &str) -> String {
    match lang {
        ToolLang::Rust => "cargo build --release".to_string(),
        ToolLang::Python => format!(
            "python3 -m venv .venv && .venv/bin/pip install componentize-py=={COMPONENTIZE_PY_VERSION}   (once)\n        \
             .venv/bin/componentize-py -d wit -w guild-tool componentize app -o {artifact}.wasm"
        ),
        ToolLang::Js => "npm install && npm run build".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaffolds_carry_the_contract_and_their_name() {
        for lang in [ToolLang::Python, ToolLang::Js] {
            let files = files(lang, "word-count", "word_count");
            let wit = files.iter().find(|(p, _)| *p == "wit/guild.wit").expect("wit");
            assert!(wit.1.contains("world guild-tool"));
            assert!(files.iter().all(|(_, text)| !text.contains("{name}") && !text.contains("{artifact}")));
            let app = &files[0].1;
            assert!(app.contains("'word-count'") || app.contains("\"word-count\""), "{app}");
        }
    }

    #[test]
    fn the_pinned_python_toolchain_matches_setup() {
        let setup = include_str!("../../../scripts/setup.sh");
        assert!(setup.contains(&format!("COMPONENTIZE_PY_VERSION={COMPONENTIZE_PY_VERSION}")));
        let example = include_str!("../../../tools/markdown-links/package.json");
        for dep in ["\"@bytecodealliance/componentize-js\": \"0.22.0\"", "\"@bytecodealliance/jco\": \"1.35.0\""] {
            assert!(example.contains(dep) && JS_PACKAGE_JSON.contains(dep), "{dep}");
        }
    }
}
