//! `saeclip demo`: the whole pipeline on the embedded default, offline.
//!
//! The demo writes the embedded demo CLIP (a small CLIP trained on procedural images by
//! `scripts/train_demo_clip.py`, see [`crate::clip::demo_model`]), then runs the real
//! commands on the procedural dataset, exactly as a user would type them: extract → train
//! → eval-zeroshot (an easy, a medium and a hard task) → evaluate (against a random-decoder
//! baseline) → interpret (with the HTML browser) → analyze-logs, and prints the original
//! project's key-results table in miniature. Everything lands under `--out` (default
//! `demo-out/`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser};

mod patches;

use super::{Cli, GlobalArgs};
use crate::clip::demo_model::{demo_clip_shape, demo_clip_training, write_demo_clip};

/// The demo's label vocabulary: the procedural factor words and a few hundred distractors.
const VOCAB: &str = include_str!("../../../assets/demo-vocab.txt");

/// The zero-shot tasks of the key-results table, easy to hard (the original project's
/// CIFAR-10 and CIFAR-100 rows): 6 shapes, 48 colour × shape pairs, 192 triples.
const TASKS: [&str; 3] = [
    "procedural:0/shape",
    "procedural:0",
    "procedural:0/colour-shape-texture",
];

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
    /// Images whose patch tokens train the patch-token SAE, its epochs, and the test
    /// images its localisation is scored on.
    patch_images: usize,
    patch_epochs: usize,
    patch_test_images: usize,
}

