//! `grep`: finds the lines matching a regular expression in a file or a directory tree. Files
//! are searched in sorted order so the same tree always gives the same matches, binary files
//! are skipped, and unreadable files are reported beside the matches instead of failing the run.

use guild_sdk::prelude::*;
use regex::bytes::{Regex, RegexBuilder};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::Path;
use walkdir::WalkDir;

/// Most files one run opens; past this the walk stops and `truncated` says so.
pub const FILES_MAX: usize = 100_000;

/// Largest `max_matches` a caller may ask for: every match is a line in the output.
pub const MATCHES_MAX: usize = 100_000;

/// A file with a NUL byte in its first this-many bytes is taken as binary, as GNU grep does.
const BINARY_PROBE_BYTES: u64 = 8 * 1024;

/// Longest line held in memory. A longer line (a minified bundle, a log without newlines) is
/// matched on its first this-many bytes only, and the file gets an entry in `errors`.
const LINE_BYTES_MAX: usize = 1024 * 1024;

/// Longest line returned in a match; the rest is cut so 1000 matches stay a readable answer.
const LINE_REPORTED_BYTES_MAX: usize = 2048;

/// Limit on the compiled regex, so a pathological pattern is refused instead of eating memory.
const REGEX_PROGRAM_BYTES_MAX: usize = 10 * 1024 * 1024;

/// Input of `grep`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// A regular expression in Rust `regex` syntax, matched against each line.
    pub pattern: String,
    /// A file or directory to search, under the `/data` mount. Directories are walked
    /// recursively in sorted order; symbolic links are skipped, not followed.
    #[serde(default = "default_path")]
    pub path: String,
    /// Match without regard to letter case.
    #[serde(default)]
    pub ignore_case: bool,
    /// Stop after this many matches (1 to 100000).
    #[serde(default = "default_max_matches")]
    pub max_matches: usize,
}

fn default_path() -> String {
    "/data".to_string()
}

fn default_max_matches() -> usize {
    1000
}

/// One matching line.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Match {
    /// The file the line is in.
    pub file: String,
    /// 1-based line number.
    pub line_number: u64,
    /// The line without its line ending; invalid UTF-8 is replaced by U+FFFD.
    pub line: String,
    /// True when `line` was cut at 2048 bytes.
    pub line_truncated: bool,
}

/// A file or directory that could not be (fully) searched.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct FileError {
    /// What could not be searched.
    pub path: String,
    /// Why.
    pub error: String,
}

/// Output of `grep`.
#[derive(Debug, Default, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Output {
    /// Matching lines, in file order then line order.
    pub matches: Vec<Match>,
    /// True when the search stopped early: there were more than `max_matches` matches, or the
    /// tree had more than 100 000 files.
    pub truncated: bool,
    /// Text files searched.
    pub files_searched: u64,
    /// Files skipped because they look binary (a NUL byte in the first 8 KiB).
    pub binary_files_skipped: u64,
    /// Files and directories that could not be searched, or only partly.
    pub errors: Vec<FileError>,
}

/// Search `input.path` for lines matching `input.pattern`.
///
/// # Errors
/// [`ToolError::InvalidInput`] when `max_matches` is not 1 to [`MATCHES_MAX`], `pattern` does not
/// compile (or compiles too large), or `path` is empty; [`ToolError::Denied`] (no permission) or
/// [`ToolError::Failed`] when `path` cannot be looked at. A file that cannot be read is listed in
/// `errors` instead.
pub fn grep(input: Input) -> Result<Output, ToolError> {
    if !(1..=MATCHES_MAX).contains(&input.max_matches) {
        return Err(ToolError::invalid_input(format!(
            "max_matches is {}; it must be between 1 and {MATCHES_MAX}",
            input.max_matches
        )));
    }
    let regex = compile(&input)?;
    if input.path.is_empty() {
        return Err(ToolError::invalid_input("path must not be empty; give a file or directory under /data"));
    }
    let root = Path::new(&input.path);
    // A missing or forbidden root is the caller's mistake, not one bad file among many.
    std::fs::metadata(root).map_err(|e| ToolError::io(&input.path, e))?;

    let mut out = Output::default();
    let mut files_visited = 0usize;
    for entry in WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                out.errors.push(walk_error(&input.path, e));
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        if files_visited == FILES_MAX {
            out.truncated = true;
            break;
        }
        files_visited += 1;
        let path = entry.path().display().to_string();
        if let Err(e) = search_file(&regex, input.max_matches, entry.path(), &path, &mut out) {
            out.errors.push(FileError { path, error: e.to_string() });
        }
        if out.truncated {
            break;
        }
    }

    guild_sdk::log::info(format!(
        "grep {:?} in {}: {} matches in {} files; {} binary skipped, {} errors{}",
        input.pattern,
        input.path,
        out.matches.len(),
        out.files_searched,
        out.binary_files_skipped,
        out.errors.len(),
        if out.truncated { ", truncated" } else { "" },
    ));
    Ok(out)
}

