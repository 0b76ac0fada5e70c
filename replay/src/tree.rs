//! Merkle trees of directories, in the manner of REAPI's `Directory` messages: each directory is
//! a canonical JSON node listing its files (name, digest, size), subdirectories (name, digest of
//! their node) and symlinks (name, target), sorted by name. A tree's identity is the digest of
//! its root node; file contents and nodes are blobs in a [`crate::BlobStore`].

use crate::Digest;
use crate::canonical::to_canonical_bytes;
use crate::store::{BlobStore, StoreError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One directory of a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryNode {
    /// Regular files, sorted by name.
    pub files: Vec<FileNode>,
    /// Subdirectories, sorted by name.
    pub dirs: Vec<DirNode>,
    /// Symbolic links, sorted by name; recorded, never followed.
    pub symlinks: Vec<SymlinkNode>,
}

/// A regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNode {
    /// Name within its directory.
    pub name: String,
    /// Digest of its contents.
    pub digest: Digest,
    /// Size of its contents.
    pub size_bytes: u64,
}

/// A subdirectory within a [`DirectoryNode`], named by the digest of its own node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirNode {
    /// Name within its directory.
    pub name: String,
    /// Digest of its [`DirectoryNode`].
    pub digest: Digest,
}

/// A symbolic link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymlinkNode {
    /// Name within its directory.
    pub name: String,
    /// Where it points, as written.
    pub target: String,
}

/// Bounds on a tree, so a huge mount fails clearly instead of filling the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeLimits {
    /// Files, directories and links in the tree.
    pub entries_max: u64,
    /// Bytes of file contents, entry names and symlink targets (what the tree's blobs and
    /// nodes hold).
    pub bytes_max: u64,
    /// Levels of subdirectories a tree may have below its root; this also bounds how deep a
    /// walk of the tree recurses.
    pub depth_max: u32,
}

/// Default tree bounds: enough for a project checkout, small enough to record.
pub const TREE_LIMITS_DEFAULT: TreeLimits = TreeLimits { entries_max: 100_000, bytes_max: 1 << 30, depth_max: 64 };

impl Default for TreeLimits {
    fn default() -> Self {
        TREE_LIMITS_DEFAULT
    }
}

/// What a captured tree holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSummary {
    /// Digest of the root node.
    pub root: Digest,
    /// Entries (files, directories, links) below the root.
    pub entries: u64,
    /// Bytes of file contents.
    pub bytes: u64,
}

/// A tree could not be captured or restored.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A bound was exceeded.
    #[error("{what} exceeds the limit of {limit} ({setting})")]
    TooLarge {
        /// What was too large.
        what: String,
        /// The bound it exceeded, in its setting's unit (entries, bytes or levels).
        limit: u64,
        /// The setting that raises it.
        setting: &'static str,
    },
    /// A name that could escape its directory or is not portable.
    #[error("tree entry {name:?} is not a plain name (no '/', '\\', '..', '.', NUL or empty names)")]
    BadName {
        /// The entry's name (with its path within the tree, when captured from disk).
        name: String,
    },
    /// A node is malformed or unsorted.
    #[error("tree node {digest} is malformed: {reason}")]
    BadNode {
        /// The node's digest in the store.
        digest: Digest,
        /// What is wrong: the parser's message, or which entries are out of order.
        reason: String,
    },
    /// Reading or writing the file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory being read or written.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io { path: path.display().to_string(), source }
}

/// Check that `name` is a single, plain path component.
///
/// # Errors
/// [`TreeError::BadName`] when `name` is empty, `.` or `..`, or holds `/`, `\` or NUL.
pub fn check_name(name: &str) -> Result<(), TreeError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.contains('\\')
    {
        return Err(TreeError::BadName { name: name.to_string() });
    }
    Ok(())
}

struct Budget {
    limits: TreeLimits,
    entries: u64,
    /// Bytes of file contents taken so far; with `listing`, bounded by `bytes_max`.
    bytes: u64,
    /// Entry names and symlink targets: bounded with the contents by `bytes_max`.
    listing: u64,
}

impl Budget {
    fn entry(&mut self) -> Result<(), TreeError> {
        self.entries += 1;
        if self.entries > self.limits.entries_max {
            return Err(TreeError::TooLarge {
                what: format!("a tree of more than {} entries", self.limits.entries_max),
                limit: self.limits.entries_max,
                setting: "tree entries_max",
            });
        }
        Ok(())
    }

