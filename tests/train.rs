//! `train` end to end on small synthetic caches: the run directory, metrics against a
//! direct computation, schedules, config errors, resume equality, atomic checkpoints,
//! NaN handling, and training from a model + dataset (extracting first).

mod common;

use std::path::{Path, PathBuf};

use saeclip::clip::Tokens;
use saeclip::sae::checkpoint;
use saeclip::sae::config::TrainConfig;
use saeclip::sae::train::{train, TrainOptions};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const D: i64 = 32;

/// A cache of `n` rows (one per image) drawn from a planted dictionary of 64 unit atoms,
/// 4 active per row, plus an offset and a little noise. `nan_row` poisons one row.
fn synthetic_cache(dir: &Path, n: usize, nan_row: Option<usize>) -> PathBuf {
    let x = saeclip::rng::seeded(7, || {
        let atoms = Tensor::randn([64, D], (Kind::Float, Device::Cpu));
        let atoms = &atoms / atoms.norm_scalaropt_dim(2.0, [1], true);
        let codes = Tensor::rand([n as i64, 64], (Kind::Float, Device::Cpu));
        let keep = codes.ge_tensor(&codes.topk(4, 1, true, true).0.select(1, 3).unsqueeze(1));
        let mags = Tensor::rand([n as i64, 64], (Kind::Float, Device::Cpu)) * 3.0 + 0.5;
        (mags * keep.to_kind(Kind::Float)).matmul(&atoms)
            + 0.5
            + Tensor::randn([n as i64, D], (Kind::Float, Device::Cpu)) * 0.01
    });
    if let Some(r) = nan_row {
        let _ = x.get(r as i64).fill_(f64::NAN);
    }
    common::write_row_cache(
        dir,
        &x,
        (0, Tokens::Cls),
        ("synthetic", &"0".repeat(64)),
        |i| format!("row{i}"),
    )
}

fn config(cache: &Path, runs: &Path, extra: &[&str]) -> TrainConfig {
    let mut sets: Vec<String> = [
        format!("data.cache={}", cache.display()),
        format!("output.runs_dir={}", runs.display()),
        "sae.d_sae=128".into(),
        "sae.k=8".into(),
        "sae.k_aux=16".into(),
        "training.batch_size=128".into(),
        "training.epochs=4".into(),
        "training.lr=0.004".into(),
        "training.lr_warmup_steps=5".into(),
        "training.log_every=2".into(),
        "training.dead_window=2000".into(),
    ]
    .into();
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_yaml("", &sets).unwrap()
}

fn options(config: TrainConfig) -> TrainOptions {
    TrainOptions {
        config,
        device: Device::Cpu,
        model_load: Default::default(),
        resume: None,
        stop_after_epochs: None,
        stop_after_steps: None,
    }
}

