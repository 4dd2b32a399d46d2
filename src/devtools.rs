//! Helpers for benchmarks and device checks that must run without Python: random-weight
//! models, image folders written from a dataset, synthetic activation caches, and a
//! tensor-file comparison. Reached through the hidden `saeclip dev` command.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tch::{Device, Kind, Tensor};

use crate::clip::{Clip, ClipConfig, Precision, Tokens};
use crate::data::cache::{
    open_writer, CacheKey, DatasetRef, ImageRecord, Manifest, ModelRef, Opened,
};
use crate::data::{self, DatasetSpec, Split};

/// Named model sizes.
pub fn preset(name: &str) -> Result<ClipConfig> {
    match name {
        "vit-b-32" => Ok(ClipConfig::vit_base_patch32()),
        "demo" => Ok(ClipConfig::demo()),
        other => bail!("unknown preset {other:?}: expected vit-b-32 or demo"),
    }
}

/// Write a random-weight model of `config` as a Hugging Face directory.
pub fn write_random_model(config: &ClipConfig, seed: i64, out: &Path) -> Result<()> {
    Clip::random(config, seed, Device::Cpu, Precision::F32).save_hf(out)
}

/// Write the first `limit` images of a dataset as files in class subfolders (a `folder:`
/// dataset), as JPEG (`quality`) or PNG by `ext`. Returns the number written.
pub fn write_images(
    spec: &DatasetSpec,
    split: Split,
    limit: usize,
    out: &Path,
    ext: &str,
    quality: u8,
) -> Result<usize> {
    ensure!(
        matches!(ext, "jpg" | "png"),
        "format must be jpg or png, not {ext}"
    );
    let dataset = data::limited(data::open(spec, split)?, Some(limit));
    let classes = dataset.classes().to_vec();
    use rayon::prelude::*;
    (0..dataset.len())
        .into_par_iter()
        .try_for_each(|i| -> Result<()> {
            let item = dataset.item(i);
            let class = classes
                .get(item.label as usize)
                .cloned()
                .unwrap_or_else(|| format!("class{}", item.label));
            let dir = out.join(class.replace(['/', ' '], "_"));
            std::fs::create_dir_all(&dir)?;
            let img = dataset.image(i)?;
            let path = dir.join(format!("{i:06}.{ext}"));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            if ext == "jpg" {
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, quality)
                    .encode_image(&img)?;
            } else {
                img.write_to(&mut w, image::ImageFormat::Png)?;
            }
            Ok(())
        })?;
    Ok(dataset.len())
}

/// A cache of `rows` rows of width `d`: sparse combinations of `atoms` random unit
/// directions plus noise (seeded), for training benchmarks.
pub fn write_synthetic_cache(
    rows: usize,
    d: i64,
    atoms: i64,
    active: i64,
    seed: i64,
    dtype: Precision,
    out: &Path,
) -> Result<Manifest> {
    ensure!(
        rows > 0 && d > 0 && atoms >= active && active > 0,
        "invalid synthetic cache sizes"
    );
    crate::rng::seeded(seed, || {
        let opts = (Kind::Float, Device::Cpu);
        let dict = Tensor::randn([atoms, d], opts);
        let dict = &dict / dict.norm_scalaropt_dim(2.0, [1], true);
        let key = CacheKey {
            d_model: d,
            dtype,
            layer: 0,
            tokens: Tokens::Cls,
            model: ModelRef {
                path: "synthetic".into(),
                sha256: format!("synthetic-{seed}-{atoms}-{active}"),
            },
            dataset: DatasetRef {
                kind: "synthetic".into(),
                path: format!("{rows}x{d}"),
                split: "train".into(),
            },
            part: None,
            limit: None,
            image_size: 0,
        };
        let Opened::Writer(mut w) = open_writer(out, key, 1 << 18, true)? else {
            bail!("could not open {} for writing", out.display());
        };
        let chunk = 8192usize;
        let mut start = 0;
        while start < rows {
            let n = chunk.min(rows - start) as i64;
            let idx = Tensor::rand([n, atoms], opts)
                .topk(active, 1, true, false)
                .1;
            let mags = -Tensor::rand([n, active], opts).clamp_min(1e-6).log(); // exponential
            let chosen = dict
                .index_select(0, &idx.flatten(0, 1))
                .view([n, active, d]);
            let x = (mags.unsqueeze(2) * chosen).sum_dim_intlist(1, false, Kind::Float)
                + Tensor::randn([n, d], opts) * 0.01;
            for r in 0..n {
                let i = start + r as usize;
                let record = ImageRecord {
                    image_index: i,
                    source: format!("synthetic:{i}"),
                    label: 0,
                };
                w.add_image(
                    record,
                    &x.narrow(0, r, 1),
                    &Tensor::zeros([1], (Kind::Int64, Device::Cpu)),
                )?;
            }
            w.end_batch()?;
            start += n as usize;
        }
        w.finish()
    })
}

/// Max absolute and relative difference of the tensors two safetensors files share.
pub fn compare(a: &Path, b: &Path) -> Result<Vec<(String, f64, f64)>> {
    let a = crate::clip::weights::read_safetensors(a)?;
    let b: std::collections::HashMap<String, Tensor> = crate::clip::weights::read_safetensors(b)?
        .into_iter()
        .collect();
    let mut out = Vec::new();
    for (name, ta) in a {
        let Some(tb) = b.get(&name) else { continue };
        ensure!(
            ta.size() == tb.size(),
            "{name}: shapes {:?} and {:?} differ",
            ta.size(),
            tb.size()
        );
        let (ta, tb) = (ta.to_kind(Kind::Double), tb.to_kind(Kind::Double));
        let diff = (&ta - &tb).abs().max().double_value(&[]);
        let scale = tb.abs().max().double_value(&[]).max(1e-30);
        out.push((name, diff, diff / scale));
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(out)
}

/// Write a dataset's first `limit` images after CLIP's resize and centre crop to
/// `size`×`size` (before normalisation) as `OUT.u8` (N×size×size×3 bytes, row-major RGB)
/// and their sources, one a line, as `OUT.txt`: what `scripts/train_demo_clip.py` trains
/// on, so Python never re-implements the procedural generator or the resize.
pub fn dump_images(
    spec: &DatasetSpec,
    split: Split,
    limit: usize,
    size: u32,
    out: &Path,
) -> Result<usize> {
    ensure!(size > 0, "--size must be positive");
    let dataset = data::limited(data::open(spec, split)?, Some(limit));
    let cfg = crate::clip::preprocess::PreprocessConfig::with_size(size);
    use rayon::prelude::*;
    let images: Vec<Vec<u8>> = (0..dataset.len())
        .into_par_iter()
        .map(|i| -> Result<Vec<u8>> {
            let img = dataset.image(i)?;
            Ok(crate::clip::preprocess::resize_and_crop(&img, &cfg).into_raw())
        })
        .collect::<Result<_>>()?;
    let bytes_path = out.with_extension("u8");
    let text_path = out.with_extension("txt");
    crate::disk::write_bytes_atomic(&bytes_path, &images.concat())?;
    let sources: String = (0..dataset.len())
        .map(|i| dataset.item(i).source + "\n")
        .collect();
    crate::disk::write_bytes_atomic(&text_path, sources.as_bytes())?;
    Ok(dataset.len())
}
