"""How saeclip's training defaults were chosen: a sweep on activations with a known dictionary.

`make bench-defaults` (also run by `make bench-train`) writes ground-truth data of several
sizes with benches/train_ground_truth.rs (d-dimensional rows, each a sum of `active` of
`atoms` seeded unit atoms with Exp(1) magnitudes plus N(0, 0.01²) noise; a held-out set of
8,192 rows), then for each size and step budget trains

- saeclip (`saeclip::sae::train::train` through the bench's `train` command) once per
  candidate setting of the keys the defaults fix (learning-rate schedule, end fraction and
  peak, warm-up, gradient clip, AuxK, dead window), each row naming every such key, plus
  one run with nothing set: the defaults as shipped;
- a plain PyTorch top-k trainer (`plain_topk` below: what a user writes in an afternoon —
  the same init, Adam at a constant learning rate, MSE, decoder rows renormalised after each
  step) at three learning rates;

all on the same rows with the same batch size, width, k and number of steps, and evaluates
every SAE with bench/train.py's `evaluate` on the held-out rows: MMCS (mean over the true
atoms of the best cosine with a decoder row), explained variance, dead fraction. It
rewrites the `<!-- defaults -->` section of bench/RESULTS.md. The run with nothing set must
match or beat the best plain trainer's MMCS on every size and budget; the script says so
and exits 0 either way (a benchmark measures, it does not gate).

It also times topk against batchtopk in `train` (rows/s of the training steps) at the
small size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import train as gt  # bench/train.py: data, saeclip runs, evaluation
from common import ROOT, cpu_model, rust_env, write_section

BENCH_DIR = ROOT / "target" / "bench" / "defaults"
BEGIN, END = "<!-- defaults -->", "<!-- /defaults -->"
HELDOUT, NOISE, SEED = 8192, 0.01, 0

# Sizes: data (d, atoms, active, training rows) and SAE (d_sae, k) with a batch size; each
# is trained for every budget in `steps` (several passes over the rows).
SIZES = [
    {"name": "small", "d": 64, "atoms": 256, "active": 4, "rows": 131_072, "d_sae": 512, "k": 4,
     "batch": 1024, "steps": [500, 1500]},
    {"name": "medium", "d": 128, "atoms": 512, "active": 8, "rows": 262_144, "d_sae": 1024,
     "k": 8, "batch": 1024, "steps": [1500]},
]  # fmt: skip

# Candidate settings: every key the defaults fix, named in every row.
BASE = {
    "training.lr": 4e-4,
    "training.lr_schedule": "cosine",
    "training.lr_end_fraction": 0.1,
    "training.lr_warmup_steps": 100,
    "training.grad_clip": 1.0,
    "sae.aux_coef": 0.03125,
    "training.dead_window": 1_000_000,
}
CANDIDATES = [
    ("cosine → 0, lr 2e-4 (the defaults before this sweep)",
     {"training.lr": 2e-4, "training.lr_end_fraction": 0.0}),
    ("constant, lr 2e-4", {"training.lr": 2e-4, "training.lr_schedule": "constant"}),
    ("cosine → 0.1, lr 2e-4", {"training.lr": 2e-4}),
    ("cosine → 0.1, lr 4e-4", {}),
    ("cosine → 0.1, lr 8e-4", {"training.lr": 8e-4}),
    ("constant, lr 4e-4", {"training.lr_schedule": "constant"}),
    ("constant, lr 8e-4", {"training.lr": 8e-4, "training.lr_schedule": "constant"}),
    ("linear → 0.1, lr 4e-4", {"training.lr_schedule": "linear"}),
    ("cosine → 0.1, lr 4e-4, no warm-up", {"training.lr_warmup_steps": 0}),
    ("cosine → 0.1, lr 4e-4, no clipping", {"training.grad_clip": 0.0}),
    ("cosine → 0.1, lr 4e-4, no AuxK", {"sae.aux_coef": 0.0}),
    ("cosine → 0.1, lr 4e-4, dead window 8 batches", {"training.dead_window": 8192}),
]  # fmt: skip
PLAIN_LRS = [2e-4, 4e-4, 8e-4]
SHIPPED = "saeclip defaults as shipped (nothing set)"


def log(msg: str) -> None:
    print(f"[bench-defaults] {msg}", file=sys.stderr, flush=True)


def make_data(exe: Path, size: dict) -> Path:
    out = BENCH_DIR / f"data-{size['name']}"
    report, _ = gt.run_json(
        [
            str(exe), "data", "--out", str(out), "--rows", str(size["rows"]), "--heldout", str(HELDOUT),
            "--d", str(size["d"]), "--atoms", str(size["atoms"]), "--active", str(size["active"]),
            "--noise", str(NOISE), "--seed", str(gt.DATA_SEED),
        ],
        env=rust_env(),
    )  # fmt: skip
    log(("reused" if report["reused"] else f"wrote ({report['seconds']:.0f} s)") + f" {out}")
    return out


def run_saeclip(exe: Path, data: Path, size: dict, steps: int, sets: dict, name: str, threads: int) -> dict:
    fixed = [
        "data.val_fraction=0", f"sae.d_sae={size['d_sae']}", f"sae.k={size['k']}",
        f"training.batch_size={size['batch']}", f"training.steps={steps}", f"training.seed={SEED}",
        "training.log_every=50",
    ]  # fmt: skip
    cmd = [str(exe), "train", "--cache", str(data / "cache"), "--run-dir", str(BENCH_DIR / "runs" / name),
           "--threads", str(threads), "--skip-steps", "50"]  # fmt: skip
    for s in fixed + [f"{k}={v}" for k, v in sets.items()]:
        cmd += ["--set", s]
    env = rust_env()
    env["RAYON_NUM_THREADS"] = str(threads)
    report, _ = gt.run_json(cmd, env=env)
    return report


def epoch_seed(seed: int, epoch: int) -> int:
    """src/sae/batches.rs `epoch_seed`: the seed of an epoch's shuffle in memory."""
    return seed * 1_000_003 + epoch + 1


