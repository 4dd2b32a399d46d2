//! Adam on the SAE's four parameters, written out so that its state can be saved and
//! resumed bit for bit, plus the decoder constraint around each step.
//!
//! The update is torch.optim.Adam's single-tensor path (no weight decay, no amsgrad):
//! ```text
//! t += 1
//! m = lerp(m, g, 1 − β1)
//! v = β2·v + (1 − β2)·g·g
//! p += (−lr/(1 − β1ᵗ))·m / (√v / √(1 − β2ᵗ) + ε)
//! ```
//! On the CPU, each large parameter is updated in one fused pass over memory, three times
//! faster than libtorch's nine elementwise kernels; it evaluates the same f32 formulas and
//! agrees with torch to the last bit or two (tests/sae_core.rs `matches_pytorch`: W_enc
//! bit-identical, W_dec within 2e-7 after five steps). Small parameters and other devices
//! use libtorch ops in torch's order, which are bit-identical to torch.optim.Adam.
//! Either way a run is deterministic, so a resumed run repeats bit for bit.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::sae::model::{encoder_layout, normalize_rows, Sae};
use crate::sae::objective::Grads;

/// Parameter names, as in the checkpoint (SAELens's).
pub const PARAMS: [&str; 4] = ["W_enc", "b_enc", "W_dec", "b_dec"];
/// The names of `sae`'s parameters: [`PARAMS`], then for jumprelu its threshold
/// parameter's (`log_threshold` or `threshold`: [`Sae::threshold_kind`]).
pub fn param_names(sae: &Sae) -> Vec<&'static str> {
    let mut out = PARAMS.to_vec();
    if sae.threshold_param.is_some() {
        out.push(sae.threshold_kind().tensor_name());
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    /// torch.optim.Adam's defaults.
    fn default() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam's state: the step count and two moments per parameter (order of [`PARAMS`]),
/// each laid out like its parameter.
///
/// Two scratch buffers the size of the largest parameter hold every temporary of a step:
/// fresh tensors of that size would each pay a page fault per 4 KiB on first touch (glibc
/// maps allocations above 32 MiB afresh every time), which costs more than the arithmetic.
#[derive(Debug)]
pub struct Adam {
    pub config: AdamConfig,
    steps: i64,
    /// The parameters' names ([`param_names`]), for the state's tensors.
    names: Vec<&'static str>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    scratch: [Tensor; 2],
}

fn scratch_for(params: Vec<&Tensor>) -> [Tensor; 2] {
    let numel = params.iter().map(|p| p.numel()).max().unwrap_or(0) as i64;
    let options = (Kind::Float, params[0].device());
    [
        Tensor::empty([numel], options),
        Tensor::empty([numel], options),
    ]
}

/// A view of `buffer` shaped and laid out like `like`.
fn view_like(buffer: &Tensor, like: &Tensor) -> Tensor {
    buffer.as_strided(like.size(), like.stride(), 0)
}

fn params(sae: &Sae) -> Vec<&Tensor> {
    let mut out = vec![&sae.w_enc, &sae.b_enc, &sae.w_dec, &sae.b_dec];
    out.extend(sae.threshold_param.as_ref());
    out
}

fn params_mut(sae: &mut Sae) -> Vec<&mut Tensor> {
    let mut out = vec![
        &mut sae.w_enc,
        &mut sae.b_enc,
        &mut sae.w_dec,
        &mut sae.b_dec,
    ];
    out.extend(sae.threshold_param.as_mut());
    out
}

/// The scalars of one update, formed in f64 as torch.optim.Adam forms them in Python.
#[derive(Debug, Clone, Copy)]
struct Coefficients {
    /// 1 − β1, lerp's weight.
    weight1: f64,
    beta2: f64,
    /// 1 − β2
    weight2: f64,
    /// √(1 − β2ᵗ)
    bias_correction2_sqrt: f64,
    eps: f64,
    /// −lr/(1 − β1ᵗ)
    neg_step_size: f64,
}

impl Coefficients {
    fn new(config: AdamConfig, steps: i64, lr: f64) -> Coefficients {
        let AdamConfig { beta1, beta2, eps } = config;
        // As torch: Python's float `**` (C pow), not repeated multiplication.
        let t = steps as f64;
        Coefficients {
            weight1: 1.0 - beta1,
            beta2,
            weight2: 1.0 - beta2,
            bias_correction2_sqrt: (1.0 - beta2.powf(t)).powf(0.5),
            eps,
            neg_step_size: -(lr / (1.0 - beta1.powf(t))),
        }
    }
}

/// torch.optim.Adam's single-tensor update with libtorch's ops, operation for operation
/// (bit-identical to torch on the same machine). `t1`, `t2`: scratch laid out like `p`.
fn update_tensors(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    c: &Coefficients,
    t1: &Tensor,
    t2: &Tensor,
) {
    let _ = m.lerp_(g, c.weight1);
    // torch: v.mul_(β2).addcmul_(g, g, value = 1 − β2), whose kernel forms (value·g)·g + v;
    // tch's addcmul_ has no value, so value·g is formed first.
    let _ = v.g_mul_scalar_(c.beta2);
    let _ = v.addcmul_(&g.mul_scalar_out(t1, c.weight2), g);
    let mut denom = v.sqrt_out(t2);
    let _ = denom
        .g_div_scalar_(c.bias_correction2_sqrt)
        .g_add_scalar_(c.eps);
    // torch: p.addcdiv_(m, denom, value = −step_size), i.e. p + (value·m)/denom.
    let _ = p.addcdiv_(&m.mul_scalar_out(t1, c.neg_step_size), &denom);
}

/// Whether `t` is an f32 CPU tensor whose elements fill its memory exactly once (contiguous,
/// or the transpose of a contiguous matrix, like `W_enc`).
fn dense_cpu_f32(t: &Tensor) -> bool {
    t.device() == Device::Cpu
        && t.kind() == Kind::Float
        && (t.is_contiguous() || (t.dim() == 2 && t.tr().is_contiguous()))
}

/// The same update on the CPU in one pass over memory (the tensor ops make nine), when the
/// four tensors share one dense layout; false (and nothing done) otherwise. Same formulas in
/// f32; results may differ from [`update_tensors`] in the last bit where libtorch's kernels
/// fuse a multiply-add.
fn update_fused_cpu(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    c: &Coefficients,
) -> bool {
    use rayon::prelude::*;
    const MIN_NUMEL: usize = 1 << 16; // below this, threads cost more than they save
    if p.numel() < MIN_NUMEL
        || !dense_cpu_f32(p)
        || [g, &*m, &*v]
            .iter()
            .any(|t| !dense_cpu_f32(t) || t.stride() != p.stride())
    {
        return false;
    }
    let n = p.numel();
    // SAFETY: the four tensors are distinct live f32 CPU tensors of n elements each, dense in
    // the same layout (so element i of each sits at the same offset), borrowed for the whole
    // call with no other view in use; libtorch runs nothing on them meanwhile.
    let (p, g, m, v) = unsafe {
        (
            std::slice::from_raw_parts_mut(p.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(g.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(m.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts_mut(v.data_ptr() as *mut f32, n),
        )
    };
    // Scalars in f32, as libtorch casts them for f32 tensors.
    let w1 = c.weight1 as f32;
    let small = c.weight1.abs() < 0.5;
    let one_minus_w1 = 1.0 - w1;
    let (b2, w2) = (c.beta2 as f32, c.weight2 as f32);
    let (bc2, eps, step) = (
        c.bias_correction2_sqrt as f32,
        c.eps as f32,
        c.neg_step_size as f32,
    );
    const CHUNK: usize = 1 << 14;
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| {
            for i in 0..p.len() {
                // lerp as libtorch computes it for either size of weight
                let diff = g[i] - m[i];
                m[i] = if small {
                    m[i] + w1 * diff
                } else {
                    g[i] - diff * one_minus_w1
                };
                v[i] = v[i] * b2 + (w2 * g[i]) * g[i];
                let denom = v[i].sqrt() / bc2 + eps;
                p[i] += (step * m[i]) / denom;
            }
        });
    true
}

impl Adam {
    /// Zero moments shaped (and laid out) like the SAE's parameters.
    pub fn new(sae: &Sae, config: AdamConfig) -> Adam {
        Adam {
            config,
            steps: 0,
            names: param_names(sae),
            exp_avg: params(sae).into_iter().map(|p| p.zeros_like()).collect(),
            exp_avg_sq: params(sae).into_iter().map(|p| p.zeros_like()).collect(),
            scratch: scratch_for(params(sae)),
        }
    }

    /// Updates taken so far (torch's `state["step"]`).
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// One training step in this order: remove from each decoder row's gradient its
    /// component along the row, clip all gradients to `max_grad_norm` (global norm, like
    /// `clip_grad_norm_`), the Adam update at learning rate `lr`, renormalise the decoder
    /// rows (a matryoshka SAE with `decoder_norm: free` skips the first and last), and
    /// (jumprelu, `linear` thresholds) clamp θ at 0. Returns the global gradient norm before
    /// clipping (0-dim f32, not read).
    pub fn step(
        &mut self,
        sae: &mut Sae,
        mut grads: Grads,
        lr: f64,
        max_grad_norm: Option<f64>,
    ) -> Tensor {
        let _guard = tch::no_grad_guard();
        let scratch = view_like(&self.scratch[0], &sae.w_dec);
        // A matryoshka SAE with free decoder rows skips both projections.
        let unit = sae.unit_norm_decoder();
        if unit {
            grads.remove_parallel_with(&sae.w_dec, Some(&scratch));
        }
        let norm = match max_grad_norm {
            Some(max) => grads.clip_norm(max),
            None => grads.global_norm(),
        };
        self.update(sae, &grads, lr);
        if unit {
            normalize_rows(&mut sae.w_dec, Some(&scratch));
        }
        sae.project_threshold();
        norm
    }

    /// The Adam update alone.
    pub fn update(&mut self, sae: &mut Sae, grads: &Grads, lr: f64) {
        self.update_with(sae, grads, lr, true)
    }

    /// `fused`: on the CPU, update each dense parameter in one pass (else tensor ops only).
    fn update_with(&mut self, sae: &mut Sae, grads: &Grads, lr: f64, fused: bool) {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let c = Coefficients::new(self.config, self.steps, lr);
        let [s1, s2] = &self.scratch;
        assert_eq!(
            grads.tensors().len(),
            self.exp_avg.len(),
            "one gradient per parameter"
        );
        for (((p, g), m), v) in params_mut(sae)
            .into_iter()
            .zip(grads.tensors())
            .zip(self.exp_avg.iter_mut())
            .zip(self.exp_avg_sq.iter_mut())
        {
            if !(fused && update_fused_cpu(p, g, m, v, &c)) {
                update_tensors(p, g, m, v, &c, &view_like(s1, p), &view_like(s2, p));
            }
        }
    }

    /// The state as named tensors (`W_enc.exp_avg`, `W_enc.exp_avg_sq`, … in the parameters'
    /// shapes), sharing storage with the optimizer: write them out before the next step.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(10);
        for (i, name) in self.names.iter().take(self.exp_avg.len()).enumerate() {
            out.push((format!("{name}.exp_avg"), self.exp_avg[i].shallow_clone()));
            out.push((
                format!("{name}.exp_avg_sq"),
                self.exp_avg_sq[i].shallow_clone(),
            ));
        }
        out
    }

    /// An optimizer from [`Adam::state_tensors`]' output (any order, on any device: moved to
    /// the SAE's) and a step count; every moment must be there with its parameter's shape.
    pub fn from_state(
        config: AdamConfig,
        steps: i64,
        tensors: Vec<(String, Tensor)>,
        sae: &Sae,
    ) -> Result<Adam> {
        ensure!(steps >= 0, "the optimizer step count is negative ({steps})");
        let names = param_names(sae);
        let mut exp_avg: Vec<Option<Tensor>> = names.iter().map(|_| None).collect();
        let mut exp_avg_sq: Vec<Option<Tensor>> = names.iter().map(|_| None).collect();
        for (name, t) in tensors {
            let Some((param, moment)) = name.split_once('.') else {
                bail!("unknown optimizer tensor {name}");
            };
            let Some(i) = names.iter().position(|p| *p == param) else {
                bail!("unknown optimizer tensor {name}");
            };
            let slot = match moment {
                "exp_avg" => &mut exp_avg[i],
                "exp_avg_sq" => &mut exp_avg_sq[i],
                _ => bail!("unknown optimizer tensor {name}"),
            };
            let p = params(sae)[i];
            ensure!(
                t.size() == p.size(),
                "optimizer tensor {name} has shape {:?}, expected {:?}",
                t.size(),
                p.size()
            );
            let t = t.to_kind(Kind::Float).to_device(p.device());
            *slot = Some(if i == 0 {
                encoder_layout(&t)
            } else {
                t.contiguous()
            });
        }
        let take = |slots: Vec<Option<Tensor>>, moment: &str| -> Result<Vec<Tensor>> {
            let mut out = Vec::with_capacity(slots.len());
            for (i, t) in slots.into_iter().enumerate() {
                match t {
                    Some(t) => out.push(t),
                    None => bail!("optimizer tensor {}.{moment} is missing", names[i]),
                }
            }
            Ok(out)
        };
        let (exp_avg, exp_avg_sq) = (take(exp_avg, "exp_avg")?, take(exp_avg_sq, "exp_avg_sq")?);
        Ok(Adam {
            config,
            steps,
            names,
            exp_avg,
            exp_avg_sq,
            scratch: scratch_for(params(sae)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::model::{Architecture, BdecInit, SaeConfig};

    #[test]
    fn fused_update_matches_tensor_ops() {
        crate::rng::seeded(0, || {
            let x = Tensor::randn([64, 96], (Kind::Float, Device::Cpu));
            let config = SaeConfig {
                architecture: Architecture::TopK,
                d_in: 96,
                d_sae: 1024,
                k: 4,
            };
            let sae = Sae::init(&config, &x, BdecInit::Mean, 0).unwrap();
            for adam_config in [
                AdamConfig::default(),
                AdamConfig {
                    beta1: 0.3,
                    beta2: 0.9,
                    eps: 1e-3,
                },
            ] {
                let (mut a, mut b) = (sae.copy(), sae.copy());
                let (mut fused, mut plain) =
                    (Adam::new(&a, adam_config), Adam::new(&b, adam_config));
                for step in 0..20 {
                    let g = |p: &Tensor| Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.1;
                    let grads = Grads {
                        w_enc: g(&a.w_enc).tr().contiguous().tr(),
                        b_enc: g(&a.b_enc),
                        w_dec: g(&a.w_dec),
                        b_dec: g(&a.b_dec),
                        threshold_param: None,
                    };
                    fused.update_with(&mut a, &grads, 1e-2 * (1 + step % 3) as f64, true);
                    plain.update_with(&mut b, &grads, 1e-2 * (1 + step % 3) as f64, false);
                }
                for (p, q) in [
                    (&a.w_enc, &b.w_enc),
                    (&a.b_enc, &b.b_enc),
                    (&a.w_dec, &b.w_dec),
                    (&a.b_dec, &b.b_dec),
                ] {
                    let err = (p - q).abs().max().double_value(&[]);
                    assert!(err < 1e-6, "fused and tensor updates differ by {err}");
                }
            }
        });
    }
}
