//! SAE checkpoints: one `.safetensors` file, SAELens tensor names, and a versioned JSON
//! header under the metadata key `saeclip` (DESIGN.md "SAE checkpoint").
//!
//! Tensors:
//! - `W_enc` [D, F], `b_enc` [F], `W_dec` [F, D], `b_dec` [D] (f32, f16 or bf16), and for
//!   jumprelu its threshold parameter [F] (always f32): `log_threshold` (log θ) or
//!   `threshold` (θ itself), as `jumprelu.threshold_param` says;
//! - training checkpoints add `optim.<param>.exp_avg` and `optim.<param>.exp_avg_sq` (f32,
//!   shaped like the parameter), `threshold.sum` and `threshold.weight` (f64 scalars, the
//!   batchtopk threshold estimator) and the loop's own tensors as `train.<name>`.
//!
//! Header (JSON): `version`, `architecture`, `k`, `d_in`, `d_sae`, `input_scale`, `threshold`
//! (θ for batchtopk, else null), `saeclip_version`, `clip`, `training`, `metrics` (the
//! caller's documents), and for training checkpoints `state` = {`step`, `epoch`,
//! `optimizer` {`beta1`, `beta2`, `eps`, `steps`}, `threshold` {`decay`} or null, `tensors`
//! (names of the `train.*` tensors), `extra` (the loop's scalars)}; jumprelu adds `jumprelu`
//! {`bandwidth`, `sparsity_loss`, `tanh_scale`, `threshold_param`} (optional on read, as
//! each of its fields but the first three; the tensor present decides the parameter),
//! matryoshka `matryoshka` {`widths`, `weights`, `selection`, `decoder_norm` (optional on
//! read: `unit`)} (required). On read, `threshold`,
//! `saeclip_version`, `clip`, `training` and `metrics` may be absent (a file written by
//! another program from DESIGN.md's description); everything is always written.
//!
//! Parameters and optimizer state are stored exactly (f32 bytes), so a run resumed from a
//! training checkpoint continues bit for bit on CPU. Note that `b_dec` and the scale are the
//! SAE's own: an SAELens export must fold `input_scale` into the weights.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::arch::batchtopk::ThresholdEstimator;
use super::arch::jumprelu::ThresholdParam;
use super::model::{Architecture, JumpReluParams, MatryoshkaParams, Sae, SaeConfig};
use super::optim::{param_names, Adam, AdamConfig, PARAMS};
use crate::disk::write_atomic;

/// Version of the header and tensor set; bump it on every change to either.
pub const VERSION: u32 = 1;
/// The safetensors metadata key that holds the header.
pub const METADATA_KEY: &str = "saeclip";

/// The caller's parts of the header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Where the activations came from: {model, sha256, layer, tokens}.
    pub clip: Value,
    /// The training configuration.
    pub training: Value,
    /// Evaluation results.
    pub metrics: Value,
}

/// What a training checkpoint adds, borrowed from the running loop.
#[derive(Debug)]
pub struct TrainingStateRef<'a> {
    pub step: u64,
    pub epoch: u64,
    pub adam: &'a Adam,
    /// batchtopk's threshold estimator.
    pub threshold: Option<&'a ThresholdEstimator>,
    /// The loop's tensors (dead-latent counters, RNG state, …), saved as `train.<name>`.
    pub tensors: Vec<(String, &'a Tensor)>,
    /// The loop's scalars.
    pub extra: Value,
}

