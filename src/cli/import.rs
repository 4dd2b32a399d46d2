//! `saeclip import`: read an SAE in another tool's format into a saeclip checkpoint.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::export::SaeFormat;
use crate::clip::Precision;
use crate::sae::export::{import_saelens, ImportOptions};

/// Read an SAE written by another tool and write it as a saeclip checkpoint. SAE-Lens:
/// topk → topk, jumprelu with one threshold for all latents → batchtopk, standard → relu;
/// a folder written by `saeclip export` comes back with its original header.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Source format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: SaeFormat,
    /// The folder to read (SAE-Lens: cfg.json + sae_weights.safetensors).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The checkpoint to write (.safetensors).
    #[arg(long, value_name = "CKPT")]
    pub out: PathBuf,
    /// k for a jumprelu SAE whose folder does not record it (batchtopk keeps k for training).
    #[arg(long, value_name = "K")]
    pub k: Option<i64>,
    /// Parameter dtype of the checkpoint.
    #[arg(long, value_enum, value_name = "DTYPE", default_value = "f32")]
    pub dtype: Precision,
    /// Overwrite an existing --out.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &ImportArgs) -> Result<()> {
    match args.format {
        SaeFormat::SaeLens => {
            let options = ImportOptions {
                dir: args.dir.clone(),
                out: args.out.clone(),
                k: args.k,
                dtype: args.dtype.kind(),
                force: args.force,
            };
            let sae = import_saelens(&options)?;
            crate::ui::info(format!(
                "imported a {} SAE {} → {} (k = {})",
                sae.config.architecture, sae.config.d_in, sae.config.d_sae, sae.config.k
            ));
            println!("{}", args.out.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: ImportArgs,
    }

    #[test]
    fn flags_parse() {
        let w = Wrapper::try_parse_from([
            "x",
            "--format",
            "saelens",
            "dir",
            "--out",
            "c.safetensors",
            "--k",
            "32",
        ])
        .unwrap();
        assert_eq!(w.args.dir, PathBuf::from("dir"));
        assert_eq!(w.args.k, Some(32));
        assert_eq!(w.args.dtype, Precision::F32);
        assert!(
            Wrapper::try_parse_from(["x", "--format", "saelens", "--out", "c"]).is_err(),
            "DIR is required"
        );
    }
}
