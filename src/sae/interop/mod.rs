//! `saeclip import`: SAEs that other tools wrote, read into saeclip's [`Sae`] with the hook
//! point they were trained on (DESIGN.md "Importing published SAEs").
//!
//! Each reader turns its format into a [`Foreign`] SAE (the parameters as that tool uses
//! them, its activation, its input normalisation) and a [`Hook`] (model, layer, tokens, as
//! far as the files record them); [`finish`] maps both into saeclip's terms:
//!
//! - input normalisation: the other SAE sees x' = (x − m)·c (saev 0.1.0's dataset mean m and
//!   scalar 1/c; m = 0, c = 1 elsewhere). saeclip's input scale s = c and, because
//!   (x − m)·c − b = x·c − (m·c + b), its b_dec is m·c + b; decoding gives
//!   (z·W_dec + m·c + b)/c = x̂'/c + m, the other tool's reconstruction in the original space;
//! - an encoder that does not subtract b_dec (pre = x'·W_enc + b_enc) has b_enc folded:
//!   pre = (x' − b)·W_enc + (b_enc + b·W_enc);
//! - activations: ReLU → relu, TopK(k) → topk, a batch top-k SAE with its inference
//!   threshold θ → batchtopk (Threshold(θ)), per-latent thresholds θ_j → jumprelu
//!   (`linear` parameter), nested groups → matryoshka (batch top-k).
//!
//! Where a format does not record the layer or the tokens, `--layer` / `--tokens` give them
//! (and must agree with what it records). SAE-Lens folders go through
//! [`crate::sae::export::read_saelens`] unchanged.

pub mod dictionary_learning;
pub mod prisma;
pub mod saev;
pub mod sparsify;
pub mod torch_pickle;
pub mod torch_save;
pub mod writers;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

use super::checkpoint::{self, CheckpointMeta};
use super::jumprelu::{JumpReluParams, ThresholdParam};
use super::model::{Architecture, MatryoshkaParams, MatryoshkaSelection, Sae, SaeConfig};
use crate::clip::Tokens;

/// The formats `saeclip import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// Decided from the files.
    #[value(name = "auto")]
    Auto,
    /// SAE-Lens 6: cfg.json + sae_weights.safetensors.
    #[value(name = "saelens")]
    SaeLens,
    /// saev: a `saev.nn.dump` file (a JSON line, then a torch.save state dict), 0.1.0 or
    /// the current repository's layout (`checkpoint/sae.pt` + `config.json`).
    #[value(name = "saev")]
    Saev,
    /// EleutherAI sparsify: cfg.json + sae.safetensors, or one such folder per hook.
    #[value(name = "sparsify")]
    Sparsify,
    /// dictionary_learning: ae.pt + config.json.
    #[value(name = "dictionary-learning")]
    DictionaryLearning,
    /// ViT-Prisma: config.json + a torch.save state dict (.pt).
    #[value(name = "prisma")]
    Prisma,
}

impl ImportFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImportFormat::Auto => "auto",
            ImportFormat::SaeLens => "saelens",
            ImportFormat::Saev => "saev",
            ImportFormat::Sparsify => "sparsify",
            ImportFormat::DictionaryLearning => "dictionary-learning",
            ImportFormat::Prisma => "prisma",
        }
    }
}

/// What `import` is asked to do.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub format: ImportFormat,
    /// The file or folder to read.
    pub path: PathBuf,
    /// The checkpoint to write.
    pub out: PathBuf,
    /// The hook point where the files leave it out (or to check what they record).
    pub layer: Option<i64>,
    pub tokens: Option<Tokens>,
    /// sparsify's multi-hook folders: which sub-folder.
    pub hook: Option<String>,
    /// k where the files do not record it (SAE-Lens jumprelu).
    pub k: Option<i64>,
    /// saev 0.1.0's dataset normalisation (`DataLoad.scale_mean` / `scale_norm`).
    pub saev_scale_mean: Option<String>,
    pub saev_scale_norm: Option<String>,
    /// Parameter dtype of the checkpoint.
    pub dtype: Kind,
    /// Overwrite an existing `out`.
    pub force: bool,
}

impl ImportRequest {
    /// A request for `path` with nothing but the format given.
    pub fn new(format: ImportFormat, path: &Path, out: &Path) -> ImportRequest {
        ImportRequest {
            format,
            path: path.to_path_buf(),
            out: out.to_path_buf(),
            layer: None,
            tokens: None,
            hook: None,
            k: None,
            saev_scale_mean: None,
            saev_scale_norm: None,
            dtype: Kind::Float,
            force: false,
        }
    }
}

