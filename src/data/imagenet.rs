//! ImageNet-1k (ILSVRC2012) and ImageNet-style subsets (Imagenette, ImageNet-100, …):
//! class folders named by WordNet id, and the validation split's flat layout with the
//! devkit's ground truth.
//!
//! ```text
//! DIR/train/<wnid>/<image>                   --split train
//! DIR/val/<wnid>/<image>                     --split val (= test), class folders
//! DIR/val/ILSVRC2012_val_00000001.JPEG …     --split val, flat, labelled by one of:
//!   ILSVRC2012_validation_ground_truth.txt + meta.mat   (ILSVRC2012_devkit_t12.tar.gz)
//!   LOC_val_solution.csv                                 (Kaggle's ImageNet release)
//! DIR/<wnid>/<image>                         no train/ or val/: DIR for either split
//! DIR/ILSVRC/Data/CLS-LOC/{train,val}/…      Kaggle's layout is found below DIR too
//! ```
//!
//! The ground-truth files are looked for in DIR/val, DIR, and
//! `ILSVRC2012_devkit_t12/data/` below DIR (the devkit archive's own layout); the devkit's
//! pair is preferred when both kinds are there, and `meta.mat` is looked for next to the
//! ground-truth text first.
//!
//! Classes are the WordNet ids of the class folders (the union of `train/` and `val/`, so a
//! label means the same class in either split), sorted, as torchvision's `ImageFolder`
//! sorts them; with no class folders at all (a flat `val/` alone) all 1,000. Every class
//! folder must be named by one of the 1,000 ImageNet-1k WordNet ids (`folder:` reads other
//! folders). [`Dataset::classes`] gives CLIP's class names (openai/CLIP's prompt-engineering
//! notebook), so prompts and the feature browser read "tench", not "n01440764";
//! [`ImageNet::wnids`] gives the ids.
//!
//! Order: class-major, within a class the files in `os.walk` order sorted as torchvision
//! does (files of a folder before those of its subfolders, names in byte order), keeping
//! torchvision's image extensions (`.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp`, any
//! case) and skipping hidden entries (names starting with `.`, such as macOS's `._*`
//! files). So index i is torchvision's `ImageFolder` (and `ImageNet`) index i. A flat
//! validation folder is put in the same order (by class, then file name), so both layouts
//! of the same images agree; images the ground truth does not label (not listed, or of a
//! class without a folder) follow at the end, sorted by name, with label -1 and an `Err`
//! from [`Dataset::image`], so they are recorded as skipped and shift no other index.
//!
//! Source = the path below DIR, `/`-separated (`train/n01440764/n01440764_10026.JPEG`,
//! `val/ILSVRC2012_val_00000001.JPEG`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;

use super::{
    fetch_hint, listed_accessors, listed_entry, matlab, Dataset, DatasetSpec, Item, Split,
};
use crate::clip::preprocess::{load_rgb, PreprocessError};

/// The 1,000 ImageNet-1k WordNet ids in class-index order (assets/imagenet_wnids.README).
const WNIDS_TXT: &str = include_str!("../../assets/imagenet_wnids.txt");
/// CLIP's class names, `imagenet.classes` in class-index order.
const PROMPTS_JSON: &str = include_str!("../../assets/clip_zeroshot_prompts.json");

/// The devkit's validation labels: one ILSVRC2012_ID a line, line n for image n.
pub const DEVKIT_GROUND_TRUTH: &str = "ILSVRC2012_validation_ground_truth.txt";
/// The devkit's synset table (ILSVRC2012_ID → WordNet id).
pub const DEVKIT_META: &str = "meta.mat";
/// Kaggle's validation labels: `ImageId,PredictionString`, the class first in the string.
pub const LOC_SOLUTION: &str = "LOC_val_solution.csv";
/// The folder the devkit archive unpacks to; the files above are in its `data/`.
pub const DEVKIT_FOLDER: &str = "ILSVRC2012_devkit_t12";

/// torchvision's `IMG_EXTENSIONS`, compared ignoring ASCII case.
const IMAGE_EXTENSIONS: [&str; 9] = [
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
];
/// How deep nested folders inside a class folder are walked (guards against link loops).
const MAX_DEPTH: usize = 32;

