//! `eval-zeroshot`: plain predictions equal a transformers zero-shot reference on the same
//! files (tests/reference/zeroshot_reference.py); with an SAE, the error-added path equals
//! plain CLIP, an exact (identity) SAE changes nothing, a trained SAE's figures agree with a
//! direct computation and across the Markdown, JSON and CSV outputs; bad checkpoints fail
//! with one line.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use saeclip::clip::{Clip, LoadOptions, Tokens};
use saeclip::data::{self as datasets, Dataset, DatasetSpec, Procedural, Split};
use saeclip::eval::zeroshot::{
    class_embeddings, evaluate, to_markdown, TemplateMode, ZeroshotOptions, ZeroshotReport,
};
use saeclip::eval::SplicedSae;
use saeclip::sae::checkpoint::{self, CheckpointMeta};
use saeclip::sae::{Architecture, Evr, Sae, SaeConfig};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// Procedural classes written to the image folder, and images per class.
const CLASSES: [usize; 8] = [0, 1, 7, 13, 20, 26, 33, 47];
const PER_CLASS: usize = 5;

fn tiny_model() -> PathBuf {
    common::reference_model("tiny-quick").join("hf")
}

/// An image folder of procedural test images (PNG, one subfolder per class) plus one broken
/// file; returns the folder.
fn image_folder(root: &Path) -> PathBuf {
    let dir = root.join("images");
    let source = Procedural::new(0, Split::Test);
    for &c in &CLASSES {
        for r in 0..PER_CLASS {
            let index = c + 48 * r;
            let class = &source.classes()[c];
            let path = dir.join(class).join(format!("{index:04}.png"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            source.image(index).unwrap().save(&path).unwrap();
        }
    }
    let broken = dir
        .join(&source.classes()[CLASSES[2]])
        .join("0002-broken.png");
    std::fs::write(broken, b"not a png").unwrap();
    dir
}

fn options(images: &Path, sae: Option<PathBuf>) -> ZeroshotOptions {
    let spec: DatasetSpec = format!("folder:{}", images.display()).parse().unwrap();
    let mut o = ZeroshotOptions::new(tiny_model(), vec![spec]);
    o.sae = sae;
    o.batch_size = 7; // batches that do not divide the dataset
    o
}

fn model_sha256() -> String {
    saeclip::data::cache::file_sha256(&tiny_model().join("model.safetensors")).unwrap()
}

/// Save `sae` with a header that says it reads `layer`/`tokens` of the tiny model.
fn save_sae(path: &Path, sae: &Sae, layer: usize, tokens: &str, sha256: &str) {
    let meta = CheckpointMeta {
        clip: json!({"model": tiny_model().display().to_string(), "sha256": sha256, "layer": layer, "tokens": tokens}),
        training: Value::Null,
        metrics: Value::Null,
    };
    checkpoint::save(path, sae, &meta, None, Kind::Float).unwrap();
}

/// An SAE that reconstructs exactly: latents [x·s, −x·s], all kept, decoded as their
/// difference.
fn identity_sae(d: i64) -> Sae {
    let eye = Tensor::eye(d, (Kind::Float, Device::Cpu));
    let w_enc = Tensor::cat(&[&eye, &(-&eye)], 1); // D, 2D
    let w_dec = Tensor::cat(&[&eye, &(-&eye)], 0); // 2D, D
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: d,
        d_sae: 2 * d,
        k: 2 * d,
    };
    let zeros = |n| Tensor::zeros([n], (Kind::Float, Device::Cpu));
    Sae::from_tensors(config, &w_enc, &zeros(2 * d), &w_dec, &zeros(d), 0.37, None).unwrap()
}

/// A small SAE trained for a few epochs on the tiny model's layer-1 CLS activations of
/// procedural training images; returns its checkpoint.
fn trained_sae(root: &Path) -> PathBuf {
    let sets: Vec<String> = vec![
        format!("data.model={}", tiny_model().display()),
        "data.dataset=procedural:0".into(),
        "data.split=train".into(),
        "data.layer=1".into(),
        "data.tokens=cls".into(),
        "data.limit=480".into(),
        "data.dtype=f32".into(),
        "data.val_fraction=0.1".into(),
        format!("output.caches_dir={}", root.join("caches").display()),
        format!("output.runs_dir={}", root.join("runs").display()),
        "sae.d_sae=256".into(),
        "sae.k=8".into(),
        "sae.k_aux=16".into(),
        "training.batch_size=64".into(),
        "training.epochs=8".into(),
        "training.lr=0.004".into(),
        "training.lr_warmup_steps=5".into(),
    ];
    common::train_run(&sets, None).join("checkpoints/best.safetensors")
}

fn by_source(r: &ZeroshotReport) -> HashMap<String, &saeclip::eval::zeroshot::Prediction> {
    r.datasets[0]
        .predictions
        .iter()
        .map(|p| (p.source.clone(), p))
        .collect()
}

#[test]
fn plain_predictions_equal_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let images = image_folder(dir.path());
    let clip = Clip::load(&tiny_model(), &LoadOptions::default()).unwrap();
    for mode in [TemplateMode::Single, TemplateMode::Ensemble] {
        let mut o = options(&images, None);
        o.templates = mode;
        let report = evaluate(&o).unwrap();
        let d = &report.datasets[0];
        let reference = dir.path().join(format!("reference-{}.json", mode.name()));
        common::run_python(
            "tests/reference/zeroshot_reference.py",
            &[
                "--model",
                tiny_model().to_str().unwrap(),
                "--images",
                images.to_str().unwrap(),
                "--templates",
                mode.name(),
                "--out",
                reference.to_str().unwrap(),
            ],
        );
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
        // Same classes, templates and class embeddings.
        assert_eq!(
            d.class_names,
            serde_json::from_value::<Vec<String>>(want["classes"].clone()).unwrap()
        );
        assert_eq!(
            d.template_list,
            serde_json::from_value::<Vec<String>>(want["templates"].clone()).unwrap()
        );
        assert_eq!(
            d.template_list.len(),
            if mode == TemplateMode::Single { 1 } else { 18 }
        );
        let text = class_embeddings(&clip, &d.class_names, &d.template_list).unwrap();
        let want_text: Vec<Vec<f32>> =
            serde_json::from_value(want["class_embeds"].clone()).unwrap();
        let want_text = Tensor::from_slice2(&want_text);
        let diff = (&text - &want_text).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{mode:?}: class embeddings differ by {diff}");
        // The broken file is skipped by both, and every other image is predicted alike.
        assert_eq!(d.skipped, 1);
        assert_eq!(want["skipped"].as_array().unwrap().len(), 1);
        assert_eq!(
            d.skipped_images[0].source,
            want["skipped"][0].as_str().unwrap()
        );
        assert_eq!(d.samples, CLASSES.len() * PER_CLASS);
        let ours = by_source(&report);
        let images_ref = want["images"].as_array().unwrap();
        assert_eq!(images_ref.len(), ours.len());
        let mut hits = 0;
        for img in images_ref {
            let p = ours[img["source"].as_str().unwrap()];
            assert_eq!(p.label, img["label"].as_i64().unwrap(), "{}", p.source);
            let top5: Vec<i64> = serde_json::from_value(img["top5"].clone()).unwrap();
            assert_eq!(
                p.top5, top5,
                "{mode:?}: {} ranks the classes differently",
                p.source
            );
            hits += usize::from(p.pred() == p.label);
        }
        let top1 = 100.0 * hits as f64 / ours.len() as f64;
        assert!((d.clip.top1 - top1).abs() < 1e-9);
        assert!(d.clip_sae.is_none() && d.sae_evr.is_none() && d.drop_top1.is_none());
    }
}