/// What was imported.
#[derive(Debug)]
pub struct Imported {
    pub format: ImportFormat,
    pub sae: Sae,
    pub meta: CheckpointMeta,
}

/// Read `r.path` and write it as a saeclip checkpoint (atomically; nothing is written when
/// reading fails).
pub fn import(r: &ImportRequest) -> Result<Imported> {
    ensure!(
        r.force || !r.out.exists(),
        "{} already exists: choose another --out, or --force to overwrite it",
        r.out.display()
    );
    let imported = read(r)?;
    checkpoint::save(&r.out, &imported.sae, &imported.meta, None, r.dtype)?;
    Ok(imported)
}

/// Read `r.path` as an SAE on the CPU, with its header.
pub fn read(r: &ImportRequest) -> Result<Imported> {
    let format = match r.format {
        ImportFormat::Auto => detect(&r.path)?,
        f => f,
    };
    let (sae, meta) = match format {
        ImportFormat::SaeLens => {
            let (sae, mut meta) = super::export::read_saelens(&r.path, r.k)?;
            // Only fills what the folder leaves out; a folder that records both is as before.
            for (key, v) in [
                ("layer", r.layer.map(|l| json!(l))),
                ("tokens", r.tokens.map(|t| json!(t))),
            ] {
                if let (Some(v), Some(clip)) = (v, meta.clip.as_object_mut()) {
                    if clip.get(key).is_none_or(Value::is_null) {
                        clip.insert(key.into(), v);
                    }
                }
            }
            (sae, meta)
        }
        ImportFormat::Saev => saev::read(r)?,
        ImportFormat::Sparsify => sparsify::read(r)?,
        ImportFormat::DictionaryLearning => dictionary_learning::read(r)?,
        ImportFormat::Prisma => prisma::read(r)?,
        ImportFormat::Auto => unreachable!("detect returns a format"),
    };
    Ok(Imported { format, sae, meta })
}

/// The format of `path` from its files:
/// - a file that starts with a JSON line followed by a zip archive: saev;
/// - a folder with `cfg.json` + `sae_weights.safetensors`: SAE-Lens; `cfg.json` +
///   `sae.safetensors`, or sub-folders that hold them: sparsify; `ae.pt` (+ `config.json`):
///   dictionary_learning; `sae.pt` or `checkpoint/sae.pt`: saev; `config.json` with
///   `hook_point_layer` and a `.pt` file: ViT-Prisma;
/// - a `.pt` file: the format of its folder (dictionary_learning's `ae.pt`, ViT-Prisma's
///   weights).
pub fn detect(path: &Path) -> Result<ImportFormat> {
    let shown = path.display();
    ensure!(path.exists(), "{shown} does not exist");
    if path.is_file() {
        if saev::is_dump(path) {
            return Ok(ImportFormat::Saev);
        }
        if let Some(dir) = path.parent().filter(|d| d.join("config.json").is_file()) {
            let cfg = read_json(&dir.join("config.json")).unwrap_or(Value::Null);
            if cfg.get("trainer").is_some() {
                return Ok(ImportFormat::DictionaryLearning);
            }
            if prisma::is_config(&cfg) {
                return Ok(ImportFormat::Prisma);
            }
        }
        bail!(
            "{shown} is in none of the formats saeclip imports: a file must be a saev checkpoint (a JSON line, then a torch.save archive), or a .pt beside a dictionary_learning or ViT-Prisma config.json; pass --format to say which it is"
        );
    }
    let has = |name: &str| path.join(name).is_file();
    if has(super::export::CFG_FILE) && has(super::export::WEIGHTS_FILE) {
        return Ok(ImportFormat::SaeLens);
    }
    if has(sparsify::CFG_FILE) && has(sparsify::WEIGHTS_FILE) {
        return Ok(ImportFormat::Sparsify);
    }
    if !sparsify::hooks(path).is_empty() {
        return Ok(ImportFormat::Sparsify);
    }
    if has(dictionary_learning::WEIGHTS_FILE) {
        return Ok(ImportFormat::DictionaryLearning);
    }
    if has(saev::CHECKPOINT_FILE)
        || path
            .join("checkpoint")
            .join(saev::CHECKPOINT_FILE)
            .is_file()
    {
        return Ok(ImportFormat::Saev);
    }
    if has("config.json")
        && prisma::is_config(&read_json(&path.join("config.json")).unwrap_or(Value::Null))
    {
        return Ok(ImportFormat::Prisma);
    }
    bail!(
        "{shown} is in none of the formats saeclip imports (SAE-Lens cfg.json + sae_weights.safetensors, sparsify cfg.json + sae.safetensors, dictionary_learning ae.pt + config.json, saev sae.pt, ViT-Prisma config.json + .pt): pass --format, or the file itself"
    )
}

