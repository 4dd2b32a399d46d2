//! `interpret`: what each SAE feature means — its top images (one streaming pass over a
//! sample, bounded memory), a collage per feature, automatic labels from CLIP's text tower,
//! a CSV for people to annotate and an optional static feature browser.
//!
//! Steps:
//! 1. Check the SAE against the model (d_in, layer) and, with `cache`, against the
//!    activation cache (model sha256, layer, tokens, width).
//! 2. Pick the sample: all images, or a seeded subset of `sample_size` of them (sorted).
//! 3. Stream it: CLIP up to the SAE's layer (or the cache's rows) → SAE codes → per image
//!    and latent the score (max over tokens for patch SAEs) → [`topk::TopK`].
//! 4. Rank live latents (`rank_by`), keep `features` of them; dead latents are counted.
//! 5. Re-read the top images of the kept features: per-patch heatmaps (patch SAEs) and
//!    image embeddings (label method 2); draw the collages.
//! 6. Label, write the CSV (and the HTML browser).
//!
//! Labels: when the SAE reads the CLS token of the last block, a feature's direction in
//! embedding space is `embed(μ + a·W_dec[j]/s) − embed(μ)`, where μ is the sample's mean
//! residual, a the feature's mean activation when it fires and `embed` CLIP's post-layernorm
//! and projection ([`LabelMethod::Decoder`]). Otherwise it is the mean normalised image
//! embedding of the feature's top images minus the sample's ([`LabelMethod::TopImages`]).

pub mod collage;
pub mod html;
pub mod labels;
mod second_look;
mod table;
mod tally;
pub mod topk;

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::clip::preprocess::resize_and_crop;
use crate::clip::{normalize, weights, Clip, LoadOptions, Tokens};
use crate::data::cache::{file_sha256, ActivationCache};
use crate::data::{
    self as datasets, stream_pixels, Dataset, DatasetKind, DatasetSpec, DecodedBatch, Split,
};
use crate::sae::{checkpoint::load_sae, Sae};
use second_look::{feature_directions, gather_top_images, label_with_model};
use table::write_csv;
use tally::{ClassTally, MAX_CLASS_ENTRIES};

pub use collage::{CollageFormat, Grid};
pub use labels::Label;
pub use table::CSV_COLUMNS;
pub use topk::{LatentStats, RankBy, Stats, TopEntry, TopK};

/// What to interpret and where to write it.
#[derive(Debug, Clone)]
pub struct InterpretOptions {
    pub model: PathBuf,
    pub load: LoadOptions,
    pub sae: PathBuf,
    /// Where the images come from (also with `cache`: for the collages).
    pub dataset: DatasetSpec,
    pub split: Split,
    /// Read activations from this cache instead of running CLIP over the sample.
    pub cache: Option<PathBuf>,
    /// Only the first N images of the dataset, in its stable order (like `extract --limit`).
    pub limit: Option<usize>,
    /// Images in the sample (None: all).
    pub sample_size: Option<usize>,
    /// Top images kept per latent.
    pub top_k: usize,
    /// Features reported.
    pub features: usize,
    pub rank_by: RankBy,
    pub grid: Grid,
    /// Seed of the sample subset.
    pub seed: u64,
    pub output_csv: PathBuf,
    pub collage_dir: PathBuf,
    pub collage_format: CollageFormat,
    pub html: Option<PathBuf>,
    /// Phrase file replacing the built-in vocabulary.
    pub vocab: Option<PathBuf>,
    /// A CLIP (any model with a text tower) that labels the features: each feature's top
    /// images are embedded with it and ranked against its text embeddings of the vocabulary.
    pub label_model: Option<PathBuf>,
    /// Images per forward pass.
    pub batch_size: usize,
}

impl InterpretOptions {
    pub fn new(
        model: PathBuf,
        sae: PathBuf,
        dataset: DatasetSpec,
        output_csv: PathBuf,
        collage_dir: PathBuf,
    ) -> InterpretOptions {
        InterpretOptions {
            model,
            load: LoadOptions::default(),
            sae,
            dataset,
            split: Split::Train,
            cache: None,
            limit: None,
            sample_size: None,
            top_k: 12,
            features: 300,
            rank_by: RankBy::Mean,
            grid: Grid::default(),
            seed: 0,
            output_csv,
            collage_dir,
            collage_format: CollageFormat::Png,
            html: None,
            vocab: None,
            label_model: None,
            batch_size: 64,
        }
    }
}

