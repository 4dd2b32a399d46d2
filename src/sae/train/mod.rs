//! `train`: fit an SAE to an activation cache, one visible loop (nanoGPT train.py).
//!
//! [`train`] reads top to bottom: resolve the data (extracting it first if the config names
//! a model and dataset), open its batches (in memory or streamed from the shards, split by
//! image into train and validation rows: see [`batches`]) and one trainer per member (a
//! single run is a sweep of one), then for each epoch: its batches, each fed to every
//! member (forward/backward/Adam with the learning-rate, k and L1 schedules, a step line
//! every `log_every` steps, with `training.checkpoint_every` a mid-epoch `latest`
//! checkpoint), and at the end of the epoch a validation pass, an epoch line and the
//! checkpoints. Scalars are read off the device only at log intervals, mid-epoch
//! checkpoints and epoch ends.
//!
//! The rooms, in the order a step goes through them: [`plan`] (the schedules),
//! [`trainer`] (one SAE's state and its step), [`epoch`] (an epoch's statistics,
//! validation, the end of an epoch), [`run_dir`] (the run directory, its files, training
//! checkpoints and the resume layout), [`member`] (the members of a pass, opened, stepped
//! and finished together), [`sweep`] (sweep grids and `sweep.json`), [`batches`] (where
//! rows come from) and [`optim`] (Adam on the sparse gradients).
//!
//! Determinism: the batches of epoch e depend only on (seed, e), and a training
//! checkpoint holds everything else the loop carries (Adam, dead-latent counters, the
//! batchtopk threshold, the best score, mid-epoch the epoch's statistics and the batches
//! drawn), so on CPU a run resumed at an epoch boundary or mid-epoch ends bit-identical to
//! an uninterrupted one.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tch::Device;

pub mod batches;
pub mod epoch;
pub mod member;
pub mod optim;
pub mod plan;
pub mod run_dir;
pub mod sweep;
pub mod trainer;

use self::epoch::Clock;
use self::member::Pass;
use self::run_dir::resumed_layout;
use self::sweep::expand;
use crate::clip::LoadOptions;
use crate::data::cache::{file_sha256, ActivationCache};
use crate::extract::{extract, ExtractOptions};
use crate::sae::config::TrainConfig;

pub use self::epoch::{evaluate, EvalMetrics};
pub use self::plan::{k_at, l1_at, learning_rate, Plan};
pub use self::run_dir::RunDir;
pub use self::trainer::{StepReport, Trainer};
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

/// Train one SAE, or every member of a sweep on the same batches in one pass over the data
/// (see [`sweep`]). Each member is what the same configuration trained alone gives.
pub fn train(o: &TrainOptions) -> Result<TrainResult> {
    // Set-up: the configs (a resumed run's own), the data, the members.
    let (mut config, specs, resumed) = match &o.resume {
        Some(dir) => {
            let (config, layout) = resumed_layout(dir)?;
            (config, Vec::new(), Some(layout))
        }
        // Sweep errors before anything is written.
        None => (o.config.clone(), expand(&o.config)?, None),
    };
    let cache = resolve_cache(&mut config, &o.model_load)?;
    let mut pass = Pass::open(&cache, &config, specs, resumed, o.device)?;
    pass.announce();

    // The epochs: each batch is drawn once and fed to every member that has not yet trained
    // on it (after a resume, a member may be a checkpoint ahead of the others: it waits,
    // within its epoch, for the batch after its checkpoint).
    let plan = pass.plan.clone();
    let bar = crate::ui::progress_bar(
        plan.total_steps as u64,
        "{spinner} train [{elapsed_precise}] {bar:30} {pos}/{len} steps {msg}",
    );
    let (first_epoch, first_step) = pass.start();
    bar.set_position(first_step as u64);
    let mut clock = Clock::start();
    for epoch in first_epoch..plan.epochs {
        if o.stop_after_epochs
            .is_some_and(|n| epoch - first_epoch >= n)
        {
            bar.finish_and_clear();
            return Ok(result(&pass, None));
        }
        let at = pass.begin_epoch(epoch)?;
        clock.start_epoch();
        let epoch_batches = pass.batches.epoch_from(epoch, at.first - at.start)?;
        for (step, x) in (at.first..at.end).zip(epoch_batches) {
            if o.stop_after_steps.is_some_and(|n| step - first_step >= n) {
                bar.finish_and_clear();
                return Ok(result(&pass, None));
            }
            let x = x?;
            clock.add_rows(x.size()[0] as usize);
            for member in &mut pass.members {
                member.step(&x, step, &at, pass.batches.as_ref(), &clock, &bar)?;
            }
            bar.inc(1);
        }
        pass.sync(epoch);
        clock.end_epoch();
        pass.end_epoch(epoch, clock.timing())?;
    }
    bar.finish_and_clear();

    // The summaries, each best SAE published under `checkpoints/`, and sweep.json.
    let summaries = pass.finish(clock.rows_per_s())?;
    Ok(result(&pass, Some(summaries)))
}

/// What `train` returns for `pass`: its summaries when it finished (None when stopped
/// early on request), a single run's own or a sweep's per member.
fn result(pass: &Pass, summaries: Option<Vec<Summary>>) -> TrainResult {
    let members = pass
        .members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            Some(MemberResult {
                name: m.name.clone()?,
                run_dir: m.files.dir.0.clone(),
                summary: summaries.as_ref().map(|s| s[i].clone()),
            })
        })
        .collect();
    TrainResult {
        run_dir: pass.root.clone(),
        summary: summaries
            .filter(|_| !pass.is_sweep())
            .and_then(|mut s| s.pop()),
        members,
    }
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
