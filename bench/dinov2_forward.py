"""saeclip vs transformers: DINOv2 ViT-B/14 image-forward throughput on the CPU.

`make bench-clip` runs this after bench/clip_forward.py. It

1. makes (once) a seeded random-weight transformers Dinov2Model with facebook/dinov2-base's
   dimensions (768 wide, 12 blocks, patch 14, pretrained at 518 px) under
   target/bench/dinov2-base-hf/, and a seeded batch of 224 px pixels, so that both peers run
   the same weights on the same input (the position embeddings are interpolated from 37×37
   to 16×16 patches in both, as for the published checkpoints);
2. alternates rounds of the Rust bench (benches/clip_forward.rs, whose forward works for any
   family) and of transformers' `Dinov2Model(...).pooler_output` under
   `torch.inference_mode()`, both with --threads intra-op threads;
3. checks that the two pooled outputs agree, so that the same computation is timed;
4. rewrites the `<!-- dinov2_forward -->` section of bench/RESULTS.md with the medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import Dinov2Config, Dinov2Model

from common import ROOT, RESULTS, bench_executable, cpu_model, rust_env, write_section

BENCH_DIR = ROOT / "target" / "bench"
MODEL_DIR = BENCH_DIR / "dinov2-base-hf"
PIXELS = BENCH_DIR / "dinov2-pixels.safetensors"
EMBEDS = BENCH_DIR / "dinov2_saeclip_embeds.safetensors"
BEGIN, END = "<!-- dinov2_forward -->", "<!-- /dinov2_forward -->"
TARGET_RATIO = 1.0
MAX_REL_DIFF = 1e-3
SIZE = 224


def log(msg: str) -> None:
    print(f"[bench-dinov2] {msg}", file=sys.stderr, flush=True)


def make_model(seed: int) -> None:
    if (MODEL_DIR / "config.json").is_file() and (MODEL_DIR / "model.safetensors").is_file():
        return
    log(f"creating random-weight DINOv2 ViT-B/14 (seed {seed}) in {MODEL_DIR}")
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          image_size=518, patch_size=14)
    Dinov2Model(config).eval().save_pretrained(MODEL_DIR)
    # The published processor: shortest edge 256, crop 224 (what saeclip's input size follows).
    (MODEL_DIR / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 256}, "crop_size": {"height": SIZE, "width": SIZE},
        "resample": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }))


def run_rust(exe: Path, args: argparse.Namespace, embeds: bool) -> dict:
    cmd = [str(exe), "--model", str(MODEL_DIR), "--pixels", str(PIXELS),
           "--iters", str(args.iters), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--layer", str(args.layer)]
    if embeds:
        cmd += ["--embeds", str(EMBEDS)]
    out = subprocess.run(cmd, cwd=ROOT, env=rust_env(), check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pooled(model: Dinov2Model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(pixel_values=pixels).pooler_output


def time_transformers(model: Dinov2Model, pixels: torch.Tensor, args: argparse.Namespace) -> list[float]:
    times = []
    for i in range(args.warmup + args.iters):
        start = time.perf_counter()
        out = pooled(model, pixels)
        elapsed = time.perf_counter() - start
        del out
        if i >= args.warmup:
            times.append(elapsed)
    return times


def render(r: dict) -> str:
    verdict = "**PASS**" if r["ratio"] >= TARGET_RATIO else "**FAIL**"
    load = " / ".join(f"{x:.2f}" for x in r["load_before"])
    load_after = " / ".join(f"{x:.2f}" for x in r["load_after"])
    return "\n".join([
        BEGIN,
        "## DINOv2 image forward (saeclip vs transformers)",
        "",
        f"- Command: `make bench-clip` (runs `bench/dinov2_forward.py`, which alternates {r['rounds']} "
        f"rounds of the `clip_forward` bench executable and of transformers in this process)",
        f"- Date: {r['date']}",
        f"- Machine: {r['cpu']} ({r['isa']}), {r['cores']} cores; {r['threads']} intra-op threads for both peers",
        f"- Load average (1/5/15 min): {load} before, {load_after} after",
        f"- Software: torch {r['torch']}, transformers {r['transformers']} (attention: `{r['attn']}`)",
        f"- Workload: DINOv2 ViT-B/14 (facebook/dinov2-base dimensions, pretrained size 518 px), random "
        f"weights (seed {r['seed']}), batch {r['batch']} of 3×{SIZE}×{SIZE} (positions interpolated "
        f"37² → 16²), fp32, the same weights file and pixel batch for both",
        f"- Timing: {r['warmup']} warm-up + {r['iters']} timed iterations per peer per round; median of "
        f"all {r['samples']} timed iterations",
        f"- Same computation: max |saeclip − transformers| / max |transformers| on the pooled output = "
        f"{r['rel_diff']:.1e} (limit {MAX_REL_DIFF:.0e})",
        "",
        "| what | images/s saeclip | images/s transformers | ratio saeclip/transformers |",
        "|---|---:|---:|---:|",
        f"| full forward (`image_embeds` / `pooler_output`) | {r['saeclip_full']:.2f} | {r['hf_full']:.2f} "
        f"| {r['ratio']:.2f} |",
        f"| forward stopped after block {r['layer']} | {r['saeclip_block']:.2f} | — | — |",
        "",
        f"- Full forward, saeclip/transformers ≥ {TARGET_RATIO:.1f}: {verdict} ({r['ratio']:.2f})",
        END,
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--layer", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    make_model(args.seed)
    exe = bench_executable("clip_forward", log)
    load_before = os.getloadavg()
    model = Dinov2Model.from_pretrained(MODEL_DIR).eval()
    g = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(args.batch, 3, SIZE, SIZE, generator=g)
    save_file({"pixel_values": pixels.contiguous()}, str(PIXELS))

    rust_full, rust_block, hf = [], [], []
    for r in range(args.rounds):
        for peer in (("rust", "hf") if r % 2 == 0 else ("hf", "rust")):
            if peer == "rust":
                out = run_rust(exe, args, embeds=(r == 0))
                rust_full += out["full_s"]
                rust_block += out["block_s"]
                log(f"round {r + 1}: saeclip full {statistics.median(out['full_s']):.3f}s")
            else:
                t = time_transformers(model, pixels, args)
                hf += t
                log(f"round {r + 1}: transformers full {statistics.median(t):.3f}s")

    ours = load_file(str(EMBEDS))["image_embeds"]
    theirs = pooled(model, pixels)
    rel_diff = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "isa": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
        "load_before": load_before, "load_after": os.getloadavg(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "attn": model.config._attn_implementation, "seed": args.seed, "batch": args.batch,
        "layer": args.layer, "rounds": args.rounds, "iters": args.iters, "warmup": args.warmup,
        "samples": len(hf), "rel_diff": rel_diff,
        "saeclip_full": args.batch / statistics.median(rust_full),
        "saeclip_block": args.batch / statistics.median(rust_block),
        "hf_full": args.batch / statistics.median(hf),
    }
    res["ratio"] = res["saeclip_full"] / res["hf_full"]
    print(json.dumps(res))
    if rel_diff > MAX_REL_DIFF:
        log(f"FAIL: the pooled outputs differ (relative {rel_diff:.2e} > {MAX_REL_DIFF:.0e})")
        return 1
    section = render(res)
    if args.no_write:
        print(section)
    else:
        write_section(BEGIN, END, section)
        log(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
