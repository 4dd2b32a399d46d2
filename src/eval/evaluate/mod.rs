//! `saeclip evaluate`: one report on how good one or more SAEs are (DESIGN.md
//! "Evaluate"): reconstruction, probing, zero-shot with the SAE spliced, auto-label
//! retrieval and ground-truth factors of procedural images.
//!
//! One streaming pass over the images (or the cache's rows) feeds every SAE: per batch each
//! SAE encodes its rows once; the codes update running sums (reconstruction), the per-image
//! scores (max over an image's tokens, as `interpret`) go into a sparse store
//! ([`auroc::SparseScores`], the image's non-zero scores only) and into `interpret`'s
//! bounded top-k buffers, and with a model the remaining blocks run four ways (plain, SAE
//! spliced, zero-ablated, mean-ablated). After the pass, probing and factors are computed
//! from the sparse store; labels take a second look at a bounded set of top images.
//! Memory: running sums O(F), the top-k buffers O(F·24), the sparse store O(images · l0)
//! (capped by `max_entries`), the probe rows O(probe_images · D); nothing of size
//! rows × F.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

mod accum;
mod autolabels;
mod markdown;
mod probing;

use accum::{Accum, Images};

pub use markdown::{to_markdown, write_plots};

use super::factors;
use super::localisation::{self, PatchScores};
use super::zeroshot::{class_embeddings, class_names, stratified_sample, DEFAULT_TEMPLATE};
use super::{replace_tokens, token_rows};
use crate::clip::preprocess::PreprocessConfig;
use crate::clip::{normalize, weights, Clip, LoadOptions, Tokens};
use crate::data::cache::{file_sha256, ActivationCache};
use crate::data::{self as datasets, stream_pixels, DatasetSpec, Split};
use crate::interpret::{labels, sample_indices};
use crate::sae::{checkpoint, sweep, Sae};

/// The sparse-probe sizes.
pub const PROBE_KS: [usize; 4] = [1, 2, 5, 16];
/// A latent is dense when it fires on more than this share of rows.
pub const DENSE_FREQUENCY: f64 = 0.1;
/// Smallest gap in points between plain CLIP's and the zero-ablated model's top-1 for which
/// `accuracy_recovered` is reported.
pub const MIN_RECOVERY_GAP: f64 = 3.0;

/// Top images kept per latent for the labels: 1–12 are the query's targets, 13–24 make
/// the label.
const LABEL_TOP: usize = 24;
/// Precision@12.
const AT: usize = 12;
/// Random sample images among which the label retrieves.
const DISTRACTORS: usize = 36;
/// Images whose mean residual is the mean-ablation value.
const MEAN_IMAGES: usize = 256;

/// Where the rows come from.
#[derive(Debug, Clone)]
pub enum Source {
    Cache(PathBuf),
    Model {
        model: PathBuf,
        load: LoadOptions,
        dataset: DatasetSpec,
        split: Split,
    },
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// Checkpoints, run directories or sweep directories.
    pub saes: Vec<PathBuf>,
    pub source: Source,
    /// A sample of this many images (stratified by class for a dataset, seeded).
    pub samples: Option<usize>,
    pub seed: u64,
    pub batch_size: usize,
    /// Images the probes are trained and tested on (a seeded subset; 80 % train).
    pub probe_images: usize,
    /// Largest number of sparse entries kept for probing and factors (8 bytes each).
    pub max_entries: usize,
    /// Features whose auto labels are scored.
    pub label_features: usize,
    /// Label vocabulary (one phrase a line); the built-in one when None.
    pub vocab: Option<std::path::PathBuf>,
    /// Add a random-decoder SAE of the same size as each given one.
    pub random_baseline: bool,
    /// Where the SAEs run with a cache (a model source uses its load device).
    pub device: Device,
}

impl EvaluateOptions {
    pub fn new(saes: Vec<PathBuf>, source: Source) -> EvaluateOptions {
        EvaluateOptions {
            saes,
            source,
            samples: None,
            seed: 0,
            batch_size: 64,
            probe_images: 5_000,
            max_entries: 32 << 20,
            label_features: 16,
            vocab: None,
            random_baseline: false,
            device: Device::Cpu,
        }
    }
}

