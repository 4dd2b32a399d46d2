//! `export --format sparsify|saev`: a saeclip checkpoint as a folder the other tool loads,
//! the input scale folded into the weights (as for SAE-Lens, [`to_saelens`]) so that the
//! other tool reads raw activations.
//!
//! - sparsify (eai-sparsify 1.3.3, `SparseCoder.load_from_disk`): `cfg.json` (the
//!   `SparseCoderConfig` fields, `activation` topk, `num_latents`, `k`, `d_in`; the hook
//!   point under `saeclip`, a key sparsify drops) + `sae.safetensors` (`encoder.weight` [F, D],
//!   `encoder.bias` [F], `W_dec` [F, D], `b_dec` [D]). TopK SAEs only (sparsify's
//!   pre-activation is ReLU((x − b_dec)·W_encᵀ + b_enc) and its top k: saeclip's topk).
//! - saev 0.1.0 (`saev.nn.load`): `sae.pt`, one JSON line of constructor arguments
//!   (`d_vit`, `exp_factor`) then a `torch.save` state dict (`W_enc` [D, F], `b_enc` [F],
//!   `W_dec` [F, D], `b_dec` [D]); beside it a `config.json` holding the hook point as saev's
//!   training config does (`data.layer`, `data.patches`; `scale_mean` and `scale_norm`
//!   false: the scale is in the weights). ReLU SAEs with a width that is a multiple of d_in.
//!
//! Both folders are written to a temporary folder renamed at the end; `import --format auto`
//! reads them back with their hook point.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Device, Tensor};

use super::{saev, sparsify, torch_save};
use crate::clip::Tokens;
use crate::sae::checkpoint::{self, CheckpointMeta};
use crate::sae::export::{to_saelens, ExportOptions, ExportResult};
use crate::sae::model::Sae;

/// The hook point of a checkpoint's header: layer, tokens, model.
fn hook(meta: &CheckpointMeta) -> (Option<i64>, Option<Tokens>, Option<String>) {
    let clip = &meta.clip;
    (
        clip.get("layer").and_then(Value::as_i64),
        clip.get("tokens")
            .and_then(|t| serde_json::from_value(t.clone()).ok()),
        clip.get("model").and_then(Value::as_str).map(String::from),
    )
}

