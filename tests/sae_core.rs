//! The SAE core against independent computations: hand-written sparse gradients against
//! dense tch autograd, the forward pass against DESIGN.md's formulas, Adam against
//! torch.optim.Adam's update (written out here, and torch itself through
//! tests/reference/sae_autograd.py), training on planted dictionaries, AuxK, metrics and
//! checkpoints.
//!
//! The step-time benchmark (sparse against dense) is `make bench-step` (benches/sae_step.rs).

mod common;

use std::path::Path;

use saeclip::sae::checkpoint::{self, CheckpointMeta, TrainingStateRef};
use saeclip::sae::model::{prefix_offsets, select, select_with};
use saeclip::sae::sync::host_reads;
use saeclip::sae::*;
use serde_json::json;
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
    let scale = b
        .to_kind(Kind::Double)
        .abs()
        .max()
        .double_value(&[])
        .max(1e-30);
    diff / scale
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// Inputs with a large common offset, like CLIP's residual stream.
fn random_inputs(b: i64, d: i64, seed: i64) -> Tensor {
    saeclip::rng::seeded(seed, || {
        let offset = Tensor::randn([d], (Kind::Float, CPU)) * 3.0;
        Tensor::randn([b, d], (Kind::Float, CPU)) + offset
    })
}

/// An SAE away from its symmetric initialisation.
fn random_sae(cfg: SaeConfig, x: &Tensor, seed: i64) -> Sae {
    // Sae::init reseeds with `seed`; the perturbations continue that stream.
    saeclip::rng::seeded(seed, || {
        let mut sae = Sae::init(&cfg, x, BdecInit::GeometricMedian, seed).unwrap();
        let _ = sae
            .w_enc
            .g_add_(&(Tensor::randn([cfg.d_in, cfg.d_sae], (Kind::Float, CPU)) * 0.05));
        sae.b_enc = Tensor::randn([cfg.d_sae], (Kind::Float, CPU)) * 0.1;
        sae
    })
}

/// Every 4th latent is flagged dead, and its bias lowered so that it rarely wins the
/// top-k while often staying positive.
fn plant_dead(sae: &mut Sae) -> Tensor {
    let f = sae.config.d_sae;
    let dead = Tensor::arange(f, (Kind::Int64, CPU)).remainder(4).eq(0);
    let _ = sae.b_enc.g_sub_(&(dead.to_kind(Kind::Float) * 0.7));
    dead
}

fn check_gradients(architecture: Architecture, with_aux: bool, l1_coef: f64) {
    let (b, d, f, k) = (64, 48, 256, 8);
    let x = random_inputs(b, d, 7);
    let mut sae = random_sae(config(architecture, d, f, k), &x, 3);
    let dead = plant_dead(&mut sae);
    let o = LossOptions {
        k,
        k_aux: if with_aux { 24 } else { 0 },
        aux_coef: 1.0 / 32.0,
        l1_coef,
        data_variance: 0.7,
    };
    let out = forward_backward(&sae, &x, Some(&dead), &o, &mut Workspace::default());
    let r = dense_reference(&sae, &x, Some(&dead), &o);
    let label = format!("{architecture} aux={with_aux} l1={l1_coef}");
    if with_aux {
        assert!(scalar(&r.aux) > 1e-4, "{label}: AuxK is not exercised");
        let without = forward_backward(&sae, &x, None, &o, &mut Workspace::default());
        for (a, b) in out.grads.tensors().iter().zip(without.grads.tensors()) {
            assert!(
                rel_err(a, b) > 1e-4,
                "{label}: AuxK does not change the gradients"
            );
        }
    }
    for (name, a, e) in [
        ("loss", &out.loss, &r.loss),
        ("mse", &out.mse, &r.mse),
        ("aux", &out.aux, &r.aux),
        ("l1", &out.l1, &r.l1),
    ] {
        let err = (scalar(a) - scalar(e)).abs() / scalar(e).abs().max(1e-30);
        assert!(
            err < 1e-5 || scalar(e) == 0.0 && scalar(a) == 0.0,
            "{label} {name}: {} vs {}",
            scalar(a),
            scalar(e)
        );
    }
    for (name, a, e) in [
        ("W_enc", &out.grads.w_enc, &r.grads[0]),
        ("b_enc", &out.grads.b_enc, &r.grads[1]),
        ("W_dec", &out.grads.w_dec, &r.grads[2]),
        ("b_dec", &out.grads.b_dec, &r.grads[3]),
    ] {
        assert_eq!(a.size(), e.size(), "{label} {name}");
        let err = rel_err(a, e);
        println!("{label:32} d{name:6} max|Δ|/max|g| = {err:.2e}");
        assert!(err <= 1e-5, "{label} d{name}: relative error {err:e}");
    }
}

#[test]
fn gradients_topk() {
    check_gradients(Architecture::TopK, false, 0.0);
    check_gradients(Architecture::TopK, true, 0.0);
}

#[test]
fn gradients_batchtopk() {
    check_gradients(Architecture::BatchTopK, false, 0.0);
    check_gradients(Architecture::BatchTopK, true, 0.0);
}

#[test]
fn gradients_relu() {
    check_gradients(Architecture::Relu, false, 0.0);
    check_gradients(Architecture::Relu, false, 3e-3);
    check_gradients(Architecture::Relu, true, 3e-3);
}

/// A batch of one row has no residual variance for AuxK to normalise by: it trains on the
/// reconstruction alone (finite), whatever is dead; the same row in a batch of two gets AuxK.
#[test]
fn a_one_row_batch_skips_auxk() {
    let (d, f, k) = (16, 64, 2);
    let x = random_inputs(2, d, 5);
    let mut sae = random_sae(config(Architecture::TopK, d, f, k), &x, 5);
    let dead = plant_dead(&mut sae);
    let o = LossOptions {
        k,
        k_aux: 8,
        aux_coef: 1.0 / 32.0,
        l1_coef: 0.0,
        data_variance: 1.0,
    };
    let one = forward_backward(
        &sae,
        &x.narrow(0, 0, 1),
        Some(&dead),
        &o,
        &mut Workspace::new(),
    );
    assert_eq!(scalar(&one.aux), 0.0);
    assert!(scalar(&one.loss).is_finite() && scalar(&one.loss) < 1e3);
    let r = dense_reference(&sae, &x.narrow(0, 0, 1), Some(&dead), &o);
    for (a, e) in one.grads.tensors().iter().zip(&r.grads) {
        assert!(rel_err(a, e) <= 1e-5);
    }
    let two = forward_backward(&sae, &x, Some(&dead), &o, &mut Workspace::new());
    assert!(scalar(&two.aux) > 0.0, "two rows: AuxK acts");
}

