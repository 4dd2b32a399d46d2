//! The vision tower: a ViT whose residual stream can be read after any block or edited
//! there and run on to the image embedding.
//!
//! Mirrors transformers' `CLIPVisionEmbeddings` and `CLIPVisionTransformer`
//! (models/clip/modeling_clip.py). Shapes: B batch, C channels, P pixels per side,
//! N patches, S = N + 1 tokens, D width.

use anyhow::{bail, ensure, Result};
use tch::{nn, nn::Module, Tensor};

use super::config::VisionConfig;
use super::encoder::{layer_norm, BlockDims, Encoder};

/// Patch, class and position embeddings.
#[derive(Debug)]
pub struct VisionEmbeddings {
    patch_embedding: nn::Conv2D,
    class_embedding: Tensor,
    position_embedding: nn::Embedding,
}

impl VisionEmbeddings {
    pub fn new(vs: nn::Path, c: &VisionConfig) -> VisionEmbeddings {
        let conv = nn::ConvConfig {
            stride: c.patch_size,
            bias: false,
            ..Default::default()
        };
        VisionEmbeddings {
            patch_embedding: nn::conv2d(
                &vs / "patch_embedding",
                c.num_channels,
                c.hidden_size,
                c.patch_size,
                conv,
            ),
            class_embedding: vs.var(
                "class_embedding",
                &[c.hidden_size],
                nn::Init::Randn {
                    mean: 0.,
                    stdev: 1.,
                },
            ),
            position_embedding: nn::embedding(
                &vs / "position_embedding",
                c.num_positions(),
                c.hidden_size,
                Default::default(),
            ),
        }
    }
}

impl Module for VisionEmbeddings {
    fn forward(&self, pixels: &Tensor) -> Tensor {
        let patches = pixels
            .apply(&self.patch_embedding)
            .flatten(2, -1)
            .transpose(1, 2); // B, N, D
        let (b, _, d) = patches.size3().expect("patch embeddings are [B, N, D]");
        let class = self
            .class_embedding
            .view([1, 1, d])
            .expand([b, 1, d], false); // B, 1, D
        Tensor::cat(&[class, patches], 1) + self.position_embedding.ws.unsqueeze(0)
        // B, S, D
    }
}

/// The ViT: embeddings, pre-layernorm, blocks, post-layernorm on the class token.
#[derive(Debug)]
pub struct VisionTransformer {
    embeddings: VisionEmbeddings,
    pre_layrnorm: nn::LayerNorm,
    encoder: Encoder,
    post_layernorm: nn::LayerNorm,
    config: VisionConfig,
}

impl VisionTransformer {
    pub fn new(vs: nn::Path, c: &VisionConfig) -> VisionTransformer {
        let dims = BlockDims {
            width: c.hidden_size,
            heads: c.num_attention_heads,
            mlp_hidden: c.intermediate_size,
            eps: c.layer_norm_eps,
            activation: c.activation,
        };
        VisionTransformer {
            embeddings: VisionEmbeddings::new(&vs / "embeddings", c),
            pre_layrnorm: layer_norm(&vs / "pre_layrnorm", c.hidden_size, c.layer_norm_eps),
            encoder: Encoder::new(&vs / "encoder", &dims, c.num_hidden_layers),
            post_layernorm: layer_norm(&vs / "post_layernorm", c.hidden_size, c.layer_norm_eps),
            config: c.clone(),
        }
    }

    /// Fuse each block's q/k/v projections (see [`super::encoder::Attention::fuse`]).
    pub fn fuse(&mut self) {
        self.encoder.fuse();
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// Token embeddings after the pre-layernorm (transformers' `hidden_states[0]`).
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = self.check_pixels(pixels)?;
        Ok(pixels.apply(&self.embeddings).apply(&self.pre_layrnorm)) // B, S, D
    }

    /// The residual stream after each of `layers` (any order, repeats allowed), computed
    /// in one pass that stops after the deepest one.
    pub fn residuals(&self, pixels: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        let Some(&deepest) = layers.iter().max() else {
            return Ok(Vec::new());
        };
        self.check_layer(deepest)?;
        Ok(self.encoder.residuals(self.embed(pixels)?, layers))
    }

    /// The residual stream after block `layer` (0-based), [B, S, D]; later blocks are not
    /// computed.
    pub fn residual(&self, pixels: &Tensor, layer: usize) -> Result<Tensor> {
        Ok(self.residuals(pixels, &[layer])?.remove(0))
    }

    /// Every hidden state as transformers returns them: the embeddings, then the output of
    /// each block (`num_hidden_layers + 1` tensors).
    pub fn hidden_states(&self, pixels: &Tensor) -> Result<Vec<Tensor>> {
        Ok(self.encoder.hidden_states(self.embed(pixels)?))
    }

    /// Continue from the output of block `layer` through the remaining blocks and return
    /// the pooled output (post-layernorm of token 0), [B, D].
    pub fn pooled_from(&self, residual: &Tensor, layer: usize) -> Result<Tensor> {
        self.check_layer(layer)?;
        let d = self.config.hidden_size;
        match residual.size().as_slice() {
            [_, s, w] if *w == d && *s >= 1 => {}
            shape => bail!("a residual must be [batch, tokens, {d}], found {shape:?}"),
        }
        let mut x = residual.to_kind(self.kind());
        for block in &self.encoder.layers[layer + 1..] {
            x = block.forward(&x, false);
        }
        Ok(x.select(1, 0).apply(&self.post_layernorm)) // B, D
    }

    /// The pooled output of the whole tower, [B, D].
    pub fn pooled(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(pixels)?;
        for block in &self.encoder.layers {
            x = block.forward(&x, false);
        }
        Ok(x.select(1, 0).apply(&self.post_layernorm))
    }

    fn kind(&self) -> tch::Kind {
        self.embeddings.class_embedding.kind()
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        let n = self.config.num_hidden_layers;
        ensure!(
            layer < n,
            "layer {layer} does not exist: the vision tower has blocks 0..={}",
            n - 1
        );
        Ok(())
    }

    /// Check `[B, C, P, P]` and move to the model's device and dtype.
    fn check_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        match pixels.size().as_slice() {
            [_, ch, h, w] if *ch == c.num_channels && *h == c.image_size && *w == c.image_size => {}
            shape => bail!(
                "pixel values must be [batch, {}, {}, {}], found {shape:?}",
                c.num_channels,
                c.image_size,
                c.image_size
            ),
        }
        ensure!(
            pixels.is_floating_point(),
            "pixel values must be floating point, found {:?}",
            pixels.kind()
        );
        let ws = &self.embeddings.class_embedding;
        Ok(pixels.to_device(ws.device()).to_kind(ws.kind()))
    }
}
