//! `train`: fit an SAE to an activation cache, one visible loop (nanoGPT train.py).
//!
//! Reads top to bottom: resolve the data (extracting it first if the config names a model
//! and dataset), split it by image into train and validation rows, initialise the SAE from
//! a sample, then for each epoch: a seeded shuffle, steps of forward/backward/Adam with the
//! learning-rate, k and L1 schedules, a step line every `log_every` steps, and at the end
//! of the epoch a validation pass, an epoch line and the checkpoints. Scalars are read off
//! the device only at log intervals and epoch ends.
//!
//! Determinism: the shuffle of epoch e depends only on (seed, e), and a training
//! checkpoint holds everything else the loop carries (Adam, dead-latent counters, the
//! batchtopk threshold, the best score), so on CPU a run resumed at an epoch boundary ends
//! bit-identical to an uninterrupted one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::checkpoint::{self, CheckpointMeta, TrainingStateRef};
use super::config::{LrSchedule, TrainConfig, TrainingSection};
use super::model::{Architecture, Sae, SaeConfig, WEncInit};
use super::objective::{
    forward_backward, DeadTracker, Evr, Firing, LossOptions, ThresholdEstimator, Workspace,
};
use super::optim::{Adam, AdamConfig};
use crate::clip::LoadOptions;
use crate::data::cache::{file_sha256, ActivationCache};
use crate::disk::write_bytes_atomic;
use crate::extract::{extract, ExtractOptions};

/// Rows used to choose `input_scale` and `b_dec`.
const INIT_SAMPLE_ROWS: i64 = 65_536;

/// Everything `train` needs besides the config.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub config: TrainConfig,
    pub device: Device,
    /// How to load the CLIP model when the config asks to extract first.
    pub model_load: LoadOptions,
    /// Continue this run directory instead of starting a new one.
    pub resume: Option<PathBuf>,
    /// Stop (as if interrupted) after this many epochs of this invocation.
    pub stop_after_epochs: Option<usize>,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub best_checkpoint: String,
    pub last_checkpoint: String,
    pub best_epoch: usize,
    pub best_val_evr: f64,
    #[serde(rename = "final")]
    pub final_metrics: FinalMetrics,
    pub steps: usize,
    pub epochs: usize,
    pub rows_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalMetrics {
    pub val_evr: f64,
    pub evr_seed: f64,
    pub val_l0: f64,
    pub dead_frac: f64,
}

/// What a finished (or stopped) run produced.
#[derive(Debug)]
pub struct TrainResult {
    pub run_dir: PathBuf,
    /// None when the run was stopped early on request.
    pub summary: Option<Summary>,
}