/// A JSON file, parsed; errors name the file.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}: not valid JSON ({e})", path.display()))
}

/// An integer field of a JSON config (`what` names the file).
pub(crate) fn int_field(cfg: &Value, key: &str, what: &Path) -> Result<i64> {
    cfg.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| anyhow!("{}: `{key}` is missing or not an integer", what.display()))
}

/// The named tensors of a file, taken one by one with their shapes checked.
pub(crate) struct Tensors {
    tensors: Vec<(String, Tensor)>,
    /// The file, for errors.
    file: PathBuf,
    /// Where the expected sizes come from, e.g. "d_in = 768, d_sae = 24576 in cfg.json".
    sizes: String,
}

impl Tensors {
    pub fn new(tensors: Vec<(String, Tensor)>, file: &Path, sizes: String) -> Tensors {
        Tensors {
            tensors,
            file: file.to_path_buf(),
            sizes,
        }
    }

    /// Tensor `name` of shape `shape`, as f64.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let shown = self.file.display();
        let i = self
            .tensors
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("{shown}: tensor {name} is missing"))?;
        let (_, t) = self.tensors.swap_remove(i);
        ensure!(
            t.size() == shape,
            "{shown}: tensor {name} has shape {:?}, expected {shape:?} ({})",
            t.size(),
            self.sizes
        );
        ensure!(
            t.is_floating_point(),
            "{shown}: tensor {name} is not a float tensor"
        );
        Ok(t.to_kind(Kind::Double))
    }

    /// A scalar tensor (any shape with one element, any dtype), as f64.
    pub fn scalar(&mut self, name: &str) -> Result<f64> {
        let shown = self.file.display();
        let i = self
            .tensors
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("{shown}: tensor {name} is missing"))?;
        let (_, t) = self.tensors.swap_remove(i);
        ensure!(
            t.numel() == 1,
            "{shown}: tensor {name} holds {} values, expected one",
            t.numel()
        );
        Ok(t.to_kind(Kind::Double).reshape([1]).double_value(&[0]))
    }

    /// A 1-d integer tensor, as a vector.
    pub fn ints(&mut self, name: &str) -> Result<Vec<i64>> {
        let shown = self.file.display();
        let i = self
            .tensors
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("{shown}: tensor {name} is missing"))?;
        let (_, t) = self.tensors.swap_remove(i);
        ensure!(
            t.dim() == 1 && !t.is_floating_point(),
            "{shown}: tensor {name} is not a list of integers (shape {:?})",
            t.size()
        );
        Vec::<i64>::try_from(t.to_kind(Kind::Int64))
            .map_err(|e| anyhow!("{shown}: tensor {name}: {e}"))
    }

    /// Fails on a tensor left over (one the format does not have, e.g. a skip connection).
    pub fn done(self, what: &str) -> Result<()> {
        if let Some((name, _)) = self.tensors.first() {
            bail!(
                "{}: unexpected tensor {name} for {what}",
                self.file.display()
            );
        }
        Ok(())
    }
}

/// How the other SAE selects its latents.
#[derive(Debug)]
pub(crate) enum Activation {
    Relu,
    TopK(i64),
    /// Batch top-k trained, thresholded at θ at inference (None: never estimated, and the
    /// other tool then uses ReLU; saeclip gets θ = 0, the same codes).
    BatchTopK {
        k: i64,
        threshold: Option<f64>,
    },
    /// z = pre·[pre > θ_j]. θ [F]
    JumpRelu(Tensor),
    /// Batch top-k with nested prefixes of widths `widths`, thresholded at θ.
    Matryoshka {
        k: i64,
        widths: Vec<i64>,
        threshold: Option<f64>,
    },
}

