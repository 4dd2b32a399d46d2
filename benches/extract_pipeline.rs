//! Throughput of `extract`'s input side alone: decoding image files and CLIP preprocessing
//! (resize, center crop, normalize) with saeclip's own code, in parallel with rayon as
//! `extract` does (the pool has as many threads as cores unless `--threads` says otherwise).
//!
//! Driven by bench/extract.py (`make bench-extract`), which writes the images and compares
//! with PIL + transformers' `CLIPImageProcessorPil`. Run alone:
//!
//! ```text
//! cargo bench --bench extract_pipeline -- --images DIR [--rounds 3] [--warmup 1] [--threads N]
//!     [--model DIR [--layer 11] [--batch 32] [--breakdown-rounds 1] [--torch-threads N]]
//! ```
//!
//! Every file under DIR (nested folders included, hidden entries skipped) is loaded with
//! `preprocess_file`. Prints one JSON line on stdout: `images`, `threads`, every timed round
//! in `rounds_s`, and the median round as `seconds` and `images_per_s`.
//!
//! With `--model`, also shows where a forward-bound extraction's time goes, in one process so
//! that machine noise hits every variant alike: per round, the forward alone (CLS token after
//! block `--layer`, to f16) over batches decoded beforehand; decoding overlapped with the
//! forward as `extract` does it (a producer thread decodes the next batch with rayon while the
//! main thread runs libtorch, through a two-batch channel); and decoding then forward, batch
//! after batch. The JSON line then carries `breakdown` with each variant's seconds per round.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use std::sync::mpsc::sync_channel;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use saeclip::clip::preprocess::{preprocess_file, PreprocessConfig};
use saeclip::clip::{Clip, LoadOptions, Tokens};
use tch::{Kind, Tensor};

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    /// Folder whose image files are decoded (walked recursively).
    images: PathBuf,
    /// Timed passes over all the images.
    rounds: usize,
    /// Untimed passes first (they also bring the files into the page cache).
    warmup: usize,
    /// Rayon threads; 0 keeps rayon's default (one per core), as `extract` does.
    threads: usize,
    /// A model to time the forward with (the breakdown); none: decoding only.
    model: Option<PathBuf>,
    /// The block whose output the breakdown's forward keeps.
    layer: usize,
    /// Images per forward in the breakdown.
    batch: usize,
    /// Rounds of the breakdown (each runs every variant once).
    breakdown_rounds: usize,
    /// libtorch intra-op threads; 0 keeps libtorch's default (one per core), as `extract` does.
    torch_threads: usize,
}

