//! Finding and reading CLIP weights: a Hugging Face model directory, an open_clip /
//! OpenAI state dict in `.safetensors`, or a TorchScript module exported by
//! `scripts/export_torchscript.py`.
//!
//! Every tensor is checked against the model built from the config: a missing,
//! unexpected or mis-shaped tensor is reported by name with both shapes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Kind, Tensor};

use super::config::{Activation, ClipConfig, TextConfig, VisionConfig};

/// How a model is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ModelFormat {
    /// A Hugging Face directory: `config.json` + `model.safetensors`.
    Hf,
    /// An open_clip / OpenAI state dict (`visual.*`, `transformer.*`) in `.safetensors`,
    /// with `open_clip_config.json` beside it when there is one.
    OpenClip,
    /// A TorchScript module from `scripts/export_torchscript.py`.
    Torchscript,
}

/// The files that make up a model, once the format is known.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    pub format: ModelFormat,
    /// `config.json` or `open_clip_config.json`; `None` when dimensions are read from the
    /// weights (open_clip without a config) or the module (TorchScript).
    pub config: Option<PathBuf>,
    pub weights: PathBuf,
}

const HF_CONFIG: &str = "config.json";
const HF_WEIGHTS: &str = "model.safetensors";
const OPEN_CLIP_CONFIG: &str = "open_clip_config.json";
const OPEN_CLIP_WEIGHTS: &str = "open_clip_model.safetensors";

const HELP: &str = "expected a Hugging Face directory (config.json + model.safetensors), an open_clip \
                    .safetensors file or directory, or a TorchScript file from scripts/export_torchscript.py";

/// Work out the format and files of the model at `path` (`format` overrides detection).
pub fn resolve(path: &Path, format: Option<ModelFormat>) -> Result<ModelFiles> {
    if !path.exists() {
        bail!(
            "model {} does not exist ({HELP}; real weights must be downloaded on a networked machine first)",
            path.display()
        );
    }
    if path.is_dir() {
        return resolve_dir(path, format);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let format = match format {
        Some(f) => f,
        None => match ext.as_str() {
            "safetensors" => {
                let names = safetensors_names(path)?;
                if names.iter().any(|n| n.starts_with("visual.")) {
                    ModelFormat::OpenClip
                } else if names.iter().any(|n| n.starts_with("vision_model."))
                    || path.with_file_name(HF_CONFIG).is_file()
                {
                    ModelFormat::Hf
                } else {
                    bail!(
                        "{} holds no CLIP tensors (no `visual.*` or `vision_model.*` names)",
                        path.display()
                    )
                }
            }
            "pt" | "ts" | "jit" | "torchscript" => ModelFormat::Torchscript,
            "bin" | "pth" | "ckpt" => bail!(
                "{} is a Python pickle, which saeclip cannot read: convert it to safetensors \
                 (python -c \"import torch, safetensors.torch as s; s.save_file(torch.load('IN'), 'model.safetensors')\")",
                path.display()
            ),
            _ => bail!("unknown model format for {} ({HELP}; or pass --model-format)", path.display()),
        },
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = match format {
        ModelFormat::Hf => {
            let config = dir.join(HF_CONFIG);
            if !config.is_file() {
                bail!(
                    "{} has no {HF_CONFIG} beside it: a Hugging Face model needs its config",
                    path.display()
                );
            }
            Some(config)
        }
        ModelFormat::OpenClip => Some(dir.join(OPEN_CLIP_CONFIG)).filter(|c| c.is_file()),
        ModelFormat::Torchscript => None,
    };
    Ok(ModelFiles {
        format,
        config,
        weights: path.to_path_buf(),
    })
}

fn resolve_dir(dir: &Path, format: Option<ModelFormat>) -> Result<ModelFiles> {
    let has = |name: &str| dir.join(name).is_file();
    let format = match format {
        Some(f) => f,
        None if has(HF_CONFIG) => ModelFormat::Hf,
        None if has(OPEN_CLIP_CONFIG) || has(OPEN_CLIP_WEIGHTS) => ModelFormat::OpenClip,
        None => bail!(
            "{} is not a model directory: it has no {HF_CONFIG} (Hugging Face) or {OPEN_CLIP_CONFIG} (open_clip)",
            dir.display()
        ),
    };
    match format {
        ModelFormat::Hf => {
            if !has(HF_CONFIG) {
                bail!(
                    "{} has no {HF_CONFIG}: a Hugging Face model directory needs one",
                    dir.display()
                );
            }
            if !has(HF_WEIGHTS) {
                let hint = if has("pytorch_model.bin") {
                    " (it has pytorch_model.bin, a Python pickle saeclip cannot read: convert it to model.safetensors)"
                } else {
                    ""
                };
                bail!("{} has no {HF_WEIGHTS}{hint}", dir.display());
            }
            Ok(ModelFiles {
                format,
                config: Some(dir.join(HF_CONFIG)),
                weights: dir.join(HF_WEIGHTS),
            })
        }
        ModelFormat::OpenClip => {
            if !has(OPEN_CLIP_WEIGHTS) {
                bail!("{} has no {OPEN_CLIP_WEIGHTS}", dir.display());
            }
            let config = Some(dir.join(OPEN_CLIP_CONFIG)).filter(|c| c.is_file());
            Ok(ModelFiles {
                format,
                config,
                weights: dir.join(OPEN_CLIP_WEIGHTS),
            })
        }
        ModelFormat::Torchscript => {
            bail!("{} is a directory, not a TorchScript file", dir.display())
        }
    }
}

/// Tensor names of a safetensors file, read from its header only.
fn safetensors_names(path: &Path) -> Result<Vec<String>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the map is read-only and dropped before this function returns; a file
    // truncated underneath us at worst makes the header parse fail.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&map).map_err(|e| not_safetensors(path, e))?;
    Ok(meta.tensors().into_keys().collect())
}

fn not_safetensors(path: &Path, e: safetensors::SafeTensorError) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not a valid safetensors file ({e}): it may be truncated or in another format",
        path.display()
    )
}

