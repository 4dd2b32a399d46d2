//! SAE training on synthetic activations with a known dictionary: the Rust half of
//! `make bench-train` (bench/train.py drives it, trains the Python peers on the same rows
//! and evaluates all three SAEs with one script).
//!
//! Three commands, each printing one JSON line on stdout:
//!
//! ```text
//! cargo bench --bench train_ground_truth -- data --out DIR --rows N --heldout M
//!     [--d 768] [--atoms 4096] [--active 32] [--noise 0.01] [--seed 20240607]
//! cargo bench --bench train_ground_truth -- train --cache DIR --run-dir DIR
//!     [--threads 2] [--skip-steps 5] [--set key=value]...
//! cargo bench --bench train_ground_truth -- profile --cache DIR [--threads 2] [--steps 6]
//!     [--set key=value]...
//! ```
//!
//! `data` writes, once per setting (a marker file written last makes a complete folder
//! reusable), `DIR/cache` (a saeclip activation cache of the N training rows, f32, one
//! "image" per row) and `DIR/data.safetensors` holding the same rows in the same order
//! (`train` [N, D]), `heldout` [M, D] and the true dictionary `atoms` [A, D] (unit rows).
//! Each row is Σ m_j·atom_j over `active` distinct atoms drawn uniformly, m_j ~ Exp(1),
//! plus N(0, noise²) per element.
//!
//! `train` runs `saeclip::sae::train::train` on the cache with the config the `--set`
//! overrides give (on top of the defaults) and reports steps/s from the step lines' clocks,
//! leaving out the first `--skip-steps` steps (start-up: first-touch page faults, caches).
//!
//! `profile` times the parts of saeclip's step (encoder matmul, top-k, the whole
//! forward/backward, the Adam step with the decoder constraint) on the first batches of the
//! cache, to tell where a step's time goes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use saeclip::clip::{Precision, Tokens};
use saeclip::data::cache::{
    open_writer, ActivationCache, CacheKey, DatasetRef, ImageRecord, ModelRef, Opened,
};
use saeclip::disk::write_bytes_atomic;
use saeclip::sae::config::TrainConfig;
use saeclip::sae::model::select;
use saeclip::sae::train::{train, TrainOptions};
use saeclip::sae::{forward_backward, Adam, AdamConfig, LossOptions, Sae, SaeConfig, Workspace};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const USAGE: &str = "usage: train_ground_truth data --out DIR --rows N --heldout M [--d D] \
                     [--atoms A] [--active K] [--noise S] [--seed S]\n       \
                     train_ground_truth train --cache DIR --run-dir DIR [--threads N] \
                     [--skip-steps N] [--set key=value]...\n       \
                     train_ground_truth profile --cache DIR [--threads N] [--steps N] \
                     [--set key=value]...";

/// Marker written last into a complete data folder.
const DONE: &str = "done.json";
/// Rows generated per chunk (bounds the [chunk, atoms] uniform draw).
const CHUNK: i64 = 8192;
/// Not a training seed: saeclip draws its initial decoder from libtorch's generator seeded
/// with `training.seed` (0 by default), which would then reproduce the true atoms.
const DEFAULT_DATA_SEED: i64 = 20_240_607;
/// Rows per shard of the cache.
const SHARD_ROWS: usize = 65_536;

/// How the synthetic data is made.
#[derive(Debug, Clone)]
struct DataArgs {
    out: PathBuf,
    rows: i64,
    heldout: i64,
    d: i64,
    atoms: i64,
    active: i64,
    noise: f64,
    seed: i64,
}

#[derive(Debug, Clone)]
struct TrainArgs {
    cache: PathBuf,
    run_dir: PathBuf,
    threads: i32,
    skip_steps: usize,
    sets: Vec<String>,
}

#[derive(Debug, Clone)]
struct ProfileArgs {
    cache: PathBuf,
    threads: i32,
    steps: usize,
    sets: Vec<String>,
}

