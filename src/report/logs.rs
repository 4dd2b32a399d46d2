//! The JSON Lines records that `train` writes to `metrics.jsonl`, read back: parsing that
//! survives a run still in progress (or killed mid-line), per-epoch rows with wall time
//! across resumed invocations, and the Markdown report of `analyze-logs`.
//!
//! A run's clock (`time`, seconds) restarts at 0 in every `train` invocation; a resumed run
//! shows it as a drop in `time`, and the times of earlier invocations are added back so
//! that epochs and totals count wall time across all of them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::sae::train::{RunDir, Summary};

/// What a line of `metrics.jsonl` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// Every `log_every` steps: the last batch.
    Step,
    /// End of an epoch: epoch means and the validation pass.
    Epoch,
    /// A kind this version does not know (kept out of the analysis).
    #[serde(other)]
    Other,
}

/// One line of `metrics.jsonl`. Values a line lacks, or that were not finite when written
/// (JSON has no NaN: they arrive as null), are None.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "type")]
    pub kind: RecordKind,
    pub step: u64,
    pub epoch: u64,
    #[serde(default)]
    pub loss: Option<f64>,
    #[serde(default)]
    pub mse: Option<f64>,
    #[serde(default)]
    pub aux_loss: Option<f64>,
    /// Mean non-zero latents per training row.
    #[serde(default)]
    pub l0: Option<f64>,
    /// Training explained variance (of the batch on step lines, of the epoch on epoch lines).
    #[serde(default)]
    pub evr: Option<f64>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub k: Option<i64>,
    /// Seconds since this `train` invocation started its loop.
    #[serde(default)]
    pub time: Option<f64>,
    #[serde(default)]
    pub evr_seed: Option<f64>,
    #[serde(default)]
    pub val_evr: Option<f64>,
    #[serde(default)]
    pub val_evr_seed: Option<f64>,
    #[serde(default)]
    pub val_l0: Option<f64>,
    #[serde(default)]
    pub dead_frac: Option<f64>,
    /// The training rows `dead_frac` was counted over (runs before it was logged lack it).
    #[serde(default)]
    pub dead_window: Option<i64>,
    #[serde(default)]
    pub rows_per_s: Option<f64>,
    /// matryoshka epoch lines: the prefix widths and the held-out evr of each prefix alone.
    #[serde(default)]
    pub prefix_widths: Option<Vec<i64>>,
    #[serde(default)]
    pub val_prefix_evr: Option<Vec<Option<f64>>>,
}

/// The records of a `metrics.jsonl` and what was wrong with the lines that were skipped.
#[derive(Debug, Clone, Default)]
pub struct MetricsLog {
    /// Step and epoch records in step order (a repeated step or epoch keeps its last line).
    pub records: Vec<Record>,
    /// Wall seconds at each record, counted across resumed invocations (parallel to
    /// `records`; None where a line has no `time`).
    pub wall: Vec<Option<f64>>,
    pub warnings: Vec<String>,
}

/// Parse the text of a `metrics.jsonl` (`name` is used in warnings). A line that is not a
/// record (the last one is typically cut off by an interrupted write) is skipped with a
/// warning; lines of unknown `type` are ignored.
pub fn parse_metrics(text: &str, name: &str) -> MetricsLog {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut warnings = Vec::new();
    let mut in_order = Vec::new();
    for (i, &(number, line)) in lines.iter().enumerate() {
        match serde_json::from_str::<Record>(line) {
            Ok(r) if r.kind == RecordKind::Other => {}
            Ok(r) => in_order.push(r),
            Err(e) if i + 1 == lines.len() => warnings.push(format!(
                "{name}: the last line ({}) is incomplete or damaged ({e}): ignored (a run still writing, or one that was interrupted)",
                number + 1
            )),
            Err(e) => warnings.push(format!(
                "{name}: line {} is not a metrics record ({e}): ignored",
                number + 1
            )),
        }
    }
    // Wall time across invocations, in file order.
    let mut wall = Vec::with_capacity(in_order.len());
    let (mut offset, mut last) = (0.0, 0.0);
    for r in &in_order {
        wall.push(r.time.filter(|t| t.is_finite()).map(|t| {
            if t < last {
                offset += last;
            }
            last = t;
            offset + t
        }));
    }
    // Keep the last line of each (kind, step) and of each epoch, in step order.
    let mut by_key: BTreeMap<(u64, u8, u64), (Record, Option<f64>)> = BTreeMap::new();
    for (r, w) in in_order.into_iter().zip(wall) {
        let key = match r.kind {
            RecordKind::Step => (r.step, 0, 0),
            _ => (r.step, 1, r.epoch),
        };
        by_key.insert(key, (r, w));
    }
    let mut epochs_seen = BTreeMap::new();
    let mut kept: Vec<(Record, Option<f64>)> = Vec::new();
    for (_, (r, w)) in by_key {
        if r.kind == RecordKind::Epoch {
            if let Some(i) = epochs_seen.insert(r.epoch, kept.len()) {
                kept[i].0.kind = RecordKind::Other;
            }
        }
        kept.push((r, w));
    }
    kept.retain(|(r, _)| r.kind != RecordKind::Other);
    let (records, wall) = kept.into_iter().unzip();
    MetricsLog {
        records,
        wall,
        warnings,
    }
}