/// σ² makes the loss scale-free: data times 1,000 gives the same loss and gradient norm
/// (input_scale absorbs the factor; σ² the offset's share of the norm).
#[test]
fn the_normalised_loss_does_not_depend_on_the_data_scale() {
    let (d, f, k) = (24, 96, 4);
    let x = random_inputs(64, d, 11);
    let run = |x: &Tensor| {
        let sae = Sae::init(&config(Architecture::TopK, d, f, k), x, BdecInit::Mean, 3).unwrap();
        let v = data_variance(x, sae.input_scale).unwrap();
        let o = LossOptions {
            k,
            k_aux: 0,
            aux_coef: 0.0,
            l1_coef: 0.0,
            data_variance: v,
        };
        let out = forward_backward(&sae, x, None, &o, &mut Workspace::new());
        (scalar(&out.loss), scalar(&out.grads.global_norm()))
    };
    let (a, b) = (run(&x), run(&(&x * 1000.0)));
    assert!((a.0 - b.0).abs() < 1e-4 * a.0, "{a:?} vs {b:?}");
    assert!((a.1 - b.1).abs() < 1e-3 * a.1, "{a:?} vs {b:?}");
    // The constant prediction x̄ scores 1: a fraction of unexplained variance.
    assert!(a.0 > 0.0 && a.0 < 2.0, "{a:?}");
}

#[test]
fn no_dead_latent_means_no_aux() {
    let x = random_inputs(32, 16, 1);
    let sae = random_sae(config(Architecture::TopK, 16, 64, 4), &x, 1);
    let o = LossOptions {
        k: 4,
        k_aux: 16,
        aux_coef: 1.0,
        l1_coef: 0.0,
        data_variance: 1.0,
    };
    let none = Tensor::zeros([64], (Kind::Bool, CPU));
    let a = forward_backward(&sae, &x, Some(&none), &o, &mut Workspace::default());
    let b = forward_backward(&sae, &x, None, &o, &mut Workspace::default());
    assert_eq!(scalar(&a.aux), 0.0);
    assert!(a.grads.w_enc.equal(&b.grads.w_enc) && a.grads.w_dec.equal(&b.grads.w_dec));
}

/// The sync-free step (CUDA's form, forced here on the CPU) against the host step (the
/// CPU's form): the same losses, codes, fired counts and gradients, for every architecture,
/// with many, few (fewer than k_aux) or no dead latents; and no host read at all.
#[test]
fn the_sync_free_step_equals_the_host_step() {
    let (b, d, f, k) = (64, 48, 256, 8);
    let x = random_inputs(b, d, 21);
    for architecture in [
        Architecture::TopK,
        Architecture::BatchTopK,
        Architecture::Relu,
    ] {
        let mut sae = random_sae(config(architecture, d, f, k), &x, 4);
        let many = plant_dead(&mut sae);
        let few = Tensor::zeros([f], (Kind::Bool, CPU));
        let _ = few.narrow(0, 8, 3).fill_(1); // 3 dead latents, k_aux = 24
        let none = Tensor::zeros([f], (Kind::Bool, CPU));
        for (what, dead) in [
            ("many dead", Some(&many)),
            ("3 dead", Some(&few)),
            ("none dead", Some(&none)),
            ("no mask", None),
        ] {
            let o = LossOptions {
                k,
                k_aux: 24,
                aux_coef: 1.0 / 32.0,
                l1_coef: if architecture == Architecture::Relu {
                    3e-3
                } else {
                    0.0
                },
                data_variance: 0.7,
            };
            let label = format!("{architecture} {what}");
            let host = forward_backward(
                &sae,
                &x,
                dead,
                &o,
                &mut Workspace::with_sync_free(SyncFree::Never),
            );
            let reads = host_reads();
            let free = forward_backward(
                &sae,
                &x,
                dead,
                &o,
                &mut Workspace::with_sync_free(SyncFree::Always),
            );
            assert_eq!(
                host_reads(),
                reads,
                "{label}: the sync-free step read the host"
            );
            if what == "many dead" {
                assert!(scalar(&host.aux) > 1e-4, "{label}: AuxK is not exercised");
            }
            if what == "none dead" {
                assert_eq!(scalar(&free.aux), 0.0, "{label}");
            }
            for (name, a, e) in [
                ("loss", &free.loss, &host.loss),
                ("mse", &free.mse, &host.mse),
                ("aux", &free.aux, &host.aux),
                ("l1", &free.l1, &host.l1),
                ("l0", &free.l0, &host.l0),
                ("min_positive", &free.min_positive, &host.min_positive),
            ] {
                let (a, e) = (scalar(a), scalar(e));
                assert!(
                    a == e || (a - e).abs() <= 1e-6 * e.abs(),
                    "{label} {name}: {a} vs {e}"
                );
            }
            assert!(
                free.fired.equal(&host.fired),
                "{label}: fired counts differ"
            );
            assert!(rel_err(&free.x_hat, &host.x_hat) <= 1e-6, "{label}: x̂");
            for (name, a, e) in [
                ("W_enc", &free.grads.w_enc, &host.grads.w_enc),
                ("b_enc", &free.grads.b_enc, &host.grads.b_enc),
                ("W_dec", &free.grads.w_dec, &host.grads.w_dec),
                ("b_dec", &free.grads.b_dec, &host.grads.b_dec),
            ] {
                let err = rel_err(a, e);
                assert!(err <= 1e-6, "{label} d{name}: relative error {err:e}");
            }
        }
    }
    // The host form does read the host (the count above is not vacuous).
    let mut sae = random_sae(config(Architecture::TopK, d, f, k), &x, 4);
    let dead = plant_dead(&mut sae);
    let o = LossOptions {
        k,
        k_aux: 24,
        aux_coef: 1.0 / 32.0,
        l1_coef: 0.0,
        data_variance: 1.0,
    };
    let reads = host_reads();
    let _ = forward_backward(&sae, &x, Some(&dead), &o, &mut Workspace::new());
    assert!(host_reads() > reads, "the CPU's host step counts its reads");
}

