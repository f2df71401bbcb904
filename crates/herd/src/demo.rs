//! `herd demo`: a whole project on this machine. It starts a coordinator (temporary data dir,
//! loopback) and three workers as real processes, submits the Mandelbrot sample as a batch of
//! tiles with quorum 2 (the picture is [`herd_samples::demo`]), waits, writes the assembled image
//! as a PNG and prints the credit table. Every tile must be validated and well formed, or the
//! demo fails naming it: it never draws a blank region.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herd_protocol::ContentHash;
use herd_samples::{MANDELBROT_WASM, demo};

use crate::batch::{Submission, credit_table, describe, submit, wait};
use crate::client::Client;

/// The demo's volunteers: (name, team).
const VOLUNTEERS: [(&str, &str); 3] = [
    ("ada", "analytical-engines"),
    ("grace", "analytical-engines"),
    ("alan", "bletchley"),
];

/// A child process killed when dropped, so no process outlives the demo.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A program that ships beside `herd` (same directory, as `cargo build` and `cargo install` leave them).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the herd executable")?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{name} not found at {}: build the whole workspace (cargo build --release) so the three programs sit together",
            path.display()
        );
    }
    Ok(path)
}

fn spawn(program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Running> {
    let log_file = File::create(log).with_context(|| format!("create {}", log.display()))?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("start {}", program.display()))?;
    Ok(Running(child))
}

/// Waits for a file the coordinator writes once it listens, and returns its first line.
fn wait_for_file(path: &Path, coordinator: &mut Running, log: &Path) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text.lines().next()
        {
            return Ok(line.trim().to_string());
        }
        if let Ok(Some(status)) = coordinator.0.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!("the coordinator exited ({status}):\n{log}");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the coordinator did not write {} within 60 s",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Draws the picture from the tiles' outputs: every tile of [`demo::tiles`] must have an output
/// that is a PPM image of the tile's size, or the error names the tile (never a blank region).
/// Pure: the outputs come in, RGB pixels (rows top down) go out.
fn compose(outputs: &HashMap<String, Vec<u8>>) -> anyhow::Result<Vec<u8>> {
    let (tile_w, tile_h) = demo::tile_size();
    let (tile_w, tile_h) = (tile_w as usize, tile_h as usize);
    let width = demo::WIDTH as usize;
    let mut image = vec![0u8; width * demo::HEIGHT as usize * 3];
    let header = format!("P6\n{tile_w} {tile_h}\n255\n");
    for tile in demo::tiles() {
        let name = &tile.name;
        let Some(output) = outputs.get(name) else {
            bail!("tile {name} has no output");
        };
        let Some(pixels) = output.strip_prefix(header.as_bytes()) else {
            bail!("tile {name} is not a {tile_w}x{tile_h} PPM image");
        };
        if pixels.len() != tile_w * tile_h * 3 {
            bail!(
                "tile {name} has {} bytes of pixels, expected {}",
                pixels.len(),
                tile_w * tile_h * 3
            );
        }
        let (row, column) = (tile.row as usize, tile.column as usize);
        for (y, line) in pixels.chunks_exact(tile_w * 3).enumerate() {
            let start = ((row * tile_h + y) * width + column * tile_w) * 3;
            image[start..start + tile_w * 3].copy_from_slice(line);
        }
    }
    Ok(image)
}

/// Every tile's validated output, from every unit of the batch (all pages). A tile that is
/// missing, failed or still open is an error that names it.
fn tile_outputs(client: &Client, id: u64) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let units = client.batch_units(id, None)?;
    let by_name: HashMap<&str, &serde_json::Value> = units
        .iter()
        .filter_map(|unit| Some((unit["name"].as_str()?, unit)))
        .collect();
    let mut outputs = HashMap::new();
    for tile in demo::tiles() {
        let name = tile.name;
        let Some(unit) = by_name.get(name.as_str()) else {
            bail!("tile {name} is missing from batch {id}");
        };
        if unit["state"] != "validated" {
            bail!(
                "tile {name} was not validated ({}): {}",
                unit["state"],
                unit["failure"]
            );
        }
        let hash: ContentHash = unit["result"]["output_hash"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("tile {name}: no output hash"))?;
        let bytes = client
            .get_blob(&hash)
            .with_context(|| format!("download tile {name}"))?;
        if ContentHash::of(&bytes) != hash {
            bail!("tile {name}: the downloaded output does not hash to {hash}");
        }
        outputs.insert(name, bytes);
    }
    Ok(outputs)
}

/// Writes RGB pixels of the demo's size as a PNG.
fn write_png(image: &[u8], out: &Path) -> anyhow::Result<()> {
    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), demo::WIDTH, demo::HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut writer| writer.write_image_data(image))
        .with_context(|| format!("write {}", out.display()))?;
    Ok(())
}