#[test]
fn training_fills_the_run_directory_and_its_metrics_are_true() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 1200, None);
    let result = train(&options(config(
        &cache,
        &dir.path().join("runs"),
        &["data.val_fraction=0"],
    )))
    .unwrap();
    let run = result.run_dir;
    let summary = result.summary.unwrap();
    for f in [
        "config.yaml",
        "metrics.jsonl",
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
        "summary.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let name = run.file_name().unwrap().to_str().unwrap();
    assert!(
        name.len() == 15 && name.as_bytes()[8] == b'_',
        "run name {name}"
    );
    // The resolved config reads back as the same config.
    let back = TrainConfig::load(&run.join("config.yaml"), &[]).unwrap();
    assert_eq!(back.sae.k, 8);
    let all = common::metric_lines(&run);
    let steps: Vec<&Value> = all.iter().filter(|v| v["type"] == "step").collect();
    let epochs: Vec<&Value> = all.iter().filter(|v| v["type"] == "epoch").collect();
    assert_eq!(epochs.len(), 4);
    assert_eq!(steps.len(), 40 / 2, "10 steps per epoch, a line every 2");
    for key in [
        "step", "epoch", "loss", "mse", "aux_loss", "l0", "evr", "lr", "k",
    ] {
        assert!(steps[0].get(key).is_some(), "step line lacks {key}");
    }
    for key in ["val_evr", "val_l0", "dead_frac", "evr_seed"] {
        assert!(epochs[0].get(key).is_some(), "epoch line lacks {key}");
    }
    let loss = |v: &Value| v["loss"].as_f64().unwrap();
    assert!(loss(epochs[3]) < loss(epochs[0]), "loss must decrease");
    assert!(summary.best_val_evr > 0.5, "{summary:?}");
    assert_eq!(summary.steps, 40);
    // Decoder rows have unit norm.
    let (sae, meta) =
        checkpoint::load_sae(&run.join("checkpoints/last.safetensors"), Device::Cpu).unwrap();
    let norms = sae.w_dec.norm_scalaropt_dim(2.0, [1], false);
    assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    assert_eq!(meta.metrics["epoch"], 4);
    // The final evr equals a direct computation over all rows (val_fraction 0).
    let x = saeclip::data::cache::ActivationCache::open(&cache)
        .unwrap()
        .load_all(Kind::Float)
        .unwrap()
        .activations;
    let x_hat = sae.reconstruct(&x);
    let x64 = x.to_kind(Kind::Double);
    let err = (&x64 - x_hat.to_kind(Kind::Double))
        .square()
        .sum(Kind::Double)
        .double_value(&[]);
    let total = (&x64 - x64.mean_dim(0, true, Kind::Double))
        .square()
        .sum(Kind::Double)
        .double_value(&[]);
    let direct = 1.0 - err / total;
    assert!(
        (direct - summary.final_metrics.val_evr).abs() < 1e-6,
        "{direct} vs {}",
        summary.final_metrics.val_evr
    );
    let codes = sae.encode(&x);
    let l0 = codes
        .gt(0.0)
        .to_kind(Kind::Double)
        .sum_dim_intlist(1, false, Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!((l0 - summary.final_metrics.val_l0).abs() < 1e-9);
}

#[test]
fn k_warmup_and_lr_schedule_show_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 600, None);
    let c = config(
        &cache,
        &dir.path().join("runs"),
        &[
            "training.k_start=32",
            "training.k_warmup_steps=10",
            "training.log_every=1",
            "training.lr_schedule=cosine",
        ],
    );
    let run = train(&options(c)).unwrap().run_dir;
    let steps: Vec<Value> = common::metric_lines(&run)
        .into_iter()
        .filter(|v| v["type"] == "step")
        .collect();
    let ks: Vec<i64> = steps.iter().map(|v| v["k"].as_i64().unwrap()).collect();
    assert_eq!(ks[0], 32);
    assert!(
        ks.windows(2).all(|w| w[1] <= w[0]),
        "k decreases monotonically: {ks:?}"
    );
    assert_eq!(*ks.last().unwrap(), 8, "k reaches its target");
    let lrs: Vec<f64> = steps.iter().map(|v| v["lr"].as_f64().unwrap()).collect();
    assert!((lrs[4] - 0.004).abs() < 1e-12, "warm-up ends at lr");
    assert!(lrs[0] < lrs[4] && *lrs.last().unwrap() < 0.001, "{lrs:?}");
    // l0 follows k for topk.
    let l0: Vec<f64> = steps.iter().map(|v| v["l0"].as_f64().unwrap()).collect();
    assert!(l0[0] > 16.0 && *l0.last().unwrap() <= 8.0 + 1e-9, "{l0:?}");
}

#[test]
fn other_architectures_train() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 600, None);
    for arch in ["batchtopk", "relu"] {
        let extra = [
            format!("sae.architecture={arch}"),
            "sae.l1_coef=0.001".into(),
            "training.l1_warmup_steps=10".into(),
            "training.epochs=30".into(),
        ];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let s = train(&options(config(&cache, &dir.path().join(arch), &extra)))
            .unwrap()
            .summary
            .unwrap();
        // A 150-step run: enough to show learning, not convergence.
        assert!(
            s.final_metrics.val_evr.is_finite() && s.final_metrics.val_evr > 0.2,
            "{arch}: {s:?}"
        );
        if arch == "batchtopk" {
            let (sae, _) = checkpoint::load_sae(
                &dir.path()
                    .join(arch)
                    .read_dir()
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .path()
                    .join("checkpoints/best.safetensors"),
                Device::Cpu,
            )
            .unwrap();
            assert!(
                sae.threshold.is_some(),
                "batchtopk keeps its inference threshold"
            );
            assert!(
                (s.final_metrics.val_l0 - 8.0).abs() < 6.0,
                "threshold l0 near k: {}",
                s.final_metrics.val_l0
            );
        }
    }
}