const LAYOUT: &str = "DIR/train/<wnid>/<image> and DIR/val/<wnid>/<image>, or DIR/val/ holding \
                      the flat ILSVRC2012_val_*.JPEG files with the devkit's \
                      ILSVRC2012_validation_ground_truth.txt and meta.mat (or \
                      LOC_val_solution.csv), or DIR/<wnid>/<image>";

/// One ImageNet-1k class: its WordNet id and CLIP's name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageNetClass {
    pub wnid: &'static str,
    pub name: &'static str,
}

/// The 1,000 ImageNet-1k classes in class-index order (sorted WordNet ids).
pub fn imagenet_1k() -> &'static [ImageNetClass] {
    static CLASSES: OnceLock<Vec<ImageNetClass>> = OnceLock::new();
    CLASSES.get_or_init(|| {
        static NAMES: OnceLock<Vec<String>> = OnceLock::new();
        let names = NAMES.get_or_init(|| {
            let value: serde_json::Value =
                serde_json::from_str(PROMPTS_JSON).expect("the embedded prompts are valid JSON");
            value["imagenet"]["classes"]
                .as_array()
                .expect("the embedded prompts have imagenet.classes")
                .iter()
                .map(|c| c.as_str().expect("class names are strings").to_string())
                .collect()
        });
        let wnids: Vec<&'static str> = WNIDS_TXT
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(wnids.len(), names.len(), "one CLIP name per WordNet id");
        wnids
            .into_iter()
            .zip(names.iter())
            .map(|(wnid, name)| ImageNetClass {
                wnid,
                name: name.as_str(),
            })
            .collect()
    })
}

/// The ImageNet-1k class index of a WordNet id.
pub fn imagenet_index(wnid: &str) -> Option<usize> {
    imagenet_1k().binary_search_by(|c| c.wnid.cmp(wnid)).ok()
}

/// Why an image has no label.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Label {
    Class(u32),
    /// The ground truth does not list the file.
    Unlisted,
    /// Listed with this WordNet id, which is not among the classes.
    OtherClass(String),
}

struct Entry {
    /// Path below DIR, `/`-separated.
    source: String,
    label: Label,
}

/// An ImageNet split.
pub struct ImageNet {
    spec: DatasetSpec,
    split: Split,
    /// DIR: sources are paths below it.
    root: PathBuf,
    wnids: Vec<String>,
    classes: Vec<String>,
    entries: Vec<Entry>,
    /// The ground-truth file of a flat validation folder.
    ground_truth: Option<PathBuf>,
}

