//! `analyze-logs` on real runs: the per-epoch table against metrics.jsonl, the best epoch,
//! the summary, the PNG plots; runs still in progress, a truncated last line, and one-line
//! errors for a missing run or an empty log.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use saeclip::clip::Tokens;
use serde_json::Value;

const D: i64 = 16;

fn synthetic_cache(dir: &Path, n: usize) -> PathBuf {
    let x = common::planted_rows(5, n, (32, D), 3, 2.0, 0.5);
    common::write_row_cache(dir, &x, (2, Tokens::Cls), ("tiny", &"0".repeat(64)), |i| {
        format!("i{i}")
    })
}

/// A tiny run of 4 epochs (512 training rows: 8 steps each, a step line every 2 steps); `stop_after` stops it
/// early, as an interruption would.
fn tiny_run(run_dir: &Path, cache: &Path, stop_after: Option<usize>) -> PathBuf {
    let sets: Vec<String> = [
        format!("data.cache={}", cache.display()),
        format!("output.run_dir={}", run_dir.display()),
        "sae.d_sae=64".into(),
        "sae.k=4".into(),
        "sae.k_aux=8".into(),
        "training.batch_size=64".into(),
        "training.epochs=4".into(),
        "training.lr=0.004".into(),
        "training.lr_warmup_steps=2".into(),
        "training.log_every=2".into(),
    ]
    .into();
    common::train_run(&sets, stop_after)
}

/// The complete lines of a run's metrics.jsonl.
fn lines(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn analyze(args: &[&str]) -> Output {
    common::saeclip()
        .arg("analyze-logs")
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The cells of the table row of `epoch`.
fn row(markdown: &str, epoch: u64) -> Vec<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells[0].trim_end_matches(" ★") == epoch.to_string())
        .unwrap_or_else(|| panic!("no row for epoch {epoch} in:\n{markdown}"))
}

fn check_png(path: &Path) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    assert_eq!(img.dimensions(), (960, 560), "{}", path.display());
    let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    // Curves, axes and anti-aliased text make many shades; a blank or text-less plot has few.
    assert!(
        colours.len() > 40,
        "{}: only {} colours",
        path.display(),
        colours.len()
    );
    let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
    assert!(
        dark > 500,
        "{}: {dark} dark pixels (text, axes)",
        path.display()
    );
}

#[test]
fn finished_run_gives_a_true_table_a_summary_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 539);
    let run = tiny_run(&dir.path().join("run"), &cache, None);
    let report = dir.path().join("report/analysis.md");
    let plots = dir.path().join("plots");
    let out = analyze(&[
        "--logdir",
        s(&run),
        "--output",
        s(&report),
        "--plots",
        s(&plots),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "the report went to the file");
    let md = std::fs::read_to_string(&report).unwrap();
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let epochs: Vec<Value> = lines(&run)
        .into_iter()
        .filter(|v| v["type"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 4);
    // Each row shows its epoch line's numbers.
    for e in &epochs {
        let cells = row(&md, e["epoch"].as_u64().unwrap());
        assert_eq!(cells.len(), 12, "{cells:?}");
        assert_eq!(cells[1], e["step"].to_string());
        assert_eq!(cells[2], format!("{:.4}", e["evr"].as_f64().unwrap()));
        assert_eq!(cells[3], format!("{:.4}", e["val_evr"].as_f64().unwrap()));
        assert_eq!(
            cells[4],
            format!("{:.4}", e["val_evr_seed"].as_f64().unwrap())
        );
        assert_eq!(cells[6], format!("{:.1}", e["val_l0"].as_f64().unwrap()));
        assert_eq!(
            cells[9],
            format!("{:.1}%", 100.0 * e["dead_frac"].as_f64().unwrap())
        );
        assert_eq!(cells[10], format!("{:.2e}", e["lr"].as_f64().unwrap()));
        // Wall time with three significant digits: the epoch's own time, not "0.0 s".
        let e_time = e["time"].as_f64().unwrap();
        let before = epochs
            .iter()
            .find(|p| p["epoch"].as_u64() == e["epoch"].as_u64().map(|n| n - 1))
            .map_or(0.0, |p| p["time"].as_f64().unwrap());
        let seconds = e_time - before;
        let shown: f64 = match cells[11].split_once(' ') {
            Some((v, "ms")) => v.parse::<f64>().unwrap() / 1000.0,
            Some((v, "s")) => v.parse().unwrap(),
            _ => panic!("wall time: {cells:?}"),
        };
        let digits = cells[11].chars().filter(|c| c.is_ascii_digit()).count();
        assert!(
            digits >= 3 && (shown - seconds).abs() <= 0.005 * seconds,
            "epoch {} took {seconds} s, shown {:?}",
            e["epoch"],
            cells[11]
        );
    }
    // Exactly one best row: the summary's best epoch.
    assert_eq!(md.matches(" ★ |").count(), 1, "{md}");
    let best = summary["best_epoch"].as_u64().unwrap();
    assert!(row(&md, best)[0].ends_with('★'));
    assert!(
        md.contains(&format!(
            "- best epoch: {best} (val evr {:.4})",
            summary["best_val_evr"].as_f64().unwrap()
        )),
        "{md}"
    );
    assert!(
        md.contains("Status: finished: 4 epochs of 4, 32 steps"),
        "{md}"
    );
    assert!(md.contains(&format!(
        "val evr {:.4}",
        summary["final"]["val_evr"].as_f64().unwrap()
    )));
    assert!(
        md.contains("- total time: ") && md.contains("rows/s") && md.contains("steps/s"),
        "{md}"
    );
    // Which window the dead fraction was counted over.
    let window = summary["final"]["dead_window"].as_i64().unwrap();
    assert!(
        md.contains(&format!("(silent over the last {window} training rows")),
        "{md}"
    );
    // Plots.
    for name in ["loss", "evr", "l0", "dead_frac"] {
        check_png(&plots.join(format!("{name}.png")));
    }
    // Without --output the report goes to stdout.
    let out = analyze(&["--logdir", s(&run)]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), md);
}

