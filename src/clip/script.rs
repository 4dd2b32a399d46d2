//! A CLIP model exported to TorchScript by `scripts/export_torchscript.py`, run through
//! libtorch's JIT. It offers the same operations as the native model, through the
//! module's exported methods `residual`, `from_layer`, `encode_image`, `encode_text`,
//! `get_logit_scale` and `config`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{CModule, Device, IValue, Kind, Tensor};

use super::config::{Activation, ClipConfig, TextConfig, VisionConfig};

pub struct ScriptedClip {
    module: CModule,
    config: ClipConfig,
    logit_scale: f64,
    device: Device,
    kind: Kind,
}

impl std::fmt::Debug for ScriptedClip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedClip")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ScriptedClip {
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<ScriptedClip> {
        let mut module = CModule::load_on_device(path, device).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a TorchScript module saeclip can load ({}); export one with scripts/export_torchscript.py",
                path.display(),
                first_line(&e.to_string())
            )
        })?;
        module.f_set_eval()?;
        module.to(device, kind, false);
        let call = |name: &str| {
            module.method_is::<IValue>(name, &[]).map_err(|e| {
                anyhow::anyhow!(
                    "{} lacks the method {name}() of scripts/export_torchscript.py ({})",
                    path.display(),
                    first_line(&e.to_string())
                )
            })
        };
        let dims = match call("config")? {
            IValue::IntList(v) if v.len() == 11 => v,
            IValue::GenericList(v) if v.len() == 11 => v
                .into_iter()
                .map(|x| match x {
                    IValue::Int(i) => Ok(i),
                    other => bail!("config() returned a non-integer {other:?}"),
                })
                .collect::<Result<_>>()?,
            other => bail!(
                "{}: config() must return 11 integers, found {other:?}",
                path.display()
            ),
        };
        let logit_scale = match call("get_logit_scale")? {
            IValue::Tensor(t) => t.to_kind(Kind::Double).double_value(&[]),
            IValue::Double(d) => d,
            other => bail!(
                "{}: get_logit_scale() must return a tensor, found {other:?}",
                path.display()
            ),
        };
        let [vl, vw, vh, tl, tw, th, embed, image, patch, context, vocab] = dims[..] else {
            unreachable!("length checked above")
        };
        // The MLP width and activation stay inside the module; they are recorded as the
        // CLIP defaults for display only.
        let config = ClipConfig {
            vision: VisionConfig {
                hidden_size: vw,
                intermediate_size: 4 * vw,
                num_hidden_layers: vl as usize,
                num_attention_heads: vh,
                num_channels: 3,
                image_size: image,
                patch_size: patch,
                layer_norm_eps: 1e-5,
                activation: Activation::QuickGelu,
            },
            text: TextConfig {
                vocab_size: vocab,
                hidden_size: tw,
                intermediate_size: 4 * tw,
                num_hidden_layers: tl as usize,
                num_attention_heads: th,
                max_position_embeddings: context,
                layer_norm_eps: 1e-5,
                activation: Activation::QuickGelu,
            },
            projection_dim: embed,
        };
        Ok(ScriptedClip {
            module,
            config,
            logit_scale,
            device,
            kind,
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    pub fn logit_scale(&self) -> f64 {
        self.logit_scale
    }

    fn call(&self, method: &str, args: Vec<IValue>) -> Result<Tensor> {
        match self
            .module
            .method_is(method, &args)
            .with_context(|| format!("TorchScript {method}() failed"))?
        {
            IValue::Tensor(t) => Ok(t),
            other => bail!("TorchScript {method}() returned {other:?}, not a tensor"),
        }
    }

    fn input(&self, t: &Tensor) -> IValue {
        IValue::Tensor(t.to_device(self.device).to_kind(self.kind))
    }

    pub fn residual(&self, pixels: &Tensor, layer: usize) -> Result<Tensor> {
        self.call(
            "residual",
            vec![self.input(pixels), IValue::Int(layer as i64)],
        )
    }

    pub fn image_embeds_from(&self, residual: &Tensor, layer: usize) -> Result<Tensor> {
        self.call(
            "from_layer",
            vec![self.input(residual), IValue::Int(layer as i64)],
        )
    }

    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        self.call("encode_image", vec![self.input(pixels)])
    }

    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.to_device(self.device).to_kind(Kind::Int64);
        self.call("encode_text", vec![IValue::Tensor(ids)])
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}
