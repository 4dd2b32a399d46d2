"""saeclip eval-zeroshot on the CPU: throughput with and without an SAE, and the splice overhead.

`make bench-eval` runs this after building the release binary and the Rust bench. It

1. uses (creating them once) the tiny reference model `tiny-quick` of
   tests/reference/make_models.py (target/reference-models/tiny-quick/hf) and a seeded
   random-weight transformers CLIPModel with CLIPConfig() defaults (ViT-B/32) under
   target/bench/vit-b-32-hf/ (shared with bench-clip and bench-extract);
2. writes (once) untrained but initialised top-k SAE checkpoints, 32× the width, k = 64
   (`Sae::init` on block-L residuals, through the Rust bench's `--make-sae`): at the last
   block's CLS token (the original project's recipe) for both models, and at block 5 for
   ViT-B/32;
3. alternates rounds of, in one run:
   - the forward alone (benches/eval_zeroshot.rs, one process per model and SAE): the plain
     image forward (`Clip::image_embeds`) against eval-zeroshot's spliced forward (one forward
     to block L, the SAE on the CLS token, the remaining blocks for the original, spliced
     and error-added residuals) on the same seeded pixel batch, alternating within each
     iteration; plus, timed on their own, the SAE reconstruction, everything after block L
     (`splice_residual`), the same without the error-added pass (`--no-error-check`) and one
     plain pass through the blocks after L;
   - end to end: `saeclip eval-zeroshot --dataset procedural:0 --samples N` without and with
     `--sae`, each a fresh process; images/s of the image loop (generation of the procedural
     images, preprocessing, forward, scoring; text embedding and model load excluded) from
     its --json;
4. rewrites the `<!-- eval -->` section of bench/RESULTS.md with the medians.

Target (from the issue): the splice costs at most 10% over the plain forward at k = 64 and
32× width (ViT-B/32, last block, CLS). Two measures are reported: the ratio of spliced to
plain forward times run back to back, and the extra work alone (everything after block L,
timed on its own, minus the one pass through the remaining blocks the plain forward also
makes), which the load of a shared machine disturbs much less; the target is judged on the
latter. Exits non-zero when a peer fails, not when the target is missed.
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

from common import ROOT, RESULTS, bench_executable, cpu_model, rust_env, write_section

BENCH_DIR = ROOT / "target" / "bench"
VIT_DIR = BENCH_DIR / "vit-b-32-hf"
TINY_BASE = ROOT / "target" / "reference-models"
TINY_DIR = TINY_BASE / "tiny-quick" / "hf"
WORK_DIR = BENCH_DIR / "eval-runs"
BIN = ROOT / "target" / "release" / "saeclip"
BEGIN, END = "<!-- eval -->", "<!-- /eval -->"

TARGET_OVERHEAD = 0.10  # spliced forward over plain forward, ViT-B/32, last block, CLS
EXPANSION, K = 32, 64


def log(msg: str) -> None:
    print(f"[bench-eval] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Inputs


def make_vit(seed: int) -> None:
    """Save a random-weight ViT-B/32 CLIPModel once; later runs (and other benches) reuse it."""
    if (VIT_DIR / "config.json").is_file() and (VIT_DIR / "model.safetensors").is_file():
        return
    import torch
    from transformers import CLIPConfig, CLIPModel

    log(f"creating random-weight ViT-B/32 (seed {seed}) in {VIT_DIR}")
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig()).eval()
    model.save_pretrained(VIT_DIR)


def make_tiny() -> None:
    if (TINY_DIR / "config.json").is_file() and (TINY_DIR / "model.safetensors").is_file():
        return
    log("creating the tiny reference model")
    subprocess.run(
        [sys.executable, str(ROOT / "tests/reference/make_models.py"), "--out", str(TINY_BASE), "--name", "tiny-quick"],
        cwd=ROOT, check=True,
    )  # fmt: skip


def build_rust_bench() -> Path:
    """Build the bench once and return its executable."""
    return bench_executable("eval_zeroshot", log)


def make_sae(exe: Path, model: Path, layer: int, out: Path, seed: int) -> None:
    """An initialised SAE checkpoint for `model`, written once (kept next to the model's hash)."""
    stamp = out.with_suffix(".json")
    weights = model / "model.safetensors"
    want = {"model": str(model), "size": weights.stat().st_size, "mtime": weights.stat().st_mtime,
            "layer": layer, "expansion": EXPANSION, "k": K, "seed": seed}  # fmt: skip
    if out.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == want:
        return
    log(f"writing an initialised SAE ({EXPANSION}x, k={K}, layer {layer}) for {model.name} to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(exe), "--make-sae", str(out), "--model", str(model), "--layer", str(layer),
         "--expansion", str(EXPANSION), "--k", str(K), "--seed", str(seed)],
        cwd=ROOT, env=rust_env(), check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    stamp.write_text(json.dumps(want))


# ---------------------------------------------------------------------------------------
# Peers


def run_forward(exe: Path, model: Path, sae: Path, iters: int, args: argparse.Namespace) -> dict:
    cmd = [str(exe), "--model", str(model), "--sae", str(sae), "--batch", str(args.batch),
           "--iters", str(iters), "--warmup", "1", "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=rust_env(), check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cli(model: Path, sae: Path | None, samples: int, args: argparse.Namespace, tag: str) -> dict:
    out = WORK_DIR / f"{tag}.json"
    cmd = [str(BIN), "--device", "cpu", "--threads", str(args.threads), "-q", "eval-zeroshot",
           "--model", str(model), "--dataset", "procedural:0", "--samples", str(samples),
           "--batch-size", str(args.batch), "--json", str(out)]  # fmt: skip
    if sae is not None:
        cmd += ["--sae", str(sae)]
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=rust_env(), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    d = json.loads(out.read_text())["datasets"][0]
    return {"images_per_s": d["images_per_s"], "wall_s": wall, "samples": d["samples"],
            "top1": d["clip"]["top1"], "error_added": d["error_added"], "clip": d["clip"]}  # fmt: skip


# ---------------------------------------------------------------------------------------
# Report


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def render(r: dict) -> str:
    lines = [
        BEGIN,
        "## eval-zeroshot: throughput with and without the SAE, splice overhead (CPU)",
        "",
        f"- Command: `make bench-eval` (runs `bench/eval.py`: {r['rounds']} alternating rounds of "
        "`cargo bench --bench eval_zeroshot` and end-to-end `saeclip eval-zeroshot` runs)",
        f"- Date: {r['date']}",
        f"- Machine: {r['cpu']}, {r['cores']} cores; {r['threads']} threads for libtorch and decoding",
        f"- Load average (1/5/15 min): {r['load_before']} before, {r['load_after']} after "
        "(the machine is shared: other jobs ran meanwhile, so absolute images/s are low and noisy;"
        " the overhead compares plain and spliced forwards alternated within each iteration)",
        f"- SAEs: top-k, untrained but initialised (`Sae::init`), {EXPANSION}× the width, k = {K}, "
        "CLS token, f32; models f32 with random weights",
        f"- Forward: batch {r['batch']} of seeded random pixels, {r['iters']} timed iterations (+1 warm-up) "
        f"per round for ViT-B/32, {r['iters_tiny']} for the tiny model; medians over all rounds, the overhead "
        "as the median of the per-iteration ratios. *Plain* = `Clip::image_embeds`; *spliced* = eval-zeroshot's "
        "`spliced_forward`: one forward to block L, the SAE on the spliced token, then the remaining "
        "blocks for the original, spliced and error-added residuals",
        f"- End to end: `saeclip eval-zeroshot --dataset procedural:0 --samples N --batch-size {r['batch']}`, "
        "fresh processes, images/s of the image loop (procedural image generation, preprocessing, "
        "forward, scoring) from `--json`, median over rounds",
        "",
        "| model | SAE (d_in → d_sae, layer) | forward images/s plain | forward images/s spliced "
        "| overhead, back-to-back ratio | overhead, extra work | extra work, `--no-error-check` "
        "| SAE alone / plain forward | end-to-end images/s without SAE | with SAE |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        e2e = row.get("e2e")
        tail = f"| {e2e['without']:.1f} (N = {e2e['samples']}) | {e2e['with']:.1f} |" if e2e else "| — | — |"
        lines.append(
            f"| {row['model']} | {row['d_in']} → {row['d_sae']}, block {row['layer']} of 0..{row['blocks'] - 1} "
            f"| {row['plain']:.1f} | {row['spliced']:.1f} | {100 * row['overhead']:+.1f}% "
            f"| {100 * row['extra']:+.1f}% | {100 * row['extra_unchecked']:+.1f}% "
            f"| {100 * row['sae_fraction']:.1f}% " + tail
        )
    main = r["target_row"]
    ok = main["extra"] <= TARGET_OVERHEAD
    lines += [
        "",
        "- *Overhead, back-to-back ratio*: median over iterations of spliced / plain time, the two run "
        "back to back; on this shared machine it carries the load's noise. *Overhead, extra work*: "
        "what the spliced forward does beyond a plain forward, timed on its own in the same iterations: "
        "(`splice_residual` − one plain pass through the blocks after L) / plain forward; it "
        "includes the SAE, the token copies and the two extra passes after block L.",
        f"- Splice overhead ≤ {100 * TARGET_OVERHEAD:.0f}% (ViT-B/32, last block, CLS, {EXPANSION}×, k = {K}), "
        f"judged on the extra work: {'**PASS**' if ok else '**FAIL**'} ({100 * main['extra']:+.1f}%; "
        f"back-to-back ratio {100 * main['overhead']:+.1f}%; the SAE alone costs "
        f"{100 * main['sae_fraction']:.1f}% of a plain forward)",
        "- At an earlier block the spliced forward runs the remaining blocks three times (original, "
        "spliced, error-added), so its cost grows with the blocks after L, independently of the SAE; "
        "the block-5 row shows it. `eval-zeroshot --no-error-check` leaves out the error-added "
        "pass (and its sanity check): the *extra work, `--no-error-check`* column.",
        "- The end-to-end runs also check the error-added sanity path: with the SAE error added back "
        "the accuracy equalled plain CLIP's in every run.",
        END,
    ]
    return "\n".join(lines)


def write_results(section: str) -> None:
    write_section(BEGIN, END, section)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="libtorch and decoding threads")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    p.add_argument("--iters", type=int, default=4, help="timed forward iterations per round, ViT-B/32")
    p.add_argument("--iters-tiny", type=int, default=30, help="timed forward iterations per round, tiny model")
    p.add_argument("--batch", type=int, default=16, help="images per forward")
    p.add_argument("--samples-vit", type=int, default=64, help="end-to-end images, ViT-B/32")
    p.add_argument("--samples-tiny", type=int, default=480, help="end-to-end images, tiny model")
    p.add_argument("--seed", type=int, default=0, help="seed of the ViT-B/32 weights and the SAEs")
    p.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = p.parse_args()

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    if not BIN.is_file():
        raise SystemExit(f"{BIN} is missing: run `cargo build --release` (make bench-eval does)")
    make_vit(args.seed)
    make_tiny()
    exe = build_rust_bench()
    tiny_sae = WORK_DIR / "tiny-l2-cls.safetensors"
    vit_sae = WORK_DIR / "vit-b-32-l11-cls.safetensors"
    vit_sae5 = WORK_DIR / "vit-b-32-l5-cls.safetensors"
    make_sae(exe, TINY_DIR, 2, tiny_sae, args.seed)
    make_sae(exe, VIT_DIR, 11, vit_sae, args.seed)
    make_sae(exe, VIT_DIR, 5, vit_sae5, args.seed)

    configs = [
        ("tiny-quick (d = 64, 3 blocks)", TINY_DIR, tiny_sae, args.samples_tiny, args.iters_tiny),
        ("ViT-B/32 (random weights)", VIT_DIR, vit_sae, args.samples_vit, args.iters),
        ("ViT-B/32 (random weights)", VIT_DIR, vit_sae5, None, args.iters),
    ]
    load_before = os.getloadavg()
    fwd = {i: [] for i in range(len(configs))}
    e2e = {i: {"without": [], "with": []} for i in range(len(configs))}
    for r in range(args.rounds):
        for i, (name, model, sae, samples, iters) in enumerate(configs):
            log(f"round {r + 1}/{args.rounds}: forward, {name}, {sae.name}")
            fwd[i].append(run_forward(exe, model, sae, iters, args))
            if samples is None:
                continue
            order = ("without", "with") if r % 2 == 0 else ("with", "without")
            for which in order:
                log(f"round {r + 1}/{args.rounds}: eval-zeroshot {which} SAE, {name}")
                out = run_cli(model, sae if which == "with" else None, samples, args, f"{i}-{which}")
                if which == "with":
                    assert out["error_added"] == out["clip"], out
                e2e[i][which].append(out)
    load_after = os.getloadavg()

    rows = []
    for i, (name, model, sae, samples, iters) in enumerate(configs):
        runs = fwd[i]
        plain = [t for x in runs for t in x["plain_s"]]
        spliced = [t for x in runs for t in x["spliced_s"]]
        sae_s = [t for x in runs for t in x["sae_s"]]
        after = [t for x in runs for t in x["after_residual_s"]]
        unchecked = [t for x in runs for t in x["after_residual_unchecked_s"]]
        tail = [t for x in runs for t in x["tail_s"]]
        # Per-iteration ratios: plain and spliced ran back to back, so they share the load.
        ratios = [s / p for x in runs for p, s in zip(x["plain_s"], x["spliced_s"])]
        row = {
            "model": name, "d_in": runs[0]["d_in"], "d_sae": runs[0]["d_sae"], "layer": runs[0]["layer"],
            "blocks": runs[0]["blocks"], "plain": args.batch / med(plain), "spliced": args.batch / med(spliced),
            "overhead": med(ratios) - 1.0, "sae_fraction": med(sae_s) / med(plain), "iters": iters,
            "extra": (med(after) - med(tail)) / med(plain),
            "extra_unchecked": (med(unchecked) - med(tail)) / med(plain),
        }  # fmt: skip
        if samples is not None:
            row["e2e"] = {
                "samples": samples,
                "without": med([x["images_per_s"] for x in e2e[i]["without"]]),
                "with": med([x["images_per_s"] for x in e2e[i]["with"]]),
            }
        rows.append(row)
    result = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "load_before": " / ".join(f"{x:.2f}" for x in load_before),
        "load_after": " / ".join(f"{x:.2f}" for x in load_after),
        "rounds": args.rounds,
        "iters": args.iters,
        "iters_tiny": args.iters_tiny,
        "batch": args.batch,
        "rows": rows,
        "target_row": rows[1],
    }
    section = render(result)
    print(section)
    if not args.no_write:
        write_results(section)
        log(f"wrote the eval section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
