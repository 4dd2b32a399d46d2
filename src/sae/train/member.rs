//! The members of a pass over the data: one per configuration trained on the same batches
//! (a single run is a pass with one member), each with its run directory, schedules,
//! trainer and progress, and the [`Pass`] that opens, steps and finishes them together.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Tensor};

use super::batches::{self, Batches};
use super::epoch::{end_epoch, evaluate, finite, step_line, Clock, EpochStats, EvalMetrics};
use super::plan::Plan;
use super::run_dir::{
    create_layout, publish, recorded_load, save_training, truncate_metrics, Layout, RunDir,
    RunFiles,
};
use super::sweep::{MemberSpec, SweepFile};
use super::trainer::{load_trainer, sae_config, Progress, Trainer};
use crate::data::cache::ActivationCache;
use crate::disk::write_bytes_atomic;
use crate::sae::checkpoint;
use crate::sae::config::TrainConfig;
use crate::sae::model::{Architecture, SaeConfig};
use crate::sae::summary::{FinalMetrics, Summary};

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
pub(super) struct Member {
    /// The member's name in a sweep; None for a single run.
    pub(super) name: Option<String>,
    config: TrainConfig,
    sae_config: SaeConfig,
    plan: Plan,
    trainer: Trainer,
    progress: Progress,
    /// The statistics of the epoch in flight: begun with the epoch, or resumed from a
    /// mid-epoch checkpoint.
    stats: Option<EpochStats>,
    pub(super) files: RunFiles,
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
            let (trainer, progress, saved) = load_trainer(&path, &plan, device)?;
            let stats = match saved {
                None => None,
                Some(saved) => Some(
                    EpochStats::restore(&saved.scalars, &saved.tensors)
                        .with_context(|| format!("{}: the epoch's statistics", path.display()))?,
                ),
            };
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

