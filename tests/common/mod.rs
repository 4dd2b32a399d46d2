//! Shared helpers for integration tests: the project's Python reference oracle.
//!
//! Tests never skip: a missing `.venv` or a failing reference script is a test failure
//! with a message that says how to fix it (`make setup`).
#![allow(dead_code)]

pub mod dense;
pub mod planted;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Root of the crate.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's Python interpreter (`.venv/bin/python`).
pub fn python() -> PathBuf {
    let py = root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `make setup` (tests need the Python reference oracle)",
        py.display()
    );
    py
}

/// Run a Python script of the project (path relative to the crate root) and panic with
/// its stderr if it fails.
pub fn run_python(script: &str, args: &[&str]) {
    let out = Command::new(python())
        .arg(root().join(script))
        .args(args)
        .current_dir(root())
        .output()
        .expect("cannot start the project's python");
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Directory with the reference models (generated once per script version, shared by all
/// test binaries): `<target>/reference-models/<name>/`.
pub fn reference_model(name: &str) -> PathBuf {
    let script = "tests/reference/make_models.py";
    // The models depend on the generator and on the TorchScript exporter it imports.
    let mut text = std::fs::read(root().join(script)).expect("tests/reference/make_models.py");
    text.extend(
        std::fs::read(root().join("scripts/export_torchscript.py"))
            .expect("scripts/export_torchscript.py"),
    );
    let stamp_value = format!("{:016x}", fnv1a(&text));
    let base = root().join("target/reference-models");
    let dir = base.join(name);
    let stamp = dir.join("STAMP");
    let _lock = FileLock::acquire(&base.join(format!("{name}.lock")));
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(stamp_value.as_str()) {
        let _ = std::fs::remove_dir_all(&dir);
        run_python(script, &["--out", base.to_str().unwrap(), "--name", name]);
        std::fs::write(&stamp, &stamp_value).unwrap();
    }
    dir
}

/// Directory with a backbone reference of tests/reference/make_backbones.py (a model and
/// its transformers outputs, or `photos`), generated once per script version:
/// `<target>/reference-backbones/<name>/`.
pub fn backbone_reference(name: &str) -> PathBuf {
    let script = "tests/reference/make_backbones.py";
    let text = std::fs::read(root().join(script)).expect("tests/reference/make_backbones.py");
    let stamp_value = format!("{:016x}", fnv1a(&text));
    let base = root().join("target/reference-backbones");
    let dir = base.join(name);
    let stamp = dir.join("STAMP");
    let _lock = FileLock::acquire(&base.join(format!("{name}.lock")));
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(stamp_value.as_str()) {
        let _ = std::fs::remove_dir_all(&dir);
        run_python(script, &["--out", base.to_str().unwrap(), "--name", name]);
        std::fs::write(&stamp, &stamp_value).unwrap();
    }
    dir
}

/// The folder a reference script writes with `--out DIR` (tests/reference/interop_reference.py),
/// generated once per script version and shared by all test binaries: `<target>/<name>/`.
pub fn reference_output(script: &str, name: &str) -> PathBuf {
    let text = std::fs::read(root().join(script)).unwrap_or_else(|e| panic!("{script}: {e}"));
    let stamp_value = format!("{:016x}", fnv1a(&text));
    let base = root().join("target");
    let dir = base.join(name);
    let stamp = dir.join("STAMP");
    let _lock = FileLock::acquire(&base.join(format!("{name}.lock")));
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(stamp_value.as_str()) {
        let _ = std::fs::remove_dir_all(&dir);
        run_python(script, &["--out", dir.to_str().unwrap()]);
        std::fs::write(&stamp, &stamp_value).unwrap();
    }
    dir
}

/// Assert max |a − b| ≤ tol · max(max |b|, 1): `a` equals the reference `b` to a tolerance
/// relative to the reference's scale.
pub fn close(what: &str, a: &tch::Tensor, b: &tch::Tensor, tol: f64) {
    use tch::Kind;
    assert_eq!(a.size(), b.size(), "{what}: shapes");
    let diff = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1.0);
    assert!(
        diff <= tol * scale,
        "{what}: max |diff| {diff:e} over scale {scale} (tolerance {tol:e})"
    );
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// A crude cross-process lock: exclusive creation of a file, removed on drop.
struct FileLock(PathBuf);

impl FileLock {
    fn acquire(path: &Path) -> FileLock {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let start = std::time::Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(_) => return FileLock(path.to_path_buf()),
                // A lock left by a killed test run is stale after 15 minutes.
                Err(_) if is_stale(path) => {
                    let _ = std::fs::remove_file(path);
                }
                Err(_) if start.elapsed().as_secs() < 900 => {
                    std::thread::sleep(std::time::Duration::from_millis(200))
                }
                Err(e) => panic!("lock {} held too long: {e}", path.display()),
            }
        }
    }
}

fn is_stale(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 900))
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Path to the built `saeclip` binary (cargo builds it for integration tests).
pub fn saeclip() -> Command {
    Command::new(env!("CARGO_BIN_EXE_saeclip"))
}

