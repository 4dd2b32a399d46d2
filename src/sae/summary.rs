//! The summaries a finished run writes (`summary.json`, and each member's final metrics in
//! a sweep's `sweep.json`): below both the training loop and the sweep file, so that
//! neither imports the other for them, and `info` / `analyze-logs` read them from here.

use serde::{Deserialize, Serialize};

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
    /// Share of latents that fired in none of the last `dead_window` training rows.
    pub dead_frac: f64,
    /// The window `dead_frac` was counted over: min(`training.dead_window`, rows per
    /// epoch, rows seen). Absent from runs written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_window: Option<i64>,
}