impl ImageNet {
    /// Open `imagenet:DIR` for `split` (train, or test = val): find the layout, list the
    /// files (names only) and read the ground truth of a flat validation folder.
    pub fn open(spec: &DatasetSpec, split: Split) -> Result<Self> {
        let dir = Path::new(&spec.path);
        if !dir.is_dir() {
            bail!(
                "{spec}: no directory {}; expected {LAYOUT}; {}",
                dir.display(),
                fetch_hint(spec)
            );
        }
        let kaggle = dir.join("ILSVRC/Data/CLS-LOC");
        let base = if kaggle.is_dir() {
            kaggle
        } else {
            dir.to_path_buf()
        };
        let split_name = match split {
            Split::Train => "train",
            Split::Test => "val",
        };
        let split_dirs: Vec<PathBuf> = ["train", "val"]
            .iter()
            .map(|s| base.join(s))
            .filter(|d| d.is_dir())
            .collect();
        let (split_dir, class_parents) = if split_dirs.is_empty() {
            (base.clone(), vec![base.clone()])
        } else {
            let d = base.join(split_name);
            if !d.is_dir() {
                bail!(
                    "{spec}: no {} for --split {split_name}; expected {LAYOUT}",
                    d.display()
                );
            }
            (d, split_dirs.clone())
        };

        let mut wnids = BTreeSet::new();
        for parent in &class_parents {
            for name in visible_entries(parent)? {
                if !parent.join(&name).is_dir() {
                    continue;
                }
                if imagenet_index(&name).is_none() {
                    bail!(
                        "{spec}: {} is not named by an ImageNet-1k WordNet id (such as \
                         n01440764); expected {LAYOUT}; read other class folders as folder:{}",
                        parent.join(&name).display(),
                        spec.path
                    );
                }
                wnids.insert(name);
            }
        }
        let has_subfolders = visible_entries(&split_dir)?
            .iter()
            .any(|n| split_dir.join(n).is_dir());
        let flat = split == Split::Test && !split_dirs.is_empty() && !has_subfolders;
        if !flat && !has_subfolders {
            bail!(
                "{spec}: {} holds no class folders; expected {LAYOUT}",
                split_dir.display()
            );
        }
        let wnids: Vec<String> = if wnids.is_empty() {
            imagenet_1k().iter().map(|c| c.wnid.to_string()).collect()
        } else {
            wnids.into_iter().collect()
        };
        let classes = wnids
            .iter()
            .map(|w| {
                imagenet_1k()[imagenet_index(w).expect("checked above")]
                    .name
                    .to_string()
            })
            .collect();
        let prefix = slash_path(split_dir.strip_prefix(dir).unwrap_or(Path::new("")));
        let below = |rel: &str| {
            if prefix.is_empty() {
                rel.to_string()
            } else {
                format!("{prefix}/{rel}")
            }
        };

        let mut entries = Vec::new();
        let mut ground_truth = None;
        if flat {
            let (path, truth) = read_ground_truth(spec, dir, &base, &split_dir)?;
            let label_of: HashMap<&str, u32> = wnids
                .iter()
                .enumerate()
                .map(|(i, w)| (w.as_str(), i as u32))
                .collect();
            let mut names: Vec<String> = visible_entries(&split_dir)?
                .into_iter()
                .filter(|n| is_image_name(n) && split_dir.join(n).is_file())
                .collect();
            names.sort();
            for name in names {
                let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
                let label = match truth.get(stem) {
                    None => Label::Unlisted,
                    Some(w) => match label_of.get(w.as_str()) {
                        Some(&l) => Label::Class(l),
                        None => Label::OtherClass(w.clone()),
                    },
                };
                entries.push(Entry {
                    source: below(&name),
                    label,
                });
            }
            // Labelled images class-major (as in the class-folder layout), then the rest.
            entries.sort_by(|a, b| {
                let key = |e: &Entry| match e.label {
                    Label::Class(l) => l,
                    _ => u32::MAX,
                };
                key(a).cmp(&key(b)).then_with(|| a.source.cmp(&b.source))
            });
            ground_truth = Some(path);
        } else {
            for (label, wnid) in wnids.iter().enumerate() {
                let class_dir = split_dir.join(wnid);
                if !class_dir.is_dir() {
                    continue; // a class only the other split has
                }
                let mut files = Vec::new();
                walk_images(&class_dir, "", 0, &mut files)?;
                files.sort();
                entries.extend(files.into_iter().map(|(folder, name)| {
                    let rel = if folder.is_empty() {
                        format!("{wnid}/{name}")
                    } else {
                        format!("{wnid}/{folder}/{name}")
                    };
                    Entry {
                        source: below(&rel),
                        label: Label::Class(label as u32),
                    }
                }));
            }
        }
        if entries.is_empty() {
            bail!(
                "{spec}: {} holds no images ({})",
                split_dir.display(),
                IMAGE_EXTENSIONS.join(" ")
            );
        }
        Ok(ImageNet {
            spec: spec.clone(),
            split,
            root: dir.to_path_buf(),
            wnids,
            classes,
            entries,
            ground_truth,
        })
    }

    /// The WordNet id of each class, in label order.
    pub fn wnids(&self) -> &[String] {
        &self.wnids
    }

    /// The ground-truth file read for a flat validation folder.
    pub fn ground_truth(&self) -> Option<&Path> {
        self.ground_truth.as_deref()
    }

    fn entry(&self, index: usize) -> &Entry {
        listed_entry(&self.spec, &self.entries, index)
    }
}

/// Whether a file name ends with one of torchvision's image extensions.
fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    IMAGE_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// The names in `dir` that do not start with `.`.
fn visible_entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let read = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in read {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    Ok(names)
}

/// Every visible image file below `dir` as (folder below the class folder, file name);
/// sorted, these pairs give torchvision's `sorted(os.walk(...))` order.
fn walk_images(dir: &Path, rel: &str, depth: usize, out: &mut Vec<(String, String)>) -> Result<()> {
    for name in visible_entries(dir)? {
        let path = dir.join(&name);
        if path.is_dir() {
            if depth < MAX_DEPTH {
                let sub = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                walk_images(&path, &sub, depth + 1, out)?;
            }
        } else if is_image_name(&name) {
            out.push((rel.to_string(), name));
        }
    }
    Ok(())
}

