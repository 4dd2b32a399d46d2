//! `train`: fit an SAE to an activation cache, one visible loop (nanoGPT train.py).
//!
//! Reads top to bottom: resolve the data (extracting it first if the config names a model
//! and dataset), open its batches (in memory or streamed from the shards, split by image
//! into train and validation rows: see [`batches`]), initialise the SAE from a
//! sample, then for each epoch: its batches, steps of forward/backward/Adam with the
//! learning-rate, k and L1 schedules, a step line every `log_every` steps, and at the end
//! of the epoch a validation pass, an epoch line and the checkpoints (with
//! `training.checkpoint_every`, also a mid-epoch `latest` checkpoint every N steps). Scalars
//! are read off the device only at log intervals, mid-epoch checkpoints and epoch ends.
//!
//! Determinism: the batches of epoch e depend only on (seed, e), and a training
//! checkpoint holds everything else the loop carries (Adam, dead-latent counters, the
//! batchtopk threshold, the best score, mid-epoch the epoch's statistics and the batches
//! drawn), so on CPU a run resumed at an epoch boundary or mid-epoch ends bit-identical to
//! an uninterrupted one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

pub mod batches;
pub mod optim;
pub mod sweep;

use self::batches::{BatchIter, Batches};
use self::optim::{Adam, AdamConfig};
use self::sweep::{expand, MemberSpec, SweepFile, SWEEP_FILE};
use crate::clip::LoadOptions;
use crate::data::cache::{file_sha256, ActivationCache};
use crate::disk::write_bytes_atomic;
use crate::extract::{extract, ExtractOptions};
use crate::sae::checkpoint::{self, CheckpointMeta, TrainingStateRef};
use crate::sae::config::{DataLoad, LrSchedule, SaeSection, TrainConfig, TrainingSection};
use crate::sae::matryoshka::prefix_evr_over;
use crate::sae::model::{Architecture, Sae, SaeConfig, Selection, WEncInit};
use crate::sae::objective::{
    data_variance, forward_backward, DeadTracker, Evr, Firing, LossOptions, StepOutput,
    ThresholdEstimator, Workspace,
};
pub use crate::sae::summary::{FinalMetrics, Summary};

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
    /// Stop (as if killed) after this many steps of this invocation, mid-epoch or not.
    pub stop_after_steps: Option<usize>,
}

/// What a finished (or stopped) run produced.
#[derive(Debug)]
pub struct TrainResult {
    /// The run directory (a sweep's, for a sweep).
    pub run_dir: PathBuf,
    /// A single run's summary; None when the run was stopped early on request, and for a
    /// sweep.
    pub summary: Option<Summary>,
    /// A sweep's members, in `sweep.json` order (empty for a single run).
    pub members: Vec<MemberResult>,
}

/// One member of a sweep after `train`.
#[derive(Debug)]
pub struct MemberResult {
    pub name: String,
    pub run_dir: PathBuf,
    /// None when the sweep was stopped early on request.
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
    /// The newest mid-epoch training checkpoint (`training.checkpoint_every`), removed once
    /// its epoch's `last.safetensors` is written.
    pub fn latest(&self) -> PathBuf {
        self.0.join("checkpoints/latest.safetensors")
    }

    /// The training checkpoint to resume from: the further along of `last` and `latest`
    /// by their data position (epoch, batches drawn); None when there is neither.
    pub fn resume_point(&self) -> Result<Option<PathBuf>> {
        let mut found: Option<((u64, u64), PathBuf)> = None;
        for path in [self.last(), self.latest()] {
            if !path.exists() {
                continue;
            }
            let data = &checkpoint::read_extra(&path)?["data"];
            let at = (
                data["epoch"].as_u64().unwrap_or(0),
                data["batches_drawn"].as_u64().unwrap_or(0),
            );
            if found.as_ref().is_none_or(|(best, _)| at > *best) {
                found = Some((at, path));
            }
        }
        Ok(found.map(|(_, path)| path))
    }
    pub fn summary(&self) -> PathBuf {
        self.0.join("summary.json")
    }

