//! Where training rows come from (DESIGN.md "Training data"): one [`Batches`] interface,
//! read either from all rows held in memory or streamed from the cache's shards.
//!
//! Both implementations split the rows alike: whole images are held out for validation
//! (a seeded draw of `data.val_fraction` of the images), and both draw the initialisation
//! sample from the same training rows with the same seed, so that a run initialises the
//! same SAE whichever way it reads (for caches up to [`SAMPLE_PERMUTATION_MAX`] training
//! rows).
//!
//! - [`MemoryBatches`] concatenates every row (in the cache dtype) on the device and
//!   shuffles all training rows each epoch with a seeded permutation.
//! - [`StreamBatches`] never holds the cache. A background thread reads the shards in a
//!   seeded order, window by window through memory maps that it drops after each window,
//!   into a shuffle buffer of `data.buffer_mb`; each batch is drawn uniformly from the
//!   buffer (seeded), decoded to f32 by the thread and handed over through a queue of two
//!   batches. At the end of the epoch the buffer is drained, so every training row is seen
//!   once per epoch and an epoch has the same number of steps as in memory.
//!
//! Both are pure functions of (seed, epoch): the draws of epoch e never depend on earlier
//! epochs or on thread timing, so the state a checkpoint must hold is the epoch and the
//! batches already drawn from it (plus what checks that the stream would replay the same:
//! see [`Batches::state`]); [`Batches::epoch_from`] replays the epoch up to that point.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::clip::Precision;
use crate::data::cache::{ActivationCache, FileStamp};
use crate::rng::SplitMix64;
use crate::sae::config::{DataLoad, TrainConfig};

/// Rows used to choose `input_scale`, `b_dec` and σ².
pub const INIT_SAMPLE_ROWS: i64 = 65_536;

/// Up to this many training rows the initialisation sample is drawn with libtorch's seeded
/// permutation of all training rows (what the in-memory path has always done); above it a
/// stream draws the sample with its own generator (Floyd's algorithm), so that it never
/// allocates 8 bytes per row.
pub const SAMPLE_PERMUTATION_MAX: usize = 1 << 24;

/// One epoch's (or the validation rows') batches, f32 on the training device.
pub type BatchIter<'a> = Box<dyn Iterator<Item = Result<Tensor>> + 'a>;

/// Where training rows come from.
pub trait Batches {
    /// `memory` or `stream` (never `auto`).
    fn load(&self) -> DataLoad;
    /// Training rows per epoch.
    fn n_train(&self) -> usize;
    /// The initialisation sample: up to [`INIT_SAMPLE_ROWS`] training rows drawn with
    /// `seed`, f32 on the device. [S, D]
    fn init_sample(&self, seed: i64) -> Result<Tensor>;
    /// The training batches of epoch `epoch` (0-based), in order; the last may be short.
    fn epoch(&self, epoch: usize) -> Result<BatchIter<'_>> {
        self.epoch_from(epoch, 0)
    }
    /// The batches of epoch `epoch` after its first `skip` (a run resumed mid-epoch):
    /// exactly what [`Batches::epoch`] gives after `skip` batches, without training on
    /// (or, when streaming, decoding) the skipped ones.
    fn epoch_from(&self, epoch: usize, skip: usize) -> Result<BatchIter<'_>>;
    /// The rows the end-of-epoch SAE is evaluated on, in batches: the validation rows, or
    /// the training rows when there are none.
    fn held_out(&self) -> Result<BatchIter<'_>>;
    /// What a training checkpoint records of the data in epoch `epoch` after `drawn` of
    /// its batches (`extra.data`; 0 at an epoch boundary): enough to check on resume that
    /// the batches will replay from there.
    fn state(&self, epoch: usize, drawn: usize) -> Value;
    /// Check a checkpoint's `extra.data` against this reader before resuming from it.
    fn check_state(&self, recorded: &Value) -> Result<()>;
}

/// Open the batches `config.data` asks for: `load` is the resolved mode (not `auto`).
pub fn open(
    cache: &ActivationCache,
    config: &TrainConfig,
    load: DataLoad,
    device: Device,
) -> Result<Box<dyn Batches>> {
    Ok(match load {
        DataLoad::Stream => Box::new(StreamBatches::open(cache, config, device)?),
        _ => Box::new(MemoryBatches::open(cache, config, device)?),
    })
}