const USAGE: &str = "usage: extract_pipeline --images DIR [--rounds N] [--warmup N] [--threads N]";

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut images = None;
    let mut out = Args {
        images: PathBuf::new(),
        rounds: 3,
        warmup: 1,
        threads: 0,
        model: None,
        layer: 11,
        batch: 32,
        breakdown_rounds: 1,
        torch_threads: 0,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        // cargo passes `--bench` to every bench target.
        if flag == "--bench" {
            continue;
        }
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let number = |v: String| -> Result<usize> {
            v.parse()
                .with_context(|| format!("{flag}: `{v}` is not a count"))
        };
        match flag.as_str() {
            "--images" => images = Some(PathBuf::from(value()?)),
            "--rounds" => out.rounds = number(value()?)?,
            "--warmup" => out.warmup = number(value()?)?,
            "--threads" => out.threads = number(value()?)?,
            "--model" => out.model = Some(PathBuf::from(value()?)),
            "--layer" => out.layer = number(value()?)?,
            "--batch" => out.batch = number(value()?)?,
            "--breakdown-rounds" => out.breakdown_rounds = number(value()?)?,
            "--torch-threads" => out.torch_threads = number(value()?)?,
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    out.images = images.with_context(|| format!("--images is required\n{USAGE}"))?;
    ensure!(out.rounds > 0, "--rounds must be at least 1");
    ensure!(out.batch > 0, "--batch must be at least 1");
    ensure!(
        out.breakdown_rounds > 0,
        "--breakdown-rounds must be at least 1"
    );
    Ok(out)
}

/// Every non-hidden file below `dir`, sorted by path.
fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", d.display()))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// One parallel pass: decode and preprocess every file, keeping the pixels as `extract`
/// keeps a batch's; returns the number of values produced so that nothing is optimised away.
fn pass(files: &[PathBuf], cfg: &PreprocessConfig) -> Result<usize> {
    let pixels: Vec<Vec<f32>> = files
        .par_iter()
        .map(|p| preprocess_file(p, cfg))
        .collect::<std::result::Result<_, _>>()?;
    Ok(pixels.iter().map(Vec::len).sum())
}

/// The forward `extract` runs on one batch of preprocessed images: the CLS token after block
/// `layer`, converted to f16; returns the number of rows (tch runs eagerly, so the work is
/// done when it returns).
fn forward(clip: &Clip, pixels: &[Vec<f32>], size: i64, layer: usize) -> Result<usize> {
    let flat: Vec<f32> = pixels.iter().flat_map(|p| p.iter().copied()).collect();
    let batch = Tensor::f_from_slice(&flat)?.f_view([pixels.len() as i64, 3, size, size])?;
    let residual = clip.residual(&batch, layer)?;
    let cls = Tokens::Cls.select(&residual).to_kind(Kind::Half); // B, 1, D
    Ok(cls.size()[0] as usize)
}

fn decode_batch(files: &[PathBuf], cfg: &PreprocessConfig) -> Result<Vec<Vec<f32>>> {
    Ok(files
        .par_iter()
        .map(|p| preprocess_file(p, cfg))
        .collect::<std::result::Result<_, _>>()?)
}

/// Decoding overlapped with the forward, as `extract` does it.
fn pipelined(clip: &Clip, files: &[PathBuf], cfg: &PreprocessConfig, a: &Args) -> Result<usize> {
    let size = i64::from(cfg.fixed_side().expect("a square crop"));
    std::thread::scope(|scope| -> Result<usize> {
        let (tx, rx) = sync_channel::<Result<Vec<Vec<f32>>>>(2);
        scope.spawn(move || {
            for chunk in files.chunks(a.batch) {
                if tx.send(decode_batch(chunk, cfg)).is_err() {
                    break;
                }
            }
        });
        let mut rows = 0;
        for batch in rx {
            rows += forward(clip, &batch?, size, a.layer)?;
        }
        Ok(rows)
    })
}

/// CPU seconds (user + system, all threads) this process has used so far, from
/// /proc/self/stat (Linux; clock ticks of 1/100 s); `NaN` where that cannot be read.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// Seconds per round of each way of running decode and forward over all `files`.
fn breakdown(model: &Path, files: &[PathBuf], a: &Args) -> Result<serde_json::Value> {
    let load = Instant::now();
    let clip = Clip::load(model, &LoadOptions::default())?;
    let load_s = load.elapsed().as_secs_f64();
    let size = clip.info().image_size;
    let cfg = PreprocessConfig::with_size(size as u32);
    let decoded: Vec<Vec<Vec<f32>>> = files
        .chunks(a.batch)
        .map(|chunk| decode_batch(chunk, &cfg))
        .collect::<Result<_>>()?;
    // Apart: the first forward pays for allocations and kernel selection.
    let first = Instant::now();
    forward(&clip, &decoded[0], size, a.layer)?;
    let first_forward_s = first.elapsed().as_secs_f64();
    let (mut fwd, mut pipe, mut seq) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..a.breakdown_rounds {
        // Alternate the order so that a trend in machine load hits the variants alike.
        let order: [u8; 3] = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for variant in order {
            let start = Instant::now();
            let cpu_start = cpu_seconds();
            let mut rows = 0;
            match variant {
                0 => {
                    for batch in &decoded {
                        rows += forward(&clip, batch, size, a.layer)?;
                    }
                }
                1 => rows = pipelined(&clip, files, &cfg, a)?,
                _ => {
                    for chunk in files.chunks(a.batch) {
                        rows += forward(&clip, &decode_batch(chunk, &cfg)?, size, a.layer)?;
                    }
                }
            }
            let elapsed = start.elapsed().as_secs_f64();
            cpu[usize::from(variant)].push(cpu_seconds() - cpu_start);
            ensure!(
                rows == files.len(),
                "{rows} rows for {} images",
                files.len()
            );
            [&mut fwd, &mut pipe, &mut seq][usize::from(variant)].push(elapsed);
        }
    }
    Ok(serde_json::json!({
        "layer": a.layer,
        "batch": a.batch,
        "torch_threads": tch::get_num_threads(),
        "load_s": load_s,
        "first_forward_s": first_forward_s,
        "forward_s": fwd,
        "pipelined_s": pipe,
        "sequential_s": seq,
        "forward_median_s": median(&fwd),
        "pipelined_median_s": median(&pipe),
        "sequential_median_s": median(&seq),
        "forward_cpu_s": cpu[0],
        "pipelined_cpu_s": cpu[1],
        "sequential_cpu_s": cpu[2],
    }))
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run(args: &Args) -> Result<()> {
    if args.torch_threads > 0 {
        tch::set_num_threads(args.torch_threads as i32);
    }
    if args.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(args.threads)
            .build_global()
            .context("cannot start the rayon pool")?;
    }
    let files = list_files(&args.images)?;
    ensure!(!files.is_empty(), "{}: no files", args.images.display());
    let cfg = PreprocessConfig::default();
    let expected = files.len() * 3 * (cfg.fixed_side().expect("a square crop") as usize).pow(2);
    for _ in 0..args.warmup {
        pass(&files, &cfg)?;
    }
    let mut rounds = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let start = Instant::now();
        let values = pass(&files, &cfg)?;
        rounds.push(start.elapsed().as_secs_f64());
        ensure!(values == expected, "{values} values, expected {expected}");
    }
    let seconds = median(&rounds);
    let breakdown = match &args.model {
        Some(model) => breakdown(model, &files, args)?,
        None => serde_json::Value::Null,
    };
    let line = serde_json::json!({
        "images": files.len(),
        "threads": rayon::current_num_threads(),
        "rounds_s": rounds,
        "seconds": seconds,
        "images_per_s": files.len() as f64 / seconds,
        "breakdown": breakdown,
    });
    println!("{line}");
    Ok(())
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)).and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
