//! `interpret`'s second look at the chosen features' top images, after the scan: their
//! embeddings and per-patch heatmaps, each feature's direction in image-embedding space,
//! and labels from a separate label model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use super::{
    labels, sample_indices, stack, Baseline, InterpretOptions, LabelMethod, LatentStats, SaeOrigin,
};
use crate::clip::{normalize, weights, Clip, Tokens};
use crate::data::cache::file_sha256;
use crate::data::{stream_pixels, Dataset};
use crate::sae::Sae;

/// Per-image data of the top images gathered after the scan.
pub(super) struct TopImageData {
    /// Normalised image embedding [E] (top-images method).
    pub(super) embed: Option<Tensor>,
    /// Per-patch activations for the features that list this image: latent → (side, values).
    pub(super) heat: HashMap<usize, (usize, Vec<f32>)>,
}

/// Embeddings and per-patch heatmaps of the chosen features' top images.
pub(super) fn gather_top_images(
    clip: &Clip,
    sae: &Sae,
    origin: &SaeOrigin,
    dataset: &dyn Dataset,
    chosen: &[&LatentStats],
    o: &InterpretOptions,
    method: LabelMethod,
) -> Result<BTreeMap<usize, TopImageData>> {
    let heat = matches!(origin.tokens, Tokens::Patches | Tokens::All);
    let mut wanted: BTreeMap<usize, Vec<usize>> = BTreeMap::new(); // image → latents
    for l in chosen {
        for (i, e) in l.top.iter().enumerate() {
            let in_collage = i < o.grid.tiles();
            if method == LabelMethod::TopImages || (heat && in_collage) {
                wanted.entry(e.image).or_default().push(l.latent);
            }
        }
    }
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let info = clip.info();
    let size = info.image_size;
    let side = info.grid_size() as usize;
    let prefix = info.layout.prefix();
    let prep = clip.preprocess();
    let device = sae.device();
    let ids: Vec<usize> = wanted.keys().copied().collect();
    stream_pixels(dataset, &ids, o.batch_size.min(16), &prep, |decoded| {
        let (ids, pixels, _) = stack(decoded, size)?;
        let Some(pixels) = pixels else { return Ok(()) };
        let residual = clip.residual(&pixels.to_device(device), origin.layer)?;
        let embeds = if method == LabelMethod::TopImages {
            let e = clip.image_embeds_from(&residual, origin.layer)?;
            Some(normalize(&e.to_kind(Kind::Float)).to_device(Device::Cpu))
        } else {
            None
        };
        for (b, &img) in ids.iter().enumerate() {
            let mut maps = HashMap::new();
            if heat {
                // Patch tokens of this image, dense codes restricted to its latents.
                let patches = residual
                    .get(b as i64)
                    .narrow(0, prefix, (side * side) as i64);
                let z = sae.encode(&patches); // P, F
                for &latent in &wanted[&img] {
                    let v =
                        Vec::<f32>::try_from(z.select(1, latent as i64).to_device(Device::Cpu))?;
                    maps.insert(latent, (side, v));
                }
            }
            out.insert(
                img,
                TopImageData {
                    embed: embeds.as_ref().map(|e| e.get(b as i64)),
                    heat: maps,
                },
            );
        }
        Ok(())
    })?;
    Ok(out)
}

