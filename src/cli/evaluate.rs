//! `saeclip evaluate`: reconstruction, probing, zero-shot, label and factor scores of one or
//! more SAEs in one report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::GlobalArgs;
use crate::clip::{LoadOptions, ModelFormat, Precision};
use crate::data::{DatasetSpec, Split};
use crate::eval::evaluate::{evaluate, to_markdown, write_plots, EvaluateOptions, Source};

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// SAE checkpoint, run directory or sweep directory (repeat to compare several).
    #[arg(long, value_name = "CKPT", required = true)]
    pub sae: Vec<PathBuf>,
    /// Read the SAE's input rows from this activation cache (labels from its images.csv).
    #[arg(long, value_name = "CACHE", conflicts_with_all = ["model", "dataset"], required_unless_present = "model")]
    pub cache: Option<PathBuf>,
    /// CLIP model (directory or file) to run over --dataset.
    #[arg(long, value_name = "PATH", requires = "dataset")]
    pub model: Option<PathBuf>,
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub model_format: Option<ModelFormat>,
    #[arg(long, value_enum, value_name = "PRECISION")]
    pub precision: Option<Precision>,
    /// Images: cifar10:DIR, cifar100:DIR, food101:DIR, folder:DIR, imagenet:DIR or procedural:SEED.
    #[arg(long, value_name = "KIND:PATH", requires = "model")]
    pub dataset: Option<DatasetSpec>,
    /// Dataset split (`val` = `test`).
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// A seeded sample of N images (stratified by class for a dataset) [default: all].
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Seed of every sample the evaluation draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the Markdown report here (printed to stdout without --json or --output).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write the latent-density histogram (latent_density.png) into DIR.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Also evaluate a random-decoder SAE of the same size as each given SAE.
    #[arg(long)]
    pub random_baseline: bool,
    /// Images the probes are trained (80 %) and tested (20 %) on.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub probe_images: usize,
    /// Features whose auto labels are scored.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub label_features: usize,
    /// Label vocabulary: one phrase a line, replacing the built-in ~1,300 phrases (as
    /// `interpret --vocab`).
    #[arg(long, value_name = "FILE")]
    pub vocab: Option<PathBuf>,
    /// Largest number of sparse (image, latent) scores kept for probing and factors
    /// (8 bytes each); images beyond it are left out of probing and factors.
    #[arg(long, default_value_t = 32 << 20, value_name = "N")]
    pub max_entries: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64, value_name = "B")]
    pub batch_size: usize,
}

impl EvaluateArgs {
    pub fn options(&self, device: tch::Device) -> EvaluateOptions {
        let source = match (&self.cache, &self.model, &self.dataset) {
            (Some(cache), _, _) => Source::Cache(cache.clone()),
            (None, Some(model), Some(dataset)) => Source::Model {
                model: model.clone(),
                load: LoadOptions {
                    format: self.model_format,
                    device,
                    precision: self.precision.unwrap_or(if device.is_cuda() {
                        Precision::Bf16
                    } else {
                        Precision::F32
                    }),
                },
                dataset: dataset.clone(),
                split: self.split,
            },
            _ => unreachable!("clap requires --cache or --model with --dataset"),
        };
        let mut o = EvaluateOptions::new(self.sae.clone(), source);
        o.samples = self.samples;
        o.seed = self.seed;
        o.batch_size = self.batch_size;
        o.probe_images = self.probe_images;
        o.label_features = self.label_features;
        o.vocab = self.vocab.clone();
        o.max_entries = self.max_entries;
        o.random_baseline = self.random_baseline;
        o.device = device;
        o
    }
}

pub fn run(global: &GlobalArgs, args: &EvaluateArgs) -> Result<()> {
    let device = global.device.resolve()?;
    let report = evaluate(&args.options(device))?;
    let markdown = to_markdown(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json())?;
        crate::disk::write_atomic(path, |tmp| {
            std::fs::write(tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))
        })?;
        println!("{}", path.display());
    }
    if let Some(path) = &args.output {
        crate::disk::write_atomic(path, |tmp| {
            std::fs::write(tmp, &markdown)
                .with_context(|| format!("cannot write {}", tmp.display()))
        })?;
        println!("{}", path.display());
    }
    if let Some(dir) = &args.plots {
        for p in write_plots(&report, dir)? {
            println!("{}", p.display());
        }
    }
    if args.json.is_none() && args.output.is_none() {
        print!("{markdown}");
    }
    crate::ui::info(format!(
        "evaluated {} SAE(s) on {} images in {:.1}s ({:.1} images/s)",
        report.members.len(),
        report.images,
        report.seconds,
        report.images as f64 / report.seconds.max(1e-9)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "saeclip",
            "evaluate",
            "--sae",
            "a.safetensors",
            "--sae",
            "sweep/",
            "--cache",
            "c",
            "--json",
            "o.json",
        ])
        .unwrap();
        let Command::Evaluate(a) = cli.command else {
            panic!("not evaluate")
        };
        assert_eq!(a.sae.len(), 2);
        assert_eq!(a.probe_images, 5000);
        assert!(Cli::try_parse_from([
            "saeclip", "evaluate", "--sae", "a", "--cache", "c", "--model", "m"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["saeclip", "evaluate", "--sae", "a"]).is_err());
        assert!(
            Cli::try_parse_from(["saeclip", "evaluate", "--sae", "a", "--model", "m"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "saeclip",
            "evaluate",
            "--sae",
            "a",
            "--model",
            "m",
            "--dataset",
            "procedural:0",
            "--samples",
            "10"
        ])
        .is_ok());
    }
}
