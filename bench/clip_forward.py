"""saeclip vs transformers: CLIP ViT-B/32 image-forward throughput on the CPU.

`make bench-clip` runs this after building the Rust bench. It

1. makes (once) a seeded random-weight transformers CLIPModel with CLIPConfig() defaults
   (ViT-B/32) under target/bench/vit-b-32-hf/, and a seeded pixel batch
   target/bench/pixels.safetensors, so both peers run the same weights on the same input;
2. alternates rounds of the Rust bench (benches/clip_forward.rs: saeclip's full image
   forward and its forward stopped after block --layer) and of transformers'
   `CLIPModel.get_image_features` under `torch.inference_mode()`, both with --threads
   intra-op threads, so that machine noise hits both;
3. checks that the two image embeddings agree, so that the same computation is timed;
4. rewrites the `<!-- clip_forward -->` section of bench/RESULTS.md with the medians.

Exits non-zero when the embeddings disagree or a peer fails, not when a target is missed.
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
from transformers import CLIPConfig, CLIPModel

from common import ROOT, RESULTS, bench_executable, cpu_model, rust_env, write_section

BENCH_DIR = ROOT / "target" / "bench"
MODEL_DIR = BENCH_DIR / "vit-b-32-hf"
PIXELS = BENCH_DIR / "pixels.safetensors"
EMBEDS = BENCH_DIR / "saeclip_embeds.safetensors"
BEGIN, END = "<!-- clip_forward -->", "<!-- /clip_forward -->"

# Targets from the task: saeclip at least as fast as transformers on the full forward,
# and stopping after block 5 at least 1.8x faster than the full forward.
TARGET_RATIO = 1.0
TARGET_SPEEDUP = 1.8
# Largest |saeclip - transformers| over the largest |transformers| allowed.
MAX_REL_DIFF = 1e-3


def log(msg: str) -> None:
    print(f"[bench-clip] {msg}", file=sys.stderr, flush=True)


def make_model(seed: int) -> None:
    """Save a random-weight ViT-B/32 CLIPModel once; later runs reuse it."""
    if (MODEL_DIR / "config.json").is_file() and (MODEL_DIR / "model.safetensors").is_file():
        return
    log(f"creating random-weight ViT-B/32 (seed {seed}) in {MODEL_DIR}")
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig()).eval()
    # transformers 5 always writes safetensors (the safe_serialization flag is gone).
    model.save_pretrained(MODEL_DIR)


def make_pixels(batch: int, size: int, seed: int) -> torch.Tensor:
    """A seeded batch of normalised-pixel-like values, [B, 3, P, P] f32, also saved to disk."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, size, size, generator=g, dtype=torch.float32)
    save_file({"pixel_values": pixels.contiguous()}, str(PIXELS))
    return pixels


def build_rust_bench() -> Path:
    """Build the bench once and return its executable."""
    return bench_executable("clip_forward", log)


