"""Benchmark `saeclip interpret` on CPU: images/s and peak memory for growing samples.

Two models, each with a random top-k SAE on the CLS token, on the procedural dataset:

- the tiny random reference model (tests/reference/make_models.py, tiny-quick: width 64,
  3 blocks), SAE d_sae = 2048, k = 16 on block 1;
- a full-size ViT-B/32 with random weights (`saeclip dev random-model --preset vit-b-32`,
  written once under target/bench/interpret-vit-b-32/), SAE 64x = 49,152 latents,
  k = 500 on block 11 (the original project's recipe), so labels use the decoder-row method.

Each model runs once on 50 images (a warm-up that computes and caches the vocabulary's text
embeddings), then on 500 and on 2,000 images; `/usr/bin/time -v` gives the peak resident
set size. Memory must not grow with the sample beyond the top-k buffers, which have the
same size for every sample: the verdict compares the two peaks (allowance: 32 MiB of
allocator noise). Writes the section between `<!-- interpret -->` markers of
bench/RESULTS.md (created if missing).

Run through `make bench-interpret` (it builds the release binary first).
"""

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
MODELS = ROOT / "target/reference-models"
FULL = ROOT / "target/bench/interpret-vit-b-32"
SIZES = [500, 2000]
NOISE_MIB = 32
TOP_K = 12


def tiny_model() -> Path:
    hf = MODELS / "tiny-quick" / "hf"
    if not (hf / "model.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "tests/reference/make_models.py"),
                        "--out", str(MODELS), "--name", "tiny-quick"], check=True)
    return hf


def full_model() -> Path:
    if not (FULL / "model.safetensors").exists():
        subprocess.run([str(BIN), "-q", "dev", "random-model", "--preset", "vit-b-32",
                        "--seed", "0", "--out", str(FULL)], check=True)
    return FULL


def write_sae(path: Path, hf: Path, d_in: int, d_sae: int, k: int, layer: int) -> None:
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    tensors = {
        "W_enc": w_dec.t().contiguous(),
        "b_enc": torch.zeros(d_sae),
        "W_dec": w_dec,
        "b_dec": torch.zeros(d_in),
    }
    sha = hashlib.sha256((hf / "model.safetensors").read_bytes()).hexdigest()
    header = {
        "version": 1, "architecture": "topk", "k": k, "d_in": d_in, "d_sae": d_sae,
        "input_scale": 1.0, "threshold": None, "saeclip_version": "bench",
        "clip": {"model": str(hf), "sha256": sha, "layer": layer, "tokens": "cls"},
        "training": {}, "metrics": {},
    }
    save_file(tensors, str(path), metadata={"saeclip": json.dumps(header)})


def run(hf: Path, sae: Path, out: Path, n: int) -> dict:
    cmd = ["/usr/bin/time", "-v", str(BIN), "--device", "cpu", "interpret", "--model", str(hf),
           "--sae", str(sae), "--dataset", "procedural:0", "--sample-size", str(n),
           "--top-k", str(TOP_K), "--features", "50",
           "--output-csv", str(out / f"n{n}/features.csv"),
           "--collage-dir", str(out / f"n{n}/collages")]
    print(f"[bench-interpret] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    env = {"XDG_CACHE_HOME": str(out / "xdg"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"saeclip interpret failed:\n{p.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", p.stderr).group(1)
    secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    rate = float(re.search(r"\(([\d.]+) images/s\)", p.stderr).group(1))
    return {"images": n, "images_per_s": rate, "wall_s": secs, "peak_rss_mib": rss / 1024}


def bench(name: str, hf: Path, d_in: int, d_sae: int, k: int, layer: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sae = tmp / "sae.safetensors"
        write_sae(sae, hf, d_in, d_sae, k, layer)
        run(hf, sae, tmp, 50)  # warm-up: computes and caches the vocabulary's text embeddings
        rows = [run(hf, sae, tmp, n) for n in SIZES]
    growth = rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]
    # Per latent: TOP_K entries of (score f32, image i64, token i64).
    buffers = d_sae * TOP_K * (4 + 8 + 8) / 2**20
    return {"name": name, "d_sae": d_sae, "k": k, "layer": layer, "rows": rows,
            "growth_mib": growth, "buffers_mib": buffers, "ok": growth <= NOISE_MIB}


def main() -> int:
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: run `make bench-interpret`")
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    results = [
        bench("tiny-quick (width 64, 3 blocks)", tiny_model(), 64, 2048, 16, 1),
        bench("ViT-B/32 (width 768, 12 blocks)", full_model(), 768, 49152, 500, 11),
    ]
    load_after = os.getloadavg()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "<!-- interpret -->",
        "## interpret (CPU)",
        "",
        "- Command: `make bench-interpret` (runs `bench/interpret.py`)",
        f"- Date: {date}; {cores} CPU cores; load average (1/5/15 min) "
        f"{' / '.join(f'{v:.2f}' for v in load_before)} before, "
        f"{' / '.join(f'{v:.2f}' for v in load_after)} after",
        "- Workload: `saeclip interpret` on the procedural dataset (train split), random-weight "
        f"models and random top-k SAEs on the CLS token, top {TOP_K} images per latent, 50 "
        "features, 4x3 collages, built-in vocabulary (text embeddings cached by a 50-image "
        "warm-up run); peak RSS from `/usr/bin/time -v`",
        "- images/s is the command's own figure: images over the whole interpret call (model "
        "load and hashing, the streaming pass of decode, forward, SAE and top-k, a second look "
        "at the top images, labels, collages), so fixed costs weigh more on the small sample; "
        "wall s adds process start-up",
        "",
        "| model | SAE | images | images/s | wall s | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for row in r["rows"]:
            lines.append(
                f"| {r['name']} | {r['d_sae']} latents, k = {r['k']}, block {r['layer']} | "
                f"{row['images']} | {row['images_per_s']:.1f} | {row['wall_s']:.1f} | "
                f"{row['peak_rss_mib']:.0f} |")
    lines.append("")
    for r in results:
        verdict = "PASS" if r["ok"] else "FAIL"
        lines.append(
            f"- {r['name']}: peak memory {SIZES[0]} → {SIZES[-1]} images grows by "
            f"{r['growth_mib']:+.0f} MiB (top-k buffers {r['buffers_mib']:.1f} MiB, the same for "
            f"both; allowance {NOISE_MIB} MiB): **{verdict}**")
    lines.append("<!-- /interpret -->")
    section = "\n".join(lines) + "\n"
    results_md = ROOT / "bench/RESULTS.md"
    text = results_md.read_text() if results_md.exists() else "# Benchmarks\n\n"
    if "<!-- interpret -->" in text:
        text = re.sub(r"<!-- interpret -->.*?<!-- /interpret -->\n?", section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text)
    print(section)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