/// Read every tensor of a safetensors file onto the CPU.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: read-only map, copied into tensors before it is dropped.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| not_safetensors(path, e))?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        use safetensors::Dtype;
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::U8 => Kind::Uint8,
            Dtype::BOOL => Kind::Bool,
            other => bail!(
                "{}: tensor {name} has unsupported dtype {other:?}",
                path.display()
            ),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)
            .with_context(|| format!("{}: cannot read tensor {name}", path.display()))?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// A tensor on its way into the model, with the name it had in the file.
struct Entry {
    tensor: Tensor,
    source: String,
}

/// Tensors the files may hold that the model does not use.
fn ignorable(name: &str) -> bool {
    name.ends_with("position_ids")
        || name.ends_with("attn_mask")
        || matches!(name, "input_resolution" | "context_length" | "vocab_size")
}

/// Copy `tensors` (transformers names) into the variables of `vs`, checking that every
/// variable is present with its shape and that nothing unexpected is left over.
fn load_into(vs: &VarStore, tensors: BTreeMap<String, Entry>, file: &Path) -> Result<()> {
    let mut tensors = tensors;
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in variables {
        match tensors.remove(&name) {
            None => missing.push(format!("{name} {:?}", var.size())),
            Some(e) if e.tensor.size() != var.size() => misshaped.push(format!(
                "{} expected {:?} found {:?}",
                e.source,
                var.size(),
                e.tensor.size()
            )),
            Some(e) => {
                tch::no_grad(|| var.f_copy_(&e.tensor))
                    .with_context(|| format!("{}: cannot load {}", file.display(), e.source))?;
            }
        }
    }
    let unexpected: Vec<String> = tensors
        .into_values()
        .filter(|e| !ignorable(&e.source))
        .map(|e| e.source)
        .collect();
    if missing.is_empty() && misshaped.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let mut msg = format!("{} does not fit the model config:", file.display());
    for (what, list) in [
        ("missing", missing),
        ("wrong shape", misshaped),
        ("unexpected", unexpected),
    ] {
        if !list.is_empty() {
            let shown: Vec<&str> = list.iter().take(4).map(String::as_str).collect();
            let more = if list.len() > 4 {
                format!(" and {} more", list.len() - 4)
            } else {
                String::new()
            };
            let _ = write!(msg, " {what}: {}{more};", shown.join(", "));
        }
    }
    bail!(msg.trim_end_matches(';').to_string())
}

/// Load a transformers-named state dict into `vs`.
pub fn load_hf(vs: &VarStore, path: &Path) -> Result<()> {
    let tensors = read_safetensors(path)?
        .into_iter()
        .map(|(name, tensor)| {
            (
                name.clone(),
                Entry {
                    tensor,
                    source: name,
                },
            )
        })
        .collect();
    load_into(vs, tensors, path)
}

