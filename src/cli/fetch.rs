//! `saeclip fetch`: download a dataset or a model (needs a network).

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};

use super::GlobalArgs;
use crate::disk::{fetched_model_dir, CHECKPOINTS_DIR, DATA_DIR, MODELS_DIR};
use crate::fetch::{
    default_checkpoint, fetch_dataset, fetch_model, fetch_sae, parse_source, release_table,
    Dataset, FetchDatasetOptions, FetchModelOptions, FetchSaeOptions, DATASET_BASE_URL_ENV,
};

/// Download a dataset archive or a Hugging Face model, verify its published checksum and
/// place it where the other commands read it. Reruns skip finished work and resume
/// interrupted downloads.
#[derive(Args, Debug)]
pub struct FetchArgs {
    #[command(subcommand)]
    pub what: FetchCommand,
}

#[derive(Subcommand, Debug)]
pub enum FetchCommand {
    /// Download, check (published MD5) and unpack a dataset; prints the dataset spec to use
    /// (e.g. cifar10:DIR). ImageNet cannot be downloaded: this says which archives to put in
    /// DIR, checks them and unpacks them.
    Dataset(FetchDatasetArgs),
    /// Download config.json and model.safetensors of a Hugging Face repo, check them against
    /// the hub's SHA-256, and place them in a model directory; prints the directory.
    Model(FetchModelArgs),
    /// Download a published SAE from a Hugging Face repository (only the files its format
    /// needs), check them against the hub's SHA-256 where it gives one, and import it
    /// (format detected as by `import --format auto`); prints the checkpoint, and the hook
    /// point it reads on stderr. --list prints known public vision SAE releases.
    Sae(FetchSaeArgs),
}

#[derive(Args, Debug)]
pub struct FetchSaeArgs {
    /// REPO[/SUBFOLDER]: a Hugging Face repo id, then the folder (or file) in it that holds
    /// the SAE, e.g. osunlp/SAE_CLIP_24K_ViT-B-16_IN1K. The hub is HF_ENDPOINT (default
    /// https://huggingface.co), the cache $HF_HOME/hub, the token HF_TOKEN.
    #[arg(value_name = "REPO[/SUBFOLDER]", required_unless_present = "list")]
    pub source: Option<String>,
    /// Print known public vision SAE releases (repository, backbone, layer, tokens, width,
    /// format, as their publishers' pages state them) and exit.
    #[arg(long, conflicts_with = "source")]
    pub list: bool,
    /// Branch, tag or commit to download.
    #[arg(long, value_name = "REV", default_value = "main")]
    pub revision: String,
    /// Directory for the checkpoint (created if missing), or the checkpoint itself when it
    /// ends in .safetensors [default: checkpoints/<repo name>[-<subfolder>].safetensors].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub flags: super::import::ImportFlags,
    /// Overwrite a checkpoint that was not fetched from this source, or fetch again.
    #[arg(long)]
    pub force: bool,
}

impl FetchSaeArgs {
    /// The checkpoint to write: --out as a file (.safetensors) or a directory, else
    /// checkpoints/.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        let (repo, sub) = parse_source(self.source.as_deref().unwrap_or_default())?;
        Ok(match &self.out {
            Some(p) if p.extension().is_some_and(|e| e == "safetensors") => p.clone(),
            Some(dir) => default_checkpoint(dir, &repo, &sub),
            None => default_checkpoint(Path::new(CHECKPOINTS_DIR), &repo, &sub),
        })
    }
}

#[derive(Args, Debug)]
pub struct FetchDatasetArgs {
    /// Dataset: cifar10 or cifar100 (binary versions, from the Toronto CIFAR page), food101
    /// (ETH Zürich), or imagenet (ILSVRC2012, not downloadable: put
    /// ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz
    /// from image-net.org in DIR; they are checked against torchvision's MD5s and unpacked).
    #[arg(value_enum, value_name = "NAME")]
    pub name: Dataset,
    /// Directory to unpack into: the dataset lands in DIR/cifar-10-batches-bin,
    /// DIR/cifar-100-binary, DIR/food-101 or (imagenet) DIR/train, DIR/val and
    /// DIR/ILSVRC2012_devkit_t12, to be read as NAME:DIR [default: data].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// URL of a directory (a mirror, a local server) holding the archive under its official
    /// file name, instead of the publisher's. Also read from SAECLIP_DATASET_BASE_URL.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct FetchModelArgs {
    /// Hugging Face repo id, e.g. openai/clip-vit-base-patch32. The hub is HF_ENDPOINT
    /// (default https://huggingface.co), the cache $HF_HOME/hub, the token HF_TOKEN or
    /// $HF_HOME/token.
    #[arg(value_name = "REPO")]
    pub repo: String,
    /// Directory to place config.json and model.safetensors in (created if missing)
    /// [default: models/<repo name>, e.g. models/clip-vit-base-patch32].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Branch, tag or commit to download.
    #[arg(long, value_name = "REV", default_value = "main")]
    pub revision: String,
}

impl FetchDatasetArgs {
    /// `--out`, or `data/`.
    pub fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| DATA_DIR.into())
    }
}

impl FetchModelArgs {
    /// `--out`, or `models/<repo name>`.
    pub fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| fetched_model_dir(Path::new(MODELS_DIR), &self.repo))
    }
}