/// Turn `--sae` arguments into (name, checkpoint): a file is itself; a sweep directory
/// (with `sweep.json`) is its members' `checkpoints/best.safetensors`; a run directory its
/// `checkpoints/best.safetensors`.
pub fn resolve_saes(paths: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    ensure!(
        !paths.is_empty(),
        "no SAE: give --sae CKPT (or a sweep directory)"
    );
    let mut out = Vec::new();
    for p in paths {
        let shown = p.display();
        if p.is_file() {
            out.push((p.display().to_string(), p.clone()));
        } else if p.join(sweep::SWEEP_FILE).is_file() {
            for m in sweep::SweepFile::read(p)?.members {
                let ckpt = p.join(&m.run_dir).join("checkpoints/best.safetensors");
                ensure!(
                    ckpt.is_file(),
                    "sweep {shown}: member {} has no {} (has it finished?)",
                    m.name,
                    ckpt.display()
                );
                out.push((m.name, ckpt));
            }
        } else if p.join("checkpoints/best.safetensors").is_file() {
            out.push((
                p.display().to_string(),
                p.join("checkpoints/best.safetensors"),
            ));
        } else if p.exists() {
            bail!("--sae {shown} is neither an SAE checkpoint nor a run or sweep directory");
        } else {
            bail!("--sae {shown} does not exist");
        }
    }
    Ok(out)
}

/// One SAE under evaluation.
struct Member {
    name: String,
    path: String,
    sae: Sae,
    layer: usize,
    tokens: Tokens,
    /// A random-decoder baseline rather than a checkpoint.
    baseline: bool,
}

fn load_member(name: &str, path: &Path, device: Device) -> Result<Member> {
    let shown = path.display();
    let (sae, meta) = checkpoint::load_sae(path, device)?;
    let layer = meta
        .clip
        .get("layer")
        .and_then(Value::as_u64)
        .with_context(|| format!("SAE {shown} does not record clip.layer in its header"))?
        as usize;
    let tokens = match meta.clip.get("tokens") {
        None | Some(Value::Null) => Tokens::Cls,
        Some(v) => serde_json::from_value(v.clone()).with_context(|| {
            format!("SAE {shown}: clip.tokens in the header is {v}, expected \"cls\", \"patches\" or \"all\"")
        })?,
    };
    Ok(Member {
        name: name.to_string(),
        path: path.display().to_string(),
        sae,
        layer,
        tokens,
        baseline: false,
    })
}

/// An SAE of the same size as `m` whose decoder rows are random unit vectors (seeded), the
/// encoder their transpose, b_dec and the input scale kept.
fn random_like(m: &Member, seed: u64) -> Result<Member> {
    let c = &m.sae.config;
    let device = m.sae.device();
    let w_dec = crate::rng::seeded(seed as i64, || {
        Tensor::randn([c.d_sae, c.d_in], (Kind::Float, Device::Cpu))
    });
    let w_dec = normalize(&w_dec).to_device(device);
    let sae = Sae::from_tensors(
        *c,
        &w_dec.tr().contiguous(),
        &Tensor::zeros([c.d_sae], (Kind::Float, device)),
        &w_dec,
        &m.sae.b_dec,
        m.sae.input_scale,
        None,
    )?;
    Ok(Member {
        name: format!("random-decoder baseline of {}", m.name),
        path: String::new(),
        sae,
        layer: m.layer,
        tokens: m.tokens,
        baseline: true,
    })
}

/// A section that could not be computed: `null` and the reason.
fn null_with(reason: impl Into<String>) -> (Value, Option<String>) {
    (Value::Null, Some(reason.into()))
}

/// Everything `evaluate` found: one JSON object per SAE (see DESIGN.md).
#[derive(Debug, Clone)]
pub struct EvaluateReport {
    pub members: Vec<Value>,
    pub source: Value,
    pub images: usize,
    pub seconds: f64,
    /// Log10 firing frequency of each live latent, and the dead count, per member.
    pub density: Vec<(String, Vec<f64>, usize)>,
}