#[test]
fn resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 700, None);
    let whole = train(&options(config(&cache, &dir.path().join("a"), &[])))
        .unwrap()
        .run_dir;
    let mut o = options(config(&cache, &dir.path().join("b"), &[]));
    o.stop_after_epochs = Some(2);
    let partial = train(&o).unwrap();
    assert!(partial.summary.is_none());
    let run = partial.run_dir;
    // Simulate a crash that left a half-written line.
    std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("metrics.jsonl"))
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"{\"type\": \"step\", \"st")
        })
        .unwrap();
    let mut o = options(TrainConfig::default());
    o.resume = Some(run.clone());
    let resumed = train(&o).unwrap();
    assert!(resumed.summary.is_some());
    let read = |p: PathBuf| {
        let mut t = saeclip::clip::weights::read_safetensors(&p).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let a = read(whole.join("checkpoints/last.safetensors"));
    let b = read(run.join("checkpoints/last.safetensors"));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }
    assert_eq!(
        common::timeless_metric_lines(&whole),
        common::timeless_metric_lines(&run),
        "the metric lines must match too"
    );
}

#[test]
fn nan_stops_training_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    synthetic_cache(&cache, 600, None);
    let mut o = options(config(&cache, &dir.path().join("runs"), &[]));
    o.stop_after_epochs = Some(1);
    let run = train(&o).unwrap().run_dir;
    let good = std::fs::read(run.join("checkpoints/last.safetensors")).unwrap();
    // Poison the data, then continue.
    synthetic_cache(&cache, 600, Some(5));
    let mut o = options(TrainConfig::default());
    o.resume = Some(run.clone());
    let err = train(&o).unwrap_err();
    assert!(
        format!("{err:#}").contains("NaN") || format!("{err:#}").contains("non-finite"),
        "{err:#}"
    );
    assert_eq!(
        std::fs::read(run.join("checkpoints/last.safetensors")).unwrap(),
        good
    );
}

fn saeclip_train(args: &[&str]) -> std::process::Output {
    common::saeclip().arg("train").args(args).output().unwrap()
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 200, None);
    let yaml = dir.path().join("c.yaml");
    std::fs::write(
        &yaml,
        format!("data:\n  cache: {}\nsae:\n  d_sae: 64\n", cache.display()),
    )
    .unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--set", "sae.kk=3"], "kk"),
        (&["--set", "sae.k=0"], "sae.k"),
        (&["--set", "sae.k=65"], "sae.k"),
        (&["--set", "training.lr=0"], "training.lr"),
        (&["--set", "training.lr=-2e-4"], "training.lr"),
        (&["--set", "data.cache=/no/such/cache"], "/no/such/cache"),
        (&["--set", "training.epochs=lots"], "epochs"),
    ];
    for (args, expect) in cases {
        let out = saeclip_train(&[&["--config", yaml.to_str().unwrap()], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| !l.trim().is_empty()).count(),
            1,
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"));
    }
    let std::process::Output { status, stderr, .. } =
        saeclip_train(&["--config", "/no/config.yaml"]);
    assert!(!status.success() && String::from_utf8_lossy(&stderr).contains("/no/config.yaml"));
}

