//! `wc`: counts lines, words and bytes in a file or every file of a directory tree, like the
//! Unix `wc`. Unreadable files are reported beside the counts instead of failing the run, so one
//! bad file in a large tree does not cost the whole answer.

use guild_sdk::prelude::*;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use walkdir::WalkDir;

/// Most files one run counts. A tree can be arbitrarily large and the output lists every file,
/// so past this the walk stops and `truncated` says so.
pub const FILES_MAX: usize = 100_000;

/// Size of the buffer files are streamed through; counting never holds a whole file in memory.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Input of `wc`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// A file or directory to count, under the `/data` mount. Directories are walked recursively
    /// in sorted order; symbolic links are skipped, not followed.
    #[serde(default = "default_path")]
    pub path: String,
}

fn default_path() -> String {
    "/data".to_string()
}

/// Line, word and byte counts.
#[derive(Debug, Default, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Counts {
    /// Newline characters, as `wc -l` counts them (a last line without `\n` is not counted).
    pub lines: u64,
    /// Runs of non-whitespace bytes, as `wc -w` counts them.
    pub words: u64,
    /// Size in bytes.
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.lines += other.lines;
        self.words += other.words;
        self.bytes += other.bytes;
    }
}

/// Counts for one file.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct FileCounts {
    /// The file's path.
    pub path: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: Counts,
}

/// A file or directory that could not be read.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct FileError {
    /// What could not be read.
    pub path: String,
    /// Why.
    pub error: String,
}

/// Output of `wc`.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Output {
    /// Counts per regular file, in walk order.
    pub files: Vec<FileCounts>,
    /// Sum over `files`.
    pub total: Counts,
    /// Files and directories that could not be read; they are not in `total`.
    pub errors: Vec<FileError>,
    /// Symbolic links passed over without following them.
    pub symlinks_skipped: u64,
    /// True when the walk stopped after 100 000 files (`FILES_MAX`); `total` covers only those.
    pub truncated: bool,
}

/// Count lines, words and bytes under `input.path`.
///
/// # Errors
/// [`ToolError::InvalidInput`] when `path` is empty; [`ToolError::Denied`] (no permission) or
/// [`ToolError::Failed`] when `path` cannot be looked at. A file that cannot be read is listed in
/// `errors` instead.
pub fn wc(input: Input) -> Result<Output, ToolError> {
    if input.path.is_empty() {
        return Err(ToolError::invalid_input("path must not be empty; give a file or directory under /data"));
    }
    let root = Path::new(&input.path);
    // A missing or forbidden root is the caller's mistake, not one bad file among many.
    std::fs::metadata(root).map_err(|e| ToolError::io(&input.path, e))?;

    let mut out = Output {
        files: Vec::new(),
        total: Counts::default(),
        errors: Vec::new(),
        symlinks_skipped: 0,
        truncated: false,
    };
    for entry in WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                out.errors.push(walk_error(&input.path, e));
                continue;
            }
        };
        let file_type = entry.file_type();
        if file_type.is_symlink() {
            out.symlinks_skipped += 1;
            continue;
        }
        if !file_type.is_file() {
            continue;
        }
        if out.files.len() + out.errors.len() >= FILES_MAX {
            out.truncated = true;
            break;
        }
        let path = entry.path().display().to_string();
        match File::open(entry.path()).and_then(count) {
            Ok(counts) => {
                out.total.add(counts);
                out.files.push(FileCounts { path, counts });
            }
            Err(e) => out.errors.push(FileError { path, error: e.to_string() }),
        }
    }

    guild_sdk::log::info(format!(
        "wc {}: {} files, {} lines, {} words, {} bytes; {} errors, {} symlinks skipped{}",
        input.path,
        out.files.len(),
        out.total.lines,
        out.total.words,
        out.total.bytes,
        out.errors.len(),
        out.symlinks_skipped,
        if out.truncated { ", truncated" } else { "" },
    ));
    Ok(out)
}

fn walk_error(root: &str, error: walkdir::Error) -> FileError {
    let path = error.path().map_or_else(|| root.to_string(), |p| p.display().to_string());
    let error = match error.io_error() {
        Some(io) => io.to_string(),
        None => error.to_string(),
    };
    FileError { path, error }
}

/// Count a stream the way `wc` does in the C locale: bytes, `\n`s, and maximal runs of
/// non-whitespace. Bytes rather than chars, so invalid UTF-8 is counted instead of rejected.
///
/// # Errors
/// The reader's error, other than `Interrupted` (which is retried).
pub fn count(mut reader: impl Read) -> io::Result<Counts> {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut counts = Counts::default();
    // Carried across chunks so a word split by a chunk boundary is counted once.
    let mut in_word = false;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &byte in &buf[..n] {
            if byte == b'\n' {
                counts.lines += 1;
            }
            if is_space(byte) {
                in_word = false;
            } else if !in_word {
                in_word = true;
                counts.words += 1;
            }
        }
        counts.bytes += n as u64;
    }
    Ok(counts)
}

