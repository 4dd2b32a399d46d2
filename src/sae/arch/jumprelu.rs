//! JumpReLU SAEs (Rajamanoharan et al. 2024, "Jumping Ahead"; Gemma Scope): a learned
//! threshold θ_j per latent and a loss whose sparsity term counts active latents.
//!
//! # The threshold's parameter (`sae.jumprelu_threshold_param`)
//! - `linear` (the default): θ_j itself, projected back to θ_j ≥ 0 after every optimizer
//!   step (SAE-Lens ≥ 6.54, whose reasons were ours: Adam moves a parameter by about lr per
//!   step, so log θ moves θ by a factor of e^lr, and a small initial θ barely moves in a
//!   run's budget; bench/RESULTS.md `jumprelu_sweep`);
//! - `log`: log θ_j (the paper's and Gemma Scope's; θ stays positive by construction).
//!
//! # Forward (scaled space, pre as in [`crate::sae::model`])
//!   z_ij = pre_ij·H(pre_ij − θ_j),   x̂_s = z·W_dec + b_dec,   H the Heaviside step.
//!
//! # Loss
//! - `mse` as every architecture ([`crate::sae::objective`]);
//! - sparsity (`LossOptions::l1_coef` holds its coefficient λ, warmed up by
//!   `training.l0_warmup_steps`):
//!   - `step` (DeepMind's L0): λ·mean_i Σ_j H(pre_ij − θ_j);
//!   - `tanh` (Anthropic's, as SAE-Lens offers it): λ·mean_i Σ_j tanh(c·z_ij·‖W_dec[j]‖),
//!     c = `sae.jumprelu_tanh_scale`.
//!
//! No AuxK: SAE-Lens's JumpReLU has none either (dead latents are revived by the threshold's
//! own gradient).
//!
//! # Gradients: the straight-through estimator
//! H has no useful derivative; with the rectangle kernel K(u) = [−½ < u < ½] and bandwidth ε
//! (`sae.jumprelu_bandwidth`), the pseudo-derivatives are SAE-Lens's `Step` and `JumpReLU`
//! autograd functions (DeepMind's choice: none of the estimator reaches pre):
//! - ∂H(pre − θ)/∂θ := −K((pre − θ)/ε)/ε,              ∂H/∂pre := 0;
//! - ∂z/∂θ := −(θ/ε)·K((pre − θ)/ε),                    ∂z/∂pre = H(pre − θ);
//!
//! and, for `log`, through θ = exp(log θ): ∂/∂log θ = θ·∂/∂θ. Everything here is dense
//! [B, F], like relu (the codes' count depends on the data).

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::sae::codes::row_norms;
use crate::sae::step::{b_dec_grad, zero, Grads, LossOptions, StepOutput, Weights};

/// θ at initialisation, in the scaled space (where E‖x‖ = √D, the paper's normalisation):
/// the paper's 0.001.
pub const DEFAULT_INIT_THRESHOLD: f64 = 0.001;

/// What a JumpReLU SAE trains for its thresholds (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdParam {
    /// log θ_j (checkpoint tensor `log_threshold`). The default when reading a checkpoint
    /// header that does not say (those came before `linear`).
    #[default]
    #[value(name = "log")]
    Log,
    /// θ_j itself, kept ≥ 0 (checkpoint tensor `threshold`).
    #[value(name = "linear")]
    Linear,
}

impl ThresholdParam {
    /// The parameter's name in checkpoints and in the optimizer's state.
    pub fn tensor_name(self) -> &'static str {
        match self {
            ThresholdParam::Log => "log_threshold",
            ThresholdParam::Linear => "threshold",
        }
    }

    /// The parameter holding θ (θ ≥ 0; `log` needs θ > 0). [F]
    pub fn from_theta(self, theta: &Tensor) -> Tensor {
        match self {
            ThresholdParam::Log => theta.clamp_min(1e-30).log(),
            ThresholdParam::Linear => theta.clamp_min(0.0),
        }
    }

    /// θ from the parameter. [F]
    pub fn theta(self, param: &Tensor) -> Tensor {
        match self {
            ThresholdParam::Log => param.exp(),
            ThresholdParam::Linear => param.clamp_min(0.0),
        }
    }
}

/// The sparsity penalty of a JumpReLU SAE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SparsityLoss {
    /// λ·mean_i Σ_j H(pre_ij − θ_j): the L0 norm (DeepMind).
    #[default]
    #[value(name = "step")]
    Step,
    /// λ·mean_i Σ_j tanh(c·z_ij·‖W_dec[j]‖) (Anthropic).
    #[value(name = "tanh")]
    Tanh,
}

/// A JumpReLU SAE's training settings (recorded in the checkpoint header).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct JumpReluParams {
    /// ε, the width of the rectangle kernel of the straight-through estimator.
    pub bandwidth: f64,
    pub sparsity_loss: SparsityLoss,
    /// c of the tanh penalty.
    pub tanh_scale: f64,
    /// What is trained for θ (`log` when a header does not say).
    #[serde(default)]
    pub threshold_param: ThresholdParam,
}

