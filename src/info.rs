//! `info`: what a path holds — an SAE checkpoint, an activation cache, a training run
//! directory or an SAE-Lens folder — as a readable block or as JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use tch::Device;

use crate::data::cache::{ActivationCache, Manifest};
use crate::report::logs::{self, EpochRow};
use crate::sae::checkpoint::{self, METADATA_KEY};
use crate::sae::export;
use crate::sae::train::{RunDir, Summary};

/// What `info` found.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Info {
    Checkpoint(CheckpointInfo),
    Cache(CacheInfo),
    Run(RunInfo),
    SaeLens(SaeLensInfo),
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub format_version: u64,
    /// The saeclip that wrote it (None for a file written by another program).
    pub saeclip_version: Option<String>,
    pub architecture: String,
    pub d_in: i64,
    pub d_sae: i64,
    pub k: i64,
    pub input_scale: f64,
    pub threshold: Option<f64>,
    /// dtype of the parameters (f32, f16, bf16).
    pub dtype: String,
    pub parameters: i64,
    /// {model, sha256, layer, tokens}.
    pub clip: Value,
    pub metrics: Value,
    /// The training configuration.
    pub training: Value,
    /// Present in training checkpoints.
    pub training_state: Option<TrainingStateInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainingStateInfo {
    pub step: u64,
    pub epoch: u64,
    /// Tensors that only resuming needs (optimizer moments, counters).
    pub tensors: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheInfo {
    pub path: PathBuf,
    /// Parts read as one (1 for a plain cache).
    pub parts: usize,
    pub manifest: Manifest,
    /// Total over all parts.
    pub rows: usize,
    pub images: usize,
    pub skipped: usize,
    pub shards: usize,
    pub shard_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub path: PathBuf,
    pub finished: bool,
    /// The resolved `config.yaml` (null when absent or unreadable).
    pub config: Value,
    pub last_step: u64,
    pub epochs_logged: usize,
    pub planned_epochs: Option<u64>,
    pub best_epoch: Option<u64>,
    pub last_epoch: Option<EpochRow>,
    pub total_seconds: Option<f64>,
    pub rows_per_s: Option<f64>,
    pub summary: Option<Summary>,
    /// Checkpoint files present, with their sizes.
    pub checkpoints: Vec<(String, u64)>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaeLensInfo {
    pub path: PathBuf,
    /// `cfg.json`.
    pub config: Value,
    pub has_sparsity: bool,
}

/// Describe `path`.
pub fn describe(path: &Path) -> Result<Info> {
    let shown = path.display();
    if !path.exists() {
        bail!("{shown} does not exist: give an SAE checkpoint (.safetensors), an activation cache or a run directory");
    }
    if path.is_file() {
        let parent = path.parent().unwrap_or(Path::new("."));
        return match path.file_name().and_then(|n| n.to_str()) {
            Some("manifest.json") => describe(parent),
            Some(export::CFG_FILE | export::WEIGHTS_FILE)
                if parent.join(export::CFG_FILE).exists() =>
            {
                describe_saelens(parent).map(Info::SaeLens)
            }
            Some("metrics.jsonl" | "summary.json" | "config.yaml") => {
                describe_run(parent).map(Info::Run)
            }
            _ => describe_checkpoint(path).map(Info::Checkpoint),
        };
    }
    if path.join("manifest.json").exists() {
        return describe_cache(path).map(Info::Cache);
    }
    let run = RunDir(path.to_path_buf());
    if run.metrics().exists() || run.config().exists() {
        return describe_run(path).map(Info::Run);
    }
    if path.join(export::CFG_FILE).exists() {
        return describe_saelens(path).map(Info::SaeLens);
    }
    let has_cache_parts = std::fs::read_dir(path)
        .with_context(|| format!("cannot read {shown}"))?
        .filter_map(|e| e.ok())
        .any(|e| e.path().join("manifest.json").is_file());
    if has_cache_parts {
        return describe_cache(path).map(Info::Cache);
    }
    bail!("{shown} is not an activation cache (no manifest.json), a run directory (no metrics.jsonl or config.yaml) or an SAE-Lens folder (no cfg.json)")
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// An SAE checkpoint: `checkpoint::load_sae` validates it, the raw header gives the rest.
pub fn describe_checkpoint(path: &Path) -> Result<CheckpointInfo> {
    let (sae, _) = checkpoint::load_sae(path, Device::Cpu)?;
    let shown = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {shown}"))?;
    // SAFETY: read-only map of a file that load_sae has just read; only the header is used.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {shown}"))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&map).map_err(|e| anyhow!("{shown}: {e}"))?;
    let header: Value = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null);
    let tensors = meta.tensors();
    let dtype = tensors
        .get("W_enc")
        .map_or("?".to_string(), |t| format!("{:?}", t.dtype).to_lowercase());
    let state_bytes: u64 = tensors
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "W_enc" | "b_enc" | "W_dec" | "b_dec"))
        .map(|(_, t)| (t.data_offsets.1 - t.data_offsets.0) as u64)
        .sum();
    let state_tensors = tensors.len().saturating_sub(4);
    let training_state = header
        .get("state")
        .filter(|s| s.is_object())
        .map(|s| TrainingStateInfo {
            step: s["step"].as_u64().unwrap_or(0),
            epoch: s["epoch"].as_u64().unwrap_or(0),
            tensors: state_tensors,
            bytes: state_bytes,
        });
    let c = &sae.config;
    Ok(CheckpointInfo {
        path: path.to_path_buf(),
        file_bytes: file_size(path),
        format_version: header["version"].as_u64().unwrap_or(0),
        saeclip_version: header["saeclip_version"].as_str().map(String::from),
        architecture: c.architecture.name().to_string(),
        d_in: c.d_in,
        d_sae: c.d_sae,
        k: c.k,
        input_scale: sae.input_scale,
        threshold: sae.threshold,
        dtype,
        parameters: 2 * c.d_in * c.d_sae + c.d_in + c.d_sae,
        clip: header["clip"].clone(),
        metrics: header["metrics"].clone(),
        training: header["training"].clone(),
        training_state,
    })
}

