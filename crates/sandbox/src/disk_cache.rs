//! The on-disk cache of compiled modules, so a worker compiles each module once, not once per
//! start. An entry is keyed by the module's content hash and by the engine's compatibility hash
//! (wasmtime version, compiler settings, Herd's configuration), so a change of either misses.
//!
//! Only this process's own compilations are ever loaded: entries are written here, from modules
//! this sandbox compiled itself, into a directory private to the worker (mode 0700). Nothing that
//! came over the network is loaded as code. Each entry starts with the BLAKE3 hash of its payload,
//! checked before loading, so a corrupt file is recompiled, never run.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use herd_protocol::ContentHash;
use wasmtime::{Engine, Module};

/// Bumped when Herd's engine configuration changes in a way wasmtime's own hash cannot see, or
/// the pass rewrites faster without changing what a module computes or its fuel (so
/// `herd_instrument::VERSION`, which replicas must share, stays): 2 for the save globals and
/// the one-branch loop check, 3 for the branch hints, the one-flag NaN test and fewer locals
/// kept around refuels, so hosts recompile rather than keep the slower rewrite.
const CONFIG_VERSION: u32 = 3;

pub(crate) struct DiskCache {
    dir: PathBuf,
    engine_key: String,
}

impl DiskCache {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        // SipHash with fixed keys: the same engine configuration gives the same key in every run.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CONFIG_VERSION.hash(&mut hasher);
        // The compiled code is the instrumentation's rewrite: a new pass is a new key.
        herd_instrument::VERSION.hash(&mut hasher);
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    pub(crate) fn path(&self, module: &ContentHash) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", module.to_hex(), self.engine_key))
    }

    /// The compiled module, if this cache holds a sound entry for it.
    pub(crate) fn load(&self, engine: &Engine, module: &ContentHash) -> Option<Module> {
        let path = self.path(module);
        let bytes = std::fs::read(&path).ok()?;
        let (checksum, payload) = bytes.split_at_checked(32)?;
        if blake3::hash(payload).as_bytes() != checksum {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // SAFETY: `Module::deserialize` trusts its bytes to be wasmtime's own output. These are:
        // they were written by `store` below from a module this engine compiled, into a directory
        // only this user can write, and their checksum was verified just now. wasmtime also checks
        // that the artifact matches this engine's version and configuration, and refuses it if not.
        #[allow(unsafe_code)]
        let loaded = unsafe { Module::deserialize(engine, payload) };
        match loaded {
            Ok(module) => Some(module),
            Err(_) => {
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Saves a module this engine compiled. Failure only costs a recompilation later.
    pub(crate) fn store(&self, hash: &ContentHash, module: &Module) {
        let Ok(payload) = module.serialize() else {
            return;
        };
        let path = self.path(hash);
        let write = || -> std::io::Result<()> {
            let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
            file.write_all(blake3::hash(&payload).as_bytes())?;
            file.write_all(&payload)?;
            file.as_file().sync_all()?;
            file.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        let _ = write();
    }
}