    /// Train on batch `x`, the pass's step `at` of `epoch`, unless the member is in another
    /// epoch or its checkpoint holds the batch already; then the step line (every
    /// `log_every` steps, with the progress bar's message) and, with
    /// `training.checkpoint_every`, a mid-epoch `latest` checkpoint.
    pub(super) fn step(
        &mut self,
        x: &Tensor,
        at: usize,
        epoch: &EpochAt,
        batches: &dyn Batches,
        clock: &Clock,
        bar: &indicatif::ProgressBar,
    ) -> Result<()> {
        if self.progress.epoch != epoch.epoch || self.progress.step != at {
            return Ok(()); // another epoch's member, or the batch is in its checkpoint already
        }
        let stats = self
            .stats
            .as_mut()
            .context("an epoch's statistics begin with it")?;
        let report = self.trainer.step(x, &self.plan, self.progress.step);
        stats.add(x, &report);
        self.progress.step += 1;
        let step = self.progress.step;
        if step.is_multiple_of(self.plan.training.log_every) {
            let line = step_line(
                x,
                &report,
                step,
                epoch.epoch + 1,
                epoch.d_in,
                clock.elapsed(),
            )?;
            self.files.log(&line)?;
            bar.set_message(format!(
                "epoch {}/{} {:.0} rows/s {}evr {:.4} l0 {:.1}",
                epoch.epoch + 1,
                epoch.epochs,
                clock.rate_now(),
                self.name
                    .as_ref()
                    .map_or(String::new(), |n| format!("{n}: ")),
                line["evr"].as_f64().unwrap_or(f64::NAN),
                line["l0"].as_f64().unwrap_or(f64::NAN),
            ));
        }
        // After the step line, so that a resume from it keeps that line.
        if step < epoch.end
            && self
                .plan
                .training
                .checkpoint_every
                .is_some_and(|n| step.is_multiple_of(n))
        {
            finite("the loss", stats.mean(&stats.loss), step)?;
            save_training(
                &self.files.dir.latest(),
                &self.trainer,
                &self.files,
                &self.progress,
                batches.state(epoch.epoch, step - epoch.start),
                Some(stats.saved()),
                json!({"epoch": epoch.epoch, "step": step}),
            )?;
        }
        Ok(())
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

/// Where an epoch's batches fall in the run's steps, with what a member's step line needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct EpochAt {
    /// The epoch, from 0.
    pub(super) epoch: usize,
    /// Its first step, and the step after its last.
    pub(super) start: usize,
    pub(super) end: usize,
    /// The first step a member of it still has to take (after a resume, past `start`).
    pub(super) first: usize,
    pub(super) epochs: usize,
    pub(super) d_in: i64,
}

/// One pass over the data: its batches, its run layout and the members trained on it.
pub(super) struct Pass {
    pub(super) batches: Box<dyn Batches>,
    /// The run directory (a sweep's holds one directory per member).
    pub(super) root: PathBuf,
    /// A sweep's `sweep.json`; None for a single run.
    sweep: Option<SweepFile>,
    pub(super) members: Vec<Member>,
    /// Batch size, steps and epochs: the same for every member.
    pub(super) plan: Plan,
    d_in: i64,
    device: Device,
}

impl Pass {
    /// Validate the configs against the cache, open its batches (the way a resumed run read
    /// them: its checkpoints record what `auto` chose), create the run directory of a new run
    /// or sweep, and open every member: fresh, or from its checkpoint when `resumed`.
    pub(super) fn open(
        cache: &ActivationCache,
        config: &TrainConfig,
        mut specs: Vec<MemberSpec>,
        resumed: Option<Layout>,
        device: Device,
    ) -> Result<Pass> {
        let d_in = cache.d_model();
        config.validate(d_in)?;
        for spec in &mut specs {
            spec.config.data = config.data.clone(); // the cache an extraction just made
            spec.config
                .validate(d_in)
                .with_context(|| format!("sweep member {}", spec.name))?;
            sae_config(&spec.config, d_in)
                .validate()
                .with_context(|| format!("sweep member {}", spec.name))?;
        }
        // The rows, before anything is written: a bad cache or buffer leaves no run behind.
        let load = match resumed.as_ref().map(recorded_load).transpose()?.flatten() {
            Some(load) => load,
            None => batches::resolve_load(config.data.load, cache),
        };
        let batches = batches::open(cache, config, load, device)?;
        let m = cache.manifest();
        let clip = json!({"model": m.model.path, "sha256": m.model.sha256, "layer": m.layer, "tokens": m.tokens});
        let resume = resumed.is_some();
        let layout = match resumed {
            Some(layout) => layout,
            None => create_layout(config, specs)?,
        };
        let opening = Shared {
            batches: batches.as_ref(),
            clip,
            d_in,
            resume,
            device,
            sample: std::cell::OnceCell::new(),
        };
        let mut members = Vec::with_capacity(layout.members.len());
        for (name, run, member_config) in layout.members {
            members.push(Member::open(name, run, member_config, &opening)?);
        }
        drop(opening);
        Ok(Pass {
            plan: members[0].plan.clone(),
            batches,
            root: layout.root,
            sweep: layout.sweep,
            members,
            d_in,
            device,
        })
    }

    /// Whether the pass trains a sweep (whose members have names).
    pub(super) fn is_sweep(&self) -> bool {
        self.sweep.is_some()
    }

    /// The info line of what is trained.
    pub(super) fn announce(&self) {
        let (d_in, plan) = (self.d_in, &self.plan);
        match &self.sweep {
            None => {
                let m = &self.members[0];
                crate::ui::info(format!(
                    "training {} SAE {d_in}→{} (k={}), {} steps of {} rows over {} epochs, into {}",
                    m.sae_config.architecture,
                    m.sae_config.d_sae,
                    m.sae_config.k,
                    plan.total_steps,
                    plan.training.batch_size,
                    plan.epochs,
                    m.files.dir.0.display()
                ));
            }
            Some(_) => crate::ui::info(format!(
                "training a sweep of {} SAEs ({}) on the same {} steps of {} rows over {} epochs, into {}",
                self.members.len(),
                self.members
                    .iter()
                    .filter_map(|m| m.name.as_deref())
                    .collect::<Vec<_>>()
                    .join(", "),
                plan.total_steps,
                plan.training.batch_size,
                plan.epochs,
                self.root.display()
            )),
        }
    }

