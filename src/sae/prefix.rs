//! Matryoshka's metrics: the reconstruction and explained variance of each nested prefix
//! alone ([`super::arch::matryoshka`]), with the inference selection. Any other SAE has one
//! prefix, all its latents.

use tch::{Kind, Tensor};

use super::arch::matryoshka::prefix_decodes;
use super::model::Sae;
use super::objective::Evr;

/// The reconstruction of x [B, D] (original space) by each prefix alone, with the inference
/// selection over all latents (codes outside a prefix dropped). One per width of
/// [`Sae::prefix_widths`]; the last is [`Sae::reconstruct`]'s. M·[B, D]
pub fn prefix_reconstructions(sae: &Sae, x: &Tensor) -> Vec<Tensor> {
    let _guard = tch::no_grad_guard();
    let widths = sae.prefix_widths();
    let codes = sae.encode_sparse(x, sae.inference_selection());
    let bounds = Tensor::from_slice(&widths).to_device(codes.latents.device());
    let blocks = Tensor::bucketize(&codes.latents, &bounds, false, true);
    prefix_decodes(&sae.w_dec, &codes, &blocks, widths.len())
        .into_iter()
        .map(|d| (d + &sae.b_dec) / sae.input_scale)
        .collect()
}

/// Explained variance of each prefix alone over a set, accumulated batch by batch
/// (DESIGN.md "Metrics": `evr` per prefix).
#[derive(Debug)]
pub struct PrefixEvr {
    pub widths: Vec<i64>,
    evr: Vec<Evr>,
}

impl PrefixEvr {
    pub fn new(sae: &Sae) -> PrefixEvr {
        let widths = sae.prefix_widths();
        PrefixEvr {
            evr: widths
                .iter()
                .map(|_| Evr::new(sae.config.d_in, sae.device()))
                .collect(),
            widths,
        }
    }

    /// Add a batch x [B, D] (original space) encoded by `sae`.
    pub fn update(&mut self, sae: &Sae, x: &Tensor) {
        let x = x.to_device(sae.device()).to_kind(Kind::Float);
        for (e, r) in self.evr.iter_mut().zip(prefix_reconstructions(sae, &x)) {
            e.update(&x, &r);
        }
    }

    /// Add a batch whose prefix reconstructions are known (`StepOutput::prefix_x_hat`).
    pub fn update_with(&mut self, x: &Tensor, x_hats: &[Tensor]) {
        for (e, r) in self.evr.iter_mut().zip(x_hats) {
            e.update(x, r);
        }
    }

    /// One evr per prefix (NaN before any row).
    pub fn evr(&self) -> Vec<f64> {
        self.evr.iter().map(Evr::evr).collect()
    }
}

/// The explained variance of each prefix of `sae` alone on the batch x [B, D] (original
/// space), with the inference selection: what `evaluate` reports per prefix.
pub fn prefix_evr(sae: &Sae, x: &Tensor) -> Vec<f64> {
    let mut p = PrefixEvr::new(sae);
    p.update(sae, x);
    p.evr()
}

/// [`prefix_evr`] over every batch of `batches` (any device and dtype): each prefix's
/// explained variance over the whole set.
pub fn prefix_evr_over(
    sae: &Sae,
    batches: impl Iterator<Item = anyhow::Result<Tensor>>,
) -> anyhow::Result<Vec<f64>> {
    let _guard = tch::no_grad_guard();
    let mut p = PrefixEvr::new(sae);
    for x in batches {
        p.update(sae, &x?);
    }
    Ok(p.evr())
}
