//! `saeclip demo --quick`: the whole pipeline on the embedded model; outputs exist and
//! agree with each other.

mod common;

use std::collections::HashMap;

#[test]
fn demo_runs_the_pipeline_and_its_outputs_agree() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo-out");
    let run = common::saeclip()
        .args(["--device", "cpu", "demo", "--quick", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("A toy world"),
        "the demo says plainly what its model is: {stderr}"
    );
    assert!(stdout.contains("toy world"), "{stdout}");
    // The key-results table: EVR, L0, and the three zero-shot tasks easy to hard.
    for row in [
        "| EVR |",
        "| L0 | 16.0 |",
        "| procedural:0/shape | 6 |",
        "| procedural:0 | 48 |",
        "| procedural:0/colour-shape-texture | 192 |",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
    assert!(out.join("key-results.md").exists());
    assert!(stdout.contains("browser/index.html"), "{stdout}");
    assert!(stdout.contains("random-decoder baseline: evr"), "{stdout}");
    // The patch-token stage: its localisation, trained and random, in the table and JSON.
    assert!(stdout.contains("| patch-token SAE |"), "{stdout}");
    let patch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("patch-evaluate.json")).unwrap()).unwrap();
    let members = patch["saes"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for m in members {
        assert_eq!(m["sae"]["tokens"], "patches");
        let loc = &m["localisation"];
        assert_eq!(loc["images"], 96, "{loc}");
        let auroc = loc["foreground"]["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{loc}");
        assert!(loc["foreground_patches"].as_u64().unwrap() > 0, "{loc}");
    }
    // The browser's header gives the labels' factor precision (procedural images).
    let data = std::fs::read_to_string(out.join("browser/data.js")).unwrap();
    assert!(
        data.contains("label precision"),
        "no label precision in the browser header"
    );
    for f in [
        "model/config.json",
        "model/model.safetensors",
        "cache/manifest.json",
        "run/summary.json",
        "run/metrics.jsonl",
        "run/checkpoints/best.safetensors",
        "training.md",
        "zeroshot.md",
        "zeroshot.json",
        "predictions.csv",
        "features.csv",
        "browser/index.html",
        "run/plots/evr.png",
        "evaluate.md",
        "evaluate.json",
        "evaluate-plots/latent_density.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // The cache holds the requested images.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("cache/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["images"], 480);
    // Zero-shot JSON agrees with the per-image predictions.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("zeroshot.json")).unwrap()).unwrap();
    let tasks = json["datasets"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    let d = tasks.iter().find(|d| d["name"] == "procedural:0").unwrap();
    assert_eq!(d["samples"], 192);
    let mut reader = csv::Reader::from_path(out.join("predictions.csv")).unwrap();
    let all: Vec<HashMap<String, String>> = reader.deserialize().map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), 3 * 192);
    let rows: Vec<&HashMap<String, String>> = all
        .iter()
        .filter(|r| r["dataset"] == "procedural:0")
        .collect();
    assert_eq!(rows.len(), 192);
    let top1 = |col: &str| {
        100.0 * rows.iter().filter(|r| r[col] == r["label"]).count() as f64 / rows.len() as f64
    };
    assert!((top1("pred") - d["clip"]["top1"].as_f64().unwrap()).abs() < 1e-6);
    assert!((top1("pred_sae") - d["clip_sae"]["top1"].as_f64().unwrap()).abs() < 1e-6);
    // Every listed feature has its collage; the training table shows every epoch.
    let mut reader = csv::Reader::from_path(out.join("features.csv")).unwrap();
    let features: Vec<HashMap<String, String>> = reader.deserialize().map(|r| r.unwrap()).collect();
    assert_eq!(features.len(), 12);
    for f in &features {
        assert!(
            out.join(&f["collage_path"]).exists(),
            "{}",
            f["collage_path"]
        );
    }
    let table = std::fs::read_to_string(out.join("training.md")).unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["epochs"], 4);
    assert!(
        table.contains(&format!("{:.4}", summary["best_val_evr"].as_f64().unwrap())),
        "{table}"
    );
    // A second run replaces the demo's outputs instead of failing.
    let again = common::saeclip()
        .args(["--device", "cpu", "-q", "demo", "--quick", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // -q means quiet: no progress, no info lines, no library warnings (libtorch's
    // "index_reduce() is in beta" used to appear here, from interpret).
    assert!(
        again.stderr.is_empty(),
        "-q demo wrote to stderr:\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
