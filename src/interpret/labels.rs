//! Automatic labels: concept phrases ranked by the cosine between their CLIP text
//! embeddings (prompt "a photo of a {}") and a feature's direction in image-embedding space.
//!
//! The built-in vocabulary is the CIFAR-100, Food-101 and ImageNet-1k class names of
//! assets/clip_zeroshot_prompts.json plus the colours, textures, shapes and scene words of
//! assets/interpret/extra_words.txt, deduplicated ignoring case (first spelling kept).
//! Text embeddings are cached in a safetensors file keyed by the model's sha256 and a hash
//! of the prompt and vocabulary.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use sha2::Digest;
use tch::{Device, Kind, Tensor};

use crate::clip::{normalize, Clip};

/// The prompt each phrase is put in.
pub const PROMPT: &str = "a photo of a {}";

const PROMPTS_JSON: &str = include_str!("../../assets/clip_zeroshot_prompts.json");
const EXTRA_WORDS: &str = include_str!("../../assets/interpret/extra_words.txt");

/// Phrases one a line; blank lines and `#` comments skipped; deduplicated ignoring case.
pub fn parse_vocabulary(text: &str) -> Vec<String> {
    dedup(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from),
    )
}

fn dedup(phrases: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    phrases
        .into_iter()
        .map(|p| p.replace('_', " ").trim().to_string())
        .filter(|p| !p.is_empty() && seen.insert(p.to_lowercase()))
        .collect()
}

/// The built-in vocabulary (about 1,300 phrases).
pub fn builtin_vocabulary() -> Result<Vec<String>> {
    let json: serde_json::Value =
        serde_json::from_str(PROMPTS_JSON).context("assets/clip_zeroshot_prompts.json")?;
    let mut all = Vec::new();
    for set in ["cifar100", "food101", "imagenet"] {
        let classes = json[set]["classes"]
            .as_array()
            .with_context(|| format!("clip_zeroshot_prompts.json has no {set}.classes"))?;
        all.extend(classes.iter().filter_map(|c| c.as_str().map(String::from)));
    }
    all.extend(parse_vocabulary(EXTRA_WORDS));
    Ok(dedup(all))
}

/// The vocabulary from `--vocab FILE` (one phrase a line), or the built-in one.
pub fn load_vocabulary(path: Option<&Path>) -> Result<Vec<String>> {
    let vocab = match path {
        None => builtin_vocabulary()?,
        Some(p) => parse_vocabulary(
            &std::fs::read_to_string(p)
                .with_context(|| format!("cannot read --vocab {}", p.display()))?,
        ),
    };
    ensure!(
        !vocab.is_empty(),
        "the vocabulary is empty: give --vocab a file with one phrase a line"
    );
    Ok(vocab)
}

/// Hash of the prompt and phrases (hex, 16 digits).
pub fn vocabulary_hash(vocab: &[String]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(PROMPT.as_bytes());
    for p in vocab {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the text embeddings are cached: `$XDG_CACHE_HOME/saeclip/` when that variable is
/// set; else `.saeclip-cache/` next to the model's weights file when that directory can be
/// created there; else `<fallback>/.saeclip-cache/` (the output directory, for a model on
/// a read-only disk). The file name holds the model's hash and the vocabulary's.
pub fn cache_path(
    model_weights: &Path,
    fallback: &Path,
    model_sha256: &str,
    vocab: &[String],
) -> PathBuf {
    let next_to_model = model_weights
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .map(|d| d.join(".saeclip-cache"));
    let dir = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x).join("saeclip"),
        None => match next_to_model.filter(|d| writable_dir(d)) {
            Some(d) => d,
            None => fallback.join(".saeclip-cache"),
        },
    };
    let sha: String = model_sha256.chars().take(16).collect();
    dir.join(format!(
        "text-embeds-{sha}-{}.safetensors",
        vocabulary_hash(vocab)
    ))
}

