//! The sparse autoencoder: parameters, initialisation, encoding (top-k, batch top-k,
//! threshold, ReLU) and decoding.
//!
//! Mirrors saev src/saev/nn/modeling.py (`SparseAutoencoder`, `TopKActivation`,
//! `BatchTopKActivation`) with SAELens parameter names and orientation:
//! `W_enc` [D, F], `b_enc` [F], `W_dec` [F, D], `b_dec` [D] (D = d_in, F = d_sae, B batch).
//!
//! With s = `input_scale`:
//!   pre = (x·s − b_dec)·W_enc + b_enc,   z = TopK(ReLU(pre)),   x̂ = (z·W_dec + b_dec)/s.
//! `b_dec` and every loss live in the scaled space x·s, where E‖x·s‖ = √D.
//!
//! Codes stay sparse ([`Codes`], k entries per row) from the encoder's top-k to the decoder's
//! `embedding_bag`: neither a dense [B, F] z nor a [B·k, D] gather is ever built for the
//! top-k architectures.

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use super::arch::jumprelu::{JumpReluParams, SparsityLoss, ThresholdParam};
pub use super::arch::matryoshka::{DecoderNorm, MatryoshkaParams, MatryoshkaSelection};
use super::arch::{batchtopk, relu, topk};
pub(crate) use super::codes::normalize_rows;
pub use super::codes::{decode_scaled, prefix_offsets, Codes};
use super::step::Weights;
use super::sync::SyncFree;

/// How latents are selected. The names are the checkpoint's and the config's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// The k largest pre-activations of each row (Gao et al. 2024).
    #[value(name = "topk")]
    TopK,
    /// The k·B largest pre-activations of a batch of B rows while training; a learned
    /// threshold θ at inference, z = pre·[pre > θ] (Bussmann et al. 2024).
    #[value(name = "batchtopk")]
    BatchTopK,
    /// z = ReLU(pre), sparsity from an L1 penalty weighted by decoder row norms.
    #[value(name = "relu")]
    Relu,
    /// z = pre·[pre > θ_j] with a learned threshold per latent, trained through a
    /// straight-through estimator with an L0 (or tanh) penalty (Rajamanoharan et al. 2024);
    /// see [`super::arch::jumprelu`].
    #[value(name = "jumprelu")]
    JumpRelu,
    /// Batch top-k (or top-k) codes trained with one reconstruction loss per nested prefix
    /// of the dictionary (Bussmann et al. 2025); see [`super::arch::matryoshka`].
    #[value(name = "matryoshka")]
    Matryoshka,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::TopK => "topk",
            Architecture::BatchTopK => "batchtopk",
            Architecture::Relu => "relu",
            Architecture::JumpRelu => "jumprelu",
            Architecture::Matryoshka => "matryoshka",
        }
    }

    /// Whether `k` sets the sparsity (topk, batchtopk, matryoshka); relu and jumprelu get
    /// theirs from a penalty.
    pub fn uses_k(self) -> bool {
        !matches!(self, Architecture::Relu | Architecture::JumpRelu)
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How `b_dec` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BdecInit {
    /// Geometric median of the sample (Weiszfeld iterations), as Anthropic proposes.
    #[default]
    #[value(name = "geometric_median")]
    GeometricMedian,
    /// Mean of the sample.
    #[value(name = "mean")]
    Mean,
}

/// How `W_enc` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum WEncInit {
    /// `W_decᵀ` exactly.
    #[default]
    #[value(name = "transpose")]
    Transpose,
    /// `W_decᵀ` times the one gain that makes the first reconstructions least-squares
    /// optimal (see [`Sae::fit_encoder_gain`]).
    #[value(name = "scaled_transpose")]
    ScaledTranspose,
}

/// Sizes and architecture of an SAE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaeConfig {
    pub architecture: Architecture,
    /// Width of the activations (D).
    pub d_in: i64,
    /// Number of latents (F).
    pub d_sae: i64,
    /// Non-zero latents per row (topk; the batch average for batchtopk). Ignored by relu.
    pub k: i64,
}

