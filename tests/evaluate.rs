//! `saeclip evaluate`: planted class directions are found by probing and factors, the
//! reconstruction section equals a plain-Python computation from the checkpoint, an exact
//! SAE recovers all zero-shot accuracy with zero KL, zero-ablation equals a transformers
//! computation with the CLS token zeroed, and bad input gives `null` with a reason or one
//! line.

mod common;

use std::path::{Path, PathBuf};

use saeclip::clip::{Precision, Tokens};
use saeclip::data::cache::{open_writer, CacheKey, DatasetRef, ImageRecord, ModelRef, Opened};
use saeclip::data::{Dataset, Procedural, ProceduralFactors, Split};
use saeclip::sae::checkpoint::{self, CheckpointMeta};
use saeclip::sae::{Architecture, Sae, SaeConfig};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const D: i64 = 32;
const F: i64 = 64;
/// Images in the planted cache.
const N: usize = 480;
/// The latents that carry the eight colour directions.
const PLANTED: [i64; 8] = [3, 9, 17, 24, 33, 41, 50, 62];

fn cpu() -> (Kind, Device) {
    (Kind::Float, Device::Cpu)
}

/// Write rows `x` [N, D] as a CLS cache of layer 1 with the given labels and sources.
fn write_cache(dir: &Path, x: &Tensor, labels: &[i64], sources: &[String]) -> PathBuf {
    let key = CacheKey {
        d_model: x.size()[1],
        dtype: Precision::F32,
        layer: 1,
        tokens: Tokens::Cls,
        model: ModelRef {
            path: "synthetic".into(),
            sha256: "0".into(),
        },
        dataset: DatasetRef {
            kind: "synthetic".into(),
            path: "-".into(),
            split: "test".into(),
        },
        part: None,
        limit: None,
        image_size: 0,
    };
    let Opened::Writer(mut w) = open_writer(dir, key, 1 << 20, true).unwrap() else {
        panic!("a finished cache is in the way")
    };
    for i in 0..x.size()[0] as usize {
        let record = ImageRecord {
            image_index: i,
            source: sources[i].clone(),
            label: labels[i],
        };
        w.add_image(
            record,
            &x.narrow(0, i as i64, 1),
            &Tensor::zeros([1], (Kind::Int64, Device::Cpu)),
        )
        .unwrap();
    }
    w.finish().unwrap();
    dir.to_path_buf()
}

fn save(path: &Path, sae: &Sae) -> PathBuf {
    let meta = CheckpointMeta {
        clip: json!({"model": "synthetic", "layer": 1, "tokens": "cls"}),
        ..Default::default()
    };
    checkpoint::save(path, sae, &meta, None, Kind::Float).unwrap();
    path.to_path_buf()
}

/// The planted data: procedural test images 0..N (their sources, colour labels), rows
/// 3·v_colour + noise with v the colour's direction; the 8 directions are orthonormal and
/// `random` [F, D] holds unit rows orthogonal to all of them.
struct Planted {
    x: Tensor,
    labels: Vec<i64>,
    sources: Vec<String>,
    directions: Tensor,
    random: Tensor,
}

fn planted() -> Planted {
    let ds = Procedural::new(0, Split::Test);
    let sources: Vec<String> = (0..N).map(|i| ds.item(i).source).collect();
    let labels: Vec<i64> = sources
        .iter()
        .map(|s| ProceduralFactors::from_source(s).unwrap().colour.position() as i64)
        .collect();
    let (q, noise, mix) = saeclip::rng::seeded(11, || {
        let (q, _) = Tensor::linalg_qr(&Tensor::randn([D, D], cpu()), "reduced");
        (
            q,
            Tensor::randn([N as i64, D], cpu()) * 0.3,
            Tensor::randn([F, D - 8], cpu()),
        )
    });
    let directions = q.narrow(1, 0, 8).tr().contiguous(); // 8, D
    let complement = q.narrow(1, 8, D - 8); // D, D-8
    let random = mix.matmul(&complement.tr());
    let random = &random / random.norm_scalaropt_dim(2, [1], true);
    let y = Tensor::from_slice(&labels);
    let x = noise + directions.index_select(0, &y) * 3.0;
    Planted {
        x,
        labels,
        sources,
        directions,
        random,
    }
}