/// C `isspace`: unlike `u8::is_ascii_whitespace` this includes vertical tab, as `wc` does.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

guild_sdk::export_tool! {
    run: wc,
    describe: Info::new(
        "wc",
        "Counts lines, words and bytes in a file or in every file of a directory tree, like `wc`.",
    )
    .dir("/data", Access::ReadOnly, "the files and directories to count"),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn run(path: &Path) -> Output {
        wc(Input { path: path.display().to_string() }).expect("wc succeeds")
    }

    fn counts(lines: u64, words: u64, bytes: u64) -> Counts {
        Counts { lines, words, bytes }
    }

    #[test]
    fn counts_like_wc() {
        assert_eq!(count(&b""[..]).expect("count"), counts(0, 0, 0));
        assert_eq!(count(&b"hello world\n"[..]).expect("count"), counts(1, 2, 12));
        assert_eq!(count(&b"no newline"[..]).expect("count"), counts(0, 2, 10));
        assert_eq!(count(&b"  a\t\tb\x0bc\x0cd\r\n\n"[..]).expect("count"), counts(2, 4, 13));
        assert_eq!(count(&b"\xff\xfe bin\x00ary\n"[..]).expect("count"), counts(1, 2, 11));
        assert_eq!(count("héllo wörld\n".as_bytes()).expect("count"), counts(1, 2, 14));
    }

    #[test]
    fn a_word_across_a_chunk_boundary_counts_once() {
        let mut text = vec![b'x'; READ_CHUNK_BYTES + 10];
        text.push(b'\n');
        assert_eq!(count(&text[..]).expect("count"), counts(1, 1, text.len() as u64));
    }

    #[test]
    fn walks_a_tree_in_sorted_order_and_totals_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("sub/deeper")).expect("mkdir");
        fs::write(dir.path().join("b.txt"), "one two\nthree\n").expect("write");
        fs::write(dir.path().join("a.txt"), "alpha\n").expect("write");
        fs::write(dir.path().join("sub/deeper/c.txt"), "x y z").expect("write");
        fs::write(dir.path().join("sub/empty"), "").expect("write");

        let out = run(dir.path());
        let rel: Vec<String> = out
            .files
            .iter()
            .map(|f| Path::new(&f.path).strip_prefix(dir.path()).expect("under root").display().to_string())
            .collect();
        assert_eq!(rel, ["a.txt", "b.txt", "sub/deeper/c.txt", "sub/empty"]);
        assert_eq!(out.files[1].counts, counts(2, 3, 14));
        assert_eq!(out.total, counts(3, 7, 25));
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert!(!out.truncated);
    }

    #[test]
    fn counts_a_single_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f.txt");
        fs::write(&file, "a b c\nd\n").expect("write");
        let out = run(&file);
        assert_eq!(out.files.len(), 1);
        assert_eq!(out.files[0].path, file.display().to_string());
        assert_eq!(out.total, counts(2, 4, 8));
    }

    #[cfg(unix)]
    #[test]
    fn skips_symlinks_instead_of_following_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        fs::write(outside.path().join("secret"), "do not count me\n").expect("write");
        fs::write(dir.path().join("real.txt"), "counted\n").expect("write");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link-dir")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link-file")).expect("symlink");

        let out = run(dir.path());
        assert_eq!(out.files.len(), 1, "{:?}", out.files);
        assert_eq!(out.symlinks_skipped, 2);
        assert_eq!(out.total, counts(1, 1, 8));
    }

    #[cfg(unix)]
    #[test]
    fn reports_unreadable_files_and_counts_the_rest() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let locked = dir.path().join("locked.txt");
        fs::write(&locked, "hidden\n").expect("write");
        fs::write(dir.path().join("open.txt"), "visible\n").expect("write");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).expect("chmod");
        if File::open(&locked).is_ok() {
            return; // Running as root: permissions are not enforced, nothing to test.
        }

        let out = run(dir.path());
        assert_eq!(out.files.len(), 1);
        assert_eq!(out.total, counts(1, 1, 8));
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].path, locked.display().to_string());
        assert!(out.errors[0].error.contains("ermission denied"), "{:?}", out.errors);
    }

    #[test]
    fn a_missing_root_fails_the_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = wc(Input { path: missing.display().to_string() }).expect_err("must fail");
        assert!(matches!(&err, ToolError::Failed(m) if m.contains("nope")), "{err:?}");
    }

    #[test]
    fn path_defaults_to_data_and_unknown_fields_are_rejected() {
        let input: Input = serde_json::from_str("{}").expect("parse");
        assert_eq!(input.path, "/data");
        let err = guild_sdk::__run(wc, r#"{"path":"/data","extra":1}"#).expect_err("must reject");
        assert!(format!("{err:?}").contains("unknown field"), "{err:?}");
    }
}