pub(crate) fn demo(out: &Path, keep: Option<&Path>) -> anyhow::Result<()> {
    let coordinator_bin = sibling("herd-coordinator")?;
    let worker_bin = sibling("herd-worker")?;
    let temp;
    let root = match keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            dir.to_path_buf()
        }
        None => {
            temp = tempfile::tempdir().context("create a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let data = root.join("coordinator");
    let log = root.join("coordinator.log");
    let data_arg = data.to_string_lossy().into_owned();
    let mut coordinator = spawn(
        &coordinator_bin,
        &[
            "--data-dir",
            &data_arg,
            "--quic",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            // The demo's workers compute under names, with no accounts to sign up for.
            "--anonymous-volunteers",
        ],
        &log,
    )?;
    let join = wait_for_file(&data.join("join"), &mut coordinator, &log)?;
    let http = wait_for_file(&data.join("http"), &mut coordinator, &log)?;
    let token = std::fs::read_to_string(data.join("researcher.token"))
        .context("read the researcher token")?;
    println!("coordinator: {http} (QUIC {join})");

    let mut workers = Vec::new();
    for (name, team) in VOLUNTEERS {
        let dir = root.join(format!("worker-{name}"));
        let dir_arg = dir.to_string_lossy().into_owned();
        let args = [
            "--data-dir",
            &dir_arg,
            "--join",
            &join,
            "--name",
            name,
            "--team",
            team,
            "--cores",
            "1",
            // The demo's workers are the researcher's own, on their machine: compute now.
            "--always",
        ];
        workers.push(spawn(
            &worker_bin,
            &args,
            &root.join(format!("worker-{name}.log")),
        )?);
        println!("worker: {name} ({team})");
    }

    let client = Client::new(&http, Some(token));
    let module_path = root.join("mandelbrot.wasm");
    std::fs::write(&module_path, MANDELBROT_WASM).context("write the sample module")?;
    let inputs: Vec<(String, Vec<u8>)> = demo::tiles()
        .into_iter()
        .map(|tile| (tile.name, tile.input.into_bytes()))
        .collect();
    let units = inputs.len();
    let started = Instant::now();
    let id = submit(
        &client,
        Submission {
            module: &module_path,
            inputs,
            quorum: Some(2),
            fuel: None,
            memory_mb: None,
            priority: None,
            adaptive: None,
            distinct_networks: false,
            bid: None,
            seasoned_after: None,
            deadline_secs: None,
        },
        false,
    )?;
    println!("batch {id}: {units} Mandelbrot tiles, quorum 2");
    let summary = wait(&client, id, false)?;
    if summary["validated"].as_u64() != Some(units as u64) {
        let failed = client.batch_status_with(id, Some("failed"))?;
        bail!("not every tile was validated: {}", describe(&failed));
    }
    println!(
        "all {units} tiles validated by quorum in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let image = compose(&tile_outputs(&client, id)?)?;
    write_png(&image, out)?;
    println!("image: {}", out.display());
    println!("\n{}", credit_table(&client.credit()?));
    drop(workers);
    drop(coordinator);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs for every tile, each filled with one colour per tile: (row, column, index).
    fn flat_outputs() -> HashMap<String, Vec<u8>> {
        let (w, h) = demo::tile_size();
        demo::tiles()
            .into_iter()
            .enumerate()
            .map(|(index, tile)| {
                let mut ppm = format!("P6\n{w} {h}\n255\n").into_bytes();
                for _ in 0..w * h {
                    ppm.extend_from_slice(&[tile.row as u8, tile.column as u8, index as u8 + 1]);
                }
                (tile.name, ppm)
            })
            .collect()
    }

    #[test]
    fn every_tile_lands_in_its_place() {
        let image = compose(&flat_outputs()).expect("compose");
        let (w, h) = demo::tile_size();
        let pixel = |x: u32, y: u32| {
            let at = ((y * demo::WIDTH + x) * 3) as usize;
            [image[at], image[at + 1], image[at + 2]]
        };
        for tile in demo::tiles() {
            let index = tile.row * demo::TILES_X + tile.column;
            let expected = [tile.row as u8, tile.column as u8, index as u8 + 1];
            // Its corners and its middle.
            for (x, y) in [
                (0, 0),
                (w - 1, 0),
                (0, h - 1),
                (w - 1, h - 1),
                (w / 2, h / 2),
            ] {
                assert_eq!(
                    pixel(tile.column * w + x, tile.row * h + y),
                    expected,
                    "{}",
                    tile.name
                );
            }
        }
    }

    #[test]
    fn a_missing_or_malformed_tile_is_an_error_that_names_it() {
        let mut outputs = flat_outputs();
        outputs.remove("tile-2-1");
        let error = compose(&outputs).expect_err("a missing tile");
        assert!(
            error.to_string().contains("tile tile-2-1 has no output"),
            "{error}"
        );
        let mut outputs = flat_outputs();
        outputs.insert("tile-0-3".into(), b"P6\n3 3\n255\n".to_vec());
        let error = compose(&outputs).expect_err("a wrong size");
        assert!(
            error.to_string().contains("tile tile-0-3 is not a 240x160"),
            "{error}"
        );
        let mut outputs = flat_outputs();
        if let Some(output) = outputs.get_mut("tile-3-3") {
            output.pop();
        }
        let error = compose(&outputs).expect_err("cut short");
        assert!(
            error.to_string().contains("tile tile-3-3 has 115199 bytes"),
            "{error}"
        );
    }
}
