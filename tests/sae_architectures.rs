//! The jumprelu and matryoshka architectures against independent computations: their
//! hand-written gradients against dense tch autograd (tests/common/dense.rs, with the
//! straight-through estimator written as a surrogate), per-prefix metrics against a direct
//! computation, checkpoints, training end to end with a bit-identical resume, config errors
//! and sweeps over their keys.

mod common;

use std::path::{Path, PathBuf};

use saeclip::clip::Tokens;
use saeclip::sae::checkpoint::{self, CheckpointMeta, TrainingStateRef};
use saeclip::sae::config::TrainConfig;
use saeclip::sae::train::{train, TrainOptions};
use saeclip::sae::*;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use common::dense::dense_reference;

const CPU: Device = Device::Cpu;

fn config(architecture: Architecture, d_in: i64, d_sae: i64, k: i64) -> SaeConfig {
    SaeConfig {
        architecture,
        d_in,
        d_sae,
        k,
    }
}

/// max |a − b| / max |b|
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    diff / b
        .to_kind(Kind::Double)
        .abs()
        .max()
        .double_value(&[])
        .max(1e-30)
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

fn random_inputs(b: i64, d: i64, seed: i64) -> Tensor {
    saeclip::rng::seeded(seed, || {
        let offset = Tensor::randn([d], (Kind::Float, CPU)) * 3.0;
        Tensor::randn([b, d], (Kind::Float, CPU)) + offset
    })
}

/// An SAE away from its symmetric initialisation; jumprelu thresholds spread per latent
/// around the pre-activations' scale.
fn random_sae(cfg: SaeConfig, x: &Tensor, seed: i64) -> Sae {
    saeclip::rng::seeded(seed, || {
        let mut sae = Sae::init(&cfg, x, BdecInit::GeometricMedian, seed).unwrap();
        let _ = sae
            .w_enc
            .g_add_(&(Tensor::randn([cfg.d_in, cfg.d_sae], (Kind::Float, CPU)) * 0.05));
        sae.b_enc = Tensor::randn([cfg.d_sae], (Kind::Float, CPU)) * 0.1;
        if cfg.architecture == Architecture::JumpRelu {
            sae.threshold_param = Some(Tensor::randn([cfg.d_sae], (Kind::Float, CPU)) * 0.5 - 1.0);
        }
        sae
    })
}

fn plant_dead(sae: &mut Sae) -> Tensor {
    let f = sae.config.d_sae;
    let dead = Tensor::arange(f, (Kind::Int64, CPU)).remainder(4).eq(0);
    let _ = sae.b_enc.g_sub_(&(dead.to_kind(Kind::Float) * 0.7));
    dead
}

fn options(k: i64, k_aux: i64, sparsity: f64) -> LossOptions {
    LossOptions {
        k,
        k_aux,
        aux_coef: 1.0 / 32.0,
        l1_coef: sparsity,
        data_variance: 0.7,
    }
}

/// `sae` with every tensor in f64: the dense reference then carries no f32 rounding of its
/// own, so what is compared is the sparse step's (whose f32 sums of B rows cancel in db_dec).
fn in_f64(sae: &Sae) -> Sae {
    let mut s = sae.copy();
    for t in [&mut s.w_enc, &mut s.b_enc, &mut s.w_dec, &mut s.b_dec] {
        *t = t.to_kind(Kind::Double);
    }
    s.threshold_param = s.threshold_param.map(|t| t.to_kind(Kind::Double));
    s
}

