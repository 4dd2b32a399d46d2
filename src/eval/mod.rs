//! Evaluating an SAE inside CLIP: zero-shot accuracy with and without the SAE spliced into
//! the vision tower ([`zeroshot`]), and steering by editing SAE latents ([`steer`]).
//!
//! Both splice the same way: the residual stream after block L (the checkpoint's layer) is
//! computed once with [`Clip::residual`], the chosen tokens are replaced, and the remaining
//! blocks run from there with [`Clip::image_embeds_from`]. Shapes: B images, S tokens,
//! K spliced tokens, D width, F latents.

pub mod auroc;
pub mod evaluate;
pub mod factors;
pub mod localisation;
pub mod probe;
pub mod steer;
pub mod zeroshot;

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::clip::{weights, Clip, ModelFormat, Tokens};
use crate::data::cache::file_sha256;
use crate::sae::{checkpoint, Sae};

/// An SAE checked against the CLIP model it is spliced into.
#[derive(Debug)]
pub struct SplicedSae {
    pub sae: Sae,
    pub path: PathBuf,
    /// Block whose output the SAE reads (the checkpoint's `clip.layer`).
    pub layer: usize,
    /// Tokens the SAE was trained on (the checkpoint's `clip.tokens`).
    pub tokens: Tokens,
    /// Set when the checkpoint records another model's weights (a warning, not an error).
    pub model_mismatch: Option<String>,
}

impl SplicedSae {
    /// Load the checkpoint at `path` onto `device` and check it fits `clip`: d_in equals the
    /// vision width and the layer exists. `model` (and `format`) name the weights `clip` was
    /// loaded from; when the checkpoint records a different sha256 for them,
    /// [`SplicedSae::model_mismatch`] says so.
    pub fn load(
        path: &Path,
        clip: &Clip,
        model: Option<(&Path, Option<ModelFormat>)>,
        device: Device,
    ) -> Result<SplicedSae> {
        let shown = path.display();
        let (sae, meta) = checkpoint::load_sae(path, device)?;
        let width = clip.info().hidden_size;
        let blocks = clip.info().num_hidden_layers;
        ensure!(
            sae.config.d_in == width,
            "SAE {shown} has d_in = {} but the model's vision width is {width}: use an SAE trained on this model",
            sae.config.d_in
        );
        let layer = match meta.clip.get("layer") {
            Some(v) => v.as_u64().with_context(|| {
                format!("SAE {shown}: clip.layer in the header is {v}, not a block number")
            })? as usize,
            None => bail!("SAE {shown} does not record clip.layer in its header: it cannot be spliced (was it written by saeclip train?)"),
        };
        ensure!(
            layer < blocks,
            "SAE {shown} reads layer {layer} but the model's vision tower has blocks 0..={}: use an SAE trained on this model",
            blocks - 1
        );
        let tokens = match meta.clip.get("tokens") {
            None | Some(Value::Null) => Tokens::Cls,
            Some(v) => serde_json::from_value(v.clone()).with_context(|| {
                format!("SAE {shown}: clip.tokens in the header is {v}, expected \"cls\", \"patches\", \"all\" or \"registers\"")
            })?,
        };
        clip.token_range(tokens)
            .with_context(|| format!("SAE {shown}: clip.tokens"))?;
        let model_mismatch = match (model, meta.clip.get("sha256").and_then(Value::as_str)) {
            (Some((model, format)), Some(recorded)) => {
                let files = weights::resolve(model, format)?;
                crate::ui::debug(format!("hashing {}", files.weights.display()));
                let actual = file_sha256(&files.weights)?;
                (actual != recorded).then(|| {
                    let trained = meta.clip.get("model").and_then(Value::as_str).unwrap_or("?");
                    format!(
                        "SAE {shown} was trained on other weights ({trained}, sha256 {}…) than {} (sha256 {}…): results may be meaningless",
                        short(recorded),
                        files.weights.display(),
                        short(&actual)
                    )
                })
            }
            _ => None,
        };
        Ok(SplicedSae {
            sae,
            path: path.to_path_buf(),
            layer,
            tokens,
            model_mismatch,
        })
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// `residual` [B, S, D] with the tokens `at` replaced by `rows` [B·K, D] (any float kind;
/// cast to the residual's kind).
pub fn replace_tokens(residual: &Tensor, at: &Range<i64>, rows: &Tensor) -> Tensor {
    let (b, _, d) = residual.size3().expect("a residual is [B, S, D]");
    let k = at.end - at.start;
    let out = residual.copy();
    out.narrow(1, at.start, k)
        .copy_(&rows.view([b, k, d]).to_kind(residual.kind()));
    out
}

/// The tokens `at` of `residual` [B, S, D] as rows [B·K, D] in f32.
pub fn token_rows(residual: &Tensor, at: &Range<i64>) -> Tensor {
    let d = residual.size()[2];
    residual
        .narrow(1, at.start, at.end - at.start)
        .reshape([-1, d])
        .to_kind(Kind::Float)
}
