//! `herd submit`, `status`, `results` and `credit`: the researcher's side of a batch.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herd_protocol::ContentHash;
use herd_sandbox::Limits;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::{BatchSpec, Client, UnitSpec};
use crate::run::read_module;

/// How often `--wait` polls the batch.
const POLL: Duration = Duration::from_millis(500);

/// What the researcher asks of a new batch.
pub(crate) struct Submission<'a> {
    pub(crate) module: &'a Path,
    pub(crate) inputs: Vec<(String, Vec<u8>)>,
    pub(crate) quorum: Option<u32>,
    pub(crate) fuel: Option<u64>,
    pub(crate) memory_mb: Option<u64>,
    pub(crate) priority: Option<i32>,
    pub(crate) adaptive: Option<crate::client::AdaptiveSpec>,
    /// At most one replica of a unit per network.
    pub(crate) distinct_networks: bool,
    /// Credits per credit of agreed work, as written; `None`: the free tier.
    pub(crate) bid: Option<String>,
    /// Valid results a host needs to count as seasoned (each quorum needs one).
    pub(crate) seasoned_after: Option<u32>,
    /// Seconds each replica has before it is given to another volunteer.
    pub(crate) deadline_secs: Option<u64>,
}

/// The longest replica deadline a batch may set (the coordinator's own bound).
const LONGEST_DEADLINE_SECS: u64 = 30 * 86_400;

/// `herd submit --deadline`: `90s`, `20m`, `6h`, `2d`, or plain seconds, from 1 s to 30 days.
pub(crate) fn parse_deadline(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("`{text}` is not a time: write 90s, 20m, 6h or 2d")),
    };
    let secs = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("`{text}` is not a time: write 90s, 20m, 6h or 2d"))?;
    if !(1..=LONGEST_DEADLINE_SECS).contains(&secs) {
        return Err(format!("a deadline is from 1s to 30d, not {text}"));
    }
    Ok(secs)
}

/// Reads every file in `dir` (sorted by name) as one unit's input.
pub(crate) fn read_inputs(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read input directory {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    paths.retain(|p| p.is_file());
    paths.sort();
    if paths.is_empty() {
        bail!("input directory {} has no files", dir.display());
    }
    paths
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("input file name {} is not UTF-8", path.display()))?
                .to_string();
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok((name, bytes))
        })
        .collect()
}

