//! Labelled image datasets behind one trait, [`Dataset`]: each yields, for a stable index,
//! an [`Item`] (index, source, label) and the decoded RGB image.
//!
//! A dataset is named `KIND:PATH` on the command line ([`DatasetSpec`]) and opened for a
//! [`Split`] with [`open`]; `--limit N` keeps the first N items ([`limited`]).
//!
//! # Kinds, layouts and orders
//!
//! The order of every kind is stable: the same files give the same index for the same
//! image, on any machine, and a file that cannot be decoded keeps its index (its
//! [`Dataset::image`] is an `Err`), so no other image shifts.
//!
//! - `cifar10:DIR`: the official binary release, `DIR/cifar-10-batches-bin/` or that folder
//!   itself. Train = `data_batch_1.bin` … `data_batch_5.bin`, concatenated in that order,
//!   record order within each file; test = `test_batch.bin`. Class names: the non-empty
//!   lines of `batches.meta.txt`. Source `data_batch_2.bin:17` (record 17, counted from 0,
//!   of that file).
//! - `cifar100:DIR`: `DIR/cifar-100-binary/` or that folder itself; `train.bin` /
//!   `test.bin` in record order; label = the fine label, names from
//!   `fine_label_names.txt`. Source `train.bin:17`.
//! - `food101:DIR`: `DIR/food-101/` or that folder itself, with `images/<class>/<id>.jpg`
//!   and `meta/{classes,train,test}.txt`. Order = the lines of `meta/train.txt` or
//!   `meta/test.txt`; label = the line number (from 0) of the class in `meta/classes.txt`;
//!   source = the path below `images/`, e.g. `apple_pie/1005649.jpg`.
//! - `folder:DIR`: one subfolder per class. If `DIR/train` and `DIR/test` both exist,
//!   `--split` picks one of them and the classes are the union of the subfolders of both
//!   (so a label means the same class in either split); otherwise the whole `DIR` is used
//!   for either split. Classes sorted by name (byte order), files sorted by path within a
//!   class (subfolders of a class folder are walked too), class-major order; hidden entries
//!   (names starting with `.`) and files directly in `DIR` are skipped. Every file counts,
//!   images or not. Source = the path below the split folder, e.g. `cat/001.jpg`.
//! - `imagenet:DIR`: ImageNet-1k or an ImageNet-style subset (see [`imagenet`]):
//!   `DIR/train/<wnid>/…`, `DIR/val/<wnid>/…` or a flat `DIR/val/` with the devkit's ground
//!   truth (or `LOC_val_solution.csv`), or `DIR/<wnid>/…` for either split. Classes = the
//!   WordNet ids of the class folders, sorted; names = CLIP's ImageNet class names. Order =
//!   torchvision's `ImageFolder` order (a flat `val/` sorted the same way, by class then
//!   file name; images without a label last, label -1, their image an `Err`). Source = the
//!   path below DIR, e.g. `train/n01440764/n01440764_10026.JPEG`.
//! - `procedural:SEED`: generated images (see [`procedural`]), 4,800 train and 960 test;
//!   index `i` has class `i mod 48` and texture `(i / 48) mod 4`, so any prefix is
//!   balanced.
//! - `ade20k:DIR`: ADE20K's SceneParsing release (`ADEChallengeData2016/`, see [`ade20k`]):
//!   `images/training` (train) or `images/validation` (test) in file-name order, with
//!   per-pixel class maps from `annotations/`; label = the scene of `sceneCategories.txt`.
//!   Source = the path below `images/`, e.g. `training/ADE_train_00000001.jpg`.

pub mod ade20k;
pub mod cache;
pub mod cifar;
pub mod folder;
pub mod food101;
pub mod imagenet;
pub mod matlab;
pub mod procedural;
pub mod segmentation;

use std::fmt;
use std::str::FromStr;

use anyhow::Result;
use image::RgbImage;

use crate::clip::preprocess::PreprocessError;

