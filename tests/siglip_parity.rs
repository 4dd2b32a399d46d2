//! SigLIP / SigLIP 2 parity: saeclip's native model equals transformers' `SiglipModel` and
//! `Siglip2Model` on the same random weights (tests/reference/make_siglip.py): every block's
//! residual, the pooled embeddings, the logits and sigmoid scores, and the spliced image
//! embeddings; and bad inputs fail with one clear message.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use saeclip::clip::siglip::Siglip;
use saeclip::clip::weights::read_safetensors;
use saeclip::clip::{Clip, Family, LoadOptions, Precision, Tokens};
use tch::{Device, Kind, Tensor};

struct Reference {
    dir: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Reference {
    fn load(name: &str) -> Reference {
        let dir = common::generated_model("tests/reference/make_siglip.py", name);
        let tensors = read_safetensors(&dir.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
        Reference { dir, tensors }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference tensor {name} missing"))
    }

    fn model(&self) -> Siglip {
        load(&self.dir.join("hf"))
            .unwrap_or_else(|e| panic!("loading {}: {e:#}", self.dir.display()))
    }
}

fn load(dir: &Path) -> anyhow::Result<Siglip> {
    Siglip::load(dir, Device::Cpu, Precision::F32)
}

#[derive(Clone, Copy, Debug)]
enum Tol {
    Abs(f64),
    Rel(f64),
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: Tol) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let got = got.to_kind(Kind::Double);
    let want = want.to_kind(Kind::Double);
    let diff = (&got - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    let ok = match tol {
        Tol::Abs(t) => diff <= t,
        Tol::Rel(t) => diff <= t * scale,
    };
    assert!(diff.is_finite(), "{what}: non-finite values");
    assert!(
        ok,
        "{what}: max abs diff {diff:e} (reference max {scale:e}) exceeds {tol:?}"
    );
    eprintln!("parity {what}: max abs diff {diff:.3e} (reference max {scale:.3e})");
}

fn splice(x: &Tensor) -> anyhow::Result<Tensor> {
    Ok(x * 0.5 + 0.1)
}

fn check(name: &str, tol: Tol) {
    let r = Reference::load(name);
    let siglip = r.model();
    let pixels = r.get("pixel_values");
    let ids = r.get("input_ids");
    let model = siglip.model();
    let n = siglip.config().vision.num_hidden_layers;
    let hidden = model.vision.hidden_states(pixels).unwrap();
    assert_eq!(hidden.len(), n + 1);
    for (i, h) in hidden.iter().enumerate() {
        assert_close(
            &format!("{name} vision hidden_states[{i}]"),
            h,
            r.get(&format!("hf.hidden_states.{i}")),
            tol,
        );
    }
    let text_hidden = model.text.hidden_states(ids).unwrap();
    assert_eq!(
        text_hidden.len(),
        siglip.config().text.num_hidden_layers + 1
    );
    for (i, h) in text_hidden.iter().enumerate() {
        assert_close(
            &format!("{name} text hidden_states[{i}]"),
            h,
            r.get(&format!("hf.text_hidden_states.{i}")),
            tol,
        );
    }
    // Layer L is the output of block L = transformers' hidden_states[L + 1].
    let layers: Vec<usize> = (0..n).collect();
    for (l, res) in siglip
        .residuals(pixels, &layers)
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_close(
            &format!("{name} residual after block {l}"),
            res,
            r.get(&format!("hf.hidden_states.{}", l + 1)),
            tol,
        );
    }
    let image = siglip.image_embeds(pixels).unwrap();
    let text = siglip.text_embeds(ids).unwrap();
    assert_close(
        &format!("{name} image embeds"),
        &image,
        r.get("hf.image_embeds"),
        tol,
    );
    assert_close(
        &format!("{name} text embeds"),
        &text,
        r.get("hf.text_embeds"),
        tol,
    );
    let logits = siglip.logits(&image, &text);
    assert_close(
        &format!("{name} logits"),
        &logits,
        r.get("hf.logits_per_image"),
        tol,
    );
    assert_close(
        &format!("{name} sigmoid scores"),
        &logits.sigmoid(),
        r.get("hf.probs"),
        tol,
    );
    let layer = r.get("splice_layer").int64_value(&[0]) as usize;
    let spliced = siglip.image_embeds_spliced(pixels, layer, splice).unwrap();
    assert_close(
        &format!("{name} spliced image embeds"),
        &spliced,
        r.get("hf.spliced.image_embeds"),
        tol,
    );
    // the splice changes the embedding: the check above could fail
    let moved = (&spliced - &image).abs().max().double_value(&[]);
    assert!(
        moved > 1e-3,
        "{name}: the splice left the embedding unchanged"
    );
}

#[test]
fn tiny_siglip_matches_transformers() {
    check("siglip-tiny", Tol::Abs(1e-4));
}

#[test]
fn tiny_siglip2_matches_transformers() {
    check("siglip2-tiny", Tol::Abs(1e-4));
}

#[test]
fn full_size_siglip_base_patch16_224_matches_transformers() {
    check("siglip-base", Tol::Rel(1e-3));
}

#[test]
fn several_layers_in_one_pass_equal_single_layers() {
    let r = Reference::load("siglip-tiny");
    let siglip = r.model();
    let pixels = r.get("pixel_values");
    let many = siglip.residuals(pixels, &[2, 0, 2]).unwrap();
    for (got, l) in many.iter().zip([2, 0, 2]) {
        assert!(got.equal(&siglip.residual(pixels, l).unwrap()), "layer {l}");
    }
    let err = siglip.residuals(pixels, &[3]).unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
}

/// Through `Clip` (what every command uses): the family, the token layout, the model's own
/// preprocessing of real photographs and tokenizer.json equal transformers' image processor
/// and AutoTokenizer; the embeddings, logits and sigmoid scores follow.
fn check_pipeline(name: &str, family: Family) {
    let r = Reference::load(name);
    let hf = r.dir.join("hf");
    let clip = Clip::load(&hf, &LoadOptions::default()).unwrap();
    assert_eq!(clip.family(), family);
    let info = clip.info();
    let n = info.grid_size() * info.grid_size();
    assert_eq!(info.layout.seq_len(), n, "no class token");
    let err = clip.token_range(Tokens::Cls).unwrap_err().to_string();
    assert!(err.contains("`cls`") && !err.contains('\n'), "{err}");
    assert_eq!(clip.token_range(Tokens::Patches).unwrap(), 0..n);
    assert_eq!(clip.token_range(Tokens::All).unwrap(), 0..n);
    assert!(clip.token_range(Tokens::Registers).is_err());

    let prompts = [
        "a photo of a cat.",
        "A photo of a Dog",
        "an astronaut in a white suit",
        "a cup of coffee on a saucer",
        "a blurry photo of a rocket.",
    ]
    .map(String::from);
    let ids = clip.tokenize(&prompts).unwrap();
    assert!(
        ids.equal(r.get("prompt.input_ids")),
        "{name}: token ids differ from transformers' AutoTokenizer"
    );
    let tol = Tol::Abs(1e-4);
    let text = clip.text_embeds(&ids).unwrap();
    assert_close(
        &format!("{name} prompt text embeds"),
        &text,
        r.get("prompt.text_embeds"),
        tol,
    );

    let mut photos: Vec<PathBuf> = std::fs::read_dir(r.dir.join("photos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort_by_key(|p| {
        ["astronaut", "coffee", "chelsea"]
            .iter()
            .position(|n| p.file_stem().unwrap() == *n)
    });
    let pixels = saeclip::embed::load_pixels(&clip, &photos).unwrap();
    let want = r.get("photo.pixel_values");
    let got = match family {
        Family::Siglip => pixels.shallow_clone(),
        // transformers' NaFlex processor hands the model patches: (row, column, channel)
        _ => {
            let (b, c, h, _) = pixels.size4().unwrap();
            let p = info.patch_size;
            pixels
                .reshape([b, c, h / p, p, h / p, p])
                .permute([0, 2, 4, 3, 5, 1])
                .reshape([b, n, p * p * c])
        }
    };
    assert_close(
        &format!("{name} photo pixel values"),
        &got,
        want,
        Tol::Abs(1e-5),
    );
    let image = clip.image_embeds(&pixels).unwrap();
    assert_close(
        &format!("{name} photo image embeds"),
        &image,
        r.get("photo.image_embeds"),
        tol,
    );
    let logits = clip.logits(&image, &text);
    assert_close(
        &format!("{name} photo logits"),
        &logits,
        r.get("photo.logits"),
        tol,
    );

    // end to end: `saeclip embed` prints SigLIP's sigmoid scores
    let mut cmd = common::saeclip();
    cmd.args(["embed", "--json", "--model", hf.to_str().unwrap()]);
    for p in &photos {
        cmd.args(["--image", p.to_str().unwrap()]);
    }
    for t in &prompts {
        cmd.args(["--text", t]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probs: Vec<Vec<f32>> = serde_json::from_value(json["probs"].clone()).unwrap();
    let probs = Tensor::from_slice2(&probs);
    assert_close(
        &format!("{name} saeclip embed probs"),
        &probs,
        r.get("photo.probs"),
        tol,
    );
}

#[test]
fn siglip_pipeline_matches_transformers_on_photographs() {
    check_pipeline("siglip-tiny", Family::Siglip);
}

#[test]
fn siglip2_pipeline_matches_transformers_on_a_square_photograph() {
    check_pipeline("siglip2-tiny", Family::Siglip2);
}

#[test]
fn cli_zero_shot_runs_and_cls_and_a_missing_tokenizer_are_refused() {
    let r = Reference::load("siglip-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let out = common::saeclip()
        .args(["extract", "--model"])
        .arg(r.dir.join("hf"))
        .args(["--tokens", "cls", "--layer", "1", "--out"])
        .arg(tmp.path().join("cache"))
        .args(["--dataset", "procedural:2", "--limit", "2"])
        .output()
        .unwrap();
    common::fails_cleanly(&out, "token kind `cls` does not exist in a siglip model");
    // zero-shot classification runs on SigLIP (class texts through its tokenizer.json)
    let out = common::saeclip()
        .args(["eval-zeroshot", "--model"])
        .arg(r.dir.join("hf"))
        .args(["--dataset", "procedural:3", "--samples", "8", "--json"])
        .arg(tmp.path().join("zs.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("zs.json")).unwrap()).unwrap();
    assert!(report.to_string().contains("top1"), "{report}");
    // a directory without tokenizer.json embeds images but not texts
    let (_tmp, dir) = edited_copy(|_| {});
    let out = common::saeclip()
        .args(["embed", "--model", dir.to_str().unwrap(), "--text", "a cat"])
        .output()
        .unwrap();
    common::fails_cleanly(&out, "tokenizer.json");
}

/// Copy the tiny model's directory and rewrite its config with `edit`.
fn edited_copy(edit: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, PathBuf) {
    let r = Reference::load("siglip-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        r.dir.join("hf/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.dir.join("hf/config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    (tmp, dir)
}

#[test]
fn config_and_weights_that_disagree_are_named() {
    let (_tmp, dir) = edited_copy(|c| c["vision_config"]["intermediate_size"] = 128.into());
    let msg = format!("{:#}", load(&dir).unwrap_err());
    assert!(
        msg.contains("does not fit the model config")
            && msg.contains("vision_model.encoder.layers.0.mlp.fc1.weight")
            && !msg.contains('\n'),
        "{msg}"
    );
    let (_tmp, dir) = edited_copy(|c| c["vision_config"]["num_hidden_layers"] = 4.into());
    let msg = format!("{:#}", load(&dir).unwrap_err());
    assert!(msg.contains("missing") && msg.contains("layers.3"), "{msg}");
}

#[test]
fn unsupported_activation_is_named() {
    let (_tmp, dir) = edited_copy(|c| c["text_config"]["hidden_act"] = "relu".into());
    let msg = format!("{:#}", load(&dir).unwrap_err());
    assert!(
        msg.contains("text_config.hidden_act")
            && msg.contains("config.json")
            && !msg.contains('\n'),
        "{msg}"
    );
}

#[test]
fn random_model_round_trips_through_a_transformers_directory() {
    let r = Reference::load("siglip2-tiny");
    let config = r.model().config().clone();
    let a = Siglip::random(&config, 7, Device::Cpu, Precision::F32);
    let tmp = tempfile::tempdir().unwrap();
    a.save_hf(tmp.path()).unwrap();
    let b = load(tmp.path()).unwrap();
    assert_eq!(b.config(), &config);
    let pixels = r.get("pixel_values");
    assert!(a
        .image_embeds(pixels)
        .unwrap()
        .equal(&b.image_embeds(pixels).unwrap()));
}

/// `interpret` labels features of a SigLIP SAE with SigLIP's own text tower (tokenizer.json
/// and the sigmoid model's embeddings): the vocabulary ranked against each feature's mean
/// normalised top-image embedding minus the sample's, exactly as computed here directly.
/// (Random weights: the labels mean nothing; that the ranking is the documented one does.)
#[test]
fn interpret_labels_siglip_features_with_its_own_text_tower() {
    use common::planted::*;
    use saeclip::clip::normalize;
    use saeclip::data::Split;
    use saeclip::interpret::{interpret, LabelMethod};

    let r = Reference::load("siglip-tiny");
    let model = r.dir.join("hf");
    let clip = Clip::load(&model, &LoadOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sample = the_sample();
    let layer = 1;
    let sae = planted_sae_on(&clip, layer, &sample);
    let sae_path = dir.path().join("sae.safetensors");
    saeclip::sae::checkpoint::save(
        &sae_path,
        &sae,
        &meta_for(&model, layer, Tokens::Patches),
        None,
        Kind::Float,
    )
    .unwrap();
    let vocab = ["red", "green", "blue", "striped", "sky", "circle", "dog"];
    let vocab_path = dir.path().join("vocab.txt");
    std::fs::write(&vocab_path, vocab.join("\n")).unwrap();
    let o = sample_options(&model, &sae_path, &dir.path().join("out"), 6, &vocab_path);
    let s = interpret(&o).unwrap();
    assert_eq!(s.label_method, LabelMethod::TopImages);
    assert!(!s.features.is_empty());

    // The images as interpret reads them: SigLIP's own preprocessing (the tiny model's
    // preprocessor_config.json), not CLIP's.
    let ds = procedural(Split::Train);
    let (prep, size) = (clip.preprocess(), clip.info().image_size);
    let embed = |idx: &[usize]| {
        let flat: Vec<f32> = idx
            .iter()
            .flat_map(|&i| saeclip::clip::preprocess::preprocess(&ds.image(i).unwrap(), &prep))
            .collect();
        let pixels = Tensor::from_slice(&flat).view([idx.len() as i64, 3, size, size]);
        normalize(&clip.image_embeds(&pixels).unwrap())
    };
    let sample_mean = embed(&sample).mean_dim(0, false, Kind::Float);
    let prompts: Vec<String> = vocab.iter().map(|v| format!("a photo of a {v}")).collect();
    let texts = normalize(&clip.text_embeds(&clip.tokenize(&prompts).unwrap()).unwrap());
    for f in &s.features {
        let top: Vec<usize> = f.top.iter().map(|t| t.image_index).collect();
        let direction = embed(&top).mean_dim(0, false, Kind::Float) - &sample_mean;
        let cos = Vec::<f32>::try_from(
            normalize(&direction.view([1, -1]))
                .matmul(&texts.tr())
                .view([-1]),
        )
        .unwrap();
        let mut want: Vec<(&str, f64)> = vocab
            .iter()
            .copied()
            .zip(cos.iter().map(|&c| f64::from(c)))
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(f.labels.len(), 3, "feature {}", f.latent);
        for (got, (phrase, score)) in f.labels.iter().zip(&want) {
            assert_eq!(&got.phrase, phrase, "feature {}", f.latent);
            assert!(
                (got.score - score).abs() < 1e-4,
                "feature {}: {} vs {score}",
                f.latent,
                got.score
            );
        }
    }
}
