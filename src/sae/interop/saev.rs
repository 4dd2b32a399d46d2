//! saev checkpoints (`saev.nn.dump`): one line of JSON, then a `torch.save` state dict
//! (`W_enc` [D, F], `b_enc` [F], `W_dec` [F, D], `b_dec` [D]), in a run folder beside the
//! training `config.json`.
//!
//! - saev 0.1.0 (PyPI): the line holds the constructor arguments (`d_vit`, `exp_factor`, …;
//!   d_sae = d_vit·exp_factor). ReLU SAE, z = ReLU((x' − b_dec)·W_enc + b_enc), on
//!   activations the data loader normalised as x' = (x − act_mean)/scalar (`DataLoad.scale_mean`,
//!   `scale_norm`: computed from the dataset when true, read from a torch.save file when a
//!   path, skipped when false). A run is `<ckpt_path>/<id>/sae.pt` + `config.json`
//!   (`data.layer`, `data.patches`: cls | patches | meanpool).
//! - the current repository (`src/saev/nn/modeling.py`, header `{"schema": N, "cfg": {d_model,
//!   d_sae, activation: {cls, params}}, "commit", "lib"}`): z = act(x·W_enc + b_enc) with act
//!   ReLU, TopK (`top_k`) or BatchTopK (`top_k`, thresholded at the buffer
//!   `activation.threshold` at inference, ReLU while it is ≤ 0); no input normalisation
//!   (`scale_norm` is not implemented there). A run is `<run>/checkpoint/sae.pt` +
//!   `config.json` (`train_data.layer`, `train_data.tokens`: special | content | all).
//!   saev's TopK keeps the k largest pre-activations even when negative, saeclip's codes are
//!   ≥ 0: they differ on a row with fewer than k positive pre-activations.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

use super::torch_pickle::{self, PickleValue};
use super::{finish, read_json, Activation, Foreign, Hook, ImportFormat, ImportRequest, Tensors};
use crate::clip::Tokens;
use crate::sae::checkpoint::CheckpointMeta;
use crate::sae::model::Sae;

/// The checkpoint's file name in a run folder.
pub const CHECKPOINT_FILE: &str = "sae.pt";

/// Whether `path` is a saev dump: a JSON object on the first line, then a zip archive.
pub fn is_dump(path: &Path) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; 1 << 16];
    let Ok(n) = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) else {
        return false;
    };
    let head = &head[..n];
    match head.iter().position(|&b| b == b'\n') {
        Some(i) => {
            head.first() == Some(&b'{')
                && head[i + 1..].starts_with(b"PK")
                && serde_json::from_slice::<Value>(&head[..i]).is_ok()
        }
        None => false,
    }
}

/// The dump in `path` (a file, a run folder, or a run's `checkpoint/` folder).
fn checkpoint_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    for p in [
        path.join(CHECKPOINT_FILE),
        path.join("checkpoint").join(CHECKPOINT_FILE),
    ] {
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{} holds no saev checkpoint ({CHECKPOINT_FILE} or checkpoint/{CHECKPOINT_FILE})",
        path.display()
    )
}

/// Read a saev checkpoint as a saeclip SAE.
pub fn read(r: &ImportRequest) -> Result<(Sae, CheckpointMeta)> {
    let file = checkpoint_file(&r.path)?;
    let shown = file.display();
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {shown}"))?;
    let newline = bytes.iter().position(|&b| b == b'\n').ok_or_else(|| {
        anyhow!("{shown} is not a saev checkpoint: no JSON line before the weights")
    })?;
    let header: Value = serde_json::from_slice(&bytes[..newline]).map_err(|e| {
        anyhow!("{shown} is not a saev checkpoint: its first line is not JSON ({e})")
    })?;
    ensure!(
        header.is_object(),
        "{shown}: the first line is not a JSON object"
    );
    let state = torch_pickle::load_bytes(&bytes[newline + 1..], &file)?;
    let tensors = torch_pickle::tensors(&state).ok_or_else(|| {
        anyhow!(
            "{shown}: the weights are a {}, not a state dict",
            state.type_name()
        )
    })?;
    let config_path = file.parent().map(|d| d.join("config.json"));
    let config = match config_path.as_ref().filter(|p| p.is_file()) {
        Some(p) => Some((read_json(p)?, p.clone())),
        None => None,
    };
    if header.get("schema").is_some() {
        current(r, &file, &header, tensors, config)
    } else {
        legacy(r, &file, &header, tensors, config)
    }
}

