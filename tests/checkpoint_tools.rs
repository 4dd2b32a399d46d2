//! `clean-checkpoint` and `info` on real training output: what cleaning drops and keeps,
//! exact (f32) and rounded (f16, bf16) reconstructions, the refusal to overwrite the input,
//! and one-line errors for files that are not checkpoints.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use saeclip::clip::Tokens;
use saeclip::data::cache::ActivationCache;
use saeclip::sae::checkpoint;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const D: i64 = 16;

/// A cache of `n` single-row images from a planted dictionary of 32 atoms, 3 active per row.
fn synthetic_cache(dir: &Path, n: usize) -> PathBuf {
    let x = common::planted_rows(11, n, (32, D), 3, 2.0, 1.0);
    common::write_row_cache(
        dir,
        &x,
        (5, Tokens::Cls),
        ("tiny-clip", &"ef".repeat(32)),
        |i| format!("img{i}.png"),
    )
}

/// A finished tiny run of `architecture`.
fn tiny_run(dir: &Path, cache: &Path, architecture: &str) -> PathBuf {
    let sets: Vec<String> = [
        format!("data.cache={}", cache.display()),
        format!("output.run_dir={}", dir.display()),
        format!("sae.architecture={architecture}"),
        "sae.d_sae=64".into(),
        "sae.k=4".into(),
        "sae.k_aux=8".into(),
        "training.batch_size=64".into(),
        "training.epochs=3".into(),
        "training.lr=0.004".into(),
        "training.lr_warmup_steps=2".into(),
        "training.log_every=2".into(),
    ]
    .into();
    common::train_run(&sets, None)
}

fn saeclip(args: &[&str]) -> Output {
    common::saeclip().args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn succeeds(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tensor_names(path: &Path) -> Vec<(String, safetensors::Dtype)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// ‖a − b‖ / ‖b‖.
fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[])
}

#[test]
fn clean_checkpoint_drops_training_state_and_keeps_reconstructions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = synthetic_cache(&d.join("cache"), 500);
    let x = ActivationCache::open(&cache)
        .unwrap()
        .load_all(Kind::Float)
        .unwrap()
        .activations;
    for arch in ["topk", "batchtopk"] {
        let run = tiny_run(&d.join(arch), &cache, arch);
        let last = run.join("checkpoints/last.safetensors");
        let full = checkpoint::load(&last, Device::Cpu).unwrap();
        assert!(full.training.is_some());
        let want = full.sae.reconstruct(&x);
        let before = std::fs::metadata(&last).unwrap().len();

        let clean = d.join(format!("{arch}-clean.safetensors"));
        let stdout = succeeds(&saeclip(&[
            "clean-checkpoint",
            "--input",
            s(&last),
            "--output",
            s(&clean),
        ]));
        assert!(
            stdout.contains("KiB") && stdout.contains('→'),
            "sizes before and after: {stdout}"
        );
        let after = std::fs::metadata(&clean).unwrap().len();
        assert!(
            after * 2 < before,
            "optimizer moments dominate: {before} → {after}"
        );
        let names: Vec<String> = tensor_names(&clean).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["W_dec", "W_enc", "b_dec", "b_enc"]);
        let c = checkpoint::load(&clean, Device::Cpu).unwrap();
        assert!(c.training.is_none(), "no training state left");
        assert_eq!(
            c.meta, full.meta,
            "clip, training config and metrics are kept"
        );
        assert_eq!(
            c.sae.threshold, full.sae.threshold,
            "{arch}: the inference threshold is kept"
        );
        assert_eq!(c.sae.input_scale, full.sae.input_scale);
        assert!(
            c.sae.reconstruct(&x).equal(&want),
            "{arch}: f32 reconstructions are exact"
        );
        assert!(c.sae.encode(&x).equal(&full.sae.encode(&x)));

        for (dtype, st_dtype, u) in [
            ("f16", safetensors::Dtype::F16, 2f64.powi(-11)),
            ("bf16", safetensors::Dtype::BF16, 2f64.powi(-8)),
        ] {
            let out = d.join(format!("{arch}-{dtype}.safetensors"));
            succeeds(&saeclip(&[
                "clean-checkpoint",
                "--input",
                s(&last),
                "--output",
                s(&out),
                "--dtype",
                dtype,
            ]));
            assert!(
                tensor_names(&out).iter().all(|(_, t)| *t == st_dtype),
                "{dtype} parameters"
            );
            let small = std::fs::metadata(&out).unwrap().len();
            assert!(
                small < after,
                "{dtype} parameters take less room: {after} → {small}"
            );
            let (sae, meta) = checkpoint::load_sae(&out, Device::Cpu).unwrap();
            assert_eq!(meta, full.meta);
            // Rounding the parameters may flip a near-tie of the top-k for a few rows; on
            // the rows whose active latents are unchanged the error is of the order of the
            // dtype's unit roundoff u.
            let got = sae.reconstruct(&x);
            let same = sae
                .encode(&x)
                .gt(0.0)
                .eq_tensor(&full.sae.encode(&x).gt(0.0))
                .all_dim(1, false);
            let rows = same.nonzero().squeeze_dim(1);
            let kept = rows.size()[0] as f64 / x.size()[0] as f64;
            assert!(
                kept >= 0.95,
                "{arch} {dtype}: only {:.1}% of rows keep their latents",
                100.0 * kept
            );
            let err = relative(&got.index_select(0, &rows), &want.index_select(0, &rows));
            assert!(
                err > 0.0 && err < 2.0 * u,
                "{arch} {dtype}: relative reconstruction error {err:e} (u = {u:e})"
            );
            // Parameters are the f32 ones rounded to the dtype.
            let kind = if dtype == "f16" {
                Kind::Half
            } else {
                Kind::BFloat16
            };
            assert!(sae
                .w_dec
                .equal(&full.sae.w_dec.to_kind(kind).to_kind(Kind::Float)));
        }
    }
}

