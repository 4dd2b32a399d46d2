//! Downloads, for machines with a network: the published dataset archives and the files of
//! Hugging Face models and published SAEs.
//!
//! Everything is checked against a published checksum before it is placed where the readers
//! look, a rerun skips finished work and resumes interrupted downloads, and a failure never
//! leaves anything that looks complete. Without a network each function fails with one line
//! saying what to download by hand and where to put it.

mod catalog;
mod dataset;
mod imagenet;
mod model;
mod net;
mod releases;
mod sae;

pub use catalog::{dataset_marker_path, Dataset};
pub use dataset::{fetch_dataset, FetchDatasetOptions, DATASET_BASE_URL_ENV};
pub use imagenet::{fetch_imagenet, ImageNetArchive, ImageNetOptions, IMAGENET_ARCHIVES};
pub use model::{fetch_model, FetchModelOptions, MODEL_MARKER};
pub use releases::{release_table, Release, RELEASES};
pub use sae::{
    default_checkpoint, default_checkpoint_for, fetch_sae, parse_source, select, FetchSaeOptions,
    FetchedSae, Selection,
};