impl SaeConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.d_in >= 1, "d_in must be at least 1, got {}", self.d_in);
        ensure!(
            self.d_sae >= 1,
            "d_sae must be at least 1, got {}",
            self.d_sae
        );
        if self.architecture.uses_k() {
            ensure!(
                (1..=self.d_sae).contains(&self.k),
                "k must be between 1 and d_sae = {} for {}, got {}",
                self.d_sae,
                self.architecture,
                self.k
            );
        }
        Ok(())
    }
}

/// Which latents of a batch of pre-activations become non-zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// The k largest of each row, then ReLU.
    TopK(i64),
    /// The k·B largest of the whole batch of B rows, then ReLU.
    BatchTopK(i64),
    /// Every pre-activation above θ (and above 0).
    Threshold(f64),
    /// Every positive pre-activation.
    Relu,
    /// Every pre-activation above its latent's learned threshold (jumprelu): only
    /// [`Sae::encode_sparse`] knows the thresholds.
    JumpRelu,
}

/// Select the non-zero latents of `pre` [B, F]: sync-free on accelerators, the host form
/// on the CPU ([`super::sync`]).
pub fn select(pre: &Tensor, selection: Selection) -> Codes {
    select_with(pre, selection, SyncFree::Auto.on(pre.device()))
}

/// [`select`] in the sync-free form or the host form (same codes): the one place the
/// selections dispatch to their architecture's file ([`super::arch`]). Threshold and ReLU
/// selections have data-dependent sizes and always read the host (they serve inference).
pub fn select_with(pre: &Tensor, selection: Selection, sync_free: bool) -> Codes {
    match selection {
        Selection::TopK(k) => topk::select(pre, k),
        Selection::BatchTopK(k) => batchtopk::select(pre, k, sync_free),
        Selection::Threshold(theta) => relu::above(pre, theta.max(0.0)),
        Selection::Relu => relu::above(pre, 0.0),
        Selection::JumpRelu => {
            panic!("Selection::JumpRelu needs the SAE's thresholds: use Sae::encode_sparse")
        }
    }
}

/// The SAE's parameters (f32) and scale.
///
/// Layout: `w_enc` has shape [D, F] but is stored as the transpose of a contiguous [F, D]
/// tensor (strides [1, D]), so that its gradient, which the sparse backward produces row by
/// latent, needs no transposing copy. Nothing depends on it for correctness: any layout
/// computes the same numbers, only slower.
#[derive(Debug)]
pub struct Sae {
    pub config: SaeConfig,
    /// [D, F]
    pub w_enc: Tensor,
    /// [F]
    pub b_enc: Tensor,
    /// [F, D], rows of unit norm.
    pub w_dec: Tensor,
    /// [D], in the scaled space.
    pub b_dec: Tensor,
    /// s: the SAE sees x·s.
    pub input_scale: f64,
    /// θ for batchtopk (and matryoshka with batch top-k) at inference (None: not
    /// estimated yet).
    pub threshold: Option<f64>,
    /// jumprelu: the trained parameter of the per-latent thresholds θ_j: log θ_j or θ_j
    /// itself, as `jumprelu.threshold_param` says (see [`super::arch::jumprelu`]). [F]
    pub threshold_param: Option<Tensor>,
    /// jumprelu: the training settings of its estimator and penalty.
    pub jumprelu: Option<JumpReluParams>,
    /// matryoshka: the nested prefixes, their loss weights and the selection.
    pub matryoshka: Option<MatryoshkaParams>,
}

/// The architecture-specific parts of an SAE that a fresh one gets by default
/// ([`JumpReluParams::default`], one prefix of all latents): `threshold_param`, `jumprelu`,
/// `matryoshka` for the architectures that have them, None otherwise.
fn arch_defaults(config: &SaeConfig, device: Device) -> ArchParts {
    match config.architecture {
        Architecture::JumpRelu => {
            let p = JumpReluParams::default();
            (
                Some(Tensor::full(
                    [config.d_sae],
                    super::arch::jumprelu::DEFAULT_INIT_THRESHOLD.ln(),
                    (Kind::Float, device),
                )),
                Some(p),
                None,
            )
        }
        Architecture::Matryoshka => (None, None, Some(MatryoshkaParams::single(config.d_sae))),
        _ => (None, None, None),
    }
}

