//! `fetch dataset`: download a dataset's published archive, check its published MD5, unpack
//! it into the official layout. (ImageNet cannot be downloaded: `super::imagenet` checks and
//! unpacks the archives obtained by hand.)
//!
//! On disk, in the output directory DIR:
//! - `DIR/<archive>.part` while downloading; a rerun resumes it with an HTTP Range request;
//! - `DIR/<archive>` once complete (kept until the dataset is in place, then removed);
//! - `DIR/.saeclip-unpack-<name>-<pid>/` while unpacking;
//! - `DIR/<folder>` (e.g. `cifar-10-batches-bin`), renamed into place whole;
//! - `DIR/.saeclip-fetch-<name>.json`, the marker, written atomically last. Only the folder
//!   together with a marker naming the expected checksum counts as complete.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::catalog::{dataset_marker_path, Dataset};
use super::net::{self, Digests};
use crate::{disk, ui};

/// Environment variable holding a base URL that replaces the publishers' (a mirror, or a
/// local server in tests). `--base-url` wins over it.
pub const DATASET_BASE_URL_ENV: &str = "SAECLIP_DATASET_BASE_URL";

/// How many times one run resumes a download whose connection broke off.
const MAX_RESUMES: u32 = 5;

const MARKER_FORMAT: &str = "saeclip-dataset";
const MARKER_VERSION: u32 = 1;

/// What `fetch_dataset` does.
#[derive(Debug, Clone)]
pub struct FetchDatasetOptions {
    pub dataset: Dataset,
    /// Directory to unpack into; the dataset ends up in `out/<folder>`.
    pub out: PathBuf,
    /// URL of a directory holding the archive under its official name, instead of the
    /// publisher's (a mirror, or a local server). `None`: the publisher's.
    pub base_url: Option<String>,
    /// Expected MD5 instead of the published one, for tests that serve a fake archive. The
    /// command line never sets it, so real fetches always check the published checksum.
    pub md5_override: Option<String>,
    /// Draw a progress bar (only ever drawn when stderr is a terminal).
    pub progress: bool,
}

impl FetchDatasetOptions {
    /// Fetch `dataset` from its publisher into `out`, checking the published MD5.
    pub fn new(dataset: Dataset, out: impl Into<PathBuf>) -> Self {
        Self {
            dataset,
            out: out.into(),
            base_url: None,
            md5_override: None,
            progress: true,
        }
    }
}

/// The marker written once a dataset is complete.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
    dataset: String,
    folder: String,
    url: String,
    archive: String,
    bytes: u64,
    md5: String,
    sha256: String,
    fetched_unix: u64,
    saeclip_version: String,
}

