//! The SigLIP text tower: token and position embeddings, bidirectional blocks (no causal
//! mask, no attention mask: padding is attended to, as in transformers' default pipeline),
//! the final layernorm and a linear `head` on the last position.
//!
//! Mirrors transformers' `SiglipTextEmbeddings` and `SiglipTextModel`. Shapes: T texts,
//! S tokens, D width, E embedding width.

use anyhow::{bail, ensure, Result};
use tch::{nn, Kind, Tensor};

use super::config::SiglipTextConfig;
use crate::clip::encoder::{layer_norm, BlockDims, Encoder};

#[derive(Debug)]
pub struct SiglipTextTransformer {
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    encoder: Encoder,
    final_layer_norm: nn::LayerNorm,
    head: nn::Linear,
    config: SiglipTextConfig,
}

impl SiglipTextTransformer {
    pub fn new(vs: nn::Path, c: &SiglipTextConfig) -> Self {
        let dims = BlockDims {
            width: c.hidden_size,
            heads: c.num_attention_heads,
            mlp_hidden: c.intermediate_size,
            eps: c.layer_norm_eps,
            activation: c.activation,
        };
        let embeddings = &vs / "embeddings";
        SiglipTextTransformer {
            token_embedding: nn::embedding(
                &embeddings / "token_embedding",
                c.vocab_size,
                c.hidden_size,
                Default::default(),
            ),
            position_embedding: nn::embedding(
                &embeddings / "position_embedding",
                c.max_position_embeddings,
                c.hidden_size,
                Default::default(),
            ),
            encoder: Encoder::new(&vs / "encoder", &dims, c.num_hidden_layers),
            final_layer_norm: layer_norm(&vs / "final_layer_norm", c.hidden_size, c.layer_norm_eps),
            head: nn::linear(
                &vs / "head",
                c.hidden_size,
                c.projection_size,
                Default::default(),
            ),
            config: c.clone(),
        }
    }

    /// Fuse each block's q/k/v projections.
    pub fn fuse(&mut self) {
        self.encoder.fuse();
    }

    pub fn config(&self) -> &SiglipTextConfig {
        &self.config
    }

    fn embed(&self, ids: &Tensor) -> Tensor {
        let s = ids.size()[1];
        ids.apply(&self.token_embedding) + self.position_embedding.ws.narrow(0, 0, s).unsqueeze(0)
        // T, S, D
    }

    /// The embeddings, then each block's output (before the final layernorm), [T, S, D].
    pub fn hidden_states(&self, ids: &Tensor) -> Result<Vec<Tensor>> {
        let ids = self.check_ids(ids)?;
        let mut x = self.embed(&ids);
        let mut states = vec![x.shallow_clone()];
        for block in &self.encoder.layers {
            x = block.forward(&x, false);
            states.push(x.shallow_clone());
        }
        Ok(states)
    }

    /// The text embedding: `head(final_layer_norm(x)[:, -1])`, the last position whatever
    /// token it holds, [T, E].
    pub fn pooled(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = self.check_ids(ids)?;
        let mut x = self.embed(&ids);
        for block in &self.encoder.layers {
            x = block.forward(&x, false);
        }
        Ok(x.select(1, -1)
            .apply(&self.final_layer_norm)
            .apply(&self.head))
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
        Ok(ids.to_device(self.token_embedding.ws.device()))
    }
}
