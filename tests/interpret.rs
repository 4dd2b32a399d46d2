//! `interpret` on the tiny random reference model and the procedural dataset: a planted
//! "red" feature, streaming top-k against brute force, bounded buffers, labels against a
//! direct cosine computation, CSV and collage files, bad inputs, the cache path, the CLI.
//!
//! About labels: the reference model has random weights, so its text embeddings carry no
//! meaning; with it the labels are tested to be exactly the ranking of a direct cosine
//! computation (both label methods). That the planted red feature is labelled "red" is
//! tested in tests/interpret_fitted.rs, on a small CLIP fitted to the procedural images'
//! colours and shapes so that its text tower means something.

mod common;

use common::planted::*;

use std::path::{Path, PathBuf};

use saeclip::clip::preprocess::PreprocessConfig;
use saeclip::clip::{normalize, Clip, LoadOptions, Precision, Tokens};
use saeclip::data::{self, Dataset, Split};
use saeclip::embed::tokenize_texts;
use saeclip::extract::{extract, ExtractOptions};
use saeclip::interpret::{
    interpret, score_residual, InterpretOptions, InterpretSummary, TopK, CSV_COLUMNS,
};
use saeclip::sae::checkpoint::save;
use saeclip::sae::{Architecture, CheckpointMeta, Sae, SaeConfig};
use tch::{Kind, Tensor};

fn tiny_model() -> PathBuf {
    common::reference_model("tiny-quick").join("hf")
}

fn clip() -> Clip {
    Clip::load(&tiny_model(), &LoadOptions::default()).unwrap()
}

fn pixels(ds: &dyn Dataset, indices: &[usize]) -> Tensor {
    pixels_sized(ds, indices, 224)
}

fn meta(layer: usize, tokens: Tokens) -> CheckpointMeta {
    meta_for(&tiny_model(), layer, tokens)
}

/// A ReLU SAE on the CLS token of `layer` whose latent 0 is the direction "mean of red
/// images minus the overall mean" (firing above the midpoint between red and non-red
/// projections), latent 1 a random direction that fires often, latents 2..7 dead.
fn planted_sae(layer: usize, sample: &[usize]) -> Sae {
    planted_sae_on(&clip(), layer, sample)
}

fn write_sae(sae: &Sae, layer: usize, tokens: Tokens, path: &Path) {
    save(path, sae, &meta(layer, tokens), None, Kind::Float).unwrap();
}

fn options(sae: &Path, out: &Path) -> InterpretOptions {
    let mut o = InterpretOptions::new(
        tiny_model(),
        sae.to_path_buf(),
        DATASET.parse().unwrap(),
        out.join("features.csv"),
        out.join("collages"),
    );
    o.batch_size = 16;
    o.top_k = 12;
    o
}

fn vocab_file(dir: &Path) -> PathBuf {
    let p = dir.join("vocab.txt");
    std::fs::write(&p, "red\ngreen\nblue\nyellow\nstriped\nsky\ncircle\ndog\n").unwrap();
    p
}

fn run_planted(dir: &Path, layer: usize) -> (InterpretSummary, InterpretOptions) {
    let sample = the_sample();
    let sae = planted_sae(layer, &sample);
    let path = dir.join("planted.safetensors");
    write_sae(&sae, layer, Tokens::Cls, &path);
    let mut o = options(&path, dir);
    o.sample_size = Some(SAMPLE);
    o.seed = SEED;
    o.vocab = Some(vocab_file(dir));
    o.html = Some(dir.join("site"));
    (interpret(&o).unwrap(), o)
}