impl EvaluateReport {
    /// The JSON file: the sections at the top level for one SAE, `{"saes": [...]}` for
    /// several; `source`, `images` and `seconds` in both.
    pub fn to_json(&self) -> Value {
        let mut top = if self.members.len() == 1 {
            self.members[0].clone()
        } else {
            json!({"saes": self.members})
        };
        let o = top.as_object_mut().expect("an object");
        o.insert("source".into(), self.source.clone());
        o.insert("images".into(), json!(self.images));
        o.insert("seconds".into(), json!(self.seconds));
        top
    }
}

/// Run the evaluation.
pub fn evaluate(o: &EvaluateOptions) -> Result<EvaluateReport> {
    let _guard = tch::no_grad_guard();
    let start = Instant::now();
    ensure!(o.batch_size > 0, "--batch-size must be at least 1");
    ensure!(o.samples != Some(0), "--samples must be at least 1");
    let device = match &o.source {
        Source::Model { load, .. } => load.device,
        Source::Cache(_) => o.device,
    };
    let mut members = Vec::new();
    for (name, path) in resolve_saes(&o.saes)? {
        members.push(load_member(&name, &path, device)?);
    }
    if o.random_baseline {
        let extra = members
            .iter()
            .enumerate()
            .map(|(i, m)| random_like(m, o.seed.wrapping_add(i as u64 + 1)))
            .collect::<Result<Vec<_>>>()?;
        members.extend(extra);
    }
    match &o.source {
        Source::Cache(path) => evaluate_cache(o, path, members, start),
        Source::Model {
            model,
            load,
            dataset,
            split,
        } => evaluate_model(o, model, load, dataset, *split, members, start),
    }
}

fn evaluate_cache(
    o: &EvaluateOptions,
    path: &Path,
    members: Vec<Member>,
    start: Instant,
) -> Result<EvaluateReport> {
    let cache = ActivationCache::open(path)?;
    let m = cache.manifest().clone();
    let shown = path.display();
    for s in &members {
        ensure!(
            s.sae.config.d_in == m.d_model,
            "SAE {} has d_in = {} but the cache {shown} has width {}",
            s.path,
            s.sae.config.d_in,
            m.d_model
        );
        ensure!(
            s.layer == m.layer && s.tokens == m.tokens,
            "SAE {} reads layer {} ({} tokens) but the cache {shown} holds layer {} ({} tokens)",
            s.path,
            s.layer,
            s.tokens.name(),
            m.layer,
            m.tokens.name()
        );
    }
    let records = cache.images()?;
    let by_index: HashMap<usize, (i64, String)> = records
        .iter()
        .map(|r| (r.image_index, (r.label, r.source.clone())))
        .collect();
    let available: Vec<usize> = records.iter().map(|r| r.image_index).collect();
    let (sample, note) = sample_indices(&available, o.samples, o.seed);
    if let Some(n) = note {
        crate::ui::info(n);
    }
    let probe_set: HashSet<usize> = sample_indices(&sample, Some(o.probe_images), o.seed ^ 0x9e0b)
        .0
        .into_iter()
        .collect();
    let wanted: HashSet<usize> = sample.iter().copied().collect();
    // Class names from the dataset the cache names, when it can be opened.
    let class_list: Option<Vec<String>> = format!("{}:{}", m.dataset.kind, m.dataset.path)
        .parse::<DatasetSpec>()
        .ok()
        .and_then(|spec| {
            let split = <Split as clap::ValueEnum>::from_str(&m.dataset.split, true).ok()?;
            datasets::open(&spec, split).ok()
        })
        .map(|d| d.classes().to_vec());
    let mut accums: Vec<Accum> = members.iter().map(|s| Accum::new(&s.sae, false)).collect();
    let mut images = Images::default();
    let bar = crate::ui::progress_bar(
        sample.len() as u64,
        "{spinner} evaluate [{elapsed_precise}] {bar:30} {pos}/{len} images {per_sec} eta {eta}",
    );
    for shard in cache.shards() {
        let rows = cache.read_shard(&shard)?;
        let image_of = Vec::<i64>::try_from(&rows.image_index)?;
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for (r, &img) in image_of.iter().enumerate() {
            match runs.last_mut() {
                Some(last) if last.0 == img as usize && last.1 + last.2 == r => last.2 += 1,
                _ => runs.push((img as usize, r, 1)),
            }
        }
        runs.retain(|run| wanted.contains(&run.0));
        for group in runs.chunks(o.batch_size) {
            let mut row_ids = Vec::new();
            let mut row_image = Vec::new();
            for (local, &(_, s, len)) in group.iter().enumerate() {
                row_ids.extend((s..s + len).map(|r| r as i64));
                row_image.extend(std::iter::repeat_n(local as i64, len));
            }
            let x = rows
                .activations
                .index_select(0, &Tensor::from_slice(&row_ids))
                .to_kind(Kind::Float);
            let row_image = Tensor::from_slice(&row_image);
            let ids: Vec<usize> = group.iter().map(|g| g.0).collect();
            let first = images.index.len();
            let probe: Vec<bool> = ids.iter().map(|i| probe_set.contains(i)).collect();
            for &i in &ids {
                let (label, source) = by_index.get(&i).cloned().unwrap_or((-1, String::new()));
                images.index.push(i);
                images.label.push(label);
                images.factors.push(factors::of_source(&source));
            }
            for (s, a) in members.iter().zip(&mut accums) {
                let _ = a.update(s, &x, &row_image, first, &probe, o.max_entries)?;
            }
            bar.inc(ids.len() as u64);
        }
    }
    bar.finish_and_clear();
    ensure!(
        !images.index.is_empty(),
        "the cache {shown} has no rows for the sample"
    );
    let n_classes = images.label.iter().copied().max().unwrap_or(-1) + 1;
    let classes: Vec<String> = match &class_list {
        Some(c) if c.len() as i64 >= n_classes => c.clone(),
        _ => (0..n_classes).map(|c| format!("class {c}")).collect(),
    };
    let source = json!({"cache": path.display().to_string(), "layer": m.layer, "tokens": m.tokens});
    finish(
        o,
        members,
        accums,
        &images,
        &classes,
        None,
        source,
        start,
        "zero-shot needs --model and --dataset (the cache holds activations only)",
    )
}

