//! Model dimensions, read from a Hugging Face `config.json` (or an open_clip
//! `open_clip_config.json`), so tiny test models and ViT-B/32 share one code path.
//!
//! Mirrors transformers' `CLIPVisionConfig`, `CLIPTextConfig` and `CLIPConfig`: a field
//! missing from the file takes the transformers default, which is ViT-B/32.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The MLP non-linearity of a transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, used by OpenAI's CLIP.
    QuickGelu,
    /// The exact (erf) GELU, used by most open_clip LAION models.
    Gelu,
    /// GELU's tanh approximation (transformers' `gelu_pytorch_tanh`), used by SigLIP.
    GeluTanh,
}

impl Activation {
    /// Parse a transformers `hidden_act` value.
    pub fn from_hf(name: &str) -> Result<Activation> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            other => {
                bail!("hidden_act {other:?} is not supported (expected \"quick_gelu\", \"gelu\" or \"gelu_pytorch_tanh\")")
            }
        }
    }
}

/// Dimensions of the vision tower (a ViT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

impl VisionConfig {
    /// ViT-B/32 as in `openai/clip-vit-base-patch32`.
    pub fn vit_base_patch32() -> VisionConfig {
        VisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        }
    }

    /// Patches per image side.
    pub fn grid_size(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the class token plus one per patch.
    pub fn num_positions(&self) -> i64 {
        self.grid_size() * self.grid_size() + 1
    }

    fn check(&self) -> Result<()> {
        check_heads("vision_config", self.hidden_size, self.num_attention_heads)?;
        if self.patch_size <= 0 || self.image_size % self.patch_size != 0 {
            bail!(
                "vision_config: image_size {} is not a multiple of patch_size {}",
                self.image_size,
                self.patch_size
            );
        }
        Ok(())
    }
}

/// Dimensions of the text tower (a causal transformer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

impl TextConfig {
    /// The text tower of `openai/clip-vit-base-patch32`.
    pub fn vit_base_patch32() -> TextConfig {
        TextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        }
    }

    fn check(&self) -> Result<()> {
        check_heads("text_config", self.hidden_size, self.num_attention_heads)
    }
}

fn check_heads(section: &str, width: i64, heads: i64) -> Result<()> {
    if width <= 0 || heads <= 0 || width % heads != 0 {
        bail!("{section}: hidden_size {width} is not divisible by num_attention_heads {heads}");
    }
    Ok(())
}

/// A whole CLIP model: both towers, the shared embedding width and the logit scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub projection_dim: i64,
}

impl ClipConfig {
    /// OpenAI CLIP ViT-B/32.
    pub fn vit_base_patch32() -> ClipConfig {
        ClipConfig {
            vision: VisionConfig::vit_base_patch32(),
            text: TextConfig::vit_base_patch32(),
            projection_dim: 512,
        }
    }

    /// The small model `saeclip demo` builds in the binary: CLIP's architecture at a
    /// size that runs fast on a laptop CPU (random weights: not a trained CLIP).
    pub fn demo() -> ClipConfig {
        ClipConfig {
            vision: VisionConfig {
                hidden_size: 128,
                intermediate_size: 512,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                ..VisionConfig::vit_base_patch32()
            },
            text: TextConfig {
                hidden_size: 128,
                intermediate_size: 512,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                ..TextConfig::vit_base_patch32()
            },
            projection_dim: 64,
        }
    }

