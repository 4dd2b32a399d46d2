//! `extract` and the activation cache: contents equal a direct forward, resume after an
//! interruption, sharded extraction, bad images, Python interoperability, the CLI.

mod common;

use std::path::{Path, PathBuf};

use saeclip::clip::preprocess::{preprocess, PreprocessConfig};
use saeclip::clip::{Clip, LoadOptions, Precision, Tokens};
use saeclip::data::cache::{ActivationCache, Part};
use saeclip::data::{self, DatasetSpec, Split};
use saeclip::extract::{extract, ExtractOptions, Stopped};
use tch::{Kind, Tensor};

fn tiny_model() -> PathBuf {
    common::reference_model("tiny-quick").join("hf")
}

fn options(dataset: &str, out: &Path) -> ExtractOptions {
    let mut o = ExtractOptions::new(tiny_model(), dataset.parse().unwrap(), 1, out.to_path_buf());
    o.dtype = Precision::F32;
    o.batch_size = 8;
    o.shard_rows = 10;
    o
}

/// Residuals after `layer` computed directly for dataset indices `indices`.
fn direct(dataset: &str, indices: &[usize], layer: usize, tokens: Tokens) -> Tensor {
    let clip = Clip::load(&tiny_model(), &LoadOptions::default()).unwrap();
    let ds = data::open(&dataset.parse::<DatasetSpec>().unwrap(), Split::Train).unwrap();
    let cfg = PreprocessConfig::default();
    let flat: Vec<f32> = indices
        .iter()
        .flat_map(|&i| preprocess(&ds.image(i).unwrap(), &cfg))
        .collect();
    let pixels = Tensor::from_slice(&flat).view([indices.len() as i64, 3, 224, 224]);
    tokens.select(&clip.residual(&pixels, layer).unwrap())
}

/// All rows of a cache sorted by (image, token).
fn sorted_rows(cache: &ActivationCache) -> (Tensor, Tensor, Tensor) {
    let rows = cache.load_all(Kind::Float).unwrap();
    let key = &rows.image_index * 1000 + &rows.token_index;
    let order = key.argsort(0, false);
    (
        rows.activations.index_select(0, &order),
        rows.image_index.index_select(0, &order),
        rows.token_index.index_select(0, &order),
    )
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn cache_equals_a_direct_forward_for_every_token_choice() {
    for (tokens, per_image) in [
        (Tokens::Cls, 1i64),
        (Tokens::Patches, 49),
        (Tokens::All, 50),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cache");
        let mut o = options("procedural:3", &out);
        o.limit = Some(20);
        o.tokens = tokens;
        o.shard_rows = 3 * per_image as usize;
        let summary = extract(&o).unwrap();
        let m = &summary.manifest;
        assert_eq!(
            (m.images, m.rows, m.layer, m.tokens),
            (20, 20 * per_image as usize, 1, tokens)
        );
        assert!(
            m.shards.len() >= 3,
            "small shards give several files: {}",
            m.shards.len()
        );
        assert!(
            m.shards
                .iter()
                .all(|s| s.rows <= (3 + 8) * per_image as usize),
            "bounded shard size"
        );
        let cache = ActivationCache::open(&out).unwrap();
        let (acts, images, token_index) = sorted_rows(&cache);
        let want =
            direct("procedural:3", &(0..20).collect::<Vec<_>>(), 1, tokens).reshape([-1, 64]);
        assert!(
            max_diff(&acts, &want) < 1e-5,
            "{tokens:?}: {}",
            max_diff(&acts, &want)
        );
        let first: i64 = if tokens == Tokens::Patches { 1 } else { 0 };
        let want_tokens =
            Tensor::arange_start(first, first + per_image, (Kind::Int64, tch::Device::Cpu))
                .repeat([20]);
        assert!(token_index.equal(&want_tokens));
        let want_images = Tensor::arange(20, (Kind::Int64, tch::Device::Cpu))
            .repeat_interleave_self_int(per_image, 0, None);
        assert!(images.equal(&want_images));
        let records = cache.images().unwrap();
        assert_eq!(records.len(), 20);
        assert!(records
            .iter()
            .enumerate()
            .all(|(i, r)| r.image_index == i && r.source.starts_with("procedural:3/train/")));
    }
}

#[test]
fn f16_cache_is_the_rounded_f32_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options("procedural:1", &dir.path().join("f32"));
    o.limit = Some(8);
    extract(&o).unwrap();
    o.out = dir.path().join("f16");
    o.dtype = Precision::F16;
    extract(&o).unwrap();
    let a = ActivationCache::open(&dir.path().join("f32"))
        .unwrap()
        .load_all(Kind::Float)
        .unwrap();
    let b = ActivationCache::open(&dir.path().join("f16")).unwrap();
    assert_eq!(b.manifest().dtype, Precision::F16);
    let b = b.load_all(Kind::Half).unwrap();
    assert!(a.activations.to_kind(Kind::Half).equal(&b.activations));
}

