//! Streaming training data (`data.load: stream`): the stream against the in-memory rows
//! (same split, same initialisation sample, every training row once per epoch), exact
//! resume, sweeps on a stream, `memory` equal to the default, and the bad inputs (a buffer
//! smaller than one batch, a truncated shard, shards that change while training reads).

mod common;

use std::path::{Path, PathBuf};

use saeclip::clip::{Precision, Tokens};
use saeclip::data::cache::{
    open_writer, ActivationCache, CacheKey, DatasetRef, ImageRecord, ModelRef, Opened,
};
use saeclip::sae::batches::{Batches, MemoryBatches, StreamBatches};
use saeclip::sae::config::TrainConfig;
use saeclip::sae::train::{train, TrainOptions};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// Width: 256 f32 values are 1 KiB a row, so `data.buffer_mb=1` holds 1,024 rows.
const D: i64 = 256;

/// A cache of `images` images with `tokens` rows each (patch-token style), in shards of
/// `shard_rows` rows (ending on image boundaries), stored as `dtype`.
fn patch_cache(
    dir: &Path,
    images: usize,
    tokens: usize,
    shard_rows: usize,
    dtype: Precision,
) -> PathBuf {
    let x = common::planted_rows(11, images * tokens, (96, D), 4, 2.0, 0.3);
    let key = CacheKey {
        d_model: D,
        dtype,
        layer: 0,
        tokens: Tokens::Patches,
        model: ModelRef {
            path: "synthetic".into(),
            sha256: "0".repeat(64),
        },
        dataset: DatasetRef {
            kind: "synthetic".into(),
            path: "-".into(),
            split: "train".into(),
        },
        part: None,
        limit: None,
        image_size: 0,
    };
    let Opened::Writer(mut w) = open_writer(dir, key, shard_rows, true).unwrap() else {
        panic!("{} holds a finished cache", dir.display())
    };
    for i in 0..images {
        let record = ImageRecord {
            image_index: i,
            source: format!("img{i}"),
            label: 0,
        };
        let rows = x.narrow(0, (i * tokens) as i64, tokens as i64);
        let token_index = Tensor::arange(tokens as i64, (Kind::Int64, Device::Cpu));
        w.add_image(record, &rows, &token_index).unwrap();
        w.end_batch().unwrap();
    }
    w.finish().unwrap();
    dir.to_path_buf()
}

