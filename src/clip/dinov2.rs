//! DINOv2 (with or without registers): a ViT with LayerScale, an optional SwiGLU MLP
//! (the giant model) and position embeddings interpolated to the input size.
//!
//! Mirrors transformers' `Dinov2Model` and `Dinov2WithRegistersModel`
//! (models/dinov2/modeling_dinov2.py, models/dinov2_with_registers/…); variable names are
//! the keys of the published `model.safetensors` files (`attention.attention.query`,
//! `mlp.weights_in`, ...). transformers 5 renames them on load (`attention.q_proj`,
//! `mlp.gate_proj` + `mlp.up_proj`, ...); [`rename`] maps those back, so both load.
//! Shapes: B batch, C channels, H×W pixels, N patches, R registers, S = 1 + R + N tokens,
//! D width.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use tch::{nn, nn::Module, Kind, Tensor};

use super::config::Activation;
use super::encoder::{layer_norm, residual_add, Attention, Mlp};
use super::family::Family;

/// Dimensions of a DINOv2 model, from its `config.json` (transformers' `Dinov2Config`
/// / `Dinov2WithRegistersConfig`; a missing field takes transformers' default).
#[derive(Debug, Clone, PartialEq)]
pub struct Dinov2Config {
    pub family: Family,
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub mlp_ratio: f64,
    pub activation: Activation,
    pub layer_norm_eps: f64,
    /// Pretraining image side: the position embeddings hold (image_size / patch_size)²
    /// patches plus the class token.
    pub image_size: i64,
    pub patch_size: i64,
    pub num_channels: i64,
    pub qkv_bias: bool,
    pub use_swiglu_ffn: bool,
    /// Register tokens (0 for plain DINOv2).
    pub num_register_tokens: i64,
    pub use_mask_token: bool,
}

#[derive(Deserialize)]
struct Raw {
    hidden_size: Option<i64>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<i64>,
    mlp_ratio: Option<f64>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    image_size: Option<serde_json::Value>,
    patch_size: Option<serde_json::Value>,
    num_channels: Option<i64>,
    qkv_bias: Option<bool>,
    use_swiglu_ffn: Option<bool>,
    num_register_tokens: Option<i64>,
    use_mask_token: Option<bool>,
}

/// An `int` or a square `[n, n]` pair, as transformers accepts for sizes.
fn square(v: &serde_json::Value, key: &str) -> Result<i64> {
    let n = match v {
        serde_json::Value::Array(a) if a.len() == 2 && a[0] == a[1] => a[0].as_i64(),
        serde_json::Value::Array(_) => bail!("{key}: only square sizes are supported, found {v}"),
        other => other.as_i64(),
    };
    n.filter(|&n| n > 0)
        .with_context(|| format!("{key} must be a positive integer, found {v}"))
}

