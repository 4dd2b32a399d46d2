//! Zero-shot classification with CLIP, with and without an SAE spliced into the vision tower
//! (`saeclip eval-zeroshot`; DESIGN.md "Zero-shot outputs", "Metrics").
//!
//! Class texts: every class name through every template (CLIP's prompt engineering: embed,
//! L2-normalise, average over the templates, renormalise), once per dataset. Images are
//! decoded and preprocessed in parallel on a producer thread one batch ahead of the forward
//! (as in `extract`); an image that cannot be decoded is skipped and counted, and keeps its
//! index. Logits are exp(logit_scale)·cos(image, class); top-5 means top-min(5, classes).
//!
//! With an SAE, one forward to block L is shared by every path: the residual x after block L
//! continues through the remaining blocks (1) as is, (2) with the spliced tokens replaced by
//! the reconstruction x̂, and (3) with x̂ + (x − x̂), the SAE error added back. (3) must give
//! the plain predictions up to float noise; when it does not, the evaluation fails. Path (3)
//! is a check that costs one more pass through the blocks after L (a third of the time
//! after block L); `ZeroshotOptions::error_check = false` (`--no-error-check`) skips it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{replace_tokens, token_rows, SplicedSae};
use crate::clip::{normalize, Clip, LoadOptions, Precision, Tokens};
use crate::data::{self as datasets, stream_pixels, Dataset, DatasetKind, DatasetSpec, Split};
use crate::rng::SplitMix64;
use crate::sae::Evr;

/// The single template when none is given: the first of CLIP's CIFAR templates
/// (openai/CLIP data/prompts.md). CLIP's README example writes it without the period.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// Class names and templates from openai/CLIP (see assets/clip_zeroshot_prompts.json).
const PROMPTS_JSON: &str = include_str!("../../assets/clip_zeroshot_prompts.json");

/// Texts per forward of the text tower.
const TEXT_BATCH: usize = 256;

/// One template or CLIP's ensemble.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TemplateMode {
    /// One template (`--template`, default "a photo of a {}.").
    #[default]
    Single,
    /// The dataset's templates from CLIP's prompts (Food-101: its one template; ImageNet: its
    /// 80; CIFAR, folders and procedural images: the 18 CIFAR templates), averaged.
    Ensemble,
}

impl TemplateMode {
    pub fn name(self) -> &'static str {
        match self {
            TemplateMode::Single => "single",
            TemplateMode::Ensemble => "ensemble",
        }
    }
}

/// The templates of one of CLIP's prompt sets (`cifar10`, `cifar100`, `food101`,
/// `imagenet`).
pub fn clip_templates(set: &str) -> Option<&'static [String]> {
    static SETS: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();
    let sets = SETS.get_or_init(|| {
        let value: serde_json::Value =
            serde_json::from_str(PROMPTS_JSON).expect("the embedded prompts are valid JSON");
        let object = value.as_object().expect("the prompts are a JSON object");
        object
            .iter()
            .filter_map(|(name, set)| {
                let templates = set.get("templates")?.as_array()?;
                let list = templates
                    .iter()
                    .map(|t| t.as_str().expect("templates are strings").to_string())
                    .collect();
                Some((name.clone(), list))
            })
            .collect()
    });
    sets.get(set).map(Vec::as_slice)
}

/// The templates for a dataset kind: `single` alone, or the ensemble (Food-101's and
/// ImageNet's own templates, the CIFAR ones for everything else).
pub fn templates_for(kind: DatasetKind, mode: TemplateMode, single: &str) -> Vec<String> {
    match mode {
        TemplateMode::Single => vec![single.to_string()],
        TemplateMode::Ensemble => {
            let set = match kind {
                DatasetKind::Cifar100 => "cifar100",
                DatasetKind::Food101 => "food101",
                DatasetKind::ImageNet => "imagenet",
                _ => "cifar10",
            };
            clip_templates(set)
                .expect("the embedded prompts have every set")
                .to_vec()
        }
    }
}

/// A template must hold exactly one `{}`, where the class name goes.
pub fn check_template(template: &str) -> Result<()> {
    ensure!(
        template.matches("{}").count() == 1,
        "template {template:?} must contain `{{}}` exactly once (where the class name goes), e.g. \"a photo of a {{}}.\""
    );
    Ok(())
}