fn bar(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// The most input bytes one upload request carries.
const UPLOAD_CHUNK: usize = 8 << 20;

/// Uploads the module and inputs and creates the batch; returns its id.
pub(crate) fn submit(
    client: &Client,
    submission: Submission<'_>,
    quiet: bool,
) -> anyhow::Result<u64> {
    let wasm = read_module(submission.module)?;
    // Refuse locally, with the same rules and message as the coordinator, before uploading.
    let memory_limit = submission
        .memory_mb
        .unwrap_or(Limits::default().memory_bytes >> 20)
        .saturating_mul(1 << 20);
    crate::run::local_sandbox(true)?
        .admit(&wasm)
        .and_then(|module| module.check_memory_limit(memory_limit))
        .with_context(|| format!("module {} is rejected", submission.module.display()))?;
    let module = client.put_blob(&wasm)?;
    let progress = if quiet {
        ProgressBar::hidden()
    } else {
        bar(submission.inputs.len() as u64, "uploading")
    };
    let mut units = Vec::with_capacity(submission.inputs.len());
    // Inputs go up many to a request, each request under UPLOAD_CHUNK bytes (a larger input
    // goes alone).
    let mut start = 0;
    while start < submission.inputs.len() {
        let mut end = start + 1;
        let mut bytes = submission.inputs[start].1.len();
        while end < submission.inputs.len()
            && bytes + submission.inputs[end].1.len() + 4 <= UPLOAD_CHUNK
        {
            bytes += submission.inputs[end].1.len() + 4;
            end += 1;
        }
        let chunk: Vec<&[u8]> = submission.inputs[start..end]
            .iter()
            .map(|(_, bytes)| bytes.as_slice())
            .collect();
        let hashes = client.put_blobs(&chunk)?;
        for ((name, _), hash) in submission.inputs[start..end].iter().zip(hashes) {
            units.push(UnitSpec {
                name: name.clone(),
                input: hash.to_hex(),
            });
        }
        progress.inc((end - start) as u64);
        start = end;
    }
    progress.finish_and_clear();
    client.create_batch(&BatchSpec {
        module: module.to_hex(),
        units,
        quorum: submission.quorum,
        fuel: submission.fuel,
        memory_mb: submission.memory_mb,
        priority: submission.priority,
        adaptive: submission.adaptive,
        distinct_networks: submission.distinct_networks.then_some(true),
        bid: submission.bid,
        seasoned_after: submission.seasoned_after,
        deadline_secs: submission.deadline_secs,
    })
}

fn count(status: &Value, field: &str) -> u64 {
    status[field].as_u64().unwrap_or(0)
}

/// Follows a batch with a progress bar until every unit is validated or failed; returns its
/// final counts (no units: callers page through those they need with `Client::batch_units`).
pub(crate) fn wait(client: &Client, id: u64, quiet: bool) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut status = client.batch_summary(id)?;
    let total = count(&status, "total");
    let progress = if quiet {
        ProgressBar::hidden()
    } else {
        bar(total, "validated")
    };
    loop {
        let (validated, failed) = (count(&status, "validated"), count(&status, "failed"));
        progress.set_position(validated);
        let done = validated + failed;
        let eta = if done > 0 && done < total {
            let per_unit = started.elapsed().as_secs_f64() / done as f64;
            format!("ETA {:.0}s", per_unit * (total - done) as f64)
        } else {
            String::new()
        };
        progress.set_message(format!("{failed} failed {eta}"));
        if done >= total {
            progress.finish_and_clear();
            return Ok(status);
        }
        std::thread::sleep(POLL);
        status = client.batch_summary(id)?;
    }
}

/// A human summary of a batch: its counts, and the reason of each failed unit among `"units"`.
pub(crate) fn describe(status: &Value) -> String {
    let mut text = format!(
        "batch {}: {} units: {} validated, {} failed, {} open (quorum {})",
        status["id"],
        count(status, "total"),
        count(status, "validated"),
        count(status, "failed"),
        count(status, "open"),
        status["quorum"]
    );
    for unit in status["units"].as_array().into_iter().flatten() {
        if unit["state"] == "failed" {
            text.push_str(&format!(
                "\n  {} failed: {}",
                unit["name"].as_str().unwrap_or("?"),
                unit["failure"].as_str().unwrap_or("no reason given")
            ));
        }
    }
    text
}

/// Whether a name from the coordinator is safe to use as a file name in the output directory.
fn safe_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Downloads every validated unit's output into `out`, named after its input; returns how many.
pub(crate) fn results(client: &Client, id: u64, out: &Path) -> anyhow::Result<usize> {
    let units = client.batch_units(id, Some("validated"))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written = 0;
    for unit in &units {
        let name = unit["name"].as_str().unwrap_or_default();
        if unit["state"] != "validated" {
            continue;
        }
        if !safe_file_name(name) {
            bail!("the coordinator sent a unit name unsafe as a file name: {name:?}");
        }
        let hash: ContentHash = unit["result"]["output_hash"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("unit {name}: no output hash"))?;
        let path = out.join(name);
        // Resuming: an output already on disk with the right hash is not downloaded again.
        if std::fs::read(&path).is_ok_and(|bytes| ContentHash::of(&bytes) == hash) {
            written += 1;
            continue;
        }
        let bytes = client.get_blob(&hash)?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        written += 1;
    }
    Ok(written)
}

