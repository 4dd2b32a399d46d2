//! `saeclip demo`: the whole pipeline on the embedded default, offline.
//!
//! The demo writes a small CLIP-architecture model with fixed-seed random weights (it is
//! *not* a trained CLIP), then runs the real commands on the procedural dataset, exactly
//! as a user would type them: extract → train → eval-zeroshot → evaluate (against a
//! random-decoder baseline) → interpret (with the HTML
//! browser) → analyze-logs. Everything lands under `--out` (default `demo-out/`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser};

use super::{Cli, GlobalArgs};
use crate::clip::{Clip, ClipConfig, Precision};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output directory (its demo files are replaced on each run).
    #[arg(long, default_value = "demo-out", value_name = "DIR")]
    pub out: PathBuf,
    /// Smaller settings (fewer images and epochs), for tests.
    #[arg(long)]
    pub quick: bool,
}

/// Sizes of one demo run.
struct Plan {
    train_images: usize,
    test_images: usize,
    epochs: usize,
    features: usize,
}

/// The demo's own outputs inside `out` (removed before a run; nothing else is touched).
const OUTPUTS: [&str; 14] = [
    "model",
    "cache",
    "run",
    "train.yaml",
    "zeroshot.md",
    "zeroshot.json",
    "predictions.csv",
    "features.csv",
    "collages",
    "browser",
    "training.md",
    "evaluate.md",
    "evaluate.json",
    "evaluate-plots",
];

