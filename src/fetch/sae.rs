//! `fetch sae`: download a published SAE from a Hugging Face repository (or one of its
//! sub-folders, or one file) through the `hf-hub` cache and import it with the format
//! detected from its files (DESIGN.md "Importing published SAEs").
//!
//! The repository is listed first (`/api/models/<repo>/revision/<rev>?blobs=true`); from
//! the names in the folder [`select`] decides the format the way `import --format auto`
//! does and takes only the files that format reads, so a multi-SAE repository costs one SAE's
//! download. Files stored in LFS are checked against the SHA-256 the hub gives (the listing's
//! `lfs.sha256` and the download's etag); a mismatch removes the copy from the cache. The
//! files are linked into a scratch folder with their repository layout, imported, and the
//! checkpoint is written atomically with the repository, revision, commit and file digests in
//! its header (`training.imported_from.hub`): a checkpoint with a matching record is what a
//! finished fetch leaves, and a rerun finds it and asks nothing of the hub.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use hf_hub::{Repo, RepoType};
use serde::Deserialize;
use serde_json::{json, Value};
use tch::Device;

use super::model::{api_cache, hub_api, obtain, Cached};
use super::net;
use crate::clip::Tokens;
use crate::disk::CHECKPOINTS_DIR;
use crate::sae::checkpoint;
use crate::sae::interop::{self, dictionary_learning, prisma, saev, sparsify, ImportFormat};
use crate::sae::interop::{ImportRequest, Imported};
use crate::ui;

/// SAE-Lens file names (as [`crate::sae::export`] writes and reads them).
const SAELENS_CFG: &str = crate::sae::export::CFG_FILE;
const SAELENS_WEIGHTS: &str = crate::sae::export::WEIGHTS_FILE;
/// The run-level config beside sparsify's per-hook folders, saev's and ViT-Prisma's config.
const CONFIG_JSON: &str = "config.json";

/// What `fetch_sae` does.
#[derive(Debug, Clone)]
pub struct FetchSaeOptions {
    /// `REPO[/SUBFOLDER]`: a Hugging Face repo id, then optionally the folder (or file) in it
    /// that holds the SAE.
    pub source: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// The checkpoint to write; `None`: [`default_checkpoint`] in `checkpoints/`.
    pub out: Option<PathBuf>,
    /// Hub URL. `None`: `HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// The hub cache; `None`: the one the environment names (as for `fetch model`).
    pub cache_dir: Option<PathBuf>,
    /// Draw progress bars (only on a terminal).
    pub progress: bool,
    /// The import flags (layer, tokens, hook, k, saev normalisation, dtype, force); its
    /// `path`, `out` and `format` are set here.
    pub import: ImportRequest,
}

impl FetchSaeOptions {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            revision: "main".into(),
            out: None,
            endpoint: None,
            cache_dir: None,
            progress: true,
            import: ImportRequest::new(ImportFormat::Auto, Path::new(""), Path::new("")),
        }
    }
}

/// What `fetch_sae` made.
#[derive(Debug)]
pub struct FetchedSae {
    pub checkpoint: PathBuf,
    /// The format the files were in.
    pub format: String,
    pub layer: Option<i64>,
    pub tokens: Option<Tokens>,
    pub model: Option<String>,
    /// The commit the files came from.
    pub commit: String,
    /// The checkpoint was already there from the same repository and revision.
    pub reused: bool,
}

/// `REPO[/SUBFOLDER]` split into the repo id and the path inside it ("" for the root).
pub fn parse_source(source: &str) -> Result<(String, String)> {
    let source = source.trim().trim_end_matches('/');
    let parts: Vec<&str> = source.split('/').collect();
    ensure!(
        parts.len() >= 2
            && !source.contains(char::is_whitespace)
            && parts.iter().all(|p| !p.is_empty() && *p != ".." && *p != "."),
        "{source:?} is not REPO[/SUBFOLDER]: give a Hugging Face repo id such as osunlp/SAE_CLIP_24K_ViT-B-16_IN1K, optionally followed by the folder that holds the SAE"
    );
    Ok((parts[..2].join("/"), parts[2..].join("/")))
}

