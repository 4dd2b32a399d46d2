//! Matryoshka SAEs (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka
//! SAEs"; Nabeshima 2024): one dictionary whose nested prefixes (the first w_1 < w_2 < … <
//! w_M = F latents) must each reconstruct the input on their own.
//!
//! # Loss (scaled space; SAE-Lens's `MatryoshkaBatchTopKTrainingSAE`)
//! The codes z are selected once, over all F latents, by batch top-k (default) or top-k
//! (`sae.matryoshka_selection`). Prefix m reconstructs with its own latents only:
//!   x̂_m = Σ_{j < w_m} z_j·W_dec[j] + b_dec,   mse_m = ‖x_s − x̂_m‖² / (B·D·σ²),
//! and the loss is Σ_m λ_m·mse_m + aux, with λ_m = `sae.matryoshka_weights` (default 1 each:
//! SAE-Lens adds every inner loss to the outer one unweighted, and so does Bussmann et al.'s
//! reference code). AuxK acts on the residual of the whole dictionary (SAE-Lens's default,
//! `use_matryoshka_aux_loss: false`).
//!
//! # Decoder rows
//! `sae.matryoshka_decoder_norm: unit` (default) keeps them at unit norm, as for every
//! architecture and in Bussmann et al.'s reference trainer (with unit rows SAE-Lens's
//! `rescale_acts_by_decoder_norm` is a no-op). `free` trains W_dec as a plain parameter:
//! SAE-Lens with `rescale_acts_by_decoder_norm: false`. Same loss, same gradients; only
//! [`crate::sae::optim::Adam::step`]'s projection and renormalisation are skipped. On the
//! ground-truth data of `make bench-architectures` this parameterisation, not the loss, is
//! what separated saeclip from that SAE-Lens configuration (bench/RESULTS.md).
//!
//! # Gradients, sparse
//! An entry (i, j) of latent j in block b (w_{b−1} ≤ j < w_b) feeds x̂_m for every m ≥ b, so
//! its decoder-side gradient is W_dec[j]·G_{b,i} with G_b = Σ_{m ≥ b} ∂loss/∂x̂_m (a suffix
//! sum of the M per-prefix gradients, M·[B, D]). Stacking G_0 … G_{M−1} as one [M·B, D]
//! table and giving entry e the column b_e·B + i_e, the top-k backward of
//! [`crate::sae::objective`] runs unchanged: nothing of size [B, F] is built. And
//! ∂/∂b_dec = Σ_i G_{0,i} − W_enc·∂/∂b_enc, since b_dec is in every prefix.
//!
//! # Metrics
//! `prefix_evr`: the explained variance of each prefix alone ([`crate::sae::prefix`]
//! with the inference selection), in metrics.jsonl and `analyze-logs`.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::sae::codes::{decode_scaled, Codes};

/// How a matryoshka SAE selects its codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MatryoshkaSelection {
    /// The k·B largest pre-activations of the batch; a learned θ at inference.
    #[default]
    #[value(name = "batchtopk")]
    BatchTopK,
    /// The k largest of each row.
    #[value(name = "topk")]
    TopK,
}

/// How a matryoshka SAE's decoder rows are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DecoderNorm {
    /// Rows kept at unit norm (the gradient's component along each row removed, rows
    /// renormalised after each step), as for every other architecture and in Bussmann et
    /// al.'s reference trainer. A header without the field reads as this.
    #[default]
    #[value(name = "unit")]
    Unit,
    /// Rows left free, a plain Adam parameter: SAE-Lens's `MatryoshkaBatchTopKTrainingSAE`
    /// with `rescale_acts_by_decoder_norm: false` (codes selected on the raw pre-activations).
    #[value(name = "free")]
    Free,
}

/// The nested prefixes of a matryoshka SAE (recorded in the checkpoint header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatryoshkaParams {
    /// Cumulative prefix widths w_1 < … < w_M = d_sae (SAE-Lens's `matryoshka_widths`).
    pub widths: Vec<i64>,
    /// λ_m, the weight of each prefix's reconstruction loss.
    pub weights: Vec<f64>,
    pub selection: MatryoshkaSelection,
    /// Whether training keeps the decoder rows at unit norm (`sae.matryoshka_decoder_norm`).
    #[serde(default)]
    pub decoder_norm: DecoderNorm,
}