#[allow(clippy::too_many_arguments)]
fn evaluate_model(
    o: &EvaluateOptions,
    model: &Path,
    load: &LoadOptions,
    spec: &DatasetSpec,
    split: Split,
    members: Vec<Member>,
    start: Instant,
) -> Result<EvaluateReport> {
    let dataset = datasets::open(spec, split)?;
    ensure!(
        !dataset.is_empty(),
        "dataset {spec} ({split}) has no images"
    );
    let clip = Clip::load(model, load)?;
    let vision = clip.info();
    for s in &members {
        ensure!(
            s.sae.config.d_in == vision.hidden_size,
            "SAE {} has d_in = {} but the model {}'s vision width is {}",
            s.path,
            s.sae.config.d_in,
            model.display(),
            vision.hidden_size
        );
        ensure!(
            s.layer < vision.num_hidden_layers,
            "SAE {} reads layer {} but the model {} has blocks 0..={}",
            s.path,
            s.layer,
            model.display(),
            vision.num_hidden_layers - 1
        );
    }
    let device = load.device;
    let labelled: Vec<usize> = (0..dataset.len()).collect();
    let positions: Vec<usize> = match o.samples {
        Some(n) if n < dataset.len() => {
            let labels: Vec<i64> = labelled.iter().map(|&i| dataset.item(i).label).collect();
            stratified_sample(&labels, n, o.seed)
        }
        _ => labelled,
    };
    let probe_set: HashSet<usize> =
        sample_indices(&positions, Some(o.probe_images), o.seed ^ 0x9e0b)
            .0
            .into_iter()
            .collect();
    let classes = class_names(dataset.as_ref());
    let has_labels = positions.iter().any(|&i| dataset.item(i).label >= 0);
    // Zero-shot needs classes and labels.
    let text = if classes.len() >= 2 && has_labels {
        Some(class_embeddings(&clip, &classes, &[DEFAULT_TEMPLATE.to_string()])?.to_device(device))
    } else {
        None
    };
    let scale = clip.logit_scale().exp();
    let size = vision.image_size;
    let prep = PreprocessConfig::with_size(size as u32);
    let layers: BTreeSet<usize> = members.iter().map(|s| s.layer).collect();
    let layers: Vec<usize> = layers.into_iter().collect();

    // Mean-ablation values: the mean residual at each member's tokens over a seeded subset.
    let means: Vec<Tensor> = if text.is_some() {
        let (subset, _) = sample_indices(&positions, Some(MEAN_IMAGES), o.seed ^ 0x3ea7);
        let mut sums: Vec<Option<Tensor>> = layers.iter().map(|_| None).collect();
        let mut count = 0i64;
        stream_pixels(dataset.as_ref(), &subset, o.batch_size, &prep, |batch| {
            let (_, pixels) = stack(batch, size)?;
            if let Some(p) = pixels {
                count += p.size()[0];
                let res = clip.residuals(&p.to_device(device), &layers)?;
                for (slot, r) in sums.iter_mut().zip(res) {
                    let s = r
                        .to_kind(Kind::Double)
                        .sum_dim_intlist(0, false, Kind::Double);
                    *slot = Some(match slot.take() {
                        Some(a) => a + s,
                        None => s,
                    });
                }
            }
            Ok(())
        })?;
        ensure!(
            count > 0,
            "none of the images for the mean-ablation could be read"
        );
        members
            .iter()
            .map(|s| {
                let li = layers.iter().position(|&l| l == s.layer).expect("a layer");
                let mean = sums[li].as_ref().expect("sums") / count as f64; // S, D
                let at = s.tokens.positions(mean.size()[0]);
                mean.narrow(0, at.start, at.end - at.start)
                    .to_kind(Kind::Float)
            })
            .collect()
    } else {
        Vec::new()
    };

    crate::ui::debug(format!(
        "mean-ablation pass done at {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    let mut accums: Vec<Accum> = members.iter().map(|s| Accum::new(&s.sae, true)).collect();
    let mut images = Images {
        regions: dataset.class_map_names().to_vec(),
        ..Images::default()
    };
    // The localisation probe: patch-token SAEs on a dataset with class maps.
    let patch_range = clip.token_range(Tokens::Patches)?;
    let grid = (vision.image_size / vision.patch_size) as usize;
    if !images.regions.is_empty() {
        for (s, a) in members.iter().zip(&mut accums) {
            let at = s.tokens.positions(patch_range.end);
            if at.start <= patch_range.start && at.end >= patch_range.end {
                a.patches = Some(PatchScores::new());
            }
        }
    }
    let localising = accums.iter().any(|a| a.patches.is_some());
    // Label baseline: Σ normalised image embeddings, and the distractors' embeddings.
    let (distractor_ids, _) = sample_indices(&positions, Some(DISTRACTORS), o.seed ^ 0xd157);
    let distractor_set: HashSet<usize> = distractor_ids.iter().copied().collect();
    let mut distractors: BTreeMap<usize, Tensor> = BTreeMap::new();
    let mut embed_sum: Option<Tensor> = None;
    let mut skipped = 0usize;
    let bar = crate::ui::progress_bar(
        positions.len() as u64,
        "{spinner} evaluate [{elapsed_precise}] {bar:30} {pos}/{len} images {per_sec} eta {eta}",
    );
    stream_pixels(dataset.as_ref(), &positions, o.batch_size, &prep, |batch| {
        let n = batch.len() as u64;
        let (ids, pixels) = stack(batch, size)?;
        skipped += n as usize - ids.len();
        let Some(pixels) = pixels else {
            bar.inc(n);
            return Ok(());
        };
        let b = ids.len() as i64;
        let pixels = pixels.to_device(device);
        let residuals = clip.residuals(&pixels, &layers)?;
        let first = images.index.len();
        let probe: Vec<bool> = ids.iter().map(|i| probe_set.contains(i)).collect();
        let labels: Vec<i64> = ids.iter().map(|&i| dataset.item(i).label).collect();
        for &i in &ids {
            let item = dataset.item(i);
            images.index.push(i);
            images.label.push(item.label);
            images.factors.push(factors::of_source(&item.source));
        }
        let patch_classes: Vec<Option<Vec<u16>>> = if localising {
            ids.iter()
                .map(|&i| match dataset.class_map(i) {
                    Some(Ok(m)) => m.patch_classes(&prep, grid).map(Some),
                    Some(Err(e)) => {
                        crate::ui::debug(format!("localisation skips image {i}: {e:#}"));
                        Ok(None)
                    }
                    None => Ok(None),
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let plain = clip.image_embeds_from(&residuals[0], layers[0])?;
        let plain_n = normalize(&plain.to_kind(Kind::Float));
        let s = plain_n
            .sum_dim_intlist(0, false, Kind::Float)
            .to_device(Device::Cpu);
        embed_sum = Some(match embed_sum.take() {
            Some(a) => a + s,
            None => s,
        });
        for (r, &i) in ids.iter().enumerate() {
            if distractor_set.contains(&i) {
                distractors.insert(i, plain_n.get(r as i64).to_device(Device::Cpu));
            }
        }
        let plain_logits = text
            .as_ref()
            .map(|t| (plain_n.matmul(&t.tr()) * scale).nan_to_num(0.0, None, None));
        for (k, (s, a)) in members.iter().zip(&mut accums).enumerate() {
            let li = layers.iter().position(|&l| l == s.layer).expect("a layer");
            let residual = &residuals[li];
            let at = s.tokens.positions(residual.size()[1]);
            let per = at.end - at.start;
            let x = token_rows(residual, &at);
            let row_image =
                Tensor::arange(b, (Kind::Int64, device)).repeat_interleave_self_int(per, 0, None);
            let (x_hat, codes) = a.update(s, &x, &row_image, first, &probe, o.max_entries)?;
            if let Some(p) = &mut a.patches {
                let offset = (patch_range.start - at.start) as usize;
                p.push_codes(&codes, per as usize, offset, &patch_classes, o.max_entries)?;
            }
            if let (Some(t), Some(pl)) = (&text, &plain_logits) {
                let logits_of = |rows: &Tensor| -> Result<Tensor> {
                    let e =
                        clip.image_embeds_from(&replace_tokens(residual, &at, rows), s.layer)?;
                    // A zero embedding (e.g. the last block's CLS zero-ablated before a bias-free
                    // layer norm) has no direction: uniform class probabilities.
                    Ok((normalize(&e.to_kind(Kind::Float)).matmul(&t.tr()) * scale)
                        .nan_to_num(0.0, None, None))
                };
                let spliced = logits_of(&x_hat)?;
                let zero = logits_of(&x.zeros_like())?;
                let mean_rows = means[k]
                    .to_device(device)
                    .unsqueeze(0)
                    .expand([b, per, -1], false)
                    .reshape([b * per, -1]);
                let mean = logits_of(&mean_rows)?;
                let label_t = Tensor::from_slice(&labels).to_device(device);
                let hits = |l: &Tensor| -> Result<Vec<bool>> {
                    Ok(Vec::<bool>::try_from(
                        l.argmax(1, false)
                            .eq_tensor(&label_t)
                            .to_device(Device::Cpu),
                    )?)
                };
                let kl = |q: &Tensor| -> Result<Vec<f64>> {
                    let lp = pl.log_softmax(1, Kind::Double);
                    let lq = q.log_softmax(1, Kind::Double);
                    Ok(Vec::<f64>::try_from(
                        (lp.exp() * (&lp - lq))
                            .sum_dim_intlist(1, false, Kind::Double)
                            .to_device(Device::Cpu),
                    )?)
                };
                let (hc, hs, hz, hm) = (hits(pl)?, hits(&spliced)?, hits(&zero)?, hits(&mean)?);
                let (ks, kz) = (kl(&spliced)?, kl(&zero)?);
                for r in 0..ids.len() {
                    if labels[r] < 0 {
                        continue;
                    }
                    let z = &mut a.zs;
                    z.n += 1;
                    z.clip += usize::from(hc[r]);
                    z.sae += usize::from(hs[r]);
                    z.zero += usize::from(hz[r]);
                    z.mean += usize::from(hm[r]);
                    z.kl += ks[r];
                    z.kl_zero += kz[r];
                }
            }
        }
        bar.inc(n);
        Ok(())
    })?;
    bar.finish_and_clear();
    if skipped > 0 {
        crate::ui::warn(format!(
            "{skipped} image(s) could not be read and were skipped"
        ));
    }
    ensure!(
        !images.index.is_empty(),
        "no image of dataset {spec} could be read"
    );

    crate::ui::debug(format!(
        "streaming pass done at {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    // Labels: a second look at the top images of the best-ranked features.
    let label_sections: Vec<(Value, Option<String>)> = {
        let files = weights::resolve(model, load.format)?;
        let sha = file_sha256(&files.weights)?;
        let vocab = labels::load_vocabulary(o.vocab.as_deref())?;
        let fallback = std::env::temp_dir();
        let text_cache = labels::cache_path(&files.weights, &fallback, &sha, &vocab);
        let vocab_embeds = labels::text_embeddings(&clip, &vocab, &text_cache)?;
        let mean_embed = embed_sum.expect("at least one batch") / images.index.len() as f64;
        let mut out = Vec::new();
        for a in &accums {
            out.push(autolabels::label_section(
                a,
                &images,
                o.label_features,
                &clip,
                dataset.as_ref(),
                &prep,
                o.batch_size,
                &vocab,
                &vocab_embeds,
                &mean_embed,
                &distractors,
            )?);
        }
        out
    };
    crate::ui::debug(format!(
        "labels done at {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    let source = json!({"model": model.display().to_string(), "dataset": spec.to_string(), "split": split, "skipped": skipped});
    let zeroshot_reason = if classes.len() < 2 {
        format!("dataset {spec} has no class list (zero-shot needs at least two classes)")
    } else {
        format!("the images of {spec} ({split}) have no labels")
    };
    let mut report = finish(
        o,
        members,
        accums,
        &images,
        &classes,
        Some(label_sections),
        source,
        start,
        &zeroshot_reason,
    )?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Good images of a decoded batch: (dataset indices, pixels [B, 3, P, P]).
fn stack(batch: datasets::DecodedBatch, size: i64) -> Result<(Vec<usize>, Option<Tensor>)> {
    let mut ids = Vec::new();
    let mut flat = Vec::new();
    for (i, p) in batch {
        if let Ok(p) = p {
            ids.push(i);
            flat.extend(p);
        }
    }
    let pixels = if ids.is_empty() {
        None
    } else {
        Some(Tensor::f_from_slice(&flat)?.f_view([ids.len() as i64, 3, size, size])?)
    };
    Ok((ids, pixels))
}

/// Probing, factors and the per-member JSON.
#[allow(clippy::too_many_arguments)]
fn finish(
    o: &EvaluateOptions,
    members: Vec<Member>,
    accums: Vec<Accum>,
    images: &Images,
    classes: &[String],
    labels: Option<Vec<(Value, Option<String>)>>,
    source: Value,
    start: Instant,
    zeroshot_reason: &str,
) -> Result<EvaluateReport> {
    let mut out = Vec::new();
    let mut density = Vec::new();
    for (i, (m, a)) in members.iter().zip(&accums).enumerate() {
        let f = m.sae.config.d_sae as usize;
        let fired = Vec::<i64>::try_from(a.fired.to_device(Device::Cpu))?;
        let rows = a.rows.max(1) as f64;
        let dead = fired.iter().filter(|&&c| c == 0).count();
        let dense = fired
            .iter()
            .filter(|&&c| c as f64 / rows > DENSE_FREQUENCY)
            .count();
        let log_freq: Vec<f64> = fired
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| (c as f64 / rows).log10())
            .collect();
        density.push((m.name.clone(), log_freq, dead));
        let evr = a.evr.evr();
        let reconstruction = json!({
            "rows": a.rows,
            "evr": evr,
            "fvu": 1.0 - evr,
            "cosine": a.cosine / rows,
            "l0": a.nonzero / rows,
            "dead_frac": dead as f64 / f as f64,
            "dense_frac": dense as f64 / f as f64,
        });
        let kept = a.store.images();
        let t = Instant::now();
        let (probing, probing_reason) = probing::probing(o, a, images, classes, f)?;
        crate::ui::debug(format!(
            "{}: probing took {:.1}s",
            m.name,
            t.elapsed().as_secs_f64()
        ));
        let t = Instant::now();
        let (factors, factors_reason, best_values) = factors::section(&a.store, &images.factors, f);
        crate::ui::debug(format!(
            "{}: factors took {:.1}s",
            m.name,
            t.elapsed().as_secs_f64()
        ));
        let (localisation, localisation_reason) = match &a.patches {
            Some(p) => localisation::section(p, &images.regions, f),
            None if images.regions.is_empty() => null_with(
                "localisation needs --model and a dataset with per-pixel classes (procedural, ade20k)",
            ),
            None => null_with(format!(
                "localisation needs a patch-token SAE (this one reads {:?} tokens)",
                m.tokens
            )),
        };
        let (zeroshot, zeroshot_reason) = if a.zs.n > 0 {
            let z = &a.zs;
            let pct = |h: usize| 100.0 * h as f64 / z.n as f64;
            // Below a few points between plain CLIP and the zero-ablated model (a model at
            // chance, say), the ratio is noise: null, with the reason.
            let gap = pct(z.clip) - pct(z.zero);
            let recovered = (gap.abs() >= MIN_RECOVERY_GAP)
                .then(|| (z.sae as f64 - z.zero as f64) / (z.clip as f64 - z.zero as f64));
            (
                json!({
                    "samples": z.n,
                    "classes": classes.len(),
                    "template": DEFAULT_TEMPLATE,
                    "clip_top1": pct(z.clip),
                    "sae_top1": pct(z.sae),
                    "zero_ablation_top1": pct(z.zero),
                    "mean_ablation_top1": pct(z.mean),
                    "accuracy_recovered": recovered,
                    "kl": z.kl / z.n as f64,
                    "kl_zero_ablation": z.kl_zero / z.n as f64,
                }),
                recovered.is_none().then(|| format!("plain CLIP ({:.1} %) and the zero-ablated model ({:.1} %) are under {MIN_RECOVERY_GAP} points apart: accuracy_recovered is undefined", pct(z.clip), pct(z.zero))),
            )
        } else {
            (Value::Null, Some(zeroshot_reason.to_string()))
        };
        let (labels, labels_reason) = match &labels {
            Some(l) => {
                let (mut v, r) = l[i].clone();
                factors::add_factor_precision(&mut v, &best_values);
                (v, r)
            }
            None => {
                null_with("labels need --model and --dataset (the top images and the text tower)")
            }
        };
        let mut obj = json!({
            "sae": {
                "name": m.name,
                "path": m.path,
                "random_baseline": m.baseline,
                "architecture": m.sae.config.architecture.name(),
                "d_in": m.sae.config.d_in,
                "d_sae": m.sae.config.d_sae,
                "k": m.sae.config.k,
                "layer": m.layer,
                "tokens": m.tokens,
            },
            "reconstruction": reconstruction,
            "probing": probing,
            "zeroshot": zeroshot,
            "labels": labels,
            "factors": factors,
            "localisation": localisation,
        });
        let map = obj.as_object_mut().expect("an object");
        for (key, reason) in [
            ("probing_reason", probing_reason),
            ("zeroshot_reason", zeroshot_reason),
            ("labels_reason", labels_reason),
            ("factors_reason", factors_reason),
            ("localisation_reason", localisation_reason),
        ] {
            if let Some(r) = reason {
                map.insert(key.into(), json!(r));
            }
        }
        if a.dropped > 0 {
            map.insert(
                "note".into(),
                json!(format!("probing and factors use the first {kept} images: the sparse store reached --max-entries ({} images left out)", a.dropped)),
            );
        }
        out.push(obj);
    }
    Ok(EvaluateReport {
        members: out,
        source,
        images: images.index.len(),
        seconds: start.elapsed().as_secs_f64(),
        density,
    })
}