fn config(cache: &Path, runs: &Path, extra: &[&str]) -> TrainConfig {
    let mut sets: Vec<String> = [
        format!("data.cache={}", cache.display()),
        format!("output.runs_dir={}", runs.display()),
        "data.buffer_mb=1".into(),
        "sae.d_sae=256".into(),
        "sae.k=8".into(),
        "sae.k_aux=32".into(),
        "training.batch_size=128".into(),
        "training.epochs=3".into(),
        "training.lr=0.002".into(),
        "training.log_every=4".into(),
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

fn collect(batches: saeclip::sae::batches::BatchIter<'_>) -> Vec<Tensor> {
    batches.map(|b| b.unwrap()).collect()
}

/// Rows sorted lexicographically (to compare sets of rows whatever their order).
fn sorted_rows(x: &Tensor) -> Vec<Vec<f32>> {
    let mut rows: Vec<Vec<f32>> = (0..x.size()[0])
        .map(|i| Vec::<f32>::try_from(&x.get(i)).unwrap())
        .collect();
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rows
}

fn tensors(p: &Path) -> Vec<(String, Tensor)> {
    let mut t = saeclip::clip::weights::read_safetensors(p).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn assert_same_checkpoint(a: &Path, b: &Path, what: &str) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs: {what}");
    }
}

/// The stream splits as memory does, draws the same initialisation sample, gives every
/// training row exactly once per epoch (f16 decoded exactly) in a seeded order that differs
/// between epochs, and reads the validation rows in the same batches as memory.
#[test]
fn the_stream_reads_what_memory_holds() {
    let dir = tempfile::tempdir().unwrap();
    let cache = patch_cache(&dir.path().join("cache"), 700, 5, 600, Precision::F16);
    let c = ActivationCache::open(&cache).unwrap();
    assert!(c.shards().len() >= 5, "several shards");
    let config = config(&cache, dir.path(), &[]);
    let memory = MemoryBatches::open(&c, &config, Device::Cpu).unwrap();
    let stream = StreamBatches::open(&c, &config, Device::Cpu).unwrap();
    assert_eq!(memory.n_train(), stream.n_train());
    assert!(memory.n_train() > 3 * 1024, "the cache is several buffers");
    assert!(memory
        .init_sample(4)
        .unwrap()
        .equal(&stream.init_sample(4).unwrap()));
    let held: Vec<Tensor> = collect(memory.held_out().unwrap());
    let streamed: Vec<Tensor> = collect(stream.held_out().unwrap());
    assert_eq!(held.len(), streamed.len());
    for (a, b) in held.iter().zip(&streamed) {
        assert!(a.equal(b), "validation batches differ");
    }
    let e0 = collect(stream.epoch(0).unwrap());
    let steps = memory.n_train().div_ceil(128);
    assert_eq!(e0.len(), steps, "as many steps as in memory");
    assert!(e0[..steps - 1].iter().all(|b| b.size() == [128, D]));
    let all0 = Tensor::cat(&e0, 0);
    let rows_memory = Tensor::cat(&collect(memory.epoch(0).unwrap()), 0);
    assert_eq!(
        sorted_rows(&all0),
        sorted_rows(&rows_memory),
        "each training row once"
    );
    let again = Tensor::cat(&collect(stream.epoch(0).unwrap()), 0);
    assert!(all0.equal(&again), "an epoch replays bit for bit");
    let e1 = Tensor::cat(&collect(stream.epoch(1).unwrap()), 0);
    assert!(!all0.equal(&e1), "another epoch, another order");
    // Shuffled across shards: the first batch holds rows of more than one shard.
    let all = c.load_all(Kind::Float).unwrap().activations;
    let same = all
        .unsqueeze(0)
        .eq_tensor(&e0[0].unsqueeze(1))
        .all_dims(2, false);
    let found = same.any_dim(1, false).all().int64_value(&[]);
    assert_eq!(found, 1, "every streamed row is a cache row");
    let position = same.to_kind(Kind::Int64).argmax(1, false);
    let shards = Vec::<i64>::try_from(&(position / 600)).unwrap();
    let distinct: std::collections::BTreeSet<i64> = shards.into_iter().collect();
    assert!(distinct.len() >= 2, "{distinct:?}");
    // A batch abandoned half-way stops its reader (no hang, no error).
    let mut it = stream.epoch(2).unwrap();
    assert!(it.next().unwrap().is_ok());
    drop(it);
}

/// `data.load: memory` is the default's path, bit for bit (small caches resolve `auto` to
/// memory), and a streamed run killed after two epochs resumes to the parameters and metric
/// lines of an uninterrupted one.
#[test]
fn memory_is_the_default_and_a_stopped_stream_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cache = patch_cache(&dir.path().join("cache"), 400, 5, 500, Precision::F32);
    let default = train(&options(config(&cache, &dir.path().join("d"), &[])))
        .unwrap()
        .run_dir;
    let memory = train(&options(config(
        &cache,
        &dir.path().join("m"),
        &["data.load=memory"],
    )))
    .unwrap()
    .run_dir;
    assert_same_checkpoint(
        &default.join("checkpoints/last.safetensors"),
        &memory.join("checkpoints/last.safetensors"),
        "data.load=memory against the default",
    );
    let stream = ["data.load=stream"];
    let whole = train(&options(config(&cache, &dir.path().join("a"), &stream)))
        .unwrap()
        .run_dir;
    let header =
        saeclip::sae::checkpoint::read_extra(&whole.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(header["data"]["load"], "stream");
    assert_eq!(header["data"]["epoch"], 3);
    let mut o = options(config(&cache, &dir.path().join("b"), &stream));
    o.stop_after_epochs = Some(2);
    let run = train(&o).unwrap().run_dir;
    let mut o = options(TrainConfig::default());
    o.resume = Some(run.clone());
    assert!(train(&o).unwrap().summary.is_some());
    assert_same_checkpoint(
        &whole.join("checkpoints/last.safetensors"),
        &run.join("checkpoints/last.safetensors"),
        "after resuming a stream",
    );
    assert_eq!(
        common::timeless_metric_lines(&whole),
        common::timeless_metric_lines(&run)
    );
    // Streaming trains as well as memory does (another order of the same rows).
    let val_evr = |run: &Path| -> f64 {
        let s: Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap())
                .unwrap();
        s["final"]["val_evr"].as_f64().unwrap()
    };
    let (s, m) = (val_evr(&whole), val_evr(&memory));
    assert!(s > 0.3 && (s - m).abs() < 0.05, "stream {s} vs memory {m}");
}

