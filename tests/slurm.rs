//! scripts/slurm/ on a real one-node Slurm cluster on localhost (Debian's slurmctld, slurmd
//! and munge; `make slurm` installs them): the extract array writes parts that read as one
//! cache equal to a single-process extraction row for row, and the sweep array trains one
//! member per task from that folder of parts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use saeclip::data::cache::ActivationCache;
use tch::{Kind, Tensor};

/// A Slurm daemon or client binary, which must be installed (the test never skips).
fn tool(name: &str) -> PathBuf {
    let found = ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: run `make slurm` (Debian's slurmctld, slurmd and munge)")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// munged, slurmctld and slurmd as child processes, configured in a temporary directory;
/// dropping it cancels the jobs and stops the daemons (also when a check fails).
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir.join("slurm");
        for sub in ["munge", "run", "state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // munged checks permissions: a private key, a socket directory everyone can enter.
        for (path, mode) in [
            (dir.parent().unwrap(), 0o755),
            (dir.as_path(), 0o755),
            (&dir.join("run"), 0o755),
            (&dir.join("munge"), 0o700),
        ] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let key = dir.join("munge/munge.key");
        let mut key_bytes = [0u8; 1024];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").unwrap(),
            &mut key_bytes,
        )
        .unwrap();
        std::fs::write(&key, key_bytes).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let socket = dir.join("run/munge.sock");
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=saeclip-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=localhost CPUs=2 RealMemory=2048 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
",
                ctld_port = free_port(),
                d_port = free_port(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        let mut cluster = Cluster {
            dir: dir.clone(),
            conf,
            daemons: Vec::new(),
        };
        cluster.spawn(
            "munged",
            Command::new(tool("munged")).args([
                "-F".into(),
                format!("--key-file={}", key.display()),
                format!("--socket={}", socket.display()),
                format!("--pid-file={d}/run/munged.pid"),
                format!("--seed-file={d}/munge/munged.seed"),
            ]),
        );
        cluster.wait_for("the munge socket", 20, || socket.exists());
        cluster.spawn(
            "slurmctld",
            Command::new(tool("slurmctld")).args(["-D", "-i"]),
        );
        cluster.spawn(
            "slurmd",
            Command::new(tool("slurmd")).args(["-D", "-N", "localhost"]),
        );
        let conf = cluster.conf.clone();
        cluster.wait_for("node localhost to be idle", 60, || {
            let out = Command::new(tool("sinfo"))
                .env("SLURM_CONF", &conf)
                .args(["-h", "-N", "-o", "%T"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "idle"
        });
        cluster
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let log = |suffix: &str| {
            std::fs::File::create(self.dir.join(format!("log/{name}.{suffix}"))).unwrap()
        };
        let child = cmd
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log("out"))
            .stderr(log("err"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.daemons.push((name, child));
    }

    /// A Slurm client command (sbatch, sinfo, ...) talking to this cluster.
    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(tool(name));
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    fn wait_for(&mut self, what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ready() {
            let exited = self.daemons.iter_mut().find_map(|(name, child)| {
                let status = child.try_wait().unwrap()?;
                Some(format!("{name} exited ({status})"))
            });
            if let Some(exited) = exited {
                panic!("{exited}\n{}", self.logs());
            }
            if start.elapsed() > Duration::from_secs(secs) {
                panic!("no {what} after {secs} s\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The daemons' logs and the jobs' outputs, for a failure message.
    fn logs(&self) -> String {
        let mut text = String::new();
        for entry in walk(&self.dir.join("log"))
            .into_iter()
            .chain(walk(&self.dir.parent().unwrap().join("jobs")))
        {
            let body = std::fs::read_to_string(&entry).unwrap_or_default();
            let tail: Vec<&str> = body.lines().rev().take(40).collect();
            text += &format!("==> {} <==\n", entry.display());
            for line in tail.into_iter().rev() {
                text += line;
                text += "\n";
            }
        }
        text
    }

    /// `sbatch --wait ARGS` from `cwd` with `env`, bounded by `secs`; panics with the logs
    /// unless every task succeeded.
    fn sbatch_wait(&self, cwd: &Path, env: &[(&str, &str)], args: &[&str], secs: u64) -> Output {
        let out = Command::new("timeout")
            .arg(secs.to_string())
            .arg(tool("sbatch"))
            .arg("--wait")
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .envs(env.iter().copied())
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sbatch {args:?} failed ({}; 124 = timed out after {secs} s):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("scancel")
            .args(["--user", "root"])
            .stderr(Stdio::null())
            .status();
        // slurmd first, then the controller, then munge; SIGTERM, then SIGKILL after 10 s.
        for (_, child) in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.retain(|p| p.is_file());
    files
}

/// Every row of a cache, sorted by (image, token).
fn sorted_rows(cache: &ActivationCache) -> (Tensor, Tensor, Tensor) {
    let rows = cache.load_all(Kind::Float).unwrap();
    let order = (&rows.image_index * 10_000 + &rows.token_index).argsort(0, false);
    (
        rows.activations.index_select(0, &order),
        rows.image_index.index_select(0, &order),
        rows.token_index.index_select(0, &order),
    )
}

#[test]
fn extract_and_sweep_job_arrays_run_on_a_one_node_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let scripts = common::root().join("scripts/slurm");
    let model = common::reference_model("tiny-quick").join("hf");
    let jobs = tmp.join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let saeclip = env!("CARGO_BIN_EXE_saeclip");
    // The same extraction settings for the array and the single process: batches of one
    // image and one thread, so that both compute every row the same way.
    let extract_args = [
        "--limit",
        "10",
        "--dtype",
        "f32",
        "--batch-size",
        "1",
        "--shard-rows",
        "100",
    ];

    let single = tmp.join("single");
    let out = common::saeclip()
        .args(["extract", "--threads", "1", "--model"])
        .arg(&model)
        .args([
            "--dataset",
            "procedural:7",
            "--layer",
            "1",
            "--tokens",
            "patches",
        ])
        .arg("--out")
        .arg(&single)
        .args(extract_args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cluster = Cluster::start(tmp);
    let parts = tmp.join("parts");
    let model_s = model.to_str().unwrap();
    let parts_s = parts.to_str().unwrap();
    let extract_env = [
        ("SAECLIP", saeclip),
        ("MODEL", model_s),
        ("DATASET", "procedural:7"),
        ("LAYER", "1"),
        ("TOKENS", "patches"),
        ("OUT", parts_s),
    ];
    let script = scripts.join("extract.sbatch");
    let mut args = vec![
        "--array=0-2",
        "--cpus-per-task=1",
        "--mem=100M",
        "--output=jobs/extract-%a.out",
        script.to_str().unwrap(),
    ];
    args.extend(extract_args);
    cluster.sbatch_wait(tmp, &extract_env, &args, 300);

    // One part per task, named by index and count, each holding every third image.
    let names: Vec<String> = std::fs::read_dir(&parts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        names,
        [
            "part-0000-of-0003",
            "part-0001-of-0003",
            "part-0002-of-0003"
        ]
    );
    for (i, name) in names.iter().enumerate() {
        let part = ActivationCache::open(&parts.join(name)).unwrap();
        let m = part.manifest();
        let p = m.part.as_ref().expect("a part records --shard I/N");
        assert_eq!((p.index, p.count), (i, 3), "{name}");
        let images = part.images().unwrap();
        assert_eq!(images.len(), (10 - i).div_ceil(3), "{name}");
        assert!(images.iter().all(|r| r.image_index % 3 == i), "{name}");
    }

    // The folder of parts reads as one cache equal to the single process, row for row.
    let merged = ActivationCache::open(&parts).unwrap();
    let single = ActivationCache::open(&single).unwrap();
    assert_eq!(merged.rows(), 10 * 49);
    assert_eq!(merged.rows(), single.rows());
    let (a, ai, at) = sorted_rows(&merged);
    let (b, bi, bt) = sorted_rows(&single);
    assert!(ai.equal(&bi), "image_index differs");
    assert!(at.equal(&bt), "token_index differs");
    let diff = (&a - &b).abs().max().double_value(&[]);
    assert!(a.equal(&b), "activations differ (max |diff| {diff})");
    assert_eq!(merged.images().unwrap(), single.images().unwrap());

    // A part still running (no manifest yet) keeps the folder from reading as one.
    let manifest = parts.join("part-0001-of-0003/manifest.json");
    std::fs::rename(&manifest, tmp.join("manifest.json")).unwrap();
    let err = format!("{:#}", ActivationCache::open(&parts).unwrap_err());
    assert!(err.contains("part(s) 1 of the 3-part extraction"), "{err}");
    std::fs::rename(tmp.join("manifest.json"), &manifest).unwrap();

    // A sweep of two members, one per task, trained from the folder of parts.
    let config = tmp.join("train.yaml");
    std::fs::write(
        &config,
        format!(
            "data:\n  cache: {parts_s}\n  val_fraction: 0.2\nsae:\n  d_sae: 64\n  k: 8\n  k_aux: 16\n\
             training:\n  batch_size: 64\n  steps: 6\n  lr_warmup_steps: 2\n  log_every: 2\n  dead_window: 1000\n"
        ),
    )
    .unwrap();
    let members = tmp.join("members.txt");
    std::fs::write(
        &members,
        "# k and lr, one member a line\nsae.k=4 training.lr=0.001\n\n  sae.k=12   training.lr=0.004  # wider\n",
    )
    .unwrap();
    let runs = tmp.join("runs");
    let sweep = scripts.join("sweep.sbatch");
    let sweep_env = [
        ("SAECLIP", saeclip),
        ("MEMBERS", members.to_str().unwrap()),
        ("RUN_DIR", runs.to_str().unwrap()),
    ];
    let sweep_args = |array: &'static str| {
        vec![
            array,
            "--cpus-per-task=1",
            "--mem=100M",
            "--output=jobs/sweep-%a.out",
            sweep.to_str().unwrap(),
            config.to_str().unwrap(),
            "training.seed=3",
        ]
    };
    cluster.sbatch_wait(tmp, &sweep_env, &sweep_args("--array=0-1"), 300);
    let mut first_summary = Vec::new();
    for (member, k, lr) in [(0, 4, 0.001), (1, 12, 0.004)] {
        let dir = runs.join(format!("member-{member:03}"));
        let summary = std::fs::read(dir.join("summary.json"))
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", dir.display(), cluster.logs()));
        let summary: serde_json::Value = serde_json::from_slice(&summary).unwrap();
        assert_eq!(summary["steps"], 6, "{summary}");
        assert!(dir.join("checkpoints/last.safetensors").is_file());
        let resolved: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("config.yaml")).unwrap())
                .unwrap();
        assert_eq!(resolved["sae"]["k"].as_i64(), Some(k), "member {member}");
        assert_eq!(
            resolved["training"]["lr"].as_f64(),
            Some(lr),
            "member {member}"
        );
        assert_eq!(resolved["training"]["seed"].as_i64(), Some(3));
        assert_eq!(
            Path::new(resolved["data"]["cache"].as_str().unwrap()),
            parts.as_path()
        );
        if member == 1 {
            first_summary = std::fs::read(dir.join("summary.json")).unwrap();
        }
    }

    // Submitting a finished member again leaves its run alone.
    cluster.sbatch_wait(tmp, &sweep_env, &sweep_args("--array=1"), 120);
    let log = std::fs::read_to_string(jobs.join("sweep-1.out")).unwrap();
    assert!(log.contains("is complete"), "{log}");
    assert_eq!(
        std::fs::read(runs.join("member-001/summary.json")).unwrap(),
        first_summary
    );
}
