//! Streaming per-latent statistics: a bounded top-k of images per latent, and the mean,
//! maximum and firing frequency of each latent over a sample.
//!
//! An image's score for latent j is its activation on the CLS token (`cls` SAEs) or its
//! largest activation over the image's tokens (`patches`/`all` SAEs), whose token is kept
//! as the arg-max patch. Memory is O(F·k) whatever the sample size: each batch's scores
//! [B, F] are merged into the [F, k] buffers with one `topk` over [F, k + B].
//! Shapes: B images, R rows (tokens of the batch), F latents, D width, k kept images.

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

use crate::sae::Sae;

/// The scores of a batch of images.
#[derive(Debug)]
pub struct BatchScores {
    /// Score of each image for each latent, ≥ 0. [B, F] f32
    pub scores: Tensor,
    /// Token of the score (the arg-max token; −1 where the latent did not fire). [B, F] i64
    pub token: Tensor,
}

/// Encode rows `x` [R, D] with the SAE's inference selection and reduce them per image:
/// `row_image` [R] says which of the `batch` images (0..batch) each row belongs to,
/// `row_token` [R] its token index.
pub fn score_rows(
    sae: &Sae,
    x: &Tensor,
    row_image: &Tensor,
    row_token: &Tensor,
    batch: i64,
) -> BatchScores {
    let _guard = tch::no_grad_guard();
    let f = sae.config.d_sae;
    let device = sae.device();
    let x = x.to_device(device);
    let codes = sae.encode_sparse(&x, sae.inference_selection());
    let row_image = row_image.to_device(device);
    let row_token = row_token.to_device(device);
    let image = row_image.index_select(0, &codes.rows);
    let token = row_token.index_select(0, &codes.rows);
    let flat = &image * f + &codes.latents;
    let values = codes.values.to_kind(Kind::Float);
    // scatter_reduce (include_self) rather than index_reduce: the same reduction along a
    // 1-d index, without libtorch's "index_reduce() is in beta" warning on stderr.
    let scores = Tensor::zeros([batch * f], (Kind::Float, device))
        .internal_scatter_reduce(0, &flat, &values, "amax", true);
    // The first token (lowest index) reaching the maximum of a fired latent.
    let at_max = values.eq_tensor(&scores.index_select(0, &flat)) * values.gt(0.0);
    let at_max = at_max.to_kind(Kind::Bool);
    let big = i64::MAX / 4;
    let tok = Tensor::full([batch * f], big, (Kind::Int64, device)).internal_scatter_reduce(
        0,
        &flat.masked_select(&at_max),
        &token.masked_select(&at_max),
        "amin",
        true,
    );
    let tok = tok.masked_fill(&tok.eq(big), -1);
    BatchScores {
        scores: scores.view([batch, f]),
        token: tok.view([batch, f]),
    }
}

/// One latent's entry in the top list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopEntry {
    /// Index of the image in the dataset.
    pub image: usize,
    /// Its score (activation; max over tokens for patch SAEs).
    pub score: f32,
    /// The arg-max token (0 = CLS).
    pub token: i64,
}

/// Bounded top-k images per latent and running statistics, merged batch by batch.
#[derive(Debug)]
pub struct TopK {
    k: i64,
    d_sae: i64,
    /// [F, k] f32, −∞ in empty slots.
    values: Tensor,
    /// [F, k] i64 dataset image index, −1 in empty slots.
    images: Tensor,
    /// [F, k] i64 arg-max token.
    tokens: Tensor,
    /// Σ score over images. [F] f64
    sum: Tensor,
    /// Largest score. [F] f32
    max: Tensor,
    /// Images where the latent fired (score > 0). [F] i64
    fired: Tensor,
    /// Images seen.
    images_seen: usize,
}

impl TopK {
    pub fn new(d_sae: i64, k: usize, device: Device) -> TopK {
        let k = k.max(1) as i64;
        TopK {
            k,
            d_sae,
            values: Tensor::full([d_sae, k], f64::NEG_INFINITY, (Kind::Float, device)),
            images: Tensor::full([d_sae, k], -1, (Kind::Int64, device)),
            tokens: Tensor::full([d_sae, k], -1, (Kind::Int64, device)),
            sum: Tensor::zeros([d_sae], (Kind::Double, device)),
            max: Tensor::zeros([d_sae], (Kind::Float, device)),
            fired: Tensor::zeros([d_sae], (Kind::Int64, device)),
            images_seen: 0,
        }
    }

