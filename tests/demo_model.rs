//! The shipped demo CLIP (assets/demo-clip, trained by scripts/train_demo_clip.py), as
//! `saeclip demo` writes it out: what saeclip computes on the directory equals what
//! transformers' `CLIPModel.from_pretrained` computes on it.

mod common;

use std::collections::HashMap;

use saeclip::clip::weights::read_safetensors;
use saeclip::clip::{Clip, LoadOptions};
use tch::{Kind, Tensor};

fn max_rel_diff(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    let diff = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    diff / want.abs().max().double_value(&[])
}

#[test]
fn demo_clip_equals_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("model");
    saeclip::clip::demo_model::write_demo_clip(&written).unwrap();
    let out = dir.path().join("ref");
    common::run_python(
        "tests/reference/demo_model_reference.py",
        &[
            "--model",
            written.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let r: HashMap<String, Tensor> = read_safetensors(&out.join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let clip = Clip::load(&written, &LoadOptions::default()).unwrap();
    let Clip::Native { model, .. } = &clip else {
        panic!("expected a native model")
    };
    let hidden = model.vision.hidden_states(&r["pixel_values"]).unwrap();
    for (i, h) in hidden.iter().enumerate() {
        let d = max_rel_diff(h, &r[&format!("hidden_states.{i}")]);
        assert!(d < 1e-5, "vision hidden_states[{i}]: relative diff {d:e}");
    }
    let image = clip.image_embeds(&r["pixel_values"]).unwrap();
    let d = max_rel_diff(&image, &r["image_embeds"]);
    assert!(d < 1e-5, "image embeds: relative diff {d:e}");
    let text = clip.text_embeds(&r["input_ids"]).unwrap();
    let d = max_rel_diff(&text, &r["text_embeds"]);
    assert!(d < 1e-5, "text embeds: relative diff {d:e}");
}