#[test]
fn clean_checkpoint_overwrites_its_input_only_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = synthetic_cache(&d.join("cache"), 300);
    let run = tiny_run(&d.join("run"), &cache, "topk");
    let last = run.join("checkpoints/last.safetensors");
    let original = std::fs::read(&last).unwrap();
    common::fails_cleanly(
        &saeclip(&[
            "clean-checkpoint",
            "--input",
            s(&last),
            "--output",
            s(&last),
        ]),
        "--in-place",
    );
    // The same file under another spelling.
    let other = run.join("checkpoints/../checkpoints/./last.safetensors");
    common::fails_cleanly(
        &saeclip(&[
            "clean-checkpoint",
            "--input",
            s(&last),
            "--output",
            s(&other),
        ]),
        "--in-place",
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        original,
        "the input is untouched"
    );
    succeeds(&saeclip(&[
        "clean-checkpoint",
        "--input",
        s(&last),
        "--in-place",
    ]));
    let c = checkpoint::load(&last, Device::Cpu).unwrap();
    assert!(c.training.is_none());
    let leftovers: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Cleaning a clean checkpoint changes nothing but is fine.
    let again = d.join("again.safetensors");
    succeeds(&saeclip(&[
        "clean-checkpoint",
        "--input",
        s(&last),
        "--output",
        s(&again),
    ]));
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&last).unwrap()
    );
    // Without --output: checkpoints/<input stem>.safetensors in the working directory,
    // never replacing a file already there.
    let clean_in = |cwd: &Path| {
        common::saeclip()
            .current_dir(cwd)
            .args(["clean-checkpoint", "--input", s(&last)])
            .output()
            .unwrap()
    };
    succeeds(&clean_in(d));
    let published = d.join("checkpoints/last.safetensors");
    assert_eq!(
        std::fs::read(&published).unwrap(),
        std::fs::read(&last).unwrap()
    );
    std::fs::write(&published, b"another run's SAE").unwrap();
    common::fails_cleanly(
        &clean_in(d),
        "checkpoints/last.safetensors already exists: give --output",
    );
    assert_eq!(std::fs::read(&published).unwrap(), b"another run's SAE");
}

/// Bad checkpoints: one line, non-zero exit, no output file. Returns the paths made.
fn bad_checkpoints(d: &Path, good: &Path) -> Vec<(PathBuf, &'static str)> {
    let text = d.join("notes.safetensors");
    std::fs::write(&text, "these are notes, not tensors").unwrap();
    let bytes = std::fs::read(good).unwrap();
    let truncated = d.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    // Same length, so the safetensors offsets stay valid: only the header version changes.
    let needle = br#"{\"version\":1,"#;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the header holds its version");
    let mut future = bytes.clone();
    future[at + needle.len() - 2] = b'9';
    let versioned = d.join("future.safetensors");
    std::fs::write(&versioned, future).unwrap();
    let shard = d.join("cache/shard-00000.safetensors");
    vec![
        (d.join("missing.safetensors"), "missing.safetensors"),
        (text, "not a valid safetensors file"),
        (truncated, "truncated"),
        (versioned, "version 9"),
        (shard, "not an SAE checkpoint"),
    ]
}

