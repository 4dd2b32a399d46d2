//! ViT-Prisma SAEs (`vit_prisma.sae.SparseAutoencoder.load_from_pretrained`): a folder with
//! `config.json` (`VisionModelSAERunnerConfig`, as `save_config` writes it) and a
//! `torch.save` weights file (`.pt`): the state dict (`W_enc` [D, F], `b_enc` [F], `W_dec`
//! [F, D], `b_dec` [D]), or `{"cfg": …, "state_dict": …}` as its `save_model` writes it
//! (a pickled config object is refused like any other class: save the state dict alone).
//!
//! Encoding (`encode_standard`): pre = (x − b_dec)·W_enc + b_enc, then `activation_fn_str`:
//! relu, or topk with `activation_fn_kwargs.k` (top k, then ReLU): saeclip's relu / topk.
//! `normalize_activations` must be `none`: `layer_norm` and `constant_norm_rescale`
//! normalise each input by its own statistics, which no affine map reproduces.
//! Hook point: `blocks.{hook_point_layer}.{layer_subtype}`; `hook_resid_post` is the output
//! of block L, `hook_resid_pre` that of block L − 1; tokens: `cls_token_only` → cls,
//! `use_patches_only` → patches, otherwise all.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Result};
use serde_json::{json, Value};

use super::torch_pickle::{self, PickleValue};
use super::{finish, read_json, Activation, Foreign, Hook, ImportFormat, ImportRequest, Tensors};
use crate::clip::Tokens;
use crate::sae::checkpoint::CheckpointMeta;
use crate::sae::model::Sae;

pub const CONFIG_FILE: &str = "config.json";

/// Whether a parsed config.json is a ViT-Prisma SAE config.
pub fn is_config(cfg: &Value) -> bool {
    cfg.get("hook_point_layer").is_some()
        && cfg.get("d_in").is_some()
        && (cfg.get("activation_fn_str").is_some() || cfg.get("expansion_factor").is_some())
}