def run_rust(exe: Path, args: argparse.Namespace, embeds: bool) -> dict:
    cmd = [
        str(exe),
        "--model", str(MODEL_DIR),
        "--pixels", str(PIXELS),
        "--iters", str(args.iters),
        "--warmup", str(args.warmup),
        "--threads", str(args.threads),
        "--layer", str(args.layer),
    ]  # fmt: skip
    if embeds:
        cmd += ["--embeds", str(EMBEDS)]
    out = subprocess.run(cmd, cwd=ROOT, env=rust_env(), check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_transformers(model: CLIPModel, pixels: torch.Tensor, args: argparse.Namespace) -> list[float]:
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            out = model.get_image_features(pixel_values=pixels)
            elapsed = time.perf_counter() - start
            del out
            if i >= args.warmup:
                times.append(elapsed)
    return times


def image_embeds(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=pixels)
    # transformers 5 returns the vision output with the projection as pooler_output.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def render(r: dict) -> str:
    ratio_ok = r["ratio"] >= TARGET_RATIO
    speedup_ok = r["speedup"] >= TARGET_SPEEDUP
    verdict = lambda ok: "**PASS**" if ok else "**FAIL**"  # noqa: E731
    load = " / ".join(f"{x:.2f}" for x in r["load_before"])
    load_after = " / ".join(f"{x:.2f}" for x in r["load_after"])
    return "\n".join(
        [
            BEGIN,
            "## CLIP image forward (saeclip vs transformers)",
            "",
            f"- Command: `make bench-clip` (runs `bench/clip_forward.py`, which alternates "
            f"{r['rounds']} rounds of the `cargo bench --bench clip_forward` executable and of "
            f"transformers in this process)",
            f"- Date: {r['date']}",
            f"- Machine: {r['cpu']} ({r['isa']}), {r['cores']} cores; {r['threads']} intra-op threads "
            f"for both peers",
            f"- Load average (1/5/15 min): {load} before, {load_after} after",
            f"- Software: torch {r['torch']} (libtorch for both), transformers {r['transformers']} "
            f"(attention: `{r['attn']}`), MKL-DNN {'on' if r['mkldnn'] else 'off'}",
            f"- Workload: ViT-B/32 (CLIPConfig() defaults), random weights (seed {r['seed']}), "
            f"batch {r['batch']} of 3×224×224, fp32, the same weights file and pixel batch for both",
            f"- Timing: {r['warmup']} warm-up + {r['iters']} timed iterations per peer per round; "
            f"median of all {r['samples']} timed iterations",
            f"- Same computation: max |saeclip − transformers| / max |transformers| on the image "
            f"embeddings = {r['rel_diff']:.1e} (limit {MAX_REL_DIFF:.0e})",
            "",
            "| what | images/s saeclip | images/s transformers | ratio saeclip/transformers |",
            "|---|---:|---:|---:|",
            f"| full image forward (`image_embeds` / `get_image_features`) | {r['saeclip_full']:.1f} "
            f"| {r['hf_full']:.1f} | {r['ratio']:.2f} |",
            f"| forward stopped after block {r['layer']} (`residual(pixels, {r['layer']})`) "
            f"| {r['saeclip_block']:.1f} | — | — |",
            "",
            f"Block-{r['layer']} speed-up over the full forward (saeclip): **{r['speedup']:.2f}×**.",
            "",
            f"- Full forward, saeclip/transformers ≥ {TARGET_RATIO:.1f}: {verdict(ratio_ok)} "
            f"({r['ratio']:.2f})",
            f"- Block-{r['layer']} speed-up ≥ {TARGET_SPEEDUP:.1f}×: {verdict(speedup_ok)} "
            f"({r['speedup']:.2f}×)",
            END,
        ]
    )


def write_results(section: str) -> None:
    write_section(BEGIN, END, section)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads for both peers")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each peer")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per peer per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per peer per round")
    p.add_argument("--batch", type=int, default=32, help="images per forward")
    p.add_argument("--layer", type=int, default=5, help="block after which the short forward stops")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the pixels")
    p.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = p.parse_args()

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    make_model(args.seed)
    exe = build_rust_bench()
    load_before = os.getloadavg()
    started = time.perf_counter()

    model = CLIPModel.from_pretrained(MODEL_DIR).eval()
    size = model.config.vision_config.image_size
    pixels = make_pixels(args.batch, size, args.seed)

    rust_full, rust_block, hf = [], [], []
    mkldnn = None
    for r in range(args.rounds):
        # Alternate which peer goes first in each round.
        order = ("rust", "hf") if r % 2 == 0 else ("hf", "rust")
        for peer in order:
            if peer == "rust":
                out = run_rust(exe, args, embeds=(r == 0))
                rust_full += out["full_s"]
                rust_block += out["block_s"]
                mkldnn = out["mkldnn"]
                assert out["threads"] == args.threads, out
                log(
                    f"round {r + 1}: saeclip full {statistics.median(out['full_s']):.3f}s "
                    f"block-{args.layer} {statistics.median(out['block_s']):.3f}s"
                )
            else:
                t = time_transformers(model, pixels, args)
                hf += t
                log(f"round {r + 1}: transformers full {statistics.median(t):.3f}s")

    ours = load_file(str(EMBEDS))["image_embeds"]
    theirs = image_embeds(model, pixels)
    rel_diff = ((ours - theirs).abs().max() / theirs.abs().max()).item()

    batch = args.batch
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "threads": args.threads,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn": model.config._attn_implementation,
        "mkldnn": mkldnn,
        "seed": args.seed,
        "batch": batch,
        "layer": args.layer,
        "rounds": args.rounds,
        "iters": args.iters,
        "warmup": args.warmup,
        "samples": len(hf),
        "rel_diff": rel_diff,
        "saeclip_full": batch / statistics.median(rust_full),
        "saeclip_block": batch / statistics.median(rust_block),
        "hf_full": batch / statistics.median(hf),
    }
    res["ratio"] = res["saeclip_full"] / res["hf_full"]
    res["speedup"] = res["saeclip_block"] / res["saeclip_full"]
    log(f"timed part took {time.perf_counter() - started:.0f}s")
    print(json.dumps(res))

    if rel_diff > MAX_REL_DIFF:
        log(f"FAIL: the image embeddings differ (relative {rel_diff:.2e} > {MAX_REL_DIFF:.0e})")
        return 1
    section = render(res)
    if args.no_write:
        print(section)
    else:
        write_results(section)
        log(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
