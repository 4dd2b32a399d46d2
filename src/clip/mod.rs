//! Vision backbones (CLIP and the other families): configuration, towers, weights,
//! tokenizer and preprocessing.
//!
//! [`Clip`] is the model as the rest of saeclip sees it, whichever family it belongs to
//! ([`Family`], from `config.json`'s `model_type`) and however it was stored: a native
//! `tch::nn` model (Hugging Face or open_clip weights) or a TorchScript module. What the
//! commands need of any family goes through [`Clip::info`] (widths, layers, token layout),
//! [`Clip::preprocess`] (from `preprocessor_config.json`) and the residual / embedding
//! methods. Layer numbering follows DESIGN.md: layer L is the residual stream *output* of
//! block L. Shapes: B images, T texts, S tokens, D width, E embedding width.

pub mod config;
pub mod demo_model;
pub mod dinov2;
pub mod encoder;
pub mod family;
pub mod fit;
pub mod model;
pub mod preprocess;
pub mod processor;
pub mod script;
pub mod siglip;
pub mod text;
pub mod text_ids;
pub mod tokenizer;
pub mod vision;
pub mod weights;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tch::{nn::VarStore, Device, Kind, Tensor};

pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
pub use dinov2::{Dinov2Config, Dinov2Model};
pub use family::{Family, TokenLayout, VisionInfo};
pub use model::ClipModel;
pub use preprocess::PreprocessConfig;
pub use script::ScriptedClip;
pub use text_ids::pad_ids;
pub use weights::ModelFormat;

/// Floating-point precision of a model's weights and activations.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::F16 => Kind::Half,
        }
    }
}

/// Which tokens of the residual stream to keep.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tokens {
    /// The class token (token 0).
    #[default]
    Cls,
    /// The patch tokens (after the class and register tokens).
    Patches,
    /// Every token.
    All,
    /// The register tokens (DINOv2 with registers: tokens 1..=R).
    Registers,
}

impl Tokens {
    /// The token positions kept out of `seq_len` in CLIP's layout (one class token, no
    /// registers: `registers` is empty). Other layouts: [`TokenLayout::range`].
    pub fn positions(self, seq_len: i64) -> std::ops::Range<i64> {
        match self {
            Tokens::Cls => 0..1,
            Tokens::Patches => 1..seq_len,
            Tokens::All => 0..seq_len,
            Tokens::Registers => 1..1,
        }
    }

    /// Keep the selected tokens of a residual [B, S, D] in CLIP's layout: [B, K, D].
    pub fn select(self, residual: &Tensor) -> Tensor {
        let s = residual.size()[1];
        let r = self.positions(s);
        residual.narrow(1, r.start, r.end - r.start)
    }

    pub fn name(self) -> &'static str {
        match self {
            Tokens::Cls => "cls",
            Tokens::Patches => "patches",
            Tokens::All => "all",
            Tokens::Registers => "registers",
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Overrides format detection.
    pub format: Option<ModelFormat>,
    pub device: Device,
    pub precision: Precision,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            format: None,
            device: Device::Cpu,
            precision: Precision::F32,
        }
    }
}

/// A loaded vision backbone of any [`Family`] (the name is historical: CLIP came first).
#[derive(Debug)]
pub enum Clip {
    /// A native CLIP model and its preprocessing.
    Native {
        vs: VarStore,
        model: Box<ClipModel>,
        prep: PreprocessConfig,
    },
    /// A CLIP model exported to TorchScript (preprocessed as CLIP at its image size).
    Script(ScriptedClip),
    /// SigLIP / SigLIP 2 ([`siglip::Siglip`]), its preprocessing, and its `tokenizer.json`
    /// when the directory has one.
    Siglip {
        model: Box<siglip::Siglip>,
        prep: PreprocessConfig,
        tokenizer: Option<Box<siglip::tokenizer::SiglipTokenizer>>,
    },
    /// A DINOv2 model (with or without registers): vision only.
    Dinov2 {
        vs: VarStore,
        model: Box<Dinov2Model>,
        prep: PreprocessConfig,
    },
}

