//! The schedules of a run: the learning rate, k and the L1 (or jumprelu L0) coefficient at
//! every step, and the [`Plan`] that fixes them from the config and the number of rows.

use crate::sae::config::{LrSchedule, SaeSection, TrainConfig, TrainingSection};
use crate::sae::model::Architecture;
use crate::sae::objective::LossOptions;

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

    pub(super) fn loss_options(&self, step: usize, data_variance: f64) -> LossOptions {
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
}
