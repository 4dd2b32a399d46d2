//! An image folder with one subfolder per class:
//!
//! ```text
//! DIR/<class>/<file>                       the same images for --split train and test
//! DIR/train/<class>/<file>, DIR/test/...   when both exist, --split picks one
//! ```
//!
//! Classes are the subfolders sorted by name (byte order); with `train/` and `test/`, the
//! union of both folders' subfolders, so that a label means the same class in either split.
//! Within a class every file counts (nested folders are walked), sorted by path; the order
//! is class-major. Hidden entries (a name starting with `.`) and files directly in the split
//! folder are skipped. Files are not opened here: a file that is not an image keeps its
//! index and is an `Err` from [`Dataset::image`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;

use super::{listed_accessors, listed_entry, Dataset, DatasetSpec, Item, Split};
use crate::clip::preprocess::{load_rgb, PreprocessError};

/// How deep nested folders inside a class folder are walked (guards against link loops).
const MAX_DEPTH: usize = 32;

/// One file of the folder.
struct Entry {
    /// Path below the split folder.
    path: PathBuf,
    /// The same, `/`-separated (lossy for names that are not UTF-8).
    source: String,
    label: u32,
}

/// A class-per-subfolder image folder.
pub struct ImageFolder {
    spec: DatasetSpec,
    split: Split,
    /// The folder holding the class subfolders for this split.
    root: PathBuf,
    classes: Vec<String>,
    entries: Vec<Entry>,
}

impl ImageFolder {
    /// Open `folder:DIR` for `split` and list its files (names only).
    pub fn open(spec: &DatasetSpec, split: Split) -> Result<Self> {
        let dir = Path::new(&spec.path);
        if !dir.is_dir() {
            bail!(
                "{spec}: no directory {}; expected a folder with one subfolder per class \
                 (DIR/<class>/<image>, or DIR/train/<class>/… and DIR/test/<class>/…)",
                dir.display()
            );
        }
        let split_dirs = [dir.join("train"), dir.join("test")];
        let (root, class_dirs): (PathBuf, Vec<PathBuf>) = if split_dirs.iter().all(|d| d.is_dir()) {
            (dir.join(split.name()), split_dirs.to_vec())
        } else {
            (dir.to_path_buf(), vec![dir.to_path_buf()])
        };

        let mut classes = Vec::new();
        for d in &class_dirs {
            for name in visible_entries(d)? {
                if d.join(&name).is_dir() {
                    classes.push(name);
                }
            }
        }
        classes.sort();
        classes.dedup();
        if classes.is_empty() {
            bail!(
                "{spec}: {} has no class subfolders; expected DIR/<class>/<image> \
                 (or DIR/train/<class>/… and DIR/test/<class>/…)",
                root.display()
            );
        }

        let mut entries = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let class_dir = root.join(class);
            if !class_dir.is_dir() {
                continue; // a class only the other split has
            }
            let mut files = Vec::new();
            collect_files(&class_dir, Path::new(class), 0, &mut files)?;
            files.sort();
            entries.extend(files.into_iter().map(|path| Entry {
                source: slash_path(&path),
                path,
                label: label as u32,
            }));
        }
        if entries.is_empty() {
            bail!(
                "{spec}: the class subfolders of {} hold no files",
                root.display()
            );
        }
        Ok(ImageFolder {
            spec: spec.clone(),
            split,
            root,
            classes,
            entries,
        })
    }

    fn entry(&self, index: usize) -> &Entry {
        listed_entry(&self.spec, &self.entries, index)
    }
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

/// Every visible file below `dir`, as paths starting with `rel`.
fn collect_files(dir: &Path, rel: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    for name in visible_entries(dir)? {
        let path = dir.join(&name);
        if path.is_dir() {
            if depth < MAX_DEPTH {
                collect_files(&path, &rel.join(&name), depth + 1, out)?;
            }
        } else {
            out.push(rel.join(&name));
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

impl Dataset for ImageFolder {
    listed_accessors!();

    fn item(&self, index: usize) -> Item {
        let e = self.entry(index);
        Item {
            index,
            source: e.source.clone(),
            label: i64::from(e.label),
        }
    }
    fn image(&self, index: usize) -> Result<RgbImage, PreprocessError> {
        load_rgb(&self.root.join(&self.entry(index).path))
    }
}