#[test]
fn interrupted_extraction_resumes_to_the_same_cache() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let mut o = options("procedural:5", &whole);
    o.limit = Some(40);
    extract(&o).unwrap();

    let resumed = dir.path().join("resumed");
    o.out = resumed.clone();
    o.stop_after_shards = Some(2);
    let err = extract(&o).unwrap_err();
    assert!(err.downcast_ref::<Stopped>().is_some(), "{err:#}");
    assert!(
        !resumed.join("manifest.json").exists(),
        "an interrupted cache must not look finished"
    );
    assert!(ActivationCache::open(&resumed).is_err());
    o.stop_after_shards = None;
    let summary = extract(&o).unwrap();
    assert_eq!(
        summary.resumed_at, 32,
        "a shard is written every second batch of 8 (16 rows >= 10): two end after 32 images"
    );
    assert_eq!(summary.processed, 8);
    let a = ActivationCache::open(&whole)
        .unwrap()
        .load_all(Kind::Float)
        .unwrap();
    let b = ActivationCache::open(&resumed)
        .unwrap()
        .load_all(Kind::Float)
        .unwrap();
    assert!(a.activations.equal(&b.activations), "resumed cache differs");
    assert!(a.image_index.equal(&b.image_index));
    let names: Vec<String> = std::fs::read_dir(&resumed)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".meta.json") || n.contains(".tmp")),
        "{names:?}"
    );

    // A finished cache is reused; other settings are refused without --force.
    assert!(extract(&o).unwrap().already_complete);
    o.layer = 2;
    let err = extract(&o).unwrap_err();
    assert!(format!("{err:#}").contains("--force"), "{err:#}");
    o.force = true;
    assert_eq!(extract(&o).unwrap().manifest.layer, 2);
}

#[test]
fn three_shards_read_as_one_equal_one_extraction() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options("procedural:9", &dir.path().join("single"));
    o.limit = Some(25);
    extract(&o).unwrap();
    let parts = dir.path().join("parts");
    for i in 0..3 {
        o.out = parts.join(format!("part-{i}"));
        o.part = Some(Part { index: i, count: 3 });
        let m = extract(&o).unwrap().manifest;
        assert!(
            cache_indices(&o.out).iter().all(|&j| j % 3 == i),
            "part {i} holds every 3rd image"
        );
        assert_eq!(m.images, (25 - i).div_ceil(3));
    }
    let single = ActivationCache::open(&dir.path().join("single")).unwrap();
    let union = ActivationCache::open(&parts).unwrap();
    let listed = ActivationCache::open_many(
        &(0..3)
            .map(|i| parts.join(format!("part-{i}")))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(union.rows(), 25);
    assert_eq!(listed.rows(), 25);
    let (a, ai, _) = sorted_rows(&single);
    let (b, bi, _) = sorted_rows(&union);
    assert!(ai.equal(&bi));
    assert!(max_diff(&a, &b) < 1e-5);
    assert_eq!(union.images().unwrap(), single.images().unwrap());

    // Parts that disagree cannot be read as one.
    o.out = parts.join("other-layer");
    o.part = Some(Part { index: 0, count: 3 });
    o.layer = 0;
    extract(&o).unwrap();
    let err = ActivationCache::open(&parts).unwrap_err();
    assert!(format!("{err:#}").contains("layer"), "{err:#}");
}

fn cache_indices(dir: &Path) -> Vec<usize> {
    ActivationCache::open(dir)
        .unwrap()
        .images()
        .unwrap()
        .iter()
        .map(|r| r.image_index)
        .collect()
}