/// The files of a run directory (DESIGN.md "Run directory").
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("config.yaml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    pub fn last(&self) -> PathBuf {
        self.0.join("checkpoints/last.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.0.join("checkpoints/best.safetensors")
    }
    pub fn summary(&self) -> PathBuf {
        self.0.join("summary.json")
    }

    /// `<runs_dir>/<YYYYmmdd_HHMMSS>` (with a suffix if that exists), or `run_dir`.
    fn create(config: &TrainConfig) -> Result<RunDir> {
        let dir = match &config.output.run_dir {
            Some(d) => d.clone(),
            None => {
                let stamp = utc_stamp(std::time::SystemTime::now());
                let base = config.output.runs_dir.join(&stamp);
                let mut dir = base.clone();
                let mut n = 1;
                while dir.exists() {
                    dir = PathBuf::from(format!("{}-{n}", base.display()));
                    n += 1;
                }
                dir
            }
        };
        if dir.join("metrics.jsonl").exists() {
            bail!(
                "run directory {} already holds a run: continue it with --resume {0}, or choose another",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir.join("checkpoints"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(RunDir(dir))
    }
}

/// `YYYYmmdd_HHMMSS` in UTC.
fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}_{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The learning rate at `step` (0-based) of `total`: linear warm-up from lr/warmup to lr,
/// then the configured decay towards `lr · lr_end_fraction`.
pub fn learning_rate(t: &TrainingSection, step: usize, total: usize) -> f64 {
    if step < t.lr_warmup_steps {
        return t.lr * (step + 1) as f64 / t.lr_warmup_steps as f64;
    }
    let span = total.saturating_sub(t.lr_warmup_steps).max(1) as f64;
    let progress = ((step - t.lr_warmup_steps) as f64 / span).min(1.0);
    let end = t.lr_end_fraction;
    let shape = match t.lr_schedule {
        LrSchedule::Constant => return t.lr,
        LrSchedule::Linear => 1.0 - progress,
        LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    t.lr * (end + (1.0 - end) * shape)
}

/// k at `step`: from `k_start` up to `k` linearly over `k_warmup_steps`.
pub fn k_at(k: i64, k_start: Option<i64>, warmup: usize, step: usize) -> i64 {
    let start = k_start.unwrap_or(k);
    if warmup == 0 || step >= warmup {
        return k;
    }
    let f = step as f64 / warmup as f64;
    (start as f64 + (k - start) as f64 * f).round() as i64
}

/// The L1 coefficient at `step`: raised linearly from 0 over `warmup` steps.
pub fn l1_at(coef: f64, warmup: usize, step: usize) -> f64 {
    if warmup == 0 {
        coef
    } else {
        coef * ((step + 1) as f64 / warmup as f64).min(1.0)
    }
}

/// Validation (or any held-out) metrics of an SAE on some rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalMetrics {
    pub evr: f64,
    pub evr_seed: f64,
    pub l0: f64,
    /// Share of latents that never fired on these rows.
    pub never_fired: f64,
}

/// Evaluate `sae` (inference encoding) on `rows` of `acts`, in batches.
pub fn evaluate(sae: &Sae, acts: &Tensor, rows: &Tensor, batch_size: usize) -> EvalMetrics {
    let _guard = tch::no_grad_guard();
    let device = sae.device();
    let mut evr = Evr::new(sae.config.d_in, device);
    let mut firing = Firing::new(sae.config.d_sae, device);
    let n = rows.size()[0];
    let mut start = 0;
    while start < n {
        let len = (batch_size as i64).min(n - start);
        let x = acts
            .index_select(0, &rows.narrow(0, start, len))
            .to_device(device)
            .to_kind(Kind::Float);
        let codes = sae.encode_sparse(&x, sae.inference_selection());
        let x_hat = sae.decode_sparse(&codes);
        evr.update(&x, &x_hat);
        firing.update(&codes.fired(), len);
        start += len;
    }
    EvalMetrics {
        evr: evr.evr(),
        evr_seed: evr.evr_seed(),
        l0: firing.l0(),
        never_fired: firing.dead_fraction(),
    }
}

/// The data of a run: all rows (in the cache's dtype), the train and validation row
/// indices, and what the rows came from.
struct Data {
    acts: Tensor,
    train: Tensor,
    val: Tensor,
    clip: Value,
}

/// Find or make the cache the config points at.
fn resolve_cache(config: &mut TrainConfig, load: &LoadOptions) -> Result<ActivationCache> {
    let d = &config.data;
    let mut paths: Vec<PathBuf> = d
        .cache
        .iter()
        .cloned()
        .chain(d.caches.iter().cloned())
        .collect();
    if paths.is_empty() {
        let (Some(model), Some(dataset), Some(layer)) = (&d.model, &d.dataset, d.layer) else {
            bail!("data: give data.cache (an activation cache), or data.model, data.dataset and data.layer to extract one first");
        };
        let spec = dataset
            .parse()
            .with_context(|| format!("data.dataset = {dataset:?}"))?;
        let files = crate::clip::weights::resolve(model, load.format)?;
        let sha = file_sha256(&files.weights)?;
        let name = format!(
            "{}-{}-l{layer}-{}-{}{}",
            dataset.split(':').next().unwrap_or("data"),
            d.split.name(),
            d.tokens.name(),
            &sha[..12],
            d.limit.map_or(String::new(), |n| format!("-n{n}"))
        );
        let out = config.output.caches_dir.join(name);
        let mut o = ExtractOptions::new(model.clone(), spec, layer, out.clone());
        o.load = load.clone();
        o.split = d.split;
        o.tokens = d.tokens;
        o.dtype = d.dtype;
        o.limit = d.limit;
        let s = extract(&o)?;
        if s.already_complete {
            crate::ui::info(format!("reusing the activation cache {}", out.display()));
        }
        config.data.cache = Some(out.clone());
        paths.push(out);
    }
    for p in &paths {
        if !p.exists() {
            bail!(
                "data.cache {} does not exist: create it with `saeclip extract`",
                p.display()
            );
        }
    }
    ActivationCache::open_many(&paths)
}

fn load_data(cache: &ActivationCache, config: &TrainConfig, device: Device) -> Result<Data> {
    let m = cache.manifest();
    let all = cache.load_all(m.dtype.kind())?;
    // Hold out whole images: the same image never feeds both sides.
    let image_index = Vec::<i64>::try_from(&all.image_index)?;
    let mut images = image_index.clone();
    images.sort_unstable();
    images.dedup();
    let order = Vec::<i64>::try_from(&crate::rng::seeded(config.training.seed, || {
        Tensor::randperm(images.len() as i64, (Kind::Int64, Device::Cpu))
    }))?;
    let n_val = if config.data.val_fraction > 0.0 && images.len() >= 2 {
        ((images.len() as f64 * config.data.val_fraction).ceil() as usize)
            .clamp(1, images.len() - 1)
    } else {
        0
    };
    let val_images: std::collections::HashSet<i64> =
        order[..n_val].iter().map(|&i| images[i as usize]).collect();
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
        "data: {} rows of width {} from {} images ({} train rows, {} validation rows from {n_val} images)",
        image_index.len(),
        m.d_model,
        images.len(),
        train.len(),
        val.len()
    ));
    Ok(Data {
        acts: all.activations.to_device(device),
        train: Tensor::from_slice(&train).to_device(device),
        val: Tensor::from_slice(&val).to_device(device),
        clip: json!({"model": m.model.path, "sha256": m.model.sha256, "layer": m.layer, "tokens": m.tokens}),
    })
}

/// One JSON line to `metrics.jsonl`.
fn log_line(file: &mut std::fs::File, value: &Value) -> Result<()> {
    writeln!(file, "{value}")?;
    file.flush()?;
    Ok(())
}

/// Keep the metric lines up to `step` (an interrupted run may have logged past its last
/// checkpoint) and drop a truncated last line.
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    write_bytes_atomic(path, out.as_bytes())
}