/// The step's loss terms and gradients against dense autograd in f64, ≤ `tol` relative.
fn compare(sae: &Sae, x: &Tensor, dead: Option<&Tensor>, o: &LossOptions, label: &str, tol: f64) {
    let out = forward_backward(sae, x, dead, o, &mut Workspace::default());
    let r = dense_reference(&in_f64(sae), &x.to_kind(Kind::Double), dead, o);
    for (name, a, e) in [
        ("loss", &out.loss, &r.loss),
        ("mse", &out.mse, &r.mse),
        ("aux", &out.aux, &r.aux),
        ("sparsity", &out.l1, &r.l1),
    ] {
        let err = (scalar(a) - scalar(e)).abs() / scalar(e).abs().max(1e-30);
        assert!(
            err < 1e-6 || scalar(e) == 0.0 && scalar(a) == 0.0,
            "{label} {name}: {} vs {}",
            scalar(a),
            scalar(e)
        );
    }
    let mut pairs = vec![
        ("W_enc", &out.grads.w_enc, &r.grads[0]),
        ("b_enc", &out.grads.b_enc, &r.grads[1]),
        ("W_dec", &out.grads.w_dec, &r.grads[2]),
        ("b_dec", &out.grads.b_dec, &r.grads[3]),
    ];
    assert_eq!(
        out.grads.threshold_param.is_some(),
        r.threshold_param.is_some(),
        "{label}: log θ gradient"
    );
    if let (Some(a), Some(e)) = (&out.grads.threshold_param, &r.threshold_param) {
        assert!(
            scalar(&e.abs().max()) > 0.0,
            "{label}: the estimator is not exercised"
        );
        pairs.push(("threshold_param", a, e));
    }
    let e = (x - &out.x_hat) * sae.input_scale;
    let cancel = scalar(&e.abs().sum_dim_intlist(0, false, Kind::Float).max())
        / scalar(&e.sum_dim_intlist(0, false, Kind::Float).abs().max());
    println!("{label:40} Σ_i e_i: max Σ|e| / max |Σe| = {cancel:.2}");
    for (name, a, e) in pairs {
        assert_eq!(a.size(), e.size(), "{label} {name}");
        let err = rel_err(a, e);
        println!("{label:40} d{name:14} max|Δ|/max|g| = {err:.2e}");
        // db_dec sums the residual over the rows, Σ_i e_i, whose f32 rounding (in the step's
        // forward pass) the f64 reference does not share: its error is relative to the
        // size of the summands, max_j Σ_i |e_ij|, rather than of the sum.
        let tol = if name == "b_dec" { tol * cancel } else { tol };
        assert!(
            err <= tol,
            "{label} d{name}: relative error {err:e} > {tol:e}"
        );
    }
}

#[test]
fn gradients_jumprelu() {
    let (b, d, f) = (64, 48, 256);
    let x = random_inputs(b, d, 7);
    for param in [ThresholdParam::Log, ThresholdParam::Linear] {
        for (loss, bandwidth, coef) in [
            (SparsityLoss::Step, 0.001, 0.0),
            (SparsityLoss::Step, 0.001, 2e-3),
            (SparsityLoss::Step, 0.05, 2e-3),
            (SparsityLoss::Tanh, 0.05, 2e-3),
            (SparsityLoss::Tanh, 0.5, 0.1),
        ] {
            let mut sae = random_sae(config(Architecture::JumpRelu, d, f, 8), &x, 3);
            sae.jumprelu = Some(JumpReluParams {
                bandwidth,
                sparsity_loss: loss,
                tanh_scale: 4.0,
                threshold_param: param,
            });
            if param == ThresholdParam::Linear {
                // The same θ as the log case (random_sae draws log θ).
                sae.threshold_param = sae.threshold_param.map(|t| t.exp());
            }
            let dead = plant_dead(&mut sae);
            let label = format!("jumprelu {param:?} {loss:?} ε={bandwidth} λ={coef}");
            compare(&sae, &x, Some(&dead), &options(8, 24, coef), &label, 1e-6);
        }
    }
}

fn matryoshka_sae(selection: MatryoshkaSelection, weights: Option<Vec<f64>>) -> (Sae, Tensor) {
    let (b, d, f) = (64, 48, 256);
    let x = random_inputs(b, d, 7);
    let mut sae = random_sae(config(Architecture::Matryoshka, d, f, 8), &x, 3);
    sae.set_matryoshka(MatryoshkaParams::new(vec![16, 64, 256], weights, selection, f).unwrap())
        .unwrap();
    (sae, x)
}