/// Codes, offsets and fired counts of both forms, on pre-activations whose rows differ in
/// scale by orders of magnitude (batch top-k's candidate search takes several rounds).
#[test]
fn sync_free_codes_equal_host_codes() {
    // spread < 0: every 13th value (batch top-k's sample) is large, so that the sampled
    // bound misleads and the search falls back to a full top-k.
    for (seed, spread) in [(1, 0.0f64), (2, 1.0), (3, 3.0), (4, -1.0)] {
        let (b, f) = (96, 320);
        let pre = saeclip::rng::seeded(seed, || {
            let scales = (Tensor::randn([b, 1], (Kind::Float, CPU)) * spread.max(0.0)).exp();
            Tensor::randn([b, f], (Kind::Float, CPU)) * scales
        });
        if spread < 0.0 {
            let _ = pre
                .view([-1])
                .slice(0, 0, b * f, 13)
                .g_add_(&Tensor::from(100.0f32));
        }
        for selection in [
            Selection::TopK(5),
            Selection::BatchTopK(5),
            Selection::BatchTopK(1),
            Selection::BatchTopK(90),
        ] {
            let label = format!("{selection:?} spread {spread}");
            let host = select_with(&pre, selection, false);
            let free = select_with(&pre, selection, true);
            for (name, a, e) in [
                ("values", &free.values, &host.values),
                ("latents", &free.latents, &host.latents),
                ("rows", &free.rows, &host.rows),
                ("offsets", &free.offsets, &host.offsets),
            ] {
                assert!(a.equal(e), "{label}: {name} differ");
            }
            assert!(
                free.fired_with(true).equal(&host.fired_with(false)),
                "{label}"
            );
            // Both are the k·B (or k per row) largest: the dense reference.
            if let Selection::BatchTopK(k) = selection {
                let (v, i) = pre.reshape([-1]).topk(k * b, 0, true, true);
                let expect = Tensor::zeros([b * f], (Kind::Float, CPU))
                    .index_put_(&[Some(i)], &v.relu(), false)
                    .view([b, f]);
                assert!(
                    host.to_dense().equal(&expect),
                    "{label}: not the k·B largest"
                );
            }
        }
    }
    // Offsets of sorted ids with gaps (empty runs), at both ends too.
    let ids = Tensor::from_slice(&[1i64, 1, 3, 3, 3, 4, 7]);
    let expect = vec![0i64, 0, 2, 2, 5, 6, 6, 6, 7, 7];
    for sync_free in [false, true] {
        let got = Vec::<i64>::try_from(prefix_offsets(&ids, 9, sync_free)).unwrap();
        assert_eq!(got, expect, "sync_free = {sync_free}");
    }
}

/// pre, z and x̂ from DESIGN.md's formulas with plain f64 loops.
#[test]
fn forward_matches_the_formulas() {
    let (b, d, f, k) = (5usize, 6usize, 10usize, 3usize);
    let x = random_inputs(b as i64, d as i64, 11);
    let sae = random_sae(
        config(Architecture::TopK, d as i64, f as i64, k as i64),
        &x,
        5,
    );
    let v =
        |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view([-1])).unwrap();
    let (xv, we, be, wd, bd) = (
        v(&x),
        v(&sae.w_enc),
        v(&sae.b_enc),
        v(&sae.w_dec),
        v(&sae.b_dec),
    );
    let s = sae.input_scale;
    let mut z = vec![0.0; b * f];
    let mut x_hat = vec![0.0; b * d];
    for i in 0..b {
        let pre: Vec<f64> = (0..f)
            .map(|j| {
                (0..d)
                    .map(|c| (xv[i * d + c] * s - bd[c]) * we[c * f + j])
                    .sum::<f64>()
                    + be[j]
            })
            .collect();
        let mut order: Vec<usize> = (0..f).collect();
        order.sort_by(|&a, &c| pre[c].partial_cmp(&pre[a]).unwrap());
        for &j in &order[..k] {
            z[i * f + j] = pre[j].max(0.0);
        }
        for c in 0..d {
            x_hat[i * d + c] =
                ((0..f).map(|j| z[i * f + j] * wd[j * d + c]).sum::<f64>() + bd[c]) / s;
        }
    }
    let z_expect = Tensor::from_slice(&z).view([b as i64, f as i64]);
    let x_hat_expect = Tensor::from_slice(&x_hat).view([b as i64, d as i64]);
    assert!(rel_err(&sae.encode(&x), &z_expect) < 1e-5);
    assert!(rel_err(&sae.reconstruct(&x), &x_hat_expect) < 1e-5);
    assert!(rel_err(&sae.decode(&z_expect.to_kind(Kind::Float)), &x_hat_expect) < 1e-5);
    let out = forward_backward(
        &sae,
        &x,
        None,
        &LossOptions {
            k: k as i64,
            k_aux: 0,
            aux_coef: 0.0,
            l1_coef: 0.0,
            data_variance: 1.0,
        },
        &mut Workspace::default(),
    );
    assert!(rel_err(&out.x_hat, &x_hat_expect) < 1e-5);
    let mse: f64 = (0..b * d)
        .map(|i| ((xv[i] - x_hat[i]) * s).powi(2))
        .sum::<f64>()
        / (b * d) as f64;
    assert!((scalar(&out.mse) - mse).abs() < 1e-5 * mse);
    // Init: unit decoder rows, W_enc = W_decᵀ before perturbation, E‖x·s‖ = √d.
    let fresh = Sae::init(&sae.config, &x, BdecInit::Mean, 5).unwrap();
    assert!(fresh.w_enc.equal(&fresh.w_dec.tr()));
    let norms = (&x * fresh.input_scale)
        .square()
        .sum_dim_intlist(1, false, Kind::Double)
        .sqrt();
    assert!((scalar(&norms.mean(Kind::Double)) - (d as f64).sqrt()).abs() < 1e-5);
    assert!(
        rel_err(
            &fresh.b_dec,
            &(&x * fresh.input_scale).mean_dim(0, false, Kind::Float)
        ) < 1e-6
    );
}