impl Dinov2Config {
    /// Parse the text of a transformers `config.json` of `family` (dinov2 or
    /// dinov2_with_registers).
    pub fn from_hf_json(text: &str, family: Family) -> Result<Dinov2Config> {
        let raw: Raw = serde_json::from_str(text)?;
        let registers = family == Family::Dinov2WithRegisters;
        let default_patch = if registers { 16 } else { 14 };
        let activation = match raw.hidden_act.as_deref().unwrap_or("gelu") {
            "gelu" => Activation::Gelu,
            "quick_gelu" => Activation::QuickGelu,
            other => bail!(
                "hidden_act {other:?} is not supported for {family} (expected \"gelu\" or \"quick_gelu\")"
            ),
        };
        let config = Dinov2Config {
            family,
            hidden_size: raw.hidden_size.unwrap_or(768),
            num_hidden_layers: raw.num_hidden_layers.unwrap_or(12),
            num_attention_heads: raw.num_attention_heads.unwrap_or(12),
            mlp_ratio: raw.mlp_ratio.unwrap_or(4.0),
            activation,
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-6),
            image_size: match &raw.image_size {
                Some(v) => square(v, "image_size")?,
                None => 224,
            },
            patch_size: match &raw.patch_size {
                Some(v) => square(v, "patch_size")?,
                None => default_patch,
            },
            num_channels: raw.num_channels.unwrap_or(3),
            qkv_bias: raw.qkv_bias.unwrap_or(true),
            use_swiglu_ffn: raw.use_swiglu_ffn.unwrap_or(false),
            num_register_tokens: if registers {
                raw.num_register_tokens.unwrap_or(4)
            } else {
                0
            },
            // The registers checkpoints always carry the mask token.
            use_mask_token: registers || raw.use_mask_token.unwrap_or(true),
        };
        config.check()?;
        Ok(config)
    }

    /// Read a transformers `config.json` of `family`.
    pub fn from_hf_file(path: &Path, family: Family) -> Result<Dinov2Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Dinov2Config::from_hf_json(&text, family)
            .with_context(|| format!("invalid model config {}", path.display()))
    }

    fn check(&self) -> Result<()> {
        let (d, h) = (self.hidden_size, self.num_attention_heads);
        ensure!(
            d > 0 && h > 0 && d % h == 0,
            "hidden_size {d} is not divisible by num_attention_heads {h}"
        );
        ensure!(
            self.num_hidden_layers > 0,
            "num_hidden_layers must be at least 1"
        );
        ensure!(
            self.mlp_ratio > 0.0,
            "mlp_ratio must be positive, found {}",
            self.mlp_ratio
        );
        ensure!(
            self.num_register_tokens >= 0,
            "num_register_tokens must not be negative"
        );
        ensure!(
            self.image_size >= self.patch_size,
            "image_size {} is smaller than patch_size {}",
            self.image_size,
            self.patch_size
        );
        Ok(())
    }

    /// Width of the plain MLP: `int(hidden_size * mlp_ratio)`.
    pub fn mlp_hidden(&self) -> i64 {
        (self.hidden_size as f64 * self.mlp_ratio) as i64
    }

    /// Width of the SwiGLU MLP: two thirds of the plain one, rounded up to a multiple of 8.
    pub fn swiglu_hidden(&self) -> i64 {
        let h = self.mlp_hidden();
        ((h as f64 * 2.0 / 3.0) as i64 + 7) / 8 * 8
    }

    /// Patches per side at the pretraining size.
    pub fn grid_size(&self) -> i64 {
        self.image_size / self.patch_size
    }
}

/// CLS, register, mask and position embeddings and the patch projection
/// (`Dinov2Embeddings`, `Dinov2WithRegistersEmbeddings`).
#[derive(Debug)]
pub struct Embeddings {
    cls_token: Tensor,               // 1, 1, D
    register_tokens: Option<Tensor>, // 1, R, D
    position_embeddings: Tensor,     // 1, 1 + N0, D
    patch_embeddings: nn::Conv2D,
    /// transformers interpolates with antialiasing for the registers model only.
    antialias: bool,
    patch_size: i64,
}

impl Embeddings {
    pub fn new(vs: nn::Path, c: &Dinov2Config) -> Embeddings {
        let d = c.hidden_size;
        let n0 = c.grid_size() * c.grid_size();
        let randn = nn::Init::Randn {
            mean: 0.,
            stdev: 1.,
        };
        if c.use_mask_token {
            // Only used in pretraining; a variable so that the checkpoint's tensor loads.
            let _ = vs.var("mask_token", &[1, d], nn::Init::Const(0.));
        }
        Embeddings {
            cls_token: vs.var("cls_token", &[1, 1, d], randn),
            register_tokens: (c.num_register_tokens > 0)
                .then(|| vs.var("register_tokens", &[1, c.num_register_tokens, d], randn)),
            position_embeddings: vs.var("position_embeddings", &[1, 1 + n0, d], randn),
            patch_embeddings: nn::conv2d(
                &vs / "patch_embeddings" / "projection",
                c.num_channels,
                d,
                c.patch_size,
                nn::ConvConfig {
                    stride: c.patch_size,
                    ..Default::default()
                },
            ),
            antialias: c.family == Family::Dinov2WithRegisters,
            patch_size: c.patch_size,
        }
    }