/// An SAE as another tool computes it, in the space it was trained on:
///   x' = (x − mean)·scale,  pre = (x' − [b_dec])·W_enc + b_enc,  z = act(pre),
///   x̂' = z·W_dec + b_dec,   x̂ = x̂'/scale + mean.
#[derive(Debug)]
pub(crate) struct Foreign {
    /// [D, F]
    pub w_enc: Tensor,
    /// [F]
    pub b_enc: Tensor,
    /// [F, D]
    pub w_dec: Tensor,
    /// [D]
    pub b_dec: Tensor,
    /// Whether the encoder subtracts b_dec from x'.
    pub subtracts_b_dec: bool,
    pub activation: Activation,
    /// The dataset mean removed before the SAE. [D]
    pub mean: Option<Tensor>,
    /// The scale applied after removing the mean.
    pub scale: f64,
}

/// What the files say about where the SAE reads the model.
#[derive(Debug, Default)]
pub(crate) struct Hook {
    pub model: Option<String>,
    /// Block index; negative when the format counts from the end.
    pub layer: Option<i64>,
    pub tokens: Option<Tokens>,
    pub hook_name: Option<String>,
    /// The file and field that record (or would record) the layer and tokens.
    pub layer_field: String,
    pub tokens_field: String,
}

/// The layer and tokens from `hook` and the request's flags: a flag fills what the files
/// leave out and must agree with what they record.
fn resolve_hook(hook: &Hook, r: &ImportRequest) -> Result<(i64, Tokens)> {
    let layer = match (hook.layer, r.layer) {
        (Some(l), Some(f)) if l >= 0 && l != f => bail!(
            "{} = {l}, but --layer {f} was given: drop --layer, or import another SAE",
            hook.layer_field
        ),
        (Some(l), None) if l < 0 => bail!(
            "{} = {l} counts blocks from the end of a model saeclip does not know here: pass --layer N, the 0-based block whose output the SAE reads",
            hook.layer_field
        ),
        (Some(l), None) => l,
        (_, Some(f)) => f,
        (None, None) => bail!(
            "{}: not recorded; pass --layer N, the 0-based block whose output (residual stream) the SAE reads",
            hook.layer_field
        ),
    };
    ensure!(
        layer >= 0,
        "--layer {layer}: give the block as a 0-based number"
    );
    let tokens = match (hook.tokens, r.tokens) {
        (Some(t), Some(f)) if t != f => bail!(
            "{} says {}, but --tokens {} was given: drop --tokens, or import another SAE",
            hook.tokens_field,
            t.name(),
            f.name()
        ),
        (Some(t), _) => t,
        (None, Some(f)) => f,
        (None, None) => bail!(
            "{}: not recorded; pass --tokens cls|patches|all, the tokens the SAE was trained on",
            hook.tokens_field
        ),
    };
    Ok((layer, tokens))
}

/// saeclip's SAE and header for `f` read at `hook`, from `path` in `format`; `details`
/// joins the header's `training.imported_from`.
pub(crate) fn finish(
    f: Foreign,
    hook: &Hook,
    r: &ImportRequest,
    format: ImportFormat,
    details: Value,
) -> Result<(Sae, CheckpointMeta)> {
    let (layer, tokens) = resolve_hook(hook, r)?;
    let shown = r.path.display();
    let (d_in, d_sae) = (f.w_dec.size()[1], f.w_dec.size()[0]);
    let s = f.scale;
    ensure!(
        s.is_finite() && s > 0.0,
        "{shown}: the input scale {s} is not a positive number"
    );
    let mut b_enc = f.b_enc;
    if !f.subtracts_b_dec {
        b_enc += f.b_dec.unsqueeze(0).matmul(&f.w_enc).squeeze_dim(0);
    }
    let b_dec = match &f.mean {
        Some(m) => &f.b_dec + m.to_kind(Kind::Double) * s,
        None => f.b_dec.shallow_clone(),
    };
    let (architecture, k, threshold) = match &f.activation {
        Activation::Relu => (Architecture::Relu, r.k.unwrap_or(0), None),
        Activation::TopK(k) => (Architecture::TopK, *k, None),
        Activation::BatchTopK { k, threshold } => (
            Architecture::BatchTopK,
            *k,
            Some(threshold.unwrap_or(0.0).max(0.0)),
        ),
        Activation::JumpRelu(_) => (Architecture::JumpRelu, r.k.unwrap_or(0), None),
        Activation::Matryoshka { k, threshold, .. } => (
            Architecture::Matryoshka,
            *k,
            Some(threshold.unwrap_or(0.0).max(0.0)),
        ),
    };
    let config = SaeConfig {
        architecture,
        d_in,
        d_sae,
        k,
    };
    let mut sae = Sae::from_tensors(config, &f.w_enc, &b_enc, &f.w_dec, &b_dec, s, threshold)
        .with_context(|| format!("{shown}: cannot make an SAE of it"))?;
    match f.activation {
        Activation::JumpRelu(theta) => {
            let params = JumpReluParams {
                threshold_param: ThresholdParam::Linear,
                ..JumpReluParams::default()
            };
            sae.threshold_param = Some(
                params
                    .threshold_param
                    .from_theta(&theta.to_kind(Kind::Float)),
            );
            sae.jumprelu = Some(params);
        }
        Activation::Matryoshka { widths, .. } => {
            let params = MatryoshkaParams::new(widths, None, MatryoshkaSelection::BatchTopK, d_sae)
                .with_context(|| format!("{shown}: its groups"))?;
            sae.set_matryoshka(params)?;
        }
        _ => {}
    }
    let mut from = json!({
        "format": format.name(),
        "path": r.path.display().to_string(),
    });
    if let (Some(o), Value::Object(d)) = (from.as_object_mut(), details) {
        o.extend(d);
    }
    let meta = CheckpointMeta {
        clip: json!({
            "model": hook.model,
            "sha256": null,
            "layer": layer,
            "tokens": tokens,
            "hook_name": hook.hook_name,
        }),
        training: json!({ "imported_from": from }),
        metrics: json!({}),
    };
    Ok((sae, meta))
}

