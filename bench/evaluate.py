"""Benchmark `saeclip evaluate` on CPU: images/s and peak memory, 500 vs 2,000 images.

A full-size ViT-B/32 with random weights (`saeclip dev random-model --preset vit-b-32`,
shared with bench-interpret under target/bench/interpret-vit-b-32/) and a random top-k SAE
on the CLS token of block 10, 64x = 49,152 latents, k = 32, on the procedural dataset's
train split (stratified samples of its 4,800 images): every section runs
(reconstruction, probing, zero-shot with the three splices, labels, factors). A 50-image
warm-up caches the vocabulary's text embeddings. `/usr/bin/time -v` gives the peak
resident set size; memory must not grow with the sample beyond the sparse score store
(images × k entries of 8 bytes: 0.5 MiB at 2,000 images): the verdict compares the two
peaks (allowance 32 MiB of allocator noise). `--threads` is passed through (default 1, for
a loaded machine). Writes the section between `<!-- evaluate -->` markers of
bench/RESULTS.md.

Run through `make bench-eval-sae` (it builds the release binary first).
"""

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/saeclip"
FULL = ROOT / "target/bench/interpret-vit-b-32"
SIZES = [500, 2000]
NOISE_MIB = 32
D_IN, D_SAE, K, LAYER = 768, 64 * 768, 32, 10


def full_model() -> Path:
    if not (FULL / "model.safetensors").exists():
        subprocess.run([str(BIN), "-q", "dev", "random-model", "--preset", "vit-b-32",
                        "--seed", "0", "--out", str(FULL)], check=True)
    return FULL


def write_sae(path: Path, hf: Path) -> None:
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(D_SAE, D_IN, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    tensors = {"W_enc": w_dec.t().contiguous(), "b_enc": torch.zeros(D_SAE), "W_dec": w_dec,
               "b_dec": torch.zeros(D_IN)}
    sha = hashlib.sha256((hf / "model.safetensors").read_bytes()).hexdigest()
    header = {"version": 1, "architecture": "topk", "k": K, "d_in": D_IN, "d_sae": D_SAE,
              "input_scale": 1.0, "threshold": None, "saeclip_version": "bench",
              "clip": {"model": str(hf), "sha256": sha, "layer": LAYER, "tokens": "cls"},
              "training": {}, "metrics": {}}
    save_file(tensors, str(path), metadata={"saeclip": json.dumps(header)})


def run(hf: Path, sae: Path, out: Path, n: int, threads: int) -> dict:
    split = "train"
    cmd = ["/usr/bin/time", "-v", str(BIN), "--device", "cpu", "--threads", str(threads),
           "evaluate", "--model", str(hf), "--sae", str(sae), "--dataset", "procedural:0",
           "--split", split, "--samples", str(n), "--json", str(out / f"n{n}.json")]
    print(f"[bench-eval-sae] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    env = {"XDG_CACHE_HOME": str(out / "xdg"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"saeclip evaluate failed:\n{p.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", p.stderr).group(1)
    secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    rate = float(re.search(r"\(([\d.]+) images/s\)", p.stderr).group(1))
    return {"images": n, "split": split, "images_per_s": rate, "wall_s": secs,
            "peak_rss_mib": rss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: run `make bench-eval-sae`")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    hf = full_model()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sae = tmp / "sae.safetensors"
        write_sae(sae, hf)
        run(hf, sae, tmp, 50, args.threads)  # warm-up: caches the vocabulary's text embeddings
        rows = [run(hf, sae, tmp, n, args.threads) for n in SIZES]
    load_after = os.getloadavg()
    growth = rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]
    ok = growth <= NOISE_MIB
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fmt = lambda v: " / ".join(f"{x:.2f}" for x in v)  # noqa: E731
    lines = [
        "<!-- evaluate -->",
        "## evaluate (CPU)",
        "",
        "- Command: `make bench-eval-sae` (runs `bench/evaluate.py`, `--threads "
        f"{args.threads}`)",
        f"- Date: {date}; {cpu}, {cores} cores (shared); load average (1/5/15 min) "
        f"{fmt(load_before)} before, {fmt(load_after)} after",
        "- Workload: `saeclip evaluate` of a random top-k SAE (64x = 49,152 latents, k = 32, "
        f"CLS of block {LAYER}) in a random-weight full-size ViT-B/32 on procedural images: "
        "reconstruction, probing, zero-shot (plain, spliced, zero- and mean-ablated), labels "
        "(16 features), factors; peak RSS from `/usr/bin/time -v`",
        "- images/s is the command's own figure over the whole call (model load, 256-image "
        "mean-ablation pass, the streaming pass, probes, the labels' second look at up to 384 "
        "top images); wall s adds process start-up",
        "",
        "| images | split | images/s | wall s | peak RSS MiB |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['images']} | {r['split']} | {r['images_per_s']:.1f} | "
                     f"{r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    lines += [
        "",
        f"- Peak memory {SIZES[0]} → {SIZES[-1]} images grows by {growth:+.0f} MiB (allowance "
        f"{NOISE_MIB} MiB): **{'PASS' if ok else 'FAIL'}**",
        "<!-- /evaluate -->",
    ]
    section = "\n".join(lines) + "\n"
    results_md = ROOT / "bench/RESULTS.md"
    text = results_md.read_text() if results_md.exists() else "# Benchmarks\n\n"
    if "<!-- evaluate -->" in text:
        text = re.sub(r"<!-- evaluate -->.*?<!-- /evaluate -->\n?", section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text)
    print(section)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
