//! `saeclip embed` on good and bad input: every bad input gives one clear line on
//! stderr, a non-zero exit and no panic.

mod common;

use std::path::{Path, PathBuf};

use saeclip::clip::weights::read_safetensors;
use tch::Tensor;

/// A copy of the tiny reference model's HF directory that a test may break.
fn model_copy(dir: &Path) -> PathBuf {
    let src = common::reference_model("tiny-quick").join("hf");
    let dst = dir.join("model");
    std::fs::create_dir_all(&dst).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(name), dst.join(name)).unwrap();
    }
    dst
}

fn write_png(path: &Path, w: u32, h: u32) {
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, 128]));
    img.save(path).unwrap();
}

/// Run `saeclip embed ARGS` expecting failure; return its single stderr line.
fn fails(args: &[&str]) -> String {
    let out = common::saeclip().arg("embed").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure for {args:?}; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr for {args:?}, got: {stderr}"
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn embed_prints_probabilities_and_writes_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let img = dir.path().join("a.png");
    write_png(&img, 300, 200);
    let out_file = dir.path().join("out.safetensors");
    let out = common::saeclip()
        .args([
            "embed",
            "--model",
            s(&model),
            "--image",
            s(&img),
            "--text",
            "a cat",
            "--text",
            "a dog",
        ])
        .args(["--layer", "1", "--out", s(&out_file), "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("a cat") && stdout.contains("a dog") && stdout.contains('%'),
        "{stdout}"
    );
    let tensors: std::collections::HashMap<String, Tensor> =
        read_safetensors(&out_file).unwrap().into_iter().collect();
    assert_eq!(tensors["image_embeds"].size(), [1, 32]);
    assert_eq!(tensors["text_embeds"].size(), [2, 32]);
    assert_eq!(tensors["residual"].size(), [1, 50, 64]);
    let probs = &tensors["probs"];
    assert!((probs.sum(tch::Kind::Double).double_value(&[]) - 1.0).abs() < 1e-5);

    let json = common::saeclip()
        .args(["embed", "--model", s(&model), "--text", "a cat", "--json"])
        .output()
        .unwrap();
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["text_embeds"][0].as_array().unwrap().len(), 32);
}

#[test]
fn missing_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    std::fs::remove_file(model.join("config.json")).unwrap();
    let line = fails(&["--model", s(&model), "--text", "x"]);
    assert!(line.contains("config.json"), "{line}");
    let line = fails(&[
        "--model",
        s(&model.join("model.safetensors")),
        "--text",
        "x",
    ]);
    assert!(line.contains("config.json"), "{line}");
}

#[test]
fn missing_model_path() {
    let line = fails(&["--model", "/nonexistent/clip", "--text", "x"]);
    assert!(
        line.contains("/nonexistent/clip") && line.contains("does not exist"),
        "{line}"
    );
}

#[test]
fn truncated_and_non_safetensors_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let line = fails(&["--model", s(&model), "--text", "x"]);
    assert!(
        line.contains("model.safetensors") && line.contains("not a valid safetensors"),
        "{line}"
    );
    std::fs::write(&weights, b"this is not a tensor file at all").unwrap();
    let line = fails(&["--model", s(&model), "--text", "x"]);
    assert!(line.contains("not a valid safetensors"), "{line}");
}

#[test]
fn wrong_shapes_missing_and_unexpected_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["vision_config"]["intermediate_size"] = serde_json::json!(128);
    std::fs::write(&config, json.to_string()).unwrap();
    let line = fails(&["--model", s(&model), "--text", "x"]);
    assert!(line.contains("wrong shape"), "{line}");
    assert!(
        line.contains(
            "vision_model.encoder.layers.0.mlp.fc1.weight expected [128, 64] found [256, 64]"
        ),
        "{line}"
    );

    // Put the config back, then drop one tensor and add a foreign one.
    std::fs::write(&config, text).unwrap();
    let weights = model.join("model.safetensors");
    let mut tensors = read_safetensors(&weights).unwrap();
    tensors.retain(|(n, _)| n != "text_model.final_layer_norm.bias");
    tensors.push((
        "decoder.weight".into(),
        Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)),
    ));
    Tensor::write_safetensors(&tensors, &weights).unwrap();
    let line = fails(&["--model", s(&model), "--text", "x"]);
    assert!(
        line.contains("missing: text_model.final_layer_norm.bias [64]"),
        "{line}"
    );
    assert!(line.contains("unexpected: decoder.weight"), "{line}");
}

