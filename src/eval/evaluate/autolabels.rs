//! `evaluate`'s `labels` section: auto labels of the top features and how well they
//! retrieve the features' own top images.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::{null_with, stack, Accum, Images, AT, DISTRACTORS, LABEL_TOP};
use crate::clip::preprocess::PreprocessConfig;
use crate::clip::{normalize, Clip};
use crate::data::{stream_pixels, Dataset};
use crate::interpret::labels;

/// The `labels` section of one SAE: for each of the `features` live latents with the
/// highest mean score that fired on at least 24 images, the best vocabulary phrase for the
/// direction (mean normalised embedding of its top images 13–24 minus the sample's mean),
/// then precision@12 of that phrase as a query over its top images 1–12 and 36 random
/// sample images.
#[allow(clippy::too_many_arguments)]
pub(super) fn label_section(
    a: &Accum,
    images: &Images,
    features: usize,
    clip: &Clip,
    dataset: &dyn Dataset,
    prep: &PreprocessConfig,
    batch: usize,
    vocab: &[String],
    vocab_embeds: &Tensor,
    mean_embed: &Tensor,
    distractors: &BTreeMap<usize, Tensor>,
) -> Result<(Value, Option<String>)> {
    let stats = a.top.as_ref().expect("top-k buffers with a model").finish();
    let (ranked, _) = stats.ranked(crate::interpret::RankBy::Mean);
    let chosen: Vec<_> = ranked
        .into_iter()
        .filter(|l| l.top.len() >= LABEL_TOP)
        .take(features)
        .collect();
    if chosen.is_empty() {
        return Ok(null_with(format!(
            "no latent fired on {LABEL_TOP} or more images of the sample"
        )));
    }
    // Dataset index of each needed image (top entries hold eval indices).
    let mut need: BTreeSet<usize> = BTreeSet::new();
    for l in &chosen {
        need.extend(l.top.iter().map(|e| images.index[e.image]));
    }
    let need: Vec<usize> = need.into_iter().collect();
    let mut embeds: HashMap<usize, Tensor> = HashMap::new();
    let size = clip.info().image_size;
    let device = a.fired.device();
    stream_pixels(dataset, &need, batch, prep, |decoded| {
        let (ids, pixels) = stack(decoded, size)?;
        if let Some(p) = pixels {
            let e = normalize(
                &clip
                    .image_embeds(&p.to_device(device))?
                    .to_kind(Kind::Float),
            )
            .to_device(Device::Cpu);
            for (r, i) in ids.into_iter().enumerate() {
                embeds.insert(i, e.get(r as i64));
            }
        }
        Ok(())
    })?;
    let mut rows = Vec::new();
    let mut directions = Vec::new();
    for l in &chosen {
        let ids: Vec<usize> = l.top.iter().map(|e| images.index[e.image]).collect();
        let label_set: Vec<Tensor> = ids[AT..LABEL_TOP]
            .iter()
            .filter_map(|i| embeds.get(i).map(Tensor::shallow_clone))
            .collect();
        ensure!(
            !label_set.is_empty(),
            "the top images of latent {} could not be read",
            l.latent
        );
        directions.push(Tensor::stack(&label_set, 0).mean_dim(0, false, Kind::Float) - mean_embed);
    }
    let labels = labels::rank_labels(&Tensor::stack(&directions, 0), vocab_embeds, vocab, 1);
    let mut precisions = Vec::new();
    for (l, label) in chosen.iter().zip(labels) {
        let Some(label) = label.into_iter().next() else {
            continue;
        };
        let ids: Vec<usize> = l.top.iter().map(|e| images.index[e.image]).collect();
        let targets: HashSet<usize> = ids[..AT].iter().copied().collect();
        let excluded: HashSet<usize> = ids.iter().copied().collect();
        let mut pool: Vec<(usize, Tensor)> = ids[..AT]
            .iter()
            .filter_map(|i| embeds.get(i).map(|e| (*i, e.shallow_clone())))
            .collect();
        pool.extend(
            distractors
                .iter()
                .filter(|(i, _)| !excluded.contains(i))
                .map(|(i, e)| (*i, e.shallow_clone())),
        );
        let phrase = vocab
            .iter()
            .position(|p| *p == label.phrase)
            .expect("a vocabulary phrase");
        let q = vocab_embeds.get(phrase as i64).to_kind(Kind::Float);
        let es = Tensor::stack(
            &pool.iter().map(|p| p.1.shallow_clone()).collect::<Vec<_>>(),
            0,
        );
        let sims = Vec::<f32>::try_from(es.matmul(&q))?;
        let mut order: Vec<usize> = (0..pool.len()).collect();
        order.sort_by(|&x, &y| sims[y].total_cmp(&sims[x]).then(x.cmp(&y)));
        let found = order
            .iter()
            .take(AT)
            .filter(|&&r| targets.contains(&pool[r].0))
            .count();
        let p = found as f64 / AT as f64;
        precisions.push(p);
        rows.push(json!({"latent": l.latent, "label": label.phrase, "label_score": label.score, "precision_at_12": p, "pool": pool.len()}));
    }
    let mean = precisions.iter().sum::<f64>() / precisions.len().max(1) as f64;
    let chance = AT as f64 / (AT + DISTRACTORS) as f64;
    Ok((
        json!({"features": rows, "mean_precision_at_12": mean, "chance": chance}),
        None,
    ))
}