fn finite(name: &str, value: f64, step: usize) -> Result<()> {
    if !value.is_finite() {
        bail!(
            "{name} became {value} at step {step}: training stopped; the last good checkpoint is kept (try a lower training.lr or training.grad_clip)"
        );
    }
    Ok(())
}

pub fn train(o: &TrainOptions) -> Result<TrainResult> {
    let mut config = o.config.clone();
    let device = o.device;
    // A resumed run takes its config, data and state from the run directory.
    let (run, resumed) = match &o.resume {
        Some(dir) => {
            let run = RunDir(dir.clone());
            ensure!(
                run.last().exists(),
                "{} has no checkpoints/last.safetensors to resume from",
                dir.display()
            );
            config = TrainConfig::load(&run.config(), &[])?;
            (run, true)
        }
        None => (RunDir(PathBuf::new()), false),
    };
    let cache = resolve_cache(&mut config, &o.model_load)?;
    let d_in = cache.d_model();
    config.validate(d_in)?;
    let run = if resumed {
        run
    } else {
        RunDir::create(&config)?
    };
    if !resumed {
        write_bytes_atomic(&run.config(), serde_yaml_ng::to_string(&config)?.as_bytes())?;
    }
    let data = load_data(&cache, &config, device)?;
    let t = config.training.clone();
    let s = config.sae.clone();
    let sae_config = SaeConfig {
        architecture: s.architecture,
        d_in,
        d_sae: config.d_sae(d_in),
        k: s.k,
    };
    sae_config.validate()?;
    let k_aux = config.k_aux(d_in);
    let n_train = data.train.size()[0] as usize;
    let steps_per_epoch = n_train.div_ceil(t.batch_size);
    let total_steps = t.steps.unwrap_or(t.epochs * steps_per_epoch);
    let epochs = total_steps.div_ceil(steps_per_epoch);
    let meta = |metrics: Value| CheckpointMeta {
        clip: data.clip.clone(),
        training: serde_json::to_value(&config).unwrap_or_default(),
        metrics,
    };

    // State: fresh, or from the last checkpoint.
    let adam_config = AdamConfig {
        beta1: t.adam_betas[0],
        beta2: t.adam_betas[1],
        eps: t.adam_eps,
    };
    let (mut sae, mut adam, mut dead, mut threshold, mut step, first_epoch, mut best) = if resumed {
        let c = checkpoint::load(&run.last(), device)?;
        let st = c
            .training
            .with_context(|| format!("{} is not a training checkpoint", run.last().display()))?;
        let rows_since = st
            .tensors
            .iter()
            .find(|(n, _)| n == "rows_since_fired")
            .map(|(_, t)| t.to_device(device))
            .context("the checkpoint lacks the dead-latent counters")?;
        let mut dead = DeadTracker::new(sae_config.d_sae, t.dead_window as i64, device);
        dead.rows_since_fired = rows_since;
        let best = (
            st.extra["best_val_evr"]
                .as_f64()
                .unwrap_or(f64::NEG_INFINITY),
            st.extra["best_epoch"].as_u64().unwrap_or(0) as usize,
        );
        truncate_metrics(&run.metrics(), st.step as usize)?;
        crate::ui::info(format!(
            "resuming {} after epoch {} (step {})",
            run.0.display(),
            st.epoch,
            st.step
        ));
        (
            c.sae,
            st.adam,
            dead,
            st.threshold,
            st.step as usize,
            st.epoch as usize,
            best,
        )
    } else {
        let n = data.train.size()[0];
        let pick = crate::rng::seeded(t.seed, || Tensor::randperm(n, (Kind::Int64, Device::Cpu)))
            .narrow(0, 0, n.min(INIT_SAMPLE_ROWS))
            .to_device(device);
        let sample = data
            .acts
            .index_select(0, &data.train.index_select(0, &pick))
            .to_kind(Kind::Float);
        let mut sae = Sae::init(&sae_config, &sample, s.b_dec_init, t.seed)?;
        if s.w_enc_init == WEncInit::ScaledTranspose {
            let k0 = k_at(s.k, t.k_start, t.k_warmup_steps, 0);
            let gain = sae.fit_encoder_gain(&sample, sae.training_selection(k0))?;
            crate::ui::debug(format!("W_enc = W_decᵀ × {gain:.4} (least-squares gain)"));
        }
        let adam = Adam::new(&sae, adam_config);
        let dead = DeadTracker::new(sae_config.d_sae, t.dead_window as i64, device);
        let threshold = (s.architecture == Architecture::BatchTopK)
            .then(|| ThresholdEstimator::new(None, device));
        (sae, adam, dead, threshold, 0, 0, (f64::NEG_INFINITY, 0))
    };
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.metrics())
        .with_context(|| format!("cannot open {}", run.metrics().display()))?;
    crate::ui::info(format!(
        "training {} SAE {d_in}→{} (k={}), {total_steps} steps of {} rows over {epochs} epochs, into {}",
        s.architecture,
        sae_config.d_sae,
        s.k,
        t.batch_size,
        run.0.display()
    ));

    let bar = crate::ui::progress_bar(
        total_steps as u64,
        "{spinner} train [{elapsed_precise}] {bar:30} {pos}/{len} steps {msg}",
    );
    bar.set_position(step as u64);
    let mut workspace = Workspace::new();
    let started = Instant::now();
    let mut rows_done = 0usize;
    // Time spent in training steps only (not validation or checkpoints): rows/s.
    let mut train_seconds = 0.0f64;
    let mut last_eval = None;
    for epoch in first_epoch..epochs {
        if o.stop_after_epochs
            .is_some_and(|n| epoch - first_epoch >= n)
        {
            bar.finish_and_clear();
            return Ok(TrainResult {
                run_dir: run.0.clone(),
                summary: None,
            });
        }
        // The shuffle depends only on (seed, epoch).
        let shuffle_seed = t
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(epoch as i64 + 1);
        let perm = crate::rng::seeded(shuffle_seed, || {
            Tensor::randperm(n_train as i64, (Kind::Int64, Device::Cpu))
        })
        .to_device(device);
        let order = data.train.index_select(0, &perm);
        let mut train_evr = Evr::new(d_in, device);
        let mut train_firing = Firing::new(sae_config.d_sae, device);
        let mut sums = [
            Tensor::zeros([], (Kind::Double, device)),
            Tensor::zeros([], (Kind::Double, device)),
            Tensor::zeros([], (Kind::Double, device)),
        ];
        let mut epoch_steps = 0i64;
        let (mut lr, mut k) = (t.lr, s.k);
        let mut start = 0usize;
        let epoch_started = Instant::now();
        while start < n_train && step < total_steps {
            let len = t.batch_size.min(n_train - start);
            let x = data
                .acts
                .index_select(0, &order.narrow(0, start as i64, len as i64))
                .to_kind(Kind::Float);
            lr = learning_rate(&t, step, total_steps);
            k = k_at(s.k, t.k_start, t.k_warmup_steps, step);
            let options = LossOptions {
                k,
                k_aux,
                aux_coef: s.aux_coef,
                l1_coef: l1_at(s.l1_coef, t.l1_warmup_steps, step),
            };
            let dead_mask = dead.mask();
            let out = forward_backward(&sae, &x, Some(&dead_mask), &options, &mut workspace);
            dead.update(&out.fired, len as i64);
            if let Some(th) = threshold.as_mut() {
                th.update(&out.min_positive);
            }
            train_evr.update(&x, &out.x_hat);
            train_firing.update(&out.fired, len as i64);
            sums[0] += &out.loss;
            sums[1] += &out.mse;
            sums[2] += &out.aux;
            let clip = (t.grad_clip > 0.0).then_some(t.grad_clip);
            let _grad_norm = adam.step(&mut sae, out.grads, lr, clip);
            step += 1;
            epoch_steps += 1;
            rows_done += len;
            start += len;
            bar.inc(1);
            if step % t.log_every == 0 {
                let loss = out.loss.double_value(&[]);
                finite("the loss", loss, step)?;
                let batch_evr = {
                    let mut e = Evr::new(d_in, device);
                    e.update(&x, &out.x_hat);
                    e.evr()
                };
                let l0 = out.l0.double_value(&[]);
                log_line(
                    &mut metrics_file,
                    &json!({"type": "step", "step": step, "epoch": epoch + 1, "loss": loss, "mse": out.mse.double_value(&[]),
                            "aux_loss": out.aux.double_value(&[]), "l0": l0, "evr": batch_evr, "lr": lr, "k": k,
                            "time": started.elapsed().as_secs_f64()}),
                )?;
                let rate = rows_done as f64
                    / (train_seconds + epoch_started.elapsed().as_secs_f64()).max(1e-9);
                bar.set_message(format!(
                    "epoch {}/{epochs} {rate:.0} rows/s evr {batch_evr:.4} l0 {l0:.1}",
                    epoch + 1
                ));
            }
        }
        // End of epoch: validation, the epoch line, checkpoints.
        let mean = |t: &Tensor| t.double_value(&[]) / epoch_steps.max(1) as f64;
        let loss = mean(&sums[0]); // reading it waits for the device to finish the epoch
        train_seconds += epoch_started.elapsed().as_secs_f64();
        finite("the loss", loss, step)?;
        for (name, p) in [("W_enc", &sae.w_enc), ("W_dec", &sae.w_dec)] {
            let ok = p.isfinite().all().int64_value(&[]) != 0;
            ensure!(ok, "{name} holds non-finite values at step {step}: training stopped; the last good checkpoint is kept");
        }
        sae.threshold = threshold.as_ref().and_then(|th| th.value());
        // Without a validation split, the end-of-epoch SAE is evaluated on the training rows.
        let held_out = if data.val.size()[0] > 0 {
            &data.val
        } else {
            &data.train
        };
        let val = evaluate(&sae, &data.acts, held_out, t.batch_size);
        let dead_frac = dead.dead_fraction().double_value(&[]);
        let epoch_line = json!({
            "type": "epoch", "step": step, "epoch": epoch + 1, "loss": loss, "mse": mean(&sums[1]), "aux_loss": mean(&sums[2]),
            "l0": train_firing.l0(), "evr": train_evr.evr(), "evr_seed": train_evr.evr_seed(), "lr": lr, "k": k,
            "val_evr": val.evr, "val_evr_seed": val.evr_seed, "val_l0": val.l0, "dead_frac": dead_frac,
            "time": started.elapsed().as_secs_f64(), "rows_per_s": rows_done as f64 / train_seconds.max(1e-9),
        });
        let metrics = json!({"epoch": epoch + 1, "step": step, "val_evr": val.evr, "val_evr_seed": val.evr_seed, "val_l0": val.l0, "dead_frac": dead_frac});
        if val.evr > best.0 {
            best = (val.evr, epoch + 1);
            checkpoint::save(&run.best(), &sae, &meta(metrics.clone()), None, Kind::Float)?;
        }
        let state = TrainingStateRef {
            step: step as u64,
            epoch: (epoch + 1) as u64,
            adam: &adam,
            threshold: threshold.as_ref(),
            tensors: vec![("rows_since_fired".to_string(), &dead.rows_since_fired)],
            extra: json!({"best_val_evr": best.0, "best_epoch": best.1}),
        };
        checkpoint::save(&run.last(), &sae, &meta(metrics), Some(&state), Kind::Float)?;
        log_line(&mut metrics_file, &epoch_line)?;
        last_eval = Some((val, dead_frac));
    }
    bar.finish_and_clear();
    let (val, dead_frac) = match last_eval {
        Some(v) => v,
        None => {
            // Resumed after the last epoch: report from the checkpoint.
            let v = evaluate(
                &sae,
                &data.acts,
                if data.val.size()[0] > 0 {
                    &data.val
                } else {
                    &data.train
                },
                t.batch_size,
            );
            (v, dead.dead_fraction().double_value(&[]))
        }
    };
    let summary = Summary {
        best_checkpoint: "checkpoints/best.safetensors".into(),
        last_checkpoint: "checkpoints/last.safetensors".into(),
        best_epoch: best.1,
        best_val_evr: best.0,
        final_metrics: FinalMetrics {
            val_evr: val.evr,
            evr_seed: val.evr_seed,
            val_l0: val.l0,
            dead_frac,
        },
        steps: step,
        epochs,
        rows_per_s: rows_done as f64 / train_seconds.max(1e-9),
    };
    write_bytes_atomic(
        &run.summary(),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(TrainResult {
        run_dir: run.0.clone(),
        summary: Some(summary),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_decay() {
        let mut t = TrainingSection {
            lr: 1.0,
            lr_warmup_steps: 4,
            ..Default::default()
        };
        assert_eq!(learning_rate(&t, 0, 104), 0.25);
        assert_eq!(learning_rate(&t, 3, 104), 1.0);
        assert!((learning_rate(&t, 4, 104) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&t, 54, 104) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&t, 103, 104) < 1e-3);
        t.lr_schedule = LrSchedule::Linear;
        assert!((learning_rate(&t, 54, 104) - 0.5).abs() < 1e-12);
        t.lr_end_fraction = 0.1;
        assert!((learning_rate(&t, 104, 104) - 0.1).abs() < 1e-12);
        t.lr_schedule = LrSchedule::Constant;
        assert_eq!(learning_rate(&t, 80, 104), 1.0);
    }

    #[test]
    fn k_warmup_reaches_k() {
        assert_eq!(k_at(64, Some(256), 100, 0), 256);
        assert_eq!(k_at(64, Some(256), 100, 50), 160);
        assert_eq!(k_at(64, Some(256), 100, 100), 64);
        assert_eq!(k_at(64, Some(256), 100, 5000), 64);
        assert_eq!(k_at(64, None, 100, 0), 64);
        assert_eq!(k_at(64, Some(8), 0, 0), 64);
    }

    #[test]
    fn l1_warmup_is_linear() {
        assert_eq!(l1_at(2.0, 0, 0), 2.0);
        assert_eq!(l1_at(2.0, 4, 0), 0.5);
        assert_eq!(l1_at(2.0, 4, 3), 2.0);
        assert_eq!(l1_at(2.0, 4, 10), 2.0);
    }

    #[test]
    fn utc_stamps() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_769_099);
        assert_eq!(utc_stamp(t), "20261127_084459");
        assert_eq!(utc_stamp(std::time::UNIX_EPOCH), "19700101_000000");
    }
}