/// `template` with its `{}` replaced by `class`.
pub fn fill(template: &str, class: &str) -> String {
    template.replacen("{}", class, 1)
}

/// The class names a dataset is prompted with: CIFAR and Food-101 names with underscores
/// as spaces (`aquarium_fish` → `aquarium fish`, as in CLIP's prompts), ImageNet's CLIP
/// names, folder names and procedural names as they are.
pub fn class_names(dataset: &dyn Dataset) -> Vec<String> {
    let spaced = matches!(
        dataset.spec().kind,
        DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::Food101 | DatasetKind::Ade20k
    );
    dataset
        .classes()
        .iter()
        .map(|c| {
            if spaced {
                c.replace('_', " ")
            } else {
                c.clone()
            }
        })
        .collect()
}

/// One embedding per class, [C, E] f32, L2-normalised: each class name through each
/// template, embedded, normalised, averaged over the templates and renormalised.
pub fn class_embeddings(clip: &Clip, classes: &[String], templates: &[String]) -> Result<Tensor> {
    ensure!(!classes.is_empty(), "there are no classes to embed");
    ensure!(!templates.is_empty(), "there are no templates");
    for t in templates {
        check_template(t)?;
    }
    let _guard = tch::no_grad_guard();
    let texts: Vec<String> = classes
        .iter()
        .flat_map(|c| templates.iter().map(move |t| fill(t, c)))
        .collect();
    let mut embeds = Vec::new();
    for chunk in texts.chunks(TEXT_BATCH) {
        let ids = clip.tokenize(chunk)?;
        let e = clip.text_embeds(&ids)?; // the model moves the ids to its device
        embeds.push(normalize(&e.to_kind(Kind::Float)));
    }
    let all = Tensor::cat(&embeds, 0); // C·T, E
    let e = all.size()[1];
    let mean = all
        .view([classes.len() as i64, templates.len() as i64, e])
        .mean_dim(1, false, Kind::Float);
    Ok(normalize(&mean))
}

/// A deterministic sample of `n` positions of `labels`, stratified by class: the positions
/// of each class are shuffled, the classes are put in a shuffled order, and one position is
/// taken from each class in turn until `n` are taken (a class that runs out is passed
/// over). Everything with `n >= labels.len()`. Returned sorted.
pub fn stratified_sample(labels: &[i64], n: usize, seed: u64) -> Vec<usize> {
    if n >= labels.len() {
        return (0..labels.len()).collect();
    }
    let mut rng = SplitMix64::new(seed ^ 0x5EED_0F5A_3B1E);
    let mut by_class: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i);
    }
    let mut classes: Vec<Vec<usize>> = by_class.into_values().collect();
    for members in &mut classes {
        rng.shuffle(members);
    }
    rng.shuffle(&mut classes);
    let mut chosen = Vec::with_capacity(n);
    let mut round = 0;
    while chosen.len() < n {
        for members in &classes {
            if let Some(&i) = members.get(round) {
                chosen.push(i);
                if chosen.len() == n {
                    break;
                }
            }
        }
        round += 1;
    }
    chosen.sort_unstable();
    chosen
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct ZeroshotOptions {
    pub model: PathBuf,
    pub load: LoadOptions,
    /// SAE checkpoint to splice in; plain CLIP only without one.
    pub sae: Option<PathBuf>,
    pub datasets: Vec<DatasetSpec>,
    pub split: Split,
    /// A stratified sample of this many images per dataset (all of them without); images
    /// without a label are never drawn.
    pub samples: Option<usize>,
    /// Seed of the sample.
    pub seed: u64,
    pub templates: TemplateMode,
    /// The template of [`TemplateMode::Single`].
    pub template: String,
    /// Tokens replaced by the reconstruction; default: the tokens the SAE was trained on.
    pub splice: Option<Tokens>,
    pub batch_size: usize,
    /// Run path (3), x̂ + (x − x̂), and fail when it does not reproduce CLIP (default on).
    pub error_check: bool,
}

impl ZeroshotOptions {
    pub fn new(model: PathBuf, datasets: Vec<DatasetSpec>) -> ZeroshotOptions {
        ZeroshotOptions {
            model,
            load: LoadOptions::default(),
            sae: None,
            datasets,
            split: Split::Test,
            samples: None,
            seed: 0,
            templates: TemplateMode::Single,
            template: DEFAULT_TEMPLATE.to_string(),
            splice: None,
            batch_size: 64,
            error_check: true,
        }
    }
}

