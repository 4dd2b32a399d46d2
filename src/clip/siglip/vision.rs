//! The SigLIP vision tower: patch and position embeddings (no class token), pre-layernorm
//! blocks, a post-layernorm and the attention-pooling (MAP) head that makes the image
//! embedding.
//!
//! Mirrors transformers' `SiglipVisionEmbeddings`, `Siglip2VisionEmbeddings`,
//! `SiglipMultiheadAttentionPoolingHead` and `SiglipVisionModel`; variable names copy the
//! checkpoint keys. Shapes: B images, C channels, P pixels per side, p patch side, N patches
//! (= S tokens), D width, H heads, K head width.

use anyhow::{bail, ensure, Result};
use tch::{nn, nn::Module, Tensor};

use super::config::{SiglipFamily, SiglipVisionConfig};
use crate::clip::encoder::{layer_norm, BlockDims, Encoder, Mlp};

/// How pixels become patch vectors.
#[derive(Debug)]
enum PatchEmbedding {
    /// SigLIP: a stride-p convolution with bias.
    Conv(nn::Conv2D),
    /// SigLIP 2: a linear map of each patch flattened as (row, column, channel), the order of
    /// transformers' `Siglip2ImageProcessor`.
    Linear(nn::Linear),
}

/// Patch embeddings plus one learned position embedding per patch.
#[derive(Debug)]
pub struct SiglipVisionEmbeddings {
    patch_embedding: PatchEmbedding,
    position_embedding: nn::Embedding,
    patch_size: i64,
}

impl SiglipVisionEmbeddings {
    pub fn new(vs: nn::Path, c: &SiglipVisionConfig, family: SiglipFamily) -> Self {
        let p = c.patch_size;
        let patch_embedding = match family {
            SiglipFamily::Siglip => PatchEmbedding::Conv(nn::conv2d(
                &vs / "patch_embedding",
                c.num_channels,
                c.hidden_size,
                p,
                nn::ConvConfig {
                    stride: p,
                    ..Default::default()
                },
            )),
            SiglipFamily::Siglip2 => PatchEmbedding::Linear(nn::linear(
                &vs / "patch_embedding",
                c.num_channels * p * p,
                c.hidden_size,
                Default::default(),
            )),
        };
        SiglipVisionEmbeddings {
            patch_embedding,
            position_embedding: nn::embedding(
                &vs / "position_embedding",
                c.num_patches(),
                c.hidden_size,
                Default::default(),
            ),
            patch_size: p,
        }
    }

    fn weight(&self) -> &Tensor {
        &self.position_embedding.ws
    }
}

impl Module for SiglipVisionEmbeddings {
    fn forward(&self, pixels: &Tensor) -> Tensor {
        let patches = match &self.patch_embedding {
            PatchEmbedding::Conv(conv) => pixels.apply(conv).flatten(2, -1).transpose(1, 2),
            PatchEmbedding::Linear(linear) => {
                let (b, c, h, w) = pixels.size4().expect("pixels are [B, C, P, P]");
                let p = self.patch_size;
                pixels
                    .reshape([b, c, h / p, p, w / p, p])
                    .permute([0, 2, 4, 3, 5, 1]) // B, rows, columns, p, p, C
                    .reshape([b, (h / p) * (w / p), p * p * c])
                    .apply(linear)
            }
        }; // B, N, D
           // The image is the grid of the position embeddings, so SigLIP 2's resize of them is the
           // identity (its antialiased bilinear weights are one-hot).
        patches + self.position_embedding.ws.unsqueeze(0)
    }
}

/// Multi-head attention pooling: a learned probe attends over the tokens, then a residual MLP.
#[derive(Debug)]
pub struct PoolingHead {
    probe: Tensor,
    /// `nn.MultiheadAttention`'s packed q/k/v projection, [3D, D] and [3D].
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    layernorm: nn::LayerNorm,
    mlp: Mlp,
    num_heads: i64,
}

impl PoolingHead {
    pub fn new(vs: nn::Path, c: &SiglipVisionConfig) -> PoolingHead {
        let d = c.hidden_size;
        let attention = &vs / "attention";
        PoolingHead {
            probe: vs.var(
                "probe",
                &[1, 1, d],
                nn::Init::Randn {
                    mean: 0.,
                    stdev: 1.,
                },
            ),
            in_proj_weight: attention.var(
                "in_proj_weight",
                &[3 * d, d],
                nn::Init::Randn {
                    mean: 0.,
                    stdev: (d as f64).powf(-0.5),
                },
            ),
            in_proj_bias: attention.var("in_proj_bias", &[3 * d], nn::Init::Const(0.)),
            out_proj: nn::linear(&attention / "out_proj", d, d, Default::default()),
            layernorm: layer_norm(&vs / "layernorm", d, c.layer_norm_eps),
            mlp: Mlp::new(&vs / "mlp", d, c.intermediate_size, c.activation),
            num_heads: c.num_attention_heads,
        }
    }

