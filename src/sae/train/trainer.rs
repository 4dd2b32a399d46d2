//! One SAE's training state ([`Trainer`]: parameters, Adam, dead-latent counters,
//! batchtopk's threshold estimate, σ²) and the step that moves it, with the progress a
//! training checkpoint records and the loading of both from one.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;
use tch::{Device, Tensor};

use super::optim::{Adam, AdamConfig};
use super::plan::Plan;
use crate::sae::checkpoint;
use crate::sae::config::{TrainConfig, TrainingSection};
use crate::sae::model::{Architecture, Sae, SaeConfig, Selection, WEncInit};
use crate::sae::objective::{
    data_variance, forward_backward, DeadTracker, StepOutput, ThresholdEstimator, Workspace,
};

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
    pub(super) fn fresh(
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
pub(super) struct Progress {
    pub(super) step: usize,
    /// Epochs completed (mid-epoch: the epoch under way).
    pub(super) epoch: usize,
    pub(super) best_val_evr: f64,
    pub(super) best_epoch: usize,
}

/// The statistics of the epoch in flight as a mid-epoch (`latest`) checkpoint saved them:
/// `extra.epoch_stats` and the `train.*` tensors (see `EpochStats::restore`).
pub(super) struct SavedEpoch {
    pub(super) scalars: Value,
    pub(super) tensors: Vec<(String, Tensor)>,
}

/// The trainer and progress of a training checkpoint (a run's `checkpoints/last.safetensors`
/// or `latest.safetensors`), with the statistics of the epoch in flight when it is one of
/// `latest`'s.
pub(super) fn load_trainer(
    path: &Path,
    plan: &Plan,
    device: Device,
) -> Result<(Trainer, Progress, Option<SavedEpoch>)> {
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
        saved => Some(SavedEpoch {
            scalars: saved.clone(),
            tensors: st.tensors,
        }),
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

/// The SAE a config asks for on inputs of width `d_in`.
pub(super) fn sae_config(config: &TrainConfig, d_in: i64) -> SaeConfig {
    SaeConfig {
        architecture: config.sae.architecture,
        d_in,
        d_sae: config.d_sae(d_in),
        k: config.sae.k,
    }
}
