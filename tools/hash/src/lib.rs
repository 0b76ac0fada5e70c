//! `hash`: BLAKE3 digests of a piece of text, a file, or a whole directory tree. A tree gets one
//! digest over its files' relative paths and contents, so two copies of the same tree agree no
//! matter where they are mounted or in what order the file system lists them.

use guild_sdk::prelude::*;
use std::fs::File;
use std::path::Path;
use walkdir::WalkDir;

/// Most files hashed in one run. A tree digest over part of a tree would be a wrong identity,
/// so a larger tree fails the run rather than being cut short.
pub const FILES_MAX: usize = 100_000;

/// BLAKE3 key-derivation context of the tree digest: it keeps a tree digest from ever equalling
/// the plain digest of some file whose bytes happen to spell out the same encoding.
pub const TREE_CONTEXT: &str = "guild-tool-hash 2026 tree digest v1";

/// Input of `hash`: exactly one of `text` and `path`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Text to hash: the digest is over its UTF-8 bytes, as `b3sum` would give for a file
    /// holding exactly that text.
    #[serde(default)]
    pub text: Option<String>,
    /// A file or directory to hash, under the `/data` mount. Directories are walked
    /// recursively; symbolic links are skipped, not followed, and are not part of the digest.
    #[serde(default)]
    pub path: Option<String>,
}

/// The digest of one file.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq, Eq)]
pub struct FileDigest {
    /// Path relative to the directory hashed, `/`-separated; for a single file, its name.
    pub path: String,
    /// BLAKE3 digest of the file's contents, 64 hex digits.
    pub digest: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Output of `hash`.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Output {
    /// BLAKE3 digest, 64 hex digits: of the text; of the file's contents when `path` is a file;
    /// when `path` is a directory, the tree digest over every file's relative path and digest.
    pub digest: String,
    /// With `path`: each file hashed, sorted by relative path. Absent with `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileDigest>>,
}

/// Hash `input.text`, or the file or tree at `input.path`.
///
/// # Errors
/// [`ToolError::InvalidInput`] unless exactly one of `text` and a non-empty `path` is given;
/// [`ToolError::Denied`] (no permission) or [`ToolError::Failed`] when a file cannot be read;
/// [`ToolError::Failed`] when the tree holds more than [`FILES_MAX`] files. A partial digest is
/// never returned.
pub fn hash(input: Input) -> Result<Output, ToolError> {
    match (input.text, input.path) {
        (Some(text), None) => {
            let digest = blake3::hash(text.as_bytes()).to_hex().to_string();
            guild_sdk::log::info(format!("hash: text of {} bytes -> {digest}", text.len()));
            Ok(Output { digest, files: None })
        }
        (None, Some(path)) if path.is_empty() => {
            Err(ToolError::invalid_input("path must not be empty; give a file or directory under /data"))
        }
        (None, Some(path)) => hash_path(&path),
        (Some(_), Some(_)) => Err(ToolError::invalid_input("give either `text` or `path`, not both")),
        (None, None) => Err(ToolError::invalid_input("give `text` to hash, or a `path` under /data")),
    }
}

fn hash_path(path: &str) -> Result<Output, ToolError> {
    let root = Path::new(path);
    let metadata = std::fs::metadata(root).map_err(|e| ToolError::io(path, e))?;
    let (digest, files) = if metadata.is_dir() {
        let files = hash_tree(root)?;
        (tree_digest(&files), files)
    } else {
        let name = root.file_name().map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned());
        let file = hash_file(root, name)?;
        (file.digest.clone(), vec![file])
    };
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    guild_sdk::log::info(format!("hash {path}: {} files, {bytes} bytes -> {digest}", files.len()));
    Ok(Output { digest, files: Some(files) })
}

/// Every regular file under `root`, sorted by relative path. Any unreadable file fails the
/// whole run: a digest that silently left a file out would claim an identity the tree lacks.
fn hash_tree(root: &Path) -> Result<Vec<FileDigest>, ToolError> {
    let mut files = Vec::new();
    for entry in WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(|e| walk_error(root, e))?;
        if !entry.file_type().is_file() {
            continue;
        }
        if files.len() == FILES_MAX {
            return Err(ToolError::failed(format!(
                "{} has more than {FILES_MAX} files; hash a subdirectory instead",
                root.display()
            )));
        }
        files.push(hash_file(entry.path(), relative_path(root, entry.path()))?);
    }
    // Sorted here rather than by the walk: walk order puts `a/x` before `a.txt`, plain byte
    // order of the paths does not, and byte order is what anyone recomputing the digest expects.
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn hash_file(path: &Path, shown: String) -> Result<FileDigest, ToolError> {
    let file = File::open(path).map_err(|e| ToolError::io(path.display(), e))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).map_err(|e| ToolError::io(path.display(), e))?;
    Ok(FileDigest { path: shown, digest: hasher.finalize().to_hex().to_string(), bytes: hasher.count() })
}