    /// A transformers `config.json` for these dimensions (what [`ClipConfig::from_hf_json`]
    /// reads back).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let act = |a: Activation| match a {
            Activation::QuickGelu => "quick_gelu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        };
        let v = &self.vision;
        let t = &self.text;
        serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": 2.6592,
            "vision_config": {
                "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers, "num_attention_heads": v.num_attention_heads,
                "num_channels": v.num_channels, "image_size": v.image_size, "patch_size": v.patch_size,
                "layer_norm_eps": v.layer_norm_eps, "hidden_act": act(v.activation),
                "projection_dim": self.projection_dim,
            },
            "text_config": {
                "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
                "max_position_embeddings": t.max_position_embeddings, "layer_norm_eps": t.layer_norm_eps,
                "hidden_act": act(t.activation), "projection_dim": self.projection_dim,
                "bos_token_id": 49406, "eos_token_id": 49407,
            },
        })
    }

    /// Read a transformers `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<ClipConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        ClipConfig::from_hf_json(&text)
            .with_context(|| format!("invalid model config {}", path.display()))
    }

    /// Parse the text of a transformers `config.json`.
    pub fn from_hf_json(text: &str) -> Result<ClipConfig> {
        let raw: HfClipConfig = serde_json::from_str(text)?;
        let default_v = VisionConfig::vit_base_patch32();
        let default_t = TextConfig::vit_base_patch32();
        let v = raw.vision_config;
        let t = raw.text_config;
        let config = ClipConfig {
            vision: VisionConfig {
                hidden_size: v.hidden_size.unwrap_or(default_v.hidden_size),
                intermediate_size: v.intermediate_size.unwrap_or(default_v.intermediate_size),
                num_hidden_layers: v.num_hidden_layers.unwrap_or(default_v.num_hidden_layers),
                num_attention_heads: v
                    .num_attention_heads
                    .unwrap_or(default_v.num_attention_heads),
                num_channels: v.num_channels.unwrap_or(3),
                image_size: v.image_size.unwrap_or(default_v.image_size),
                patch_size: v.patch_size.unwrap_or(default_v.patch_size),
                layer_norm_eps: v.layer_norm_eps.unwrap_or(1e-5),
                activation: Activation::from_hf(v.hidden_act.as_deref().unwrap_or("quick_gelu"))
                    .context("vision_config.hidden_act")?,
            },
            text: TextConfig {
                vocab_size: t.vocab_size.unwrap_or(default_t.vocab_size),
                hidden_size: t.hidden_size.unwrap_or(default_t.hidden_size),
                intermediate_size: t.intermediate_size.unwrap_or(default_t.intermediate_size),
                num_hidden_layers: t.num_hidden_layers.unwrap_or(default_t.num_hidden_layers),
                num_attention_heads: t
                    .num_attention_heads
                    .unwrap_or(default_t.num_attention_heads),
                max_position_embeddings: t
                    .max_position_embeddings
                    .unwrap_or(default_t.max_position_embeddings),
                layer_norm_eps: t.layer_norm_eps.unwrap_or(1e-5),
                activation: Activation::from_hf(t.hidden_act.as_deref().unwrap_or("quick_gelu"))
                    .context("text_config.hidden_act")?,
            },
            projection_dim: raw.projection_dim.unwrap_or(512),
        };
        config.check()?;
        Ok(config)
    }

    /// Read an open_clip `open_clip_config.json` (the layout of the Hugging Face hub's
    /// open_clip repositories: `model_cfg` with `vision_cfg` and `text_cfg`).
    pub fn from_open_clip_file(path: &Path) -> Result<ClipConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        ClipConfig::from_open_clip_json(&text)
            .with_context(|| format!("invalid open_clip config {}", path.display()))
    }

    /// Parse the text of an `open_clip_config.json`.
    pub fn from_open_clip_json(text: &str) -> Result<ClipConfig> {
        let raw: OpenClipFile = serde_json::from_str(text)?;
        let m = raw.model_cfg;
        let activation = if m.quick_gelu {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        };
        let v = m.vision_cfg;
        let t = m.text_cfg;
        let v_heads = v.width / v.head_width.unwrap_or(64);
        let config = ClipConfig {
            vision: VisionConfig {
                hidden_size: v.width,
                intermediate_size: (v.width as f64 * v.mlp_ratio.unwrap_or(4.0)) as i64,
                num_hidden_layers: v.layers,
                num_attention_heads: v_heads,
                num_channels: 3,
                image_size: v.image_size,
                patch_size: v.patch_size,
                layer_norm_eps: 1e-5,
                activation,
            },
            text: TextConfig {
                vocab_size: t.vocab_size.unwrap_or(49408),
                hidden_size: t.width,
                intermediate_size: (t.width as f64 * t.mlp_ratio.unwrap_or(4.0)) as i64,
                num_hidden_layers: t.layers,
                num_attention_heads: t.heads.unwrap_or(t.width / 64),
                max_position_embeddings: t.context_length.unwrap_or(77),
                layer_norm_eps: 1e-5,
                activation,
            },
            projection_dim: m.embed_dim,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        self.vision.check()?;
        self.text.check()?;
        if self.projection_dim <= 0 {
            bail!(
                "projection_dim must be positive, found {}",
                self.projection_dim
            );
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct HfClipConfig {
    #[serde(default)]
    vision_config: HfTowerConfig,
    #[serde(default)]
    text_config: HfTowerConfig,
    projection_dim: Option<i64>,
}

#[derive(Deserialize, Default)]
struct HfTowerConfig {
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    intermediate_size: Option<i64>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<i64>,
    num_channels: Option<i64>,
    image_size: Option<i64>,
    patch_size: Option<i64>,
    max_position_embeddings: Option<i64>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
}

#[derive(Deserialize)]
struct OpenClipFile {
    model_cfg: OpenClipModelCfg,
}

#[derive(Deserialize)]
struct OpenClipModelCfg {
    embed_dim: i64,
    #[serde(default)]
    quick_gelu: bool,
    vision_cfg: OpenClipVisionCfg,
    text_cfg: OpenClipTextCfg,
}

#[derive(Deserialize)]
struct OpenClipVisionCfg {
    image_size: i64,
    layers: usize,
    width: i64,
    patch_size: i64,
    head_width: Option<i64>,
    mlp_ratio: Option<f64>,
}

#[derive(Deserialize)]
struct OpenClipTextCfg {
    context_length: Option<i64>,
    vocab_size: Option<i64>,
    width: i64,
    heads: Option<i64>,
    layers: usize,
    mlp_ratio: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_json_round_trips() {
        for c in [ClipConfig::vit_base_patch32(), ClipConfig::demo()] {
            assert_eq!(
                ClipConfig::from_hf_json(&c.to_hf_json().to_string()).unwrap(),
                c
            );
        }
    }

    #[test]
    fn empty_hf_config_is_vit_b_32() {
        assert_eq!(
            ClipConfig::from_hf_json("{}").unwrap(),
            ClipConfig::vit_base_patch32()
        );
    }

    #[test]
    fn hf_config_fields_override_defaults() {
        let json = r#"{"projection_dim": 32,
            "vision_config": {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                              "intermediate_size": 256, "hidden_act": "gelu", "image_size": 64, "patch_size": 16},
            "text_config": {"hidden_size": 48, "num_attention_heads": 3, "num_hidden_layers": 2}}"#;
        let c = ClipConfig::from_hf_json(json).unwrap();
        assert_eq!(c.projection_dim, 32);
        assert_eq!(c.vision.activation, Activation::Gelu);
        assert_eq!(c.vision.num_positions(), 17);
        assert_eq!(c.text.hidden_size, 48);
        assert_eq!(c.text.activation, Activation::QuickGelu);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let err =
            ClipConfig::from_hf_json(r#"{"vision_config": {"hidden_act": "relu"}}"#).unwrap_err();
        assert!(
            format!("{err:#}").contains("vision_config.hidden_act"),
            "{err:#}"
        );
        let err =
            ClipConfig::from_hf_json(r#"{"text_config": {"num_attention_heads": 7}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("not divisible"), "{err:#}");
        let err = ClipConfig::from_hf_json(r#"{"vision_config": {"patch_size": 30}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("patch_size"), "{err:#}");
    }

    #[test]
    fn open_clip_config_is_read() {
        let json = r#"{"model_cfg": {"embed_dim": 512, "quick_gelu": true,
            "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}}"#;
        assert_eq!(
            ClipConfig::from_open_clip_json(json).unwrap(),
            ClipConfig::vit_base_patch32()
        );
    }
}
