//! `export --format saelens` and `import --format saelens` against SAE-Lens itself
//! (tests/reference/saelens_reference.py, sae-lens installed in .venv by `make setup`):
//! exported folders load with `SAE.load_from_disk` and encode/decode like saeclip; folders
//! that SAE-Lens saved import and compute like SAE-Lens; the round trip keeps everything;
//! bad input fails with one clear line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use saeclip::sae::checkpoint::{self, CheckpointMeta};
use saeclip::sae::{Architecture, Sae, SaeConfig};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const D: i64 = 24;
const F: i64 = 96;
const ROWS: i64 = 256;

/// An SAE with random parameters (unit-norm decoder rows, non-zero biases) and scale `s`.
fn random_sae(
    architecture: Architecture,
    k: i64,
    s: f64,
    threshold: Option<f64>,
    seed: i64,
) -> Sae {
    let opts = (Kind::Float, Device::Cpu);
    let (w_dec, w_enc, b_enc, b_dec) = saeclip::rng::seeded(seed, || {
        let w_dec = Tensor::randn([F, D], opts);
        let w_dec = &w_dec / w_dec.norm_scalaropt_dim(2.0, [1], true);
        let w_enc = w_dec.tr() + Tensor::randn([D, F], opts) * 0.1;
        let b_enc = Tensor::randn([F], opts) * 0.2;
        let b_dec = Tensor::randn([D], opts) * 0.5;
        (w_dec, w_enc, b_enc, b_dec)
    });
    let config = SaeConfig {
        architecture,
        d_in: D,
        d_sae: F,
        k,
    };
    Sae::from_tensors(config, &w_enc, &b_enc, &w_dec, &b_dec, s, threshold).unwrap()
}

/// Activations with an offset, at a scale unlike the SAE's (so that s matters).
fn inputs(seed: i64, scale: f64) -> Tensor {
    saeclip::rng::seeded(seed, || {
        Tensor::randn([ROWS, D], (Kind::Float, Device::Cpu)) + 0.7
    }) * scale
}

fn meta() -> CheckpointMeta {
    CheckpointMeta {
        clip: json!({"model": "openai/clip-vit-base-patch32", "sha256": "ab".repeat(32), "layer": 11, "tokens": "cls"}),
        training: json!({"sae": {"k": 8}, "note": "random"}),
        metrics: json!({"epoch": 3, "val_evr": 0.75}),
    }
}

fn saeclip(args: &[&str]) -> Output {
    common::saeclip().args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn succeeds(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run the reference script on a list of jobs.
fn reference(dir: &Path, jobs: &Value) {
    let path = dir.join("jobs.json");
    std::fs::write(&path, serde_json::to_string_pretty(jobs).unwrap()).unwrap();
    common::run_python(
        "tests/reference/saelens_reference.py",
        &["--jobs", s(&path)],
    );
}

fn read(path: &Path) -> std::collections::HashMap<String, Tensor> {
    saeclip::clip::weights::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn file_metadata(path: &Path) -> std::collections::HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    m.metadata().clone().unwrap_or_default()
}

use common::close;

fn cfg(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("cfg.json")).unwrap()).unwrap()
}

/// A tiny trained run (topk) on planted-dictionary data; returns its best checkpoint.
fn trained_checkpoint(dir: &Path) -> PathBuf {
    let n = 400usize;
    let x = common::planted_rows(3, n, (48, D), 3, 3.0, 2.0);
    let cache = common::write_row_cache(
        &dir.join("cache"),
        &x,
        (7, saeclip::clip::Tokens::Patches),
        ("synthetic-clip", &"cd".repeat(32)),
        |i| format!("r{i}"),
    );
    let sets: Vec<String> = [
        format!("data.cache={}", cache.display()),
        format!("output.runs_dir={}", dir.join("runs").display()),
        "sae.d_sae=96".into(),
        "sae.k=6".into(),
        "sae.k_aux=12".into(),
        "training.batch_size=64".into(),
        "training.epochs=2".into(),
        "training.lr=0.004".into(),
        "training.lr_warmup_steps=2".into(),
    ]
    .into();
    common::train_run(&sets, None).join("checkpoints/best.safetensors")
}