fn compile(input: &Input) -> Result<Regex, ToolError> {
    RegexBuilder::new(&input.pattern)
        .case_insensitive(input.ignore_case)
        .size_limit(REGEX_PROGRAM_BYTES_MAX)
        .build()
        .map_err(|e| ToolError::invalid_input(format!("pattern is not a valid regular expression: {e}")))
}

/// Search one file, appending to `out`; sets `out.truncated` when `max_matches` is exceeded.
fn search_file(regex: &Regex, max_matches: usize, path: &Path, shown: &str, out: &mut Output) -> io::Result<()> {
    let mut file = File::open(path)?;
    // `read` may return short counts (WASI streams do), so probe with `take` rather than one read.
    let mut head = Vec::new();
    file.by_ref().take(BINARY_PROBE_BYTES).read_to_end(&mut head)?;
    if head.contains(&0) {
        out.binary_files_skipped += 1;
        return Ok(());
    }
    out.files_searched += 1;

    let mut reader = BufReader::new(Cursor::new(head).chain(file));
    let mut line = Vec::new();
    let mut line_number = 0u64;
    let mut first_clipped_line = None;
    while let Some(clipped) = read_line_capped(&mut reader, &mut line)? {
        line_number += 1;
        if clipped && first_clipped_line.is_none() {
            first_clipped_line = Some(line_number);
        }
        let text = strip_line_ending(&line);
        if !regex.is_match(text) {
            continue;
        }
        if out.matches.len() == max_matches {
            out.truncated = true;
            break;
        }
        let (line, line_truncated) = reported_line(text);
        out.matches.push(Match { file: shown.to_string(), line_number, line, line_truncated });
    }
    if let Some(n) = first_clipped_line {
        out.errors.push(FileError {
            path: shown.to_string(),
            error: format!("line {n} is longer than {LINE_BYTES_MAX} bytes; only its start was searched"),
        });
    }
    Ok(())
}

/// Read one line, through `\n` or to the end, into `line`, keeping at most `LINE_BYTES_MAX`
/// bytes of it. `None` at the end of input; otherwise whether the line was clipped.
fn read_line_capped(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<Option<bool>> {
    line.clear();
    let mut clipped = false;
    let mut read_any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(read_any.then_some(clipped));
        }
        read_any = true;
        let (chunk, ends_line) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let room = LINE_BYTES_MAX.saturating_sub(line.len());
        clipped |= chunk.len() > room;
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        reader.consume(used);
        if ends_line {
            return Ok(Some(clipped));
        }
    }
}

fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn reported_line(text: &[u8]) -> (String, bool) {
    let text = String::from_utf8_lossy(text);
    if text.len() <= LINE_REPORTED_BYTES_MAX {
        return (text.into_owned(), false);
    }
    let end = text.floor_char_boundary(LINE_REPORTED_BYTES_MAX);
    (text[..end].to_string(), true)
}

fn walk_error(root: &str, error: walkdir::Error) -> FileError {
    let path = error.path().map_or_else(|| root.to_string(), |p| p.display().to_string());
    let error = match error.io_error() {
        Some(io) => io.to_string(),
        None => error.to_string(),
    };
    FileError { path, error }
}

