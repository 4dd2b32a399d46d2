//! SigLIP and SigLIP 2 dimensions, read from a transformers `config.json`.
//!
//! Mirrors transformers' `SiglipVisionConfig` / `SiglipTextConfig` (`model_type` siglip) and
//! `Siglip2VisionConfig` / `Siglip2TextConfig` (`model_type` siglip2): a missing field takes
//! the transformers default, which is `google/siglip-base-patch16-224` (SigLIP 2:
//! `google/siglip2-base-patch16-naflex`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::clip::config::Activation;

/// Which transformers model a SigLIP checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiglipFamily {
    /// `SiglipModel`: convolutional patch embedding at a fixed `image_size`. The fixed-resolution
    /// SigLIP 2 checkpoints (`google/siglip2-*-patchN-S`) are of this kind too.
    Siglip,
    /// `Siglip2Model` (the NaFlex checkpoints): a linear patch embedding of patchified pixels
    /// and `num_patches` learned positions, run here at the fixed square grid they form.
    Siglip2,
}

impl SiglipFamily {
    pub fn model_type(self) -> &'static str {
        match self {
            SiglipFamily::Siglip => "siglip",
            SiglipFamily::Siglip2 => "siglip2",
        }
    }
}

/// The vision tower: a ViT without class token, pooled by attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiglipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    /// Pixels per image side: `image_size` (siglip) or `sqrt(num_patches) · patch_size`
    /// (siglip2).
    pub image_size: i64,
    pub patch_size: i64,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

impl SiglipVisionConfig {
    /// `google/siglip-base-patch16-224`.
    pub fn base_patch16_224() -> SiglipVisionConfig {
        SiglipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            layer_norm_eps: 1e-6,
            activation: Activation::GeluTanh,
        }
    }

    /// Patches per image side.
    pub fn grid_size(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Tokens per image: one per patch (no class token).
    pub fn num_patches(&self) -> i64 {
        self.grid_size() * self.grid_size()
    }
}

/// The text tower: a bidirectional transformer pooled at its last position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiglipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    /// Also the length texts are padded to (64 for SigLIP).
    pub max_position_embeddings: i64,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    /// Width of the text embedding (the `head` output); the hidden size when absent.
    pub projection_size: i64,
    /// The id texts are padded with when no tokenizer says otherwise.
    pub pad_token_id: i64,
}

impl SiglipTextConfig {
    /// The text tower of `google/siglip-base-patch16-224`.
    pub fn base() -> SiglipTextConfig {
        SiglipTextConfig {
            vocab_size: 32000,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 64,
            layer_norm_eps: 1e-6,
            activation: Activation::GeluTanh,
            projection_size: 768,
            pad_token_id: 1,
        }
    }
}

/// A whole SigLIP model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiglipConfig {
    pub family: SiglipFamily,
    pub vision: SiglipVisionConfig,
    pub text: SiglipTextConfig,
}

impl SiglipConfig {
    /// `google/siglip-base-patch16-224`.
    pub fn base_patch16_224() -> SiglipConfig {
        SiglipConfig {
            family: SiglipFamily::Siglip,
            vision: SiglipVisionConfig::base_patch16_224(),
            text: SiglipTextConfig::base(),
        }
    }