    fn bytes(&mut self, size: u64) -> Result<(), TreeError> {
        self.bytes = self.bytes.saturating_add(size);
        self.check()
    }

    fn listing(&mut self, size: u64) -> Result<(), TreeError> {
        self.listing = self.listing.saturating_add(size);
        self.check()
    }

    /// Bytes used of `bytes_max`.
    fn used(&self) -> u64 {
        self.bytes.saturating_add(self.listing)
    }

    fn check(&self) -> Result<(), TreeError> {
        if self.used() > self.limits.bytes_max {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn stream_error(&self, error: StoreError) -> TreeError {
        match error {
            StoreError::StreamTooLarge { .. } => self.too_large(),
            other => TreeError::Store(other),
        }
    }

    fn too_large(&self) -> TreeError {
        TreeError::TooLarge {
            what: format!("a tree of more than {} bytes", self.limits.bytes_max),
            limit: self.limits.bytes_max,
            setting: "tree bytes_max",
        }
    }
}

/// Remembers the digest of files already captured into one store, keyed by device and inode
/// and trusted only while size, mtime and ctime are unchanged (the check git's index makes; ctime
/// cannot be set from user space). Recording the same mount run after run then hashes only
/// what changed.
pub struct FileDigestCache {
    entries: std::sync::Mutex<std::collections::HashMap<(u64, u64), (FileStamp, Digest)>>,
    entries_max: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// Default bound on [`FileDigestCache`]: past it the cache starts over.
pub const FILE_DIGEST_CACHE_ENTRIES_MAX: usize = 200_000;

impl Default for FileDigestCache {
    fn default() -> Self {
        Self { entries: Default::default(), entries_max: FILE_DIGEST_CACHE_ENTRIES_MAX }
    }
}

impl FileDigestCache {
    fn key_and_stamp(meta: &std::fs::Metadata) -> ((u64, u64), FileStamp) {
        use std::os::unix::fs::MetadataExt;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        (
            (meta.dev(), meta.ino()),
            FileStamp {
                size: meta.len(),
                mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            },
        )
    }

    fn get(&self, meta: &std::fs::Metadata) -> Option<Digest> {
        let (key, stamp) = Self::key_and_stamp(meta);
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(&key).filter(|(s, _)| *s == stamp).map(|(_, d)| *d)
    }

    fn insert(&self, meta: &std::fs::Metadata, digest: Digest) {
        let (key, stamp) = Self::key_and_stamp(meta);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.entries_max {
            entries.clear();
        }
        entries.insert(key, (stamp, digest));
    }
}

/// Capture the directory at `root` into `store`, returning its root digest and totals.
///
/// # Errors
/// As [`capture_cached`].
pub fn capture(root: &Path, store: &dyn BlobStore, limits: TreeLimits) -> Result<TreeSummary, TreeError> {
    capture_cached(root, store, limits, None)
}

/// [`capture`], skipping files `cache` says are already in `store` unchanged. The cache must
/// belong to this store.
///
/// # Errors
/// [`TreeError::TooLarge`] when the tree passes `limits`; [`TreeError::BadName`] when a name is not
/// UTF-8 or fails [`check_name`]; [`TreeError::Io`] when `root` or an entry cannot be opened or
/// read; [`TreeError::Store`] when the store cannot take a blob. An entry that vanishes or changes
/// kind while the walk runs is left out, not an error.
pub fn capture_cached(
    root: &Path,
    store: &dyn BlobStore,
    limits: TreeLimits,
    cache: Option<&FileDigestCache>,
) -> Result<TreeSummary, TreeError> {
    let mut budget = Budget { limits, entries: 0, bytes: 0, listing: 0 };
    let dir = cap_primitives::fs::open_ambient_dir(root, cap_primitives::ambient_authority()).map_err(io(root))?;
    let digest = capture_dir(&dir, Path::new("/"), store, &mut budget, 0, cache)?;
    Ok(TreeSummary { root: digest, entries: budget.entries, bytes: budget.bytes })
}

/// Files up to this size are read whole (and may land in a pack); larger ones are streamed into
/// the store, never held in memory whole.
const FILE_READ_WHOLE_BYTES_MAX: u64 = 1 << 20;

/// What the walk found where a directory listed an entry. A guest running beside the capture
/// (another run on a shared writable mount) may replace an entry between the listing and the
/// open: every open is relative to its directory's handle and never follows a link, so a swap
/// can only make an entry vanish or change kind, never lead outside the mount.
enum Found {
    File(std::fs::File, std::fs::Metadata),
    Dir(std::fs::File),
    Gone,
}

/// Open `name` in `dir` as `kind` said it was, without following links.
fn open_entry(dir: &std::fs::File, name: &std::ffi::OsStr, is_dir: bool, rel: &Path) -> Result<Found, TreeError> {
    use cap_primitives::fs::{FollowSymlinks, OpenOptions};
    let opened = if is_dir {
        cap_primitives::fs::open_dir_nofollow(dir, Path::new(name))
    } else {
        let mut options = OpenOptions::new();
        // Non-blocking, so an entry swapped for a FIFO cannot stall the capture.
        options.read(true)._cap_fs_ext_follow(FollowSymlinks::No)._cap_fs_ext_nonblock(true);
        cap_primitives::fs::open(dir, Path::new(name), &options)
    };
    let file = match opened {
        Ok(file) => file,
        // Removed, or swapped for a link or another kind, since the listing.
        Err(e) if vanished(&e) => return Ok(Found::Gone),
        Err(e) => return Err(io(&rel.join(name))(e)),
    };
    let meta = file.metadata().map_err(io(&rel.join(name)))?;
    Ok(match (is_dir, meta.is_dir(), meta.is_file()) {
        (true, true, _) => Found::Dir(file),
        (false, _, true) => Found::File(file, meta),
        _ => Found::Gone,
    })
}

fn vanished(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(error.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
        // ELOOP: a link opened without following it; ENXIO: a FIFO without a writer.
        || matches!(error.raw_os_error(), Some(libc::ELOOP | libc::ENXIO))
}

fn capture_file(
    mut file: std::fs::File,
    before: std::fs::Metadata,
    rel: &Path,
    store: &dyn BlobStore,
    cache: Option<&FileDigestCache>,
    budget: &mut Budget,
) -> Result<(Digest, u64), TreeError> {
    use std::io::Read;
    budget.bytes(before.len())?;
    if let Some(digest) = cache.and_then(|c| c.get(&before)) {
        return Ok((digest, before.len()));
    }
    let (digest, size) = if before.len() <= FILE_READ_WHOLE_BYTES_MAX {
        // At most FILE_READ_WHOLE_BYTES_MAX, which fits memory on any target.
        let mut contents = Vec::with_capacity(usize::try_from(before.len()).unwrap_or(0));
        // Bounded, should the file grow while it is read.
        (&mut file).take(FILE_READ_WHOLE_BYTES_MAX + 1).read_to_end(&mut contents).map_err(io(rel))?;
        if contents.len() as u64 > FILE_READ_WHOLE_BYTES_MAX {
            budget.bytes(contents.len() as u64 - before.len())?;
            let mut rest = std::io::Cursor::new(contents).chain(&mut file);
            let room = budget.limits.bytes_max.saturating_sub(budget.used()).saturating_add(FILE_READ_WHOLE_BYTES_MAX);
            store.put_stream(&mut rest, room).map_err(|e| budget.stream_error(e))?
        } else {
            (store.put(&contents)?, contents.len() as u64)
        }
    } else {
        // Whatever the file grew to since its size was charged must still fit the budget.
        let room = budget.limits.bytes_max.saturating_sub(budget.used()).saturating_add(before.len());
        store.put_stream(&mut file, room).map_err(|e| budget.stream_error(e))?
    };
    if size > before.len() {
        budget.bytes(size - before.len())?;
    }
    // Only cache what did not change while it was read.
    if let (Some(cache), Ok(after)) = (cache, file.metadata())
        && FileDigestCache::key_and_stamp(&after) == FileDigestCache::key_and_stamp(&before)
        && after.len() == size
    {
        cache.insert(&after, digest);
    }
    Ok((digest, size))
}

fn capture_dir(
    dir: &std::fs::File,
    rel: &Path,
    store: &dyn BlobStore,
    budget: &mut Budget,
    depth: u32,
    cache: Option<&FileDigestCache>,
) -> Result<Digest, TreeError> {
    if depth > budget.limits.depth_max {
        return Err(TreeError::TooLarge {
            what: format!("{} (nested more than {} deep)", rel.display(), budget.limits.depth_max),
            limit: u64::from(budget.limits.depth_max),
            setting: "tree depth_max",
        });
    }
    let mut node = DirectoryNode::default();
    let mut entries: Vec<cap_primitives::fs::DirEntry> =
        cap_primitives::fs::read_base_dir(dir).map_err(io(rel))?.collect::<Result<_, _>>().map_err(io(rel))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let raw_name = entry.file_name();
        let name = raw_name
            .clone()
            .into_string()
            .map_err(|raw| TreeError::BadName { name: rel.join(raw).to_string_lossy().into_owned() })?;
        // Refused here, not only when the node is read back: a tree that captures is one that
        // reads.
        check_name(&name).map_err(|_| TreeError::BadName { name: rel.join(&name).to_string_lossy().into_owned() })?;
        let path = rel.join(&name);
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        if kind.is_symlink() {
            let target = match cap_primitives::fs::read_link_contents(dir, Path::new(&raw_name)) {
                Ok(target) => target,
                Err(e) if vanished(&e) || e.kind() == std::io::ErrorKind::InvalidInput => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            budget.entry()?;
            let target = target.to_string_lossy().into_owned();
            budget.listing((name.len() + target.len()) as u64)?;
            node.symlinks.push(SymlinkNode { name, target });
        } else if kind.is_dir() || kind.is_file() {
            match open_entry(dir, &raw_name, kind.is_dir(), rel)? {
                Found::Dir(sub) => {
                    budget.entry()?;
                    budget.listing(name.len() as u64)?;
                    let digest = capture_dir(&sub, &path, store, budget, depth + 1, cache)?;
                    node.dirs.push(DirNode { name, digest });
                }
                Found::File(file, meta) => {
                    budget.entry()?;
                    budget.listing(name.len() as u64)?;
                    let (digest, size_bytes) = capture_file(file, meta, &path, store, cache, budget)?;
                    node.files.push(FileNode { name, digest, size_bytes });
                }
                Found::Gone => {}
            }
        }
        // Sockets, FIFOs and devices are not content: a guest cannot read them through WASI.
    }
    let bytes =
        to_canonical_bytes(&node).map_err(|e| TreeError::BadNode { digest: Digest::of(b""), reason: e.to_string() })?;
    Ok(store.put(&bytes)?)
}

/// Read and check one directory node: canonical, sorted, plain names.
///
/// # Errors
/// [`TreeError::Store`] when the node is missing or corrupt; [`TreeError::BadNode`] when it does
/// not parse, names an entry twice or is unsorted; [`TreeError::BadName`] when a name fails
/// [`check_name`].
pub fn read_node(store: &dyn BlobStore, digest: &Digest) -> Result<DirectoryNode, TreeError> {
    read_node_sized(store, digest).map(|(node, _)| node)
}

/// [`read_node`], with the node's size in bytes.
fn read_node_sized(store: &dyn BlobStore, digest: &Digest) -> Result<(DirectoryNode, u64), TreeError> {
    let bytes = store.get(digest)?;
    let size = bytes.len() as u64;
    let bad = |reason: String| TreeError::BadNode { digest: *digest, reason };
    let node: DirectoryNode = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let names: Vec<&str> = node
        .files
        .iter()
        .map(|f| f.name.as_str())
        .chain(node.dirs.iter().map(|d| d.name.as_str()))
        .chain(node.symlinks.iter().map(|s| s.name.as_str()))
        .collect();
    for name in &names {
        check_name(name)?;
    }
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != names.len() {
        return Err(bad("an entry name appears twice".into()));
    }
    let in_order = |v: Vec<&str>| v.windows(2).all(|w| w[0] < w[1]);
    if !in_order(node.files.iter().map(|f| f.name.as_str()).collect())
        || !in_order(node.dirs.iter().map(|d| d.name.as_str()).collect())
        || !in_order(node.symlinks.iter().map(|s| s.name.as_str()).collect())
    {
        return Err(bad("entries are not sorted by name".into()));
    }
    Ok((node, size))
}

/// Every blob a tree references (nodes and file contents) with its size, checking structure and
/// bounds on the way. File contents are not read: their sizes come from the nodes.
///
/// # Errors
/// [`TreeError::TooLarge`] when the tree passes `limits`, as its nodes count it; otherwise as
/// [`read_node`], for any node.
pub fn walk_blobs(store: &dyn BlobStore, root: &Digest, limits: TreeLimits) -> Result<Vec<(Digest, u64)>, TreeError> {
    let mut budget = Budget { limits, entries: 0, bytes: 0, listing: 0 };
    let mut out = Vec::new();
    let mut stack = vec![(*root, 0u32)];
    while let Some((digest, depth)) = stack.pop() {
        if depth > limits.depth_max {
            return Err(TreeError::TooLarge {
                what: format!("tree {root} (nested more than {} deep)", limits.depth_max),
                limit: u64::from(limits.depth_max),
                setting: "tree depth_max",
            });
        }
        let (node, size) = read_node_sized(store, &digest)?;
        out.push((digest, size));
        for file in &node.files {
            budget.entry()?;
            budget.bytes(file.size_bytes)?;
            out.push((file.digest, file.size_bytes));
        }
        for dir in &node.dirs {
            budget.entry()?;
            stack.push((dir.digest, depth + 1));
        }
        for _ in &node.symlinks {
            budget.entry()?;
        }
    }
    Ok(out)
}

/// How [`materialize`] writes files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Materialize {
    /// Copy every file: the tree may be written to.
    Copy,
    /// Hard-link files from the store where it keeps them as files (falling back to copies):
    /// only for trees nothing will write to, since a write would change the stored blob.
    LinkReadOnly,
}

/// Recreate the tree `root` under `dest` (which must exist and be empty). With
/// [`Materialize::LinkReadOnly`] linked files are not re-hashed: verify the bundle first.
///
/// # Errors
/// As [`walk_blobs`], before anything is written; then [`TreeError::Store`] when a file's blob is
/// missing or corrupt, [`TreeError::Io`] when a file, link or directory cannot be created under
/// `dest` (one already there included).
pub fn materialize(
    store: &dyn BlobStore,
    root: &Digest,
    dest: &Path,
    limits: TreeLimits,
    how: Materialize,
) -> Result<(), TreeError> {
    // Check the whole tree first so nothing is written for a malformed one.
    walk_blobs(store, root, limits)?;
    let mut stack = vec![(*root, dest.to_path_buf())];
    while let Some((digest, dir)) = stack.pop() {
        let node = read_node(store, &digest)?;
        for file in &node.files {
            let path = dir.join(&file.name);
            let linked = how == Materialize::LinkReadOnly
                && store.file_path(&file.digest).is_some_and(|blob| std::fs::hard_link(blob, &path).is_ok());
            if !linked {
                std::fs::write(&path, store.get(&file.digest)?).map_err(io(&path))?;
            }
        }
        for link in &node.symlinks {
            let path = dir.join(&link.name);
            std::os::unix::fs::symlink(&link.target, &path).map_err(io(&path))?;
        }
        for sub in &node.dirs {
            let path = dir.join(&sub.name);
            std::fs::create_dir(&path).map_err(io(&path))?;
            stack.push((sub.digest, path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn sample() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("b/c")).expect("mkdir");
        std::fs::write(dir.path().join("a.txt"), "alpha").expect("write");
        std::fs::write(dir.path().join("b/c/d.txt"), "delta").expect("write");
        std::os::unix::fs::symlink("a.txt", dir.path().join("link")).expect("symlink");
        dir
    }

    #[test]
    fn capture_is_stable_and_round_trips() {
        let store = MemoryStore::default();
        let dir = sample();
        let first = capture(dir.path(), &store, TreeLimits::default()).expect("capture");
        let again = capture(dir.path(), &store, TreeLimits::default()).expect("capture");
        assert_eq!(first, again);
        assert_eq!((first.entries, first.bytes), (5, 10));

        let out = tempfile::tempdir().expect("tempdir");
        materialize(&store, &first.root, out.path(), TreeLimits::default(), Materialize::Copy).expect("materialize");
        assert_eq!(std::fs::read_to_string(out.path().join("b/c/d.txt")).expect("read"), "delta");
        assert_eq!(std::fs::read_link(out.path().join("link")).expect("link").to_str(), Some("a.txt"));
        assert_eq!(capture(out.path(), &store, TreeLimits::default()).expect("capture").root, first.root);

        std::fs::write(dir.path().join("b/c/d.txt"), "delta!").expect("write");
        assert_ne!(capture(dir.path(), &store, TreeLimits::default()).expect("capture").root, first.root);
    }

    #[test]
    fn the_digest_cache_never_hides_a_change() {
        let store = MemoryStore::default();
        let cache = FileDigestCache::default();
        let dir = sample();
        let capture = |cache| capture_cached(dir.path(), &store, TreeLimits::default(), cache).expect("capture");
        let cold = capture(Some(&cache));
        assert_eq!(capture(Some(&cache)), cold);
        // Same size, rewritten: ctime moves, so the cache must not answer.
        std::fs::write(dir.path().join("a.txt"), "ALPHA").expect("write");
        let changed = capture(Some(&cache));
        assert_ne!(changed.root, cold.root);
        assert_eq!(changed, capture(None));
    }

    #[test]
    fn links_are_recorded_never_followed_out_of_the_tree() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), b"OUTSIDE-SECRET").expect("write");
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("plain"), b"inside").expect("write");
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("abs")).expect("symlink");
        std::os::unix::fs::symlink(outside.path(), root.path().join("dir")).expect("symlink");
        let store = MemoryStore::default();
        let summary = capture(root.path(), &store, TreeLimits::default()).expect("capture");
        assert_eq!(summary.entries, 3);
        assert!(!store.has(&Digest::of(b"OUTSIDE-SECRET")), "nothing outside the tree was read");
        let node = read_node(&store, &summary.root).expect("node");
        assert_eq!(node.symlinks.len(), 2);
        // An entry the listing called a file or a directory that is a link by the time it is
        // opened (a guest swapping it in a shared mount) is skipped, not followed.
        let dir = cap_primitives::fs::open_ambient_dir(root.path(), cap_primitives::ambient_authority()).expect("open");
        let rel = Path::new("/");
        assert!(matches!(open_entry(&dir, std::ffi::OsStr::new("abs"), false, rel), Ok(Found::Gone)));
        assert!(matches!(open_entry(&dir, std::ffi::OsStr::new("dir"), true, rel), Ok(Found::Gone)));
        assert!(matches!(open_entry(&dir, std::ffi::OsStr::new("gone"), false, rel), Ok(Found::Gone)));
        assert!(matches!(open_entry(&dir, std::ffi::OsStr::new("plain"), false, rel), Ok(Found::File(..))));
    }

