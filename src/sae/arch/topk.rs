//! topk (Gao et al. 2024): the k largest pre-activations of each row, then ReLU. Its
//! training and inference selection are the same; its backward is the shared sparse one
//! ([`crate::sae::objective`]), with AuxK.

use tch::{Kind, Tensor};

use crate::sae::codes::Codes;

/// The k largest of each row of `pre` [B, F], then ReLU: k entries per row, in row order.
pub fn select(pre: &Tensor, k: i64) -> Codes {
    let (b, f) = pre.size2().expect("pre-activations are [B, F]");
    let device = pre.device();
    assert!((1..=f).contains(&k), "top-k needs 1 <= k <= {f}, got {k}");
    let (values, latents) = pre.topk(k, 1, true, false); // [B, k]
    let rows = Tensor::arange(b, (Kind::Int64, device))
        .unsqueeze(1)
        .expand([b, k], false)
        .reshape([-1]);
    Codes {
        values: values.relu().reshape([-1]),
        latents: latents.reshape([-1]),
        rows,
        offsets: Tensor::arange_start_step(0, b * k + 1, k, (Kind::Int64, device)),
        d_sae: f,
    }
}