#[derive(Debug)]
enum Command {
    Data(DataArgs),
    Train(TrainArgs),
    Profile(ProfileArgs),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command> {
    // cargo passes `--bench` to every bench target.
    let mut args = args.into_iter().filter(|a| a != "--bench");
    let command = args
        .next()
        .with_context(|| format!("no command\n{USAGE}"))?;
    let mut data = DataArgs {
        out: PathBuf::new(),
        rows: 0,
        heldout: 8192,
        d: 768,
        atoms: 4096,
        active: 32,
        noise: 0.01,
        seed: DEFAULT_DATA_SEED,
    };
    let mut cache = None;
    let mut run_dir = None;
    let mut out = None;
    let (mut threads, mut skip_steps, mut steps) = (2i32, 5usize, 6usize);
    let mut sets = Vec::new();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let int = |v: &str| -> Result<i64> {
            v.parse()
                .with_context(|| format!("{flag}: `{v}` is not an integer"))
        };
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value)),
            "--rows" => data.rows = int(&value)?,
            "--heldout" => data.heldout = int(&value)?,
            "--d" => data.d = int(&value)?,
            "--atoms" => data.atoms = int(&value)?,
            "--active" => data.active = int(&value)?,
            "--noise" => {
                data.noise = value
                    .parse()
                    .with_context(|| format!("--noise: `{value}` is not a number"))?
            }
            "--seed" => data.seed = int(&value)?,
            "--cache" => cache = Some(PathBuf::from(value)),
            "--run-dir" => run_dir = Some(PathBuf::from(value)),
            "--threads" => threads = int(&value)? as i32,
            "--skip-steps" => skip_steps = int(&value)? as usize,
            "--steps" => steps = int(&value)? as usize,
            "--set" => sets.push(value),
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    let need =
        |p: Option<PathBuf>, flag: &str| p.with_context(|| format!("{flag} is required\n{USAGE}"));
    Ok(match command.as_str() {
        "data" => {
            data.out = need(out, "--out")?;
            ensure!(
                data.rows > 0 && data.heldout > 0,
                "--rows and --heldout must be positive"
            );
            ensure!(
                (1..=data.atoms).contains(&data.active),
                "--active must lie in 1..=--atoms"
            );
            Command::Data(data)
        }
        "train" => Command::Train(TrainArgs {
            cache: need(cache, "--cache")?,
            run_dir: need(run_dir, "--run-dir")?,
            threads,
            skip_steps,
            sets,
        }),
        "profile" => {
            ensure!(
                steps >= 2,
                "--steps must be at least 2 (the first is not timed)"
            );
            Command::Profile(ProfileArgs {
                cache: need(cache, "--cache")?,
                threads,
                steps,
                sets,
            })
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    })
}

/// `n` rows of Σ m_j·atom_j over `active` distinct uniform atoms, m_j ~ Exp(1), plus
/// Gaussian noise, drawn from libtorch's global generator. [n, D]
fn draw_rows(atoms: &Tensor, n: i64, active: i64, noise: f64) -> Tensor {
    let (a, d) = atoms.size2().expect("atoms are [A, D]");
    let cpu = (Kind::Float, Device::Cpu);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        // The `active` largest of A uniform draws: a uniform subset of distinct atoms.
        let (_, chosen) = Tensor::rand([len, a], cpu).topk(active, 1, true, false); // [len, active]
        let magnitudes = Tensor::empty([len * active], cpu).exponential_(1.0);
        let offsets =
            Tensor::arange_start_step(0, len * active, active, (Kind::Int64, Device::Cpu));
        let (x, _, _, _) = Tensor::embedding_bag(
            atoms,
            &chosen.reshape([-1]),
            &offsets,
            false,
            0, // sum
            false,
            Some(&magnitudes),
            false,
        ); // [len, D]
        parts.push(x + Tensor::randn([len, d], cpu) * noise);
        start += len;
    }
    Tensor::cat(&parts, 0)
}

fn data_settings(a: &DataArgs) -> Value {
    json!({"version": 1, "rows": a.rows, "heldout": a.heldout, "d": a.d, "atoms": a.atoms,
           "active": a.active, "noise": a.noise, "seed": a.seed, "dtype": "f32"})
}

