//! The cost of splicing an SAE into CLIP, as `eval-zeroshot` does it, against the plain
//! image forward, on the same pixel batch in the same process.
//!
//! Driven by bench/eval.py (`make bench-eval`), which also times the whole command end to end
//! and writes bench/RESULTS.md. Run alone:
//!
//! ```text
//! cargo bench --bench eval_zeroshot -- --model DIR --sae CKPT [--batch 32] [--iters 3]
//!     [--warmup 1] [--threads N] [--seed 0]
//! cargo bench --bench eval_zeroshot -- --make-sae OUT --model DIR --layer L
//!     [--expansion 32] [--k 64] [--tokens cls] [--seed 0]
//! ```
//!
//! The first form times, alternating within each iteration: the plain forward
//! (`Clip::image_embeds`), `eval-zeroshot`'s spliced forward (`spliced_forward`: one forward
//! to block L, the SAE on the spliced tokens, and the remaining blocks for the original,
//! spliced and error-added residuals); then, on their own, the SAE reconstruction and
//! everything the spliced forward does after block L (`splice_residual`), the same without
//! the error-added pass (`eval-zeroshot --no-error-check`), and the plain pass through the
//! blocks after L (`image_embeds_from`). Prints one JSON
//! line: every timed iteration in seconds and the medians.
//!
//! The second form writes an untrained but initialised top-k SAE checkpoint (`Sae::init` on
//! the block-L residuals of a seeded random pixel batch), enough to time the splice.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use saeclip::clip::{weights, Clip, LoadOptions, Tokens};
use saeclip::data::cache::file_sha256;
use saeclip::eval::zeroshot::{splice_residual, spliced_forward};
use saeclip::eval::SplicedSae;
use saeclip::sae::checkpoint::{self, CheckpointMeta};
use saeclip::sae::{Architecture, BdecInit, Sae, SaeConfig};
use tch::{Device, Kind, Tensor};

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    model: PathBuf,
    /// Time with this checkpoint.
    sae: Option<PathBuf>,
    /// Write a checkpoint here instead of timing.
    make_sae: Option<PathBuf>,
    layer: usize,
    expansion: i64,
    k: i64,
    tokens: Tokens,
    batch: i64,
    iters: usize,
    warmup: usize,
    /// Intra-op threads; 0 keeps libtorch's default.
    threads: i32,
    seed: i64,
}

const USAGE: &str = "usage: eval_zeroshot --model DIR (--sae CKPT | --make-sae OUT --layer L) [--batch 32] [--iters 3] [--warmup 1] [--threads N] [--expansion 32] [--k 64] [--tokens cls] [--seed 0]";

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut out = Args {
        model: PathBuf::new(),
        sae: None,
        make_sae: None,
        layer: usize::MAX,
        expansion: 32,
        k: 64,
        tokens: Tokens::Cls,
        batch: 32,
        iters: 3,
        warmup: 1,
        threads: 0,
        seed: 0,
    };
    let mut model = None;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        // cargo passes `--bench` to every bench target.
        if flag == "--bench" {
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = || format!("{flag}: bad value `{value}`\n{USAGE}");
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(&value)),
            "--sae" => out.sae = Some(PathBuf::from(&value)),
            "--make-sae" => out.make_sae = Some(PathBuf::from(&value)),
            "--layer" => out.layer = value.parse().with_context(bad)?,
            "--expansion" => out.expansion = value.parse().with_context(bad)?,
            "--k" => out.k = value.parse().with_context(bad)?,
            "--tokens" => {
                out.tokens = match value.as_str() {
                    "cls" => Tokens::Cls,
                    "patches" => Tokens::Patches,
                    "all" => Tokens::All,
                    _ => bail!(bad()),
                }
            }
            "--batch" => out.batch = value.parse().with_context(bad)?,
            "--iters" => out.iters = value.parse().with_context(bad)?,
            "--warmup" => out.warmup = value.parse().with_context(bad)?,
            "--threads" => out.threads = value.parse().with_context(bad)?,
            "--seed" => out.seed = value.parse().with_context(bad)?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    out.model = model.with_context(|| format!("--model is required\n{USAGE}"))?;
    ensure!(
        out.sae.is_some() != out.make_sae.is_some(),
        "give --sae or --make-sae\n{USAGE}"
    );
    ensure!(
        out.iters >= 1 && out.batch >= 1,
        "--iters and --batch must be at least 1"
    );
    Ok(out)
}

/// A seeded batch of normalised-pixel-like values, [B, 3, P, P].
fn pixels(clip: &Clip, batch: i64, seed: i64) -> Tensor {
    let size = clip.info().image_size;
    saeclip::rng::seeded(seed, || {
        Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu))
    })
}