type ArchParts = (
    Option<Tensor>,
    Option<JumpReluParams>,
    Option<MatryoshkaParams>,
);

/// s = √D / mean_i ‖x_i‖ for a sample [N, D], so that E‖x·s‖ = √D.
pub fn input_scale(sample: &Tensor) -> Result<f64> {
    let (n, d) = sample
        .size2()
        .context("the sample must be a [N, d_in] matrix")?;
    ensure!(n >= 1, "the sample is empty");
    let mean_norm = sample
        .to_kind(Kind::Double)
        .square()
        .sum_dim_intlist(1, false, Kind::Double)
        .sqrt()
        .mean(Kind::Double)
        .double_value(&[]);
    ensure!(
        mean_norm.is_finite() && mean_norm > 0.0,
        "cannot scale the inputs: the mean row norm of the sample is {mean_norm}"
    );
    Ok((d as f64).sqrt() / mean_norm)
}

/// Geometric median of the rows of `points` [N, D] by Weiszfeld iterations from the mean,
/// computed in f64; stops when a step moves less than `tol`·(1 + ‖y‖). Each iteration is two
/// matrix-vector products (‖p − y‖² = ‖p‖² − 2p·y + ‖y‖²). [D] f64
pub fn geometric_median(points: &Tensor, max_iter: usize, tol: f64) -> Tensor {
    let p = points.to_kind(Kind::Double);
    let sq_norms = p.square().sum_dim_intlist(1, false, Kind::Double); // [N]
    let mut y = p.mean_dim(0, false, Kind::Double);
    for _ in 0..max_iter {
        let sq_dist = &sq_norms - p.mv(&y) * 2.0 + y.dot(&y);
        let w = sq_dist.clamp_min(1e-24).sqrt().reciprocal(); // 1/max(‖p − y‖, 1e-12)
        let next = p.tr().mv(&w) / w.sum(Kind::Double);
        let shift = (&next - &y).norm().double_value(&[]);
        let size = next.norm().double_value(&[]);
        y = next;
        if shift <= tol * (1.0 + size) {
            break;
        }
    }
    y
}

/// `w` [D, F] in the encoder layout (strides [1, D]); a no-op when it already is.
pub fn encoder_layout(w: &Tensor) -> Tensor {
    let size = w.size();
    if size.len() == 2 && w.stride() == [1, size[0]] {
        w.shallow_clone()
    } else {
        w.tr().contiguous().tr()
    }
}

impl Sae {
    /// A fresh SAE on the sample's device: s from the sample, decoder rows random unit
    /// vectors (libtorch's CPU generator seeded with `seed`, so the same on every device),
    /// W_enc = W_decᵀ, b_dec from the scaled sample, b_enc = 0.
    ///
    /// Sets libtorch's global seed.
    pub fn init(
        config: &SaeConfig,
        sample: &Tensor,
        b_dec_init: BdecInit,
        seed: i64,
    ) -> Result<Sae> {
        config.validate()?;
        let (n, d) = sample
            .size2()
            .context("the initialisation sample must be [N, d_in]")?;
        ensure!(
            d == config.d_in,
            "the sample has width {d}, the SAE d_in = {}",
            config.d_in
        );
        ensure!(n >= 1, "the initialisation sample is empty");
        let device = sample.device();
        let sample = sample.to_kind(Kind::Float);
        let scale = input_scale(&sample)?;
        let scaled = &sample * scale;
        let b_dec = match b_dec_init {
            BdecInit::Mean => scaled
                .to_kind(Kind::Double)
                .mean_dim(0, false, Kind::Double),
            BdecInit::GeometricMedian => geometric_median(&scaled, 100, 1e-7),
        }
        .to_kind(Kind::Float);
        let w_dec = crate::rng::seeded(seed, || {
            Tensor::randn([config.d_sae, config.d_in], (Kind::Float, Device::Cpu))
        })
        .to_device(device);
        let mut sae = Sae {
            config: *config,
            w_enc: Tensor::zeros([config.d_in, config.d_sae], (Kind::Float, device)),
            b_enc: Tensor::zeros([config.d_sae], (Kind::Float, device)),
            w_dec,
            b_dec,
            input_scale: scale,
            threshold: None,
            threshold_param: None,
            jumprelu: None,
            matryoshka: None,
        };
        (sae.threshold_param, sae.jumprelu, sae.matryoshka) = arch_defaults(config, device);
        sae.normalize_decoder();
        sae.w_enc = sae.w_dec.copy().tr();
        Ok(sae)
    }

