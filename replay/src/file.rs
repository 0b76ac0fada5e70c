//! Writing a file whole: beside its place first, then renamed into it, so a reader never sees
//! half of one. The store writes blobs and packs this way, at once or from its write-behind
//! thread.

use std::io::Write;
use std::path::Path;

/// Write beside `path` (creating its directory) and rename into place: readers never see half
/// a file.
///
/// # Errors
/// The I/O error of creating the directory, writing the file or renaming it; the file beside
/// `path` is removed then.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp.{}.{:?}", std::process::id(), std::thread::current().id()));
    let result = (|| {
        // Not fsynced: every run writes a bundle, and a sync per file would cost more than the
        // run. A crash can lose the newest bundles; it cannot make a wrong one pass, because
        // every read checks the digest.
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
