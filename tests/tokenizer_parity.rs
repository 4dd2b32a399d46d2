//! Parity of `saeclip::clip::tokenizer` with open_clip's `SimpleTokenizer` (the Python
//! reference oracle in tests/reference/tokenizer_reference.py), and `saeclip tokenize`.

mod common;

use saeclip::clip::tokenizer::{Tokenizer, CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN};
use serde::Deserialize;

/// The file written by tests/reference/tokenizer_reference.py.
#[derive(Deserialize)]
struct Reference {
    open_clip: String,
    ftfy: String,
    context_length: usize,
    cases: Vec<Case>,
    decode: Vec<DecodeCase>,
}

/// One string and what open_clip makes of it.
#[derive(Deserialize)]
struct Case {
    text: String,
    /// `SimpleTokenizer.encode`: no start/end, not truncated.
    encode: Vec<i64>,
    /// `open_clip.tokenize(text)[0]` without padding.
    tokens: Vec<i64>,
    /// `SimpleTokenizer.decode(tokens)`.
    decoded: String,
}

/// `SimpleTokenizer.decode(ids)` for a fixed id run.
#[derive(Deserialize)]
struct DecodeCase {
    ids: Vec<i64>,
    text: String,
}

/// Most mismatches listed in a failure message.
const SHOWN: usize = 15;

fn reference() -> Reference {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("tokenizer_reference.json");
    let path_str = path.to_str().expect("UTF-8 temporary path");
    common::run_python(
        "tests/reference/tokenizer_reference.py",
        &["--out", path_str],
    );
    let bytes = std::fs::read(&path).expect("the reference script wrote no file");
    serde_json::from_slice(&bytes).expect("the reference file is not the expected JSON")
}

/// At most `max` characters of `text`, escaped, with a note when cut.
fn excerpt(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(max).collect();
        format!("{head:?}… ({count} chars)")
    }
}

/// Where two id lists first differ, and a window of both around it.
fn id_diff(expected: &[i64], got: &[i64]) -> String {
    let first = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    let lo = first.saturating_sub(3);
    let window = |ids: &[i64]| format!("{:?}", &ids[lo.min(ids.len())..(first + 6).min(ids.len())]);
    format!(
        "first difference at index {first} (lengths {} vs {}): expected …{} got …{}",
        expected.len(),
        got.len(),
        window(expected),
        window(got)
    )
}

fn fail_with(kind: &str, total: usize, failures: &[String]) {
    if failures.is_empty() {
        return;
    }
    let shown: Vec<&str> = failures.iter().take(SHOWN).map(String::as_str).collect();
    panic!(
        "{} of {total} {kind} differ from open_clip; the first {}:\n{}",
        failures.len(),
        shown.len(),
        shown.join("\n")
    );
}

#[test]
fn tokenizer_matches_open_clip() {
    let reference = reference();
    eprintln!(
        "reference: open_clip {}, ftfy {}, {} strings, {} decode runs",
        reference.open_clip,
        reference.ftfy,
        reference.cases.len(),
        reference.decode.len()
    );
    assert_eq!(reference.context_length, CONTEXT_LENGTH);
    assert!(
        reference.cases.len() >= 2000,
        "only {} reference strings (need at least 2000)",
        reference.cases.len()
    );

    let tokenizer = Tokenizer::new().expect("embedded vocabulary");
    let mut failures = Vec::new();
    for (i, case) in reference.cases.iter().enumerate() {
        let encoded = tokenizer.encode(&case.text);
        let tokens = tokenizer.tokenize(&case.text);
        let text = excerpt(&case.text, 120);
        if tokens != case.tokens {
            failures.push(format!(
                "#{i} {text}: tokenize: {}",
                id_diff(&case.tokens, &tokens)
            ));
        } else if encoded != case.encode {
            failures.push(format!(
                "#{i} {text}: encode: {}",
                id_diff(&case.encode, &encoded)
            ));
        } else {
            let decoded = tokenizer.decode(&tokens);
            if decoded != case.decoded {
                failures.push(format!(
                    "#{i} {text}: decode: expected {} got {}",
                    excerpt(&case.decoded, 200),
                    excerpt(&decoded, 200)
                ));
            }
        }
    }
    fail_with("strings", reference.cases.len(), &failures);

    let failures: Vec<String> = reference
        .decode
        .iter()
        .filter_map(|case| {
            let got = tokenizer.decode(&case.ids);
            (got != case.text).then(|| {
                format!(
                    "ids {}: expected {} got {}",
                    excerpt(&format!("{:?}", case.ids), 60),
                    excerpt(&case.text, 100),
                    excerpt(&got, 100)
                )
            })
        })
        .collect();
    fail_with("decode runs", reference.decode.len(), &failures);
}