impl MatryoshkaParams {
    /// One prefix of all `d_sae` latents (plain batch top-k).
    pub fn single(d_sae: i64) -> MatryoshkaParams {
        MatryoshkaParams {
            widths: vec![d_sae],
            weights: vec![1.0],
            selection: MatryoshkaSelection::BatchTopK,
            decoder_norm: DecoderNorm::Unit,
        }
    }

    /// Widths (weights default to 1 each) checked against `d_sae`, unit-norm decoder rows
    /// ([`MatryoshkaParams::with_decoder_norm`] changes that); errors name the key.
    pub fn new(
        widths: Vec<i64>,
        weights: Option<Vec<f64>>,
        selection: MatryoshkaSelection,
        d_sae: i64,
    ) -> Result<MatryoshkaParams> {
        let weights = weights.unwrap_or_else(|| vec![1.0; widths.len()]);
        let p = MatryoshkaParams {
            widths,
            weights,
            selection,
            decoder_norm: DecoderNorm::Unit,
        };
        p.validate(d_sae)?;
        Ok(p)
    }

    /// The same prefixes with decoder rows trained as `decoder_norm` says.
    pub fn with_decoder_norm(mut self, decoder_norm: DecoderNorm) -> MatryoshkaParams {
        self.decoder_norm = decoder_norm;
        self
    }

    /// Errors name the config key.
    pub fn validate(&self, d_sae: i64) -> Result<()> {
        let w = &self.widths;
        ensure!(
            !w.is_empty(),
            "sae.matryoshka_widths is empty: give the cumulative prefix widths, ending at d_sae = {d_sae}"
        );
        ensure!(
            w[0] >= 1,
            "sae.matryoshka_widths = {w:?}: widths must be positive"
        );
        ensure!(
            w.windows(2).all(|p| p[0] < p[1]),
            "sae.matryoshka_widths = {w:?}: must be strictly increasing"
        );
        ensure!(
            *w.last().unwrap() == d_sae,
            "sae.matryoshka_widths = {w:?}: the last width must equal d_sae = {d_sae}"
        );
        ensure!(
            self.weights.len() == w.len(),
            "sae.matryoshka_weights has {} entries, sae.matryoshka_widths {}: give one weight per prefix",
            self.weights.len(),
            w.len()
        );
        ensure!(
            self.weights.iter().all(|x| x.is_finite() && *x >= 0.0)
                && self.weights.iter().any(|x| *x > 0.0),
            "sae.matryoshka_weights = {:?}: must be non-negative, not all zero",
            self.weights
        );
        Ok(())
    }

    /// The block of each latent: b such that w_{b−1} ≤ j < w_b. Same shape as `latents`.
    pub fn blocks(&self, latents: &Tensor) -> Tensor {
        let bounds = Tensor::from_slice(&self.widths).to_device(latents.device());
        Tensor::bucketize(latents, &bounds, false, true)
    }
}

/// The scaled-space decodes without b_dec of each prefix of `codes`, cumulative: entry m
/// sums the entries of blocks 0..=m. `blocks` from [`MatryoshkaParams::blocks`]. M·[B, D]
pub(crate) fn prefix_decodes(
    w_dec: &Tensor,
    codes: &Codes,
    blocks: &Tensor,
    m: usize,
) -> Vec<Tensor> {
    (0..m)
        .map(|p| {
            if p + 1 == m {
                return decode_scaled(w_dec, codes);
            }
            let keep = blocks.le(p as i64).to_kind(Kind::Float);
            let masked = Codes {
                values: &codes.values * keep,
                latents: codes.latents.shallow_clone(),
                rows: codes.rows.shallow_clone(),
                offsets: codes.offsets.shallow_clone(),
                d_sae: codes.d_sae,
            };
            decode_scaled(w_dec, &masked)
        })
        .collect()
}