    /// The position embeddings for an `height`×`width` input, [1, 1 + N, D]: as stored when
    /// the patch count and shape match, else the patch part resized with bicubic
    /// interpolation in f32 (transformers' `interpolate_pos_encoding`).
    pub fn positions(&self, height: i64, width: i64) -> Tensor {
        let stored = &self.position_embeddings;
        let (_, s0, d) = stored.size3().expect("position embeddings are [1, S, D]");
        let n0 = s0 - 1;
        let (gh, gw) = (height / self.patch_size, width / self.patch_size);
        if gh * gw == n0 && height == width {
            return stored.shallow_clone();
        }
        let side = (n0 as f64).sqrt() as i64;
        let kind = stored.kind();
        let grid = stored
            .narrow(1, 1, n0)
            .reshape([1, side, side, d])
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float); // 1, D, side, side
        let resized = if self.antialias {
            grid.internal_upsample_bicubic2d_aa([gh, gw], false, None, None)
        } else {
            grid.upsample_bicubic2d([gh, gw], false, None, None)
        };
        let patches = resized
            .to_kind(kind)
            .permute([0, 2, 3, 1])
            .reshape([1, gh * gw, d]);
        Tensor::cat(&[stored.narrow(1, 0, 1), patches], 1)
    }

    /// Token embeddings of pixels [B, C, H, W]: [B, 1 + R + N, D].
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        let (b, _, h, w) = pixels.size4().expect("pixels are [B, C, H, W]");
        let patches = pixels
            .apply(&self.patch_embeddings)
            .flatten(2, -1)
            .transpose(1, 2); // B, N, D
        let d = patches.size()[2];
        let cls = self.cls_token.expand([b, 1, d], false);
        let x = Tensor::cat(&[cls, patches], 1) + self.positions(h, w); // B, 1 + N, D
        match &self.register_tokens {
            None => x,
            Some(r) => {
                let regs = r.expand([b, r.size()[1], d], false);
                let rest = x.size()[1] - 1;
                Tensor::cat(&[x.narrow(1, 0, 1), regs, x.narrow(1, 1, rest)], 1)
            }
        }
    }
}

/// Per-channel scaling of a block's branch (`Dinov2LayerScale`).
#[derive(Debug)]
pub struct LayerScale {
    lambda1: Tensor, // D
}

impl LayerScale {
    pub fn new(vs: nn::Path, width: i64) -> LayerScale {
        LayerScale {
            lambda1: vs.var("lambda1", &[width], nn::Init::Const(1.0)),
        }
    }
}

impl LayerScale {
    /// `λ ⊙ branch`, written into the branch (a fresh tensor) when nothing needs a
    /// gradient: the same bits, one [B, S, D] allocation less per call.
    fn scale(&self, branch: Tensor) -> Tensor {
        if branch.requires_grad() || self.lambda1.requires_grad() {
            branch * &self.lambda1
        } else {
            let mut branch = branch;
            branch.g_mul_(&self.lambda1)
        }
    }
}

/// `weights_out(silu(x1) · x2)` with `[x1, x2] = weights_in(x)` (`Dinov2SwiGLUFFN`).
#[derive(Debug)]
pub struct SwiGlu {
    weights_in: nn::Linear,
    weights_out: nn::Linear,
}

impl Module for SwiGlu {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = x.apply(&self.weights_in).chunk(2, -1);
        (h[0].silu() * &h[1]).apply(&self.weights_out)
    }
}

/// The block's feed-forward network: a GELU MLP, or SwiGLU (the giant model).
#[derive(Debug)]
pub enum FeedForward {
    Mlp(Mlp),
    SwiGlu(SwiGlu),
}

/// One block (`Dinov2Layer`): `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`.
#[derive(Debug)]
pub struct Layer {
    norm1: nn::LayerNorm,
    attention: Attention,
    layer_scale1: LayerScale,
    norm2: nn::LayerNorm,
    mlp: FeedForward,
    layer_scale2: LayerScale,
}