/// An activation cache, or a folder of cache parts.
pub fn describe_cache(path: &Path) -> Result<CacheInfo> {
    let cache = ActivationCache::open(path)?;
    let manifests: Vec<&Manifest> = cache.manifests().collect();
    Ok(CacheInfo {
        path: path.to_path_buf(),
        parts: manifests.len(),
        manifest: cache.manifest().clone(),
        rows: cache.rows(),
        images: cache.images_count(),
        skipped: manifests.iter().map(|m| m.skipped.len()).sum(),
        shards: cache.shards().len(),
        shard_bytes: cache.shards().iter().map(|s| file_size(&s.path)).sum(),
    })
}

/// A run directory, however far it has got (a run with no metrics yet is described too).
pub fn describe_run(path: &Path) -> Result<RunInfo> {
    let files = RunDir(path.to_path_buf());
    let config = std::fs::read_to_string(files.config())
        .ok()
        .and_then(|s| serde_yaml_ng::from_str::<Value>(&s).ok())
        .unwrap_or(Value::Null);
    let checkpoints = [("last", files.last()), ("best", files.best())]
        .into_iter()
        .filter(|(_, p)| p.exists())
        .map(|(n, p)| (n.to_string(), file_size(&p)))
        .collect();
    let mut info = RunInfo {
        path: path.to_path_buf(),
        finished: false,
        config,
        last_step: 0,
        epochs_logged: 0,
        planned_epochs: None,
        best_epoch: None,
        last_epoch: None,
        total_seconds: None,
        rows_per_s: None,
        summary: None,
        checkpoints,
        warnings: Vec::new(),
    };
    let has_records = std::fs::read_to_string(files.metrics())
        .map(|t| !logs::parse_metrics(&t, "").records.is_empty())
        .unwrap_or(false);
    if !has_records {
        info.warnings
            .push("metrics.jsonl has no records yet".into());
        return Ok(info);
    }
    let run = logs::read_run(path)?;
    let rows = run.epoch_rows();
    info.finished = run.summary.is_some();
    info.last_step = run.last_step();
    info.epochs_logged = rows.len();
    info.planned_epochs = run
        .summary
        .as_ref()
        .map(|s| s.epochs as u64)
        .or(run.planned_epochs);
    info.best_epoch = run.best_epoch();
    info.last_epoch = rows.last().cloned();
    info.total_seconds = run.log.total_seconds();
    info.rows_per_s = run.rows_per_s();
    info.warnings = run.warnings.clone();
    info.summary = run.summary;
    Ok(info)
}