pub use ade20k::Ade20k;
pub use cifar::Cifar;
pub use folder::ImageFolder;
pub use food101::Food101;
pub use imagenet::ImageNet;
pub use procedural::{Procedural, ProceduralClasses, ProceduralFactors};
pub use segmentation::ClassMap;

/// Which part of a dataset to read. `val` is another name for `test` (ImageNet's held-out
/// split is its validation set, `DIR/val`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    #[value(alias = "val")]
    #[serde(alias = "val")]
    Test,
}

impl Split {
    /// The lowercase name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds of dataset saeclip reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Cifar10,
    Cifar100,
    Food101,
    Folder,
    #[serde(rename = "imagenet")]
    ImageNet,
    Procedural,
    #[serde(rename = "ade20k")]
    Ade20k,
}

impl DatasetKind {
    /// Every kind, in the order help texts list them.
    pub const ALL: [DatasetKind; 7] = [
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::Food101,
        DatasetKind::Folder,
        DatasetKind::ImageNet,
        DatasetKind::Procedural,
        DatasetKind::Ade20k,
    ];

    /// The name used in `KIND:PATH`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Food101 => "food101",
            DatasetKind::Folder => "folder",
            DatasetKind::ImageNet => "imagenet",
            DatasetKind::Procedural => "procedural",
            DatasetKind::Ade20k => "ade20k",
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dataset as named on the command line: `KIND:PATH` (`procedural:SEED`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DatasetSpec {
    pub kind: DatasetKind,
    /// The directory (or, for `procedural`, the seed) exactly as given.
    pub path: String,
}

impl DatasetSpec {
    /// The seed of a `procedural:SEED[/CLASSES]` spec.
    pub fn seed(&self) -> Result<u64, DatasetSpecError> {
        let seed = self.path.split_once('/').map_or(&*self.path, |(s, _)| s);
        seed.parse()
            .map_err(|_| DatasetSpecError::BadSeed(self.path.clone()))
    }

    /// The class set of a `procedural:SEED[/CLASSES]` spec (colour × shape without one).
    pub fn procedural_classes(&self) -> Result<ProceduralClasses, DatasetSpecError> {
        match self.path.split_once('/') {
            None => Ok(ProceduralClasses::ColourShape),
            Some((_, name)) => ProceduralClasses::from_name(name)
                .ok_or_else(|| DatasetSpecError::BadClasses(self.path.clone())),
        }
    }
}

/// Why a `KIND:PATH` string is not a dataset name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatasetSpecError {
    #[error("dataset `{0}`: expected KIND:PATH with KIND one of {kinds} (e.g. cifar10:data/cifar10, folder:photos, procedural:0)", kinds = kind_list())]
    NoKind(String),
    #[error("dataset `{0}`: unknown kind `{1}`; KIND is one of {kinds}", kinds = kind_list())]
    UnknownKind(String, String),
    #[error("dataset `{0}`: the path after `{1}:` is empty")]
    EmptyPath(String, String),
    #[error("dataset `procedural:{0}`: the seed must be a whole number from 0 to {max}", max = u64::MAX)]
    BadSeed(String),
    #[error("dataset `procedural:{0}`: the classes after `/` are one of shape, colour-shape, colour-shape-texture")]
    BadClasses(String),
}

fn kind_list() -> String {
    DatasetKind::ALL.map(DatasetKind::name).join(", ")
}

impl FromStr for DatasetSpec {
    type Err = DatasetSpecError;

    /// Split at the first `:` (so `folder:C:\data` keeps its drive letter); the kind is
    /// matched ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, path) = s
            .split_once(':')
            .ok_or_else(|| DatasetSpecError::NoKind(s.to_string()))?;
        let kind = DatasetKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(kind))
            .ok_or_else(|| DatasetSpecError::UnknownKind(s.to_string(), kind.to_string()))?;
        if path.is_empty() {
            return Err(DatasetSpecError::EmptyPath(
                s.to_string(),
                kind.name().to_string(),
            ));
        }
        let spec = DatasetSpec {
            kind,
            path: path.to_string(),
        };
        if kind == DatasetKind::Procedural {
            spec.seed()?;
            spec.procedural_classes()?;
        }
        Ok(spec)
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.path)
    }
}

