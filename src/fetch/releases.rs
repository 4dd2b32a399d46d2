//! `fetch sae --list`: public vision SAE releases on the Hugging Face hub that `fetch sae`
//! reads, with the facts their own pages state (DESIGN.md "Importing published SAEs").
//!
//! Each row was checked against the publisher's page or source: the ViT-Prisma README's
//! "CLIP Vanilla SAEs (All Patches)" table (repository links, layer, `resid_post` sublayer,
//! x64 expansion of the 768-wide residual stream, all patches; the SAEs were trained on
//! open-clip `laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K`), and saev's inference guide for
//! `osunlp/SAE_CLIP_24K_ViT-B-16_IN1K` (OpenAI CLIP ViT-B/16, activations recorded after
//! block 10, the CLS token dropped before the SAE). None could be downloaded on the machine
//! this was written on: the rows are what the pages say, not what a download showed.

use std::fmt::Write as _;

use crate::clip::Tokens;

/// One published SAE.
#[derive(Debug, Clone, Copy)]
pub struct Release {
    /// `REPO[/SUBFOLDER]` as `fetch sae` takes it.
    pub source: &'static str,
    /// The backbone the activations came from.
    pub backbone: &'static str,
    /// The block whose output (residual stream) the SAE reads, 0-based.
    pub layer: i64,
    pub tokens: Tokens,
    /// d_sae.
    pub width: i64,
    /// The format `import --format auto` finds.
    pub format: &'static str,
}

const PRISMA_B32: &str = "open-clip laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K";

/// The releases `fetch sae --list` prints.
pub const RELEASES: &[Release] = &[
    Release {
        source: "osunlp/SAE_CLIP_24K_ViT-B-16_IN1K",
        backbone: "OpenAI CLIP ViT-B/16",
        layer: 10,
        tokens: Tokens::Patches,
        width: 24576,
        format: "saev",
    },
    Release {
        source: "prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-11-hook_resid_post-l1-1e-05",
        backbone: PRISMA_B32,
        layer: 11,
        tokens: Tokens::All,
        width: 49152,
        format: "prisma",
    },
    Release {
        source: "prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-10-hook_resid_post-l1-1e-05",
        backbone: PRISMA_B32,
        layer: 10,
        tokens: Tokens::All,
        width: 49152,
        format: "prisma",
    },
    Release {
        source: "prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-9-hook_resid_post-l1-1e-05",
        backbone: PRISMA_B32,
        layer: 9,
        tokens: Tokens::All,
        width: 49152,
        format: "prisma",
    },
    Release {
        source: "prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-8-hook_resid_post-l1-1e-05",
        backbone: PRISMA_B32,
        layer: 8,
        tokens: Tokens::All,
        width: 49152,
        format: "prisma",
    },
    Release {
        source: "prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-5-hook_resid_post-l1-1e-05",
        backbone: PRISMA_B32,
        layer: 5,
        tokens: Tokens::All,
        width: 49152,
        format: "prisma",
    },
];

/// [`RELEASES`] as an aligned text table with a header line.
pub fn release_table() -> String {
    let header = [
        "repository",
        "backbone",
        "layer",
        "tokens",
        "width",
        "format",
    ];
    let rows: Vec<[String; 6]> = RELEASES
        .iter()
        .map(|r| {
            [
                r.source.to_string(),
                r.backbone.to_string(),
                r.layer.to_string(),
                r.tokens.name().to_string(),
                r.width.to_string(),
                r.format.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::parse_source;

    #[test]
    fn every_release_is_a_source_fetch_sae_takes() {
        for r in RELEASES {
            parse_source(r.source).unwrap();
            assert!(r.width > 0 && r.layer >= 0, "{r:?}");
            assert!(["saev", "prisma", "sparsify", "saelens"].contains(&r.format));
        }
    }

    #[test]
    fn the_table_has_a_header_and_one_aligned_line_per_release() {
        let table = release_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), RELEASES.len() + 1);
        assert!(lines[0].starts_with("repository"), "{table}");
        let col = lines[0].find("backbone").unwrap();
        for (line, r) in lines[1..].iter().zip(RELEASES) {
            assert!(line.starts_with(r.source), "{line}");
            assert_eq!(&line[col..col + r.backbone.len()], r.backbone, "{line}");
            assert!(line.ends_with(r.format), "{line}");
        }
    }
}
