//! Files the coordinator and the worker both keep: secrets written atomically with mode 0600, and
//! ed25519 keys stored as a hex seed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use herd_protocol::SigningKey;

/// A file could not be read or written, or holds something else than expected.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a 32-byte hex key")]
    BadKey { path: PathBuf },
    #[error("operating system randomness: {0}")]
    Random(String),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError::Io {
        action,
        path,
        source,
    }
}

/// `N` bytes from the operating system's randomness.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], FileError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| FileError::Random(e.to_string()))?;
    Ok(bytes)
}

/// Writes a file atomically (temporary file, sync, rename) with the given mode, so a crash leaves
/// either the old file or the new one, never half of one.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("write", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    Ok(())
}

/// Loads an ed25519 key stored as a hex seed, or creates one (mode 0600) if the file is absent.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, FileError> {
    if path.exists() {
        let text = fs::read_to_string(path).map_err(io("read", path))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| FileError::BadKey {
            path: path.to_path_buf(),
        })?;
        return Ok(SigningKey::from_seed(seed));
    }
    let key = SigningKey::from_seed(random_bytes()?);
    write_file(
        path,
        format!("{}\n", hex::encode(key.seed())).as_bytes(),
        0o600,
    )?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let key = load_or_create_key(&path).expect("create");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            load_or_create_key(&path).expect("load").public_key(),
            key.public_key()
        );
        fs::write(&path, "junk").expect("write");
        assert!(matches!(
            load_or_create_key(&path),
            Err(FileError::BadKey { .. })
        ));
    }
}
