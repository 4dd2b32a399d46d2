//! The demo's patch-token stage: an SAE on the demo CLIP's patch tokens, scored by
//! `evaluate`'s localisation probe against the procedural shapes' exact masks (does one
//! latent fire where the shape is?), beside a random-decoder baseline.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{s, step, Plan};
use crate::cli::GlobalArgs;

/// What the stage wrote: the run and evaluate's JSON.
pub struct PatchOutputs {
    pub run: PathBuf,
    pub evaluate_json: PathBuf,
}

/// Extract `plan.patch_images` images' patch tokens at `layer`, train a top-k SAE on them
/// and evaluate it with the localisation probe.
pub fn run(
    global: &GlobalArgs,
    out: &Path,
    model: &Path,
    layer: usize,
    plan: &Plan,
) -> Result<PatchOutputs> {
    let cache = out.join("patch-cache");
    step(
        global,
        "extract (patch tokens)",
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
            "patches".into(),
            "--dtype".into(),
            "f32".into(),
            "--limit".into(),
            plan.patch_images.to_string(),
            "--out".into(),
            s(&cache),
        ],
    )?;
    let run = out.join("patch-run");
    let yaml = format!(
        "# The demo's patch-token training config (written by `saeclip demo`).\n\
         data:\n  cache: {}\n  val_fraction: 0.1\n\
         sae:\n  architecture: topk\n  expansion_factor: 8\n  k: 16\n  k_aux: 64\n\
         training:\n  batch_size: 1024\n  epochs: {}\n  lr: 1.0e-3\n  lr_warmup_steps: 20\n  log_every: 10\n  dead_window: 50000\n  seed: 0\n\
         output:\n  run_dir: {}\n",
        s(&cache),
        plan.patch_epochs,
        s(&run)
    );
    let yaml_path = out.join("patch-train.yaml");
    crate::disk::write_bytes_atomic(&yaml_path, yaml.as_bytes())?;
    step(
        global,
        "train (patch tokens)",
        &["train".into(), "--config".into(), s(&yaml_path)],
    )?;
    let evaluate_json = out.join("patch-evaluate.json");
    step(
        global,
        "evaluate (patch tokens: localisation)",
        &[
            "evaluate".into(),
            "--model".into(),
            s(model),
            "--sae".into(),
            s(&run.join("checkpoints/best.safetensors")),
            "--random-baseline".into(),
            "--label-features".into(),
            "0".into(),
            "--dataset".into(),
            "procedural:0".into(),
            "--split".into(),
            "test".into(),
            "--samples".into(),
            plan.patch_test_images.to_string(),
            "--output".into(),
            s(&out.join("patch-evaluate.md")),
            "--json".into(),
            s(&evaluate_json),
        ],
    )?;
    Ok(PatchOutputs { run, evaluate_json })
}

/// The key-results lines of the stage: the patch SAE's EVR and L0, and its localisation
/// (foreground AUROC and the mean over shapes) against the random-decoder baseline.
pub fn key_results(evaluate_json: &Path) -> Result<String> {
    let v = super::read_json(evaluate_json)?;
    let num = |x: &serde_json::Value, d: usize| {
        x.as_f64().map_or("—".to_string(), |f| format!("{f:.d$}"))
    };
    let mut s = String::from(
        "\n| patch-token SAE | EVR | L0 | localisation AUROC (shape vs background) | mean over the 6 shapes |\n|---|---|---|---|---|\n",
    );
    for m in v["saes"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            if m["sae"]["random_baseline"] == true {
                "random decoder, same size"
            } else {
                "trained"
            },
            num(&m["reconstruction"]["evr"], 4),
            num(&m["reconstruction"]["l0"], 1),
            num(&m["localisation"]["foreground"]["auroc"], 3),
            num(&m["localisation"]["mean_auroc"], 3),
        ));
    }
    Ok(s)
}