/// A sweep reads the stream once for all members; each member equals the same
/// configuration streamed alone.
#[test]
fn a_sweep_streams_once_for_all_members() {
    let dir = tempfile::tempdir().unwrap();
    let cache = patch_cache(&dir.path().join("cache"), 300, 5, 400, Precision::Bf16);
    let base = ["data.load=stream", "training.epochs=2"];
    let mut sweep = base.to_vec();
    sweep.push("sweep.sae.k=[4, 8]");
    let result = train(&options(config(&cache, &dir.path().join("s"), &sweep))).unwrap();
    assert_eq!(result.members.len(), 2);
    for (m, k) in result.members.iter().zip(["4", "8"]) {
        let set = format!("sae.k={k}");
        let mut alone = base.to_vec();
        alone.push(&set);
        let run = train(&options(config(
            &cache,
            &dir.path().join(format!("k{k}")),
            &alone,
        )))
        .unwrap()
        .run_dir;
        assert_same_checkpoint(
            &m.run_dir.join("checkpoints/last.safetensors"),
            &run.join("checkpoints/last.safetensors"),
            "sweep member against the run alone",
        );
    }
}

fn saeclip_train(cache: &Path, run_dir: &Path, sets: &[&str]) -> std::process::Command {
    let mut cmd = common::saeclip();
    cmd.args(["-q", "--device", "cpu", "train", "--config", "/dev/null"])
        .args(["--set", &format!("data.cache={}", cache.display())])
        .args(["--set", &format!("output.run_dir={}", run_dir.display())])
        .args(["--set", "sae.d_sae=256", "--set", "sae.k=8"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

/// A buffer smaller than one batch and a truncated shard: one line naming the key or the
/// file, a non-zero exit, and no run directory.
#[test]
fn a_small_buffer_and_a_truncated_shard_fail_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cache = patch_cache(&dir.path().join("cache"), 200, 5, 300, Precision::F32);
    let run = dir.path().join("run");
    let out = saeclip_train(
        &cache,
        &run,
        &[
            "data.load=stream",
            "data.buffer_mb=1",
            "training.batch_size=2000",
        ],
    )
    .output()
    .unwrap();
    common::fails_cleanly(&out, "data.buffer_mb");
    assert!(!run.exists(), "nothing written");

    let shard = cache.join("shard-00001.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    for load in ["data.load=stream", "data.load=auto"] {
        let out = saeclip_train(&cache, &run, &[load]).output().unwrap();
        common::fails_cleanly(&out, "shard-00001.safetensors");
        assert!(!run.exists(), "nothing written ({load})");
    }
}

/// A shard rewritten while a streamed run trains stops it with one line naming the shard;
/// the last checkpoint stays the complete one of an earlier epoch.
#[test]
fn a_shard_changed_while_streaming_stops_training() {
    let dir = tempfile::tempdir().unwrap();
    let cache = patch_cache(&dir.path().join("cache"), 400, 5, 400, Precision::F32);
    let run = dir.path().join("run");
    let child = saeclip_train(
        &cache,
        &run,
        &[
            "data.load=stream",
            "training.epochs=100000",
            "data.val_fraction=0",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let last = run.join("checkpoints/last.safetensors");
    let start = std::time::Instant::now();
    while !last.exists() && start.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(last.exists(), "the run wrote its first checkpoint");
    // Re-write a shard as `extract` writes files (a new file renamed over the old one), with
    // the same bytes: only its inode and modification time change.
    let shard = cache.join("shard-00002.safetensors");
    let tmp = cache.join("shard-00002.safetensors.tmp");
    std::fs::copy(&shard, &tmp).unwrap();
    std::fs::rename(&tmp, &shard).unwrap();
    let out = child.wait_with_output().unwrap();
    common::fails_cleanly(&out, "shard-00002.safetensors");
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed"));
    let c = saeclip::sae::checkpoint::load(&last, Device::Cpu).unwrap();
    assert!(c.training.is_some(), "the last checkpoint is whole");
}

/// `training.checkpoint_every`: a run stopped mid-epoch (as a kill would: step lines past
/// the checkpoint, no epoch end) and resumed, twice, ends bit-identical on CPU to an
/// uninterrupted run without the key: same tensors, same metric lines. Streamed and in
/// memory.
#[test]
fn a_run_stopped_mid_epoch_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cache = patch_cache(&dir.path().join("cache"), 400, 5, 500, Precision::F16);
    for load in ["stream", "memory"] {
        let set = format!("data.load={load}");
        let base = [set.as_str(), "training.epochs=2", "training.log_every=2"];
        let whole = train(&options(config(
            &cache,
            &dir.path().join(format!("{load}-whole")),
            &base,
        )))
        .unwrap()
        .run_dir;
        let mut sets = base.to_vec();
        sets.push("training.checkpoint_every=5");
        let mut o = options(config(&cache, &dir.path().join(load), &sets));
        o.stop_after_steps = Some(7);
        let run = train(&o).unwrap().run_dir;
        let latest = run.join("checkpoints/latest.safetensors");
        assert!(!run.join("checkpoints/last.safetensors").exists());
        let data = &saeclip::sae::checkpoint::read_extra(&latest).unwrap()["data"];
        assert_eq!(
            (data["load"].as_str(), data["epoch"].as_u64()),
            (Some(load), Some(0))
        );
        assert_eq!(data["batches_drawn"], 5, "{load}: {data}");
        // Step 6 was logged after the checkpoint: the resume drops it and logs it again.
        assert!(common::timeless_metric_lines(&run)
            .iter()
            .any(|l| l["step"] == 6));
        // The second stop falls in epoch 2 (an epoch is 15 steps), past an epoch end.
        let mut o = options(TrainConfig::default());
        o.resume = Some(run.clone());
        o.stop_after_steps = Some(17);
        assert!(train(&o).unwrap().summary.is_none());
        assert!(run.join("checkpoints/last.safetensors").exists());
        let data = &saeclip::sae::checkpoint::read_extra(&latest).unwrap()["data"];
        assert_eq!(data["epoch"], 1, "{load}: {data}");
        let mut o = options(TrainConfig::default());
        o.resume = Some(run.clone());
        assert!(train(&o).unwrap().summary.is_some());
        assert!(
            !latest.exists(),
            "{load}: latest is removed at the epoch end"
        );
        assert_same_checkpoint(
            &whole.join("checkpoints/last.safetensors"),
            &run.join("checkpoints/last.safetensors"),
            &format!("{load}: resumed mid-epoch"),
        );
        assert_same_checkpoint(
            &whole.join("checkpoints/best.safetensors"),
            &run.join("checkpoints/best.safetensors"),
            &format!("{load}: best after resuming mid-epoch"),
        );
        assert_eq!(
            common::timeless_metric_lines(&whole),
            common::timeless_metric_lines(&run),
            "{load}"
        );
    }
}

/// A sweep resumed with its members at different points (one member's mid-epoch checkpoint
/// lost, so it starts again while the other waits for the batch after its own) ends as the
/// uninterrupted sweep does.
#[test]
fn a_sweep_resumes_members_saved_at_different_steps() {
    let dir = tempfile::tempdir().unwrap();
    let cache = patch_cache(&dir.path().join("cache"), 300, 5, 400, Precision::F32);
    let sets = [
        "data.load=stream",
        "training.epochs=2",
        "training.log_every=2",
        "training.checkpoint_every=4",
        "sweep.sae.k=[4, 8]",
    ];
    let whole = train(&options(config(&cache, &dir.path().join("whole"), &sets))).unwrap();
    let mut o = options(config(&cache, &dir.path().join("run"), &sets));
    o.stop_after_steps = Some(9);
    let stopped = train(&o).unwrap();
    let behind = &stopped.members[0].run_dir;
    std::fs::remove_file(behind.join("checkpoints/latest.safetensors")).unwrap();
    let mut o = options(TrainConfig::default());
    o.resume = Some(stopped.run_dir.clone());
    let resumed = train(&o).unwrap();
    for (a, b) in whole.members.iter().zip(&resumed.members) {
        assert_same_checkpoint(
            &a.run_dir.join("checkpoints/last.safetensors"),
            &b.run_dir.join("checkpoints/last.safetensors"),
            &format!("member {}", a.name),
        );
        assert_eq!(
            common::timeless_metric_lines(&a.run_dir),
            common::timeless_metric_lines(&b.run_dir),
            "{}",
            a.name
        );
    }
}
