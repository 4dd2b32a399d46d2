//! `fetch dataset imagenet`: ImageNet-1k (ILSVRC2012) cannot be downloaded for you (its
//! terms of access require an account at image-net.org), so this checks the archives
//! obtained by hand and unpacks them into the layout `imagenet:DIR` reads.
//!
//! In the output directory DIR, put (names and MD5s as torchvision's `ImageNet` lists them):
//! - `ILSVRC2012_img_train.tar`   (md5 1d675b47d978889d74fa0da5fadfb00e, about 138 GB)
//! - `ILSVRC2012_img_val.tar`     (md5 29b22e2961454d5413ddabcf34fc5622, about 6.3 GB)
//! - `ILSVRC2012_devkit_t12.tar.gz` (md5 fa75699e90414af021442c21a62c3abf, 2.5 MB)
//!
//! A missing archive or a wrong checksum is an error listing what to get and where. Once all
//! three check out they are unpacked: the train archive's 1,000 inner `<wnid>.tar` into
//! `DIR/train/<wnid>/`, the validation images flat into `DIR/val/`, the devkit into
//! `DIR/ILSVRC2012_devkit_t12/`; each goes to a staging folder first and is renamed into
//! place whole; the marker `DIR/.saeclip-fetch-imagenet.json` is written last. The archives
//! are left where they are (they were put there by hand). A DIR already holding the
//! unpacked dataset (both splits open) is left as it is.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::catalog::{dataset_marker_path, Dataset};
use super::net;
use crate::data::{self, DatasetSpec, Split};
use crate::{disk, ui};

/// Where the archives come from.
pub const IMAGENET_SITE: &str = "https://image-net.org/download-images.php (ILSVRC2012)";

/// One archive of ImageNet-1k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageNetArchive {
    /// The official file name.
    pub file: &'static str,
    /// Its MD5, as torchvision.datasets.ImageNet (ARCHIVE_META) lists it.
    pub md5: &'static str,
    /// What it holds, for messages.
    pub what: &'static str,
}

/// The three archives, in the order they are checked and unpacked.
pub const IMAGENET_ARCHIVES: [ImageNetArchive; 3] = [
    ImageNetArchive {
        file: "ILSVRC2012_img_train.tar",
        md5: "1d675b47d978889d74fa0da5fadfb00e",
        what: "training images, about 138 GB",
    },
    ImageNetArchive {
        file: "ILSVRC2012_img_val.tar",
        md5: "29b22e2961454d5413ddabcf34fc5622",
        what: "validation images, about 6.3 GB",
    },
    ImageNetArchive {
        file: "ILSVRC2012_devkit_t12.tar.gz",
        md5: "fa75699e90414af021442c21a62c3abf",
        what: "development kit with the validation labels, 2.5 MB",
    },
];

/// What `fetch_imagenet` does.
#[derive(Debug, Clone)]
pub struct ImageNetOptions {
    /// The directory holding the archives, and the dataset once unpacked.
    pub out: PathBuf,
    /// Expected MD5s of the three archives instead of the published ones, for tests with
    /// small fake archives. The command line never sets it.
    pub md5_override: Option<[String; 3]>,
}

impl ImageNetOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        ImageNetOptions {
            out: out.into(),
            md5_override: None,
        }
    }
}

/// The marker written once the dataset is unpacked.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
    dataset: String,
    archives: Vec<MarkerArchive>,
    fetched_unix: u64,
    saeclip_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct MarkerArchive {
    file: String,
    bytes: u64,
    md5: String,
    sha256: String,
}

/// The folders the archives unpack to, below DIR.
const TARGETS: [&str; 3] = ["train", "val", data::imagenet::DEVKIT_FOLDER];