/// Write `files` (name, bytes) as the folder `out`: absent, empty, or (with `force`) an
/// earlier export holding only `names`.
fn write_folder(out: &Path, force: bool, names: &[&str], files: &[(&str, Vec<u8>)]) -> Result<()> {
    let shown = out.display();
    let mut existing = false;
    if out.exists() {
        ensure!(
            out.is_dir(),
            "{shown} exists and is not a directory: choose another --out"
        );
        let inside: Vec<String> = std::fs::read_dir(out)
            .with_context(|| format!("cannot read {shown}"))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        if !inside.is_empty() {
            ensure!(
                force,
                "{shown} already exists and is not empty: choose another --out, or --force to replace an earlier export"
            );
            if let Some(other) = inside.iter().find(|n| !names.contains(&n.as_str())) {
                bail!("{shown} holds {other}, which is not part of such an export: --force only replaces an earlier export; choose another --out");
            }
        }
        existing = true;
    } else if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = crate::disk::temp_path(out);
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        for (name, bytes) in files {
            let path = tmp.join(name);
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if existing {
            std::fs::remove_dir_all(out).with_context(|| format!("cannot replace {shown}"))?;
        }
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot move {} to {shown}", tmp.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

fn load(o: &ExportOptions) -> Result<(Sae, CheckpointMeta)> {
    checkpoint::load_sae(&o.sae, Device::Cpu)
}

fn result(out: &Path, architecture: &'static str, names: &[&str]) -> ExportResult {
    ExportResult {
        out: out.to_path_buf(),
        architecture,
        files: names.iter().map(|n| out.join(n)).collect::<Vec<PathBuf>>(),
    }
}

/// Write the checkpoint `o.sae` as a sparsify `SparseCoder` folder `o.out`.
pub fn export_sparsify(o: &ExportOptions) -> Result<ExportResult> {
    let (sae, meta) = load(o)?;
    let shown = o.sae.display();
    let p = to_saelens(&sae).with_context(|| format!("cannot export {shown}"))?;
    ensure!(
        p.architecture == "topk",
        "{shown} is a {} SAE: sparsify's SparseCoder selects the top k latents, only topk SAEs (and matryoshka ones that select by top k) map to it; export --format saelens or saev instead",
        sae.config.architecture
    );
    let (d, f, k) = (sae.config.d_in, sae.config.d_sae, sae.config.k);
    let (layer, tokens, model) = hook(&meta);
    let cfg = json!({
        "activation": "topk",
        "expansion_factor": if f % d == 0 { f / d } else { 0 },
        "normalize_decoder": false,
        "num_latents": f,
        "k": k,
        "multi_topk": false,
        "skip_connection": false,
        "transcode": false,
        "d_in": d,
        "saeclip": {
            "layer": layer,
            "tokens": tokens,
            "model": model,
            "hook_name": meta.clip.get("hook_name"),
            "checkpoint": o.sae.display().to_string(),
        },
    });
    let w_enc = p.w_enc.tr().contiguous();
    let tensors: Vec<(&str, &Tensor)> = vec![
        ("encoder.weight", &w_enc),
        ("encoder.bias", &p.b_enc),
        ("W_dec", &p.w_dec),
        ("b_dec", &p.b_dec),
    ];
    if let Some(parent) = o.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let scratch = crate::disk::temp_path(&o.out.with_extension("weights"));
    Tensor::write_safetensors(&tensors, &scratch)
        .with_context(|| format!("cannot write {}", scratch.display()))?;
    let weights = std::fs::read(&scratch);
    let _ = std::fs::remove_file(&scratch);
    let weights = weights.with_context(|| format!("cannot read {}", scratch.display()))?;
    let names = [sparsify::CFG_FILE, sparsify::WEIGHTS_FILE];
    write_folder(
        &o.out,
        o.force,
        &names,
        &[
            (sparsify::CFG_FILE, serde_json::to_vec_pretty(&cfg)?),
            (sparsify::WEIGHTS_FILE, weights),
        ],
    )?;
    Ok(result(&o.out, "topk", &names))
}

/// Write the checkpoint `o.sae` as a saev 0.1.0 run folder `o.out` (`sae.pt` +
/// `config.json`).
pub fn export_saev(o: &ExportOptions) -> Result<ExportResult> {
    let (sae, meta) = load(o)?;
    let shown = o.sae.display();
    let p = to_saelens(&sae).with_context(|| format!("cannot export {shown}"))?;
    ensure!(
        p.architecture == "standard",
        "{shown} is a {} SAE: saev 0.1.0's SparseAutoencoder is a ReLU SAE, only relu SAEs map to it; export --format sparsify (topk) or saelens instead",
        sae.config.architecture
    );
    let (d, f) = (sae.config.d_in, sae.config.d_sae);
    ensure!(
        f % d == 0,
        "{shown}: d_sae = {f} is not a multiple of d_in = {d}: saev 0.1.0 derives the width as d_vit·exp_factor"
    );
    let (layer, tokens, model) = hook(&meta);
    let patches = match tokens {
        Some(Tokens::Cls) => json!("cls"),
        Some(Tokens::Patches) => json!("patches"),
        // saev 0.1.0 trains on the class token or the patches; other tokens go unrecorded.
        _ => Value::Null,
    };
    let header = json!({ "d_vit": d, "exp_factor": f / d });
    let mut dump = serde_json::to_vec(&header)?;
    dump.push(b'\n');
    dump.extend(torch_save::state_dict_bytes(&[
        ("W_enc", &p.w_enc),
        ("b_enc", &p.b_enc),
        ("W_dec", &p.w_dec),
        ("b_dec", &p.b_dec),
    ])?);
    let mut data = json!({ "scale_mean": false, "scale_norm": false });
    if let Some(l) = layer {
        data["layer"] = json!(l);
    }
    if !patches.is_null() {
        data["patches"] = patches;
    }
    let config = json!({
        "data": data,
        "sae": header,
        "saeclip": { "model": model, "tokens": tokens, "checkpoint": o.sae.display().to_string() },
    });
    let names = [saev::CHECKPOINT_FILE, "config.json"];
    write_folder(
        &o.out,
        o.force,
        &names,
        &[
            (saev::CHECKPOINT_FILE, dump),
            ("config.json", serde_json::to_vec_pretty(&config)?),
        ],
    )?;
    Ok(result(&o.out, "relu", &names))
}