#[test]
fn identity_sae_changes_nothing_and_error_added_equals_plain() {
    let dir = tempfile::tempdir().unwrap();
    let images = image_folder(dir.path());
    let ckpt = dir.path().join("identity.safetensors");
    save_sae(&ckpt, &identity_sae(64), 1, "all", &model_sha256());
    let plain = evaluate(&options(&images, None)).unwrap();
    for splice in [None, Some(Tokens::Cls), Some(Tokens::Patches)] {
        let mut o = options(&images, Some(ckpt.clone()));
        o.splice = splice;
        let r = evaluate(&o).unwrap();
        let d = &r.datasets[0];
        let sae = r.sae.as_ref().unwrap();
        assert_eq!(
            sae.splice,
            splice.unwrap_or(Tokens::All),
            "the default splice is the SAE's tokens"
        );
        assert!(sae.model_mismatch.is_none());
        assert_eq!(d.clip, plain.datasets[0].clip);
        assert_eq!(d.clip_sae, Some(d.clip));
        assert_eq!(d.error_added, Some(d.clip));
        assert_eq!(d.drop_top1, Some(0.0));
        assert_eq!(d.error_added_agreement, Some(1.0));
        assert!(d.sae_evr.unwrap() > 1.0 - 1e-9, "{:?}", d.sae_evr);
        assert!(d.mean_cosine.unwrap() > 1.0 - 1e-6, "{:?}", d.mean_cosine);
        for (p, q) in d.predictions.iter().zip(&plain.datasets[0].predictions) {
            assert_eq!(p.top5, q.top5);
            assert_eq!(p.top5_sae.as_ref(), Some(&q.top5));
            assert_eq!(p.pred_error_added, Some(q.pred()));
        }
    }
    // Without the error check: the same spliced figures, no error-added ones.
    let mut o = options(&images, Some(ckpt.clone()));
    o.error_check = false;
    let r = evaluate(&o).unwrap();
    let d = &r.datasets[0];
    assert_eq!(d.clip_sae, Some(plain.datasets[0].clip));
    assert_eq!((d.error_added, d.error_added_agreement), (None, None));
    assert!(d.predictions.iter().all(|p| p.pred_error_added.is_none()));
}

