//! What one training step takes and gives, below every architecture's backward: the loss
//! coefficients ([`LossOptions`]), the gradients ([`Grads`]) and the step's output
//! ([`StepOutput`]). [`super::objective`] runs the step and dispatches to the
//! architectures' files ([`super::arch`]) that need their own backward.

use tch::{Device, Kind, Tensor};

/// Coefficients of one step's loss; `k` is the current k (the loop may warm it up).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossOptions {
    /// Non-zeros per row (topk), per row on average (batchtopk); unused by relu.
    pub k: i64,
    /// Dead latents per row that AuxK may use; 0 turns AuxK off.
    pub k_aux: i64,
    /// Weight of the AuxK term (default 1/32).
    pub aux_coef: f64,
    /// Weight of the sparsity penalty: L1 for relu, L0 (or tanh) for jumprelu; unused by
    /// the others.
    pub l1_coef: f64,
    /// σ²: `mse` is divided by it (see [`crate::sae::objective`] and its `data_variance`); 1 gives the
    /// plain mean squared error.
    pub data_variance: f64,
}

/// Gradients of the loss with respect to the four parameters, shaped like them.
#[derive(Debug)]
pub struct Grads {
    pub w_enc: Tensor,
    pub b_enc: Tensor,
    pub w_dec: Tensor,
    pub b_dec: Tensor,
    /// jumprelu: the gradient of log θ. [F]
    pub threshold_param: Option<Tensor>,
}

impl Grads {
    /// In the order of [`super::optim::PARAMS`], then `threshold_param` when present.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec];
        out.extend(self.threshold_param.as_ref());
        out
    }

    fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = vec![
            &mut self.w_enc,
            &mut self.b_enc,
            &mut self.w_dec,
            &mut self.b_dec,
        ];
        out.extend(self.threshold_param.as_mut());
        out
    }

    /// g_j −= (g_j·w_j)·w_j for each decoder row: the part of the step that the row
    /// renormalisation would undo (w_j must have unit norm).
    pub fn remove_parallel_decoder_component(&mut self, w_dec: &Tensor) {
        self.remove_parallel_with(w_dec, None)
    }

    /// The same with a scratch tensor shaped and laid out like `w_dec`.
    pub(crate) fn remove_parallel_with(&mut self, w_dec: &Tensor, scratch: Option<&Tensor>) {
        let products = match scratch {
            Some(s) => self.w_dec.mul_out(s, w_dec),
            None => &self.w_dec * w_dec,
        };
        let along = products.sum_dim_intlist(1, true, Kind::Float); // [F, 1]
        let parallel = match scratch {
            Some(s) => w_dec.mul_out(s, &along),
            None => w_dec * along,
        };
        let _ = self.w_dec.g_sub_(&parallel);
    }

    /// ‖(all gradients)‖₂, as `torch.nn.utils.clip_grad_norm_` computes it. 0-dim f32
    pub fn global_norm(&self) -> Tensor {
        let norms: Vec<Tensor> = self.tensors().iter().map(|g| g.norm()).collect();
        Tensor::stack(&norms, 0).norm()
    }

    /// Scale all gradients by min(1, max_norm/(‖g‖ + 1e-6)) like
    /// `torch.nn.utils.clip_grad_norm_`, without reading anything off the device; returns
    /// the norm before clipping. 0-dim f32
    pub fn clip_norm(&mut self, max_norm: f64) -> Tensor {
        let total = self.global_norm();
        let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        for g in self.tensors_mut() {
            let _ = g.g_mul_(&coef);
        }
        total
    }
}

/// What one forward and backward pass yields. Scalars are 0-dim f32 tensors on the SAE's
/// device: read them only at log intervals.
#[derive(Debug)]
pub struct StepOutput {
    pub loss: Tensor,
    pub mse: Tensor,
    /// AuxK term, already times aux_coef (0 when off).
    pub aux: Tensor,
    /// The sparsity penalty, already times l1_coef: L1 for relu, L0 (or tanh) for jumprelu;
    /// 0 for the others.
    pub l1: Tensor,
    /// Mean positive latents per row.
    pub l0: Tensor,
    pub grads: Grads,
    /// Rows in which each latent was positive. [F] i64
    pub fired: Tensor,
    /// Smallest positive kept activation (+∞ if none, and for relu): feeds
    /// [`super::arch::batchtopk::ThresholdEstimator::update`].
    pub min_positive: Tensor,
    /// The reconstruction in the original space. [B, D] f32
    pub x_hat: Tensor,
    /// matryoshka: the reconstruction of each prefix alone, the last = `x_hat` (original
    /// space). Empty for the other architectures. M·[B, D] f32
    pub prefix_x_hat: Vec<Tensor>,
}

/// d/db_dec: the decoder's Σ_i dx̂_i, minus what flows back through x_c = x_s − b_dec into
/// the encoder (W_enc·db_enc). [D]
pub(crate) fn b_dec_grad(w_enc: &Tensor, dx_hat: &Tensor, b_enc: &Tensor) -> Tensor {
    dx_hat.sum_dim_intlist(0, false, Kind::Float) - w_enc.mv(b_enc)
}

pub(crate) fn zero(device: Device) -> Tensor {
    Tensor::zeros([], (Kind::Float, device))
}

/// The parameters a step reads, borrowed from the SAE (`W_enc` [D, F], `W_dec` [F, D],
/// `b_dec` [D] in the scaled space, and s).
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    pub w_enc: &'a Tensor,
    pub w_dec: &'a Tensor,
    pub b_dec: &'a Tensor,
    pub input_scale: f64,
}
