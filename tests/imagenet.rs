//! `imagenet:DIR` on generated miniatures in every layout (class folders, a flat validation
//! folder with the devkit's ground truth or Kaggle's `LOC_val_solution.csv`, DIR holding the
//! class folders, Kaggle's tree): the order and labels equal torchvision's `ImageFolder`
//! (run from the project's venv), names are CLIP's, unlabelled images keep their place at
//! the end and are skipped, broken ground truth fails with one line naming the file;
//! `extract`, `eval-zeroshot` and `interpret` run on a miniature with a tiny model; `fetch
//! dataset imagenet` checks and unpacks fake archives.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};
use saeclip::data::cache::{file_sha256, ActivationCache, Manifest};
use saeclip::data::imagenet::imagenet_1k;
use saeclip::data::{open, Dataset, DatasetKind, DatasetSpec, ImageNet, Split};
use saeclip::fetch::{fetch_imagenet, ImageNetOptions, IMAGENET_ARCHIVES};
use serde_json::Value;

/// The miniature's classes: (WordNet id, CLIP name), as openai/CLIP and timm list them.
const TENCH: (&str, &str) = ("n01440764", "tench");
const GOLDFISH: (&str, &str) = ("n01443537", "goldfish");
const SPRINGER: (&str, &str) = ("n02102040", "English Springer Spaniel");
const TOILET_PAPER: (&str, &str) = ("n15075141", "toilet paper");
/// A class with no folder in the miniature (its ground-truth images have no label).
const KIT_FOX: &str = "n02119789";

fn spec(path: &Path) -> DatasetSpec {
    format!("imagenet:{}", path.display()).parse().unwrap()
}

fn imagenet(path: &Path, split: Split) -> ImageNet {
    ImageNet::open(&spec(path), split).unwrap()
}