#[test]
fn unknown_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.xyz");
    std::fs::write(&path, b"?").unwrap();
    let line = fails(&["--model", s(&path), "--text", "x"]);
    assert!(line.contains("unknown model format"), "{line}");
    let line = fails(&["--model", s(dir.path()), "--text", "x"]);
    assert!(line.contains("not a model directory"), "{line}");
    let line = fails(&[
        "--model",
        s(&path),
        "--model-format",
        "torchscript",
        "--text",
        "x",
    ]);
    assert!(line.contains("not a TorchScript module"), "{line}");
    let pickle = dir.path().join("pytorch_model.bin");
    std::fs::write(&pickle, b"PK").unwrap();
    let line = fails(&["--model", s(&pickle), "--text", "x"]);
    assert!(line.contains("pickle"), "{line}");
}

#[test]
fn unreadable_images() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let fake = dir.path().join("fake.png");
    std::fs::write(&fake, b"not an image").unwrap();
    let line = fails(&["--model", s(&model), "--image", s(&fake)]);
    assert!(line.contains("fake.png"), "{line}");
    let missing = dir.path().join("missing.jpg");
    let line = fails(&["--model", s(&model), "--image", s(&missing)]);
    assert!(line.contains("missing.jpg"), "{line}");
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let line = fails(&["--model", s(&model), "--image", s(&empty)]);
    assert!(line.contains("empty.jpg"), "{line}");
}

#[test]
fn empty_text_and_bad_layer() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let line = fails(&["--model", s(&model), "--text", "fine", "--text", "  "]);
    assert!(line.contains("text 2 is empty"), "{line}");
    let line = fails(&["--model", s(&model)]);
    assert!(line.contains("nothing to embed"), "{line}");
    let img = dir.path().join("a.png");
    write_png(&img, 40, 40);
    let line = fails(&["--model", s(&model), "--image", s(&img), "--layer", "7"]);
    assert!(line.contains("layer 7 does not exist"), "{line}");
}

/// Rewrite `config.json`'s `model_type` (or remove it with `None`).
fn set_model_type(model: &Path, value: Option<&str>) {
    let path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    match value {
        Some(v) => config["model_type"] = serde_json::json!(v),
        None => {
            config.as_object_mut().unwrap().remove("model_type");
        }
    }
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn model_type_picks_the_family_and_unknown_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    // Without model_type the directory is read as CLIP.
    set_model_type(&model, None);
    let ok = common::saeclip()
        .args(["embed", "--model", s(&model), "--text", "a cat"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    set_model_type(&model, Some("vit_mae"));
    let err = fails(&["--model", s(&model), "--text", "a cat"]);
    assert!(
        err.contains("config.json") && err.contains("model_type \"vit_mae\""),
        "{err}"
    );
}

#[test]
fn bad_preprocessor_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let img = dir.path().join("a.png");
    write_png(&img, 40, 30);
    let prep = model.join("preprocessor_config.json");
    for (json, field) in [
        (r#"{"resample": 0}"#, "resample"),
        (r#"{"crop_size": {"height": 100}}"#, "crop_size"),
        // tiny-quick's image_size is 224: a 200 px crop does not fit it.
        (r#"{"crop_size": 200, "size": 200}"#, "image_size"),
        ("not json", "preprocessor_config.json"),
    ] {
        std::fs::write(&prep, json).unwrap();
        let err = fails(&["--model", s(&model), "--image", s(&img)]);
        assert!(
            err.contains("preprocessor_config.json") && err.contains(field),
            "{json}: {err}"
        );
    }
    // A valid file is used: a different mean changes the pixels.
    std::fs::write(
        &prep,
        r#"{"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}"#,
    )
    .unwrap();
    let out_file = dir.path().join("p.safetensors");
    let out = common::saeclip()
        .args([
            "embed",
            "--model",
            s(&model),
            "--image",
            s(&img),
            "--out",
            s(&out_file),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pixels = read_safetensors(&out_file)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "pixel_values")
        .unwrap()
        .1;
    let min = pixels.min().double_value(&[]);
    assert!(min >= 0.0 && pixels.max().double_value(&[]) <= 1.0, "{min}");
}