    /// Pool post-layernormed tokens [B, S, D] into one vector per image, [B, D].
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, s, d) = x.size3().expect("pooling input is [B, S, D]");
        let (h, k) = (self.num_heads, d / self.num_heads);
        let w = self.in_proj_weight.chunk(3, 0);
        let bias = self.in_proj_bias.chunk(3, 0);
        let q = self
            .probe
            .linear(&w[0], Some(&bias[0]))
            .expand([b, 1, d], false)
            .reshape([b, 1, h, k])
            .transpose(1, 2); // B, H, 1, K
        let heads = |t: Tensor| t.view([b, s, h, k]).transpose(1, 2); // B, H, S, K
        let key = heads(x.linear(&w[1], Some(&bias[1])));
        let value = heads(x.linear(&w[2], Some(&bias[2])));
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &key,
            &value,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        )
        .transpose(1, 2)
        .reshape([b, 1, d])
        .apply(&self.out_proj); // B, 1, D
        let y = &y + self.mlp.forward(&y.apply(&self.layernorm));
        y.select(1, 0) // B, D
    }
}

/// The SigLIP ViT: embeddings, blocks, post-layernorm, attention pooling.
#[derive(Debug)]
pub struct SiglipVisionTransformer {
    embeddings: SiglipVisionEmbeddings,
    encoder: Encoder,
    post_layernorm: nn::LayerNorm,
    head: PoolingHead,
    config: SiglipVisionConfig,
}

impl SiglipVisionTransformer {
    pub fn new(vs: nn::Path, c: &SiglipVisionConfig, family: SiglipFamily) -> Self {
        let dims = BlockDims {
            width: c.hidden_size,
            heads: c.num_attention_heads,
            mlp_hidden: c.intermediate_size,
            eps: c.layer_norm_eps,
            activation: c.activation,
        };
        SiglipVisionTransformer {
            embeddings: SiglipVisionEmbeddings::new(&vs / "embeddings", c, family),
            encoder: Encoder::new(&vs / "encoder", &dims, c.num_hidden_layers),
            post_layernorm: layer_norm(&vs / "post_layernorm", c.hidden_size, c.layer_norm_eps),
            head: PoolingHead::new(&vs / "head", c),
            config: c.clone(),
        }
    }

    /// Fuse each block's q/k/v projections (see [`crate::clip::encoder::Attention::fuse`]).
    pub fn fuse(&mut self) {
        self.encoder.fuse();
    }

    pub fn config(&self) -> &SiglipVisionConfig {
        &self.config
    }

    /// Token embeddings (transformers' `hidden_states[0]`), [B, N, D].
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = self.check_pixels(pixels)?;
        Ok(pixels.apply(&self.embeddings))
    }

    /// The residual stream after each of `layers` (any order, repeats allowed), in one pass
    /// that stops after the deepest.
    pub fn residuals(&self, pixels: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        let Some(&deepest) = layers.iter().max() else {
            return Ok(Vec::new());
        };
        self.check_layer(deepest)?;
        Ok(self.encoder.residuals(self.embed(pixels)?, layers))
    }

    /// The residual stream after block `layer`, [B, N, D].
    pub fn residual(&self, pixels: &Tensor, layer: usize) -> Result<Tensor> {
        Ok(self.residuals(pixels, &[layer])?.remove(0))
    }

    /// The embeddings, then each block's output (`num_hidden_layers + 1` tensors).
    pub fn hidden_states(&self, pixels: &Tensor) -> Result<Vec<Tensor>> {
        Ok(self.encoder.hidden_states(self.embed(pixels)?))
    }

    /// Continue from the output of block `layer` through the remaining blocks, the
    /// post-layernorm and the pooling head: the image embedding, [B, D].
    pub fn pooled_from(&self, residual: &Tensor, layer: usize) -> Result<Tensor> {
        self.check_layer(layer)?;
        let d = self.config.hidden_size;
        match residual.size().as_slice() {
            [_, s, w] if *w == d && *s >= 1 => {}
            shape => bail!("a residual must be [batch, tokens, {d}], found {shape:?}"),
        }
        let ws = self.embeddings.weight();
        let mut x = residual.to_device(ws.device()).to_kind(ws.kind());
        for block in &self.encoder.layers[layer + 1..] {
            x = block.forward(&x, false);
        }
        Ok(self.head.forward(&x.apply(&self.post_layernorm)))
    }

    /// The image embedding of the whole tower, [B, D].
    pub fn pooled(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(pixels)?;
        for block in &self.encoder.layers {
            x = block.forward(&x, false);
        }
        Ok(self.head.forward(&x.apply(&self.post_layernorm)))
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
        let ws = self.embeddings.weight();
        Ok(pixels.to_device(ws.device()).to_kind(ws.kind()))
    }
}
