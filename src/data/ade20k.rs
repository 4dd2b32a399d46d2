//! ADE20K in the SceneParsing challenge layout (`ADEChallengeData2016.zip`), the benchmark
//! vision SAEs are probed on for segmentation:
//!
//! ```text
//! ADEChallengeData2016/images/training/ADE_train_00000001.jpg
//! ADEChallengeData2016/images/validation/ADE_val_00000001.jpg
//! ADEChallengeData2016/annotations/training/ADE_train_00000001.png   class per pixel
//! ADEChallengeData2016/annotations/validation/ADE_val_00000001.png
//! ADEChallengeData2016/objectInfo150.txt     Idx, Ratio, Train, Val, Name (tab-separated)
//! ADEChallengeData2016/sceneCategories.txt   ADE_train_00000001 airport_terminal
//! ```
//!
//! `ade20k:DIR` is that folder or a folder holding it. Train = `images/training`, test =
//! `images/validation`, each in file-name order (byte order; `.jpg`, `.jpeg` and `.png`
//! files, hidden ones skipped). Source = the path below `images/`, e.g.
//! `training/ADE_train_00000001.jpg`.
//!
//! Class maps ([`Dataset::class_map`]): the annotation PNG of the same stem, 8-bit grey,
//! 0 = other (unlabelled), 1–150 the classes of `objectInfo150.txt` (named by the first
//! of their synonyms; `class N` when that file is missing). An image without an annotation
//! has no class map (an `Err` naming the missing file).
//!
//! Image labels: the scene of `sceneCategories.txt`, the classes being the scenes of both
//! splits sorted by name (so a label means the same scene in either split). Without that
//! file there are no classes and every label is -1.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;

use super::{out_of_range, ClassMap, Dataset, DatasetSpec, Item, Split};
use crate::clip::preprocess::{load_rgb, PreprocessError};

/// The folder the official archive unpacks to.
const FOLDER: &str = "ADEChallengeData2016";
/// Classes of the SceneParsing benchmark (besides 0, other).
pub const CLASSES: usize = 150;
const LAYOUT: &str = "the ADE20K SceneParsing layout: ADEChallengeData2016/ holding \
                      images/{training,validation}/*.jpg and annotations/{training,validation}/*.png, \
                      either inside DIR or as DIR itself";

/// An ADE20K split.
pub struct Ade20k {
    spec: DatasetSpec,
    split: Split,
    root: PathBuf,
    /// File names in `images/<split>/`, sorted.
    files: Vec<String>,
    /// Scene label per file (-1 without one).
    labels: Vec<i64>,
    scenes: Vec<String>,
    /// "other", then the 150 class names.
    regions: Vec<String>,
}

fn split_folder(split: Split) -> &'static str {
    match split {
        Split::Train => "training",
        Split::Test => "validation",
    }
}

