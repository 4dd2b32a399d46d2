//! Time of one SAE training step (forward, backward, Adam) at ViT-B/32 scale: saeclip's
//! hand-written sparse backward against the same loss through dense tch autograd
//! (tests/common/dense.rs, which tests/sae_core.rs checks the sparse gradients against).
//!
//! ```text
//! make bench-step
//! cargo bench --bench sae_step [-- --threads N] [--architectures-only] [--phases-only]
//! ```
//!
//! First, the step by phase (encoder GEMM, selection, decode, backward, AuxK, Adam,
//! bookkeeping) at the ground-truth bench's size (d_in 256, 2,048 latents, k 16, batch
//! 1,024) and at ViT-B/32 scale, at one and two threads, with the GEMM-only bound
//! (rows/s if the encoder GEMM were the whole step) and the GEMM's share of the step.
//!
//! Batch 4,096 rows of width 768, 16,384 latents, k = 64; each line is the fastest of 5
//! runs after a warm-up (the machine may be shared, and interference only adds time).

#[allow(dead_code)] // the bench reads the gradients only
#[path = "../tests/common/dense.rs"]
mod dense;

use std::time::Instant;

use dense::dense_reference;
use saeclip::sae::*;
use tch::{Device, Kind, Tensor};

/// `--threads N` from the command line (cargo bench also passes `--bench`, ignored).
fn threads_arg() -> Option<i32> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--threads")?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let (b, d, f, k) = (4096, 768, 16384, 64);
    if let Some(n) = threads_arg() {
        tch::set_num_threads(n);
    }
    let threads = tch::get_num_threads();
    for (d, f, k, b) in [(256, 2048, 16, 1024), (768, 16384, 64, 4096)] {
        for t in [1, 2] {
            tch::set_num_threads(t);
            phases(d, f, k, b, t);
        }
    }
    tch::set_num_threads(threads);
    if std::env::args().any(|a| a == "--phases-only") {
        return;
    }
    topk_against_batchtopk(threads);
    if std::env::args().any(|a| a == "--architectures-only") {
        return;
    }
    let x = saeclip::rng::seeded(9, || {
        let offset = Tensor::randn([d], (Kind::Float, Device::Cpu)) * 3.0;
        Tensor::randn([b, d], (Kind::Float, Device::Cpu)) + offset
    });
    let mut sae = Sae::init(
        &SaeConfig {
            architecture: Architecture::TopK,
            d_in: d,
            d_sae: f,
            k,
        },
        &x,
        BdecInit::Mean,
        0,
    )
    .unwrap();
    let mut adam = Adam::new(&sae, AdamConfig::default());
    let o = LossOptions {
        k,
        k_aux: 0,
        aux_coef: 0.0,
        l1_coef: 0.0,
        data_variance: 1.0,
    };
    let dead_mask = Tensor::zeros([f], (Kind::Bool, Device::Cpu));
    let _ = dead_mask.narrow(0, 0, f / 8).fill_(1);
    let o_aux = LossOptions {
        k_aux: 384,
        aux_coef: 1.0 / 32.0,
        ..o
    };
    let mut ws = Workspace::new();
    let reps = 5;
    // The fastest of a few runs: the machine is shared, and interference only adds time.
    let time = |label: &str, run: &mut dyn FnMut()| {
        run(); // warm up
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let start = Instant::now();
            run();
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!("{label:52} {:8.1} ms/step", best * 1e3);
        best
    };
    println!("B = {b}, d_in = {d}, d_sae = {f}, k = {k}, {threads} threads");
    let sparse = time("sparse forward+backward+adam (topk)", &mut || {
        let out = forward_backward(&sae, &x, None, &o, &mut ws);
        let _ = adam.step(&mut sae, out.grads, 1e-4, Some(1.0));
    });
    time("  sparse forward+backward only", &mut || {
        let _ = forward_backward(&sae, &x, None, &o, &mut ws);
    });
    time("  adam step only", &mut || {
        let out_grads = Grads {
            w_enc: sae.w_enc.zeros_like(),
            b_enc: sae.b_enc.zeros_like(),
            w_dec: sae.w_dec.zeros_like(),
            b_dec: sae.b_dec.zeros_like(),
            threshold_param: None,
        };
        let _ = adam.step(&mut sae, out_grads, 1e-4, Some(1.0));
    });
    time(
        "  encoder matmul alone (fresh output, as at inference)",
        &mut || {
            let _ = sae.pre_activations(&x);
        },
    );
    time(
        "sparse forward+backward+adam (topk, AuxK 1/8 dead)",
        &mut || {
            let out = forward_backward(&sae, &x, Some(&dead_mask), &o_aux, &mut ws);
            let _ = adam.step(&mut sae, out.grads, 1e-4, Some(1.0));
        },
    );
    let mut sae_b = sae.copy();
    sae_b.config.architecture = Architecture::BatchTopK;
    time("sparse forward+backward+adam (batchtopk)", &mut || {
        let out = forward_backward(&sae_b, &x, None, &o, &mut ws);
        let _ = adam.step(&mut sae_b, out.grads, 1e-4, Some(1.0));
    });
    // The dense version keeps W_enc contiguous, the layout its gradient comes in.
    let mut sae_d = sae.copy();
    sae_d.w_enc = sae_d.w_enc.contiguous();
    let mut adam_d = Adam::new(&sae_d, AdamConfig::default());
    let dense = time("dense autograd forward+backward+adam (topk)", &mut || {
        let r = dense_reference(&sae_d, &x, None, &o);
        let [w_enc, b_enc, w_dec, b_dec] = r.grads;
        let _ = adam_d.step(
            &mut sae_d,
            Grads {
                w_enc,
                b_enc,
                w_dec,
                b_dec,
                threshold_param: None,
            },
            1e-4,
            Some(1.0),
        );
    });
    time("  dense autograd forward+backward only", &mut || {
        let _ = dense_reference(&sae_d, &x, None, &o);
    });
    println!("speed-up {:.2}x", dense / sparse);
}

