//! The project's folders (DESIGN.md "Layout": `data/`, `models/`, `checkpoints/`, relative
//! to the working directory) and writing files so that a crash never leaves a half-written
//! one under the final name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where `fetch dataset` unpacks datasets by default.
pub const DATA_DIR: &str = "data";
/// Where `fetch model` places models by default (one folder per repo).
pub const MODELS_DIR: &str = "models";
/// Where finished SAEs are published: a run's final SAE and `clean-checkpoint`'s output.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// The folder `fetch model REPO` fills by default: `<models_dir>/<repo name>` (the part of
/// the repo id after its last `/`, e.g. `models/clip-vit-base-patch32`).
pub fn fetched_model_dir(models_dir: &Path, repo: &str) -> PathBuf {
    let repo = repo.trim().trim_end_matches('/');
    models_dir.join(repo.rsplit('/').next().unwrap_or(repo))
}

/// Where `clean-checkpoint` writes by default: `<checkpoints_dir>/<input stem>.safetensors`.
pub fn cleaned_checkpoint(checkpoints_dir: &Path, input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or_else(|| "sae".into(), |n| n.to_string_lossy().into_owned());
    checkpoints_dir.join(format!("{stem}.safetensors"))
}

/// A temporary path beside `path`, in the same directory so that the final rename is
/// atomic.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Call `write` on a temporary path, then rename it over `path`. On error the temporary
/// file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write bytes atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_folders() {
        let models = Path::new(MODELS_DIR);
        assert_eq!(
            fetched_model_dir(models, "openai/clip-vit-base-patch32"),
            Path::new("models/clip-vit-base-patch32")
        );
        assert_eq!(
            fetched_model_dir(models, "single"),
            Path::new("models/single")
        );
        let ckpts = Path::new(CHECKPOINTS_DIR);
        assert_eq!(
            cleaned_checkpoint(ckpts, Path::new("runs/x/checkpoints/best.safetensors")),
            Path::new("checkpoints/best.safetensors")
        );
        assert_eq!(
            cleaned_checkpoint(ckpts, Path::new("sae.v2.safetensors")),
            Path::new("checkpoints/sae.v2.safetensors")
        );
    }

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"old").unwrap();
        let err = write_atomic(&path, |tmp| {
            std::fs::write(tmp, b"half")?;
            anyhow::bail!("boom")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_bytes_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
