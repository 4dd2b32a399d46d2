//! `saeclip import` of saev, sparsify, dictionary_learning and ViT-Prisma SAEs against
//! files those tools wrote (tests/reference/interop_reference.py: the released packages
//! where they install, plain Python from the layout elsewhere): after import, saeclip's
//! codes and reconstructions equal the original's on the same inputs, and the header
//! records the hook point; the restricted torch.save reader reads what torch.save writes
//! and refuses anything that is not a tensor or a plain container; bad input fails with
//! one line and writes nothing.

mod common;

use std::path::{Path, PathBuf};

use saeclip::sae::checkpoint::{self, CheckpointMeta};
use saeclip::sae::interop::torch_pickle::{self, PickleValue};
use saeclip::sae::{Architecture, Sae};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-5;

fn fixtures() -> PathBuf {
    common::interop_fixtures()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

use common::{run_saeclip as saeclip, succeeds};

/// Import `path` (extra flags `args`) into `out`; the checkpoint and its header.
fn import(path: &Path, out: &Path, args: &[&str]) -> (Sae, CheckpointMeta) {
    let mut all = vec!["import", s(path), "--out", s(out)];
    all.extend_from_slice(args);
    let o = saeclip(&all);
    succeeds(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), s(out));
    checkpoint::load_sae(out, Device::Cpu).unwrap()
}

