//! The one place diagnostics go: stderr, filtered by `-q`/`-v`. Results go to stdout.

use std::sync::atomic::{AtomicI8, Ordering};

static VERBOSITY: AtomicI8 = AtomicI8::new(0);

/// Set once at start-up from `-q` (−1) / `-v` (+1, +2).
pub fn set_verbosity(level: i8) {
    VERBOSITY.store(level, Ordering::Relaxed);
}

pub fn verbosity() -> i8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// Progress and status lines, hidden by `-q`.
pub fn info(msg: impl std::fmt::Display) {
    if verbosity() >= 0 {
        eprintln!("{msg}");
    }
}

/// Details shown with `-v`.
pub fn debug(msg: impl std::fmt::Display) {
    if verbosity() >= 1 {
        eprintln!("{msg}");
    }
}

/// Problems that do not stop the command; shown even with `-q`.
pub fn warn(msg: impl std::fmt::Display) {
    eprintln!("warning: {msg}");
}

/// A progress bar on stderr, hidden with `-q` or when stderr is not a terminal.
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if verbosity() < 0 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let style = indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    indicatif::ProgressBar::new(len).with_style(style)
}
