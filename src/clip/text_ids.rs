//! Texts as the [T, context] token-id tensor a text tower reads (open_clip's `tokenize`):
//! CLIP's BPE ids, truncated to the context with end-of-text kept last, padded with 0.

use anyhow::{ensure, Context, Result};
use tch::Tensor;

use super::tokenizer::{Tokenizer, EOT_TOKEN};

/// Token ids of `texts`, truncated to the model's context like open_clip (the last kept
/// token becomes end-of-text), padded with 0. An empty text is an error.
pub fn tokenize_texts(texts: &[String], context: usize) -> Result<Tensor> {
    let tokenizer = Tokenizer::new()?;
    let mut ids = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        ensure!(
            !text.trim().is_empty(),
            "text {} is empty: give a non-empty string",
            i + 1
        );
        let mut t = tokenizer.tokenize(text);
        if t.len() > context {
            t.truncate(context);
            t[context - 1] = EOT_TOKEN;
        }
        ids.push(t);
    }
    pad_ids(&ids, context)
}

/// Pad token id lists with 0 to a [T, context] int64 tensor, as open_clip does.
pub fn pad_ids(ids: &[Vec<i64>], context: usize) -> Result<Tensor> {
    ensure!(!ids.is_empty(), "no texts to encode");
    let mut flat = vec![0i64; ids.len() * context];
    for (row, t) in ids.iter().enumerate() {
        ensure!(
            t.len() <= context,
            "text {} has {} tokens, more than the context of {context}",
            row + 1,
            t.len()
        );
        flat[row * context..row * context + t.len()].copy_from_slice(t);
    }
    Tensor::f_from_slice(&flat)
        .and_then(|t| t.f_view([ids.len() as i64, context as i64]))
        .context("cannot build the token tensor")
}