/// Bytes of the activations of a cache (what the in-memory path holds, once).
pub fn cache_bytes(cache: &ActivationCache) -> u64 {
    let m = cache.manifest();
    cache.rows() as u64 * m.d_model as u64 * elem_bytes(m.dtype) as u64
}

/// What `data.load: auto` may hold in memory: a quarter of `MemAvailable` in
/// /proc/meminfo (the in-memory path peaks at about twice the cache while it concatenates
/// the shards, and the rest is left to the model, the optimizer and other processes).
/// None where /proc/meminfo cannot be read.
pub fn memory_budget() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024 / 4)
}

/// The mode `data.load` resolves to for `cache`: `auto` is memory when the cache fits
/// [`memory_budget`] (or the budget is unknown), else stream.
pub fn resolve_load(load: DataLoad, cache: &ActivationCache) -> DataLoad {
    match load {
        DataLoad::Auto => match memory_budget() {
            Some(budget) if cache_bytes(cache) > budget => DataLoad::Stream,
            _ => DataLoad::Memory,
        },
        other => other,
    }
}

fn elem_bytes(p: Precision) -> usize {
    match p {
        Precision::F32 => 4,
        Precision::F16 | Precision::Bf16 => 2,
    }
}

/// The images held out for validation: a seeded draw of ⌈`val_fraction` · images⌉ of the
/// distinct image indices `images` (sorted), at least one and never all; none when
/// `val_fraction` is 0 or there is a single image.
fn held_out_images(images: &[i64], seed: i64, val_fraction: f64) -> Result<HashSet<i64>> {
    let order = Vec::<i64>::try_from(&crate::rng::seeded(seed, || {
        Tensor::randperm(images.len() as i64, (Kind::Int64, Device::Cpu))
    }))?;
    let n_val = if val_fraction > 0.0 && images.len() >= 2 {
        ((images.len() as f64 * val_fraction).ceil() as usize).clamp(1, images.len() - 1)
    } else {
        0
    };
    Ok(order[..n_val].iter().map(|&i| images[i as usize]).collect())
}

/// The positions (in 0..n) of the initialisation sample, in draw order.
fn sample_positions(n: usize, seed: i64) -> Result<Vec<usize>> {
    let k = n.min(INIT_SAMPLE_ROWS as usize);
    if n <= SAMPLE_PERMUTATION_MAX {
        let pick = crate::rng::seeded(seed, || {
            Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu))
        })
        .narrow(0, 0, k as i64);
        return Ok(Vec::<i64>::try_from(&pick)?
            .into_iter()
            .map(|p| p as usize)
            .collect());
    }
    // Floyd: k distinct positions with k draws.
    let mut rng = SplitMix64::new(seed as u64 ^ 0x5a3e_c11b_5a3e_c11b);
    let mut chosen = HashSet::with_capacity(k);
    let mut picks = Vec::with_capacity(k);
    for j in n - k..n {
        let t = rng.below(j + 1);
        let v = if chosen.contains(&t) { j } else { t };
        chosen.insert(v);
        picks.push(v);
    }
    Ok(picks)
}

/// The seed of epoch `epoch`'s shuffle: depends only on (seed, epoch).
fn epoch_seed(seed: i64, epoch: usize) -> i64 {
    seed.wrapping_mul(1_000_003).wrapping_add(epoch as i64 + 1)
}

// ---------------------------------------------------------------------------------------
// In memory

/// Every row of the cache (in its dtype) on the device, with the train and validation
/// row indices.
pub struct MemoryBatches {
    acts: Tensor,
    train: Tensor,
    val: Tensor,
    batch_size: usize,
    seed: i64,
}