fn make_sae(args: &Args, out: &Path) -> Result<()> {
    let clip = Clip::load(&args.model, &LoadOptions::default())?;
    ensure!(args.layer != usize::MAX, "--make-sae needs --layer");
    let d = clip.info().hidden_size;
    let residual = clip.residual(&pixels(&clip, 64, args.seed), args.layer)?;
    let sample = args.tokens.select(&residual).reshape([-1, d]);
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: d,
        d_sae: d * args.expansion,
        k: args.k,
    };
    let sae = Sae::init(&config, &sample, BdecInit::Mean, args.seed)?;
    let files = weights::resolve(&args.model, None)?;
    let meta = CheckpointMeta {
        clip: serde_json::json!({
            "model": args.model.display().to_string(),
            "sha256": file_sha256(&files.weights)?,
            "layer": args.layer,
            "tokens": args.tokens.name(),
        }),
        training: serde_json::json!({"note": "untrained: Sae::init only, for benchmarks"}),
        metrics: serde_json::Value::Null,
    };
    checkpoint::save(out, &sae, &meta, None, Kind::Float)?;
    println!(
        "{}",
        serde_json::json!({"written": out, "d_in": d, "d_sae": config.d_sae, "k": args.k, "layer": args.layer})
    );
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn time(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

fn bench(args: &Args, sae_path: &Path) -> Result<()> {
    let clip = Clip::load(&args.model, &LoadOptions::default())?;
    let sae = SplicedSae::load(sae_path, &clip, None, Device::Cpu)?;
    let pixels = pixels(&clip, args.batch, args.seed);
    let (mut plain, mut spliced, mut sae_only, mut after, mut tail) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut unchecked = Vec::new();
    let residual = clip.residual(&pixels, sae.layer)?;
    let rows = {
        let d = residual.size()[2];
        sae.tokens
            .select(&residual)
            .reshape([-1, d])
            .to_kind(Kind::Float)
    };
    for i in 0..args.warmup + args.iters {
        // Alternate which runs first.
        let mut p = 0.0;
        let mut s = 0.0;
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            if which == 0 {
                p = time(|| {
                    let _ = clip.image_embeds(&pixels)?;
                    Ok(())
                })?;
            } else {
                s = time(|| {
                    let _ = spliced_forward(&clip, &sae, sae.tokens, &pixels, true)?;
                    Ok(())
                })?;
            }
        }
        let r = time(|| {
            let _guard = tch::no_grad_guard();
            let _ = sae.sae.reconstruct(&rows);
            Ok(())
        })?;
        let a = time(|| {
            let _ = splice_residual(&clip, &sae, sae.tokens, &residual, true)?;
            Ok(())
        })?;
        let t = time(|| {
            let _ = clip.image_embeds_from(&residual, sae.layer)?;
            Ok(())
        })?;
        // eval-zeroshot --no-error-check: no error-added pass.
        let u = time(|| {
            let _ = splice_residual(&clip, &sae, sae.tokens, &residual, false)?;
            Ok(())
        })?;
        if i >= args.warmup {
            unchecked.push(u);
            tail.push(t);
            plain.push(p);
            spliced.push(s);
            sae_only.push(r);
            after.push(a);
        }
    }
    let b = args.batch as f64;
    let (p, s, r, a, t) = (
        median(&plain),
        median(&spliced),
        median(&sae_only),
        median(&after),
        median(&tail),
    );
    println!(
        "{}",
        serde_json::json!({
            "batch": args.batch,
            "threads": tch::get_num_threads(),
            "layer": sae.layer,
            "tokens": sae.tokens.name(),
            "d_in": sae.sae.config.d_in,
            "d_sae": sae.sae.config.d_sae,
            "k": sae.sae.config.k,
            "blocks": clip.info().num_hidden_layers,
            "plain_s": plain,
            "spliced_s": spliced,
            "sae_s": sae_only,
            "after_residual_s": after,
            "after_residual_unchecked_s": unchecked,
            "plain_images_per_s": b / p,
            "spliced_images_per_s": b / s,
            "overhead": s / p - 1.0,
            "sae_fraction": r / p,
            "after_residual_fraction": a / p,
            "tail_s": tail,
            // What splicing adds to a plain forward: the work after block L beyond the one
            // pass through the remaining blocks that the plain forward also does.
            "extra_work_overhead": (a - t) / p,
        })
    );
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    match (&args.make_sae, &args.sae) {
        (Some(out), _) => make_sae(args, out),
        (None, Some(sae)) => bench(args, sae),
        (None, None) => unreachable!("checked when parsing"),
    }
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|args| run(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eval_zeroshot: {e:#}");
            ExitCode::FAILURE
        }
    }
}
