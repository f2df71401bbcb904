//! The spool: what the worker must not lose across a crash, a reboot or a stop, on disk under
//! `DATA_DIR/spool/`.
//!
//! - `assigned/REPLICA`: an assignment accepted and not finished. Written before the unit
//!   starts; after a restart the unit runs again from the beginning (or is reported aborted if
//!   its deadline has passed).
//! - `finished/REPLICA`: a finished replica's report and output, written before the report is
//!   sent and removed once the coordinator has answered it; after a restart it is sent first.
//!   A file a worker of protocol version 5 wrote (its report then carried a signature) is read
//!   too, so results spooled before an upgrade are still delivered.
//!
//! Every file is written to a temporary name, synced and renamed, so a crash leaves a whole file
//! or none. A replica is finished on disk before its assignment is removed, so it is always in one
//! of the two places until the coordinator has it. Files that do not decode are set aside
//! (renamed `*.corrupt`) and named in the log, never silently dropped.

use std::path::{Path, PathBuf};

use herd_protocol::{
    FinishedReplica, HEADER_LEN, Report, SignedAssignment, decode_body, decode_header, encode_frame,
};

/// Spool files are the volunteer's and nobody else's.
const MODE: u32 = 0o600;

/// A spool IO or decoding failure.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// The spool directory. See the module documentation.
#[derive(Clone, Debug)]
pub struct Spool {
    assigned: PathBuf,
    finished: PathBuf,
}

/// What a restarted worker finds in its spool.
#[derive(Debug, Default)]
pub struct Recovered {
    pub assigned: Vec<SignedAssignment>,
    pub finished: Vec<FinishedReplica>,
    /// Files that did not decode, set aside.
    pub corrupt: Vec<PathBuf>,
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> SpoolError {
    SpoolError::Io {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

impl Spool {
    /// Opens (creating if needed) the spool under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, SpoolError> {
        let spool = Self {
            assigned: data_dir.join("spool/assigned"),
            finished: data_dir.join("spool/finished"),
        };
        for dir in [&spool.assigned, &spool.finished] {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        Ok(spool)
    }

    fn write<T: serde::Serialize>(
        dir: &Path,
        replica_id: u64,
        value: &T,
    ) -> Result<(), SpoolError> {
        let path = dir.join(replica_id.to_string());
        let bytes = encode_frame(value).map_err(|e| io_error(&path, e))?;
        herd_net::write_file(&path, &bytes, MODE).map_err(|e| io_error(&path, e))
    }

    /// Records an accepted assignment before its unit starts.
    pub fn assigned(&self, signed: &SignedAssignment) -> Result<(), SpoolError> {
        Self::write(&self.assigned, signed.assignment.replica_id, signed)
    }

    /// Records a finished replica, then forgets its assignment.
    pub fn finished(&self, finished: &FinishedReplica) -> Result<(), SpoolError> {
        let replica_id = finished.report.replica_id;
        Self::write(&self.finished, replica_id, finished)?;
        self.forget_assignment(replica_id)
    }

    /// Forgets an assignment that will not run (given up, refused).
    pub fn forget_assignment(&self, replica_id: u64) -> Result<(), SpoolError> {
        remove(&self.assigned.join(replica_id.to_string()))
    }

    /// Forgets a report the coordinator has answered.
    pub fn delivered(&self, replica_id: u64) -> Result<(), SpoolError> {
        remove(&self.finished.join(replica_id.to_string()))
    }

    /// Everything in the spool, oldest replica first.
    pub fn recover(&self) -> Result<Recovered, SpoolError> {
        let mut recovered = Recovered::default();
        for path in entries(&self.assigned)? {
            match std::fs::read(&path).ok().and_then(|b| decode_assigned(&b)) {
                Some(signed) => recovered.assigned.push(signed),
                None => recovered.corrupt.push(set_aside(&path)?),
            }
        }
        for path in entries(&self.finished)? {
            match std::fs::read(&path).ok().and_then(|b| decode_finished(&b)) {
                Some(finished) => recovered.finished.push(finished),
                None => recovered.corrupt.push(set_aside(&path)?),
            }
        }
        // A replica both finished and assigned (a crash between the two steps) is finished.
        let done: Vec<u64> = recovered
            .finished
            .iter()
            .map(|f| f.report.replica_id)
            .collect();
        recovered
            .assigned
            .retain(|s| !done.contains(&s.assignment.replica_id));
        for replica_id in &done {
            self.forget_assignment(*replica_id)?;
        }
        Ok(recovered)
    }
}

/// A finished replica as workers of protocol version 5 spooled it: the report, the host key's
/// signature over it (which reports no longer carry), the output. The two layouts cannot be
/// mistaken for each other: postcard reads fields in order and refuses a frame with bytes left
/// over or missing, so a file of one layout never decodes as the other.
#[derive(serde::Deserialize)]
struct FinishedBeforeVersion6 {
    report: Report,
    _signature: Vec<u8>,
    output: Vec<u8>,
}

impl From<FinishedBeforeVersion6> for FinishedReplica {
    fn from(old: FinishedBeforeVersion6) -> Self {
        Self {
            report: old.report,
            output: old.output,
        }
    }
}

fn remove(path: &Path) -> Result<(), SpoolError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(path, error)),
    }
}