/// The encoder gain keeps W_enc's direction and the selected latents, equals the
/// closed-form least-squares gain, and makes the first reconstruction better than both the
/// plain transpose and nearby gains.
#[test]
fn encoder_gain_is_the_least_squares_scale() {
    let x = random_inputs(512, 32, 11);
    for arch in [
        Architecture::TopK,
        Architecture::BatchTopK,
        Architecture::Relu,
    ] {
        let cfg = config(arch, 32, 128, 6);
        let plain = Sae::init(&cfg, &x, BdecInit::Mean, 4).unwrap();
        let selection = plain.training_selection(6);
        let mut fitted = plain.copy();
        let c = fitted.fit_encoder_gain(&x, selection).unwrap();
        // Closed form from the plain SAE's own reconstruction.
        let codes = plain.encode_sparse(&x, selection);
        let x_hat0 = plain.decode_sparse(&codes) * plain.input_scale - &plain.b_dec;
        let centered = &x * plain.input_scale - &plain.b_dec;
        let expect = scalar(&(&centered * &x_hat0).sum(Kind::Double))
            / scalar(&x_hat0.square().sum(Kind::Double));
        assert!(
            (c - expect).abs() < 1e-4 * expect,
            "{arch}: {c} vs {expect}"
        );
        assert!(c > 0.0 && (c - 1.0).abs() > 1e-3, "{arch}: gain {c}");
        assert!(rel_err(&fitted.w_enc, &(&plain.w_enc * c)) < 1e-6);
        let fitted_codes = fitted.encode_sparse(&x, selection);
        assert!(
            fitted_codes.latents.equal(&codes.latents),
            "{arch}: the selected latents changed"
        );
        let sse = |sae: &Sae, gain: f64| {
            let codes = sae.encode_sparse(&x, selection);
            let x_hat =
                (sae.decode_sparse(&codes) * sae.input_scale - &sae.b_dec) * gain + &sae.b_dec;
            scalar(&(&x * sae.input_scale - x_hat).square().sum(Kind::Double))
        };
        let best = sse(&fitted, 1.0);
        assert!(best < sse(&plain, 1.0), "{arch}: the gain did not help");
        for g in [0.9, 1.1] {
            assert!(best <= sse(&fitted, g), "{arch}: gain ×{g} is better");
        }
    }
}

#[test]
fn decoder_stays_unit_norm_and_projection_is_perpendicular() {
    let x = random_inputs(64, 32, 2);
    let mut sae = random_sae(config(Architecture::TopK, 32, 128, 8), &x, 2);
    let o = LossOptions {
        k: 8,
        k_aux: 0,
        aux_coef: 0.0,
        l1_coef: 0.0,
        data_variance: 1.0,
    };
    let mut adam = Adam::new(&sae, AdamConfig::default());
    for _ in 0..5 {
        let out = forward_backward(&sae, &x, None, &o, &mut Workspace::default());
        let _ = adam.step(&mut sae, out.grads, 1e-2, Some(1.0));
        let norms = sae
            .w_dec
            .square()
            .sum_dim_intlist(1, false, Kind::Double)
            .sqrt();
        assert!(scalar(&(norms - 1.0).abs().max()) < 1e-6);
    }
    let mut grads = forward_backward(&sae, &x, None, &o, &mut Workspace::default()).grads;
    let before = grads.w_dec.copy();
    grads.remove_parallel_decoder_component(&sae.w_dec);
    let along = (&grads.w_dec * &sae.w_dec).sum_dim_intlist(1, false, Kind::Float);
    assert!(scalar(&along.abs().max()) < 1e-6 * scalar(&before.abs().max()));
    let removed = &before - &grads.w_dec;
    let dots = (&before * &sae.w_dec).sum_dim_intlist(1, true, Kind::Float);
    assert!(rel_err(&removed, &(dots * &sae.w_dec)) < 1e-5);
}

#[test]
fn clipping_matches_clip_grad_norm() {
    let mut g = Grads {
        w_enc: Tensor::from_slice(&[3.0f32, 0.0]).view([1, 2]),
        b_enc: Tensor::from_slice(&[0.0f32, 4.0]),
        w_dec: Tensor::zeros([2, 1], (Kind::Float, CPU)),
        b_dec: Tensor::from_slice(&[12.0f32]),
        threshold_param: None,
    };
    let norm = g.clip_norm(1.3);
    assert!((scalar(&norm) - 13.0).abs() < 1e-5);
    let coef = 1.3 / (13.0 + 1e-6);
    assert!((scalar(&g.b_dec.sum(Kind::Float)) - 12.0 * coef).abs() < 1e-6);
    // Below the limit nothing changes.
    let norm = g.clip_norm(100.0);
    assert!((scalar(&norm) - 1.3).abs() < 1e-5);
    assert!((scalar(&g.b_dec.sum(Kind::Float)) - 12.0 * coef).abs() < 1e-6);
}

/// Adam against torch.optim.Adam's update rule written out in f64.
#[test]
fn adam_matches_torch_update_rule() {
    // Big enough for the fused CPU path on the weights (≥ 2^16 elements), biases small.
    let (d, f) = (64, 1100);
    let x = random_inputs(8, d, 3);
    let mut sae = random_sae(config(Architecture::TopK, d, f, 2), &x, 3);
    let cfg = AdamConfig {
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-3,
    };
    let mut adam = Adam::new(&sae, cfg);
    let flat =
        |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view([-1])).unwrap();
    let mut p: Vec<Vec<f64>> = [&sae.w_enc, &sae.b_enc, &sae.w_dec, &sae.b_dec]
        .iter()
        .map(|t| flat(t))
        .collect();
    let mut m: Vec<Vec<f64>> = p.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut v2 = m.clone();
    for t in 1..=4 {
        let grads = saeclip::rng::seeded(100 + t, || Grads {
            // W_enc's gradient in W_enc's layout, as forward_backward makes it
            w_enc: Tensor::randn([f, d], (Kind::Float, CPU)).tr(),
            b_enc: Tensor::randn([f], (Kind::Float, CPU)),
            w_dec: Tensor::randn([f, d], (Kind::Float, CPU)),
            b_dec: Tensor::randn([d], (Kind::Float, CPU)),
            threshold_param: None,
        });
        let lr = 0.01 * t as f64;
        for (i, g) in grads.tensors().iter().enumerate() {
            let g = flat(g);
            for j in 0..g.len() {
                m[i][j] = cfg.beta1 * m[i][j] + (1.0 - cfg.beta1) * g[j];
                v2[i][j] = cfg.beta2 * v2[i][j] + (1.0 - cfg.beta2) * g[j] * g[j];
                let m_hat = m[i][j] / (1.0 - cfg.beta1.powi(t as i32));
                let v_hat = v2[i][j] / (1.0 - cfg.beta2.powi(t as i32));
                p[i][j] -= lr * m_hat / (v_hat.sqrt() + cfg.eps);
            }
        }
        adam.update(&mut sae, &grads, lr);
    }
    assert_eq!(adam.steps(), 4);
    for (i, t) in [&sae.w_enc, &sae.b_enc, &sae.w_dec, &sae.b_dec]
        .iter()
        .enumerate()
    {
        let got = flat(t);
        for (a, e) in got.iter().zip(&p[i]) {
            assert!(
                (a - e).abs() < 1e-5 * e.abs().max(1.0),
                "param {i}: {a} vs {e}"
            );
        }
    }
}

