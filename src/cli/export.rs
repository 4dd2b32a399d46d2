//! `saeclip export`: write an SAE checkpoint in another tool's format.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::sae::export::{export_saelens, ExportOptions};

/// Formats other tools read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaeFormat {
    /// A folder that SAE-Lens 6 loads with `SAE.load_from_disk` (cfg.json +
    /// sae_weights.safetensors; topk → topk, batchtopk → jumprelu, relu → standard).
    #[value(name = "saelens")]
    SaeLens,
}

/// Write an SAE checkpoint as a folder another tool loads. The input scale is folded into
/// the weights, so the other tool reads the raw CLIP activations.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Target format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: SaeFormat,
    /// The SAE checkpoint (.safetensors).
    #[arg(long, value_name = "CKPT")]
    pub sae: PathBuf,
    /// The folder to create (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an earlier export in --out.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    match args.format {
        SaeFormat::SaeLens => {
            let options = ExportOptions {
                sae: args.sae.clone(),
                out: args.out.clone(),
                force: args.force,
            };
            let result = export_saelens(&options)?;
            crate::ui::info(format!("wrote an SAE-Lens {} SAE", result.architecture));
            println!("{}", result.out.display());
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
        args: ExportArgs,
    }

    #[test]
    fn flags_parse() {
        let w = Wrapper::try_parse_from([
            "x",
            "--format",
            "saelens",
            "--sae",
            "a.safetensors",
            "--out",
            "d",
        ])
        .unwrap();
        assert_eq!(w.args.format, SaeFormat::SaeLens);
        assert!(!w.args.force);
        assert!(
            Wrapper::try_parse_from(["x", "--format", "sparsify", "--sae", "a", "--out", "d"])
                .is_err()
        );
        assert!(
            Wrapper::try_parse_from(["x", "--sae", "a", "--out", "d"]).is_err(),
            "--format is required"
        );
    }
}
