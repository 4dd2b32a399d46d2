"""Where the last gaps between the shipped defaults and the plain trainer come from (issue 12).

`main` re-runs the medium size with one default changed at a time (no clipping, AuxK off or
stronger, a short dead window, twice the learning rate) over seeds 0-2, adds seeds 3 and 4
for the shipped defaults and the plain trainer, and runs the small size at twice the rate.
`--variant` runs one change over chosen sizes and seeds; `--paired` puts saeclip, the plain
trainer and the plain trainer with saeclip's decoder-gradient projection side by side. It
prints one line per run; bench/RESULTS.md's hand-written defaults sections quote it.

    .venv/bin/python bench/defaults_gap.py            # about 40 minutes on 2 busy cores
    .venv/bin/python bench/defaults_gap.py --variant --set training.adam_eps=1e-12   # one variant, seeds 0-4
    .venv/bin/python bench/defaults_gap.py --paired --sizes medium-1500 --seeds 0,1,2

The plain trainer (bench/defaults.py `plain_topk`) is paired with saeclip's run of the same
seed: it starts from saeclip's own initial SAE and reads saeclip's own batches, so the two
differ in their update rule alone. (Before 2026-12-06 it drew its own initialisation and
batch order; the sections measured then say which they used.)
"""

from pathlib import Path

import defaults as D

gt = D.gt
STEPS = 1500


def main() -> None:
    exe = gt.build_rust_bench()
    sizes = {s["name"]: s for s in D.SIZES}
    medium = sizes["medium"]
    data = D.make_data(exe, medium)
    heldout, atoms = D.heldout_and_atoms(data)
    lr = D.auto_lr(medium["d_sae"])

    def saeclip(size, data, heldout, atoms, sets, tag):
        rep = D.run_saeclip(exe, data, size, STEPS, sets, f"gap-{tag}", 1)
        return gt.evaluate(Path(rep["checkpoint"]), heldout, atoms)["mmcs"]

    def plain(size, data, heldout, atoms, rate, seed, tag):
        out = D.BENCH_DIR / "runs" / f"gap-plain-{tag}.safetensors"
        D.plain_topk(exe, data, size, STEPS, rate, out, 1, seed)
        return gt.evaluate(out, heldout, atoms)["mmcs"]

    variants = {
        "no clipping": {"training.grad_clip": 0.0},
        "aux_coef 0": {"sae.aux_coef": 0.0},
        "aux_coef 0.125": {"sae.aux_coef": 0.125},
        "dead_window 65536": {"training.dead_window": 65536},
    }
    for name, sets in variants.items():
        for seed in (0, 1, 2):
            tag = f"medium-{name.replace(' ', '')}-s{seed}"
            print(f"medium {name} seed {seed}: {saeclip(medium, data, heldout, atoms, {**sets, 'training.seed': seed}, tag):.4f}", flush=True)  # fmt: skip
    for seed in (3, 4):
        print(f"medium shipped seed {seed}: {saeclip(medium, data, heldout, atoms, {'training.seed': seed}, f'medium-s{seed}'):.4f}", flush=True)  # fmt: skip
        print(f"medium plain lr {lr:.5f} seed {seed}: {plain(medium, data, heldout, atoms, lr, seed, f'medium-s{seed}'):.4f}", flush=True)  # fmt: skip
    for name in ("medium", "small"):
        size = sizes[name]
        d = D.make_data(exe, size)
        h, a = D.heldout_and_atoms(d)
        rate = 2 * D.auto_lr(size["d_sae"])
        for seed in (0, 1, 2):
            mine = saeclip(size, d, h, a, {"training.seed": seed, "training.lr": rate}, f"{name}-lr2-s{seed}")
            theirs = plain(size, d, h, a, rate, seed, f"{name}-lr2-s{seed}")
            print(f"{name} lr {rate:.5f} seed {seed}: shipped-but-lr {mine:.4f} plain {theirs:.4f}", flush=True)