#[test]
fn gradients_matryoshka() {
    for selection in [MatryoshkaSelection::BatchTopK, MatryoshkaSelection::TopK] {
        for weights in [None, Some(vec![2.0, 0.5, 1.0])] {
            for with_aux in [false, true] {
                let (mut sae, x) = matryoshka_sae(selection, weights.clone());
                let dead = plant_dead(&mut sae);
                let label = format!("matryoshka {selection:?} λ={weights:?} aux={with_aux}");
                let o = options(8, if with_aux { 24 } else { 0 }, 0.0);
                compare(&sae, &x, Some(&dead), &o, &label, 1e-6);
            }
        }
    }
}

/// The nested losses are really there: the matryoshka gradient differs from batch top-k's
/// on the same parameters, except with one prefix, where every bit agrees.
#[test]
fn one_prefix_is_batchtopk_bit_for_bit() {
    let (sae, x) = matryoshka_sae(MatryoshkaSelection::BatchTopK, None);
    let mut plain = sae.copy();
    plain.config.architecture = Architecture::BatchTopK;
    let mut single = sae.copy();
    single
        .set_matryoshka(MatryoshkaParams::single(sae.config.d_sae))
        .unwrap();
    let o = options(8, 0, 0.0);
    let run = |s: &Sae| forward_backward(s, &x, None, &o, &mut Workspace::default());
    let (a, b, c) = (run(&plain), run(&single), run(&sae));
    assert!(a.loss.equal(&b.loss));
    for (g, h) in a.grads.tensors().iter().zip(b.grads.tensors()) {
        assert!(g.equal(h), "one prefix must be batch top-k exactly");
    }
    assert!(rel_err(&c.grads.w_dec, &a.grads.w_dec) > 1e-3);
    assert!(scalar(&c.loss) > scalar(&a.loss), "inner prefixes add loss");
    assert_eq!(c.prefix_x_hat.len(), 3);
    assert!(c.prefix_x_hat[2].equal(&c.x_hat));
}

/// Per-prefix evr against a direct dense computation with the inference codes.
#[test]
fn prefix_evr_matches_a_direct_computation() {
    let (mut sae, x) = matryoshka_sae(MatryoshkaSelection::BatchTopK, None);
    sae.threshold = Some(0.3);
    let z = sae.encode(&x); // [B, F], inference codes
    let evr = prefix_evr(&sae, &x);
    assert_eq!(evr.len(), 3);
    let x64 = x.to_kind(Kind::Double);
    let total = (&x64 - x64.mean_dim(0, true, Kind::Double))
        .square()
        .sum(Kind::Double);
    for (i, w) in [16i64, 64, 256].into_iter().enumerate() {
        let x_hat =
            (z.narrow(1, 0, w).matmul(&sae.w_dec.narrow(0, 0, w)) + &sae.b_dec) / sae.input_scale;
        let direct = 1.0
            - scalar(
                &(&x64 - x_hat.to_kind(Kind::Double))
                    .square()
                    .sum(Kind::Double),
            ) / scalar(&total);
        assert!(
            (evr[i] - direct).abs() < 1e-6,
            "prefix {w}: {} vs {direct}",
            evr[i]
        );
    }
    let mut whole = Evr::new(sae.config.d_in, CPU);
    whole.update(&x, &sae.reconstruct(&x));
    assert!((whole.evr() - evr[2]).abs() < 1e-9);
}

fn meta() -> CheckpointMeta {
    CheckpointMeta {
        clip: json!({"model": "m", "sha256": "0", "layer": 1, "tokens": "cls"}),
        training: json!({}),
        metrics: json!({}),
    }
}