#[test]
fn exported_folders_load_in_saelens_and_compute_like_saeclip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(&str, PathBuf, f64)> = vec![
        ("topk", d.join("topk.safetensors"), 3.0),
        ("batchtopk", d.join("batchtopk.safetensors"), 0.2),
        ("relu", d.join("relu.safetensors"), 1.0),
        ("trained", trained_checkpoint(d), 1.0),
    ];
    checkpoint::save(
        &cases[0].1,
        &random_sae(Architecture::TopK, 8, 0.37, None, 1),
        &meta(),
        None,
        Kind::Float,
    )
    .unwrap();
    checkpoint::save(
        &cases[1].1,
        &random_sae(Architecture::BatchTopK, 8, 2.5, Some(0.25), 2),
        &meta(),
        None,
        Kind::Float,
    )
    .unwrap();
    checkpoint::save(
        &cases[2].1,
        &random_sae(Architecture::Relu, 0, 1.3, None, 3),
        &meta(),
        None,
        Kind::Float,
    )
    .unwrap();
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for (i, (name, ckpt, scale)) in cases.iter().enumerate() {
        let out = d.join(format!("export-{name}"));
        succeeds(&saeclip(&[
            "export",
            "--format",
            "saelens",
            "--sae",
            s(ckpt),
            "--out",
            s(&out),
        ]));
        let (sae, meta) = checkpoint::load_sae(ckpt, Device::Cpu).unwrap();
        let x = if *name == "trained" {
            saeclip::data::cache::ActivationCache::open(&d.join("cache"))
                .unwrap()
                .load_all(Kind::Float)
                .unwrap()
                .activations
        } else {
            inputs(10 + i as i64, *scale)
        };
        let z = sae.encode(&x);
        let x_hat = sae.reconstruct(&x);
        let input_file = d.join(format!("in-{name}.safetensors"));
        Tensor::write_safetensors(&[("x", &x), ("z_saeclip", &z)], &input_file).unwrap();
        let result = d.join(format!("out-{name}.safetensors"));
        jobs.push(
            json!({"op": "run", "sae": s(&out), "inputs": s(&input_file), "out": s(&result)}),
        );
        expected.push((name.to_string(), out, result, sae, meta, z, x_hat));
    }
    reference(d, &Value::Array(jobs));
    for (name, out, result, sae, meta, z, x_hat) in expected {
        // The folder: SAE-Lens's names and settings, and where the activations came from.
        let c = cfg(&out);
        let arch = match sae.config.architecture {
            Architecture::TopK => "topk",
            Architecture::BatchTopK => "jumprelu",
            Architecture::Relu => "standard",
            other => unreachable!("{other} is tested in new_architectures_*"),
        };
        assert_eq!(c["architecture"], arch, "{name}");
        assert_eq!(c["normalize_activations"], "none");
        assert_eq!(c["apply_b_dec_to_input"], true);
        assert_eq!(
            (c["d_in"].as_i64(), c["d_sae"].as_i64()),
            (Some(sae.config.d_in), Some(sae.config.d_sae))
        );
        let layer = meta.clip["layer"].as_u64().unwrap();
        let m = &c["metadata"];
        assert_eq!(m["hook_name"], format!("blocks.{layer}.hook_resid_post"));
        assert_eq!(
            m["hf_module"],
            format!("vision_model.encoder.layers.{layer}")
        );
        assert_eq!(m["hook_layer"], layer);
        assert_eq!(m["tokens"], meta.clip["tokens"]);
        assert_eq!(m["model_name"], meta.clip["model"]);
        assert_eq!(m["model_sha256"], meta.clip["sha256"]);
        assert_eq!(m["saeclip"]["input_scale"], sae.input_scale);
        assert!(
            !out.join("sparsity.safetensors").exists(),
            "checkpoints hold no firing frequencies"
        );
        let weights = read(&out.join("sae_weights.safetensors"));
        let mut names: Vec<&String> = weights.keys().collect();
        names.sort();
        let want: &[&str] = if arch == "jumprelu" {
            &["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
        } else {
            &["W_dec", "W_enc", "b_dec", "b_enc"]
        };
        assert_eq!(names, want, "{name}");
        if arch == "topk" {
            assert_eq!(c["k"], sae.config.k);
        }
        if arch == "jumprelu" {
            let t = &weights["threshold"];
            let theta = sae.threshold.unwrap();
            assert!(
                (t - theta).abs().max().double_value(&[]) < 1e-7,
                "θ broadcast to every latent"
            );
        }
        // What SAE-Lens computes.
        let got = read(&result);
        let info = file_metadata(&result);
        assert_eq!(
            info["architecture"], arch,
            "{name}: SAE-Lens loaded {info:?}"
        );
        close(&format!("{name}: encode"), &got["z"], &z, 1e-5);
        close(
            &format!("{name}: decode(encode)"),
            &got["x_hat"],
            &x_hat,
            1e-5,
        );
        close(
            &format!("{name}: decode(saeclip codes)"),
            &got["x_hat_from_z"],
            &x_hat,
            1e-5,
        );
        // The same latents fire.
        let fired = |t: &Tensor| t.gt(0.0);
        let disagree = fired(&got["z"])
            .ne_tensor(&fired(&z))
            .sum(Kind::Int64)
            .int64_value(&[]);
        assert_eq!(
            disagree, 0,
            "{name}: the active latents differ in {disagree} places"
        );
    }
}

