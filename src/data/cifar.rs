//! CIFAR-10 and CIFAR-100, read from the official *binary* releases
//! (<https://www.cs.toronto.edu/~kriz/cifar.html>, `cifar-10-binary.tar.gz` and
//! `cifar-100-binary.tar.gz`).
//!
//! A record is the label byte(s) followed by 3,072 pixel bytes: the 1,024 red values, then
//! the green, then the blue, each plane row-major 32×32. CIFAR-10 records have one label
//! byte; CIFAR-100 records have the coarse then the fine label byte (we use the fine one).
//! The batch files are read into memory once (about 180 MB for both CIFAR-10 splits).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;

use super::{fetch_hint, out_of_range, Dataset, DatasetKind, DatasetSpec, Item, Split};
use crate::clip::preprocess::PreprocessError;

/// Side of a CIFAR image.
const SIDE: usize = 32;
/// Pixel bytes of one record: three 32×32 planes.
const PIXELS: usize = 3 * SIDE * SIDE;

/// What tells the two releases apart.
struct Release {
    /// The folder the archive unpacks to.
    folder: &'static str,
    /// Human name for messages.
    title: &'static str,
    /// The file with one class name a line.
    names: &'static str,
    /// Number of classes the names file must list.
    classes: usize,
    /// Label bytes before the pixels; the label used is the last of them.
    label_bytes: usize,
    train: &'static [&'static str],
    test: &'static [&'static str],
}

const CIFAR10: Release = Release {
    folder: "cifar-10-batches-bin",
    title: "CIFAR-10",
    names: "batches.meta.txt",
    classes: 10,
    label_bytes: 1,
    train: &[
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ],
    test: &["test_batch.bin"],
};

const CIFAR100: Release = Release {
    folder: "cifar-100-binary",
    title: "CIFAR-100",
    names: "fine_label_names.txt",
    classes: 100,
    label_bytes: 2,
    train: &["train.bin"],
    test: &["test.bin"],
};

impl Release {
    fn of(kind: DatasetKind) -> &'static Release {
        match kind {
            DatasetKind::Cifar10 => &CIFAR10,
            DatasetKind::Cifar100 => &CIFAR100,
            other => panic!("{other} is not a CIFAR release"),
        }
    }

    fn record_len(&self) -> usize {
        self.label_bytes + PIXELS
    }

    /// The layout, for "not found" messages.
    fn layout(&self) -> String {
        let files: Vec<&str> = self
            .train
            .iter()
            .chain(self.test)
            .chain([&self.names])
            .copied()
            .collect();
        format!(
            "the {} binary release: {}/ holding {}, either inside DIR or as DIR itself",
            self.title,
            self.folder,
            files.join(", ")
        )
    }
}

/// One batch file, held in memory.
struct Batch {
    name: &'static str,
    bytes: Vec<u8>,
}

/// A CIFAR-10 or CIFAR-100 split.
pub struct Cifar {
    spec: DatasetSpec,
    split: Split,
    release: &'static Release,
    classes: Vec<String>,
    batches: Vec<Batch>,
    /// Global index of each batch's first record.
    starts: Vec<usize>,
    len: usize,
}

impl Cifar {
    /// Open `spec` (`cifar10:DIR` or `cifar100:DIR`): read the class names and the split's
    /// batch files and check their sizes and labels.
    pub fn open(spec: &DatasetSpec, split: Split) -> Result<Self> {
        let release = Release::of(spec.kind);
        let dir = Path::new(&spec.path);
        if !dir.is_dir() {
            bail!(
                "{spec}: no directory {}; expected {}; {}",
                dir.display(),
                release.layout(),
                fetch_hint(spec)
            );
        }
        let nested = dir.join(release.folder);
        let root = if nested.is_dir() {
            nested
        } else {
            dir.to_path_buf()
        };
        let find = |name: &str| -> Result<PathBuf> {
            let path = root.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{spec}: missing {}; expected {}; {}",
                    path.display(),
                    release.layout(),
                    fetch_hint(spec)
                )
            }
        };

        let names_path = find(release.names)?;
        let text = std::fs::read_to_string(&names_path)
            .with_context(|| format!("{spec}: cannot read {}", names_path.display()))?;
        let classes: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if classes.len() != release.classes {
            bail!(
                "{spec}: {} lists {} class names, {} expects {}",
                names_path.display(),
                classes.len(),
                release.title,
                release.classes
            );
        }

        let names = match split {
            Split::Train => release.train,
            Split::Test => release.test,
        };
        let mut batches = Vec::with_capacity(names.len());
        let mut starts = Vec::with_capacity(names.len());
        let mut len = 0;
        for &name in names {
            let path = find(name)?;
            let bytes = std::fs::read(&path)
                .with_context(|| format!("{spec}: cannot read {}", path.display()))?;
            let records = check_batch(&bytes, release, &path)?;
            starts.push(len);
            len += records;
            batches.push(Batch { name, bytes });
        }
        Ok(Cifar {
            spec: spec.clone(),
            split,
            release,
            classes,
            batches,
            starts,
            len,
        })
    }

    /// The batch holding global `index` and the record number within it.
    fn locate(&self, index: usize) -> (&Batch, usize) {
        if index >= self.len {
            out_of_range(&self.spec, index, self.len);
        }
        let b = self.starts.partition_point(|&s| s <= index) - 1;
        (&self.batches[b], index - self.starts[b])
    }

    fn record(&self, index: usize) -> (&'static str, usize, &[u8]) {
        let (batch, r) = self.locate(index);
        let n = self.release.record_len();
        (batch.name, r, &batch.bytes[r * n..(r + 1) * n])
    }
}

