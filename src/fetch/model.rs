//! `fetch model`: download `config.json` and `model.safetensors` of a Hugging Face repo
//! (and the [`OPTIONAL`] files it has, such as `preprocessor_config.json`) through the
//! `hf-hub` cache, check them, and place them in a model directory.
//!
//! The hub names each file by its etag; for LFS files such as `model.safetensors` that is
//! the SHA-256 of the content (`X-Linked-Etag`), and `hf-hub` stores the file in the cache as
//! `blobs/<etag>`. The downloaded file is hashed and compared with that name before it is
//! placed; a mismatch removes it from the cache and leaves the output directory untouched.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};

use super::net;
use crate::{disk, ui};

/// The marker written into the output directory once both files are in place.
pub const MODEL_MARKER: &str = ".saeclip-fetch.json";

const MARKER_FORMAT: &str = "saeclip-model";
const MARKER_VERSION: u32 = 1;
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";
/// Files placed beside the model when the repository has them: without them a family
/// default applies. A repository's answer that one is absent (HTTP 404) is remembered in
/// the hub cache as `huggingface_hub` does (`.no_exist/<commit>/<file>`).
pub const OPTIONAL: &[&str] = &[
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// What `fetch_model` does.
#[derive(Debug, Clone)]
pub struct FetchModelOptions {
    /// Hugging Face repo id, e.g. `openai/clip-vit-base-patch32`.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// Directory to place `config.json` and `model.safetensors` in.
    pub out: PathBuf,
    /// Hub URL. `None`: `HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// The hub cache (the folder holding `models--*`). `None`: `HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`, as the Python `huggingface_hub` resolves it.
    pub cache_dir: Option<PathBuf>,
    /// Draw a progress bar (only ever drawn when stderr is a terminal).
    pub progress: bool,
}

impl FetchModelOptions {
    /// Fetch `repo` at `main` into `out`, with the hub and cache from the environment.
    pub fn new(repo: impl Into<String>, out: impl Into<PathBuf>) -> Self {
        Self {
            repo: repo.into(),
            revision: "main".into(),
            out: out.into(),
            endpoint: None,
            cache_dir: None,
            progress: true,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
    repo: String,
    revision: String,
    /// The commit the files came from (`X-Repo-Commit`).
    commit: String,
    endpoint: String,
    files: Vec<MarkerFile>,
    fetched_unix: u64,
    saeclip_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct MarkerFile {
    name: String,
    bytes: u64,
    sha256: String,
}

/// Download (or take from the hub cache) and check `config.json` and `model.safetensors` of
/// a repo, place them in `out`, and return `out`. A model already fetched into `out` from the
/// same repo and revision, with files that still match, is left as it is.
pub fn fetch_model(options: &FetchModelOptions) -> Result<PathBuf> {
    let repo_id = options.repo.trim();
    ensure!(
        !repo_id.is_empty()
            && !repo_id.contains(char::is_whitespace)
            && !repo_id
                .split('/')
                .any(|part| part.is_empty() || part == ".."),
        "{:?} is not a Hugging Face repo id: give one such as openai/clip-vit-base-patch32",
        options.repo
    );
    ensure!(
        !options.revision.is_empty(),
        "the revision is empty: give a branch, tag or commit (default main)"
    );
    let out = options.out.as_path();
    let marker_path = out.join(MODEL_MARKER);
    if still_complete(&marker_path, out, repo_id, &options.revision) {
        ui::info(format!(
            "{repo_id}: already in {} (revision {}); remove {} to fetch again",
            out.display(),
            options.revision,
            marker_path.display()
        ));
        return Ok(out.to_path_buf());
    }

    let (api, endpoint) = hub_api(options.endpoint.as_deref(), &options.cache_dir)?;
    let cache = api_cache(&options.cache_dir)?;
    let repo = Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        options.revision.clone(),
    );
    let api_repo = api.repo(repo.clone());
    let advice = format!(
        "on a networked machine download {CONFIG} and {WEIGHTS} from {endpoint}/{repo_id} \
         (revision {}) and put them in {}",
        options.revision,
        out.display()
    );

    let weights = obtain(&api_repo, &cache, &repo, WEIGHTS, &advice, options.progress)?;
    let weights_sha = verify_weights(&weights, &api_repo.url(WEIGHTS))?;
    let config = obtain(&api_repo, &cache, &repo, CONFIG, &advice, options.progress)?;
    verify_config(&config, &api_repo.url(CONFIG))?;
    let config_sha = net::sha256_file(&config.blob)?;
    let mut extras = Vec::new();
    for &file in OPTIONAL {
        match obtain_optional(&api_repo, &cache, &repo, file, &weights.commit, &advice)? {
            Some(cached) => extras.push((file, cached)),
            None => ui::debug(format!("{repo_id}: has no {file}")),
        }
    }

    // Replace an earlier fetch so that it never looks complete half-way: marker first out,
    // weights before config (a directory without config.json is no model), marker last in.
    match std::fs::remove_file(&marker_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot remove {}", marker_path.display()))
        }
    }
    place(&weights.blob, &out.join(WEIGHTS))?;
    for (file, cached) in &extras {
        place(&cached.blob, &out.join(file))?;
    }
    place(&config.blob, &out.join(CONFIG))?;
    let mut extra_files = Vec::new();
    for (file, cached) in &extras {
        extra_files.push(MarkerFile {
            name: (*file).into(),
            bytes: file_len(&cached.blob)?,
            sha256: net::sha256_file(&cached.blob)?,
        });
    }
    let marker = Marker {
        format: MARKER_FORMAT.into(),
        version: MARKER_VERSION,
        repo: repo_id.into(),
        revision: options.revision.clone(),
        commit: weights.commit.clone(),
        endpoint,
        files: vec![
            MarkerFile {
                name: WEIGHTS.into(),
                bytes: file_len(&weights.blob)?,
                sha256: weights_sha,
            },
            MarkerFile {
                name: CONFIG.into(),
                bytes: file_len(&config.blob)?,
                sha256: config_sha,
            },
        ]
        .into_iter()
        .chain(extra_files)
        .collect(),
        fetched_unix: net::unix_now(),
        saeclip_version: env!("CARGO_PKG_VERSION").into(),
    };
    disk::write_bytes_atomic(&marker_path, &serde_json::to_vec_pretty(&marker)?)?;
    ui::info(format!(
        "{repo_id}: {CONFIG} and {WEIGHTS} (commit {}) in {}",
        marker.commit,
        out.display()
    ));
    Ok(out.to_path_buf())
}

/// The hub client (endpoint: the argument, else `HF_ENDPOINT`, else huggingface.co; token:
/// `HF_TOKEN`; cache: the argument, else the environment's) and the endpoint it talks to.
pub(super) fn hub_api(
    endpoint: Option<&str>,
    cache_dir: &Option<PathBuf>,
) -> Result<(hf_hub::api::sync::Api, String)> {
    let endpoint = endpoint
        .map(str::to_string)
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let endpoint = endpoint.trim_end_matches('/').to_string();
    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    let mut builder = ApiBuilder::from_cache(api_cache(cache_dir)?)
        .with_endpoint(endpoint.clone())
        .with_progress(false)
        .with_retries(3);
    if token.is_some() {
        builder = builder.with_token(token);
    }
    let api = builder
        .build()
        .map_err(|e| anyhow!("cannot set up the Hugging Face client: {e}"))?;
    Ok((api, endpoint))
}

/// The hub cache: `cache_dir`, else the one the environment names.
pub(super) fn api_cache(cache_dir: &Option<PathBuf>) -> Result<Cache> {
    Ok(Cache::new(match cache_dir {
        Some(dir) => dir.clone(),
        None => hub_cache_from_env()?,
    }))
}

/// The hub cache as `huggingface_hub` finds it.
fn hub_cache_from_env() -> Result<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HF_HUB_CACHE") {
        return Ok(dir);
    }
    if let Some(home) = var("HF_HOME") {
        return Ok(home.join("hub"));
    }
    if let Some(cache) = var("XDG_CACHE_HOME") {
        return Ok(cache.join("huggingface/hub"));
    }
    if let Some(home) = var("HOME") {
        return Ok(home.join(".cache/huggingface/hub"));
    }
    bail!("cannot find a place for the Hugging Face cache: set HF_HOME to a writable directory")
}

