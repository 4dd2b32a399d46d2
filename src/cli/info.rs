//! `saeclip info`: describe a checkpoint, an activation cache or a run directory.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::info::describe;

/// Say what PATH is and what it holds: an SAE checkpoint (architecture, sizes, CLIP source,
/// metrics, training state), an activation cache (model, layer, tokens, rows), a training
/// run (config, epochs, metrics, time) or an SAE-Lens folder.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A checkpoint (.safetensors), a cache directory, a run directory or an SAE-Lens folder.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Print JSON instead of the readable block.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let info = describe(&args.path)?;
    let text = if args.json {
        serde_json::to_string_pretty(&info)? + "\n"
    } else {
        info.to_text()
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: InfoArgs,
    }

    #[test]
    fn flags_parse() {
        let w = Wrapper::try_parse_from(["x", "runs/a", "--json"]).unwrap();
        assert!(w.args.json);
        assert!(Wrapper::try_parse_from(["x"]).is_err(), "PATH is required");
    }
}
