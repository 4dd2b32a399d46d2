//! `extract`: run CLIP over a dataset once and keep the residual stream after one block
//! in an activation cache.
//!
//! Images are decoded and preprocessed in parallel (rayon) on a producer thread, one
//! batch ahead of the forward pass (a bounded channel), so decoding overlaps compute. The
//! forward stops after the requested block. Shards are written as they fill; a rerun
//! continues after the last complete shard.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use crate::clip::{weights, Clip, LoadOptions, Precision, Tokens};
use crate::data::cache::{
    self, CacheKey, DatasetRef, ImageRecord, Manifest, ModelRef, Opened, Part,
};
use crate::data::{self as datasets, stream_pixels, DatasetSpec, Split};

/// What to extract and where.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub model: PathBuf,
    pub load: LoadOptions,
    pub dataset: DatasetSpec,
    pub split: Split,
    /// Vision block whose output is kept (0-based).
    pub layer: usize,
    pub tokens: Tokens,
    /// Storage precision of the activations.
    pub dtype: Precision,
    pub out: PathBuf,
    pub batch_size: usize,
    /// Only the first N images of the dataset.
    pub limit: Option<usize>,
    /// Only every `count`-th image starting at `index` (indices stay global).
    pub part: Option<Part>,
    /// A shard is written once this many rows are buffered (at an image boundary).
    pub shard_rows: usize,
    /// Replace a cache in `out` made with other settings.
    pub force: bool,
    /// Stop as if interrupted after this many shards have been written in this run.
    pub stop_after_shards: Option<usize>,
}

impl ExtractOptions {
    pub fn new(model: PathBuf, dataset: DatasetSpec, layer: usize, out: PathBuf) -> ExtractOptions {
        ExtractOptions {
            model,
            load: LoadOptions::default(),
            dataset,
            split: Split::Train,
            layer,
            tokens: Tokens::Cls,
            dtype: Precision::F16,
            out,
            batch_size: 64,
            limit: None,
            part: None,
            shard_rows: 1 << 16,
            force: false,
            stop_after_shards: None,
        }
    }
}

/// How an extraction went.
#[derive(Debug)]
pub struct ExtractSummary {
    pub manifest: Manifest,
    /// The cache was already complete: nothing was computed.
    pub already_complete: bool,
    /// Images already done by an earlier, interrupted run.
    pub resumed_at: usize,
    /// Images processed (extracted or skipped) in this run.
    pub processed: usize,
    pub seconds: f64,
}

impl ExtractSummary {
    pub fn images_per_second(&self) -> f64 {
        self.processed as f64 / self.seconds.max(1e-9)
    }
}

/// The run stopped early on request (`stop_after_shards`); the cache can be resumed.
#[derive(Debug, thiserror::Error)]
#[error("extraction stopped after {shards} shard(s) as requested; rerun to continue")]
pub struct Stopped {
    pub shards: usize,
}