/// A top-k SAE whose decoder rows are `w_dec` [F, D] and encoder their transpose.
fn tied_sae(w_dec: &Tensor, k: i64) -> Sae {
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: D,
        d_sae: F,
        k,
    };
    let zeros = |n| Tensor::zeros([n], cpu());
    Sae::from_tensors(
        config,
        &w_dec.tr().contiguous(),
        &zeros(F),
        w_dec,
        &zeros(D),
        1.0,
        None,
    )
    .unwrap()
}

fn run_json(args: &[&str]) -> Value {
    let out = common::saeclip().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "saeclip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = args
        .iter()
        .position(|a| *a == "--json")
        .expect("--json FILE");
    serde_json::from_str(&std::fs::read_to_string(args[at + 1]).unwrap()).unwrap()
}

/// `saeclip evaluate` of one checkpoint on a cache, with `extra` flags: the JSON it writes.
fn evaluate_cache(ckpt: &Path, cache: &Path, json: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "--device",
        "cpu",
        "evaluate",
        "--sae",
        ckpt.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_json(&args)
}

#[test]
fn planted_directions_are_the_best_latents() {
    let dir = tempfile::tempdir().unwrap();
    let p = planted();
    let cache = write_cache(&dir.path().join("cache"), &p.x, &p.labels, &p.sources);
    let with = p.random.copy();
    for (c, &l) in PLANTED.iter().enumerate() {
        with.get(l).copy_(&p.directions.get(c as i64));
    }
    let planted_ckpt = save(&dir.path().join("planted.safetensors"), &tied_sae(&with, 4));
    let random_ckpt = save(
        &dir.path().join("random.safetensors"),
        &tied_sae(&p.random, 4),
    );
    let json_path = dir.path().join("eval.json");
    let md_path = dir.path().join("eval.md");
    let plots = dir.path().join("plots");
    let v = run_json(&[
        "--device",
        "cpu",
        "evaluate",
        "--sae",
        planted_ckpt.to_str().unwrap(),
        "--sae",
        random_ckpt.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--json",
        json_path.to_str().unwrap(),
        "--output",
        md_path.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]);
    let saes = v["saes"].as_array().expect("two SAEs → saes");
    assert_eq!(saes.len(), 2);
    let (good, bad) = (&saes[0], &saes[1]);
    // Probing: the planted latent is the best for every class, with AUROC ≥ 0.99.
    let per_class = good["probing"]["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), 8);
    for (c, e) in per_class.iter().enumerate() {
        assert_eq!(e["best_latent"].as_i64().unwrap(), PLANTED[c], "{e}");
        assert!(e["auroc"].as_f64().unwrap() >= 0.99, "{e}");
        assert!(e["f1"].as_f64().unwrap() > 0.95, "{e}");
    }
    // The random latents separate nothing.
    for e in bad["probing"]["per_class"].as_array().unwrap() {
        assert!(
            e["auroc"].as_f64().unwrap() < 0.9,
            "random latent too good: {e}"
        );
    }
    assert!(bad["probing"]["mean_best_auroc"].as_f64().unwrap() < 0.85);
    // Sparse probes: one planted latent per class suffices; the dense probe too.
    let k1 = &good["probing"]["sparse_probe"][0];
    assert_eq!(k1["k"], 1);
    assert!(k1["accuracy"].as_f64().unwrap() > 0.97, "{k1}");
    assert!(good["probing"]["dense_probe_accuracy"].as_f64().unwrap() > 0.97);
    assert!(
        bad["probing"]["sparse_probe"][0]["accuracy"]
            .as_f64()
            .unwrap()
            < 0.8
    );
    // Factors: colour is planted, the others are not.
    let colour = &good["factors"]["colour"];
    for (c, e) in colour["values"].as_array().unwrap().iter().enumerate() {
        assert_eq!(e["best_latent"].as_i64().unwrap(), PLANTED[c], "{e}");
        assert_eq!(e["value"], saeclip::data::procedural::Colour::ALL[c].name());
    }
    assert!(colour["mean_auroc"].as_f64().unwrap() >= 0.99);
    assert!(good["factors"]["shape"]["mean_auroc"].as_f64().unwrap() < 0.8);
    // Sections that need a model are null with a reason.
    for s in [good, bad] {
        assert!(
            s["zeroshot"].is_null() && s["zeroshot_reason"].as_str().unwrap().contains("--model")
        );
        assert!(s["labels"].is_null() && s["labels_reason"].is_string());
    }
    assert_eq!(good["reconstruction"]["rows"], N);
    // Markdown: one comparison row per SAE, the same figures.
    let md = std::fs::read_to_string(&md_path).unwrap();
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.contains(".safetensors |"))
        .collect();
    assert_eq!(rows.len(), 2, "{md}");
    let mean = good["probing"]["mean_best_auroc"].as_f64().unwrap();
    assert!(rows[0].contains(&format!("{mean:.3}")), "{}", rows[0]);
    assert!(plots.join("latent_density.png").is_file());
}