/// Cheap metadata of one image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    /// Stable position in the dataset's order (see the module docs).
    pub index: usize,
    /// Where the image comes from: a file path below the dataset folder, `FILE:RECORD`
    /// for CIFAR, the generating factors for `procedural`.
    pub source: String,
    /// Index into [`Dataset::classes`]; -1 for an image the dataset has no label for (an
    /// ImageNet validation file missing from the ground truth), whose image is an `Err`.
    pub label: i64,
}

/// A labelled image dataset with a stable order.
pub trait Dataset: Send + Sync {
    /// The name it was opened with.
    fn spec(&self) -> &DatasetSpec;
    /// The split it was opened for.
    fn split(&self) -> Split;
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names as the release spells them; `Item::label` indexes this.
    fn classes(&self) -> &[String];
    /// Metadata of image `index`; panics unless `index < len()`.
    fn item(&self, index: usize) -> Item;
    /// Image `index` decoded to 8-bit RGB exactly as Pillow's `convert("RGB")` would; a
    /// missing or undecodable file is an `Err` naming it. Panics unless `index < len()`.
    fn image(&self, index: usize) -> Result<RgbImage, PreprocessError>;
    /// Names of the per-pixel classes of [`Dataset::class_map`], entry 0 the background
    /// (or unlabelled) class; empty for a dataset without class maps.
    fn class_map_names(&self) -> &[String] {
        &[]
    }
    /// The per-pixel classes of image `index` (indices into
    /// [`Dataset::class_map_names`]), for a dataset that has them. Panics unless
    /// `index < len()`.
    fn class_map(&self, _index: usize) -> Option<Result<ClassMap>> {
        None
    }
}

/// Open a dataset for one split. Errors name the path, say which layout was expected and
/// how to get it.
pub fn open(spec: &DatasetSpec, split: Split) -> Result<Box<dyn Dataset>> {
    Ok(match spec.kind {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => Box::new(Cifar::open(spec, split)?),
        DatasetKind::Food101 => Box::new(Food101::open(spec, split)?),
        DatasetKind::Folder => Box::new(ImageFolder::open(spec, split)?),
        DatasetKind::ImageNet => Box::new(ImageNet::open(spec, split)?),
        DatasetKind::Procedural => Box::new(Procedural::with_classes(
            spec.seed()?,
            spec.procedural_classes()?,
            split,
        )),
        DatasetKind::Ade20k => Box::new(Ade20k::open(spec, split)?),
    })
}

/// The first `limit` images of `dataset` in its stable order (all of them for `None` or a
/// limit above the length).
pub fn limited(dataset: Box<dyn Dataset>, limit: Option<usize>) -> Box<dyn Dataset> {
    match limit {
        Some(limit) if limit < dataset.len() => Box::new(Limited {
            inner: dataset,
            len: limit,
        }),
        _ => dataset,
    }
}

/// A prefix of another dataset.
struct Limited {
    inner: Box<dyn Dataset>,
    len: usize,
}

impl Limited {
    fn check(&self, index: usize) {
        assert!(
            index < self.len,
            "index {index} out of range for {} limited to {} images",
            self.inner.spec(),
            self.len
        );
    }
}

