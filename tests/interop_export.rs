//! `export --format sparsify|saev`: a saeclip SAE written for the other tool comes back through
//! `import --format auto` with the same codes, reconstruction and hook point, and the tool's
//! own released code (eai-sparsify 1.3.3, saev 0.1.0, pinned in the test environment) loads
//! the export and computes the same codes and reconstruction. Unmappable architectures fail
//! with one line and write nothing.

mod common;

use std::path::{Path, PathBuf};

use saeclip::sae::checkpoint::{self, CheckpointMeta};
use saeclip::sae::model::Sae;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    common::interop_fixtures()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

use common::{run_saeclip as saeclip, succeeds};

/// A checkpoint imported from `case` (flags `args`), with its input scale set to `scale` so
/// that the export has a scale to fold.
fn source(case: &str, args: &[&str], scale: f64, out: &Path) -> (Sae, CheckpointMeta) {
    let imported = out.with_extension("imported.safetensors");
    let path = fixtures().join(case);
    let mut all = vec!["import", s(&path), "--out"];
    all.push(s(&imported));
    all.extend_from_slice(args);
    succeeds(&saeclip(&all));
    let (mut sae, meta) = checkpoint::load_sae(&imported, Device::Cpu).unwrap();
    sae.input_scale = scale;
    checkpoint::save(out, &sae, &meta, None, Kind::Float).unwrap();
    checkpoint::load_sae(out, Device::Cpu).unwrap()
}

fn inputs(d: i64) -> Tensor {
    tch::manual_seed(7);
    Tensor::randn([64, d], (Kind::Float, Device::Cpu)) * 3.0 + 0.5
}

fn same_function(what: &str, a: &Sae, b: &Sae, x: &Tensor) {
    common::close(&format!("{what}: codes"), &a.encode(x), &b.encode(x), 1e-5);
    common::close(
        &format!("{what}: reconstruction"),
        &a.reconstruct(x),
        &b.reconstruct(x),
        1e-5,
    );
    let fired = b.encode(x).gt(0.0).sum(Kind::Int64).int64_value(&[]);
    assert!(
        fired > 0 && fired < b.encode(x).numel() as i64,
        "{what}: {fired} codes fired"
    );
}

/// The tool's own codes and reconstruction of `x` for the export in `dir`.
fn by_the_tool(format: &str, dir: &Path, x: &Tensor, work: &Path) -> (Tensor, Tensor) {
    let input = work.join(format!("{format}-x.safetensors"));
    let output = work.join(format!("{format}-out.safetensors"));
    Tensor::write_safetensors(&[("x", x)], &input).unwrap();
    common::run_python(
        "tests/reference/export_reference.py",
        &[
            "--format",
            format,
            "--dir",
            s(dir),
            "--input",
            s(&input),
            "--output",
            s(&output),
        ],
    );
    let t: std::collections::HashMap<String, Tensor> =
        saeclip::clip::weights::read_safetensors(&output)
            .unwrap()
            .into_iter()
            .collect();
    (t["z"].shallow_clone(), t["x_hat"].shallow_clone())
}

#[test]
fn sparsify_export_comes_back_and_sparsify_computes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = d.join("topk.safetensors");
    let (sae, meta) = source("sparsify", &["--layer", "4", "--tokens", "all"], 0.4, &ckpt);
    let out = d.join("exports/sparsify");
    succeeds(&saeclip(&[
        "export",
        "--format",
        "sparsify",
        "--sae",
        s(&ckpt),
        "--out",
        s(&out),
    ]));
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cfg.json", "sae.safetensors"]);

    // Back through auto detection, hook point included, no flags.
    let back = d.join("back.safetensors");
    succeeds(&saeclip(&["import", s(&out), "--out", s(&back)]));
    let (again, again_meta) = checkpoint::load_sae(&back, Device::Cpu).unwrap();
    assert_eq!(again_meta.training["imported_from"]["format"], "sparsify");
    assert_eq!(again_meta.clip["layer"], meta.clip["layer"]);
    assert_eq!(again_meta.clip["tokens"], "all");
    assert_eq!(again.config.k, sae.config.k);
    let x = inputs(sae.config.d_in);
    same_function("sparsify round trip", &again, &sae, &x);

    // sparsify itself.
    let (z, x_hat) = by_the_tool("sparsify", &out, &x, d);
    common::close("sparsify: codes", &z, &sae.encode(&x), 1e-5);
    common::close(
        "sparsify: reconstruction",
        &x_hat,
        &sae.reconstruct(&x),
        1e-5,
    );

    // A second export into the same folder needs --force, which replaces it.
    let o = saeclip(&[
        "export",
        "--format",
        "sparsify",
        "--sae",
        s(&ckpt),
        "--out",
        s(&out),
    ]);
    common::fails_cleanly(&o, "--force");
    succeeds(&saeclip(&[
        "export",
        "--format",
        "sparsify",
        "--sae",
        s(&ckpt),
        "--out",
        s(&out),
        "--force",
    ]));
}

#[test]
fn saev_export_comes_back_and_saev_computes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ckpt = d.join("relu.safetensors");
    // saev 0.1.0's own checkpoint with its dataset normalisation: an input scale of 1/7.5
    // and a mean folded into b_dec, here scaled further.
    let (sae, meta) = source("saev010", &[], 0.2, &ckpt);
    assert_eq!(meta.clip["tokens"], "cls");
    let out = d.join("saev");
    succeeds(&saeclip(&[
        "export",
        "--format",
        "saev",
        "--sae",
        s(&ckpt),
        "--out",
        s(&out),
    ]));
    assert!(out.join("sae.pt").is_file() && out.join("config.json").is_file());

    let back = d.join("back.safetensors");
    succeeds(&saeclip(&["import", s(&out), "--out", s(&back)]));
    let (again, again_meta) = checkpoint::load_sae(&back, Device::Cpu).unwrap();
    assert_eq!(again_meta.training["imported_from"]["format"], "saev");
    assert_eq!(again_meta.clip["layer"], meta.clip["layer"]);
    assert_eq!(again_meta.clip["tokens"], "cls");
    let x = inputs(sae.config.d_in);
    same_function("saev round trip", &again, &sae, &x);

    // saev 0.1.0 itself (`saev.nn.load`).
    let (z, x_hat) = by_the_tool("saev", &out, &x, d);
    common::close("saev: codes", &z, &sae.encode(&x), 1e-5);
    common::close("saev: reconstruction", &x_hat, &sae.reconstruct(&x), 1e-5);
}

#[test]
fn architectures_that_do_not_map_fail_with_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let relu = d.join("relu.safetensors");
    source("saev010", &[], 1.0, &relu);
    let topk = d.join("topk.safetensors");
    source("sparsify", &["--layer", "4", "--tokens", "all"], 1.0, &topk);
    for (format, ckpt, needle) in [
        ("sparsify", &relu, "only topk"),
        ("saev", &topk, "only relu"),
    ] {
        let out = d.join(format!("{format}-out"));
        let o = saeclip(&[
            "export",
            "--format",
            format,
            "--sae",
            s(ckpt),
            "--out",
            s(&out),
        ]);
        common::fails_cleanly(&o, needle);
        assert!(!out.exists(), "{format}: wrote {}", out.display());
    }
}