/// A file in the hub cache.
pub(super) struct Cached {
    /// `snapshots/<commit>/<file>`, a link to the blob.
    pub pointer: PathBuf,
    /// `blobs/<etag>`, the content.
    pub blob: PathBuf,
    /// The blob's name: the etag the hub gave.
    pub etag: String,
    pub commit: String,
}

impl Cached {
    fn from_pointer(pointer: PathBuf) -> Result<Self> {
        let blob = std::fs::canonicalize(&pointer)
            .with_context(|| format!("cannot resolve {}", pointer.display()))?;
        let etag = blob
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let commit = pointer
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            pointer,
            blob,
            etag,
            commit,
        })
    }

    /// Drop the file from the cache, so that the next run downloads it again.
    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.blob);
        let _ = std::fs::remove_file(&self.pointer);
    }
}

/// The file from the cache, downloading it when the cache does not have it.
pub(super) fn obtain(
    api_repo: &ApiRepo,
    cache: &Cache,
    repo: &Repo,
    file: &str,
    advice: &str,
    progress: bool,
) -> Result<Cached> {
    if let Some(pointer) = cache.repo(repo.clone()).get(file) {
        ui::debug(format!("{file}: from the cache, {}", pointer.display()));
        return Cached::from_pointer(pointer);
    }
    let url = api_repo.url(file);
    let bar = HubProgress(net::progress_bar(progress, Some(0), file.to_string()));
    let pointer = api_repo
        .download_with_progress(file, bar)
        .map_err(|e| hub_error(&url, e, advice))?;
    Cached::from_pointer(pointer)
}

