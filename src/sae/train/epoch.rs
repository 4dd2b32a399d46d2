//! An epoch's statistics ([`EpochStats`]), the step lines of `metrics.jsonl`, validation
//! ([`evaluate`]) and the end of an epoch (validate, checkpoint, the epoch line).

use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::batches::{BatchIter, Batches};
use super::run_dir::{save_training, RunFiles};
use super::trainer::{Progress, StepReport, Trainer};
use crate::sae::checkpoint;
use crate::sae::model::{Architecture, Sae};
use crate::sae::objective::{Evr, Firing};
use crate::sae::prefix::prefix_evr_over;

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

pub(super) fn finite(name: &str, value: f64, step: usize) -> Result<()> {
    if !value.is_finite() {
        bail!(
            "{name} became {value} at step {step}: training stopped; the last good checkpoint is kept (try a lower training.lr or training.grad_clip)"
        );
    }
    Ok(())
}

/// Per-epoch sums of the training steps' metrics (on the device).
#[derive(Debug)]
pub(super) struct EpochStats {
    evr: Evr,
    /// matryoshka: one per prefix (empty otherwise).
    prefix_evr: Vec<Evr>,
    firing: Firing,
    pub(super) loss: Tensor,
    mse: Tensor,
    aux: Tensor,
    steps: i64,
    /// The last step's learning rate and k.
    last_lr: f64,
    last_k: i64,
}

impl EpochStats {
    pub(super) fn new(d_in: i64, d_sae: i64, device: Device) -> EpochStats {
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

    pub(super) fn add(&mut self, x: &Tensor, r: &StepReport) {
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
    pub(super) fn mean(&self, sum: &Tensor) -> f64 {
        sum.double_value(&[]) / self.steps.max(1) as f64
    }

    /// The sums as a mid-epoch checkpoint stores them, exactly: tensors saved as
    /// `train.epoch.<name>` and the scalars of `extra.epoch_stats`.
    pub(super) fn saved(&self) -> (Vec<(String, &Tensor)>, Value) {
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
    pub(super) fn restore(scalars: &Value, tensors: &[(String, Tensor)]) -> Result<EpochStats> {
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
pub(super) fn step_line(
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
pub(super) fn end_epoch(
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

/// The clock of a pass: wall time since the start, and the rows and seconds of the training
/// steps alone (for rows/s, which leaves out validation and checkpoints).
pub(super) struct Clock {
    started: Instant,
    epoch_started: Instant,
    rows_done: usize,
    train_seconds: f64,
}

impl Clock {
    pub(super) fn start() -> Clock {
        let now = Instant::now();
        Clock {
            started: now,
            epoch_started: now,
            rows_done: 0,
            train_seconds: 0.0,
        }
    }

    pub(super) fn start_epoch(&mut self) {
        self.epoch_started = Instant::now();
    }

    /// A batch of `rows` rows drawn.
    pub(super) fn add_rows(&mut self, rows: usize) {
        self.rows_done += rows;
    }

    /// Seconds since the pass started.
    pub(super) fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Rows per second of training so far, the epoch in flight included.
    pub(super) fn rate_now(&self) -> f64 {
        self.rows_done as f64
            / (self.train_seconds + self.epoch_started.elapsed().as_secs_f64()).max(1e-9)
    }

    /// The epoch's training steps are done (the device waited for): stop its clock.
    pub(super) fn end_epoch(&mut self) {
        self.train_seconds += self.epoch_started.elapsed().as_secs_f64();
    }

    /// Rows per second of the finished epochs' training steps.
    pub(super) fn rows_per_s(&self) -> f64 {
        self.rows_done as f64 / self.train_seconds.max(1e-9)
    }

    /// What an epoch line records of the time: (seconds since the start, rows/s).
    pub(super) fn timing(&self) -> (f64, f64) {
        (self.elapsed(), self.rows_per_s())
    }
}