#[test]
fn bad_checkpoints_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = synthetic_cache(&d.join("cache"), 300);
    let run = tiny_run(&d.join("run"), &cache, "topk");
    let good = run.join("checkpoints/best.safetensors");
    for (path, expect) in bad_checkpoints(d, &good) {
        let out = d.join("out.safetensors");
        common::fails_cleanly(
            &saeclip(&["clean-checkpoint", "--input", s(&path), "--output", s(&out)]),
            expect,
        );
        assert!(!out.exists(), "{}: nothing written", path.display());
        common::fails_cleanly(&saeclip(&["info", s(&path)]), expect);
        common::fails_cleanly(&saeclip(&["info", "--json", s(&path)]), expect);
    }
}

#[test]
fn info_describes_checkpoints_caches_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = synthetic_cache(&d.join("cache"), 400);
    let run = tiny_run(&d.join("run"), &cache, "batchtopk");
    let json = |path: &Path| -> Value {
        serde_json::from_str(&succeeds(&saeclip(&["info", "--json", s(path)]))).unwrap()
    };

    // A training checkpoint.
    let last = run.join("checkpoints/last.safetensors");
    let text = succeeds(&saeclip(&["info", s(&last)]));
    for want in [
        "SAE checkpoint",
        "batchtopk",
        "d_in 16 → d_sae 64",
        "threshold",
        "tiny-clip",
        "layer 5",
        "tokens cls",
        "training state",
        "step ",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    let v = json(&last);
    assert_eq!(v["kind"], "checkpoint");
    assert_eq!(
        (v["d_in"].as_i64(), v["d_sae"].as_i64(), v["k"].as_i64()),
        (Some(16), Some(64), Some(4))
    );
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["clip"]["sha256"], "ef".repeat(32));
    assert_eq!(v["metrics"]["epoch"], 3);
    assert!(v["threshold"].as_f64().is_some());
    assert_eq!(v["training_state"]["epoch"], 3);
    assert!(v["training_state"]["bytes"].as_u64().unwrap() > 0);
    // Cleaned: no training state.
    let clean = d.join("clean.safetensors");
    succeeds(&saeclip(&[
        "clean-checkpoint",
        "--input",
        s(&last),
        "--output",
        s(&clean),
        "--dtype",
        "bf16",
    ]));
    let v = json(&clean);
    assert!(v["training_state"].is_null());
    assert_eq!(v["dtype"], "bf16");
    assert!(succeeds(&saeclip(&["info", s(&clean)])).contains("none (inference checkpoint)"));

    // A cache (the directory or its manifest).
    let text = succeeds(&saeclip(&["info", s(&cache)]));
    for want in [
        "Activation cache",
        "tiny-clip",
        "layer",
        "400 × d_model 16",
        "synthetic",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    let v = json(&cache.join("manifest.json"));
    assert_eq!(v["kind"], "cache");
    assert_eq!(v["rows"], 400);
    assert_eq!(v["manifest"]["layer"], 5);
    assert_eq!(v["manifest"]["tokens"], "cls");

    // A run.
    let text = succeeds(&saeclip(&["info", s(&run)]));
    for want in [
        "Training run",
        "batchtopk",
        "finished: 3 epochs of 3",
        "best epoch",
        "checkpoints",
        "last (",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    let v = json(&run);
    assert_eq!(v["kind"], "run");
    assert_eq!(v["finished"], true);
    assert_eq!(v["epochs_logged"], 3);
    assert_eq!(v["config"]["sae"]["architecture"], "batchtopk");
    assert!(v["last_epoch"]["val_evr"].as_f64().is_some());
    assert_eq!(v["summary"]["epochs"], 3);

    // Neither.
    std::fs::create_dir(d.join("empty")).unwrap();
    common::fails_cleanly(
        &saeclip(&["info", s(&d.join("empty"))]),
        "is not an activation cache",
    );
    common::fails_cleanly(
        &saeclip(&["info", s(&d.join("nothing-here"))]),
        "does not exist",
    );
}
