//! SigLIP's text tokenizer: the model directory's `tokenizer.json` (SentencePiece / Gemma,
//! read by Hugging Face's `tokenizers` crate), with what transformers' default pipeline adds
//! around it: `tokenizer_config.json`'s `add_bos_token` / `add_eos_token` rebuild the
//! post-processor, SigLIP 2 (`model_type` siglip2, `Siglip2Tokenizer`) lowercases first, and
//! every text is truncated and padded to the text tower's context (64) with the pad token on
//! the `padding_side` side — `tokenizer(texts, padding="max_length", max_length=64,
//! truncation=True)`. No attention mask: SigLIP's text tower attends to the padding.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tch::Tensor;
use tokenizers::normalizers::{Lowercase, Sequence};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{NormalizerWrapper, Tokenizer, TruncationParams};

use super::config::SiglipFamily;

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// A loaded `tokenizer.json` and how to pad.
#[derive(Debug, Clone)]
pub struct SiglipTokenizer {
    inner: Tokenizer,
    context: usize,
    pad_id: i64,
    pad_left: bool,
}

/// A token named in `tokenizer_config.json`: a string or an `AddedToken` object.
fn token_name(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl SiglipTokenizer {
    /// Read `dir/tokenizer.json` (and `dir/tokenizer_config.json` when present) for a model of
    /// `family` whose texts are `context` tokens long; `default_pad_id` (the config's
    /// `pad_token_id`) is used when neither file names a pad token.
    pub fn from_dir(
        dir: &Path,
        family: SiglipFamily,
        context: usize,
        default_pad_id: i64,
    ) -> Result<SiglipTokenizer> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            bail!(
                "{} is missing: SigLIP text needs the model's tokenizer.json (SigLIP 2 and converted \
                 SigLIP repositories have one; an spiece.model alone cannot be read)",
                path.display()
            );
        }
        let mut inner = Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("{}: not a tokenizers file ({e})", path.display()))?;
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config: Value = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("cannot read {}", config_path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", config_path.display()))?
        } else {
            Value::Null
        };
        let class = config
            .get("tokenizer_class")
            .and_then(Value::as_str)
            .unwrap_or("");
        let id_of = |inner: &Tokenizer, name: &str, what: &str| -> Result<u32> {
            inner.token_to_id(name).with_context(|| {
                format!(
                    "{}: {what} {name:?} is not in {}",
                    config_path.display(),
                    path.display()
                )
            })
        };
        // transformers rebuilds the post-processor when the config says either.
        let add_bos = config.get("add_bos_token").and_then(Value::as_bool);
        let add_eos = config.get("add_eos_token").and_then(Value::as_bool);
        if add_bos.is_some() || add_eos.is_some() {
            let bos = token_name(&config, "bos_token").filter(|_| add_bos == Some(true));
            let eos = token_name(&config, "eos_token").filter(|_| add_eos == Some(true));
            let mut single = String::new();
            let mut pair_tail = String::new();
            let mut specials = Vec::new();
            if let Some(b) = &bos {
                single.push_str(&format!("{b}:0 "));
                pair_tail.push_str(&format!(" {b}:1"));
                specials.push((b.clone(), id_of(&inner, b, "bos_token")?));
            }
            single.push_str("$A:0");
            pair_tail.push_str(" $B:1");
            if let Some(e) = &eos {
                single.push_str(&format!(" {e}:0"));
                pair_tail.push_str(&format!(" {e}:1"));
                specials.push((e.clone(), id_of(&inner, e, "eos_token")?));
            }
            let template = TemplateProcessing::builder()
                .try_single(single.as_str())
                .and_then(|b| b.try_pair(format!("{single}{pair_tail}").as_str()))
                .map_err(|e| anyhow!("cannot build the bos/eos template: {e}"))?
                .special_tokens(specials)
                .build()
                .map_err(|e| anyhow!("cannot build the bos/eos template: {e}"))?;
            inner.with_post_processor(Some(template));
        }
        if family == SiglipFamily::Siglip2 {
            // Siglip2Tokenizer lowercases before the file's normalizer.
            let mut steps: Vec<NormalizerWrapper> = vec![Lowercase.into()];
            steps.extend(inner.get_normalizer().cloned());
            inner
                .with_normalizer(Some(Sequence::new(steps)))
                .map_err(|e| anyhow!("{}: cannot add lowercasing ({e})", path.display()))?;
        }
        inner
            .with_truncation(Some(TruncationParams {
                max_length: context,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{}: cannot truncate to {context} ({e})", path.display()))?;
        inner.with_padding(None);
        let pad_id = match token_name(&config, "pad_token") {
            Some(name) => id_of(&inner, &name, "pad_token")? as i64,
            None => default_pad_id,
        };
        let pad_left = match config.get("padding_side").and_then(Value::as_str) {
            Some("left") => true,
            Some("right") => false,
            Some(other) => bail!(
                "{}: padding_side {other:?} is not \"left\" or \"right\"",
                config_path.display()
            ),
            // the class default: Gemma's and SigLIP 2's tokenizers pad on the left
            None => class.starts_with("Gemma") || class.starts_with("Siglip2"),
        };
        Ok(SiglipTokenizer {
            inner,
            context,
            pad_id,
            pad_left,
        })
    }

    /// Ids of one text with its special tokens, truncated to the context, not padded.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?;
        Ok(encoding.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Ids padded to the context.
    pub fn encode_padded(&self, text: &str) -> Result<Vec<i64>> {
        let ids = self.encode(text)?;
        let pad = vec![self.pad_id; self.context.saturating_sub(ids.len())];
        Ok(if self.pad_left {
            [pad, ids].concat()
        } else {
            [ids, pad].concat()
        })
    }

    /// `[T, context]` int64 ids of `texts`.
    pub fn tokenize(&self, texts: &[String]) -> Result<Tensor> {
        anyhow::ensure!(!texts.is_empty(), "no texts to encode");
        let mut flat = Vec::with_capacity(texts.len() * self.context);
        for t in texts {
            flat.extend(self.encode_padded(t)?);
        }
        Tensor::f_from_slice(&flat)
            .and_then(|t| t.f_view([texts.len() as i64, self.context as i64]))
            .context("cannot build the token tensor")
    }

    pub fn context(&self) -> usize {
        self.context
    }

    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }
}
