//! SigLIP's tokenizer (`saeclip::clip::siglip::tokenizer`, the `tokenizers` crate on the model
//! directory's tokenizer.json) equals transformers' AutoTokenizer with SigLIP's padding, on
//! tokenizers trained by tests/reference/siglip_tokenizer_reference.py (no download).

mod common;

use saeclip::clip::siglip::tokenizer::SiglipTokenizer;
use saeclip::clip::siglip::SiglipFamily;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    context: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    class: String,
    texts: Vec<String>,
    ids: Vec<Vec<i64>>,
}

#[test]
fn trained_tokenizers_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    common::run_python(
        "tests/reference/siglip_tokenizer_reference.py",
        &["--out", out],
    );
    let r: Reference =
        serde_json::from_slice(&std::fs::read(dir.path().join("reference.json")).unwrap()).unwrap();
    assert_eq!(r.cases.len(), 3);
    for case in &r.cases {
        let family = if case.name.contains("siglip2") {
            SiglipFamily::Siglip2
        } else {
            SiglipFamily::Siglip
        };
        let tok = SiglipTokenizer::from_dir(&dir.path().join(&case.name), family, r.context, 1)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        let mut bad = Vec::new();
        for (text, want) in case.texts.iter().zip(&case.ids) {
            let got = tok.encode_padded(text).unwrap();
            if &got != want {
                bad.push(format!("{text:?}: expected {want:?} got {got:?}"));
            }
        }
        assert!(
            bad.is_empty(),
            "{} ({}): {} of {} texts differ:\n{}",
            case.name,
            case.class,
            bad.len(),
            case.texts.len(),
            bad.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
        );
        // the batch tensor holds the same rows
        let batch = tok.tokenize(&case.texts).unwrap();
        assert_eq!(batch.size(), [case.texts.len() as i64, r.context as i64]);
        let first: Vec<i64> = Vec::try_from(batch.get(3)).unwrap();
        assert_eq!(first, case.ids[3]);
        eprintln!(
            "{} ({}): {} texts equal",
            case.name,
            case.class,
            case.texts.len()
        );
    }
}

#[test]
fn missing_or_broken_tokenizer_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = SiglipTokenizer::from_dir(dir.path(), SiglipFamily::Siglip, 64, 1).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("tokenizer.json") && msg.contains("missing") && !msg.contains('\n'),
        "{msg}"
    );
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let err = SiglipTokenizer::from_dir(dir.path(), SiglipFamily::Siglip, 64, 1).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("not a tokenizers file"), "{msg}");
}