/// Download, verify and unpack a dataset; return the path of its folder (`out/<folder>`).
/// A dataset already complete in `out` is left as it is. ImageNet is not downloaded: its
/// archives, put in `out` by hand, are checked and unpacked (`out` is returned).
pub fn fetch_dataset(options: &FetchDatasetOptions) -> Result<PathBuf> {
    let dataset = options.dataset;
    let Some(published) = dataset.published() else {
        if options.base_url.is_some() {
            ui::warn("imagenet: a base URL is not used: ImageNet's archives are obtained by hand");
        }
        return super::imagenet::fetch_imagenet(&super::imagenet::ImageNetOptions::new(
            &options.out,
        ));
    };
    let name = dataset.name();
    let md5 = options
        .md5_override
        .as_deref()
        .unwrap_or(published.md5)
        .to_ascii_lowercase();
    ensure!(
        net::is_hex(&md5, 32),
        "expected MD5 {md5:?} is not 32 hex digits"
    );
    let base = options
        .base_url
        .as_deref()
        .unwrap_or(published.base_url)
        .trim_end_matches('/');
    ensure!(
        !base.is_empty(),
        "the base URL is empty: give a URL such as https://host/dir or leave it out"
    );
    let url = format!("{base}/{}", published.archive);
    let out = options.out.as_path();
    let target = out.join(published.folder);
    let marker_path = dataset_marker_path(out, dataset);

    if let Some(marker) = complete_marker(&marker_path, &target, name, &md5) {
        ui::info(format!(
            "{name}: already complete in {} (md5 {} checked when fetched); remove {} to fetch again",
            target.display(),
            marker.md5,
            marker_path.display()
        ));
        return Ok(target);
    }

    let advice = format!(
        "download it on a networked machine, check that its md5 is {md5} (as listed by {}), and \
         unpack it into {} so that {} exists (or put the archive in {} and rerun this command)",
        published.md5_source,
        out.display(),
        target.display(),
        out.display()
    );
    let archive = out.join(published.archive);
    let partial = out.join(format!("{}.part", published.archive));
    let digests = obtain_archive(
        &url,
        &archive,
        &partial,
        &md5,
        &advice,
        options.progress,
        name,
    )?;

    unpack_into_place(&archive, out, name, published.folder, &target)?;
    let marker = Marker {
        format: MARKER_FORMAT.into(),
        version: MARKER_VERSION,
        dataset: name.into(),
        folder: published.folder.into(),
        url,
        archive: published.archive.into(),
        bytes: digests.bytes,
        md5: digests.md5,
        sha256: digests.sha256,
        fetched_unix: net::unix_now(),
        saeclip_version: env!("CARGO_PKG_VERSION").into(),
    };
    disk::write_bytes_atomic(&marker_path, &serde_json::to_vec_pretty(&marker)?)?;
    std::fs::remove_file(&archive)
        .with_context(|| format!("cannot remove the unpacked archive {}", archive.display()))?;
    ui::info(format!("{name}: ready in {}", target.display()));
    Ok(target)
}

/// The marker, if it says this dataset with this checksum is complete and its folder exists.
fn complete_marker(marker_path: &Path, target: &Path, name: &str, md5: &str) -> Option<Marker> {
    if !target.is_dir() {
        return None;
    }
    let marker: Marker = serde_json::from_slice(&std::fs::read(marker_path).ok()?).ok()?;
    (marker.format == MARKER_FORMAT
        && marker.version == MARKER_VERSION
        && marker.dataset == name
        && marker.md5.eq_ignore_ascii_case(md5))
    .then_some(marker)
}

/// Make `archive` a complete download whose MD5 is `md5`; return its digests. An archive
/// already in place (an earlier run, or one put there by hand) is used if it checks out.
fn obtain_archive(
    url: &str,
    archive: &Path,
    partial: &Path,
    md5: &str,
    advice: &str,
    progress: bool,
    name: &str,
) -> Result<Digests> {
    if archive.is_file() {
        ui::info(format!("{name}: checking {}", archive.display()));
        let digests = net::digest_file(archive)?;
        if digests.md5 == md5 {
            return Ok(digests);
        }
        ui::warn(format!(
            "{} has md5 {}, not {md5}: removing it and downloading again",
            archive.display(),
            digests.md5
        ));
        std::fs::remove_file(archive)
            .with_context(|| format!("cannot remove {}", archive.display()))?;
    }
    download_resumable(url, partial, advice, progress, name)?;
    std::fs::rename(partial, archive)
        .with_context(|| format!("cannot move {} to {}", partial.display(), archive.display()))?;
    ui::info(format!("{name}: checking md5"));
    let digests = net::digest_file(archive)?;
    if digests.md5 != md5 {
        let _ = std::fs::remove_file(archive);
        bail!(
            "checksum mismatch for {url}: expected md5 {md5}, found {} ({} bytes); removed the \
             download, rerun to fetch it again",
            digests.md5,
            digests.bytes
        );
    }
    Ok(digests)
}

