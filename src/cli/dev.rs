//! `saeclip dev …` (hidden): tools for benchmarks and device checks.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::clip::Precision;
use crate::data::{DatasetSpec, Split};
use crate::devtools;

#[derive(Args, Debug)]
pub struct DevArgs {
    #[command(subcommand)]
    pub command: DevCommand,
}

/// The first `--limit` images of a dataset's split.
#[derive(Args, Debug)]
pub struct FirstImages {
    #[arg(long)]
    dataset: DatasetSpec,
    #[arg(long, value_enum, default_value = "train")]
    split: Split,
    #[arg(long)]
    limit: usize,
}

#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Write a random-weight CLIP as a Hugging Face directory.
    RandomModel {
        /// vit-b-32 or demo.
        #[arg(long, default_value = "vit-b-32")]
        preset: String,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a dataset's first images as files in class folders.
    WriteImages {
        #[command(flatten)]
        images: FirstImages,
        #[arg(long)]
        out: PathBuf,
        /// jpg or png.
        #[arg(long, default_value = "jpg")]
        format: String,
        #[arg(long, default_value_t = 90)]
        quality: u8,
    },
    /// Write a dataset's first images resized and cropped to SIZE as raw RGB bytes
    /// (OUT.u8) with their sources (OUT.txt), for scripts/train_demo_clip.py.
    DumpImages {
        #[command(flatten)]
        images: FirstImages,
        #[arg(long)]
        size: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a synthetic activation cache (sparse sums of random unit atoms).
    SyntheticCache {
        #[arg(long)]
        rows: usize,
        #[arg(long, default_value_t = 768)]
        d: i64,
        #[arg(long, default_value_t = 4096)]
        atoms: i64,
        #[arg(long, default_value_t = 32)]
        active: i64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Precision,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the max absolute and relative difference of tensors two safetensors files share.
    Compare { a: PathBuf, b: PathBuf },
}

pub fn run(args: &DevArgs) -> Result<()> {
    match &args.command {
        DevCommand::RandomModel { preset, seed, out } => {
            devtools::write_random_model(&devtools::preset(preset)?, *seed, out)?;
            println!("{}", out.display());
        }
        DevCommand::WriteImages {
            images:
                FirstImages {
                    dataset,
                    split,
                    limit,
                },
            out,
            format,
            quality,
        } => {
            let n = devtools::write_images(dataset, *split, *limit, out, format, *quality)?;
            println!("{n}");
        }
        DevCommand::DumpImages {
            images:
                FirstImages {
                    dataset,
                    split,
                    limit,
                },
            size,
            out,
        } => {
            let n = devtools::dump_images(dataset, *split, *limit, *size, out)?;
            println!("{n}");
        }
        DevCommand::SyntheticCache {
            rows,
            d,
            atoms,
            active,
            seed,
            dtype,
            out,
        } => {
            let m =
                devtools::write_synthetic_cache(*rows, *d, *atoms, *active, *seed, *dtype, out)?;
            println!("{} rows", m.rows);
        }
        DevCommand::Compare { a, b } => {
            for (name, abs, rel) in devtools::compare(a, b)? {
                println!("{name}\t{abs:.3e}\t{rel:.3e}");
            }
        }
    }
    Ok(())
}