/// How the automatic labels were computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelMethod {
    /// Decoder row through post-layernorm and projection (CLS SAE on the last block).
    Decoder,
    /// Mean embedding of the top images minus the sample mean.
    TopImages,
    /// The same, with the images embedded by `--label-model` (its text ranks the labels).
    LabelModel,
    /// No labels: the model has no text tower and no `--label-model` was given.
    Unlabelled,
}

/// One of a feature's top images.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopImage {
    pub image_index: usize,
    pub source: String,
    /// Class name.
    pub class: String,
    pub activation: f32,
    /// Arg-max token (0 = CLS, 1.. patches).
    pub token: i64,
}

/// One reported feature.
#[derive(Debug, Clone)]
pub struct FeatureReport {
    /// 1-based rank.
    pub rank: usize,
    pub latent: usize,
    pub mean: f64,
    pub max: f64,
    pub frequency: f64,
    /// The class this latent's score detects best over the scored images (name, AUROC);
    /// None when the dataset has no labels or the latent never fired on a labelled image.
    pub best_class: Option<(String, f64)>,
    pub top: Vec<TopImage>,
    pub labels: Vec<Label>,
    /// Collage file (as written, i.e. under `collage_dir`).
    pub collage: PathBuf,
}

/// What `interpret` did.
#[derive(Debug)]
pub struct InterpretSummary {
    /// Images scored.
    pub images: usize,
    /// Images that could not be read (dataset index, error); no other image moved.
    pub skipped: Vec<(usize, String)>,
    pub live: usize,
    pub dead: usize,
    pub features: Vec<FeatureReport>,
    /// Whether the dataset has class labels (and so `best_class` was computed).
    pub labelled: bool,
    pub label_method: LabelMethod,
    /// Text-embedding cache file.
    pub text_cache: PathBuf,
    /// Things the user should know (sample clipped, fewer features, …).
    pub notes: Vec<String>,
    pub seconds: f64,
    /// Elements held by the streaming top-k buffers.
    pub buffer_numel: usize,
    /// Procedural images: (features whose first label names the factor value they detect
    /// best by AUROC, features with a label and such a value).
    pub factor_precision: Option<(usize, usize)>,
}

/// SplitMix64.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded subset of `size` of `candidates` in ascending order (all of them when `size` is
/// None or not smaller), and a note when the request was larger than the candidates.
pub fn sample_indices(
    candidates: &[usize],
    size: Option<usize>,
    seed: u64,
) -> (Vec<usize>, Option<String>) {
    let n = candidates.len();
    match size {
        Some(s) if s < n => {
            let mut v = candidates.to_vec();
            let mut state = seed;
            for i in 0..s {
                let j = i + (splitmix(&mut state) % (n - i) as u64) as usize;
                v.swap(i, j);
            }
            v.truncate(s);
            v.sort_unstable();
            (v, None)
        }
        Some(s) if s > n => (
            candidates.to_vec(),
            Some(format!(
                "--sample-size {s} is larger than the {n} images available: using all {n}"
            )),
        ),
        _ => (candidates.to_vec(), None),
    }
}

/// The SAE's recorded origin.
#[derive(Debug, Clone)]
struct SaeOrigin {
    layer: usize,
    tokens: Tokens,
    sha256: Option<String>,
}

fn sae_origin(meta: &serde_json::Value, path: &Path) -> Result<SaeOrigin> {
    let shown = path.display();
    let layer = meta
        .get("layer")
        .and_then(|v| v.as_u64())
        .with_context(|| format!("SAE checkpoint {shown} does not record its CLIP layer (clip.layer in the saeclip metadata)"))?;
    let tokens = match meta.get("tokens") {
        Some(v) => serde_json::from_value::<Tokens>(v.clone()).with_context(|| {
            format!("SAE checkpoint {shown}: clip.tokens = {v} is not cls, patches or all")
        })?,
        None => bail!("SAE checkpoint {shown} does not record its tokens (clip.tokens)"),
    };
    let sha256 = meta
        .get("sha256")
        .and_then(|v| v.as_str())
        .map(String::from);
    Ok(SaeOrigin {
        layer: layer as usize,
        tokens,
        sha256,
    })
}

