//! The planted "red" feature shared by tests/interpret.rs and tests/interpret_fitted.rs:
//! the procedural dataset, its pixels, the seeded sample, and a hand-built ReLU SAE whose
//! latent 0 fires on red images.

use std::path::{Path, PathBuf};

use saeclip::clip::preprocess::{preprocess, PreprocessConfig};
use saeclip::clip::{Clip, Tokens};
use saeclip::data::cache::file_sha256;
use saeclip::data::procedural::Colour;
use saeclip::data::{self, Dataset, DatasetSpec, ProceduralFactors, Split};
use saeclip::interpret::{sample_indices, InterpretOptions};
use saeclip::sae::{Architecture, CheckpointMeta, Sae, SaeConfig};
use tch::{Kind, Tensor};

pub const DATASET: &str = "procedural:0";

pub fn procedural(split: Split) -> Box<dyn Dataset> {
    data::open(&DATASET.parse::<DatasetSpec>().unwrap(), split).unwrap()
}

pub fn pixels_sized(ds: &dyn Dataset, indices: &[usize], size: i64) -> Tensor {
    let cfg = PreprocessConfig::with_size(size as u32);
    let flat: Vec<f32> = indices
        .iter()
        .flat_map(|&i| preprocess(&ds.image(i).unwrap(), &cfg))
        .collect();
    Tensor::from_slice(&flat).view([indices.len() as i64, 3, size, size])
}

pub fn is_red(ds: &dyn Dataset, index: usize) -> bool {
    ProceduralFactors::from_source(&ds.item(index).source)
        .unwrap()
        .colour
        == Colour::Red
}

pub fn meta_for(model: &Path, layer: usize, tokens: Tokens) -> CheckpointMeta {
    let sha = file_sha256(&model.join("model.safetensors")).unwrap();
    CheckpointMeta {
        clip: serde_json::json!({"model": model, "sha256": sha, "layer": layer, "tokens": tokens}),
        ..Default::default()
    }
}

pub fn planted_sae_on(clip: &Clip, layer: usize, sample: &[usize]) -> Sae {
    let ds = procedural(Split::Train);
    let size = clip.info().image_size;
    let x = clip
        .residual(&pixels_sized(ds.as_ref(), sample, size), layer)
        .unwrap()
        .select(1, 0); // N, D
    let red: Vec<i64> = sample
        .iter()
        .enumerate()
        .filter(|(_, &i)| is_red(ds.as_ref(), i))
        .map(|(r, _)| r as i64)
        .collect();
    assert!(red.len() >= 12, "the sample has {} red images", red.len());
    let mean = x.mean_dim(0, false, Kind::Float);
    let red_mean = x
        .index_select(0, &Tensor::from_slice(&red))
        .mean_dim(0, false, Kind::Float);
    // The mean difference, whitened by the sample's covariance (plus a ridge) so that the
    // planted direction separates red from orange with random weights too.
    let centered = &x - &mean;
    let cov = centered.tr().matmul(&centered) / sample.len() as f64;
    let ridge = Tensor::eye(cov.size()[0], (Kind::Float, tch::Device::Cpu))
        * (cov.diagonal(0, 0, 1).mean(Kind::Float) * 1e-2);
    let v = Tensor::linalg_solve(&(cov + ridge), &(&red_mean - &mean).unsqueeze(1), true)
        .squeeze_dim(1);
    let v = &v / v.norm();
    let proj = (&x - &mean).matmul(&v);
    let red_mask = Tensor::zeros([sample.len() as i64], (Kind::Bool, tch::Device::Cpu)).index_fill(
        0,
        &Tensor::from_slice(&red),
        1,
    );
    let red_mean_proj = proj
        .masked_select(&red_mask)
        .mean(Kind::Float)
        .double_value(&[]);
    let other_mean_proj = proj
        .masked_select(&red_mask.logical_not())
        .mean(Kind::Float)
        .double_value(&[]);
    let threshold = (red_mean_proj + other_mean_proj) / 2.0;
    let (d, f) = (x.size()[1], 8);
    let w_dec = saeclip::rng::seeded(5, || Tensor::randn([f, d], (Kind::Float, tch::Device::Cpu)));
    let w_dec = &w_dec / w_dec.norm_scalaropt_dim(2.0, [1], true);
    let w_dec = w_dec.index_copy(0, &Tensor::from_slice(&[0i64]), &v.unsqueeze(0));
    let w_enc = w_dec.tr().contiguous();
    let mut b_enc = vec![-1e6f32; f as usize];
    b_enc[0] = -threshold as f32;
    b_enc[1] = 1.0;
    let config = SaeConfig {
        architecture: Architecture::Relu,
        d_in: d,
        d_sae: f,
        k: 1,
    };
    Sae::from_tensors(
        config,
        &w_enc,
        &Tensor::from_slice(&b_enc),
        &w_dec,
        &mean,
        1.0,
        None,
    )
    .unwrap()
}

pub const SAMPLE: usize = 144;

pub const SEED: u64 = 11;

pub fn the_sample() -> Vec<usize> {
    let all: Vec<usize> = (0..procedural(Split::Train).len()).collect();
    sample_indices(&all, Some(SAMPLE), SEED).0
}

/// `interpret`'s options for a planted-style run: the procedural dataset's seeded sample,
/// batches of 16, `top_k` images per feature, labels from the phrases of `vocab`, outputs
/// under `out`.
pub fn sample_options(
    model: &Path,
    sae: &Path,
    out: &Path,
    top_k: usize,
    vocab: &Path,
) -> InterpretOptions {
    let mut o = InterpretOptions::new(
        model.to_path_buf(),
        sae.to_path_buf(),
        DATASET.parse().unwrap(),
        out.join("features.csv"),
        out.join("collages"),
    );
    o.batch_size = 16;
    o.top_k = top_k;
    o.sample_size = Some(SAMPLE);
    o.seed = SEED;
    o.vocab = Some(PathBuf::from(vocab));
    o
}