/// Rows/s of a whole training step for topk and batchtopk at the same size (2,048 latents,
/// batch 1,024, k = 32, d_in 64 where the selection dominates and 768 where the matmuls do),
/// and of the selection alone, on two kinds of rows: i.i.d. normal rows around a common
/// offset, and the same rows with their deviations scaled by Exp(1) factors, so that a few
/// rows hold many of the batch's largest pre-activations (as after training, where rows'
/// norms differ widely): the case that makes batch top-k's exact search take several rounds.
///
/// The two architectures' steps alternate within each repetition, so that load from other
/// processes on a shared machine falls on both alike; each time is the fastest of 20.
fn topk_against_batchtopk(threads: i32) {
    for scaled in [false, true] {
        for d in [64, 768] {
            topk_against_batchtopk_at(threads, d, scaled);
        }
    }
}

fn topk_against_batchtopk_at(threads: i32, d: i64, scaled: bool) {
    let (b, f, k) = (1024, 2048, 32);
    let x = saeclip::rng::seeded(10, || {
        let offset = Tensor::randn([d], (Kind::Float, Device::Cpu)) * 3.0;
        let deviations = Tensor::randn([b, d], (Kind::Float, Device::Cpu));
        let deviations = if scaled {
            deviations * Tensor::empty([b, 1], (Kind::Float, Device::Cpu)).exponential_(1.0)
        } else {
            deviations
        };
        deviations + offset
    });
    let o = LossOptions {
        k,
        k_aux: 0,
        aux_coef: 0.0,
        l1_coef: 0.0,
        data_variance: 1.0,
    };
    let rows = if scaled {
        "rows scaled by Exp(1)"
    } else {
        "normal rows"
    };
    println!("B = {b}, d_in = {d}, d_sae = {f}, k = {k}, {threads} threads, {rows}");
    let archs = [Architecture::TopK, Architecture::BatchTopK];
    let mut saes: Vec<Sae> = archs
        .iter()
        .map(|&architecture| {
            let config = SaeConfig {
                architecture,
                d_in: d,
                d_sae: f,
                k,
            };
            Sae::init(&config, &x, BdecInit::Mean, 0).unwrap()
        })
        .collect();
    let mut adams: Vec<Adam> = saes
        .iter()
        .map(|s| Adam::new(s, AdamConfig::default()))
        .collect();
    let mut workspaces = [Workspace::new(), Workspace::new()];
    let mut step = |i: usize| {
        let out = forward_backward(&saes[i], &x, None, &o, &mut workspaces[i]);
        let _ = adams[i].step(&mut saes[i], out.grads, 1e-4, Some(1.0));
    };
    let steps = fastest_alternating(20, &mut step);
    let pres: Vec<(Tensor, Selection)> = saes
        .iter()
        .map(|s| (s.pre_activations(&x), s.training_selection(k)))
        .collect();
    let selects = fastest_alternating(20, &mut |i: usize| {
        let _ = saeclip::sae::model::select(&pres[i].0, pres[i].1);
    });
    for (i, arch) in archs.iter().enumerate() {
        println!(
            "{arch:10} step {:7.2} ms ({:8.0} rows/s), selection alone {:6.2} ms",
            steps[i] * 1e3,
            b as f64 / steps[i],
            selects[i] * 1e3
        );
    }
    println!(
        "topk rows/s ÷ batchtopk rows/s = {:.2}",
        steps[1] / steps[0]
    );
}

/// The fastest of `reps` runs of `run(0)` and of `run(1)`, run alternately after a
/// warm-up of each, in seconds.
fn fastest_alternating(reps: usize, run: &mut dyn FnMut(usize)) -> [f64; 2] {
    let mut best = [f64::INFINITY; 2];
    run(0);
    run(1);
    for _ in 0..reps {
        for (i, best) in best.iter_mut().enumerate() {
            let start = Instant::now();
            run(i);
            *best = best.min(start.elapsed().as_secs_f64());
        }
    }
    best
}

