//! `saeclip analyze-logs`: the per-epoch table, summary and plots of a training run.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::report::{analyze_logs, AnalyzeOptions};

/// Summarise a run directory (finished or still running): a Markdown table with one row
/// per epoch (best epoch marked), a summary, and optionally PNG plots against the step. For
/// a sweep's directory: one row per member and a plot of validation evr against l0.
#[derive(Args, Debug)]
pub struct AnalyzeLogsArgs {
    /// The run directory that `saeclip train` created (holds metrics.jsonl, or sweep.json).
    #[arg(long, value_name = "RUN")]
    pub logdir: PathBuf,
    /// Write the Markdown report to this file instead of stdout.
    #[arg(long, value_name = "MD")]
    pub output: Option<PathBuf>,
    /// Write loss.png, evr.png, l0.png and dead_frac.png (frontier.png for a sweep) into this
    /// directory.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
}

pub fn run(args: &AnalyzeLogsArgs) -> Result<()> {
    let options = AnalyzeOptions {
        logdir: args.logdir.clone(),
        output: args.output.clone(),
        plots: args.plots.clone(),
    };
    let analysis = analyze_logs(&options)?;
    for w in &analysis.warnings {
        crate::ui::warn(w);
    }
    match &args.output {
        Some(path) => crate::ui::info(format!("wrote {}", path.display())),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(analysis.markdown.as_bytes())?;
            out.flush()?;
        }
    }
    for p in &analysis.plots {
        crate::ui::info(format!("wrote {}", p.display()));
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
        args: AnalyzeLogsArgs,
    }

    #[test]
    fn flags_parse() {
        let w = Wrapper::try_parse_from(["x", "--logdir", "runs/a", "--plots", "p"]).unwrap();
        assert_eq!(w.args.logdir, PathBuf::from("runs/a"));
        assert_eq!(w.args.plots, Some(PathBuf::from("p")));
        assert!(w.args.output.is_none());
        assert!(
            Wrapper::try_parse_from(["x"]).is_err(),
            "--logdir is required"
        );
    }
}