#[test]
fn reconstruction_equals_plain_python() {
    let dir = tempfile::tempdir().unwrap();
    let p = planted();
    let x = &p.x + 0.5; // an offset, so that the mean matters
    let cache = write_cache(&dir.path().join("cache"), &x, &p.labels, &p.sources);
    let (w_enc, b_enc, w_dec, b_dec) = saeclip::rng::seeded(5, || {
        (
            Tensor::randn([D, F], cpu()),
            Tensor::randn([F], cpu()) * 0.1,
            Tensor::randn([F, D], cpu()),
            Tensor::randn([D], cpu()) * 0.2,
        )
    });
    let w_dec = &w_dec / w_dec.norm_scalaropt_dim(2, [1], true);
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: D,
        d_sae: F,
        k: 6,
    };
    let sae = Sae::from_tensors(config, &w_enc, &b_enc, &w_dec, &b_dec, 0.37, None).unwrap();
    let ckpt = save(&dir.path().join("sae.safetensors"), &sae);
    let json_path = dir.path().join("eval.json");
    let v = evaluate_cache(&ckpt, &cache, &json_path, &["--batch-size", "37"]);
    let reference = dir.path().join("reference.json");
    common::run_python(
        "tests/reference/evaluate_reference.py",
        &[
            "reconstruction",
            "--ckpt",
            ckpt.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
            "--out",
            reference.to_str().unwrap(),
        ],
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let got = &v["reconstruction"];
    assert_eq!(got["rows"], r["rows"]);
    for key in ["evr", "fvu", "cosine", "l0", "dead_frac", "dense_frac"] {
        let (a, b) = (got[key].as_f64().unwrap(), r[key].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5, "{key}: saeclip {a} vs python {b}");
    }
    // A sanity check that the figures are not trivial.
    assert!(got["dense_frac"].as_f64().unwrap() > 0.0 || got["dead_frac"].as_f64().unwrap() > 0.0);
}

#[test]
fn missing_labels_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = planted();
    let unlabelled = vec![-1i64; N];
    let plain: Vec<String> = (0..N).map(|i| format!("img{i}.png")).collect();
    let cache = write_cache(&dir.path().join("cache"), &p.x, &unlabelled, &plain);
    let ckpt = save(&dir.path().join("sae.safetensors"), &tied_sae(&p.random, 4));
    let json_path = dir.path().join("eval.json");
    let v = evaluate_cache(&ckpt, &cache, &json_path, &[]);
    assert!(v["probing"].is_null());
    assert!(
        v["probing_reason"].as_str().unwrap().contains("labels"),
        "{v}"
    );
    assert!(v["factors"].is_null() && v["factors_reason"].as_str().unwrap().contains("procedural"));
    assert!(v["reconstruction"]["evr"].is_number());
    let fails = |args: &[&str], expect: &str| {
        let out = common::saeclip().args(args).output().unwrap();
        common::fails_cleanly(&out, expect);
    };
    let cache_s = cache.to_str().unwrap();
    fails(
        &[
            "evaluate",
            "--sae",
            "/nonexistent/sae.safetensors",
            "--cache",
            cache_s,
        ],
        "does not exist",
    );
    // A checkpoint whose d_in does not match the cache.
    let narrow = SaeConfig {
        architecture: Architecture::TopK,
        d_in: 16,
        d_sae: F,
        k: 4,
    };
    let zeros = |n| Tensor::zeros([n], cpu());
    let w = Tensor::randn([F, 16], cpu());
    let narrow = Sae::from_tensors(
        narrow,
        &w.tr().contiguous(),
        &zeros(F),
        &w,
        &zeros(16),
        1.0,
        None,
    )
    .unwrap();
    let narrow = save(&dir.path().join("narrow.safetensors"), &narrow);
    fails(
        &[
            "evaluate",
            "--sae",
            narrow.to_str().unwrap(),
            "--cache",
            cache_s,
        ],
        "d_in = 16",
    );
    fails(
        &[
            "evaluate",
            "--sae",
            ckpt.to_str().unwrap(),
            "--cache",
            "/nonexistent/cache",
        ],
        "/nonexistent/cache",
    );
    // A directory that is neither a run nor a sweep.
    fails(
        &[
            "evaluate",
            "--sae",
            dir.path().to_str().unwrap(),
            "--cache",
            cache_s,
        ],
        "neither an SAE checkpoint",
    );
}

