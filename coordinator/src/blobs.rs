//! The project's blobs as the coordinator sees them: its own content-addressed blob store, and,
//! when the database keeps blobs for every coordinator of the project (PostgreSQL), the
//! database behind it. Every blob written is kept in both; a blob read is taken from the local
//! store, else fetched from the database, checked against its hash and kept locally from then
//! on (the local store is a cache in front of the shared one).
//!
//! Calls block on the database: call them from blocking threads.

use std::sync::Arc;

use anyhow::{Context, bail};
use herd_blobs::BlobStore;
use herd_protocol::ContentHash;
use herd_store::Store;

#[derive(Clone)]
pub(crate) struct ProjectBlobs {
    local: BlobStore,
    store: Arc<dyn Store>,
}

impl ProjectBlobs {
    pub(crate) fn new(local: BlobStore, store: Arc<dyn Store>) -> Self {
        Self { local, store }
    }

    /// Keeps a blob; returns its hash.
    pub(crate) fn put(&self, bytes: &[u8]) -> anyhow::Result<ContentHash> {
        let hash = self.local.put(bytes)?;
        self.share(vec![bytes.to_vec()])?;
        Ok(hash)
    }

    /// Keeps many blobs (one sync of the local store for all); returns their hashes in order.
    pub(crate) fn put_many(&self, blobs: &[&[u8]]) -> anyhow::Result<Vec<ContentHash>> {
        let hashes = self.local.put_many(blobs)?;
        self.share(blobs.iter().map(|b| b.to_vec()).collect())?;
        Ok(hashes)
    }

    fn share(&self, blobs: Vec<Vec<u8>>) -> anyhow::Result<()> {
        if self.store.shares_blobs() {
            self.store
                .share_blobs(blobs)
                .wait()
                .context("keep the blobs in the database")?;
        }
        Ok(())
    }

    /// A blob's bytes, checked against its hash, or `None` if the project has no such blob.
    pub(crate) fn get(&self, hash: &ContentHash) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(bytes) = self.local.get(hash)? {
            return Ok(Some(bytes));
        }
        if !self.store.shares_blobs() {
            return Ok(None);
        }
        let Some(bytes) = self
            .store
            .shared_blob(hash)
            .wait()
            .context("read a blob from the database")?
        else {
            return Ok(None);
        };
        let actual = ContentHash::of(&bytes);
        if actual != *hash {
            bail!("the database's blob {hash} hashes to {actual}: it is corrupt");
        }
        self.local.put_verified(hash, &bytes)?;
        Ok(Some(bytes))
    }

    /// Whether this coordinator's own store holds the blob (no database query).
    pub(crate) fn cached(&self, hash: &ContentHash) -> bool {
        self.local.contains(hash)
    }

    /// The first of `hashes` the project holds nowhere.
    pub(crate) fn first_missing<'h>(
        &self,
        hashes: impl Iterator<Item = &'h ContentHash>,
    ) -> anyhow::Result<Option<ContentHash>> {
        let not_here: Vec<ContentHash> = hashes
            .filter(|h| !self.local.contains(h))
            .copied()
            .collect();
        if not_here.is_empty() || !self.store.shares_blobs() {
            return Ok(not_here.first().copied());
        }
        let missing = self
            .store
            .shared_blobs_missing(not_here)
            .wait()
            .context("look blobs up in the database")?;
        Ok(missing.first().copied())
    }

    /// Deletes blobs no batch refers to any more, here and in the database.
    pub(crate) fn remove_all(&self, hashes: &[ContentHash]) -> anyhow::Result<()> {
        for hash in hashes {
            self.local.remove(hash)?;
        }
        if self.store.shares_blobs() {
            self.store
                .unshare_blobs(hashes.to_vec())
                .wait()
                .context("delete blobs from the database")?;
        }
        Ok(())
    }
}
