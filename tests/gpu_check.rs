//! scripts/gpu-check.sh runs on CPU too (`--device cpu --quick`), so it cannot rot before
//! a GPU machine runs it.

mod common;

#[test]
fn gpu_check_script_runs_on_cpu() {
    let work = tempfile::tempdir().unwrap();
    let out_file = work.path().join("result.md");
    let out = std::process::Command::new("bash")
        .arg(common::root().join("scripts/gpu-check.sh"))
        .args(["--device", "cpu", "--quick", "--work"])
        .arg(work.path().join("w"))
        .arg("--out")
        .arg(&out_file)
        .env("SAECLIP", env!("CARGO_BIN_EXE_saeclip"))
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&out_file).unwrap();
    // CPU against CPU in f32 must agree exactly; bf16 only approximately.
    let image = report
        .lines()
        .find(|l| l.starts_with("| image_embeds |"))
        .expect(&report);
    let cells: Vec<&str> = image.split('|').map(str::trim).collect();
    assert_eq!(cells[2].parse::<f64>().unwrap(), 0.0, "{image}");
    let bf16_rel: f64 = cells[5].parse().unwrap();
    assert!(bf16_rel > 0.0 && bf16_rel < 0.1, "{image}");
    for what in [
        "extract, layer",
        "train, 64x width, k=500",
        "train, 32x width, k=64",
        "eval-zeroshot, no SAE",
        "eval-zeroshot, with a 32x k=64 SAE",
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line for {what}:\n{report}"));
        let figure = line.rsplit('|').nth(1).unwrap().trim();
        let value: f64 = figure
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"));
        assert!(value > 0.0 && value.is_finite(), "{line}");
    }
}