fn tiny_model() -> PathBuf {
    common::reference_model("tiny-quick").join("hf")
}

/// An image folder of procedural test images, 8 classes × 6.
fn image_folder(root: &Path) -> PathBuf {
    let dir = root.join("images");
    let source = Procedural::new(0, Split::Test);
    for c in [0usize, 1, 7, 13, 20, 26, 33, 47] {
        for r in 0..6 {
            let index = c + 48 * r;
            let path = dir
                .join(&source.classes()[c])
                .join(format!("{index:04}.png"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            source.image(index).unwrap().save(&path).unwrap();
        }
    }
    dir
}

/// An SAE that reconstructs exactly: latents [x·s, −x·s], all kept.
fn identity_sae(d: i64) -> Sae {
    let eye = Tensor::eye(d, cpu());
    let w_enc = Tensor::cat(&[&eye, &(-&eye)], 1);
    let w_dec = Tensor::cat(&[&eye, &(-&eye)], 0);
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: d,
        d_sae: 2 * d,
        k: 2 * d,
    };
    let zeros = |n| Tensor::zeros([n], cpu());
    Sae::from_tensors(config, &w_enc, &zeros(2 * d), &w_dec, &zeros(d), 0.37, None).unwrap()
}

#[test]
fn exact_sae_recovers_everything_and_zero_ablation_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let images = image_folder(dir.path());
    let layer = 1usize;
    let sae = identity_sae(64);
    let meta = CheckpointMeta {
        clip: json!({"model": tiny_model(), "layer": layer, "tokens": "cls"}),
        ..Default::default()
    };
    let ckpt = dir.path().join("identity.safetensors");
    checkpoint::save(&ckpt, &sae, &meta, None, Kind::Float).unwrap();
    let json_path = dir.path().join("eval.json");
    let dataset = format!("folder:{}", images.display());
    let v = run_json(&[
        "--device",
        "cpu",
        "evaluate",
        "--sae",
        ckpt.to_str().unwrap(),
        "--model",
        tiny_model().to_str().unwrap(),
        "--dataset",
        &dataset,
        "--json",
        json_path.to_str().unwrap(),
        "--label-features",
        "4",
        "--batch-size",
        "7",
    ]);
    let z = &v["zeroshot"];
    assert_eq!(z["samples"], 48);
    assert_eq!(z["clip_top1"], z["sae_top1"], "{z}");
    assert_eq!(z["accuracy_recovered"].as_f64(), Some(1.0), "{z}");
    assert!(z["kl"].as_f64().unwrap().abs() < 1e-6, "{z}");
    assert!((v["reconstruction"]["evr"].as_f64().unwrap() - 1.0).abs() < 1e-5);
    // Zero-ablation against transformers with the CLS token of block 1's output zeroed.
    let reference = dir.path().join("reference.json");
    common::run_python(
        "tests/reference/evaluate_reference.py",
        &[
            "zeroshot",
            "--model",
            tiny_model().to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
            "--layer",
            &layer.to_string(),
            "--out",
            reference.to_str().unwrap(),
        ],
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    assert_eq!(r["samples"], 48);
    assert_eq!(
        z["clip_top1"].as_f64(),
        r["clip_top1"].as_f64(),
        "{z} vs {r}"
    );
    assert_eq!(
        z["zero_ablation_top1"].as_f64(),
        r["zero_ablation_top1"].as_f64(),
        "{z} vs {r}"
    );
    let (a, b) = (
        z["kl_zero_ablation"].as_f64().unwrap(),
        r["kl_zero_ablation"].as_f64().unwrap(),
    );
    assert!(b > 1e-4, "zero-ablation changes the predictions ({b})");
    assert!(
        (a - b).abs() <= 1e-3 * b.max(1.0),
        "KL of zero-ablation: saeclip {a} vs python {b}"
    );
    // Labels ran (the folder has a text tower to label with) and are scored against chance.
    let labels = &v["labels"];
    assert!(labels["mean_precision_at_12"].is_number(), "{v}");
    assert!(labels["features"].as_array().unwrap().len() <= 4);
    // An image folder has no class maps: no localisation, and it says why.
    assert!(v["localisation"].is_null());
    assert!(v["localisation_reason"]
        .as_str()
        .unwrap()
        .contains("per-pixel"));
}

/// An ADE20K validation split of 12 images: grey, with a red 96×96 square on the 32-pixel
/// patch grid of a 224 model (3×3 patches), annotated as class 13 ("person").
fn ade20k_tree(root: &Path) -> PathBuf {
    let dir = root.join("ADEChallengeData2016");
    let images = dir.join("images/validation");
    let annotations = dir.join("annotations/validation");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&annotations).unwrap();
    for i in 0..12u32 {
        let (x0, y0) = (32 * (i % 5), 32 * ((i / 5) % 5));
        let inside = |x: u32, y: u32| (x0..x0 + 96).contains(&x) && (y0..y0 + 96).contains(&y);
        let image = image::RgbImage::from_fn(224, 224, |x, y| {
            image::Rgb(if inside(x, y) {
                [220, 30, 30]
            } else {
                [120, 120, 120]
            })
        });
        image
            .save(images.join(format!("ADE_val_{i:08}.png")))
            .unwrap();
        let map = image::GrayImage::from_fn(224, 224, |x, y| {
            image::Luma([if inside(x, y) { 13 } else { 0 }])
        });
        map.save(annotations.join(format!("ADE_val_{i:08}.png")))
            .unwrap();
    }
    std::fs::write(
        dir.join("objectInfo150.txt"),
        "Idx\tRatio\tTrain\tVal\tName\n13\t0.0163\t6166\t612\tperson, individual\n",
    )
    .unwrap();
    root.to_path_buf()
}