/// Check the archives in `o.out` and unpack them; return DIR. Fails with one line naming
/// every missing or mismatching archive, its MD5 and where to put it.
pub fn fetch_imagenet(o: &ImageNetOptions) -> Result<PathBuf> {
    let out = o.out.as_path();
    let spec = DatasetSpec {
        kind: data::DatasetKind::ImageNet,
        path: out.display().to_string(),
    };
    let marker_path = dataset_marker_path(out, Dataset::ImageNet);
    let opened = unpacked(&spec);
    if let Ok(counts) = &opened {
        ui::info(format!(
            "imagenet: already in place in {} ({} training, {} validation images){}",
            out.display(),
            counts.0,
            counts.1,
            if marker_path.is_file() {
                ""
            } else {
                "; nothing to check or unpack"
            }
        ));
        return Ok(out.to_path_buf());
    }
    let md5s: Vec<String> = match &o.md5_override {
        Some(m) => m.iter().map(|s| s.to_ascii_lowercase()).collect(),
        None => IMAGENET_ARCHIVES
            .iter()
            .map(|a| a.md5.to_string())
            .collect(),
    };
    for m in &md5s {
        ensure!(
            net::is_hex(m, 32),
            "expected MD5 {m:?} is not 32 hex digits"
        );
    }

    let mut problems = Vec::new();
    let mut digests = Vec::new();
    for (archive, md5) in IMAGENET_ARCHIVES.iter().zip(&md5s) {
        let path = out.join(archive.file);
        if !path.is_file() {
            problems.push(format!(
                "missing {} ({}; md5 {md5})",
                path.display(),
                archive.what
            ));
            continue;
        }
        ui::info(format!("imagenet: checking {}", path.display()));
        let d = net::digest_file(&path)?;
        if &d.md5 != md5 {
            problems.push(format!(
                "{} has md5 {}, not {md5} (incomplete or a different file: download it again)",
                path.display(),
                d.md5
            ));
        } else {
            ui::info(format!("imagenet: {} is good (md5 {md5})", archive.file));
        }
        digests.push((archive, d));
    }
    if !problems.is_empty() {
        bail!(
            "imagenet cannot be downloaded for you (its terms require an account): get the \
             ILSVRC2012 archives from {IMAGENET_SITE}, put them in {} and rerun this command to \
             check and unpack them: {}",
            out.display(),
            problems.join("; ")
        );
    }

    for target in TARGETS {
        let path = out.join(target);
        if path.exists() {
            let why = opened
                .as_ref()
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            bail!(
                "{} already exists but does not hold the whole dataset ({why}); move it away so \
                 that the archives can be unpacked in its place",
                path.display()
            );
        }
    }
    remove_stale_staging(out);
    let staging = out.join(format!(".saeclip-unpack-imagenet-{}", std::process::id()));
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        let [train, val, devkit] = IMAGENET_ARCHIVES.map(|a| out.join(a.file));
        ui::info(format!("imagenet: unpacking {}", train.display()));
        unpack_train(&train, &staging.join("train"))?;
        ui::info(format!("imagenet: unpacking {}", val.display()));
        unpack_tar(&val, &staging.join("val"), false)?;
        ui::info(format!("imagenet: unpacking {}", devkit.display()));
        unpack_tar(&devkit, &staging, true)?;
        ensure!(
            staging
                .join(data::imagenet::DEVKIT_FOLDER)
                .join("data")
                .join(data::imagenet::DEVKIT_GROUND_TRUTH)
                .is_file(),
            "{} has no {}/data/{}: not the ILSVRC2012 devkit",
            devkit.display(),
            data::imagenet::DEVKIT_FOLDER,
            data::imagenet::DEVKIT_GROUND_TRUTH
        );
        for target in TARGETS {
            std::fs::rename(staging.join(target), out.join(target)).with_context(|| {
                format!("cannot move the unpacked {target} into {}", out.display())
            })?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result?;

    let marker = Marker {
        format: "saeclip-dataset".into(),
        version: 1,
        dataset: "imagenet".into(),
        archives: digests
            .into_iter()
            .map(|(a, d)| MarkerArchive {
                file: a.file.into(),
                bytes: d.bytes,
                md5: d.md5,
                sha256: d.sha256,
            })
            .collect(),
        fetched_unix: net::unix_now(),
        saeclip_version: env!("CARGO_PKG_VERSION").into(),
    };
    disk::write_bytes_atomic(&marker_path, &serde_json::to_vec_pretty(&marker)?)?;
    ui::info(format!(
        "imagenet: ready in {}; the archives there may be deleted",
        out.display()
    ));
    Ok(out.to_path_buf())
}

/// The image counts of both splits, or why `spec` does not open for both.
fn unpacked(spec: &DatasetSpec) -> Result<(usize, usize)> {
    let train = data::open(spec, Split::Train)?;
    let val = data::open(spec, Split::Test)?;
    Ok((train.len(), val.len()))
}

/// Unpack a tar (gzipped when `gz`) into `dest`.
fn unpack_tar(archive: &Path, dest: &Path, gz: bool) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let file = BufReader::new(
        File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?,
    );
    let result = if gz {
        tar::Archive::new(flate2::read::GzDecoder::new(file)).unpack(dest)
    } else {
        tar::Archive::new(file).unpack(dest)
    };
    result.with_context(|| {
        format!(
            "cannot unpack {} into {}",
            archive.display(),
            dest.display()
        )
    })
}

/// The train archive holds one `<wnid>.tar` per class: unpack each into `dest/<wnid>/`.
fn unpack_train(archive: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let file = BufReader::new(
        File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?,
    );
    let mut outer = tar::Archive::new(file);
    let bad = |e: std::io::Error| anyhow::anyhow!("cannot unpack {}: {e}", archive.display());
    let mut classes = 0usize;
    for entry in outer.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(wnid) = name.strip_suffix(".tar") else {
            continue;
        };
        ensure!(
            data::imagenet::imagenet_index(wnid).is_some(),
            "{}: member {name} is not <wnid>.tar for an ImageNet-1k class: not the ILSVRC2012 \
             training archive",
            archive.display()
        );
        let class_dir = dest.join(wnid);
        std::fs::create_dir_all(&class_dir)
            .with_context(|| format!("cannot create {}", class_dir.display()))?;
        tar::Archive::new(entry)
            .unpack(&class_dir)
            .with_context(|| format!("cannot unpack {name} of {}", archive.display()))?;
        classes += 1;
    }
    ensure!(
        classes > 0,
        "{} holds no <wnid>.tar members: not the ILSVRC2012 training archive",
        archive.display()
    );
    Ok(())
}

/// Remove staging folders that killed runs left behind.
fn remove_stale_staging(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".saeclip-unpack-imagenet-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_torchvisions() {
        let names: Vec<&str> = IMAGENET_ARCHIVES.iter().map(|a| a.file).collect();
        assert_eq!(
            names,
            [
                "ILSVRC2012_img_train.tar",
                "ILSVRC2012_img_val.tar",
                "ILSVRC2012_devkit_t12.tar.gz"
            ]
        );
        assert!(IMAGENET_ARCHIVES.iter().all(|a| net::is_hex(a.md5, 32)));
    }

    #[test]
    fn missing_archives_fail_with_one_line_naming_all_three() {
        let dir = tempfile::tempdir().unwrap();
        let err = fetch_imagenet(&ImageNetOptions::new(dir.path()))
            .unwrap_err()
            .to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        for a in IMAGENET_ARCHIVES {
            assert!(err.contains(a.file) && err.contains(a.md5), "{err}");
        }
        assert!(err.contains("image-net.org"), "{err}");
        assert!(!dataset_marker(dir.path()).exists());
    }

    fn dataset_marker(out: &Path) -> PathBuf {
        dataset_marker_path(out, Dataset::ImageNet)
    }
}
