//! Sparse autoencoders (SAEs) on CLIP activations: the model, its loss with hand-written
//! sparse gradients, the optimizer and the checkpoint file (DESIGN.md "SAE checkpoint",
//! "Metrics").
//!
//! One training step, as the loop is expected to run it:
//! ```no_run
//! # use saeclip::sae::*;
//! # fn demo(sae: &mut Sae, adam: &mut Adam, x: &tch::Tensor, dead: &mut DeadTracker) {
//! let mut workspace = Workspace::new(); // once, before the loop
//! let options = LossOptions { k: 64, k_aux: 384, aux_coef: 1.0 / 32.0, l1_coef: 0.0, data_variance: 1.0 };
//! let out = forward_backward(sae, x, Some(&dead.auxk_mask()), &options, &mut workspace);
//! dead.update(&out.fired, x.size()[0]);
//! let grad_norm = adam.step(sae, out.grads, 2e-4, Some(1.0));
//! // read out.loss, out.mse, out.l0, grad_norm (0-dim tensors) only at log intervals
//! # let _ = grad_norm;
//! # }
//! ```
//!
//! Spaces: every public function takes and returns activations in the *original* space;
//! the SAE works internally on `x·input_scale` (the "scaled space", where E‖x‖ = √d_in), and
//! the training losses are measured there. Metrics (`Evr`, l0) are in the original space.
pub mod arch;
pub mod checkpoint;
pub mod codes;
pub mod config;
pub mod export;
pub mod interop;
pub mod model;
pub mod objective;
pub mod prefix;
pub mod select;
pub mod step;
pub mod summary;
pub mod sync;
pub mod train;

// The training wing's rooms, also at their old paths (`sae::batches`, `sae::optim`, `sae::sweep`).
pub use train::{batches, optim, sweep};
// The architectures' settings, also at their old paths (`sae::jumprelu`, `sae::matryoshka`).
pub use arch::{jumprelu, matryoshka};

pub use checkpoint::{Checkpoint, CheckpointMeta, TrainingState, TrainingStateRef};
pub use jumprelu::{JumpReluParams, SparsityLoss, ThresholdParam};
pub use matryoshka::{DecoderNorm, MatryoshkaParams, MatryoshkaSelection};
pub use model::{Architecture, BdecInit, Codes, Sae, SaeConfig, Selection, WEncInit};
pub use objective::{
    data_variance, forward_backward, DeadTracker, Evr, Firing, Grads, LossOptions, StepOutput,
    ThresholdEstimator, Workspace,
};
pub use optim::{Adam, AdamConfig};
pub use prefix::{prefix_evr, prefix_reconstructions, PrefixEvr};
pub use sync::SyncFree;
