//! Steering: edit chosen SAE latents inside CLIP and see what the image embedding and the
//! zero-shot labels do (`saeclip steer`).
//!
//! At the SAE's layer and tokens, the codes z = encode(x) are edited (z_j ← S·z_j or
//! z_j ← V for the chosen latents j) and only the change goes back into the residual stream,
//! with the SAE error kept:
//!
//!   x' = x + decode(z') − decode(z) = x + Σ_j (z'_j − z_j)·W_dec[j] / input_scale,
//!
//! so an edit that changes nothing (scale 1) leaves CLIP's output exactly as it was. The
//! remaining blocks run from x' to the steered image embedding.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use tch::{Device, Kind, Tensor};

use super::zeroshot::{class_embeddings, class_names, DEFAULT_TEMPLATE};
use super::{replace_tokens, token_rows, SplicedSae};
use crate::clip::{normalize, Clip, LoadOptions};
use crate::data::{self as datasets, DatasetSpec, Split};
use crate::embed::load_pixels;

/// How the chosen latents change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Edit {
    /// z_j ← S·z_j.
    Scale(f64),
    /// z_j ← V (also for a latent that did not fire).
    Clamp(f64),
}

impl Edit {
    fn apply(self, z: &Tensor) -> Tensor {
        match self {
            Edit::Scale(s) => z * s,
            Edit::Clamp(v) => z.full_like(v),
        }
    }
}

/// Latent ids must exist in the SAE.
pub fn check_latents(sae: &SplicedSae, latents: &[usize]) -> Result<()> {
    ensure!(!latents.is_empty(), "no latent to edit: give --latent ID");
    let f = sae.sae.config.d_sae;
    for &j in latents {
        ensure!(
            (j as i64) < f,
            "latent {j} does not exist: SAE {} has latents 0..={}",
            sae.path.display(),
            f - 1
        );
    }
    Ok(())
}

/// Rows x [N, D] with the latents edited: (x', z_j before [N, J], z_j after [N, J]), f32.
pub fn edit_rows(
    sae: &SplicedSae,
    x: &Tensor,
    latents: &[usize],
    edit: Edit,
) -> (Tensor, Tensor, Tensor) {
    let device = sae.sae.device();
    let ids: Vec<i64> = latents.iter().map(|&j| j as i64).collect();
    let ids = Tensor::from_slice(&ids).to_device(device);
    let x = x.to_kind(Kind::Float).to_device(device);
    let before = sae.sae.encode(&x).index_select(1, &ids); // N, J
    let after = edit.apply(&before);
    let rows = sae.sae.w_dec.index_select(0, &ids); // J, D
    let delta = (&after - &before).matmul(&rows) / sae.sae.input_scale;
    (&x + delta, before, after)
}

/// One batch of images steered.
#[derive(Debug)]
pub struct Steered {
    /// Image embeddings without the edit (projected, not normalised), [B, E].
    pub original: Tensor,
    /// With the edit, [B, E].
    pub steered: Tensor,
    /// The residual after block L, [B, S, D], and the same with the edit.
    pub residual: Tensor,
    pub steered_residual: Tensor,
    /// The chosen latents on each edited token before and after the edit, [B, K, J] f32.
    pub before: Tensor,
    pub after: Tensor,
}

/// Steer `pixels` [B, 3, P, P]: edit `latents` on the tokens the SAE was trained on.
pub fn steer(
    clip: &Clip,
    sae: &SplicedSae,
    pixels: &Tensor,
    latents: &[usize],
    edit: Edit,
) -> Result<Steered> {
    check_latents(sae, latents)?;
    let _guard = tch::no_grad_guard();
    let residual = clip.residual(pixels, sae.layer)?; // B, S, D
    let (b, _, _) = residual.size3()?;
    let at = clip.token_range(sae.tokens)?;
    let k = at.end - at.start;
    let x = token_rows(&residual, &at); // B·K, D
    let (edited, before, after) = edit_rows(sae, &x, latents, edit);
    let steered_residual = replace_tokens(&residual, &at, &edited);
    let j = latents.len() as i64;
    Ok(Steered {
        original: clip.image_embeds_from(&residual, sae.layer)?,
        steered: clip.image_embeds_from(&steered_residual, sae.layer)?,
        residual,
        steered_residual,
        before: before.view([b, k, j]),
        after: after.view([b, k, j]),
    })
}

/// Where the zero-shot labels come from.
#[derive(Debug, Clone)]
pub enum Labels {
    /// A text file, one label a line (blank lines ignored).
    File(PathBuf),
    /// A dataset's class names.
    Dataset(DatasetSpec),
}

/// What `saeclip steer` does.
#[derive(Debug, Clone)]
pub struct SteerOptions {
    pub model: PathBuf,
    pub load: LoadOptions,
    pub sae: PathBuf,
    pub images: Vec<PathBuf>,
    pub latents: Vec<usize>,
    pub edit: Edit,
    pub labels: Labels,
    /// The template labels are put through.
    pub template: String,
    /// Labels shown per image.
    pub top: usize,
}

impl SteerOptions {
    pub fn new(
        model: PathBuf,
        sae: PathBuf,
        images: Vec<PathBuf>,
        latents: Vec<usize>,
        edit: Edit,
        labels: Labels,
    ) -> SteerOptions {
        SteerOptions {
            model,
            load: LoadOptions::default(),
            sae,
            images,
            latents,
            edit,
            labels,
            template: DEFAULT_TEMPLATE.to_string(),
            top: 5,
        }
    }
}

