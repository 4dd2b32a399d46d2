"""One image-forward race of saeclip against transformers, shared by bench/siglip_forward.py
and bench/dinov2_forward.py (`make bench-clip`).

Each script makes (once) its seeded random-weight transformers model, then `run` draws a
seeded pixel batch, alternates rounds of the Rust bench (benches/clip_forward.rs, which loads
any family through `Clip::load`) and of the transformers forward under
`torch.inference_mode()` with the same intra-op threads, checks that both outputs agree, and
rewrites the script's section of bench/RESULTS.md with the medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import transformers
from safetensors.torch import load_file, save_file

from common import RESULTS, ROOT, bench_executable, cpu_model, rust_env, write_section

BENCH_DIR = ROOT / "target" / "bench"
TARGET_RATIO = 1.0
MAX_REL_DIFF = 1e-3


@dataclass
class Race:
    """What differs between the families' races."""

    name: str  # "siglip": marker `<!-- NAME_forward -->`, file names under target/bench/
    log: Callable[[str], None]
    model_dir: Path
    load: Callable[[], torch.nn.Module]  # the transformers model, in eval mode
    forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]  # its output to compare
    size: int  # pixels per side
    title: str  # section heading
    command: str  # the "Command" line after `make bench-clip`
    workload: str  # the "Workload" line, formatted with the result dict
    output: str  # what is compared ("the pooled output")
    row: str  # the first table row's label
    digits: int  # decimals of images/s


def parse_args(description: str, rounds: int, iters: int, batch: int) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--iters", type=int, default=iters)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--layer", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    return p.parse_args()


def run_rust(exe: Path, race: Race, pixels: Path, embeds: Path | None, args) -> dict:
    cmd = [str(exe), "--model", str(race.model_dir), "--pixels", str(pixels), "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--layer", str(args.layer)]  # fmt: skip
    if embeds:
        cmd += ["--embeds", str(embeds)]
    out = subprocess.run(cmd, cwd=ROOT, env=rust_env(), check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_transformers(race: Race, model, pixels: torch.Tensor, args) -> list[float]:
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            out = race.forward(model, pixels)
            elapsed = time.perf_counter() - start
            del out
            if i >= args.warmup:
                times.append(elapsed)
    return times


def render(race: Race, r: dict) -> str:
    load = " / ".join(f"{x:.2f}" for x in r["load_before"])
    load_after = " / ".join(f"{x:.2f}" for x in r["load_after"])
    verdict = "**PASS**" if r["ratio"] >= TARGET_RATIO else "**FAIL**"
    n = race.digits
    return "\n".join([
        f"<!-- {race.name}_forward -->",
        f"## {race.title}",
        "",
        f"- Command: `make bench-clip` ({race.command.format(**r)})",
        f"- Date: {r['date']}",
        f"- Machine: {r['cpu']} ({r['isa']}), {r['cores']} cores; {r['threads']} intra-op threads for both peers",
        f"- Load average (1/5/15 min): {load} before, {load_after} after",
        f"- Software: torch {r['torch']}, transformers {r['transformers']} (attention: `{r['attn']}`)",
        f"- Workload: {race.workload.format(**r)}",
        f"- Timing: {r['warmup']} warm-up + {r['iters']} timed iterations per peer per round; median of "
        f"all {r['samples']} timed iterations",
        f"- Same computation: max |saeclip − transformers| / max |transformers| on {race.output} = "
        f"{r['rel_diff']:.1e} (limit {MAX_REL_DIFF:.0e})",
        "",
        "| what | images/s saeclip | images/s transformers | ratio saeclip/transformers |",
        "|---|---:|---:|---:|",
        f"| {race.row} | {r['saeclip_full']:.{n}f} | {r['hf_full']:.{n}f} | {r['ratio']:.2f} |",
        f"| forward stopped after block {r['layer']} | {r['saeclip_block']:.{n}f} | — | — |",
        "",
        f"- Full forward, saeclip/transformers ≥ {TARGET_RATIO:.1f}: {verdict} ({r['ratio']:.2f})",
        f"<!-- /{race.name}_forward -->",
    ])  # fmt: skip


def run(race: Race, args) -> int:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    pixels_file = BENCH_DIR / f"{race.name}-pixels.safetensors"
    embeds_file = BENCH_DIR / f"{race.name}-saeclip-embeds.safetensors"
    exe = bench_executable("clip_forward", race.log)
    load_before = os.getloadavg()
    model = race.load()
    g = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(args.batch, 3, race.size, race.size, generator=g)
    save_file({"pixel_values": pixels.contiguous()}, str(pixels_file))

    rust_full, rust_block, hf = [], [], []
    for r in range(args.rounds):
        for peer in ("rust", "hf") if r % 2 == 0 else ("hf", "rust"):
            if peer == "rust":
                out = run_rust(exe, race, pixels_file, embeds_file if r == 0 else None, args)
                rust_full += out["full_s"]
                rust_block += out["block_s"]
                race.log(f"round {r + 1}: saeclip full {statistics.median(out['full_s']):.3f}s")
            else:
                t = time_transformers(race, model, pixels, args)
                hf += t
                race.log(f"round {r + 1}: transformers full {statistics.median(t):.3f}s")

    ours = load_file(str(embeds_file))["image_embeds"]
    with torch.inference_mode():
        theirs = race.forward(model, pixels)
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
    }  # fmt: skip
    res["ratio"] = res["saeclip_full"] / res["hf_full"]
    print(json.dumps(res))
    if rel_diff > MAX_REL_DIFF:
        race.log(f"FAIL: {race.output} differs (relative {rel_diff:.2e} > {MAX_REL_DIFF:.0e})")
        return 1
    section = render(race, res)
    if args.no_write:
        print(section)
    else:
        write_section(f"<!-- {race.name}_forward -->", f"<!-- /{race.name}_forward -->", section)
        race.log(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0