impl Clip {
    /// Load the model at `path` (see [`weights::resolve`] for what a path may be). A
    /// Hugging Face directory's `config.json` `model_type` picks the family, and its
    /// `preprocessor_config.json` the preprocessing (the family default when absent).
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Clip> {
        let files = weights::resolve(path, options.format)?;
        let kind = options.precision.kind();
        if files.format == ModelFormat::Torchscript {
            return Ok(Clip::Script(ScriptedClip::load(
                &files.weights,
                options.device,
                kind,
            )?));
        }
        let family = match (files.format, &files.config) {
            (ModelFormat::Hf, Some(c)) => Family::from_config_file(c)?,
            _ => Family::Clip,
        };
        match (family, &files.config) {
            (Family::Clip, _) => {}
            (Family::Siglip | Family::Siglip2, Some(config)) => {
                return Clip::load_siglip(config, &files.weights, options)
            }
            (Family::Dinov2 | Family::Dinov2WithRegisters, _) => {
                let config_path = files.config.as_deref().expect("a Hugging Face model");
                return Clip::load_dinov2(config_path, family, &files.weights, options);
            }
            (other, _) => bail!(
                "{}: model_type {other} is recognised, but this build of saeclip cannot run {other} models yet",
                files.config.as_deref().unwrap_or(path).display()
            ),
        }
        let config = match (files.format, &files.config) {
            (ModelFormat::Hf, Some(c)) => ClipConfig::from_hf_file(c)?,
            (ModelFormat::OpenClip, Some(c)) => ClipConfig::from_open_clip_file(c)?,
            (_, _) => weights::infer_open_clip_config(&files.weights)?,
        };
        let size = config.vision.image_size;
        let prep = match (files.format, &files.config) {
            (ModelFormat::Hf, Some(c)) => {
                let dir = c.parent().unwrap_or(Path::new("."));
                let prep = processor::load(dir, Family::Clip, size as u32)?;
                ensure!(
                    prep.fixed_side() == Some(size as u32),
                    "{}: the images must become {size}x{size} squares (config.json vision_config.image_size), but resize {:?} and crop {:?} do not make them so",
                    dir.join(processor::PREPROCESSOR_CONFIG).display(),
                    prep.resize,
                    prep.crop
                );
                prep
            }
            _ => PreprocessConfig::with_size(size as u32),
        };
        Clip::from_weights(&config, &files, prep, options.device, kind)
    }

    /// A SigLIP directory: the model, its preprocessing (which must make `image_size`
    /// squares) and its tokenizer.json when present.
    fn load_siglip(config: &Path, weights: &Path, options: &LoadOptions) -> Result<Clip> {
        let model = siglip::Siglip::load_files(config, weights, options.device, options.precision)?;
        let c = model.config();
        let family = match c.family {
            siglip::SiglipFamily::Siglip => Family::Siglip,
            siglip::SiglipFamily::Siglip2 => Family::Siglip2,
        };
        let dir = config.parent().unwrap_or(Path::new("."));
        let size = c.vision.image_size;
        let prep = processor::load(dir, family, size as u32)?;
        ensure!(
            prep.fixed_side() == Some(size as u32),
            "{}: the images must become {size}x{size} squares (the model's input size), but resize {:?} and crop {:?} do not make them so",
            dir.join(processor::PREPROCESSOR_CONFIG).display(),
            prep.resize,
            prep.crop
        );
        let tokenizer = if dir.join(siglip::tokenizer::TOKENIZER_FILE).is_file() {
            Some(Box::new(siglip::tokenizer::SiglipTokenizer::from_dir(
                dir,
                c.family,
                c.text.max_position_embeddings as usize,
                c.text.pad_token_id,
            )?))
        } else {
            None
        };
        Ok(Clip::Siglip {
            model: Box::new(model),
            prep,
            tokenizer,
        })
    }