    /// Scale `W_enc` by the gain `c` that minimises `Σ‖x_c − c·x̂₀‖²` over `sample`
    /// [N, d_in], where `x_c = x·s − b_dec` and `x̂₀` is the reconstruction without
    /// `b_dec` under `selection`; returns `c`.
    ///
    /// Top-k, batch top-k and ReLU are positively homogeneous, so while `b_enc = 0` (as at
    /// initialisation) scaling `W_enc` by `c > 0` keeps which latents fire and scales every
    /// code by `c`: the first reconstruction becomes exactly `c·x̂₀`. With unit decoder rows
    /// and `W_enc = W_decᵀ` the codes start far from the right size (each is a projection,
    /// and k of them overlap), which Adam would otherwise spend its first steps correcting.
    /// A degenerate fit (`c` not finite or not positive) leaves `W_enc` alone and returns 1.
    pub fn fit_encoder_gain(&mut self, sample: &Tensor, selection: Selection) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        let (n, _) = sample
            .size2()
            .context("the gain sample must be [N, d_in]")?;
        let (mut num, mut den) = (0.0, 0.0);
        const CHUNK: i64 = 4096;
        for start in (0..n).step_by(CHUNK as usize) {
            let x = sample
                .narrow(0, start, CHUNK.min(n - start))
                .to_device(self.device());
            let codes = self.encode_sparse(&x, selection);
            let recon = decode_scaled(&self.w_dec, &codes);
            let centered = self.scale_input(&x) - &self.b_dec;
            num += (&centered * &recon).sum(Kind::Double).double_value(&[]);
            den += recon.square().sum(Kind::Double).double_value(&[]);
        }
        let c = num / den;
        if !(c.is_finite() && c > 0.0) {
            return Ok(1.0);
        }
        self.w_enc = encoder_layout(&(&self.w_enc * c));
        Ok(c)
    }

    /// An SAE from its tensors (any float dtype, converted to f32 on their device), with
    /// shapes checked against `config`.
    pub fn from_tensors(
        config: SaeConfig,
        w_enc: &Tensor,
        b_enc: &Tensor,
        w_dec: &Tensor,
        b_dec: &Tensor,
        input_scale: f64,
        threshold: Option<f64>,
    ) -> Result<Sae> {
        config.validate()?;
        let (d, f) = (config.d_in, config.d_sae);
        for (name, t, shape) in [
            ("W_enc", w_enc, vec![d, f]),
            ("b_enc", b_enc, vec![f]),
            ("W_dec", w_dec, vec![f, d]),
            ("b_dec", b_dec, vec![d]),
        ] {
            ensure!(
                t.size() == shape,
                "{name} has shape {:?}, expected {shape:?}",
                t.size()
            );
        }
        ensure!(
            input_scale.is_finite() && input_scale > 0.0,
            "input_scale must be a positive number, got {input_scale}"
        );
        let (threshold_param, jumprelu, matryoshka) = arch_defaults(&config, w_dec.device());
        Ok(Sae {
            config,
            w_enc: encoder_layout(&w_enc.to_kind(Kind::Float)),
            b_enc: b_enc.to_kind(Kind::Float).contiguous(),
            w_dec: w_dec.to_kind(Kind::Float).contiguous(),
            b_dec: b_dec.to_kind(Kind::Float).contiguous(),
            input_scale,
            threshold,
            threshold_param,
            jumprelu,
            matryoshka,
        })
    }

    pub fn device(&self) -> Device {
        self.w_dec.device()
    }

    /// The SAE on `device` (sharing memory with `self` when it is there already; see
    /// [`Sae::copy`]).
    pub fn to_device(&self, device: Device) -> Sae {
        Sae {
            config: self.config,
            w_enc: encoder_layout(&self.w_enc.to_device(device)),
            b_enc: self.b_enc.to_device(device),
            w_dec: self.w_dec.to_device(device),
            b_dec: self.b_dec.to_device(device),
            input_scale: self.input_scale,
            threshold: self.threshold,
            threshold_param: self.threshold_param.as_ref().map(|t| t.to_device(device)),
            jumprelu: self.jumprelu,
            matryoshka: self.matryoshka.clone(),
        }
    }

    /// A deep copy (same device).
    pub fn copy(&self) -> Sae {
        Sae {
            config: self.config,
            w_enc: self.w_enc.copy(),
            b_enc: self.b_enc.copy(),
            w_dec: self.w_dec.copy(),
            b_dec: self.b_dec.copy(),
            input_scale: self.input_scale,
            threshold: self.threshold,
            threshold_param: self.threshold_param.as_ref().map(Tensor::copy),
            jumprelu: self.jumprelu,
            matryoshka: self.matryoshka.clone(),
        }
    }

    /// x·s (f32). x [B, D] in any float dtype.
    pub fn scale_input(&self, x: &Tensor) -> Tensor {
        x.to_kind(Kind::Float) * self.input_scale
    }

    /// pre = (x·s − b_dec)·W_enc + b_enc. [B, F]
    pub fn pre_activations(&self, x: &Tensor) -> Tensor {
        let centered = self.scale_input(x) - &self.b_dec;
        self.b_enc.addmm(&centered, &self.w_enc)
    }

    /// The selection used at inference: topk → TopK(k); batchtopk → Threshold(θ), or
    /// BatchTopK(k) over the given batch while θ is unknown; relu → Relu; jumprelu →
    /// JumpRelu; matryoshka → as its inner selection (topk or batchtopk).
    pub fn inference_selection(&self) -> Selection {
        let batch = match self.config.architecture {
            Architecture::TopK => return Selection::TopK(self.config.k),
            Architecture::Relu => return Selection::Relu,
            Architecture::JumpRelu => return Selection::JumpRelu,
            Architecture::BatchTopK => true,
            Architecture::Matryoshka => self.matryoshka_batch(),
        };
        match (batch, self.threshold) {
            (false, _) => Selection::TopK(self.config.k),
            (true, Some(theta)) => Selection::Threshold(theta),
            (true, None) => Selection::BatchTopK(self.config.k),
        }
    }

    /// matryoshka: whether its selection is batch top-k.
    fn matryoshka_batch(&self) -> bool {
        self.matryoshka
            .as_ref()
            .is_none_or(|m| m.selection == MatryoshkaSelection::BatchTopK)
    }

    /// The selection used while training with `k` non-zeros per row.
    pub fn training_selection(&self, k: i64) -> Selection {
        match self.config.architecture {
            Architecture::TopK => Selection::TopK(k),
            Architecture::BatchTopK => Selection::BatchTopK(k),
            Architecture::Relu => Selection::Relu,
            Architecture::JumpRelu => Selection::JumpRelu,
            Architecture::Matryoshka if self.matryoshka_batch() => Selection::BatchTopK(k),
            Architecture::Matryoshka => Selection::TopK(k),
        }
    }

    /// θ_j (jumprelu), from its parameter (exp(log θ_j), or θ_j clamped at 0). [F]
    pub fn jumprelu_threshold(&self) -> Option<Tensor> {
        let kind = self.threshold_kind();
        self.threshold_param.as_ref().map(|t| kind.theta(t))
    }

    /// Sparse codes of x [B, D].
    pub fn encode_sparse(&self, x: &Tensor, selection: Selection) -> Codes {
        let pre = self.pre_activations(x);
        if selection == Selection::JumpRelu {
            let theta = self
                .jumprelu_threshold()
                .expect("a jumprelu SAE has thresholds");
            return relu::from_mask(&pre, &pre.gt_tensor(&theta.clamp_min(0.0)));
        }
        select(&pre, selection)
    }

    /// Dense codes of x [B, D] with the inference selection. [B, F]
    pub fn encode(&self, x: &Tensor) -> Tensor {
        let pre = self.pre_activations(x);
        match self.inference_selection() {
            Selection::Relu => pre.relu(),
            Selection::Threshold(theta) => &pre * pre.gt(theta.max(0.0)),
            Selection::JumpRelu => {
                let theta = self
                    .jumprelu_threshold()
                    .expect("a jumprelu SAE has thresholds");
                &pre * pre.gt_tensor(&theta)
            }
            selection => select(&pre, selection).to_dense(),
        }
    }

    /// x̂ = (z·W_dec + b_dec)/s from dense codes z [B, F]. [B, D]
    pub fn decode(&self, z: &Tensor) -> Tensor {
        self.b_dec.addmm(&z.to_kind(Kind::Float), &self.w_dec) / self.input_scale
    }

    /// x̂ from sparse codes. [B, D]
    pub fn decode_sparse(&self, codes: &Codes) -> Tensor {
        (decode_scaled(&self.w_dec, codes) + &self.b_dec) / self.input_scale
    }

    /// x̂ for x [B, D] with the inference selection. [B, D]
    pub fn reconstruct(&self, x: &Tensor) -> Tensor {
        match self.inference_selection() {
            Selection::Relu | Selection::JumpRelu => self.decode(&self.encode(x)),
            selection => self.decode_sparse(&self.encode_sparse(x, selection)),
        }
    }

    /// The parameters a training step reads.
    pub(crate) fn weights(&self) -> Weights<'_> {
        Weights {
            w_enc: &self.w_enc,
            w_dec: &self.w_dec,
            b_dec: &self.b_dec,
            input_scale: self.input_scale,
        }
    }

    /// Scale every decoder row to unit norm, in place.
    pub fn normalize_decoder(&mut self) {
        normalize_rows(&mut self.w_dec, None);
    }
}