#[test]
fn checkpoints_survive_kill_9_at_any_moment() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 4000, None);
    let runs = dir.path().join("runs");
    for (i, delay_ms) in [0u64, 37, 110, 250, 420, 730].into_iter().enumerate() {
        let run_dir = runs.join(format!("r{i}"));
        let mut child = common::saeclip()
            .args(["train", "--config", "/dev/null", "--device", "cpu", "-q"])
            .args(["--set", &format!("data.cache={}", cache.display())])
            .args(["--set", &format!("output.run_dir={}", run_dir.display())])
            .args([
                "--set",
                "sae.d_sae=2048",
                "--set",
                "sae.k=8",
                "--set",
                "training.batch_size=4000",
            ])
            .args([
                "--set",
                "training.epochs=1000",
                "--set",
                "training.lr_warmup_steps=0",
                "--set",
                "data.val_fraction=0",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the first checkpoint, then kill at some moment of the following ones.
        let last = run_dir.join("checkpoints/last.safetensors");
        let start = std::time::Instant::now();
        while !last.exists() && start.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if last.exists() {
            let c = checkpoint::load(&last, Device::Cpu)
                .unwrap_or_else(|e| panic!("kill after {delay_ms} ms: {e:#}"));
            assert!(c.training.is_some());
        }
    }
    let written = (0..6)
        .filter(|i| {
            runs.join(format!("r{i}/checkpoints/last.safetensors"))
                .exists()
        })
        .count();
    assert_eq!(written, 6, "every killed run had written checkpoints");
}

#[test]
fn training_from_a_model_and_dataset_extracts_first_then_reuses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::reference_model("tiny-quick").join("hf");
    let yaml = dir.path().join("c.yaml");
    std::fs::write(
        &yaml,
        format!(
            "data:\n  model: {}\n  dataset: procedural:4\n  layer: 2\n  limit: 48\nsae:\n  expansion_factor: 2\n  k: 4\ntraining:\n  batch_size: 16\n  epochs: 2\n  log_every: 1\noutput:\n  runs_dir: {}\n  caches_dir: {}\n",
            model.display(),
            dir.path().join("runs").display(),
            dir.path().join("caches").display()
        ),
    )
    .unwrap();
    let first = saeclip_train(&["--config", yaml.to_str().unwrap()]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let run = PathBuf::from(String::from_utf8_lossy(&first.stdout).trim());
    assert!(run.join("summary.json").exists());
    let caches: Vec<_> = std::fs::read_dir(dir.path().join("caches"))
        .unwrap()
        .collect();
    assert_eq!(caches.len(), 1);
    let resolved = TrainConfig::load(&run.join("config.yaml"), &[]).unwrap();
    assert!(
        resolved.data.cache.is_some(),
        "the resolved config names the cache it used"
    );
    let second = saeclip_train(&["--config", yaml.to_str().unwrap()]);
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("reusing the activation cache"));
}

#[test]
fn shipped_configs_parse_and_validate_for_vit_b_32() {
    for name in ["seed", "recommended"] {
        let path = common::root().join(format!("configs/{name}.yaml"));
        let c = TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        c.validate(768).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(c.data.layer, Some(11));
    }
    let seed = TrainConfig::load(&common::root().join("configs/seed.yaml"), &[]).unwrap();
    assert_eq!(
        (
            seed.d_sae(768),
            seed.sae.k,
            seed.training.batch_size,
            seed.training.epochs
        ),
        (49_152, 500, 64, 15)
    );
    assert_eq!(
        seed.training.lr,
        saeclip::sae::config::LearningRate::Fixed(2e-4)
    );
}

fn epoch_lines(run: &Path) -> Vec<Value> {
    common::metric_lines(run)
        .into_iter()
        .filter(|v| v["type"] == "epoch")
        .collect()
}

fn step_lines(run: &Path) -> Vec<Value> {
    common::metric_lines(run)
        .into_iter()
        .filter(|v| v["type"] == "step")
        .collect()
}

