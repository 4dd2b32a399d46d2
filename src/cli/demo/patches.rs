//! The demo's patch-token stage: an SAE on the demo CLIP's patch tokens, scored by
//! `evaluate`'s localisation probe against the procedural shapes' exact masks (does one
//! latent fire where the shape is?), beside a random-decoder baseline.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{extract, s, step, train, Plan, TrainSettings};
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
    let tokens = "extract (patch tokens)";
    extract(
        global,
        tokens,
        model,
        layer,
        "patches",
        plan.patch_images,
        &cache,
    )?;
    let run = out.join("patch-run");
    let settings = TrainSettings {
        batch_size: 1024,
        epochs: plan.patch_epochs,
        log_every: 10,
        dead_window: 50_000,
    };
    let yaml = out.join("patch-train.yaml");
    train(
        global,
        "train (patch tokens)",
        &yaml,
        &cache,
        &run,
        &settings,
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
