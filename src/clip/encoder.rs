//! The pre-layernorm transformer block shared by both towers.
//!
//! Mirrors transformers' `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer` and `CLIPEncoder`
//! (models/clip/modeling_clip.py); variable names copy the checkpoint keys.
//! Shapes: B batch, S sequence, D width, H heads, K head width.

use tch::{nn, Tensor};

use super::config::Activation;

/// Multi-head self-attention with q/k/v projections.
///
/// The checkpoint stores `q_proj`, `k_proj` and `v_proj` separately; [`Attention::fuse`]
/// moves them into one [3D, D] matrix (the three variables become views of it), so the
/// forward runs one projection instead of three.
#[derive(Debug)]
pub struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    /// `[q; k; v]` weight [3D, D] and bias [3D], once fused.
    qkv: Option<(Tensor, Tensor)>,
    num_heads: i64,
}

impl Attention {
    pub fn new(vs: nn::Path, width: i64, num_heads: i64) -> Attention {
        Attention::from_paths(
            [
                &vs / "q_proj",
                &vs / "k_proj",
                &vs / "v_proj",
                &vs / "out_proj",
            ],
            width,
            num_heads,
            true,
        )
    }

    /// The same attention with the q, k, v and output projections at the paths
    /// `[q, k, v, out]` (other families name them otherwise); `qkv_bias` false leaves the
    /// q/k/v projections without bias.
    pub fn from_paths(
        paths: [nn::Path; 4],
        width: i64,
        num_heads: i64,
        qkv_bias: bool,
    ) -> Attention {
        let [q, k, v, out] = paths;
        let config = nn::LinearConfig {
            bias: qkv_bias,
            ..Default::default()
        };
        Attention {
            q_proj: nn::linear(q, width, width, config),
            k_proj: nn::linear(k, width, width, config),
            v_proj: nn::linear(v, width, width, config),
            out_proj: nn::linear(out, width, width, Default::default()),
            qkv: None,
            num_heads,
        }
    }

    /// Store q, k and v in one contiguous [3D, D] weight (and [3D] bias) and point the
    /// three variables at their slices of it: same values, no extra memory. Call after the
    /// weights are loaded and cast; loading into the variables later would still write
    /// through to the fused storage, but a cast (`VarStore::set_kind`) would not.
    pub fn fuse(&mut self) {
        let parts = [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj];
        let weight = Tensor::cat(&parts.iter().map(|p| &p.ws).collect::<Vec<_>>(), 0);
        // Projections without bias fuse with a zero bias (same output).
        let bias = Tensor::cat(
            &parts
                .iter()
                .map(|p| match &p.bs {
                    Some(b) => b.shallow_clone(),
                    None => p.ws.zeros_like().select(1, 0),
                })
                .collect::<Vec<_>>(),
            0,
        );
        let d = weight.size()[1];
        for (i, p) in parts.into_iter().enumerate() {
            let i = i as i64;
            tch::no_grad(|| {
                p.ws.set_data(&weight.narrow(0, i * d, d));
                if let Some(b) = p.bs.as_mut() {
                    b.set_data(&bias.narrow(0, i * d, d));
                }
            });
        }
        self.qkv = Some((weight, bias));
    }

    /// q, k and v as [B, H, S, K].
    fn project(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, s, d) = x.size3().expect("attention input is [B, S, D]");
        let (h, k) = (self.num_heads, d / self.num_heads);
        match &self.qkv {
            Some((weight, bias)) => {
                let qkv = x
                    .linear(weight, Some(bias))
                    .view([b, s, 3, h, k])
                    .permute([2, 0, 3, 1, 4]); // 3, B, H, S, K
                (qkv.get(0), qkv.get(1), qkv.get(2))
            }
            None => {
                let heads = |t: Tensor| t.view([b, s, h, k]).transpose(1, 2);
                (
                    heads(x.apply(&self.q_proj)),
                    heads(x.apply(&self.k_proj)),
                    heads(x.apply(&self.v_proj)),
                )
            }
        }
    }

    /// `causal` masks attention to later positions (the text tower).
    pub fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, s, d) = x.size3().expect("attention input is [B, S, D]");
        let (q, k, v) = self.project(x);
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