/// A relative path with `/` separators on every platform.
fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Find and read the ground truth of a flat validation folder: the ground-truth file and
/// a map from image name without extension (`ILSVRC2012_val_00000001`) to WordNet id.
fn read_ground_truth(
    spec: &DatasetSpec,
    dir: &Path,
    base: &Path,
    split_dir: &Path,
) -> Result<(PathBuf, HashMap<String, String>)> {
    let mut folders: Vec<PathBuf> = vec![
        split_dir.to_path_buf(),
        base.to_path_buf(),
        dir.to_path_buf(),
        base.join(DEVKIT_FOLDER).join("data"),
        dir.join(DEVKIT_FOLDER).join("data"),
    ];
    folders.dedup();
    let find = |name: &str| folders.iter().map(|f| f.join(name)).find(|p| p.is_file());
    if let Some(txt) = find(DEVKIT_GROUND_TRUTH) {
        let next_to = txt.with_file_name(DEVKIT_META);
        let meta = if next_to.is_file() {
            next_to
        } else {
            find(DEVKIT_META).ok_or_else(|| {
                anyhow!(
                    "{spec}: missing {} (the devkit's ILSVRC2012_ID → WordNet id table that \
                     {} needs); it is in ILSVRC2012_devkit_t12.tar.gz, next to the ground truth",
                    next_to.display(),
                    txt.display()
                )
            })?
        };
        let ids = read_meta(spec, &meta)?;
        let text = std::fs::read_to_string(&txt)
            .with_context(|| format!("{spec}: cannot read {}", txt.display()))?;
        let lines: Vec<&str> = text.trim_end().lines().collect();
        let mut truth = HashMap::with_capacity(lines.len());
        for (n, line) in lines.iter().enumerate() {
            let line = line.trim();
            let id: u32 = line.parse().map_err(|_| {
                anyhow!(
                    "{spec}: {} line {}: `{line}` is not an ILSVRC2012_ID (a whole number from 1 \
                     to 1000, one line per validation image)",
                    txt.display(),
                    n + 1
                )
            })?;
            let wnid = ids.get(&id).ok_or_else(|| {
                anyhow!(
                    "{spec}: {} line {}: ILSVRC2012_ID {id} is not in {}",
                    txt.display(),
                    n + 1,
                    meta.display()
                )
            })?;
            truth.insert(format!("ILSVRC2012_val_{:08}", n + 1), wnid.clone());
        }
        if truth.is_empty() {
            bail!("{spec}: {} lists no labels", txt.display());
        }
        return Ok((txt, truth));
    }
    if let Some(csv) = find(LOC_SOLUTION) {
        let text = std::fs::read_to_string(&csv)
            .with_context(|| format!("{spec}: cannot read {}", csv.display()))?;
        let mut lines = text.lines().enumerate();
        let header = lines.next().map(|(_, l)| l.trim()).unwrap_or("");
        if !header.starts_with("ImageId,") {
            bail!(
                "{spec}: {} line 1: expected the header `ImageId,PredictionString`, found `{header}`",
                csv.display()
            );
        }
        let mut truth = HashMap::new();
        for (n, line) in lines {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let wnid = line
                .split_once(',')
                .and_then(|(id, rest)| Some((id, rest.split_whitespace().next()?)))
                .filter(|(id, wnid)| !id.is_empty() && is_wnid(wnid));
            let Some((id, wnid)) = wnid else {
                bail!(
                    "{spec}: {} line {}: `{line}` is not IMAGE_ID,WNID X_MIN Y_MIN X_MAX Y_MAX …",
                    csv.display(),
                    n + 1
                );
            };
            truth.insert(id.to_string(), wnid.to_string());
        }
        if truth.is_empty() {
            bail!("{spec}: {} lists no labels", csv.display());
        }
        return Ok((csv, truth));
    }
    bail!(
        "{spec}: {} holds flat validation images but no ground truth was found: expected {} \
         and {} (from ILSVRC2012_devkit_t12.tar.gz, in {}/{DEVKIT_FOLDER}/data/, {} or {}) \
         or {LOC_SOLUTION} in one of those folders, or class folders in {}",
        split_dir.display(),
        DEVKIT_GROUND_TRUTH,
        DEVKIT_META,
        dir.display(),
        dir.display(),
        split_dir.display(),
        split_dir.display()
    )
}