    /// Where the pass starts: the first epoch and step any member has still to take.
    pub(super) fn start(&self) -> (usize, usize) {
        let epoch = self.members.iter().map(|m| m.progress.epoch).min();
        let step = self.members.iter().map(|m| m.progress.step).min();
        (epoch.unwrap_or(0), step.unwrap_or(0))
    }

    /// Begin `epoch` for the members in it (their statistics: new, or those resumed from a
    /// mid-epoch checkpoint): where its batches start, and where the members behind stand
    /// in it.
    pub(super) fn begin_epoch(&mut self, epoch: usize) -> Result<EpochAt> {
        let plan = &self.plan;
        let (start, end) = (
            epoch * plan.steps_per_epoch,
            ((epoch + 1) * plan.steps_per_epoch).min(plan.total_steps),
        );
        let (d_in, device) = (self.d_in, self.device);
        let mut first = None;
        for m in self
            .members
            .iter_mut()
            .filter(|m| m.progress.epoch == epoch)
        {
            let at = m.progress.step;
            ensure!(
                (start..end).contains(&at),
                "{}: a checkpoint of epoch {} is at step {at}, outside the epoch's steps {}..{end}",
                m.files.dir.0.display(),
                epoch + 1,
                start + 1
            );
            first = Some(first.map_or(at, |f: usize| f.min(at)));
        }
        let first = first.context("an epoch has members")?;
        for m in self
            .members
            .iter_mut()
            .filter(|m| m.progress.epoch == epoch)
        {
            let stats = m.stats.take();
            m.stats =
                Some(stats.unwrap_or_else(|| EpochStats::new(d_in, m.sae_config.d_sae, device)));
        }
        Ok(EpochAt {
            epoch,
            start,
            end,
            first,
            epochs: plan.epochs,
            d_in,
        })
    }

    /// Wait for the device to finish the epoch's steps (before its clock stops).
    pub(super) fn sync(&self, epoch: usize) {
        for m in self.members.iter().filter(|m| m.progress.epoch == epoch) {
            if let Some(s) = &m.stats {
                let _ = s.loss.double_value(&[]);
            }
        }
    }

    /// The end of `epoch` for its members: validation, checkpoints and the epoch line.
    pub(super) fn end_epoch(&mut self, epoch: usize, timing: (f64, f64)) -> Result<()> {
        for m in self
            .members
            .iter_mut()
            .filter(|m| m.progress.epoch == epoch)
        {
            let stats = m
                .stats
                .take()
                .context("an epoch's statistics begin with it")?;
            m.progress.epoch = epoch + 1;
            m.last_eval = Some(end_epoch(
                &mut m.trainer,
                &stats,
                self.batches.as_ref(),
                &mut m.files,
                &mut m.progress,
                timing,
            )?);
        }
        Ok(())
    }

    /// The end of the pass: each member's `summary.json`, its best SAE published under
    /// `checkpoints/` and, for a sweep, `sweep.json`'s final metrics. Returns the summaries
    /// in member order.
    pub(super) fn finish(&mut self, rows_per_s: f64) -> Result<Vec<Summary>> {
        let root_name = self
            .root
            .file_name()
            .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
        let mut summaries = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let summary = m.summary(self.batches.as_ref(), rows_per_s)?;
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
        if let Some(file) = self.sweep.as_mut() {
            for (entry, s) in file.members.iter_mut().zip(&summaries) {
                entry.final_metrics = Some(s.final_metrics.clone());
            }
            file.write(&self.root)?;
        }
        Ok(summaries)
    }
}