/// Images that could not be read: (dataset index, error).
type Skips = Vec<(usize, String)>;

/// Stack the good images of a batch: (indices, pixels [B, 3, P, P]) and the failures.
fn stack(batch: DecodedBatch, size: i64) -> Result<(Vec<usize>, Option<Tensor>, Skips)> {
    let mut ids = Vec::new();
    let mut flat = Vec::new();
    let mut bad = Vec::new();
    for (i, p) in batch {
        match p {
            Ok(p) => {
                ids.push(i);
                flat.extend(p);
            }
            Err(e) => bad.push((i, e)),
        }
    }
    let pixels = if ids.is_empty() {
        None
    } else {
        Some(Tensor::f_from_slice(&flat)?.f_view([ids.len() as i64, 3, size, size])?)
    };
    Ok((ids, pixels, bad))
}

/// Running sums for the labels.
struct Baseline {
    /// Σ CLS residual (decoder method). [D] f64
    residual: Option<Tensor>,
    /// Σ normalised image embedding (top-images method). [E] f64
    embed: Option<Tensor>,
    count: usize,
}

impl Baseline {
    fn add(&mut self, t: &Tensor, which: bool) {
        let s = t
            .to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .sum_dim_intlist(0, false, Kind::Double);
        let slot = if which {
            &mut self.residual
        } else {
            &mut self.embed
        };
        *slot = Some(match slot.take() {
            Some(acc) => acc + s,
            None => s,
        });
    }
}