/// Load a state dict into `vs` after `prepare` has renamed (or joined) its tensors to the
/// variable names; errors still name what the file holds.
pub fn load_hf_prepared(
    vs: &VarStore,
    path: &Path,
    prepare: impl Fn(BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>>,
) -> Result<()> {
    let tensors: BTreeMap<String, Tensor> = read_safetensors(path)?.into_iter().collect();
    let tensors = prepare(tensors).with_context(|| format!("{}", path.display()))?;
    let tensors = tensors
        .into_iter()
        .map(|(name, tensor)| {
            (
                name.clone(),
                Entry {
                    tensor,
                    source: name,
                },
            )
        })
        .collect();
    load_into(vs, tensors, path)
}

/// Load an open_clip / OpenAI-named state dict into `vs`, renaming to transformers'
/// names: fused `in_proj` q/k/v are split, `proj` matrices are transposed.
pub fn load_open_clip(vs: &VarStore, path: &Path) -> Result<()> {
    let mut tensors = BTreeMap::new();
    for (name, tensor) in read_safetensors(path)? {
        for (hf_name, t) in open_clip_to_hf(&name, tensor)? {
            tensors.insert(
                hf_name,
                Entry {
                    tensor: t,
                    source: name.clone(),
                },
            );
        }
    }
    load_into(vs, tensors, path)
}

/// The transformers name(s) of one open_clip tensor. Unknown names keep their name, so
/// the loader reports them as unexpected.
fn open_clip_to_hf(name: &str, t: Tensor) -> Result<Vec<(String, Tensor)>> {
    let one = |n: &str, t: Tensor| Ok(vec![(n.to_string(), t)]);
    let rest = |prefix: &str| name.strip_prefix(prefix).map(str::to_string);
    match name {
        "visual.class_embedding" => one("vision_model.embeddings.class_embedding", t),
        "visual.positional_embedding" => {
            one("vision_model.embeddings.position_embedding.weight", t)
        }
        "visual.conv1.weight" => one("vision_model.embeddings.patch_embedding.weight", t),
        "visual.proj" => one("visual_projection.weight", t.tr()),
        "token_embedding.weight" => one("text_model.embeddings.token_embedding.weight", t),
        "positional_embedding" => one("text_model.embeddings.position_embedding.weight", t),
        "text_projection" => one("text_projection.weight", t.tr()),
        "logit_scale" => one("logit_scale", t),
        _ => {
            if let Some(r) = rest("visual.ln_pre.") {
                one(&format!("vision_model.pre_layrnorm.{r}"), t)
            } else if let Some(r) = rest("visual.ln_post.") {
                one(&format!("vision_model.post_layernorm.{r}"), t)
            } else if let Some(r) = rest("ln_final.") {
                one(&format!("text_model.final_layer_norm.{r}"), t)
            } else if let Some(r) = rest("visual.transformer.resblocks.") {
                block_to_hf("vision_model.encoder.layers", name, &r, t)
            } else if let Some(r) = rest("transformer.resblocks.") {
                block_to_hf("text_model.encoder.layers", name, &r, t)
            } else {
                one(name, t)
            }
        }
    }
}

/// `N.attn.in_proj_weight` etc. inside a residual block.
fn block_to_hf(prefix: &str, name: &str, rest: &str, t: Tensor) -> Result<Vec<(String, Tensor)>> {
    let Some((index, key)) = rest.split_once('.') else {
        return Ok(vec![(name.to_string(), t)]);
    };
    let base = format!("{prefix}.{index}");
    let renamed = |k: &str| Ok(vec![(format!("{base}.{k}"), t.shallow_clone())]);
    if let Some(r) = key.strip_prefix("ln_1.") {
        return renamed(&format!("layer_norm1.{r}"));
    }
    if let Some(r) = key.strip_prefix("ln_2.") {
        return renamed(&format!("layer_norm2.{r}"));
    }
    if let Some(r) = key.strip_prefix("attn.out_proj.") {
        return renamed(&format!("self_attn.out_proj.{r}"));
    }
    if let Some(r) = key.strip_prefix("mlp.c_fc.") {
        return renamed(&format!("mlp.fc1.{r}"));
    }
    if let Some(r) = key.strip_prefix("mlp.c_proj.") {
        return renamed(&format!("mlp.fc2.{r}"));
    }
    if let Some(r) = key.strip_prefix("attn.in_proj_") {
        let rows = t.size().first().copied().unwrap_or(0);
        if rows == 0 || rows % 3 != 0 {
            bail!(
                "{name} has shape {:?}: the first dimension must hold q, k and v (a multiple of 3)",
                t.size()
            );
        }
        let parts = t.chunk(3, 0);
        return Ok(["q_proj", "k_proj", "v_proj"]
            .iter()
            .zip(parts)
            .map(|(p, part)| (format!("{base}.self_attn.{p}.{r}"), part))
            .collect());
    }
    Ok(vec![(name.to_string(), t)])
}

/// Dimensions of an open_clip state dict without a config file, read from tensor
/// shapes as open_clip does for OpenAI checkpoints. The activation and the head width
/// cannot be read from shapes: OpenAI's QuickGELU and 64-wide heads are assumed (right for
/// every OpenAI model; LAION's H/14, with 80-wide heads, needs its open_clip_config.json).
pub fn infer_open_clip_config(path: &Path) -> Result<ClipConfig> {
    let tensors: BTreeMap<String, Vec<i64>> = read_safetensors_shapes(path)?.into_iter().collect();
    let shape = |name: &str| -> Result<&Vec<i64>> {
        tensors.get(name).with_context(|| {
            format!("{}: tensor {name} is missing, so the model size cannot be inferred (add open_clip_config.json)", path.display())
        })
    };
    let dim = |name: &str, i: usize| -> Result<i64> {
        shape(name)?
            .get(i)
            .copied()
            .with_context(|| format!("{}: tensor {name} has too few dimensions", path.display()))
    };
    let count = |prefix: &str| {
        tensors
            .keys()
            .filter_map(|k| {
                k.strip_prefix(prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1)
    };
    let width = dim("visual.conv1.weight", 0)?;
    let patch = dim("visual.conv1.weight", 2)?;
    let positions = dim("visual.positional_embedding", 0)?;
    let grid = ((positions - 1) as f64).sqrt().round() as i64;
    let text_width = dim("ln_final.weight", 0)?;
    let config = ClipConfig {
        vision: VisionConfig {
            hidden_size: width,
            intermediate_size: dim("visual.transformer.resblocks.0.mlp.c_fc.weight", 0)?,
            num_hidden_layers: count("visual.transformer.resblocks."),
            num_attention_heads: width / 64,
            num_channels: dim("visual.conv1.weight", 1)?,
            image_size: grid * patch,
            patch_size: patch,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        },
        text: TextConfig {
            vocab_size: dim("token_embedding.weight", 0)?,
            hidden_size: text_width,
            intermediate_size: dim("transformer.resblocks.0.mlp.c_fc.weight", 0)?,
            num_hidden_layers: count("transformer.resblocks."),
            num_attention_heads: text_width / 64,
            max_position_embeddings: dim("positional_embedding", 0)?,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        },
        projection_dim: dim("text_projection", 1)?,
    };
    Ok(config)
}

fn read_safetensors_shapes(path: &Path) -> Result<Vec<(String, Vec<i64>)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: read-only map dropped before return.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&map).map_err(|e| not_safetensors(path, e))?;
    Ok(meta
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.shape.iter().map(|&d| d as i64).collect()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_proj_is_split_into_q_k_v() {
        let t = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).view([6, 2]);
        let out = open_clip_to_hf("transformer.resblocks.3.attn.in_proj_weight", t).unwrap();
        let names: Vec<_> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "text_model.encoder.layers.3.self_attn.q_proj.weight",
                "text_model.encoder.layers.3.self_attn.k_proj.weight",
                "text_model.encoder.layers.3.self_attn.v_proj.weight"
            ]
        );
        assert_eq!(out[1].1.double_value(&[0, 0]), 4.0);
        assert!(open_clip_to_hf(
            "transformer.resblocks.0.attn.in_proj_bias",
            Tensor::zeros([4], (Kind::Float, tch::Device::Cpu))
        )
        .is_err());
    }

    #[test]
    fn projections_are_transposed() {
        let t = Tensor::zeros([8, 3], (Kind::Float, tch::Device::Cpu));
        let out = open_clip_to_hf("visual.proj", t).unwrap();
        assert_eq!(out[0].0, "visual_projection.weight");
        assert_eq!(out[0].1.size(), [3, 8]);
        let out = open_clip_to_hf(
            "visual.transformer.resblocks.11.mlp.c_proj.bias",
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        )
        .unwrap();
        assert_eq!(out[0].0, "vision_model.encoder.layers.11.mlp.fc2.bias");
    }
}