/// The four parameters, shapes checked against `d_in` × `d_sae`.
fn parameters(t: &mut Tensors, d: i64, f: i64) -> Result<[Tensor; 4]> {
    Ok([
        t.take("W_enc", &[d, f])?,
        t.take("b_enc", &[f])?,
        t.take("W_dec", &[f, d])?,
        t.take("b_dec", &[d])?,
    ])
}

/// saev 0.1.0.
fn legacy(
    r: &ImportRequest,
    file: &Path,
    header: &Value,
    tensors: Vec<(String, Tensor)>,
    config: Option<(Value, PathBuf)>,
) -> Result<(Sae, CheckpointMeta)> {
    let shown = file.display();
    let d = super::int_field(header, "d_vit", file)?;
    let exp = super::int_field(header, "exp_factor", file)?;
    let f = d
        .checked_mul(exp)
        .filter(|f| *f >= 1 && d >= 1)
        .ok_or_else(|| anyhow!("{shown}: d_vit = {d} and exp_factor = {exp} give no width"))?;
    let mut t = Tensors::new(
        tensors,
        file,
        format!("d_vit = {d}, exp_factor = {exp} in its first line"),
    );
    let [w_enc, b_enc, w_dec, b_dec] = parameters(&mut t, d, f)?;
    t.done("a saev 0.1.0 SAE")?;

    let data = config
        .as_ref()
        .map(|(c, p)| (c.get("data").cloned().unwrap_or(Value::Null), p.clone()));
    let where_ = |key: &str| match &data {
        Some((_, p)) => format!("{}: data.{key}", p.display()),
        None => format!("{shown} (saev 0.1.0, no config.json beside it): data.{key}"),
    };
    let setting = |key: &str| data.as_ref().and_then(|(d, _)| d.get(key).cloned());
    let base = data
        .as_ref()
        .and_then(|(_, p)| p.parent().map(Path::to_path_buf));
    let mean = normalisation(
        r.saev_scale_mean.as_deref(),
        setting("scale_mean"),
        &where_("scale_mean"),
        "--saev-scale-mean",
        base.as_deref(),
    )?;
    let mean = match mean {
        None => None,
        Some(Norm::File(p)) => Some(tensor_file(&p, &[d])?),
        Some(Norm::Value(v)) => bail!(
            "--saev-scale-mean {v}: give the file of saev's mean activation (a torch.save tensor of {d} values), or none"
        ),
    };
    let scalar = match normalisation(
        r.saev_scale_norm.as_deref(),
        setting("scale_norm"),
        &where_("scale_norm"),
        "--saev-scale-norm",
        base.as_deref(),
    )? {
        None => 1.0,
        Some(Norm::Value(v)) => v,
        Some(Norm::File(p)) => tensor_file(&p, &[])?.double_value(&[]),
    };
    ensure!(
        scalar.is_finite() && scalar > 0.0,
        "{}: the scalar {scalar} is not a positive number",
        where_("scale_norm")
    );
    let layer = setting("layer");
    let tokens = match setting("patches").as_ref().and_then(Value::as_str) {
        None => None,
        Some("cls") => Some(Tokens::Cls),
        Some("patches") => Some(Tokens::Patches),
        Some(other) => bail!(
            "{} = {other:?}: saeclip splices an SAE into single tokens (cls or patches), not a mean over patches",
            where_("patches")
        ),
    };
    let layer = match layer {
        None => None,
        Some(Value::Number(n)) => n.as_i64(),
        Some(other) => bail!(
            "{} = {other}: saeclip splices an SAE into one layer (give a block number)",
            where_("layer")
        ),
    };
    let model = data
        .as_ref()
        .and_then(|(d, _)| d.get("shard_root")?.as_str().map(PathBuf::from))
        .and_then(|root| read_json(&root.join("metadata.json")).ok())
        .and_then(|m| m.get("vit_ckpt")?.as_str().map(String::from));
    let hook = Hook {
        model,
        layer,
        tokens,
        hook_name: None,
        layer_field: where_("layer"),
        tokens_field: where_("patches"),
    };
    let foreign = Foreign {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        subtracts_b_dec: true,
        activation: Activation::Relu,
        mean,
        scale: 1.0 / scalar,
    };
    let details = json!({"saev_version": "0.1.0", "saev_scalar": scalar, "saev_mean_removed": foreign.mean.is_some()});
    finish(foreign, &hook, r, ImportFormat::Saev, details)
}

