"""saeclip vs transformers: SigLIP base-patch16-224 image-forward throughput on the CPU.

Part of `make bench-clip`. It makes (once) a seeded random-weight transformers SiglipModel
with SiglipConfig() defaults (google/siglip-base-patch16-224's dimensions) under
target/bench/siglip-base-hf/ and a seeded pixel batch, then alternates rounds of the Rust
bench (benches/clip_forward.rs, which loads any family through `Clip::load`) and of
transformers' `SiglipModel.get_image_features` under `torch.inference_mode()` with the same
intra-op threads, checks that both image embeddings (the attention-pooling head's output)
agree, and rewrites the `<!-- siglip_forward -->` section of bench/RESULTS.md.
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

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import SiglipConfig, SiglipModel

from common import ROOT, bench_executable, cpu_model, rust_env, write_section

BENCH_DIR = ROOT / "target" / "bench"
MODEL_DIR = BENCH_DIR / "siglip-base-hf"
PIXELS = BENCH_DIR / "siglip-pixels.safetensors"
EMBEDS = BENCH_DIR / "siglip-saeclip-embeds.safetensors"
BEGIN, END = "<!-- siglip_forward -->", "<!-- /siglip_forward -->"
TARGET_RATIO = 1.0
MAX_REL_DIFF = 1e-3


def log(msg: str) -> None:
    print(f"[bench-siglip] {msg}", file=sys.stderr, flush=True)


def make_model(seed: int) -> None:
    if (MODEL_DIR / "config.json").is_file() and (MODEL_DIR / "model.safetensors").is_file():
        return
    log(f"creating random-weight SigLIP base-patch16-224 (seed {seed}) in {MODEL_DIR}")
    torch.manual_seed(seed)
    SiglipModel(SiglipConfig()).eval().save_pretrained(MODEL_DIR)


def run_rust(exe, args, embeds: bool) -> dict:
    cmd = [str(exe), "--model", str(MODEL_DIR), "--pixels", str(PIXELS), "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--layer", str(args.layer)]
    if embeds:
        cmd += ["--embeds", str(EMBEDS)]
    out = subprocess.run(cmd, cwd=ROOT, env=rust_env(), check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def features(model, pixels):
    out = model.get_image_features(pixel_values=pixels)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def time_transformers(model, pixels, args) -> list[float]:
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            out = features(model, pixels)
            elapsed = time.perf_counter() - start
            del out
            if i >= args.warmup:
                times.append(elapsed)
    return times


def render(r: dict) -> str:
    load = " / ".join(f"{x:.2f}" for x in r["load_before"])
    load_after = " / ".join(f"{x:.2f}" for x in r["load_after"])
    verdict = "**PASS**" if r["ratio"] >= TARGET_RATIO else "**FAIL**"
    return "\n".join([
        BEGIN,
        "## SigLIP image forward (saeclip vs transformers)",
        "",
        f"- Command: `make bench-clip` (runs `bench/siglip_forward.py`: {r['rounds']} alternating rounds "
        f"of the `clip_forward` bench executable and of transformers in this process)",
        f"- Date: {r['date']}",
        f"- Machine: {r['cpu']} ({r['isa']}), {r['cores']} cores; {r['threads']} intra-op threads for both peers",
        f"- Load average (1/5/15 min): {load} before, {load_after} after",
        f"- Software: torch {r['torch']}, transformers {r['transformers']} (attention: `{r['attn']}`)",
        f"- Workload: SigLIP base-patch16-224 (SiglipConfig() defaults), random weights (seed {r['seed']}), "
        f"batch {r['batch']} of 3×224×224, fp32, image embeddings through the attention-pooling head",
        f"- Timing: {r['warmup']} warm-up + {r['iters']} timed iterations per peer per round; median of "
        f"all {r['samples']} timed iterations",
        f"- Same computation: max |saeclip − transformers| / max |transformers| on the image embeddings "
        f"= {r['rel_diff']:.1e} (limit {MAX_REL_DIFF:.0e})",
        "",
        "| what | images/s saeclip | images/s transformers | ratio saeclip/transformers |",
        "|---|---:|---:|---:|",
        f"| full image forward (`image_embeds` / `get_image_features`) | {r['saeclip_full']:.1f} "
        f"| {r['hf_full']:.1f} | {r['ratio']:.2f} |",
        f"| forward stopped after block {r['layer']} | {r['saeclip_block']:.1f} | — | — |",
        "",
        f"- Full forward, saeclip/transformers ≥ {TARGET_RATIO:.1f}: {verdict} ({r['ratio']:.2f})",
        END,
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--layer", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = p.parse_args()

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    make_model(args.seed)
    exe = bench_executable("clip_forward", log)
    load_before = os.getloadavg()
    model = SiglipModel.from_pretrained(MODEL_DIR).eval()
    g = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(args.batch, 3, 224, 224, generator=g)
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
    with torch.inference_mode():
        theirs = features(model, pixels)
    rel_diff = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
        "cores": os.cpu_count(), "isa": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
        "load_before": load_before, "load_after": os.getloadavg(), "torch": torch.__version__,
        "transformers": transformers.__version__, "attn": model.config._attn_implementation,
        "seed": args.seed, "batch": args.batch, "layer": args.layer, "rounds": args.rounds,
        "iters": args.iters, "warmup": args.warmup, "samples": len(hf), "rel_diff": rel_diff,
        "saeclip_full": args.batch / statistics.median(rust_full),
        "saeclip_block": args.batch / statistics.median(rust_block),
        "hf_full": args.batch / statistics.median(hf),
    }
    res["ratio"] = res["saeclip_full"] / res["hf_full"]
    print(json.dumps(res))
    if rel_diff > MAX_REL_DIFF:
        log(f"FAIL: the image embeddings differ (relative {rel_diff:.2e} > {MAX_REL_DIFF:.0e})")
        return 1
    section = render(res)
    if args.no_write:
        print(section)
    else:
        write_section(BEGIN, END, section)
        log("wrote bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