/// Download `url` into `partial`, resuming from whatever `partial` already holds with a
/// Range request, and resuming again (up to `MAX_RESUMES` times) when the connection breaks.
fn download_resumable(
    url: &str,
    partial: &Path,
    advice: &str,
    progress: bool,
    name: &str,
) -> Result<()> {
    let agent = net::agent();
    let mut resumes = 0;
    loop {
        let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        // Identity encoding: the bytes on disk must be the archive's bytes, so that ranges
        // line up and the checksum applies.
        let mut request = agent.get(url).set("Accept-Encoding", "identity");
        if have > 0 {
            request = request.set("Range", &format!("bytes={have}-"));
        }
        let response = match request.call() {
            Ok(response) => response,
            // Nothing past what we have: the partial file is whole (the checksum decides).
            Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
            Err(err) if have > 0 && resumes < MAX_RESUMES && net::is_transient(&err) => {
                resumes += 1;
                ui::info(format!(
                    "{name}: cannot reach {url} ({}); trying again ({resumes} of {MAX_RESUMES})",
                    net::describe(&err)
                ));
                std::thread::sleep(backoff(resumes));
                continue;
            }
            Err(err) => bail!("cannot reach {url} ({}): {advice}", net::describe(&err)),
        };
        let (start, total) = match response.status() {
            206 => match parse_content_range(response.header("Content-Range")) {
                Some((start, total)) if start == have => (start, total),
                // A range we did not ask for: start over.
                _ => {
                    truncate(partial)?;
                    continue;
                }
            },
            _ => (
                0,
                response
                    .header("Content-Length")
                    .and_then(|v| v.trim().parse().ok()),
            ),
        };
        if let Some(parent) = partial.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut file = if start > 0 {
            OpenOptions::new().append(true).open(partial)
        } else {
            File::create(partial)
        }
        .with_context(|| format!("cannot write {}", partial.display()))?;
        if start > 0 {
            ui::info(format!(
                "{name}: resuming {url} at {start} of {} bytes",
                total.map_or("?".into(), |t| t.to_string())
            ));
        } else {
            ui::info(format!(
                "{name}: downloading {url}{}",
                total.map_or(String::new(), |t| format!(" ({t} bytes)"))
            ));
        }
        let bar = net::progress_bar(progress, total, name.to_string());
        bar.set_position(start);
        let copied = copy_body(response.into_reader(), &mut file, &bar);
        bar.finish_and_clear();
        file.sync_all()
            .with_context(|| format!("cannot write {}", partial.display()))?;
        let on_disk = std::fs::metadata(partial)
            .map(|m| m.len())
            .with_context(|| format!("cannot read {}", partial.display()))?;
        let broke = match &copied {
            Err(err) => Some(err.to_string()),
            Ok(_) if total.is_some_and(|t| on_disk < t) => Some(format!(
                "connection closed at {on_disk} of {} bytes",
                total.unwrap_or(0)
            )),
            Ok(_) => None,
        };
        let Some(reason) = broke else {
            return Ok(());
        };
        if resumes >= MAX_RESUMES {
            bail!(
                "download of {url} broke off {} times (last: {reason}); {on_disk} bytes are in {}, \
                 rerun to resume",
                resumes + 1,
                partial.display()
            );
        }
        resumes += 1;
        ui::info(format!(
            "{name}: download interrupted at {on_disk} bytes ({reason}); resuming ({resumes} of {MAX_RESUMES})"
        ));
        std::thread::sleep(backoff(resumes));
    }
}

/// Copy the response body to the file; on error, the bytes written so far stay written.
fn copy_body(
    mut body: impl Read,
    file: &mut File,
    bar: &indicatif::ProgressBar,
) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; 1 << 16];
    let mut copied = 0u64;
    loop {
        let n = match body.read(&mut buffer) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                file.flush()?;
                return Err(e);
            }
        };
        file.write_all(&buffer[..n])?;
        copied += n as u64;
        bar.inc(n as u64);
    }
}