guild_sdk::export_tool! {
    run: grep,
    describe: Info::new(
        "grep",
        "Finds lines matching a regular expression in a file or a directory tree, in sorted order.",
    )
    .dir("/data", Access::ReadOnly, "the files and directories to search"),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn input(pattern: &str, path: &Path) -> Input {
        Input {
            pattern: pattern.to_string(),
            path: path.display().to_string(),
            ignore_case: false,
            max_matches: default_max_matches(),
        }
    }

    fn found(out: &Output, root: &Path) -> Vec<(String, u64, String)> {
        out.matches
            .iter()
            .map(|m| {
                let rel = Path::new(&m.file).strip_prefix(root).expect("under root").display().to_string();
                (rel, m.line_number, m.line.clone())
            })
            .collect()
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("src")).expect("mkdir");
        fs::write(dir.path().join("README"), "Error handling\nnothing here\n").expect("write");
        fs::write(dir.path().join("src/main.rs"), "fn main() {\n    error!(\"boom\");\r\n}\nerror").expect("write");
        fs::write(dir.path().join("src/a.rs"), "// no match\nlet error = 1;\n").expect("write");
        dir
    }

    #[test]
    fn finds_matches_in_sorted_order_with_line_numbers() {
        let dir = tree();
        let out = grep(input("error", dir.path())).expect("grep");
        assert_eq!(
            found(&out, dir.path()),
            [
                ("src/a.rs".into(), 2, "let error = 1;".into()),
                ("src/main.rs".into(), 2, "    error!(\"boom\");".into()),
                ("src/main.rs".into(), 4, "error".into()),
            ]
        );
        assert!(!out.truncated);
        assert_eq!(out.files_searched, 3);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }

    #[test]
    fn ignore_case_widens_the_match() {
        let dir = tree();
        let mut query = input(r"^error\b", dir.path());
        query.ignore_case = true;
        let out = grep(query).expect("grep");
        assert_eq!(
            found(&out, dir.path()),
            [("README".into(), 1, "Error handling".into()), ("src/main.rs".into(), 4, "error".into())]
        );
    }

    #[test]
    fn stops_at_max_matches_and_says_so() {
        let dir = tree();
        let mut query = input("error", dir.path());
        query.max_matches = 2;
        let out = grep(query).expect("grep");
        assert_eq!(out.matches.len(), 2);
        assert!(out.truncated);

        // Exactly as many matches as allowed is not a truncation.
        let mut query = input("error", dir.path());
        query.max_matches = 3;
        assert!(!grep(query).expect("grep").truncated);
    }

    #[test]
    fn skips_binary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("blob.bin"), b"needle\x00needle\n").expect("write");
        fs::write(dir.path().join("text.txt"), "needle\n").expect("write");
        let out = grep(input("needle", dir.path())).expect("grep");
        assert_eq!(found(&out, dir.path()), [("text.txt".into(), 1, "needle".into())]);
        assert_eq!(out.binary_files_skipped, 1);
        assert_eq!(out.files_searched, 1);
    }

    #[test]
    fn a_nul_after_the_probe_does_not_make_a_file_binary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut content = "needle\n".repeat(2000).into_bytes();
        content.extend_from_slice(b"\x00tail\n");
        fs::write(dir.path().join("late-nul"), &content).expect("write");
        let out = grep(input("needle", dir.path())).expect("grep");
        assert_eq!(out.binary_files_skipped, 0);
        assert_eq!(out.matches.len(), 1000);
        assert!(out.truncated);
    }

    #[test]
    fn searches_a_single_file_and_clips_long_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("long.txt");
        let long = format!("{}needle{}", "é".repeat(LINE_REPORTED_BYTES_MAX), "x".repeat(LINE_BYTES_MAX));
        fs::write(&file, format!("{long}\nshort needle\n")).expect("write");
        let out = grep(input("needle", &file)).expect("grep");
        assert_eq!(out.matches.len(), 2);
        assert_eq!(out.matches[0].file, file.display().to_string());
        assert!(out.matches[0].line_truncated);
        assert_eq!(out.matches[0].line.len(), LINE_REPORTED_BYTES_MAX);
        assert_eq!(out.matches[1].line_number, 2);
        assert_eq!(out.matches[1].line, "short needle");
        assert_eq!(out.errors.len(), 1, "the over-long line is reported");
        assert!(out.errors[0].error.contains("line 1 is longer"), "{:?}", out.errors);
    }

    #[test]
    fn invalid_regex_is_invalid_input_with_the_reason() {
        let dir = tree();
        let err = grep(input("(unclosed", dir.path())).expect_err("must fail");
        assert!(matches!(&err, ToolError::InvalidInput(m) if m.contains("unclosed group")), "{err:?}");
    }

    #[test]
    fn out_of_range_max_matches_is_invalid_input() {
        let dir = tree();
        for max in [0, MATCHES_MAX + 1] {
            let mut query = input("x", dir.path());
            query.max_matches = max;
            let err = grep(query).expect_err("must fail");
            assert!(matches!(err, ToolError::InvalidInput(_)), "{err:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn does_not_follow_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        fs::write(outside.path().join("secret"), "needle\n").expect("write");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        let out = grep(input("needle", dir.path())).expect("grep");
        assert!(out.matches.is_empty(), "{:?}", out.matches);
    }

    #[test]
    fn missing_root_fails_and_defaults_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = grep(input("x", &dir.path().join("nope"))).expect_err("must fail");
        assert!(matches!(err, ToolError::Failed(_)), "{err:?}");

        let parsed: Input = serde_json::from_str(r#"{"pattern":"x"}"#).expect("parse");
        assert_eq!((parsed.path.as_str(), parsed.ignore_case, parsed.max_matches), ("/data", false, 1000));
        let err = guild_sdk::__run(grep, r#"{"pattern":"x","paths":"/"}"#).expect_err("must reject");
        assert!(format!("{err:?}").contains("unknown field"), "{err:?}");
    }
}