#[test]
fn folders_saved_by_saelens_import_and_compute_like_saelens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let make = |name: &str, extra: Value| {
        let mut job = json!({"op": "make", "out": s(&d.join(name)), "d_in": D, "d_sae": F, "k": 7, "seed": 5});
        job.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        job
    };
    let x = inputs(21, 1.5);
    let input_file = d.join("in.safetensors");
    Tensor::write_safetensors(&[("x", &x)], &input_file).unwrap();
    let run = |name: &str| json!({"op": "run", "sae": s(&d.join(name)), "inputs": s(&input_file), "out": s(&d.join(format!("{name}.out.safetensors")))});
    let jobs = json!([
        make("topk", json!({"architecture": "topk"})),
        make(
            "jumprelu",
            json!({"architecture": "jumprelu", "threshold": 0.15})
        ),
        make(
            "standard",
            json!({"architecture": "standard", "apply_b_dec_to_input": false})
        ),
        make(
            "jumprelu-spread",
            json!({"architecture": "jumprelu", "threshold": 0.1, "threshold_spread": 0.3})
        ),
        make(
            "topk-rescaled",
            json!({"architecture": "topk", "rescale_acts_by_decoder_norm": true})
        ),
        run("topk"),
        run("jumprelu"),
        run("standard"),
    ]);
    reference(d, &jobs);
    for (name, arch, k_flag) in [
        ("topk", Architecture::TopK, None),
        ("jumprelu", Architecture::BatchTopK, Some("9")),
        ("standard", Architecture::Relu, None),
    ] {
        let ckpt = d.join(format!("{name}.safetensors"));
        let folder = d.join(name);
        let mut args = vec![
            "import",
            "--format",
            "saelens",
            s(&folder),
            "--out",
            s(&ckpt),
        ];
        if let Some(k) = k_flag {
            args.extend(["--k", k]);
        }
        succeeds(&saeclip(&args));
        let (sae, meta) = checkpoint::load_sae(&ckpt, Device::Cpu).unwrap();
        assert_eq!(sae.config.architecture, arch, "{name}");
        assert_eq!(sae.input_scale, 1.0);
        match arch {
            Architecture::TopK => assert_eq!(sae.config.k, 7),
            Architecture::BatchTopK => {
                assert_eq!(sae.config.k, 9);
                assert!((sae.threshold.unwrap() - 0.15).abs() < 1e-6);
            }
            _ => {}
        }
        assert_eq!(
            meta.clip["layer"], 3,
            "the layer comes from hook_name blocks.3.hook_resid_post"
        );
        assert_eq!(meta.clip["model"], "reference/clip");
        assert_eq!(meta.training["imported_from"]["format"], "saelens");
        let want = read(&d.join(format!("{name}.out.safetensors")));
        close(
            &format!("{name}: encode"),
            &sae.encode(&x),
            &want["z"],
            1e-5,
        );
        close(
            &format!("{name}: reconstruct"),
            &sae.reconstruct(&x),
            &want["x_hat"],
            1e-5,
        );
    }
    // What cannot be imported says why, in one line, and writes nothing.
    let out = d.join("bad.safetensors");
    let attempt = |name: &str, extra: &[&str]| {
        let folder = d.join(name);
        let mut args = vec![
            "import",
            "--format",
            "saelens",
            s(&folder),
            "--out",
            s(&out),
        ];
        args.extend(extra);
        saeclip(&args)
    };
    common::fails_cleanly(
        &attempt("topk-rescaled", &[]),
        "rescale_acts_by_decoder_norm",
    );
    common::fails_cleanly(&attempt("no-such-folder", &[]), "no-such-folder");
    std::fs::create_dir(d.join("empty")).unwrap();
    common::fails_cleanly(&attempt("empty", &[]), "not an SAE-Lens folder");
    std::fs::create_dir(d.join("broken")).unwrap();
    std::fs::copy(d.join("topk/cfg.json"), d.join("broken/cfg.json")).unwrap();
    let w = std::fs::read(d.join("topk/sae_weights.safetensors")).unwrap();
    std::fs::write(d.join("broken/sae_weights.safetensors"), &w[..w.len() / 2]).unwrap();
    common::fails_cleanly(&attempt("broken", &[]), "sae_weights.safetensors");
    assert!(!out.exists());
    // An existing checkpoint is kept unless --force.
    let existing = d.join("topk.safetensors");
    let before = std::fs::read(&existing).unwrap();
    common::fails_cleanly(
        &saeclip(&[
            "import",
            "--format",
            "saelens",
            s(&d.join("standard")),
            "--out",
            s(&existing),
        ]),
        "already exists",
    );
    assert_eq!(std::fs::read(&existing).unwrap(), before);
}

