//! `saeclip embed`: embed images and texts, print zero-shot probabilities.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tch::Tensor;

use super::{GlobalArgs, ModelArgs};
use crate::clip::Clip;
use crate::embed::{embed, EmbedOptions, Embeddings};

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// An image to embed (repeatable).
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,
    /// A text to embed (repeatable).
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,
    /// Also compute the residual stream after this vision block (0-based).
    #[arg(long, value_name = "L")]
    pub layer: Option<usize>,
    /// Write the tensors (pixel_values, image_embeds, residual, input_ids, text_embeds,
    /// probs) to this .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &GlobalArgs, args: &EmbedArgs) -> Result<()> {
    let device = global.device.resolve()?;
    let clip = Clip::load(&args.model.model, &args.model.load_options(device))?;
    let options = EmbedOptions {
        images: args.images.clone(),
        texts: args.texts.clone(),
        layer: args.layer,
    };
    let result = embed(&clip, &options)?;
    if let Some(out) = &args.out {
        write_tensors(out, &result)?;
        crate::ui::info(format!("wrote {}", out.display()));
    }
    if args.json {
        println!("{}", serde_json::to_string(&to_json(args, &result))?);
    } else {
        print_table(args, &result);
    }
    Ok(())
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    Vec::<Vec<f32>>::try_from(t.to_kind(tch::Kind::Float)).unwrap_or_default()
}

fn to_json(args: &EmbedArgs, r: &Embeddings) -> serde_json::Value {
    serde_json::json!({
        "images": args.images,
        "texts": args.texts,
        "image_embeds": r.image_embeds.as_ref().map(rows),
        "text_embeds": r.text_embeds.as_ref().map(rows),
        "probs": r.probs.as_ref().map(rows),
    })
}

fn print_table(args: &EmbedArgs, r: &Embeddings) {
    if let Some(probs) = &r.probs {
        for (image, p) in args.images.iter().zip(rows(probs)) {
            println!("{}", image.display());
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            for i in order {
                println!("  {:6.2}%  {}", 100.0 * p[i], args.texts[i]);
            }
        }
        return;
    }
    let print = |names: Vec<String>, t: &Tensor| {
        for (name, row) in names.into_iter().zip(rows(t)) {
            let head: Vec<String> = row.iter().take(4).map(|v| format!("{v:.4}")).collect();
            println!("{name}\t[{}, ...] ({} values)", head.join(", "), row.len());
        }
    };
    if let Some(t) = &r.image_embeds {
        print(
            args.images
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            t,
        );
    }
    if let Some(t) = &r.text_embeds {
        print(args.texts.clone(), t);
    }
}

fn write_tensors(path: &std::path::Path, r: &Embeddings) -> Result<()> {
    let named: Vec<(&str, &Tensor)> = [
        ("pixel_values", &r.pixel_values),
        ("image_embeds", &r.image_embeds),
        ("residual", &r.residual),
        ("input_ids", &r.input_ids),
        ("text_embeds", &r.text_embeds),
        ("probs", &r.probs),
    ]
    .into_iter()
    .filter_map(|(n, t)| t.as_ref().map(|t| (n, t)))
    .collect();
    crate::disk::write_atomic(path, |tmp| {
        Tensor::write_safetensors(&named, tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}