fn make_data(a: &DataArgs) -> Result<Value> {
    let settings = data_settings(a);
    let done = a.out.join(DONE);
    if done.is_file() {
        let previous: Value =
            serde_json::from_str(&std::fs::read_to_string(&done)?).unwrap_or_default();
        if previous == settings {
            return Ok(json!({"reused": true, "dir": a.out, "settings": settings}));
        }
        std::fs::remove_file(&done)?;
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let started = Instant::now();
    let (atoms, rows, heldout) = saeclip::rng::seeded(a.seed, || {
        let atoms = Tensor::randn([a.atoms, a.d], (Kind::Float, Device::Cpu));
        let atoms = &atoms / atoms.norm_scalaropt_dim(2.0, [1], true);
        let rows = draw_rows(&atoms, a.rows, a.active, a.noise);
        let heldout = draw_rows(&atoms, a.heldout, a.active, a.noise);
        (atoms, rows, heldout)
    });
    Tensor::write_safetensors(
        &[("train", &rows), ("heldout", &heldout), ("atoms", &atoms)],
        a.out.join("data.safetensors"),
    )
    .context("cannot write data.safetensors")?;

    let key = CacheKey {
        d_model: a.d,
        dtype: Precision::F32,
        layer: 0,
        tokens: Tokens::Cls,
        model: ModelRef {
            path: "synthetic-ground-truth".into(),
            sha256: "0".repeat(64),
        },
        dataset: DatasetRef {
            kind: "synthetic".into(),
            path: format!("ground-truth:{settings}"),
            split: "train".into(),
        },
        part: None,
        limit: None,
        image_size: 0,
    };
    let cache = a.out.join("cache");
    let Opened::Writer(mut w) = open_writer(&cache, key, SHARD_ROWS, true)? else {
        bail!("{} was not opened for writing", cache.display());
    };
    let token = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
    for i in 0..a.rows {
        let record = ImageRecord {
            image_index: i as usize,
            source: format!("row{i}"),
            label: 0,
        };
        w.add_image(record, &rows.narrow(0, i, 1), &token)?;
        w.end_batch()?;
    }
    w.finish()?;
    write_bytes_atomic(&done, serde_json::to_string(&settings)?.as_bytes())?;
    Ok(
        json!({"reused": false, "dir": a.out, "settings": settings, "seconds": started.elapsed().as_secs_f64()}),
    )
}

fn config_for(cache: &Path, sets: &[String]) -> Result<TrainConfig> {
    let mut all = vec![format!("data.cache={}", cache.display())];
    all.extend(sets.iter().cloned());
    TrainConfig::from_yaml("", &all)
}

/// (step, seconds since the loop started) of every step line of a run.
fn step_clock(run_dir: &Path) -> Result<Vec<(usize, f64)>> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)?;
        if v["type"] == "step" {
            let step = v["step"].as_u64().context("a step line without a step")? as usize;
            let time = v["time"].as_f64().context("a step line without a time")?;
            out.push((step, time));
        }
    }
    Ok(out)
}

fn run_train(a: &TrainArgs) -> Result<Value> {
    tch::set_num_threads(a.threads);
    let mut sets = a.sets.clone();
    sets.push(format!("output.run_dir={}", a.run_dir.display()));
    let config = config_for(&a.cache, &sets)?;
    ensure!(
        a.skip_steps.is_multiple_of(config.training.log_every),
        "--skip-steps ({}) must be a multiple of training.log_every ({})",
        a.skip_steps,
        config.training.log_every
    );
    if a.run_dir.exists() {
        std::fs::remove_dir_all(&a.run_dir)
            .with_context(|| format!("cannot clear {}", a.run_dir.display()))?;
    }
    let started = Instant::now();
    let result = train(&TrainOptions {
        config,
        device: Device::Cpu,
        model_load: Default::default(),
        resume: None,
        stop_after_epochs: None,
        stop_after_steps: None,
    })?;
    let wall_s = started.elapsed().as_secs_f64();
    let summary = result.summary.context("the run stopped early")?;
    let clock = step_clock(&result.run_dir)?;
    let from = clock
        .iter()
        .find(|(s, _)| *s == a.skip_steps)
        .with_context(|| format!("no step line at step {}", a.skip_steps))?;
    let to = clock.last().context("no step lines")?;
    ensure!(
        to.0 > from.0,
        "too few steps to time after skipping {}",
        a.skip_steps
    );
    let window_s = to.1 - from.1;
    Ok(json!({
        "run_dir": result.run_dir,
        "checkpoint": result.run_dir.join(&summary.last_checkpoint),
        "threads": tch::get_num_threads(),
        "wall_s": wall_s,
        "timed_steps": to.0 - from.0,
        "timed_s": window_s,
        "steps_per_s": (to.0 - from.0) as f64 / window_s,
        "first_steps_s": from.1,
        "summary": summary,
    }))
}