def variant(args) -> None:
    """One variant (`--set key=value ...`) against the plain trainer over seeds, per size:
    the plain trainer's MMCS at the shipped rate is read from the last `make bench-defaults`
    report where its seed check has it, and trained here otherwise."""
    import json

    exe = gt.build_rust_bench()
    report = json.loads((D.BENCH_DIR / "report.json").read_text())
    sizes = {s["name"]: s for s in D.SIZES}
    sets = dict(kv.split("=", 1) for kv in args.set)
    label = ",".join(args.set) or "shipped"
    for tag in args.sizes.split(","):
        name, steps = tag.split("-")
        size, steps = sizes[name], int(steps)
        data = D.make_data(exe, size)
        heldout, atoms = D.heldout_and_atoms(data)
        block = next(b for b in report["blocks"] if b["size"]["name"] == name and b["steps"] == steps)
        known = dict(zip(block["seed_check"]["seeds"], block["seed_check"]["plain"]))
        cache = D.BENCH_DIR / f"gap-paired-plain-{tag}.json"  # plain MMCS of seeds trained here before
        if cache.exists():
            known.update({int(k): v for k, v in json.loads(cache.read_text()).items()})
        mine, theirs = [], []
        for seed in [int(x) for x in args.seeds.split(",")]:
            if args.plain_projection:
                out = D.BENCH_DIR / "runs" / f"gap-plain-projection-{tag}-s{seed}.safetensors"
                D.plain_topk(exe, data, size, steps, D.auto_lr(size["d_sae"]), out, 1, seed, project=True)
                mmcs = gt.evaluate(out, heldout, atoms)["mmcs"]
                print(f"{tag} plain with the decoder-gradient projection seed {seed}: {mmcs:.4f}", flush=True)
                continue
            run = f"gap-{tag}-{label.replace('=', '').replace('.', '_')}-s{seed}"
            rep = D.run_saeclip(exe, data, size, steps, {**sets, "training.seed": seed}, run, 1)
            mine.append(gt.evaluate(Path(rep["checkpoint"]), heldout, atoms)["mmcs"])
            if seed not in known:
                out = D.BENCH_DIR / "runs" / f"gap-plain-{tag}-s{seed}.safetensors"
                D.plain_topk(exe, data, size, steps, D.auto_lr(size["d_sae"]), out, 1, seed)
                known[seed] = gt.evaluate(out, heldout, atoms)["mmcs"]
                cache.write_text(json.dumps(known))
            theirs.append(known[seed])
            print(f"{tag} {label} seed {seed}: saeclip {mine[-1]:.4f} plain {theirs[-1]:.4f}", flush=True)
        if args.plain_projection:
            continue
        print(f"{tag} {label} mean: saeclip {sum(mine) / len(mine):.4f} plain {sum(theirs) / len(theirs):.4f}", flush=True)


def paired(args) -> None:
    """saeclip against the plain trainer on the same initial SAE and the same batches (the
    plain trainer without and with the decoder-gradient projection), per seed."""
    exe = gt.build_rust_bench()
    sizes = {s["name"]: s for s in D.SIZES}
    for tag in args.sizes.split(","):
        name, steps = tag.split("-")
        size, steps = sizes[name], int(steps)
        data = D.make_data(exe, size)
        heldout, atoms = D.heldout_and_atoms(data)
        lr = D.auto_lr(size["d_sae"])
        for seed in [int(x) for x in args.seeds.split(",")]:
            mine = D.run_saeclip(exe, data, size, steps, {"training.seed": seed}, f"paired-{tag}-s{seed}", 1)
            line = f"{tag} seed {seed}: saeclip {gt.evaluate(Path(mine['checkpoint']), heldout, atoms)['mmcs']:.4f}"
            for project in (False, True):
                out = D.BENCH_DIR / "runs" / f"paired-plain-{tag}-s{seed}-{int(project)}.safetensors"
                D.plain_topk(exe, data, size, steps, lr, out, 1, seed, project)
                line += f" plain{'+projection' if project else ''} {gt.evaluate(out, heldout, atoms)['mmcs']:.4f}"
            print(line, flush=True)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="the defaults' gap to the plain trainer")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE on top of the shipped defaults (variant mode)")
    p.add_argument("--sizes", default="medium-1500", help="variant mode: SIZE-STEPS,...")
    p.add_argument("--seeds", default="0,1,2,3,4", help="variant mode: seeds")
    p.add_argument("--variant", action="store_true", help="run one variant over seeds instead of the fixed list")
    p.add_argument("--plain-projection", action="store_true",
                   help="variant mode: train the plain trainer with saeclip's decoder-gradient projection instead")  # fmt: skip
    p.add_argument("--paired", action="store_true",
                   help="saeclip vs the plain trainer from saeclip's initial SAE on saeclip's batches")  # fmt: skip
    a = p.parse_args()
    paired(a) if a.paired else variant(a) if a.variant else main()
