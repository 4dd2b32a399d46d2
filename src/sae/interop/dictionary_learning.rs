//! dictionary_learning (PyPI `dictionary-learning` 0.1.0): a trainer's folder holds `ae.pt`
//! (`torch.save` of the dictionary's state dict) and `config.json` ({`trainer`: {`dict_class`,
//! `activation_dim`, `dict_size`, `k`, `layer`, `lm_name`, `submodule_name`, …}, `buffer`}).
//! The weights are in the activations' own units: with `normalize_activations` the trainer
//! scales the biases (and thresholds) back by `norm_factor` before saving.
//!
//! | dict_class | tensors | encode | saeclip |
//! |---|---|---|---|
//! | AutoEncoder | `bias` [D], `encoder.weight` [F, D], `encoder.bias`, `decoder.weight` [D, F] | ReLU(enc(x − bias)) | relu |
//! | AutoEncoderTopK | `encoder.*`, `decoder.weight`, `b_dec`, `k`, `threshold` | top k of ReLU(enc(x − b_dec)) | topk |
//! | BatchTopKSAE | as AutoEncoderTopK | ReLU(pre)·[ReLU(pre) > θ] | batchtopk, θ (0 while θ < 0) |
//! | MatryoshkaBatchTopKSAE | `W_enc` [D, F], `b_enc`, `W_dec` [F, D], `b_dec`, `k`, `threshold`, `group_sizes` | as BatchTopKSAE | matryoshka, widths = cumulative group sizes |
//! | JumpReluAutoEncoder | `W_enc`, `b_enc`, `W_dec`, `b_dec`, `threshold` [F] | ReLU(pre·[pre > θ_j]), pre = x·W_enc + b_enc | jumprelu |
//!
//! The layer is `trainer.layer` (the block whose output `submodule_name` hooks); the
//! tokens are not recorded.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Result};
use serde_json::{json, Value};

use super::torch_pickle;
use super::{finish, read_json, Activation, Foreign, Hook, ImportFormat, ImportRequest, Tensors};
use crate::sae::checkpoint::CheckpointMeta;
use crate::sae::model::Sae;

pub const WEIGHTS_FILE: &str = "ae.pt";
pub const CONFIG_FILE: &str = "config.json";

/// `ae.pt` and `config.json` of `path` (the folder or the weights file).
fn files(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let weights = if path.is_dir() {
        path.join(WEIGHTS_FILE)
    } else {
        path.to_path_buf()
    };
    ensure!(
        weights.is_file(),
        "{} has no {WEIGHTS_FILE}: not a dictionary_learning trainer folder",
        path.display()
    );
    let config = weights
        .parent()
        .map(|d| d.join(CONFIG_FILE))
        .unwrap_or_else(|| PathBuf::from(CONFIG_FILE));
    ensure!(
        config.is_file(),
        "{} has no {CONFIG_FILE} beside it: dictionary_learning's trainer writes one, which names the dictionary class (trainer.dict_class)",
        weights.display()
    );
    Ok((weights, config))
}