def initial_sae(exe: Path, data: Path, size: dict, seed: int, threads: int) -> Path:
    """saeclip's initial SAE for `seed` (unit random decoder rows, W_enc = W_decᵀ, b_enc = 0,
    b_dec = the sample mean, saeclip's input scale): 100 steps (the bench times from step 50
    on) at a rate of 1e-30, whose updates are lost in rounding (b_enc, which starts at 0,
    moves by about 1e-28)."""
    name = f"init-{size['name']}-s{seed}"
    rep = run_saeclip(exe, data, size, 100, {"training.seed": seed, "training.lr": 1e-30}, name, threads)
    return Path(rep["checkpoint"])


@torch.no_grad()
def plain_topk(exe: Path, data: Path, size: dict, steps: int, lr: float, out: Path, threads: int,
               seed: int = SEED, project: bool = False) -> dict:  # fmt: skip
    """A plain PyTorch top-k SAE trainer, paired with saeclip's run of the same seed: it
    starts from saeclip's initial SAE (`initial_sae`: the same init recipe and the same
    draws) and reads saeclip's batches (the in-memory path's per-epoch permutations, drawn
    from libtorch's generator with saeclip's epoch seeds), so that the two differ in their
    update rule alone; then `plain_steps`."""
    torch.set_num_threads(threads)
    from safetensors import safe_open

    init = initial_sae(exe, data, size, seed, threads)
    with safe_open(str(data / "data.safetensors"), framework="pt") as f:
        rows = f.get_tensor("train")
    with safe_open(str(init), framework="pt") as f:
        scale = json.loads(f.metadata()["saeclip"])["input_scale"]
        params = {k: f.get_tensor(k).clone().requires_grad_() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    n, batch = rows.shape[0], size["batch"]

    def batches():
        epoch = 0
        while True:
            torch.manual_seed(epoch_seed(seed, epoch))
            order = torch.randperm(n)
            for start in range(0, n, batch):
                yield order[start : start + batch]
            epoch += 1

    started = time.perf_counter()
    plain_steps(params, rows, scale, size["k"], batches(), steps, lr, project)
    seconds = time.perf_counter() - started
    save_plain(params, scale, size["k"], out)
    return {"checkpoint": str(out), "rows_per_s": steps * batch / seconds}


def plain_steps(params: dict, rows, scale: float, k: int, batches, steps: int, lr: float, project: bool) -> None:
    """`steps` plain updates of `params` (W_enc, b_enc, W_dec, b_dec) on the rows indexed by
    each of `batches` times `scale`: z = TopK(ReLU((x − b_dec)·W_enc + b_enc)), MSE, Adam at
    a constant rate, decoder rows renormalised. `project`: remove from each decoder row's
    gradient its component along the row before the step (as saeclip and OpenAI's trainer do)."""
    opt = torch.optim.Adam(params.values(), lr=lr)
    for _, index in zip(range(steps), batches):
        x = rows[index] * scale
        with torch.enable_grad():
            pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
            v, i = pre.topk(k, dim=1)
            z = torch.zeros_like(pre).scatter(1, i, v.relu())
            loss = (z @ params["W_dec"] + params["b_dec"] - x).square().mean()
            opt.zero_grad()
            loss.backward()
        if project:
            w, g = params["W_dec"].detach(), params["W_dec"].grad
            g -= (g * w).sum(1, keepdim=True) * w
        opt.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True)