    fn load_dinov2(
        config_path: &Path,
        family: Family,
        weights_path: &Path,
        options: &LoadOptions,
    ) -> Result<Clip> {
        let config = Dinov2Config::from_hf_file(config_path, family)?;
        let dir = config_path.parent().unwrap_or(Path::new("."));
        let prep = processor::load(dir, family, config.image_size as u32)?;
        let side = prep.fixed_side().with_context(|| {
            format!(
                "{}: the images must become squares (a square crop_size, or a square size without a crop)",
                dir.join(processor::PREPROCESSOR_CONFIG).display()
            )
        })?;
        ensure!(
            i64::from(side) >= config.patch_size,
            "{}: the images become {side}x{side}, smaller than one {}-pixel patch",
            dir.join(processor::PREPROCESSOR_CONFIG).display(),
            config.patch_size
        );
        let mut vs = VarStore::new(options.device);
        let mut model = Dinov2Model::new(vs.root(), &config);
        weights::load_hf_prepared(&vs, weights_path, |tensors| {
            let mut renamed = std::collections::BTreeMap::new();
            for (name, t) in tensors {
                for (n, t) in dinov2::rename(&name, t)? {
                    renamed.insert(n, t);
                }
            }
            dinov2::join_swiglu(&mut renamed)?;
            Ok(renamed)
        })?;
        vs.freeze();
        if options.precision != Precision::F32 {
            vs.set_kind(options.precision.kind());
        }
        model.fuse();
        Ok(Clip::Dinov2 {
            vs,
            model: Box::new(model),
            prep,
        })
    }

    fn from_weights(
        config: &ClipConfig,
        files: &weights::ModelFiles,
        prep: PreprocessConfig,
        device: Device,
        kind: Kind,
    ) -> Result<Clip> {
        let mut vs = VarStore::new(device);
        let mut model = ClipModel::new(vs.root(), config);
        match files.format {
            ModelFormat::OpenClip => weights::load_open_clip(&vs, &files.weights)?,
            _ => weights::load_hf(&vs, &files.weights)?,
        }
        vs.freeze();
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        model.fuse();
        Ok(Clip::Native {
            vs,
            model: Box::new(model),
            prep,
        })
    }

    /// A model with the given dimensions and weights drawn from `seed` (tch's default
    /// initialisation). It is not a trained CLIP: useful for tests, demos and benchmarks.
    pub fn random(config: &ClipConfig, seed: i64, device: Device, precision: Precision) -> Clip {
        let (mut vs, mut model) = crate::rng::seeded(seed, || {
            let vs = VarStore::new(device);
            let model = ClipModel::new(vs.root(), config);
            (vs, model)
        });
        vs.freeze();
        if precision != Precision::F32 {
            vs.set_kind(precision.kind());
        }
        model.fuse();
        Clip::Native {
            vs,
            model: Box::new(model),
            prep: PreprocessConfig::with_size(config.vision.image_size as u32),
        }
    }

