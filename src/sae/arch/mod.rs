//! The architectures, one file each: its selection (which latents of the pre-activations
//! become codes), its backward where the shared ones in [`super::objective`] do not serve,
//! and its settings. They sit below the model: [`super::model`] dispatches the selections
//! in one place (`select_with`, `training_selection`, `inference_selection`) and
//! [`super::objective::forward_backward`] the backwards, and nothing here imports either.
//!
//! Adding an architecture: a new file here, a variant of [`super::model::Architecture`]
//! with its arms in those dispatches, its keys in the config, and its tests.

pub mod batchtopk;
pub mod jumprelu;
pub mod matryoshka;
pub mod relu;
pub mod topk;