impl MetricsLog {
    pub fn steps(&self) -> impl Iterator<Item = (&Record, Option<f64>)> {
        self.of(RecordKind::Step)
    }

    pub fn epochs(&self) -> impl Iterator<Item = (&Record, Option<f64>)> {
        self.of(RecordKind::Epoch)
    }

    fn of(&self, kind: RecordKind) -> impl Iterator<Item = (&Record, Option<f64>)> {
        self.records
            .iter()
            .zip(self.wall.iter().copied())
            .filter(move |(r, _)| r.kind == kind)
    }

    /// Wall seconds of the whole log (the latest timed record).
    pub fn total_seconds(&self) -> Option<f64> {
        self.wall.iter().rev().find_map(|w| *w)
    }
}

/// One row of the per-epoch table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochRow {
    pub epoch: u64,
    pub step: u64,
    pub train_evr: Option<f64>,
    pub val_evr: Option<f64>,
    /// The original project's evr formula, on the validation rows (the training rows for
    /// logs that lack it).
    pub evr_seed: Option<f64>,
    pub train_l0: Option<f64>,
    pub val_l0: Option<f64>,
    pub loss: Option<f64>,
    pub mse: Option<f64>,
    pub aux_loss: Option<f64>,
    pub dead_frac: Option<f64>,
    pub dead_window: Option<i64>,
    pub lr: Option<f64>,
    /// Wall seconds this epoch took.
    pub seconds: Option<f64>,
}

/// A run directory as far as it has got.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub log: MetricsLog,
    /// Present once the run has finished.
    pub summary: Option<Summary>,
    /// Epochs the config plans (None when it counts steps, or is unreadable).
    pub planned_epochs: Option<u64>,
    pub warnings: Vec<String>,
}

/// Read a run directory: `metrics.jsonl` (required, with at least one record),
/// `summary.json` and `config.yaml` (when present).
pub fn read_run(dir: &Path) -> Result<Run> {
    let shown = dir.display();
    if !dir.exists() {
        bail!("run directory {shown} does not exist: give a directory that `saeclip train` created (under runs/)");
    }
    if !dir.is_dir() {
        bail!("{shown} is not a directory: give a run directory that `saeclip train` created (under runs/)");
    }
    let files = RunDir(dir.to_path_buf());
    let metrics = files.metrics();
    if !metrics.exists() {
        bail!(
            "{shown} has no metrics.jsonl: it is not a training run directory, or its training has not started"
        );
    }
    let text = std::fs::read_to_string(&metrics)
        .with_context(|| format!("cannot read {}", metrics.display()))?;
    let log = parse_metrics(&text, &metrics.display().to_string());
    if log.records.is_empty() {
        bail!(
            "{} holds no complete metrics record yet: nothing to analyze (a new run logs its first line after `training.log_every` steps)",
            metrics.display()
        );
    }
    let mut warnings = log.warnings.clone();
    let summary = match std::fs::read_to_string(files.summary()) {
        Ok(s) => match serde_json::from_str::<Summary>(&s) {
            Ok(summary) => Some(summary),
            Err(e) => {
                warnings.push(format!(
                    "{}: not a valid summary ({e}): analyzing metrics.jsonl alone",
                    files.summary().display()
                ));
                None
            }
        },
        Err(_) => None,
    };
    let planned_epochs = std::fs::read_to_string(files.config())
        .ok()
        .and_then(|s| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&s).ok())
        .and_then(|c| {
            let t = c.get("training")?;
            if t.get("steps").is_some_and(|s| !s.is_null()) {
                return None;
            }
            t.get("epochs")?.as_u64()
        });
    Ok(Run {
        dir: dir.to_path_buf(),
        log,
        summary,
        planned_epochs,
        warnings,
    })
}