/// A class folder of PNGs with broken files planted among them.
fn folder_with_bad_files(root: &Path) -> Vec<(&'static str, bool)> {
    let files: Vec<(&str, bool)> = vec![
        ("a/00-good.png", true),
        ("a/01-empty.png", false),
        ("a/02-good.png", true),
        ("a/03-truncated.png", false),
        ("b/00-good.png", true),
        ("b/01-not-an-image.jpg", false),
        ("b/02-good.jpg", true),
        ("b/03-unsupported.xyz", false),
        ("b/04-good.png", true),
    ];
    for (i, (name, good)) in files.iter().enumerate() {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let img = image::RgbImage::from_fn(64 + i as u32 * 9, 48, |x, y| {
            image::Rgb([(x * 3 + i as u32 * 20) as u8, (y * 5) as u8, (i * 25) as u8])
        });
        if *good {
            img.save(&path).unwrap();
        } else if name.contains("empty") {
            std::fs::write(&path, b"").unwrap();
        } else if name.contains("truncated") {
            let mut bytes = Vec::new();
            img.write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        } else {
            std::fs::write(&path, b"plain text, not pixels").unwrap();
        }
    }
    files
}

#[test]
fn bad_images_are_skipped_and_never_shift_indices() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let files = folder_with_bad_files(&images);
    let spec = format!("folder:{}", images.display());
    let mut o = options(&spec, &dir.path().join("cache"));
    o.batch_size = 4;
    let m = extract(&o).unwrap().manifest;
    let good: Vec<usize> = files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.1)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(m.images, good.len());
    assert_eq!(m.skipped.len(), files.len() - good.len());
    for s in &m.skipped {
        let i = s.image_index.unwrap();
        assert!(!files[i].1, "a good file was skipped: {s:?}");
        assert_eq!(s.source, files[i].0);
        assert!(!s.error.is_empty());
    }
    let cache = ActivationCache::open(&o.out).unwrap();
    let records = cache.images().unwrap();
    assert_eq!(
        records.iter().map(|r| r.image_index).collect::<Vec<_>>(),
        good
    );
    for r in &records {
        assert_eq!(r.source, files[r.image_index].0);
        assert_eq!(r.label, if r.source.starts_with("a/") { 0 } else { 1 });
    }
    // Each good image's row is its own activation, not a neighbour's.
    let (acts, idx, _) = sorted_rows(&cache);
    let want = direct(&spec, &good, 1, Tokens::Cls).reshape([-1, 64]);
    assert!(idx.equal(&Tensor::from_slice(
        &good.iter().map(|&i| i as i64).collect::<Vec<_>>()
    )));
    assert!(max_diff(&acts, &want) < 1e-5);
}

#[test]
fn python_reads_the_cache_and_agrees_with_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    folder_with_bad_files(&images);
    for dtype in [Precision::F32, Precision::F16] {
        let out = dir.path().join(format!("cache-{dtype:?}"));
        let mut o = options(&format!("folder:{}", images.display()), &out);
        o.dtype = dtype;
        o.tokens = Tokens::All;
        o.shard_rows = 100;
        extract(&o).unwrap();
        common::run_python(
            "tests/reference/cache_reference.py",
            &[
                "--cache",
                out.to_str().unwrap(),
                "--model",
                tiny_model().to_str().unwrap(),
                "--images",
                images.to_str().unwrap(),
            ],
        );
    }
}

#[test]
fn cli_extract_reports_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cache");
    let model = tiny_model();
    let run = |extra: &[&str]| {
        common::saeclip()
            .args([
                "extract",
                "--model",
                model.to_str().unwrap(),
                "--dataset",
                "procedural:2",
            ])
            .args(["--out", out.to_str().unwrap(), "--limit", "6"])
            .args(if extra.contains(&"--layer") {
                &[][..]
            } else {
                &["--layer", "2"][..]
            })
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&[]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("extracted 6 images"), "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["dtype"], "f16");
    assert_eq!(manifest["tokens"], "cls");
    assert_eq!(manifest["dataset"]["kind"], "procedural");
    assert_eq!(manifest["model"]["sha256"].as_str().unwrap().len(), 64);
    let again = run(&[]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already complete"));
    for (extra, expect) in [
        (vec!["--tokens", "patches"], "--force"),
        (vec!["--shard", "3/3"], "0 <= I < N"),
        (vec!["--layer", "9"], "layer 9 does not exist"),
        (
            vec!["--tokens", "registers"],
            "token kind `registers` does not exist",
        ),
    ] {
        let out = run(&extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expect),
            "{extra:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"));
    }
    let bad = common::saeclip()
        .args([
            "extract",
            "--model",
            model.to_str().unwrap(),
            "--dataset",
            "cifar10:/nowhere",
            "--layer",
            "0",
            "--out",
        ])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.lines().count() == 1 && stderr.contains("/nowhere"),
        "{stderr}"
    );
}
