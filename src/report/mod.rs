//! Analysis of training runs: the records `train` writes (`logs`), the per-epoch Markdown
//! report and PNG plots of `analyze-logs` (`plots`), and the table and frontier of a sweep
//! (`sweep`).

pub mod logs;
pub mod plots;
pub mod sweep;

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

/// Read a run directory (finished or not) and write its report and plots; a sweep's run
/// directory gives one table over its members and the frontier plot.
pub fn analyze_logs(o: &AnalyzeOptions) -> Result<Analysis> {
    if o.logdir.join(crate::sae::sweep::SWEEP_FILE).exists() {
        let s = sweep::read_sweep(&o.logdir)?;
        let markdown = sweep::markdown(&s);
        if let Some(path) = &o.output {
            write_bytes_atomic(path, markdown.as_bytes())?;
        }
        let plots = match &o.plots {
            Some(dir) => sweep::write_plots(&s, dir)?,
            None => Vec::new(),
        };
        return Ok(Analysis {
            markdown,
            plots,
            warnings: s.warnings,
        });
    }
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