impl Run {
    /// The per-epoch rows, in epoch order.
    pub fn epoch_rows(&self) -> Vec<EpochRow> {
        let mut rows = Vec::new();
        let mut previous: Option<f64> = Some(0.0);
        for (r, wall) in self.log.epochs() {
            rows.push(EpochRow {
                epoch: r.epoch,
                step: r.step,
                train_evr: r.evr,
                val_evr: r.val_evr,
                evr_seed: r.val_evr_seed.or(r.evr_seed),
                train_l0: r.l0,
                val_l0: r.val_l0,
                loss: r.loss,
                mse: r.mse,
                aux_loss: r.aux_loss,
                dead_frac: r.dead_frac,
                dead_window: r.dead_window,
                lr: r.lr,
                seconds: wall.zip(previous).map(|(w, p)| w - p),
            });
            previous = wall;
        }
        rows
    }

    /// The epoch with the highest validation evr: the summary's, or the first best one in
    /// the log.
    pub fn best_epoch(&self) -> Option<u64> {
        if let Some(s) = &self.summary {
            return Some(s.best_epoch as u64);
        }
        let mut best: Option<(u64, f64)> = None;
        for (r, _) in self.log.epochs() {
            if let Some(v) = r.val_evr.filter(|v| v.is_finite()) {
                if best.is_none_or(|(_, b)| v > b) {
                    best = Some((r.epoch, v));
                }
            }
        }
        best.map(|(e, _)| e)
    }

    /// The last step logged.
    pub fn last_step(&self) -> u64 {
        self.log.records.iter().map(|r| r.step).max().unwrap_or(0)
    }

    /// Training rows per second: the summary's, else the last epoch line's.
    pub fn rows_per_s(&self) -> Option<f64> {
        self.summary
            .as_ref()
            .map(|s| s.rows_per_s)
            .or_else(|| self.log.epochs().filter_map(|(r, _)| r.rows_per_s).last())
    }
}

fn fixed(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        Some(_) => "NaN".into(),
        None => "–".into(),
    }
}

/// Four significant digits, in scientific notation outside [0.01, 10⁴).
fn sig(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => {
            let a = v.abs();
            if a == 0.0 {
                "0".into()
            } else if (0.01..10_000.0).contains(&a) {
                let decimals = (3 - a.log10().floor() as i64).max(0) as usize;
                format!("{v:.decimals$}")
            } else {
                format!("{v:.3e}")
            }
        }
        other => fixed(other, 0),
    }
}

fn percent(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{:.1}%", 100.0 * v),
        other => fixed(other, 0),
    }
}

/// Three significant digits of a positive number (no exponent).
fn three_digits(v: f64) -> String {
    let magnitude = v.log10().floor();
    let decimals = (2 - magnitude as i64).max(0) as usize;
    let text = format!("{v:.decimals$}");
    // Rounding may carry into a new leading digit (0.9996 → 1.000): one decimal fewer.
    let carried = text
        .parse::<f64>()
        .is_ok_and(|r| r.log10().floor() > magnitude);
    if carried && decimals > 0 {
        format!("{v:.prec$}", prec = decimals - 1)
    } else {
        text
    }
}