/// Each chosen feature's direction in image-embedding space. [N, E]
pub(super) fn feature_directions(
    clip: &Clip,
    sae: &Sae,
    origin: &SaeOrigin,
    chosen: &[&LatentStats],
    base: &mut Baseline,
    top_data: &BTreeMap<usize, TopImageData>,
    method: LabelMethod,
) -> Result<Tensor> {
    let n = base.count.max(1) as f64;
    match method {
        LabelMethod::Decoder => {
            let mu = base
                .residual
                .take()
                .context("no residual was accumulated")?
                / n; // D
            let device = sae.device();
            let mu = mu.to_kind(Kind::Float).to_device(device);
            let latents: Vec<i64> = chosen.iter().map(|l| l.latent as i64).collect();
            let a: Vec<f32> = chosen.iter().map(|l| l.mean_when_firing() as f32).collect();
            let rows = sae
                .w_dec
                .index_select(0, &Tensor::from_slice(&latents).to_device(device)); // N, D
            let a = Tensor::from_slice(&a).to_device(device).unsqueeze(1);
            let x = mu.unsqueeze(0) + rows * a / sae.input_scale; // N, D
            let e = clip.image_embeds_from(&x.unsqueeze(1), origin.layer)?;
            let e0 = clip.image_embeds_from(&mu.view([1, 1, -1]), origin.layer)?;
            Ok((e.to_kind(Kind::Float) - e0.to_kind(Kind::Float)).to_device(Device::Cpu))
        }
        LabelMethod::LabelModel | LabelMethod::Unlabelled => {
            bail!("labels of this kind do not come from the model's own directions")
        }
        LabelMethod::TopImages => {
            let mean = base.embed.take().context("no embedding was accumulated")? / n;
            let mean = mean.to_kind(Kind::Float);
            let rows: Vec<Tensor> = chosen
                .iter()
                .map(|l| {
                    let es: Vec<Tensor> = l
                        .top
                        .iter()
                        .filter_map(|e| top_data.get(&e.image).and_then(|d| d.embed.as_ref()))
                        .map(|t| t.shallow_clone())
                        .collect();
                    if es.is_empty() {
                        mean.zeros_like()
                    } else {
                        Tensor::stack(&es, 0).mean_dim(0, false, Kind::Float) - &mean
                    }
                })
                .collect();
            Ok(Tensor::stack(&rows, 0))
        }
    }
}

/// Labels from a separate CLIP (`--label-model`): each chosen feature's direction is the
/// mean normalised embedding (by `lm`) of its top images minus the mean over a seeded subset
/// of the sample (at most 512 images), ranked against `lm`'s text embeddings of `vocab`.
/// Returns the labels and the text-embedding cache file.
#[allow(clippy::too_many_arguments)]
pub(super) fn label_with_model(
    lm: &Clip,
    lm_path: &Path,
    o: &InterpretOptions,
    dataset: &dyn Dataset,
    chosen: &[&LatentStats],
    sample: &[usize],
    vocab: &[String],
    out_dir: &Path,
) -> Result<(Vec<Vec<labels::Label>>, PathBuf)> {
    let files = weights::resolve(lm_path, None)?;
    let sha = file_sha256(&files.weights)?;
    let cache = labels::cache_path(&files.weights, out_dir, &sha, vocab);
    let text = labels::text_embeddings(lm, vocab, &cache)?;
    let (subset, _) = sample_indices(sample, Some(512), o.seed ^ 0x5eed);
    let mut wanted: std::collections::BTreeSet<usize> = subset.iter().copied().collect();
    for l in chosen {
        wanted.extend(l.top.iter().map(|e| e.image));
    }
    let ids: Vec<usize> = wanted.into_iter().collect();
    let size = lm.info().image_size;
    let device = lm.device();
    let mut embeds: HashMap<usize, Tensor> = HashMap::new();
    stream_pixels(dataset, &ids, o.batch_size, &lm.preprocess(), |decoded| {
        let (ids, pixels, _) = stack(decoded, size)?;
        if let Some(p) = pixels {
            let e = lm.image_embeds(&p.to_device(device))?;
            let e = normalize(&e.to_kind(Kind::Float)).to_device(Device::Cpu); // B, E
            for (b, &i) in ids.iter().enumerate() {
                embeds.insert(i, e.get(b as i64));
            }
        }
        Ok(())
    })?;
    let mean_of = |images: &mut dyn Iterator<Item = usize>| -> Option<Tensor> {
        let es: Vec<Tensor> = images
            .filter_map(|i| embeds.get(&i).map(Tensor::shallow_clone))
            .collect();
        (!es.is_empty()).then(|| Tensor::stack(&es, 0).mean_dim(0, false, Kind::Float))
    };
    let base = mean_of(&mut subset.iter().copied())
        .context("--label-model: no image of the sample could be read")?;
    let rows: Vec<Tensor> = chosen
        .iter()
        .map(|l| match mean_of(&mut l.top.iter().map(|e| e.image)) {
            Some(m) => m - &base,
            None => base.zeros_like(),
        })
        .collect();
    let directions = Tensor::stack(&rows, 0); // N, E
    Ok((labels::rank_labels(&directions, &text, vocab, 3), cache))
}
