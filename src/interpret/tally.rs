//! Per-latent ground truth of `interpret`: each latent's AUROC-best class over the scored
//! images, and for procedural images the factor value it detects best, which the labels'
//! factor precision is measured against (the same rule as `evaluate`'s).

use anyhow::Result;
use tch::Tensor;

use crate::data::Dataset;
use crate::eval::auroc::{class_statistics, sparse_rows, SparseScores};
use crate::eval::factors::{self, BestValues};

/// Most sparse score entries held for the per-latent best class (as `evaluate`'s default
/// `--max-entries`); images beyond it are left out of the AUROC, with a note.
pub(super) const MAX_CLASS_ENTRIES: usize = 32 << 20;

/// Per-image sparse scores and classes of the scored images, for each latent's AUROC-best
/// class ([`class_statistics`]). Disabled (holds nothing) for a dataset without labels.
pub(super) struct ClassTally {
    enabled: bool,
    pub(super) store: SparseScores,
    classes: Vec<i64>,
    /// Dataset index of each stored image.
    ids: Vec<usize>,
    pub(super) dropped: usize,
}

impl ClassTally {
    pub(super) fn new(dataset: &dyn Dataset) -> ClassTally {
        ClassTally {
            enabled: !dataset.classes().is_empty(),
            store: SparseScores::new(),
            classes: Vec::new(),
            ids: Vec::new(),
            dropped: 0,
        }
    }

    pub(super) fn add(
        &mut self,
        dataset: &dyn Dataset,
        scores: &Tensor,
        ids: &[usize],
    ) -> Result<()> {
        if !self.enabled || ids.is_empty() {
            return Ok(());
        }
        let n_classes = dataset.classes().len() as i64;
        for (entries, &id) in sparse_rows(scores)?.into_iter().zip(ids) {
            if self.dropped == 0 && self.store.entries() + entries.len() <= MAX_CLASS_ENTRIES {
                self.store.push(entries);
                self.ids.push(id);
                let label = dataset.item(id).label;
                self.classes.push(if (0..n_classes).contains(&label) {
                    label
                } else {
                    -1
                });
            } else {
                self.dropped += 1;
            }
        }
        Ok(())
    }

    /// Per latent, its best class (name, AUROC).
    pub(super) fn best_classes(
        &self,
        dataset: &dyn Dataset,
        d_sae: usize,
    ) -> Vec<Option<(String, f64)>> {
        if !self.enabled {
            return vec![None; d_sae];
        }
        let names = dataset.classes();
        class_statistics(&self.store, &self.classes, names.len(), d_sae, 0)
            .best_class
            .into_iter()
            .map(|b| b.map(|(c, auroc)| (names[c].clone(), auroc)))
            .collect()
    }

    /// Per latent, the procedural factor value it detects best by AUROC (all None unless
    /// every stored image is procedural), as `evaluate`'s factors section finds it.
    pub(super) fn best_values(&self, dataset: &dyn Dataset, d_sae: usize) -> BestValues {
        let factors: Vec<_> = self
            .ids
            .iter()
            .map(|&i| factors::of_source(&dataset.item(i).source))
            .collect();
        factors::section(&self.store, &factors, d_sae).2
    }
}

/// The labels' factor precision over `features`: (features whose first label names the
/// factor value they detect best, features with a label and a best value).
pub(super) fn factor_precision(
    features: &[super::FeatureReport],
    best: &BestValues,
) -> Option<(usize, usize)> {
    let mut named = 0;
    let mut scored = 0;
    for f in features {
        if let (Some(label), Some(Some((_, value, _)))) = (f.labels.first(), best.get(f.latent)) {
            scored += 1;
            named += usize::from(factors::names_value(&label.phrase, value));
        }
    }
    (scored > 0).then_some((named, scored))
}
