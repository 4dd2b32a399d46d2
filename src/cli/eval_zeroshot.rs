//! `saeclip eval-zeroshot`: zero-shot accuracy with and without the SAE spliced in.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{GlobalArgs, ModelArgs};
use crate::clip::Tokens;
use crate::data::{DatasetSpec, Split};
use crate::eval::zeroshot::{
    evaluate, to_json, to_markdown, write_predictions, TemplateMode, ZeroshotOptions,
    DEFAULT_TEMPLATE,
};

#[derive(Args, Debug)]
pub struct EvalZeroshotArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// SAE checkpoint to splice into the vision tower at its layer (without it: plain CLIP).
    #[arg(long, value_name = "CKPT")]
    pub sae: Option<PathBuf>,
    /// Images: cifar10:DIR, cifar100:DIR, food101:DIR, folder:DIR, imagenet:DIR or procedural:SEED
    /// (repeatable).
    #[arg(long = "dataset", value_name = "KIND:PATH", required = true)]
    pub datasets: Vec<DatasetSpec>,
    /// Dataset split (`val` = `test`: ImageNet's DIR/val).
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Evaluate a seeded sample of N images per dataset, stratified by class (round-robin
    /// over the classes).
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Seed of --samples.
    #[arg(long, default_value_t = 0, value_name = "SEED")]
    pub seed: u64,
    /// One template (--template), or CLIP's ensemble for the dataset (18 CIFAR templates;
    /// Food-101's own).
    #[arg(long, value_enum, default_value = "single")]
    pub templates: TemplateMode,
    /// The template of --templates single; `{}` is the class name.
    #[arg(long, default_value = DEFAULT_TEMPLATE, value_name = "TEXT")]
    pub template: String,
    /// Tokens replaced by the SAE reconstruction [default: the tokens the SAE was trained
    /// on].
    #[arg(long, value_enum)]
    pub splice: Option<Tokens>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64, value_name = "B")]
    pub batch_size: usize,
    /// Skip the sanity pass that splices x̂ + (x − x̂) (the SAE error added back) and
    /// checks that it reproduces plain CLIP: one pass through the blocks after the SAE's
    /// layer less, worth it for early layers; the error-added fields become null.
    #[arg(long)]
    pub no_error_check: bool,
    /// Also write the Markdown table to this file.
    #[arg(long, value_name = "MD")]
    pub output: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "F")]
    pub json: Option<PathBuf>,
    /// Write one line per image: dataset,image_index,source,label,pred,pred_sae (class
    /// indices), label_name,pred_name,pred_sae_name (the same classes by name).
    #[arg(long, value_name = "CSV")]
    pub predictions: Option<PathBuf>,
}

pub fn run(global: &GlobalArgs, args: &EvalZeroshotArgs) -> Result<()> {
    let device = global.device.resolve()?;
    let mut o = ZeroshotOptions::new(args.model.model.clone(), args.datasets.clone());
    o.load = args.model.load_options(device);
    o.sae = args.sae.clone();
    o.split = args.split;
    o.samples = args.samples;
    o.seed = args.seed;
    o.templates = args.templates;
    o.template = args.template.clone();
    o.splice = args.splice;
    o.batch_size = args.batch_size;
    o.error_check = !args.no_error_check;
    if args.sae.is_none() {
        if args.splice.is_some() {
            crate::ui::warn("--splice has no effect without --sae");
        }
        if args.no_error_check {
            crate::ui::warn("--no-error-check has no effect without --sae");
        }
    }
    let report = evaluate(&o)?;
    let markdown = to_markdown(&report);
    if let Some(path) = &args.output {
        crate::disk::write_bytes_atomic(path, markdown.as_bytes())?;
    }
    if let Some(path) = &args.json {
        let text = format!("{}\n", to_json(&report));
        crate::disk::write_bytes_atomic(path, text.as_bytes())?;
    }
    if let Some(path) = &args.predictions {
        write_predictions(path, &report)?;
    }
    print!("{markdown}");
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
            "eval-zeroshot",
            "--model",
            "m",
            "--dataset",
            "procedural:0",
            "--dataset",
            "folder:x",
            "--samples",
            "10",
            "--templates",
            "ensemble",
            "--splice",
            "all",
        ])
        .unwrap();
        let Command::EvalZeroshot(a) = cli.command else {
            panic!("not eval-zeroshot")
        };
        assert_eq!(a.datasets.len(), 2);
        assert_eq!(a.samples, Some(10));
        assert_eq!(a.split, crate::data::Split::Test);
        assert_eq!(a.template, "a photo of a {}.");
        assert_eq!(a.splice, Some(crate::clip::Tokens::All));
        assert!(Cli::try_parse_from(["saeclip", "eval-zeroshot", "--model", "m"]).is_err());
        assert!(Cli::try_parse_from([
            "saeclip",
            "eval-zeroshot",
            "--model",
            "m",
            "--dataset",
            "x"
        ])
        .is_err());
    }
}
