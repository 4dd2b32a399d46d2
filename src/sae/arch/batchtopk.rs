//! batchtopk (Bussmann et al. 2024): the k·B largest pre-activations of a batch of B rows
//! while training, and at inference a learned threshold θ, z = pre·[pre > θ]
//! ([`ThresholdEstimator`] averages each training batch's smallest kept activation). Its
//! backward is the shared sparse one ([`crate::sae::objective`]), with AuxK.

use tch::{Device, Kind, Tensor};

use crate::sae::codes::Codes;
use crate::sae::sync::host_read;

/// The k·B largest entries of `pre` [B, F], exactly, in row-major order (by row, then
/// latent). Sync-free: one `topk` over all B·F values. Host form: [`batch_topk_search`].
pub fn select(pre: &Tensor, k: i64, sync_free: bool) -> Codes {
    let (b, f) = pre.size2().expect("pre-activations are [B, F]");
    assert!(
        (1..=f).contains(&k),
        "batch top-k needs 1 <= k <= {f}, got {k}"
    );
    let (values, flat) = if sync_free {
        pre.reshape([-1]).topk(k * b, 0, true, false)
    } else {
        batch_topk_search(pre, k)
    };
    let (flat, order) = flat.sort(0, false); // row-major order
    let rows = flat.floor_divide_scalar(f);
    let latents = &flat - &rows * f;
    let values = values.index_select(0, &order).relu();
    Codes::from_entries(values, latents, rows, b, f, sync_free)
}

/// The k·B largest values of `pre` [B, F] and their flat indices (row·F + latent), in no
/// particular order, exactly, without a `topk` over all B·F values (which on the CPU
/// allocates scratch the size of `pre` and costs several row-wise top-k passes).
///
/// A bound L below the k·B-th largest value comes from a sample (every 13th value, whose
/// 2k·B/13-th largest sits near the batch's 2k·B-th largest); one pass keeps the values
/// ≥ L (about 2k·B of them), and the k·B largest of those are the answer as soon as there
/// are at least k·B: every value left out is below L, below all of them. Should the sample
/// mislead (fewer than k·B values ≥ L), a sample rank four times deeper is tried, then the
/// full `topk`. The sample spans all rows, so rows of very different scales (a few rows
/// holding most of the batch's largest values) cost nothing more; the row-wise search
/// this replaces (top 4k candidates per row, r doubled for every row whenever one row was
/// saturated) took up to log₂(F/4k) full passes there.
pub fn batch_topk_search(pre: &Tensor, k: i64) -> (Tensor, Tensor) {
    const STRIDE: i64 = 13;
    let (b, f) = pre.size2().expect("pre-activations are [B, F]");
    let total = k * b;
    let n = b * f;
    let flat = pre.reshape([-1]);
    if n < 16 * total {
        return flat.topk(total, 0, true, false);
    }
    let sample = flat.slice(0, 0, n, STRIDE).contiguous();
    let size = sample.size()[0];
    let mut rank = ((2 * total + STRIDE - 1) / STRIDE).min(size);
    for _ in 0..2 {
        let (top, _) = sample.topk(rank, 0, true, false);
        let bound = top.min();
        let kept = host_read("batch top-k: the values above the sampled bound", || {
            flat.ge_tensor(&bound).nonzero().view([-1])
        });
        if kept.size()[0] >= total {
            let (values, pos) = flat.index_select(0, &kept).topk(total, 0, true, false);
            return (values, kept.index_select(0, &pos));
        }
        rank = (4 * rank).min(size);
    }
    flat.topk(total, 0, true, false)
}

/// θ for batchtopk inference: a running average of each training batch's smallest kept
/// positive activation (Bussmann et al. 2024). With `decay` Some(d) an exponential moving
/// average, debiased like Adam's moments (the first batch counts fully); with None the plain
/// mean over all batches. Batches without a positive activation are skipped. Updates stay
/// on the device.
#[derive(Debug)]
pub struct ThresholdEstimator {
    pub decay: Option<f64>,
    /// Weighted sum of minima. 0-dim f64
    pub sum: Tensor,
    /// Total weight. 0-dim f64
    pub weight: Tensor,
}

impl ThresholdEstimator {
    pub fn new(decay: Option<f64>, device: Device) -> ThresholdEstimator {
        ThresholdEstimator {
            decay,
            sum: Tensor::zeros([], (Kind::Double, device)),
            weight: Tensor::zeros([], (Kind::Double, device)),
        }
    }

    /// Fold in one batch's `StepOutput::min_positive`.
    pub fn update(&mut self, min_positive: &Tensor) {
        let m = min_positive.to_kind(Kind::Double);
        let valid = m.isfinite().to_kind(Kind::Double);
        let m = m.nan_to_num(0.0, 0.0, 0.0);
        match self.decay {
            Some(decay) => {
                let rate = valid * (1.0 - decay);
                self.sum = &self.sum + &rate * (m - &self.sum);
                self.weight = &self.weight + &rate * (1.0 - &self.weight);
            }
            None => {
                self.sum = &self.sum + &valid * m;
                self.weight = &self.weight + valid;
            }
        }
    }

    /// θ, or None before any batch had a positive activation.
    pub fn value(&self) -> Option<f64> {
        let w = self.weight.double_value(&[]);
        (w > 0.0).then(|| self.sum.double_value(&[]) / w)
    }
}