/// Check that a batch file is a whole, non-zero number of records with labels in range;
/// return the record count.
fn check_batch(bytes: &[u8], release: &Release, path: &Path) -> Result<usize> {
    let n = release.record_len();
    if bytes.is_empty() || !bytes.len().is_multiple_of(n) {
        bail!(
            "{}: {} bytes is not a whole number of {}-byte {} records (the file is truncated \
             or not from the binary release); download it again",
            path.display(),
            bytes.len(),
            n,
            release.title
        );
    }
    for (r, record) in bytes.chunks_exact(n).enumerate() {
        let label = usize::from(record[release.label_bytes - 1]);
        if label >= release.classes {
            bail!(
                "{}: record {r} has label {label}, but {} has {} classes (the file is corrupt)",
                path.display(),
                release.title,
                release.classes
            );
        }
    }
    Ok(bytes.len() / n)
}

/// The RGB image of one record's pixel bytes (three planes, row-major).
fn planes_to_rgb(pixels: &[u8]) -> RgbImage {
    let plane = SIDE * SIDE;
    let (r, rest) = pixels.split_at(plane);
    let (g, b) = rest.split_at(plane);
    let data = (0..plane).flat_map(|i| [r[i], g[i], b[i]]).collect();
    RgbImage::from_raw(SIDE as u32, SIDE as u32, data).expect("32×32×3 bytes")
}

impl Dataset for Cifar {
    fn spec(&self) -> &DatasetSpec {
        &self.spec
    }
    fn split(&self) -> Split {
        self.split
    }
    fn len(&self) -> usize {
        self.len
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn item(&self, index: usize) -> Item {
        let (name, r, record) = self.record(index);
        Item {
            index,
            source: format!("{name}:{r}"),
            label: i64::from(record[self.release.label_bytes - 1]),
        }
    }
    fn image(&self, index: usize) -> Result<RgbImage, PreprocessError> {
        let (_, _, record) = self.record(index);
        Ok(planes_to_rgb(&record[self.release.label_bytes..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_are_interleaved() {
        let mut pixels = vec![0u8; PIXELS];
        pixels[0] = 1; // R at (0, 0)
        pixels[1024 + 33] = 2; // G at (1, 1)
        pixels[2048 + 1023] = 3; // B at (31, 31)
        let img = planes_to_rgb(&pixels);
        assert_eq!(img.get_pixel(0, 0).0, [1, 0, 0]);
        assert_eq!(img.get_pixel(1, 1).0, [0, 2, 0]);
        assert_eq!(img.get_pixel(31, 31).0, [0, 0, 3]);
    }

    #[test]
    fn batch_checks() {
        let path = Path::new("x.bin");
        let mut bytes = vec![0u8; 2 * CIFAR100.record_len()];
        assert_eq!(check_batch(&bytes, &CIFAR100, path).unwrap(), 2);
        bytes[CIFAR100.record_len() + 1] = 100;
        let err = check_batch(&bytes, &CIFAR100, path).unwrap_err();
        assert!(err.to_string().contains("record 1 has label 100"), "{err}");
        let err = check_batch(&bytes[..5000], &CIFAR100, path).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(check_batch(&[], &CIFAR10, path).is_err());
    }
}
