//! SigLIP and SigLIP 2: a ViT without class token pooled by attention, a bidirectional text
//! tower pooled at its last position, and the sigmoid head
//! `sigmoid(exp(logit_scale) · cos(image, text) + logit_bias)`.
//!
//! Mirrors transformers' `SiglipModel` and `Siglip2Model`; variable names are the keys of a
//! transformers `model.safetensors`. Layer numbering follows DESIGN.md: layer L is the
//! residual stream output of block L. Shapes: B images, T texts, N patches, D width,
//! E embedding width.

pub mod config;
pub mod text;
pub mod tokenizer;
pub mod vision;

use std::path::Path;

use anyhow::{ensure, Context, Result};
use tch::{nn, nn::VarStore, Device, Kind, Tensor};

pub use config::{SiglipConfig, SiglipFamily, SiglipTextConfig, SiglipVisionConfig};
pub use text::SiglipTextTransformer;
pub use vision::SiglipVisionTransformer;

use super::{normalize, Precision};

/// Both towers and the sigmoid head's scale and bias.
#[derive(Debug)]
pub struct SiglipModel {
    pub vision: SiglipVisionTransformer,
    pub text: SiglipTextTransformer,
    logit_scale: Tensor,
    logit_bias: Tensor,
    config: SiglipConfig,
}

impl SiglipModel {
    pub fn new(vs: nn::Path, c: &SiglipConfig) -> SiglipModel {
        SiglipModel {
            vision: SiglipVisionTransformer::new(&vs / "vision_model", &c.vision, c.family),
            text: SiglipTextTransformer::new(&vs / "text_model", &c.text),
            logit_scale: vs.var("logit_scale", &[1], nn::Init::Const(10f64.ln())),
            logit_bias: vs.var("logit_bias", &[1], nn::Init::Const(-10.0)),
            config: c.clone(),
        }
    }

    /// Fuse the q/k/v projections of both towers once the weights are final.
    pub fn fuse(&mut self) {
        self.vision.fuse();
        self.text.fuse();
    }

    pub fn config(&self) -> &SiglipConfig {
        &self.config
    }
}

/// A loaded SigLIP model and its variables.
#[derive(Debug)]
pub struct Siglip {
    vs: VarStore,
    model: SiglipModel,
}

impl Siglip {
    /// Load a transformers directory (`config.json` with `model_type` siglip or siglip2, and
    /// `model.safetensors`); every tensor is checked against the config by name and shape.
    pub fn load(dir: &Path, device: Device, precision: Precision) -> Result<Siglip> {
        let weights = dir.join("model.safetensors");
        ensure!(
            weights.is_file(),
            "{} has no model.safetensors",
            dir.display()
        );
        Siglip::load_files(&dir.join("config.json"), &weights, device, precision)
    }

    /// Load the weights at `weights` for the `config.json` at `config`.
    pub fn load_files(
        config: &Path,
        weights: &Path,
        device: Device,
        precision: Precision,
    ) -> Result<Siglip> {
        let config = SiglipConfig::from_hf_file(config)?;
        let mut vs = VarStore::new(device);
        let mut model = SiglipModel::new(vs.root(), &config);
        crate::clip::weights::load_hf(&vs, weights)?;
        vs.freeze();
        if precision != Precision::F32 {
            vs.set_kind(precision.kind());
        }
        model.fuse();
        Ok(Siglip { vs, model })
    }

    /// A model of `config` with weights drawn from `seed` (not a trained SigLIP).
    pub fn random(
        config: &SiglipConfig,
        seed: i64,
        device: Device,
        precision: Precision,
    ) -> Siglip {
        let (mut vs, mut model) = crate::rng::seeded(seed, || {
            let vs = VarStore::new(device);
            let model = SiglipModel::new(vs.root(), config);
            (vs, model)
        });
        vs.freeze();
        if precision != Precision::F32 {
            vs.set_kind(precision.kind());
        }
        model.fuse();
        Siglip { vs, model }
    }

    /// Write as a transformers directory (`config.json` + `model.safetensors`).
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(format!(".model-{}.safetensors", std::process::id()));
        self.vs
            .save(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join("model.safetensors"))
            .with_context(|| format!("cannot write {}", dir.join("model.safetensors").display()))?;
        let config = serde_json::to_string_pretty(&self.model.config.to_hf_json())?;
        crate::disk::write_bytes_atomic(&dir.join("config.json"), config.as_bytes())
    }

    pub fn model(&self) -> &SiglipModel {
        &self.model
    }

    pub fn config(&self) -> &SiglipConfig {
        &self.model.config
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// `logit_scale` as stored (log scale).
    pub fn logit_scale(&self) -> f64 {
        self.model.logit_scale.double_value(&[0])
    }

    pub fn logit_bias(&self) -> f64 {
        self.model.logit_bias.double_value(&[0])
    }

    /// The residual stream after block `layer`, [B, N, D]; later blocks are not computed.
    pub fn residual(&self, pixels: &Tensor, layer: usize) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.model.vision.residual(pixels, layer)
    }

    /// The residual streams after each of `layers`, in one pass.
    pub fn residuals(&self, pixels: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        let _guard = tch::no_grad_guard();
        self.model.vision.residuals(pixels, layers)
    }

    /// Image embeddings (the pooling head's output, not normalised), [B, E].
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.model.vision.pooled(pixels)
    }

    /// Image embeddings from the residual after `layer`, [B, E].
    pub fn image_embeds_from(&self, residual: &Tensor, layer: usize) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.model.vision.pooled_from(residual, layer)
    }

    /// Image embeddings with block `layer`'s output replaced by `edit` of it, [B, E].
    pub fn image_embeds_spliced(
        &self,
        pixels: &Tensor,
        layer: usize,
        edit: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let residual = self.residual(pixels, layer)?;
        let edited = edit(&residual)?;
        ensure!(
            edited.size() == residual.size(),
            "the splice returned shape {:?} for a residual of shape {:?}",
            edited.size(),
            residual.size()
        );
        self.image_embeds_from(&edited, layer)
    }

    /// Text embeddings of padded ids [T, S], [T, E].
    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.model.text.pooled(ids)
    }

    /// `exp(logit_scale) · cos(image, text) + logit_bias`, [B, T], in f32.
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Tensor {
        sigmoid_logits(
            image_embeds,
            text_embeds,
            self.logit_scale(),
            self.logit_bias(),
        )
    }
}

/// SigLIP's pairwise logits `exp(scale) · cos(image, text) + bias`, [B, T], in f32; the
/// sigmoid of each is the probability that the text matches the image.
pub fn sigmoid_logits(image: &Tensor, text: &Tensor, scale: f64, bias: f64) -> Tensor {
    let image = normalize(&image.to_kind(Kind::Float));
    let text = normalize(&text.to_kind(Kind::Float).to_device(image.device()));
    image.matmul(&text.tr()) * scale.exp() + bias
}
