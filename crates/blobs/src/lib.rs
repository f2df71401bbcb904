//! The content-addressed blob store, shared by the coordinator (its store) and the worker (its
//! cache): modules, inputs and outputs as files named by their BLAKE3
//! hash, under `DIR/blobs/ab/abcdef...`. A blob is written to a temporary file, synced and
//! renamed into place, so a crash never leaves a partial blob under a real name.

use std::io::Write;
use std::path::{Path, PathBuf};

use herd_protocol::ContentHash;

/// A blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob bytes hash to {actual}, not the claimed {claimed}")]
    HashMismatch {
        claimed: ContentHash,
        actual: ContentHash,
    },
    #[error("blob {hash} on disk is corrupt (its bytes no longer match its hash)")]
    Corrupt { hash: ContentHash },
    #[error("blob store IO at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One stored blob, as [`BlobStore::entries`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    pub hash: ContentHash,
    pub bytes: u64,
    pub last_used: std::time::SystemTime,
}

/// Blobs on disk, by hash.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| BlobError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    fn path(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Whether the blob is present.
    pub fn contains(&self, hash: &ContentHash) -> bool {
        self.path(hash).is_file()
    }

    /// Stores `bytes` and returns their hash.
    pub fn put(&self, bytes: &[u8]) -> Result<ContentHash, BlobError> {
        let hash = ContentHash::of(bytes);
        let path = self.path(&hash);
        if path.is_file() {
            return Ok(hash);
        }
        let io = |source| BlobError::Io {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.as_file().sync_all().map_err(io)?;
        file.persist(&path).map_err(|e| io(e.error))?;
        sync_dir(dir).map_err(io)?;
        Ok(hash)
    }

    /// Stores many blobs, durably, in far fewer syncs than one [`put`](Self::put) each: every
    /// new blob is written to a temporary file, the file system is synced once, the files are
    /// renamed into place, and it is synced once more. Returns their hashes in order. (A
    /// hundred thousand small inputs took 40 s one fsync at a time.)
    pub fn put_many(&self, blobs: &[&[u8]]) -> Result<Vec<ContentHash>, BlobError> {
        let mut hashes = Vec::with_capacity(blobs.len());
        let mut pending = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for bytes in blobs {
            let hash = ContentHash::of(bytes);
            hashes.push(hash);
            let path = self.path(&hash);
            if !seen.insert(hash) || path.is_file() {
                continue;
            }
            let io = |source| BlobError::Io {
                path: path.clone(),
                source,
            };
            let dir = path.parent().unwrap_or(&self.root);
            std::fs::create_dir_all(dir).map_err(io)?;
            let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
            file.write_all(bytes).map_err(io)?;
            // Closed now (a batch's inputs would exhaust the file descriptors), renamed later.
            pending.push((path, file.into_temp_path()));
        }
        if pending.is_empty() {
            return Ok(hashes);
        }
        let sync = |what: &Path| -> Result<(), BlobError> {
            let root = std::fs::File::open(&self.root).map_err(|source| BlobError::Io {
                path: what.to_path_buf(),
                source,
            })?;
            rustix::fs::syncfs(&root).map_err(|errno| BlobError::Io {
                path: what.to_path_buf(),
                source: errno.into(),
            })
        };
        // The contents are on disk before any blob has its name.
        sync(&self.root)?;
        for (path, temp) in pending {
            temp.persist(&path).map_err(|e| BlobError::Io {
                path: path.clone(),
                source: e.error,
            })?;
        }
        // And the names before the caller refers to them.
        sync(&self.root)?;
        Ok(hashes)
    }

    /// Stores `bytes` that are claimed to hash to `claimed`, refusing them if they do not.
    pub fn put_verified(&self, claimed: &ContentHash, bytes: &[u8]) -> Result<(), BlobError> {
        let actual = ContentHash::of(bytes);
        if actual != *claimed {
            return Err(BlobError::HashMismatch {
                claimed: *claimed,
                actual,
            });
        }
        self.put(bytes).map(|_| ())
    }

    /// Reads a blob, checking its bytes still match its hash; `None` if absent.
    pub fn get(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(hash);
        match std::fs::read(&path) {
            Ok(bytes) if ContentHash::of(&bytes) == *hash => Ok(Some(bytes)),
            Ok(_) => Err(BlobError::Corrupt { hash: *hash }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BlobError::Io { path, source }),
        }
    }

    /// Marks a blob as just used (its modification time), for least-recently-used eviction.
    pub fn touch(&self, hash: &ContentHash) -> Result<(), BlobError> {
        let path = self.path(hash);
        let io = |source| BlobError::Io {
            path: path.clone(),
            source,
        };
        // Opened to append, so nothing is truncated; only the timestamp changes.
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io)?;
        file.set_modified(std::time::SystemTime::now()).map_err(io)
    }

    /// Every blob stored: its hash, size and when it was last stored or touched.
    pub fn entries(&self) -> Result<Vec<BlobEntry>, BlobError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io { path, source }
        };
        let mut entries = Vec::new();
        for fan in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let fan = fan.map_err(io(&self.root))?.path();
            if !fan.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&fan).map_err(io(&fan))? {
                let file = file.map_err(io(&fan))?;
                // Temporary files and anything else that is not a hash are not blobs.
                let Some(hash) = file
                    .file_name()
                    .to_str()
                    .and_then(|name| name.parse::<ContentHash>().ok())
                else {
                    continue;
                };
                let metadata = file.metadata().map_err(io(&file.path()))?;
                entries.push(BlobEntry {
                    hash,
                    bytes: metadata.len(),
                    last_used: metadata.modified().map_err(io(&file.path()))?,
                });
            }
        }
        Ok(entries)
    }

    /// Deletes a blob; deleting one that is absent is not an error.
    pub fn remove(&self, hash: &ContentHash) -> Result<(), BlobError> {
        let path = self.path(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BlobError::Io { path, source }),
        }
    }
}