/// One of saev 0.1.0's normalisation settings.
enum Norm {
    Value(f64),
    File(PathBuf),
}

/// `flag` (none | a number | a file) or else the run's `setting` (false | a path | true,
/// which needs the flag: the values were computed from the dataset and never saved).
fn normalisation(
    flag: Option<&str>,
    setting: Option<Value>,
    field: &str,
    flag_name: &str,
    base: Option<&Path>,
) -> Result<Option<Norm>> {
    if let Some(f) = flag {
        if f == "none" {
            return Ok(None);
        }
        if let Ok(v) = f.parse::<f64>() {
            return Ok(Some(Norm::Value(v)));
        }
        return Ok(Some(Norm::File(PathBuf::from(f))));
    }
    match setting {
        Some(Value::Bool(false)) => Ok(None),
        Some(Value::String(p)) => {
            let p = PathBuf::from(p);
            let found = [Some(p.clone()), base.map(|b| b.join(&p))]
                .into_iter()
                .flatten()
                .find(|c| c.is_file())
                .ok_or_else(|| {
                    anyhow!(
                        "{field} = {:?}, which does not exist here: pass {flag_name} with its file",
                        p.display()
                    )
                })?;
            Ok(Some(Norm::File(found)))
        }
        Some(Value::Bool(true)) | None => bail!(
            "{field} is {}: saev computed it from the training data and did not save it; pass {flag_name} (a file written by torch.save, {}, or none)",
            if setting.is_some() { "true" } else { "not recorded (saev 0.1.0 defaults to true)" },
            if flag_name.ends_with("mean") { "the mean activation" } else { "or the scalar itself" }
        ),
        Some(other) => bail!("{field} = {other} is not true, false or a path"),
    }
}

/// A tensor of shape `shape` saved alone with torch.save (saev's `scale_mean` /
/// `scale_norm` files), as f64.
fn tensor_file(path: &Path, shape: &[i64]) -> Result<Tensor> {
    let v = torch_pickle::load(path)?;
    let PickleValue::Tensor(t) = v else {
        bail!(
            "{}: holds a {}, expected a tensor",
            path.display(),
            v.type_name()
        );
    };
    let numel: i64 = shape.iter().product();
    ensure!(
        t.numel() as i64 == numel && (shape.is_empty() || t.size() == shape),
        "{}: tensor of shape {:?}, expected {shape:?}",
        path.display(),
        t.size()
    );
    Ok(t.to_kind(Kind::Double).reshape(shape))
}