/// Whether `dir` exists or can be created, and a file can be created in it.
fn writable_dir(dir: &Path) -> bool {
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Normalised text embeddings [V, E] (f32, CPU) of `vocab` in [`PROMPT`], read from
/// `cache` when present and of the right shape, else computed and written there (a cache
/// that cannot be written is only a warning).
pub fn text_embeddings(clip: &Clip, vocab: &[String], cache: &Path) -> Result<Tensor> {
    if let Ok(mut t) = Tensor::read_safetensors(cache) {
        if let Some((_, e)) = t.pop() {
            if e.size().first() == Some(&(vocab.len() as i64)) {
                crate::ui::debug(format!("text embeddings from {}", cache.display()));
                return Ok(e);
            }
        }
    }
    let prompts: Vec<String> = vocab.iter().map(|p| PROMPT.replace("{}", p)).collect();
    let device = clip_device(clip);
    let mut parts = Vec::new();
    for chunk in prompts.chunks(256) {
        let ids = clip.tokenize(chunk)?.to_device(device);
        let e = clip.text_embeds(&ids)?;
        parts.push(normalize(&e.to_kind(Kind::Float)).to_device(Device::Cpu));
    }
    let e = Tensor::cat(&parts, 0);
    let written = crate::disk::write_atomic(cache, |tmp| {
        Tensor::write_safetensors(&[("text_embeds", &e)], tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))
    });
    match written {
        Ok(()) => crate::ui::info(format!("cached text embeddings in {}", cache.display())),
        Err(err) => crate::ui::warn(format!("text embeddings not cached: {err:#}")),
    }
    Ok(e)
}

/// The device of a model's parameters.
pub(crate) fn clip_device(clip: &Clip) -> Device {
    clip.device()
}

/// One label with its cosine.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub phrase: String,
    pub score: f64,
}

/// The `n` best phrases for each direction of `directions` [N, E] by cosine with the
/// normalised `text` [V, E]; ties broken by vocabulary order.
pub fn rank_labels(
    directions: &Tensor,
    text: &Tensor,
    vocab: &[String],
    n: usize,
) -> Vec<Vec<Label>> {
    let d = normalize(&directions.to_kind(Kind::Float).to_device(Device::Cpu));
    let cos = d.matmul(&text.to_kind(Kind::Float).tr()); // N, V
    let rows = Vec::<Vec<f32>>::try_from(&cos).unwrap_or_default();
    rows.into_iter()
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order
                .into_iter()
                .take(n)
                .filter(|&i| row[i].is_finite())
                .map(|i| Label {
                    phrase: vocab[i].clone(),
                    score: row[i] as f64,
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_vocabulary_is_large_and_unique() {
        let v = builtin_vocabulary().unwrap();
        assert!((1100..1500).contains(&v.len()), "{} phrases", v.len());
        let lower: HashSet<String> = v.iter().map(|p| p.to_lowercase()).collect();
        assert_eq!(lower.len(), v.len());
        for w in ["red", "striped", "sky", "apple pie", "goldfish"] {
            assert!(v.iter().any(|p| p == w), "{w} missing");
        }
    }

    #[test]
    fn parse_skips_comments_and_duplicates() {
        let v = parse_vocabulary("# c\nRed\n\nred\n blue \n");
        assert_eq!(v, vec!["Red".to_string(), "blue".to_string()]);
    }

    #[test]
    fn ranks_by_cosine() {
        let text = normalize(&Tensor::from_slice(&[1f32, 0., 0., 1., 1., 1.]).view([3, 2]));
        let vocab: Vec<String> = ["x", "y", "xy"].map(String::from).to_vec();
        let d = Tensor::from_slice(&[2f32, 0.1]).view([1, 2]);
        let l = rank_labels(&d, &text, &vocab, 2);
        assert_eq!(l[0][0].phrase, "x");
        assert_eq!(l[0][1].phrase, "xy");
    }
}