/// The weights file and the config of `path` (the folder or the weights file).
fn files(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let shown = path.display();
    let (dir, weights) = if path.is_dir() {
        let mut pts: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| anyhow!("cannot list {shown}: {e}"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.ends_with(".pt") && !name.ends_with("_log_feature_sparsity.pt")
            })
            .collect();
        pts.sort();
        let weights = match pts.as_slice() {
            [one] => one.clone(),
            [] => bail!("{shown} holds no .pt weights file: not a ViT-Prisma SAE folder"),
            many => bail!(
                "{shown} holds {} weights files ({}): give the one to import as PATH",
                many.len(),
                many.iter()
                    .filter_map(|p| p.file_name()?.to_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        (path.to_path_buf(), weights)
    } else {
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        (dir, path.to_path_buf())
    };
    let config = dir.join(CONFIG_FILE);
    ensure!(
        config.is_file(),
        "{} has no {CONFIG_FILE} beside it: ViT-Prisma loads the SAE's config from there",
        weights.display()
    );
    Ok((weights, config))
}

/// Read a ViT-Prisma SAE as a saeclip SAE.
pub fn read(r: &ImportRequest) -> Result<(Sae, CheckpointMeta)> {
    let (weights, config_path) = files(&r.path)?;
    let cfg = read_json(&config_path)?;
    let shown_cfg = config_path.display();
    let text = |key: &str| cfg.get(key).and_then(Value::as_str);
    let architecture = text("architecture").unwrap_or("standard");
    ensure!(
        architecture == "standard",
        "{shown_cfg}: architecture = {architecture:?} is not supported (only standard)"
    );
    let norm = text("normalize_activations").unwrap_or("none");
    ensure!(
        norm == "none",
        "{shown_cfg}: normalize_activations = {norm:?}: the SAE normalises each input by its own statistics, which saeclip cannot represent (only \"none\")"
    );
    ensure!(
        cfg.get("hook_point_head_index").is_none_or(Value::is_null),
        "{shown_cfg}: hook_point_head_index is set: an SAE on one attention head is not supported"
    );
    let d = super::int_field(&cfg, "d_in", &config_path)?;
    let (f, sizes) = match cfg.get("d_sae").and_then(Value::as_i64) {
        Some(f) => (f, format!("d_in = {d}, d_sae = {f} in {CONFIG_FILE}")),
        None => {
            let e = super::int_field(&cfg, "expansion_factor", &config_path)?;
            (
                d * e,
                format!("d_in = {d}, expansion_factor = {e} in {CONFIG_FILE}"),
            )
        }
    };
    ensure!(d >= 1 && f >= 1, "{shown_cfg}: d_in = {d}, d_sae = {f}");
    let activation = match text("activation_fn_str").unwrap_or("relu") {
        "relu" => Activation::Relu,
        "topk" => {
            let k = cfg
                .get("activation_fn_kwargs")
                .and_then(|a| a.get("k"))
                .and_then(Value::as_i64)
                .ok_or_else(|| {
                    anyhow!("{shown_cfg}: activation_fn_kwargs.k is missing or not an integer")
                })?;
            ensure!(
                (1..=f).contains(&k),
                "{shown_cfg}: activation_fn_kwargs.k = {k} is not between 1 and d_sae = {f}"
            );
            Activation::TopK(k)
        }
        other => {
            bail!("{shown_cfg}: activation_fn_str = {other:?} is not supported (relu or topk)")
        }
    };

    let state = torch_pickle::load(&weights)?;
    let state = match state.get("state_dict") {
        Some(inner @ PickleValue::Dict(_)) => inner,
        _ => &state,
    };
    let tensors = torch_pickle::tensors(state).ok_or_else(|| {
        anyhow!(
            "{}: holds a {}, not a state dict",
            weights.display(),
            state.type_name()
        )
    })?;
    let mut t = Tensors::new(tensors, &weights, sizes);
    let w_enc = t.take("W_enc", &[d, f])?;
    let b_enc = t.take("b_enc", &[f])?;
    let w_dec = t.take("W_dec", &[f, d])?;
    let b_dec = t.take("b_dec", &[d])?;
    t.done("a ViT-Prisma standard SAE")?;

    let layer_field = format!("{shown_cfg}: hook_point_layer");
    let layer = match cfg.get("hook_point_layer") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::Array(a)) if a.len() == 1 => a[0].as_i64(),
        _ => None,
    }
    .ok_or_else(|| {
        anyhow!(
            "{layer_field} = {} is not one block number",
            cfg["hook_point_layer"]
        )
    })?;
    let subtype = text("layer_subtype").unwrap_or("hook_resid_post");
    let hook_name = format!("blocks.{layer}.{subtype}");
    let layer = match subtype {
        "hook_resid_post" => layer,
        "hook_resid_pre" if layer >= 1 => layer - 1,
        "hook_resid_pre" => bail!(
            "{shown_cfg}: layer_subtype = hook_resid_pre of block 0 is the embedding, not a block's output: saeclip cannot splice there"
        ),
        other => bail!(
            "{shown_cfg}: layer_subtype = {other:?}: saeclip splices SAEs into the residual stream (hook_resid_post or hook_resid_pre)"
        ),
    };
    if let Some(n) = cfg
        .get("vit_model_cfg")
        .and_then(|m| m.get("n_layers"))
        .and_then(Value::as_i64)
    {
        ensure!(
            (0..n).contains(&layer),
            "{layer_field} = {layer} is outside the model: vit_model_cfg.n_layers = {n} (blocks 0..={})",
            n - 1
        );
    }
    let flag = |key: &str| cfg.get(key).and_then(Value::as_bool).unwrap_or(false);
    let tokens = match (flag("cls_token_only"), flag("use_patches_only")) {
        (true, true) => bail!("{shown_cfg}: cls_token_only and use_patches_only are both true"),
        (true, false) => Tokens::Cls,
        (false, true) => Tokens::Patches,
        (false, false) => Tokens::All,
    };
    let hook = Hook {
        model: text("model_name").map(String::from),
        layer: Some(layer),
        tokens: Some(tokens),
        hook_name: Some(hook_name),
        layer_field,
        tokens_field: format!("{shown_cfg}: cls_token_only / use_patches_only"),
    };
    let foreign = Foreign {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        subtracts_b_dec: true,
        activation,
        mean: None,
        scale: 1.0,
    };
    let details = json!({
        "weights": weights.display().to_string(),
        "activation_fn_str": text("activation_fn_str"),
    });
    finish(foreign, &hook, r, ImportFormat::Prisma, details)
}