/// Score every image of `sample` with CLIP + the SAE. Returns the stats buffer, the
/// skipped images and the label baseline sums.
#[allow(clippy::too_many_arguments)]
fn scan_with_model(
    clip: &Clip,
    sae: &Sae,
    origin: &SaeOrigin,
    dataset: &dyn Dataset,
    sample: &[usize],
    top_k: usize,
    batch: usize,
    method: LabelMethod,
    tally: &mut ClassTally,
) -> Result<(TopK, Skips, Baseline)> {
    let size = clip.info().image_size;
    let prep = clip.preprocess();
    let range = clip.token_range(origin.tokens)?;
    let device = sae.device();
    let mut top = TopK::new(sae.config.d_sae, top_k, device);
    let mut skipped = Vec::new();
    let mut base = Baseline {
        residual: None,
        embed: None,
        count: 0,
    };
    let bar = crate::ui::progress_bar(
        sample.len() as u64,
        "{spinner} interpret [{elapsed_precise}] {bar:30} {pos}/{len} images {per_sec} eta {eta}",
    );
    stream_pixels(dataset, sample, batch, &prep, |decoded| {
        let n = decoded.len() as u64;
        let (ids, pixels, bad) = stack(decoded, size)?;
        for (i, e) in bad {
            crate::ui::debug(format!("skipping image {i}: {e}"));
            skipped.push((i, e));
        }
        if let Some(pixels) = pixels {
            let residual = clip.residual(&pixels.to_device(device), origin.layer)?; // B, S, D
            let scores = score_range(sae, range.clone(), &residual)?;
            top.update(&scores, &ids)?;
            tally.add(dataset, &scores.scores, &ids)?;
            match method {
                LabelMethod::Decoder => base.add(&residual.select(1, 0), true),
                LabelMethod::TopImages => {
                    let e = clip.image_embeds_from(&residual, origin.layer)?;
                    base.add(&normalize(&e.to_kind(Kind::Float)), false);
                }
                LabelMethod::LabelModel | LabelMethod::Unlabelled => {}
            }
            base.count += ids.len();
        }
        bar.inc(n);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok((top, skipped, base))
}

/// Scores of the images of a residual [B, S, D] (CLIP's token layout) for an SAE on
/// `tokens`.
pub fn score_residual(sae: &Sae, tokens: Tokens, residual: &Tensor) -> Result<topk::BatchScores> {
    let s = residual.size3()?.1;
    score_range(sae, tokens.positions(s), residual)
}

/// Scores of the images of a residual [B, S, D] for an SAE on the tokens at `range`.
pub fn score_range(
    sae: &Sae,
    range: std::ops::Range<i64>,
    residual: &Tensor,
) -> Result<topk::BatchScores> {
    let (b, _, d) = residual.size3()?;
    let k = range.end - range.start;
    let x = residual.narrow(1, range.start, k).reshape([b * k, d]);
    let device = residual.device();
    let row_image = Tensor::arange(b, (Kind::Int64, device)).repeat_interleave_self_int(k, 0, None);
    let row_token = Tensor::arange_start(range.start, range.end, (Kind::Int64, device)).repeat([b]);
    Ok(topk::score_rows(sae, &x, &row_image, &row_token, b))
}

/// Score the sample's rows of an activation cache.
#[allow(clippy::too_many_arguments)]
fn scan_cache(
    cache: &ActivationCache,
    sae: &Sae,
    sample: &[usize],
    top_k: usize,
    batch: usize,
    method: LabelMethod,
    dataset: &dyn Dataset,
    tally: &mut ClassTally,
) -> Result<(TopK, Baseline)> {
    let device = sae.device();
    let mut top = TopK::new(sae.config.d_sae, top_k, device);
    let mut base = Baseline {
        residual: None,
        embed: None,
        count: 0,
    };
    let wanted: HashSet<usize> = sample.iter().copied().collect();
    for shard in cache.shards() {
        let rows = cache.read_shard(&shard)?;
        let images = Vec::<i64>::try_from(&rows.image_index)?;
        // Runs of rows of one image, in order.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new(); // image, start, len
        for (r, &img) in images.iter().enumerate() {
            match runs.last_mut() {
                Some(last) if last.0 == img as usize && last.1 + last.2 == r => last.2 += 1,
                _ => runs.push((img as usize, r, 1)),
            }
        }
        runs.retain(|run| wanted.contains(&run.0));
        for group in runs.chunks(batch.max(1)) {
            let mut row_ids = Vec::new();
            let mut row_image = Vec::new();
            for (local, &(_, start, len)) in group.iter().enumerate() {
                row_ids.extend((start..start + len).map(|r| r as i64));
                row_image.extend(std::iter::repeat_n(local as i64, len));
            }
            let row_ids = Tensor::from_slice(&row_ids);
            let x = rows
                .activations
                .index_select(0, &row_ids)
                .to_kind(Kind::Float);
            let tok = rows.token_index.index_select(0, &row_ids);
            let scores = topk::score_rows(
                sae,
                &x,
                &Tensor::from_slice(&row_image),
                &tok,
                group.len() as i64,
            );
            let ids: Vec<usize> = group.iter().map(|g| g.0).collect();
            top.update(&scores, &ids)?;
            tally.add(dataset, &scores.scores, &ids)?;
            if method == LabelMethod::Decoder {
                let cls = x.index_select(0, &tok.eq(0).nonzero().squeeze_dim(1));
                base.add(&cls, true);
            }
            base.count += ids.len();
        }
    }
    Ok((top, base))
}

/// `path` relative to the directory `base`, `/`-separated (both made absolute lexically).
pub fn relative_path(path: &Path, base: &Path) -> Result<String> {
    let clean = |p: &Path| -> Result<Vec<String>> {
        let abs = std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))?;
        let mut out: Vec<String> = Vec::new();
        for c in abs.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
                Component::RootDir | Component::Prefix(_) => {
                    out.push(c.as_os_str().to_string_lossy().into_owned())
                }
            }
        }
        Ok(out)
    };
    let (p, b) = (clean(path)?, clean(base)?);
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".to_string(); b.len() - common];
    parts.extend(p[common..].iter().cloned());
    Ok(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

/// The file behind a source of a file-based dataset, if it can be found.
pub fn source_file(spec: &DatasetSpec, split: Split, source: &str) -> Option<PathBuf> {
    let root = PathBuf::from(&spec.path);
    let candidates = match spec.kind {
        DatasetKind::Folder => vec![root.join(split.name()).join(source), root.join(source)],
        DatasetKind::ImageNet => vec![root.join(source)],
        DatasetKind::Ade20k => vec![
            root.join("ADEChallengeData2016/images").join(source),
            root.join("images").join(source),
        ],
        DatasetKind::Food101 => vec![
            root.join("food-101/images").join(source),
            root.join("images").join(source),
        ],
        _ => vec![],
    };
    candidates.into_iter().find(|p| p.is_file())
}

/// Run the whole interpretation.
pub fn interpret(o: &InterpretOptions) -> Result<InterpretSummary> {
    let start = Instant::now();
    ensure!(o.top_k >= 1, "--top-k must be at least 1");
    ensure!(o.features >= 1, "--features must be at least 1");
    ensure!(o.batch_size >= 1, "--batch-size must be at least 1");
    let mut notes = Vec::new();
    let device = o.load.device;
    let (sae, meta) = load_sae(&o.sae, device)?;
    let origin = sae_origin(&meta.clip, &o.sae)?;
    let files = weights::resolve(&o.model, o.load.format)?;
    let model_sha = file_sha256(&files.weights)?;
    let clip = Clip::load(&o.model, &o.load)?;
    let vision = clip.info();
    clip.token_range(origin.tokens).with_context(|| {
        format!(
            "the SAE {} reads clip.tokens {}",
            o.sae.display(),
            origin.tokens.name()
        )
    })?;
    ensure!(
        sae.config.d_in == vision.hidden_size,
        "the SAE {} has d_in = {}, but the model {} has width {}: use the SAE trained on this model",
        o.sae.display(),
        sae.config.d_in,
        o.model.display(),
        vision.hidden_size
    );
    ensure!(
        origin.layer < vision.num_hidden_layers,
        "the SAE {} reads layer {}, but the model {} has blocks 0..={}",
        o.sae.display(),
        origin.layer,
        o.model.display(),
        vision.num_hidden_layers - 1
    );
    if let Some(sha) = &origin.sha256 {
        if sha != &model_sha && o.cache.is_none() {
            crate::ui::warn(format!(
                "the SAE {} was trained on a model with sha256 {sha}, not {} ({model_sha})",
                o.sae.display(),
                o.model.display()
            ));
        }
    }
    let last = vision.num_hidden_layers - 1;
    let label_clip = match &o.label_model {
        None => None,
        Some(path) => {
            let load = LoadOptions {
                format: None,
                ..o.load.clone()
            };
            let lm = Clip::load(path, &load)
                .with_context(|| format!("--label-model {}", path.display()))?;
            ensure!(
                lm.has_text(),
                "--label-model {}: a {} model has no text tower, so it cannot label features: give a CLIP",
                path.display(),
                lm.family()
            );
            Some((path.as_path(), lm))
        }
    };
    let method = if label_clip.is_some() {
        LabelMethod::LabelModel
    } else if !clip.has_text() {
        ensure!(
            o.vocab.is_none(),
            "--vocab: {} is a {} model without a text tower, so it cannot rank phrases: add --label-model CLIP_DIR",
            o.model.display(),
            clip.family()
        );
        notes.push(format!(
            "no labels: a {} model has no text tower (give --label-model CLIP_DIR to label the features with a CLIP)",
            clip.family()
        ));
        LabelMethod::Unlabelled
    } else if origin.tokens == Tokens::Cls && origin.layer == last {
        LabelMethod::Decoder
    } else {
        LabelMethod::TopImages
    };
    let dataset = datasets::limited(datasets::open(&o.dataset, o.split)?, o.limit);

    // Scan.
    let mut tally = ClassTally::new(dataset.as_ref());
    let (top, skipped, mut base, images) = match &o.cache {
        None => {
            let all: Vec<usize> = (0..dataset.len()).collect();
            let (sample, note) = sample_indices(&all, o.sample_size, o.seed);
            notes.extend(note);
            let (top, skipped, base) = scan_with_model(
                &clip,
                &sae,
                &origin,
                dataset.as_ref(),
                &sample,
                o.top_k,
                o.batch_size,
                method,
                &mut tally,
            )?;
            (top, skipped, base, sample)
        }
        Some(path) => {
            let cache = ActivationCache::open(path)?;
            let m = cache.manifest();
            let shown = path.display();
            ensure!(
                m.d_model == sae.config.d_in,
                "cache {shown} has width {}, the SAE d_in = {}",
                m.d_model,
                sae.config.d_in
            );
            ensure!(
                m.layer == origin.layer,
                "cache {shown} holds layer {}, the SAE {} reads layer {}",
                m.layer,
                o.sae.display(),
                origin.layer
            );
            ensure!(
                m.tokens == origin.tokens,
                "cache {shown} holds {} tokens, the SAE {} reads {}",
                m.tokens.name(),
                o.sae.display(),
                origin.tokens.name()
            );
            if let Some(sha) = &origin.sha256 {
                ensure!(
                    sha == &m.model.sha256,
                    "cache {shown} comes from a model with sha256 {}, the SAE {} from {sha}",
                    m.model.sha256,
                    o.sae.display()
                );
            }
            if m.model.sha256 != model_sha {
                crate::ui::warn(format!(
                    "cache {shown} comes from another model file than {} (labels use the latter)",
                    o.model.display()
                ));
            }
            let recorded = !m.dataset.kind.is_empty();
            if recorded
                && (m.dataset.kind != o.dataset.kind.name() || m.dataset.split != o.split.name())
            {
                crate::ui::warn(format!(
                    "cache {shown} was extracted from {}:{} ({}), the images come from {} ({})",
                    m.dataset.kind, m.dataset.path, m.dataset.split, o.dataset, o.split
                ));
            }
            let mut available: Vec<usize> = cache
                .images()?
                .into_iter()
                .map(|r| r.image_index)
                .filter(|&i| i < dataset.len())
                .collect();
            available.dedup();
            let (sample, note) = sample_indices(&available, o.sample_size, o.seed);
            notes.extend(note);
            let (top, mut base) = scan_cache(
                &cache,
                &sae,
                &sample,
                o.top_k,
                o.batch_size,
                method,
                dataset.as_ref(),
                &mut tally,
            )?;
            if method == LabelMethod::TopImages {
                // The cache has no embeddings: embed a seeded subset of the sample.
                let (subset, _) = sample_indices(&sample, Some(512), o.seed ^ 0x5eed);
                notes.push(format!(
                    "label baseline: mean embedding of {} images of the sample (embedded with the model)",
                    subset.len()
                ));
                let size = vision.image_size;
                let prep = clip.preprocess();
                stream_pixels(dataset.as_ref(), &subset, o.batch_size, &prep, |decoded| {
                    let (_, pixels, _) = stack(decoded, size)?;
                    if let Some(p) = pixels {
                        let e = clip.image_embeds(&p.to_device(device))?;
                        base.add(&normalize(&e.to_kind(Kind::Float)), false);
                    }
                    Ok(())
                })?;
            }
            (top, Vec::new(), base, sample)
        }
    };
    let stats = top.finish();
    ensure!(
        stats.images > 0,
        "no image of the sample could be read ({} skipped)",
        skipped.len()
    );
    let (ranked, dead) = stats.ranked(o.rank_by);
    ensure!(
        !ranked.is_empty(),
        "every latent of the SAE is dead on the sample of {} images: nothing to interpret",
        stats.images
    );
    if o.features > ranked.len() {
        notes.push(format!(
            "--features {} is more than the {} live latents: reporting all {} ({dead} dead)",
            o.features,
            ranked.len(),
            ranked.len()
        ));
    }
    let chosen: Vec<&LatentStats> = ranked.iter().take(o.features).copied().collect();
    let mut best_classes = tally.best_classes(dataset.as_ref(), sae.config.d_sae as usize);
    if tally.dropped > 0 {
        notes.push(format!(
            "best classes use the first {} images: the sparse scores reached {MAX_CLASS_ENTRIES} entries ({} images left out)",
            tally.store.images(),
            tally.dropped
        ));
    }
    let best_values = tally.best_values(dataset.as_ref(), sae.config.d_sae as usize);
    drop(tally);

    // Second look at the top images: embeddings and heatmaps.
    let top_data = gather_top_images(&clip, &sae, &origin, dataset.as_ref(), &chosen, o, method)?;

    // Labels.
    let out_dir = o
        .output_csv
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (labels_of, text_cache) = match (method, &label_clip) {
        (LabelMethod::Unlabelled, _) => (vec![Vec::new(); chosen.len()], PathBuf::new()),
        (LabelMethod::LabelModel, Some((path, lm))) => {
            let vocab = labels::load_vocabulary(o.vocab.as_deref())?;
            label_with_model(
                lm,
                path,
                o,
                dataset.as_ref(),
                &chosen,
                &images,
                &vocab,
                &out_dir,
            )?
        }
        _ => {
            let vocab = labels::load_vocabulary(o.vocab.as_deref())?;
            let text_cache = labels::cache_path(&files.weights, &out_dir, &model_sha, &vocab);
            let text = labels::text_embeddings(&clip, &vocab, &text_cache)?;
            let directions =
                feature_directions(&clip, &sae, &origin, &chosen, &mut base, &top_data, method)?;
            (
                labels::rank_labels(&directions, &text, &vocab, 3),
                text_cache,
            )
        }
    };

    // Collages.
    collage::prepare_dir(&o.collage_dir)?;
    let classes = dataset.classes();
    let features: Vec<FeatureReport> = chosen
        .iter()
        .zip(labels_of)
        .enumerate()
        .map(|(r, (l, labels))| FeatureReport {
            rank: r + 1,
            latent: l.latent,
            mean: l.mean,
            max: l.max,
            frequency: l.frequency,
            best_class: best_classes[l.latent].take(),
            top: l
                .top
                .iter()
                .map(|e| {
                    let item = dataset.item(e.image);
                    TopImage {
                        image_index: e.image,
                        class: usize::try_from(item.label)
                            .ok()
                            .and_then(|c| classes.get(c).cloned())
                            .unwrap_or_default(),
                        source: item.source,
                        activation: e.score,
                        token: e.token,
                    }
                })
                .collect(),
            labels,
            collage: o.collage_dir.join(format!(
                "feature_{:06}.{}",
                l.latent,
                o.collage_format.extension()
            )),
        })
        .collect();
    let prep = clip.preprocess();
    let heats: HashMap<(usize, usize), (usize, Vec<f32>)> = top_data
        .iter()
        .flat_map(|(&img, d)| d.heat.iter().map(move |(&l, h)| ((img, l), h.clone())))
        .collect();
    drop(top_data);
    features.par_iter().try_for_each(|f| -> Result<()> {
        let tiles: Vec<collage::Tile> = f
            .top
            .iter()
            .take(o.grid.tiles())
            .filter_map(|t| {
                let img = dataset.image(t.image_index).ok()?;
                Some(collage::Tile {
                    image: resize_and_crop(&img, &prep),
                    score: t.activation,
                    heat: heats.get(&(t.image_index, f.latent)).cloned(),
                })
            })
            .collect();
        let label = f
            .labels
            .first()
            .map(|l| format!(" · {} ({:.2})", l.phrase, l.score))
            .unwrap_or_default();
        let caption = format!("feature {} · rank {}{label}", f.latent, f.rank);
        let img = collage::render(o.grid, &caption, &tiles)?;
        collage::save(&img, &f.collage, o.collage_format)
    })?;

    write_csv(&o.output_csv, &features)?;
    let factor_precision = tally::factor_precision(&features, &best_values);
    let summary = InterpretSummary {
        images: stats.images,
        skipped,
        live: ranked.len(),
        dead,
        features,
        labelled: !dataset.classes().is_empty(),
        label_method: method,
        text_cache,
        notes,
        seconds: start.elapsed().as_secs_f64(),
        buffer_numel: top.buffer_numel(),
        factor_precision,
    };
    if let Some(dir) = &o.html {
        html::write_site(dir, o, &summary, images.len())?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_seeded_sorted_and_clipped() {
        let all: Vec<usize> = (0..100).collect();
        let (a, n) = sample_indices(&all, Some(10), 3);
        assert!(n.is_none());
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a, sample_indices(&all, Some(10), 3).0);
        assert_ne!(a, sample_indices(&all, Some(10), 4).0);
        let (b, n) = sample_indices(&all, Some(500), 3);
        assert_eq!(b, all);
        assert!(n.unwrap().contains("using all 100"));
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_path(Path::new("/a/b/c.png"), Path::new("/a")).unwrap(),
            "b/c.png"
        );
        assert_eq!(
            relative_path(Path::new("/a/x/c.png"), Path::new("/a/y")).unwrap(),
            "../x/c.png"
        );
    }
}