/// Read a dictionary_learning trainer folder as a saeclip SAE.
pub fn read(r: &ImportRequest) -> Result<(Sae, CheckpointMeta)> {
    let (weights, config_path) = files(&r.path)?;
    let config = read_json(&config_path)?;
    let shown_cfg = config_path.display();
    let trainer = config
        .get("trainer")
        .filter(|t| t.is_object())
        .ok_or_else(|| {
            anyhow!("{shown_cfg}: no `trainer` object: not a dictionary_learning config")
        })?;
    let class = trainer
        .get("dict_class")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{shown_cfg}: trainer.dict_class is missing"))?;
    let field = |key: &str| -> Result<i64> {
        trainer
            .get(key)
            .and_then(Value::as_i64)
            .ok_or_else(|| anyhow!("{shown_cfg}: trainer.{key} is missing or not an integer"))
    };
    let (d, f) = (field("activation_dim")?, field("dict_size")?);
    ensure!(
        d >= 1 && f >= 1,
        "{shown_cfg}: trainer.activation_dim = {d}, trainer.dict_size = {f}"
    );
    let state = torch_pickle::load(&weights)?;
    let tensors = torch_pickle::tensors(&state).ok_or_else(|| {
        anyhow!(
            "{}: holds a {}, not a state dict",
            weights.display(),
            state.type_name()
        )
    })?;
    let mut t = Tensors::new(
        tensors,
        &weights,
        format!("trainer.activation_dim = {d}, trainer.dict_size = {f} in {CONFIG_FILE}"),
    );
    let foreign = match class {
        "AutoEncoder" => {
            let b_dec = t.take("bias", &[d])?;
            let w_enc = t.take("encoder.weight", &[f, d])?.tr();
            let b_enc = t.take("encoder.bias", &[f])?;
            let w_dec = t.take("decoder.weight", &[d, f])?.tr();
            Foreign {
                w_enc,
                b_enc,
                w_dec,
                b_dec,
                subtracts_b_dec: true,
                activation: Activation::Relu,
                mean: None,
                scale: 1.0,
            }
        }
        "AutoEncoderTopK" | "BatchTopKSAE" => {
            let w_enc = t.take("encoder.weight", &[f, d])?.tr();
            let b_enc = t.take("encoder.bias", &[f])?;
            let w_dec = t.take("decoder.weight", &[d, f])?.tr();
            let b_dec = t.take("b_dec", &[d])?;
            let k = k_of(&mut t, trainer, f, &weights, &config_path)?;
            let theta = t.scalar("threshold")?;
            let activation = if class == "AutoEncoderTopK" {
                Activation::TopK(k)
            } else {
                Activation::BatchTopK {
                    k,
                    threshold: (theta >= 0.0).then_some(theta),
                }
            };
            Foreign {
                w_enc,
                b_enc,
                w_dec,
                b_dec,
                subtracts_b_dec: true,
                activation,
                mean: None,
                scale: 1.0,
            }
        }
        "MatryoshkaBatchTopKSAE" => {
            let w_enc = t.take("W_enc", &[d, f])?;
            let b_enc = t.take("b_enc", &[f])?;
            let w_dec = t.take("W_dec", &[f, d])?;
            let b_dec = t.take("b_dec", &[d])?;
            let k = k_of(&mut t, trainer, f, &weights, &config_path)?;
            let theta = t.scalar("threshold")?;
            let sizes = t.ints("group_sizes")?;
            ensure!(
                sizes.iter().all(|s| *s >= 1) && sizes.iter().sum::<i64>() == f,
                "{}: group_sizes {sizes:?} are not positive sizes summing to dict_size = {f}",
                weights.display()
            );
            let widths: Vec<i64> = sizes
                .iter()
                .scan(0, |acc, s| {
                    *acc += s;
                    Some(*acc)
                })
                .collect();
            Foreign {
                w_enc,
                b_enc,
                w_dec,
                b_dec,
                subtracts_b_dec: true,
                activation: Activation::Matryoshka {
                    k,
                    widths,
                    threshold: (theta >= 0.0).then_some(theta),
                },
                mean: None,
                scale: 1.0,
            }
        }
        "JumpReluAutoEncoder" => {
            let w_enc = t.take("W_enc", &[d, f])?;
            let b_enc = t.take("b_enc", &[f])?;
            let w_dec = t.take("W_dec", &[f, d])?;
            let b_dec = t.take("b_dec", &[d])?;
            let theta = t.take("threshold", &[f])?;
            Foreign {
                w_enc,
                b_enc,
                w_dec,
                b_dec,
                subtracts_b_dec: false,
                activation: Activation::JumpRelu(theta),
                mean: None,
                scale: 1.0,
            }
        }
        other => bail!(
            "{shown_cfg}: trainer.dict_class = {other:?} is not supported (AutoEncoder, AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder, MatryoshkaBatchTopKSAE)"
        ),
    };
    t.done(&format!("a {class}"))?;
    let layer = match trainer.get("layer") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| anyhow!("{shown_cfg}: trainer.layer = {v} is not a block number"))?,
        ),
    };
    let text = |key: &str| trainer.get(key).and_then(Value::as_str).map(String::from);
    let hook = Hook {
        model: text("lm_name"),
        layer,
        tokens: None,
        hook_name: text("submodule_name"),
        layer_field: format!("{shown_cfg}: trainer.layer"),
        tokens_field: format!("{shown_cfg}: tokens (dictionary_learning records none)"),
    };
    let details = json!({
        "dict_class": class,
        "trainer_class": trainer.get("trainer_class"),
        "norm_factor": trainer.get("norm_factor"),
    });
    finish(foreign, &hook, r, ImportFormat::DictionaryLearning, details)
}

/// The `k` buffer, checked against `trainer.k` and the width.
fn k_of(t: &mut Tensors, trainer: &Value, f: i64, weights: &Path, config: &Path) -> Result<i64> {
    let k = t.scalar("k")?;
    ensure!(
        k.fract() == 0.0 && (1.0..=f as f64).contains(&k),
        "{}: k = {k} is not between 1 and dict_size = {f}",
        weights.display()
    );
    let k = k as i64;
    if let Some(c) = trainer.get("k").and_then(Value::as_i64) {
        ensure!(
            c == k,
            "{}: trainer.k = {c}, but the tensor k in {} is {k}",
            config.display(),
            weights.display()
        );
    }
    Ok(k)
}