/// Training checkpoints keep θ's parameter (log θ or θ), its Adam moments and the prefixes
/// exactly; the header records the new fields.
#[test]
fn checkpoints_keep_the_new_state_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let x = random_inputs(32, 16, 2);
    for (arch, param) in [
        (Architecture::JumpRelu, ThresholdParam::Log),
        (Architecture::JumpRelu, ThresholdParam::Linear),
        (Architecture::Matryoshka, ThresholdParam::Log),
    ] {
        let mut sae = random_sae(config(arch, 16, 64, 4), &x, 4);
        if arch == Architecture::Matryoshka {
            sae.set_matryoshka(
                MatryoshkaParams::new(
                    vec![8, 32, 64],
                    Some(vec![1.0, 2.0, 3.0]),
                    MatryoshkaSelection::TopK,
                    64,
                )
                .unwrap(),
            )
            .unwrap();
        } else {
            sae.jumprelu = Some(JumpReluParams {
                bandwidth: 0.02,
                sparsity_loss: SparsityLoss::Tanh,
                tanh_scale: 3.0,
                threshold_param: param,
            });
            if param == ThresholdParam::Linear {
                sae.threshold_param = sae.threshold_param.map(|t| t.exp());
            }
        }
        let mut adam = Adam::new(&sae, AdamConfig::default());
        for _ in 0..3 {
            let out = forward_backward(
                &sae,
                &x,
                None,
                &options(4, 0, 1e-2),
                &mut Workspace::default(),
            );
            let _ = adam.step(&mut sae, out.grads, 1e-2, Some(1.0));
        }
        let path = dir.path().join(format!("{arch}-{param:?}.safetensors"));
        let state = TrainingStateRef {
            step: 3,
            epoch: 1,
            adam: &adam,
            threshold: None,
            tensors: vec![],
            extra: json!(null),
        };
        checkpoint::save(&path, &sae, &meta(), Some(&state), Kind::Float).unwrap();
        let c = checkpoint::load(&path, CPU).unwrap();
        assert!(c.sae.w_enc.equal(&sae.w_enc) && c.sae.w_dec.equal(&sae.w_dec));
        assert_eq!(c.sae.jumprelu, sae.jumprelu);
        assert_eq!(c.sae.matryoshka, sae.matryoshka);
        match (&c.sae.threshold_param, &sae.threshold_param) {
            (Some(a), Some(b)) => assert!(a.equal(b)),
            (None, None) => {}
            _ => panic!("θ's parameter lost"),
        }
        let saved = c.training.unwrap().adam.state_tensors();
        let kept = adam.state_tensors();
        assert_eq!(saved.len(), kept.len());
        for ((na, a), (nb, b)) in saved.iter().zip(&kept) {
            assert_eq!(na, nb);
            assert!(a.equal(b), "{na}");
        }
        if arch == Architecture::JumpRelu {
            let name = format!("{}.exp_avg", param.tensor_name());
            assert!(saved.iter().any(|(n, _)| *n == name), "{name}");
        }
        // The header fields, as DESIGN.md documents them.
        let bytes = std::fs::read(&path).unwrap();
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let h: Value = serde_json::from_str(&m.metadata().as_ref().unwrap()["saeclip"]).unwrap();
        if arch == Architecture::JumpRelu {
            assert_eq!(h["architecture"], "jumprelu");
            assert_eq!(h["jumprelu"]["bandwidth"], 0.02);
            assert_eq!(h["jumprelu"]["sparsity_loss"], "tanh");
            let want = if param == ThresholdParam::Log {
                "log"
            } else {
                "linear"
            };
            assert_eq!(h["jumprelu"]["threshold_param"], want);
            assert!(h.get("matryoshka").is_none());
        } else {
            assert_eq!(h["matryoshka"]["widths"], json!([8, 32, 64]));
            assert_eq!(h["matryoshka"]["weights"], json!([1.0, 2.0, 3.0]));
            assert_eq!(h["matryoshka"]["selection"], "topk");
        }
        // A matryoshka header without its prefixes, or bad ones, is refused with the reason.
        if arch == Architecture::Matryoshka {
            let bad = dir.path().join("bad.safetensors");
            let (_, st_meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut h2 = h.clone();
            h2["matryoshka"]["widths"] = json!([8, 4, 64]);
            let _ = st_meta;
            let md = std::collections::HashMap::from([("saeclip".to_string(), h2.to_string())]);
            safetensors::serialize_to_file(st.tensors(), Some(md), &bad).unwrap();
            let err = format!("{:#}", checkpoint::load(&bad, CPU).unwrap_err());
            assert!(err.contains("strictly increasing"), "{err}");
        }
    }
}