    /// Merge the scores of a batch whose images have dataset indices `images` (B of them).
    pub fn update(&mut self, batch: &BatchScores, images: &[usize]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let b = images.len() as i64;
        ensure!(
            batch.scores.size() == [b, self.d_sae],
            "scores have shape {:?}, expected [{b}, {}]",
            batch.scores.size(),
            self.d_sae
        );
        if b == 0 {
            return Ok(());
        }
        let device = self.values.device();
        let scores = batch.scores.to_device(device).to_kind(Kind::Float);
        let tokens = batch.token.to_device(device);
        self.sum += scores.sum_dim_intlist(0, false, Kind::Double);
        self.max = self.max.maximum(&scores.amax(0, false));
        self.fired += scores.gt(0.0).sum_dim_intlist(0, false, Kind::Int64);
        let ids: Vec<i64> = images.iter().map(|&i| i as i64).collect();
        let ids = Tensor::from_slice(&ids)
            .to_device(device)
            .unsqueeze(0)
            .expand([self.d_sae, b], false);
        let cand_values = Tensor::cat(&[&self.values, &scores.tr()], 1); // F, k+B
        let cand_images = Tensor::cat(&[&self.images, &ids], 1);
        let cand_tokens = Tensor::cat(&[&self.tokens, &tokens.tr()], 1);
        let (values, pos) = cand_values.topk(self.k, 1, true, true); // F, k
        self.values = values;
        self.images = cand_images.gather(1, &pos, false);
        self.tokens = cand_tokens.gather(1, &pos, false);
        self.images_seen += images.len();
        Ok(())
    }

    /// Number of elements held in the per-latent buffers (constant: F·(3k + 3)).
    pub fn buffer_numel(&self) -> usize {
        [
            &self.values,
            &self.images,
            &self.tokens,
            &self.sum,
            &self.max,
            &self.fired,
        ]
        .iter()
        .map(|t| t.numel())
        .sum()
    }

    pub fn images_seen(&self) -> usize {
        self.images_seen
    }

    /// The statistics, read back to the CPU.
    pub fn finish(&self) -> Stats {
        let n = self.images_seen.max(1) as f64;
        let cpu = |t: &Tensor| t.to_device(Device::Cpu);
        let sum = Vec::<f64>::try_from(cpu(&self.sum)).unwrap_or_default();
        let max = Vec::<f32>::try_from(cpu(&self.max)).unwrap_or_default();
        let fired = Vec::<i64>::try_from(cpu(&self.fired)).unwrap_or_default();
        let values = Vec::<f32>::try_from(cpu(&self.values.reshape([-1]))).unwrap_or_default();
        let images = Vec::<i64>::try_from(cpu(&self.images.reshape([-1]))).unwrap_or_default();
        let tokens = Vec::<i64>::try_from(cpu(&self.tokens.reshape([-1]))).unwrap_or_default();
        let k = self.k as usize;
        let latents = (0..self.d_sae as usize)
            .map(|j| {
                let top = (0..k)
                    .map(|r| j * k + r)
                    .filter(|&p| values[p] > 0.0 && images[p] >= 0)
                    .map(|p| TopEntry {
                        image: images[p] as usize,
                        score: values[p],
                        token: tokens[p],
                    })
                    .collect();
                LatentStats {
                    latent: j,
                    mean: sum[j] / n,
                    max: max[j] as f64,
                    fired: fired[j] as usize,
                    frequency: fired[j] as f64 / n,
                    top,
                }
            })
            .collect();
        Stats {
            images: self.images_seen,
            latents,
        }
    }
}

/// What the sample says about one latent.
#[derive(Debug, Clone)]
pub struct LatentStats {
    pub latent: usize,
    /// Mean score over all images of the sample (0 where it did not fire).
    pub mean: f64,
    /// Largest score.
    pub max: f64,
    /// Images where it fired.
    pub fired: usize,
    /// `fired` / images.
    pub frequency: f64,
    /// Highest-scoring images, best first (only images where it fired).
    pub top: Vec<TopEntry>,
}

impl LatentStats {
    /// Never fired on the sample.
    pub fn is_dead(&self) -> bool {
        self.fired == 0
    }

    /// Mean score over the images where it fired (a typical activation).
    pub fn mean_when_firing(&self) -> f64 {
        if self.fired == 0 {
            0.0
        } else {
            self.mean / self.frequency
        }
    }
}

/// Statistics of every latent over a sample.
#[derive(Debug, Clone)]
pub struct Stats {
    pub images: usize,
    pub latents: Vec<LatentStats>,
}

/// How features are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RankBy {
    /// Mean activation over the sample.
    #[default]
    Mean,
    /// Largest activation.
    Max,
    /// Firing frequency.
    Freq,
}

impl Stats {
    /// Live latents ordered by `rank_by` (descending, ties by latent id), and the number of
    /// dead ones.
    pub fn ranked(&self, rank_by: RankBy) -> (Vec<&LatentStats>, usize) {
        let mut live: Vec<&LatentStats> = self.latents.iter().filter(|l| !l.is_dead()).collect();
        let dead = self.latents.len() - live.len();
        let key = |l: &LatentStats| match rank_by {
            RankBy::Mean => l.mean,
            RankBy::Max => l.max,
            RankBy::Freq => l.frequency,
        };
        live.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.latent.cmp(&b.latent)));
        (live, dead)
    }
}
