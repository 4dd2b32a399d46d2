//! EleutherAI sparsify (eai-sparsify 1.3.3, `SparseCoder.save_to_disk`): a folder with
//! `cfg.json` (`SparseCoderConfig` plus `d_in`: `activation` topk | groupmax, `k`,
//! `num_latents` or `expansion_factor`, `skip_connection`, `transcode`) and
//! `sae.safetensors` (`encoder.weight` [F, D], `encoder.bias` [F], `W_dec` [F, D], `b_dec`
//! [D], `W_skip` [D, D] with a skip connection). The trainer writes one such folder per hook
//! point, named by the module (`<run>/<hookpoint>/`), beside its `config.json` (`model`,
//! `hookpoints`).
//!
//! Encoding: pre = ReLU((x − b_dec)·encoder.weightᵀ + encoder.bias), the top k of it;
//! x̂ = z·W_dec + b_dec: saeclip's topk as it is. Transcoders, skip connections and groupmax
//! are refused. The hook point's layer comes from the folder's name (`…layers.11` → 11);
//! sparsify does not record the tokens (a saeclip export keeps its hook point in cfg.json under
//! `saeclip`, which sparsify ignores, and it is read back).

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Result};
use serde_json::{json, Value};

use super::{finish, read_json, Activation, Foreign, Hook, ImportFormat, ImportRequest, Tensors};
use crate::sae::checkpoint::CheckpointMeta;
use crate::sae::model::Sae;

pub const CFG_FILE: &str = "cfg.json";
pub const WEIGHTS_FILE: &str = "sae.safetensors";

/// The sub-folders of `dir` that hold a sparsify SAE (the hook points of a multi-hook run),
/// sorted by name.
pub fn hooks(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join(CFG_FILE).is_file() && e.path().join(WEIGHTS_FILE).is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    names.sort();
    names
}

/// The SAE folder to read and its hook point's name, if known.
fn pick(r: &ImportRequest) -> Result<(PathBuf, Option<String>)> {
    let dir = &r.path;
    let shown = dir.display();
    if dir.join(CFG_FILE).is_file() {
        ensure!(
            r.hook.is_none(),
            "{shown} holds one SAE (its {CFG_FILE}): --hook picks a sub-folder of a multi-hook run; drop it"
        );
        // A sub-folder of a run: its name is the hook point.
        let parent_cfg = dir.parent().map(|p| p.join("config.json"));
        let in_run = parent_cfg.is_some_and(|p| p.is_file());
        let name = dir.file_name().and_then(|n| n.to_str()).map(String::from);
        return Ok((dir.clone(), name.filter(|_| in_run)));
    }
    let hooks = hooks(dir);
    ensure!(
        !hooks.is_empty(),
        "{shown} is not a sparsify folder: no {CFG_FILE} + {WEIGHTS_FILE}, nor sub-folders with them"
    );
    match &r.hook {
        Some(h) if hooks.contains(h) => Ok((dir.join(h), Some(h.clone()))),
        Some(h) => bail!(
            "{shown} has no hook point {h:?}: --hook is one of {}",
            hooks.join(", ")
        ),
        None if hooks.len() == 1 => Ok((dir.join(&hooks[0]), Some(hooks[0].clone()))),
        None => bail!(
            "{shown} holds SAEs for {} hook points: pick one with --hook ({})",
            hooks.len(),
            hooks.join(", ")
        ),
    }
}

/// Read a sparsify folder as a saeclip SAE.
pub fn read(r: &ImportRequest) -> Result<(Sae, CheckpointMeta)> {
    let (dir, hook_name) = pick(r)?;
    let cfg_path = dir.join(CFG_FILE);
    let cfg = read_json(&cfg_path)?;
    let shown_cfg = cfg_path.display();
    let d = super::int_field(&cfg, "d_in", &cfg_path)?;
    let flag = |key: &str| cfg.get(key).and_then(Value::as_bool).unwrap_or(false);
    ensure!(
        !flag("transcode"),
        "{shown_cfg}: transcode = true: a transcoder predicts another module's output, it is not an SAE saeclip can splice"
    );
    ensure!(
        !flag("skip_connection"),
        "{shown_cfg}: skip_connection = true is not supported (saeclip's SAEs have no W_skip)"
    );
    let activation = cfg
        .get("activation")
        .and_then(Value::as_str)
        .unwrap_or("topk");
    ensure!(
        activation == "topk",
        "{shown_cfg}: activation = {activation:?} is not supported (only topk)"
    );
    let k = super::int_field(&cfg, "k", &cfg_path)?;
    let latents = cfg.get("num_latents").and_then(Value::as_i64).unwrap_or(0);
    let (f, sizes) = if latents > 0 {
        (
            latents,
            format!("d_in = {d}, num_latents = {latents} in {CFG_FILE}"),
        )
    } else {
        let e = super::int_field(&cfg, "expansion_factor", &cfg_path)?;
        (
            d * e,
            format!("d_in = {d}, expansion_factor = {e} in {CFG_FILE}"),
        )
    };
    ensure!(
        d >= 1 && f >= 1 && (1..=f).contains(&k),
        "{shown_cfg}: d_in = {d}, {f} latents and k = {k} do not make an SAE"
    );
    let weights_path = dir.join(WEIGHTS_FILE);
    let tensors = crate::clip::weights::read_safetensors(&weights_path)?;
    let mut t = Tensors::new(tensors, &weights_path, sizes);
    let w_enc = t.take("encoder.weight", &[f, d])?.tr();
    let b_enc = t.take("encoder.bias", &[f])?;
    let w_dec = t.take("W_dec", &[f, d])?;
    let b_dec = t.take("b_dec", &[d])?;
    t.done("a sparsify SAE")?;

    let run_cfg = dir
        .parent()
        .map(|p| p.join("config.json"))
        .filter(|p| p.is_file())
        .and_then(|p| read_json(&p).ok());
    let model = run_cfg
        .as_ref()
        .and_then(|c| c.get("model")?.as_str().map(String::from));
    // saeclip's export records the hook point under a key sparsify ignores.
    let recorded = cfg.get("saeclip");
    let recorded_layer = recorded.and_then(|r| r.get("layer")?.as_i64());
    let recorded_tokens: Option<crate::clip::Tokens> = recorded
        .and_then(|r| r.get("tokens"))
        .and_then(|t| serde_json::from_value(t.clone()).ok());
    let model = model.or_else(|| recorded.and_then(|r| r.get("model")?.as_str().map(String::from)));
    let layer = hook_name
        .as_deref()
        .and_then(super::layer_of_hook)
        .or(recorded_layer);
    if let (Some(h), None) = (&hook_name, layer) {
        if r.layer.is_none() {
            bail!(
                "{}: hook point {h:?} is not the output of a numbered block (…layers.N): saeclip splices SAEs into the residual stream after a block; pass --layer N if it is one",
                dir.display()
            );
        }
    }
    let hook = Hook {
        model,
        layer,
        tokens: recorded_tokens,
        hook_name: hook_name.clone(),
        layer_field: match &hook_name {
            Some(h) => format!("{}: hook point {h:?}", dir.display()),
            None => format!(
                "{}: hook point (a sparsify run names it by the sub-folder)",
                dir.display()
            ),
        },
        tokens_field: format!("{shown_cfg}: tokens (sparsify records none)"),
    };
    let foreign = Foreign {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        subtracts_b_dec: true,
        activation: Activation::TopK(k),
        mean: None,
        scale: 1.0,
    };
    let details = json!({"hookpoint": hook_name});
    finish(foreign, &hook, r, ImportFormat::Sparsify, details)
}