/// A cache of `n` rows from a planted dictionary.
fn planted_cache(dir: &Path, n: usize) -> PathBuf {
    let x = common::planted_rows(7, n, (64, 32), 4, 3.0, 0.5);
    common::write_row_cache(
        dir,
        &x,
        (0, Tokens::Cls),
        ("synthetic", &"0".repeat(64)),
        |i| format!("row{i}"),
    )
}

fn train_config(cache: &Path, runs: &Path, extra: &[&str]) -> TrainConfig {
    let mut sets: Vec<String> = vec![
        format!("data.cache={}", cache.display()),
        format!("output.runs_dir={}", runs.display()),
        "sae.d_sae=128".into(),
        "sae.k=8".into(),
        "sae.k_aux=16".into(),
        "training.batch_size=128".into(),
        "training.epochs=4".into(),
        "training.lr=0.004".into(),
        "training.log_every=2".into(),
        "training.dead_window=2000".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_yaml("", &sets).unwrap()
}

fn run(config: TrainConfig, resume: Option<PathBuf>, stop: Option<usize>) -> PathBuf {
    let o = TrainOptions {
        config,
        device: CPU,
        model_load: Default::default(),
        resume,
        stop_after_epochs: stop,
        stop_after_steps: None,
    };
    train(&o).unwrap().run_dir
}

const JUMPRELU: &[&str] = &[
    "sae.architecture=jumprelu",
    "sae.l0_coef=0.002",
    "training.l0_warmup_steps=6",
    "sae.jumprelu_bandwidth=0.05",
    "sae.jumprelu_init_threshold=0.05",
];
const JUMPRELU_LOG: &[&str] = &[
    "sae.architecture=jumprelu",
    "sae.l0_coef=0.002",
    "training.l0_warmup_steps=6",
    "sae.jumprelu_bandwidth=0.05",
    "sae.jumprelu_init_threshold=0.05",
    "sae.jumprelu_threshold_param=log",
];
const MATRYOSHKA: &[&str] = &[
    "sae.architecture=matryoshka",
    "sae.matryoshka_widths=[16, 48, 128]",
];

/// Both train, learn, log what they should, and resume bit for bit.
#[test]
fn both_train_and_resume_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cache = planted_cache(&dir.path().join("cache"), 700);
    for (name, extra) in [
        ("jumprelu", JUMPRELU),
        ("jumprelu-log", JUMPRELU_LOG),
        ("matryoshka", MATRYOSHKA),
    ] {
        let whole = run(
            train_config(&cache, &dir.path().join(format!("{name}-a")), extra),
            None,
            None,
        );
        let partial = run(
            train_config(&cache, &dir.path().join(format!("{name}-b")), extra),
            None,
            Some(2),
        );
        run(TrainConfig::default(), Some(partial.clone()), None);
        let read = |p: PathBuf| {
            let mut t = saeclip::clip::weights::read_safetensors(&p).unwrap();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        };
        let a = read(whole.join("checkpoints/last.safetensors"));
        let b = read(partial.join("checkpoints/last.safetensors"));
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(ta.equal(tb), "{name}: {na} differs after resume");
        }
        let log = common::metric_lines(&whole);
        assert_eq!(
            common::timeless_metric_lines(&whole),
            common::timeless_metric_lines(&partial),
            "{name}: metric lines"
        );
        let last = log.iter().rev().find(|l| l["type"] == "epoch").unwrap();
        let (sae, _) =
            checkpoint::load_sae(&whole.join("checkpoints/last.safetensors"), CPU).unwrap();
        let val = last["val_evr"].as_f64().unwrap();
        assert!(val > 0.3, "{name}: val_evr {val}");
        if name.starts_with("jumprelu") {
            // θ itself (the default) or log θ, by name.
            let want = if name == "jumprelu" {
                "threshold"
            } else {
                "log_threshold"
            };
            assert!(a.iter().any(|(n, _)| n == want), "{name}: {want}");
            let theta = sae.jumprelu_threshold().unwrap();
            let spread = scalar(&(theta.max() - theta.min()));
            assert!(spread > 1e-3, "the thresholds learn, per latent: {spread}");
            let l0 = last["val_l0"].as_f64().unwrap();
            assert!(l0 > 0.5 && l0 < 128.0, "{name}: l0 {l0}");
        } else {
            let prefix: Vec<f64> = last["val_prefix_evr"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(prefix.len(), 3);
            assert!((prefix[2] - val).abs() < 1e-9, "{prefix:?} vs {val}");
            assert!(prefix[0] < prefix[2] && prefix[0] > 0.0, "{prefix:?}");
            assert_eq!(last["prefix_widths"], json!([16, 48, 128]));
            let step = log.iter().find(|l| l["type"] == "step").unwrap();
            assert_eq!(step["prefix_evr"].as_array().unwrap().len(), 3);
            assert!(
                sae.threshold.is_some(),
                "batch top-k inside: θ is estimated"
            );
            // analyze-logs reports the prefixes.
            let out = common::saeclip()
                .args(["analyze-logs", "--logdir", whole.to_str().unwrap()])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let want = format!("16: {:.4}", prefix[0]);
            assert!(
                text.contains("matryoshka prefixes alone") && text.contains(&want),
                "{text}"
            );
        }
    }
}