impl MemoryBatches {
    pub fn open(
        cache: &ActivationCache,
        config: &TrainConfig,
        device: Device,
    ) -> Result<MemoryBatches> {
        let m = cache.manifest();
        let all = cache.load_all(m.dtype.kind())?;
        // Hold out whole images: the same image never feeds both sides.
        let image_index = Vec::<i64>::try_from(&all.image_index)?;
        let mut images = image_index.clone();
        images.sort_unstable();
        images.dedup();
        let val_images = held_out_images(&images, config.training.seed, config.data.val_fraction)?;
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (row, img) in image_index.iter().enumerate() {
            if val_images.contains(img) {
                val.push(row as i64);
            } else {
                train.push(row as i64);
            }
        }
        ensure!(
            !train.is_empty(),
            "the activation cache has no training rows"
        );
        crate::ui::info(format!(
            "data: {} rows of width {} from {} images ({} train rows, {} validation rows from {} images), in memory",
            image_index.len(),
            m.d_model,
            images.len(),
            train.len(),
            val.len(),
            val_images.len()
        ));
        Ok(MemoryBatches {
            acts: all.activations.to_device(device),
            train: Tensor::from_slice(&train).to_device(device),
            val: Tensor::from_slice(&val).to_device(device),
            batch_size: config.training.batch_size,
            seed: config.training.seed,
        })
    }

    /// Rows `rows` (indices into `acts`) as f32. [B, D]
    fn batch(&self, rows: &Tensor) -> Tensor {
        self.acts.index_select(0, rows).to_kind(Kind::Float)
    }

    /// Batches of `rows` (indices into `acts`) in their order.
    fn batches_of(&self, rows: Tensor) -> BatchIter<'_> {
        let n = rows.size()[0] as usize;
        let b = self.batch_size;
        Box::new((0..n).step_by(b).map(move |start| {
            let len = b.min(n - start);
            Ok(self.batch(&rows.narrow(0, start as i64, len as i64)))
        }))
    }
}

impl Batches for MemoryBatches {
    fn load(&self) -> DataLoad {
        DataLoad::Memory
    }

    fn n_train(&self) -> usize {
        self.train.size()[0] as usize
    }

    fn init_sample(&self, seed: i64) -> Result<Tensor> {
        let n = self.train.size()[0];
        let pick = crate::rng::seeded(seed, || Tensor::randperm(n, (Kind::Int64, Device::Cpu)))
            .narrow(0, 0, n.min(INIT_SAMPLE_ROWS))
            .to_device(self.train.device());
        Ok(self.batch(&self.train.index_select(0, &pick)))
    }

    /// The training rows in the seeded order of (seed, epoch), after the first `skip`
    /// batches' rows.
    fn epoch_from(&self, epoch: usize, skip: usize) -> Result<BatchIter<'_>> {
        let n = self.n_train() as i64;
        let perm = crate::rng::seeded(epoch_seed(self.seed, epoch), || {
            Tensor::randperm(n, (Kind::Int64, Device::Cpu))
        });
        let start = (skip * self.batch_size).min(n as usize) as i64;
        let perm = perm
            .narrow(0, start, n - start)
            .to_device(self.train.device());
        Ok(self.batches_of(self.train.index_select(0, &perm)))
    }

    fn held_out(&self) -> Result<BatchIter<'_>> {
        let rows = if self.val.size()[0] > 0 {
            &self.val
        } else {
            &self.train
        };
        Ok(self.batches_of(rows.shallow_clone()))
    }

    fn state(&self, epoch: usize, drawn: usize) -> Value {
        let mut state = json!({"load": "memory", "epoch": epoch});
        if drawn > 0 {
            state["batches_drawn"] = json!(drawn);
        }
        state
    }

    fn check_state(&self, _recorded: &Value) -> Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Streamed

/// One shard as the stream reads it: where its two tensors start in the file, and the
/// stamp that must not change while training reads it.
#[derive(Debug, Clone)]
struct Shard {
    path: PathBuf,
    rows: usize,
    stamp: FileStamp,
    /// File offset of `activations` [rows, D].
    acts_at: u64,
    /// File offset of `image_index` [rows] (i64 little-endian).
    index_at: u64,
}

/// What the reader thread shares with the training thread.
#[derive(Debug)]
struct Source {
    shards: Vec<Shard>,
    val_images: HashSet<i64>,
    d: usize,
    dtype: Precision,
    /// Bytes of one stored row.
    row_bytes: usize,
    batch_size: usize,
    /// Rows the shuffle buffer holds.
    buffer_rows: usize,
    seed: i64,
}