pub fn run(global: &GlobalArgs, args: &FetchArgs) -> Result<()> {
    let progress = global.verbosity() >= 0;
    match &args.what {
        FetchCommand::Dataset(args) => {
            let out = args.out();
            let mut options = FetchDatasetOptions::new(args.name, &out);
            options.base_url = args.base_url.clone().or_else(|| {
                std::env::var(DATASET_BASE_URL_ENV)
                    .ok()
                    .filter(|url| !url.trim().is_empty())
            });
            options.progress = progress;
            fetch_dataset(&options)?;
            println!("{}:{}", args.name.name(), out.display());
        }
        FetchCommand::Model(args) => {
            let mut options = FetchModelOptions::new(&args.repo, args.out());
            options.revision = args.revision.clone();
            options.progress = progress;
            let dir = fetch_model(&options)?;
            println!("{}", dir.display());
        }
        FetchCommand::Sae(args) if args.list => print!("{}", release_table()),
        FetchCommand::Sae(args) => {
            let mut options = FetchSaeOptions::new(args.source.clone().unwrap_or_default());
            options.revision = args.revision.clone();
            options.out = Some(args.checkpoint()?);
            options.progress = progress;
            let r = &mut options.import;
            args.flags.apply(r);
            r.force = args.force;
            let f = fetch_sae(&options)?;
            crate::ui::info(format!(
                "{} SAE (commit {}): reads layer {}, tokens {}{}",
                f.format,
                if f.commit.is_empty() { "?" } else { &f.commit },
                f.layer.map_or("?".into(), |l| l.to_string()),
                f.tokens.map_or("?", |t| t.name()),
                f.model.map(|m| format!(", model {m}")).unwrap_or_default()
            ));
            println!("{}", f.checkpoint.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::clip::Tokens;

    fn parse(args: &[&str]) -> Result<FetchCommand, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("saeclip").chain(args.iter().copied()))?;
        match cli.command {
            Command::Fetch(fetch) => Ok(fetch.what),
            other => panic!("not fetch: {other:?}"),
        }
    }

    #[test]
    fn dataset_args_parse() {
        let FetchCommand::Dataset(args) =
            parse(&["fetch", "dataset", "cifar100", "--out", "data"]).unwrap()
        else {
            panic!("not dataset")
        };
        assert_eq!(args.name, Dataset::Cifar100);
        assert_eq!(args.out(), PathBuf::from("data"));
        assert_eq!(args.base_url, None);
        let FetchCommand::Dataset(args) = parse(&[
            "fetch",
            "dataset",
            "food101",
            "--out",
            "d",
            "--base-url",
            "http://127.0.0.1:8000/x",
        ])
        .unwrap() else {
            panic!("not dataset")
        };
        assert_eq!(args.name, Dataset::Food101);
        assert_eq!(args.base_url.as_deref(), Some("http://127.0.0.1:8000/x"));
        assert_eq!(args.out(), PathBuf::from("d"));
        let FetchCommand::Dataset(args) =
            parse(&["fetch", "dataset", "imagenet", "--out", "d"]).unwrap()
        else {
            panic!("not dataset")
        };
        assert_eq!(args.name, Dataset::ImageNet);
        assert!(parse(&["fetch", "dataset", "imagenet21k", "--out", "d"]).is_err());
        let FetchCommand::Dataset(args) = parse(&["fetch", "dataset", "cifar10"]).unwrap() else {
            panic!("not dataset")
        };
        assert_eq!(args.out(), PathBuf::from("data"), "the default");
    }

    #[test]
    fn model_args_parse() {
        let FetchCommand::Model(args) = parse(&[
            "fetch",
            "model",
            "openai/clip-vit-base-patch32",
            "--out",
            "m",
        ])
        .unwrap() else {
            panic!("not model")
        };
        assert_eq!(args.repo, "openai/clip-vit-base-patch32");
        assert_eq!(args.revision, "main");
        assert_eq!(args.out(), PathBuf::from("m"));
        let FetchCommand::Model(args) =
            parse(&["fetch", "model", "a/b", "--out", "m", "--revision", "v1"]).unwrap()
        else {
            panic!("not model")
        };
        assert_eq!(args.revision, "v1");
        let FetchCommand::Model(args) = parse(&["fetch", "model", "org/clip-b"]).unwrap() else {
            panic!("not model")
        };
        assert_eq!(args.out(), PathBuf::from("models/clip-b"), "the default");
        assert!(parse(&["fetch"]).is_err());
    }

    #[test]
    fn sae_args_parse() {
        let FetchCommand::Sae(args) = parse(&["fetch", "sae", "org/zoo/layers.3"]).unwrap() else {
            panic!("not sae")
        };
        assert_eq!(args.source.as_deref(), Some("org/zoo/layers.3"));
        assert!(!args.list);
        assert_eq!(args.revision, "main");
        assert_eq!(
            args.checkpoint().unwrap(),
            PathBuf::from("checkpoints/zoo-layers.3.safetensors")
        );
        let FetchCommand::Sae(args) = parse(&[
            "fetch",
            "sae",
            "org/zoo",
            "--out",
            "d",
            "--layer",
            "3",
            "--tokens",
            "cls",
            "--revision",
            "v1",
        ])
        .unwrap() else {
            panic!("not sae")
        };
        assert_eq!(
            args.checkpoint().unwrap(),
            PathBuf::from("d/zoo.safetensors")
        );
        assert_eq!(
            (args.flags.layer, args.flags.tokens),
            (Some(3), Some(Tokens::Cls))
        );
        let FetchCommand::Sae(args) =
            parse(&["fetch", "sae", "org/zoo", "--out", "x/a.safetensors"]).unwrap()
        else {
            panic!("not sae")
        };
        assert_eq!(args.checkpoint().unwrap(), PathBuf::from("x/a.safetensors"));
        assert!(parse(&["fetch", "sae"]).is_err(), "REPO or --list");
        let FetchCommand::Sae(args) = parse(&["fetch", "sae", "--list"]).unwrap() else {
            panic!("not sae")
        };
        assert!(args.list && args.source.is_none());
        assert!(parse(&["fetch", "sae", "--list", "org/x"]).is_err());
    }
}