/// The current repository's layout (header with a schema).
fn current(
    r: &ImportRequest,
    file: &Path,
    header: &Value,
    tensors: Vec<(String, Tensor)>,
    config: Option<(Value, PathBuf)>,
) -> Result<(Sae, CheckpointMeta)> {
    let shown = file.display();
    let schema = header.get("schema").and_then(Value::as_i64).unwrap_or(0);
    ensure!(
        (1..=5).contains(&schema),
        "{shown}: schema = {} is not one saeclip reads (1 to 5)",
        header["schema"]
    );
    let cfg = header
        .get("cfg")
        .filter(|c| c.is_object())
        .ok_or_else(|| anyhow!("{shown}: the first line has no `cfg` object"))?;
    let d = cfg
        .get("d_model")
        .or(cfg.get("d_vit"))
        .and_then(Value::as_i64)
        .ok_or_else(|| anyhow!("{shown}: cfg.d_model is missing or not an integer"))?;
    let f = match cfg.get("d_sae").and_then(Value::as_i64) {
        Some(f) => f,
        None => {
            d * super::int_field(cfg, "exp_factor", file)
                .map_err(|_| anyhow!("{shown}: cfg.d_sae is missing or not an integer"))?
        }
    };
    ensure!(
        d >= 1 && f >= 1,
        "{shown}: cfg.d_model = {d}, cfg.d_sae = {f}"
    );
    // Schema 1 wrote the activation's class name beside cfg; later ones inside it.
    let (cls, params) = match cfg.get("activation") {
        Some(a) => (
            a.get("cls").and_then(Value::as_str),
            a.get("params").cloned().unwrap_or(Value::Null),
        ),
        None => (header.get("cls").and_then(Value::as_str), cfg.clone()),
    };
    let top_k = || {
        params.get("top_k").and_then(Value::as_i64).ok_or_else(|| {
            anyhow!("{shown}: cfg.activation.params.top_k is missing or not an integer")
        })
    };
    let mut t = Tensors::new(
        tensors,
        file,
        format!("cfg.d_model = {d}, cfg.d_sae = {f} in its first line"),
    );
    let [w_enc, b_enc, w_dec, b_dec] = parameters(&mut t, d, f)?;
    let activation = match cls {
        Some("Relu") => Activation::Relu,
        Some("TopK") => Activation::TopK(top_k()?),
        Some("BatchTopK") => {
            let theta = t.scalar("activation.threshold")?;
            Activation::BatchTopK {
                k: top_k()?,
                threshold: (theta > 0.0).then_some(theta),
            }
        }
        other => bail!(
            "{shown}: activation {} is not one saeclip reads (Relu, TopK, BatchTopK)",
            other.map_or("(none)".to_string(), |s| format!("{s:?}"))
        ),
    };
    t.done("a saev SAE")?;

    let data = config.as_ref().map(|(c, p)| {
        (
            c.get("train_data").cloned().unwrap_or(Value::Null),
            p.clone(),
        )
    });
    let where_ = |key: &str| match &data {
        Some((_, p)) => format!("{}: train_data.{key}", p.display()),
        None => format!("{shown} (no config.json beside it): train_data.{key}"),
    };
    let setting = |key: &str| data.as_ref().and_then(|(d, _)| d.get(key).cloned());
    if setting("scale_norm").and_then(|v| v.as_bool()) == Some(true) {
        bail!(
            "{} = true: saev does not implement it, so saeclip cannot tell what the SAE saw",
            where_("scale_norm")
        );
    }
    let layer = match setting("layer") {
        None => None,
        Some(Value::Number(n)) => n.as_i64(),
        Some(other) => bail!(
            "{} = {other}: saeclip splices an SAE into one layer (give a block number)",
            where_("layer")
        ),
    };
    let tokens = match setting("tokens").as_ref().and_then(Value::as_str) {
        None => None,
        // The special tokens of a ViT without registers: its class token.
        Some("special") => Some(Tokens::Cls),
        Some("content") => Some(Tokens::Patches),
        Some("all") => Some(Tokens::All),
        Some(other) => bail!(
            "{} = {other:?} is not special, content or all",
            where_("tokens")
        ),
    };
    let model = setting("shards")
        .and_then(|s| s.as_str().map(PathBuf::from))
        .and_then(|root| read_json(&root.join("metadata.json")).ok())
        .and_then(|m| {
            let family = m.get("family")?.as_str()?.to_string();
            Some(format!("{family}/{}", m.get("ckpt")?.as_str()?))
        });
    let hook = Hook {
        model,
        layer,
        tokens,
        hook_name: None,
        layer_field: where_("layer"),
        tokens_field: where_("tokens"),
    };
    let foreign = Foreign {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        subtracts_b_dec: false,
        activation,
        mean: None,
        scale: 1.0,
    };
    let details = json!({
        "saev_schema": schema,
        "saev_lib": header.get("lib"),
        "saev_commit": header.get("commit"),
        "activation": cls,
    });
    finish(foreign, &hook, r, ImportFormat::Saev, details)
}