fn error_of(path: &Path, split: Split) -> String {
    match ImageNet::open(&spec(path), split) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// A small JPEG whose colour encodes `seed`.
fn jpeg(path: &Path, seed: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = RgbImage::from_fn(40, 32, |x, y| {
        image::Rgb([
            (seed * 53 % 256) as u8,
            ((x as usize * 5 + seed * 17) % 256) as u8,
            ((y as usize * 7 + seed * 29) % 256) as u8,
        ])
    });
    img.save_with_format(path, ImageFormat::Jpeg).unwrap();
}

/// Class folders: `root/<split>/<wnid>/…`, with a nested folder, mixed-case extensions and
/// a text file (not an image, so not listed, as torchvision does). Classes are written out
/// of order.
fn class_folders(root: &Path, split: &str, classes: &[&str], per_class: usize) {
    let mut seed = 0;
    for wnid in classes {
        for k in 0..per_class {
            let ext = if k % 2 == 0 { "JPEG" } else { "jpg" };
            jpeg(
                &root
                    .join(split)
                    .join(wnid)
                    .join(format!("{wnid}_{k}.{ext}")),
                seed,
            );
            seed += 1;
        }
    }
    let first = root.join(split).join(classes[0]);
    jpeg(&first.join("sub/a_nested.JPEG"), 99);
    jpeg(&first.join("zz_last.jpeg"), 98);
    std::fs::write(first.join("notes.txt"), "not an image").unwrap();
}

/// (path below the dataset folder, label) of each image.
type Samples = Vec<(String, i64)>;

/// torchvision's `ImageFolder` over each folder: (classes, samples).
fn torchvision_order(folders: &[&Path]) -> Vec<(Vec<String>, Samples)> {
    let script = r#"
import json, os, sys
from torchvision.datasets import ImageFolder
out = []
for root in sys.argv[1:]:
    ds = ImageFolder(root)
    out.append([ds.classes, [[os.path.relpath(p, root).replace(os.sep, "/"), t] for p, t in ds.samples]])
print(json.dumps(out))
"#;
    let out = std::process::Command::new(common::python())
        .arg("-c")
        .arg(script)
        .args(folders)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "torchvision failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The items of a dataset: (source, label).
fn items(ds: &dyn Dataset) -> Samples {
    (0..ds.len())
        .map(|i| {
            let item = ds.item(i);
            assert_eq!(item.index, i);
            (item.source, item.label)
        })
        .collect()
}

/// `(source, label)` with `prefix/` dropped from the source.
fn below(items: &[(String, i64)], prefix: &str) -> Samples {
    items
        .iter()
        .map(|(s, l)| {
            let s = s
                .strip_prefix(prefix)
                .and_then(|s| s.strip_prefix('/'))
                .unwrap_or_else(|| panic!("{s} is not below {prefix}"));
            (s.to_string(), *l)
        })
        .collect()
}

#[test]
fn class_folders_follow_torchvision_and_clip_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imagenet");
    // train has three classes, val a fourth one too: labels index the union.
    class_folders(&root, "train", &[TOILET_PAPER.0, TENCH.0, SPRINGER.0], 3);
    class_folders(
        &root,
        "val",
        &[SPRINGER.0, TENCH.0, GOLDFISH.0, TOILET_PAPER.0],
        2,
    );

    let train = imagenet(&root, Split::Train);
    let val = imagenet(&root, Split::Test);
    let wnids = [TENCH.0, GOLDFISH.0, SPRINGER.0, TOILET_PAPER.0];
    let names = [TENCH.1, GOLDFISH.1, SPRINGER.1, TOILET_PAPER.1];
    for ds in [&train, &val] {
        assert_eq!(ds.wnids(), wnids);
        assert_eq!(ds.classes(), names);
    }
    assert_eq!(train.split(), Split::Train);
    assert_eq!(train.item(0).source, "train/n01440764/n01440764_0.JPEG");

    // Same order and labels as torchvision (val has every class, so its class list is ours;
    // train lacks goldfish, so torchvision's labels there skip it: compare by name).
    let tv = torchvision_order(&[&root.join("train"), &root.join("val")]);
    let (tv_train_classes, tv_train) = &tv[0];
    let ours = below(&items(&train), "train");
    assert_eq!(ours.len(), tv_train.len());
    for ((s, l), (tv_s, tv_l)) in ours.iter().zip(tv_train) {
        assert_eq!(s, tv_s);
        assert_eq!(train.wnids()[*l as usize], tv_train_classes[*tv_l as usize]);
    }
    assert_eq!(tv[1].0, wnids);
    assert_eq!(below(&items(&val), "val"), tv[1].1);
    // The nested folder (in the first class written, toilet paper) comes after the class
    // folder's own files, as os.walk sorts it; the text file is not listed.
    let paper: Vec<String> = ours
        .iter()
        .filter(|(_, l)| *l == 3)
        .map(|(s, _)| s.clone())
        .collect();
    assert_eq!(paper.len(), 5);
    assert_eq!(paper[3], "n15075141/zz_last.jpeg");
    assert_eq!(paper[4], "n15075141/sub/a_nested.JPEG");
    assert!(!ours.iter().any(|(s, _)| s.ends_with(".txt")));

    // Indices are stable: reopening gives the same; a hidden file changes nothing.
    std::fs::write(
        root.join("train/n01440764/._n01440764_0.JPEG"),
        b"AppleDouble",
    )
    .unwrap();
    assert_eq!(items(&imagenet(&root, Split::Train)), items(&train));
    // Pixels come from the file at the source.
    let img = train.image(0).unwrap();
    assert_eq!(img.dimensions(), (40, 32));

    // Through `open` and the spec parser, with `val` as the split name.
    let split: Split = clap::ValueEnum::from_str("val", true).unwrap();
    let opened = open(&spec(&root), split).unwrap();
    assert_eq!(opened.spec().kind, DatasetKind::ImageNet);
    assert_eq!(items(opened.as_ref()), items(&val));
}

#[test]
fn a_folder_of_class_folders_reads_as_either_split() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imagenette");
    class_folders(&root, ".", &[SPRINGER.0, TENCH.0], 2);
    for split in [Split::Train, Split::Test] {
        let ds = imagenet(&root, split);
        assert_eq!(ds.classes(), [TENCH.1, SPRINGER.1]);
        let tv = torchvision_order(&[&root]);
        assert_eq!(items(&ds), tv[0].1);
    }
    // A folder that is not an ImageNet-1k WordNet id: one line naming it.
    std::fs::create_dir_all(root.join("cats")).unwrap();
    let err = error_of(&root, Split::Train);
    assert!(err.contains("cats") && err.contains("WordNet id"), "{err}");
    assert_eq!(err.lines().count(), 1);
    let err = error_of(&tmp.path().join("nowhere"), Split::Train);
    assert!(
        err.contains("nowhere") && err.contains("fetch dataset imagenet"),
        "{err}"
    );
}