pub fn extract(o: &ExtractOptions) -> Result<ExtractSummary> {
    anyhow::ensure!(o.batch_size > 0, "--batch-size must be at least 1");
    if let Some(p) = o.part {
        anyhow::ensure!(
            p.count > 0 && p.index < p.count,
            "--shard {}/{}: expected I/N with 0 <= I < N",
            p.index,
            p.count
        );
    }
    let start = Instant::now();
    let files = weights::resolve(&o.model, o.load.format)?;
    let clip = Clip::load(&o.model, &o.load)?;
    let info = clip.info();
    if o.layer >= info.num_hidden_layers {
        bail!(
            "layer {} does not exist: the vision tower has blocks 0..={}",
            o.layer,
            info.num_hidden_layers - 1
        );
    }
    let token_range = clip
        .token_range(o.tokens)
        .with_context(|| format!("--tokens {}", o.tokens.name()))?;
    let dataset = datasets::limited(datasets::open(&o.dataset, o.split)?, o.limit);
    let positions: Vec<usize> = (0..dataset.len())
        .filter(|i| o.part.is_none_or(|p| i % p.count == p.index))
        .collect();
    crate::ui::debug(format!("hashing {}", files.weights.display()));
    let key = CacheKey {
        d_model: info.hidden_size,
        dtype: o.dtype,
        layer: o.layer,
        tokens: o.tokens,
        model: ModelRef {
            path: o.model.display().to_string(),
            sha256: cache::file_sha256(&files.weights)?,
        },
        dataset: DatasetRef {
            kind: o.dataset.kind.name().to_string(),
            path: o.dataset.path.clone(),
            split: o.split.name().to_string(),
        },
        part: o.part,
        limit: o.limit,
        image_size: info.image_size,
    };
    let mut writer = match cache::open_writer(&o.out, key, o.shard_rows, o.force)? {
        Opened::Complete(manifest) => {
            return Ok(ExtractSummary {
                manifest,
                already_complete: true,
                resumed_at: positions.len(),
                processed: 0,
                seconds: start.elapsed().as_secs_f64(),
            })
        }
        Opened::Writer(w) => w,
    };
    let resumed_at = writer.position();
    if resumed_at > 0 {
        crate::ui::info(format!(
            "resuming {} after {} complete shard(s), at image {resumed_at} of {}",
            o.out.display(),
            writer.complete_shards(),
            positions.len()
        ));
    }
    let todo = positions.get(resumed_at..).unwrap_or(&[]);
    let prep = clip.preprocess();
    let size = info.image_size;
    let device = o.load.device;
    let bar = crate::ui::progress_bar(
        positions.len() as u64,
        "{spinner} extract [{elapsed_precise}] {bar:30} {pos}/{len} images {per_sec} eta {eta}",
    );
    bar.set_position(resumed_at as u64);
    let shards_at_start = writer.complete_shards();
    let compute = Instant::now();

    stream_pixels(dataset.as_ref(), todo, o.batch_size, &prep, |batch| {
        let good: Vec<&Vec<f32>> = batch.iter().filter_map(|(_, p)| p.as_ref().ok()).collect();
        let mut acts = None;
        if !good.is_empty() {
            let n = good.len() as i64;
            let flat: Vec<f32> = good.iter().flat_map(|p| p.iter().copied()).collect();
            let mut pixels = Tensor::f_from_slice(&flat)?.f_view([n, 3, size, size])?;
            if device.is_cuda() {
                pixels = pixels.pin_memory(device);
            }
            let residual = clip.residual(&pixels.to_device(device), o.layer)?;
            let selected = residual
                .narrow(1, token_range.start, token_range.end - token_range.start)
                .to_device(Device::Cpu)
                .to_kind(o.dtype.kind()); // n, K, D
            acts = Some(selected);
        }
        let mut j = 0;
        for (index, pixels) in batch {
            let item = dataset.item(index);
            match pixels {
                Ok(_) => {
                    let a = acts
                        .as_ref()
                        .expect("a batch with good images has activations")
                        .get(j);
                    j += 1;
                    let k = a.size()[0];
                    let first = token_range.start;
                    let token_index =
                        Tensor::arange_start(first, first + k, (Kind::Int64, Device::Cpu));
                    let record = ImageRecord {
                        image_index: item.index,
                        source: item.source,
                        label: item.label,
                    };
                    writer.add_image(record, &a, &token_index)?;
                }
                Err(e) => {
                    crate::ui::debug(format!("skipping {}: {e}", item.source));
                    writer.skip_image(item.index, item.source, e);
                }
            }
            bar.inc(1);
        }
        if writer.end_batch()? {
            let written = writer.complete_shards() - shards_at_start;
            if o.stop_after_shards.is_some_and(|n| written >= n) {
                return Err(Stopped { shards: written }.into());
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let processed = positions.len() - resumed_at;
    let manifest = writer
        .finish()
        .with_context(|| format!("cannot finish the cache {}", o.out.display()))?;
    Ok(ExtractSummary {
        manifest,
        already_complete: false,
        resumed_at,
        processed,
        seconds: compute.elapsed().as_secs_f64(),
    })
}
