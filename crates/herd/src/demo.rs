//! `herd demo`: a whole project on this machine. It starts a coordinator (temporary data dir,
//! loopback) and three workers as real processes, submits the Mandelbrot sample as a batch of
//! tiles with quorum 2, waits, writes the assembled image as a PNG and prints the credit table.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herd_protocol::ContentHash;
use herd_samples::{MANDELBROT_WASM, mandelbrot_input};

use crate::batch::{Submission, credit_table, submit, wait};
use crate::client::Client;

/// The image: 960 x 640 pixels in 4 x 4 tiles.
const WIDTH: u32 = 960;
const HEIGHT: u32 = 640;
const TILES_X: u32 = 4;
const TILES_Y: u32 = 4;
const MAX_ITER: u32 = 600;

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

/// The tile inputs, named so that sorting by name gives row-major order.
fn tiles() -> Vec<(String, Vec<u8>)> {
    let (x_min, x_max) = (-2.2f64, 1.0f64);
    let half_height = (x_max - x_min) * f64::from(HEIGHT) / f64::from(WIDTH) / 2.0;
    let (y_min, y_max) = (-half_height, half_height);
    let (tile_w, tile_h) = (WIDTH / TILES_X, HEIGHT / TILES_Y);
    let step_x = (x_max - x_min) / f64::from(TILES_X);
    let step_y = (y_max - y_min) / f64::from(TILES_Y);
    let mut inputs = Vec::new();
    for row in 0..TILES_Y {
        for column in 0..TILES_X {
            let left = x_min + step_x * f64::from(column);
            let top = y_max - step_y * f64::from(row);
            let text = mandelbrot_input(
                (left, top - step_y),
                (left + step_x, top),
                (tile_w, tile_h),
                MAX_ITER,
            );
            inputs.push((format!("tile-{row}-{column}"), text.into_bytes()));
        }
    }
    inputs
}

/// Writes the tiles' RGB outputs as one PNG.
fn assemble(client: &Client, status: &serde_json::Value, out: &Path) -> anyhow::Result<()> {
    let (tile_w, tile_h) = ((WIDTH / TILES_X) as usize, (HEIGHT / TILES_Y) as usize);
    let mut image = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    for unit in status["units"].as_array().into_iter().flatten() {
        let name = unit["name"].as_str().unwrap_or_default();
        let mut parts = name.trim_start_matches("tile-").split('-');
        let (Some(Ok(row)), Some(Ok(column))) = (
            parts.next().map(str::parse::<usize>),
            parts.next().map(str::parse::<usize>),
        ) else {
            bail!("unexpected unit {name}");
        };
        if unit["state"] != "validated" {
            bail!("tile {name} was not validated: {}", unit["failure"]);
        }
        let hash: ContentHash = unit["result"]["output_hash"]
            .as_str()
            .unwrap_or_default()
            .parse()?;
        let image_bytes = client.get_blob(&hash)?;
        // Each tile is a PPM of the tile's size: its header, then its RGB pixels.
        let header = format!("P6\n{tile_w} {tile_h}\n255\n");
        let Some(pixels) = image_bytes.strip_prefix(header.as_bytes()) else {
            bail!("tile {name} is not a {tile_w}x{tile_h} PPM image");
        };
        if pixels.len() != tile_w * tile_h * 3 {
            bail!(
                "tile {name} has {} bytes of pixels, expected {}",
                pixels.len(),
                tile_w * tile_h * 3
            );
        }
        for y in 0..tile_h {
            let src = &pixels[y * tile_w * 3..(y + 1) * tile_w * 3];
            let start = ((row * tile_h + y) * WIDTH as usize + column * tile_w) * 3;
            image[start..start + tile_w * 3].copy_from_slice(src);
        }
    }
    let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut writer| writer.write_image_data(&image))
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
    let inputs = tiles();
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
        },
        false,
    )?;
    println!("batch {id}: {units} Mandelbrot tiles, quorum 2");
    let status = wait(&client, id, false)?;
    println!(
        "all {units} tiles validated by quorum in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assemble(&client, &status, out)?;
    println!("image: {}", out.display());
    println!("\n{}", credit_table(&client.credit()?));
    drop(workers);
    drop(coordinator);
    Ok(())
}
