//! `saeclip steer`: edit SAE latents inside CLIP and see what changes.

use std::path::PathBuf;

use anyhow::Result;
use clap::{ArgGroup, Args};

use super::{GlobalArgs, ModelArgs};
use crate::data::DatasetSpec;
use crate::eval::steer::{run as steer, write_tensors, Edit, Labels, SteerOptions};
use crate::eval::zeroshot::DEFAULT_TEMPLATE;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("edit").required(true).args(["scale", "clamp"])))]
#[command(group(ArgGroup::new("label_source").required(true).args(["labels", "dataset"])))]
pub struct SteerArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// SAE checkpoint; it is spliced at its layer, on the tokens it was trained on.
    #[arg(long, value_name = "CKPT")]
    pub sae: PathBuf,
    /// Images to steer.
    #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Latents to edit (comma-separated or repeated).
    #[arg(
        long = "latent",
        value_name = "ID",
        value_delimiter = ',',
        required = true
    )]
    pub latents: Vec<usize>,
    /// Multiply the latents by S (1 changes nothing, 0 removes them).
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub scale: Option<f64>,
    /// Set the latents to V, whether they fired or not.
    #[arg(long, value_name = "V", allow_negative_numbers = true)]
    pub clamp: Option<f64>,
    /// Zero-shot labels, one a line.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Take the zero-shot labels from a dataset's class names.
    #[arg(long, value_name = "KIND:PATH")]
    pub dataset: Option<DatasetSpec>,
    /// Template the labels are put through; `{}` is the label.
    #[arg(long, default_value = DEFAULT_TEMPLATE, value_name = "TEXT")]
    pub template: String,
    /// Labels shown per image.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub top: usize,
    /// Write original_image_embeds, steered_image_embeds, latents_before, latents_after
    /// and latent_ids to this .safetensors file.
    #[arg(long, value_name = "F")]
    pub out: Option<PathBuf>,
}

pub fn run(global: &GlobalArgs, args: &SteerArgs) -> Result<()> {
    let device = global.device.resolve()?;
    let edit = match (args.scale, args.clamp) {
        (Some(s), _) => Edit::Scale(s),
        (None, Some(v)) => Edit::Clamp(v),
        (None, None) => anyhow::bail!("give --scale S or --clamp V"),
    };
    let labels = match (&args.labels, &args.dataset) {
        (Some(file), _) => Labels::File(file.clone()),
        (None, Some(spec)) => Labels::Dataset(spec.clone()),
        (None, None) => anyhow::bail!("give --labels FILE or --dataset KIND:PATH"),
    };
    let mut o = SteerOptions::new(
        args.model.model.clone(),
        args.sae.clone(),
        args.images.clone(),
        args.latents.clone(),
        edit,
        labels,
    );
    o.load = args.model.load_options(device);
    o.template = args.template.clone();
    o.top = args.top;
    let report = steer(&o)?;
    if let Some(out) = &args.out {
        write_tensors(out, &report)?;
        crate::ui::info(format!("wrote {}", out.display()));
    }
    let what = match edit {
        Edit::Scale(s) => format!("scaled by {s}"),
        Edit::Clamp(v) => format!("clamped to {v}"),
    };
    println!(
        "latents {} {what} at layer {}, {} tokens",
        report
            .latents
            .iter()
            .map(|j| j.to_string())
            .collect::<Vec<_>>()
            .join(","),
        report.layer,
        report.tokens.name()
    );
    for image in &report.images {
        println!("{}", image.path.display());
        let values: Vec<String> = report
            .latents
            .iter()
            .zip(image.latents_before.iter().zip(&image.latents_after))
            .map(|(j, (a, b))| format!("z[{j}] {a:.4} -> {b:.4}"))
            .collect();
        println!("  {}", values.join(", "));
        println!("  cos(original, steered embedding) = {:.4}", image.cosine);
        let show = |ranked: &[(String, f64)]| {
            ranked
                .iter()
                .map(|(l, p)| format!("{:.2}% {l}", 100.0 * p))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        println!("  before: {}", show(&image.before));
        println!("  after:  {}", show(&image.after));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec![
            "saeclip", "steer", "--model", "m", "--sae", "s", "--images", "a.png", "b.png",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
    }

    #[test]
    fn parses_flags() {
        let cli = parse(&[
            "--latent", "3,5", "--latent", "7", "--scale", "-2", "--labels", "l",
        ])
        .unwrap();
        let Command::Steer(a) = cli.command else {
            panic!("not steer")
        };
        assert_eq!(a.latents, vec![3, 5, 7]);
        assert_eq!(a.images.len(), 2);
        assert_eq!(a.scale, Some(-2.0));
        assert!(
            parse(&["--latent", "3", "--labels", "l"]).is_err(),
            "an edit is required"
        );
        assert!(
            parse(&["--latent", "3", "--scale", "1", "--clamp", "2", "--labels", "l"]).is_err()
        );
        assert!(
            parse(&["--latent", "3", "--scale", "1"]).is_err(),
            "labels are required"
        );
        assert!(parse(&["--latent", "x", "--scale", "1", "--labels", "l"]).is_err());
        assert!(parse(&["--latent", "3", "--clamp", "1", "--dataset", "procedural:0"]).is_ok());
    }
}