/// Run one saeclip command line, with the demo's global flags.
fn step(global: &GlobalArgs, title: &str, args: &[String]) -> Result<()> {
    let mut argv: Vec<String> = vec!["saeclip".into(), "--device".into(), global.device_name()];
    if let Some(n) = global.threads {
        argv.extend(["--threads".into(), n.to_string()]);
    }
    if global.quiet {
        argv.push("-q".into());
    }
    argv.extend(args.iter().cloned());
    crate::ui::info(format!("\n== {title}\n$ {}", argv.join(" ")));
    let started = Instant::now();
    let cli = Cli::try_parse_from(&argv).with_context(|| format!("demo step {title}"))?;
    super::run_command(&cli).with_context(|| format!("demo step {title} failed"))?;
    crate::ui::info(format!("   ({:.1}s)", started.elapsed().as_secs_f64()));
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(global: &GlobalArgs, args: &DemoArgs) -> Result<()> {
    let started = Instant::now();
    let out = &args.out;
    let plan = if args.quick {
        Plan {
            train_images: 480,
            test_images: 192,
            epochs: 4,
            features: 12,
        }
    } else {
        Plan {
            train_images: 2400,
            test_images: 960,
            epochs: 15,
            features: 48,
        }
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for name in OUTPUTS {
        let p = out.join(name);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).with_context(|| format!("cannot clear {}", p.display()))?;
        } else if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot clear {}", p.display()))?;
        }
    }
    let model = out.join("model");
    let config = ClipConfig::demo();
    crate::ui::info(format!(
        "== model\nwriting the embedded demo model to {}: CLIP's architecture (ViT-B/32 patches, {} vision and {} text blocks, width {}), \
         fixed-seed RANDOM weights. It is not a trained CLIP: features and accuracies show the pipeline working, not what real CLIP knows.",
        model.display(),
        config.vision.num_hidden_layers,
        config.text.num_hidden_layers,
        config.vision.hidden_size
    ));
    Clip::random(&config, 0, tch::Device::Cpu, Precision::F32).save_hf(&model)?;
    let layer = config.vision.num_hidden_layers - 1;
    let cache = out.join("cache");
    step(
        global,
        "extract",
        &[
            "extract".into(),
            "--model".into(),
            s(&model),
            "--dataset".into(),
            "procedural:0".into(),
            "--split".into(),
            "train".into(),
            "--layer".into(),
            layer.to_string(),
            "--tokens".into(),
            "cls".into(),
            "--dtype".into(),
            "f32".into(),
            "--limit".into(),
            plan.train_images.to_string(),
            "--out".into(),
            s(&cache),
        ],
    )?;
    let run_dir = out.join("run");
    let yaml = format!(
        "# The demo's training config (written by `saeclip demo`).\n\
         data:\n  cache: {}\n  val_fraction: 0.1\n\
         sae:\n  architecture: topk\n  expansion_factor: 8\n  k: 16\n  k_aux: 64\n\
         training:\n  batch_size: 256\n  epochs: {}\n  lr: 1.0e-3\n  lr_warmup_steps: 20\n  log_every: 5\n  dead_window: 20000\n  seed: 0\n\
         output:\n  run_dir: {}\n",
        s(&cache),
        plan.epochs,
        s(&run_dir)
    );
    let yaml_path = out.join("train.yaml");
    crate::disk::write_bytes_atomic(&yaml_path, yaml.as_bytes())?;
    step(
        global,
        "train",
        &["train".into(), "--config".into(), s(&yaml_path)],
    )?;
    let sae = run_dir.join("checkpoints/best.safetensors");
    step(
        global,
        "eval-zeroshot",
        &[
            "eval-zeroshot".into(),
            "--model".into(),
            s(&model),
            "--sae".into(),
            s(&sae),
            "--dataset".into(),
            "procedural:0".into(),
            "--split".into(),
            "test".into(),
            "--samples".into(),
            plan.test_images.to_string(),
            "--output".into(),
            s(&out.join("zeroshot.md")),
            "--json".into(),
            s(&out.join("zeroshot.json")),
            "--predictions".into(),
            s(&out.join("predictions.csv")),
        ],
    )?;
    let evaluate_json = out.join("evaluate.json");
    step(
        global,
        "evaluate",
        &[
            "evaluate".into(),
            "--model".into(),
            s(&model),
            "--sae".into(),
            s(&sae),
            "--random-baseline".into(),
            "--dataset".into(),
            "procedural:0".into(),
            "--split".into(),
            "test".into(),
            "--samples".into(),
            plan.test_images.to_string(),
            "--output".into(),
            s(&out.join("evaluate.md")),
            "--json".into(),
            s(&evaluate_json),
            "--plots".into(),
            s(&out.join("evaluate-plots")),
        ],
    )?;
    let headline = evaluate_headline(&evaluate_json)?;
    step(
        global,
        "interpret",
        &[
            "interpret".into(),
            "--model".into(),
            s(&model),
            "--sae".into(),
            s(&sae),
            "--dataset".into(),
            "procedural:0".into(),
            "--split".into(),
            "test".into(),
            "--sample-size".into(),
            plan.test_images.to_string(),
            "--features".into(),
            plan.features.to_string(),
            "--output-csv".into(),
            s(&out.join("features.csv")),
            "--collage-dir".into(),
            s(&out.join("collages")),
            "--html".into(),
            s(&out.join("browser")),
        ],
    )?;
    step(
        global,
        "analyze-logs",
        &[
            "analyze-logs".into(),
            "--logdir".into(),
            s(&run_dir),
            "--output".into(),
            s(&out.join("training.md")),
            "--plots".into(),
            s(&out.join("run/plots")),
        ],
    )?;
    println!(
        "\nsaeclip demo finished in {:.0}s. What was made (random-weight model: a demonstration of the pipeline, not of CLIP):\n\
         \n  {}  the embedded model as a Hugging Face directory\
         \n  {}  activations of {} procedural images (layer {layer}, CLS)\
         \n  {}  the SAE run: metrics.jsonl, checkpoints/, summary.json, plots/\
         \n  {}  per-epoch training table\
         \n  {}  zero-shot accuracy with and without the SAE (also .json, predictions.csv)\
         \n  {}  evaluate: the SAE against a random-decoder baseline (also .json, evaluate-plots/)\
         \n{headline}\
         \n  {}  top features with labels; collages in {}\
         \n\nOpen {} in a browser to explore the features.",
        started.elapsed().as_secs_f64(),
        s(&model),
        s(&cache),
        plan.train_images,
        s(&run_dir),
        s(&out.join("training.md")),
        s(&out.join("zeroshot.md")),
        s(&out.join("evaluate.md")),
        s(&out.join("features.csv")),
        s(&out.join("collages")),
        s(&out.join("browser/index.html")),
    );
    Ok(())
}

/// The headline figures of `evaluate.json` (the SAE, then its random-decoder baseline), one
/// indented line each.
fn evaluate_headline(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let num = |x: &serde_json::Value| x.as_f64().map_or("—".to_string(), |f| format!("{f:.3}"));
    let lines: Vec<String> = v["saes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "      {}: evr {}, mean best AUROC {}, accuracy recovered {}, factors AUROC {}",
                if m["sae"]["random_baseline"] == true {
                    "random-decoder baseline"
                } else {
                    "SAE"
                },
                num(&m["reconstruction"]["evr"]),
                num(&m["probing"]["mean_best_auroc"]),
                num(&m["zeroshot"]["accuracy_recovered"]),
                num(&m["factors"]["mean_auroc"]),
            )
        })
        .collect();
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_flags_parse() {
        let cli = Cli::try_parse_from(["saeclip", "demo", "--out", "x", "--quick"]).unwrap();
        let super::super::Command::Demo(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.out, PathBuf::from("x"));
        assert!(a.quick);
    }
}