pub fn describe_saelens(path: &Path) -> Result<SaeLensInfo> {
    let cfg_path = path.join(export::CFG_FILE);
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not valid JSON ({e})", cfg_path.display()))?;
    Ok(SaeLensInfo {
        path: path.to_path_buf(),
        config,
        has_sparsity: path.join(export::SPARSITY_FILE).exists(),
    })
}

/// Bytes as B, KiB, MiB or GiB.
pub fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A JSON value on one line: numbers with 4 decimals, objects as `key value, …`.
fn short(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
        Value::Object(m) if m.is_empty() => "–".into(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k} {}", short(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "–"
    } else {
        s
    }
}

/// Who wrote a file, from its recorded saeclip version ("" when it has none).
fn written_by(version: &str) -> String {
    if version.is_empty() {
        "writer not recorded".into()
    } else {
        format!("written by saeclip {version}")
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

fn clip_line(clip: &Value) -> String {
    let sha = clip["sha256"].as_str().map_or("–".to_string(), |s| {
        s.chars().take(12).collect::<String>() + "…"
    });
    format!(
        "model {} (sha256 {sha}), layer {}, tokens {}",
        short(&clip["model"]),
        short(&clip["layer"]),
        short(&clip["tokens"])
    )
}

impl Info {
    /// The readable block.
    pub fn to_text(&self) -> String {
        let mut lines: Vec<(&str, String)> = Vec::new();
        let title = match self {
            Info::Checkpoint(c) => {
                lines.push(("architecture", format!("{} (k = {})", c.architecture, c.k)));
                lines.push((
                    "sizes",
                    format!(
                        "d_in {} → d_sae {} ({} parameters, {})",
                        c.d_in, c.d_sae, c.parameters, c.dtype
                    ),
                ));
                lines.push(("input_scale", format!("{:.6}", c.input_scale)));
                if let Some(t) = c.threshold {
                    lines.push(("threshold", format!("{t:.6}")));
                }
                lines.push(("clip", clip_line(&c.clip)));
                lines.push(("metrics", short(&c.metrics)));
                if let Some(s) = &c.training_state {
                    lines.push((
                        "training state",
                        format!(
                            "step {}, epoch {}: {} tensors, {} (clean-checkpoint removes them)",
                            s.step,
                            s.epoch,
                            s.tensors,
                            bytes(s.bytes)
                        ),
                    ));
                } else {
                    lines.push(("training state", "none (inference checkpoint)".into()));
                }
                lines.push((
                    "format",
                    format!(
                        "saeclip checkpoint version {}, {}",
                        c.format_version,
                        written_by(c.saeclip_version.as_deref().unwrap_or(""))
                    ),
                ));
                format!(
                    "SAE checkpoint {} ({})",
                    c.path.display(),
                    bytes(c.file_bytes)
                )
            }
            Info::Cache(c) => {
                let m = &c.manifest;
                if c.parts > 1 {
                    lines.push(("parts", c.parts.to_string()));
                }
                lines.push((
                    "model",
                    format!(
                        "{} (sha256 {}…)",
                        or_dash(&m.model.path),
                        m.model.sha256.chars().take(12).collect::<String>()
                    ),
                ));
                lines.push(("layer", m.layer.to_string()));
                lines.push(("tokens", m.tokens.name().to_string()));
                lines.push((
                    "dataset",
                    if m.dataset.kind.is_empty() {
                        "not recorded".into()
                    } else {
                        format!(
                            "{}:{} ({} split)",
                            m.dataset.kind,
                            m.dataset.path,
                            or_dash(&m.dataset.split)
                        )
                    },
                ));
                lines.push((
                    "rows",
                    format!("{} × d_model {} ({:?})", c.rows, m.d_model, m.dtype).to_lowercase(),
                ));
                lines.push(("images", format!("{} ({} skipped)", c.images, c.skipped)));
                lines.push(("shards", format!("{} ({})", c.shards, bytes(c.shard_bytes))));
                if let Some(limit) = m.limit {
                    lines.push(("limit", limit.to_string()));
                }
                lines.push((
                    "format",
                    format!(
                        "{} version {}, {}",
                        m.format,
                        m.version,
                        written_by(&m.saeclip_version)
                    ),
                ));
                format!("Activation cache {}", c.path.display())
            }
            Info::Run(r) => {
                let sae = &r.config["sae"];
                let t = &r.config["training"];
                if !r.config.is_null() {
                    let width = if sae["d_sae"].is_null() {
                        format!("expansion {}", short(&sae["expansion_factor"]))
                    } else {
                        format!("d_sae {}", short(&sae["d_sae"]))
                    };
                    lines.push((
                        "sae",
                        format!(
                            "{}, {width}, k {}",
                            short(&sae["architecture"]),
                            short(&sae["k"])
                        ),
                    ));
                    lines.push((
                        "training",
                        format!(
                            "lr {}, batch {}, epochs {}",
                            short(&t["lr"]),
                            short(&t["batch_size"]),
                            short(&t["epochs"])
                        ),
                    ));
                    lines.push(("data", short(&r.config["data"]["cache"])));
                }
                let status = if r.finished {
                    "finished"
                } else {
                    "in progress or interrupted"
                };
                let planned = r
                    .planned_epochs
                    .map_or(String::new(), |p| format!(" of {p}"));
                lines.push((
                    "status",
                    format!(
                        "{status}: {} epochs{planned}, last step {}",
                        r.epochs_logged, r.last_step
                    ),
                ));
                if let Some(e) = &r.last_epoch {
                    lines.push((
                        "last epoch",
                        format!(
                            "{}: val evr {}, train evr {}, val l0 {}, dead {}",
                            e.epoch,
                            opt(e.val_evr.map(|v| format!("{v:.4}"))),
                            opt(e.train_evr.map(|v| format!("{v:.4}"))),
                            opt(e.val_l0.map(|v| format!("{v:.1}"))),
                            opt(e.dead_frac.map(|v| format!("{:.1}%", 100.0 * v)))
                        ),
                    ));
                }
                if let Some(b) = r.best_epoch {
                    lines.push(("best epoch", b.to_string()));
                }
                if let Some(s) = r.total_seconds {
                    lines.push(("time", logs::duration(s)));
                }
                if let Some(v) = r.rows_per_s {
                    lines.push(("throughput", format!("{v:.0} rows/s")));
                }
                let ckpts: Vec<String> = r
                    .checkpoints
                    .iter()
                    .map(|(n, b)| format!("{n} ({})", bytes(*b)))
                    .collect();
                lines.push((
                    "checkpoints",
                    if ckpts.is_empty() {
                        "none yet".into()
                    } else {
                        ckpts.join(", ")
                    },
                ));
                for w in &r.warnings {
                    lines.push(("warning", w.clone()));
                }
                format!("Training run {}", r.path.display())
            }
            Info::SaeLens(s) => {
                let c = &s.config;
                lines.push((
                    "architecture",
                    format!("{} (k = {})", short(&c["architecture"]), short(&c["k"])),
                ));
                lines.push((
                    "sizes",
                    format!(
                        "d_in {} → d_sae {} ({})",
                        short(&c["d_in"]),
                        short(&c["d_sae"]),
                        short(&c["dtype"])
                    ),
                ));
                let m = &c["metadata"];
                lines.push(("model", short(&m["model_name"])));
                lines.push((
                    "hook",
                    format!(
                        "{} (tokens {})",
                        short(&m["hook_name"]),
                        short(&m["tokens"])
                    ),
                ));
                lines.push((
                    "sparsity",
                    if s.has_sparsity { "present" } else { "absent" }.into(),
                ));
                format!("SAE-Lens folder {}", s.path.display())
            }
        };
        let width = lines
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = title;
        out.push('\n');
        for (label, value) in lines {
            let _ = writeln!(out, "  {label:<width$}  {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn short_values() {
        let v = serde_json::json!({"epoch": 3, "val_evr": 0.912345});
        assert_eq!(short(&v), "epoch 3, val_evr 0.9123");
        assert_eq!(short(&Value::Null), "–");
    }
}
