//! `saeclip import`: read an SAE in another tool's format into a saeclip checkpoint.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::clip::{Precision, Tokens};
use crate::sae::interop::{import, ImportFormat, ImportRequest};

/// `saeclip import`'s flags (the command's help text is on `Command::Import`).
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Source format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "auto")]
    pub format: ImportFormat,
    /// The file or folder to read.
    #[arg(value_name = "PATH")]
    pub dir: PathBuf,
    /// The checkpoint to write (.safetensors).
    #[arg(long, value_name = "CKPT")]
    pub out: PathBuf,
    #[command(flatten)]
    pub flags: ImportFlags,
    /// Overwrite an existing --out.
    #[arg(long)]
    pub force: bool,
}

/// How to read an SAE whose files leave something out: the hook point, k, saev 0.1.0's
/// data scaling, and the dtype to write (shared by `import` and `fetch sae`).
#[derive(Args, Debug)]
pub struct ImportFlags {
    /// The block whose output the SAE reads (0-based), where the files do not record it
    /// (saev 0.1.0 without its config.json, a lone sparsify folder); must agree with what
    /// they record.
    #[arg(long, value_name = "N")]
    pub layer: Option<i64>,
    /// The tokens the SAE was trained on, where the files do not record them (sparsify,
    /// dictionary-learning); must agree with what they record.
    #[arg(long, value_enum, value_name = "TOKENS")]
    pub tokens: Option<Tokens>,
    /// sparsify: the hook point (sub-folder) of a multi-hook run to import.
    #[arg(long, value_name = "NAME")]
    pub hook: Option<String>,
    /// k for an SAE whose files do not record it (SAE-Lens jumprelu: batchtopk keeps k for
    /// training).
    #[arg(long, value_name = "K")]
    pub k: Option<i64>,
    /// saev 0.1.0: the mean activation its data loader removed (DataLoad.scale_mean): a
    /// torch.save file of d_vit values, or none.
    #[arg(long, value_name = "FILE|none")]
    pub saev_scale_mean: Option<String>,
    /// saev 0.1.0: the scalar its data loader divided by (DataLoad.scale_norm): a number, a
    /// torch.save file holding it, or none.
    #[arg(long, value_name = "S|FILE|none")]
    pub saev_scale_norm: Option<String>,
    /// Parameter dtype of the checkpoint.
    #[arg(long, value_enum, value_name = "DTYPE", default_value = "f32")]
    pub dtype: Precision,
}

impl ImportFlags {
    /// Put the flags into an import request.
    pub fn apply(&self, request: &mut ImportRequest) {
        request.layer = self.layer;
        request.tokens = self.tokens;
        request.hook = self.hook.clone();
        request.k = self.k;
        request.saev_scale_mean = self.saev_scale_mean.clone();
        request.saev_scale_norm = self.saev_scale_norm.clone();
        request.dtype = self.dtype.kind();
    }
}

pub fn run(args: &ImportArgs) -> Result<()> {
    let mut request = ImportRequest::new(args.format, &args.dir, &args.out);
    args.flags.apply(&mut request);
    request.force = args.force;
    let imported = import(&request)?;
    let (sae, clip) = (&imported.sae, &imported.meta.clip);
    crate::ui::info(format!(
        "imported a {} {} SAE {} → {} (k = {}), layer {}, tokens {}",
        imported.format.name(),
        sae.config.architecture,
        sae.config.d_in,
        sae.config.d_sae,
        sae.config.k,
        clip.get("layer").map_or("?".into(), |v| v.to_string()),
        clip.get("tokens").and_then(|v| v.as_str()).unwrap_or("?"),
    ));
    println!("{}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: ImportArgs,
    }

    #[test]
    fn flags_parse() {
        let w = Wrapper::try_parse_from([
            "x",
            "--format",
            "saelens",
            "dir",
            "--out",
            "c.safetensors",
            "--k",
            "32",
        ])
        .unwrap();
        assert_eq!(w.args.dir, PathBuf::from("dir"));
        assert_eq!(w.args.flags.k, Some(32));
        assert_eq!(w.args.flags.dtype, Precision::F32);
        assert_eq!(w.args.format, ImportFormat::SaeLens);
        let w = Wrapper::try_parse_from([
            "x",
            "p",
            "--out",
            "c",
            "--layer",
            "11",
            "--tokens",
            "patches",
            "--hook",
            "layers.11",
            "--saev-scale-norm",
            "2.5",
            "--saev-scale-mean",
            "none",
        ])
        .unwrap();
        assert_eq!(w.args.format, ImportFormat::Auto, "auto by default");
        assert_eq!(w.args.flags.layer, Some(11));
        assert_eq!(w.args.flags.tokens, Some(Tokens::Patches));
        assert_eq!(w.args.flags.hook.as_deref(), Some("layers.11"));
        assert_eq!(w.args.flags.saev_scale_norm.as_deref(), Some("2.5"));
        assert_eq!(w.args.flags.saev_scale_mean.as_deref(), Some("none"));
        for format in ["saev", "sparsify", "dictionary-learning", "prisma", "auto"] {
            assert!(Wrapper::try_parse_from(["x", "--format", format, "p", "--out", "c"]).is_ok());
        }
        assert!(
            Wrapper::try_parse_from(["x", "--format", "saelens", "--out", "c"]).is_err(),
            "DIR is required"
        );
    }
}
