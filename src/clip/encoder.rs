//! The pre-layernorm transformer block shared by both towers.
//!
//! Mirrors transformers' `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer` and `CLIPEncoder`
//! (models/clip/modeling_clip.py); variable names copy the checkpoint keys.
//! Shapes: B batch, S sequence, D width, H heads, K head width.

use tch::{nn, nn::Module, Tensor};

use super::config::Activation;

/// Multi-head self-attention with separate q/k/v projections.
#[derive(Debug)]
pub struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    num_heads: i64,
}

impl Attention {
    pub fn new(vs: nn::Path, width: i64, num_heads: i64) -> Attention {
        let linear = |name: &str| nn::linear(&vs / name, width, width, Default::default());
        Attention {
            q_proj: linear("q_proj"),
            k_proj: linear("k_proj"),
            v_proj: linear("v_proj"),
            out_proj: linear("out_proj"),
            num_heads,
        }
    }

    /// `causal` masks attention to later positions (the text tower).
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, s, d) = x.size3().expect("attention input is [B, S, D]");
        let heads = |t: Tensor| {
            t.view([b, s, self.num_heads, d / self.num_heads])
                .transpose(1, 2)
        };
        let q = heads(x.apply(&self.q_proj)); // B, H, S, K
        let k = heads(x.apply(&self.k_proj));
        let v = heads(x.apply(&self.v_proj));
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            causal,
            None,
            false,
        );
        y.transpose(1, 2).reshape([b, s, d]).apply(&self.out_proj) // B, S, D
    }
}

/// The position-wise feed-forward network.
#[derive(Debug)]
pub struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    activation: Activation,
}

impl Mlp {
    pub fn new(vs: nn::Path, width: i64, hidden: i64, activation: Activation) -> Mlp {
        Mlp {
            fc1: nn::linear(&vs / "fc1", width, hidden, Default::default()),
            fc2: nn::linear(&vs / "fc2", hidden, width, Default::default()),
            activation,
        }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = x.apply(&self.fc1);
        let h = match self.activation {
            Activation::QuickGelu => &h * (&h * 1.702).sigmoid(),
            Activation::Gelu => h.gelu("none"),
        };
        h.apply(&self.fc2)
    }
}

/// One residual block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug)]
pub struct EncoderLayer {
    layer_norm1: nn::LayerNorm,
    self_attn: Attention,
    layer_norm2: nn::LayerNorm,
    mlp: Mlp,
}

/// Sizes of one tower's blocks.
#[derive(Debug, Clone, Copy)]
pub struct BlockDims {
    pub width: i64,
    pub heads: i64,
    pub mlp_hidden: i64,
    pub eps: f64,
    pub activation: Activation,
}

pub fn layer_norm(vs: nn::Path, width: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        vs,
        vec![width],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

impl EncoderLayer {
    pub fn new(vs: nn::Path, dims: &BlockDims) -> EncoderLayer {
        EncoderLayer {
            layer_norm1: layer_norm(&vs / "layer_norm1", dims.width, dims.eps),
            self_attn: Attention::new(&vs / "self_attn", dims.width, dims.heads),
            layer_norm2: layer_norm(&vs / "layer_norm2", dims.width, dims.eps),
            mlp: Mlp::new(&vs / "mlp", dims.width, dims.mlp_hidden, dims.activation),
        }
    }

    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.self_attn.forward(&x.apply(&self.layer_norm1), causal);
        let y = x.apply(&self.layer_norm2).apply(&self.mlp);
        x + y
    }
}

/// A stack of blocks, `layers.N` in the checkpoint.
#[derive(Debug)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(vs: nn::Path, dims: &BlockDims, num_layers: usize) -> Encoder {
        let layers = (0..num_layers)
            .map(|i| EncoderLayer::new(&vs / "layers" / i, dims))
            .collect();
        Encoder { layers }
    }
}
