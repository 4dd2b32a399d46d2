//! `steer`: a zero edit changes nothing; an edit moves the residual by exactly
//! (z'_j − z_j)·W_dec[j]/input_scale and the embedding as CLIP's remaining blocks say; the
//! CLI prints labels before and after and writes the embeddings; bad latent ids fail with
//! one line.

mod common;

use std::path::{Path, PathBuf};

use saeclip::clip::{Clip, LoadOptions, Tokens};
use saeclip::data::{Dataset, Procedural, Split};
use saeclip::eval::steer::{edit_rows, steer, Edit};
use saeclip::eval::SplicedSae;
use saeclip::sae::checkpoint::{self, CheckpointMeta};
use saeclip::sae::{Architecture, BdecInit, Sae, SaeConfig};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const LAYER: usize = 1;

fn tiny_model() -> PathBuf {
    common::reference_model("tiny-quick").join("hf")
}

fn clip() -> Clip {
    Clip::load(&tiny_model(), &LoadOptions::default()).unwrap()
}

/// Four procedural images as PNG files.
fn images(dir: &Path) -> Vec<PathBuf> {
    let source = Procedural::new(4, Split::Test);
    (0..4)
        .map(|i| {
            let path = dir.join(format!("image-{i}.png"));
            source.image(i * 13).unwrap().save(&path).unwrap();
            path
        })
        .collect()
}

/// An SAE initialised (not trained) on the layer-1 residuals of `paths`, reading `tokens`;
/// saved to `dir/sae-<tokens>.safetensors`.
fn sae_checkpoint(dir: &Path, clip: &Clip, paths: &[PathBuf], tokens: Tokens) -> PathBuf {
    let pixels = saeclip::embed::load_pixels(clip, paths).unwrap();
    let residual = clip.residual(&pixels, LAYER).unwrap();
    let sample = tokens.select(&residual).reshape([-1, 64]);
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: 64,
        d_sae: 256,
        k: 16,
    };
    let sae = Sae::init(&config, &sample, BdecInit::Mean, 3).unwrap();
    let sha = saeclip::data::cache::file_sha256(&tiny_model().join("model.safetensors")).unwrap();
    let meta = CheckpointMeta {
        clip: json!({"model": "tiny", "sha256": sha, "layer": LAYER, "tokens": tokens.name()}),
        training: Value::Null,
        metrics: Value::Null,
    };
    let path = dir.join(format!("sae-{}.safetensors", tokens.name()));
    checkpoint::save(&path, &sae, &meta, None, Kind::Float).unwrap();
    path
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn zero_edit_changes_nothing_and_edits_move_the_residual_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip();
    let paths = images(dir.path());
    let pixels = saeclip::embed::load_pixels(&clip, &paths).unwrap();
    for tokens in [Tokens::Cls, Tokens::All] {
        let ckpt = sae_checkpoint(dir.path(), &clip, &paths, tokens);
        let sae = SplicedSae::load(&ckpt, &clip, None, Device::Cpu).unwrap();
        assert_eq!(sae.tokens, tokens);

        // Scale 1 (and clamping a latent to the value it has) changes nothing at all.
        let same = steer(&clip, &sae, &pixels, &[0, 5, 200], Edit::Scale(1.0)).unwrap();
        assert!(same.steered_residual.equal(&same.residual));
        assert!(same.steered.equal(&same.original));
        let plain = clip.image_embeds(&pixels).unwrap();
        assert!(max_diff(&same.original, &plain) < 1e-5);

        // Pick a latent that fires on image 0's first edited token, and one that does not.
        let at = tokens.positions(50);
        let x = tokens.select(&same.residual).reshape([-1, 64]);
        let z = sae.sae.encode(&x);
        let fired = z.get(0).argmax(0, false).int64_value(&[]) as usize;
        let silent = z.get(0).argmin(0, false).int64_value(&[]) as usize;
        assert!(z.get(0).double_value(&[fired as i64]) > 0.0);
        assert_eq!(z.get(0).double_value(&[silent as i64]), 0.0);
        for (latents, edit) in [
            (vec![fired], Edit::Scale(3.0)),
            (vec![fired], Edit::Scale(0.0)),
            (vec![silent], Edit::Clamp(4.5)),
            (vec![fired, silent], Edit::Clamp(-2.0)),
        ] {
            let s = steer(&clip, &sae, &pixels, &latents, edit).unwrap();
            // By hand: x' = x + Σ_j (z'_j − z_j)·W_dec[j] / s on the edited tokens.
            let mut want = x.copy();
            for &j in &latents {
                let zj = z.select(1, j as i64).unsqueeze(1); // N, 1
                let target = match edit {
                    Edit::Scale(f) => &zj * f,
                    Edit::Clamp(v) => zj.full_like(v),
                };
                let row = sae.sae.w_dec.get(j as i64).unsqueeze(0); // 1, D
                want += (target - &zj) * row / sae.sae.input_scale;
            }
            let (b, s_len, d) = s.residual.size3().unwrap();
            let k = at.end - at.start;
            let got = s.steered_residual.narrow(1, at.start, k).reshape([-1, d]);
            assert!(
                max_diff(&got, &want) < 1e-5,
                "{tokens:?} {edit:?}: {}",
                max_diff(&got, &want)
            );
            // Tokens outside the SAE's are untouched.
            if tokens == Tokens::Cls {
                let rest = |r: &Tensor| r.narrow(1, 1, s_len - 1);
                assert!(rest(&s.steered_residual).equal(&rest(&s.residual)));
            }
            // The steered embedding is CLIP's remaining blocks on the hand-edited residual.
            let hand = s.residual.copy();
            hand.narrow(1, at.start, k).copy_(&want.view([b, k, d]));
            let embeds = clip.image_embeds_from(&hand, LAYER).unwrap();
            assert!(
                max_diff(&s.steered, &embeds) < 1e-4,
                "{}",
                max_diff(&s.steered, &embeds)
            );
            assert!(
                max_diff(&s.steered, &s.original) > 1e-4,
                "{edit:?} must change the embedding"
            );
            // The reported latent values.
            let ids = Tensor::from_slice(&latents.iter().map(|&j| j as i64).collect::<Vec<_>>());
            let before = z.index_select(1, &ids).view([b, k, latents.len() as i64]);
            assert!(max_diff(&s.before, &before) < 1e-6);
            let after = match edit {
                Edit::Scale(f) => &before * f,
                Edit::Clamp(v) => before.full_like(v),
            };
            assert!(max_diff(&s.after, &after) < 1e-6);
        }
        // edit_rows alone: the same rule on arbitrary rows.
        let (edited, before, after) = edit_rows(&sae, &x, &[fired], Edit::Scale(2.0));
        assert!(max_diff(&after, &(&before * 2.0)) < 1e-6);
        let delta = (&edited - &x).get(0);
        let want =
            sae.sae.w_dec.get(fired as i64) * before.double_value(&[0, 0]) / sae.sae.input_scale;
        assert!(max_diff(&delta, &want) < 1e-5);
    }
}

