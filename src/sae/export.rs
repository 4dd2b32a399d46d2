//! Checkpoint conversions: `clean-checkpoint` (drop the training state, change the
//! parameter dtype) and SAE-Lens (6.x) interchange: write a checkpoint as a folder that
//! `sae_lens.SAE.load_from_disk` reads, and read such a folder back into a checkpoint.
//!
//! A folder holds `cfg.json` and `sae_weights.safetensors` (`W_enc` [D, F], `b_enc` [F],
//! `W_dec` [F, D], `b_dec` [D], and `threshold` [F] for jumprelu). SAE-Lens would also read
//! a `sparsity.safetensors` (log10 firing frequency per latent); saeclip checkpoints do not
//! record firing frequencies, so exports have none.
//!
//! Architectures: topk ↔ `topk`; batchtopk ↔ `jumprelu` with its inference threshold θ
//! broadcast to every latent (SAE-Lens's own batchtopk SAEs become jumprelu for inference
//! the same way); relu ↔ `standard`; jumprelu ↔ `jumprelu` with θ_j per latent (from
//! whichever parameter trained it, `threshold` in the folder either way); matryoshka
//! (batch top-k) ↔ `matryoshka_batchtopk` (SAE-Lens's training class,
//! loaded with `TrainingSAE.load_from_disk`: `matryoshka_widths`, `k`, and the inference
//! threshold as its `topk_threshold` buffer, 0 when θ is unknown; on import its default
//! `rescale_acts_by_decoder_norm` is folded into the weights); matryoshka with top-k →
//! `topk` (SAE-Lens has no nested top-k class; the prefixes ride in the metadata).
//!
//! Import of a `jumprelu` folder: one threshold for all latents and a k (recorded by a
//! saeclip export, or `--k`) give a batchtopk SAE, as before; otherwise (thresholds that
//! differ, no k, or a saeclip jumprelu export) a jumprelu SAE: θ_j itself (a `linear`
//! threshold parameter, thresholds < 0 becoming 0, which SAE-Lens's ReLU makes the same),
//! or for a saeclip export the parameter it recorded (`log`: log θ_j = ln θ_j, θ_j ≤ 0
//! becoming 1e-30).
//!
//! The input scale s is folded into the weights. saeclip computes
//!   pre = (x·s − b_dec)·W_enc + b_enc,  x̂ = (z·W_dec + b_dec)/s;
//! SAE-Lens (`apply_b_dec_to_input`, `normalize_activations: none`) computes
//!   pre = (x − b_dec')·W_enc' + b_enc', x̂ = z·W_dec' + b_dec'.
//! Since (x·s − b_dec)·W_enc = (x − b_dec/s)·(s·W_enc), and (z·W_dec + b_dec)/s =
//! z·(W_dec/s) + b_dec/s, the two agree for every x with
//!   W_enc' = s·W_enc, b_enc' = b_enc, W_dec' = W_dec/s, b_dec' = b_dec/s,
//! and the same pre-activations, hence the same top-k selection and the same threshold.
//! Both apply ReLU to the k selected values (SAE-Lens `TopK`) and jumprelu's
//! ReLU(pre)·[pre > θ] equals saeclip's pre·[pre > max(θ, 0)]. The fold is computed in f64
//! and stored in f32. The export records s (metadata `saeclip.input_scale`), and an import
//! unfolds it again, so a round trip gives back unit-norm decoder rows.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::checkpoint::{self, CheckpointMeta};
use super::jumprelu::{JumpReluParams, ThresholdParam};
use super::model::{Architecture, Sae, SaeConfig};
use crate::data::cache::file_sha256;

pub const CFG_FILE: &str = "cfg.json";
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";
pub const SPARSITY_FILE: &str = "sparsity.safetensors";
/// The SAE-Lens config format written (what SAE-Lens compares to decide on conversions).
pub const SAELENS_FORMAT_VERSION: &str = "6.0.0";

/// What `clean-checkpoint` is asked to do.
#[derive(Debug, Clone)]
pub struct CleanOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Parameter dtype of the result: f32 (exact), f16 or bf16.
    pub dtype: Kind,
    /// Allow `output` to be `input`.
    pub in_place: bool,
}

/// File sizes before and after `clean-checkpoint`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanSizes {
    pub before: u64,
    pub after: u64,
}

/// Whether two paths name the same file (`b` need not exist).
fn same_file(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let parent = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    matches!((resolve(a), resolve(b)), (Some(x), Some(y)) if x == y)
}