    /// Write a native model as a Hugging Face directory (`config.json` +
    /// `model.safetensors`) that [`Clip::load`] and transformers read.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        if let Clip::Siglip { model, .. } = self {
            return model.save_hf(dir);
        }
        let Clip::Native { vs, model, .. } = self else {
            anyhow::bail!("only a native CLIP model can be saved as a Hugging Face directory");
        };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // tch picks the file format from the extension, so the temporary name keeps it.
        let tmp = dir.join(format!(".model-{}.safetensors", std::process::id()));
        vs.save(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join("model.safetensors"))
            .with_context(|| format!("cannot write {}", dir.join("model.safetensors").display()))?;
        let config = serde_json::to_string_pretty(&model.config().to_hf_json())?;
        crate::disk::write_bytes_atomic(&dir.join("config.json"), config.as_bytes())
    }

    /// The CLIP configuration; `None` for other families.
    pub fn clip_config(&self) -> Option<&ClipConfig> {
        match self {
            Clip::Native { model, .. } => Some(model.config()),
            Clip::Script(s) => Some(s.config()),
            Clip::Siglip { .. } => None,
            Clip::Dinov2 { .. } => None,
        }
    }

    /// The model's family.
    pub fn family(&self) -> Family {
        self.info().family
    }

    /// Widths, depth, input size and token layout of the vision tower.
    pub fn info(&self) -> VisionInfo {
        let v = match self {
            Clip::Native { model, .. } => &model.config().vision,
            Clip::Script(s) => &s.config().vision,
            Clip::Siglip { model, .. } => {
                let c = model.config();
                return VisionInfo {
                    family: match c.family {
                        siglip::SiglipFamily::Siglip => Family::Siglip,
                        siglip::SiglipFamily::Siglip2 => Family::Siglip2,
                    },
                    hidden_size: c.vision.hidden_size,
                    num_hidden_layers: c.vision.num_hidden_layers,
                    image_size: c.vision.image_size,
                    patch_size: c.vision.patch_size,
                    layout: TokenLayout {
                        cls: false,
                        registers: 0,
                        patches: c.vision.num_patches(),
                    },
                };
            }
            Clip::Dinov2 { model, prep, .. } => {
                let c = model.config();
                let side = i64::from(prep.fixed_side().expect("checked when loaded"));
                let grid = side / c.patch_size;
                return VisionInfo {
                    family: c.family,
                    hidden_size: c.hidden_size,
                    num_hidden_layers: c.num_hidden_layers,
                    image_size: side,
                    patch_size: c.patch_size,
                    layout: TokenLayout {
                        cls: true,
                        registers: c.num_register_tokens,
                        patches: grid * grid,
                    },
                };
            }
        };
        VisionInfo {
            family: Family::Clip,
            hidden_size: v.hidden_size,
            num_hidden_layers: v.num_hidden_layers,
            image_size: v.image_size,
            patch_size: v.patch_size,
            layout: TokenLayout::clip(v.grid_size() * v.grid_size()),
        }
    }

    /// How images are prepared for this model (from `preprocessor_config.json` or the
    /// family default); the output is `info().image_size` square.
    pub fn preprocess(&self) -> PreprocessConfig {
        match self {
            Clip::Native { prep, .. } | Clip::Siglip { prep, .. } | Clip::Dinov2 { prep, .. } => {
                prep.clone()
            }
            Clip::Script(s) => PreprocessConfig::with_size(s.config().vision.image_size as u32),
        }
    }

    /// The positions of `tokens` in this model's residual stream, or an error naming the
    /// token kind the model lacks.
    pub fn token_range(&self, tokens: Tokens) -> Result<std::ops::Range<i64>> {
        let info = self.info();
        info.layout.range(tokens, info.family)
    }

    /// Whether the model has a text tower (zero-shot classification, text labels).
    pub fn has_text(&self) -> bool {
        self.family().has_text()
    }

    /// The text context length (tokens per text), or an error for a model without a text
    /// tower.
    pub fn text_context(&self) -> Result<usize> {
        let family = self.family();
        if let Clip::Siglip { model, .. } = self {
            return Ok(model.config().text.max_position_embeddings as usize);
        }
        match self.clip_config() {
            Some(c) if family.has_text() => Ok(c.text.max_position_embeddings as usize),
            _ => bail!("a {family} model has no text tower: it cannot embed texts"),
        }
    }

    /// Token ids of `texts` for the text tower, [T, context]: CLIP's BPE (truncated like
    /// open_clip, padded with 0), or SigLIP's tokenizer.json (padded to the context with the
    /// pad token). An empty text is an error.
    pub fn tokenize(&self, texts: &[String]) -> Result<Tensor> {
        let context = self.text_context()?;
        for (i, text) in texts.iter().enumerate() {
            ensure!(
                !text.trim().is_empty(),
                "text {} is empty: give a non-empty string",
                i + 1
            );
        }
        match self {
            Clip::Siglip {
                tokenizer: Some(t), ..
            } => t.tokenize(texts),
            Clip::Siglip {
                tokenizer: None, ..
            } => bail!(
                "this {} model directory has no {}: SigLIP texts are tokenized with the model's own tokenizer.json",
                self.family(),
                siglip::tokenizer::TOKENIZER_FILE
            ),
            _ => text_ids::tokenize_texts(texts, context),
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        match self {
            Clip::Native { vs, .. } | Clip::Dinov2 { vs, .. } => vs.device(),
            Clip::Script(_) => Device::Cpu,
            Clip::Siglip { model, .. } => model.device(),
        }
    }

    /// The learned temperature, log scale (0 for a model without a text tower).
    pub fn logit_scale(&self) -> f64 {
        match self {
            Clip::Native { model, .. } => model.logit_scale(),
            Clip::Script(s) => s.logit_scale(),
            Clip::Dinov2 { .. } => 0.0,
            Clip::Siglip { model, .. } => model.logit_scale(),
        }
    }

    /// The learned logit bias of SigLIP's sigmoid head; 0 for CLIP.
    pub fn logit_bias(&self) -> f64 {
        match self {
            Clip::Siglip { model, .. } => model.logit_bias(),
            _ => 0.0,
        }
    }

    /// The residual stream after block `layer`, [B, S, D]; later blocks are not computed.
    pub fn residual(&self, pixels: &Tensor, layer: usize) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.check_layer(layer)?;
        match self {
            Clip::Native { model, .. } => model.vision.residual(pixels, layer),
            Clip::Script(s) => s.residual(pixels, layer),
            Clip::Siglip { model, .. } => model.residual(pixels, layer),
            Clip::Dinov2 { model, .. } => Ok(model.residuals(pixels, &[layer])?.remove(0)),
        }
    }

    /// The residual streams after each of `layers`, in one pass for the native model.
    pub fn residuals(&self, pixels: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        let _guard = tch::no_grad_guard();
        for &l in layers {
            self.check_layer(l)?;
        }
        match self {
            Clip::Native { model, .. } => model.vision.residuals(pixels, layers),
            Clip::Script(s) => layers.iter().map(|&l| s.residual(pixels, l)).collect(),
            Clip::Siglip { model, .. } => model.residuals(pixels, layers),
            Clip::Dinov2 { model, .. } => model.residuals(pixels, layers),
        }
    }

    /// Image embeddings (projected, not normalised) from the residual after `layer`, [B, E].
    /// DINOv2: the class token after the final layernorm (transformers' `pooler_output`), [B, D].
    pub fn image_embeds_from(&self, residual: &Tensor, layer: usize) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.check_layer(layer)?;
        match self {
            Clip::Native { model, .. } => model.image_embeds_from(residual, layer),
            Clip::Script(s) => s.image_embeds_from(residual, layer),
            Clip::Siglip { model, .. } => model.image_embeds_from(residual, layer),
            Clip::Dinov2 { model, .. } => model.pooled_from(residual, layer),
        }
    }

    /// Image embeddings (projected, not normalised), [B, E].
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        match self {
            Clip::Native { model, .. } => model.image_embeds(pixels),
            Clip::Script(s) => s.image_embeds(pixels),
            Clip::Siglip { model, .. } => model.image_embeds(pixels),
            Clip::Dinov2 { model, .. } => model.pooled(pixels),
        }
    }

    /// Image embeddings when block `layer`'s output is replaced by `edit` of it (the SAE
    /// splice), [B, E].
    pub fn image_embeds_spliced(
        &self,
        pixels: &Tensor,
        layer: usize,
        edit: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let residual = self.residual(pixels, layer)?;
        let edited = edit(&residual)?;
        ensure!(
            edited.size() == residual.size(),
            "the splice returned shape {:?} for a residual of shape {:?}",
            edited.size(),
            residual.size()
        );
        self.image_embeds_from(&edited, layer)
    }

    /// Text embeddings (projected, not normalised) of padded token ids [T, S], [T, E].
    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        match self {
            Clip::Native { model, .. } => model.text_embeds(ids),
            Clip::Script(s) => s.text_embeds(ids),
            Clip::Siglip { model, .. } => model.text_embeds(ids),
            Clip::Dinov2 { model, .. } => bail!(
                "a {} model has no text tower: it cannot embed texts",
                model.config().family
            ),
        }
    }

    /// `exp(logit_scale) · cos(image, text)` (+ `logit_bias` for SigLIP), [B, T], in f32.
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Tensor {
        let image = normalize(&image_embeds.to_kind(Kind::Float));
        let text = normalize(&text_embeds.to_kind(Kind::Float));
        self.logits_from_cosines(&image.matmul(&text.tr()))
    }

    /// The logits of cosine similarities [B, T].
    pub fn logits_from_cosines(&self, cos: &Tensor) -> Tensor {
        cos * self.logit_scale().exp() + self.logit_bias()
    }

    /// Zero-shot probabilities of texts for images from their cosines [B, T]: CLIP's softmax
    /// over the texts, SigLIP's sigmoid of each pair (independent, not summing to one).
    pub fn probabilities_from_cosines(&self, cos: &Tensor) -> Tensor {
        let logits = self.logits_from_cosines(&cos.to_kind(Kind::Float));
        match self {
            Clip::Siglip { .. } => logits.sigmoid(),
            _ => logits.softmax(-1, Kind::Float),
        }
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        let n = self.info().num_hidden_layers;
        ensure!(
            layer < n,
            "layer {layer} does not exist: the vision tower has blocks 0..={}",
            n - 1
        );
        Ok(())
    }
}

/// L2-normalise the rows of a [N, E] tensor.
pub fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1], true)
}