/// 4,097 training rows in batches of 512 end with a batch of one row. AuxK normalises by
/// the variance of a batch's residuals, which one row has not got: that batch must train
/// on the reconstruction loss alone instead of dividing by zero.
#[test]
fn a_one_row_last_batch_keeps_the_loss_finite() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 4097, None);
    let c = config(
        &cache,
        &dir.path().join("runs"),
        &[
            "data.val_fraction=0",
            "sae.d_sae=512",
            "sae.k=2",
            "training.batch_size=512",
            "training.epochs=2",
            "training.dead_window=1024",
            "training.grad_clip=0",
            "training.log_every=1",
        ],
    );
    let result = train(&options(c)).unwrap();
    let run = result.run_dir;
    let steps = step_lines(&run);
    assert_eq!(steps.len(), 18, "9 steps per epoch, the 9th of one row");
    let aux_used = steps.iter().any(|v| v["aux_loss"].as_f64().unwrap() > 0.0);
    assert!(aux_used, "AuxK must act in this run (dead latents exist)");
    for v in &steps {
        let loss = v["loss"].as_f64().unwrap();
        assert!(
            loss.is_finite() && loss < 10.0,
            "step {}: loss {loss}",
            v["step"]
        );
    }
    // The one-row steps (9 and 18) train on the reconstruction alone.
    for s in [8, 17] {
        assert_eq!(steps[s]["aux_loss"].as_f64(), Some(0.0), "{}", steps[s]);
    }
    for v in epoch_lines(&run) {
        assert!(v["loss"].as_f64().unwrap() < 10.0, "{v}");
    }
    assert!(result.summary.unwrap().final_metrics.val_evr > 0.0);
}

/// The seed's case in small: 5,000 rows, 4,096 latents, k = 2, the default window of
/// 1,000,000 rows, longer than the whole run. A latent silent for a whole epoch is dead
/// (the window is bounded by the rows of one epoch), the epoch line says which window was
/// used, and the count agrees with the share of latents that fire on no training row.
#[test]
fn dead_latents_are_counted_from_the_first_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 5000, None);
    let c = config(
        &cache,
        &dir.path().join("runs"),
        &[
            "data.val_fraction=0",
            "sae.d_sae=4096",
            "sae.k=2",
            "sae.aux_coef=0",
            "training.batch_size=500",
            "training.epochs=2",
            "training.dead_window=1000000",
            "training.log_every=10",
        ],
    );
    let result = train(&options(c)).unwrap();
    let summary = result.summary.unwrap();
    let epochs = epoch_lines(&result.run_dir);
    for v in &epochs {
        assert_eq!(v["dead_window"].as_i64(), Some(5000), "{v}");
    }
    assert_eq!(summary.final_metrics.dead_window, Some(5000));
    let dead = summary.final_metrics.dead_frac;
    // Independently: the share of latents the final SAE fires on no training row.
    let (sae, _) = checkpoint::load_sae(
        &result.run_dir.join("checkpoints/last.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let x = saeclip::data::cache::ActivationCache::open(&cache)
        .unwrap()
        .load_all(Kind::Float)
        .unwrap()
        .activations;
    let fired = sae.encode(&x).gt(0.0).any_dim(0, false);
    let never = 1.0
        - fired
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
    assert!(
        never > 0.1,
        "the test needs latents that never fire ({never})"
    );
    assert!(
        (dead - never).abs() < 0.05,
        "dead_frac {dead} vs {never} never firing on the training rows"
    );
    let first = epochs[0]["dead_frac"].as_f64().unwrap();
    assert!(
        first > 0.1,
        "dead latents show after the first epoch: {first}"
    );
}

/// With AuxK on and the default window, AuxK acts within a run of a few epochs, and not
/// before a whole window (here one epoch) has passed: a latent that has not fired in the
/// first batches is not yet dead.
#[test]
fn auxk_acts_on_a_run_shorter_than_the_dead_window() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 4000, None);
    let c = config(
        &cache,
        &dir.path().join("runs"),
        &[
            "data.val_fraction=0",
            "sae.d_sae=1024",
            "sae.k=2",
            "training.batch_size=500",
            "training.epochs=3",
            "training.dead_window=1000000",
            "training.log_every=1",
        ],
    );
    let run = train(&options(c)).unwrap().run_dir;
    let steps = step_lines(&run);
    // Step s (from 1) sees the mask of the (s − 1)·500 rows before it; one epoch = 8 steps.
    let (first, later): (Vec<&Value>, Vec<&Value>) =
        steps.iter().partition(|v| v["step"].as_i64().unwrap() <= 8);
    assert_eq!(first.len(), 8, "one step line per step");
    for v in &first {
        assert_eq!(
            v["aux_loss"].as_f64(),
            Some(0.0),
            "AuxK before a whole window: {v}"
        );
    }
    let acted = later
        .iter()
        .filter(|v| v["aux_loss"].as_f64().unwrap() > 0.0)
        .count();
    assert!(acted > 0, "AuxK never acted");
    // Meanwhile dead_frac is honest from the first epoch (min(window, rows seen)).
    assert!(epoch_lines(&run)[0]["dead_frac"].as_f64().unwrap() > 0.0);
}