/// Cosine ranking of the custom vocabulary for one direction, computed directly.
fn direct_labels(clip: &Clip, direction: &Tensor) -> Vec<(String, f64)> {
    let vocab: Vec<String> = [
        "red", "green", "blue", "yellow", "striped", "sky", "circle", "dog",
    ]
    .map(String::from)
    .to_vec();
    let prompts: Vec<String> = vocab.iter().map(|v| format!("a photo of a {v}")).collect();
    let ids = tokenize_texts(&prompts, 77).unwrap();
    let t = normalize(&clip.text_embeds(&ids).unwrap());
    let d = normalize(&direction.view([1, -1]));
    let cos = Vec::<f32>::try_from(d.matmul(&t.tr()).view([-1])).unwrap();
    let mut pairs: Vec<(String, f64)> = vocab
        .into_iter()
        .zip(cos.into_iter().map(f64::from))
        .collect();
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
    pairs.truncate(3);
    pairs
}

#[test]
fn planted_red_feature_top_images_labels_csv_and_collages() {
    let dir = tempfile::tempdir().unwrap();
    let (s, o) = run_planted(dir.path(), 1);
    let ds = procedural(Split::Train);
    assert_eq!(s.images, SAMPLE);
    assert_eq!(s.dead, 6, "latents 2..7 never fire");
    assert_eq!(s.live, 2);
    let red = s
        .features
        .iter()
        .find(|f| f.latent == 0)
        .expect("latent 0 reported");
    assert_eq!(red.top.len(), 12);
    for t in &red.top {
        assert!(
            is_red(ds.as_ref(), t.image_index),
            "{} is not red",
            t.source
        );
        assert!(t.source.contains("colour=red"));
    }
    assert!(red
        .top
        .windows(2)
        .all(|w| w[0].activation >= w[1].activation));
    // Labels (top-images method, layer 1 is not the last block) equal a direct computation.
    let clip = clip();
    let sample = the_sample();
    let cfg_embed =
        |idx: &[usize]| normalize(&clip.image_embeds(&pixels(ds.as_ref(), idx)).unwrap());
    let sample_mean = cfg_embed(&sample).mean_dim(0, false, Kind::Float);
    let top: Vec<usize> = red.top.iter().map(|t| t.image_index).collect();
    let direction = cfg_embed(&top).mean_dim(0, false, Kind::Float) - sample_mean;
    let expected = direct_labels(&clip, &direction);
    assert_eq!(red.labels.len(), 3);
    for (got, (phrase, score)) in red.labels.iter().zip(&expected) {
        assert_eq!(&got.phrase, phrase);
        assert!((got.score - score).abs() < 1e-4, "{} vs {score}", got.score);
    }

    // CSV: columns, relative paths, one row per feature.
    let csv_path = &o.output_csv;
    let mut reader = csv::Reader::from_path(csv_path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, CSV_COLUMNS.map(String::from).to_vec());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let collage = &row[2];
        assert!(
            !collage.starts_with('/') && !collage.contains('\\'),
            "{collage}"
        );
        assert_eq!(
            collage,
            &format!(
                "collages/feature_{:06}.png",
                &row[1].parse::<usize>().unwrap()
            )
        );
        let file = csv_path.parent().unwrap().join(collage);
        let img = image::open(&file).unwrap();
        assert_eq!((img.width(), img.height()), o.grid.dimensions());
        assert_eq!(&row[6], "", "interpretation is left for people");
        assert!(!row[9].is_empty(), "auto_label");
    }
    let red_row = rows.iter().find(|r| &r[1] == "0").unwrap();
    assert_eq!(&red_row[5], "12");
    let listed: Vec<usize> = red_row[8].split(';').map(|v| v.parse().unwrap()).collect();
    assert_eq!(listed, top);

    // Collage tiles are in activation order: tile i shows top image i as CLIP saw it.
    let collage = image::open(&red.collage).unwrap().to_rgb8();
    let prep = PreprocessConfig::default();
    for (i, t) in red.top.iter().enumerate() {
        let crop =
            saeclip::clip::preprocess::resize_and_crop(&ds.image(t.image_index).unwrap(), &prep);
        let (x, y) = o.grid.tile_origin(i);
        for (px, py) in [(10, 10), (200, 30), (112, 112)] {
            assert_eq!(
                collage.get_pixel(x + px, y + py),
                crop.get_pixel(px, py),
                "tile {i}"
            );
        }
    }

    // The browser's data names every feature and its collage relative to the site.
    let js = std::fs::read_to_string(dir.path().join("site/data.js")).unwrap();
    assert!(js.starts_with("window.SAECLIP_DATA = "));
    assert!(js.contains("\"collage\":\"../collages/feature_000000.png\""));
    assert!(js.contains("generated: red "));
    assert!(dir.path().join("site/index.html").is_file());

    // Density and AUROC-best class, against a brute-force computation over the sample:
    // the red latent's per-image scores, and for every class the AUROC over all pairs.
    let (sae, _) = saeclip::sae::checkpoint::load_sae(
        &dir.path().join("planted.safetensors"),
        tch::Device::Cpu,
    )
    .unwrap();
    let residual = clip.residual(&pixels(ds.as_ref(), &sample), 1).unwrap();
    let scores = score_residual(&sae, Tokens::Cls, &residual).unwrap();
    let red_scores: Vec<f32> = Vec::<f32>::try_from(scores.scores.select(1, 0)).unwrap();
    let fired = red_scores.iter().filter(|&&v| v > 0.0).count();
    assert!((red.frequency - fired as f64 / SAMPLE as f64).abs() < 1e-12);
    let labels: Vec<i64> = sample.iter().map(|&i| ds.item(i).label).collect();
    let mut want = (usize::MAX, f64::NEG_INFINITY);
    for c in 0..ds.classes().len() {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (a, &la) in red_scores.iter().zip(&labels) {
            for (b, &lb) in red_scores.iter().zip(&labels) {
                if la == c as i64 && lb != c as i64 {
                    pairs += 1.0;
                    wins += if a > b {
                        1.0
                    } else if a == b {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        if pairs > 0.0 && wins / pairs > want.1 {
            want = (c, wins / pairs);
        }
    }
    let (class, auroc) = red
        .best_class
        .clone()
        .expect("the red latent has a best class");
    assert_eq!(class, ds.classes()[want.0]);
    assert!(class.contains("red"), "{class}");
    assert!((auroc - want.1).abs() < 1e-6, "{auroc} vs {}", want.1);
    assert!(auroc > 0.75, "{auroc}");
    let data: serde_json::Value = serde_json::from_str(
        js["window.SAECLIP_DATA = ".len()..]
            .trim_end()
            .trim_end_matches(';'),
    )
    .unwrap();
    assert_eq!(data["meta"]["labelled"], true);
    let card = data["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == 0)
        .unwrap();
    assert_eq!(card["best_class"]["class"], class.as_str());
    assert!((card["best_class"]["auroc"].as_f64().unwrap() - auroc).abs() < 1e-12);
    assert!((card["frequency"].as_f64().unwrap() - red.frequency).abs() < 1e-12);
    let page = std::fs::read_to_string(dir.path().join("site/index.html")).unwrap();
    assert!(page.contains("\"fires on \"") && page.contains("best class: no labels"));
    assert_eq!(&red_row[13], class.as_str());
    assert_eq!(&red_row[14], format!("{auroc:.6}").as_str());
}

#[test]
fn decoder_labels_on_the_last_block_match_a_direct_computation() {
    let dir = tempfile::tempdir().unwrap();
    let last = 2;
    let (s, _) = run_planted(dir.path(), last);
    let ds = procedural(Split::Train);
    let red = s.features.iter().find(|f| f.latent == 0).unwrap();
    assert!(red.top.iter().all(|t| is_red(ds.as_ref(), t.image_index)));
    // direction = embed(μ + a·d/s) − embed(μ), μ the sample's mean CLS residual, a the mean
    // activation when firing, s = 1 here.
    let clip = clip();
    let sample = the_sample();
    let sae = planted_sae(last, &sample);
    let x = clip
        .residual(&pixels(ds.as_ref(), &sample), last)
        .unwrap()
        .select(1, 0);
    let mu = x.mean_dim(0, false, Kind::Float);
    let z = sae.encode(&x).select(1, 0);
    let fired = z.gt(0.0).sum(Kind::Float).double_value(&[]);
    let a = z.sum(Kind::Float).double_value(&[]) / fired;
    let d = sae.w_dec.get(0);
    let e = clip
        .image_embeds_from(&(&mu + d * a).view([1, 1, -1]), last)
        .unwrap();
    let e0 = clip.image_embeds_from(&mu.view([1, 1, -1]), last).unwrap();
    let expected = direct_labels(&clip, &(e - e0));
    for (got, (phrase, score)) in red.labels.iter().zip(&expected) {
        assert_eq!(&got.phrase, phrase);
        assert!((got.score - score).abs() < 1e-3, "{} vs {score}", got.score);
    }
    assert_eq!(s.label_method, saeclip::interpret::LabelMethod::Decoder);
}

/// Brute force: dense codes of every token, max per image, sorted per latent.
#[test]
fn streaming_topk_equals_brute_force_and_buffers_stay_bounded() {
    let ds = procedural(Split::Test);
    let clip = clip();
    let indices: Vec<usize> = (0..40).collect();
    let residual = clip.residual(&pixels(ds.as_ref(), &indices), 1).unwrap(); // N, S, D
    let flat = residual.narrow(1, 1, 49).reshape([-1, 64]);
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: 64,
        d_sae: 32,
        k: 6,
    };
    let sae = Sae::init(&config, &flat, saeclip::sae::BdecInit::Mean, 3).unwrap();
    let k = 5;
    let mut sizes = Vec::new();
    let mut top = TopK::new(32, k, tch::Device::Cpu);
    for (c, chunk) in indices.chunks(7).enumerate() {
        let r = residual.narrow(0, (c * 7) as i64, chunk.len() as i64);
        let scores = score_residual(&sae, Tokens::Patches, &r).unwrap();
        top.update(&scores, chunk).unwrap();
        sizes.push(top.buffer_numel());
    }
    assert!(sizes.iter().all(|&n| n == 32 * (3 * k + 3)), "{sizes:?}");
    let stats = top.finish();
    let dense = sae.encode(&flat).view([40, 49, 32]);
    let (best, arg) = dense.max_dim(1, false); // 40, 32
    let best = Vec::<Vec<f32>>::try_from(best).unwrap();
    let arg = Vec::<Vec<i64>>::try_from(arg).unwrap();
    for j in 0..32 {
        let mut col: Vec<(f32, usize)> = (0..40)
            .map(|i| (best[i][j], i))
            .filter(|p| p.0 > 0.0)
            .collect();
        col.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        col.truncate(k);
        let l = &stats.latents[j];
        assert_eq!(l.top.len(), col.len(), "latent {j}");
        for (e, (v, i)) in l.top.iter().zip(&col) {
            assert!((e.score - v).abs() < 1e-5, "latent {j}: {} vs {v}", e.score);
            if e.image == *i {
                assert_eq!(e.token, arg[*i][j] + 1, "arg-max patch of latent {j}");
            }
        }
        let fired = (0..40).filter(|&i| best[i][j] > 0.0).count();
        assert_eq!(l.fired, fired);
        let mean: f64 = (0..40).map(|i| best[i][j] as f64).sum::<f64>() / 40.0;
        assert!((l.mean - mean).abs() < 1e-4);
        let max = (0..40).map(|i| best[i][j]).fold(0f32, f32::max);
        assert!((l.max - max as f64).abs() < 1e-5);
    }
    // A longer stream keeps the same buffer size.
    let mut top2 = TopK::new(32, k, tch::Device::Cpu);
    for _ in 0..20 {
        let scores = score_residual(&sae, Tokens::Patches, &residual).unwrap();
        top2.update(&scores, &indices).unwrap();
    }
    assert_eq!(top2.images_seen(), 800);
    assert_eq!(top2.buffer_numel(), sizes[0]);
}

#[test]
fn patch_sae_collages_have_heatmaps_and_the_cache_path_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let ds = procedural(Split::Train);
    let clip = clip();
    let indices: Vec<usize> = (0..48).collect();
    let residual = clip.residual(&pixels(ds.as_ref(), &indices), 1).unwrap();
    let flat = residual.narrow(1, 1, 49).reshape([-1, 64]);
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: 64,
        d_sae: 16,
        k: 4,
    };
    let sae = Sae::init(&config, &flat, saeclip::sae::BdecInit::Mean, 7).unwrap();
    let path = dir.path().join("patches.safetensors");
    write_sae(&sae, 1, Tokens::Patches, &path);
    let mut o = options(&path, &dir.path().join("model"));
    o.limit = Some(48);
    o.features = 4;
    o.grid = "2x2".parse().unwrap();
    o.top_k = 4;
    o.vocab = Some(vocab_file(dir.path()));
    let direct = interpret(&o).unwrap();
    assert_eq!(direct.features.len(), 4);
    assert!(direct.features[0].top.iter().all(|t| t.token >= 1));

    // Same through an activation cache of the first 48 images.
    let cache = dir.path().join("cache");
    let mut e = ExtractOptions::new(tiny_model(), DATASET.parse().unwrap(), 1, cache.clone());
    e.tokens = Tokens::Patches;
    e.dtype = Precision::F32;
    e.limit = Some(48);
    extract(&e).unwrap();
    let mut oc = options(&path, &dir.path().join("cached"));
    oc.cache = Some(cache.clone());
    oc.features = 4;
    oc.grid = "2x2".parse().unwrap();
    oc.top_k = 4;
    oc.vocab = o.vocab.clone();
    let cached = interpret(&oc).unwrap();
    assert_eq!(cached.images, 48);
    for (a, b) in direct.features.iter().zip(&cached.features) {
        assert_eq!(a.latent, b.latent);
        let ia: Vec<usize> = a.top.iter().map(|t| t.image_index).collect();
        let ib: Vec<usize> = b.top.iter().map(|t| t.image_index).collect();
        assert_eq!(ia, ib);
        assert!((a.mean - b.mean).abs() < 1e-4 * (1.0 + a.mean.abs()));
    }

    // A cls SAE cannot read a patches cache.
    let cls_path = dir.path().join("cls.safetensors");
    write_sae(&sae, 1, Tokens::Cls, &cls_path);
    let mut bad = oc.clone();
    bad.sae = cls_path;
    let err = format!("{:#}", interpret(&bad).unwrap_err());
    assert!(err.contains("tokens"), "{err}");
    // Nor one of another layer.
    let l2 = dir.path().join("l2.safetensors");
    write_sae(&sae, 2, Tokens::Patches, &l2);
    bad.sae = l2;
    let err = format!("{:#}", interpret(&bad).unwrap_err());
    assert!(err.contains("layer"), "{err}");
}

#[test]
fn bad_inputs_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    // d_in that does not match the model.
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: 32,
        d_sae: 8,
        k: 2,
    };
    let sample = saeclip::rng::seeded(0, || {
        Tensor::randn([16, 32], (Kind::Float, tch::Device::Cpu))
    });
    let sae = Sae::init(&config, &sample, saeclip::sae::BdecInit::Mean, 1).unwrap();
    let path = dir.path().join("narrow.safetensors");
    write_sae(&sae, 1, Tokens::Cls, &path);
    let err = format!("{:#}", interpret(&options(&path, dir.path())).unwrap_err());
    assert!(err.contains("d_in = 32"), "{err}");
    // A layer the model does not have.
    let config = SaeConfig { d_in: 64, ..config };
    let sample = saeclip::rng::seeded(0, || {
        Tensor::randn([16, 64], (Kind::Float, tch::Device::Cpu))
    });
    let sae = Sae::init(&config, &sample, saeclip::sae::BdecInit::Mean, 1).unwrap();
    let path = dir.path().join("deep.safetensors");
    write_sae(&sae, 7, Tokens::Cls, &path);
    let err = format!("{:#}", interpret(&options(&path, dir.path())).unwrap_err());
    assert!(err.contains("layer 7"), "{err}");

    // A folder dataset with an unreadable file, a sample larger than the dataset and more
    // features than live latents.
    let images = dir.path().join("images");
    let ds = procedural(Split::Train);
    for i in 0..6 {
        let class = images.join(if i % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&class).unwrap();
        ds.image(i)
            .unwrap()
            .save(class.join(format!("{i}.png")))
            .unwrap();
    }
    std::fs::write(images.join("a/broken.png"), b"not a png").unwrap();
    let path = dir.path().join("ok.safetensors");
    write_sae(&sae, 1, Tokens::Cls, &path);
    let mut o = options(&path, &dir.path().join("out"));
    o.dataset = format!("folder:{}", images.display()).parse().unwrap();
    o.sample_size = Some(100);
    o.features = 500;
    o.vocab = Some(vocab_file(dir.path()));
    o.html = Some(dir.path().join("out/site"));
    let s = interpret(&o).unwrap();
    assert_eq!(s.images, 6);
    assert_eq!(s.skipped.len(), 1);
    let folder = data::open(&o.dataset, Split::Train).unwrap();
    let broken = (0..folder.len())
        .find(|&i| folder.item(i).source.contains("broken"))
        .unwrap();
    assert_eq!(
        s.skipped[0].0, broken,
        "the skipped index is the broken file's own"
    );
    for f in &s.features {
        for t in &f.top {
            assert_ne!(t.image_index, broken);
            assert_eq!(
                t.source,
                folder.item(t.image_index).source,
                "never misaligned"
            );
        }
    }
    assert!(
        s.notes.iter().any(|n| n.contains("using all 7")),
        "{:?}",
        s.notes
    );
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("more than the") && n.contains("live latents")),
        "{:?}",
        s.notes
    );
    assert_eq!(s.features.len(), s.live);
    let js = std::fs::read_to_string(dir.path().join("out/site/data.js")).unwrap();
    assert!(
        js.contains("\"link\":\"../../images/"),
        "links to the source files"
    );
}

