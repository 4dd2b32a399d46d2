//! `saeclip clean-checkpoint`: drop the training state from a checkpoint, optionally
//! converting its parameters to f16 or bf16.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::Args;

use crate::clip::Precision;
use crate::disk::{cleaned_checkpoint, CHECKPOINTS_DIR};
use crate::info::bytes;
use crate::sae::export::{clean_checkpoint, CleanOptions};

/// Keep only what inference needs: the SAE parameters and the header (architecture,
/// scale, CLIP source, training config, metrics). Optimizer moments, the batchtopk
/// threshold estimator and the loop's counters are dropped. Written atomically.
#[derive(Args, Debug)]
pub struct CleanCheckpointArgs {
    /// The checkpoint to clean.
    #[arg(long, value_name = "CKPT")]
    pub input: PathBuf,
    /// Where to write the cleaned checkpoint [default: checkpoints/<input stem>.safetensors,
    /// which must not exist yet; with --in-place: the input].
    #[arg(long, value_name = "CKPT")]
    pub output: Option<PathBuf>,
    /// Parameter dtype of the result (f32 keeps the parameters exactly).
    #[arg(long, value_enum, value_name = "DTYPE", default_value = "f32")]
    pub dtype: Precision,
    /// Allow the output to replace the input.
    #[arg(long)]
    pub in_place: bool,
}

impl CleanCheckpointArgs {
    /// `--output`; else the input with `--in-place`; else the default under checkpoints/.
    pub fn output(&self) -> PathBuf {
        match (&self.output, self.in_place) {
            (Some(output), _) => output.clone(),
            (None, true) => self.input.clone(),
            (None, false) => cleaned_checkpoint(Path::new(CHECKPOINTS_DIR), &self.input),
        }
    }
}

pub fn run(args: &CleanCheckpointArgs) -> Result<()> {
    let output = args.output();
    ensure!(
        args.input.exists(),
        "{} does not exist: give an SAE checkpoint with --input",
        args.input.display()
    );
    // The default name may be taken by another run's checkpoint: never replace it unasked.
    ensure!(
        args.output.is_some() || args.in_place || !output.exists(),
        "{} already exists: give --output to choose where the cleaned checkpoint goes",
        output.display()
    );
    let options = CleanOptions {
        input: args.input.clone(),
        output: output.clone(),
        dtype: args.dtype.kind(),
        in_place: args.in_place,
    };
    let sizes = clean_checkpoint(&options)?;
    println!(
        "{}: {} → {}: {} ({:.0}% smaller)",
        args.input.display(),
        bytes(sizes.before),
        output.display(),
        bytes(sizes.after),
        100.0 * (1.0 - sizes.after as f64 / sizes.before.max(1) as f64)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: CleanCheckpointArgs,
    }

    #[test]
    fn flags_parse() {
        let w = Wrapper::try_parse_from(["x", "--input", "a", "--output", "b", "--dtype", "bf16"])
            .unwrap();
        assert_eq!(w.args.dtype, Precision::Bf16);
        assert!(!w.args.in_place);
        assert_eq!(w.args.output(), PathBuf::from("b"));
        let w = Wrapper::try_parse_from(["x", "--input", "a", "--in-place"]).unwrap();
        assert!(w.args.in_place && w.args.output.is_none());
        assert_eq!(w.args.output(), PathBuf::from("a"));
        assert_eq!(w.args.dtype, Precision::F32);
        let w = Wrapper::try_parse_from(["x", "--input", "runs/r/checkpoints/best.safetensors"])
            .unwrap();
        assert_eq!(
            w.args.output(),
            PathBuf::from("checkpoints/best.safetensors"),
            "the default"
        );
        assert!(
            Wrapper::try_parse_from(["x", "--input", "a", "--output", "b", "--dtype", "f64"])
                .is_err()
        );
    }
}
