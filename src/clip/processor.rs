//! A model's preprocessing: the `preprocessor_config.json` of its Hugging Face directory
//! when there is one, else its family's default.
//!
//! Reads the fields transformers' PIL image processors (`CLIPImageProcessorPil`,
//! `BitImageProcessorPil`, `SiglipImageProcessorPil`) act on: `do_resize` + `size`
//! (`shortest_edge`, or `height` and `width`; a bare number is a shortest edge or a square
//! as the family's processor reads it), `resample`, `do_center_crop` + `crop_size`,
//! `do_rescale` + `rescale_factor`, `do_normalize` + `image_mean` / `image_std`,
//! `do_convert_rgb`. A field that is absent keeps the family default; other fields
//! (`image_processor_type`, `processor_class`, ...) are ignored.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::family::Family;
use super::preprocess::{PreprocessConfig, Resample, Resize};

/// The file name in a Hugging Face model directory.
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";

/// ImageNet's per-channel mean and standard deviation (DINOv2's processor).
pub const IMAGENET_MEAN: [f32; 3] = [0.485_f64 as f32, 0.456_f64 as f32, 0.406_f64 as f32];
pub const IMAGENET_STD: [f32; 3] = [0.229_f64 as f32, 0.224_f64 as f32, 0.225_f64 as f32];

/// The preprocessing a family's published checkpoints ship, for a model whose native input
/// side is `image_size`; `None` for a family without one (its directories must carry a
/// `preprocessor_config.json`).
pub fn family_default(family: Family, image_size: u32) -> Option<PreprocessConfig> {
    match family {
        Family::Clip => Some(PreprocessConfig::with_size(image_size)),
        // facebook/dinov2-*: BitImageProcessor, shortest edge 256, crop 224, ImageNet stats.
        Family::Dinov2 | Family::Dinov2WithRegisters => Some(PreprocessConfig {
            resize: Resize::ShortestEdge(256),
            crop: Some((224, 224)),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            ..PreprocessConfig::with_size(224)
        }),
        // google/siglip-*: a square resize with BILINEAR, no crop, mean = std = 0.5 (what
        // the published preprocessor_config.json files say; transformers' class default
        // would be BICUBIC, but a directory that lost its file holds a published model).
        Family::Siglip => Some(PreprocessConfig {
            resize: Resize::Exact {
                width: image_size,
                height: image_size,
            },
            resample: Resample::Bilinear,
            crop: None,
            mean: [0.5; 3],
            std: [0.5; 3],
            ..PreprocessConfig::with_size(image_size)
        }),
        Family::Siglip2 => None,
    }
}

/// Whether the family's processor reads a bare number `size: N` as a square (SigLIP) rather
/// than a shortest edge (CLIP, BiT).
fn square_by_default(family: Family) -> bool {
    matches!(family, Family::Siglip | Family::Siglip2)
}