/// `/`-joined components, so the digest is the same whatever the host's separator. Names that
/// are not UTF-8 (possible natively, never under WASI) are hashed in their lossy form.
fn relative_path(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// The tree digest: BLAKE3 in key-derivation mode with [`TREE_CONTEXT`], over each file in
/// order as its path's length in bytes (u64, little-endian), the path's UTF-8 bytes, and the
/// file's digest as 64 lowercase hex digits, exactly as listed in the output, so anyone can
/// recompute it from `files`. The length prefix keeps one path from running into the next.
pub fn tree_digest(files: &[FileDigest]) -> String {
    let mut hasher = blake3::Hasher::new_derive_key(TREE_CONTEXT);
    for file in files {
        hasher.update(&(file.path.len() as u64).to_le_bytes());
        hasher.update(file.path.as_bytes());
        hasher.update(file.digest.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

fn walk_error(root: &Path, error: walkdir::Error) -> ToolError {
    let path = error.path().unwrap_or(root).display().to_string();
    match error.into_io_error() {
        Some(io) => ToolError::io(path, io),
        None => ToolError::failed(format!("{path}: could not walk the directory")),
    }
}

guild_sdk::export_tool! {
    run: hash,
    describe: Info::new(
        "hash",
        "BLAKE3 digest of some text, a file, or a directory tree (one stable digest for the whole tree).",
    )
    .dir("/data", Access::ReadOnly, "the files and directories to hash"),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn of_path(path: &Path) -> Result<Output, ToolError> {
        hash(Input { text: None, path: Some(path.display().to_string()) })
    }

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("a/b")).expect("mkdir");
        fs::write(root.join("a.txt"), "first").expect("write");
        fs::write(root.join("a/b/deep.txt"), "deep").expect("write");
        fs::write(root.join("a/x"), "").expect("write");
        fs::write(root.join("z"), "last\n").expect("write");
    }

    #[test]
    fn hashes_text_like_b3sum() {
        let out = hash(Input { text: Some("abc".into()), path: None }).expect("hash");
        // `printf abc | b3sum`
        assert_eq!(out.digest, "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
        assert_eq!(out.files, None);
        let json = serde_json::to_value(&out).expect("serialize");
        assert!(json.get("files").is_none(), "{json}");
    }

    #[test]
    fn a_file_digest_is_its_contents_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("note.txt");
        fs::write(&file, "abc").expect("write");
        let out = of_path(&file).expect("hash");
        assert_eq!(out.digest, blake3::hash(b"abc").to_hex().to_string());
        let files = out.files.expect("files listed");
        assert_eq!(files, [FileDigest { path: "note.txt".into(), digest: out.digest.clone(), bytes: 3 }]);
    }

    #[test]
    fn lists_a_tree_sorted_by_relative_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        tree(dir.path());
        let out = of_path(dir.path()).expect("hash");
        let files = out.files.expect("files listed");
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "a/b/deep.txt", "a/x", "z"]);
        assert_eq!(files[1].digest, blake3::hash(b"deep").to_hex().to_string());
        assert_eq!(files[3].bytes, 5);
        assert_eq!(out.digest, tree_digest(&files));
    }

    #[test]
    fn the_tree_digest_depends_on_content_and_names_but_not_location() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        tree(one.path());
        tree(&two.path().join("nested/copy"));
        let first = of_path(one.path()).expect("hash").digest;
        assert_eq!(first, of_path(&two.path().join("nested/copy")).expect("hash").digest);

        fs::write(one.path().join("a/x"), "changed").expect("write");
        let changed = of_path(one.path()).expect("hash").digest;
        assert_ne!(changed, first);

        fs::write(one.path().join("a/x"), "").expect("write");
        assert_eq!(of_path(one.path()).expect("hash").digest, first, "restoring restores the digest");
        fs::rename(one.path().join("z"), one.path().join("y")).expect("rename");
        assert_ne!(of_path(one.path()).expect("hash").digest, first, "a rename changes the digest");
    }

    #[test]
    fn tree_digest_follows_its_documented_encoding() {
        let files = [
            FileDigest { path: "a".into(), digest: blake3::hash(b"1").to_hex().to_string(), bytes: 1 },
            FileDigest { path: "b/c".into(), digest: blake3::hash(b"2").to_hex().to_string(), bytes: 1 },
        ];
        let mut encoded = Vec::new();
        for file in &files {
            encoded.extend_from_slice(&(file.path.len() as u64).to_le_bytes());
            encoded.extend_from_slice(file.path.as_bytes());
            encoded.extend_from_slice(file.digest.as_bytes());
        }
        let expected = blake3::Hasher::new_derive_key(TREE_CONTEXT).update(&encoded).finalize();
        assert_eq!(tree_digest(&files), expected.to_hex().to_string());
    }

    #[test]
    fn an_empty_tree_has_a_stable_digest_and_differs_from_empty_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = of_path(dir.path()).expect("hash");
        assert_eq!(out.files.as_deref(), Some(&[][..]));
        assert_eq!(out.digest, tree_digest(&[]));
        assert_ne!(out.digest, blake3::hash(b"").to_hex().to_string());
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_not_followed_or_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        tree(dir.path());
        let before = of_path(dir.path()).expect("hash").digest;
        std::os::unix::fs::symlink(dir.path().join("z"), dir.path().join("link")).expect("symlink");
        std::os::unix::fs::symlink("/", dir.path().join("root-link")).expect("symlink");
        assert_eq!(of_path(dir.path()).expect("hash").digest, before);
    }

    #[test]
    fn needs_exactly_one_of_text_and_path() {
        for input in [
            Input { text: None, path: None },
            Input { text: Some("x".into()), path: Some("/data".into()) },
            Input { text: None, path: Some(String::new()) },
        ] {
            let err = hash(input).expect_err("must fail");
            assert!(matches!(err, ToolError::InvalidInput(_)), "{err:?}");
        }
        let err = guild_sdk::__run(hash, r#"{"text":"x","extra":1}"#).expect_err("must reject");
        assert!(format!("{err:?}").contains("unknown field"), "{err:?}");
    }

    #[test]
    fn a_missing_path_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = of_path(&dir.path().join("nope")).expect_err("must fail");
        assert!(matches!(&err, ToolError::Failed(m) if m.contains("nope")), "{err:?}");
    }
}