/// saeclip's codes and reconstruction equal the original's (`case/expected.safetensors`).
fn computes_like_original(case: &Path, sae: &Sae) {
    let t: std::collections::HashMap<String, Tensor> =
        saeclip::clip::weights::read_safetensors(&case.join("expected.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let what = case.file_name().unwrap().to_str().unwrap();
    let z = sae.encode(&t["x"]);
    common::close(&format!("{what}: codes"), &z, &t["z"], TOL);
    common::close(
        &format!("{what}: reconstruction"),
        &sae.reconstruct(&t["x"]),
        &t["x_hat"],
        TOL,
    );
    // The comparison means something: codes are sparse but not empty.
    let fired = t["z"].gt(0.0).sum(Kind::Int64).int64_value(&[]);
    assert!(
        fired > 0 && fired < t["z"].numel() as i64,
        "{what}: {fired} codes fired"
    );
}

fn clip(meta: &CheckpointMeta, key: &str) -> Value {
    meta.clip.get(key).cloned().unwrap_or(Value::Null)
}

fn format_of(meta: &CheckpointMeta) -> String {
    meta.training["imported_from"]["format"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Fails with one line on stderr containing every `needle`, and writes no checkpoint.
fn fails_with(args: &[&str], out: &Path, needles: &[&str]) -> String {
    let o = saeclip(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{args:?} succeeded");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in {err}");
    }
    assert!(!out.exists(), "{args:?} wrote {}", out.display());
    err
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn saev_checkpoints_import_and_compute_like_saev() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // 0.1.0 beside its config.json: the normalisation files and the hook point come from it.
    let (sae, meta) = import(&fx.join("saev010"), &d.join("a.safetensors"), &[]);
    assert_eq!(format_of(&meta), "saev");
    assert_eq!(sae.config.architecture, Architecture::Relu);
    assert_eq!(
        (clip(&meta, "layer"), clip(&meta, "tokens")),
        (7.into(), "cls".into())
    );
    assert!(
        (sae.input_scale - 1.0 / 7.5).abs() < 1e-12,
        "{}",
        sae.input_scale
    );
    computes_like_original(&fx.join("saev010"), &sae);

    // A bare 0.1.0 file: the normalisation and the hook point must be given.
    let bare = fx.join("saev010_bare/sae.pt");
    let out = d.join("b.safetensors");
    fails_with(
        &["import", s(&bare), "--out", s(&out)],
        &out,
        &["sae.pt", "data.scale_mean", "--saev-scale-mean"],
    );
    let flags = ["--saev-scale-mean", "none", "--saev-scale-norm", "none"];
    let mut args = vec!["import", s(&bare), "--out", s(&out)];
    args.extend(flags);
    fails_with(&args, &out, &["data.layer", "--layer"]);
    args.extend(["--layer", "3"]);
    fails_with(&args, &out, &["data.patches", "--tokens"]);
    let mut extra = flags.to_vec();
    extra.extend(["--layer", "3", "--tokens", "patches"]);
    let (sae, meta) = import(&bare, &out, &extra);
    assert_eq!(
        (clip(&meta, "layer"), clip(&meta, "tokens")),
        (3.into(), "patches".into())
    );
    computes_like_original(&fx.join("saev010_bare"), &sae);

    // The current repository's layout: no b_dec in the encoder, TopK and BatchTopK.
    for (case, arch) in [
        ("saev_topk", Architecture::TopK),
        ("saev_batchtopk", Architecture::BatchTopK),
    ] {
        let (sae, meta) = import(&fx.join(case), &d.join(format!("{case}.safetensors")), &[]);
        assert_eq!(sae.config.architecture, arch, "{case}");
        assert_eq!(sae.config.k, 8);
        assert_eq!(
            (clip(&meta, "layer"), clip(&meta, "tokens")),
            (5.into(), "patches".into())
        );
        assert_eq!(meta.training["imported_from"]["saev_schema"], 5);
        if arch == Architecture::BatchTopK {
            assert!((sae.threshold.unwrap() - 0.6).abs() < 1e-6);
        }
        computes_like_original(&fx.join(case), &sae);
    }
    // A --layer that disagrees with the run's config is an error.
    let out = d.join("c.safetensors");
    fails_with(
        &[
            "import",
            s(&fx.join("saev_topk")),
            "--out",
            s(&out),
            "--layer",
            "4",
        ],
        &out,
        &["train_data.layer = 5", "--layer 4"],
    );
}

#[test]
fn sparsify_folders_import_and_compute_like_sparsify() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One folder: sparsify records neither the layer nor the tokens.
    let single = fx.join("sparsify");
    let out = d.join("s.safetensors");
    fails_with(
        &["import", s(&single), "--out", s(&out)],
        &out,
        &["hook point", "--layer"],
    );
    fails_with(
        &["import", s(&single), "--out", s(&out), "--layer", "4"],
        &out,
        &["cfg.json", "--tokens"],
    );
    let (sae, meta) = import(&single, &out, &["--layer", "4", "--tokens", "all"]);
    assert_eq!(format_of(&meta), "sparsify");
    assert_eq!(
        (sae.config.architecture, sae.config.k),
        (Architecture::TopK, 8)
    );
    assert_eq!(
        (clip(&meta, "layer"), clip(&meta, "tokens")),
        (4.into(), "all".into())
    );
    computes_like_original(&single, &sae);

    // A run with one folder per hook point: --hook picks one; its name gives the layer.
    let run = fx.join("sparsify_run");
    let out = d.join("r.safetensors");
    fails_with(
        &["import", s(&run), "--out", s(&out), "--tokens", "patches"],
        &out,
        &[
            "--hook",
            "vision_model.encoder.layers.3",
            "vision_model.encoder.layers.10",
        ],
    );
    fails_with(
        &[
            "import",
            s(&run),
            "--out",
            s(&out),
            "--hook",
            "layers.4",
            "--tokens",
            "patches",
        ],
        &out,
        &["layers.4", "vision_model.encoder.layers.3"],
    );
    let hook = "vision_model.encoder.layers.10";
    let (sae, meta) = import(&run, &out, &["--hook", hook, "--tokens", "patches"]);
    assert_eq!(clip(&meta, "layer"), 10);
    assert_eq!(clip(&meta, "hook_name"), hook);
    assert_eq!(clip(&meta, "model"), "openai/clip-vit-base-patch32");
    computes_like_original(&run.join(hook), &sae);
    // The sub-folder itself is the same SAE.
    let (sae, meta) = import(
        &run.join(hook),
        &d.join("r2.safetensors"),
        &["--tokens", "patches"],
    );
    assert_eq!(clip(&meta, "layer"), 10);
    computes_like_original(&run.join(hook), &sae);
}

#[test]
fn dictionary_learning_classes_import_and_compute_like_dictionary_learning() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    for (case, arch) in [
        ("dl_standard", Architecture::Relu),
        ("dl_topk", Architecture::TopK),
        ("dl_batchtopk", Architecture::BatchTopK),
        ("dl_matryoshka", Architecture::Matryoshka),
        ("dl_jumprelu", Architecture::JumpRelu),
    ] {
        let out = dir.path().join(format!("{case}.safetensors"));
        let (sae, meta) = import(&fx.join(case), &out, &["--tokens", "cls"]);
        assert_eq!(format_of(&meta), "dictionary-learning", "{case}");
        assert_eq!(sae.config.architecture, arch, "{case}");
        assert_eq!(clip(&meta, "layer"), 9, "{case}");
        assert_eq!(clip(&meta, "hook_name"), "vision_model.encoder.layers.9");
        if arch == Architecture::Matryoshka {
            assert_eq!(sae.prefix_widths(), vec![16, 48, 96]);
        }
        computes_like_original(&fx.join(case), &sae);
        // The round trip through the checkpoint file is exact.
        let (again, _) = checkpoint::load_sae(&out, Device::Cpu).unwrap();
        assert!(again.w_enc.equal(&sae.w_enc));
    }
    // The weights file itself names the folder.
    let (sae, _) = import(
        &fx.join("dl_topk/ae.pt"),
        &dir.path().join("file.safetensors"),
        &["--tokens", "cls"],
    );
    computes_like_original(&fx.join("dl_topk"), &sae);
}

#[test]
fn prisma_folders_import_and_compute_like_prisma() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    for (case, arch, tokens) in [
        ("prisma_topk", Architecture::TopK, "cls"),
        ("prisma_relu", Architecture::Relu, "all"),
    ] {
        let (sae, meta) = import(
            &fx.join(case),
            &dir.path().join(format!("{case}.safetensors")),
            &[],
        );
        assert_eq!(format_of(&meta), "prisma");
        assert_eq!(sae.config.architecture, arch);
        assert_eq!(
            (clip(&meta, "layer"), clip(&meta, "tokens")),
            (9.into(), tokens.into())
        );
        assert_eq!(clip(&meta, "hook_name"), "blocks.9.hook_resid_post");
        computes_like_original(&fx.join(case), &sae);
    }
}

