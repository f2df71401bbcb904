//! The worker's caches on disk, kept within the volunteer's `disk_mb`: fetched blobs (modules and
//! inputs, `DIR/cache`) and the modules it compiled (`DIR/compiled`). When they hold more, the
//! least recently used files go first (a blob is marked used each time a unit reads it). After a
//! restart every cached blob is checked against its hash and removed if it no longer matches;
//! compiled modules carry their own checksum, checked when they are loaded.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use herd_blobs::{BlobError, BlobStore};
use herd_protocol::ContentHash;

/// What a pass over the caches removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub files: usize,
    pub bytes: u64,
}

/// Checks every cached blob against its hash and removes those that no longer match.
pub fn verify(blobs: &BlobStore) -> Result<Vec<ContentHash>, BlobError> {
    let mut corrupt = Vec::new();
    for entry in blobs.entries()? {
        if let Err(BlobError::Corrupt { hash }) = blobs.get(&entry.hash) {
            blobs.remove(&hash)?;
            corrupt.push(hash);
        }
    }
    Ok(corrupt)
}

/// One file of either cache.
enum Cached {
    Blob(ContentHash),
    Compiled(PathBuf),
}

/// Removes the least recently used files of both caches until together they hold at most
/// `limit_bytes`.
pub fn enforce_limit(
    blobs: &BlobStore,
    compiled_dir: &Path,
    limit_bytes: u64,
) -> Result<Removed, BlobError> {
    let mut files: Vec<(SystemTime, u64, Cached)> = blobs
        .entries()?
        .into_iter()
        .map(|e| (e.last_used, e.bytes, Cached::Blob(e.hash)))
        .collect();
    if let Ok(dir) = std::fs::read_dir(compiled_dir) {
        for entry in dir.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_file() {
                let used = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                files.push((used, metadata.len(), Cached::Compiled(entry.path())));
            }
        }
    }
    let mut total: u64 = files.iter().map(|(_, bytes, _)| bytes).sum();
    files.sort_by_key(|(used, _, _)| *used);
    let mut removed = Removed::default();
    for (_, bytes, file) in files {
        if total <= limit_bytes {
            break;
        }
        match file {
            Cached::Blob(hash) => blobs.remove(&hash)?,
            Cached::Compiled(path) => {
                if let Err(source) = std::fs::remove_file(&path)
                    && source.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(BlobError::Io { path, source });
                }
            }
        }
        total -= bytes;
        removed.files += 1;
        removed.bytes += bytes;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn age(path: &Path, seconds_ago: u64) {
        std::fs::File::options()
            .append(true)
            .open(path)
            .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(seconds_ago)))
            .expect("age");
    }

    #[test]
    fn the_least_recently_used_files_of_both_caches_go_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::open(dir.path().join("cache")).expect("open");
        let compiled = dir.path().join("compiled");
        std::fs::create_dir_all(&compiled).expect("mkdir");
        let oldest = blobs.put(&[1; 100]).expect("put");
        let used = blobs.put(&[2; 100]).expect("put");
        let module = compiled.join("module.cwasm");
        std::fs::write(&module, [3; 100]).expect("write");
        let path_of = |hash: &ContentHash| {
            let hex = hash.to_hex();
            dir.path().join("cache").join(&hex[..2]).join(hex)
        };
        age(&path_of(&oldest), 300);
        age(&path_of(&used), 200);
        age(&module, 100);
        // A unit reads `used`: it becomes the most recent.
        blobs.touch(&used).expect("touch");
        let removed = enforce_limit(&blobs, &compiled, 150).expect("enforce");
        assert_eq!(
            removed,
            Removed {
                files: 2,
                bytes: 200
            }
        );
        assert!(!blobs.contains(&oldest) && !module.exists());
        assert!(blobs.contains(&used));
        assert_eq!(
            enforce_limit(&blobs, &compiled, 150).expect("enforce"),
            Removed::default()
        );
    }

    #[test]
    fn a_blob_changed_on_disk_is_found_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::open(dir.path()).expect("open");
        let good = blobs.put(b"good").expect("put");
        let bad = blobs.put(b"bad").expect("put");
        let hex = bad.to_hex();
        std::fs::write(dir.path().join(&hex[..2]).join(&hex), b"flipped").expect("corrupt");
        assert_eq!(verify(&blobs).expect("verify"), vec![bad]);
        assert!(blobs.contains(&good) && !blobs.contains(&bad));
    }
}