/// Rewrite a checkpoint without its training state (optimizer moments, threshold
/// estimator, the loop's counters), keeping the parameters, the scale, the threshold and
/// the header's `clip`, `training` and `metrics`; parameters converted to `dtype`. The
/// output is written atomically; it may replace the input only with `in_place`.
pub fn clean_checkpoint(o: &CleanOptions) -> Result<CleanSizes> {
    ensure!(
        o.in_place || !same_file(&o.input, &o.output),
        "--output {} is the input checkpoint: pass --in-place to overwrite it, or choose another --output",
        o.output.display()
    );
    let before = std::fs::metadata(&o.input)
        .with_context(|| format!("cannot open SAE checkpoint {}", o.input.display()))?
        .len();
    let (sae, meta) = checkpoint::load_sae(&o.input, Device::Cpu)?;
    checkpoint::save(&o.output, &sae, &meta, None, o.dtype)?;
    let after = std::fs::metadata(&o.output).map_or(0, |m| m.len());
    Ok(CleanSizes { before, after })
}

/// SAE-Lens parameters: the SAE's with the input scale folded in. All f32, contiguous.
#[derive(Debug)]
pub struct SaeLensParams {
    /// `topk`, `jumprelu` or `standard`.
    pub architecture: &'static str,
    pub w_enc: Tensor,
    pub b_enc: Tensor,
    pub w_dec: Tensor,
    pub b_dec: Tensor,
    /// jumprelu only: θ for every latent. [F]
    pub threshold: Option<Tensor>,
    /// matryoshka_batchtopk only: the inference threshold (0 when unknown). 0-dim f64
    pub topk_threshold: Option<Tensor>,
}

/// Fold `sae`'s input scale into SAE-Lens parameters (see the module docs).
pub fn to_saelens(sae: &Sae) -> Result<SaeLensParams> {
    let s = sae.input_scale;
    let f32c = |t: Tensor| t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
    let f64 = |t: &Tensor| t.to_kind(Kind::Double);
    let mut topk_threshold = None;
    let (architecture, threshold) = match sae.config.architecture {
        Architecture::TopK => ("topk", None),
        Architecture::JumpRelu => {
            let t = sae
                .jumprelu_threshold()
                .ok_or_else(|| anyhow!("this jumprelu SAE has no thresholds"))?;
            ("jumprelu", Some(f32c(t)))
        }
        Architecture::Matryoshka => {
            if sae.inference_selection() == super::model::Selection::TopK(sae.config.k) {
                ("topk", None)
            } else {
                let theta = sae.threshold.unwrap_or(0.0);
                topk_threshold = Some(Tensor::from(theta).to_kind(Kind::Double));
                ("matryoshka_batchtopk", None)
            }
        }
        Architecture::BatchTopK => {
            let theta = sae.threshold.ok_or_else(|| {
                anyhow!("this batchtopk SAE has no inference threshold yet (training sets it at the end of the first epoch): SAE-Lens's jumprelu needs one")
            })?;
            let t = Tensor::full([sae.config.d_sae], theta, (Kind::Float, Device::Cpu));
            ("jumprelu", Some(t))
        }
        Architecture::Relu => ("standard", None),
    };
    Ok(SaeLensParams {
        architecture,
        w_enc: f32c(f64(&sae.w_enc) * s),
        b_enc: f32c(sae.b_enc.copy()),
        w_dec: f32c(f64(&sae.w_dec) / s),
        b_dec: f32c(f64(&sae.b_dec) / s),
        threshold,
        topk_threshold,
    })
}