/// Gradients and Adam steps against PyTorch itself (tests/reference/sae_autograd.py).
#[test]
fn matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    // W_enc and W_dec are large enough (≥ 2^16 elements) for the fused CPU Adam.
    let (b, d, f, k) = (64, 64, 1536, 8);
    let x = random_inputs(b, d, 21);
    let mut sae = random_sae(config(Architecture::TopK, d, f, k), &x, 21);
    let dead = plant_dead(&mut sae);
    let o = LossOptions {
        k,
        k_aux: 12,
        aux_coef: 1.0 / 32.0,
        l1_coef: 0.0,
        data_variance: 0.6,
    };
    let cfg = AdamConfig {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-6,
    };
    let (steps, lr, max_norm) = (5, 3e-3, 0.05);
    let mut inputs: Vec<(String, Tensor)> = vec![
        ("x".into(), x.shallow_clone()),
        ("dead".into(), dead.to_kind(Kind::Uint8)),
        ("W_enc".into(), sae.w_enc.contiguous()),
        ("b_enc".into(), sae.b_enc.shallow_clone()),
        ("W_dec".into(), sae.w_dec.shallow_clone()),
        ("b_dec".into(), sae.b_dec.shallow_clone()),
    ];
    let mut step_grads = Vec::new();
    for t in 0..steps {
        let g = saeclip::rng::seeded(1000 + t, || Grads {
            w_enc: Tensor::randn([d, f], (Kind::Float, CPU)) * 0.01,
            b_enc: Tensor::randn([f], (Kind::Float, CPU)) * 0.01,
            w_dec: Tensor::randn([f, d], (Kind::Float, CPU)) * 0.01,
            b_dec: Tensor::randn([d], (Kind::Float, CPU)) * 0.01,
            threshold_param: None,
        });
        for (name, t2) in ["W_enc", "b_enc", "W_dec", "b_dec"].iter().zip(g.tensors()) {
            inputs.push((format!("g{t}.{name}"), t2.contiguous()));
        }
        step_grads.push(g);
    }
    let input_path = dir.path().join("in.safetensors");
    Tensor::write_safetensors(&inputs, &input_path).unwrap();
    let options = json!({
        "k": k, "k_aux": o.k_aux, "aux_coef": o.aux_coef, "data_variance": o.data_variance, "input_scale": sae.input_scale,
        "beta1": cfg.beta1, "beta2": cfg.beta2, "eps": cfg.eps,
        "steps": steps, "lr": lr, "max_norm": max_norm,
    });
    let output_path = dir.path().join("out.safetensors");
    common::run_python(
        "tests/reference/sae_autograd.py",
        &[
            "--input",
            input_path.to_str().unwrap(),
            "--options",
            &options.to_string(),
            "--output",
            output_path.to_str().unwrap(),
        ],
    );
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&output_path)
            .unwrap()
            .into_iter()
            .collect();

    let out = forward_backward(&sae, &x, Some(&dead), &o, &mut Workspace::default());
    for (name, a) in [("loss", &out.loss), ("mse", &out.mse), ("aux", &out.aux)] {
        let e = &reference[name];
        assert!(
            rel_err(a, e) < 1e-5,
            "{name}: {} vs {}",
            scalar(a),
            scalar(e)
        );
    }
    for (name, a) in ["W_enc", "b_enc", "W_dec", "b_dec"]
        .iter()
        .zip(out.grads.tensors())
    {
        let err = rel_err(a, &reference[&format!("grad.{name}")]);
        println!("vs torch autograd: d{name} {err:.2e}");
        assert!(err <= 1e-5, "d{name}: {err:e}");
    }

    let mut adam = Adam::new(&sae, cfg);
    let mut norms = Vec::new();
    for g in step_grads {
        norms.push(adam.step(&mut sae, g, lr, Some(max_norm)));
    }
    for (i, n) in norms.iter().enumerate() {
        assert!(
            rel_err(n, &reference[&format!("norm{i}")]) < 1e-6,
            "grad norm {i}"
        );
    }
    let state: std::collections::HashMap<String, Tensor> =
        adam.state_tensors().into_iter().collect();
    for (name, a) in ["W_enc", "b_enc", "W_dec", "b_dec"]
        .iter()
        .zip([&sae.w_enc, &sae.b_enc, &sae.w_dec, &sae.b_dec])
    {
        for (what, ours) in [
            ("param", a.shallow_clone()),
            ("exp_avg", state[&format!("{name}.exp_avg")].shallow_clone()),
            (
                "exp_avg_sq",
                state[&format!("{name}.exp_avg_sq")].shallow_clone(),
            ),
        ] {
            let theirs = &reference[&format!("{what}.{name}")];
            let err = rel_err(&ours, theirs);
            println!("vs torch.optim.Adam after {steps} steps: {what}.{name} rel {err:.2e} bit-identical {}", ours.equal(theirs));
            assert!(err < 1e-6, "{what}.{name} differs from torch: {err:e}");
        }
    }
}

/// x = Σ c·atom + offset + noise, `active` atoms per row with c in [0.5, 1.5].
fn planted(n: i64, d: i64, atoms: i64, active: i64, seed: i64) -> Tensor {
    saeclip::rng::seeded(seed, || {
        let dict = Tensor::randn([atoms, d], (Kind::Float, CPU));
        let dict = &dict / dict.square().sum_dim_intlist(1, true, Kind::Float).sqrt();
        let offset = Tensor::randn([d], (Kind::Float, CPU)) * 2.0;
        let (_, which) = Tensor::rand([n, atoms], (Kind::Float, CPU)).topk(active, 1, true, false);
        let coef = Tensor::rand([n, active], (Kind::Float, CPU)) + 0.5;
        let z = Tensor::zeros([n, atoms], (Kind::Float, CPU)).scatter(1, &which, &coef);
        z.mm(&dict) + offset + Tensor::randn([n, d], (Kind::Float, CPU)) * 0.01
    })
}

struct Trained {
    sae: Sae,
    first_loss: f64,
    last_loss: f64,
    threshold: ThresholdEstimator,
    dead: DeadTracker,
}

