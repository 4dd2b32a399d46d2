//! `saeclip export`: write an SAE checkpoint in another tool's format.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::sae::export::{export_saelens, ExportOptions};
use crate::sae::interop::writers::{export_saev, export_sparsify};

/// Formats other tools read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaeFormat {
    /// A folder that SAE-Lens 6 loads with `SAE.load_from_disk` (cfg.json +
    /// sae_weights.safetensors; topk → topk, batchtopk → jumprelu, relu → standard).
    #[value(name = "saelens")]
    SaeLens,
    /// A folder that eai-sparsify 1.3.3 loads with `SparseCoder.load_from_disk` (cfg.json +
    /// sae.safetensors; topk SAEs only).
    #[value(name = "sparsify")]
    Sparsify,
    /// A saev 0.1.0 run folder: sae.pt (`saev.nn.load`) + config.json with the hook point
    /// (relu SAEs whose width is a multiple of d_in).
    #[value(name = "saev")]
    Saev,
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
    let options = ExportOptions {
        sae: args.sae.clone(),
        out: args.out.clone(),
        force: args.force,
    };
    let (result, tool) = match args.format {
        SaeFormat::SaeLens => (export_saelens(&options)?, "an SAE-Lens"),
        SaeFormat::Sparsify => (export_sparsify(&options)?, "a sparsify"),
        SaeFormat::Saev => (export_saev(&options)?, "a saev 0.1.0"),
    };
    crate::ui::info(format!("wrote {tool} {} SAE", result.architecture));
    println!("{}", result.out.display());
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
        for format in ["sparsify", "saev"] {
            assert!(
                Wrapper::try_parse_from(["x", "--format", format, "--sae", "a", "--out", "d"])
                    .is_ok()
            );
        }
        assert!(Wrapper::try_parse_from([
            "x",
            "--format",
            "dictionary-learning",
            "--sae",
            "a",
            "--out",
            "d"
        ])
        .is_err());
        assert!(
            Wrapper::try_parse_from(["x", "--sae", "a", "--out", "d"]).is_err(),
            "--format is required"
        );
    }
}