/// The training rows streamed from the shards through a shuffle buffer.
pub struct StreamBatches {
    source: Arc<Source>,
    n_train: usize,
    n_val: usize,
    device: Device,
}

/// Rows per memory-mapped window of a shard: about 8 MiB.
const WINDOW_BYTES: usize = 8 << 20;
/// Batches the reader may prepare ahead of the training step.
const QUEUE_BATCHES: usize = 2;

impl StreamBatches {
    pub fn open(
        cache: &ActivationCache,
        config: &TrainConfig,
        device: Device,
    ) -> Result<StreamBatches> {
        let m = cache.manifest();
        let d = m.d_model as usize;
        let row_bytes = d * elem_bytes(m.dtype);
        let buffer_rows = config.data.buffer_mb * (1 << 20) / row_bytes;
        let batch_size = config.training.batch_size;
        ensure!(
            buffer_rows >= batch_size,
            "data.buffer_mb = {} holds {buffer_rows} rows of width {d} ({:?}), fewer than one batch (training.batch_size = {batch_size}): raise data.buffer_mb to at least {} or lower the batch size",
            config.data.buffer_mb,
            m.dtype,
            (batch_size * row_bytes).div_ceil(1 << 20)
        );
        let mut shards = Vec::new();
        for s in cache.shards() {
            shards.push(Shard::open(s.path, s.rows, m.d_model, m.dtype)?);
        }
        ensure!(!shards.is_empty(), "the activation cache has no rows");
        // The split: the distinct images first, then the held-out draw (as in memory).
        let mut images = Vec::new();
        for s in &shards {
            images.extend(s.image_index()?);
            images.sort_unstable();
            images.dedup();
        }
        let val_images = held_out_images(&images, config.training.seed, config.data.val_fraction)?;
        let mut n_val = 0;
        for s in &shards {
            n_val += s
                .image_index()?
                .iter()
                .filter(|i| val_images.contains(i))
                .count();
        }
        let rows = cache.rows();
        let n_train = rows - n_val;
        ensure!(n_train > 0, "the activation cache has no training rows");
        crate::ui::info(format!(
            "data: {rows} rows of width {d} from {} images ({n_train} train rows, {n_val} validation rows from {} images), streamed from {} shards through a buffer of {buffer_rows} rows ({} MiB)",
            images.len(),
            val_images.len(),
            shards.len(),
            config.data.buffer_mb
        ));
        Ok(StreamBatches {
            source: Arc::new(Source {
                shards,
                val_images,
                d,
                dtype: m.dtype,
                row_bytes,
                batch_size,
                buffer_rows,
                seed: config.training.seed,
            }),
            n_train,
            n_val,
            device,
        })
    }

    /// Start the reader thread on `job` and receive its batches.
    fn spawn(&self, job: Job) -> BatchIter<'_> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let source = Arc::clone(&self.source);
        let handle = std::thread::spawn(move || {
            let result = match job {
                Job::Train { epoch, skip } => source.train_epoch(epoch, skip, &tx),
                Job::HeldOut { val } => source.in_order(val, &tx),
            };
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        Box::new(Received {
            rx: Some(rx),
            handle: Some(handle),
            d: self.source.d as i64,
            device: self.device,
        })
    }
}

enum Job {
    /// Epoch `epoch`'s batches after the first `skip`.
    Train { epoch: usize, skip: usize },
    /// The validation rows (or, when false, the training rows) in cache order.
    HeldOut { val: bool },
}

type Sender = mpsc::SyncSender<Result<Vec<f32>>>;

impl Source {
    fn is_train(&self, image: i64) -> bool {
        !self.val_images.contains(&image)
    }