/// Top-1 and top-5 accuracy in %.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
}

/// One evaluated image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub image_index: usize,
    pub source: String,
    pub label: i64,
    /// Plain CLIP's classes, best first (top-min(5, classes)).
    pub top5: Vec<i64>,
    /// With the SAE spliced in, best first.
    pub top5_sae: Option<Vec<i64>>,
    /// With the SAE error added back.
    pub pred_error_added: Option<i64>,
}

impl Prediction {
    pub fn pred(&self) -> i64 {
        self.top5[0]
    }

    pub fn pred_sae(&self) -> Option<i64> {
        self.top5_sae.as_ref().map(|t| t[0])
    }
}

/// An image that could not be decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedImage {
    pub image_index: usize,
    pub source: String,
    pub error: String,
}

/// The results on one dataset. Serialises to DESIGN.md's per-dataset JSON object (with
/// extra keys after the documented ones).
#[derive(Debug, Clone, Serialize)]
pub struct DatasetResult {
    /// The dataset as named (`KIND:PATH`).
    pub name: String,
    /// Images evaluated (skipped ones not counted).
    pub samples: usize,
    /// `single` or `ensemble`.
    pub templates: TemplateMode,
    pub clip: Accuracy,
    pub clip_sae: Option<Accuracy>,
    /// clip − clip_sae, in points.
    pub drop_top1: Option<f64>,
    pub drop_top5: Option<f64>,
    /// Explained variance of the SAE on the spliced tokens of these images.
    pub sae_evr: Option<f64>,
    /// The original project's per-batch formula, for comparison.
    pub sae_evr_seed: Option<f64>,
    /// Accuracy with x̂ + (x − x̂) spliced in: equals `clip` up to float noise.
    pub error_added: Option<Accuracy>,
    /// Share of images whose error-added prediction equals the plain one.
    pub error_added_agreement: Option<f64>,
    /// Mean cosine between the original and the spliced image embeddings.
    pub mean_cosine: Option<f64>,
    pub split: Split,
    pub classes: usize,
    pub template_list: Vec<String>,
    /// Images that could not be decoded.
    pub skipped: usize,
    pub skipped_images: Vec<SkippedImage>,
    /// Seconds spent on the images (decoding, forward, scoring), text embedding excluded.
    pub seconds: f64,
    pub images_per_s: f64,
    #[serde(skip)]
    pub class_names: Vec<String>,
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// The SAE as it was spliced.
#[derive(Debug, Clone, Serialize)]
pub struct SaeSummary {
    pub path: String,
    pub architecture: String,
    pub k: i64,
    pub d_sae: i64,
    pub layer: usize,
    /// Tokens the SAE was trained on.
    pub tokens: Tokens,
    /// Tokens replaced by the reconstruction.
    pub splice: Tokens,
    /// Set when the checkpoint was trained on other model weights.
    pub model_mismatch: Option<String>,
}

/// Everything `eval-zeroshot` found.
#[derive(Debug, Clone, Serialize)]
pub struct ZeroshotReport {
    pub datasets: Vec<DatasetResult>,
    pub model: String,
    pub sae: Option<SaeSummary>,
    pub samples: Option<usize>,
    pub seed: u64,
}

/// The image embeddings of one batch with the SAE spliced in, from one forward to block L.
#[derive(Debug)]
pub struct SplicedForward {
    /// Unchanged residual, [B, E].
    pub original: Tensor,
    /// Spliced tokens replaced by x̂, [B, E].
    pub spliced: Tensor,
    /// Spliced tokens replaced by x̂ + (x − x̂), [B, E], when asked for.
    pub error_added: Option<Tensor>,
    /// The spliced tokens, [B·K, D] f32.
    pub x: Tensor,
    /// Their reconstruction, [B·K, D] f32.
    pub x_hat: Tensor,
}

/// Run `pixels` [B, 3, P, P] to block L once, then on to the image embedding three ways
/// (see the module docs), or two without `error_added`.
pub fn spliced_forward(
    clip: &Clip,
    sae: &SplicedSae,
    splice: Tokens,
    pixels: &Tensor,
    error_added: bool,
) -> Result<SplicedForward> {
    let residual = clip.residual(pixels, sae.layer)?; // B, S, D
    splice_residual(clip, sae, splice, &residual, error_added)
}

/// The part of [`spliced_forward`] after block L: from the residual [B, S, D] to the image
/// embeddings.
pub fn splice_residual(
    clip: &Clip,
    sae: &SplicedSae,
    splice: Tokens,
    residual: &Tensor,
    error_added: bool,
) -> Result<SplicedForward> {
    let _guard = tch::no_grad_guard();
    let at = clip.token_range(splice)?;
    let x = token_rows(residual, &at); // B·K, D
    let x_hat = sae.sae.reconstruct(&x);
    let original = clip.image_embeds_from(residual, sae.layer)?;
    let spliced = clip.image_embeds_from(&replace_tokens(residual, &at, &x_hat), sae.layer)?;
    let error_added = if error_added {
        let with_error = &x_hat + (&x - &x_hat);
        Some(clip.image_embeds_from(&replace_tokens(residual, &at, &with_error), sae.layer)?)
    } else {
        None
    };
    Ok(SplicedForward {
        original,
        spliced,
        error_added,
        x,
        x_hat,
    })
}

/// Evaluate every dataset of `o`.
pub fn evaluate(o: &ZeroshotOptions) -> Result<ZeroshotReport> {
    ensure!(o.batch_size > 0, "--batch-size must be at least 1");
    ensure!(
        !o.datasets.is_empty(),
        "no dataset: give at least one --dataset"
    );
    if o.samples == Some(0) {
        bail!("--samples must be at least 1");
    }
    if o.templates == TemplateMode::Single {
        check_template(&o.template)?;
    }
    // Open every dataset first, so that a bad name fails before any work.
    let opened = o
        .datasets
        .iter()
        .map(|spec| datasets::open(spec, o.split))
        .collect::<Result<Vec<_>>>()?;
    let clip = Clip::load(&o.model, &o.load)?;
    ensure!(
        clip.has_text(),
        "eval-zeroshot needs a model with a text tower, and {} is a {} model (vision only)",
        o.model.display(),
        clip.family()
    );
    let sae = match &o.sae {
        None => None,
        Some(path) => {
            let s = SplicedSae::load(path, &clip, Some((&o.model, o.load.format)), o.load.device)?;
            if let Some(w) = &s.model_mismatch {
                crate::ui::warn(w);
            }
            Some(s)
        }
    };
    let splice = sae.as_ref().map(|s| o.splice.unwrap_or(s.tokens));
    let mut results = Vec::new();
    for dataset in &opened {
        results.push(evaluate_dataset(
            &clip,
            sae.as_ref().zip(splice),
            dataset.as_ref(),
            o,
        )?);
    }
    Ok(ZeroshotReport {
        datasets: results,
        model: o.model.display().to_string(),
        sae: sae.as_ref().zip(splice).map(|(s, splice)| SaeSummary {
            path: s.path.display().to_string(),
            architecture: s.sae.config.architecture.name().to_string(),
            k: s.sae.config.k,
            d_sae: s.sae.config.d_sae,
            layer: s.layer,
            tokens: s.tokens,
            splice,
            model_mismatch: s.model_mismatch.clone(),
        }),
        samples: o.samples,
        seed: o.seed,
    })
}

/// Largest change of a cosine (image · class) allowed between plain CLIP and CLIP with the
/// SAE error added back.
fn noise_tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-3,
        Precision::Bf16 | Precision::F16 => 5e-2,
    }
}