/// The miniature's validation images: file number → WordNet id of its ground truth (or
/// `None` for an image the ground truth does not list).
fn val_truth() -> Vec<Option<&'static str>> {
    vec![
        Some(SPRINGER.0),
        Some(TENCH.0),
        Some(KIT_FOX), // listed, but no kit_fox folder: no label
        Some(TOILET_PAPER.0),
        Some(TENCH.0),
        Some(SPRINGER.0),
        Some(TENCH.0),
        None, // not listed
    ]
}

/// The devkit's ILSVRC2012_IDs of the miniature (deliberately not in WordNet-id order, as in
/// the real devkit), plus a non-leaf synset.
fn devkit_ids() -> Vec<(u32, &'static str)> {
    vec![
        (1, KIT_FOX),
        (2, TOILET_PAPER.0),
        (3, TENCH.0),
        (4, SPRINGER.0),
        (1001, "n00001740"),
    ]
}

/// Write `meta.mat` with scipy: a struct array `synsets` [N, 1] with the devkit's fields.
fn write_meta_mat(path: &Path, compressed: bool) {
    let script = r#"
import json, sys
import numpy as np, scipy.io
rows = json.loads(sys.argv[2])
dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
synsets = np.zeros((len(rows), 1), dtype=dt)
for i, (ident, wnid) in enumerate(rows):
    synsets[i, 0] = (np.array([[float(ident)]]), wnid, "words of " + wnid, np.array([[0.0]]))
scipy.io.savemat(sys.argv[1], {"synsets": synsets}, do_compression=sys.argv[3] == "1")
"#;
    let rows: Vec<(u32, &str)> = devkit_ids();
    let out = std::process::Command::new(common::python())
        .arg("-c")
        .arg(script)
        .arg(path)
        .arg(serde_json::to_string(&rows).unwrap())
        .arg(if compressed { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scipy.io.savemat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A miniature with train class folders and a flat `val/`; returns the val file names.
fn flat_val(root: &Path) -> Vec<String> {
    class_folders(root, "train", &[TENCH.0, SPRINGER.0, TOILET_PAPER.0], 2);
    let mut names = Vec::new();
    for (n, _) in val_truth().iter().enumerate() {
        let name = format!("ILSVRC2012_val_{:08}.JPEG", n + 1);
        jpeg(&root.join("val").join(&name), 200 + n);
        names.push(name);
    }
    names
}

fn devkit_ground_truth(root: &Path, compressed: bool) -> PathBuf {
    let data = root.join("ILSVRC2012_devkit_t12/data");
    std::fs::create_dir_all(&data).unwrap();
    let ids: HashMap<&str, u32> = devkit_ids().into_iter().map(|(i, w)| (w, i)).collect();
    let lines: Vec<String> = val_truth()
        .iter()
        .map_while(|w| w.map(|w| ids[w].to_string()))
        .collect();
    // The last image is not listed: the file has one line fewer.
    assert_eq!(lines.len(), val_truth().len() - 1);
    let txt = data.join("ILSVRC2012_validation_ground_truth.txt");
    std::fs::write(&txt, lines.join("\n") + "\n").unwrap();
    write_meta_mat(&data.join("meta.mat"), compressed);
    txt
}

fn loc_solution(path: &Path) {
    let mut text = String::from("ImageId,PredictionString\n");
    // Rows in no particular order, several boxes each, as Kaggle's file has them.
    for (n, w) in val_truth().iter().enumerate().rev() {
        if let Some(w) = w {
            text += &format!("ILSVRC2012_val_{:08},{w} 10 20 30 40 {w} 1 2 3 4\n", n + 1);
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// What the flat miniature must read as: labelled images by class then name, as
/// torchvision's `ImageNet` (which moves them into class folders) orders them, then the
/// two without a label by name.
fn check_flat(ds: &ImageNet, names: &[String], prefix: &str) {
    assert_eq!(ds.wnids(), [TENCH.0, SPRINGER.0, TOILET_PAPER.0]);
    assert_eq!(ds.classes(), [TENCH.1, SPRINGER.1, TOILET_PAPER.1]);
    let truth = val_truth();
    let mut labelled: Vec<(usize, String)> = truth
        .iter()
        .zip(names)
        .filter_map(|(w, n)| {
            let l = ds.wnids().iter().position(|x| Some(x.as_str()) == *w)?;
            Some((l, n.clone()))
        })
        .collect();
    labelled.sort();
    let mut want: Vec<(String, i64)> = labelled
        .into_iter()
        .map(|(l, n)| (format!("{prefix}{n}"), l as i64))
        .collect();
    want.push((format!("{prefix}{}", names[2]), -1)); // kit fox: no folder
    want.push((format!("{prefix}{}", names[7]), -1)); // not listed
    assert_eq!(items(ds), want);
    for i in 0..ds.len() - 2 {
        assert!(ds.image(i).is_ok(), "image {i}");
    }
    let kit_fox = ds.image(ds.len() - 2).unwrap_err().to_string();
    assert!(
        kit_fox.contains("no label") && kit_fox.contains(KIT_FOX),
        "{kit_fox}"
    );
    let unlisted = ds.image(ds.len() - 1).unwrap_err().to_string();
    assert!(
        unlisted.contains("no label") && unlisted.contains("not listed"),
        "{unlisted}"
    );
}

#[test]
fn flat_val_with_the_devkit_or_loc_solution() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imagenet");
    let names = flat_val(&root);
    for compressed in [true, false] {
        let txt = devkit_ground_truth(&root, compressed);
        let ds = imagenet(&root, Split::Test);
        assert_eq!(ds.ground_truth(), Some(txt.as_path()));
        check_flat(&ds, &names, "val/");
    }

    // torchvision's ImageNet moves the labelled images into class folders: the same order.
    let prepared = tmp.path().join("prepared");
    for (w, n) in val_truth().iter().zip(&names) {
        if let Some(w) = w.filter(|w| *w != KIT_FOX) {
            let to = prepared.join("val").join(w).join(n);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(root.join("val").join(n), to).unwrap();
        }
    }
    let tv = torchvision_order(&[&prepared.join("val")]);
    let ds = imagenet(&root, Split::Test);
    let ours = items(&ds);
    assert_eq!(tv[0].0, ds.wnids());
    for ((s, l), (tv_s, tv_l)) in ours.iter().zip(&tv[0].1) {
        assert_eq!(s.rsplit('/').next(), tv_s.rsplit('/').next());
        assert_eq!(l, tv_l);
    }
    assert_eq!(ours.len(), tv[0].1.len() + 2);

    // Kaggle's LOC_val_solution.csv instead of the devkit, and Kaggle's folder tree.
    std::fs::remove_dir_all(root.join("ILSVRC2012_devkit_t12")).unwrap();
    loc_solution(&root.join("LOC_val_solution.csv"));
    check_flat(&imagenet(&root, Split::Test), &names, "val/");
    let kaggle = tmp.path().join("kaggle");
    let cls_loc = kaggle.join("ILSVRC/Data/CLS-LOC");
    std::fs::create_dir_all(&cls_loc).unwrap();
    for part in ["train", "val"] {
        std::fs::rename(root.join(part), cls_loc.join(part)).unwrap();
    }
    std::fs::rename(
        root.join("LOC_val_solution.csv"),
        kaggle.join("LOC_val_solution.csv"),
    )
    .unwrap();
    check_flat(
        &imagenet(&kaggle, Split::Test),
        &names,
        "ILSVRC/Data/CLS-LOC/val/",
    );
    assert_eq!(
        imagenet(&kaggle, Split::Train).item(0).source,
        "ILSVRC/Data/CLS-LOC/train/n01440764/n01440764_0.JPEG"
    );
}

#[test]
fn missing_or_malformed_ground_truth_fails_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imagenet");
    flat_val(&root);
    let one_line = |err: &str, names: &[&str]| {
        assert_eq!(err.lines().count(), 1, "{err}");
        for n in names {
            assert!(err.contains(n), "expected {n:?} in: {err}");
        }
    };
    // Nothing at all.
    let err = error_of(&root, Split::Test);
    one_line(
        &err,
        &[
            "ILSVRC2012_validation_ground_truth.txt",
            "meta.mat",
            "LOC_val_solution.csv",
        ],
    );
    // The train split needs no ground truth.
    assert_eq!(imagenet(&root, Split::Train).len(), 8);

    let txt = devkit_ground_truth(&root, true);
    let meta = txt.with_file_name("meta.mat");
    let good_meta = std::fs::read(&meta).unwrap();
    std::fs::remove_file(&meta).unwrap();
    one_line(&error_of(&root, Split::Test), &[meta.to_str().unwrap()]);
    std::fs::write(&meta, b"MATLAB 5.0 MAT-file, but nothing else").unwrap();
    one_line(&error_of(&root, Split::Test), &[meta.to_str().unwrap()]);
    let mut truncated = good_meta.clone();
    truncated.truncate(good_meta.len() - 20);
    std::fs::write(&meta, truncated).unwrap();
    one_line(&error_of(&root, Split::Test), &[meta.to_str().unwrap()]);
    std::fs::write(&meta, &good_meta).unwrap();

    let good_txt = std::fs::read_to_string(&txt).unwrap();
    std::fs::write(&txt, good_txt.replacen('\n', "\nthree\n", 1)).unwrap();
    one_line(
        &error_of(&root, Split::Test),
        &[txt.to_str().unwrap(), "line 2", "three"],
    );
    std::fs::write(&txt, "3\n77\n").unwrap();
    one_line(
        &error_of(&root, Split::Test),
        &[txt.to_str().unwrap(), "line 2", "77"],
    );
    std::fs::remove_dir_all(root.join("ILSVRC2012_devkit_t12")).unwrap();

    let csv = root.join("LOC_val_solution.csv");
    std::fs::write(
        &csv,
        "ImageId,PredictionString\nILSVRC2012_val_00000001,cat 1 2 3 4\n",
    )
    .unwrap();
    one_line(
        &error_of(&root, Split::Test),
        &[csv.to_str().unwrap(), "line 2"],
    );
    std::fs::write(&csv, "id;label\n").unwrap();
    one_line(
        &error_of(&root, Split::Test),
        &[csv.to_str().unwrap(), "line 1"],
    );
}

fn tiny_model() -> PathBuf {
    common::reference_model("tiny-quick").join("hf")
}

#[test]
fn extract_and_eval_zeroshot_run_on_the_miniature() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imagenet");
    flat_val(&root);
    devkit_ground_truth(&root, true);
    let ds = imagenet(&root, Split::Test);
    let model = tiny_model();
    let dataset = format!("imagenet:{}", root.display());

    let cache = tmp.path().join("cache");
    let out = common::saeclip()
        .args(["--device", "cpu", "extract", "--model"])
        .arg(&model)
        .args([
            "--dataset",
            &dataset,
            "--split",
            "val",
            "--layer",
            "1",
            "--out",
        ])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Manifest::read(&cache).unwrap();
    assert_eq!(m.images, ds.len() - 2);
    let skipped: Vec<(Option<usize>, String)> = m
        .skipped
        .iter()
        .map(|s| (s.image_index, s.source.clone()))
        .collect();
    assert_eq!(
        skipped,
        [ds.len() - 2, ds.len() - 1].map(|i| (Some(i), ds.item(i).source))
    );
    assert!(m.skipped.iter().all(|s| s.error.contains("no label")));
    let records = ActivationCache::open(&cache).unwrap().images().unwrap();
    assert_eq!(records.len(), ds.len() - 2);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.image_index, i);
        assert_eq!(
            (r.source.clone(), r.label),
            (ds.item(i).source, ds.item(i).label)
        );
    }

    let json = tmp.path().join("zeroshot.json");
    let predictions = tmp.path().join("predictions.csv");
    let out = common::saeclip()
        .args(["--device", "cpu", "eval-zeroshot", "--model"])
        .arg(&model)
        .args([
            "--dataset",
            &dataset,
            "--split",
            "val",
            "--templates",
            "ensemble",
            "--json",
        ])
        .arg(&json)
        .arg("--predictions")
        .arg(&predictions)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let d = &report["datasets"][0];
    assert_eq!(d["samples"], ds.len() - 2);
    assert_eq!(d["skipped"], 2);
    assert_eq!(d["classes"], 3);
    let templates = d["template_list"].as_array().unwrap();
    assert_eq!(templates.len(), 80, "CLIP's 80 ImageNet templates");
    assert_eq!(templates[0], "a bad photo of a {}.");
    // A stratified sample never draws an image without a label.
    let sampled = tmp.path().join("sampled.json");
    let out = common::saeclip()
        .args(["--device", "cpu", "-q", "eval-zeroshot", "--model"])
        .arg(&model)
        .args([
            "--dataset",
            &dataset,
            "--split",
            "val",
            "--samples",
            "5",
            "--json",
        ])
        .arg(&sampled)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&sampled).unwrap()).unwrap();
    assert_eq!(report["datasets"][0]["samples"], 5);
    assert_eq!(report["datasets"][0]["skipped"], 0);

    let csv = std::fs::read_to_string(&predictions).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), ds.len() - 2);
    for row in rows {
        let cols: Vec<&str> = row.split(',').collect();
        let index: usize = cols[1].parse().unwrap();
        assert_eq!(cols[2], ds.item(index).source);
        assert_eq!(cols[3], ds.item(index).label.to_string());
    }
}