#[test]
fn a_run_in_progress_with_a_truncated_line_is_analyzed_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 539);
    let run = tiny_run(&dir.path().join("run"), &cache, Some(2));
    assert!(!run.join("summary.json").exists());
    std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("metrics.jsonl"))
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, b"{\"type\": \"step\", \"step\": 18, \"lo")
        })
        .unwrap();
    let plots = dir.path().join("plots");
    let out = analyze(&["--logdir", s(&run), "--plots", s(&plots)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("last line"),
        "{stderr}"
    );
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("in progress or interrupted (no summary.json): 2 epochs of 4 logged"),
        "{md}"
    );
    row(&md, 1);
    row(&md, 2);
    assert!(!md.lines().any(|l| l.starts_with("| 3")), "{md}");
    assert!(plots.join("dead_frac.png").exists());

    // Only step lines so far (the first epoch has not ended).
    let early = dir.path().join("early");
    std::fs::create_dir(&early).unwrap();
    let steps: Vec<String> = lines(&run)
        .into_iter()
        .filter(|v| v["type"] == "step" && v["epoch"] == 1)
        .map(|v| v.to_string())
        .collect();
    std::fs::write(early.join("metrics.jsonl"), steps.join("\n") + "\n").unwrap();
    let plots = dir.path().join("early-plots");
    let out = analyze(&["--logdir", s(&early), "--plots", s(&plots)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("No epoch has finished yet") && md.contains("last step logged (8)"),
        "{md}"
    );
    for name in ["loss", "evr", "l0"] {
        check_png(&plots.join(format!("{name}.png")));
    }
    assert!(
        !plots.join("dead_frac.png").exists(),
        "no epoch line, no dead fraction"
    );
}

#[test]
fn missing_runs_and_empty_logs_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::fails_cleanly(
        &analyze(&["--logdir", s(&d.join("no-such-run"))]),
        "does not exist",
    );
    std::fs::create_dir(d.join("not-a-run")).unwrap();
    common::fails_cleanly(
        &analyze(&["--logdir", s(&d.join("not-a-run"))]),
        "no metrics.jsonl",
    );
    std::fs::write(d.join("file"), "x").unwrap();
    common::fails_cleanly(
        &analyze(&["--logdir", s(&d.join("file"))]),
        "not a directory",
    );
    std::fs::create_dir(d.join("empty")).unwrap();
    std::fs::write(d.join("empty/metrics.jsonl"), "").unwrap();
    common::fails_cleanly(
        &analyze(&["--logdir", s(&d.join("empty"))]),
        "no complete metrics record",
    );
    std::fs::create_dir(d.join("garbage")).unwrap();
    std::fs::write(d.join("garbage/metrics.jsonl"), "{\"type\": \"ep").unwrap();
    let out = analyze(&[
        "--logdir",
        s(&d.join("garbage")),
        "--output",
        s(&d.join("r.md")),
    ]);
    common::fails_cleanly(&out, "no complete metrics record");
    assert!(!d.join("r.md").exists(), "no report for a failed analysis");
}
