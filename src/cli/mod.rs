//! The command line: global flags, one subcommand per file, one dispatching match.

pub mod analyze_logs;
pub mod clean_checkpoint;
pub mod demo;
pub mod dev;
pub mod embed;
pub mod eval_zeroshot;
pub mod evaluate;
pub mod export;
pub mod extract;
pub mod fetch;
pub mod import;
pub mod info;
pub mod interpret;
pub mod steer;
pub mod tokenize;
pub mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::clip::{LoadOptions, ModelFormat, Precision};
use crate::device::DeviceChoice;

/// Sparse autoencoders on CLIP: extract activations, train, evaluate, interpret.
#[derive(Parser, Debug)]
#[command(name = "saeclip", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand accepts.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Where to compute: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(
        long,
        global = true,
        default_value = "auto",
        value_name = "DEVICE",
        help_heading = "Global options"
    )]
    pub device: DeviceChoice,
    /// CPU threads for libtorch and image decoding (default: all cores).
    #[arg(long, global = true, value_name = "N", help_heading = "Global options")]
    pub threads: Option<usize>,
    /// Print only results and errors.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,
    /// Print more detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,
}

impl GlobalArgs {
    /// `--device` as it was given.
    pub fn device_name(&self) -> String {
        self.device.to_string()
    }