impl Layer {
    pub fn new(vs: nn::Path, c: &Dinov2Config) -> Layer {
        let d = c.hidden_size;
        let attn = &vs / "attention";
        let mlp = &vs / "mlp";
        Layer {
            norm1: layer_norm(&vs / "norm1", d, c.layer_norm_eps),
            attention: Attention::from_paths(
                [
                    &attn / "attention" / "query",
                    &attn / "attention" / "key",
                    &attn / "attention" / "value",
                    &attn / "output" / "dense",
                ],
                d,
                c.num_attention_heads,
                c.qkv_bias,
            ),
            layer_scale1: LayerScale::new(&vs / "layer_scale1", d),
            norm2: layer_norm(&vs / "norm2", d, c.layer_norm_eps),
            mlp: if c.use_swiglu_ffn {
                let h = c.swiglu_hidden();
                FeedForward::SwiGlu(SwiGlu {
                    weights_in: nn::linear(&mlp / "weights_in", d, 2 * h, Default::default()),
                    weights_out: nn::linear(&mlp / "weights_out", h, d, Default::default()),
                })
            } else {
                FeedForward::Mlp(Mlp::new(mlp, d, c.mlp_hidden(), c.activation))
            },
            layer_scale2: LayerScale::new(&vs / "layer_scale2", d),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let a = self.attention.forward(&x.apply(&self.norm1), false);
        let x = residual_add(self.layer_scale1.scale(a), x);
        let h = x.apply(&self.norm2);
        let m = match &self.mlp {
            FeedForward::Mlp(m) => m.forward(&h),
            FeedForward::SwiGlu(s) => s.forward(&h),
        };
        residual_add(self.layer_scale2.scale(m), &x)
    }
}

/// The whole model: embeddings, blocks (`encoder.layer.N`), final layernorm.
#[derive(Debug)]
pub struct Dinov2Model {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    layernorm: nn::LayerNorm,
    config: Dinov2Config,
}

impl Dinov2Model {
    pub fn new(vs: nn::Path, c: &Dinov2Config) -> Dinov2Model {
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::new(&vs / "encoder" / "layer" / i, c))
            .collect();
        Dinov2Model {
            embeddings: Embeddings::new(&vs / "embeddings", c),
            layers,
            layernorm: layer_norm(&vs / "layernorm", c.hidden_size, c.layer_norm_eps),
            config: c.clone(),
        }
    }

    pub fn config(&self) -> &Dinov2Config {
        &self.config
    }

    /// Fuse each block's q/k/v projections (see [`Attention::fuse`]).
    pub fn fuse(&mut self) {
        for l in &mut self.layers {
            l.attention.fuse();
        }
    }

    /// Check pixels [B, C, H, W] and move them to the model's device and dtype.
    fn check_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        match pixels.size().as_slice() {
            [_, ch, h, w] if *ch == c.num_channels && *h >= c.patch_size && *w >= c.patch_size => {}
            shape => bail!(
                "pixel values must be [batch, {}, H, W] with H, W >= {}, found {shape:?}",
                c.num_channels,
                c.patch_size
            ),
        }
        ensure!(
            pixels.is_floating_point(),
            "pixel values must be floating point, found {:?}",
            pixels.kind()
        );
        let ws = &self.embeddings.cls_token;
        Ok(pixels.to_device(ws.device()).to_kind(ws.kind()))
    }

    /// Token embeddings (transformers' `hidden_states[0]`), [B, S, D].
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.embeddings.forward(&self.check_pixels(pixels)?))
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

    /// The residual stream after each of `layers`, in one pass that stops after the
    /// deepest.
    pub fn residuals(&self, pixels: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        let Some(&deepest) = layers.iter().max() else {
            return Ok(Vec::new());
        };
        self.check_layer(deepest)?;
        let mut x = self.embed(pixels)?;
        let mut outputs: Vec<Option<Tensor>> = layers.iter().map(|_| None).collect();
        for (i, block) in self.layers[..=deepest].iter().enumerate() {
            x = block.forward(&x);
            for (slot, &l) in outputs.iter_mut().zip(layers) {
                if l == i {
                    *slot = Some(x.shallow_clone());
                }
            }
        }
        Ok(outputs
            .into_iter()
            .map(|t| t.expect("every requested layer was reached"))
            .collect())
    }

    /// Every hidden state: the embeddings, then each block's output.
    pub fn hidden_states(&self, pixels: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = self.embed(pixels)?;
        let mut states = vec![x.shallow_clone()];
        for block in &self.layers {
            x = block.forward(&x);
            states.push(x.shallow_clone());
        }
        Ok(states)
    }

    /// From the output of block `layer` through the remaining blocks to the pooled output
    /// (the class token after the final layernorm), [B, D].
    pub fn pooled_from(&self, residual: &Tensor, layer: usize) -> Result<Tensor> {
        self.check_layer(layer)?;
        let d = self.config.hidden_size;
        match residual.size().as_slice() {
            [_, s, w] if *w == d && *s >= 1 => {}
            shape => bail!("a residual must be [batch, tokens, {d}], found {shape:?}"),
        }
        let mut x = residual.to_kind(self.embeddings.cls_token.kind());
        for block in &self.layers[layer + 1..] {
            x = block.forward(&x);
        }
        Ok(x.select(1, 0).apply(&self.layernorm))
    }

    /// The pooled output of the whole model (transformers' `pooler_output`), [B, D].
    pub fn pooled(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(pixels)?;
        for block in &self.layers {
            x = block.forward(&x);
        }
        Ok(x.select(1, 0).apply(&self.layernorm))
    }
}