/// jumprelu's settings on the SAE ([`super::arch::jumprelu`]).
impl Sae {
    /// Make this jumprelu SAE's thresholds θ_j = `threshold` for every latent, with
    /// `params`; errors name the config key.
    pub fn set_jumprelu(&mut self, threshold: f64, params: JumpReluParams) -> Result<()> {
        ensure!(
            threshold > 0.0 && threshold.is_finite(),
            "sae.jumprelu_init_threshold = {threshold}: must be positive"
        );
        params.validate()?;
        let theta = Tensor::full([self.config.d_sae], threshold, (Kind::Float, self.device()));
        self.threshold_param = Some(params.threshold_param.from_theta(&theta));
        self.jumprelu = Some(params);
        Ok(())
    }

    /// What this SAE trains for θ: its `jumprelu.threshold_param`, `log` when it has no
    /// jumprelu settings (then there is no threshold tensor either).
    pub fn threshold_kind(&self) -> ThresholdParam {
        self.jumprelu.unwrap_or_default().threshold_param
    }

    /// Keep a `linear` threshold parameter at θ ≥ 0 (after each optimizer step); a no-op
    /// for `log` and the other architectures.
    pub(crate) fn project_threshold(&mut self) {
        let linear = self.threshold_kind() == ThresholdParam::Linear;
        if let (true, Some(t)) = (linear, self.threshold_param.as_mut()) {
            let _ = t.clamp_min_(0.0);
        }
    }
}