#[test]
fn an_exported_import_comes_back_through_auto_detection() {
    // auto → saelens: a saeclip export of an imported SAE imports again, unchanged.
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (sae, meta) = import(
        &fx.join("dl_topk"),
        &d.join("a.safetensors"),
        &["--tokens", "patches"],
    );
    succeeds(&saeclip(&[
        "export",
        "--format",
        "saelens",
        "--sae",
        s(&d.join("a.safetensors")),
        "--out",
        s(&d.join("lens")),
    ]));
    let (back, back_meta) = import(&d.join("lens"), &d.join("b.safetensors"), &[]);
    assert_eq!(back_meta.clip, meta.clip);
    let x = Tensor::randn([32, 24], (Kind::Float, Device::Cpu));
    common::close(
        "round trip",
        &back.reconstruct(&x),
        &sae.reconstruct(&x),
        1e-5,
    );
}

#[test]
fn torch_save_files_read_without_executing_anything() {
    let fx = fixtures().join("pickles");
    let v = torch_pickle::load(&fx.join("plain.pt")).unwrap();
    let want: Vec<(String, Tensor)> =
        saeclip::clip::weights::read_safetensors(&fx.join("plain.safetensors")).unwrap();
    let got = torch_pickle::tensors(&v).unwrap();
    assert_eq!(got.len(), want.len());
    for (name, w) in &want {
        let (_, g) = got
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(g.kind(), w.kind(), "{name}: dtype");
        assert_eq!(g.size(), w.size(), "{name}: shape");
        assert!(g.equal(w), "{name}: values");
    }
    let plain: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("plain.json")).unwrap()).unwrap();
    assert_eq!(to_json(v.get("int").unwrap()), plain["int"]);
    for key in [
        "int", "big", "neg", "float", "str", "none", "flag", "list", "tuple", "nested",
    ] {
        assert_eq!(to_json(v.get(key).unwrap()), plain[key], "{key}");
    }
    assert!(matches!(v.get("tuple"), Some(PickleValue::Tuple(_))));

    let p = torch_pickle::load(&fx.join("parameter.pt")).unwrap();
    let PickleValue::Tensor(t) = p else {
        panic!("a parameter is a tensor, got {p:?}")
    };
    assert!(t.equal(&(Tensor::ones([2, 2], (Kind::Float, Device::Cpu)) * 3)));

    let err = torch_pickle::load(&fx.join("module.pt"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("module.pt") && err.contains("torch.nn.modules.linear.Linear"),
        "{err}"
    );
    let err = torch_pickle::load(&fx.join("payload.pt"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("payload.pt") && err.contains("system"),
        "{err}"
    );
    assert!(!fx.join("PWNED").exists(), "the payload ran");
}

/// A pickled value as JSON (tuples as lists), for comparing with what Python wrote.
fn to_json(v: &PickleValue) -> Value {
    match v {
        PickleValue::None => Value::Null,
        PickleValue::Bool(b) => (*b).into(),
        PickleValue::Int(i) => (*i).into(),
        PickleValue::Float(f) => (*f).into(),
        PickleValue::Str(s) => s.clone().into(),
        PickleValue::List(l) | PickleValue::Tuple(l) => l.iter().map(to_json).collect(),
        PickleValue::Dict(d) => d
            .iter()
            .map(|(k, x)| match k {
                PickleValue::Str(k) => (k.clone(), to_json(x)),
                other => panic!("key {other:?}"),
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        PickleValue::Tensor(_) => panic!("a tensor"),
    }
}

#[test]
fn bad_input_fails_with_one_line_and_writes_nothing() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.safetensors");
    let out_s = s(&out).to_string();
    let run = |path: &Path, extra: &[&str], needles: &[&str]| {
        let mut args = vec!["import", s(path), "--out", &out_s];
        args.extend_from_slice(extra);
        fails_with(&args, &out, needles)
    };

    // A folder in no format.
    let nothing = d.join("nothing");
    std::fs::create_dir(&nothing).unwrap();
    std::fs::write(nothing.join("README.txt"), "hello").unwrap();
    run(&nothing, &[], &["nothing", "none of the formats"]);
    // A file in no format.
    run(
        &nothing.join("README.txt"),
        &[],
        &["README.txt", "none of the formats"],
    );

    // A missing tensor.
    let sp = d.join("sparsify");
    copy_dir(&fx.join("sparsify"), &sp);
    let weights = sp.join("sae.safetensors");
    let kept: Vec<(String, Tensor)> = saeclip::clip::weights::read_safetensors(&weights)
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != "W_dec")
        .collect();
    let refs: Vec<(&str, &Tensor)> = kept.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, &weights).unwrap();
    run(
        &sp,
        &["--layer", "2", "--tokens", "cls"],
        &["sae.safetensors", "W_dec", "missing"],
    );

    // A config whose width disagrees with the weights.
    let dl = d.join("dl");
    copy_dir(&fx.join("dl_standard"), &dl);
    edit_json(&dl.join("config.json"), |v| {
        v["trainer"]["dict_size"] = 95.into()
    });
    run(
        &dl,
        &["--tokens", "cls"],
        &["ae.pt", "encoder.weight", "dict_size = 95"],
    );

    // A pickle that would run code: refused, never executed.
    let evil = d.join("evil");
    copy_dir(&fx.join("dl_standard"), &evil);
    std::fs::copy(fx.join("pickles/payload.pt"), evil.join("ae.pt")).unwrap();
    run(
        &evil,
        &["--tokens", "cls"],
        &["ae.pt", "system", "refusing"],
    );
    assert!(!fx.join("pickles/PWNED").exists(), "the payload ran");
    // A pickled class (a whole module) is refused too.
    std::fs::copy(fx.join("pickles/module.pt"), evil.join("ae.pt")).unwrap();
    run(
        &evil,
        &["--tokens", "cls"],
        &["ae.pt", "torch.nn.modules.linear.Linear"],
    );

    // A hook point outside the model.
    let pr = d.join("prisma");
    copy_dir(&fx.join("prisma_topk"), &pr);
    edit_json(&pr.join("config.json"), |v| {
        v["hook_point_layer"] = 12.into()
    });
    run(
        &pr,
        &[],
        &["config.json", "hook_point_layer = 12", "n_layers = 12"],
    );
    // A hook point that is not the residual stream.
    copy_dir(&fx.join("prisma_topk"), &pr);
    edit_json(&pr.join("config.json"), |v| {
        v["layer_subtype"] = "hook_mlp_out".into()
    });
    run(&pr, &[], &["config.json", "layer_subtype", "hook_mlp_out"]);
    // A per-input normalisation that no affine map reproduces.
    copy_dir(&fx.join("prisma_topk"), &pr);
    edit_json(&pr.join("config.json"), |v| {
        v["normalize_activations"] = "layer_norm".into()
    });
    run(
        &pr,
        &[],
        &["config.json", "normalize_activations", "layer_norm"],
    );

    // An existing --out is kept unless --force.
    std::fs::write(&out, "keep").unwrap();
    let o = saeclip(&["import", s(&fx.join("prisma_topk")), "--out", &out_s]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep");
}

#[test]
fn evaluate_gives_the_original_reconstruction_evr() {
    // evr = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̂ from the original package, against what
    // `saeclip evaluate` reports for the imported checkpoint on a cache of the same rows.
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (case, path, args) in [
        ("saev010", fx.join("saev010"), vec![]),
        (
            "sparsify",
            fx.join("sparsify_run"),
            vec!["--hook", "vision_model.encoder.layers.3", "--tokens", "cls"],
        ),
        (
            "dl_matryoshka",
            fx.join("dl_matryoshka"),
            vec!["--tokens", "cls"],
        ),
        ("prisma_topk", fx.join("prisma_topk"), vec![]),
    ] {
        let ckpt = d.join(format!("{case}.safetensors"));
        let (_, meta) = import(&path, &ckpt, &args);
        let case_dir = if case == "sparsify" {
            path.join("vision_model.encoder.layers.3")
        } else {
            path.clone()
        };
        let t: std::collections::HashMap<String, Tensor> =
            saeclip::clip::weights::read_safetensors(&case_dir.join("expected.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        let (x, x_hat) = (
            t["x"].to_kind(Kind::Double),
            t["x_hat"].to_kind(Kind::Double),
        );
        let want = 1.0
            - (&x - &x_hat).square().sum(Kind::Double).double_value(&[])
                / (&x - x.mean_dim(0, true, Kind::Double))
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[]);
        let layer = meta.clip["layer"].as_u64().unwrap() as usize;
        let tokens: saeclip::clip::Tokens =
            serde_json::from_value(meta.clip["tokens"].clone()).unwrap();
        let cache = common::write_row_cache(
            &d.join(format!("{case}-cache")),
            &t["x"],
            (layer, tokens),
            ("reference", &"ab".repeat(32)),
            |i| format!("r{i}"),
        );
        let json = d.join(format!("{case}.json"));
        succeeds(&saeclip(&[
            "--device",
            "cpu",
            "evaluate",
            "--sae",
            s(&ckpt),
            "--cache",
            s(&cache),
            "--json",
            s(&json),
        ]));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let got = v["reconstruction"]["evr"]
            .as_f64()
            .unwrap_or_else(|| panic!("{case}: {v}"));
        assert!(
            (got - want).abs() <= 1e-5,
            "{case}: evaluate's evr {got}, the original's {want}"
        );
        // Random SAEs reconstruct badly; the figure only has to be the original's.
        assert!(want.is_finite() && want < 1.0, "{case}: evr {want}");
    }
}