def save_plain(params: dict, scale: float, k: int, out: Path) -> None:
    """A plain trainer's SAE as a saeclip checkpoint."""
    d_sae, d = params["W_dec"].shape
    meta = {"saeclip": json.dumps({"version": 1, "architecture": "topk", "k": k, "d_in": d,
                                   "d_sae": d_sae, "input_scale": scale})}  # fmt: skip
    save_file({name: p.detach().contiguous() for name, p in params.items()}, str(out), metadata=meta)


def section(r: dict) -> str:
    lines = [
        BEGIN,
        "## Training defaults, chosen on ground-truth data",
        "",
        f"Measured {r['date']} with `{r['command']}` on {r['cpu']} ({r['cores']} cores, {r['threads']} "
        f"threads per run, runs one after the other), saeclip {r['commit']}. Data: rows = Σ of `active` "
        f"of `atoms` seeded unit atoms with Exp(1) magnitudes + N(0, {NOISE}²) noise; SAEs evaluated "
        f"on {HELDOUT:,} held-out rows by bench/train.py `evaluate` (MMCS = mean over the true atoms of "
        "the best cosine with a decoder row; evr; dead = never fires on the held-out rows). Every "
        "saeclip row names the keys it sets on top of the size's `sae.d_sae`, `sae.k`, "
        "`training.batch_size`, `training.steps`; all other keys are the defaults. The plain "
        "trainer is bench/defaults.py `plain_topk` (constant learning rate, MSE, decoder rows "
        "renormalised), paired with saeclip's run of the same seed: it starts from saeclip's initial "
        "SAE and reads saeclip's batches, so the two differ in their update rule alone."
        + (f" The shipped-defaults rows and the plain rows at the shipped rate were re-measured {r['shipped_date']} "
           f"(saeclip {r['shipped_commit']}), after the defaults were set from the other rows." if r.get("shipped_date") else ""),
        "",
    ]
    for block in r["blocks"]:
        s = block["size"]
        lines += [
            f"### {s['name']}: d = {s['d']}, {s['atoms']:,} atoms, {s['active']} active, "
            f"{s['rows']:,} rows; SAE {s['d_sae']:,} wide, k = {s['k']}, batch {s['batch']:,}, "
            f"{block['steps']:,} steps",
            "",
            "| trainer and settings | MMCS | held-out evr | dead | rows/s |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in block["rows"]:
            e = row["eval"]
            lines.append(
                f"| {row['name']} | {e['mmcs']:.4f} | {e['evr']:.4f} | {e['dead_frac']:.4f} | {row['rows_per_s']:,.0f} |"
            )
        shipped = next(x for x in block["rows"] if x["name"] == SHIPPED)
        plains = [x for x in block["rows"] if x["name"].startswith("plain")]
        best = max(plains, key=lambda x: x["eval"]["mmcs"])
        lr = block.get("shipped_lr", auto_lr(s["d_sae"]))
        same = next((x for x in plains if x["name"].endswith(f"lr {lr:.3g}")), None)
        lines.append("")
        for what, plain in [("at the shipped rate", same), ("best of the plain rates", best)]:
            if plain is None:
                continue
            ok = shipped["eval"]["mmcs"] >= plain["eval"]["mmcs"]
            lines.append(
                f"- shipped defaults (lr {lr:.3g}) vs the plain trainer {what} ({plain['name']}): MMCS "
                f"{shipped['eval']['mmcs']:.4f} vs {plain['eval']['mmcs']:.4f}: "
                + ("**at least as good**" if ok else "**worse**")
            )
        if block.get("seed_check"):
            c = block["seed_check"]
            mean = lambda v: sum(v) / len(v)  # noqa: E731
            ok = mean(c["shipped"]) >= mean(c["plain"])
            lines.append(
                f"- over seeds {', '.join(map(str, c['seeds']))} (init, sample, batch order): shipped MMCS "
                f"{', '.join(f'{v:.4f}' for v in c['shipped'])} (mean {mean(c['shipped']):.4f}), plain at the "
                f"shipped rate {', '.join(f'{v:.4f}' for v in c['plain'])} (mean {mean(c['plain']):.4f}): "
                + ("**at least as good on average**" if ok else "**worse on average**")
            )
        lines.append("")
    for key, when in [("architectures", "in the full sweep"), ("architectures_after", "re-measured")]:
        if r.get(key):
            a = r[key]
            lines += [
                f"topk against batchtopk in `train`, {when}{a.get('note', '')} (small size, {a['steps']} steps): "
                f"topk {a['topk']:,.0f} rows/s, batchtopk {a['batchtopk']:,.0f} rows/s, ratio "
                f"{a['topk'] / a['batchtopk']:.2f}.",
                "",
            ]
    lines.append(END)
    return "\n".join(lines)


def publish(report: dict, args) -> int:
    """Save the report, print its RESULTS.md section and, unless --no-write, write it there."""
    (BENCH_DIR / "report.json").write_text(json.dumps(report, indent=2, default=str))
    text = section(report)
    print(text)
    if not args.no_write:
        write_section(BEGIN, END, text)
        log("wrote bench/RESULTS.md")
    return 0


def plain_name(lr: float) -> str:
    """The table row name of the plain trainer at rate `lr`."""
    return f"plain PyTorch top-k, constant lr {lr:.3g}"


def heldout_and_atoms(data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out rows and the true atoms of a data folder."""
    from safetensors import safe_open

    with safe_open(str(data / "data.safetensors"), framework="pt") as f:
        return f.get_tensor("heldout"), f.get_tensor("atoms")


def auto_lr(d_sae: int) -> float:
    """`training.lr: auto` (src/sae/config.rs)."""
    return 2e-4 * (16_384 / d_sae) ** 0.5


def plain_row(exe: Path, data: Path, size: dict, steps: int, lr: float, tag: str, threads: int, heldout, atoms) -> dict:
    out = BENCH_DIR / "runs" / f"{tag}-plain-{lr:g}.safetensors"
    rep = plain_topk(exe, data, size, steps, lr, out, threads)
    e = gt.evaluate(out, heldout, atoms)
    log(f"{tag} plain {lr:g}: mmcs {e['mmcs']:.4f} evr {e['evr']:.4f}")
    return {"name": plain_name(lr), "eval": e, "rows_per_s": rep["rows_per_s"]}


def seed_check(args) -> int:
    """The shipped defaults and the plain trainer at the shipped rate again with other seeds
    (initialisation, sample and batch order): how much of a difference is noise."""
    report = json.loads((BENCH_DIR / "report.json").read_text())
    exe = gt.build_rust_bench()
    seeds = [int(x) for x in args.seed_check.split(",")]
    for block in report["blocks"]:
        size, steps = block["size"], block["steps"]
        data = make_data(exe, size)
        heldout, atoms = heldout_and_atoms(data)
        tag, lr = f"{size['name']}-{steps}", auto_lr(size["d_sae"])
        shipped = next(r for r in block["rows"] if r["name"] == SHIPPED)["eval"]["mmcs"]
        plain = next(r for r in block["rows"] if r["name"] == plain_name(lr))["eval"]["mmcs"]
        check = {"seeds": [SEED] + seeds, "shipped": [shipped], "plain": [plain]}
        for seed in seeds:
            rep = run_saeclip(exe, data, size, steps, {"training.seed": seed}, f"{tag}-seed{seed}", args.threads)
            check["shipped"].append(gt.evaluate(Path(rep["checkpoint"]), heldout, atoms)["mmcs"])
            out = BENCH_DIR / "runs" / f"{tag}-plain-seed{seed}.safetensors"
            plain_topk(exe, data, size, steps, lr, out, args.threads, seed)
            check["plain"].append(gt.evaluate(out, heldout, atoms)["mmcs"])
            log(f"{tag} seed {seed}: shipped {check['shipped'][-1]:.4f} plain {check['plain'][-1]:.4f}")
        block["seed_check"] = check
    return publish(report, args)


def update_shipped(args) -> int:
    """The shipped row and the plain trainer at the shipped rate, into the last full sweep."""
    report = json.loads((BENCH_DIR / "report.json").read_text())
    exe = gt.build_rust_bench()
    for block in report["blocks"]:
        size, steps = block["size"], block["steps"]
        data = make_data(exe, size)
        heldout, atoms = heldout_and_atoms(data)
        tag = f"{size['name']}-{steps}"
        rep = run_saeclip(exe, data, size, steps, {}, f"{tag}-shipped", args.threads)
        e = gt.evaluate(Path(rep["checkpoint"]), heldout, atoms)
        log(f"{tag} shipped: mmcs {e['mmcs']:.4f} evr {e['evr']:.4f} dead {e['dead_frac']:.4f}")
        rows = [r for r in block["rows"] if r["name"] != SHIPPED]
        rows.insert(0, {"name": SHIPPED, "eval": e, "rows_per_s": rep["summary"]["rows_per_s"]})
        lr = auto_lr(size["d_sae"])
        if not any(r["name"] == plain_name(lr) for r in rows):
            rows.append(plain_row(exe, data, size, steps, lr, tag, args.threads, heldout, atoms))
        block["rows"] = rows
        block["shipped_lr"] = lr
    report["shipped_commit"] = gt.git_commit()
    report["shipped_date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return publish(report, args)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", default=",".join(s["name"] for s in SIZES))
    p.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    p.add_argument("--update-shipped", action="store_true",
                   help="rerun only the shipped-defaults row and the plain trainer at the defaults' rate, "
                        "keeping the candidate rows of the last full sweep (target/bench/defaults/report.json)")
    p.add_argument("--seed-check", default="", metavar="S,S",
                   help="rerun the shipped defaults and the plain trainer at the shipped rate with these seeds")
    args = p.parse_args()
    if args.seed_check:
        return seed_check(args)
    if args.update_shipped:
        return update_shipped(args)
    started = time.perf_counter()
    exe = gt.build_rust_bench()
    (BENCH_DIR / "runs").mkdir(parents=True, exist_ok=True)
    blocks = []
    architectures = None
    for size in SIZES:
        if size["name"] not in args.sizes.split(","):
            continue
        data = make_data(exe, size)
        heldout, atoms = heldout_and_atoms(data)
        for steps in size["steps"]:
            tag = f"{size['name']}-{steps}"
            rows = []
            runs = [(SHIPPED, None)] + [(name, {**BASE, **change}) for name, change in CANDIDATES]
            for i, (name, sets) in enumerate(runs):
                shown = SHIPPED if sets is None else name + ": " + ", ".join(f"`{k}={v}`" for k, v in sets.items())
                rep = run_saeclip(exe, data, size, steps, sets or {}, f"{tag}-{i}", args.threads)
                e = gt.evaluate(Path(rep["checkpoint"]), heldout, atoms)
                rows.append({"name": shown, "eval": e,
                             "rows_per_s": rep["summary"]["rows_per_s"]})  # fmt: skip
                log(f"{tag} {name}: mmcs {e['mmcs']:.4f} evr {e['evr']:.4f} dead {e['dead_frac']:.4f}")
            for lr in sorted({f"{r:.3g}": r for r in PLAIN_LRS + [auto_lr(size["d_sae"])]}.values()):
                rows.append(plain_row(exe, data, size, steps, lr, tag, args.threads, heldout, atoms))
            blocks.append({"size": size, "steps": steps, "rows": rows})
        if size["name"] == "small":
            steps = size["steps"][-1]
            rate = {}
            for arch in ["topk", "batchtopk"]:
                rep = run_saeclip(exe, data, size, steps, {"sae.architecture": arch}, f"arch-{arch}", args.threads)
                rate[arch] = rep["summary"]["rows_per_s"]
            architectures = {"steps": steps, **rate}
            log(f"topk {rate['topk']:.0f} rows/s, batchtopk {rate['batchtopk']:.0f} rows/s")
    report = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench-defaults",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "commit": gt.git_commit(),
        "blocks": blocks,
        "architectures": architectures,
        "seconds": time.perf_counter() - started,
    }
    return publish(report, args)


if __name__ == "__main__":
    sys.exit(main())
