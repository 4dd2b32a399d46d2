//! The trained demo CLIP, embedded in the binary: `assets/demo-clip` as
//! `scripts/train_demo_clip.py` wrote it (trained contrastively on procedural images,
//! `procedural:1..6` train, with captions built from their factors): config.json and a
//! float16 state dict whose token embedding is trimmed to the rows the captions used.
//! [`write_demo_clip`] expands it into a Hugging Face CLIP directory that saeclip and
//! `transformers.CLIPModel.from_pretrained` both open (tests/demo_model.rs keeps the two
//! equal).

use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

const CONFIG: &[u8] = include_bytes!("../../assets/demo-clip/config.json");
const TRIMMED: &[u8] = include_bytes!("../../assets/demo-clip/model.trimmed.safetensors");
const TRAINING: &[u8] = include_bytes!("../../assets/demo-clip/training.json");

/// Write the trained demo model (config.json, model.safetensors, training.json) to `dir`.
pub fn write_demo_clip(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let weights = expand_trimmed(TRIMMED).context("the embedded demo model")?;
    for (name, bytes) in [
        ("config.json", CONFIG),
        ("model.safetensors", &weights[..]),
        ("training.json", TRAINING),
    ] {
        crate::disk::write_bytes_atomic(&dir.join(name), bytes)?;
    }
    Ok(())
}

/// The tensor whose rows are trimmed.
const TOKEN_EMBEDDING: &str = "text_model.embeddings.token_embedding.weight";

/// A full safetensors file from a trimmed one: `TOKEN_EMBEDDING.rows` [U, D] (float16) and
/// `.ids` [U] (int64, each below the metadata's `vocab_size`) become `TOKEN_EMBEDDING`
/// [vocab_size, D], zero outside the ids; every other tensor is copied as it is.
pub fn expand_trimmed(bytes: &[u8]) -> Result<Vec<u8>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    let vocab: usize = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("vocab_size"))
        .ok_or_else(|| anyhow!("no vocab_size in the metadata"))?
        .parse()
        .context("vocab_size is not a whole number")?;
    let st = SafeTensors::deserialize(bytes)?;
    let rows = st.tensor(&format!("{TOKEN_EMBEDDING}.rows"))?;
    let ids = st.tensor(&format!("{TOKEN_EMBEDDING}.ids"))?;
    ensure!(
        rows.dtype() == Dtype::F16 && rows.shape().len() == 2,
        "{TOKEN_EMBEDDING}.rows must be float16 [U, D]"
    );
    ensure!(
        ids.dtype() == Dtype::I64 && ids.shape() == [rows.shape()[0]],
        "{TOKEN_EMBEDDING}.ids must be int64 [U] with U = rows"
    );
    let row_bytes = rows.shape()[1] * 2;
    let mut full = vec![0u8; vocab * row_bytes];
    for (r, id) in ids.data().chunks_exact(8).enumerate() {
        let id = i64::from_le_bytes(id.try_into().expect("8 bytes"));
        ensure!(
            (0..vocab as i64).contains(&id),
            "token id {id} outside the vocabulary of {vocab}"
        );
        let id = id as usize;
        full[id * row_bytes..(id + 1) * row_bytes]
            .copy_from_slice(&rows.data()[r * row_bytes..(r + 1) * row_bytes]);
    }
    let mut views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with(&format!("{TOKEN_EMBEDDING}.")))
        .collect();
    views.push((
        TOKEN_EMBEDDING.to_string(),
        TensorView::new(Dtype::F16, vec![vocab, rows.shape()[1]], &full)?,
    ));
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// The demo model's dimensions, read from its embedded config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoShape {
    pub vision_layers: usize,
    pub text_layers: usize,
    pub width: usize,
    pub image_size: usize,
    pub patch_size: usize,
}

pub fn demo_clip_shape() -> Result<DemoShape> {
    let v: serde_json::Value =
        serde_json::from_slice(CONFIG).context("the embedded config.json is not JSON")?;
    let field = |tower: &str, name: &str| -> Result<usize> {
        v[tower][name]
            .as_u64()
            .map(|n| n as usize)
            .with_context(|| format!("the embedded config.json has no {tower}.{name}"))
    };
    Ok(DemoShape {
        vision_layers: field("vision_config", "num_hidden_layers")?,
        text_layers: field("text_config", "num_hidden_layers")?,
        width: field("vision_config", "hidden_size")?,
        image_size: field("vision_config", "image_size")?,
        patch_size: field("vision_config", "patch_size")?,
    })
}

/// What the training script measured: zero-shot top-1 on the 48 colour × shape classes of
/// `procedural:0` test, and the training time in seconds.
pub fn demo_clip_training() -> Result<(f64, f64)> {
    let v: serde_json::Value =
        serde_json::from_slice(TRAINING).context("the embedded training.json is not JSON")?;
    Ok((
        v["zeroshot_top1_48"].as_f64().unwrap_or(f64::NAN),
        v["seconds"].as_f64().unwrap_or(f64::NAN),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trimmed(ids: &[i64], vocab: &str) -> Vec<u8> {
        let rows: Vec<u8> = (0..ids.len() * 2)
            .flat_map(|i| half::f16::from_f32(i as f32 + 1.0).to_le_bytes())
            .collect();
        let ids: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        let other = [7u8, 0, 8, 0];
        let views = vec![
            (
                format!("{TOKEN_EMBEDDING}.rows"),
                TensorView::new(Dtype::F16, vec![ids.len() / 8, 2], &rows).unwrap(),
            ),
            (
                format!("{TOKEN_EMBEDDING}.ids"),
                TensorView::new(Dtype::I64, vec![ids.len() / 8], &ids).unwrap(),
            ),
            (
                "other".to_string(),
                TensorView::new(Dtype::F16, vec![2], &other).unwrap(),
            ),
        ];
        let meta = std::collections::HashMap::from([("vocab_size".to_string(), vocab.into())]);
        safetensors::serialize(views, Some(meta)).unwrap()
    }

    #[test]
    fn trimmed_rows_land_at_their_ids_and_the_rest_is_zero() {
        let full = expand_trimmed(&trimmed(&[3, 0], "5")).unwrap();
        let st = SafeTensors::deserialize(&full).unwrap();
        let e = st.tensor(TOKEN_EMBEDDING).unwrap();
        assert_eq!(e.shape(), [5, 2]);
        let v: Vec<f32> = e
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(v, [3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0]);
        assert_eq!(st.tensor("other").unwrap().data(), [7, 0, 8, 0]);
        assert_eq!(st.len(), 2);
    }

    #[test]
    fn bad_trimmed_files_are_errors() {
        let e = expand_trimmed(&trimmed(&[5], "5")).unwrap_err();
        assert!(format!("{e:#}").contains("token id 5 outside"), "{e:#}");
        assert!(expand_trimmed(&trimmed(&[1], "five")).is_err());
        assert!(expand_trimmed(b"not safetensors").is_err());
    }

    #[test]
    fn the_embedded_model_expands() {
        let full = expand_trimmed(TRIMMED).unwrap();
        let st = SafeTensors::deserialize(&full).unwrap();
        assert_eq!(st.tensor(TOKEN_EMBEDDING).unwrap().shape(), [49408, 128]);
    }
}