/// batchtopk's inference threshold estimates the final regime: after k warms up from 32
/// to 8, validation l0 lands within 10% of k.
#[test]
fn batchtopk_threshold_follows_k_after_its_warm_up() {
    let dir = tempfile::tempdir().unwrap();
    // Enough rows that the held-out rows see what the training rows saw (on 4,000 rows this
    // SAE over-fits, and validation l0 comes out 13% above training l0).
    let cache = synthetic_cache(&dir.path().join("cache"), 16_000, None);
    let c = config(
        &cache,
        &dir.path().join("runs"),
        &[
            "sae.architecture=batchtopk",
            "sae.d_sae=256",
            "training.batch_size=256",
            "training.epochs=5",
            "training.k_start=32",
            "training.k_warmup_steps=100",
            "training.log_every=20",
        ],
    );
    let s = train(&options(c)).unwrap().summary.unwrap();
    let l0 = s.final_metrics.val_l0;
    assert!((l0 - 8.0).abs() <= 0.8, "validation l0 {l0}, k = 8");
}

/// Every step line carries the gradient norm before clipping; at the default clip (1.0)
/// clipping binds on a batch far off the data (a spike), not on ordinary batches.
#[test]
fn gradient_norm_is_logged_and_the_default_clip_binds_on_spikes() {
    use saeclip::sae::config::TrainConfig;
    use saeclip::sae::train::{Plan, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 3000, None);
    let c = config(
        &cache,
        &dir.path().join("runs"),
        &["training.log_every=1", "training.grad_clip=1.0"],
    );
    let run = train(&options(c)).unwrap().run_dir;
    let norms: Vec<f64> = step_lines(&run)
        .iter()
        .map(|v| v["grad_norm"].as_f64().unwrap())
        .collect();
    assert!(norms.iter().all(|n| n.is_finite() && *n > 0.0));
    let ordinary = norms[norms.len() / 2..]
        .iter()
        .filter(|n| **n > 1.0)
        .count();
    assert_eq!(ordinary, 0, "clipping binds on ordinary batches: {norms:?}");
    // A spike: the same SAE fed rows ten times off the data binds the clip.
    let x = saeclip::data::cache::ActivationCache::open(&cache)
        .unwrap()
        .load_all(Kind::Float)
        .unwrap()
        .activations;
    let config = TrainConfig::load(&run.join("config.yaml"), &[]).unwrap();
    let plan = Plan::new(&config, 3000, D);
    let mut trainer = Trainer::from_checkpoint(
        &run.join("checkpoints/last.safetensors"),
        &plan,
        Device::Cpu,
    )
    .unwrap();
    let spike = x.narrow(0, 0, 128) * 10.0;
    let report = trainer.step(&spike, &plan, 0);
    let n = report.grad_norm.double_value(&[]);
    assert!(
        n > 1.0,
        "a spike's gradient norm {n} should exceed the clip"
    );
}

/// A finished run copies its best SAE to `checkpoints/<run name>.safetensors` beside the
/// runs folder.
#[test]
fn finished_runs_publish_their_best_sae() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("cache"), 600, None);
    let run = train(&options(config(&cache, &dir.path().join("runs"), &[])))
        .unwrap()
        .run_dir;
    let name = run.file_name().unwrap().to_str().unwrap();
    let published = dir
        .path()
        .join("checkpoints")
        .join(format!("{name}.safetensors"));
    assert_eq!(
        std::fs::read(&published).unwrap(),
        std::fs::read(run.join("checkpoints/best.safetensors")).unwrap()
    );
}