/// `n` followed by eight digits.
fn is_wnid(s: &str) -> bool {
    s.len() == 9 && s.starts_with('n') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// The devkit's `meta.mat`: ILSVRC2012_ID → WordNet id of every synset.
fn read_meta(spec: &DatasetSpec, path: &Path) -> Result<HashMap<u32, String>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("{spec}: cannot read {}", path.display()))?;
    let bad = |why: String| {
        anyhow!(
            "{spec}: {}: {why} (expected the ILSVRC2012 devkit's meta.mat, a struct array \
             `synsets` with fields ILSVRC2012_ID and WNID)",
            path.display()
        )
    };
    let vars = matlab::read_variables(&bytes).map_err(|e| bad(format!("{e:#}")))?;
    let synsets = vars
        .iter()
        .find(|(name, _)| name == "synsets")
        .map(|(_, v)| v)
        .ok_or_else(|| bad("no variable `synsets`".into()))?;
    let (Some(ids), Some(wnids)) = (synsets.field("ILSVRC2012_ID"), synsets.field("WNID")) else {
        return Err(bad(
            "`synsets` is not a struct with fields ILSVRC2012_ID and WNID".into(),
        ));
    };
    let mut map = HashMap::with_capacity(ids.len());
    for (e, (id, wnid)) in ids.iter().zip(wnids).enumerate() {
        let id = id
            .scalar()
            .filter(|v| v.fract() == 0.0 && *v >= 1.0 && *v <= f64::from(u32::MAX))
            .ok_or_else(|| bad(format!("synset {} has no whole ILSVRC2012_ID", e + 1)))?;
        let wnid = wnid
            .text()
            .map(str::trim)
            .filter(|w| is_wnid(w))
            .ok_or_else(|| bad(format!("synset {} has no WordNet id in WNID", e + 1)))?;
        map.insert(id as u32, wnid.to_string());
    }
    if map.is_empty() {
        return Err(bad("`synsets` is empty".into()));
    }
    Ok(map)
}

impl Dataset for ImageNet {
    listed_accessors!();

    fn item(&self, index: usize) -> Item {
        let e = self.entry(index);
        Item {
            index,
            source: e.source.clone(),
            label: match e.label {
                Label::Class(l) => i64::from(l),
                _ => -1,
            },
        }
    }
    fn image(&self, index: usize) -> Result<RgbImage, PreprocessError> {
        let e = self.entry(index);
        let path = self.root.join(&e.source);
        let truth = || {
            self.ground_truth
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        };
        match &e.label {
            Label::Class(_) => load_rgb(&path),
            Label::Unlisted => Err(PreprocessError::NoLabel {
                origin: path.display().to_string(),
                reason: format!("not listed in {}", truth()),
            }),
            Label::OtherClass(wnid) => Err(PreprocessError::NoLabel {
                origin: path.display().to_string(),
                reason: format!(
                    "{} gives class {wnid}, which has no class folder here",
                    truth()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_table_is_sorted_and_named() {
        let all = imagenet_1k();
        assert_eq!(all.len(), 1000);
        assert!(all.windows(2).all(|w| w[0].wnid < w[1].wnid));
        assert!(all.iter().all(|c| is_wnid(c.wnid)));
        assert_eq!(all[0].wnid, "n01440764");
        assert_eq!(all[0].name, "tench");
        assert_eq!(all[999].wnid, "n15075141");
        assert_eq!(all[999].name, "toilet paper");
        assert_eq!(imagenet_index("n01443537"), Some(1));
        assert_eq!(imagenet_index("n00000000"), None);
    }

    #[test]
    fn image_names_and_wnids() {
        assert!(is_image_name("a.JPEG"));
        assert!(is_image_name("b.webp"));
        assert!(!is_image_name("c.txt"));
        assert!(!is_image_name("jpeg"));
        assert!(is_wnid("n01440764"));
        assert!(!is_wnid("n0144076"));
        assert!(!is_wnid("x01440764"));
    }
}
