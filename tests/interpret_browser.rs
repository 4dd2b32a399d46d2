//! The feature browser in headless Chromium (Debian's `chromium`, which `make test`
//! installs): the page loads from disk without errors, shows one card per feature, the
//! search filters and the sort reorders them (both driven through the URL fragment, which
//! the page applies with the same code as its controls), and a screenshot is saved under
//! target/test-output/. Never skipped: without chromium the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use saeclip::clip::preprocess::{preprocess, PreprocessConfig};
use saeclip::clip::{Clip, LoadOptions, Tokens};
use saeclip::data::cache::file_sha256;
use saeclip::data::{self, DatasetSpec, Split};
use saeclip::interpret::{interpret, InterpretOptions, InterpretSummary};
use saeclip::sae::checkpoint::save;
use saeclip::sae::{Architecture, BdecInit, CheckpointMeta, Sae, SaeConfig};
use tch::{Kind, Tensor};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium() -> PathBuf {
    let p = PathBuf::from(CHROMIUM);
    assert!(
        p.is_file(),
        "{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium)"
    );
    p
}

fn site(dir: &Path) -> (InterpretSummary, PathBuf) {
    let model = common::reference_model("tiny-quick").join("hf");
    let clip = Clip::load(&model, &LoadOptions::default()).unwrap();
    let spec: DatasetSpec = "procedural:3".parse().unwrap();
    let ds = data::open(&spec, Split::Test).unwrap();
    let cfg = PreprocessConfig::default();
    let flat: Vec<f32> = (0..32)
        .flat_map(|i| preprocess(&ds.image(i).unwrap(), &cfg))
        .collect();
    let pixels = Tensor::from_slice(&flat).view([32, 3, 224, 224]);
    let x = clip.residual(&pixels, 1).unwrap().select(1, 0);
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: 64,
        d_sae: 24,
        k: 4,
    };
    let sae = Sae::init(&config, &x, BdecInit::Mean, 9).unwrap();
    let sha = file_sha256(&model.join("model.safetensors")).unwrap();
    let meta = CheckpointMeta {
        clip: serde_json::json!({"model": model, "sha256": sha, "layer": 1, "tokens": Tokens::Cls}),
        ..Default::default()
    };
    let ckpt = dir.join("sae.safetensors");
    save(&ckpt, &sae, &meta, None, Kind::Float).unwrap();
    let mut o = InterpretOptions::new(
        model,
        ckpt,
        spec,
        dir.join("features.csv"),
        dir.join("collages"),
    );
    o.split = Split::Test;
    o.sample_size = Some(96);
    o.features = 10;
    o.top_k = 6;
    o.grid = "2x3".parse().unwrap();
    o.html = Some(dir.join("site"));
    let s = interpret(&o).unwrap();
    (s, dir.join("site/index.html"))
}

/// Run headless Chromium on `url` with `extra` flags; (stdout, stderr).
fn run_chromium(url: &str, profile: &Path, extra: &[String]) -> (String, String) {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("cannot start chromium");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed:\n{stderr}");
    (stdout, stderr)
}

/// The `data-id`s of the cards in DOM order.
fn card_ids(dom: &str) -> Vec<usize> {
    dom.split("class=\"card\" data-id=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].parse().unwrap())
        .collect()
}

fn assert_clean(dom: &str, stderr: &str) {
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page did not finish: {dom}"
    );
    assert!(!dom.contains("data-errors=\""), "errors on the page: {dom}");
    for line in stderr.lines() {
        assert!(
            !(line.contains("Uncaught") || line.contains("CONSOLE") && line.contains("rror")),
            "console error: {line}"
        );
    }
}

#[test]
fn feature_browser_loads_searches_and_sorts() {
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let (s, index) = site(dir.path());
    let n = s.features.len();
    assert!(n >= 3, "{n} features");
    let url = format!("file://{}", index.display());
    let profile = tempfile::tempdir().unwrap();

    // Loads, one card per feature, in rank order; screenshot.
    let shots = common::root().join("target/test-output");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("interpret-browser.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &url,
        profile.path(),
        &[
            "--window-size=1280,1000".into(),
            "--hide-scrollbars".into(),
            format!("--screenshot={}", shot.display()),
        ],
    );
    let png = image::open(&shot).expect("a screenshot");
    assert_eq!((png.width(), png.height()), (1280, 1000));
    let (dom, stderr) = run_chromium(&url, profile.path(), &["--dump-dom".into()]);
    assert_clean(&dom, &stderr);
    let ids = card_ids(&dom);
    let by_rank: Vec<usize> = s.features.iter().map(|f| f.latent).collect();
    assert_eq!(ids, by_rank);
    assert!(dom.contains(&format!("{n} of {n} features")));
    // Each card states its density and its AUROC-best class (procedural data has labels).
    for f in &s.features {
        let (class, auroc) = f.best_class.clone().expect("a best class");
        let line = format!(
            "fires on {:.1}% of images · best class {class} (AUROC {auroc:.3})",
            100.0 * f.frequency
        );
        assert!(dom.contains(&line), "{line}");
    }

    // Search by id: one card.
    let target = s.features[n / 2].latent;
    let (dom, stderr) = run_chromium(
        &format!("{url}#q={target}"),
        profile.path(),
        &["--dump-dom".into()],
    );
    assert_clean(&dom, &stderr);
    assert_eq!(card_ids(&dom), vec![target]);
    // Search by label: the features whose labels contain it.
    let phrase = s.features[0].labels[0].phrase.clone();
    let q = phrase.to_lowercase();
    let expected: Vec<usize> = s
        .features
        .iter()
        .filter(|f| {
            f.latent.to_string() == q
                || f.labels
                    .iter()
                    .any(|l| l.phrase.to_lowercase().contains(&q))
        })
        .map(|f| f.latent)
        .collect();
    let encoded: String = phrase
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (dom, stderr) = run_chromium(
        &format!("{url}#q={encoded}"),
        profile.path(),
        &["--dump-dom".into()],
    );
    assert_clean(&dom, &stderr);
    assert_eq!(card_ids(&dom), expected, "search for {phrase:?}");
    assert!(expected.len() < n || n == 1);

    // Sort by frequency, max activation and label score.
    for (key, value) in [
        (
            "frequency",
            Box::new(|f: &saeclip::interpret::FeatureReport| f.frequency) as Box<dyn Fn(&_) -> f64>,
        ),
        (
            "max",
            Box::new(|f: &saeclip::interpret::FeatureReport| f.max),
        ),
        (
            "label_score",
            Box::new(|f: &saeclip::interpret::FeatureReport| {
                f.labels.first().map_or(f64::NEG_INFINITY, |l| l.score)
            }),
        ),
    ] {
        let mut order: Vec<&saeclip::interpret::FeatureReport> = s.features.iter().collect();
        order.sort_by(|a, b| value(b).total_cmp(&value(a)).then(a.rank.cmp(&b.rank)));
        let expected: Vec<usize> = order.iter().map(|f| f.latent).collect();
        let (dom, stderr) = run_chromium(
            &format!("{url}#sort={key}"),
            profile.path(),
            &["--dump-dom".into()],
        );
        assert_clean(&dom, &stderr);
        assert_eq!(card_ids(&dom), expected, "sort by {key}");
        let by_rank: Vec<usize> = s.features.iter().map(|f| f.latent).collect();
        assert_ne!(
            expected, by_rank,
            "sort by {key} must differ from rank order here"
        );
    }
}