/// Running sums of one dataset's evaluation.
#[derive(Default)]
struct Tally {
    n: usize,
    top1: usize,
    top5: usize,
    sae_top1: usize,
    sae_top5: usize,
    err_top1: usize,
    err_top5: usize,
    err_agree: usize,
    cosine: f64,
}

/// Evaluate one dataset with an already loaded model (and SAE with its splice).
pub fn evaluate_dataset(
    clip: &Clip,
    sae: Option<(&SplicedSae, Tokens)>,
    dataset: &dyn Dataset,
    o: &ZeroshotOptions,
) -> Result<DatasetResult> {
    let _guard = tch::no_grad_guard();
    let name = dataset.spec().to_string();
    ensure!(
        !dataset.is_empty(),
        "dataset {name} ({}) has no images",
        o.split
    );
    let classes = class_names(dataset);
    let template_list = templates_for(dataset.spec().kind, o.templates, &o.template);
    crate::ui::info(format!(
        "{name}: embedding {} classes × {} template(s)",
        classes.len(),
        template_list.len()
    ));
    let device = o.load.device;
    let text = class_embeddings(clip, &classes, &template_list)?.to_device(device); // C, E
    let c = classes.len() as i64;
    let k5 = c.min(5);

    let positions: Vec<usize> = match o.samples {
        Some(n) if n < dataset.len() => {
            // Images without a label (-1) are never drawn; with none, `labelled` is 0..len.
            let labelled: Vec<usize> = (0..dataset.len())
                .filter(|&i| dataset.item(i).label >= 0)
                .collect();
            let labels: Vec<i64> = labelled.iter().map(|&i| dataset.item(i).label).collect();
            stratified_sample(&labels, n, o.seed)
                .into_iter()
                .map(|j| labelled[j])
                .collect()
        }
        _ => (0..dataset.len()).collect(),
    };
    let info = clip.info();
    let size = info.image_size;
    let prep = clip.preprocess();
    let tolerance = noise_tolerance(o.load.precision);
    let d = info.hidden_size;
    let mut evr = Evr::new(d, device);
    let mut tally = Tally::default();
    let mut predictions = Vec::with_capacity(positions.len());
    let mut skipped = Vec::new();
    let bar = crate::ui::progress_bar(
        positions.len() as u64,
        "{spinner} eval [{elapsed_precise}] {bar:30} {pos}/{len} images {per_sec} eta {eta}",
    );
    let start = Instant::now();

    stream_pixels(dataset, &positions, o.batch_size, &prep, |batch| {
        let mut good = Vec::with_capacity(batch.len());
        let mut flat = Vec::with_capacity(batch.len() * (3 * size * size) as usize);
        for (index, pixels) in batch {
            let item = dataset.item(index);
            match pixels {
                Ok(p) => {
                    flat.extend_from_slice(&p);
                    good.push(item);
                }
                Err(error) => {
                    crate::ui::debug(format!("skipping {}: {error}", item.source));
                    skipped.push(SkippedImage {
                        image_index: item.index,
                        source: item.source,
                        error,
                    });
                    bar.inc(1);
                }
            }
        }
        if good.is_empty() {
            return Ok(());
        }
        let b = good.len() as i64;
        let mut pixels = Tensor::f_from_slice(&flat)?.f_view([b, 3, size, size])?;
        if device.is_cuda() {
            pixels = pixels.pin_memory(device);
        }
        let pixels = pixels.to_device(device);
        let scored = match sae {
            None => Scored::plain(&text, k5, &clip.image_embeds(&pixels)?)?,
            Some((s, splice)) => {
                let f = spliced_forward(clip, s, splice, &pixels, o.error_check)?;
                evr.update(&f.x, &f.x_hat);
                Scored::spliced(&text, k5, &f)?
            }
        };
        for (j, item) in good.into_iter().enumerate() {
            let top5 = scored.top5[j].clone();
            tally.n += 1;
            tally.top1 += usize::from(top5[0] == item.label);
            tally.top5 += usize::from(top5.contains(&item.label));
            let mut p = Prediction {
                image_index: item.index,
                source: item.source,
                label: item.label,
                top5,
                top5_sae: None,
                pred_error_added: None,
            };
            if let Some(extra) = &scored.sae {
                let t = &extra.top5[j];
                tally.sae_top1 += usize::from(t[0] == p.label);
                tally.sae_top5 += usize::from(t.contains(&p.label));
                tally.cosine += extra.cosine[j];
                p.top5_sae = Some(t.clone());
                if let Some(check) = &extra.error {
                    let e = &check.top5[j];
                    tally.err_top1 += usize::from(e[0] == p.label);
                    tally.err_top5 += usize::from(e.contains(&p.label));
                    tally.err_agree += usize::from(e[0] == p.pred());
                    let (moved, margin) = (check.moved[j], check.margin[j]);
                    ensure!(
                        moved <= tolerance && (e[0] == p.pred() || margin <= 2.0 * moved),
                        "sanity check failed on {name}, image {} ({}): with the SAE error added back (x̂ + (x − x̂)) the class cosines moved by {moved:.2e} (allowed {tolerance:.0e}) and the prediction changed from {} to {} (plain margin {margin:.2e}): the splice does not reproduce CLIP",
                        p.image_index,
                        p.source,
                        p.pred(),
                        e[0]
                    );
                    p.pred_error_added = Some(e[0]);
                }
            }
            predictions.push(p);
            bar.inc(1);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    if !skipped.is_empty() {
        crate::ui::warn(format!(
            "{name}: skipped {} image(s) that could not be read, e.g. {}: {}",
            skipped.len(),
            skipped[0].source,
            skipped[0].error
        ));
    }
    ensure!(
        tally.n > 0,
        "dataset {name}: none of its {} selected images could be read",
        positions.len()
    );
    let pct = |hits: usize| 100.0 * hits as f64 / tally.n as f64;
    let clip_acc = Accuracy {
        top1: pct(tally.top1),
        top5: pct(tally.top5),
    };
    let with_sae = sae.is_some();
    let checked = with_sae && o.error_check;
    let clip_sae = with_sae.then(|| Accuracy {
        top1: pct(tally.sae_top1),
        top5: pct(tally.sae_top5),
    });
    Ok(DatasetResult {
        name,
        samples: tally.n,
        templates: o.templates,
        clip: clip_acc,
        clip_sae,
        drop_top1: clip_sae.map(|a| clip_acc.top1 - a.top1),
        drop_top5: clip_sae.map(|a| clip_acc.top5 - a.top5),
        sae_evr: with_sae.then(|| evr.evr()),
        sae_evr_seed: with_sae.then(|| evr.evr_seed()).filter(|v| v.is_finite()),
        error_added: checked.then(|| Accuracy {
            top1: pct(tally.err_top1),
            top5: pct(tally.err_top5),
        }),
        error_added_agreement: checked.then(|| tally.err_agree as f64 / tally.n as f64),
        mean_cosine: with_sae.then(|| tally.cosine / tally.n as f64),
        split: o.split,
        classes: classes.len(),
        template_list,
        skipped: skipped.len(),
        skipped_images: skipped,
        seconds,
        images_per_s: positions.len() as f64 / seconds.max(1e-9),
        class_names: classes,
        predictions,
    })
}

/// Class rankings of one batch.
struct Scored {
    top5: Vec<Vec<i64>>,
    sae: Option<ScoredSae>,
}

struct ScoredSae {
    top5: Vec<Vec<i64>>,
    /// cos(original, spliced image embedding), per image.
    cosine: Vec<f64>,
    /// Path (3), when it ran.
    error: Option<ErrorCheck>,
}

/// The error-added path against the plain one.
struct ErrorCheck {
    top5: Vec<Vec<i64>>,
    /// Largest |Δ cosine| between the error-added and the plain path, per image.
    moved: Vec<f64>,
    /// Plain cosine of the plain prediction minus that of the error-added prediction.
    margin: Vec<f64>,
}

/// The top-`k` classes of each row of `logits` [B, C], best first.
fn top_k(logits: &Tensor, k: i64) -> Result<Vec<Vec<i64>>> {
    let (_, idx) = logits.topk(k, 1, true, true);
    let flat = Vec::<i64>::try_from(idx.to_device(Device::Cpu).reshape([-1]))?;
    Ok(flat.chunks(k as usize).map(<[i64]>::to_vec).collect())
}

fn to_f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        t.to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1]),
    )?)
}