#[test]
fn cli_prints_ids_one_line_per_text() {
    let out = common::saeclip()
        .args(["tokenize", "a photo of a cat", "a dog"])
        .output()
        .expect("run saeclip");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "saeclip tokenize failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let mut lines = stdout.lines();
    // Checked against open_clip 3.3.0: open_clip.tokenize("a photo of a cat").
    assert_eq!(lines.next(), Some("49406 320 1125 539 320 2368 49407"));
    let tokenizer = Tokenizer::new().expect("embedded vocabulary");
    let dog: Vec<String> = tokenizer
        .tokenize("a dog")
        .iter()
        .map(i64::to_string)
        .collect();
    assert_eq!(lines.next(), Some(dog.join(" ").as_str()));
    assert_eq!(lines.next(), None);
}

#[test]
fn cli_json_is_an_array_of_arrays() {
    let long = "cat ".repeat(100);
    let out = common::saeclip()
        .args(["tokenize", "--json", "a photo of a cat", &long])
        .output()
        .expect("run saeclip");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "saeclip tokenize --json failed: {stderr}"
    );
    let parsed: Vec<Vec<i64>> =
        serde_json::from_slice(&out.stdout).expect("--json output is not an array of arrays");
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0], [49406, 320, 1125, 539, 320, 2368, 49407]);
    assert_eq!(parsed[1].len(), CONTEXT_LENGTH);
    assert_eq!(parsed[1][0], SOT_TOKEN);
    assert_eq!(parsed[1][CONTEXT_LENGTH - 1], EOT_TOKEN);
}

#[test]
fn cli_rejects_an_empty_text_in_one_line() {
    for (args, position) in [
        (vec!["tokenize", "a cat", ""], "text 2"),
        (vec!["tokenize", "  \t "], "text 1"),
        (vec!["tokenize", "--json", "a", "b", "\u{3000}"], "text 3"),
    ] {
        let out = common::saeclip().args(&args).output().expect("run saeclip");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: stderr {stderr:?}"
        );
        assert!(stderr.contains(position), "{args:?}: stderr {stderr:?}");
        assert!(!stderr.contains("panicked"), "{args:?}: stderr {stderr:?}");
    }
}

#[test]
fn cli_takes_texts_that_start_with_a_dash() {
    let tokenizer = Tokenizer::new().expect("embedded vocabulary");
    let ids = |text: &str| tokenizer.tokenize(text);
    let run = |args: &[&str]| {
        let out = common::saeclip().args(args).output().expect("run saeclip");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} failed: {stderr}");
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };
    let line: Vec<String> = ids("-hello").iter().map(i64::to_string).collect();
    assert_eq!(run(&["tokenize", "-hello"]), line.join(" ") + "\n");
    let parsed: Vec<Vec<i64>> =
        serde_json::from_str(&run(&["tokenize", "--json", "-x", "--y"])).unwrap();
    assert_eq!(parsed, [ids("-x"), ids("--y")]);
    let help = run(&["tokenize", "--help"]);
    assert!(help.contains("Usage: saeclip tokenize"), "{help}");
}
