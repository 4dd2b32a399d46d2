//! Fit CLIP's two towers to labelled images with the zero-shot objective, from scratch.
//!
//! This is not CLIP pre-training (no captions, no web data, no scale): it exists so that
//! tests and demos on this project's procedural images can use a model whose text
//! embeddings mean something, e.g. that the direction of red images lies near the text
//! "a photo of a red". Each [`Task`] is one labelling of the images (colour, shape, …) with
//! one prompt per class; the loss is, summed over tasks, the cross-entropy of the
//! images' cosine similarities with the task's prompts (times a fixed temperature), so
//! both towers learn: the image tower to separate the classes, the text tower to point each
//! prompt at its class.

use anyhow::{ensure, Context, Result};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use super::{normalize, Clip, ClipConfig, ClipModel};
use crate::clip::text_ids::tokenize_texts;

/// One labelling of the training images.
#[derive(Debug, Clone)]
pub struct Task {
    /// One prompt per class, e.g. "a photo of a red".
    pub prompts: Vec<String>,
    /// The class of each training image, an index into `prompts`.
    pub labels: Vec<i64>,
}

/// How long and how fast to fit.
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    pub steps: usize,
    pub batch_size: i64,
    /// Adam's learning rate.
    pub lr: f64,
    /// Multiplies the cosine similarities (CLIP's exp(logit_scale), 1/0.07 at its init).
    pub temperature: f64,
    /// Fixes the initial weights and the batches (through tch's generator, which is global
    /// to the process: other threads drawing from it meanwhile change the fit).
    pub seed: i64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            steps: 300,
            batch_size: 64,
            lr: 1e-3,
            temperature: 1.0 / 0.07,
            seed: 0,
        }
    }
}

/// A fitted model and the loss of every step.
#[derive(Debug)]
pub struct Fitted {
    pub clip: Clip,
    pub losses: Vec<f64>,
}

/// Fit a model of `config`, initialised from `options.seed`, to `pixels` [N, 3, P, P]
/// (preprocessed for `config`'s image size) under every task. CPU, f32.
pub fn fit_zero_shot(
    config: &ClipConfig,
    pixels: &Tensor,
    tasks: &[Task],
    options: &FitOptions,
) -> Result<Fitted> {
    let n = pixels.size().first().copied().unwrap_or(0);
    ensure!(n > 0, "no training images");
    ensure!(!tasks.is_empty(), "no task to fit");
    for (i, t) in tasks.iter().enumerate() {
        ensure!(
            t.labels.len() as i64 == n,
            "task {i} labels {} images, there are {n}",
            t.labels.len()
        );
        ensure!(
            t.labels
                .iter()
                .all(|&l| 0 <= l && (l as usize) < t.prompts.len()),
            "task {i} has a label outside its {} prompts",
            t.prompts.len()
        );
    }
    let context = config.text.max_position_embeddings as usize;
    let tasks: Vec<(Tensor, Tensor)> = tasks
        .iter()
        .map(|t| {
            Ok((
                tokenize_texts(&t.prompts, context)?,
                Tensor::from_slice(&t.labels),
            ))
        })
        .collect::<Result<_>>()?;

    // Initialisation and batch draws share one seeded section: same seed, same fit.
    let (mut vs, mut model, losses) = crate::rng::seeded(options.seed, || -> Result<_> {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = ClipModel::new(vs.root(), config);
        let mut adam = nn::Adam::default()
            .build(&vs, options.lr)
            .context("cannot build the optimizer")?;
        let mut losses = Vec::with_capacity(options.steps);
        for _ in 0..options.steps {
            let batch = Tensor::randint(n, [options.batch_size.min(n)], (Kind::Int64, Device::Cpu));
            let images = normalize(&model.image_embeds(&pixels.index_select(0, &batch))?);
            let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
            for (ids, labels) in &tasks {
                let texts = normalize(&model.text_embeds(ids)?);
                let logits = images.matmul(&texts.tr()) * options.temperature;
                loss += logits.cross_entropy_for_logits(&labels.index_select(0, &batch));
            }
            let value = loss.double_value(&[]);
            ensure!(value.is_finite(), "the loss diverged ({value})");
            adam.backward_step(&loss);
            losses.push(value);
        }
        Ok((vs, model, losses))
    })?;
    vs.freeze();
    model.fuse();
    Ok(Fitted {
        clip: Clip::Native {
            prep: super::PreprocessConfig::with_size(model.config().vision.image_size as u32),
            vs,
            model: Box::new(model),
        },
        losses,
    })
}
