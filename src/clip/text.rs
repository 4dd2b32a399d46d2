//! The text tower: a causal transformer pooled at the end-of-text token.
//!
//! Mirrors transformers' `CLIPTextEmbeddings` and `CLIPTextTransformer`
//! (models/clip/modeling_clip.py). Shapes: T texts, S tokens, D width.

use anyhow::{bail, ensure, Result};
use tch::{nn, Kind, Tensor};

use super::config::TextConfig;
use super::encoder::{layer_norm, BlockDims, Encoder};

/// Token and position embeddings.
#[derive(Debug)]
pub struct TextEmbeddings {
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
}

impl TextEmbeddings {
    pub fn new(vs: nn::Path, c: &TextConfig) -> TextEmbeddings {
        TextEmbeddings {
            token_embedding: nn::embedding(
                &vs / "token_embedding",
                c.vocab_size,
                c.hidden_size,
                Default::default(),
            ),
            position_embedding: nn::embedding(
                &vs / "position_embedding",
                c.max_position_embeddings,
                c.hidden_size,
                Default::default(),
            ),
        }
    }

    fn forward(&self, ids: &Tensor) -> Tensor {
        let s = ids.size()[1];
        ids.apply(&self.token_embedding) + self.position_embedding.ws.narrow(0, 0, s).unsqueeze(0)
        // T, S, D
    }
}

/// Embeddings, causal blocks and the final layernorm.
#[derive(Debug)]
pub struct TextTransformer {
    embeddings: TextEmbeddings,
    encoder: Encoder,
    final_layer_norm: nn::LayerNorm,
    config: TextConfig,
}

impl TextTransformer {
    pub fn new(vs: nn::Path, c: &TextConfig) -> TextTransformer {
        let dims = BlockDims {
            width: c.hidden_size,
            heads: c.num_attention_heads,
            mlp_hidden: c.intermediate_size,
            eps: c.layer_norm_eps,
            activation: c.activation,
        };
        TextTransformer {
            embeddings: TextEmbeddings::new(&vs / "embeddings", c),
            encoder: Encoder::new(&vs / "encoder", &dims, c.num_hidden_layers),
            final_layer_norm: layer_norm(&vs / "final_layer_norm", c.hidden_size, c.layer_norm_eps),
            config: c.clone(),
        }
    }

    /// Fuse each block's q/k/v projections (see [`super::encoder::Attention::fuse`]).
    pub fn fuse(&mut self) {
        self.encoder.fuse();
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// Every hidden state: the embeddings, then each block's output (`num_hidden_layers +
    /// 1` tensors, before the final layernorm), [T, S, D].
    pub fn hidden_states(&self, ids: &Tensor) -> Result<Vec<Tensor>> {
        let ids = self.check_ids(ids)?;
        let mut x = self.embeddings.forward(&ids);
        let mut states = vec![x.shallow_clone()];
        for block in &self.encoder.layers {
            x = block.forward(&x, true);
            states.push(x.shallow_clone());
        }
        Ok(states)
    }

    /// The final-layernormed state at each text's end-of-text token (the largest id,
    /// as in CLIP), [T, D].
    pub fn pooled(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = self.check_ids(ids)?;
        let mut x = self.embeddings.forward(&ids);
        for block in &self.encoder.layers {
            x = block.forward(&x, true);
        }
        let x = x.apply(&self.final_layer_norm); // T, S, D
        let (t, _, d) = x.size3()?;
        let eot = ids
            .argmax(-1, false)
            .view([t, 1, 1])
            .expand([t, 1, d], false);
        Ok(x.gather(1, &eot, false).squeeze_dim(1)) // T, D
    }

    /// Check `[T, S]` integer ids with S ≤ the context and every id in the vocabulary.
    fn check_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        match ids.size().as_slice() {
            [t, s] if *t > 0 && *s > 0 && *s <= c.max_position_embeddings => {}
            shape => bail!(
                "token ids must be [texts, tokens] with 1..={} tokens, found {shape:?}",
                c.max_position_embeddings
            ),
        }
        ensure!(
            !ids.is_floating_point(),
            "token ids must be integers, found {:?}",
            ids.kind()
        );
        let ids = ids.to_kind(Kind::Int64);
        let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
        ensure!(
            lo >= 0 && hi < c.vocab_size,
            "token ids must lie in 0..{}, found {lo}..={hi}",
            c.vocab_size
        );
        Ok(ids.to_device(self.embeddings.token_embedding.ws.device()))
    }
}
