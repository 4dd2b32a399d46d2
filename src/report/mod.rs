//! Analysis of training runs: the records `train` writes (`logs`), the per-epoch Markdown
//! report and PNG plots of `analyze-logs` (`plots`).

pub mod logs;
pub mod plots;

use std::path::PathBuf;

use anyhow::Result;

use crate::disk::write_bytes_atomic;

/// What `analyze-logs` is asked to do.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// The run directory.
    pub logdir: PathBuf,
    /// Write the Markdown report here (else it is only returned).
    pub output: Option<PathBuf>,
    /// Write the PNG plots into this directory.
    pub plots: Option<PathBuf>,
}

/// What `analyze-logs` produced.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub markdown: String,
    /// The PNG files written.
    pub plots: Vec<PathBuf>,
    /// Lines of the log that were skipped, and other problems that did not stop the analysis.
    pub warnings: Vec<String>,
}

/// Read a run directory (finished or not) and write its report and plots.
pub fn analyze_logs(o: &AnalyzeOptions) -> Result<Analysis> {
    let run = logs::read_run(&o.logdir)?;
    let markdown = logs::markdown(&run);
    if let Some(path) = &o.output {
        write_bytes_atomic(path, markdown.as_bytes())?;
    }
    let plots = match &o.plots {
        Some(dir) => plots::write_plots(&run, dir)?,
        None => Vec::new(),
    };
    Ok(Analysis {
        markdown,
        plots,
        warnings: run.warnings,
    })
}