/// Makes a rename durable by syncing the directory that holds it.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_blobs_are_stored_at_once_duplicates_and_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path().join("blobs")).expect("open");
        let already = store.put(b"kept").expect("put");
        let inputs: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("input {i}").into_bytes())
            .collect();
        let mut blobs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        blobs.push(b"input 7");
        blobs.push(b"kept");
        let hashes = store.put_many(&blobs).expect("put many");
        assert_eq!(hashes.len(), blobs.len());
        for (bytes, hash) in blobs.iter().zip(&hashes) {
            assert_eq!(*hash, ContentHash::of(bytes));
            assert_eq!(store.get(hash).expect("get").as_deref(), Some(*bytes));
        }
        assert_eq!(hashes[501], already);
        // No temporary file is left anywhere.
        let leftovers = std::fs::read_dir(dir.path().join("blobs"))
            .expect("root")
            .flatten()
            .filter(|shard| shard.path().is_dir())
            .flat_map(|shard| std::fs::read_dir(shard.path()).expect("shard").flatten())
            .filter(|entry| entry.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(leftovers, 0);
        assert_eq!(store.put_many(&[]).expect("nothing"), Vec::new());
    }

    #[test]
    fn blobs_round_trip_and_are_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let hash = store.put(b"hello").expect("put");
        assert!(store.contains(&hash));
        assert_eq!(store.get(&hash).expect("get"), Some(b"hello".to_vec()));
        assert_eq!(store.get(&ContentHash::of(b"nope")).expect("get"), None);
        assert!(matches!(
            store.put_verified(&ContentHash::of(b"x"), b"y"),
            Err(BlobError::HashMismatch { .. })
        ));
        // Corruption on disk is detected, not served.
        std::fs::write(store.path(&hash), b"tampered").expect("write");
        assert!(matches!(store.get(&hash), Err(BlobError::Corrupt { .. })));
        store.remove(&hash).expect("remove");
        assert!(!store.contains(&hash));
        // Entries list what is stored, and touching a blob makes it the most recently used.
        let old = store.put(b"old").expect("put");
        let new = store.put(b"newer").expect("put");
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .append(true)
            .open(store.path(&new))
            .and_then(|f| f.set_modified(past))
            .expect("age");
        store.touch(&old).expect("touch");
        let mut entries = store.entries().expect("entries");
        entries.sort_by_key(|e| e.last_used);
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.hash, e.bytes))
                .collect::<Vec<_>>(),
            vec![(new, 5), (old, 3)]
        );
        store.remove(&hash).expect("removing twice is fine");
    }
}