/// QuickGELU's constant: `quick_gelu(h) = h · σ(1.702 h)`.
const QUICK_GELU: f64 = 1.702;

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

    /// `fc2(act(fc1(x)))`. QuickGELU is computed as `silu(1.702 h) / 1.702`, the two
    /// scalings folded into the matrix products (`α` and `β` of a GEMM), so that no
    /// weight is copied and the activation is one in-place pass when nothing needs a
    /// gradient.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.activation {
            Activation::Gelu => gelu(x.apply(&self.fc1), "none").apply(&self.fc2),
            Activation::GeluTanh => gelu(x.apply(&self.fc1), "tanh").apply(&self.fc2),
            Activation::QuickGelu => {
                let t = scaled_linear(x, &self.fc1, QUICK_GELU, QUICK_GELU); // 1.702 · fc1(x)
                let h = if t.requires_grad() {
                    t.silu()
                } else {
                    let mut t = t;
                    t.silu_()
                };
                scaled_linear(&h, &self.fc2, 1.0 / QUICK_GELU, 1.0) // fc2(h / 1.702)
            }
        }
    }
}

/// GELU of a fresh tensor, in place when nothing needs a gradient (the same bits).
fn gelu(h: Tensor, approximate: &str) -> Tensor {
    if h.requires_grad() {
        h.gelu(approximate)
    } else {
        let mut h = h;
        h.gelu_(approximate)
    }
}

/// `alpha · (x Wᵀ) + beta · b` over the last axis of `x`, as one matrix product.
fn scaled_linear(x: &Tensor, linear: &nn::Linear, alpha: f64, beta: f64) -> Tensor {
    let mut shape = x.size();
    let d_in = *shape.last().expect("a linear input has a last axis");
    let bias = linear.bs.as_ref().expect("MLP layers have biases");
    let rows = x.reshape([1, -1, d_in]);
    let y = bias.baddbmm(&rows, &linear.ws.tr().unsqueeze(0), beta, alpha);
    *shape.last_mut().expect("checked above") = linear.ws.size()[0];
    y.view(shape.as_slice())
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
        let x = residual_add(
            self.self_attn.forward(&x.apply(&self.layer_norm1), causal),
            x,
        );
        residual_add(self.mlp.forward(&x.apply(&self.layer_norm2)), &x)
    }

    /// See [`Attention::fuse`].
    pub fn fuse(&mut self) {
        self.self_attn.fuse();
    }
}

/// `branch + x`, written into `branch` (a fresh tensor) when no gradient is needed. Never
/// into `x`: callers keep shallow clones of earlier residuals.
pub(crate) fn residual_add(branch: Tensor, x: &Tensor) -> Tensor {
    if branch.requires_grad() || x.requires_grad() {
        branch + x
    } else {
        let mut branch = branch;
        branch.g_add_(x)
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

    /// See [`Attention::fuse`].
    pub fn fuse(&mut self) {
        for layer in &mut self.layers {
            layer.fuse();
        }
    }

    /// The residual stream after each of `layers` (any order, repeats allowed; each below
    /// `self.layers.len()`), from the embeddings `x` in one pass that stops after the
    /// deepest, without a causal mask (the vision towers).
    pub fn residuals(&self, mut x: Tensor, layers: &[usize]) -> Vec<Tensor> {
        let Some(&deepest) = layers.iter().max() else {
            return Vec::new();
        };
        let mut outputs: Vec<Option<Tensor>> = layers.iter().map(|_| None).collect();
        for (i, block) in self.layers[..=deepest].iter().enumerate() {
            x = block.forward(&x, false);
            for (slot, &l) in outputs.iter_mut().zip(layers) {
                if l == i {
                    *slot = Some(x.shallow_clone());
                }
            }
        }
        outputs
            .into_iter()
            .map(|t| t.expect("every requested layer was reached"))
            .collect()
    }

    /// The embeddings `x`, then each block's output (`layers.len() + 1` tensors), without a
    /// causal mask.
    pub fn hidden_states(&self, mut x: Tensor) -> Vec<Tensor> {
        let mut states = vec![x.shallow_clone()];
        for block in &self.layers {
            x = block.forward(&x, false);
            states.push(x.shallow_clone());
        }
        states
    }
}
