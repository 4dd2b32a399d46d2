//! Embed images and texts with CLIP: the simplest use of a model, and the way to check
//! one by hand (`saeclip embed`).

use std::path::PathBuf;

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use crate::clip::preprocess::preprocess_file;
use crate::clip::{normalize, Clip};

// Where it has always been read from; it lives with the tokenizer.
pub use crate::clip::text_ids::tokenize_texts;

/// What to embed.
#[derive(Debug, Clone, Default)]
pub struct EmbedOptions {
    pub images: Vec<PathBuf>,
    pub texts: Vec<String>,
    /// Also return the residual stream after this vision block.
    pub layer: Option<usize>,
}

/// Embeddings (f32, on the CPU) and, with both images and texts, the zero-shot
/// probabilities of each text for each image.
#[derive(Debug)]
pub struct Embeddings {
    pub pixel_values: Option<Tensor>, // B, C, P, P
    pub image_embeds: Option<Tensor>, // B, E
    pub residual: Option<Tensor>,     // B, S, D
    pub input_ids: Option<Tensor>,    // T, S
    pub text_embeds: Option<Tensor>,  // T, E
    pub probs: Option<Tensor>,        // B, T
}

/// Load and preprocess `paths` into [B, 3, P, P] for `clip`.
pub fn load_pixels(clip: &Clip, paths: &[PathBuf]) -> Result<Tensor> {
    let size = clip.info().image_size;
    let cfg = clip.preprocess();
    let mut flat = Vec::with_capacity(paths.len() * 3 * (size * size) as usize);
    for path in paths {
        flat.extend(preprocess_file(path, &cfg)?);
    }
    Ok(Tensor::f_from_slice(&flat)?.f_view([paths.len() as i64, 3, size, size])?)
}

pub fn embed(clip: &Clip, options: &EmbedOptions) -> Result<Embeddings> {
    ensure!(
        !options.images.is_empty() || !options.texts.is_empty(),
        "nothing to embed: give at least one --image or --text"
    );
    let cpu = |t: Tensor| t.to_device(tch::Device::Cpu).to_kind(Kind::Float);
    let mut out = Embeddings {
        pixel_values: None,
        image_embeds: None,
        residual: None,
        input_ids: None,
        text_embeds: None,
        probs: None,
    };
    if !options.images.is_empty() {
        let pixels = load_pixels(clip, &options.images)?;
        if let Some(layer) = options.layer {
            out.residual = Some(cpu(clip.residual(&pixels, layer)?));
        }
        out.image_embeds = Some(cpu(clip.image_embeds(&pixels)?));
        out.pixel_values = Some(pixels);
    }
    if !options.texts.is_empty() {
        let ids = clip.tokenize(&options.texts)?;
        out.text_embeds = Some(cpu(clip.text_embeds(&ids)?));
        out.input_ids = Some(ids);
    }
    if let (Some(i), Some(t)) = (&out.image_embeds, &out.text_embeds) {
        let cos = normalize(i).matmul(&normalize(t).tr());
        out.probs = Some(clip.probabilities_from_cosines(&cos));
    }
    Ok(out)
}
