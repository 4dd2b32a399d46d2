//! Backbone families against transformers on the same random weights
//! (tests/reference/make_backbones.py): DINOv2 with and without registers (tiny, SwiGLU,
//! full-size ViT-S/14 with interpolated positions), CLIP at the B/16, L/14, L/14-336 and H/14
//! geometries (reduced depth); real photographs through `saeclip extract` against each
//! family's PIL image processor and model; token kinds and bad input.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use saeclip::clip::weights::read_safetensors;
use saeclip::clip::{Clip, Family, LoadOptions, Tokens};
use saeclip::data::cache::ActivationCache;
use tch::{Kind, Tensor};

struct Reference {
    dir: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Reference {
    fn load(name: &str) -> Reference {
        let dir = common::backbone_reference(name);
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

    fn model(&self) -> Clip {
        load(&self.dir.join("model"))
    }

    /// The input sides the reference was made at, ascending.
    fn sizes(&self) -> Vec<i64> {
        let mut s: Vec<i64> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("pixel_values.")?.parse().ok())
            .collect();
        s.sort();
        s
    }
}

fn load(dir: &Path) -> Clip {
    Clip::load(dir, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e:#}", dir.display()))
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

/// Every block's residual, the pooled output / image embedding and the spliced embedding
/// at every input size of the reference; for CLIP also the text tower and the logits.
fn check(name: &str, family: Family, tol: Tol) {
    let r = Reference::load(name);
    let clip = r.model();
    assert_eq!(clip.family(), family, "{name}");
    let n = clip.info().num_hidden_layers;
    let all: Vec<usize> = (0..n).collect();
    let splice_layer = r.get("splice_layer").int64_value(&[0]) as usize;
    for s in r.sizes() {
        let pixels = r.get(&format!("pixel_values.{s}"));
        let residuals = clip.residuals(pixels, &all).unwrap();
        for (l, res) in residuals.iter().enumerate() {
            assert_close(
                &format!("{name} @{s}px residual after block {l}"),
                res,
                r.get(&format!("hidden_states.{s}.{}", l + 1)),
                tol,
            );
        }
        assert_close(
            &format!("{name} @{s}px image embedding"),
            &clip.image_embeds(pixels).unwrap(),
            r.get(&format!("pooled.{s}")),
            tol,
        );
        assert_close(
            &format!("{name} @{s}px spliced embedding (block {splice_layer})"),
            &clip
                .image_embeds_spliced(pixels, splice_layer, splice)
                .unwrap(),
            r.get(&format!("spliced.{s}")),
            tol,
        );
    }
    if family == Family::Clip {
        let ids = r.get("input_ids");
        let text = clip.text_embeds(ids).unwrap();
        assert_close(
            &format!("{name} text embeds"),
            &text,
            r.get("text_embeds"),
            tol,
        );
        let s = r.sizes()[0];
        let image = clip
            .image_embeds(r.get(&format!("pixel_values.{s}")))
            .unwrap();
        assert_close(
            &format!("{name} logits"),
            &clip.logits(&image, &text),
            r.get(&format!("logits_per_image.{s}")),
            tol,
        );
    } else {
        let err = clip.text_embeds(&Tensor::zeros([1, 77], (Kind::Int64, tch::Device::Cpu)));
        assert!(format!("{:#}", err.unwrap_err()).contains("no text tower"));
    }
}

#[test]
fn dinov2_tiny_matches_transformers_at_every_input_size() {
    check("dinov2-tiny", Family::Dinov2, Tol::Abs(1e-4));
}

#[test]
fn dinov2_with_registers_tiny_matches_transformers() {
    check(
        "dinov2-reg-tiny",
        Family::Dinov2WithRegisters,
        Tol::Abs(1e-4),
    );
}

#[test]
fn dinov2_swiglu_matches_transformers() {
    check("dinov2-swiglu-tiny", Family::Dinov2, Tol::Abs(1e-4));
}

#[test]
fn dinov2_small_full_size_matches_transformers() {
    check("dinov2-small", Family::Dinov2, Tol::Rel(1e-3));
}

#[test]
fn dinov2_with_registers_small_full_size_matches_transformers() {
    check(
        "dinov2-reg-small",
        Family::Dinov2WithRegisters,
        Tol::Rel(1e-3),
    );
}

#[test]
fn clip_b16_matches_transformers() {
    check("clip-b16", Family::Clip, Tol::Abs(1e-4));
}

#[test]
fn clip_l14_matches_transformers() {
    check("clip-l14", Family::Clip, Tol::Abs(1e-4));
}

#[test]
fn clip_l14_336_matches_transformers() {
    let r = Reference::load("clip-l14-336");
    let clip = r.model();
    // 336 px / 14 = 24 patches a side: 577 positions, read from preprocessor_config.json.
    assert_eq!(clip.info().image_size, 336);
    assert_eq!(clip.info().layout.seq_len(), 577);
    check("clip-l14-336", Family::Clip, Tol::Abs(1e-4));
}

#[test]
fn clip_h14_gelu_matches_transformers() {
    check("clip-h14", Family::Clip, Tol::Abs(1e-4));
}

#[test]
fn token_kinds_follow_each_model() {
    let reg = Reference::load("dinov2-reg-tiny").model();
    // Loaded without preprocessor_config.json: DINOv2's default crops 224 px = 56² patches.
    let info = reg.info();
    assert_eq!((info.image_size, info.layout.registers), (224, 4));
    assert_eq!(reg.token_range(Tokens::Cls).unwrap(), 0..1);
    assert_eq!(reg.token_range(Tokens::Registers).unwrap(), 1..5);
    assert_eq!(reg.token_range(Tokens::Patches).unwrap(), 5..5 + 56 * 56);
    assert!(!reg.has_text());
    let plain = Reference::load("dinov2-tiny").model();
    let err = plain
        .token_range(Tokens::Registers)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`registers`") && err.contains("dinov2"),
        "{err}"
    );
}

/// The rows of a cache, by (image source file name) → [tokens, D].
fn cache_rows(dir: &Path) -> HashMap<String, Tensor> {
    let cache = ActivationCache::open(dir).unwrap();
    let rows = cache.load_all(Kind::Float).unwrap();
    let mut out = HashMap::new();
    for rec in cache.images().unwrap() {
        let mask = rows.image_index.eq(rec.image_index as i64);
        let idx = mask.nonzero().squeeze_dim(1);
        let order = rows.token_index.index_select(0, &idx).argsort(0, false);
        let acts = rows
            .activations
            .index_select(0, &idx.index_select(0, &order));
        let name = Path::new(&rec.source)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        out.insert(name, acts);
    }
    out
}

#[test]
fn photographs_extract_as_transformers_with_the_pil_processor() {
    let r = Reference::load("photos");
    let images = r.dir.join("images");
    let tmp = tempfile::tempdir().unwrap();
    for (model, layer) in [("dinov2", 1), ("dinov2-reg", 0), ("clip", 1)] {
        let dir = r.dir.join(model);
        let clip = load(&dir);
        let prep = clip.preprocess();
        let names: Vec<String> = r
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("layer.{model}.")).map(String::from))
            .collect();
        assert_eq!(names.len(), 5, "{model}");
        // Preprocessing equals the PIL image processor's output.
        for name in &names {
            let ours =
                saeclip::clip::preprocess::preprocess_file(&images.join("photo").join(name), &prep)
                    .unwrap();
            let want = r.get(&format!("pixels.{model}.{name}"));
            let ours = Tensor::from_slice(&ours).view(want.size().as_slice());
            assert_close(
                &format!("{model} pixels of {name}"),
                &ours,
                want,
                Tol::Abs(1e-6),
            );
        }
        // `saeclip extract` over the folder equals the model on those pixels.
        let out = tmp.path().join(model);
        let run = common::saeclip()
            .args(["extract", "--model"])
            .arg(&dir)
            .arg("--dataset")
            .arg(format!("folder:{}", images.display()))
            .args([
                "--layer",
                &layer.to_string(),
                "--tokens",
                "all",
                "--dtype",
                "f32",
            ])
            .args(["--batch-size", "2", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let rows = cache_rows(&out);
        assert_eq!(rows.len(), names.len());
        for name in &names {
            assert_close(
                &format!("{model} extract of {name}"),
                &rows[name],
                r.get(&format!("layer.{model}.{name}")),
                Tol::Abs(1e-4),
            );
        }
    }
}

/// A copy of a reference model directory that a test may break.
fn model_copy(name: &str, to: &Path) -> PathBuf {
    let src = common::backbone_reference(name).join("model");
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to.to_path_buf()
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c[key] = value;
    std::fs::write(&path, c.to_string()).unwrap();
}

fn embed(args: &[&str]) -> std::process::Output {
    common::saeclip().arg("embed").args(args).output().unwrap()
}

#[test]
fn bad_dinov2_input_is_one_line_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 90]))
        .save(&img)
        .unwrap();
    let good = model_copy("dinov2-tiny", &tmp.path().join("good"));
    let ok = embed(&[
        "--model",
        good.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // No text tower: texts are refused by name.
    let out = embed(&["--model", good.to_str().unwrap(), "--text", "a cat"]);
    common::fails_cleanly(&out, "no text tower");

    let act = model_copy("dinov2-tiny", &tmp.path().join("act"));
    edit_config(&act, "hidden_act", serde_json::json!("relu"));
    let out = embed(&[
        "--model",
        act.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
    ]);
    common::fails_cleanly(&out, "hidden_act \"relu\"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));

    // Config and weights disagree: one block more than the file holds.
    let deeper = model_copy("dinov2-tiny", &tmp.path().join("deeper"));
    edit_config(&deeper, "num_hidden_layers", serde_json::json!(4));
    let out = embed(&[
        "--model",
        deeper.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
    ]);
    common::fails_cleanly(&out, "missing: encoder.layer.3.");

    let wide = model_copy("dinov2-tiny", &tmp.path().join("wide"));
    edit_config(&wide, "mlp_ratio", serde_json::json!(2));
    let out = embed(&[
        "--model",
        wide.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
    ]);
    common::fails_cleanly(
        &out,
        "wrong shape: encoder.layer.0.mlp.fc1.bias expected [128] found [256]",
    );

    // A token kind the model lacks, in extract.
    let out = common::saeclip()
        .args(["extract", "--model", good.to_str().unwrap()])
        .args(["--dataset", "procedural:1", "--limit", "2", "--layer", "0"])
        .args(["--tokens", "registers", "--out"])
        .arg(tmp.path().join("cache"))
        .output()
        .unwrap();
    common::fails_cleanly(
        &out,
        "token kind `registers` does not exist in a dinov2 model",
    );

    // eval-zeroshot needs a text tower.
    let out = common::saeclip()
        .args(["eval-zeroshot", "--model", good.to_str().unwrap()])
        .args(["--dataset", "procedural:1", "--samples", "2"])
        .output()
        .unwrap();
    common::fails_cleanly(&out, "needs a model with a text tower");
}

/// A top-k SAE on `tokens` of block `layer` of the model in `dir`, initialised from rows
/// of the procedural images, saved to `path`.
fn sae_for(dir: &Path, layer: usize, tokens: Tokens, path: &Path) {
    use saeclip::sae::{checkpoint::save, Architecture, BdecInit, CheckpointMeta, Sae, SaeConfig};
    let clip = load(dir);
    let ds = saeclip::data::open(
        &"procedural:3".parse().unwrap(),
        saeclip::data::Split::Train,
    )
    .unwrap();
    let prep = clip.preprocess();
    let side = clip.info().image_size;
    let flat: Vec<f32> = (0..8)
        .flat_map(|i| saeclip::clip::preprocess::preprocess(&ds.image(i).unwrap(), &prep))
        .collect();
    let pixels = Tensor::from_slice(&flat).view([8, 3, side, side]);
    let range = clip.token_range(tokens).unwrap();
    let rows = clip
        .residual(&pixels, layer)
        .unwrap()
        .narrow(1, range.start, range.end - range.start)
        .reshape([-1, clip.info().hidden_size]);
    let config = SaeConfig {
        architecture: Architecture::TopK,
        d_in: clip.info().hidden_size,
        d_sae: 16,
        k: 4,
    };
    let sae = Sae::init(&config, &rows, BdecInit::Mean, 3).unwrap();
    let sha = saeclip::data::cache::file_sha256(&dir.join("model.safetensors")).unwrap();
    let meta = CheckpointMeta {
        clip: serde_json::json!({"model": dir, "sha256": sha, "layer": layer, "tokens": tokens}),
        ..Default::default()
    };
    save(path, &sae, &meta, None, Kind::Float).unwrap();
}

#[test]
fn interpret_labels_a_dinov2_sae_with_label_model() {
    use saeclip::interpret::{interpret, InterpretOptions, LabelMethod};
    let photos = Reference::load("photos");
    let dino = photos.dir.join("dinov2-reg");
    let label_clip = photos.dir.join("clip");
    let tmp = tempfile::tempdir().unwrap();
    let sae = tmp.path().join("sae.safetensors");
    sae_for(&dino, 0, Tokens::Registers, &sae);
    let vocab = tmp.path().join("vocab.txt");
    std::fs::write(
        &vocab,
        "red\ngreen\nblue\nyellow\nstriped\nsky\ncircle\ndog\n",
    )
    .unwrap();
    let options = |name: &str| {
        let mut o = InterpretOptions::new(
            dino.clone(),
            sae.clone(),
            "procedural:3".parse().unwrap(),
            tmp.path().join(name).join("features.csv"),
            tmp.path().join(name).join("collages"),
        );
        o.limit = Some(24);
        o.top_k = 4;
        o.features = 3;
        o.batch_size = 8;
        o
    };
    // Without a label model: top images and collages, no labels, a note saying why.
    let plain = interpret(&options("plain")).unwrap();
    assert_eq!(plain.label_method, LabelMethod::Unlabelled);
    assert!(plain.features.iter().all(|f| f.labels.is_empty()));
    assert!(plain.features.iter().all(|f| f.collage.is_file()));
    assert!(
        plain.notes.iter().any(|n| n.contains("--label-model")),
        "{:?}",
        plain.notes
    );
    let mut bad = options("bad");
    bad.vocab = Some(vocab.clone());
    let err = format!("{:#}", interpret(&bad).unwrap_err());
    assert!(
        err.contains("--vocab") && err.contains("--label-model"),
        "{err}"
    );
    let mut not_clip = options("not-clip");
    not_clip.label_model = Some(dino.clone());
    let err = format!("{:#}", interpret(&not_clip).unwrap_err());
    assert!(err.contains("no text tower"), "{err}");

    // With the CLIP: the labels are the vocabulary ranked by cosine with the mean CLIP
    // embedding of each feature's top images minus the sample's mean embedding.
    let mut o = options("labelled");
    o.label_model = Some(label_clip.clone());
    o.vocab = Some(vocab.clone());
    let s = interpret(&o).unwrap();
    assert_eq!(s.label_method, LabelMethod::LabelModel);
    assert_eq!(s.images, 24);
    let lm = load(&label_clip);
    let ds = saeclip::data::open(
        &"procedural:3".parse().unwrap(),
        saeclip::data::Split::Train,
    )
    .unwrap();
    let prep = lm.preprocess();
    let side = lm.info().image_size;
    let flat: Vec<f32> = (0..24)
        .flat_map(|i| saeclip::clip::preprocess::preprocess(&ds.image(i).unwrap(), &prep))
        .collect();
    let embeds = saeclip::clip::normalize(
        &lm.image_embeds(&Tensor::from_slice(&flat).view([24, 3, side, side]))
            .unwrap(),
    );
    let mean = embeds.mean_dim(0, false, Kind::Float);
    let phrases: Vec<String> = std::fs::read_to_string(&vocab)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let text = saeclip::interpret::labels::text_embeddings(
        &lm,
        &phrases,
        &tmp.path().join("text.safetensors"),
    )
    .unwrap();
    assert!(!s.features.is_empty());
    for f in &s.features {
        let top: Vec<i64> = f.top.iter().map(|t| t.image_index as i64).collect();
        let dir = embeds
            .index_select(0, &Tensor::from_slice(&top))
            .mean_dim(0, false, Kind::Float)
            - &mean;
        let want = saeclip::interpret::labels::rank_labels(&dir.unsqueeze(0), &text, &phrases, 3);
        let got: Vec<&str> = f.labels.iter().map(|l| l.phrase.as_str()).collect();
        let want: Vec<&str> = want[0].iter().map(|l| l.phrase.as_str()).collect();
        assert_eq!(got, want, "feature {}", f.latent);
        assert_eq!(f.labels.len(), 3);
    }
}