impl Dataset for Limited {
    fn spec(&self) -> &DatasetSpec {
        self.inner.spec()
    }
    fn split(&self) -> Split {
        self.inner.split()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn item(&self, index: usize) -> Item {
        self.check(index);
        self.inner.item(index)
    }
    fn image(&self, index: usize) -> Result<RgbImage, PreprocessError> {
        self.check(index);
        self.inner.image(index)
    }
    fn class_map_names(&self) -> &[String] {
        self.inner.class_map_names()
    }
    fn class_map(&self, index: usize) -> Option<Result<ClassMap>> {
        self.check(index);
        self.inner.class_map(index)
    }
}

/// The closing advice of a "dataset not found" error.
fn fetch_hint(spec: &DatasetSpec) -> String {
    format!(
        "get it with `saeclip fetch dataset {} --out {}`",
        spec.kind, spec.path
    )
}

/// Panic message for an index past the end (a caller bug, not bad input).
fn out_of_range(spec: &DatasetSpec, index: usize, len: usize) -> ! {
    panic!("index {index} out of range for {spec} ({len} images)")
}

/// Entry `index` of a dataset listed in memory (one entry per image); panics naming the
/// dataset unless `index < entries.len()`.
fn listed_entry<'a, E>(spec: &DatasetSpec, entries: &'a [E], index: usize) -> &'a E {
    entries
        .get(index)
        .unwrap_or_else(|| out_of_range(spec, index, entries.len()))
}

/// The accessors every dataset listed in memory shares, written once: inside its
/// `impl Dataset`, `listed_accessors!();` gives `spec`, `split`, `len` and `classes` from the
/// struct's fields of those names (`entries`, one per image, for the length). `item` and
/// `image`, which differ, are written beside it.
macro_rules! listed_accessors {
    () => {
        fn spec(&self) -> &$crate::data::DatasetSpec {
            &self.spec
        }
        fn split(&self) -> $crate::data::Split {
            self.split
        }
        fn len(&self) -> usize {
            self.entries.len()
        }
        fn classes(&self) -> &[String] {
            &self.classes
        }
    };
}
use listed_accessors;

/// One decoded batch: each image's index in the dataset and its preprocessed pixels
/// (3 × P × P, channel-major), or why it could not be read.
pub type DecodedBatch = Vec<(usize, std::result::Result<Vec<f32>, String>)>;

/// Decode and preprocess `indices` of `dataset` in batches of `batch` on a producer thread
/// (rayon inside each batch), at most two batches ahead of `consume`, so that decoding
/// overlaps the forward pass. An error from `consume` stops the producer and is returned.
pub fn stream_pixels(
    dataset: &dyn Dataset,
    indices: &[usize],
    batch: usize,
    prep: &crate::clip::preprocess::PreprocessConfig,
    mut consume: impl FnMut(DecodedBatch) -> Result<()>,
) -> Result<()> {
    use rayon::prelude::*;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<DecodedBatch>(2);
        scope.spawn(move || {
            for chunk in indices.chunks(batch.max(1)) {
                let decoded: DecodedBatch = chunk
                    .par_iter()
                    .map(|&i| {
                        let pixels = dataset
                            .image(i)
                            .map(|img| crate::clip::preprocess::preprocess(&img, prep))
                            .map_err(|e| e.to_string());
                        (i, pixels)
                    })
                    .collect();
                if tx.send(decoded).is_err() {
                    break; // the consumer stopped
                }
            }
        });
        for decoded in rx {
            consume(decoded)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trip() {
        for s in [
            "cifar10:data/cifar",
            "cifar100:/abs/x",
            "food101:.",
            "folder:C:\\photos",
            "imagenet:/data/imagenet",
            "procedural:7",
        ] {
            let spec: DatasetSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        let spec: DatasetSpec = "Folder:x:y".parse().unwrap();
        assert_eq!(spec.kind, DatasetKind::Folder);
        assert_eq!(spec.path, "x:y");
    }

    #[test]
    fn split_names() {
        assert_eq!(Split::Train.to_string(), "train");
        assert_eq!(serde_json::to_string(&Split::Test).unwrap(), "\"test\"");
        assert_eq!(
            serde_json::from_str::<Split>("\"val\"").unwrap(),
            Split::Test
        );
        assert_eq!(
            <Split as clap::ValueEnum>::from_str("val", true).unwrap(),
            Split::Test
        );
        assert_eq!(
            serde_json::to_string(&DatasetKind::ImageNet).unwrap(),
            "\"imagenet\""
        );
        assert_eq!(
            serde_json::to_string(&DatasetKind::Food101).unwrap(),
            "\"food101\""
        );
    }
}