/// An [`OPTIONAL`] file: from the cache, else downloaded; `None` when the repository (at
/// `commit`) has no such file.
fn obtain_optional(
    api_repo: &ApiRepo,
    cache: &Cache,
    repo: &Repo,
    file: &str,
    commit: &str,
    advice: &str,
) -> Result<Option<Cached>> {
    if let Some(pointer) = cache.repo(repo.clone()).get(file) {
        return Cached::from_pointer(pointer).map(Some);
    }
    let no_exist = cache
        .path()
        .join(repo.folder_name())
        .join(".no_exist")
        .join(commit)
        .join(file);
    if no_exist.is_file() {
        return Ok(None);
    }
    let url = api_repo.url(file);
    match api_repo.download(file) {
        Ok(pointer) => Cached::from_pointer(pointer).map(Some),
        Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => {
            // Best effort: without the note the next fetch asks again.
            if let Some(dir) = no_exist.parent() {
                let _ = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&no_exist, b""));
            }
            Ok(None)
        }
        Err(e) => Err(hub_error(&url, e, advice)),
    }
}

/// One line for a failed hub download.
pub(super) fn hub_error(url: &str, err: ApiError, advice: &str) -> anyhow::Error {
    match err {
        ApiError::RequestError(e) => {
            anyhow!("cannot reach {url} ({}): {advice}", net::describe(&e))
        }
        ApiError::TooManyRetries(inner) => hub_error(url, *inner, advice),
        ApiError::MissingHeader(header) | ApiError::InvalidHeader(header) => anyhow!(
            "{url} answered without a valid {header} header: is HF_ENDPOINT a Hugging Face hub? \
             Otherwise {advice}"
        ),
        ApiError::LockAcquisition(lock) => anyhow!(
            "another download holds {}: wait for it to finish (or remove the lock if none runs)",
            lock.display()
        ),
        other => anyhow!("cannot download {url}: {other}"),
    }
}

