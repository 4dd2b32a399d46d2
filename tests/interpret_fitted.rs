//! The planted red feature labelled by a CLIP whose text tower means something: a small
//! CLIP is fitted here to the procedural images' colours and shapes
//! (`saeclip::clip::fit`), then `interpret` must give the latent planted on the red images'
//! direction only red top images and the label "red", by both label methods.
//!
//! A test binary of its own: tch's random generator is global to the process, so another
//! test seeding or drawing from it in parallel would change the fit.

mod common;

use std::path::{Path, PathBuf};

use common::planted::*;
use saeclip::clip::{Clip, LoadOptions, Tokens};
use saeclip::data::{ProceduralFactors, Split};
use saeclip::interpret::interpret;
use saeclip::sae::checkpoint::save;
use tch::Kind;

/// Factor words of the procedural images, the vocabulary of the fitted model's labels
/// (with distractors it never saw).
const COLOURS: [&str; 8] = [
    "red", "green", "blue", "yellow", "purple", "orange", "white", "black",
];

const SHAPES: [&str; 6] = ["circle", "square", "triangle", "star", "ring", "cross"];

/// A small CLIP (64 px, width 64, 2 blocks per tower) fitted to the colours and shapes of
/// 960 procedural training images with prompts "a photo of a {colour}" and "a photo of a
/// {shape}", saved as a Hugging Face directory.
fn fitted_model(dir: &Path) -> PathBuf {
    use saeclip::clip::fit::{fit_zero_shot, FitOptions, Task};
    use saeclip::clip::{ClipConfig, TextConfig, VisionConfig};
    let config = ClipConfig {
        vision: VisionConfig {
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            image_size: 64,
            patch_size: 16,
            ..VisionConfig::vit_base_patch32()
        },
        text: TextConfig {
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            ..TextConfig::vit_base_patch32()
        },
        projection_dim: 32,
    };
    let ds = procedural(Split::Train);
    let images: Vec<usize> = (0..960).collect();
    let pixels = pixels_sized(ds.as_ref(), &images, 64);
    let factors: Vec<ProceduralFactors> = images
        .iter()
        .map(|&i| ProceduralFactors::from_source(&ds.item(i).source).unwrap())
        .collect();
    let task = |words: &[&str], of: &dyn Fn(&ProceduralFactors) -> String| Task {
        prompts: words.iter().map(|w| format!("a photo of a {w}")).collect(),
        labels: factors
            .iter()
            .map(|f| words.iter().position(|w| *w == of(f)).unwrap() as i64)
            .collect(),
    };
    let tasks = [
        task(&COLOURS, &|f| f.colour.name().to_string()),
        task(&SHAPES, &|f| f.shape.name().to_string()),
    ];
    let start = std::time::Instant::now();
    let fitted = fit_zero_shot(&config, &pixels, &tasks, &FitOptions::default()).unwrap();
    let first = fitted.losses[..10].iter().sum::<f64>() / 10.0;
    let last = fitted.losses[fitted.losses.len() - 10..]
        .iter()
        .sum::<f64>()
        / 10.0;
    println!(
        "fitted a {}-step CLIP in {:.1}s: loss {first:.3} -> {last:.3}",
        fitted.losses.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        last < 0.5 * first,
        "the fit did not learn: {first} -> {last}"
    );
    let out = dir.join("fitted-clip");
    fitted.clip.save_hf(&out).unwrap();
    out
}

/// The planted-feature check in full: on a CLIP whose text tower means something,
/// the latent planted on the red images' direction gets only red top images and "red" among
/// its top labels, by both label methods (decoder row on the last block; mean embedding
/// of the top images elsewhere).
#[test]
fn planted_red_feature_is_labelled_red_by_a_fitted_clip() {
    let dir = tempfile::tempdir().unwrap();
    let model = fitted_model(dir.path());
    let clip = Clip::load(&model, &LoadOptions::default()).unwrap();
    let vocab = dir.path().join("vocab.txt");
    let words: Vec<&str> = COLOURS
        .iter()
        .chain(&SHAPES)
        .chain(&["striped", "dotted", "checkered", "sky", "sand", "grass"])
        .chain(&["dog", "pizza", "airplane", "tree"])
        .copied()
        .collect();
    std::fs::write(&vocab, words.join("\n")).unwrap();
    let sample = the_sample();
    let ds = procedural(Split::Train);
    for layer in [1, 0] {
        let sae = planted_sae_on(&clip, layer, &sample);
        let path = dir.path().join(format!("planted-{layer}.safetensors"));
        save(
            &path,
            &sae,
            &meta_for(&model, layer, Tokens::Cls),
            None,
            Kind::Float,
        )
        .unwrap();
        let out = dir.path().join(format!("out-{layer}"));
        let s = interpret(&sample_options(&model, &path, &out, 12, &vocab)).unwrap();
        let red = s.features.iter().find(|f| f.latent == 0).unwrap();
        assert_eq!(red.top.len(), 12);
        for t in &red.top {
            assert!(
                is_red(ds.as_ref(), t.image_index),
                "layer {layer}: {} is not red",
                t.source
            );
        }
        let labels: Vec<&str> = red.labels.iter().map(|l| l.phrase.as_str()).collect();
        println!("layer {layer}: labels of the red feature {:?}", red.labels);
        assert!(
            labels.contains(&"red"),
            "layer {layer}: \"red\" is not among the top labels {labels:?}"
        );
    }
}