fn truncate(path: &Path) -> Result<()> {
    File::create(path).with_context(|| format!("cannot truncate {}", path.display()))?;
    Ok(())
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 * u64::from(attempt.min(6)))
}

/// `bytes START-END/TOTAL` → (START, Some(TOTAL)); `TOTAL` may be `*`.
fn parse_content_range(header: Option<&str>) -> Option<(u64, Option<u64>)> {
    let rest = header?.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

/// Unpack `archive` into a fresh staging folder in `out`, then rename its `folder` to
/// `target`, replacing an incomplete one (there is no marker yet, so nothing of it counts).
fn unpack_into_place(
    archive: &Path,
    out: &Path,
    name: &str,
    folder: &str,
    target: &Path,
) -> Result<()> {
    remove_stale_staging(out, name);
    let staging = out.join(format!(".saeclip-unpack-{name}-{}", std::process::id()));
    let result = (|| {
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        ui::info(format!("{name}: unpacking {}", archive.display()));
        let file =
            File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
        let mut tar =
            tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
        tar.unpack(&staging).with_context(|| {
            format!(
                "cannot unpack {} into {}",
                archive.display(),
                staging.display()
            )
        })?;
        let unpacked = staging.join(folder);
        ensure!(
            unpacked.is_dir(),
            "{} has no top-level folder {folder}/: not the {name} archive",
            archive.display()
        );
        if target.exists() {
            ui::info(format!(
                "{name}: replacing {}, which has no completion marker",
                target.display()
            ));
            std::fs::remove_dir_all(target)
                .with_context(|| format!("cannot remove {}", target.display()))?;
        }
        std::fs::rename(&unpacked, target)
            .with_context(|| format!("cannot move {} to {}", unpacked.display(), target.display()))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Remove staging folders that killed runs left behind.
fn remove_stale_staging(out: &Path, name: &str) {
    let prefix = format!(".saeclip-unpack-{name}-");
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(
            parse_content_range(Some("bytes 100-199/200")),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range(Some("bytes 0-0/*")), Some((0, None)));
        assert_eq!(parse_content_range(Some("items 0-1/2")), None);
        assert_eq!(parse_content_range(None), None);
    }

    #[test]
    fn published_sources() {
        assert_eq!(
            Dataset::Cifar10.default_url().unwrap(),
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
        );
        assert_eq!(Dataset::Cifar100.folder(), Some("cifar-100-binary"));
        assert_eq!(
            Dataset::Food101.default_url().unwrap(),
            "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"
        );
        for d in [Dataset::Cifar10, Dataset::Cifar100, Dataset::Food101] {
            assert!(net::is_hex(d.md5().unwrap(), 32), "{d:?}");
        }
        assert_eq!(Dataset::ImageNet.archive(), None);
    }

    #[test]
    fn marker_needs_folder_and_matching_md5() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("cifar-10-batches-bin");
        let marker_path = dataset_marker_path(dir.path(), Dataset::Cifar10);
        let marker = Marker {
            format: MARKER_FORMAT.into(),
            version: MARKER_VERSION,
            dataset: "cifar10".into(),
            folder: "cifar-10-batches-bin".into(),
            url: "u".into(),
            archive: "a".into(),
            bytes: 1,
            md5: "00".repeat(16),
            sha256: "00".repeat(32),
            fetched_unix: 0,
            saeclip_version: "0".into(),
        };
        std::fs::write(&marker_path, serde_json::to_vec(&marker).unwrap()).unwrap();
        let md5 = "00".repeat(16);
        assert!(complete_marker(&marker_path, &target, "cifar10", &md5).is_none());
        std::fs::create_dir(&target).unwrap();
        assert!(complete_marker(&marker_path, &target, "cifar10", &md5).is_some());
        assert!(complete_marker(&marker_path, &target, "cifar100", &md5).is_none());
        assert!(complete_marker(&marker_path, &target, "cifar10", &"11".repeat(16)).is_none());
    }
}