/// `n` rows of width `d` from a planted dictionary of `atoms` random directions (seeded):
/// each row keeps its `active` largest uniform codes, times `scale`, plus `offset`.
pub fn planted_rows(
    seed: i64,
    n: usize,
    (atoms, d): (i64, i64),
    active: i64,
    scale: f64,
    offset: f64,
) -> tch::Tensor {
    use tch::{Device, Kind, Tensor};
    let (dictionary, codes) = saeclip::rng::seeded(seed, || {
        (
            Tensor::randn([atoms, d], (Kind::Float, Device::Cpu)),
            Tensor::rand([n as i64, atoms], (Kind::Float, Device::Cpu)),
        )
    });
    let kth = codes.topk(active, 1, true, true).0.select(1, active - 1);
    let keep = codes.ge_tensor(&kth.unsqueeze(1)).to_kind(Kind::Float);
    (codes * scale * keep).matmul(&dictionary) + offset
}

/// Write `x` [N, D] (f32) as an activation cache with one row per image, labelled as
/// `tokens` of `layer` of `model` (a name, not a file) with hash `sha256`; image `i` has
/// source `source(i)`.
pub fn write_row_cache(
    dir: &Path,
    x: &tch::Tensor,
    (layer, tokens): (usize, saeclip::clip::Tokens),
    (model, sha256): (&str, &str),
    source: impl Fn(usize) -> String,
) -> PathBuf {
    use saeclip::data::cache::{open_writer, CacheKey, DatasetRef, ImageRecord, ModelRef, Opened};
    use tch::{Device, Kind, Tensor};
    let (n, d) = x.size2().expect("rows are [N, D]");
    let key = CacheKey {
        d_model: d,
        dtype: saeclip::clip::Precision::F32,
        layer,
        tokens,
        model: ModelRef {
            path: model.into(),
            sha256: sha256.into(),
        },
        dataset: DatasetRef {
            kind: "synthetic".into(),
            path: "-".into(),
            split: "train".into(),
        },
        part: None,
        limit: None,
        image_size: 0,
    };
    let Opened::Writer(mut w) = open_writer(dir, key, 1 << 20, true).unwrap() else {
        panic!("{} already holds a finished cache", dir.display())
    };
    for i in 0..n as usize {
        let record = ImageRecord {
            image_index: i,
            source: source(i),
            label: 0,
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

/// Train on the CPU with the default config plus `sets` (`key=value`), optionally stopping
/// after `stop_after_epochs` as an interruption would; returns the run directory.
pub fn train_run(sets: &[String], stop_after_epochs: Option<usize>) -> PathBuf {
    use saeclip::sae::config::TrainConfig;
    use saeclip::sae::train::{train, TrainOptions};
    let config = TrainConfig::from_yaml("", sets).unwrap();
    let o = TrainOptions {
        config,
        device: tch::Device::Cpu,
        model_load: Default::default(),
        resume: None,
        stop_after_epochs,
        stop_after_steps: None,
    };
    train(&o).unwrap().run_dir
}

/// One line on stderr naming `expect`, a non-zero exit, no panic.
/// `saeclip ARGS`, run to completion.
pub fn run_saeclip(args: &[&str]) -> std::process::Output {
    saeclip().args(args).output().unwrap()
}

/// Assert that a saeclip run succeeded, showing its output when it did not.
pub fn succeeds(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SAE files other tools' packages write (tests/reference/interop_reference.py).
pub fn interop_fixtures() -> PathBuf {
    reference_output("tests/reference/interop_reference.py", "reference-interop")
}

pub fn fails_cleanly(out: &std::process::Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(stderr.contains(expect), "expected {expect:?} in: {stderr}");
    assert_eq!(
        stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "one line: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Directory with the models `script` (a generator taking `--out BASE --name NAME`, like
/// tests/reference/make_siglip.py) writes, regenerated when the script changes:
/// `<target>/reference-models/<name>/`.
pub fn generated_model(script: &str, name: &str) -> PathBuf {
    let text = std::fs::read(root().join(script)).unwrap_or_else(|e| panic!("{script}: {e}"));
    let stamp_value = format!("{:016x}", fnv1a(&text));
    let base = root().join("target/reference-models");
    let dir = base.join(name);
    let stamp = dir.join("STAMP");
    let _lock = FileLock::acquire(&base.join(format!("{name}.lock")));
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(stamp_value.as_str()) {
        let _ = std::fs::remove_dir_all(&dir);
        run_python(script, &["--out", base.to_str().unwrap(), "--name", name]);
        std::fs::write(&stamp, &stamp_value).unwrap();
    }
    dir
}

/// The lines of a run's metrics.jsonl.
pub fn metric_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The lines of a run's metrics.jsonl without the wall-clock fields (`time`, `rows_per_s`),
/// which differ between otherwise identical runs.
pub fn timeless_metric_lines(run: &Path) -> Vec<serde_json::Value> {
    metric_lines(run)
        .into_iter()
        .map(|mut l| {
            l.as_object_mut()
                .unwrap()
                .retain(|k, _| k != "time" && k != "rows_per_s");
            l
        })
        .collect()
}