#[test]
fn cli_writes_csv_collages_and_site() {
    let dir = tempfile::tempdir().unwrap();
    let sample = the_sample();
    let sae = planted_sae(1, &sample);
    let path = dir.path().join("planted.safetensors");
    write_sae(&sae, 1, Tokens::Cls, &path);
    let out = common::saeclip()
        .args(["--device", "cpu", "interpret", "--model"])
        .arg(tiny_model())
        .arg("--sae")
        .arg(&path)
        .args([
            "--dataset",
            DATASET,
            "--sample-size",
            "64",
            "--top-k",
            "6",
            "--grid",
            "2x3",
        ])
        .args(["--collage-format", "jpg", "--output-csv"])
        .arg(dir.path().join("f.csv"))
        .arg("--collage-dir")
        .arg(dir.path().join("c"))
        .arg("--vocab")
        .arg(vocab_file(dir.path()))
        .env("XDG_CACHE_HOME", dir.path().join("xdg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 live, 6 dead"), "{stderr}");
    assert!(dir.path().join("c/feature_000000.jpg").is_file());
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("xdg/saeclip"))
        .unwrap()
        .collect();
    assert_eq!(
        cached.len(),
        1,
        "text embeddings cached under $XDG_CACHE_HOME/saeclip"
    );
}
