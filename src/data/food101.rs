//! Food-101 in its official layout (<https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/>):
//!
//! ```text
//! food-101/images/<class>/<id>.jpg
//! food-101/meta/classes.txt    one class a line (apple_pie, ...)
//! food-101/meta/train.txt      one image a line: apple_pie/1005649
//! food-101/meta/test.txt
//! ```
//!
//! Opening reads only the meta files (no stat of the 101,000 images); a listed image that
//! is missing or broken is an `Err` from [`Dataset::image`] at its index.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;

use super::{fetch_hint, listed_accessors, listed_entry, Dataset, DatasetSpec, Item, Split};
use crate::clip::preprocess::{load_rgb, PreprocessError};

/// The folder the official archive unpacks to.
const FOLDER: &str = "food-101";
const LAYOUT: &str = "the official Food-101 layout: food-101/ holding images/<class>/<id>.jpg \
                      and meta/classes.txt, meta/train.txt, meta/test.txt, either inside DIR \
                      or as DIR itself";

/// A Food-101 split.
pub struct Food101 {
    spec: DatasetSpec,
    split: Split,
    /// `<root>/images`.
    images: PathBuf,
    classes: Vec<String>,
    /// Source (path below `images/`) and label, in the meta file's order.
    entries: Vec<(String, u32)>,
}

impl Food101 {
    /// Open `food101:DIR`: read `meta/classes.txt` and the split's list.
    pub fn open(spec: &DatasetSpec, split: Split) -> Result<Self> {
        let dir = Path::new(&spec.path);
        if !dir.is_dir() {
            bail!(
                "{spec}: no directory {}; expected {LAYOUT}; {}",
                dir.display(),
                fetch_hint(spec)
            );
        }
        let nested = dir.join(FOLDER);
        let root = if nested.is_dir() {
            nested
        } else {
            dir.to_path_buf()
        };
        let read = |name: &str| -> Result<(PathBuf, String)> {
            let path = root.join("meta").join(name);
            if !path.is_file() {
                bail!(
                    "{spec}: missing {}; expected {LAYOUT}; {}",
                    path.display(),
                    fetch_hint(spec)
                );
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{spec}: cannot read {}", path.display()))?;
            Ok((path, text))
        };

        let (classes_path, text) = read("classes.txt")?;
        let classes: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if classes.is_empty() {
            bail!("{spec}: {} lists no classes", classes_path.display());
        }
        let label_of: HashMap<&str, u32> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u32))
            .collect();

        let (list_path, text) = read(&format!("{split}.txt"))?;
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: String| {
                anyhow::anyhow!("{spec}: {} line {}: {why}", list_path.display(), n + 1)
            };
            let (class, _id) = line
                .split_once('/')
                .ok_or_else(|| bad(format!("`{line}` is not CLASS/ID")))?;
            let label = *label_of
                .get(class)
                .ok_or_else(|| bad(format!("class `{class}` is not in classes.txt")))?;
            entries.push((format!("{line}.jpg"), label));
        }
        if entries.is_empty() {
            bail!("{spec}: {} lists no images", list_path.display());
        }
        Ok(Food101 {
            spec: spec.clone(),
            split,
            images: root.join("images"),
            classes,
            entries,
        })
    }

    fn entry(&self, index: usize) -> &(String, u32) {
        listed_entry(&self.spec, &self.entries, index)
    }
}

impl Dataset for Food101 {
    listed_accessors!();

    fn item(&self, index: usize) -> Item {
        let (source, label) = self.entry(index);
        Item {
            index,
            source: source.clone(),
            label: i64::from(*label),
        }
    }
    fn image(&self, index: usize) -> Result<RgbImage, PreprocessError> {
        load_rgb(&self.images.join(&self.entry(index).0))
    }
}