/// The published name(s) of a tensor named the transformers 5 way, or by a task model
/// (`dinov2.` / `dinov2_with_registers.` prefix); other names pass unchanged.
pub fn rename(name: &str, t: Tensor) -> Result<Vec<(String, Tensor)>> {
    let name = name
        .strip_prefix("dinov2_with_registers.")
        .or_else(|| name.strip_prefix("dinov2."))
        .unwrap_or(name);
    let swaps = [
        (".attention.q_proj.", ".attention.attention.query."),
        (".attention.k_proj.", ".attention.attention.key."),
        (".attention.v_proj.", ".attention.attention.value."),
        (".attention.o_proj.", ".attention.output.dense."),
        (".mlp.down_proj.", ".mlp.weights_out."),
    ];
    for (new, old) in swaps {
        if name.contains(new) {
            return Ok(vec![(name.replacen(new, old, 1), t)]);
        }
    }
    Ok(vec![(name.to_string(), t)])
}

/// Join transformers 5's SwiGLU halves (`mlp.gate_proj`, `mlp.up_proj`) into the published
/// `mlp.weights_in` (gate rows first), in place in `tensors`.
pub fn join_swiglu(tensors: &mut std::collections::BTreeMap<String, Tensor>) -> Result<()> {
    let gates: Vec<String> = tensors
        .keys()
        .filter(|k| k.contains(".mlp.gate_proj."))
        .cloned()
        .collect();
    for gate in gates {
        let up = gate.replacen(".mlp.gate_proj.", ".mlp.up_proj.", 1);
        let g = tensors.remove(&gate).expect("listed above");
        let u = tensors
            .remove(&up)
            .with_context(|| format!("{gate} has no matching {up}"))?;
        let joined =
            Tensor::f_cat(&[g, u], 0).with_context(|| format!("cannot join {gate} and {up}"))?;
        tensors.insert(
            gate.replacen(".mlp.gate_proj.", ".mlp.weights_in.", 1),
            joined,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_errors() {
        let c = Dinov2Config::from_hf_json("{}", Family::Dinov2).unwrap();
        assert_eq!(
            (c.patch_size, c.num_register_tokens, c.mlp_hidden()),
            (14, 0, 3072)
        );
        let r = Dinov2Config::from_hf_json("{}", Family::Dinov2WithRegisters).unwrap();
        assert_eq!((r.patch_size, r.num_register_tokens), (16, 4));
        // dinov2-giant: 1536 wide, mlp_ratio 4, SwiGLU hidden 4096.
        let g = Dinov2Config::from_hf_json(
            r#"{"hidden_size": 1536, "num_attention_heads": 24, "use_swiglu_ffn": true}"#,
            Family::Dinov2,
        )
        .unwrap();
        assert_eq!(g.swiglu_hidden(), 4096);
        let err = Dinov2Config::from_hf_json(r#"{"hidden_act": "relu"}"#, Family::Dinov2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden_act"), "{err}");
        assert!(
            Dinov2Config::from_hf_json(r#"{"num_attention_heads": 7}"#, Family::Dinov2).is_err()
        );
        assert!(
            Dinov2Config::from_hf_json(r#"{"image_size": [224, 112]}"#, Family::Dinov2).is_err()
        );
    }

    #[test]
    fn transformers_5_names_map_to_published_ones() {
        let t = || Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        let n = |s: &str| rename(s, t()).unwrap().remove(0).0;
        assert_eq!(
            n("encoder.layer.3.attention.q_proj.weight"),
            "encoder.layer.3.attention.attention.query.weight"
        );
        assert_eq!(
            n("dinov2.encoder.layer.0.attention.o_proj.bias"),
            "encoder.layer.0.attention.output.dense.bias"
        );
        assert_eq!(n("layernorm.weight"), "layernorm.weight");
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "encoder.layer.0.mlp.gate_proj.weight".to_string(),
            Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)),
        );
        m.insert(
            "encoder.layer.0.mlp.up_proj.weight".to_string(),
            Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu)),
        );
        join_swiglu(&mut m).unwrap();
        let w = &m["encoder.layer.0.mlp.weights_in.weight"];
        assert_eq!(w.size(), [4, 3]);
        assert_eq!(w.double_value(&[0, 0]), 1.0);
        assert_eq!(w.double_value(&[3, 0]), 0.0);
    }
}
