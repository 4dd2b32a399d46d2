//! Backbone families: which architecture a model directory holds, and the token layout of
//! its residual stream.
//!
//! A Hugging Face directory's `config.json` names its architecture in `model_type`
//! (transformers' `AutoConfig` key); saeclip reads it to pick the native implementation.
//! A config without `model_type` is read as CLIP (older saeclip test models, hand-written
//! configs). open_clip and TorchScript models are always CLIP.

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::Tokens;

/// A vision backbone architecture, named as transformers' `model_type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// OpenAI / LAION CLIP (`clip`): class token, QuickGELU or GELU, text tower.
    Clip,
    /// Google SigLIP (`siglip`): no class token, attention-pooling head, sigmoid scores.
    Siglip,
    /// Google SigLIP 2 NaFlex checkpoints (`siglip2`), run at one fixed square grid (SigLIP 2's
    /// fixed-resolution checkpoints are `siglip`).
    Siglip2,
    /// Meta DINOv2 (`dinov2`): class token, LayerScale, no text tower.
    Dinov2,
    /// DINOv2 with register tokens (`dinov2_with_registers`).
    Dinov2WithRegisters,
}

/// Every family, in the order the error messages list them.
pub const FAMILIES: [Family; 5] = [
    Family::Clip,
    Family::Siglip,
    Family::Siglip2,
    Family::Dinov2,
    Family::Dinov2WithRegisters,
];

impl Family {
    /// The transformers `model_type` of the family.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Clip => "clip",
            Family::Siglip => "siglip",
            Family::Siglip2 => "siglip2",
            Family::Dinov2 => "dinov2",
            Family::Dinov2WithRegisters => "dinov2_with_registers",
        }
    }

    /// The family of a transformers `model_type`, if saeclip knows it.
    pub fn from_model_type(name: &str) -> Option<Family> {
        FAMILIES.into_iter().find(|f| f.model_type() == name)
    }

    /// Whether models of the family have a text tower (zero-shot, text labels).
    pub fn has_text(self) -> bool {
        matches!(self, Family::Clip | Family::Siglip | Family::Siglip2)
    }

    /// The family named by a `config.json`'s text: `model_type`, CLIP when absent.
    /// `file` only names the file in errors.
    pub fn from_config_json(text: &str, file: &Path) -> Result<Family> {
        #[derive(Deserialize)]
        struct Head {
            model_type: Option<serde_json::Value>,
        }
        let head: Head = serde_json::from_str(text)
            .with_context(|| format!("invalid model config {}", file.display()))?;
        match head.model_type {
            None | Some(serde_json::Value::Null) => Ok(Family::Clip),
            Some(serde_json::Value::String(name)) => {
                Family::from_model_type(&name).with_context(|| {
                    let known: Vec<&str> = FAMILIES.iter().map(|f| f.model_type()).collect();
                    format!(
                        "{}: model_type {name:?} is not supported (expected one of {})",
                        file.display(),
                        known.join(", ")
                    )
                })
            }
            Some(other) => bail!(
                "{}: model_type must be a string, found {other}",
                file.display()
            ),
        }
    }

    /// Read the family of the `config.json` at `path`.
    pub fn from_config_file(path: &Path) -> Result<Family> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Family::from_config_json(&text, path)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

/// Where each kind of token sits in a residual stream [B, S, D]: an optional class token
/// (position 0), then `registers` register tokens, then the patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLayout {
    pub cls: bool,
    pub registers: i64,
    pub patches: i64,
}

impl TokenLayout {
    /// CLIP's layout: a class token, then `patches` patches.
    pub fn clip(patches: i64) -> TokenLayout {
        TokenLayout {
            cls: true,
            registers: 0,
            patches,
        }
    }

    /// Tokens before the first patch.
    pub fn prefix(&self) -> i64 {
        i64::from(self.cls) + self.registers
    }

    /// Tokens per image.
    pub fn seq_len(&self) -> i64 {
        self.prefix() + self.patches
    }

    /// The positions of `tokens`, or an error naming the kind the model lacks.
    pub fn range(&self, tokens: Tokens, family: Family) -> Result<Range<i64>> {
        let cls = i64::from(self.cls);
        match tokens {
            Tokens::Cls if !self.cls => bail!(
                "token kind `cls` does not exist in a {family} model (it has no class token): use patches or all"
            ),
            Tokens::Cls => Ok(0..1),
            Tokens::Registers if self.registers == 0 => bail!(
                "token kind `registers` does not exist in a {family} model (it has no register tokens): use {}",
                if self.cls { "cls, patches or all" } else { "patches or all" }
            ),
            Tokens::Registers => Ok(cls..cls + self.registers),
            Tokens::Patches => Ok(self.prefix()..self.seq_len()),
            Tokens::All => Ok(0..self.seq_len()),
        }
    }
}

/// What every command needs to know about a loaded model's vision tower, whatever its
/// family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VisionInfo {
    pub family: Family,
    /// Residual stream width D.
    pub hidden_size: i64,
    /// Transformer blocks; layers are 0..num_hidden_layers.
    pub num_hidden_layers: usize,
    /// Side of the square model input in pixels, after preprocessing.
    pub image_size: i64,
    pub patch_size: i64,
    pub layout: TokenLayout,
}

impl VisionInfo {
    /// Patches per image side.
    pub fn grid_size(&self) -> i64 {
        self.image_size / self.patch_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_types_round_trip() {
        for f in FAMILIES {
            assert_eq!(Family::from_model_type(f.model_type()), Some(f));
            let json = format!(r#"{{"model_type": "{}"}}"#, f.model_type());
            assert_eq!(
                Family::from_config_json(&json, Path::new("config.json")).unwrap(),
                f
            );
        }
        assert_eq!(
            Family::from_config_json("{}", Path::new("c.json")).unwrap(),
            Family::Clip
        );
        let err =
            Family::from_config_json(r#"{"model_type": "vit_mae"}"#, Path::new("m/config.json"))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("m/config.json") && err.contains("model_type \"vit_mae\""),
            "{err}"
        );
        assert!(Family::from_config_json(r#"{"model_type": 3}"#, Path::new("c")).is_err());
    }

    #[test]
    fn token_ranges_follow_the_layout() {
        let dino = TokenLayout {
            cls: true,
            registers: 4,
            patches: 256,
        };
        let f = Family::Dinov2WithRegisters;
        assert_eq!(dino.range(Tokens::Cls, f).unwrap(), 0..1);
        assert_eq!(dino.range(Tokens::Registers, f).unwrap(), 1..5);
        assert_eq!(dino.range(Tokens::Patches, f).unwrap(), 5..261);
        assert_eq!(dino.range(Tokens::All, f).unwrap(), 0..261);
        let clip = TokenLayout::clip(49);
        let err = clip.range(Tokens::Registers, Family::Clip).unwrap_err();
        assert!(err.to_string().contains("`registers`"), "{err}");
        let siglip = TokenLayout {
            cls: false,
            registers: 0,
            patches: 196,
        };
        assert!(siglip.range(Tokens::Cls, Family::Siglip).is_err());
        assert_eq!(
            siglip.range(Tokens::Patches, Family::Siglip).unwrap(),
            0..196
        );
    }
}