#[test]
fn trained_sae_figures_are_true_and_outputs_agree() {
    let dir = tempfile::tempdir().unwrap();
    let images = image_folder(dir.path());
    let ckpt = trained_sae(dir.path());
    let out = |name: &str| dir.path().join(name);
    let output = common::saeclip()
        .args(["--device", "cpu", "eval-zeroshot", "--model"])
        .arg(tiny_model())
        .arg("--sae")
        .arg(&ckpt)
        .arg("--dataset")
        .arg(format!("folder:{}", images.display()))
        .args([
            "--dataset",
            "procedural:0",
            "--samples",
            "48",
            "--batch-size",
            "16",
        ])
        .arg("--output")
        .arg(out("table.md"))
        .arg("--json")
        .arg(out("results.json"))
        .arg("--predictions")
        .arg(out("predictions.csv"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "eval-zeroshot failed: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let table = std::fs::read_to_string(out("table.md")).unwrap();
    assert_eq!(stdout, table, "stdout and --output hold the same Markdown");
    assert!(table.contains("Sanity, "), "{table}");

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out("results.json")).unwrap()).unwrap();
    let sets = json["datasets"].as_array().unwrap();
    assert_eq!(sets.len(), 2);
    let mut csv = csv::Reader::from_path(out("predictions.csv")).unwrap();
    assert_eq!(
        csv.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "dataset",
            "image_index",
            "source",
            "label",
            "pred",
            "pred_sae",
            "label_name",
            "pred_name",
            "pred_sae_name"
        ]
    );
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    // Names are the dataset's classes at the indices of the same row: procedural names,
    // and for the folder its subfolders (the first part of each source).
    let classes = Procedural::new(0, Split::Test).classes().to_vec();
    let mut folder_classes = HashMap::new();
    for r in &rows {
        if r[0].starts_with("folder:") {
            let folder = r[2].split('/').next().unwrap();
            assert_eq!(&r[6], folder, "{r:?}");
            folder_classes.insert(r[3].to_string(), folder.to_string());
        } else {
            for (index, name) in [(3, 6), (4, 7), (5, 8)] {
                let class = &classes[r[index].parse::<usize>().unwrap()];
                assert_eq!(&r[name], class.as_str(), "{r:?}");
            }
        }
    }
    assert_eq!(folder_classes.len(), CLASSES.len(), "{folder_classes:?}");
    for r in rows.iter().filter(|r| r[0].starts_with("folder:")) {
        for (index, name) in [(4, 7), (5, 8)] {
            assert_eq!(
                Some(&r[name].to_string()),
                folder_classes.get(&r[index]),
                "{r:?}"
            );
        }
    }
    for d in sets {
        for key in [
            "name",
            "samples",
            "templates",
            "clip",
            "clip_sae",
            "drop_top1",
            "drop_top5",
            "sae_evr",
        ] {
            assert!(d.get(key).is_some(), "JSON lacks {key}");
        }
        let name = d["name"].as_str().unwrap();
        let mine: Vec<&csv::StringRecord> = rows.iter().filter(|r| &r[0] == name).collect();
        let n = mine.len();
        assert_eq!(d["samples"].as_u64().unwrap() as usize, n);
        let pct =
            |col: usize| 100.0 * mine.iter().filter(|r| r[3] == r[col]).count() as f64 / n as f64;
        let f = |v: &Value| v.as_f64().unwrap();
        assert!((f(&d["clip"]["top1"]) - pct(4)).abs() < 1e-9, "{name}");
        assert!((f(&d["clip_sae"]["top1"]) - pct(5)).abs() < 1e-9, "{name}");
        assert!(
            (f(&d["drop_top1"]) - (f(&d["clip"]["top1"]) - f(&d["clip_sae"]["top1"]))).abs() < 1e-9
        );
        assert!(
            (f(&d["drop_top5"]) - (f(&d["clip"]["top5"]) - f(&d["clip_sae"]["top5"]))).abs() < 1e-9
        );
        // The error-added path gives plain CLIP's accuracy.
        assert_eq!(d["error_added"], d["clip"], "{name}");
        let evr = f(&d["sae_evr"]);
        assert!(evr.is_finite() && evr < 1.0, "{name}: evr {evr}");
        let cos = f(&d["mean_cosine"]);
        assert!(cos > 0.0 && cos < 1.0, "{name}: mean cosine {cos}");
        // The Markdown row shows the same numbers.
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {name} ")))
            .unwrap();
        for v in [
            f(&d["clip"]["top1"]),
            f(&d["clip_sae"]["top1"]),
            f(&d["drop_top1"]),
        ] {
            assert!(row.contains(&format!("{v:.2}")), "{row} lacks {v:.2}");
        }
        assert!(row.contains(&format!("{evr:.3}")), "{row}");
    }
    // The stratified sample of 48 procedural images holds one image of each class.
    let procedural: Vec<&csv::StringRecord> =
        rows.iter().filter(|r| &r[0] == "procedural:0").collect();
    let labels: std::collections::BTreeSet<&str> = procedural.iter().map(|r| &r[3]).collect();
    assert_eq!((procedural.len(), labels.len()), (48, 48));
    assert_eq!(sets[0]["skipped"], 1);

    // sae_evr equals a direct computation on the folder's images.
    let clip = Clip::load(&tiny_model(), &LoadOptions::default()).unwrap();
    let sae = SplicedSae::load(&ckpt, &clip, None, Device::Cpu).unwrap();
    assert_eq!((sae.layer, sae.tokens), (1, Tokens::Cls));
    let spec: DatasetSpec = format!("folder:{}", images.display()).parse().unwrap();
    let dataset = datasets::open(&spec, Split::Test).unwrap();
    let paths: Vec<PathBuf> = (0..dataset.len())
        .map(|i| images.join(dataset.item(i).source))
        .filter(|p| !p.to_string_lossy().contains("broken"))
        .collect();
    let pixels = saeclip::embed::load_pixels(&clip, &paths).unwrap();
    let x = clip.residual(&pixels, 1).unwrap().select(1, 0);
    let mut evr = Evr::new(64, Device::Cpu);
    evr.update(&x, &sae.sae.reconstruct(&x));
    let want = evr.evr();
    assert!(
        (sets[0]["sae_evr"].as_f64().unwrap() - want).abs() < 1e-6,
        "{} vs {want}",
        sets[0]["sae_evr"]
    );

    // --no-error-check: the same figures without path (3), whose fields become null.
    let unchecked = common::saeclip()
        .args(["--device", "cpu", "-q", "eval-zeroshot", "--model"])
        .arg(tiny_model())
        .arg("--sae")
        .arg(&ckpt)
        .arg("--dataset")
        .arg(format!("folder:{}", images.display()))
        .args(["--dataset", "procedural:0", "--samples", "48"])
        .args(["--batch-size", "16", "--no-error-check", "--json"])
        .arg(out("unchecked.json"))
        .output()
        .unwrap();
    assert!(
        unchecked.status.success(),
        "{}",
        String::from_utf8_lossy(&unchecked.stderr)
    );
    let table = String::from_utf8_lossy(&unchecked.stdout);
    assert!(!table.contains("Sanity, "), "{table}");
    assert!(table.contains("sanity check was skipped"), "{table}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out("unchecked.json")).unwrap()).unwrap();
    for (d, checked) in json["datasets"].as_array().unwrap().iter().zip(sets) {
        for key in ["clip", "clip_sae", "drop_top1", "sae_evr", "mean_cosine"] {
            assert_eq!(d[key], checked[key], "{key}");
        }
        assert!(d["error_added"].is_null() && d["error_added_agreement"].is_null());
    }
}

