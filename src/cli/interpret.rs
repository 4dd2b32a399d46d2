//! `saeclip interpret`: top images, collages, labels and a browsable page per SAE feature.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{GlobalArgs, ModelArgs};
use crate::data::{DatasetSpec, Split};
use crate::interpret::{interpret, CollageFormat, Grid, InterpretOptions, RankBy};

#[derive(Args, Debug)]
pub struct InterpretArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// SAE checkpoint (.safetensors) written by `saeclip train`.
    #[arg(long, value_name = "CKPT")]
    pub sae: PathBuf,
    /// Images: cifar10:DIR, cifar100:DIR, food101:DIR, folder:DIR, imagenet:DIR or procedural:SEED.
    #[arg(long, value_name = "KIND:PATH")]
    pub dataset: DatasetSpec,
    /// Dataset split (`val` = `test`: ImageNet's DIR/val).
    #[arg(long, value_enum, default_value = "train")]
    pub split: Split,
    /// Read the activations from this cache (it must match the SAE's model, layer and
    /// tokens) instead of running CLIP over the sample; images still come from --dataset.
    #[arg(long, value_name = "CACHE")]
    pub cache: Option<PathBuf>,
    /// Only the first N images of the split (the sample is drawn from them).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Images in the sample: a seeded subset when smaller than the dataset [default: all].
    #[arg(long, value_name = "N")]
    pub sample_size: Option<usize>,
    /// Top images kept per feature.
    #[arg(long, default_value_t = 12, value_name = "K")]
    pub top_k: usize,
    /// Features reported (the best ranked live latents).
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub features: usize,
    /// How features are ranked.
    #[arg(long, value_enum, default_value = "mean")]
    pub rank_by: RankBy,
    /// Collage grid, ROWSxCOLS.
    #[arg(long, default_value = "4x3", value_name = "ROWSxCOLS")]
    pub grid: Grid,
    /// Seed of the sample subset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CSV with one row per feature (paths in it are relative to its folder).
    #[arg(long, value_name = "FILE")]
    pub output_csv: PathBuf,
    /// Folder for the collages.
    #[arg(long, value_name = "DIR")]
    pub collage_dir: PathBuf,
    /// Collage image format.
    #[arg(long, value_enum, default_value = "png")]
    pub collage_format: CollageFormat,
    /// Also write a static feature browser (index.html) into DIR.
    #[arg(long, value_name = "DIR")]
    pub html: Option<PathBuf>,
    /// Label vocabulary: one phrase a line, replacing the built-in ~1,300 phrases. Their
    /// text embeddings are cached in `.saeclip-cache/` next to the model (in the output
    /// directory when the model's is read-only; under `$XDG_CACHE_HOME/saeclip` when set).
    #[arg(long, value_name = "FILE")]
    pub vocab: Option<PathBuf>,
    /// Label the features with this CLIP (a model directory with a text tower): each
    /// feature's top images are embedded with it and its text embeddings of the vocabulary
    /// are ranked against them. For models without a text tower (DINOv2), whose features
    /// are otherwise left unlabelled.
    #[arg(long, value_name = "CLIP_DIR")]
    pub label_model: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64, value_name = "B")]
    pub batch_size: usize,
}

impl InterpretArgs {
    pub fn options(&self, device: tch::Device) -> InterpretOptions {
        let mut o = InterpretOptions::new(
            self.model.model.clone(),
            self.sae.clone(),
            self.dataset.clone(),
            self.output_csv.clone(),
            self.collage_dir.clone(),
        );
        o.load = self.model.load_options(device);
        o.split = self.split;
        o.cache = self.cache.clone();
        o.limit = self.limit;
        o.sample_size = self.sample_size;
        o.top_k = self.top_k;
        o.features = self.features;
        o.rank_by = self.rank_by;
        o.grid = self.grid;
        o.seed = self.seed;
        o.collage_format = self.collage_format;
        o.html = self.html.clone();
        o.vocab = self.vocab.clone();
        o.label_model = self.label_model.clone();
        o.batch_size = self.batch_size;
        o
    }
}

pub fn run(global: &GlobalArgs, args: &InterpretArgs) -> Result<()> {
    let device = global.device.resolve()?;
    let o = args.options(device);
    let s = interpret(&o)?;
    for note in &s.notes {
        crate::ui::info(note);
    }
    for (i, e) in s.skipped.iter().take(5) {
        crate::ui::warn(format!("skipped image {i}: {e}"));
    }
    if s.skipped.len() > 5 {
        crate::ui::warn(format!("... and {} more skipped", s.skipped.len() - 5));
    }
    let cached = if s.text_cache.as_os_str().is_empty() {
        String::new()
    } else {
        format!("; text embeddings cached in {}", s.text_cache.display())
    };
    crate::ui::info(format!(
        "interpreted {} features ({} live, {} dead latents) over {} images in {:.1}s ({:.1} images/s); labels by {:?}{cached}",
        s.features.len(),
        s.live,
        s.dead,
        s.images,
        s.seconds,
        s.images as f64 / s.seconds.max(1e-9),
        s.label_method,
    ));
    if let Some((named, of)) = s.factor_precision {
        crate::ui::info(format!(
            "label precision: {named} of {of} labels ({:.0}%) name the factor value their feature detects best",
            100.0 * named as f64 / of as f64
        ));
    }
    println!("{}", o.output_csv.display());
    if let Some(dir) = &o.html {
        println!("{}", dir.join("index.html").display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "saeclip",
            "interpret",
            "--model",
            "m",
            "--sae",
            "s.safetensors",
            "--dataset",
            "procedural:0",
            "--output-csv",
            "o.csv",
            "--collage-dir",
            "c",
            "--grid",
            "2x5",
            "--rank-by",
            "freq",
            "--collage-format",
            "jpg",
            "--label-model",
            "models/clip",
        ])
        .unwrap();
        let Command::Interpret(a) = cli.command else {
            panic!("not interpret")
        };
        assert_eq!(a.grid.rows, 2);
        assert_eq!(a.grid.cols, 5);
        assert_eq!(a.top_k, 12);
        assert_eq!(a.features, 300);
        assert_eq!(a.rank_by, crate::interpret::RankBy::Freq);
        assert_eq!(a.collage_format, crate::interpret::CollageFormat::Jpg);
        let o = a.options(tch::Device::Cpu);
        assert_eq!(
            o.label_model.as_deref(),
            Some(std::path::Path::new("models/clip"))
        );
        assert_eq!(o.vocab, None);
    }
}