/// The step by phase, each the fastest of a few runs: the encoder GEMM (into a reused
/// buffer, as the step does), the selection (saeclip's, and torch.topk's for comparison),
/// the sparse decode, the rest of forward+backward ("backward": the step without AuxK less
/// the three before), AuxK (the step with 1/8 of the latents dead less the step without),
/// Adam, and the training loop's bookkeeping (dead-latent tracker).
fn phases(d: i64, f: i64, k: i64, b: i64, threads: i32) {
    let x = saeclip::rng::seeded(11, || {
        let offset = Tensor::randn([d], (Kind::Float, Device::Cpu)) * 3.0;
        Tensor::randn([b, d], (Kind::Float, Device::Cpu)) + offset
    });
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: d,
        d_sae: f,
        k,
    };
    let mut sae = Sae::init(&config, &x, BdecInit::Mean, 0).unwrap();
    let mut adam = Adam::new(&sae, AdamConfig::default());
    let o = LossOptions {
        k,
        k_aux: 0,
        aux_coef: 0.0,
        l1_coef: 0.0,
        data_variance: 1.0,
    };
    let o_aux = LossOptions {
        k_aux: (d / 2).min(f / 8),
        aux_coef: 1.0 / 32.0,
        ..o
    };
    let dead_mask = Tensor::zeros([f], (Kind::Bool, Device::Cpu));
    let _ = dead_mask.narrow(0, 0, f / 8).fill_(1);
    let mut tracker = DeadTracker::new(f, 10 * b, Device::Cpu);
    let mut ws = Workspace::new();
    let reps = if f > 4096 { 3 } else { 10 };
    let best = |run: &mut dyn FnMut()| {
        run();
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let start = Instant::now();
            run();
            best = best.min(start.elapsed().as_secs_f64());
        }
        best
    };
    let xc = sae.scale_input(&x) - &sae.b_dec;
    let pre = Tensor::empty([b, f], (Kind::Float, Device::Cpu));
    let gemm = best(&mut || {
        let _ = sae.b_enc.addmm_out(&pre, &xc, &sae.w_enc);
    });
    let selection = Selection::TopK(k);
    let select = best(&mut || {
        let _ = saeclip::sae::model::select(&pre, selection);
    });
    let torch_topk = best(&mut || {
        let _ = pre.topk(k, 1, true, false);
    });
    let codes = saeclip::sae::model::select(&pre, selection);
    let decode = best(&mut || {
        let _ = sae.decode_sparse(&codes);
    });
    let fwd_bwd = best(&mut || {
        let _ = forward_backward(&sae, &x, None, &o, &mut ws);
    });
    let fwd_bwd_aux = best(&mut || {
        let _ = forward_backward(&sae, &x, Some(&dead_mask), &o_aux, &mut ws);
    });
    let out = forward_backward(&sae, &x, None, &o, &mut ws);
    let fired = out.fired.shallow_clone();
    let adam_t = best(&mut || {
        let grads = Grads {
            w_enc: out.grads.w_enc.shallow_clone(),
            b_enc: out.grads.b_enc.shallow_clone(),
            w_dec: out.grads.w_dec.shallow_clone(),
            b_dec: out.grads.b_dec.shallow_clone(),
            threshold_param: None,
        };
        let _ = adam.step(&mut sae, grads, 1e-6, Some(1.0));
    });
    let book = best(&mut || {
        tracker.update(&fired, b);
        let _ = tracker.auxk_mask();
    });
    let step = best(&mut || {
        let out = forward_backward(&sae, &x, Some(&tracker.auxk_mask()), &o_aux, &mut ws);
        tracker.update(&out.fired, b);
        let _ = adam.step(&mut sae, out.grads, 1e-6, Some(1.0));
    });
    let step_aux = best(&mut || {
        let out = forward_backward(&sae, &x, Some(&dead_mask), &o_aux, &mut ws);
        tracker.update(&out.fired, b);
        let _ = adam.step(&mut sae, out.grads, 1e-6, Some(1.0));
    });
    let backward = fwd_bwd - gemm - select - decode;
    println!(
        "phases: B = {b}, d_in = {d}, d_sae = {f}, k = {k}, {threads} thread(s), k_aux = {}",
        o_aux.k_aux
    );
    let ms = |t: f64| t * 1e3;
    for (label, t) in [
        ("encoder GEMM", gemm),
        ("selection (saeclip)", select),
        ("  torch.topk, for comparison", torch_topk),
        ("decode", decode),
        ("backward (rest of forward+backward)", backward),
        ("AuxK (1/8 dead)", fwd_bwd_aux - fwd_bwd),
        ("optimizer (Adam)", adam_t),
        ("bookkeeping (dead tracker)", book),
    ] {
        println!("  {label:40} {:8.2} ms", ms(t));
    }
    for (label, t) in [
        ("whole step, no latent dead", step),
        ("whole step, 1/8 dead (AuxK)", step_aux),
    ] {
        println!(
            "  {label:40} {:8.2} ms  {:8.0} rows/s  GEMM share {:4.0}%",
            ms(t),
            b as f64 / t,
            100.0 * gemm / t
        );
    }
    println!("  GEMM-only bound {:8.0} rows/s", b as f64 / gemm);
}