/// The spool files of `dir` (names that are replica ids), in replica order.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, e))?
        .flatten()
        .filter_map(|entry| {
            let id = entry.file_name().to_str()?.parse().ok()?;
            Some((id, entry.path()))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// The assignment an `assigned/` file holds, or `None` if the bytes are not one whole frame of it.
pub fn decode_assigned(bytes: &[u8]) -> Option<SignedAssignment> {
    decode_file(bytes)
}

/// The finished replica a `finished/` file holds, in this version's layout or protocol version
/// 5's, or `None` if the bytes are neither.
pub fn decode_finished(bytes: &[u8]) -> Option<FinishedReplica> {
    decode_file::<FinishedReplica>(bytes)
        .or_else(|| decode_file::<FinishedBeforeVersion6>(bytes).map(Into::into))
}

/// One frame filling the whole file: a file cut short or with bytes after its frame is corrupt.
fn decode_file<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let header: [u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let len = decode_header(header).ok()?;
    let body = bytes.get(HEADER_LEN..)?;
    if body.len() != len {
        return None;
    }
    decode_body(body).ok()
}

fn set_aside(path: &Path) -> Result<PathBuf, SpoolError> {
    let aside = path.with_extension("corrupt");
    std::fs::rename(path, &aside).map_err(|e| io_error(path, e))?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use herd_protocol::{
        Assignment, ContentHash, Outcome, PublicKey, Report, RunResult, SigningKey, Status,
    };

    use super::*;

    fn assignment(replica_id: u64, key: &SigningKey) -> SignedAssignment {
        Assignment {
            replica_id,
            unit_id: 1,
            batch_id: 1,
            host_key: PublicKey([1; 32]),
            module: ContentHash::of(b"m"),
            input: ContentHash::of(b"i"),
            seed: 0,
            fuel_limit: 1,
            memory_limit_bytes: 1,
            output_limit_bytes: 1,
            deadline_ms: 1,
        }
        .sign(key)
        .expect("sign")
    }

    fn finished(replica_id: u64) -> FinishedReplica {
        FinishedReplica {
            report: Report {
                replica_id,
                outcome: Outcome::Countable(RunResult {
                    status: Status::Success,
                    fuel: 5,
                    output_len: 2,
                    output_hash: ContentHash::of(b"ok"),
                }),
            },
            output: b"ok".to_vec(),
        }
    }

    #[test]
    fn a_replica_is_assigned_then_finished_then_gone_and_survives_a_reopen_at_each_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_seed([3; 32]);
        let spool = Spool::open(dir.path()).expect("open");
        spool.assigned(&assignment(7, &key)).expect("assigned");
        spool.assigned(&assignment(8, &key)).expect("assigned");
        let again = Spool::open(dir.path())
            .expect("reopen")
            .recover()
            .expect("recover");
        assert_eq!(again.assigned.len(), 2);
        spool.finished(&finished(7)).expect("finished");
        let again = Spool::open(dir.path())
            .expect("reopen")
            .recover()
            .expect("recover");
        assert_eq!(
            again
                .assigned
                .iter()
                .map(|a| a.assignment.replica_id)
                .collect::<Vec<_>>(),
            vec![8]
        );
        assert_eq!(again.finished, vec![finished(7)]);
        spool.delivered(7).expect("delivered");
        spool.forget_assignment(8).expect("forget");
        let again = spool.recover().expect("recover");
        assert!(again.assigned.is_empty() && again.finished.is_empty());
    }

    #[test]
    fn a_crash_between_finishing_and_forgetting_counts_as_finished_and_junk_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_seed([3; 32]);
        let spool = Spool::open(dir.path()).expect("open");
        spool.assigned(&assignment(9, &key)).expect("assigned");
        Spool::write(&spool.finished, 9, &finished(9)).expect("write");
        std::fs::write(dir.path().join("spool/finished/10"), b"\0\0\0\x05abc").expect("junk");
        let recovered = spool.recover().expect("recover");
        assert!(recovered.assigned.is_empty());
        assert_eq!(recovered.finished.len(), 1);
        assert_eq!(
            recovered.corrupt,
            vec![dir.path().join("spool/finished/10.corrupt")]
        );
        assert!(!dir.path().join("spool/assigned/9").exists());
    }

    #[test]
    fn results_spooled_by_a_version_5_worker_are_recovered_after_the_upgrade() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        // Version 5's layout: the report, its 64-byte signature, the output (postcard writes a
        // struct's fields in order, as it does a tuple's).
        let old = finished(11);
        let bytes =
            encode_frame(&(old.report.clone(), vec![7u8; 64], old.output.clone())).expect("encode");
        std::fs::write(dir.path().join("spool/finished/11"), bytes).expect("write");
        spool.finished(&finished(12)).expect("finished");
        let recovered = spool.recover().expect("recover");
        assert_eq!(recovered.finished, vec![finished(11), finished(12)]);
        assert!(recovered.corrupt.is_empty(), "{:?}", recovered.corrupt);
    }
}