#[test]
fn a_patch_sae_localises_the_annotated_object_on_ade20k() {
    let dir = tempfile::tempdir().unwrap();
    let tree = ade20k_tree(dir.path());
    let meta = CheckpointMeta {
        clip: json!({"model": tiny_model(), "layer": 1, "tokens": "patches"}),
        ..Default::default()
    };
    let ckpt = dir.path().join("patches.safetensors");
    checkpoint::save(&ckpt, &identity_sae(64), &meta, None, Kind::Float).unwrap();
    let json_path = dir.path().join("eval.json");
    let dataset = format!("ade20k:{}", tree.display());
    let all = run_json(&[
        "--device",
        "cpu",
        "evaluate",
        "--sae",
        ckpt.to_str().unwrap(),
        "--model",
        tiny_model().to_str().unwrap(),
        "--dataset",
        &dataset,
        "--split",
        "test",
        "--json",
        json_path.to_str().unwrap(),
        "--label-features",
        "2",
        "--random-baseline",
    ]);
    let v = &all["saes"][0];
    let baseline = &all["saes"][1]["localisation"]["foreground"]["auroc"];
    assert!(
        baseline.as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)),
        "{all}"
    );
    let loc = &v["localisation"];
    assert_eq!(loc["images"], 12, "{v}");
    assert_eq!(loc["patches"], 12 * 49);
    assert_eq!(loc["foreground_patches"], 12 * 9);
    // The identity SAE's latents are the residual's coordinates (and their negatives):
    // one of them separates red patches from grey ones.
    let auroc = loc["foreground"]["auroc"].as_f64().unwrap();
    assert!(auroc > 0.95, "foreground AUROC {auroc}");
    let classes = loc["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 1);
    assert_eq!(classes[0]["class"], "person");
    assert_eq!(classes[0]["patches"], 12 * 9);
    // Without scenes there are no labels: zero-shot says why.
    assert!(v["zeroshot"].is_null());
}