impl Ade20k {
    /// Open `ade20k:DIR`: list `images/<split>/` and read the class and scene lists.
    pub fn open(spec: &DatasetSpec, split: Split) -> Result<Ade20k> {
        let dir = Path::new(&spec.path);
        let nested = dir.join(FOLDER);
        let root = if nested.is_dir() {
            nested
        } else {
            dir.to_path_buf()
        };
        let images = root.join("images").join(split_folder(split));
        if !images.is_dir() {
            bail!(
                "{spec}: no directory {}; expected {LAYOUT}",
                images.display()
            );
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&images)
            .with_context(|| format!("{spec}: cannot list {}", images.display()))?
        {
            let entry =
                entry.with_context(|| format!("{spec}: cannot list {}", images.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let lower = name.to_ascii_lowercase();
            let image = [".jpg", ".jpeg", ".png"].iter().any(|e| lower.ends_with(e));
            if !name.starts_with('.') && image {
                files.push(name);
            }
        }
        files.sort();
        if files.is_empty() {
            bail!("{spec}: {} holds no images", images.display());
        }
        let regions = read_regions(&root.join("objectInfo150.txt"))
            .with_context(|| format!("{spec}: objectInfo150.txt"))?;
        let (scenes, scene_of) = read_scenes(&root.join("sceneCategories.txt"))
            .with_context(|| format!("{spec}: sceneCategories.txt"))?;
        let labels = files
            .iter()
            .map(|f| {
                let stem = f.rsplit_once('.').map_or(f.as_str(), |(s, _)| s);
                scene_of.get(stem).map_or(-1, |&l| l as i64)
            })
            .collect();
        Ok(Ade20k {
            spec: spec.clone(),
            split,
            root,
            files,
            labels,
            scenes,
            regions,
        })
    }

    fn file(&self, index: usize) -> &str {
        self.files
            .get(index)
            .unwrap_or_else(|| out_of_range(&self.spec, index, self.files.len()))
    }

    /// The annotation PNG of image `index`.
    pub fn annotation(&self, index: usize) -> PathBuf {
        let file = self.file(index);
        let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
        self.root
            .join("annotations")
            .join(split_folder(self.split))
            .join(format!("{stem}.png"))
    }
}

/// "other" and the 150 class names of objectInfo150.txt (`class N` without the file). Each
/// row is `Idx Ratio Train Val Name` separated by tabs; the name's first synonym is kept.
fn read_regions(path: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::iter::once("other".to_string())
        .chain((1..=CLASSES).map(|i| format!("class {i}")))
        .collect();
    if !path.is_file() {
        return Ok(names);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        let Ok(idx) = fields[0].parse::<usize>() else {
            continue; // the header, or a blank line
        };
        let bad = |why: &str| anyhow!("{} line {}: {why}", path.display(), n + 1);
        if !(1..=CLASSES).contains(&idx) {
            return Err(bad(&format!("class {idx} is outside 1..={CLASSES}")));
        }
        let name = fields
            .last()
            .filter(|_| fields.len() >= 2)
            .ok_or_else(|| bad("no name field"))?;
        let first = name.split([',', ';']).next().unwrap_or(name).trim();
        names[idx] = first.to_string();
    }
    Ok(names)
}

/// Scene names sorted, and the label of each image stem (empty without the file).
fn read_scenes(path: &Path) -> Result<(Vec<String>, HashMap<String, usize>)> {
    if !path.is_file() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (stem, scene) = line.split_once(char::is_whitespace).ok_or_else(|| {
            anyhow!(
                "{} line {}: `{line}` is not IMAGE SCENE",
                path.display(),
                n + 1
            )
        })?;
        pairs.push((stem.to_string(), scene.trim().to_string()));
    }
    let scenes: Vec<String> = pairs
        .iter()
        .map(|(_, s)| s.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: HashMap<&str, usize> = scenes
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let scene_of = pairs
        .iter()
        .map(|(stem, s)| (stem.clone(), index[s.as_str()]))
        .collect();
    Ok((scenes, scene_of))
}

impl Dataset for Ade20k {
    fn spec(&self) -> &DatasetSpec {
        &self.spec
    }
    fn split(&self) -> Split {
        self.split
    }
    fn len(&self) -> usize {
        self.files.len()
    }
    fn classes(&self) -> &[String] {
        &self.scenes
    }
    fn item(&self, index: usize) -> Item {
        Item {
            index,
            source: format!("{}/{}", split_folder(self.split), self.file(index)),
            label: self.labels[index],
        }
    }
    fn image(&self, index: usize) -> Result<RgbImage, PreprocessError> {
        let file = self.file(index);
        load_rgb(
            &self
                .root
                .join("images")
                .join(split_folder(self.split))
                .join(file),
        )
    }
    fn class_map_names(&self) -> &[String] {
        &self.regions
    }
    fn class_map(&self, index: usize) -> Option<Result<ClassMap>> {
        let path = self.annotation(index);
        Some(if path.is_file() {
            ClassMap::read_png(&path)
        } else {
            Err(anyhow!(
                "{}: image {} has no annotation {}",
                self.spec,
                self.file(index),
                path.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb};

    /// A two-image validation split and a one-image training split in the release layout,
    /// inside `DIR/ADEChallengeData2016`; the second validation image has no annotation.
    fn tree(dir: &Path) -> PathBuf {
        let root = dir.join(FOLDER);
        for (split, stem, annotated) in [
            ("validation", "ADE_val_00000002", true),
            ("validation", "ADE_val_00000001", true),
            ("validation", "ADE_val_00000003", false),
            ("training", "ADE_train_00000001", true),
        ] {
            let images = root.join("images").join(split);
            let annotations = root.join("annotations").join(split);
            std::fs::create_dir_all(&images).unwrap();
            std::fs::create_dir_all(&annotations).unwrap();
            RgbImage::from_pixel(8, 6, Rgb([200, 10, 10]))
                .save(images.join(format!("{stem}.jpg")))
                .unwrap();
            if annotated {
                let map = GrayImage::from_fn(8, 6, |x, _| Luma([if x < 4 { 1 } else { 13 }]));
                map.save(annotations.join(format!("{stem}.png"))).unwrap();
            }
        }
        std::fs::write(root.join("images/validation/.hidden.jpg"), b"x").unwrap();
        std::fs::write(
            root.join("objectInfo150.txt"),
            "Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n13\t0.0163\t6166\t612\tperson, individual, someone\n",
        )
        .unwrap();
        std::fs::write(
            root.join("sceneCategories.txt"),
            "ADE_train_00000001 airport_terminal\nADE_val_00000001 bathroom\nADE_val_00000002 airport_terminal\n",
        )
        .unwrap();
        root
    }

    fn spec(dir: &Path) -> DatasetSpec {
        format!("ade20k:{}", dir.display()).parse().unwrap()
    }

    #[test]
    fn the_release_layout_opens_with_scenes_and_class_maps() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        for d in [dir.path(), root.as_path()] {
            let val = Ade20k::open(&spec(d), Split::Test).unwrap();
            assert_eq!(val.len(), 3);
            assert_eq!(val.item(0).source, "validation/ADE_val_00000001.jpg");
            // Scenes of both splits, sorted: airport_terminal 0, bathroom 1; no entry: -1.
            assert_eq!(val.classes(), ["airport_terminal", "bathroom"]);
            let labels: Vec<i64> = (0..3).map(|i| val.item(i).label).collect();
            assert_eq!(labels, [1, 0, -1]);
            assert!(val.image(0).unwrap().get_pixel(0, 0).0[1] < 40);
            let names = val.class_map_names();
            assert_eq!(names.len(), CLASSES + 1);
            assert_eq!(
                (&*names[0], &*names[1], &*names[13]),
                ("other", "wall", "person")
            );
            assert_eq!(names[2], "class 2");
            let map = val.class_map(0).unwrap().unwrap();
            assert_eq!((map.width, map.height), (8, 6));
            assert_eq!((map.classes[0], map.classes[7]), (1, 13));
            let missing = val.class_map(2).unwrap().unwrap_err().to_string();
            assert!(missing.contains("ADE_val_00000003.png"), "{missing}");
        }
        let train = Ade20k::open(&spec(dir.path()), Split::Train).unwrap();
        assert_eq!(train.len(), 1);
        assert_eq!(train.item(0).label, 0);
    }

    #[test]
    fn bad_trees_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Ade20k::open(&spec(dir.path()), Split::Test).err().unwrap();
        assert!(err.to_string().contains("images/validation"), "{err}");
        let root = tree(dir.path());
        // A colour annotation is not a class map.
        RgbImage::from_pixel(8, 6, Rgb([1, 2, 3]))
            .save(root.join("annotations/validation/ADE_val_00000001.png"))
            .unwrap();
        let val = Ade20k::open(&spec(dir.path()), Split::Test).unwrap();
        let err = format!("{:#}", val.class_map(0).unwrap().unwrap_err());
        assert!(
            err.contains("ADE_val_00000001.png") && err.contains("single-channel"),
            "{err}"
        );
        std::fs::write(root.join("objectInfo150.txt"), "151\t0\t0\t0\tnothing\n").unwrap();
        let err = format!(
            "{:#}",
            Ade20k::open(&spec(dir.path()), Split::Test).err().unwrap()
        );
        assert!(
            err.contains("objectInfo150.txt") && err.contains("151"),
            "{err}"
        );
    }
}