/// Median of `xs` (not empty).
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

fn profile(a: &ProfileArgs) -> Result<Value> {
    tch::set_num_threads(a.threads);
    let config = config_for(&a.cache, &a.sets)?;
    let cache = ActivationCache::open(&a.cache)?;
    let d_in = cache.d_model();
    config.validate(d_in)?;
    let (s, t) = (&config.sae, &config.training);
    let b = t.batch_size as i64;
    let acts = cache.load_all(Kind::Float)?.activations;
    ensure!(
        acts.size()[0] >= b * a.steps as i64,
        "the cache has fewer than {} rows",
        b * a.steps as i64
    );
    let sae_config = SaeConfig {
        architecture: s.architecture,
        d_in,
        d_sae: config.d_sae(d_in),
        k: s.k,
    };
    let mut sae = Sae::init(
        &sae_config,
        &acts.narrow(0, 0, acts.size()[0].min(65_536)),
        s.b_dec_init,
        t.seed,
    )?;
    let mut adam = Adam::new(
        &sae,
        AdamConfig {
            beta1: t.adam_betas[0],
            beta2: t.adam_betas[1],
            eps: t.adam_eps,
        },
    );
    let options = LossOptions {
        k: s.k,
        k_aux: config.k_aux(d_in),
        aux_coef: s.aux_coef,
        l1_coef: s.l1_coef,
        data_variance: 1.0,
    };
    let clip = (t.grad_clip > 0.0).then_some(t.grad_clip);
    let mut ws = Workspace::new();
    let mut parts: [Vec<f64>; 5] = Default::default();
    for i in 0..a.steps {
        let x = acts.narrow(0, i as i64 * b, b);
        // The encoder alone (as forward_backward computes it), then its top-k.
        let _guard = tch::no_grad_guard();
        let t0 = Instant::now();
        let pre = sae.pre_activations(&x);
        let t1 = Instant::now();
        let codes = select(&pre, sae.training_selection(s.k));
        let t2 = Instant::now();
        drop((pre, codes));
        drop(_guard);
        let t3 = Instant::now();
        let out = forward_backward(&sae, &x, None, &options, &mut ws);
        let t4 = Instant::now();
        let _ = adam.step(&mut sae, out.grads, t.lr.for_width(sae_config.d_sae), clip);
        let t5 = Instant::now();
        if i > 0 {
            parts[0].push((t1 - t0).as_secs_f64());
            parts[1].push((t2 - t1).as_secs_f64());
            parts[2].push((t4 - t3).as_secs_f64());
            parts[3].push((t5 - t4).as_secs_f64());
            parts[4].push((t5 - t3).as_secs_f64());
        }
    }
    let names = [
        "encoder_matmul_s",
        "topk_s",
        "forward_backward_s",
        "adam_step_s",
        "step_s",
    ];
    let mut report = serde_json::Map::new();
    for (name, xs) in names.iter().zip(&parts) {
        report.insert(name.to_string(), json!(median(xs)));
    }
    report.insert("threads".into(), json!(tch::get_num_threads()));
    report.insert("timed_steps".into(), json!(a.steps - 1));
    Ok(Value::Object(report))
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|c| match c {
        Command::Data(a) => make_data(&a),
        Command::Train(a) => run_train(&a),
        Command::Profile(a) => profile(&a),
    });
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("train_ground_truth: {e:#}");
            ExitCode::FAILURE
        }
    }
}
