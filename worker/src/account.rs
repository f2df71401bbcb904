//! The account this machine computes for: its account key, given as `--account-key` (or in
//! `HERD_ACCOUNT_KEY`) or stored in the data directory by `herd-worker attach` (mode 0600, as
//! ssh keeps its keys: a key file others can read is refused).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The account key's file in a worker's data directory.
pub const ACCOUNT_KEY_FILE: &str = "account.key";

/// Where `data_dir` keeps its account key.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ACCOUNT_KEY_FILE)
}

/// An account key as the coordinator hands it out (48 hex digits), trimmed; a typo is caught
/// here rather than by the coordinator's refusal.
pub fn parse_key(text: &str) -> anyhow::Result<String> {
    let key = text.trim();
    if key.len() != 48 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "an account key is 48 hex digits, as `herd account create` printed it; this one is {} characters",
            key.chars().count()
        );
    }
    Ok(key.to_ascii_lowercase())
}

/// Stores the key in `data_dir` (created if missing), readable by this user only.
pub fn store(data_dir: &Path, key: &str) -> anyhow::Result<PathBuf> {
    let key = parse_key(key)?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let path = key_path(data_dir);
    herd_net::write_file(&path, format!("{key}\n").as_bytes(), 0o600)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// The key stored in `data_dir`, if there is one.
pub fn load(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = key_path(data_dir);
    let metadata = match std::fs::metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("read {}", path.display())),
    };
    if metadata.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} can be read by other users; the key lets anyone compute as this account: \
             `chmod 600 {}` (or attach again)",
            path.display(),
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    parse_key(&text)
        .with_context(|| format!("{}", path.display()))
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff0011223344556677";

    #[test]
    fn a_stored_key_is_read_back_and_only_its_owner_may_read_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("load"), None);
        let path = store(dir.path(), &format!("  {}\n", KEY.to_uppercase())).expect("store");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(dir.path()).expect("load"), Some(KEY.to_string()));
        // Readable by others: refused, naming the fix.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let refused = load(dir.path()).expect_err("refused");
        assert!(format!("{refused:#}").contains("chmod 600"), "{refused:#}");
    }

    #[test]
    fn a_key_that_is_not_48_hex_digits_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["", "abc", &KEY[1..], &format!("{}g", &KEY[1..])] {
            assert!(parse_key(bad).is_err(), "{bad:?}");
            assert!(store(dir.path(), bad).is_err());
        }
        assert!(!key_path(dir.path()).exists());
    }
}
