//! `saeclip extract`: write an activation cache.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::{GlobalArgs, ModelArgs};
use crate::clip::{Precision, Tokens};
use crate::data::cache::Part;
use crate::data::{DatasetSpec, Split};
use crate::extract::{extract, ExtractOptions};

#[derive(Args, Debug)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images: cifar10:DIR, cifar100:DIR, food101:DIR, folder:DIR, imagenet:DIR or procedural:SEED.
    #[arg(long, value_name = "KIND:PATH")]
    pub dataset: DatasetSpec,
    /// Dataset split (`val` = `test`: ImageNet's DIR/val).
    #[arg(long, value_enum, default_value = "train")]
    pub split: Split,
    /// Vision block whose output (residual stream) is kept, 0-based.
    #[arg(long, value_name = "L")]
    pub layer: usize,
    /// Tokens to keep: the class token, the patch tokens or all.
    #[arg(long, value_enum, default_value = "cls")]
    pub tokens: Tokens,
    /// Cache directory to write (resumed if an earlier run was interrupted).
    #[arg(long, value_name = "CACHE")]
    pub out: PathBuf,
    /// Storage precision of the activations.
    #[arg(long, value_enum, default_value = "f16")]
    pub dtype: Precision,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64, value_name = "B")]
    pub batch_size: usize,
    /// Only the first N images of the split.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Extract only every N-th image starting at I (0-based) into its own cache; image
    /// indices stay global, so the N caches read as one.
    #[arg(long, value_name = "I/N", value_parser = parse_part)]
    pub shard: Option<Part>,
    /// Rows per shard file (a shard always ends at an image boundary).
    #[arg(long, default_value_t = 1 << 16, value_name = "ROWS")]
    pub shard_rows: usize,
    /// Replace a cache in --out that was made with other settings.
    #[arg(long)]
    pub force: bool,
}

fn parse_part(s: &str) -> Result<Part, String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected I/N, e.g. 0/4"))?;
    let index: usize = i
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: I must be a number"))?;
    let count: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: N must be a number"))?;
    if count == 0 || index >= count {
        return Err(format!("{s:?}: expected 0 <= I < N"));
    }
    Ok(Part { index, count })
}

pub fn run(global: &GlobalArgs, args: &ExtractArgs) -> Result<()> {
    let device = global.device.resolve()?;
    let mut o = ExtractOptions::new(
        args.model.model.clone(),
        args.dataset.clone(),
        args.layer,
        args.out.clone(),
    );
    o.load = args.model.load_options(device);
    o.split = args.split;
    o.tokens = args.tokens;
    o.dtype = args.dtype;
    o.batch_size = args.batch_size;
    o.limit = args.limit;
    o.part = args.shard;
    o.shard_rows = args.shard_rows;
    o.force = args.force;
    if o.shard_rows == 0 {
        bail!("--shard-rows must be at least 1");
    }
    let s = extract(&o)?;
    let m = &s.manifest;
    if s.already_complete {
        crate::ui::info(format!(
            "{} is already complete ({} images, {} rows); nothing to do (--force recomputes)",
            o.out.display(),
            m.images,
            m.rows
        ));
    } else {
        crate::ui::info(format!(
            "extracted {} images ({} rows, {} shards, {} skipped) into {} in {:.1}s, {:.1} images/s",
            m.images,
            m.rows,
            m.shards.len(),
            m.skipped.len(),
            o.out.display(),
            s.seconds,
            s.images_per_second()
        ));
    }
    for skipped in m.skipped.iter().take(5) {
        crate::ui::warn(format!("skipped {}: {}", skipped.source, skipped.error));
    }
    if m.skipped.len() > 5 {
        crate::ui::warn(format!(
            "... and {} more skipped (see manifest.json)",
            m.skipped.len() - 5
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parts() {
        assert_eq!(parse_part("0/4"), Ok(Part { index: 0, count: 4 }));
        assert_eq!(parse_part("3/4"), Ok(Part { index: 3, count: 4 }));
        assert!(parse_part("4/4").is_err());
        assert!(parse_part("1/0").is_err());
        assert!(parse_part("x").is_err());
    }
}