#[test]
fn export_then_import_gives_back_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (arch, k, s_in, theta) in [
        (Architecture::TopK, 8, 0.37, None),
        (Architecture::BatchTopK, 5, 4.0, Some(0.3)),
    ] {
        let ckpt = d.join(format!("{arch}.safetensors"));
        let original = random_sae(arch, k, s_in, theta, 7);
        checkpoint::save(&ckpt, &original, &meta(), None, Kind::Float).unwrap();
        let folder = d.join(format!("{arch}-saelens"));
        succeeds(&saeclip(&[
            "export",
            "--format",
            "saelens",
            "--sae",
            s(&ckpt),
            "--out",
            s(&folder),
        ]));
        let back = d.join(format!("{arch}-back.safetensors"));
        succeeds(&saeclip(&[
            "import",
            "--format",
            "saelens",
            s(&folder),
            "--out",
            s(&back),
        ]));
        let (sae, m) = checkpoint::load_sae(&back, Device::Cpu).unwrap();
        assert_eq!(sae.config, original.config);
        assert_eq!(sae.threshold, original.threshold);
        assert_eq!(sae.input_scale, original.input_scale);
        assert_eq!(m, meta(), "the header comes back");
        for (name, a, b) in [
            ("W_enc", &sae.w_enc, &original.w_enc),
            ("b_enc", &sae.b_enc, &original.b_enc),
            ("W_dec", &sae.w_dec, &original.w_dec),
            ("b_dec", &sae.b_dec, &original.b_dec),
        ] {
            close(&format!("{arch} {name}"), a, b, 1e-6);
        }
    }
}

#[test]
fn export_refuses_bad_input_and_existing_folders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let export = |sae: &Path, out: &Path, force: bool| {
        let mut args = vec![
            "export",
            "--format",
            "saelens",
            "--sae",
            s(sae),
            "--out",
            s(out),
        ];
        if force {
            args.push("--force");
        }
        saeclip(&args)
    };
    let out = d.join("out");
    common::fails_cleanly(
        &export(&d.join("missing.safetensors"), &out, false),
        "missing.safetensors",
    );
    std::fs::write(d.join("text.safetensors"), "not a checkpoint").unwrap();
    common::fails_cleanly(
        &export(&d.join("text.safetensors"), &out, false),
        "not a valid safetensors file",
    );
    let no_theta = d.join("no-theta.safetensors");
    checkpoint::save(
        &no_theta,
        &random_sae(Architecture::BatchTopK, 4, 1.0, None, 1),
        &meta(),
        None,
        Kind::Float,
    )
    .unwrap();
    common::fails_cleanly(&export(&no_theta, &out, false), "no inference threshold");
    assert!(!out.exists(), "nothing half-written");
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary folders are removed");

    let ckpt = d.join("topk.safetensors");
    checkpoint::save(
        &ckpt,
        &random_sae(Architecture::TopK, 4, 1.0, None, 1),
        &meta(),
        None,
        Kind::Float,
    )
    .unwrap();
    succeeds(&export(&ckpt, &out, false));
    common::fails_cleanly(&export(&ckpt, &out, false), "--force");
    succeeds(&export(&ckpt, &out, true));
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    common::fails_cleanly(&export(&ckpt, &out, true), "notes.txt");
    assert!(out.join("notes.txt").exists() && out.join("cfg.json").exists());
}

