//! Sweeps (`sweep:` in the training config): a 2×2 sweep on a small synthetic cache against
//! the four configurations trained alone, a stopped sweep resumed (one member a checkpoint
//! ahead of the others), `sweep={}` as a single run, one-line errors that write nothing, and
//! `analyze-logs` over the members.

mod common;

use std::path::{Path, PathBuf};

use saeclip::clip::Tokens;
use saeclip::sae::config::TrainConfig;
use saeclip::sae::sweep::SweepFile;
use saeclip::sae::train::{train, TrainOptions, TrainResult};
use serde_json::Value;
use tch::Device;

const D: i64 = 16;

fn synthetic_cache(dir: &Path, n: usize) -> PathBuf {
    let x = common::planted_rows(11, n, (32, D), 3, 2.0, 0.5);
    common::write_row_cache(dir, &x, (2, Tokens::Cls), ("tiny", &"0".repeat(64)), |i| {
        format!("i{i}")
    })
}

/// 3 epochs of 5 steps (about 600 training rows, batches of 128), AuxK on.
fn sets(cache: &Path, run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut sets: Vec<String> = [
        format!("data.cache={}", cache.display()),
        format!("output.run_dir={}", run_dir.display()),
        "sae.d_sae=64".into(),
        "sae.k_aux=8".into(),
        "training.batch_size=128".into(),
        "training.epochs=3".into(),
        "training.lr_warmup_steps=3".into(),
        "training.log_every=2".into(),
        "training.dead_window=300".into(),
    ]
    .into();
    sets.extend(extra.iter().map(|s| s.to_string()));
    sets
}

fn run(sets: &[String], resume: Option<&Path>, stop: Option<usize>) -> TrainResult {
    train(&TrainOptions {
        config: TrainConfig::from_yaml("", sets).unwrap(),
        device: Device::Cpu,
        model_load: Default::default(),
        resume: resume.map(Path::to_path_buf),
        stop_after_epochs: stop,
        stop_after_steps: None,
    })
    .unwrap()
}

const SWEEP: [&str; 2] = ["sweep.sae.k=[4, 8]", "sweep.training.lr=[0.004, 0.002]"];
const NAMES: [&str; 4] = ["k4-lr0.004", "k4-lr0.002", "k8-lr0.004", "k8-lr0.002"];

fn read(p: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = saeclip::clip::weights::read_safetensors(p)
        .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// Every tensor of the two files (parameters and optimizer state) bit-identical.
fn same_tensors(a: &Path, b: &Path) {
    let (ta, tb) = (read(a), read(b));
    assert_eq!(ta.len(), tb.len(), "{} vs {}", a.display(), b.display());
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(
            xa.equal(xb),
            "{na} differs: {} vs {}",
            a.display(),
            b.display()
        );
    }
}

fn same_run(a: &Path, b: &Path) {
    for f in ["last", "best"] {
        same_tensors(
            &a.join(format!("checkpoints/{f}.safetensors")),
            &b.join(format!("checkpoints/{f}.safetensors")),
        );
    }
    assert_eq!(
        common::timeless_metric_lines(a),
        common::timeless_metric_lines(b),
        "{} vs {}",
        a.display(),
        b.display()
    );
}