#[test]
fn markdown_without_sae_has_plain_columns_only() {
    let dir = tempfile::tempdir().unwrap();
    let images = image_folder(dir.path());
    let mut o = options(&images, None);
    o.samples = Some(8);
    let r = evaluate(&o).unwrap();
    assert_eq!(r.datasets[0].samples + r.datasets[0].skipped, 8);
    let again = evaluate(&o).unwrap();
    assert_eq!(
        r.datasets[0].predictions, again.datasets[0].predictions,
        "the sample is deterministic"
    );
    let md = to_markdown(&r);
    assert!(
        md.starts_with("| Dataset | Samples | Top-1 CLIP | Top-5 CLIP |\n"),
        "{md}"
    );
    assert!(!md.contains("SAE"), "{md}");
}

/// Run `saeclip eval-zeroshot` on procedural images with `ckpt`.
fn eval_cli(ckpt: &Path) -> std::process::Output {
    common::saeclip()
        .args(["--device", "cpu", "eval-zeroshot", "--model"])
        .arg(tiny_model())
        .arg("--sae")
        .arg(ckpt)
        .args(["--dataset", "procedural:0", "--samples", "4"])
        .output()
        .unwrap()
}

fn one_error_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

#[test]
fn cli_refuses_checkpoints_that_do_not_fit_and_warns_on_other_weights() {
    let dir = tempfile::tempdir().unwrap();
    let sha = model_sha256();
    let narrow = dir.path().join("narrow.safetensors");
    save_sae(&narrow, &identity_sae(32), 1, "cls", &sha);
    let line = one_error_line(&eval_cli(&narrow));
    assert!(line.contains("d_in = 32") && line.contains("64"), "{line}");

    let deep = dir.path().join("deep.safetensors");
    save_sae(&deep, &identity_sae(64), 7, "cls", &sha);
    let line = one_error_line(&eval_cli(&deep));
    assert!(line.contains("layer 7") && line.contains("0..=2"), "{line}");

    let missing = dir.path().join("missing.safetensors");
    let line = one_error_line(&eval_cli(&missing));
    assert!(line.contains("missing.safetensors"), "{line}");

    let other = dir.path().join("other.safetensors");
    save_sae(&other, &identity_sae(64), 1, "cls", &"0".repeat(64));
    let out = eval_cli(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("other weights"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("| procedural:0 (test) | 4 |"));
}