    /// `<runs_dir>/<YYYYmmdd_HHMMSS>` (with a suffix if that exists), or `run_dir`; with
    /// `checkpoints/`, except for a sweep (whose members have their own).
    fn create(config: &TrainConfig, sweep: bool) -> Result<RunDir> {
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
        if dir.join("metrics.jsonl").exists() || dir.join(SWEEP_FILE).exists() {
            bail!(
                "run directory {} already holds a run: continue it with --resume {0}, or choose another",
                dir.display()
            );
        }
        let made = if sweep {
            dir.clone()
        } else {
            dir.join("checkpoints")
        };
        std::fs::create_dir_all(made)
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

/// The learning rate at `step` (0-based) of `total` for a peak rate `lr`: linear warm-up
/// from lr/warmup to lr, the peak held, then the configured decay towards
/// `lr · lr_end_fraction` over the last `lr_decay_fraction` of the steps after the warm-up.
pub fn learning_rate(t: &TrainingSection, lr: f64, step: usize, total: usize) -> f64 {
    if step < t.lr_warmup_steps {
        return lr * (step + 1) as f64 / t.lr_warmup_steps as f64;
    }
    let after_warmup = total.saturating_sub(t.lr_warmup_steps) as f64;
    let span = (after_warmup * t.lr_decay_fraction).round().max(1.0);
    let decay_start = t.lr_warmup_steps as f64 + (after_warmup - span).max(0.0);
    let progress = ((step as f64 - decay_start) / span).clamp(0.0, 1.0);
    let end = t.lr_end_fraction;
    let shape = match t.lr_schedule {
        LrSchedule::Constant => return lr,
        LrSchedule::Linear => 1.0 - progress,
        LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    lr * (end + (1.0 - end) * shape)
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
}

/// Evaluate `sae` (inference encoding) on `batches` of held-out rows.
pub fn evaluate(sae: &Sae, batches: BatchIter<'_>) -> Result<EvalMetrics> {
    let _guard = tch::no_grad_guard();
    let device = sae.device();
    let mut evr = Evr::new(sae.config.d_in, device);
    let mut firing = Firing::new(sae.config.d_sae, device);
    for x in batches {
        let x = x?.to_device(device);
        let codes = sae.encode_sparse(&x, sae.inference_selection());
        let x_hat = sae.decode_sparse(&codes);
        evr.update(&x, &x_hat);
        firing.update(&codes.fired(), x.size()[0]);
    }
    Ok(EvalMetrics {
        evr: evr.evr(),
        evr_seed: evr.evr_seed(),
        l0: firing.l0(),
    })
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

/// An open run: its directory, `metrics.jsonl` open for appending, and what every
/// checkpoint's header records besides the metrics.
struct RunFiles {
    dir: RunDir,
    metrics: std::fs::File,
    clip: Value,
    training: Value,
}

impl RunFiles {
    fn open(dir: RunDir, clip: Value, config: &TrainConfig) -> Result<RunFiles> {
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.metrics())
            .with_context(|| format!("cannot open {}", dir.metrics().display()))?;
        Ok(RunFiles {
            dir,
            metrics,
            clip,
            training: serde_json::to_value(config)?,
        })
    }

    fn meta(&self, metrics: Value) -> CheckpointMeta {
        CheckpointMeta {
            clip: self.clip.clone(),
            training: self.training.clone(),
            metrics,
        }
    }

    /// One JSON line to `metrics.jsonl`.
    fn log(&mut self, value: &Value) -> Result<()> {
        writeln!(self.metrics, "{value}")?;
        self.metrics.flush()?;
        Ok(())
    }
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

/// The schedules of a run, fixed by the config and the number of training rows: what
/// every step's learning rate, k and L1 coefficient are.
#[derive(Debug, Clone)]
pub struct Plan {
    pub training: TrainingSection,
    pub sae: SaeSection,
    pub k_aux: i64,
    /// `training.lr` for this SAE's width.
    pub peak_lr: f64,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    pub epochs: usize,
    /// min(`training.dead_window`, rows per epoch): see [`DeadTracker`].
    pub dead_window: i64,
    /// First step whose batch feeds batchtopk's threshold estimate: the end of the k
    /// warm-up (the last step when the warm-up outlasts the run).
    pub threshold_start: usize,
}

impl Plan {
    pub fn new(config: &TrainConfig, n_train: usize, d_in: i64) -> Plan {
        let t = config.training.clone();
        let steps_per_epoch = n_train.div_ceil(t.batch_size).max(1);
        let total_steps = t.steps.unwrap_or(t.epochs * steps_per_epoch);
        Plan {
            k_aux: config.k_aux(d_in),
            peak_lr: t.lr.for_width(config.d_sae(d_in)),
            epochs: total_steps.div_ceil(steps_per_epoch),
            dead_window: t.dead_window.min(n_train) as i64,
            threshold_start: t.k_warmup_steps.min(total_steps.saturating_sub(1)),
            steps_per_epoch,
            total_steps,
            sae: config.sae.clone(),
            training: t,
        }
    }

    pub fn lr(&self, step: usize) -> f64 {
        learning_rate(&self.training, self.peak_lr, step, self.total_steps)
    }

    pub fn k(&self, step: usize) -> i64 {
        k_at(
            self.sae.k,
            self.training.k_start,
            self.training.k_warmup_steps,
            step,
        )
    }

    fn loss_options(&self, step: usize, data_variance: f64) -> LossOptions {
        // jumprelu's L0 (or tanh) penalty travels in `l1_coef`, with its own warm-up.
        let sparsity = if self.sae.architecture == Architecture::JumpRelu {
            l1_at(self.sae.l0_coef, self.training.l0_warmup_steps, step)
        } else {
            l1_at(self.sae.l1_coef, self.training.l1_warmup_steps, step)
        };
        LossOptions {
            k: self.k(step),
            k_aux: self.k_aux,
            aux_coef: self.sae.aux_coef,
            l1_coef: sparsity,
            data_variance,
        }
    }
}

/// One SAE's training state: parameters, Adam, dead-latent counters, batchtopk's threshold
/// estimate and σ², with the step that moves them.
#[derive(Debug)]
pub struct Trainer {
    pub sae: Sae,
    pub adam: Adam,
    pub dead: DeadTracker,
    pub threshold: Option<ThresholdEstimator>,
    /// σ² of the training rows in the scaled space (see [`data_variance`]).
    pub data_variance: f64,
    workspace: Workspace,
}

/// What one step reports; scalars (0-dim f32) stay on the device until a log line reads
/// them.
#[derive(Debug)]
pub struct StepReport {
    pub loss: Tensor,
    pub mse: Tensor,
    pub aux: Tensor,
    pub l0: Tensor,
    /// ‖gradient‖ before clipping.
    pub grad_norm: Tensor,
    /// Rows in which each latent was positive. [F] i64
    pub fired: Tensor,
    /// The reconstruction in the original space. [B, D] f32
    pub x_hat: Tensor,
    /// matryoshka: each prefix's reconstruction alone (empty otherwise). M·[B, D] f32
    pub prefix_x_hat: Vec<Tensor>,
    pub lr: f64,
    pub k: i64,
}

impl Trainer {
    /// A fresh SAE initialised from a sample of the training rows.
    fn fresh(
        config: &TrainConfig,
        plan: &Plan,
        sae_config: &SaeConfig,
        sample: &Tensor,
    ) -> Result<Trainer> {
        let (s, t) = (&config.sae, &config.training);
        let mut sae = Sae::init(sae_config, sample, s.b_dec_init, t.seed)?;
        match sae_config.architecture {
            Architecture::JumpRelu => {
                sae.set_jumprelu(s.jumprelu_init_threshold, config.jumprelu_params()?)?
            }
            Architecture::Matryoshka => {
                sae.set_matryoshka(config.matryoshka_params(sae_config.d_sae)?)?
            }
            _ => {}
        }
        if s.w_enc_init == WEncInit::ScaledTranspose {
            // jumprelu: the gain of its θ → 0 limit, ReLU.
            let selection = match sae.training_selection(plan.k(0)) {
                Selection::JumpRelu => Selection::Relu,
                other => other,
            };
            let gain = sae.fit_encoder_gain(sample, selection)?;
            crate::ui::debug(format!("W_enc = W_decᵀ × {gain:.4} (least-squares gain)"));
        }
        let data_variance = data_variance(sample, sae.input_scale)?;
        let device = sae.device();
        Ok(Trainer {
            adam: Adam::new(&sae, adam_config(t)),
            dead: DeadTracker::new(sae_config.d_sae, plan.dead_window, device),
            threshold: matches!(sae.training_selection(1), Selection::BatchTopK(_))
                .then(|| ThresholdEstimator::new(Some(t.threshold_decay), device)),
            data_variance,
            workspace: Workspace::new(),
            sae,
        })
    }

    /// Forward, backward and the Adam step on batch `x` [B, D] at step `step` of `plan`.
    pub fn step(&mut self, x: &Tensor, plan: &Plan, step: usize) -> StepReport {
        let options = plan.loss_options(step, self.data_variance);
        let lr = plan.lr(step);
        let dead_mask = self.dead.auxk_mask();
        let StepOutput {
            loss,
            mse,
            aux,
            l0,
            grads,
            fired,
            min_positive,
            x_hat,
            prefix_x_hat,
            ..
        } = forward_backward(
            &self.sae,
            x,
            Some(&dead_mask),
            &options,
            &mut self.workspace,
        );
        self.dead.update(&fired, x.size()[0]);
        if let Some(th) = self.threshold.as_mut() {
            if step >= plan.threshold_start {
                th.update(&min_positive);
            }
        }
        let clip = (plan.training.grad_clip > 0.0).then_some(plan.training.grad_clip);
        let grad_norm = self.adam.step(&mut self.sae, grads, lr, clip);
        StepReport {
            loss,
            mse,
            aux,
            l0,
            grad_norm,
            fired,
            x_hat,
            prefix_x_hat,
            lr,
            k: options.k,
        }
    }
}

fn adam_config(t: &TrainingSection) -> AdamConfig {
    AdamConfig {
        beta1: t.adam_betas[0],
        beta2: t.adam_betas[1],
        eps: t.adam_eps,
    }
}

/// Where a run stands: what a training checkpoint records besides the trainer (and, mid-epoch,
/// the epoch's statistics so far).
#[derive(Debug, Clone, Copy)]
struct Progress {
    step: usize,
    /// Epochs completed (mid-epoch: the epoch under way).
    epoch: usize,
    best_val_evr: f64,
    best_epoch: usize,
}

/// The trainer and progress of a training checkpoint (a run's `checkpoints/last.safetensors`
/// or `latest.safetensors`), with the statistics of the epoch in flight when it is one of
/// `latest`'s.
fn load_trainer(
    path: &Path,
    plan: &Plan,
    device: Device,
) -> Result<(Trainer, Progress, Option<EpochStats>)> {
    let c = checkpoint::load(path, device)?;
    let st = c
        .training
        .with_context(|| format!("{} is not a training checkpoint", path.display()))?;
    let rows_since = st
        .tensors
        .iter()
        .find(|(n, _)| n == "rows_since_fired")
        .map(|(_, t)| t.to_device(device))
        .with_context(|| format!("{} lacks the dead-latent counters", path.display()))?;
    let mut dead = DeadTracker::new(c.sae.config.d_sae, plan.dead_window, device);
    dead.rows_since_fired = rows_since;
    // Checkpoints before `rows_seen` was recorded: the rows of the steps taken.
    dead.rows_seen = st.extra["rows_seen"]
        .as_i64()
        .unwrap_or((st.step as usize * plan.training.batch_size) as i64);
    let progress = Progress {
        step: st.step as usize,
        epoch: st.epoch as usize,
        best_val_evr: st.extra["best_val_evr"]
            .as_f64()
            .unwrap_or(f64::NEG_INFINITY),
        best_epoch: st.extra["best_epoch"].as_u64().unwrap_or(0) as usize,
    };
    let stats = match &st.extra["epoch_stats"] {
        Value::Null => None,
        saved => Some(
            EpochStats::restore(saved, &st.tensors)
                .with_context(|| format!("{}: the epoch's statistics", path.display()))?,
        ),
    };
    let trainer = Trainer {
        sae: c.sae,
        adam: st.adam,
        dead,
        threshold: st.threshold,
        // Runs from before σ² trained on the plain mean squared error, i.e. σ² = 1.
        data_variance: st.extra["data_variance"].as_f64().unwrap_or(1.0),
        workspace: Workspace::new(),
    };
    Ok((trainer, progress, stats))
}

impl Trainer {
    /// The trainer saved in a training checkpoint, to continue with `plan`.
    pub fn from_checkpoint(path: &Path, plan: &Plan, device: Device) -> Result<Trainer> {
        Ok(load_trainer(path, plan, device)?.0)
    }
}

/// Per-epoch sums of the training steps' metrics (on the device).
#[derive(Debug)]
struct EpochStats {
    evr: Evr,
    /// matryoshka: one per prefix (empty otherwise).
    prefix_evr: Vec<Evr>,
    firing: Firing,
    loss: Tensor,
    mse: Tensor,
    aux: Tensor,
    steps: i64,
    /// The last step's learning rate and k.
    last_lr: f64,
    last_k: i64,
}

impl EpochStats {
    fn new(d_in: i64, d_sae: i64, device: Device) -> EpochStats {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        EpochStats {
            evr: Evr::new(d_in, device),
            prefix_evr: Vec::new(),
            firing: Firing::new(d_sae, device),
            loss: zero(),
            mse: zero(),
            aux: zero(),
            steps: 0,
            last_lr: f64::NAN,
            last_k: 0,
        }
    }

    fn add(&mut self, x: &Tensor, r: &StepReport) {
        self.evr.update(x, &r.x_hat);
        if self.prefix_evr.len() != r.prefix_x_hat.len() {
            let d_in = x.size()[1];
            self.prefix_evr = r
                .prefix_x_hat
                .iter()
                .map(|_| Evr::new(d_in, x.device()))
                .collect();
        }
        for (e, p) in self.prefix_evr.iter_mut().zip(&r.prefix_x_hat) {
            e.update(x, p);
        }
        self.firing.update(&r.fired, x.size()[0]);
        self.loss += &r.loss;
        self.mse += &r.mse;
        self.aux += &r.aux;
        self.steps += 1;
        self.last_lr = r.lr;
        self.last_k = r.k;
    }

    /// The mean of a per-step sum (reading it waits for the device).
    fn mean(&self, sum: &Tensor) -> f64 {
        sum.double_value(&[]) / self.steps.max(1) as f64
    }

    /// The sums as a mid-epoch checkpoint stores them, exactly: tensors saved as
    /// `train.epoch.<name>` and the scalars of `extra.epoch_stats`.
    fn saved(&self) -> (Vec<(String, &Tensor)>, Value) {
        let tensors = [
            ("sq_err", &self.evr.sq_err),
            ("sum", &self.evr.sum),
            ("sum_sq", &self.evr.sum_sq),
            ("seed_sum", &self.evr.seed_sum),
            ("fired", &self.firing.counts),
            ("loss", &self.loss),
            ("mse", &self.mse),
            ("aux", &self.aux),
        ]
        .into_iter()
        .map(|(n, t)| (format!("epoch.{n}"), t));
        // matryoshka: each prefix's sums (their row counts equal the epoch's).
        let prefixes = self.prefix_evr.iter().enumerate().flat_map(|(i, e)| {
            [
                ("sq_err", &e.sq_err),
                ("sum", &e.sum),
                ("sum_sq", &e.sum_sq),
                ("seed_sum", &e.seed_sum),
            ]
            .map(|(n, t)| (format!("epoch.prefix{i}.{n}"), t))
        });
        let tensors = tensors.chain(prefixes).collect();
        let scalars = json!({"steps": self.steps, "rows": self.evr.rows, "seed_batches": self.evr.seed_batches,
                             "last_lr": self.last_lr, "last_k": self.last_k, "prefixes": self.prefix_evr.len()});
        (tensors, scalars)
    }

    /// The sums [`EpochStats::saved`] stored.
    fn restore(scalars: &Value, tensors: &[(String, Tensor)]) -> Result<EpochStats> {
        let t = |name: &str| -> Result<Tensor> {
            let full = format!("epoch.{name}");
            tensors
                .iter()
                .find(|(n, _)| *n == full)
                .map(|(_, t)| t.shallow_clone())
                .with_context(|| format!("tensor train.{full} is missing"))
        };
        let int = |key: &str| -> Result<i64> {
            scalars[key]
                .as_i64()
                .with_context(|| format!("extra.epoch_stats.{key} is missing"))
        };
        let rows = int("rows")?;
        let seed_batches = int("seed_batches")?;
        let prefixes = scalars["prefixes"].as_u64().unwrap_or(0) as usize;
        let prefix_evr = (0..prefixes)
            .map(|i| -> Result<Evr> {
                Ok(Evr {
                    sq_err: t(&format!("prefix{i}.sq_err"))?,
                    sum: t(&format!("prefix{i}.sum"))?,
                    sum_sq: t(&format!("prefix{i}.sum_sq"))?,
                    rows,
                    seed_sum: t(&format!("prefix{i}.seed_sum"))?,
                    seed_batches,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EpochStats {
            evr: Evr {
                sq_err: t("sq_err")?,
                sum: t("sum")?,
                sum_sq: t("sum_sq")?,
                rows,
                seed_sum: t("seed_sum")?,
                seed_batches,
            },
            prefix_evr,
            firing: Firing {
                counts: t("fired")?,
                rows,
            },
            loss: t("loss")?,
            mse: t("mse")?,
            aux: t("aux")?,
            steps: int("steps")?,
            last_lr: scalars["last_lr"]
                .as_f64()
                .context("extra.epoch_stats.last_lr is missing")?,
            last_k: int("last_k")?,
        })
    }
}

/// The step line of `metrics.jsonl` (reads the step's scalars off the device).
fn step_line(
    x: &Tensor,
    r: &StepReport,
    step: usize,
    epoch: usize,
    d_in: i64,
    time: f64,
) -> Result<Value> {
    let loss = r.loss.double_value(&[]);
    finite("the loss", loss, step)?;
    let mut e = Evr::new(d_in, x.device());
    e.update(x, &r.x_hat);
    let mut line = json!({"type": "step", "step": step, "epoch": epoch, "loss": loss, "mse": r.mse.double_value(&[]),
              "aux_loss": r.aux.double_value(&[]), "l0": r.l0.double_value(&[]), "evr": e.evr(),
              "grad_norm": r.grad_norm.double_value(&[]), "lr": r.lr, "k": r.k, "time": time});
    if !r.prefix_x_hat.is_empty() {
        let prefix: Vec<f64> = r
            .prefix_x_hat
            .iter()
            .map(|p| {
                let mut e = Evr::new(d_in, x.device());
                e.update(x, p);
                e.evr()
            })
            .collect();
        line["prefix_evr"] = json!(prefix);
    }
    Ok(line)
}

/// The end of an epoch: check the parameters, validate, write the checkpoints (best
/// before last), then the epoch line. Returns the validation metrics and dead fraction.
fn end_epoch(
    trainer: &mut Trainer,
    stats: &EpochStats,
    batches: &dyn Batches,
    files: &mut RunFiles,
    progress: &mut Progress,
    (time, rows_per_s): (f64, f64),
) -> Result<(EvalMetrics, f64)> {
    let step = progress.step;
    let epoch = progress.epoch;
    let loss = stats.mean(&stats.loss); // reading it waits for the device to finish the epoch
    finite("the loss", loss, step)?;
    let sae = &mut trainer.sae;
    for (name, p) in [("W_enc", &sae.w_enc), ("W_dec", &sae.w_dec)] {
        let ok = p.isfinite().all().int64_value(&[]) != 0;
        ensure!(ok, "{name} holds non-finite values at step {step}: training stopped; the last good checkpoint is kept");
    }
    sae.threshold = trainer.threshold.as_ref().and_then(|th| th.value());
    let val = evaluate(sae, batches.held_out()?)?;
    let dead_frac = trainer.dead.dead_fraction().double_value(&[]);
    let dead_window = trainer.dead.current_window();
    let (lr, k) = (stats.last_lr, stats.last_k);
    let epoch_line = json!({
        "type": "epoch", "step": step, "epoch": epoch, "loss": loss, "mse": stats.mean(&stats.mse), "aux_loss": stats.mean(&stats.aux),
        "l0": stats.firing.l0(), "evr": stats.evr.evr(), "evr_seed": stats.evr.evr_seed(), "lr": lr, "k": k,
        "val_evr": val.evr, "val_evr_seed": val.evr_seed, "val_l0": val.l0, "dead_frac": dead_frac, "dead_window": dead_window,
        "time": time, "rows_per_s": rows_per_s,
    });
    let mut epoch_line = epoch_line;
    let mut metrics = json!({"epoch": epoch, "step": step, "val_evr": val.evr, "val_evr_seed": val.evr_seed, "val_l0": val.l0,
                         "dead_frac": dead_frac, "dead_window": dead_window});
    if sae.config.architecture == Architecture::Matryoshka {
        let val_prefix = prefix_evr_over(sae, batches.held_out()?)?;
        let train_prefix: Vec<f64> = stats.prefix_evr.iter().map(Evr::evr).collect();
        epoch_line["prefix_widths"] = json!(sae.prefix_widths());
        epoch_line["prefix_evr"] = json!(train_prefix);
        epoch_line["val_prefix_evr"] = json!(val_prefix);
        metrics["val_prefix_evr"] = json!(val_prefix);
    }
    if val.evr > progress.best_val_evr {
        progress.best_val_evr = val.evr;
        progress.best_epoch = epoch;
        checkpoint::save(
            &files.dir.best(),
            &trainer.sae,
            &files.meta(metrics.clone()),
            None,
            Kind::Float,
        )?;
    }
    save_training(
        &files.dir.last(),
        trainer,
        files,
        progress,
        batches.state(epoch, 0),
        None,
        metrics,
    )?;
    let latest = files.dir.latest();
    if latest.exists() {
        std::fs::remove_file(&latest)
            .with_context(|| format!("cannot remove {}", latest.display()))?;
    }
    files.log(&epoch_line)?;
    Ok((val, dead_frac))
}

/// Write a training checkpoint to `path`: the trainer, the progress, the data position
/// `data` (`extra.data`) and, mid-epoch, the epoch's statistics so far.
fn save_training(
    path: &Path,
    trainer: &Trainer,
    files: &RunFiles,
    progress: &Progress,
    data: Value,
    stats: Option<&EpochStats>,
    metrics: Value,
) -> Result<()> {
    let mut tensors = vec![(
        "rows_since_fired".to_string(),
        &trainer.dead.rows_since_fired,
    )];
    let mut extra = json!({"best_val_evr": progress.best_val_evr, "best_epoch": progress.best_epoch,
                           "rows_seen": trainer.dead.rows_seen, "data_variance": trainer.data_variance,
                           "data": data});
    if let Some(stats) = stats {
        let (t, scalars) = stats.saved();
        tensors.extend(t);
        extra["epoch_stats"] = scalars;
    }
    let state = TrainingStateRef {
        step: progress.step as u64,
        epoch: progress.epoch as u64,
        adam: &trainer.adam,
        threshold: trainer.threshold.as_ref(),
        tensors,
        extra,
    };
    checkpoint::save(
        path,
        &trainer.sae,
        &files.meta(metrics),
        Some(&state),
        Kind::Float,
    )
}

/// The SAE a config asks for on inputs of width `d_in`.
fn sae_config(config: &TrainConfig, d_in: i64) -> SaeConfig {
    SaeConfig {
        architecture: config.sae.architecture,
        d_in,
        d_sae: config.d_sae(d_in),
        k: config.sae.k,
    }
}

/// What the members of a pass share when they are opened.
struct Shared<'a> {
    batches: &'a dyn Batches,
    /// What the rows came from, for checkpoint headers.
    clip: Value,
    d_in: i64,
    /// Continue from the members' last checkpoints.
    resume: bool,
    device: Device,
    /// The initialisation sample, drawn when the first fresh member needs it.
    sample: std::cell::OnceCell<Tensor>,
}

/// One configuration trained in this pass: its run directory, schedules, trainer and
/// progress. A single run is a pass with one member.
struct Member {
    /// The member's name in a sweep; None for a single run.
    name: Option<String>,
    config: TrainConfig,
    sae_config: SaeConfig,
    plan: Plan,
    trainer: Trainer,
    progress: Progress,
    /// The statistics of the epoch in flight, resumed from a mid-epoch checkpoint.
    stats: Option<EpochStats>,
    files: RunFiles,
    last_eval: Option<(EvalMetrics, f64)>,
}

impl Member {
    /// Open a member in `dir`: a fresh trainer, or (when `resume` and the directory holds
    /// a training checkpoint) the one saved in the further along of `last` and `latest`.
    fn open(
        name: Option<String>,
        dir: RunDir,
        config: TrainConfig,
        shared: &Shared<'_>,
    ) -> Result<Member> {
        let Shared {
            batches,
            ref clip,
            d_in,
            resume,
            device,
            ref sample,
        } = *shared;
        let sae_config = sae_config(&config, d_in);
        sae_config.validate()?;
        let plan = Plan::new(&config, batches.n_train(), d_in);
        let saved = if resume { dir.resume_point()? } else { None };
        let (trainer, progress, stats) = if let Some(path) = saved {
            let (trainer, progress, stats) = load_trainer(&path, &plan, device)?;
            batches
                .check_state(&checkpoint::read_extra(&path)?["data"])
                .with_context(|| format!("cannot resume {}", dir.0.display()))?;
            let found = trainer.sae.config;
            if sae_config.architecture == Architecture::Matryoshka {
                let want = config.matryoshka_params(sae_config.d_sae)?;
                ensure!(
                    trainer.sae.matryoshka.as_ref() == Some(&want),
                    "{} holds matryoshka prefixes {:?}, but its config.yaml asks for {want:?}",
                    dir.last().display(),
                    trainer.sae.matryoshka
                );
            }
            ensure!(
                found == sae_config,
                "{} holds a {} SAE {}→{} (k={}), but its config.yaml asks for {} {}→{} (k={})",
                path.display(),
                found.architecture,
                found.d_in,
                found.d_sae,
                found.k,
                sae_config.architecture,
                sae_config.d_in,
                sae_config.d_sae,
                sae_config.k
            );
            truncate_metrics(&dir.metrics(), progress.step)?;
            crate::ui::info(match stats {
                None => format!(
                    "resuming {} after epoch {} (step {})",
                    dir.0.display(),
                    progress.epoch,
                    progress.step
                ),
                Some(_) => format!(
                    "resuming {} in epoch {} at step {}",
                    dir.0.display(),
                    progress.epoch + 1,
                    progress.step
                ),
            });
            (trainer, progress, stats)
        } else {
            if resume {
                // A sweep member stopped before its first checkpoint: it starts again.
                truncate_metrics(&dir.metrics(), 0)?;
            }
            // The seed and the rows are shared, so every member draws the same sample.
            if sample.get().is_none() {
                let _ = sample.set(batches.init_sample(config.training.seed)?);
            }
            let sample = sample.get().expect("set above");
            let trainer = Trainer::fresh(&config, &plan, &sae_config, sample)?;
            let progress = Progress {
                step: 0,
                epoch: 0,
                best_val_evr: f64::NEG_INFINITY,
                best_epoch: 0,
            };
            (trainer, progress, None)
        };
        let files = RunFiles::open(dir, clip.clone(), &config)?;
        Ok(Member {
            name,
            config,
            sae_config,
            plan,
            trainer,
            progress,
            stats,
            files,
            last_eval: None,
        })
    }

    /// The summary of a member that has run all its epochs.
    fn summary(&self, batches: &dyn Batches, rows_per_s: f64) -> Result<Summary> {
        let (val, dead_frac) = match self.last_eval {
            Some(v) => v,
            // Resumed after the last epoch: report from the checkpoint.
            None => (
                evaluate(&self.trainer.sae, batches.held_out()?)?,
                self.trainer.dead.dead_fraction().double_value(&[]),
            ),
        };
        Ok(Summary {
            best_checkpoint: "checkpoints/best.safetensors".into(),
            last_checkpoint: "checkpoints/last.safetensors".into(),
            best_epoch: self.progress.best_epoch,
            best_val_evr: self.progress.best_val_evr,
            final_metrics: FinalMetrics {
                val_evr: val.evr,
                evr_seed: val.evr_seed,
                val_l0: val.l0,
                dead_frac,
                dead_window: Some(self.trainer.dead.current_window()),
            },
            steps: self.progress.step,
            epochs: self.plan.epochs,
            rows_per_s,
        })
    }
}

/// What `train` is asked to continue or start: the data config, and each member's name,
/// run directory and config (one unnamed member for a single run).
struct Layout {
    /// The run directory (a sweep's holds one directory per member).
    root: PathBuf,
    sweep: Option<SweepFile>,
    members: Vec<(Option<String>, RunDir, TrainConfig)>,
}

/// How a resumed run read its rows: the `data.load` its members' training checkpoints
/// record (memory for checkpoints written before streaming existed); None when no member
/// has a checkpoint yet.
fn recorded_load(layout: &Layout) -> Result<Option<DataLoad>> {
    for (_, run, _) in &layout.members {
        if let Some(path) = run.resume_point()? {
            let extra = checkpoint::read_extra(&path)?;
            return Ok(Some(match extra["data"]["load"].as_str() {
                Some("stream") => DataLoad::Stream,
                _ => DataLoad::Memory,
            }));
        }
    }
    Ok(None)
}

/// Read what a run directory (a single run's or a sweep's) holds to resume it.
fn resumed_layout(dir: &Path) -> Result<(TrainConfig, Layout)> {
    if !dir.join(SWEEP_FILE).exists() {
        let run = RunDir(dir.to_path_buf());
        ensure!(
            run.last().exists() || run.latest().exists(),
            "{} has no checkpoints/last.safetensors (or latest.safetensors) to resume from",
            dir.display()
        );
        let config = TrainConfig::load(&run.config(), &[])?;
        let layout = Layout {
            root: dir.to_path_buf(),
            sweep: None,
            members: vec![(None, run, config.clone())],
        };
        return Ok((config, layout));
    }
    let file = SweepFile::read(dir)?;
    let mut members = Vec::new();
    for m in &file.members {
        let run = RunDir(dir.join(&m.run_dir));
        let config = TrainConfig::load(&run.config(), &[])?;
        members.push((Some(m.name.clone()), run, config));
    }
    let config = members[0].2.clone();
    for (name, run, c) in &members {
        ensure!(
            c.data == config.data && c.training.batch_size == config.training.batch_size
                && c.training.steps == config.training.steps
                && c.training.epochs == config.training.epochs
                && c.training.seed == config.training.seed,
            "{}: member {} differs from the others in data.* or training.batch_size/steps/epochs/seed: it cannot share their batches",
            run.config().display(),
            name.as_deref().unwrap_or("?")
        );
    }
    let layout = Layout {
        root: dir.to_path_buf(),
        sweep: Some(file),
        members,
    };
    Ok((config, layout))
}

/// Create the run directory of a new run or sweep and write its configs (and, for a
/// sweep, `sweep.json` with no final metrics yet).
fn create_layout(config: &TrainConfig, specs: Vec<MemberSpec>) -> Result<Layout> {
    if specs.is_empty() {
        let run = RunDir::create(config, false)?;
        write_bytes_atomic(&run.config(), serde_yaml_ng::to_string(config)?.as_bytes())?;
        return Ok(Layout {
            root: run.0.clone(),
            sweep: None,
            members: vec![(None, run, config.clone())],
        });
    }
    let root = RunDir::create(config, true)?;
    write_bytes_atomic(&root.config(), serde_yaml_ng::to_string(config)?.as_bytes())?;
    let file = SweepFile::new(&specs)?;
    let mut members = Vec::new();
    for (spec, entry) in specs.into_iter().zip(&file.members) {
        let run = RunDir(root.0.join(&entry.run_dir));
        std::fs::create_dir_all(run.0.join("checkpoints"))
            .with_context(|| format!("cannot create {}", run.0.display()))?;
        write_bytes_atomic(
            &run.config(),
            serde_yaml_ng::to_string(&spec.config)?.as_bytes(),
        )?;
        members.push((Some(spec.name), run, spec.config));
    }
    file.write(&root.0)?;
    Ok(Layout {
        root: root.0,
        sweep: Some(file),
        members,
    })
}

/// Train one SAE, or every member of a sweep on the same batches in one pass over the data
/// (see [`sweep`]). Each member is what the same configuration trained alone gives.
pub fn train(o: &TrainOptions) -> Result<TrainResult> {
    // Set-up: the configs (a resumed run's own), the data, the members.
    let device = o.device;
    let (mut config, specs, resumed) = match &o.resume {
        Some(dir) => {
            let (config, layout) = resumed_layout(dir)?;
            (config, Vec::new(), Some(layout))
        }
        None => {
            let specs = expand(&o.config)?; // sweep errors before anything is written
            (o.config.clone(), specs, None)
        }
    };
    let cache = resolve_cache(&mut config, &o.model_load)?;
    let d_in = cache.d_model();
    config.validate(d_in)?;
    let mut specs = specs;
    for spec in &mut specs {
        spec.config.data = config.data.clone(); // the cache an extraction just made
        spec.config
            .validate(d_in)
            .with_context(|| format!("sweep member {}", spec.name))?;
        sae_config(&spec.config, d_in)
            .validate()
            .with_context(|| format!("sweep member {}", spec.name))?;
    }
    // The rows, read the way a resumed run read them (its checkpoints record what `auto`
    // chose), before anything is written: a bad cache or buffer leaves no run behind.
    let load = match resumed.as_ref().map(recorded_load).transpose()?.flatten() {
        Some(load) => load,
        None => batches::resolve_load(config.data.load, &cache),
    };
    let batches = batches::open(&cache, &config, load, device)?;
    let m = cache.manifest();
    let clip = json!({"model": m.model.path, "sha256": m.model.sha256, "layer": m.layer, "tokens": m.tokens});
    let resume = resumed.is_some();
    let layout = match resumed {
        Some(layout) => layout,
        None => create_layout(&config, specs)?,
    };
    let mut members = Vec::with_capacity(layout.members.len());
    let opening = Shared {
        batches: batches.as_ref(),
        clip,
        d_in,
        resume,
        device,
        sample: std::cell::OnceCell::new(),
    };
    for (name, run, member_config) in layout.members {
        members.push(Member::open(name, run, member_config, &opening)?);
    }
    drop(opening);
    let shared = members[0].plan.clone(); // batch size, steps and epochs: the same for all
    match &layout.sweep {
        None => {
            let m = &members[0];
            crate::ui::info(format!(
                "training {} SAE {d_in}→{} (k={}), {} steps of {} rows over {} epochs, into {}",
                m.sae_config.architecture,
                m.sae_config.d_sae,
                m.sae_config.k,
                shared.total_steps,
                shared.training.batch_size,
                shared.epochs,
                m.files.dir.0.display()
            ));
        }
        Some(_) => crate::ui::info(format!(
            "training a sweep of {} SAEs ({}) on the same {} steps of {} rows over {} epochs, into {}",
            members.len(),
            members
                .iter()
                .filter_map(|m| m.name.as_deref())
                .collect::<Vec<_>>()
                .join(", "),
            shared.total_steps,
            shared.training.batch_size,
            shared.epochs,
            layout.root.display()
        )),
    }

    // The epochs: each batch is drawn once and fed to every member that has not yet trained
    // on it (after a resume, a member may be a checkpoint ahead of the others: it waits,
    // within its epoch, for the batch after its checkpoint).
    let bar = crate::ui::progress_bar(
        shared.total_steps as u64,
        "{spinner} train [{elapsed_precise}] {bar:30} {pos}/{len} steps {msg}",
    );
    let first_epoch = members.iter().map(|m| m.progress.epoch).min().unwrap_or(0);
    let first_step = members.iter().map(|m| m.progress.step).min().unwrap_or(0);
    bar.set_position(first_step as u64);
    let started = Instant::now();
    let (mut rows_done, mut train_seconds) = (0usize, 0.0f64); // training steps only: rows/s
    for epoch in first_epoch..shared.epochs {
        if o.stop_after_epochs
            .is_some_and(|n| epoch - first_epoch >= n)
        {
            bar.finish_and_clear();
            return Ok(TrainResult {
                run_dir: layout.root,
                summary: None,
                members: member_results(&members, |_| None),
            });
        }
        let active: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].progress.epoch == epoch)
            .collect();
        // Where this epoch's batches start, and where the members behind stand in it.
        let (epoch_start, epoch_end) = (
            epoch * shared.steps_per_epoch,
            ((epoch + 1) * shared.steps_per_epoch).min(shared.total_steps),
        );
        let step = active
            .iter()
            .map(|&i| members[i].progress.step)
            .min()
            .expect("an epoch has members");
        for &i in &active {
            let at = members[i].progress.step;
            ensure!(
                (epoch_start..epoch_end).contains(&at),
                "{}: a checkpoint of epoch {} is at step {at}, outside the epoch's steps {}..{epoch_end}",
                members[i].files.dir.0.display(),
                epoch + 1,
                epoch_start + 1
            );
        }
        let mut stats: Vec<EpochStats> = active
            .iter()
            .map(|&i| {
                let m = &mut members[i];
                m.stats
                    .take()
                    .unwrap_or_else(|| EpochStats::new(d_in, m.sae_config.d_sae, device))
            })
            .collect();
        let epoch_started = Instant::now();
        let epoch_batches = batches.epoch_from(epoch, step - epoch_start)?;
        for (at, x) in (step..epoch_end).zip(epoch_batches) {
            if o.stop_after_steps.is_some_and(|n| at - first_step >= n) {
                bar.finish_and_clear();
                return Ok(TrainResult {
                    run_dir: layout.root,
                    summary: None,
                    members: member_results(&members, |_| None),
                });
            }
            let x = x?;
            rows_done += x.size()[0] as usize;
            for (&i, stats) in active.iter().zip(stats.iter_mut()) {
                let m = &mut members[i];
                if m.progress.step != at {
                    continue; // this batch is in the member's checkpoint already
                }
                let report = m.trainer.step(&x, &m.plan, m.progress.step);
                stats.add(&x, &report);
                m.progress.step += 1;
                if m.progress.step % m.plan.training.log_every == 0 {
                    let line = step_line(
                        &x,
                        &report,
                        m.progress.step,
                        epoch + 1,
                        d_in,
                        started.elapsed().as_secs_f64(),
                    )?;
                    m.files.log(&line)?;
                    let rate = rows_done as f64
                        / (train_seconds + epoch_started.elapsed().as_secs_f64()).max(1e-9);
                    bar.set_message(format!(
                        "epoch {}/{} {rate:.0} rows/s {}evr {:.4} l0 {:.1}",
                        epoch + 1,
                        shared.epochs,
                        m.name.as_ref().map_or(String::new(), |n| format!("{n}: ")),
                        line["evr"].as_f64().unwrap_or(f64::NAN),
                        line["l0"].as_f64().unwrap_or(f64::NAN),
                    ));
                }
                // After the step line, so that a resume from it keeps that line.
                let step = m.progress.step;
                if step < epoch_end
                    && m.plan
                        .training
                        .checkpoint_every
                        .is_some_and(|n| step % n == 0)
                {
                    finite("the loss", stats.mean(&stats.loss), step)?;
                    save_training(
                        &m.files.dir.latest(),
                        &m.trainer,
                        &m.files,
                        &m.progress,
                        batches.state(epoch, step - epoch_start),
                        Some(&*stats),
                        json!({"epoch": epoch, "step": step}),
                    )?;
                }
            }
            bar.inc(1);
        }
        for s in &stats {
            let _ = s.loss.double_value(&[]); // wait for the device before stopping the clock
        }
        train_seconds += epoch_started.elapsed().as_secs_f64();
        let timing = (
            started.elapsed().as_secs_f64(),
            rows_done as f64 / train_seconds.max(1e-9),
        );
        for (&i, stats) in active.iter().zip(&stats) {
            let m = &mut members[i];
            m.progress.epoch = epoch + 1;
            m.last_eval = Some(end_epoch(
                &mut m.trainer,
                stats,
                batches.as_ref(),
                &mut m.files,
                &mut m.progress,
                timing,
            )?);
        }
    }
    bar.finish_and_clear();

    // The summaries, and each best SAE published under `checkpoints/`.
    let rows_per_s = rows_done as f64 / train_seconds.max(1e-9);
    let root_name = layout
        .root
        .file_name()
        .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
    let mut summaries = Vec::with_capacity(members.len());
    for m in &members {
        let summary = m.summary(batches.as_ref(), rows_per_s)?;
        let run = &m.files.dir;
        write_bytes_atomic(
            &run.summary(),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        let published = match &m.name {
            Some(n) => format!("{root_name}-{n}"),
            None => root_name.clone(),
        };
        publish(run, &m.config, &published)?;
        summaries.push(summary);
    }
    if let Some(mut file) = layout.sweep {
        for (entry, s) in file.members.iter_mut().zip(&summaries) {
            entry.final_metrics = Some(s.final_metrics.clone());
        }
        file.write(&layout.root)?;
        let members = member_results(&members, |i| Some(summaries[i].clone()));
        return Ok(TrainResult {
            run_dir: layout.root,
            summary: None,
            members,
        });
    }
    Ok(TrainResult {
        run_dir: layout.root,
        summary: summaries.pop(),
        members: Vec::new(),
    })
}

/// The members of a sweep as [`TrainResult::members`] lists them (none for a single run).
fn member_results(
    members: &[Member],
    summary: impl Fn(usize) -> Option<Summary>,
) -> Vec<MemberResult> {
    members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            Some(MemberResult {
                name: m.name.clone()?,
                run_dir: m.files.dir.0.clone(),
                summary: summary(i),
            })
        })
        .collect()
}

/// Copy the run's best SAE to `<checkpoints_dir>/<name>.safetensors` (a copy, so that
/// cleaning up runs/ keeps it). `name` is the run's folder name (`<sweep>-<member>` for a
/// sweep member).
fn publish(run: &RunDir, config: &TrainConfig, name: &str) -> Result<PathBuf> {
    let dir = config.output.checkpoints_dir();
    let out = dir.join(format!("{name}.safetensors"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = std::fs::read(run.best())
        .with_context(|| format!("cannot read {}", run.best().display()))?;
    write_bytes_atomic(&out, &bytes)?;
    crate::ui::info(format!("best SAE copied to {}", out.display()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_decay() {
        let mut t = TrainingSection {
            lr_warmup_steps: 4,
            lr_schedule: LrSchedule::Cosine,
            lr_end_fraction: 0.0,
            ..Default::default()
        };
        let learning_rate = |t: &TrainingSection, step, total| learning_rate(t, 1.0, step, total);
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

    /// `lr_decay_fraction`: the peak held, then the decay over the last part of the steps
    /// after the warm-up (here 100 steps after a 4-step warm-up, the last 20 decaying).
    #[test]
    fn decay_over_the_last_fraction() {
        let t = TrainingSection {
            lr_warmup_steps: 4,
            lr_schedule: LrSchedule::Linear,
            lr_end_fraction: 0.0,
            lr_decay_fraction: 0.2,
            ..Default::default()
        };
        let lr = |step| learning_rate(&t, 1.0, step, 104);
        assert_eq!(lr(0), 0.25);
        assert_eq!(lr(4), 1.0);
        assert_eq!(lr(84), 1.0, "held until the decay starts");
        assert!((lr(94) - 0.5).abs() < 1e-12);
        assert!((lr(103) - 0.05).abs() < 1e-12);
        let full = TrainingSection {
            lr_decay_fraction: 1.0,
            ..t.clone()
        };
        assert!((learning_rate(&full, 1.0, 54, 104) - 0.5).abs() < 1e-12);
        // A fraction too small for one step still ends at the end rate.
        let tiny = TrainingSection {
            lr_decay_fraction: 1e-6,
            ..t
        };
        assert_eq!(learning_rate(&tiny, 1.0, 102, 104), 1.0);
        assert_eq!(learning_rate(&tiny, 1.0, 104, 104), 0.0);
    }

    /// The plan's edges: fewer rows than one batch, a dead window longer than the data, a
    /// k warm-up longer than the run, and `lr: auto` resolved for the width.
    #[test]
    fn plan_edges() {
        let config = TrainConfig::from_yaml(
            "",
            &[
                "sae.d_sae=1024".into(),
                "training.batch_size=512".into(),
                "training.epochs=3".into(),
                "training.k_start=32".into(),
                "training.k_warmup_steps=1000".into(),
            ],
        )
        .unwrap();
        let plan = Plan::new(&config, 100, 64);
        assert_eq!(plan.steps_per_epoch, 1, "one short batch per epoch");
        assert_eq!((plan.total_steps, plan.epochs), (3, 3));
        assert_eq!(plan.dead_window, 100, "the window is bounded by one epoch");
        assert_eq!(plan.threshold_start, 2, "θ still sees the last step");
        assert!((plan.peak_lr - 8e-4).abs() < 1e-15, "auto at 1,024 latents");
        let plan = Plan::new(&config, 10_000_000, 64);
        assert_eq!(
            plan.dead_window, 1_000_000,
            "the configured window when shorter"
        );
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
