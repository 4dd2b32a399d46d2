//! `evaluate`'s report as Markdown (a comparison table, then each SAE's sections) and its
//! latent-density plot.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{EvaluateReport, DISTRACTORS};

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "—".to_string(), |x| format!("{x:.digits$}"))
}

/// The report as Markdown: a comparison table (one row per SAE), then each SAE's sections.
pub fn to_markdown(r: &EvaluateReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# SAE evaluation\n\nSource: `{}` · {} images · {:.1}s\n\n",
        r.source, r.images, r.seconds
    ));
    s.push_str("| SAE | evr | fvu | cos | l0 | dead | dense | mean best AUROC | sparse probe k=1 | k=16 | dense probe | CLIP top-1 | SAE top-1 | zero-abl. | mean-abl. | recovered | KL | label P@12 | factors AUROC | loc. AUROC |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in &r.members {
        let rec = &m["reconstruction"];
        let pr = &m["probing"];
        let zs = &m["zeroshot"];
        let probe_k = |k: u64| {
            pr["sparse_probe"]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["k"].as_u64() == Some(k)))
                .map_or("—".to_string(), |e| num(&e["accuracy"], 3))
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            m["sae"]["name"].as_str().unwrap_or("?"),
            num(&rec["evr"], 4),
            num(&rec["fvu"], 4),
            num(&rec["cosine"], 4),
            num(&rec["l0"], 2),
            num(&rec["dead_frac"], 3),
            num(&rec["dense_frac"], 3),
            num(&pr["mean_best_auroc"], 3),
            probe_k(1),
            probe_k(16),
            num(&pr["dense_probe_accuracy"], 3),
            num(&zs["clip_top1"], 2),
            num(&zs["sae_top1"], 2),
            num(&zs["zero_ablation_top1"], 2),
            num(&zs["mean_ablation_top1"], 2),
            num(&zs["accuracy_recovered"], 3),
            num(&zs["kl"], 4),
            num(&m["labels"]["mean_precision_at_12"], 3),
            num(&m["factors"]["mean_auroc"], 3),
            num(&m["localisation"]["foreground"]["auroc"], 3),
        ));
    }
    s.push_str("\nTop-1 in %; probe accuracies are held-out balanced accuracies averaged over the classes; KL = mean KL(plain CLIP ‖ spliced) of the softmax of exp(logit_scale)·cos.\n");
    for m in &r.members {
        s.push_str(&format!(
            "\n## {}\n\n",
            m["sae"]["name"].as_str().unwrap_or("?")
        ));
        for key in ["probing", "zeroshot", "labels", "factors", "localisation"] {
            if let Some(reason) = m[format!("{key}_reason")].as_str() {
                s.push_str(&format!("- {key}: not computed — {reason}\n"));
            }
        }
        if let Some(note) = m["note"].as_str() {
            s.push_str(&format!("- note: {note}\n"));
        }
        if let Some(pc) = m["probing"]["per_class"].as_array() {
            s.push_str("\n| class | best latent | AUROC | F1 |\n|---|---:|---:|---:|\n");
            for e in pc {
                s.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    e["label"].as_str().unwrap_or("?"),
                    e["best_latent"],
                    num(&e["auroc"], 3),
                    num(&e["f1"], 3)
                ));
            }
        }
        if m["factors"].is_object() {
            s.push_str("\n| factor | mean AUROC | values (best latent: AUROC) |\n|---|---:|---|\n");
            for f in ["colour", "shape", "texture", "background"] {
                let e = &m["factors"][f];
                let values: Vec<String> = e["values"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .map(|x| {
                                format!(
                                    "{} ({}: {})",
                                    x["value"].as_str().unwrap_or("?"),
                                    x["best_latent"],
                                    num(&x["auroc"], 3)
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                s.push_str(&format!(
                    "| {f} | {} | {} |\n",
                    num(&e["mean_auroc"], 3),
                    values.join(", ")
                ));
            }
        }
        let loc = &m["localisation"];
        if loc.is_object() {
            s.push_str(&format!(
                "\nLocalisation over {} patches of {} images (best latent's AUROC as a detector of the class's patches): foreground {} (latent {}), mean over classes {}\n\n| class | patches | best latent | AUROC |\n|---|---:|---:|---:|\n",
                loc["patches"],
                loc["images"],
                num(&loc["foreground"]["auroc"], 3),
                loc["foreground"]["best_latent"],
                num(&loc["mean_auroc"], 3)
            ));
            for e in loc["classes"].as_array().into_iter().flatten() {
                s.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    e["class"].as_str().unwrap_or("?"),
                    e["patches"],
                    e["best_latent"],
                    num(&e["auroc"], 3)
                ));
            }
        }
        if let Some(fs) = m["labels"]["features"].as_array() {
            s.push_str(&format!(
                "\nAuto labels (precision@12 against {} random images, chance {}):\n\n| latent | label | P@12 |\n|---:|---|---:|\n",
                DISTRACTORS,
                num(&m["labels"]["chance"], 2)
            ));
            for e in fs {
                s.push_str(&format!(
                    "| {} | {} | {} |\n",
                    e["latent"],
                    e["label"].as_str().unwrap_or("?"),
                    num(&e["precision_at_12"], 3)
                ));
            }
        }
    }
    s
}

/// The latent-density histogram (log10 firing frequency over rows, dead latents counted
/// apart in the legend), one curve per SAE: `<dir>/latent_density.png`.
pub fn write_plots(r: &EvaluateReport, dir: &Path) -> Result<Vec<PathBuf>> {
    use crate::report::plots::{draw_against, Chart, Series};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lo = r
        .density
        .iter()
        .flat_map(|d| d.1.iter().copied())
        .fold(0.0f64, f64::min)
        .floor()
        .min(-1.0);
    let bins = 40usize;
    let width = -lo / bins as f64;
    let series = r
        .density
        .iter()
        .map(|(name, values, dead)| {
            let mut counts = vec![0usize; bins];
            for &v in values {
                let b = (((v - lo) / width) as usize).min(bins - 1);
                counts[b] += 1;
            }
            let mut points = Vec::new();
            for (b, &c) in counts.iter().enumerate() {
                let x0 = lo + b as f64 * width;
                points.push((x0, c as f64));
                points.push((x0 + width, c as f64));
            }
            Series {
                name: format!("{name} ({dead} dead)"),
                points,
                markers: false,
            }
        })
        .collect();
    let chart = Chart {
        name: "latent_density",
        title: "Latent density (log10 firing frequency over rows)".into(),
        y_label: "latents",
        series,
        y_floor: None,
        from_zero: true,
        legend: plotters::chart::SeriesLabelPosition::UpperLeft,
    };
    let path = dir.join("latent_density.png");
    draw_against(&chart, ("log10 firing frequency", 1), &path)?;
    Ok(vec![path])
}