/// matryoshka's settings on the SAE ([`super::arch::matryoshka`]).
impl Sae {
    /// Make this matryoshka SAE's prefixes `params` (checked against d_sae).
    pub fn set_matryoshka(&mut self, params: MatryoshkaParams) -> Result<()> {
        params.validate(self.config.d_sae)?;
        self.matryoshka = Some(params);
        Ok(())
    }

    /// Whether training keeps the decoder rows at unit norm: every SAE but a matryoshka one
    /// with `decoder_norm: free`.
    pub fn unit_norm_decoder(&self) -> bool {
        !matches!(
            (&self.matryoshka, self.config.architecture),
            (Some(m), Architecture::Matryoshka) if m.decoder_norm == DecoderNorm::Free
        )
    }

    /// The prefix widths: the matryoshka widths, or [d_sae] for any other SAE.
    pub fn prefix_widths(&self) -> Vec<i64> {
        match (&self.matryoshka, self.config.architecture) {
            (Some(m), Architecture::Matryoshka) => m.widths.clone(),
            _ => vec![self.config.d_sae],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre() -> Tensor {
        Tensor::from_slice(&[
            3.0f32, -1.0, 2.0, 0.5, //
            -2.0, -1.0, -3.0, 0.1, //
            9.0, 8.0, 7.0, 6.0,
        ])
        .view([3, 4])
    }

    fn dense(codes: &Codes) -> Vec<Vec<f32>> {
        Vec::<Vec<f32>>::try_from(codes.to_dense()).unwrap()
    }

    #[test]
    fn topk_keeps_k_per_row_after_relu() {
        let c = select(&pre(), Selection::TopK(2));
        assert_eq!(
            dense(&c),
            vec![
                vec![3.0, 0.0, 2.0, 0.0],
                vec![0.0, 0.0, 0.0, 0.1],
                vec![9.0, 8.0, 0.0, 0.0]
            ]
        );
        assert_eq!(Vec::<i64>::try_from(&c.offsets).unwrap(), vec![0, 2, 4, 6]);
        assert_eq!(Vec::<i64>::try_from(c.fired()).unwrap(), vec![2, 1, 1, 1]);
        assert!((c.l0().double_value(&[]) - 5.0 / 3.0).abs() < 1e-6);
        assert!((c.min_positive().double_value(&[]) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn batch_topk_takes_the_largest_of_the_batch() {
        // 6 = 2·3 largest: 9, 8, 7, 6, 3, 2; the middle row gets none.
        let c = select(&pre(), Selection::BatchTopK(2));
        assert_eq!(
            dense(&c),
            vec![
                vec![3.0, 0.0, 2.0, 0.0],
                vec![0.0; 4],
                vec![9.0, 8.0, 7.0, 6.0]
            ]
        );
        assert_eq!(Vec::<i64>::try_from(&c.offsets).unwrap(), vec![0, 2, 2, 6]);
        assert_eq!(
            Vec::<i64>::try_from(&c.rows).unwrap(),
            vec![0, 0, 2, 2, 2, 2]
        );
    }

    #[test]
    fn batch_topk_candidates_are_exact() {
        // Rows with very different scales force the candidate doubling.
        let scales = Tensor::from_slice(&[100.0f32, 1.0, 1.0, 0.01]).unsqueeze(1);
        let pre =
            crate::rng::seeded(1, || Tensor::randn([4, 300], (Kind::Float, Device::Cpu))) * scales;
        let c = select(&pre, Selection::BatchTopK(5));
        let (v, i) = pre.reshape([-1]).topk(20, 0, true, true);
        let expect = Tensor::zeros([1200], (Kind::Float, Device::Cpu))
            .index_put_(&[Some(i)], &v.relu(), false)
            .view([4, 300]);
        assert!(c.to_dense().equal(&expect));
    }

    #[test]
    fn threshold_and_relu() {
        let c = select(&pre(), Selection::Threshold(2.5));
        assert_eq!(
            dense(&c),
            vec![
                vec![3.0, 0.0, 0.0, 0.0],
                vec![0.0; 4],
                vec![9.0, 8.0, 7.0, 6.0]
            ]
        );
        let c = select(&pre(), Selection::Relu);
        assert!(c.to_dense().equal(&pre().relu()));
    }

    #[test]
    fn geometric_median_resists_outliers() {
        let mut rows = vec![[0.0f64, 0.0]; 9];
        rows.push([1000.0, 1000.0]);
        let p = Tensor::from_slice(&rows.concat()).view([10, 2]);
        let m = Vec::<f64>::try_from(geometric_median(&p, 200, 1e-12)).unwrap();
        assert!(m[0].abs() < 1e-3 && m[1].abs() < 1e-3, "{m:?}");
    }

    #[test]
    fn config_names() {
        for (a, name) in [
            (Architecture::TopK, "\"topk\""),
            (Architecture::BatchTopK, "\"batchtopk\""),
            (Architecture::Relu, "\"relu\""),
            (Architecture::JumpRelu, "\"jumprelu\""),
            (Architecture::Matryoshka, "\"matryoshka\""),
        ] {
            assert_eq!(serde_json::to_string(&a).unwrap(), name);
            use clap::ValueEnum;
            assert_eq!(
                format!("\"{}\"", a.to_possible_value().unwrap().get_name()),
                name
            );
        }
        assert!(SaeConfig {
            architecture: Architecture::TopK,
            d_in: 4,
            d_sae: 8,
            k: 9
        }
        .validate()
        .is_err());
    }
}