/// Check `model.safetensors` against the hub's SHA-256 and parse its header; return its
/// SHA-256.
fn verify_weights(weights: &Cached, url: &str) -> Result<String> {
    ui::debug(format!("{WEIGHTS}: checking sha256"));
    let sha = net::sha256_file(&weights.blob)?;
    let etag = weights.etag.to_ascii_lowercase();
    if net::is_hex(&etag, 64) {
        if sha != etag {
            weights.remove();
            bail!(
                "{WEIGHTS} from {url} has sha256 {sha} but the hub says {etag}: removed the \
                 corrupt copy from the Hugging Face cache ({}), rerun to download it again",
                weights.blob.display()
            );
        }
    } else {
        ui::warn(format!(
            "the hub gave no sha256 for {url} (etag {:?}, not an LFS file): only its header is checked",
            weights.etag
        ));
    }
    let file = std::fs::File::open(&weights.blob)
        .with_context(|| format!("cannot open {}", weights.blob.display()))?;
    // SAFETY: the blob is not modified while mapped (the cache is written by whole-file
    // renames only).
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", weights.blob.display()))?;
    if let Err(e) = safetensors::SafeTensors::deserialize(&map) {
        if !net::is_hex(&etag, 64) {
            weights.remove();
        }
        bail!("{WEIGHTS} from {url} is not a valid safetensors file ({e}): pick a repo with Hugging Face {WEIGHTS} weights");
    }
    Ok(sha)
}

/// `config.json` must be a JSON object.
fn verify_config(config: &Cached, url: &str) -> Result<()> {
    let text = std::fs::read(&config.blob)
        .with_context(|| format!("cannot read {}", config.blob.display()))?;
    match serde_json::from_slice::<serde_json::Value>(&text) {
        Ok(value) if value.is_object() => Ok(()),
        Ok(_) => {
            config.remove();
            bail!("{CONFIG} from {url} is not a JSON object: removed it from the cache")
        }
        Err(e) => {
            config.remove();
            bail!("{CONFIG} from {url} is not JSON ({e}): removed it from the cache")
        }
    }
}

/// Put the blob at `dst` under its final name in one step: a hard link to the cache when the
/// file system allows, a copy otherwise.
pub(super) fn place(blob: &Path, dst: &Path) -> Result<()> {
    disk::write_atomic(dst, |tmp| {
        let _ = std::fs::remove_file(tmp);
        if std::fs::hard_link(blob, tmp).is_err() {
            std::fs::copy(blob, tmp)
                .with_context(|| format!("cannot copy {} to {}", blob.display(), tmp.display()))?;
        }
        Ok(())
    })
}

pub(super) fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len())
}

/// Whether `out` holds the files its marker lists for this repo and revision, unchanged.
fn still_complete(marker_path: &Path, out: &Path, repo: &str, revision: &str) -> bool {
    let Some(marker) = std::fs::read(marker_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Marker>(&bytes).ok())
    else {
        return false;
    };
    marker.format == MARKER_FORMAT
        && marker.version == MARKER_VERSION
        && marker.repo == repo
        && marker.revision == revision
        && [CONFIG, WEIGHTS]
            .iter()
            .all(|name| marker.files.iter().any(|f| f.name == *name))
        && marker.files.iter().all(|f| {
            let path = out.join(&f.name);
            file_len(&path).ok() == Some(f.bytes)
                && net::sha256_file(&path).ok().as_deref() == Some(f.sha256.as_str())
        })
}

/// `hf-hub` progress reports drawn on an `indicatif` bar.
struct HubProgress(indicatif::ProgressBar);

impl hf_hub::api::Progress for HubProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
    }

    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_repo_ids_are_refused_before_any_request() {
        for repo in ["", "a b", "org//name", "../x"] {
            let dir = tempfile::tempdir().unwrap();
            let mut options = FetchModelOptions::new(repo, dir.path());
            options.endpoint = Some("http://127.0.0.1:9".into());
            options.cache_dir = Some(dir.path().join("hub"));
            let err = fetch_model(&options).unwrap_err().to_string();
            assert!(err.contains("not a Hugging Face repo id"), "{err}");
        }
    }
}
