//! `evaluate`'s `probing` section: per class the best single latent (exact AUROC), sparse
//! probes on the k latents that differ most, and a dense probe on the SAE's input.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Value};
use tch::Tensor;

use super::{null_with, Accum, EvaluateOptions, Images, PROBE_KS};
use crate::eval::auroc::class_statistics;
use crate::eval::probe::{balanced_accuracy, Features, ProbeConfig};
use crate::interpret::sample_indices;

/// The `probing` section.
pub(super) fn probing(
    o: &EvaluateOptions,
    a: &Accum,
    images: &Images,
    classes: &[String],
    f: usize,
) -> Result<(Value, Option<String>)> {
    let kept = a.store.images();
    let labels = &images.label[..kept];
    let distinct: BTreeSet<i64> = labels.iter().copied().filter(|&l| l >= 0).collect();
    if distinct.len() < 2 {
        return Ok(null_with(if distinct.is_empty() {
            "the images have no labels (images.csv labels are all -1, or the dataset has none): probing needs labels"
        } else {
            "all labelled images have the same label: probing needs at least two classes"
        }));
    }
    let c = classes
        .len()
        .max(*distinct.last().expect("a class") as usize + 1);
    let top = *PROBE_KS.last().expect("a k");
    let t = Instant::now();
    let stats = class_statistics(&a.store, labels, c, f, top);
    crate::ui::debug(format!(
        "class statistics took {:.2}s",
        t.elapsed().as_secs_f64()
    ));
    let mut per_class = Vec::new();
    let mut sum = 0.0;
    for (ci, best) in stats.best.iter().enumerate() {
        if let Some(b) = best {
            sum += b.auroc;
            per_class.push(json!({
                "label": classes.get(ci).cloned().unwrap_or_else(|| format!("class {ci}")),
                "best_latent": b.latent,
                "auroc": b.auroc,
                "f1": b.f1,
                "images": stats.count[ci],
            }));
        }
    }
    let mean_best = sum / per_class.len().max(1) as f64;
    // Probe rows: the probe images held in the store, with a label; 80 % train.
    let rows: Vec<usize> = a
        .probe_x
        .keys()
        .copied()
        .filter(|&i| i < kept && labels[i] >= 0)
        .collect();
    // Bound the per-class feature block [C, rows, 16] to 16M values.
    let cap = (16_000_000 / (c * top)).max(200);
    let rows: Vec<usize> = if rows.len() > cap {
        sample_indices(&rows, Some(cap), o.seed ^ 0xca9).0
    } else {
        rows
    };
    let (sparse_probe, dense) = if rows.len() >= 10 {
        let r = rows.len() as i64;
        let y = Tensor::from_slice(&rows.iter().map(|&i| labels[i]).collect::<Vec<_>>());
        let (test_pos, _) = sample_indices(
            &(0..rows.len()).collect::<Vec<_>>(),
            Some(rows.len() / 5),
            o.seed ^ 0x7e57,
        );
        let test_set: HashSet<usize> = test_pos.iter().copied().collect();
        let train: Vec<i64> = (0..rows.len())
            .filter(|p| !test_set.contains(p))
            .map(|p| p as i64)
            .collect();
        let test: Vec<i64> = test_pos.iter().map(|&p| p as i64).collect();
        let (train, test) = (Tensor::from_slice(&train), Tensor::from_slice(&test));
        // Class c's features: the values of its top latents by mean difference.
        let mut slot: HashMap<u32, Vec<(usize, usize)>> = HashMap::new();
        for (ci, lat) in stats.by_mean_difference.iter().enumerate() {
            for (j, &l) in lat.iter().enumerate() {
                slot.entry(l as u32).or_default().push((ci, j));
            }
        }
        let mut x = vec![0f32; c * rows.len() * top];
        for (ri, &i) in rows.iter().enumerate() {
            for (l, v) in a.store.row(i) {
                if let Some(s) = slot.get(&l) {
                    for &(ci, j) in s {
                        x[(ci * rows.len() + ri) * top + j] = v;
                    }
                }
            }
        }
        let x = Tensor::from_slice(&x).view([c as i64, r, top as i64]);
        let cfg = ProbeConfig::default();
        let sparse: Vec<Value> = PROBE_KS
            .iter()
            .map(|&k| {
                let acc = balanced_accuracy(
                    Features::PerClass(x.narrow(2, 0, k as i64)),
                    &y,
                    c as i64,
                    &train,
                    &test,
                    cfg,
                );
                json!({"k": k, "accuracy": acc})
            })
            .collect();
        let dense_x = Tensor::stack(
            &rows
                .iter()
                .map(|i| a.probe_x[i].shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        let dense = balanced_accuracy(Features::Shared(dense_x), &y, c as i64, &train, &test, cfg);
        (json!(sparse), json!(dense))
    } else {
        (Value::Null, Value::Null)
    };
    Ok((
        json!({
            "images": kept,
            "classes": per_class.len(),
            "per_class": per_class,
            "mean_best_auroc": mean_best,
            "sparse_probe": sparse_probe,
            "dense_probe_accuracy": dense,
            "probe_images": rows.len(),
        }),
        None,
    ))
}