#[test]
fn the_feature_browser_names_imagenet_classes() {
    use saeclip::clip::{Clip, LoadOptions, Tokens};
    use saeclip::interpret::{interpret, InterpretOptions};
    use saeclip::sae::checkpoint::save;
    use saeclip::sae::{Architecture, BdecInit, CheckpointMeta, Sae, SaeConfig};
    use tch::{Kind, Tensor};

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imagenet");
    class_folders(&root, "val", &[TENCH.0, GOLDFISH.0, TOILET_PAPER.0], 4);
    let model = tiny_model();
    let clip = Clip::load(&model, &LoadOptions::default()).unwrap();
    let d = clip.info().hidden_size;
    let x = Tensor::randn([64, d], (Kind::Float, tch::Device::Cpu));
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: d,
        d_sae: 16,
        k: 4,
    };
    let sae = Sae::init(&config, &x, BdecInit::Mean, 3).unwrap();
    let sha = file_sha256(&model.join("model.safetensors")).unwrap();
    let meta = CheckpointMeta {
        clip: serde_json::json!({"model": model, "sha256": sha, "layer": 1, "tokens": Tokens::Cls}),
        ..Default::default()
    };
    let ckpt = tmp.path().join("sae.safetensors");
    save(&ckpt, &sae, &meta, None, Kind::Float).unwrap();
    let mut o = InterpretOptions::new(
        model,
        ckpt,
        spec(&root),
        tmp.path().join("features.csv"),
        tmp.path().join("collages"),
    );
    o.split = Split::Test;
    o.features = 4;
    o.top_k = 4;
    o.grid = "2x2".parse().unwrap();
    o.html = Some(tmp.path().join("site"));
    interpret(&o).unwrap();

    let js = std::fs::read_to_string(tmp.path().join("site/data.js")).unwrap();
    let data: Value = serde_json::from_str(
        js.trim()
            .strip_prefix("window.SAECLIP_DATA = ")
            .and_then(|s| s.strip_suffix(';'))
            .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = imagenet_1k().iter().map(|c| c.name).collect();
    let mut shown = 0;
    for f in data["features"].as_array().unwrap() {
        for t in f["top"].as_array().unwrap() {
            let class = t["class"].as_str().unwrap();
            assert!(
                [TENCH.1, GOLDFISH.1, TOILET_PAPER.1].contains(&class),
                "class {class:?} is not a CLIP name"
            );
            assert!(names.contains(&class));
            // The source names the file, and its link reaches it.
            let source = t["source"].as_str().unwrap();
            assert!(root.join(source).is_file(), "{source}");
            assert!(t["link"].is_string(), "{t}");
            shown += 1;
        }
    }
    assert!(shown > 0, "no top images in {js}");
}