/// A training checkpoint's state, loaded.
#[derive(Debug)]
pub struct TrainingState {
    pub step: u64,
    pub epoch: u64,
    pub adam: Adam,
    pub threshold: Option<ThresholdEstimator>,
    pub tensors: Vec<(String, Tensor)>,
    pub extra: Value,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub sae: Sae,
    pub meta: CheckpointMeta,
    /// Present in training checkpoints (when asked for).
    pub training: Option<TrainingState>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: u32,
    architecture: Architecture,
    k: i64,
    d_in: i64,
    d_sae: i64,
    input_scale: f64,
    // Read leniently: what DESIGN.md documents is required; provenance (the writing
    // saeclip's version) and the batchtopk threshold (None: BatchTopK(k) over the batch)
    // may be absent in files written by other programs. Always written.
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    saeclip_version: Option<String>,
    #[serde(default)]
    clip: Value,
    #[serde(default)]
    training: Value,
    #[serde(default)]
    metrics: Value,
    // jumprelu: the estimator and penalty settings (defaults when absent); matryoshka: the
    // prefixes (required). Written only for those architectures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jumprelu: Option<JumpReluParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    matryoshka: Option<MatryoshkaParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<StateHeader>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateHeader {
    step: u64,
    epoch: u64,
    optimizer: OptimizerHeader,
    threshold: Option<ThresholdHeader>,
    tensors: Vec<String>,
    #[serde(default)]
    extra: Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct OptimizerHeader {
    #[serde(flatten)]
    config: AdamConfig,
    steps: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ThresholdHeader {
    decay: Option<f64>,
}

/// A tensor's bytes on their way into the file.
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for Entry {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => bail!("cannot store {other:?} tensors"),
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn entry(t: &Tensor, kind: Kind) -> Result<Entry> {
    let t = t.to_device(Device::Cpu).to_kind(kind).contiguous();
    let numel = t.numel();
    let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(Entry {
        dtype: dtype_of(kind)?,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// Write `sae` (parameters in `dtype`: f32, f16 or bf16) and, for a training checkpoint,
/// `training` (then `dtype` must be f32) to `path`, atomically.
pub fn save(
    path: &Path,
    sae: &Sae,
    meta: &CheckpointMeta,
    training: Option<&TrainingStateRef<'_>>,
    dtype: Kind,
) -> Result<()> {
    ensure!(
        matches!(dtype, Kind::Float | Kind::Half | Kind::BFloat16),
        "SAE checkpoints hold f32, f16 or bf16 parameters, not {dtype:?}"
    );
    ensure!(
        training.is_none() || dtype == Kind::Float,
        "training checkpoints keep their parameters in f32 (asked for {dtype:?})"
    );
    let mut entries: Vec<(String, Entry)> = Vec::new();
    for (name, t) in PARAMS
        .iter()
        .zip([&sae.w_enc, &sae.b_enc, &sae.w_dec, &sae.b_dec])
    {
        entries.push((name.to_string(), entry(t, dtype)?));
    }
    if let Some(t) = &sae.threshold_param {
        // θ's parameter stays f32 whatever `dtype`: θ = exp(log θ) amplifies rounding, and
        // a linear θ is compared with pre-activations to the last bit.
        let name = sae.threshold_kind().tensor_name();
        entries.push((name.to_string(), entry(t, Kind::Float)?));
    }
    let state = match training {
        None => None,
        Some(s) => {
            for (name, t) in s.adam.state_tensors() {
                entries.push((format!("optim.{name}"), entry(&t, Kind::Float)?));
            }
            if let Some(th) = s.threshold {
                entries.push(("threshold.sum".into(), entry(&th.sum, Kind::Double)?));
                entries.push(("threshold.weight".into(), entry(&th.weight, Kind::Double)?));
            }
            let mut names = Vec::new();
            for (name, t) in &s.tensors {
                ensure!(!name.is_empty(), "a training tensor has an empty name");
                ensure!(
                    !names.contains(name),
                    "two training tensors are named {name}"
                );
                entries.push((format!("train.{name}"), entry(t, t.kind())?));
                names.push(name.clone());
            }
            Some(StateHeader {
                step: s.step,
                epoch: s.epoch,
                optimizer: OptimizerHeader {
                    config: s.adam.config,
                    steps: s.adam.steps(),
                },
                threshold: s.threshold.map(|t| ThresholdHeader { decay: t.decay }),
                tensors: names,
                extra: s.extra.clone(),
            })
        }
    };
    let header = Header {
        version: VERSION,
        architecture: sae.config.architecture,
        k: sae.config.k,
        d_in: sae.config.d_in,
        d_sae: sae.config.d_sae,
        input_scale: sae.input_scale,
        threshold: sae.threshold,
        saeclip_version: Some(env!("CARGO_PKG_VERSION").into()),
        clip: meta.clip.clone(),
        training: meta.training.clone(),
        metrics: meta.metrics.clone(),
        jumprelu: sae
            .jumprelu
            .filter(|_| sae.config.architecture == Architecture::JumpRelu),
        matryoshka: sae
            .matryoshka
            .clone()
            .filter(|_| sae.config.architecture == Architecture::Matryoshka),
        state,
    };
    let metadata = HashMap::from([(METADATA_KEY.to_string(), serde_json::to_string(&header)?)]);
    write_atomic(path, |tmp| {
        safetensors::serialize_to_file(entries, Some(metadata), tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Read a checkpoint with its training state (if it has one) onto `device`.
pub fn load(path: &Path, device: Device) -> Result<Checkpoint> {
    read(path, device, true)
}

/// Read only the SAE and the header (training state, if any, is checked for presence but
/// not loaded).
pub fn load_sae(path: &Path, device: Device) -> Result<(Sae, CheckpointMeta)> {
    let c = read(path, device, false)?;
    Ok((c.sae, c.meta))
}

/// The `state.extra` of a training checkpoint's header (the loop's scalars) without reading
/// its tensors; `Value::Null` when it has none.
pub fn read_extra(path: &Path) -> Result<Value> {
    let shown = path.display();
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open SAE checkpoint {shown}"))?;
    // SAFETY: read-only map; only the header is read, into owned values.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {shown}"))?;
    let (_, meta) = SafeTensors::read_metadata(&map)
        .map_err(|e| anyhow!("{shown} is not a valid safetensors file ({e})"))?;
    let text = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| anyhow!("{shown} has no `{METADATA_KEY}` metadata"))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| anyhow!("{shown}: the `{METADATA_KEY}` metadata is not valid JSON ({e})"))?;
    Ok(value["state"]["extra"].clone())
}

fn read(path: &Path, device: Device, with_training: bool) -> Result<Checkpoint> {
    let shown = path.display();
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open SAE checkpoint {shown}"))?;
    // SAFETY: read-only map, copied into tensors before it is dropped.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {shown}"))?;
    let not_safetensors = |e: safetensors::SafeTensorError| {
        anyhow!("{shown} is not a valid safetensors file ({e}): it may be truncated or in another format")
    };
    let (_, file_meta) = SafeTensors::read_metadata(&map).map_err(not_safetensors)?;
    let st = SafeTensors::deserialize(&map).map_err(not_safetensors)?;
    let text = file_meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| {
            anyhow!("{shown} has no `{METADATA_KEY}` metadata: it is not an SAE checkpoint written by saeclip")
        })?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| anyhow!("{shown}: the `{METADATA_KEY}` metadata is not valid JSON ({e})"))?;
    let version = value
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("{shown}: the `{METADATA_KEY}` metadata has no version number"))?;
    ensure!(
        version == VERSION as u64,
        "{shown}: unknown SAE checkpoint version {version} (this saeclip {} reads version {VERSION})",
        env!("CARGO_PKG_VERSION")
    );
    let header: Header = serde_json::from_value(value)
        .map_err(|e| anyhow!("{shown}: invalid `{METADATA_KEY}` metadata: {e}"))?;
    let config = SaeConfig {
        architecture: header.architecture,
        d_in: header.d_in,
        d_sae: header.d_sae,
        k: header.k,
    };
    config
        .validate()
        .with_context(|| format!("{shown}: invalid SAE configuration"))?;
    let (d, f) = (config.d_in, config.d_sae);

    let mut unread: BTreeSet<String> = st.names().into_iter().map(String::from).collect();
    let mut take = |name: &str, shape: Option<&[i64]>, float: bool| -> Result<Tensor> {
        let view = st
            .tensor(name)
            .map_err(|_| anyhow!("{shown}: tensor {name} is missing"))?;
        unread.remove(name);
        let found: Vec<i64> = view.shape().iter().map(|&n| n as i64).collect();
        if let Some(shape) = shape {
            ensure!(
                found == shape,
                "{shown}: tensor {name} has shape {found:?}, expected {shape:?} (d_in = {d}, d_sae = {f})"
            );
        }
        let kind = kind_of(view.dtype())
            .filter(|k| {
                !float || matches!(k, Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double)
            })
            .ok_or_else(|| {
                anyhow!(
                    "{shown}: tensor {name} has unsupported dtype {:?}",
                    view.dtype()
                )
            })?;
        Tensor::f_from_data_size(view.data(), &found, kind)
            .with_context(|| format!("{shown}: cannot read tensor {name}"))
    };
    let shapes: [&[i64]; 4] = [&[d, f], &[f], &[f, d], &[d]];
    let w_enc = take(PARAMS[0], Some(shapes[0]), true)?;
    let b_enc = take(PARAMS[1], Some(shapes[1]), true)?;
    let w_dec = take(PARAMS[2], Some(shapes[2]), true)?;
    let b_dec = take(PARAMS[3], Some(shapes[3]), true)?;
    let mut sae = Sae::from_tensors(
        config,
        &w_enc,
        &b_enc,
        &w_dec,
        &b_dec,
        header.input_scale,
        header.threshold,
    )
    .with_context(|| format!("{shown}: invalid SAE"))?;
    match config.architecture {
        Architecture::JumpRelu => {
            // The tensor present decides the parameter (a header may not say).
            let linear = ThresholdParam::Linear.tensor_name();
            let param = if st.tensor(linear).is_ok() {
                ThresholdParam::Linear
            } else {
                ThresholdParam::Log
            };
            let t = take(param.tensor_name(), Some(&[f]), true)?;
            sae.threshold_param = Some(t.to_kind(Kind::Float).contiguous());
            let mut params = header.jumprelu.unwrap_or_default();
            params.threshold_param = param;
            params
                .validate()
                .with_context(|| format!("{shown}: invalid jumprelu settings"))?;
            sae.jumprelu = Some(params);
        }
        Architecture::Matryoshka => {
            let m = header.matryoshka.ok_or_else(|| {
                anyhow!("{shown}: a matryoshka checkpoint needs `matryoshka` (widths, weights, selection) in its header")
            })?;
            sae.set_matryoshka(m)
                .with_context(|| format!("{shown}: invalid matryoshka header"))?;
        }
        _ => {}
    }
    let sae = sae.to_device(device);

    let training = match header.state {
        Some(state) if with_training => {
            let mut moments = Vec::new();
            let threshold_shape: &[i64] = &[f];
            for (i, param) in param_names(&sae).iter().enumerate() {
                let shape = shapes.get(i).copied().unwrap_or(threshold_shape);
                for moment in ["exp_avg", "exp_avg_sq"] {
                    let t = take(&format!("optim.{param}.{moment}"), Some(shape), true)?;
                    moments.push((format!("{param}.{moment}"), t));
                }
            }
            let adam =
                Adam::from_state(state.optimizer.config, state.optimizer.steps, moments, &sae)
                    .with_context(|| format!("{shown}: invalid optimizer state"))?;
            let threshold = match state.threshold {
                None => None,
                Some(th) => Some(ThresholdEstimator {
                    decay: th.decay,
                    sum: take("threshold.sum", Some(&[]), true)?
                        .to_kind(Kind::Double)
                        .to_device(device),
                    weight: take("threshold.weight", Some(&[]), true)?
                        .to_kind(Kind::Double)
                        .to_device(device),
                }),
            };
            let mut tensors = Vec::new();
            for name in state.tensors {
                let t = take(&format!("train.{name}"), None, false)?.to_device(device);
                tensors.push((name, t));
            }
            Some(TrainingState {
                step: state.step,
                epoch: state.epoch,
                adam,
                threshold,
                tensors,
                extra: state.extra,
            })
        }
        Some(_) => {
            unread.retain(|n| {
                !(n.starts_with("optim.") || n.starts_with("threshold.") || n.starts_with("train."))
            });
            None
        }
        None => None,
    };
    ensure!(
        unread.is_empty(),
        "{shown}: unexpected tensors {} (not described by the `{METADATA_KEY}` metadata)",
        unread.into_iter().collect::<Vec<_>>().join(", ")
    );
    Ok(Checkpoint {
        sae,
        meta: CheckpointMeta {
            clip: header.clip,
            training: header.training,
            metrics: header.metrics,
        },
        training,
    })
}