/// Train on `data` with batches of `batch` rows taken in order, cycling.
fn train(
    mut sae: Sae,
    data: &Tensor,
    batch: i64,
    steps: i64,
    lr: f64,
    o: &LossOptions,
    window: i64,
) -> Trained {
    let n = data.size()[0];
    let mut adam = Adam::new(&sae, AdamConfig::default());
    let mut dead = DeadTracker::new(sae.config.d_sae, window, CPU);
    let mut threshold = ThresholdEstimator::new(Some(0.95), CPU);
    let mut workspace = Workspace::new();
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    for step in 0..steps {
        let start = (step * batch) % n;
        let x = data.narrow(0, start, batch.min(n - start));
        let out = forward_backward(&sae, &x, Some(&dead.auxk_mask()), o, &mut workspace);
        dead.update(&out.fired, x.size()[0]);
        threshold.update(&out.min_positive);
        if step == 0 {
            first_loss = scalar(&out.mse);
        }
        last_loss = scalar(&out.mse);
        let _ = adam.step(&mut sae, out.grads, lr, Some(1.0));
    }
    Trained {
        sae,
        first_loss,
        last_loss,
        threshold,
        dead,
    }
}

fn evr_of(sae: &Sae, data: &Tensor) -> f64 {
    let mut evr = Evr::new(sae.config.d_in, CPU);
    for x in data.split(512, 0) {
        evr.update(&x, &sae.reconstruct(&x));
    }
    evr.evr()
}

#[test]
fn training_recovers_a_planted_dictionary() {
    let (d, atoms, active) = (32, 64, 3);
    let data = planted(8192, d, atoms, active, 1);
    for arch in [
        Architecture::TopK,
        Architecture::BatchTopK,
        Architecture::Relu,
    ] {
        let k = if arch == Architecture::Relu {
            0
        } else {
            active + 1
        };
        let sae = Sae::init(
            &config(arch, d, 128, k.max(1)),
            &data.narrow(0, 0, 2048),
            BdecInit::GeometricMedian,
            0,
        )
        .unwrap();
        let o = LossOptions {
            k: k.max(1),
            k_aux: 16,
            aux_coef: 1.0 / 32.0,
            l1_coef: 1e-3,
            data_variance: 1.0,
        };
        let t = train(sae, &data, 256, 400, 3e-3, &o, 4096);
        let mut sae = t.sae;
        if arch == Architecture::BatchTopK {
            sae.threshold = t.threshold.value();
        }
        let held_out = data.narrow(0, 6144, 2048);
        let evr = evr_of(&sae, &held_out);
        println!(
            "{arch}: mse {:.4} -> {:.4}, evr {evr:.3}",
            t.first_loss, t.last_loss
        );
        assert!(
            t.last_loss < 0.5 * t.first_loss,
            "{arch}: the loss did not fall"
        );
        assert!(evr > 0.8, "{arch}: evr {evr}");
    }
}

#[test]
fn batchtopk_threshold_gives_l0_near_k() {
    let (d, atoms, active, k) = (32, 64, 3, 4);
    let data = planted(8192, d, atoms, active, 2);
    let sae = Sae::init(
        &config(Architecture::BatchTopK, d, 128, k),
        &data.narrow(0, 0, 2048),
        BdecInit::Mean,
        0,
    )
    .unwrap();
    let o = LossOptions {
        k,
        k_aux: 0,
        aux_coef: 0.0,
        l1_coef: 0.0,
        data_variance: 1.0,
    };
    let t = train(sae, &data.narrow(0, 0, 6144), 256, 300, 3e-3, &o, 1 << 40);
    let mut sae = t.sae;
    let theta = t.threshold.value().unwrap();
    sae.threshold = Some(theta);
    assert_eq!(sae.inference_selection(), Selection::Threshold(theta));
    let held_out = data.narrow(0, 6144, 2048);
    let codes = sae.encode_sparse(&held_out, sae.inference_selection());
    let l0 = scalar(&codes.l0());
    println!("batchtopk: θ = {theta:.4}, inference l0 = {l0:.3} (k = {k})");
    assert!((l0 - k as f64).abs() < 0.25 * k as f64, "l0 {l0}");
    let dense = sae.encode(&held_out);
    assert!(dense.equal(&codes.to_dense()));
}

#[test]
fn auxk_revives_dead_latents() {
    let (d, atoms, active, f, k) = (32, 96, 3, 128, 3);
    let data = planted(8192, d, atoms, active, 3);
    let mut runs = Vec::new();
    for k_aux in [0, 32] {
        let mut sae = Sae::init(
            &config(Architecture::TopK, d, f, k),
            &data.narrow(0, 0, 2048),
            BdecInit::Mean,
            0,
        )
        .unwrap();
        // Plant 32 dead latents: tiny encoder columns, so they never make the top k.
        let planted_dead = Tensor::arange_start(f - 32, f, (Kind::Int64, CPU));
        let mut scale = Tensor::ones([f], (Kind::Float, CPU));
        let _ = scale.index_fill_(0, &planted_dead, 0.01);
        sae.w_enc = sae.w_enc.copy() * scale.unsqueeze(0);
        sae.w_enc = saeclip::sae::model::encoder_layout(&sae.w_enc);
        let before = sae
            .encode_sparse(&data, Selection::TopK(k))
            .fired()
            .index_select(0, &planted_dead);
        assert_eq!(
            scalar(&before.sum(Kind::Int64)),
            0.0,
            "planted latents fire at the start"
        );
        let o = LossOptions {
            k,
            k_aux,
            aux_coef: 1.0 / 32.0,
            l1_coef: 0.0,
            data_variance: 1.0,
        };
        let t = train(sae, &data, 256, 400, 3e-3, &o, 2048);
        let fired = t
            .sae
            .encode_sparse(&data, Selection::TopK(k))
            .fired()
            .index_select(0, &planted_dead);
        let revived = scalar(&fired.gt(0).sum(Kind::Int64));
        println!(
            "k_aux {k_aux}: {revived}/32 planted dead latents fire after training, dead now {:.3}",
            scalar(&t.dead.dead_fraction())
        );
        runs.push(revived);
    }
    assert_eq!(runs[0], 0.0, "without AuxK the planted latents stay dead");
    assert!(runs[1] >= 16.0, "AuxK revived only {} of 32", runs[1]);
}