/// A tar of `files` (name, bytes).
fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    format!("{:x}", Md5::digest(bytes))
}

#[test]
fn fetch_checks_and_unpacks_archives_put_there_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    // The pieces of a miniature: images and devkit files made as the tests above make them.
    let src = tmp.path().join("src");
    let names = flat_val(&src);
    devkit_ground_truth(&src, true);
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    let mut inner = Vec::new();
    for wnid in [TENCH.0, SPRINGER.0, TOILET_PAPER.0] {
        let files: Vec<(String, Vec<u8>)> = (0..2)
            .map(|k| {
                let ext = if k % 2 == 0 { "JPEG" } else { "jpg" };
                let name = format!("{wnid}_{k}.{ext}");
                let bytes = read(src.join("train").join(wnid).join(&name));
                (name, bytes)
            })
            .collect();
        inner.push((format!("{wnid}.tar"), tar_of(&files)));
    }
    let train = tar_of(&inner);
    let val = tar_of(
        &names
            .iter()
            .map(|n| (n.clone(), read(src.join("val").join(n))))
            .collect::<Vec<_>>(),
    );
    let devkit_tar = tar_of(
        &["ILSVRC2012_validation_ground_truth.txt", "meta.mat"].map(|f| {
            (
                format!("ILSVRC2012_devkit_t12/data/{f}"),
                read(src.join("ILSVRC2012_devkit_t12/data").join(f)),
            )
        }),
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &devkit_tar).unwrap();
    let devkit = gz.finish().unwrap();

    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let archives = [train, val, devkit];
    let mut o = ImageNetOptions::new(&out);
    o.md5_override = Some(archives.clone().map(|a| md5_hex(&a)));

    // Missing ones are named with their MD5 (the published ones from the CLI), one line.
    std::fs::write(out.join(IMAGENET_ARCHIVES[0].file), &archives[0]).unwrap();
    let err = format!("{:#}", fetch_imagenet(&o).unwrap_err());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains(IMAGENET_ARCHIVES[0].file), "{err}");
    assert!(err.contains(IMAGENET_ARCHIVES[1].file) && err.contains(IMAGENET_ARCHIVES[2].file));
    let cli = common::saeclip()
        .args(["fetch", "dataset", "imagenet", "--out"])
        .arg(tmp.path().join("empty"))
        .output()
        .unwrap();
    common::fails_cleanly(&cli, "ILSVRC2012_img_train.tar");
    let stderr = String::from_utf8_lossy(&cli.stderr);
    for a in IMAGENET_ARCHIVES {
        assert!(
            stderr.contains(a.file) && stderr.contains(a.md5),
            "{stderr}"
        );
    }

    // A corrupt archive is named with both checksums and left in place.
    std::fs::write(out.join(IMAGENET_ARCHIVES[1].file), b"truncated").unwrap();
    std::fs::write(out.join(IMAGENET_ARCHIVES[2].file), &archives[2]).unwrap();
    let err = format!("{:#}", fetch_imagenet(&o).unwrap_err());
    assert!(err.contains(&md5_hex(b"truncated")), "{err}");
    assert!(out.join(IMAGENET_ARCHIVES[1].file).is_file());
    assert!(!out.join("train").exists());

    // All good: unpacked into the layout the reader expects.
    std::fs::write(out.join(IMAGENET_ARCHIVES[1].file), &archives[1]).unwrap();
    assert_eq!(fetch_imagenet(&o).unwrap(), out);
    assert!(out.join(".saeclip-fetch-imagenet.json").is_file());
    let unpacked = imagenet(&out, Split::Test);
    check_flat(&unpacked, &names, "val/");
    assert_eq!(
        items(&imagenet(&out, Split::Train)),
        items(&imagenet(&src, Split::Train))
            .into_iter()
            .filter(|(s, _)| !s.contains("nested") && !s.contains("zz_last"))
            .collect::<Vec<_>>()
    );
    // A rerun finds it in place and checks nothing.
    std::fs::remove_file(out.join(IMAGENET_ARCHIVES[0].file)).unwrap();
    assert_eq!(fetch_imagenet(&o).unwrap(), out);
}