/// jumprelu ↔ SAE-Lens `jumprelu` (a threshold per latent) and matryoshka ↔
/// `matryoshka_batchtopk` (loaded by SAE-Lens's `TrainingSAE`, whose encode is batch
/// top-k): exports compute like saeclip, SAE-Lens's own folders import and compute like
/// SAE-Lens, and the round trip keeps the prefixes, θ and k.
#[test]
fn new_architectures_round_trip_through_saelens() {
    use saeclip::sae::{MatryoshkaParams, MatryoshkaSelection, Selection};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // saeclip → SAE-Lens.
    let mut jump = random_sae(Architecture::JumpRelu, 0, 1.7, None, 4);
    jump.threshold_param = Some(saeclip::rng::seeded(9, || {
        Tensor::rand([F], (Kind::Float, Device::Cpu)) * 1.5 - 2.5
    }));
    // The same θ trained as θ itself (`linear`).
    let mut jump_linear = jump.copy();
    jump_linear.jumprelu = jump.jumprelu.map(|p| saeclip::sae::JumpReluParams {
        threshold_param: saeclip::sae::ThresholdParam::Linear,
        ..p
    });
    jump_linear.threshold_param = jump.jumprelu_threshold();
    let mut nest = random_sae(Architecture::Matryoshka, 6, 0.6, Some(0.3), 5);
    nest.set_matryoshka(
        MatryoshkaParams::new(
            vec![12, 48, F],
            Some(vec![1.0, 2.0, 0.5]),
            MatryoshkaSelection::BatchTopK,
            F,
        )
        .unwrap(),
    )
    .unwrap();
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for (name, sae, scale) in [
        ("jumprelu", &jump, 2.0),
        ("jumprelu-linear", &jump_linear, 2.0),
        ("matryoshka", &nest, 1.0),
    ] {
        let ckpt = d.join(format!("{name}.safetensors"));
        checkpoint::save(&ckpt, sae, &meta(), None, Kind::Float).unwrap();
        let out = d.join(format!("export-{name}"));
        succeeds(&saeclip(&[
            "export",
            "--format",
            "saelens",
            "--sae",
            s(&ckpt),
            "--out",
            s(&out),
        ]));
        let x = inputs(30, scale);
        // SAE-Lens's matryoshka class encodes by batch top-k over the batch.
        let z = if name == "matryoshka" {
            sae.encode_sparse(&x, Selection::BatchTopK(sae.config.k))
                .to_dense()
        } else {
            sae.encode(&x)
        };
        let x_hat = sae.decode(&z);
        let input_file = d.join(format!("in-{name}.safetensors"));
        Tensor::write_safetensors(&[("x", &x), ("z_saeclip", &z)], &input_file).unwrap();
        let result = d.join(format!("out-{name}.safetensors"));
        jobs.push(
            json!({"op": "run", "sae": s(&out), "inputs": s(&input_file), "out": s(&result),
                         "training": name == "matryoshka"}),
        );
        expected.push((name, out, result, z, x_hat, ckpt));
    }
    // SAE-Lens → saeclip: folders SAE-Lens saved itself.
    let make = |name: &str, extra: Value| {
        let mut job = json!({"op": "make", "out": s(&d.join(name)), "d_in": D, "d_sae": F, "k": 7, "seed": 8});
        job.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        job
    };
    let x = inputs(31, 1.5);
    let input_file = d.join("in-made.safetensors");
    Tensor::write_safetensors(&[("x", &x)], &input_file).unwrap();
    jobs.push(make(
        "made-jumprelu",
        json!({"architecture": "jumprelu", "threshold": 0.05, "threshold_spread": 0.3}),
    ));
    jobs.push(make(
        "made-matryoshka",
        json!({"architecture": "matryoshka_batchtopk", "widths": [8, 40, F], "threshold": 0.2}),
    ));
    for (name, training) in [("made-jumprelu", false), ("made-matryoshka", true)] {
        jobs.push(json!({"op": "run", "sae": s(&d.join(name)), "inputs": s(&input_file),
                         "out": s(&d.join(format!("{name}.out.safetensors"))), "training": training}));
    }
    reference(d, &Value::Array(jobs));

    for (name, out, result, z, x_hat, ckpt) in expected {
        let c = cfg(&out);
        let got = read(&result);
        if name.starts_with("jumprelu") {
            assert_eq!(c["architecture"], "jumprelu");
            let t = &read(&out.join("sae_weights.safetensors"))["threshold"];
            close("θ per latent", t, &jump.jumprelu_threshold().unwrap(), 1e-6);
        } else {
            assert_eq!(c["architecture"], "matryoshka_batchtopk");
            assert_eq!(c["matryoshka_widths"], json!([12, 48, F]));
            assert_eq!(c["k"], 6);
            assert_eq!(
                file_metadata(&result)["architecture"],
                "matryoshka_batchtopk"
            );
        }
        close(&format!("{name}: encode"), &got["z"], &z, 1e-5);
        close(
            &format!("{name}: decode(encode)"),
            &got["x_hat"],
            &x_hat,
            1e-5,
        );
        close(
            &format!("{name}: decode(saeclip codes)"),
            &got["x_hat_from_z"],
            &x_hat,
            1e-5,
        );
        // And back: the same SAE.
        let back = d.join(format!("back-{name}.safetensors"));
        succeeds(&saeclip(&[
            "import",
            "--format",
            "saelens",
            s(&out),
            "--out",
            s(&back),
        ]));
        let (a, _) = checkpoint::load_sae(&ckpt, Device::Cpu).unwrap();
        let (b, _) = checkpoint::load_sae(&back, Device::Cpu).unwrap();
        assert_eq!(a.config, b.config, "{name}");
        assert_eq!(a.matryoshka, b.matryoshka, "{name}");
        assert_eq!(a.jumprelu, b.jumprelu, "{name}");
        assert_eq!(a.threshold, b.threshold, "{name}: θ exactly");
        close(&format!("{name}: W_dec back"), &b.w_dec, &a.w_dec, 1e-6);
        if let (Some(p), Some(q)) = (&a.threshold_param, &b.threshold_param) {
            close(&format!("{name}: θ's parameter back"), q, p, 1e-6);
        }
        let x = inputs(32, 1.0);
        close(
            &format!("{name}: reconstruct back"),
            &b.reconstruct(&x),
            &a.reconstruct(&x),
            1e-5,
        );
    }
    for name in ["made-jumprelu", "made-matryoshka"] {
        let ckpt = d.join(format!("{name}.safetensors"));
        succeeds(&saeclip(&[
            "import",
            "--format",
            "saelens",
            s(&d.join(name)),
            "--out",
            s(&ckpt),
        ]));
        let (sae, _) = checkpoint::load_sae(&ckpt, Device::Cpu).unwrap();
        let want = read(&d.join(format!("{name}.out.safetensors")));
        let z = if name == "made-jumprelu" {
            assert_eq!(sae.config.architecture, Architecture::JumpRelu);
            // SAE-Lens trains θ itself: so does the import.
            assert_eq!(
                sae.jumprelu.unwrap().threshold_param,
                saeclip::sae::ThresholdParam::Linear
            );
            sae.encode(&x)
        } else {
            assert_eq!(sae.config.architecture, Architecture::Matryoshka);
            assert_eq!(sae.prefix_widths(), vec![8, 40, F]);
            assert_eq!(sae.config.k, 7);
            assert!((sae.threshold.unwrap() - 0.2).abs() < 1e-12);
            sae.encode_sparse(&x, Selection::BatchTopK(7)).to_dense()
        };
        close(&format!("{name}: encode"), &z, &want["z"], 1e-5);
        close(
            &format!("{name}: decode"),
            &sae.decode(&z),
            &want["x_hat"],
            1e-5,
        );
    }
}
