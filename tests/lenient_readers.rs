//! Readers accept what docs/DESIGN.md documents: an SAE checkpoint, an activation cache and
//! a run directory written by plain Python (numpy + safetensors + json) from the required
//! fields only — no `saeclip_version`, no batchtopk `threshold`, no reuse bookkeeping
//! (`part`, `limit`, `image_size`), no `images` count or `skipped` list — load through the
//! library and through `info`, `export`, `clean-checkpoint`, `analyze-logs` and
//! `interpret --cache`, with the values Python wrote.

mod common;

use std::path::Path;
use std::process::Output;

use saeclip::data::cache::ActivationCache;
use saeclip::sae::checkpoint;
use saeclip::sae::Architecture;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// Width of the tiny reference model (`tiny-quick`), SAE width, k, the SAE's layer.
const D: usize = 64;
const F: usize = 128;
const K: usize = 4;
const LAYER: usize = 1;
/// Images (one CLS row each) in the Python cache.
const N: usize = 40;
const SCALE: f64 = 0.5;

/// Writes `sae.safetensors`, `cache/`, `run/` and `expected.safetensors` (the rows `x`, their
/// reconstruction `x_hat` by DESIGN.md's formulas, computed in float64) into argv[1].
const WRITER: &str = r#"
import json, os, sys
import numpy as np
from safetensors.numpy import save_file

out = sys.argv[1]
D, F, K, LAYER, N = (int(a) for a in sys.argv[2:7])
SCALE = float(sys.argv[7])
rng = np.random.default_rng(7)

# SAE checkpoint: the four tensors and the documented header, nothing else.
w = {
    "W_enc": (rng.standard_normal((D, F)) / np.sqrt(D)).astype(np.float32),
    "b_enc": (0.01 * rng.standard_normal(F)).astype(np.float32),
    "W_dec": (rng.standard_normal((F, D)) / np.sqrt(D)).astype(np.float32),
    "b_dec": (0.1 * rng.standard_normal(D)).astype(np.float32),
}
header = {
    "version": 1, "architecture": "topk", "k": K, "d_in": D, "d_sae": F,
    "input_scale": SCALE,
    "clip": {"model": "tiny-quick", "layer": LAYER, "tokens": "cls"},
    "training": {}, "metrics": {},
}
save_file(w, os.path.join(out, "sae.safetensors"), metadata={"saeclip": json.dumps(header)})

# Activation cache: required manifest fields only, f16 rows, one CLS row per image.
cache = os.path.join(out, "cache")
os.makedirs(cache)
x = (2.0 * rng.standard_normal((N, D))).astype(np.float16)
save_file({
    "activations": x,
    "image_index": np.arange(N, dtype=np.int64),
    "token_index": np.zeros(N, dtype=np.int64),
}, os.path.join(cache, "shard-00000.safetensors"))
with open(os.path.join(cache, "images.csv"), "w") as f:
    f.write("image_index,source,label\n")
    for i in range(N):
        f.write(f"{i},img{i}.png,{i % 3}\n")
manifest = {
    "format": "saeclip-activations", "version": 1, "d_model": D, "dtype": "f16",
    "layer": LAYER, "tokens": "cls", "model": {"sha256": "ab" * 32}, "rows": N,
    "shards": [{"file": "shard-00000.safetensors", "rows": N}],
}
with open(os.path.join(cache, "manifest.json"), "w") as f:
    json.dump(manifest, f)

# A run directory: config.yaml, metrics.jsonl, summary.json, checkpoints.
run = os.path.join(out, "run")
os.makedirs(os.path.join(run, "checkpoints"))
with open(os.path.join(run, "config.yaml"), "w") as f:
    f.write("data:\n  cache: cache\nsae:\n  architecture: topk\n  k: 4\ntraining:\n  epochs: 2\n")
lines = []
for epoch, (step, val) in enumerate([(5, 0.61), (10, 0.72)], start=1):
    common = {"step": step, "epoch": epoch, "loss": 0.5 / epoch, "mse": 0.4 / epoch,
              "aux_loss": 0.1, "l0": 4.0, "evr": val - 0.01, "lr": 1e-3, "k": K}
    lines.append(dict(type="step", **common))
    lines.append(dict(type="epoch", val_evr=val, val_l0=4.0, dead_frac=0.25, **common))
with open(os.path.join(run, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(l) + "\n" for l in lines))
summary = {
    "best_checkpoint": "checkpoints/best.safetensors",
    "last_checkpoint": "checkpoints/last.safetensors",
    "best_epoch": 2, "best_val_evr": 0.72,
    "final": {"val_evr": 0.72, "evr_seed": 0.7, "val_l0": 4.0, "dead_frac": 0.25},
    "steps": 10, "epochs": 2, "rows_per_s": 1234.5,
}
with open(os.path.join(run, "summary.json"), "w") as f:
    json.dump(summary, f)