/// `cfg.json` for `sae`: the SAE-Lens config plus metadata naming the CLIP model, the hook
/// and the checkpoint it came from.
pub fn saelens_config(
    sae: &Sae,
    meta: &CheckpointMeta,
    architecture: &str,
    checkpoint_sha256: &str,
) -> Value {
    let clip = &meta.clip;
    let layer = clip.get("layer").and_then(Value::as_u64);
    let tokens = clip.get("tokens").and_then(Value::as_str);
    let mut metadata = json!({
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": null,
        "model_name": clip.get("model").cloned().unwrap_or(Value::Null),
        "model_sha256": clip.get("sha256").cloned().unwrap_or(Value::Null),
        "tokens": tokens,
        "saeclip_version": env!("CARGO_PKG_VERSION"),
        "saeclip_checkpoint_sha256": checkpoint_sha256,
        "saeclip": {
            "version": checkpoint::VERSION,
            "architecture": sae.config.architecture,
            "k": sae.config.k,
            "input_scale": sae.input_scale,
            "threshold": sae.threshold,
            "jumprelu": sae.jumprelu,
            "matryoshka": sae.matryoshka,
            "clip": meta.clip,
            "training": meta.training,
            "metrics": meta.metrics,
        },
    });
    if let Some(l) = layer {
        // Residual stream after vision block L: TransformerLens / ViT-Prisma naming, with
        // the Hugging Face and open_clip module names of the same tensor.
        metadata["hook_name"] = json!(format!("blocks.{l}.hook_resid_post"));
        metadata["hook_layer"] = json!(l);
        metadata["hf_module"] = json!(format!("vision_model.encoder.layers.{l}"));
        metadata["open_clip_module"] = json!(format!("visual.transformer.resblocks.{l}"));
    }
    if let Some(t) = tokens {
        // Token positions as Python slice bounds.
        metadata["seqpos_slice"] = match t {
            "cls" => json!([0, 1]),
            "patches" => json!([1, null]),
            _ => json!([null, null]),
        };
    }
    let mut cfg = json!({
        "architecture": architecture,
        "d_in": sae.config.d_in,
        "d_sae": sae.config.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    });
    if architecture == "topk" || architecture == "matryoshka_batchtopk" {
        cfg["k"] = json!(sae.config.k);
        cfg["rescale_acts_by_decoder_norm"] = json!(false);
    }
    if architecture == "matryoshka_batchtopk" {
        cfg["matryoshka_widths"] = json!(sae.prefix_widths());
    }
    cfg
}

/// What `export --format saelens` is asked to do.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The SAE checkpoint.
    pub sae: PathBuf,
    /// The folder to create.
    pub out: PathBuf,
    /// Replace an existing export in `out`.
    pub force: bool,
}

#[derive(Debug, Clone)]
pub struct ExportResult {
    pub out: PathBuf,
    pub architecture: &'static str,
    pub files: Vec<PathBuf>,
}

/// Files an SAE-Lens folder may hold (what `--force` may replace).
const FOLDER_FILES: [&str; 3] = [CFG_FILE, WEIGHTS_FILE, SPARSITY_FILE];

/// Write the checkpoint `o.sae` as an SAE-Lens folder `o.out`, atomically: the files are
/// written to a temporary folder beside it that is renamed at the end.
pub fn export_saelens(o: &ExportOptions) -> Result<ExportResult> {
    let (sae, meta) = checkpoint::load_sae(&o.sae, Device::Cpu)?;
    let params = to_saelens(&sae).with_context(|| format!("cannot export {}", o.sae.display()))?;
    let sha = file_sha256(&o.sae)?;
    let cfg = saelens_config(&sae, &meta, params.architecture, &sha);
    let out = &o.out;
    let existing = prepare_output_dir(out, o.force)?;
    let tmp = crate::disk::temp_path(out);
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut tensors: Vec<(&str, &Tensor)> = vec![
            ("W_enc", &params.w_enc),
            ("b_enc", &params.b_enc),
            ("W_dec", &params.w_dec),
            ("b_dec", &params.b_dec),
        ];
        if let Some(t) = &params.threshold {
            tensors.push(("threshold", t));
        }
        if let Some(t) = &params.topk_threshold {
            tensors.push(("topk_threshold", t));
        }
        Tensor::write_safetensors(&tensors, tmp.join(WEIGHTS_FILE))
            .with_context(|| format!("cannot write {}", tmp.join(WEIGHTS_FILE).display()))?;
        std::fs::write(tmp.join(CFG_FILE), serde_json::to_string_pretty(&cfg)?)
            .with_context(|| format!("cannot write {}", tmp.join(CFG_FILE).display()))?;
        if existing {
            std::fs::remove_dir_all(out)
                .with_context(|| format!("cannot replace {}", out.display()))?;
        }
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(ExportResult {
        out: out.clone(),
        architecture: params.architecture,
        files: [CFG_FILE, WEIGHTS_FILE]
            .iter()
            .map(|f| out.join(f))
            .collect(),
    })
}

