//! saeclip: sparse autoencoders on the internal activations of CLIP ViT models.
//!
//! The library holds all the computation; the `saeclip` binary only parses its command
//! line and calls in here.
pub mod cli;
pub mod clip;
pub mod data;
pub mod device;
pub mod devtools;
pub mod disk;
pub mod embed;
pub mod eval;
pub mod extract;
pub mod fetch;
pub mod info;
pub mod interpret;
pub mod report;
pub mod rng;
pub mod sae;
pub mod ui;