for name in ("best", "last"):
    save_file(w, os.path.join(run, "checkpoints", name + ".safetensors"),
              metadata={"saeclip": json.dumps(header)})

# Expected reconstruction, by DESIGN.md: z = TopK(ReLU((x·s − b_dec)·W_enc + b_enc)),
# x̂ = (z·W_dec + b_dec)/s.
xd = x.astype(np.float64)
pre = np.maximum((xd * SCALE - w["b_dec"]) @ w["W_enc"].astype(np.float64) + w["b_enc"], 0)
keep = np.argsort(-pre, axis=1)[:, :K]
z = np.zeros_like(pre)
np.put_along_axis(z, keep, np.take_along_axis(pre, keep, axis=1), axis=1)
x_hat = (z @ w["W_dec"].astype(np.float64) + w["b_dec"]) / SCALE
save_file({"x": xd.astype(np.float32), "x_hat": x_hat.astype(np.float32)},
          os.path.join(out, "expected.safetensors"))
"#;

/// Run the Python writer into a fresh directory.
fn python_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("write.py");
    std::fs::write(&script, WRITER).unwrap();
    let out = std::process::Command::new(common::python())
        .arg(&script)
        .arg(dir.path())
        .args([D, F, K, LAYER, N].map(|v| v.to_string()))
        .arg(SCALE.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python writer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn expected(dir: &Path) -> (Tensor, Tensor) {
    let t = Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap();
    let get = |n: &str| t.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
    (get("x"), get("x_hat"))
}

/// `saeclip --device cpu ARGS` run in `cwd` (text-embedding caches under `cwd/xdg`).
fn saeclip_in(cwd: &Path, args: &[&str]) -> Output {
    common::saeclip()
        .current_dir(cwd)
        .env("XDG_CACHE_HOME", cwd.join("xdg"))
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .unwrap()
}

fn succeeds(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&succeeds(out)).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn python_checkpoint_loads_reconstructs_and_goes_through_info_export_and_clean() {
    let dir = python_files();
    let ckpt = dir.path().join("sae.safetensors");
    let (x, x_hat) = expected(dir.path());

    // The library: both loaders, the values Python wrote, DESIGN.md's formulas.
    let (sae, meta) = checkpoint::load_sae(&ckpt, Device::Cpu).unwrap();
    assert_eq!(sae.config.architecture, Architecture::TopK);
    assert_eq!(
        (sae.config.d_in, sae.config.d_sae, sae.config.k),
        (D as i64, F as i64, K as i64)
    );
    assert_eq!(sae.input_scale, SCALE);
    assert_eq!(sae.threshold, None);
    assert_eq!(meta.clip["layer"], LAYER);
    let ours = sae.reconstruct(&x);
    assert!(
        max_diff(&ours, &x_hat) < 1e-4,
        "{}",
        max_diff(&ours, &x_hat)
    );
    let full = checkpoint::load(&ckpt, Device::Cpu).unwrap();
    assert!(full.training.is_none());

    // info: the header as written, the writer not recorded.
    let info = json_of(&saeclip_in(dir.path(), &["info", s(&ckpt), "--json"]));
    assert_eq!(info["kind"], "checkpoint");
    assert_eq!(info["k"], K);
    assert_eq!(info["d_sae"], F);
    assert_eq!(info["input_scale"], SCALE);
    assert_eq!(info["saeclip_version"], Value::Null);
    assert_eq!(info["clip"]["tokens"], "cls");
    let text = succeeds(&saeclip_in(dir.path(), &["info", s(&ckpt)]));
    assert!(text.contains("writer not recorded"), "{text}");

    // export --format saelens: the input scale folded into W_enc.
    let export = dir.path().join("saelens");
    succeeds(&saeclip_in(
        dir.path(),
        &[
            "export",
            "--format",
            "saelens",
            "--sae",
            s(&ckpt),
            "--out",
            s(&export),
        ],
    ));
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "topk");
    assert_eq!(cfg["k"], K);
    assert_eq!(cfg["metadata"]["hook_layer"], LAYER);
    let weights = Tensor::read_safetensors(export.join("sae_weights.safetensors")).unwrap();
    let w_enc = &weights.iter().find(|(n, _)| n == "W_enc").unwrap().1;
    let folded = sae.w_enc.to_kind(Kind::Float) * SCALE;
    assert!(max_diff(w_enc, &folded) < 1e-6);

    // clean-checkpoint without --output: into checkpoints/<stem>.safetensors, now with the
    // writing saeclip's version.
    succeeds(&saeclip_in(
        dir.path(),
        &["clean-checkpoint", "--input", s(&ckpt)],
    ));
    let cleaned = dir.path().join("checkpoints/sae.safetensors");
    let (again, _) = checkpoint::load_sae(&cleaned, Device::Cpu).unwrap();
    assert_eq!(max_diff(&again.w_dec, &sae.w_dec), 0.0);
    let info = json_of(&saeclip_in(dir.path(), &["info", s(&cleaned), "--json"]));
    assert_eq!(info["saeclip_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn python_cache_reads_through_the_library_and_info() {
    let dir = python_files();
    let path = dir.path().join("cache");
    let (x, _) = expected(dir.path());

    let cache = ActivationCache::open(&path).unwrap();
    assert_eq!(cache.rows(), N);
    assert_eq!(cache.images_count(), N, "counted in images.csv");
    assert_eq!(cache.d_model(), D as i64);
    let m = cache.manifest();
    assert_eq!((m.layer, m.tokens.name()), (LAYER, "cls"));
    assert!(m.skipped.is_empty() && m.part.is_none() && m.limit.is_none());
    let rows = cache.load_all(Kind::Float).unwrap();
    assert_eq!(max_diff(&rows.activations, &x), 0.0);
    let index = Vec::<i64>::try_from(&rows.image_index).unwrap();
    assert_eq!(index, (0..N as i64).collect::<Vec<_>>());
    assert_eq!(cache.images().unwrap()[7].source, "img7.png");

    let info = json_of(&saeclip_in(dir.path(), &["info", s(&path), "--json"]));
    assert_eq!(info["kind"], "cache");
    assert_eq!(info["rows"], N);
    assert_eq!(info["images"], N);
    assert_eq!(info["skipped"], 0);
    let text = succeeds(&saeclip_in(dir.path(), &["info", s(&path)]));
    assert!(text.contains("dataset  not recorded"), "{text}");
    assert!(text.contains("writer not recorded"), "{text}");
}

#[test]
fn python_run_directory_reads_through_analyze_logs_and_info() {
    let dir = python_files();
    let run = dir.path().join("run");

    let info = json_of(&saeclip_in(dir.path(), &["info", s(&run), "--json"]));
    assert_eq!(info["kind"], "run");
    assert_eq!(info["finished"], true, "{info}");
    assert_eq!(info["epochs_logged"], 2);
    assert_eq!(info["planned_epochs"], 2);
    assert_eq!(info["best_epoch"], 2);
    assert_eq!(info["rows_per_s"], 1234.5);
    assert_eq!(info["warnings"], serde_json::json!([]), "{info}");

    let md = succeeds(&saeclip_in(
        dir.path(),
        &["analyze-logs", "--logdir", s(&run)],
    ));
    assert!(md.contains("finished: 2 epochs of 2, 10 steps"), "{md}");
    assert!(md.contains("| 2 ★ | 10 | 0.7100 | 0.7200 |"), "{md}");
    assert!(
        md.contains("1234 rows/s") || md.contains("1235 rows/s"),
        "{md}"
    );

    // The run's checkpoint, written by Python, exports.
    let best = run.join("checkpoints/best.safetensors");
    let out = dir.path().join("exported");
    succeeds(&saeclip_in(
        dir.path(),
        &[
            "export",
            "--format",
            "saelens",
            "--sae",
            s(&best),
            "--out",
            s(&out),
        ],
    ));
}

#[test]
fn interpret_reads_a_python_checkpoint_and_cache() {
    let dir = python_files();
    let model = common::reference_model("tiny-quick").join("hf");
    let vocab = dir.path().join("vocab.txt");
    std::fs::write(&vocab, "red\ngreen\nblue\ncircle\n").unwrap();
    let csv = dir.path().join("features.csv");
    let out = saeclip_in(
        dir.path(),
        &[
            "interpret",
            "--model",
            s(&model),
            "--sae",
            s(&dir.path().join("sae.safetensors")),
            "--cache",
            s(&dir.path().join("cache")),
            "--dataset",
            "procedural:0",
            "--top-k",
            "4",
            "--features",
            "5",
            "--grid",
            "2x2",
            "--batch-size",
            "16",
            "--vocab",
            s(&vocab),
            "--output-csv",
            s(&csv),
            "--collage-dir",
            s(&dir.path().join("collages")),
        ],
    );
    succeeds(&out);
    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 5, "five live features ranked");
    // Every listed top image is one of the cache's images.
    for r in &rows {
        for i in r[8].split(';').filter(|t| !t.is_empty()) {
            assert!(i.parse::<usize>().unwrap() < N, "{i}");
        }
    }
}