#[test]
fn cli_prints_labels_writes_embeddings_and_refuses_bad_latents() {
    let dir = tempfile::tempdir().unwrap();
    let clip = clip();
    let paths = images(dir.path());
    let ckpt = sae_checkpoint(dir.path(), &clip, &paths, Tokens::Cls);
    let labels = dir.path().join("labels.txt");
    std::fs::write(
        &labels,
        "red circle\n\nblue square\ngreen star\norange heart\n",
    )
    .unwrap();
    let out = dir.path().join("steered.safetensors");
    let run = |extra: &[&str], out_file: Option<&Path>| {
        let mut cmd = common::saeclip();
        cmd.args(["--device", "cpu", "steer", "--model"])
            .arg(tiny_model())
            .arg("--sae")
            .arg(&ckpt)
            .arg("--images")
            .args(&paths)
            .args(extra);
        if let Some(f) = out_file {
            cmd.arg("--out").arg(f);
        }
        cmd.output().unwrap()
    };
    let labels_arg = labels.to_str().unwrap();
    let o = run(
        &[
            "--latent", "3,17", "--clamp", "6", "--labels", labels_arg, "--top", "3",
        ],
        Some(&out),
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.starts_with("latents 3,17 clamped to 6 at layer 1, cls tokens\n"),
        "{stdout}"
    );
    for p in &paths {
        assert!(stdout.contains(&format!("{}\n", p.display())), "{stdout}");
    }
    assert_eq!(stdout.matches("  before: ").count(), 4);
    assert_eq!(stdout.matches("  after:  ").count(), 4);
    assert!(stdout.contains("-> 6.0000"), "{stdout}");
    let before_line = stdout
        .lines()
        .find(|l| l.starts_with("  before: "))
        .unwrap();
    assert_eq!(
        before_line.matches('%').count(),
        3,
        "--top 3: {before_line}"
    );
    let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(tensors["original_image_embeds"].size(), [4, 32]);
    assert_eq!(tensors["steered_image_embeds"].size(), [4, 32]);
    assert_eq!(tensors["latents_before"].size(), [4, 1, 2]);
    assert_eq!(tensors["latents_after"].double_value(&[2, 0, 1]), 6.0);
    assert_eq!(
        Vec::<i64>::try_from(&tensors["latent_ids"]).unwrap(),
        vec![3, 17]
    );
    let plain = clip
        .image_embeds(&saeclip::embed::load_pixels(&clip, &paths).unwrap())
        .unwrap();
    assert!(max_diff(&tensors["original_image_embeds"], &plain) < 1e-5);
    assert!(max_diff(&tensors["steered_image_embeds"], &plain) > 1e-4);

    // Scale 1 through the CLI: the written embeddings are identical; dataset labels work.
    let o = run(
        &["--latent", "3", "--scale", "1", "--dataset", "procedural:0"],
        Some(&out),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    assert!(tensors["original_image_embeds"].equal(&tensors["steered_image_embeds"]));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("cos(original, steered embedding) = 1.0000"),
        "{stdout}"
    );

    // A latent the SAE does not have: one clear line, no file written.
    let missing = dir.path().join("never.safetensors");
    let o = run(
        &["--latent", "3,256", "--scale", "2", "--labels", labels_arg],
        Some(&missing),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: latent 256 does not exist") && lines[0].contains("0..=255"),
        "{stderr}"
    );
    assert!(!missing.exists());
    // An empty labels file is refused too.
    std::fs::write(&labels, "\n  \n").unwrap();
    let o = run(
        &["--latent", "3", "--scale", "2", "--labels", labels_arg],
        None,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no labels"));
}
