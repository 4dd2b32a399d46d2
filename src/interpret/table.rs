//! `interpret`'s CSV: one row per reported feature, the original project's columns first.

use std::path::Path;

use anyhow::{Context, Result};

use super::{relative_path, FeatureReport};

/// The CSV's columns, in order.
pub const CSV_COLUMNS: [&str; 15] = [
    "feature_rank",
    "feature_id",
    "collage_path",
    "activation_mean",
    "activation_max",
    "num_images",
    "interpretation",
    "frequency",
    "top_images",
    "auto_label",
    "auto_label_score",
    "auto_label_2",
    "auto_label_3",
    "best_class",
    "best_class_auroc",
];

pub(super) fn write_csv(path: &Path, features: &[FeatureReport]) -> Result<()> {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::disk::write_atomic(path, |tmp| {
        let mut w = csv::Writer::from_path(tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        w.write_record(CSV_COLUMNS)?;
        for f in features {
            let label = |i: usize| {
                f.labels
                    .get(i)
                    .map(|l| l.phrase.clone())
                    .unwrap_or_default()
            };
            let top: Vec<String> = f.top.iter().map(|t| t.image_index.to_string()).collect();
            w.write_record([
                f.rank.to_string(),
                f.latent.to_string(),
                relative_path(&f.collage, base)?,
                format!("{:.6}", f.mean),
                format!("{:.6}", f.max),
                f.top.len().to_string(),
                String::new(),
                format!("{:.6}", f.frequency),
                top.join(";"),
                label(0),
                f.labels
                    .first()
                    .map(|l| format!("{:.6}", l.score))
                    .unwrap_or_default(),
                label(1),
                label(2),
                f.best_class
                    .as_ref()
                    .map(|b| b.0.clone())
                    .unwrap_or_default(),
                f.best_class
                    .as_ref()
                    .map(|b| format!("{:.6}", b.1))
                    .unwrap_or_default(),
            ])?;
        }
        w.flush()?;
        Ok(())
    })
}
