"""Benchmark `saeclip interpret` on CPU: images/s and peak memory for growing samples.

Uses the tiny random reference model (tests/reference/make_models.py, tiny-quick) and a
random top-k SAE (d_sae = 2048, k = 16) on the CLS token of block 1, the procedural
dataset, and `/usr/bin/time -v` for the peak resident set size. Writes the section between
`<!-- interpret -->` markers of bench/RESULTS.md (created if missing).

Run through `make bench-interpret` (it builds the release binary first).
"""

import hashlib
import json
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
SIZES = [500, 2000]


def model_dir() -> Path:
    hf = MODELS / "tiny-quick" / "hf"
    if not (hf / "model.safetensors").exists():
        subprocess.run([sys.executable, str(ROOT / "tests/reference/make_models.py"),
                        "--out", str(MODELS), "--name", "tiny-quick"], check=True)
    return hf


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
           "--features", "50", "--output-csv", str(out / f"n{n}/features.csv"),
           "--collage-dir", str(out / f"n{n}/collages")]
    p = subprocess.run(cmd, capture_output=True, text=True, env={"XDG_CACHE_HOME": str(out / "xdg"),
                                                                  "PATH": "/usr/bin:/bin"})
    if p.returncode != 0:
        sys.exit(f"saeclip interpret failed:\n{p.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", p.stderr).group(1)
    secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    rate = float(re.search(r"\(([\d.]+) images/s\)", p.stderr).group(1))
    return {"images": n, "images_per_s": rate, "wall_s": secs, "peak_rss_mib": rss / 1024}


def main() -> int:
    hf = model_dir()
    cores = len(__import__("os").sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sae = tmp / "sae.safetensors"
        write_sae(sae, hf, 64, 2048, 16, 1)
        run(hf, sae, tmp, 50)  # warm-up: computes and caches the vocabulary's text embeddings
        rows = [run(hf, sae, tmp, n) for n in SIZES]
    lines = [
        "<!-- interpret -->",
        "## interpret (CPU)",
        "",
        f"`saeclip interpret` on the procedural dataset, tiny random reference model (tiny-quick, "
        f"width 64, 3 blocks), random top-k SAE d_sae = 2048, k = 16 on block 1 CLS, 50 features, "
        f"4x3 collages; {cores} CPU cores; peak RSS from `/usr/bin/time -v`. "
        f"images/s counts the whole command (model load and hashing, decode, forward, top-k, "
        f"collages, labels; text embeddings already cached by a warm-up run), so fixed costs "
        f"weigh more on the small sample.",
        "",
        "| images | images/s | wall s | peak RSS MiB |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['images']} | {r['images_per_s']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    lines += ["", "Peak memory does not grow with the sample: the top-k buffers are O(d_sae x k).",
              "<!-- /interpret -->"]
    section = "\n".join(lines) + "\n"
    results = ROOT / "bench/RESULTS.md"
    text = results.read_text() if results.exists() else "# Benchmarks\n\n"
    if "<!-- interpret -->" in text:
        text = re.sub(r"<!-- interpret -->.*?<!-- /interpret -->\n?", section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results.write_text(text)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