/// The preprocessing of the model in `dir`: its `preprocessor_config.json` over the family
/// default, or the default alone when the file is absent.
pub fn load(dir: &Path, family: Family, image_size: u32) -> Result<PreprocessConfig> {
    let path = dir.join(PREPROCESSOR_CONFIG);
    let default = family_default(family, image_size);
    if !path.is_file() {
        return default.with_context(|| {
            format!(
                "{} has no {PREPROCESSOR_CONFIG}, and a {family} model has no default preprocessing: add the file from the model's repository",
                dir.display()
            )
        });
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let base = match family {
        // SigLIP 2's NaFlex file has no size: saeclip runs it at its fixed square grid,
        // resized as SigLIP is (the file's resample, mean and std still apply).
        Family::Siglip2 => family_default(Family::Siglip, image_size),
        _ => default,
    }
    .unwrap_or_else(|| PreprocessConfig::with_size(image_size));
    from_json(&text, base, square_by_default(family))
        .with_context(|| format!("invalid {}", path.display()))
}

#[derive(Deserialize)]
struct Raw {
    do_resize: Option<bool>,
    size: Option<Value>,
    resample: Option<i64>,
    do_center_crop: Option<bool>,
    crop_size: Option<Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Value>,
    image_std: Option<Value>,
    do_convert_rgb: Option<bool>,
}

/// Parse a `preprocessor_config.json` over `base` (the family default). `square`: read a
/// bare `size: N` as N×N instead of a shortest edge.
pub fn from_json(text: &str, base: PreprocessConfig, square: bool) -> Result<PreprocessConfig> {
    let raw: Raw = serde_json::from_str(text)?;
    let mut cfg = base;
    if let Some(size) = &raw.size {
        cfg.resize = parse_size(size, square).context("size")?;
    }
    if raw.do_resize == Some(false) {
        cfg.resize = Resize::Keep;
    }
    if let Some(code) = raw.resample {
        cfg.resample = Resample::from_pil(code).with_context(|| {
            format!(
                "resample: {code} is not supported (1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX or 5 HAMMING; 0 NEAREST is not)"
            )
        })?;
    }
    match raw.do_center_crop {
        Some(false) => cfg.crop = None,
        Some(true) if cfg.crop.is_none() && raw.crop_size.is_none() => {
            bail!("do_center_crop: true needs a crop_size")
        }
        _ => {}
    }
    if raw.do_center_crop != Some(false) {
        if let Some(crop) = &raw.crop_size {
            cfg.crop = Some(parse_crop(crop).context("crop_size")?);
        }
    }
    if let Some(r) = raw.rescale_factor {
        if !(r.is_finite() && r > 0.0) {
            bail!("rescale_factor: {r} must be a positive number");
        }
        cfg.rescale_factor = Some(r);
    }
    if raw.do_rescale == Some(false) {
        cfg.rescale_factor = None;
    }
    if let Some(m) = &raw.image_mean {
        cfg.mean = parse_channels(m).context("image_mean")?;
    }
    if let Some(s) = &raw.image_std {
        cfg.std = parse_channels(s).context("image_std")?;
        if cfg.std.contains(&0.0) {
            bail!("image_std: a standard deviation of 0 divides by zero");
        }
    }
    if let Some(n) = raw.do_normalize {
        cfg.normalize = n;
    }
    // saeclip always converts to RGB: `do_convert_rgb: false` only matters for inputs that
    // are not RGB already, which the processor would then reject.
    let _ = raw.do_convert_rgb;
    Ok(cfg)
}

fn positive(v: &Value, key: &str) -> Result<u32> {
    v.as_u64()
        .filter(|&n| n > 0 && n <= u64::from(u32::MAX))
        .map(|n| n as u32)
        .with_context(|| format!("{key} must be a positive integer, found {v}"))
}

fn parse_size(v: &Value, square: bool) -> Result<Resize> {
    if v.is_number() {
        let n = positive(v, "size")?;
        return Ok(if square {
            Resize::Exact {
                width: n,
                height: n,
            }
        } else {
            Resize::ShortestEdge(n)
        });
    }
    let Some(map) = v.as_object() else {
        bail!("expected a number or {{\"shortest_edge\": N}} or {{\"height\": H, \"width\": W}}, found {v}");
    };
    let get = |k: &str| map.get(k).filter(|x| !x.is_null());
    match (get("shortest_edge"), get("height"), get("width"), get("longest_edge")) {
        (Some(s), None, None, None) => Ok(Resize::ShortestEdge(positive(s, "shortest_edge")?)),
        (None, Some(h), Some(w), None) => Ok(Resize::Exact {
            width: positive(w, "width")?,
            height: positive(h, "height")?,
        }),
        _ => bail!(
            "{v} is not supported: expected {{\"shortest_edge\": N}} or {{\"height\": H, \"width\": W}}"
        ),
    }
}

fn parse_crop(v: &Value) -> Result<(u32, u32)> {
    if v.is_number() {
        let n = positive(v, "crop_size")?;
        return Ok((n, n));
    }
    let (Some(h), Some(w)) = (v.get("height"), v.get("width")) else {
        bail!("expected a number or {{\"height\": H, \"width\": W}}, found {v}");
    };
    Ok((positive(w, "width")?, positive(h, "height")?))
}

/// Three per-channel values (or one for all channels), as float32 the way numpy rounds them.
fn parse_channels(v: &Value) -> Result<[f32; 3]> {
    let one = |x: &Value| {
        x.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f as f32)
            .with_context(|| format!("expected a number, found {x}"))
    };
    match v {
        Value::Array(a) if a.len() == 3 => Ok([one(&a[0])?, one(&a[1])?, one(&a[2])?]),
        Value::Number(_) => Ok([one(v)?; 3]),
        other => bail!("expected 3 numbers (R, G, B), found {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_configs_are_read() {
        // facebook/dinov2-small
        let dino = r#"{"crop_size": {"height": 224, "width": 224}, "do_center_crop": true,
            "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "BitImageProcessor",
            "image_std": [0.229, 0.224, 0.225], "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 256}}"#;
        let c = from_json(dino, PreprocessConfig::with_size(224), false).unwrap();
        assert_eq!(c, family_default(Family::Dinov2, 518).unwrap());
        // openai/clip-vit-large-patch14-336 (old style: bare numbers)
        let clip = r#"{"crop_size": 336, "do_center_crop": true, "do_normalize": true,
            "do_resize": true, "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "size": 336}"#;
        let c = from_json(clip, PreprocessConfig::with_size(224), false).unwrap();
        assert_eq!(c, PreprocessConfig::with_size(336));
        // google/siglip-base-patch16-224
        let siglip = r#"{"do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
            "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}}"#;
        let c = from_json(siglip, family_default(Family::Siglip, 224).unwrap(), true).unwrap();
        assert_eq!(c, family_default(Family::Siglip, 224).unwrap());
        assert_eq!(c.fixed_side(), Some(224));
    }

    #[test]
    fn switches_and_bad_fields() {
        let base = PreprocessConfig::with_size(224);
        let c = from_json(
            r#"{"do_center_crop": false, "do_resize": false, "do_rescale": false, "do_normalize": false}"#,
            base.clone(),
            false,
        )
        .unwrap();
        assert_eq!(c.crop, None);
        assert_eq!(c.resize, Resize::Keep);
        assert_eq!(c.rescale_factor, None);
        assert!(!c.normalize);
        assert_eq!(c.fixed_side(), None);
        for (json, key) in [
            (r#"{"resample": 0}"#, "resample"),
            (r#"{"size": {"longest_edge": 5}}"#, "size"),
            (r#"{"size": -3}"#, "size"),
            (r#"{"crop_size": {"height": 3}}"#, "crop_size"),
            (r#"{"image_mean": [0.5, 0.5]}"#, "image_mean"),
            (r#"{"image_std": [0, 1, 1]}"#, "image_std"),
            (r#"{"rescale_factor": 0}"#, "rescale_factor"),
        ] {
            let err = format!("{:#}", from_json(json, base.clone(), false).unwrap_err());
            assert!(err.contains(key), "{json}: {err}");
        }
    }

    #[test]
    fn missing_file_takes_the_family_default_or_fails() {
        let dir = std::env::temp_dir().join(format!("saeclip-processor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            load(&dir, Family::Clip, 336).unwrap(),
            PreprocessConfig::with_size(336)
        );
        let err = load(&dir, Family::Siglip2, 224).unwrap_err().to_string();
        assert!(
            err.contains(PREPROCESSOR_CONFIG) && err.contains("siglip2"),
            "{err}"
        );
        // SigLIP: the published checkpoints' preprocessing (see family_default).
        let siglip = load(&dir, Family::Siglip, 384).unwrap();
        assert_eq!(siglip.resample, Resample::Bilinear);
        assert_eq!((siglip.mean, siglip.std), ([0.5; 3], [0.5; 3]));
        assert_eq!(siglip.fixed_side(), Some(384));
        std::fs::write(dir.join(PREPROCESSOR_CONFIG), r#"{"resample": 9}"#).unwrap();
        let err = format!("{:#}", load(&dir, Family::Clip, 224).unwrap_err());
        assert!(
            err.contains(PREPROCESSOR_CONFIG) && err.contains("resample"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
