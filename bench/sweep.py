"""Benchmark a 4-member sweep against the same 4 configurations trained one after another.

One synthetic activation cache (`saeclip dev synthetic-cache`: sparse sums of random unit
atoms, f16 like an extracted cache) under target/bench/sweep-cache/; a 2x2 sweep
`sweep: {sae.k: [16, 32], training.lr: [2e-4, 4e-4]}` in one `saeclip train`, then the four
members as four separate `saeclip train` runs with the same keys set directly. Every run
reads the cache, splits it and initialises its SAE; the sweep does the read, the decode to
f32 and the shuffle once per batch for all four members.

Reports member-rows/s (training rows x epochs x members, over the wall time of the
process(es)) and train's own rows/s from summary.json (training steps only: data rows/s of
the pass for the sweep, so x4 member-rows), and the ratio sweep / separate. Writes the
section between `<!-- sweep -->` markers of bench/RESULTS.md.

Run through `make bench-sweep` (it builds the release binary first).
"""

import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

ROOT = common.ROOT
BIN = ROOT / "target/release/saeclip"
CACHE = ROOT / "target/bench/sweep-cache"
ROWS, D = 24576, 768
BASE = [
    f"data.cache={CACHE}",
    "data.val_fraction=0.05",
    "sae.d_sae=3072",
    "sae.k_aux=384",
    "training.batch_size=4096",
    "training.epochs=2",
    "training.lr_warmup_steps=2",
    "training.log_every=4",
]
SWEEP = {"sae.k": [16, 32], "training.lr": [2e-4, 4e-4]}


def train(sets: list[str], run_dir: Path) -> tuple[float, list[dict]]:
    """Run `saeclip train`; returns (wall seconds, the summaries it wrote)."""
    args = [str(BIN), "-q", "--device", "cpu", "train", "--config", "/dev/null"]
    for s in BASE + [f"output.run_dir={run_dir}"] + sets:
        args += ["--set", s]
    start = time.perf_counter()
    subprocess.run(args, check=True, env=common.rust_env(), stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if (run_dir / "sweep.json").exists():
        members = json.loads((run_dir / "sweep.json").read_text())["members"]
        dirs = [run_dir / m["run_dir"] for m in members]
    else:
        dirs = [run_dir]
    return wall, [json.loads((d / "summary.json").read_text()) for d in dirs]


def main() -> int:
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: run `make bench-sweep`")
    if not (CACHE / "manifest.json").exists():
        subprocess.run([str(BIN), "dev", "synthetic-cache", "--rows", str(ROWS), "--d", str(D),
                        "--dtype", "f16", "--out", str(CACHE)], check=True, env=common.rust_env())
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    keys = list(SWEEP)
    combos = [(a, b) for a in SWEEP[keys[0]] for b in SWEEP[keys[1]]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sweep_sets = [f"sweep.{k}={json.dumps(v)}" for k, v in SWEEP.items()]
        sweep_wall, sweep_summaries = train(sweep_sets, tmp / "sweep")
        solo = [train([f"{keys[0]}={a}", f"{keys[1]}={b}"], tmp / f"solo{i}")
                for i, (a, b) in enumerate(combos)]
    load_after = os.getloadavg()
    n = len(combos)
    train_rows = ROWS - math.ceil(ROWS * 0.05)  # one row per image; 5% of images held out
    epochs = sweep_summaries[0]["epochs"]
    member_rows = n * train_rows * epochs
    solo_wall = sum(w for w, _ in solo)
    sweep_rate = member_rows / sweep_wall
    solo_rate = member_rows / solo_wall
    sweep_step_rate = n * sweep_summaries[0]["rows_per_s"]
    solo_step_rate = n / sum(1.0 / s[0]["rows_per_s"] for _, s in solo)
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "<!-- sweep -->",
        "## Sweep: 4 SAEs in one pass vs 4 separate runs (CPU)",
        "",
        "- Command: `make bench-sweep` (runs `bench/sweep.py`)",
        f"- Date: {date}; {common.cpu_model()}, {cores} CPU cores; load average (1/5/15 min) "
        f"{' / '.join(f'{v:.2f}' for v in load_before)} before, "
        f"{' / '.join(f'{v:.2f}' for v in load_after)} after",
        f"- Workload: synthetic f16 cache of {ROWS} rows x {D}; topk SAE {D}→3072, batch 4096, "
        f"{epochs} epochs; sweep `sae.k: [16, 32]` x `training.lr: [2e-4, 4e-4]`",
        "- member-rows/s: training rows x epochs x 4 members over the wall time of the "
        "process(es) (start-up, cache read, initialisation, validation, checkpoints "
        "included); steps only: train's own rows/s (summary.json) x4 for the sweep, the "
        "harmonic mean of the 4 runs' for the separate runs",
        "",
        "| | wall s | member-rows/s | member-rows/s (steps only) |",
        "|---|---:|---:|---:|",
        f"| sweep (1 process) | {sweep_wall:.1f} | {sweep_rate:.0f} | {sweep_step_rate:.0f} |",
        f"| 4 separate runs | {solo_wall:.1f} | {solo_rate:.0f} | {solo_step_rate:.0f} |",
        f"| ratio sweep / separate | | **{sweep_rate / solo_rate:.2f}x** | "
        f"**{sweep_step_rate / solo_step_rate:.2f}x** |",
        "",
        "On a CPU the SAE steps dominate and are not shared, so the gain is the data pass, "
        "the decode and the per-run set-up; on a GPU, where a step is cheap next to reading "
        "and moving the batch, the shared pass is where the sweep pays.",
        "<!-- /sweep -->",
    ]
    section = "\n".join(lines)
    common.write_section("<!-- sweep -->", "<!-- /sweep -->", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