/// A duration readable at any scale: milliseconds below a second and seconds below a
/// minute with three significant digits (`12.3 ms`, `4.56 s`), then `H:MM:SS`.
pub fn duration(seconds: f64) -> String {
    if !(seconds.is_finite() && seconds > 0.0) {
        return if seconds == 0.0 {
            "0 s".into()
        } else {
            format!("{seconds} s")
        };
    }
    // The bounds are where rounding would print 1000 ms or 60.0 s.
    if seconds < 0.9995 {
        return format!("{} ms", three_digits(1000.0 * seconds));
    }
    if seconds < 59.95 {
        return format!("{} s", three_digits(seconds));
    }
    let s = seconds.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The Markdown report: the per-epoch table (best epoch marked) and a summary.
pub fn markdown(run: &Run) -> String {
    let mut out = String::new();
    let rows = run.epoch_rows();
    let best = run.best_epoch();
    let _ = writeln!(out, "# Training run `{}`\n", run.dir.display());
    let done = rows.len();
    let planned = run
        .summary
        .as_ref()
        .map(|s| s.epochs as u64)
        .or(run.planned_epochs);
    let of = planned.map_or(String::new(), |p| format!(" of {p}"));
    let status = match &run.summary {
        Some(_) => format!("finished: {done} epochs{of}, {} steps", run.last_step()),
        None => format!(
            "in progress or interrupted (no summary.json): {done} epochs{of} logged, last step {}",
            run.last_step()
        ),
    };
    let _ = writeln!(out, "Status: {status}.\n");
    let _ = writeln!(out, "## Epochs\n");
    let _ = writeln!(
        out,
        "| epoch | step | train evr | val evr | evr_seed | l0 train | l0 val | mse | aux loss | dead | lr | time |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    if rows.is_empty() {
        let _ = writeln!(out, "| – | | | | | | | | | | | |");
    }
    for r in &rows {
        let mark = if Some(r.epoch) == best { " ★" } else { "" };
        let _ = writeln!(
            out,
            "| {}{mark} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.epoch,
            r.step,
            fixed(r.train_evr, 4),
            fixed(r.val_evr, 4),
            fixed(r.evr_seed, 4),
            fixed(r.train_l0, 1),
            fixed(r.val_l0, 1),
            sig(r.mse),
            sig(r.aux_loss),
            percent(r.dead_frac),
            r.lr.map_or("–".into(), |v| format!("{v:.2e}")),
            r.seconds.map_or("–".into(), duration),
        );
    }
    let _ = writeln!(out);
    if rows.is_empty() {
        let _ = writeln!(out, "No epoch has finished yet.\n");
    } else {
        let _ = writeln!(
            out,
            "★ best epoch (highest validation evr). evr_seed: the original project's formula on the validation rows; dead: latents that did not fire over the last `dead_window` training rows; time: wall time of the epoch.\n"
        );
    }

    let _ = writeln!(out, "## Summary\n");
    if let Some(b) = best {
        let val = rows
            .iter()
            .find(|r| r.epoch == b)
            .and_then(|r| r.val_evr)
            .or(run.summary.as_ref().map(|s| s.best_val_evr));
        let ckpt = run
            .summary
            .as_ref()
            .map_or("checkpoints/best.safetensors".into(), |s| {
                s.best_checkpoint.clone()
            });
        let _ = writeln!(
            out,
            "- best epoch: {b} (val evr {}), checkpoint `{ckpt}`",
            fixed(val, 4)
        );
    }
    if let Some(last) = rows.last() {
        let _ = writeln!(
            out,
            "- final (epoch {}): val evr {}, train evr {}, evr_seed {}, val l0 {}, dead {}{}, loss {}",
            last.epoch,
            fixed(last.val_evr, 4),
            fixed(last.train_evr, 4),
            fixed(last.evr_seed, 4),
            fixed(last.val_l0, 1),
            percent(last.dead_frac),
            last.dead_window.map_or(String::new(), |w| format!(
                " (silent over the last {w} training rows: min(training.dead_window, rows per epoch, rows seen))"
            )),
            sig(last.loss)
        );
    }
    if let Some((r, _)) = run
        .log
        .epochs()
        .filter(|(r, _)| r.val_prefix_evr.is_some())
        .last()
    {
        let evr = r.val_prefix_evr.as_deref().unwrap_or_default();
        let widths = r.prefix_widths.clone().unwrap_or_default();
        let parts: Vec<String> = evr
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let w = widths.get(i).map_or("?".into(), |w| w.to_string());
                format!("{w}: {}", fixed(*v, 4))
            })
            .collect();
        let _ = writeln!(
            out,
            "- matryoshka prefixes alone (epoch {}, val evr by width): {}",
            r.epoch,
            parts.join(", ")
        );
    }
    if let Some((r, _)) = run.log.steps().last() {
        let _ = writeln!(
            out,
            "- last step logged ({}): loss {}, evr {}, l0 {}, lr {}",
            r.step,
            sig(r.loss),
            fixed(r.evr, 4),
            fixed(r.l0, 1),
            r.lr.map_or("–".into(), |v| format!("{v:.2e}"))
        );
    }
    let total = run.log.total_seconds();
    let _ = writeln!(
        out,
        "- steps: {}; epochs: {done}{of}",
        run.summary
            .as_ref()
            .map_or(run.last_step(), |s| s.steps as u64)
    );
    let _ = writeln!(
        out,
        "- total time: {}",
        total.map_or("unknown (the log has no times)".into(), duration)
    );
    let mut speed = Vec::new();
    if let Some(r) = run.rows_per_s() {
        speed.push(format!("{r:.0} rows/s"));
    }
    if let Some(t) = total.filter(|t| *t > 0.0) {
        speed.push(format!("{:.2} steps/s", run.last_step() as f64 / t));
    }
    if !speed.is_empty() {
        let _ = writeln!(out, "- throughput: {}", speed.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &str, step: u64, epoch: u64, time: f64) -> String {
        format!(
            r#"{{"type":"{kind}","step":{step},"epoch":{epoch},"loss":1.0,"evr":0.5,"val_evr":{},"time":{time}}}"#,
            0.1 * epoch as f64
        )
    }

    #[test]
    fn matryoshka_prefix_evr_is_read() {
        let text = r#"{"type":"epoch","step":4,"epoch":1,"val_evr":0.9,"prefix_widths":[16,64],"val_prefix_evr":[0.5,null]}"#;
        let log = parse_metrics(text, "m");
        assert!(log.warnings.is_empty(), "{:?}", log.warnings);
        let r = &log.records[0];
        assert_eq!(r.prefix_widths, Some(vec![16, 64]));
        assert_eq!(r.val_prefix_evr, Some(vec![Some(0.5), None]));
    }

    #[test]
    fn truncated_last_line_is_skipped_with_a_warning() {
        let text = format!(
            "{}\n{}\n{{\"type\": \"step\", \"st",
            line("step", 2, 1, 1.0),
            line("epoch", 4, 1, 2.0)
        );
        let log = parse_metrics(&text, "m");
        assert_eq!(log.records.len(), 2);
        assert_eq!(log.warnings.len(), 1);
        assert!(
            log.warnings[0].contains("last line (3)"),
            "{:?}",
            log.warnings
        );
    }

    #[test]
    fn wall_time_adds_up_across_resumes() {
        // Epoch 2 ends at 4 s; the resumed invocation restarts its clock.
        let text = [
            line("step", 2, 1, 1.0),
            line("epoch", 4, 1, 2.0),
            line("epoch", 8, 2, 4.0),
            line("step", 10, 3, 0.5),
            line("epoch", 12, 3, 3.0),
        ]
        .join("\n");
        let log = parse_metrics(&text, "m");
        assert!(log.warnings.is_empty());
        let run = Run {
            dir: "r".into(),
            log,
            summary: None,
            planned_epochs: Some(5),
            warnings: vec![],
        };
        let rows = run.epoch_rows();
        let secs: Vec<f64> = rows.iter().map(|r| r.seconds.unwrap()).collect();
        assert_eq!(secs, vec![2.0, 2.0, 3.0]);
        assert_eq!(run.log.total_seconds(), Some(7.0));
        assert_eq!(run.best_epoch(), Some(3));
        let md = markdown(&run);
        assert!(md.contains("| 3 ★ | 12 |"), "{md}");
        assert!(md.contains("3 epochs of 5 logged"), "{md}");
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(sig(Some(0.0123456)), "0.01235");
        assert_eq!(sig(Some(12.3456)), "12.35");
        assert_eq!(sig(Some(0.000123456)), "1.235e-4");
        assert_eq!(sig(None), "–");
        assert_eq!(sig(Some(f64::NAN)), "NaN");
        assert_eq!(duration(75.2), "0:01:15");
    }

    #[test]
    fn durations_keep_three_significant_digits() {
        assert_eq!(duration(3.264), "3.26 s");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(0.0123), "12.3 ms");
        assert_eq!(duration(0.00042), "0.420 ms");
        assert_eq!(duration(0.5), "500 ms");
        assert_eq!(duration(0.9996), "1.00 s");
        assert_eq!(duration(9.996), "10.0 s");
        assert_eq!(duration(0.09996), "100 ms");
        assert_eq!(duration(59.96), "0:01:00");
        assert_eq!(duration(0.0), "0 s");
        assert_eq!(duration(3723.0), "1:02:03");
    }
}