#[test]
fn sweep_members_equal_solo_runs_and_a_stopped_sweep_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 640);
    let root = dir.path().join("sweep");
    let result = run(&sets(&cache, &root, &SWEEP), None, None);
    assert_eq!(result.run_dir, root);
    assert!(result.summary.is_none());
    let names: Vec<&str> = result.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, NAMES);

    // sweep.json lists the members with their overrides and final metrics.
    let file = SweepFile::read(&root).unwrap();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(json["members"][2]["name"], "k8-lr0.004");
    assert_eq!(json["members"][2]["run_dir"], "k8-lr0.004");
    assert_eq!(json["members"][2]["overrides"]["sae.k"], 8);
    assert_eq!(json["members"][2]["overrides"]["training.lr"], 0.004);
    assert!(json["members"][2]["final"]["val_evr"].is_f64());
    assert!(!root.join("metrics.jsonl").exists());

    // Each member is the same configuration trained alone, bit for bit.
    for (i, (k, lr)) in [
        ("4", "0.004"),
        ("4", "0.002"),
        ("8", "0.004"),
        ("8", "0.002"),
    ]
    .iter()
    .enumerate()
    {
        let member = root.join(NAMES[i]);
        let member_config = std::fs::read_to_string(member.join("config.yaml")).unwrap();
        assert!(
            !member_config.lines().any(|l| l.starts_with("sweep")),
            "{member_config}"
        );
        let resolved = TrainConfig::load(&member.join("config.yaml"), &[]).unwrap();
        assert_eq!(resolved.sae.k.to_string(), *k);
        assert_eq!(resolved.training.lr.to_string(), *lr);
        let solo_dir = dir.path().join(format!("solo{i}"));
        let k_set = format!("sae.k={k}");
        let lr_set = format!("training.lr={lr}");
        let solo = run(&sets(&cache, &solo_dir, &[&k_set, &lr_set]), None, None);
        same_run(&solo_dir, &member);
        let summary_of = |run: &Path| -> saeclip::sae::train::Summary {
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap())
                .unwrap()
        };
        assert!(solo.summary.is_some());
        let (summary, solo_summary) = (summary_of(&member), summary_of(&solo_dir));
        assert_eq!(summary.final_metrics, solo_summary.final_metrics);
        assert_eq!(summary.best_epoch, solo_summary.best_epoch);
        assert_eq!(
            file.members[i].final_metrics.as_ref(),
            Some(&solo_summary.final_metrics)
        );
        // Published under a name of its own.
        assert!(dir
            .path()
            .join(format!("checkpoints/sweep-{}.safetensors", NAMES[i]))
            .exists());
    }

    // Stopped after one epoch, then after two (for the first member only), then resumed:
    // the members end where the uninterrupted sweep did.
    let stopped = dir.path().join("stopped");
    let r = run(&sets(&cache, &stopped, &SWEEP), None, Some(1));
    assert!(r.members.iter().all(|m| m.summary.is_none()));
    assert!(SweepFile::read(&stopped).unwrap().members[0]
        .final_metrics
        .is_none());
    // As if killed between two members' end-of-epoch checkpoints: the first member is an
    // epoch ahead of the others, and a half-written line ends another's log.
    let ahead = dir.path().join("ahead");
    run(&sets(&cache, &ahead, &SWEEP), None, Some(2));
    let first = NAMES[0];
    for f in [
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
        "metrics.jsonl",
    ] {
        std::fs::copy(ahead.join(first).join(f), stopped.join(first).join(f)).unwrap();
    }
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(stopped.join(NAMES[1]).join("metrics.jsonl"))
            .unwrap();
        f.write_all(b"{\"type\": \"step\", \"st").unwrap();
    }
    let resumed = train(&TrainOptions {
        config: TrainConfig::default(),
        device: Device::Cpu,
        model_load: Default::default(),
        resume: Some(stopped.clone()),
        stop_after_epochs: None,
        stop_after_steps: None,
    })
    .unwrap();
    assert!(resumed.members.iter().all(|m| m.summary.is_some()));
    for name in NAMES {
        same_run(&root.join(name), &stopped.join(name));
    }
    // Stopped before any member's first checkpoint: resuming starts every member again.
    let early = dir.path().join("early");
    run(&sets(&cache, &early, &SWEEP), None, Some(0));
    assert!(!early
        .join(NAMES[0])
        .join("checkpoints/last.safetensors")
        .exists());
    run(&[], Some(&early), None);
    for name in NAMES {
        same_run(&root.join(name), &early.join(name));
    }
    let back = SweepFile::read(&stopped).unwrap();
    for (a, b) in file.members.iter().zip(&back.members) {
        assert_eq!(a.final_metrics, b.final_metrics);
    }
}