impl Default for JumpReluParams {
    fn default() -> Self {
        JumpReluParams {
            bandwidth: 0.001,
            sparsity_loss: SparsityLoss::Step,
            tanh_scale: 4.0,
            threshold_param: ThresholdParam::Log,
        }
    }
}

impl JumpReluParams {
    /// Errors name the config key.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.bandwidth > 0.0 && self.bandwidth.is_finite(),
            "sae.jumprelu_bandwidth = {}: must be positive",
            self.bandwidth
        );
        ensure!(
            self.tanh_scale > 0.0 && self.tanh_scale.is_finite(),
            "sae.jumprelu_tanh_scale = {}: must be positive",
            self.tanh_scale
        );
        Ok(())
    }
}

/// K(u) = [−½ < u < ½] at u = (pre − θ)/ε, as f32. [B, F]
fn rectangle(pre: &Tensor, theta: &Tensor, bandwidth: f64) -> Tensor {
    let u = (pre - theta) / bandwidth;
    u.gt(-0.5).logical_and(&u.lt(0.5)).to_kind(Kind::Float)
}

/// Loss and gradients of a jumprelu SAE (module docs) with thresholds `theta` [F]. `pre`
/// [B, F] as computed by [`crate::sae::objective::forward_backward`].
pub(crate) fn step(
    sae: Weights<'_>,
    params: JumpReluParams,
    theta: &Tensor,
    xs: &Tensor,
    xc: &Tensor,
    pre: &Tensor,
    o: &LossOptions,
) -> StepOutput {
    let (b, d) = xs.size2().expect("[B, D]");
    let device = xs.device();
    let eps = params.bandwidth;
    let theta = theta.shallow_clone(); // [F]
    let active = pre.gt_tensor(&theta); // [B, F]
    let gate = active.to_kind(Kind::Float);
    let z = pre * &gate;
    let xs_hat = sae.b_dec.addmm(&z, sae.w_dec);
    let e = xs - &xs_hat;
    let mse = e.square().mean(Kind::Float) / o.data_variance;
    let dx_hat = &e * (-2.0 / ((b * d) as f64 * o.data_variance));
    let mut dz = dx_hat.mm(&sae.w_dec.tr()); // [B, F]
    let mut w_dec = z.tr().mm(&dx_hat); // [F, D]
    let kernel = rectangle(pre, &theta, eps); // [B, F]
    let c = o.l1_coef / b as f64;
    // ∂/∂θ from the sparsity term's Step (step mode only). [F]
    let mut d_theta = zero(device).expand([theta.size()[0]], false).copy();
    let sparsity = if o.l1_coef == 0.0 {
        zero(device)
    } else {
        match params.sparsity_loss {
            SparsityLoss::Step => {
                d_theta -= kernel.sum_dim_intlist(0, false, Kind::Float) * (c / eps);
                gate.sum(Kind::Float) * c
            }
            SparsityLoss::Tanh => {
                let s = params.tanh_scale;
                let norms = row_norms(sae.w_dec); // [F]
                let t = (&z * &norms * s).tanh(); // [B, F]
                let sech2 = 1.0 - t.square();
                let _ = dz.g_add_(&(&sech2 * &norms * (c * s)));
                let per_latent = (&sech2 * &z).sum_dim_intlist(0, false, Kind::Float); // [F]
                let _ = w_dec.g_add_(
                    &((per_latent * (c * s) / norms.clamp_min(1e-12)).unsqueeze(1) * sae.w_dec),
                );
                t.sum(Kind::Float) * c
            }
        }
    };
    // JumpReLU's own estimator: ∂z/∂θ = −(θ/ε)·K.
    d_theta -= (&kernel * &dz).sum_dim_intlist(0, false, Kind::Float) * &theta / eps;
    let threshold_param = match params.threshold_param {
        ThresholdParam::Log => d_theta * &theta,
        ThresholdParam::Linear => d_theta,
    };
    let dpre = dz * &gate;
    let w_enc = dpre.tr().mm(xc).tr(); // [D, F], the encoder layout
    let b_enc = dpre.sum_dim_intlist(0, false, Kind::Float);
    let b_dec = b_dec_grad(sae.w_enc, &dx_hat, &b_enc);
    StepOutput {
        loss: &mse + &sparsity,
        mse,
        aux: zero(device),
        l1: sparsity,
        l0: gate.sum(Kind::Float) / b as f64,
        grads: Grads {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            threshold_param: Some(threshold_param),
        },
        fired: active.sum_dim_intlist(0, false, Kind::Int64),
        min_positive: Tensor::full([], f64::INFINITY, (Kind::Float, device)),
        x_hat: xs_hat / sae.input_scale,
        prefix_x_hat: Vec::new(),
    }
}