/// The block number at the end of a module path such as `vision_model.encoder.layers.11`,
/// `blocks.11.hook_resid_post` (the TransformerLens / ViT-Prisma residual after block 11)
/// or `visual.transformer.resblocks.11`: Some(11). None when the name has no block number.
pub(crate) fn layer_of_hook(name: &str) -> Option<i64> {
    let parts: Vec<&str> = name.split('.').collect();
    let n = parts.len();
    if n >= 2 && parts[0] == "blocks" {
        let l = parts[1].parse().ok()?;
        return match parts.get(2).copied() {
            None | Some("hook_resid_post") => Some(l),
            _ => None,
        };
    }
    let last = parts.last()?.parse().ok()?;
    let container = parts.get(n.checked_sub(2)?)?;
    matches!(
        *container,
        "layers" | "layer" | "resblocks" | "blocks" | "h"
    )
    .then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_numbers_from_hook_names() {
        assert_eq!(layer_of_hook("vision_model.encoder.layers.11"), Some(11));
        assert_eq!(layer_of_hook("layers.3"), Some(3));
        assert_eq!(layer_of_hook("visual.transformer.resblocks.7"), Some(7));
        assert_eq!(layer_of_hook("blocks.9.hook_resid_post"), Some(9));
        assert_eq!(layer_of_hook("blocks.9"), Some(9));
        // Not a block's output.
        assert_eq!(layer_of_hook("blocks.9.hook_mlp_out"), None);
        assert_eq!(layer_of_hook("layers.3.mlp"), None);
        assert_eq!(layer_of_hook("embed"), None);
    }

    #[test]
    fn flags_fill_and_must_agree() {
        let mut r = ImportRequest::new(ImportFormat::Saev, Path::new("x"), Path::new("o"));
        let hook = Hook {
            layer: Some(5),
            layer_field: "config.json: layer".into(),
            tokens_field: "config.json: tokens".into(),
            ..Hook::default()
        };
        let err = resolve_hook(&hook, &r).unwrap_err().to_string();
        assert!(
            err.contains("config.json: tokens") && err.contains("--tokens"),
            "{err}"
        );
        r.tokens = Some(Tokens::Cls);
        assert_eq!(resolve_hook(&hook, &r).unwrap(), (5, Tokens::Cls));
        r.layer = Some(6);
        let err = resolve_hook(&hook, &r).unwrap_err().to_string();
        assert!(err.contains("= 5") && err.contains("--layer 6"), "{err}");
        let back = Hook {
            layer: Some(-2),
            ..hook
        };
        r.layer = None;
        let err = resolve_hook(&back, &r).unwrap_err().to_string();
        assert!(err.contains("-2") && err.contains("--layer"), "{err}");
        r.layer = Some(10);
        assert_eq!(resolve_hook(&back, &r).unwrap(), (10, Tokens::Cls));
    }
}