    /// −1 quiet, 0 normal, 1+ verbose.
    pub fn verbosity(&self) -> i8 {
        if self.quiet {
            -1
        } else {
            self.verbose.min(3) as i8
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CLIP token ids of texts.
    Tokenize(tokenize::TokenizeArgs),
    /// Embed images and texts with a CLIP model; print zero-shot probabilities.
    Embed(embed::EmbedArgs),
    /// Run the whole pipeline on the embedded demo model and procedural images, offline.
    Demo(demo::DemoArgs),
    /// Tools for benchmarks and device checks.
    #[command(hide = true)]
    Dev(dev::DevArgs),
    /// Run CLIP over a dataset and write an activation cache.
    Extract(extract::ExtractArgs),
    /// Train a sparse autoencoder on an activation cache.
    Train(train::TrainArgs),
    /// Zero-shot accuracy with and without the SAE spliced in.
    EvalZeroshot(eval_zeroshot::EvalZeroshotArgs),
    /// How good an SAE is: reconstruction, probing, zero-shot, labels, factors (one report).
    Evaluate(evaluate::EvaluateArgs),
    /// Edit SAE latents inside CLIP and see what changes.
    Steer(steer::SteerArgs),
    /// Download a model, a dataset or a published SAE (needs network).
    Fetch(fetch::FetchArgs),
    /// Top images, collages, labels and a browsable page per SAE feature.
    Interpret(interpret::InterpretArgs),
    /// Per-epoch table and plots of a training run.
    AnalyzeLogs(analyze_logs::AnalyzeLogsArgs),
    /// Drop training state from a checkpoint, optionally convert it.
    CleanCheckpoint(clean_checkpoint::CleanCheckpointArgs),
    /// Write an SAE in another tool's format (saelens, sparsify for topk, saev 0.1.0 for relu).
    Export(export::ExportArgs),
    /// Read an SAE from another tool's format.
    ///
    /// Writes a saeclip checkpoint that records the hook point (layer, tokens) the SAE was
    /// trained on, so that interpret, evaluate and eval-zeroshot splice it without flags.
    /// Formats (--format auto decides from the files): saelens (cfg.json +
    /// sae_weights.safetensors), saev (a saev.nn.dump file or run folder: 0.1.0 or the
    /// current layout), sparsify (cfg.json + sae.safetensors, or a run with one sub-folder per
    /// hook: --hook), dictionary-learning (ae.pt + config.json), prisma (ViT-Prisma
    /// config.json + a .pt state dict). Where the files leave the layer or the tokens out,
    /// --layer / --tokens give them. torch.save files are read without executing them:
    /// anything but tensors and plain containers is refused.
    Import(import::ImportArgs),
    /// Describe a checkpoint, cache or run directory.
    Info(info::InfoArgs),
}

/// Which model to load and how.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// CLIP model: a Hugging Face directory (config.json + model.safetensors), an open_clip
    /// .safetensors file or directory, or a TorchScript file from scripts/export_torchscript.py.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Override the format detected from the path.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub model_format: Option<ModelFormat>,
    /// Weight and activation precision [default: f32 on CPU, bf16 on CUDA].
    #[arg(long, value_enum, value_name = "PRECISION")]
    pub precision: Option<Precision>,
}

impl ModelArgs {
    pub fn load_options(&self, device: tch::Device) -> LoadOptions {
        let default = if device.is_cuda() {
            Precision::Bf16
        } else {
            Precision::F32
        };
        LoadOptions {
            format: self.model_format,
            device,
            precision: self.precision.unwrap_or(default),
        }
    }
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    crate::ui::set_verbosity(cli.global.verbosity());
    if let Some(n) = cli.global.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        tch::set_num_threads(n as i32);
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    run_command(&cli)
}

/// Dispatch a parsed command line (global settings already applied).
pub fn run_command(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Tokenize(args) => tokenize::run(args),
        Command::Embed(args) => embed::run(&cli.global, args),
        Command::Demo(args) => demo::run(&cli.global, args),
        Command::Dev(args) => dev::run(args),
        Command::Extract(args) => extract::run(&cli.global, args),
        Command::Train(args) => train::run(&cli.global, args),
        Command::EvalZeroshot(args) => eval_zeroshot::run(&cli.global, args),
        Command::Evaluate(args) => evaluate::run(&cli.global, args),
        Command::Steer(args) => steer::run(&cli.global, args),
        Command::Fetch(args) => fetch::run(&cli.global, args),
        Command::Interpret(args) => interpret::run(&cli.global, args),
        Command::AnalyzeLogs(args) => analyze_logs::run(args),
        Command::CleanCheckpoint(args) => clean_checkpoint::run(args),
        Command::Export(args) => export::run(args),
        Command::Import(args) => import::run(args),
        Command::Info(args) => info::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_parse_anywhere() {
        let cli = Cli::try_parse_from([
            "saeclip",
            "info",
            "hi",
            "--device",
            "cpu",
            "--threads",
            "2",
            "-vv",
        ])
        .unwrap();
        assert_eq!(cli.global.device, DeviceChoice::Cpu);
        assert_eq!(cli.global.threads, Some(2));
        assert_eq!(cli.global.verbosity(), 2);
        // tokenize: global options before the texts; after them, everything is text.
        let cli = Cli::try_parse_from(["saeclip", "tokenize", "-v", "-x", "-q"]).unwrap();
        assert_eq!(cli.global.verbosity(), 1);
        let Command::Tokenize(args) = cli.command else {
            panic!("not tokenize")
        };
        assert_eq!(args.texts, ["-x", "-q"]);
        let cli = Cli::try_parse_from(["saeclip", "-q", "tokenize", "hi"]).unwrap();
        assert_eq!(cli.global.verbosity(), -1);
        assert!(Cli::try_parse_from(["saeclip", "--device", "tpu", "tokenize", "x"]).is_err());
        assert!(Cli::try_parse_from(["saeclip", "-q", "-v", "tokenize", "x"]).is_err());
    }

    #[test]
    fn model_args_parse() {
        let cli = Cli::try_parse_from([
            "saeclip",
            "embed",
            "--model",
            "m",
            "--model-format",
            "open-clip",
            "--precision",
            "bf16",
            "--text",
            "a",
        ])
        .unwrap();
        let Command::Embed(args) = cli.command else {
            panic!("not embed")
        };
        assert_eq!(args.model.model_format, Some(ModelFormat::OpenClip));
        assert_eq!(args.model.precision, Some(Precision::Bf16));
        assert_eq!(
            args.model.load_options(tch::Device::Cpu).precision,
            Precision::Bf16
        );
        let cli = Cli::try_parse_from(["saeclip", "embed", "--model", "m", "--text", "a"]).unwrap();
        let Command::Embed(args) = cli.command else {
            panic!("not embed")
        };
        assert_eq!(
            args.model.load_options(tch::Device::Cpu).precision,
            Precision::F32
        );
        assert_eq!(
            args.model.load_options(tch::Device::Cuda(0)).precision,
            Precision::Bf16
        );
    }
}