    #[test]
    fn names_and_link_targets_count_as_bytes_and_unrecordable_names_are_refused() {
        let store = MemoryStore::default();
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("t".repeat(3000), dir.path().join("link")).expect("symlink");
        let tight = TreeLimits { bytes_max: 2000, ..TreeLimits::default() };
        assert!(matches!(capture(dir.path(), &store, tight), Err(TreeError::TooLarge { .. })));
        capture(dir.path(), &store, TreeLimits::default()).expect("within the default");
        std::fs::write(dir.path().join("a\\b"), b"x").expect("write");
        let err = capture(dir.path(), &store, TreeLimits::default()).expect_err("backslash");
        assert!(matches!(&err, TreeError::BadName { name } if name.ends_with("a\\b")), "{err}");
    }

    #[test]
    fn limits_are_enforced_with_the_setting_named() {
        let store = MemoryStore::default();
        let dir = sample();
        let small = TreeLimits { bytes_max: 7, ..TreeLimits::default() };
        let err = capture(dir.path(), &store, small).expect_err("too many bytes");
        assert!(err.to_string().contains("tree bytes_max"), "{err}");
        let few = TreeLimits { entries_max: 2, ..TreeLimits::default() };
        assert!(matches!(capture(dir.path(), &store, few), Err(TreeError::TooLarge { .. })));
    }

    #[test]
    fn escaping_names_are_refused_before_anything_is_written() {
        let store = MemoryStore::default();
        let contents = store.put(b"evil").expect("put");
        for name in ["..", "../x", "a/b", "", "."] {
            let node = DirectoryNode {
                files: vec![FileNode { name: name.into(), digest: contents, size_bytes: 4 }],
                ..DirectoryNode::default()
            };
            let root = store.put(&to_canonical_bytes(&node).expect("json")).expect("put");
            let out = tempfile::tempdir().expect("tempdir");
            let err =
                materialize(&store, &root, out.path(), TreeLimits::default(), Materialize::Copy).expect_err("refused");
            assert!(matches!(err, TreeError::BadName { .. }), "{name:?}: {err}");
            assert_eq!(std::fs::read_dir(out.path()).expect("dir").count(), 0);
        }
    }
}