/// `<dir>/<repo name>[-<subfolder, / as ->].safetensors`.
pub fn default_checkpoint(dir: &Path, repo: &str, subfolder: &str) -> PathBuf {
    let name = repo.rsplit('/').next().unwrap_or(repo);
    let name = if subfolder.is_empty() {
        name.to_string()
    } else {
        format!("{name}-{}", subfolder.replace('/', "-"))
    };
    dir.join(format!("{name}.safetensors"))
}

/// Where `fetch sae SOURCE` writes without `--out`: `checkpoints/<name>.safetensors`.
pub fn default_checkpoint_for(source: &str) -> Result<PathBuf> {
    let (repo, sub) = parse_source(source)?;
    Ok(default_checkpoint(Path::new(CHECKPOINTS_DIR), &repo, &sub))
}

/// The files to download for the SAE at `sub` in a repository holding `names`, and the path
/// (relative to the repository) to import.
#[derive(Debug, PartialEq)]
pub struct Selection {
    pub format: ImportFormat,
    pub files: Vec<String>,
    pub import_path: String,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

fn is_prisma_weights(name: &str) -> bool {
    name.ends_with(".pt") && !name.ends_with("_log_feature_sparsity.pt")
}

/// Decide the format of the SAE at `sub` from the repository's file names `names`, in
/// `import --format auto`'s order (SAE-Lens, sparsify, sparsify per hook, dictionary_learning,
/// saev, ViT-Prisma); `config` reads a small JSON file of the repository (ViT-Prisma is told
/// from its config.json). `hook` picks a sparsify sub-folder. `shown` names the source in
/// errors.
pub fn select(
    names: &[String],
    sub: &str,
    hook: Option<&str>,
    shown: &str,
    config: &mut dyn FnMut(&str) -> Result<Value>,
) -> Result<Selection> {
    let all: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    // A file: its folder's config.json comes with it.
    if all.contains(sub) {
        let cfg = join(parent(sub), CONFIG_JSON);
        let mut files = vec![sub.to_string()];
        if all.contains(cfg.as_str()) && cfg != sub {
            files.push(cfg);
        }
        let format = if sub.ends_with(dictionary_learning::WEIGHTS_FILE) {
            ImportFormat::DictionaryLearning
        } else if sub.ends_with(".pt") && files.len() == 2 {
            ImportFormat::Prisma
        } else {
            ImportFormat::Saev
        };
        return Ok(Selection {
            format,
            files,
            import_path: sub.to_string(),
        });
    }
    let prefix = if sub.is_empty() {
        String::new()
    } else {
        format!("{sub}/")
    };
    // Names relative to `sub`.
    let inside: BTreeSet<&str> = all.iter().filter_map(|n| n.strip_prefix(&prefix)).collect();
    ensure!(
        !inside.is_empty(),
        "{shown}: the repository has no folder or file {sub:?}"
    );
    let has = |name: &str| inside.contains(name);
    let full = |name: &str| join(sub, name);
    let pick = |format, files: Vec<String>| Selection {
        format,
        files,
        import_path: sub.to_string(),
    };
    if has(SAELENS_CFG) && has(SAELENS_WEIGHTS) {
        return Ok(pick(
            ImportFormat::SaeLens,
            vec![full(SAELENS_CFG), full(SAELENS_WEIGHTS)],
        ));
    }
    if has(sparsify::CFG_FILE) && has(sparsify::WEIGHTS_FILE) {
        let mut files = vec![full(sparsify::CFG_FILE), full(sparsify::WEIGHTS_FILE)];
        // The run's config.json above a per-hook folder makes the folder's name the hook.
        let run_cfg = join(parent(sub), CONFIG_JSON);
        if !sub.is_empty() && all.contains(run_cfg.as_str()) {
            files.push(run_cfg);
        }
        return Ok(pick(ImportFormat::Sparsify, files));
    }
    let hooks: Vec<&str> = inside
        .iter()
        .filter_map(|n| n.strip_suffix(&format!("/{}", sparsify::CFG_FILE)))
        .filter(|h| !h.contains('/') && has(&format!("{h}/{}", sparsify::WEIGHTS_FILE)))
        .collect();
    if !hooks.is_empty() {
        let chosen = match hook {
            Some(h) if hooks.contains(&h) => h,
            Some(h) => bail!(
                "{shown} has no hook point {h:?}: --hook is one of {}",
                hooks.join(", ")
            ),
            None if hooks.len() == 1 => hooks[0],
            None => bail!(
                "{shown} holds SAEs for {} hook points: pick one with --hook, or fetch {shown}/<hook> ({})",
                hooks.len(),
                hooks.join(", ")
            ),
        };
        let mut files = vec![
            full(&format!("{chosen}/{}", sparsify::CFG_FILE)),
            full(&format!("{chosen}/{}", sparsify::WEIGHTS_FILE)),
        ];
        if has(CONFIG_JSON) {
            files.push(full(CONFIG_JSON));
        }
        return Ok(Selection {
            format: ImportFormat::Sparsify,
            files,
            import_path: full(chosen),
        });
    }
    let with_config = |weights: &str| {
        let mut files = vec![full(weights)];
        let cfg = join(parent(weights), CONFIG_JSON);
        if has(&cfg) {
            files.push(full(&cfg));
        }
        files
    };
    if has(dictionary_learning::WEIGHTS_FILE) {
        return Ok(pick(
            ImportFormat::DictionaryLearning,
            with_config(dictionary_learning::WEIGHTS_FILE),
        ));
    }
    let nested = format!("checkpoint/{}", saev::CHECKPOINT_FILE);
    for weights in [saev::CHECKPOINT_FILE, nested.as_str()] {
        if has(weights) {
            return Ok(pick(ImportFormat::Saev, with_config(weights)));
        }
    }
    let pts: Vec<&str> = inside
        .iter()
        .copied()
        .filter(|n| !n.contains('/') && is_prisma_weights(n))
        .collect();
    if has(CONFIG_JSON) && !pts.is_empty() && prisma::is_config(&config(&full(CONFIG_JSON))?) {
        ensure!(
            pts.len() == 1,
            "{shown} holds {} ViT-Prisma weights files ({}): fetch {shown}/<file>",
            pts.len(),
            pts.join(", ")
        );
        return Ok(pick(ImportFormat::Prisma, with_config(pts[0])));
    }
    let mut seen: Vec<&str> = inside.iter().copied().take(8).collect();
    if inside.len() > seen.len() {
        seen.push("…");
    }
    bail!(
        "{shown} is in none of the formats saeclip imports (SAE-Lens cfg.json + sae_weights.safetensors, sparsify cfg.json + sae.safetensors, dictionary_learning ae.pt, saev sae.pt, ViT-Prisma config.json + .pt); it holds {}",
        seen.join(", ")
    )
}

#[derive(Debug, Deserialize)]
struct Listing {
    sha: Option<String>,
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: Option<String>,
}

/// The record a fetched checkpoint carries, compared on a rerun.
fn record_matches(path: &Path, repo: &str, sub: &str, revision: &str) -> Result<bool> {
    let (_, meta) = checkpoint::load_sae(path, Device::Cpu)?;
    let hub = &meta.training["imported_from"]["hub"];
    Ok(hub["repo"] == repo && hub["subfolder"] == sub && hub["revision"] == revision)
}

/// Download the SAE `options.source` names, import it and write the checkpoint.
pub fn fetch_sae(options: &FetchSaeOptions) -> Result<FetchedSae> {
    let (repo_id, sub) = parse_source(&options.source)?;
    ensure!(
        !options.revision.is_empty(),
        "the revision is empty: give a branch, tag or commit (default main)"
    );
    let out = match &options.out {
        Some(p) => p.clone(),
        None => default_checkpoint(Path::new(CHECKPOINTS_DIR), &repo_id, &sub),
    };
    let shown = if sub.is_empty() {
        repo_id.clone()
    } else {
        format!("{repo_id}/{sub}")
    };
    if out.exists() {
        let same = record_matches(&out, &repo_id, &sub, &options.revision).unwrap_or(false);
        if same && !options.import.force {
            let (_, meta) = checkpoint::load_sae(&out, Device::Cpu)?;
            ui::info(format!(
                "{shown}: already in {} (revision {}); --force fetches it again",
                out.display(),
                options.revision
            ));
            return Ok(fetched(&out, &meta, true));
        }
        ensure!(
            options.import.force,
            "{} already exists and was not fetched from {shown} at revision {}: choose another --out, or --force to overwrite it",
            out.display(),
            options.revision
        );
    }

    let (api, endpoint) = hub_api(options.endpoint.as_deref(), &options.cache_dir)?;
    let cache = api_cache(&options.cache_dir)?;
    let repo = Repo::with_revision(repo_id.clone(), RepoType::Model, options.revision.clone());
    let api_repo = api.repo(repo.clone());
    let advice = format!(
        "on a networked machine download the SAE's files from {endpoint}/{repo_id} (revision {}) and run saeclip import on them",
        options.revision
    );
    let list_url = format!("{endpoint}/api/{}", repo.api_url());
    let listing: Listing = match api_repo.info_request().query("blobs", "true").call() {
        Ok(response) => response.into_json().map_err(|e| {
            anyhow!(
                "{list_url}: not a repository listing ({e}): is HF_ENDPOINT a Hugging Face hub?"
            )
        })?,
        Err(e) => bail!("cannot list {list_url} ({}): {advice}", net::describe(&e)),
    };
    let names: Vec<String> = listing
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .collect();

    let mut downloaded: Vec<(String, Cached)> = Vec::new();
    let get = |file: &str| -> Result<Cached> {
        let cached = obtain(&api_repo, &cache, &repo, file, &advice, options.progress)?;
        let listed = listing
            .siblings
            .iter()
            .find(|s| s.rfilename == file)
            .and_then(|s| s.lfs.as_ref()?.sha256.clone());
        verify(&cached, listed.as_deref(), &api_repo.url(file))?;
        Ok(cached)
    };
    let selection = {
        let mut config = |file: &str| -> Result<Value> {
            let cached = get(file)?;
            let value = interop::read_json(&cached.blob)
                .map_err(|e| anyhow!("{}: {e}", api_repo.url(file)));
            downloaded.push((file.to_string(), cached));
            value
        };
        select(
            &names,
            &sub,
            options.import.hook.as_deref(),
            &shown,
            &mut config,
        )?
    };
    for file in &selection.files {
        if !downloaded.iter().any(|(n, _)| n == file) {
            let cached = get(file)?;
            downloaded.push((file.clone(), cached));
        }
    }
    downloaded.retain(|(n, _)| selection.files.contains(n));
    // The snapshot folder the files landed in (`snapshots/<commit>/<path in the repo>`),
    // else the listing's.
    let commit = downloaded
        .first()
        .and_then(|(_, c)| {
            let parts: Vec<_> = c.pointer.components().collect();
            let i = parts.iter().rposition(|p| p.as_os_str() == "snapshots")?;
            Some(parts.get(i + 1)?.as_os_str().to_string_lossy().into_owned())
        })
        .or(listing.sha.clone())
        .unwrap_or_default();

    // The files with their repository layout, in a scratch folder beside the cache's blobs.
    std::fs::create_dir_all(cache.path())
        .with_context(|| format!("cannot create {}", cache.path().display()))?;
    let scratch = Scratch::new(cache.path())?;
    let mut files = Vec::new();
    for (name, cached) in &downloaded {
        let dst = scratch.path().join(name);
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if std::fs::hard_link(&cached.blob, &dst).is_err() {
            std::fs::copy(&cached.blob, &dst).with_context(|| {
                format!("cannot copy {} to {}", cached.blob.display(), dst.display())
            })?;
        }
        files.push(json!({
            "name": name,
            "bytes": super::model::file_len(&cached.blob)?,
            "sha256": net::sha256_file(&cached.blob)?,
        }));
    }
    let mut request = options.import.clone();
    request.format = ImportFormat::Auto;
    if selection.format == ImportFormat::Sparsify {
        // The selection took the hook's folder.
        request.hook = None;
    }
    request.path = scratch.path().join(&selection.import_path);
    request.out = out.clone();
    let Imported {
        sae,
        mut meta,
        format,
    } = interop::read(&request).map_err(|e| anyhow!("{shown}: {e:#}"))?;
    let scratch_prefix = scratch.path().display().to_string();
    if !meta.training.is_object() {
        meta.training = json!({});
    }
    let from = &mut meta.training["imported_from"];
    if !from.is_object() {
        *from = json!({ "format": format.name() });
    }
    if let Some(from) = from.as_object_mut() {
        from.insert("path".into(), json!(format!("hf://{shown}")));
        from.insert(
            "hub".into(),
            json!({
                "repo": repo_id,
                "subfolder": sub,
                "revision": options.revision,
                "format": format.name(),
                "commit": commit,
                "endpoint": endpoint,
                "files": files,
                "fetched_unix": net::unix_now(),
            }),
        );
        // Paths the reader recorded point into the scratch folder: make them repository paths.
        for v in from.values_mut() {
            if let Some(s) = v.as_str().filter(|s| s.starts_with(&scratch_prefix)) {
                *v = json!(format!("hf://{repo_id}{}", &s[scratch_prefix.len()..]));
            }
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    checkpoint::save(&out, &sae, &meta, None, request.dtype)?;
    Ok(fetched(&out, &meta, false))
}

/// A folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(within: &Path) -> Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = within.join(format!(".saeclip-fetch-sae-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot make a scratch folder {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fetched(path: &Path, meta: &checkpoint::CheckpointMeta, reused: bool) -> FetchedSae {
    let from = &meta.training["imported_from"];
    FetchedSae {
        checkpoint: path.to_path_buf(),
        format: from["hub"]["format"]
            .as_str()
            .or(from["format"].as_str())
            .unwrap_or("?")
            .to_string(),
        layer: meta.clip.get("layer").and_then(Value::as_i64),
        tokens: meta
            .clip
            .get("tokens")
            .and_then(|t| serde_json::from_value(t.clone()).ok()),
        model: meta
            .clip
            .get("model")
            .and_then(Value::as_str)
            .map(String::from),
        commit: from["hub"]["commit"].as_str().unwrap_or("").to_string(),
        reused,
    }
}

/// Check a downloaded file against the SHA-256 the hub gave (the listing's, the etag when it
/// is one); a mismatch drops it from the cache.
fn verify(cached: &Cached, listed: Option<&str>, url: &str) -> Result<()> {
    let etag = cached.etag.to_ascii_lowercase();
    let expected: Vec<String> = listed
        .map(str::to_ascii_lowercase)
        .into_iter()
        .chain(net::is_hex(&etag, 64).then_some(etag))
        .collect();
    if expected.is_empty() {
        ui::debug(format!("{url}: no sha256 from the hub (not an LFS file)"));
        return Ok(());
    }
    let sha = net::sha256_file(&cached.blob)?;
    if let Some(want) = expected.iter().find(|w| **w != sha) {
        cached.remove();
        bail!(
            "{url} has sha256 {sha} but the hub says {want}: removed the corrupt copy from the Hugging Face cache ({}), rerun to download it again",
            cached.blob.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn no_config(_: &str) -> Result<Value> {
        bail!("no config expected")
    }

    #[test]
    fn sources_split_into_repo_and_folder() {
        assert_eq!(
            parse_source("org/name").unwrap(),
            ("org/name".into(), String::new())
        );
        assert_eq!(
            parse_source("org/name/a/b/").unwrap(),
            ("org/name".into(), "a/b".into())
        );
        for bad in ["", "org", "org//x", "org/name/../x", "a b/c"] {
            assert!(parse_source(bad).is_err(), "{bad}");
        }
        assert_eq!(
            default_checkpoint(Path::new("ck"), "org/name", "layers.3/x"),
            PathBuf::from("ck/name-layers.3-x.safetensors")
        );
        assert_eq!(
            default_checkpoint_for("org/name").unwrap(),
            PathBuf::from("checkpoints/name.safetensors")
        );
    }

    #[test]
    fn each_format_takes_only_its_files() {
        let repo = names(&[
            "README.md",
            "lens/cfg.json",
            "lens/sae_weights.safetensors",
            "lens/sparsity.safetensors",
            "run/config.json",
            "run/layers.3/cfg.json",
            "run/layers.3/sae.safetensors",
            "run/layers.5/cfg.json",
            "run/layers.5/sae.safetensors",
            "dl/ae.pt",
            "dl/config.json",
            "dl/eval_results.json",
            "v/checkpoint/sae.pt",
            "v/checkpoint/config.json",
            "p/config.json",
            "p/weights.pt",
            "p/weights_log_feature_sparsity.pt",
        ]);
        let sel = |sub: &str, hook: Option<&str>| {
            select(&repo, sub, hook, "org/x", &mut |f: &str| {
                assert_eq!(f, "p/config.json");
                Ok(json!({"hook_point_layer": 9, "d_in": 4, "expansion_factor": 2}))
            })
        };
        let s = sel("lens", None).unwrap();
        assert_eq!(s.format, ImportFormat::SaeLens);
        assert_eq!(s.files, ["lens/cfg.json", "lens/sae_weights.safetensors"]);
        let s = sel("run/layers.5", None).unwrap();
        assert_eq!(s.format, ImportFormat::Sparsify);
        assert_eq!(
            s.files,
            [
                "run/layers.5/cfg.json",
                "run/layers.5/sae.safetensors",
                "run/config.json"
            ]
        );
        let err = sel("run", None).unwrap_err().to_string();
        assert!(
            err.contains("layers.3, layers.5") && err.contains("--hook"),
            "{err}"
        );
        let s = sel("run", Some("layers.3")).unwrap();
        assert_eq!(s.import_path, "run/layers.3");
        assert!(sel("run", Some("layers.4")).is_err());
        let s = sel("dl", None).unwrap();
        assert_eq!(s.format, ImportFormat::DictionaryLearning);
        assert_eq!(s.files, ["dl/ae.pt", "dl/config.json"]);
        let s = sel("v", None).unwrap();
        assert_eq!(s.format, ImportFormat::Saev);
        assert_eq!(s.files, ["v/checkpoint/sae.pt", "v/checkpoint/config.json"]);
        let s = sel("p", None).unwrap();
        assert_eq!(s.format, ImportFormat::Prisma);
        assert_eq!(s.files, ["p/weights.pt", "p/config.json"]);
        // A file: itself and its folder's config.json.
        let s = sel("p/weights.pt", None).unwrap();
        assert_eq!(s.files, ["p/weights.pt", "p/config.json"]);
        assert_eq!(s.import_path, "p/weights.pt");
        let err = sel("nothing", None).unwrap_err().to_string();
        assert!(err.contains("no folder or file"), "{err}");
    }

    #[test]
    fn a_folder_in_no_format_is_refused_naming_its_files() {
        let repo = names(&["README.md", "model.safetensors", "config.json"]);
        let err = select(&repo, "", None, "org/x", &mut no_config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("org/x is in none of the formats") && err.contains("model.safetensors"),
            "{err}"
        );
        // A config.json that is not ViT-Prisma's beside a .pt is no format either.
        let repo = names(&["config.json", "weights.pt"]);
        let err = select(&repo, "", None, "org/x", &mut |_: &str| Ok(json!({"a": 1})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("none of the formats"), "{err}");
    }
}