#[test]
fn training_is_deterministic_on_cpu() {
    let data = planted(4096, 32, 96, 3, 8);
    let run = || {
        let sae = Sae::init(
            &config(Architecture::BatchTopK, 32, 256, 4),
            &data.narrow(0, 0, 2048),
            BdecInit::GeometricMedian,
            1,
        )
        .unwrap();
        let o = LossOptions {
            k: 4,
            k_aux: 32,
            aux_coef: 1.0 / 32.0,
            l1_coef: 0.0,
            data_variance: 1.0,
        };
        train(sae, &data, 512, 40, 3e-3, &o, 1024).sae
    };
    let (a, b) = (run(), run());
    for (x, y) in [
        (&a.w_enc, &b.w_enc),
        (&a.b_enc, &b.b_enc),
        (&a.w_dec, &b.w_dec),
        (&a.b_dec, &b.b_dec),
    ] {
        assert!(x.equal(y), "two runs from the same seed differ");
    }
}

#[test]
fn metrics_match_direct_computation() {
    let batches: Vec<(Tensor, Tensor)> = saeclip::rng::seeded(4, || {
        [7i64, 5, 1, 9]
            .iter()
            .map(|&b| {
                let x = Tensor::randn([b, 3], (Kind::Float, CPU)) * 2.0 + 1.0;
                let x_hat = &x + Tensor::randn([b, 3], (Kind::Float, CPU)) * 0.5;
                (x, x_hat)
            })
            .collect()
    });
    let mut evr = Evr::new(3, CPU);
    for (x, x_hat) in &batches {
        evr.update(x, x_hat);
    }
    let rows = |t: &Tensor| Vec::<Vec<f64>>::try_from(t.to_kind(Kind::Double)).unwrap();
    let all_x: Vec<Vec<f64>> = batches.iter().flat_map(|(x, _)| rows(x)).collect();
    let all_r: Vec<Vec<f64>> = batches
        .iter()
        .flat_map(|(x, h)| {
            rows(x)
                .into_iter()
                .zip(rows(h))
                .map(|(a, b)| a.iter().zip(&b).map(|(u, v)| u - v).collect::<Vec<f64>>())
                .collect::<Vec<_>>()
        })
        .collect();
    let n = all_x.len() as f64;
    let mean: Vec<f64> = (0..3)
        .map(|j| all_x.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let total: f64 = all_x
        .iter()
        .map(|r| (0..3).map(|j| (r[j] - mean[j]).powi(2)).sum::<f64>())
        .sum();
    let err: f64 = all_r
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f64>())
        .sum();
    assert!((evr.evr() - (1.0 - err / total)).abs() < 1e-9);
    assert_eq!(evr.rows(), 22);
    // evr_seed: per batch of ≥ 2 rows, unbiased variances.
    let var = |m: &[Vec<f64>], j: usize| {
        let mu = m.iter().map(|r| r[j]).sum::<f64>() / m.len() as f64;
        m.iter().map(|r| (r[j] - mu).powi(2)).sum::<f64>() / (m.len() - 1) as f64
    };
    let mut seed = Vec::new();
    for (x, h) in &batches {
        if x.size()[0] < 2 {
            continue;
        }
        let xr = rows(x);
        let rr: Vec<Vec<f64>> = xr
            .iter()
            .zip(rows(h))
            .map(|(a, b)| a.iter().zip(&b).map(|(u, v)| u - v).collect())
            .collect();
        let num = (0..3).map(|j| var(&rr, j)).sum::<f64>() / 3.0;
        let den = (0..3).map(|j| var(&xr, j)).sum::<f64>() / 3.0;
        seed.push(1.0 - num / den);
    }
    let expect = seed.iter().sum::<f64>() / seed.len() as f64;
    assert!(
        (evr.evr_seed() - expect).abs() < 1e-9,
        "{} vs {expect}",
        evr.evr_seed()
    );

    // l0 and firing counts from codes.
    let pre = Tensor::from_slice(&[1.0f32, -1.0, 2.0, 0.0, 3.0, 4.0]).view([2, 3]);
    let codes = select(&pre, Selection::TopK(2));
    let mut firing = Firing::new(3, CPU);
    firing.update(&codes.fired(), 2);
    assert_eq!(Vec::<i64>::try_from(&firing.counts).unwrap(), vec![1, 1, 2]);
    assert!((firing.l0() - 2.0).abs() < 1e-12);
    assert_eq!(firing.dead_fraction(), 0.0);
}

fn meta() -> CheckpointMeta {
    CheckpointMeta {
        clip: json!({"model": "openai/clip-vit-base-patch32", "sha256": "ab", "layer": 11, "tokens": "cls"}),
        training: json!({"lr": 2e-4}),
        metrics: json!({"val_evr": 0.9}),
    }
}

