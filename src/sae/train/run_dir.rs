//! The run directory (DESIGN.md "Run directory"): its files, the open run that writes
//! them, training checkpoints, the layout of a new or resumed run or sweep, and the best
//! SAE published under `checkpoints/`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

use super::sweep::{MemberSpec, SweepFile, SWEEP_FILE};
use super::trainer::{Progress, Trainer};
use crate::disk::write_bytes_atomic;
use crate::sae::checkpoint::{self, CheckpointMeta, TrainingStateRef};
use crate::sae::config::{DataLoad, TrainConfig};

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

/// An open run: its directory, `metrics.jsonl` open for appending, and what every
/// checkpoint's header records besides the metrics.
pub(super) struct RunFiles {
    pub(super) dir: RunDir,
    metrics: std::fs::File,
    clip: Value,
    training: Value,
}

impl RunFiles {
    pub(super) fn open(dir: RunDir, clip: Value, config: &TrainConfig) -> Result<RunFiles> {
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

    pub(super) fn meta(&self, metrics: Value) -> CheckpointMeta {
        CheckpointMeta {
            clip: self.clip.clone(),
            training: self.training.clone(),
            metrics,
        }
    }

    /// One JSON line to `metrics.jsonl`.
    pub(super) fn log(&mut self, value: &Value) -> Result<()> {
        writeln!(self.metrics, "{value}")?;
        self.metrics.flush()?;
        Ok(())
    }
}

/// Keep the metric lines up to `step` (an interrupted run may have logged past its last
/// checkpoint) and drop a truncated last line.
pub(super) fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
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

/// Write a training checkpoint to `path`: the trainer, the progress, the data position
/// `data` (`extra.data`) and, mid-epoch, the epoch's statistics so far (as
/// `EpochStats::saved` gives them).
pub(super) fn save_training(
    path: &Path,
    trainer: &Trainer,
    files: &RunFiles,
    progress: &Progress,
    data: Value,
    stats: Option<(Vec<(String, &Tensor)>, Value)>,
    metrics: Value,
) -> Result<()> {
    let mut tensors = vec![(
        "rows_since_fired".to_string(),
        &trainer.dead.rows_since_fired,
    )];
    let mut extra = json!({"best_val_evr": progress.best_val_evr, "best_epoch": progress.best_epoch,
                           "rows_seen": trainer.dead.rows_seen, "data_variance": trainer.data_variance,
                           "data": data});
    if let Some((t, scalars)) = stats {
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

/// What `train` is asked to continue or start: the data config, and each member's name,
/// run directory and config (one unnamed member for a single run).
pub(super) struct Layout {
    /// The run directory (a sweep's holds one directory per member).
    pub(super) root: PathBuf,
    pub(super) sweep: Option<SweepFile>,
    pub(super) members: Vec<(Option<String>, RunDir, TrainConfig)>,
}

/// How a resumed run read its rows: the `data.load` its members' training checkpoints
/// record (memory for checkpoints written before streaming existed); None when no member
/// has a checkpoint yet.
pub(super) fn recorded_load(layout: &Layout) -> Result<Option<DataLoad>> {
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
pub(super) fn resumed_layout(dir: &Path) -> Result<(TrainConfig, Layout)> {
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
pub(super) fn create_layout(config: &TrainConfig, specs: Vec<MemberSpec>) -> Result<Layout> {
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

/// Copy the run's best SAE to `<checkpoints_dir>/<name>.safetensors` (a copy, so that
/// cleaning up runs/ keeps it). `name` is the run's folder name (`<sweep>-<member>` for a
/// sweep member).
pub(super) fn publish(run: &RunDir, config: &TrainConfig, name: &str) -> Result<PathBuf> {
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
    fn utc_stamps() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_769_099);
        assert_eq!(utc_stamp(t), "20261127_084459");
        assert_eq!(utc_stamp(std::time::UNIX_EPOCH), "19700101_000000");
    }
}