/// The tensors of a checkpoint, by name.
fn checkpoint_tensors(p: &Path) -> Vec<(String, Tensor)> {
    let mut t = saeclip::clip::weights::read_safetensors(p).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// Matryoshka with `training.checkpoint_every`: stopped mid-epoch (step lines past the
/// checkpoint), resumed, stopped mid-epoch again, resumed to the end: the same tensors and
/// metric lines as an uninterrupted run without the key, for both decoder norms. `free`
/// leaves the decoder rows off unit norm and says so in the header; `unit` keeps them.
#[test]
fn matryoshka_resumes_mid_epoch_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cache = planted_cache(&dir.path().join("cache"), 700);
    for norm in ["unit", "free"] {
        let set = format!("sae.matryoshka_decoder_norm={norm}");
        let mut base: Vec<&str> = MATRYOSHKA.to_vec();
        base.extend([set.as_str(), "training.epochs=3"]);
        let whole = run(
            train_config(&cache, &dir.path().join(format!("{norm}-whole")), &base),
            None,
            None,
        );
        base.push("training.checkpoint_every=3");
        let mut o = TrainOptions {
            config: train_config(&cache, &dir.path().join(format!("{norm}-cut")), &base),
            device: CPU,
            model_load: Default::default(),
            resume: None,
            stop_after_epochs: None,
            // An epoch is 6 steps (665 training rows, batches of 128).
            stop_after_steps: Some(5),
        };
        let cut = train(&o).unwrap().run_dir;
        let latest = cut.join("checkpoints/latest.safetensors");
        assert!(latest.exists() && !cut.join("checkpoints/last.safetensors").exists());
        assert!(
            common::metric_lines(&cut).iter().any(|l| l["step"] == 4),
            "{norm}: a step past the checkpoint"
        );
        o.config = TrainConfig::default();
        o.resume = Some(cut.clone());
        o.stop_after_steps = Some(7);
        assert!(
            train(&o).unwrap().summary.is_none(),
            "{norm}: stopped again"
        );
        let data = &checkpoint::read_extra(&latest).unwrap()["data"];
        assert_eq!(
            data["epoch"], 1,
            "{norm}: the second stop falls in epoch 1: {data}"
        );
        o.stop_after_steps = None;
        assert!(train(&o).unwrap().summary.is_some());
        let a = checkpoint_tensors(&whole.join("checkpoints/last.safetensors"));
        let b = checkpoint_tensors(&cut.join("checkpoints/last.safetensors"));
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(
                ta.equal(tb),
                "{norm}: {na} differs after the mid-epoch resumes"
            );
        }
        assert_eq!(
            common::timeless_metric_lines(&whole),
            common::timeless_metric_lines(&cut),
            "{norm}: metric lines"
        );
        let (sae, _) =
            checkpoint::load_sae(&whole.join("checkpoints/last.safetensors"), CPU).unwrap();
        let m = sae.matryoshka.as_ref().unwrap();
        let norms = sae
            .w_dec
            .square()
            .sum_dim_intlist(1, false, Kind::Float)
            .sqrt();
        let off = scalar(&(norms - 1.0).abs().max());
        if norm == "free" {
            assert_eq!(m.decoder_norm, DecoderNorm::Free);
            assert!(!sae.unit_norm_decoder());
            assert!(off > 1e-2, "free rows move off unit norm: {off}");
        } else {
            assert_eq!(m.decoder_norm, DecoderNorm::Unit);
            assert!(off < 1e-5, "unit rows stay at unit norm: {off}");
        }
    }
}