impl Scored {
    fn plain(text: &Tensor, k: i64, embeds: &Tensor) -> Result<Scored> {
        Ok(Scored {
            top5: top_k(&cosines(embeds, text), k)?,
            sae: None,
        })
    }

    fn spliced(text: &Tensor, k: i64, f: &SplicedForward) -> Result<Scored> {
        let plain = cosines(&f.original, text);
        let spliced = cosines(&f.spliced, text);
        let top5 = top_k(&plain, k)?;
        let error = match &f.error_added {
            Some(embeds) => Some(ErrorCheck::new(&plain, &cosines(embeds, text), k)?),
            None => None,
        };
        let a = normalize(&f.original.to_kind(Kind::Float));
        let b = normalize(&f.spliced.to_kind(Kind::Float));
        let cosine = to_f64s(&(a * b).sum_dim_intlist(1, false, Kind::Float))?;
        Ok(Scored {
            top5,
            sae: Some(ScoredSae {
                top5: top_k(&spliced, k)?,
                cosine,
                error,
            }),
        })
    }
}

impl ErrorCheck {
    /// From the class cosines of the plain [B, C] and the error-added path [B, C].
    fn new(plain: &Tensor, error: &Tensor, k: i64) -> Result<ErrorCheck> {
        let top5 = top_k(error, k)?;
        let moved = to_f64s(&(error - plain).abs().amax([1], false))?;
        let error_pred = Tensor::from_slice(&top5.iter().map(|t| t[0]).collect::<Vec<_>>())
            .to_device(plain.device())
            .unsqueeze(1);
        let plain_best = plain.amax([1], false);
        let margin = to_f64s(&(plain_best - plain.gather(1, &error_pred, false).squeeze_dim(1)))?;
        Ok(ErrorCheck {
            top5,
            moved,
            margin,
        })
    }
}

