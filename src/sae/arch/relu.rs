//! relu: z = ReLU(pre), its sparsity from an L1 penalty weighted by the decoder row norms
//! (the dense backward in [`crate::sae::objective`]). Its codes, and those of every
//! selection above a threshold (batchtopk's inference, jumprelu's per-latent θ), are the
//! entries of a mask, whose count depends on the data.

use tch::Tensor;

use crate::sae::codes::Codes;
use crate::sae::sync::host_read;

/// The codes of every pre-activation of `pre` [B, F] above `theta` (≥ 0): ReLU at 0,
/// batchtopk's inference at its θ.
pub fn above(pre: &Tensor, theta: f64) -> Codes {
    from_mask(pre, &pre.gt(theta))
}

/// The codes of the entries of `pre` [B, F] that `mask` [B, F] keeps, in row order.
pub(crate) fn from_mask(pre: &Tensor, mask: &Tensor) -> Codes {
    let (b, f) = pre.size2().expect("pre-activations are [B, F]");
    // [N, 2], row-major like masked_select
    let (nz, values) = host_read("threshold/ReLU codes: the number of entries", || {
        (mask.nonzero(), pre.masked_select(mask))
    });
    Codes::from_entries(
        values,
        nz.select(1, 1).contiguous(),
        nz.select(1, 0).contiguous(),
        b,
        f,
        false,
    )
}