    /// One epoch of training batches: shards in a seeded order, each read window by
    /// window into the shuffle buffer; whenever the buffer is full a batch is drawn from
    /// it, and at the end of the shards it is drained. The first `skip` batches are drawn
    /// (the same draws, so the buffer ends where it would) but neither decoded nor sent.
    /// Ends early (Ok) when the receiver has gone.
    fn train_epoch(&self, epoch: usize, skip: usize, tx: &Sender) -> Result<()> {
        let mut rng = SplitMix64::new(epoch_seed(self.seed, epoch) as u64);
        let mut order: Vec<usize> = (0..self.shards.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let rb = self.row_bytes;
        let mut buffer = vec![0u8; self.buffer_rows * rb];
        let mut filled = 0usize;
        let mut drawn = 0usize;
        let mut incoming = Vec::new();
        for &s in &order {
            let shard = &self.shards[s];
            for window in shard.windows(rb) {
                incoming.clear();
                shard.read_rows(window, rb, |img| self.is_train(img), &mut incoming)?;
                for row in incoming.chunks_exact(rb) {
                    if filled == self.buffer_rows {
                        let send = drawn >= skip;
                        let batch =
                            self.draw(&mut buffer, &mut filled, self.batch_size, &mut rng, send);
                        drawn += 1;
                        if send && tx.send(Ok(batch)).is_err() {
                            return Ok(());
                        }
                    }
                    buffer[filled * rb..(filled + 1) * rb].copy_from_slice(row);
                    filled += 1;
                }
            }
        }
        while filled > 0 {
            let len = self.batch_size.min(filled);
            let send = drawn >= skip;
            let batch = self.draw(&mut buffer, &mut filled, len, &mut rng, send);
            drawn += 1;
            if send && tx.send(Ok(batch)).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Draw `len` rows uniformly from the first `filled` rows of `buffer` (each drawn row's
    /// slot takes the last row), decoded to f32 (or, without `keep`, only drawn: empty).
    fn draw(
        &self,
        buffer: &mut [u8],
        filled: &mut usize,
        len: usize,
        rng: &mut SplitMix64,
        keep: bool,
    ) -> Vec<f32> {
        let rb = self.row_bytes;
        let mut out = Vec::with_capacity(if keep { len * self.d } else { 0 });
        for _ in 0..len {
            let j = rng.below(*filled);
            if keep {
                decode(&buffer[j * rb..(j + 1) * rb], self.dtype, &mut out);
            }
            let last = *filled - 1;
            buffer.copy_within(last * rb..(last + 1) * rb, j * rb);
            *filled = last;
        }
        out
    }

    /// The validation rows (`val`) or the training rows in cache order, in batches.
    ///
    /// The validation rows (a few percent of the cache, whole images) are read run by run
    /// with positioned reads, so that an end-of-epoch evaluation reads about their bytes
    /// and not every shard's; the training rows (no validation split) stream window by
    /// window as in an epoch.
    fn in_order(&self, val: bool, tx: &Sender) -> Result<()> {
        let rb = self.row_bytes;
        let mut rows = Vec::with_capacity(self.batch_size * rb);
        // Send every full batch; false when the receiver has gone.
        let flush = |rows: &mut Vec<u8>| -> bool {
            while rows.len() >= self.batch_size * rb {
                let rest = rows.split_off(self.batch_size * rb);
                if tx.send(Ok(self.decode_all(rows))).is_err() {
                    return false;
                }
                *rows = rest;
            }
            true
        };
        for shard in &self.shards {
            if val {
                let file = shard.open_unchanged()?;
                let index = shard.image_index()?;
                let max_run = shard.windows(rb).next().map_or(1, |w| w.len());
                for run in runs(&index, |img| !self.is_train(img), max_run) {
                    let at = rows.len();
                    rows.resize(at + run.len() * rb, 0);
                    file.read_exact_at(&mut rows[at..], shard.acts_at + (run.start * rb) as u64)
                        .with_context(|| format!("cannot read {}", shard.path.display()))?;
                    if !flush(&mut rows) {
                        return Ok(());
                    }
                }
            } else {
                for window in shard.windows(rb) {
                    shard.read_rows(window, rb, |img| self.is_train(img), &mut rows)?;
                    if !flush(&mut rows) {
                        return Ok(());
                    }
                }
            }
        }
        if !rows.is_empty() {
            let _ = tx.send(Ok(self.decode_all(&rows)));
        }
        Ok(())
    }

    fn decode_all(&self, rows: &[u8]) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows.len() / self.row_bytes * self.d);
        decode(rows, self.dtype, &mut out);
        out
    }
}

/// The maximal runs of consecutive rows whose image passes `keep`, each cut into pieces of
/// at most `max_len` rows, in order.
fn runs(index: &[i64], keep: impl Fn(i64) -> bool, max_len: usize) -> Vec<std::ops::Range<usize>> {
    let max_len = max_len.max(1);
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (r, &img) in index.iter().enumerate() {
        match (keep(img), start) {
            (true, None) => start = Some(r),
            (true, Some(s)) if r - s == max_len => {
                out.push(s..r);
                start = Some(r);
            }
            (false, Some(s)) => {
                out.push(s..r);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(s..index.len());
    }
    out
}

/// Stored little-endian values of `dtype` to f32 (exact for all three).
fn decode(bytes: &[u8], dtype: Precision, out: &mut Vec<f32>) {
    match dtype {
        Precision::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Precision::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Precision::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
}

impl Shard {
    /// Read and check a shard's header: `activations` [rows, d] of `dtype` and
    /// `image_index` [rows] i64, both inside the file (a shorter file is truncated).
    fn open(path: PathBuf, rows: usize, d: i64, dtype: Precision) -> Result<Shard> {
        let shown = path.display().to_string();
        let file = File::open(&path).with_context(|| format!("cannot open shard {shown}"))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {shown}"))?;
        let stamp = FileStamp::of(&meta)
            .ok_or_else(|| anyhow!("{shown}: the file system gives no modification time"))?;
        let mut len8 = [0u8; 8];
        file.read_exact_at(&mut len8, 0)
            .with_context(|| format!("{shown} is truncated (no safetensors header)"))?;
        let n = u64::from_le_bytes(len8);
        ensure!(
            n <= 100 << 20 && 8 + n <= stamp.size,
            "{shown} is truncated or not a safetensors file (header of {n} bytes in a file of {})",
            stamp.size
        );
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8)
            .with_context(|| format!("cannot read {shown}"))?;
        let header: Value = serde_json::from_slice(&header)
            .map_err(|e| anyhow!("{shown}: the safetensors header is not valid JSON ({e})"))?;
        let data_at = 8 + n;
        let tensor = |name: &str, want_dtype: &str, shape: &[u64], elem: u64| -> Result<u64> {
            let t = header
                .get(name)
                .ok_or_else(|| anyhow!("{shown}: tensor {name} is missing"))?;
            let found_dtype = t["dtype"].as_str().unwrap_or("?");
            let found_shape: Vec<u64> = t["shape"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            ensure!(
                found_dtype == want_dtype && found_shape == shape,
                "{shown}: {name} is {found_dtype} {found_shape:?}, the manifest says {want_dtype} {shape:?}"
            );
            let offsets: Vec<u64> = t["data_offsets"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            ensure!(
                offsets.len() == 2
                    && offsets[1] - offsets[0] == shape.iter().product::<u64>() * elem,
                "{shown}: {name} has invalid data offsets {offsets:?}"
            );
            ensure!(
                data_at + offsets[1] <= stamp.size,
                "{shown} is truncated: {} bytes, its header describes {}",
                stamp.size,
                data_at + offsets[1]
            );
            Ok(data_at + offsets[0])
        };
        let st_dtype = match dtype {
            Precision::F32 => "F32",
            Precision::F16 => "F16",
            Precision::Bf16 => "BF16",
        };
        let r = rows as u64;
        let acts_at = tensor(
            "activations",
            st_dtype,
            &[r, d as u64],
            elem_bytes(dtype) as u64,
        )?;
        let index_at = tensor("image_index", "I64", &[r], 8)?;
        Ok(Shard {
            path,
            rows,
            stamp,
            acts_at,
            index_at,
        })
    }

    /// The file, checked to be the one training started with.
    fn open_unchanged(&self) -> Result<File> {
        let shown = self.path.display();
        let changed = || {
            anyhow!("{shown} changed while training read it (its size, modification time or inode differ from when training started): finish the cache before training on it, then resume")
        };
        let file = File::open(&self.path).map_err(|_| changed())?;
        let now = file.metadata().ok().and_then(|m| FileStamp::of(&m));
        if now.as_ref() != Some(&self.stamp) {
            return Err(changed());
        }
        Ok(file)
    }

    /// Every row's image index.
    fn image_index(&self) -> Result<Vec<i64>> {
        let file = self.open_unchanged()?;
        let mut bytes = vec![0u8; self.rows * 8];
        file.read_exact_at(&mut bytes, self.index_at)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        Ok(bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect())
    }

    /// The shard's rows in windows of about [`WINDOW_BYTES`].
    fn windows(&self, row_bytes: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let step = (WINDOW_BYTES / row_bytes).max(1);
        let rows = self.rows;
        (0..rows)
            .step_by(step)
            .map(move |s| s..(s + step).min(rows))
    }

    /// Append the stored bytes of the rows in `window` whose image passes `keep` to `out`,
    /// through memory maps of the window that are dropped before returning.
    fn read_rows(
        &self,
        window: std::ops::Range<usize>,
        row_bytes: usize,
        keep: impl Fn(i64) -> bool,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let file = self.open_unchanged()?;
        let n = window.len();
        let map = |at: u64, len: usize| {
            // SAFETY: read-only maps of a file whose stamp was just checked; dropped before
            // returning. A file truncated in place between the check and the read would
            // fault: the stamp check keeps that window to one map.
            unsafe { memmap2::MmapOptions::new().offset(at).len(len).map(&file) }
                .with_context(|| format!("cannot map {}", self.path.display()))
        };
        let acts = map(
            self.acts_at + (window.start * row_bytes) as u64,
            n * row_bytes,
        )?;
        let index = map(self.index_at + (window.start * 8) as u64, n * 8)?;
        for (i, img) in index.chunks_exact(8).enumerate() {
            if keep(i64::from_le_bytes(img.try_into().expect("8 bytes"))) {
                out.extend_from_slice(&acts[i * row_bytes..(i + 1) * row_bytes]);
            }
        }
        Ok(())
    }
}

impl Batches for StreamBatches {
    fn load(&self) -> DataLoad {
        DataLoad::Stream
    }

    fn n_train(&self) -> usize {
        self.n_train
    }

    /// The same training rows the in-memory path draws (the k-th training row in cache
    /// order is the same row), read with positioned reads.
    fn init_sample(&self, seed: i64) -> Result<Tensor> {
        let src = &self.source;
        let picks = sample_positions(self.n_train, seed)?;
        // Training ordinal → slot in the sample, visited in cache order.
        let mut wanted: Vec<(usize, usize)> = picks
            .iter()
            .enumerate()
            .map(|(slot, &p)| (p, slot))
            .collect();
        wanted.sort_unstable();
        let rb = src.row_bytes;
        let mut rows = vec![0u8; picks.len() * rb];
        let (mut ordinal, mut next) = (0usize, 0usize);
        for shard in &src.shards {
            if next == wanted.len() {
                break;
            }
            let file = shard.open_unchanged()?;
            for (r, img) in shard.image_index()?.into_iter().enumerate() {
                if !src.is_train(img) {
                    continue;
                }
                while next < wanted.len() && wanted[next].0 == ordinal {
                    let slot = wanted[next].1;
                    file.read_exact_at(
                        &mut rows[slot * rb..(slot + 1) * rb],
                        shard.acts_at + (r * rb) as u64,
                    )
                    .with_context(|| format!("cannot read {}", shard.path.display()))?;
                    next += 1;
                }
                ordinal += 1;
            }
        }
        ensure!(
            next == wanted.len(),
            "the cache has fewer training rows than its manifest says"
        );
        let x = src.decode_all(&rows);
        Ok(Tensor::from_slice(&x)
            .view([picks.len() as i64, src.d as i64])
            .to_device(self.device))
    }

    fn epoch_from(&self, epoch: usize, skip: usize) -> Result<BatchIter<'_>> {
        Ok(self.spawn(Job::Train { epoch, skip }))
    }

    fn held_out(&self) -> Result<BatchIter<'_>> {
        Ok(self.spawn(Job::HeldOut {
            val: self.n_val > 0,
        }))
    }

    /// The epoch and the batches already drawn from it, with what fixes its draws besides
    /// the seed: the buffer's rows, the batch size and the shards (their number and total
    /// rows). Epoch e's stream is a function of these alone, so a position is replayed by
    /// drawing again up to it; the buffer's contents are never saved (`buffered`, its rows,
    /// is written at epoch boundaries only, where it is 0).
    fn state(&self, epoch: usize, drawn: usize) -> Value {
        let s = &self.source;
        let mut state = json!({"load": "stream", "epoch": epoch, "seed": s.seed,
               "buffer_rows": s.buffer_rows, "batch_size": s.batch_size, "shards": s.shards.len(),
               "rows": s.shards.iter().map(|x| x.rows).sum::<usize>(), "buffered": 0});
        if drawn > 0 {
            state["batches_drawn"] = json!(drawn);
            state.as_object_mut().expect("an object").remove("buffered");
        }
        state
    }

    fn check_state(&self, recorded: &Value) -> Result<()> {
        let now = self.state(0, 0);
        for key in ["buffer_rows", "batch_size", "shards", "rows"] {
            if let Some(v) = recorded.get(key) {
                if v != &now[key] {
                    bail!(
                        "the checkpoint streamed with {key} = {v}, this run would stream with {}: the batches would not replay (data.buffer_mb or the cache changed)",
                        now[key]
                    );
                }
            }
        }
        Ok(())
    }
}

/// Batches arriving from a reader thread, made tensors on the device.
struct Received {
    rx: Option<mpsc::Receiver<Result<Vec<f32>>>>,
    handle: Option<JoinHandle<()>>,
    d: i64,
    device: Device,
}

impl Iterator for Received {
    type Item = Result<Tensor>;

    fn next(&mut self) -> Option<Result<Tensor>> {
        match self.rx.as_ref()?.recv() {
            Ok(Ok(x)) => {
                let n = x.len() as i64 / self.d;
                Some(Ok(Tensor::from_slice(&x)
                    .view([n, self.d])
                    .to_device(self.device)))
            }
            Ok(Err(e)) => {
                self.rx = None;
                Some(Err(e))
            }
            // The thread has finished: a panic there must not pass for the end of the data.
            Err(_) => {
                self.rx = None;
                let panicked = self.handle.take().map(JoinHandle::join);
                match panicked {
                    Some(Err(_)) => Some(Err(anyhow!("the data reader thread failed"))),
                    _ => None,
                }
            }
        }
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        self.rx = None; // the reader's next send fails and it returns
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floyd_sample_is_distinct_and_in_range() {
        let n = SAMPLE_PERMUTATION_MAX + 10;
        let p = sample_positions(n, 3).unwrap();
        assert_eq!(p.len(), INIT_SAMPLE_ROWS as usize);
        let set: HashSet<usize> = p.iter().copied().collect();
        assert_eq!(set.len(), p.len());
        assert!(p.iter().all(|&x| x < n));
        assert_eq!(p, sample_positions(n, 3).unwrap(), "seeded");
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = SplitMix64::new(1);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[r.below(7)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }

    #[test]
    fn runs_cover_exactly_the_kept_rows() {
        let index = [0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4];
        let keep = |img: i64| img == 1 || img == 3 || img == 4;
        assert_eq!(runs(&index, keep, 100), vec![2..5, 6..12]);
        // Long runs are cut at max_len, with nothing lost or repeated.
        assert_eq!(runs(&index, keep, 2), vec![2..4, 4..5, 6..8, 8..10, 10..12]);
        assert_eq!(
            runs(&index, |_| false, 3),
            Vec::<std::ops::Range<usize>>::new()
        );
        assert_eq!(runs(&index, |_| true, 5), vec![0..5, 5..10, 10..12]);
        assert_eq!(runs(&[], |_| true, 5), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn decode_is_exact() {
        let v = [1.5f32, -0.25, 3.0e-3];
        let mut out = Vec::new();
        let f16: Vec<u8> = v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        decode(&f16, Precision::F16, &mut out);
        let want: Vec<f32> = v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        assert_eq!(out, want);
    }
}
