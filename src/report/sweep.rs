//! `analyze-logs` on a sweep's run directory (one holding `sweep.json`): one table over the
//! members, and the sparsity-fidelity frontier (validation evr against validation l0) as a
//! PNG. A member still training (or stopped) reports its last epoch line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::SeriesLabelPosition;

use super::logs::{read_run, Run};
use super::plots::{draw_against, Chart, Series};
use crate::sae::sweep::{SweepEntry, SweepFile};

/// A sweep as far as it has got.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub dir: PathBuf,
    pub members: Vec<MemberRow>,
    pub warnings: Vec<String>,
}

/// One member's line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRow {
    pub name: String,
    /// `key=value` pairs, comma-separated.
    pub overrides: String,
    /// Whether the member has its `summary.json`.
    pub finished: bool,
    /// Epochs logged.
    pub epochs: usize,
    pub val_evr: Option<f64>,
    pub val_l0: Option<f64>,
    pub dead_frac: Option<f64>,
    pub best_epoch: Option<u64>,
}

impl MemberRow {
    fn new(entry: &SweepEntry, run: Option<&Run>) -> MemberRow {
        let overrides = entry
            .overrides
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let summary = run.and_then(|r| r.summary.as_ref());
        let last = run.and_then(|r| r.log.epochs().last().map(|(rec, _)| rec.clone()));
        let (val_evr, val_l0, dead_frac) = match (summary, &last) {
            (Some(s), _) => (
                Some(s.final_metrics.val_evr),
                Some(s.final_metrics.val_l0),
                Some(s.final_metrics.dead_frac),
            ),
            (None, Some(r)) => (r.val_evr, r.val_l0, r.dead_frac),
            (None, None) => (None, None, None),
        };
        MemberRow {
            name: entry.name.clone(),
            overrides,
            finished: summary.is_some(),
            epochs: run.map_or(0, |r| r.log.epochs().count()),
            val_evr,
            val_l0,
            dead_frac,
            best_epoch: run.and_then(Run::best_epoch),
        }
    }
}

/// Read a sweep's run directory: `sweep.json` and each member's run (a member that has not
/// logged an epoch yet is listed with a warning).
pub fn read_sweep(dir: &Path) -> Result<Sweep> {
    let file = SweepFile::read(dir)?;
    let mut warnings = Vec::new();
    let mut members = Vec::new();
    for entry in &file.members {
        let member_dir = dir.join(&entry.run_dir);
        let run = match read_run(&member_dir) {
            Ok(run) => {
                warnings.extend(run.warnings.iter().cloned());
                Some(run)
            }
            Err(e) => {
                warnings.push(format!("member {}: {e:#}", entry.name));
                None
            }
        };
        members.push(MemberRow::new(entry, run.as_ref()));
    }
    Ok(Sweep {
        dir: dir.to_path_buf(),
        members,
        warnings,
    })
}

fn cell(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        Some(_) => "NaN".into(),
        None => "–".into(),
    }
}

/// The Markdown report: one row per member, the best validation evr marked.
pub fn markdown(sweep: &Sweep) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Sweep `{}`\n", sweep.dir.display());
    let finished = sweep.members.iter().filter(|m| m.finished).count();
    let _ = writeln!(
        out,
        "{} members, {finished} finished.\n",
        sweep.members.len()
    );
    let best = sweep
        .members
        .iter()
        .filter_map(|m| m.val_evr.filter(|v| v.is_finite()))
        .fold(f64::NEG_INFINITY, f64::max);
    let _ = writeln!(
        out,
        "| member | overrides | val evr | val l0 | dead | best epoch | status |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|");
    for m in &sweep.members {
        let mark = if m.val_evr == Some(best) { " ★" } else { "" };
        let status = if m.finished {
            "finished".to_string()
        } else {
            format!("{} epochs logged", m.epochs)
        };
        let _ = writeln!(
            out,
            "| {}{mark} | {} | {} | {} | {} | {} | {status} |",
            m.name,
            m.overrides,
            cell(m.val_evr, 4),
            cell(m.val_l0, 1),
            m.dead_frac
                .filter(|v| v.is_finite())
                .map_or("–".into(), |v| format!("{:.1}%", 100.0 * v)),
            m.best_epoch.map_or("–".into(), |e| e.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "\n★ highest validation evr. val evr, val l0, dead: the member's final metrics (summary.json), or its last epoch line while it trains; per-member tables: `analyze-logs --logdir {}/<member>`.",
        sweep.dir.display()
    );
    out
}

/// The sparsity-fidelity frontier: each member's validation evr against its validation l0.
pub fn frontier(sweep: &Sweep) -> Chart {
    let mut points: Vec<(f64, f64)> = sweep
        .members
        .iter()
        .filter_map(|m| Some((m.val_l0?, m.val_evr?)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    Chart {
        name: "frontier",
        title: "Sparsity-fidelity frontier (one point per member)".into(),
        y_label: "validation evr",
        series: vec![Series {
            name: "members".into(),
            points,
            markers: true,
        }]
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect(),
        y_floor: Some(-0.5),
        from_zero: false,
        legend: SeriesLabelPosition::LowerRight,
    }
}

/// Write `frontier.png` into `dir` (when a member has metrics); returns the files written.
pub fn write_plots(sweep: &Sweep, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the plot directory {}", dir.display()))?;
    let chart = frontier(sweep);
    if chart.series.is_empty() {
        return Ok(Vec::new());
    }
    let path = dir.join("frontier.png");
    draw_against(&chart, ("validation l0", 1), &path)?;
    Ok(vec![path])
}