/// Check that `out` may be written: absent, an empty directory, or (with `force`) an
/// earlier SAE-Lens export. Returns whether a directory must be removed first.
fn prepare_output_dir(out: &Path, force: bool) -> Result<bool> {
    if !out.exists() {
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        return Ok(false);
    }
    ensure!(
        out.is_dir(),
        "{} exists and is not a directory: choose another --out",
        out.display()
    );
    let names: Vec<String> = std::fs::read_dir(out)
        .with_context(|| format!("cannot read {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    if names.is_empty() {
        return Ok(true);
    }
    if !force {
        bail!("{} already exists and is not empty: choose another --out, or --force to replace an earlier export", out.display());
    }
    if let Some(other) = names.iter().find(|n| !FOLDER_FILES.contains(&n.as_str())) {
        bail!(
            "{} holds {other}, which is not part of an SAE-Lens export: --force only replaces an earlier export; choose another --out",
            out.display()
        );
    }
    Ok(true)
}

/// Read a JSON number that must be a positive finite float.
fn positive(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
        .filter(|s| s.is_finite() && *s > 0.0)
}

/// Read an SAE-Lens folder (`topk`, `jumprelu` with one threshold for all latents, or
/// `standard`) as a saeclip SAE on the CPU. `k` is needed for jumprelu folders that do not
/// record it (saeclip's batchtopk keeps k for training).
pub fn read_saelens(dir: &Path, k: Option<i64>) -> Result<(Sae, CheckpointMeta)> {
    let shown = dir.display();
    ensure!(
        dir.exists(),
        "{shown} does not exist: give an SAE-Lens folder (cfg.json + sae_weights.safetensors)"
    );
    let cfg_path = dir.join(CFG_FILE);
    let text = std::fs::read_to_string(&cfg_path).with_context(|| {
        format!("{shown} is not an SAE-Lens folder: cannot read its {CFG_FILE}")
    })?;
    let cfg: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not valid JSON ({e})", cfg_path.display()))?;
    let shown_cfg = cfg_path.display();
    let metadata = cfg.get("metadata").cloned().unwrap_or(Value::Null);
    let architecture = cfg.get("architecture").and_then(Value::as_str).ok_or_else(|| {
        anyhow!("{shown_cfg} has no `architecture`: it is not an SAE-Lens 6 config (load and save it with sae-lens 6 first)")
    })?;
    let int = |key: &str| -> Result<i64> {
        cfg.get(key)
            .and_then(Value::as_i64)
            .ok_or_else(|| anyhow!("{shown_cfg}: `{key}` is missing or not an integer"))
    };
    let (d_in, d_sae) = (int("d_in")?, int("d_sae")?);
    let setting = |key: &str| cfg.get(key).and_then(Value::as_str).unwrap_or("none");
    let normalize = setting("normalize_activations");
    ensure!(
        normalize == "none",
        "{shown_cfg}: normalize_activations = {normalize:?} is not supported: fold the normalisation into the weights first (e.g. SAE-Lens fold_activation_norm_scaling_factor), so that it reads \"none\""
    );
    let reshape = setting("reshape_activations");
    ensure!(
        reshape == "none",
        "{shown_cfg}: reshape_activations = {reshape:?} is not supported (only \"none\")"
    );
    let saeclip = metadata.get("saeclip").cloned().unwrap_or(Value::Null);
    let recorded_k = saeclip.get("k").and_then(Value::as_i64);

    // Weights.
    let weights_path = dir.join(WEIGHTS_FILE);
    ensure!(
        weights_path.exists(),
        "{shown} has no {WEIGHTS_FILE}: it is not a complete SAE-Lens folder"
    );
    let mut tensors = crate::clip::weights::read_safetensors(&weights_path)?;
    let mut take = |name: &str, shape: &[i64]| -> Result<Tensor> {
        let i = tensors
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("{}: tensor {name} is missing", weights_path.display()))?;
        let (_, t) = tensors.swap_remove(i);
        ensure!(
            t.size() == shape,
            "{}: tensor {name} has shape {:?}, expected {shape:?} (d_in = {d_in}, d_sae = {d_sae} in {CFG_FILE})",
            weights_path.display(),
            t.size()
        );
        ensure!(
            t.is_floating_point(),
            "{}: tensor {name} is not a float tensor",
            weights_path.display()
        );
        Ok(t.to_kind(Kind::Double))
    };
    let mut w_enc = take("W_enc", &[d_in, d_sae])?;
    let mut b_enc = take("b_enc", &[d_sae])?;
    let mut w_dec = take("W_dec", &[d_sae, d_in])?;
    let b_dec = take("b_dec", &[d_in])?;

    let saeclip_arch = saeclip.get("architecture").and_then(Value::as_str);
    let mut threshold_param = None;
    let mut widths: Option<Vec<i64>> = None;
    let (arch, k, threshold) = match architecture {
        "topk" => {
            ensure!(
                !cfg.get("rescale_acts_by_decoder_norm").and_then(Value::as_bool).unwrap_or(false),
                "{shown_cfg}: rescale_acts_by_decoder_norm = true is not supported (saeclip selects the top k of the plain pre-activations)"
            );
            (Architecture::TopK, int("k")?, None)
        }
        "jumprelu" => {
            let t = take("threshold", &[d_sae])?;
            let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
            let k = k
                .or(recorded_k)
                .or(cfg.get("k").and_then(Value::as_i64));
            match k {
                Some(k) if lo == hi && saeclip_arch != Some("jumprelu") => {
                    // θ went through f32: a saeclip export records the exact value.
                    let recorded = saeclip.get("threshold").and_then(Value::as_f64);
                    let theta = recorded.filter(|t| (*t as f32) as f64 == lo).unwrap_or(lo);
                    (Architecture::BatchTopK, k, Some(theta))
                }
                _ => {
                    threshold_param = Some(t.clamp_min(0.0).to_kind(Kind::Float));
                    (Architecture::JumpRelu, k.unwrap_or(0), None)
                }
            }
        }
        "matryoshka_batchtopk" => {
            let theta = match tensors.iter().position(|(n, _)| n == "topk_threshold") {
                Some(i) => {
                    let (_, t) = tensors.swap_remove(i);
                    ensure!(
                        t.numel() == 1,
                        "{}: topk_threshold holds {} values, expected one",
                        weights_path.display(),
                        t.numel()
                    );
                    let v = t.to_kind(Kind::Double).view([-1]).double_value(&[0]);
                    // 0: SAE-Lens's initial value, never estimated.
                    (v > 0.0).then_some(v)
                }
                None => None,
            };
            let recorded = saeclip.get("threshold").and_then(Value::as_f64);
            let theta = match (theta, recorded) {
                (Some(t), Some(r)) if (t - r).abs() <= 1e-12 * r.abs() => Some(r),
                (t, _) => t,
            };
            let k = cfg.get("k").and_then(Value::as_f64).ok_or_else(|| {
                anyhow!("{shown_cfg}: `k` is missing or not a number")
            })?;
            let w = cfg
                .get("matryoshka_widths")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
                .ok_or_else(|| anyhow!("{shown_cfg}: `matryoshka_widths` is missing or not a list of integers"))?;
            widths = Some(w);
            // SAE-Lens's training default (true for its top-k training classes): the
            // pre-activations are scaled by ‖W_dec[j]‖ and the codes divided by it again to
            // decode. Folding n_j into W_enc's and b_enc's columns and out of W_dec's rows
            // gives the same codes and reconstructions (θ stays in the codes' units).
            if cfg
                .get("rescale_acts_by_decoder_norm")
                .and_then(Value::as_bool)
                .unwrap_or(true)
            {
                let norms = w_dec.square().sum_dim_intlist(1, false, Kind::Double).sqrt();
                w_enc = &w_enc * norms.unsqueeze(0);
                b_enc = &b_enc * &norms;
                w_dec = &w_dec / norms.clamp_min(1e-30).unsqueeze(1);
            }
            (Architecture::Matryoshka, k.round() as i64, theta)
        }
        "standard" => (Architecture::Relu, k.or(recorded_k).unwrap_or(0), None),
        other => bail!("{shown_cfg}: SAE-Lens architecture {other:?} is not supported (topk, jumprelu, matryoshka_batchtopk or standard)"),
    };
    if let Some((name, _)) = tensors.first() {
        bail!(
            "{}: unexpected tensor {name} for a {architecture} SAE",
            weights_path.display()
        );
    }
    // Without apply_b_dec_to_input, pre = x·W_enc + b_enc = (x − b_dec)·W_enc + (b_enc + b_dec·W_enc).
    if !cfg
        .get("apply_b_dec_to_input")
        .and_then(Value::as_bool)
        .unwrap_or(true)
    {
        b_enc += b_dec.unsqueeze(0).matmul(&w_enc).squeeze_dim(0);
    }
    // Unfold the scale recorded by a saeclip export (1 otherwise): see the module docs.
    let s = positive(saeclip.get("input_scale")).unwrap_or(1.0);
    // A matryoshka top-k export travels as `topk`: its prefixes are in the metadata.
    let recorded_matryoshka: Option<super::model::MatryoshkaParams> = saeclip
        .get("matryoshka")
        .and_then(|m| serde_json::from_value(m.clone()).ok());
    let arch = match (arch, saeclip_arch, &recorded_matryoshka) {
        (Architecture::TopK, Some("matryoshka"), Some(_)) => Architecture::Matryoshka,
        (a, _, _) => a,
    };
    let config = SaeConfig {
        architecture: arch,
        d_in,
        d_sae,
        k,
    };
    let mut sae = Sae::from_tensors(
        config,
        &(w_enc / s),
        &b_enc,
        &(w_dec * s),
        &(b_dec * s),
        s,
        threshold,
    )
    .with_context(|| format!("{shown}: cannot make an SAE of it"))?;
    if let Some(theta) = threshold_param {
        // A saeclip export's own settings, else θ itself as SAE-Lens trains it.
        let params = saeclip
            .get("jumprelu")
            .and_then(|p| serde_json::from_value::<JumpReluParams>(p.clone()).ok())
            .unwrap_or(JumpReluParams {
                threshold_param: ThresholdParam::Linear,
                ..JumpReluParams::default()
            });
        sae.threshold_param = Some(params.threshold_param.from_theta(&theta));
        sae.jumprelu = Some(params);
    }
    if arch == Architecture::Matryoshka {
        let params = match (recorded_matryoshka, widths) {
            (Some(m), w) if w.as_ref().is_none_or(|w| *w == m.widths) => m,
            (_, Some(w)) => super::model::MatryoshkaParams::new(
                w,
                None,
                super::model::MatryoshkaSelection::BatchTopK,
                d_sae,
            )?,
            (Some(m), None) => m,
            (None, None) => unreachable!("matryoshka comes with widths or metadata"),
        };
        sae.set_matryoshka(params)
            .with_context(|| format!("{shown_cfg}: invalid matryoshka_widths"))?;
    }

    let meta = if saeclip.is_object() {
        CheckpointMeta {
            clip: saeclip.get("clip").cloned().unwrap_or(Value::Null),
            training: saeclip.get("training").cloned().unwrap_or(Value::Null),
            metrics: saeclip.get("metrics").cloned().unwrap_or(Value::Null),
        }
    } else {
        let layer = metadata
            .get("hook_layer")
            .and_then(Value::as_u64)
            .or_else(|| {
                // blocks.L.hook_resid_post
                let name = metadata.get("hook_name")?.as_str()?;
                name.strip_prefix("blocks.")?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()
            });
        CheckpointMeta {
            clip: json!({
                "model": metadata.get("model_name").cloned().unwrap_or(Value::Null),
                "sha256": metadata.get("model_sha256").cloned().unwrap_or(Value::Null),
                "layer": layer,
                "tokens": metadata.get("tokens").cloned().unwrap_or(Value::Null),
                "hook_name": metadata.get("hook_name").cloned().unwrap_or(Value::Null),
            }),
            training: json!({
                "imported_from": {
                    "format": "saelens",
                    "path": dir.display().to_string(),
                    "architecture": architecture,
                    "sae_lens_version": metadata.get("sae_lens_version").cloned().unwrap_or(Value::Null),
                }
            }),
            metrics: json!({}),
        }
    };
    Ok((sae, meta))
}

/// What `import --format saelens` is asked to do.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The SAE-Lens folder.
    pub dir: PathBuf,
    /// The checkpoint to write.
    pub out: PathBuf,
    /// k for a jumprelu folder that does not record it.
    pub k: Option<i64>,
    /// Parameter dtype of the checkpoint.
    pub dtype: Kind,
    /// Overwrite an existing `out`.
    pub force: bool,
}

/// Read an SAE-Lens folder and write it as a saeclip checkpoint (atomically).
pub fn import_saelens(o: &ImportOptions) -> Result<Sae> {
    ensure!(
        o.force || !o.out.exists(),
        "{} already exists: choose another --out, or --force to overwrite it",
        o.out.display()
    );
    let (sae, meta) = read_saelens(&o.dir, o.k)?;
    checkpoint::save(&o.out, &sae, &meta, None, o.dtype)?;
    Ok(sae)
}