    /// Read a transformers `config.json` whose `model_type` is siglip or siglip2.
    pub fn from_hf_file(path: &Path) -> Result<SiglipConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        SiglipConfig::from_hf_json(&text)
            .with_context(|| format!("invalid model config {}", path.display()))
    }

    /// Parse the text of a transformers `config.json`.
    pub fn from_hf_json(text: &str) -> Result<SiglipConfig> {
        let raw: HfSiglipConfig = serde_json::from_str(text)?;
        let family = match raw.model_type.as_deref() {
            Some("siglip") => SiglipFamily::Siglip,
            Some("siglip2") => SiglipFamily::Siglip2,
            Some(other) => bail!("model_type {other:?} is not siglip or siglip2"),
            None => bail!("model_type is missing (expected siglip or siglip2)"),
        };
        let dv = SiglipVisionConfig::base_patch16_224();
        let dt = SiglipTextConfig::base();
        let v = raw.vision_config;
        let t = raw.text_config;
        let activation = |section: &str, act: &Option<String>| {
            Activation::from_hf(act.as_deref().unwrap_or("gelu_pytorch_tanh"))
                .with_context(|| format!("{section}.hidden_act"))
        };
        if v.vision_use_head == Some(false) {
            bail!(
                "vision_config.vision_use_head is false: a SigLIP without its attention-pooling head \
                 has no image embedding, which saeclip needs"
            );
        }
        let patch_size = match v.patch_size {
            None => dv.patch_size,
            Some(serde_json::Value::Number(n)) => n
                .as_i64()
                .context("vision_config.patch_size must be an integer")?,
            Some(other) => bail!("vision_config.patch_size {other} is not a single integer"),
        };
        let image_size = match family {
            SiglipFamily::Siglip => v.image_size.unwrap_or(dv.image_size),
            SiglipFamily::Siglip2 => {
                let n = v.num_patches.unwrap_or(256);
                let side = (n as f64).sqrt().round() as i64;
                if n <= 0 || side * side != n {
                    bail!(
                        "vision_config.num_patches {n} is not a square number: saeclip runs SigLIP 2 \
                         at the square grid of its position embeddings (NaFlex variable resolution is \
                         not supported)"
                    );
                }
                side * patch_size
            }
        };
        let hidden_t = t.hidden_size.unwrap_or(dt.hidden_size);
        let config = SiglipConfig {
            family,
            vision: SiglipVisionConfig {
                hidden_size: v.hidden_size.unwrap_or(dv.hidden_size),
                intermediate_size: v.intermediate_size.unwrap_or(dv.intermediate_size),
                num_hidden_layers: v.num_hidden_layers.unwrap_or(dv.num_hidden_layers),
                num_attention_heads: v.num_attention_heads.unwrap_or(dv.num_attention_heads),
                num_channels: v.num_channels.unwrap_or(3),
                image_size,
                patch_size,
                layer_norm_eps: v.layer_norm_eps.unwrap_or(1e-6),
                activation: activation("vision_config", &v.hidden_act)?,
            },
            text: SiglipTextConfig {
                vocab_size: t.vocab_size.unwrap_or(dt.vocab_size),
                hidden_size: hidden_t,
                intermediate_size: t.intermediate_size.unwrap_or(dt.intermediate_size),
                num_hidden_layers: t.num_hidden_layers.unwrap_or(dt.num_hidden_layers),
                num_attention_heads: t.num_attention_heads.unwrap_or(dt.num_attention_heads),
                max_position_embeddings: t
                    .max_position_embeddings
                    .unwrap_or(dt.max_position_embeddings),
                layer_norm_eps: t.layer_norm_eps.unwrap_or(1e-6),
                activation: activation("text_config", &t.hidden_act)?,
                projection_size: t.projection_size.unwrap_or(hidden_t),
                pad_token_id: t.pad_token_id.unwrap_or(dt.pad_token_id),
            },
        };
        config.check()?;
        Ok(config)
    }

    /// A transformers `config.json` for these dimensions (what [`SiglipConfig::from_hf_json`]
    /// reads back and transformers loads).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let act = |a: Activation| match a {
            Activation::QuickGelu => "quick_gelu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        };
        let v = &self.vision;
        let t = &self.text;
        let (architecture, mut vision) = match self.family {
            SiglipFamily::Siglip => (
                "SiglipModel",
                serde_json::json!({"image_size": v.image_size}),
            ),
            SiglipFamily::Siglip2 => (
                "Siglip2Model",
                serde_json::json!({"num_patches": v.num_patches()}),
            ),
        };
        let common = serde_json::json!({
            "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers, "num_attention_heads": v.num_attention_heads,
            "num_channels": v.num_channels, "patch_size": v.patch_size,
            "layer_norm_eps": v.layer_norm_eps, "hidden_act": act(v.activation),
        });
        if let (Some(dst), Some(src)) = (vision.as_object_mut(), common.as_object()) {
            dst.extend(src.clone());
        }
        serde_json::json!({
            "architectures": [architecture],
            "model_type": self.family.model_type(),
            "vision_config": vision,
            "text_config": {
                "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "max_position_embeddings": t.max_position_embeddings,
                "layer_norm_eps": t.layer_norm_eps, "hidden_act": act(t.activation),
                "projection_size": t.projection_size, "pad_token_id": t.pad_token_id,
            },
        })
    }

    fn check(&self) -> Result<()> {
        let heads = |section: &str, width: i64, heads: i64| {
            if width <= 0 || heads <= 0 || width % heads != 0 {
                bail!("{section}: hidden_size {width} is not divisible by num_attention_heads {heads}");
            }
            Ok(())
        };
        heads(
            "vision_config",
            self.vision.hidden_size,
            self.vision.num_attention_heads,
        )?;
        heads(
            "text_config",
            self.text.hidden_size,
            self.text.num_attention_heads,
        )?;
        let v = &self.vision;
        if v.patch_size <= 0 || v.image_size <= 0 || v.image_size % v.patch_size != 0 {
            bail!(
                "vision_config: image_size {} is not a multiple of patch_size {}",
                v.image_size,
                v.patch_size
            );
        }
        if self.text.max_position_embeddings <= 0 || self.text.projection_size <= 0 {
            bail!("text_config: max_position_embeddings and projection_size must be positive");
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct HfSiglipConfig {
    model_type: Option<String>,
    #[serde(default)]
    vision_config: HfTower,
    #[serde(default)]
    text_config: HfTower,
}

#[derive(Deserialize, Default)]
struct HfTower {
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    intermediate_size: Option<i64>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<i64>,
    num_channels: Option<i64>,
    image_size: Option<i64>,
    patch_size: Option<serde_json::Value>,
    num_patches: Option<i64>,
    max_position_embeddings: Option<i64>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    projection_size: Option<i64>,
    pad_token_id: Option<i64>,
    vision_use_head: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_siglip_config_is_base_patch16_224() {
        let c = SiglipConfig::from_hf_json(r#"{"model_type": "siglip"}"#).unwrap();
        assert_eq!(c, SiglipConfig::base_patch16_224());
        assert_eq!(c.vision.num_patches(), 196);
    }

    #[test]
    fn hf_json_round_trips() {
        let mut c = SiglipConfig::base_patch16_224();
        c.vision.num_hidden_layers = 3;
        c.text.projection_size = 512;
        assert_eq!(
            SiglipConfig::from_hf_json(&c.to_hf_json().to_string()).unwrap(),
            c
        );
        c.family = SiglipFamily::Siglip2;
        c.vision.image_size = 256;
        assert_eq!(
            SiglipConfig::from_hf_json(&c.to_hf_json().to_string()).unwrap(),
            c
        );
    }

    #[test]
    fn siglip2_image_size_is_the_position_grid() {
        let c = SiglipConfig::from_hf_json(
            r#"{"model_type": "siglip2", "vision_config": {"patch_size": 16, "num_patches": 256}}"#,
        )
        .unwrap();
        assert_eq!(c.vision.image_size, 256);
        let err = SiglipConfig::from_hf_json(
            r#"{"model_type": "siglip2", "vision_config": {"num_patches": 200}}"#,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("num_patches"), "{err:#}");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = SiglipConfig::from_hf_json(
            r#"{"model_type": "siglip", "vision_config": {"hidden_act": "relu"}}"#,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("vision_config.hidden_act"),
            "{err:#}"
        );
        let err = SiglipConfig::from_hf_json(
            r#"{"model_type": "siglip", "vision_config": {"vision_use_head": false}}"#,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("vision_use_head"), "{err:#}");
        let err = SiglipConfig::from_hf_json(r#"{"model_type": "clip"}"#).unwrap_err();
        assert!(format!("{err:#}").contains("model_type"), "{err:#}");
    }
}
