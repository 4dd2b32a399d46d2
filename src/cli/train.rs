//! `saeclip train`: train an SAE from a YAML config.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::{GlobalArgs, ModelArgs};
use crate::clip::{LoadOptions, ModelFormat, Precision};
use crate::sae::config::TrainConfig;
use crate::sae::train::{train, Summary, TrainOptions};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training config (YAML; see configs/ and docs/DESIGN.md). Not needed with --resume.
    #[arg(long, value_name = "YAML", required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Override a config value, e.g. --set training.lr=1e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue an interrupted run (or a whole sweep) from its last checkpoints.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["config", "set"])]
    pub resume: Option<PathBuf>,
    /// Model format when the config asks to extract first (overrides detection).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub model_format: Option<ModelFormat>,
    /// Model precision when extracting first [default: f32 on CPU, bf16 on CUDA].
    #[arg(long, value_enum, value_name = "PRECISION")]
    pub precision: Option<Precision>,
}

pub fn run(global: &GlobalArgs, args: &TrainArgs) -> Result<()> {
    let device = global.device.resolve()?;
    let config = match (&args.config, &args.resume) {
        (Some(path), None) => TrainConfig::load(path, &args.set)?,
        (None, Some(_)) => TrainConfig::default(),
        _ => bail!("give --config YAML, or --resume RUN"),
    };
    let model = ModelArgs {
        model: PathBuf::new(),
        model_format: args.model_format,
        precision: args.precision,
    };
    let model_load: LoadOptions = model.load_options(device);
    let options = TrainOptions {
        config,
        device,
        model_load,
        resume: args.resume.clone(),
        stop_after_epochs: None,
        stop_after_steps: None,
    };
    let result = train(&options)?;
    let done = |who: &str, s: &Summary| {
        crate::ui::info(format!(
            "{who}done: best val evr {:.4} at epoch {}, final l0 {:.1}, dead {:.1}%, {:.0} rows/s",
            s.best_val_evr,
            s.best_epoch,
            s.final_metrics.val_l0,
            100.0 * s.final_metrics.dead_frac,
            s.rows_per_s
        ))
    };
    if let Some(s) = &result.summary {
        done("", s);
        println!("{}", result.run_dir.display());
    }
    let finished: Vec<_> = result
        .members
        .iter()
        .filter_map(|m| Some((m, m.summary.as_ref()?)))
        .collect();
    if !finished.is_empty() && finished.len() == result.members.len() {
        for (m, s) in finished {
            done(&format!("{}: ", m.name), s);
        }
        println!("{}", result.run_dir.display());
    }
    Ok(())
}