/// The demo's own outputs inside `out` (removed before a run; nothing else is touched).
const OUTPUTS: [&str; 21] = [
    "model",
    "vocab.txt",
    "key-results.md",
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
    "patch-cache",
    "patch-run",
    "patch-train.yaml",
    "patch-evaluate.md",
    "patch-evaluate.json",
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

/// `saeclip extract` of the first `limit` procedural:0 train images' `tokens` at `layer`.
fn extract(
    global: &GlobalArgs,
    title: &str,
    model: &Path,
    layer: usize,
    tokens: &str,
    limit: usize,
    cache: &Path,
) -> Result<()> {
    step(
        global,
        title,
        &[
            "extract".into(),
            "--model".into(),
            s(model),
            "--dataset".into(),
            "procedural:0".into(),
            "--split".into(),
            "train".into(),
            "--layer".into(),
            layer.to_string(),
            "--tokens".into(),
            tokens.into(),
            "--dtype".into(),
            "f32".into(),
            "--limit".into(),
            limit.to_string(),
            "--out".into(),
            s(cache),
        ],
    )
}

/// What differs between the demo's two SAE trainings (8× top-k, k = 16, both).
struct TrainSettings {
    batch_size: usize,
    epochs: usize,
    log_every: usize,
    dead_window: usize,
}

/// Write the training config to `yaml_path` and run `saeclip train` on it.
fn train(
    global: &GlobalArgs,
    title: &str,
    yaml_path: &Path,
    cache: &Path,
    run_dir: &Path,
    t: &TrainSettings,
) -> Result<()> {
    let yaml = format!(
        "# A demo training config (written by `saeclip demo`).\n\
         data:\n  cache: {}\n  val_fraction: 0.1\n\
         sae:\n  architecture: topk\n  expansion_factor: 8\n  k: 16\n  k_aux: 64\n\
         training:\n  batch_size: {}\n  epochs: {}\n  lr: 1.0e-3\n  lr_warmup_steps: 20\n  log_every: {}\n  dead_window: {}\n  seed: 0\n\
         output:\n  run_dir: {}\n",
        s(cache),
        t.batch_size,
        t.epochs,
        t.log_every,
        t.dead_window,
        s(run_dir)
    );
    crate::disk::write_bytes_atomic(yaml_path, yaml.as_bytes())?;
    step(
        global,
        title,
        &["train".into(), "--config".into(), s(yaml_path)],
    )
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
            patch_images: 240,
            patch_epochs: 3,
            patch_test_images: 96,
        }
    } else {
        Plan {
            train_images: 2400,
            test_images: 960,
            epochs: 15,
            features: 48,
            patch_images: 1200,
            patch_epochs: 10,
            patch_test_images: 480,
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
    write_demo_clip(&model)?;
    let (top1, seconds) = demo_clip_training()?;
    let shape = demo_clip_shape()?;
    crate::ui::info(format!(
        "== model\nwriting the embedded demo CLIP to {}: CLIP's architecture ({}-pixel images in {}-pixel patches, {} vision and {} text blocks, width {}), \
         trained contrastively for {seconds:.0}s on procedural images captioned by their factors (zero-shot top-1 {:.1} % on 48 colour × shape classes). \
         A toy world: it shows the method, not what real CLIP knows.",
        model.display(),
        shape.image_size,
        shape.patch_size,
        shape.vision_layers,
        shape.text_layers,
        shape.width,
        100.0 * top1
    ));
    let vocab = out.join("vocab.txt");
    crate::disk::write_bytes_atomic(&vocab, VOCAB.as_bytes())?;
    let layer = shape.vision_layers - 1;
    let cache = out.join("cache");
    extract(
        global,
        "extract",
        &model,
        layer,
        "cls",
        plan.train_images,
        &cache,
    )?;
    let run_dir = out.join("run");
    let settings = TrainSettings {
        batch_size: 256,
        epochs: plan.epochs,
        log_every: 5,
        dead_window: 20_000,
    };
    train(
        global,
        "train",
        &out.join("train.yaml"),
        &cache,
        &run_dir,
        &settings,
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
            TASKS[0].into(),
            "--dataset".into(),
            TASKS[1].into(),
            "--dataset".into(),
            TASKS[2].into(),
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
            "--vocab".into(),
            s(&vocab),
            "--label-features".into(),
            plan.features.to_string(),
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
    // The patch tokens of the last block feed nothing (CLIP pools the CLS token alone),
    // so the patch-token SAE reads the middle of the tower.
    let patch_layer = (shape.vision_layers / 2).saturating_sub(1);
    let patch = patches::run(global, out, &model, patch_layer, &plan)?;
    let key = key_results(&out.join("zeroshot.json"), &evaluate_json)?
        + &patches::key_results(&patch.evaluate_json)?;
    crate::disk::write_bytes_atomic(&out.join("key-results.md"), key.as_bytes())?;
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
            "--vocab".into(),
            s(&vocab),
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
        "\n{key}\nsaeclip demo finished in {:.0}s. What was made (a CLIP trained on a toy world: a demonstration of the method, not of real CLIP's features):\n\
         \n  {}  the embedded demo CLIP as a Hugging Face directory\
         \n  {}  the key-results table above\
         \n  {}  activations of {} procedural images (layer {layer}, CLS)\
         \n  {}  the SAE run: metrics.jsonl, checkpoints/, summary.json, plots/\
         \n  {}  per-epoch training table\
         \n  {}  zero-shot accuracy with and without the SAE (also .json, predictions.csv)\
         \n  {}  evaluate: the SAE against a random-decoder baseline (also .json, evaluate-plots/)\
         \n{headline}\
         \n  {}  a patch-token SAE on {} images (run in {}) and its localisation against the shapes' masks (also .json)\
         \n  {}  top features with labels; collages in {}\
         \n\nOpen {} in a browser to explore the features.",
        started.elapsed().as_secs_f64(),
        s(&model),
        s(&out.join("key-results.md")),
        s(&cache),
        plan.train_images,
        s(&run_dir),
        s(&out.join("training.md")),
        s(&out.join("zeroshot.md")),
        s(&out.join("evaluate.md")),
        s(&out.join("patch-evaluate.md")),
        plan.patch_images,
        s(&patch.run),
        s(&out.join("features.csv")),
        s(&out.join("collages")),
        s(&out.join("browser/index.html")),
    );
    Ok(())
}

/// The original project's key-results table in miniature, from `zeroshot.json` and
/// `evaluate.json`: the SAE's EVR and L0, then per task plain CLIP's top-1, with the SAE
/// spliced in, and the drop in points; then the label precision.
fn key_results(zeroshot: &Path, evaluate: &Path) -> Result<String> {
    let (z, e) = (read_json(zeroshot)?, read_json(evaluate)?);
    let num = |x: &serde_json::Value, d: usize| {
        x.as_f64().map_or("—".to_string(), |f| format!("{f:.d$}"))
    };
    let sae = e["saes"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["sae"]["random_baseline"] != true))
        .with_context(|| format!("{} has no SAE", evaluate.display()))?;
    let mut s = format!(
        "Key results (demo CLIP, layer {} CLS, top-k SAE k = {}, {} latents)\n\n\
         | | value |\n|---|---|\n| EVR | {} |\n| L0 | {} |\n\n\
         | zero-shot task | classes | CLIP top-1 % | CLIP + SAE top-1 % | drop (points) |\n|---|---|---|---|---|\n",
        sae["sae"]["layer"],
        sae["sae"]["k"],
        sae["sae"]["d_sae"],
        num(&sae["reconstruction"]["evr"], 4),
        num(&sae["reconstruction"]["l0"], 1),
    );
    for d in z["datasets"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            d["name"].as_str().unwrap_or("?"),
            d["classes"],
            num(&d["clip"]["top1"], 1),
            num(&d["clip_sae"]["top1"], 1),
            num(&d["drop_top1"], 1),
        ));
    }
    let labels = &sae["labels"];
    s.push_str(&format!(
        "\nLabels: {} of {} top features are labelled with a value of the factor they detect best (factor precision {}).\n",
        labels["features"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|f| f["names_best_value"] == true).count()),
        num(&labels["factor_precision_features"], 0),
        num(&labels["factor_precision"], 3),
    ));
    Ok(s)
}

fn read_json(p: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
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