/// One image's labels before and after.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SteeredImage {
    pub path: PathBuf,
    /// (label, probability), most likely first.
    pub before: Vec<(String, f64)>,
    pub after: Vec<(String, f64)>,
    /// Chosen latents, averaged over the edited tokens, before and after.
    pub latents_before: Vec<f64>,
    pub latents_after: Vec<f64>,
    /// cos(original, steered image embedding).
    pub cosine: f64,
}

/// Everything `saeclip steer` found; `steered` holds the tensors (on the CPU).
#[derive(Debug)]
pub struct SteerReport {
    pub labels: Vec<String>,
    pub layer: usize,
    pub tokens: crate::clip::Tokens,
    pub images: Vec<SteeredImage>,
    pub steered: Steered,
    pub latents: Vec<usize>,
}

/// Read labels: one a line, trimmed, blank lines skipped.
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read labels file {}", path.display()))?;
    let labels: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    ensure!(
        !labels.is_empty(),
        "labels file {} has no labels: write one label a line",
        path.display()
    );
    Ok(labels)
}

fn top_labels(probs: &[f64], labels: &[String], n: usize) -> Vec<(String, f64)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order
        .into_iter()
        .take(n)
        .map(|i| (labels[i].clone(), probs[i]))
        .collect()
}

fn rows_f64(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(Vec::<Vec<f64>>::try_from(
        t.to_device(Device::Cpu).to_kind(Kind::Double),
    )?)
}

/// Load everything, steer every image, rank the labels before and after.
pub fn run(o: &SteerOptions) -> Result<SteerReport> {
    ensure!(!o.images.is_empty(), "no images: give --images PATH");
    ensure!(o.top >= 1, "--top must be at least 1");
    super::zeroshot::check_template(&o.template)?;
    let labels = match &o.labels {
        Labels::File(path) => read_labels(path)?,
        Labels::Dataset(spec) => class_names(datasets::open(spec, Split::Test)?.as_ref()),
    };
    let clip = Clip::load(&o.model, &o.load)?;
    ensure!(
        clip.has_text(),
        "steer ranks zero-shot labels and needs a model with a text tower, and {} is a {} model (vision only)",
        o.model.display(),
        clip.family()
    );
    let sae = SplicedSae::load(
        &o.sae,
        &clip,
        Some((&o.model, o.load.format)),
        o.load.device,
    )?;
    if let Some(w) = &sae.model_mismatch {
        crate::ui::warn(w);
    }
    check_latents(&sae, &o.latents)?;
    let text = class_embeddings(&clip, &labels, std::slice::from_ref(&o.template))?;
    let pixels = load_pixels(&clip, &o.images)?.to_device(o.load.device);
    let s = steer(&clip, &sae, &pixels, &o.latents, o.edit)?;
    let probs = |e: &Tensor| -> Result<Vec<Vec<f64>>> {
        let cos = normalize(&e.to_kind(Kind::Float)).matmul(&text.to_device(e.device()).tr());
        rows_f64(&clip.probabilities_from_cosines(&cos))
    };
    let (p0, p1) = (probs(&s.original)?, probs(&s.steered)?);
    let mean_tokens = |t: &Tensor| rows_f64(&t.mean_dim(1, false, Kind::Float));
    let (z0, z1) = (mean_tokens(&s.before)?, mean_tokens(&s.after)?);
    let cos = (normalize(&s.original.to_kind(Kind::Float))
        * normalize(&s.steered.to_kind(Kind::Float)))
    .sum_dim_intlist(1, false, Kind::Float);
    let cos = Vec::<f64>::try_from(cos.to_device(Device::Cpu).to_kind(Kind::Double))?;
    let images = o
        .images
        .iter()
        .enumerate()
        .map(|(i, path)| SteeredImage {
            path: path.clone(),
            before: top_labels(&p0[i], &labels, o.top),
            after: top_labels(&p1[i], &labels, o.top),
            latents_before: z0[i].clone(),
            latents_after: z1[i].clone(),
            cosine: cos[i],
        })
        .collect();
    let cpu = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Float);
    Ok(SteerReport {
        labels,
        layer: sae.layer,
        tokens: sae.tokens,
        images,
        steered: Steered {
            original: cpu(&s.original),
            steered: cpu(&s.steered),
            residual: cpu(&s.residual),
            steered_residual: cpu(&s.steered_residual),
            before: cpu(&s.before),
            after: cpu(&s.after),
        },
        latents: o.latents.clone(),
    })
}

/// Write `original_image_embeds`, `steered_image_embeds` [B, E], `latents_before`,
/// `latents_after` [B, K, J] and `latent_ids` [J] to a .safetensors file, atomically.
pub fn write_tensors(path: &Path, r: &SteerReport) -> Result<()> {
    let ids: Vec<i64> = r.latents.iter().map(|&j| j as i64).collect();
    let ids = Tensor::from_slice(&ids);
    let named: Vec<(&str, &Tensor)> = vec![
        ("original_image_embeds", &r.steered.original),
        ("steered_image_embeds", &r.steered.steered),
        ("latents_before", &r.steered.before),
        ("latents_after", &r.steered.after),
        ("latent_ids", &ids),
    ];
    crate::disk::write_atomic(path, |tmp| {
        Tensor::write_safetensors(&named, tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}