#[test]
fn checkpoint_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let x = random_inputs(64, 16, 5);
    let mut sae = random_sae(config(Architecture::BatchTopK, 16, 48, 4), &x, 5);
    sae.threshold = Some(0.123456789);
    let o = LossOptions {
        k: 4,
        k_aux: 8,
        aux_coef: 0.03,
        l1_coef: 0.0,
        data_variance: 1.0,
    };
    let mut adam = Adam::new(
        &sae,
        AdamConfig {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-7,
        },
    );
    let mut est = ThresholdEstimator::new(Some(0.9), CPU);
    let mut dead = DeadTracker::new(48, 100, CPU);
    let batches: Vec<Tensor> = (0..6).map(|i| random_inputs(32, 16, 50 + i)).collect();
    let step = |sae: &mut Sae,
                adam: &mut Adam,
                est: &mut ThresholdEstimator,
                dead: &mut DeadTracker,
                x: &Tensor| {
        let out = forward_backward(
            sae,
            x,
            Some(&dead.auxk_mask()),
            &o,
            &mut Workspace::default(),
        );
        dead.update(&out.fired, 32);
        est.update(&out.min_positive);
        let _ = adam.step(sae, out.grads, 1e-3, Some(1.0));
    };
    for x in &batches[..3] {
        step(&mut sae, &mut adam, &mut est, &mut dead, x);
    }
    let path = dir.path().join("run/last.safetensors");
    let state = TrainingStateRef {
        step: 3,
        epoch: 1,
        adam: &adam,
        threshold: Some(&est),
        tensors: vec![("rows_since_fired".into(), &dead.rows_since_fired)],
        extra: json!({"best_val_evr": 0.5}),
    };
    checkpoint::save(&path, &sae, &meta(), Some(&state), Kind::Float).unwrap();
    let loaded = checkpoint::load(&path, CPU).unwrap();
    assert_eq!(loaded.meta, meta());
    assert_eq!(loaded.sae.config, sae.config);
    assert_eq!(loaded.sae.input_scale, sae.input_scale);
    assert_eq!(loaded.sae.threshold, Some(0.123456789));
    for (a, b) in [
        (&loaded.sae.w_enc, &sae.w_enc),
        (&loaded.sae.b_enc, &sae.b_enc),
        (&loaded.sae.w_dec, &sae.w_dec),
        (&loaded.sae.b_dec, &sae.b_dec),
    ] {
        assert!(a.equal(b));
    }
    assert_eq!(loaded.sae.w_enc.stride(), sae.w_enc.stride());
    let mut resumed = loaded.training.unwrap();
    assert_eq!((resumed.step, resumed.epoch), (3, 1));
    assert_eq!(resumed.extra, json!({"best_val_evr": 0.5}));
    assert_eq!(resumed.adam.steps(), 3);
    assert_eq!(resumed.adam.config, adam.config);
    for ((n1, a), (n2, b)) in resumed
        .adam
        .state_tensors()
        .iter()
        .zip(adam.state_tensors())
    {
        assert_eq!(n1, &n2);
        assert!(a.equal(&b), "{n1}");
    }
    assert_eq!(resumed.threshold.as_ref().unwrap().value(), est.value());
    assert_eq!(resumed.tensors[0].0, "rows_since_fired");

    // Continue both: bit-identical.
    let mut sae2 = loaded.sae;
    let mut adam2 = resumed.adam;
    let mut est2 = resumed.threshold.take().unwrap();
    let mut dead2 = DeadTracker {
        rows_since_fired: resumed.tensors.remove(0).1,
        window: 100,
        rows_seen: dead.rows_seen,
    };
    for x in &batches[3..] {
        step(&mut sae, &mut adam, &mut est, &mut dead, x);
        step(&mut sae2, &mut adam2, &mut est2, &mut dead2, x);
    }
    for (a, b) in [
        (&sae2.w_enc, &sae.w_enc),
        (&sae2.b_enc, &sae.b_enc),
        (&sae2.w_dec, &sae.w_dec),
        (&sae2.b_dec, &sae.b_dec),
    ] {
        assert!(a.equal(b), "the resumed run diverged");
    }
    assert_eq!(est2.value(), est.value());

    // Inference checkpoints: no optimizer, smaller dtypes.
    let small = dir.path().join("small.safetensors");
    checkpoint::save(&small, &sae, &meta(), None, Kind::Half).unwrap();
    let (half, m) = checkpoint::load_sae(&small, CPU).unwrap();
    assert_eq!(m, meta());
    assert!(rel_err(&half.w_dec, &sae.w_dec) < 1e-3);
    assert!(checkpoint::load(&small, CPU).unwrap().training.is_none());
    let err =
        checkpoint::save(&small, &sae, &meta(), Some(&state_of(&adam)), Kind::Half).unwrap_err();
    assert!(err.to_string().contains("f32"), "{err}");
    // A training checkpoint read as an inference one.
    let (plain, _) = checkpoint::load_sae(&path, CPU).unwrap();
    assert!(plain.w_dec.equal(&sae_at(&path).w_dec));
}

fn state_of(adam: &Adam) -> TrainingStateRef<'_> {
    TrainingStateRef {
        step: 0,
        epoch: 0,
        adam,
        threshold: None,
        tensors: vec![],
        extra: json!(null),
    }
}

fn sae_at(path: &Path) -> Sae {
    checkpoint::load(path, CPU).unwrap().sae
}

/// Rewrite a checkpoint with another header and/or without some tensors.
fn rewrite(
    src: &Path,
    dst: &Path,
    header: impl Fn(&mut serde_json::Value),
    drop_tensor: Option<&str>,
) {
    let bytes = std::fs::read(src).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut value: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["saeclip"]).unwrap();
    header(&mut value);
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| Some(n.as_str()) != drop_tensor)
        .collect();
    let md = std::collections::HashMap::from([("saeclip".to_string(), value.to_string())]);
    safetensors::serialize_to_file(tensors, Some(md), dst).unwrap();
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let x = random_inputs(16, 8, 6);
    let sae = random_sae(config(Architecture::TopK, 8, 24, 3), &x, 6);
    let good = dir.path().join("good.safetensors");
    checkpoint::save(&good, &sae, &meta(), None, Kind::Float).unwrap();
    let expect = |path: &Path, needle: &str| {
        let err = format!("{:#}", checkpoint::load(path, CPU).unwrap_err());
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
        assert!(
            err.contains(&path.display().to_string()),
            "the error does not name the file: {err}"
        );
    };
    expect(&dir.path().join("missing.safetensors"), "cannot open");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    expect(&garbage, "not a valid safetensors file");
    let truncated = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    expect(&truncated, "not a valid safetensors file");
    let plain = dir.path().join("plain.safetensors");
    Tensor::write_safetensors(&[("W_enc", &sae.w_enc.contiguous())], &plain).unwrap();
    expect(&plain, "no `saeclip` metadata");
    let future = dir.path().join("future.safetensors");
    rewrite(&good, &future, |h| h["version"] = json!(99), None);
    expect(&future, "unknown SAE checkpoint version 99");
    let wrong = dir.path().join("wrong.safetensors");
    rewrite(&good, &wrong, |h| h["d_sae"] = json!(32), None);
    expect(&wrong, "tensor W_enc has shape [8, 24], expected [8, 32]");
    let arch = dir.path().join("arch.safetensors");
    rewrite(&good, &arch, |h| h["architecture"] = json!("gated"), None);
    expect(&arch, "unknown variant `gated`");
    let missing = dir.path().join("missing_tensor.safetensors");
    rewrite(&good, &missing, |_| {}, Some("b_dec"));
    expect(&missing, "tensor b_dec is missing");
    let no_state = dir.path().join("no_state.safetensors");
    let adam = Adam::new(&sae, AdamConfig::default());
    checkpoint::save(
        &no_state,
        &sae,
        &meta(),
        Some(&state_of(&adam)),
        Kind::Float,
    )
    .unwrap();
    rewrite(
        &no_state.clone(),
        &no_state,
        |h| {
            h.as_object_mut().unwrap().remove("state");
        },
        None,
    );
    expect(&no_state, "unexpected tensors optim.W_dec.exp_avg");
    let bad_optim = dir.path().join("bad_optim.safetensors");
    checkpoint::save(
        &bad_optim,
        &sae,
        &meta(),
        Some(&state_of(&adam)),
        Kind::Float,
    )
    .unwrap();
    rewrite(
        &bad_optim.clone(),
        &bad_optim,
        |_| {},
        Some("optim.b_enc.exp_avg_sq"),
    );
    expect(&bad_optim, "tensor optim.b_enc.exp_avg_sq is missing");
}