/// cos(image, class), [B, C] f32; `text` is already normalised. The logits are
/// exp(logit_scale) times these, so they rank the classes the same way.
fn cosines(image_embeds: &Tensor, text: &Tensor) -> Tensor {
    normalize(&image_embeds.to_kind(Kind::Float)).matmul(&text.tr())
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
}

/// The results as a Markdown table (like the original project's), followed by the sanity
/// lines.
pub fn to_markdown(r: &ZeroshotReport) -> String {
    let mut s = String::new();
    let with_sae = r.sae.is_some();
    if with_sae {
        s.push_str("| Dataset | Samples | Top-1 CLIP | Top-5 CLIP | Top-1 CLIP+SAE | Top-5 CLIP+SAE | Drop top-1 (pts) | Drop top-5 (pts) | Relative drop top-1 | SAE EVR |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    } else {
        s.push_str("| Dataset | Samples | Top-1 CLIP | Top-5 CLIP |\n");
        s.push_str("|---|---:|---:|---:|\n");
    }
    for d in &r.datasets {
        let mut row = format!(
            "| {} ({}) | {} | {:.2} | {:.2} |",
            d.name, d.split, d.samples, d.clip.top1, d.clip.top5
        );
        if let Some(a) = d.clip_sae {
            let relative = if d.clip.top1 > 0.0 {
                format!("{:.1}%", 100.0 * (d.clip.top1 - a.top1) / d.clip.top1)
            } else {
                "—".to_string()
            };
            row.push_str(&format!(
                " {:.2} | {:.2} | {} | {} | {relative} | {} |",
                a.top1,
                a.top5,
                fmt_opt(d.drop_top1, 2),
                fmt_opt(d.drop_top5, 2),
                fmt_opt(d.sae_evr, 3)
            ));
        }
        s.push_str(&row);
        s.push('\n');
    }
    s.push('\n');
    let templates: Vec<String> = r
        .datasets
        .iter()
        .map(|d| match d.templates {
            TemplateMode::Single => format!("{}: single ({:?})", d.name, d.template_list[0]),
            TemplateMode::Ensemble => {
                format!("{}: ensemble of {}", d.name, d.template_list.len())
            }
        })
        .collect();
    s.push_str(&format!(
        "Model: {}. Templates: {}. Accuracy in %, top-5 = top-min(5, classes).\n",
        r.model,
        templates.join("; ")
    ));
    if let Some(sae) = &r.sae {
        s.push_str(&format!(
            "SAE: {} ({}, k = {}, {} latents), layer {}, trained on `{}` tokens, spliced into `{}` tokens.\n",
            sae.path,
            sae.architecture,
            sae.k,
            sae.d_sae,
            sae.layer,
            sae.tokens.name(),
            sae.splice.name()
        ));
        for d in &r.datasets {
            if let (Some(e), Some(agree), Some(cos)) =
                (d.error_added, d.error_added_agreement, d.mean_cosine)
            {
                s.push_str(&format!(
                    "Sanity, {}: with the SAE error added back (x̂ + (x − x̂)) top-1 {:.2} / top-5 {:.2} (plain {:.2} / {:.2}), {:.2}% of predictions equal to plain CLIP; mean cos(original, spliced image embedding) = {:.4}.\n",
                    d.name,
                    e.top1,
                    e.top5,
                    d.clip.top1,
                    d.clip.top5,
                    100.0 * agree,
                    cos
                ));
            } else if d.clip_sae.is_some() {
                s.push_str(&format!(
                    "{}: the error-added sanity check was skipped (--no-error-check).\n",
                    d.name
                ));
            }
        }
    }
    for d in r.datasets.iter().filter(|d| d.skipped > 0) {
        s.push_str(&format!(
            "{}: {} image(s) skipped (could not be read).\n",
            d.name, d.skipped
        ));
    }
    s
}

/// The results as DESIGN.md's JSON, pretty-printed: {datasets: [...]} plus the run's
/// settings, keys in the documented order.
pub fn to_json(r: &ZeroshotReport) -> String {
    serde_json::to_string_pretty(r).expect("the report serialises")
}

/// The predictions CSV's columns: class indices, then the same classes by name (the names
/// the classes were prompted with).
pub const PREDICTION_COLUMNS: [&str; 9] = [
    "dataset",
    "image_index",
    "source",
    "label",
    "pred",
    "pred_sae",
    "label_name",
    "pred_name",
    "pred_sae_name",
];

/// Write the predictions CSV ([`PREDICTION_COLUMNS`]; `pred_sae` and `pred_sae_name` empty
/// without an SAE), atomically.
pub fn write_predictions(path: &Path, r: &ZeroshotReport) -> Result<()> {
    crate::disk::write_atomic(path, |tmp| {
        let file = std::fs::File::create(tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
        w.write_record(PREDICTION_COLUMNS)?;
        for d in &r.datasets {
            let name = |class: Option<i64>| -> &str {
                class
                    .and_then(|c| usize::try_from(c).ok())
                    .and_then(|c| d.class_names.get(c))
                    .map_or("", String::as_str)
            };
            for p in &d.predictions {
                w.write_record([
                    d.name.as_str(),
                    &p.image_index.to_string(),
                    &p.source,
                    &p.label.to_string(),
                    &p.pred().to_string(),
                    &p.pred_sae().map(|v| v.to_string()).unwrap_or_default(),
                    name(Some(p.label)),
                    name(Some(p.pred())),
                    name(p.pred_sae()),
                ])?;
            }
        }
        let mut inner = w
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        inner
            .flush()
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_come_from_clip() {
        let cifar = clip_templates("cifar10").unwrap();
        assert_eq!(cifar.len(), 18);
        assert_eq!(cifar[0], DEFAULT_TEMPLATE);
        assert_eq!(
            templates_for(DatasetKind::Food101, TemplateMode::Ensemble, "x {}"),
            vec!["a photo of {}, a type of food.".to_string()]
        );
        assert_eq!(
            templates_for(DatasetKind::Folder, TemplateMode::Ensemble, "x {}").len(),
            18
        );
        let imagenet = templates_for(DatasetKind::ImageNet, TemplateMode::Ensemble, "x {}");
        assert_eq!(imagenet.len(), 80);
        assert_eq!(imagenet[0], "a bad photo of a {}.");
        assert_eq!(
            templates_for(DatasetKind::Food101, TemplateMode::Single, "x {}"),
            vec!["x {}".to_string()]
        );
        assert_eq!(fill("a photo of a {}.", "cat"), "a photo of a cat.");
        assert!(check_template("a photo").is_err());
        assert!(check_template("{} and {}").is_err());
        assert!(check_template("a {}").is_ok());
    }

    #[test]
    fn samples_are_stratified_and_seeded() {
        // 3 classes, unbalanced: 10, 4, 1 images.
        let labels: Vec<i64> = (0..15)
            .map(|i| {
                if i < 10 {
                    0
                } else if i < 14 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let a = stratified_sample(&labels, 7, 1);
        assert_eq!(a, stratified_sample(&labels, 7, 1));
        assert_eq!(a.len(), 7);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let count = |s: &[usize], c: i64| s.iter().filter(|&&i| labels[i] == c).count();
        // Round-robin: the single class-2 image, then the others take turns.
        assert_eq!(count(&a, 2), 1);
        assert_eq!(count(&a, 0), 3);
        assert_eq!(count(&a, 1), 3);
        let seeds: std::collections::HashSet<Vec<usize>> =
            (0..20).map(|s| stratified_sample(&labels, 7, s)).collect();
        assert!(seeds.len() > 1, "the seed changes the sample");
        assert_eq!(
            stratified_sample(&labels, 99, 0),
            (0..15).collect::<Vec<_>>()
        );
        // n smaller than the number of classes: distinct classes.
        let b = stratified_sample(&labels, 2, 3);
        assert_ne!(labels[b[0]], labels[b[1]]);
    }
}
