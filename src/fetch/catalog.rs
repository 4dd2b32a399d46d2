//! The datasets `fetch dataset` knows: their names, where their archives are published,
//! the folders they unpack to, and the marker that says one is complete. Below both the
//! generic download (`super::dataset`) and ImageNet's hand-obtained archives
//! (`super::imagenet`).

use std::path::{Path, PathBuf};

/// A dataset that `fetch dataset` knows how to download.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    /// CIFAR-10, binary version (Toronto).
    #[value(name = "cifar10")]
    Cifar10,
    /// CIFAR-100, binary version (Toronto).
    #[value(name = "cifar100")]
    Cifar100,
    /// Food-101 (ETH Zürich).
    #[value(name = "food101")]
    Food101,
    /// ImageNet-1k (ILSVRC2012): not downloadable (its terms need an account); checks the
    /// archives put in DIR by hand and unpacks them.
    #[value(name = "imagenet")]
    ImageNet,
}

/// Where a dataset's archive is published and what it unpacks to.
pub(super) struct Published {
    /// Directory URL; the archive's name is appended.
    pub(super) base_url: &'static str,
    pub(super) archive: &'static str,
    /// MD5 of the archive, as listed by `md5_source`.
    pub(super) md5: &'static str,
    pub(super) md5_source: &'static str,
    /// Top-level folder inside the archive; the dataset readers look for `DIR/<folder>`.
    pub(super) folder: &'static str,
}

impl Dataset {
    /// The name used on the command line and in dataset specs (`cifar10:DIR`).
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Cifar10 => "cifar10",
            Dataset::Cifar100 => "cifar100",
            Dataset::Food101 => "food101",
            Dataset::ImageNet => "imagenet",
        }
    }

    /// Where the archive is published; `None` for ImageNet, which is obtained by hand.
    pub(super) fn published(self) -> Option<Published> {
        Some(match self {
            // https://www.cs.toronto.edu/~kriz/cifar.html, "CIFAR-10 binary version".
            Dataset::Cifar10 => Published {
                base_url: "https://www.cs.toronto.edu/~kriz",
                archive: "cifar-10-binary.tar.gz",
                md5: "c32a1d4ab5d03f1284b67883e8d87530",
                md5_source: "https://www.cs.toronto.edu/~kriz/cifar.html",
                folder: "cifar-10-batches-bin",
            },
            // Same page, "CIFAR-100 binary version".
            Dataset::Cifar100 => Published {
                base_url: "https://www.cs.toronto.edu/~kriz",
                archive: "cifar-100-binary.tar.gz",
                md5: "03b5dce01913d631647c71ecec9e9cb8",
                md5_source: "https://www.cs.toronto.edu/~kriz/cifar.html",
                folder: "cifar-100-binary",
            },
            // torchvision.datasets.Food101 (_URL, _MD5).
            Dataset::Food101 => Published {
                base_url: "http://data.vision.ee.ethz.ch/cvl",
                archive: "food-101.tar.gz",
                md5: "85eeb15f3717b99a5da872d97d918f87",
                md5_source: "torchvision.datasets.Food101",
                folder: "food-101",
            },
            // Three archives, obtained by hand: see `super::imagenet`.
            Dataset::ImageNet => return None,
        })
    }

    /// File name of the published archive (`None` for ImageNet).
    pub fn archive(self) -> Option<&'static str> {
        self.published().map(|p| p.archive)
    }

    /// The folder the archive unpacks to, e.g. `cifar-10-batches-bin`.
    pub fn folder(self) -> Option<&'static str> {
        self.published().map(|p| p.folder)
    }

    /// The published MD5 of the archive.
    pub fn md5(self) -> Option<&'static str> {
        self.published().map(|p| p.md5)
    }

    /// The publisher's URL of the archive.
    pub fn default_url(self) -> Option<String> {
        self.published()
            .map(|p| format!("{}/{}", p.base_url, p.archive))
    }
}

/// Path of the marker that says `dataset` is complete in `out`.
pub fn dataset_marker_path(out: &Path, dataset: Dataset) -> PathBuf {
    out.join(format!(".saeclip-fetch-{}.json", dataset.name()))
}