#[test]
fn an_empty_sweep_is_one_run_and_bad_sweeps_fail_in_one_line_writing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 300);
    let yaml = dir.path().join("c.yaml");
    std::fs::write(&yaml, "sweep:\n  sae.k: [4, 8]\n").unwrap();
    let base = sets(&cache, &dir.path().join("out"), &[]);
    let train_cli = |extra: &[&str]| {
        let mut cmd = common::saeclip();
        cmd.args(["train", "--config", yaml.to_str().unwrap()]);
        for s in &base {
            cmd.args(["--set", s]);
        }
        for s in extra {
            cmd.args(["--set", s]);
        }
        cmd.output().unwrap()
    };
    let cases: [(&[&str], &str); 7] = [
        (&["sweep.data.val_fraction=[0.1, 0.2]"], "data.val_fraction"),
        (
            &["sweep.training.batch_size=[64, 128]"],
            "training.batch_size",
        ),
        (&["sweep.training.steps=[10, 20]"], "training.steps"),
        (&["sweep.sae.k=[]"], "sae.k"),
        (&["sweep.training.lr=0.1"], "training.lr"),
        (&["sweep.sae.kk=[1, 2]"], "sae.kk"),
        (&["sweep.sae.k=[4, 1000]"], "sae.k"),
    ];
    for (extra, expect) in cases {
        let out = train_cli(extra);
        common::fails_cleanly(&out, expect);
        assert!(
            !dir.path().join("out").exists(),
            "{extra:?}: nothing is written"
        );
    }
    // sweep={} trains the one configuration, exactly as without a sweep section.
    let out = train_cli(&["sweep={}"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let single = dir.path().join("out");
    assert!(!single.join("sweep.json").exists());
    assert!(!std::fs::read_to_string(single.join("config.yaml"))
        .unwrap()
        .lines()
        .any(|l| l.starts_with("sweep")));
    let plain_dir = dir.path().join("plain");
    run(&sets(&cache, &plain_dir, &[]), None, None);
    same_run(&plain_dir, &single);
    // A sweep directory is not overwritten by a new run.
    let sweep_dir = dir.path().join("s2");
    run(
        &sets(&cache, &sweep_dir, &["sweep.sae.k=[4]"]),
        None,
        Some(0),
    );
    let o = TrainOptions {
        config: TrainConfig::from_yaml("", &sets(&cache, &sweep_dir, &[])).unwrap(),
        device: Device::Cpu,
        model_load: Default::default(),
        resume: None,
        stop_after_epochs: None,
        stop_after_steps: None,
    };
    let err = format!("{:#}", train(&o).unwrap_err());
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn analyze_logs_tables_the_members_and_plots_the_frontier() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 400);
    let root = dir.path().join("sweep");
    let result = run(
        &sets(
            &cache,
            &root,
            &["sweep.sae.k=[2, 4, 8]", "training.epochs=2"],
        ),
        None,
        None,
    );
    // One member still "training": its summary is gone and the table shows its last epoch.
    std::fs::remove_file(root.join("k8").join("summary.json")).unwrap();
    let plots = dir.path().join("plots");
    let out = common::saeclip()
        .args(["analyze-logs", "--logdir"])
        .arg(&root)
        .arg("--plots")
        .arg(&plots)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<String>> = md
        .lines()
        .filter(|l| l.starts_with("| k"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 3, "{md}");
    let best_evr = result
        .members
        .iter()
        .map(|m| m.summary.as_ref().unwrap().final_metrics.val_evr)
        .fold(f64::NEG_INFINITY, f64::max);
    for (row, m) in rows.iter().zip(&result.members) {
        let s = m.summary.as_ref().unwrap();
        let star = if s.final_metrics.val_evr == best_evr {
            " ★"
        } else {
            ""
        };
        assert_eq!(row[0], format!("{}{star}", m.name), "{md}");
        assert!(row[1].starts_with("sae.k="), "{md}");
        assert_eq!(row[2], format!("{:.4}", s.final_metrics.val_evr), "{md}");
        assert_eq!(row[3], format!("{:.1}", s.final_metrics.val_l0), "{md}");
        assert_eq!(row[5], s.best_epoch.to_string(), "{md}");
    }
    assert_eq!(rows[0][6], "finished");
    assert_eq!(rows[2][6], "2 epochs logged", "{md}");
    // l0 grows with k: the frontier has three distinct points.
    let l0: Vec<f64> = rows.iter().map(|r| r[3].parse().unwrap()).collect();
    assert!(l0[0] < l0[1] && l0[1] < l0[2], "{l0:?}");
    let img = image::open(plots.join("frontier.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (960, 560));
    let colored = img
        .pixels()
        .filter(|p| p.0[2] > p.0[0].saturating_add(60))
        .count();
    assert!(colored > 100, "the frontier's points are drawn");
}