/// Bad architecture keys fail `train` in one line naming the key; sweeps may vary them.
#[test]
fn config_errors_name_the_key_and_sweeps_vary_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cache = planted_cache(&dir.path().join("cache"), 300);
    let yaml = dir.path().join("c.yaml");
    std::fs::write(
        &yaml,
        format!(
            "data:\n  cache: {}\nsae:\n  d_sae: 64\n  k: 4\n",
            cache.display()
        ),
    )
    .unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &[
                "sae.architecture=matryoshka",
                "sae.matryoshka_widths=[16,64]",
                "sae.matryoshka_decoder_norm=loose",
            ],
            "sae.matryoshka_decoder_norm",
        ),
        (
            &[
                "sae.architecture=matryoshka",
                "sae.matryoshka_widths=[32,16,64]",
            ],
            "sae.matryoshka_widths",
        ),
        (
            &[
                "sae.architecture=matryoshka",
                "sae.matryoshka_widths=[16,32]",
            ],
            "d_sae = 64",
        ),
        (&["sae.architecture=matryoshka"], "sae.matryoshka_widths"),
        (
            &["sae.architecture=jumprelu", "sae.jumprelu_bandwidth=0"],
            "sae.jumprelu_bandwidth",
        ),
        (
            &["sae.architecture=jumprelu", "sae.jumprelu_bandwidth=-1e-3"],
            "sae.jumprelu_bandwidth",
        ),
        (
            &[
                "sae.architecture=jumprelu",
                "sae.jumprelu_threshold_param=exp",
            ],
            "sae.jumprelu_threshold_param",
        ),
    ];
    for (sets, expect) in cases {
        let mut args = vec![
            "train".to_string(),
            "--config".into(),
            yaml.display().to_string(),
        ];
        for s in sets {
            args.extend(["--set".into(), s.to_string()]);
        }
        let out = common::saeclip().args(&args).output().unwrap();
        common::fails_cleanly(&out, expect);
    }
    // A sweep whose members differ in architecture-specific keys.
    let runs = dir.path().join("sweep");
    let config = train_config(
        &cache,
        &runs,
        &[
            "sae.d_sae=64",
            "sae.architecture=jumprelu",
            "training.epochs=1",
            "sweep.sae.jumprelu_bandwidth=[0.01, 0.1]",
            "sweep.sae.l0_coef=[0.001, 0.01]",
        ],
    );
    let o = TrainOptions {
        config,
        device: CPU,
        model_load: Default::default(),
        resume: None,
        stop_after_epochs: None,
        stop_after_steps: None,
    };
    let result = train(&o).unwrap();
    assert_eq!(result.members.len(), 4);
    let mut bandwidths = Vec::new();
    for m in &result.members {
        let (sae, _) =
            checkpoint::load_sae(&m.run_dir.join("checkpoints/last.safetensors"), CPU).unwrap();
        bandwidths.push(sae.jumprelu.unwrap().bandwidth);
        assert!(m
            .summary
            .as_ref()
            .unwrap()
            .final_metrics
            .val_evr
            .is_finite());
    }
    bandwidths.sort_by(f64::total_cmp);
    assert_eq!(bandwidths, vec![0.01, 0.01, 0.1, 0.1]);
}