/// The credit table for humans.
pub(crate) fn credit_table(credit: &Value) -> String {
    let mut text = format!(
        "{:<16} {:<20} {:>14} {:>12} {:>9}\n",
        "volunteer", "team", "credit", "RAC/day", "replicas"
    );
    for line in credit["volunteers"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "{:<16} {:<20} {:>14.6} {:>12.6} {:>9}\n",
            line["name"].as_str().unwrap_or("?"),
            line["team"].as_str().unwrap_or("-"),
            line["credit"].as_f64().unwrap_or(0.0),
            line["recent_average_credit"].as_f64().unwrap_or(0.0),
            line["replicas"]
        ));
    }
    text.push_str(&format!(
        "\n{:<37} {:>14} {:>12} {:>9}\n",
        "team", "credit", "RAC/day", "replicas"
    ));
    for line in credit["teams"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "{:<37} {:>14.6} {:>12.6} {:>9}\n",
            line["name"].as_str().unwrap_or("?"),
            line["credit"].as_f64().unwrap_or(0.0),
            line["recent_average_credit"].as_f64().unwrap_or(0.0),
            line["replicas"]
        ));
    }
    text.push_str(&format!(
        "(1 credit = {} fuel agreed by a quorum; RAC: recent average credit per day, 7-day half-life)",
        credit["fuel_per_credit"]
    ));
    text
}

/// The host records for humans.
pub(crate) fn hosts_table(hosts: &Value) -> String {
    let mut text = format!(
        "{:>5} {:<16} {:<12} {:>5} {:>7} {:>7} {:>6} {:>9} {:>8} {:>12}\n",
        "host",
        "volunteer",
        "key",
        "cores",
        "valid",
        "invalid",
        "errors",
        "timed out",
        "refused",
        "credit"
    );
    for host in hosts["hosts"].as_array().into_iter().flatten() {
        let key = host["public_key"].as_str().unwrap_or("?");
        text.push_str(&format!(
            "{:>5} {:<16} {:<12} {:>5} {:>7} {:>7} {:>6} {:>9} {:>8} {:>12.6}\n",
            host["id"],
            host["volunteer"].as_str().unwrap_or("?"),
            &key[..key.len().min(12)],
            host["cores"],
            host["valid"],
            host["invalid"],
            host["errors"],
            host["timed_out"],
            host["refused_reports"],
            host["credit"].as_f64().unwrap_or(0.0),
        ));
    }
    text
}

/// Every batch of the researcher, page after page.
pub(crate) fn all_batches(client: &Client) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = client.list_batches(after, 1000)?;
        if let Some(batches) = page["batches"].as_array() {
            all.extend(batches.iter().cloned());
        }
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return Ok(all),
        }
    }
}

/// The batch list as a table.
pub(crate) fn batches_table(batches: &[Value]) -> String {
    let mut table = format!(
        "{:>8}  {:>9}  {:>9}  {:>7}  {:>7}  {:>6}  {:>8}\n",
        "batch", "validated", "open", "failed", "total", "quorum", "priority"
    );
    for batch in batches {
        table.push_str(&format!(
            "{:>8}  {:>9}  {:>9}  {:>7}  {:>7}  {:>6}  {:>8}\n",
            batch["id"],
            count(batch, "validated"),
            count(batch, "open"),
            count(batch, "failed"),
            count(batch, "total"),
            batch["quorum"],
            batch["priority"]
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::parse_deadline;

    #[test]
    fn a_deadline_is_read_in_seconds_minutes_hours_or_days_and_bounded() {
        assert_eq!(parse_deadline("90"), Ok(90));
        assert_eq!(parse_deadline("90s"), Ok(90));
        assert_eq!(parse_deadline("20m"), Ok(1_200));
        assert_eq!(parse_deadline("6h"), Ok(21_600));
        assert_eq!(parse_deadline("30d"), Ok(2_592_000));
        for bad in [
            "",
            "s",
            "0",
            "31d",
            "1w",
            "-5s",
            "1.5h",
            "99999999999999999999d",
        ] {
            let error = parse_deadline(bad).expect_err(bad);
            assert!(error.contains(bad) || bad.is_empty(), "{bad}: {error}");
        }
    }
}
