//! The native CLIP model: both towers, their projections and the logit scale.
//!
//! Mirrors transformers' `CLIPModel` (models/clip/modeling_clip.py); variable names are
//! the keys of a transformers `model.safetensors`. Shapes: B images, T texts, D tower
//! width, E embedding width.

use anyhow::Result;
use tch::{nn, Tensor};

use super::config::ClipConfig;
use super::text::TextTransformer;
use super::vision::VisionTransformer;

#[derive(Debug)]
pub struct ClipModel {
    pub vision: VisionTransformer,
    pub text: TextTransformer,
    visual_projection: nn::Linear,
    text_projection: nn::Linear,
    logit_scale: Tensor,
    config: ClipConfig,
}

impl ClipModel {
    pub fn new(vs: nn::Path, c: &ClipConfig) -> ClipModel {
        let no_bias = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        ClipModel {
            vision: VisionTransformer::new(&vs / "vision_model", &c.vision),
            text: TextTransformer::new(&vs / "text_model", &c.text),
            visual_projection: nn::linear(
                &vs / "visual_projection",
                c.vision.hidden_size,
                c.projection_dim,
                no_bias,
            ),
            text_projection: nn::linear(
                &vs / "text_projection",
                c.text.hidden_size,
                c.projection_dim,
                no_bias,
            ),
            logit_scale: vs.var("logit_scale", &[], nn::Init::Const(2.6592)),
            config: c.clone(),
        }
    }

    /// Derive the fast-path weights once the variables hold their final values and
    /// dtype: fused q/k/v projections in both towers.
    pub fn fuse(&mut self) {
        self.vision.fuse();
        self.text.fuse();
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Image embeddings (projected, not normalised), [B, E].
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vision.pooled(pixels)?.apply(&self.visual_projection))
    }

    /// Image embeddings from the residual stream after block `layer`, [B, E].
    pub fn image_embeds_from(&self, residual: &Tensor, layer: usize) -> Result<Tensor> {
        Ok(self
            .vision
            .pooled_from(residual, layer)?
            .apply(&self.visual_projection))
    }

    /// Text embeddings (projected, not normalised), [T, E].
    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.text.pooled(ids)?.apply(&self.text_projection))
    }

    /// The learned temperature, as stored (log scale).
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale.double_value(&[])
    }
}
