"""saeclip's jumprelu and matryoshka SAEs against sae-lens's on activations with a known dictionary.

`make bench-train` runs this after bench/train.py (`make bench-architectures` alone), with the
project's .venv (sae-lens is pinned there). It uses the small ground-truth data of
`make bench-defaults` (target/bench/defaults/data-small: d = 64, 256 seeded unit atoms, 4
distinct atoms per row with Exp(1) magnitudes, N(0, 0.01²) noise, 131,072 training rows as a
saeclip cache and 8,192 held-out rows), a reduced budget that a loaded 2-core machine can
run, and trains one after the other with the same threads:

- jumprelu, width F, L0 penalty λ, bandwidth ε, initial θ, same batches: saeclip's `train`
  (`sae.architecture=jumprelu`, θ trained as saeclip's default `sae.jumprelu_threshold_param`
  or `--threshold-param`, decoder rows kept at unit norm) and sae-lens's
  `JumpReLUTrainingSAE.training_forward_pass` in a plain Adam loop (threshold parameter
  clamped at 0, free decoder, `decoder_init_norm=1`); sae-lens's loss sums the squared error
  over d, saeclip divides its mean by σ², so sae-lens gets λ·d·σ² (the same objective up to
  one factor, to which Adam is invariant);
- matryoshka with batch top-k, widths W, k, equal weights, no AuxK: saeclip's `train`
  (`sae.architecture=matryoshka`, decoder rows at unit norm, and with
  `sae.matryoshka_decoder_norm=free`) and sae-lens's `MatryoshkaBatchTopKTrainingSAE`
  (`rescale_acts_by_decoder_norm=false`, free rows like saeclip's `free`, and `true`, its
  default; `decoder_init_norm=1`, `aux_loss_coefficient=0`); `--only matryoshka` runs these
  and the narrow SAE alone and prints the table without writing it;
- a narrow saeclip batchtopk SAE of width W[0] trained alone, against which the matryoshka
  SAEs' first prefix alone is compared (the feature absorption matryoshka is meant to reduce
  shows as a gap between the two).

Every run sees the rows in saeclip's epoch-0 order and saeclip's input scale (bench/
train_peers.py's helpers); steps/s counts the steps after the first 5. One function here
evaluates every checkpoint on the held-out rows: z = pre·[pre > θ_j] with pre the
pre-activations and θ_j each latent's threshold (jumprelu: learned; batch top-k: the
inference threshold for every latent), x̂ = z·W_dec + b_dec; evr, l0, dead (never fires),
MMCS (mean over the atoms of the best cosine with a decoder row), and for matryoshka the evr
of the first prefix alone (codes of later latents dropped). Writes the `<!-- architectures -->`
section of bench/RESULTS.md. `--only jumprelu` prints the two jumprelu rows alone;
`--l0-sweep λ,… --sweep-peers …` trains jumprelu at each λ with each peer (saeclip with either
threshold parameter, sae-lens as it is or with saeclip's decoder constraint and init) and
prints a table of evr and MMCS against L0; with `--write-sweep` it replaces the
`<!-- jumprelu_sweep -->` section, which is assembled by hand from several such runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, cpu_model, rust_env, write_section  # noqa: E402
from train_peers import epoch_order, geometric_median, init_sample, input_scale  # noqa: E402

DATA = ROOT / "target" / "bench" / "defaults" / "data-small"
OUT = ROOT / "target" / "bench" / "architectures"
BEGIN, END = "<!-- architectures -->", "<!-- /architectures -->"
SKIP = 5


def log(msg: str) -> None:
    print(f"[bench-architectures] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# saeclip


def saeclip_run(name: str, args, sets: list[str]) -> dict:
    run_dir = OUT / name
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    empty = OUT / "empty.yaml"
    empty.write_text("{}\n")
    cmd = [str(ROOT / "target" / "release" / "saeclip"), "--threads", str(args.threads), "train",
           "--config", str(empty)]  # fmt: skip
    base = [
        f"data.cache={DATA / 'cache'}", "data.val_fraction=0", f"output.run_dir={run_dir}",
        f"output.checkpoints_dir={OUT / 'published'}", f"sae.d_sae={args.width}", f"sae.k={args.k}",
        "sae.aux_coef=0", f"training.batch_size={args.batch}", f"training.steps={args.steps}",
        f"training.lr={args.lr}", "training.lr_schedule=constant", "training.lr_warmup_steps=0",
        "training.grad_clip=0", "training.seed=0", "training.log_every=1", "sae.b_dec_init=geometric_median",
    ]  # fmt: skip
    for s in base + sets:
        cmd += ["--set", s]
    log(" ".join(cmd))
    env = rust_env()
    env["RAYON_NUM_THREADS"] = str(args.threads)
    before = os.getloadavg()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    after = os.getloadavg()
    steps = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [l["time"] for l in steps if l["type"] == "step"]
    ckpt = run_dir / "checkpoints" / "last.safetensors"
    with safe_open(str(ckpt), framework="pt") as f:
        header = json.loads(f.metadata()["saeclip"])
        t = {n: f.get_tensor(n).float() for n in f.keys() if "." not in n}
    s = header["input_scale"]
    f_ = t["W_dec"].shape[0]
    if header["architecture"] == "jumprelu":
        # θ itself (threshold_param linear) or log θ (log, and checkpoints older than the key).
        theta = t["threshold"] if "threshold" in t else t["log_threshold"].exp()
    else:
        theta = torch.full((f_,), float(header["threshold"] or 0.0))
    # In the scaled space, as the peers: pre = (x·s − b_dec)·W_enc + b_enc.
    sae = {"W_enc": t["W_enc"], "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"], "theta": theta}
    return {
        "sae": sae,
        "steps_per_s": (len(times) - SKIP) / (times[-1] - times[SKIP - 1]),
        "load": (before[0], after[0]),
        "version": "saeclip " + header.get("saeclip_version", "?"),
        "input_scale": s,
    }


# ---------------------------------------------------------------------------------------
# sae-lens


def epoch_order_at(n: int, seed: int, epoch: int) -> torch.Tensor:
    """saeclip's shuffle of epoch `epoch` (src/sae/train.rs epoch_order)."""
    torch.manual_seed(seed * 1_000_003 + epoch + 1)
    return torch.randperm(n)


def saelens_run(kind: str, args, rows, order, scale, b_dec, sigma2, variant: str = "") -> dict:
    """`variant` (jumprelu ablations of --l0-sweep): "unit" keeps the decoder rows at unit norm as
    saeclip does (gradient component along each row removed before Adam, rows renormalised
    after); "unit-randn" also draws W_dec from saeclip's distribution (normalised N(0, 1) rows,
    W_enc = W_decᵀ) instead of sae-lens's normalised Kaiming-uniform ones."""
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    d = rows.shape[1]
    common = dict(d_in=d, d_sae=args.width, decoder_init_norm=1.0, dtype="float32", device="cpu")
    if kind == "jumprelu":
        cfg = JumpReLUTrainingSAEConfig(
            jumprelu_bandwidth=args.bandwidth, jumprelu_init_threshold=args.init_threshold,
            l0_coefficient=args.l0_coef * d * sigma2, **common,
        )  # fmt: skip
        sae = JumpReLUTrainingSAE(cfg)
        coefficients = {"l0": cfg.l0_coefficient}
    else:
        # "matryoshka-rescale": sae-lens's own default, pre-activations times ‖W_dec[j]‖.
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(
            k=args.k, matryoshka_widths=list(args.widths), aux_loss_coefficient=0.0,
            rescale_acts_by_decoder_norm=kind == "matryoshka-rescale", **common,
        )  # fmt: skip
        sae = MatryoshkaBatchTopKTrainingSAE(cfg)
        coefficients = {}
    unit = variant in ("unit", "unit-randn")
    with torch.no_grad():
        sae.b_dec.copy_(b_dec)
        if variant == "unit-randn":
            w = torch.randn(sae.W_dec.shape)
            w /= w.norm(dim=1, keepdim=True)
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    sae.train()
    before = os.getloadavg()
    clock, start = [], time.perf_counter()
    per_epoch = -(-rows.shape[0] // args.batch)
    for i in range(args.steps):
        epoch, j = divmod(i, per_epoch)
        if j == 0:
            order = epoch_order_at(rows.shape[0], 0, epoch)
        x = rows.index_select(0, order[j * args.batch : (j + 1) * args.batch]) * scale
        out = sae.training_forward_pass(
            step_input=TrainStepInput(
                sae_in=x, coefficients=coefficients, dead_neuron_mask=None,
                n_training_steps=i, is_logging_step=False,
            )
        )  # fmt: skip
        out.loss.backward()
        if unit:
            with torch.no_grad():
                sae.W_dec.grad -= (sae.W_dec.grad * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
        opt.step()
        opt.zero_grad()
        if unit:
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        clock.append(time.perf_counter() - start)
    after = os.getloadavg()
    with torch.no_grad():
        norms = sae.W_dec.norm(dim=1)
        if kind == "jumprelu":
            theta = sae.threshold.detach().clamp_min(0.0) * norms
        elif kind == "matryoshka-rescale":
            # θ is in units of pre·‖W_dec[j]‖, which the fold below makes the pre-activations.
            theta = torch.full((args.width,), float(sae.topk_threshold))
        else:
            theta = torch.full((args.width,), float(sae.topk_threshold)) * norms
        folded = {
            "W_enc": sae.W_enc * norms[None, :], "b_enc": sae.b_enc * norms,
            "W_dec": sae.W_dec / norms[:, None], "b_dec": sae.b_dec.clone(), "theta": theta,
        }  # fmt: skip
    return {
        "sae": {k: v.detach().float() for k, v in folded.items()},
        "steps_per_s": (args.steps - SKIP) / (clock[-1] - clock[SKIP - 1]),
        "load": (before[0], after[0]),
        "version": "sae-lens " + metadata.version("sae-lens"),
        "input_scale": scale,
    }


# ---------------------------------------------------------------------------------------
# Evaluation: one function for all.


@torch.no_grad()
def evaluate(r: dict, heldout: torch.Tensor, atoms: torch.Tensor, prefix: int | None) -> dict:
    sae, s = r["sae"], r["input_scale"]
    xs = heldout * s
    pre = torch.addmm(sae["b_enc"], xs - sae["b_dec"], sae["W_enc"])
    z = pre * (pre > sae["theta"].clamp_min(0.0))
    total = (xs.double() - xs.double().mean(0, keepdim=True)).square().sum().item()

    def evr(z_: torch.Tensor, w: torch.Tensor) -> float:
        x_hat = torch.addmm(sae["b_dec"], z_, w)
        return 1.0 - (xs.double() - x_hat.double()).square().sum().item() / total

    w = sae["W_dec"] / sae["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-12)
    a = atoms / atoms.norm(dim=1, keepdim=True)
    out = {
        "evr": evr(z, sae["W_dec"]),
        "l0": (z > 0).sum(1).double().mean().item(),
        "dead": ((z > 0).sum(0) == 0).double().mean().item(),
        "mmcs": (a @ w.T).max(dim=1).values.double().mean().item(),
    }
    if prefix is not None:
        out["first_prefix_evr"] = evr(z[:, :prefix], sae["W_dec"][:prefix])
        out["first_prefix_mmcs"] = (a @ w[:prefix].T).max(dim=1).values.double().mean().item()
    return out


def jumprelu_sets(args, l0_coef: float, threshold_param: str | None) -> list[str]:
    sets = [
        "sae.architecture=jumprelu", f"sae.l0_coef={l0_coef}",
        f"sae.jumprelu_bandwidth={args.bandwidth}", f"sae.jumprelu_init_threshold={args.init_threshold}",
    ]  # fmt: skip
    if threshold_param is not None:
        sets.append(f"sae.jumprelu_threshold_param={threshold_param}")
    return sets + list(args.saeclip_set)


def table_row(name: str, r: dict, e: dict) -> str:
    return (
        f"| {name} | {r['version']} | {r['steps_per_s']:.2f} | {e['evr']:.4f} | {e['l0']:.2f} "
        f"| {e['dead']:.4f} | {e['mmcs']:.4f} | — | — | {r['load'][0]:.2f} → {r['load'][1]:.2f} |"
    )


def jumprelu_only(args, jump_sets, rows, heldout, atoms, order, scale, b_dec, sigma2) -> int:
    """The two jumprelu rows of the architectures table, printed (to paste by hand)."""
    runs = {
        "saeclip jumprelu": saeclip_run("jumprelu", args, jump_sets),
        "sae-lens jumprelu": saelens_run("jumprelu", args, rows, order, scale, b_dec, sigma2),
    }
    for name, r in runs.items():
        e = evaluate(r, heldout, atoms, None)
        log(f"{name}: {r['steps_per_s']:.2f} steps/s, " + ", ".join(f"{k} {v:.4f}" for k, v in e.items()))
        print(table_row(name, r, e))
    return 0


SWEEP_BEGIN, SWEEP_END = "<!-- jumprelu_sweep -->", "<!-- /jumprelu_sweep -->"


def l0_sweep(args, rows, heldout, atoms, order, scale, b_dec, sigma2, load_start) -> int:
    """jumprelu at each λ of --l0-sweep for each peer: held-out evr and MMCS against L0."""
    lambdas = [float(v) for v in args.l0_sweep.split(",")]
    peers = args.sweep_peers.split(",")
    cache = OUT / "sweep-results"  # not OUT / "sweep": saeclip_run("sweep") empties that
    cache.mkdir(parents=True, exist_ok=True)
    key = {k: getattr(args, k) for k in ("steps", "batch", "width", "lr", "bandwidth", "init_threshold", "saeclip_set")}
    results = []
    for peer in peers:
        for lam in lambdas:
            path = cache / f"{peer.replace(':', '-')}-{lam:g}-theta{args.init_threshold:g}-eps{args.bandwidth:g}.json"
            if args.reuse and path.is_file():
                got = json.loads(path.read_text())
                if got["key"] == key:
                    results.append(got)
                    continue
            if peer == "sae-lens" or peer.startswith("sae-lens:"):
                sub = argparse.Namespace(**{**vars(args), "l0_coef": lam})
                variant = peer.split(":", 1)[1] if ":" in peer else ""
                r = saelens_run("jumprelu", sub, rows, order, scale, b_dec, sigma2, variant)
            elif peer.startswith("saeclip:"):
                r = saeclip_run("sweep", args, jumprelu_sets(args, lam, peer.split(":", 1)[1]))
            else:
                raise SystemExit(f"unknown sweep peer {peer!r}")
            e = evaluate(r, heldout, atoms, None)
            log(f"{peer} λ={lam:g}: {r['steps_per_s']:.2f} steps/s, " + ", ".join(f"{k} {v:.4f}" for k, v in e.items()))
            got = {"key": key, "peer": peer, "lambda": lam, "version": r["version"],
                   "steps_per_s": r["steps_per_s"], "load": r["load"], "eval": e}  # fmt: skip
            path.write_text(json.dumps(got, indent=2))
            results.append(got)
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SWEEP_BEGIN,
        "## JumpReLU: held-out evr and MMCS against L0 (λ sweep, saeclip vs sae-lens)",
        "",
        f"Written {date} by `python bench/architectures.py --l0-sweep {args.l0_sweep} "
        f"--sweep-peers {args.sweep_peers}` on {cpu_model()} ({os.cpu_count()} cores, shared), "
        f"{args.threads} thread(s); load average (1 min) {load_start[0]:.2f} at the start. The setting "
        "of the architectures section above (same data, batches, input scale, b_dec; "
        f"width {args.width}, batch {args.batch}, {args.steps} steps, Adam lr {args.lr:g} constant, no "
        f"clipping), bandwidth {args.bandwidth:g}, initial θ {args.init_threshold:g}; λ in saeclip's "
        "units (sae-lens gets λ·d·σ²). `saeclip:linear` trains θ itself (clamped at 0 after each "
        "step, as sae-lens 6.54), `saeclip:log` trains log θ (the paper's parameterisation).",
        "",
        "| peer | λ | held-out evr | l0 | dead | MMCS | steps/s | load during run |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for g in results:
        e = g["eval"]
        lines.append(
            f"| {g['peer']} | {g['lambda']:g} | {e['evr']:.4f} | {e['l0']:.2f} | {e['dead']:.4f} "
            f"| {e['mmcs']:.4f} | {g['steps_per_s']:.2f} | {g['load'][0]:.2f} → {g['load'][1]:.2f} |"
        )
    lines.append(SWEEP_END)
    text = "\n".join(lines)
    print(text)
    if args.write_sweep:
        write_section(SWEEP_BEGIN, SWEEP_END, text)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="training steps (an epoch is 128 at batch 1024)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--widths", default="64,256,1024", help="matryoshka prefix widths")
    p.add_argument("--lr", type=float, default=1e-3)

    p.add_argument("--l0-coef", type=float, default=1e-2, help="jumprelu λ in saeclip's units")
    p.add_argument("--bandwidth", type=float, default=0.001)
    p.add_argument("--init-threshold", type=float, default=0.5, help="jumprelu θ at init (scaled space)")
    p.add_argument("--threshold-param", choices=["log", "linear"], default=None,
                   help="saeclip's sae.jumprelu_threshold_param (default: saeclip's default)")
    p.add_argument("--only", choices=["all", "jumprelu", "matryoshka"], default="all",
                   help="jumprelu: the two jumprelu runs alone (prints their rows, writes nothing); "
                   "matryoshka: only the matryoshka rows and the narrow SAE (implies --no-write)")
    p.add_argument("--l0-sweep", default=None,
                   help="comma-separated λ values: train jumprelu at each with every --sweep-peers peer, "
                   "print a table of evr/MMCS against L0")
    p.add_argument("--write-sweep", action="store_true",
                   help="--l0-sweep: replace the hand-assembled jumprelu_sweep section of bench/RESULTS.md "
                   "with this run's table")
    p.add_argument("--sweep-peers", default="saeclip:linear,saeclip:log,sae-lens",
                   help="peers of --l0-sweep: saeclip:linear, saeclip:log, sae-lens, sae-lens:unit, "
                   "sae-lens:unit-randn (see saelens_run)")
    p.add_argument("--saeclip-set", action="append", default=[], metavar="KEY=VALUE",
                   help="jumprelu: one more --set for saeclip's train (e.g. training.seed=1)")
    p.add_argument("--reuse", action="store_true",
                   help="--l0-sweep: reuse the runs already evaluated with the same settings")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    args.widths = [int(w) for w in args.widths.split(",")]
    if args.widths[-1] != args.width:
        raise SystemExit("--widths must end at --width")
    if not (DATA / "done.json").is_file():
        raise SystemExit(f"{DATA} is missing: run `make bench-defaults` first (it writes the data)")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.perf_counter()

    with safe_open(str(DATA / "data.safetensors"), framework="pt") as f:
        rows, heldout, atoms = f.get_tensor("train"), f.get_tensor("heldout"), f.get_tensor("atoms")
    order = epoch_order(rows.shape[0], 0)
    sample = init_sample(rows, 0)
    scale = input_scale(sample)
    b_dec = geometric_median(sample * scale).float()
    sigma2 = (sample.double() * scale).var(0, unbiased=False).mean().item()
    del sample

    w0 = args.widths[0]
    jump_sets = jumprelu_sets(args, args.l0_coef, args.threshold_param)
    if args.l0_sweep is not None:
        return l0_sweep(args, rows, heldout, atoms, order, scale, b_dec, sigma2, load_start)
    if args.only == "jumprelu":
        return jumprelu_only(args, jump_sets, rows, heldout, atoms, order, scale, b_dec, sigma2)
    nest_sets = ["sae.architecture=matryoshka", f"sae.matryoshka_widths=[{','.join(map(str, args.widths))}]"]
    runs = {}
    if args.only == "all":
        runs["saeclip jumprelu"] = (saeclip_run("jumprelu", args, jump_sets), None)
        runs["sae-lens jumprelu"] = (saelens_run("jumprelu", args, rows, order, scale, b_dec, sigma2), None)
    else:
        args.no_write = True
    runs |= {
        "saeclip matryoshka": (saeclip_run("matryoshka", args, nest_sets), w0),
        "saeclip matryoshka, decoder_norm free": (
            saeclip_run("matryoshka-free", args, nest_sets + ["sae.matryoshka_decoder_norm=free"]),
            w0,
        ),
        "sae-lens matryoshka": (saelens_run("matryoshka", args, rows, order, scale, b_dec, sigma2), w0),
        "sae-lens matryoshka, rescale_acts_by_decoder_norm": (
            saelens_run("matryoshka-rescale", args, rows, order, scale, b_dec, sigma2),
            w0,
        ),
        f"saeclip batchtopk, width {w0} alone": (
            saeclip_run("narrow", args, ["sae.architecture=batchtopk", f"sae.d_sae={w0}"]),
            None,
        ),
    }
    ev = {}
    for name, (r, prefix) in runs.items():
        ev[name] = evaluate(r, heldout, atoms, prefix)
        log(f"{name}: {r['steps_per_s']:.2f} steps/s, " + ", ".join(f"{k} {v:.4f}" for k, v in ev[name].items()))
    narrow = ev[f"saeclip batchtopk, width {w0} alone"]
    rows_md = []
    for name, (r, prefix) in runs.items():
        e = ev[name]
        first = f"{e['first_prefix_evr']:.4f}" if prefix else "—"
        gap = f"{narrow['evr'] - e['first_prefix_evr']:+.4f}" if prefix else "—"
        rows_md.append(
            f"| {name} | {r['version']} | {r['steps_per_s']:.2f} | {e['evr']:.4f} | {e['l0']:.2f} "
            f"| {e['dead']:.4f} | {e['mmcs']:.4f} | {first} | {gap} | {r['load'][0]:.2f} → {r['load'][1]:.2f} |"
        )
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            BEGIN,
            "## JumpReLU and Matryoshka SAEs against sae-lens's (reduced budget)",
            "",
            f"Measured {date} with `make bench-architectures` (`python bench/architectures.py`, "
            f"defaults) on {cpu_model()} ({os.cpu_count()} cores), {args.threads} thread(s) per "
            f"trainer, run one after the other; load average (1 min) {load_start[0]:.2f} / "
            f"{load_start[1]:.2f} / {load_start[2]:.2f} at the start (the machine is shared: "
            "steps/s are indicative). torch "
            f"{torch.__version__}, Python {platform.python_version()}. A reduced budget: the small "
            "ground-truth data of `make bench-defaults` (d = 64, 256 unit atoms, 4 active per row, "
            f"Exp(1) magnitudes, noise 0.01), width {args.width}, batch {args.batch}, "
            f"{args.steps} steps ({args.steps / 128:.1f} passes), Adam lr {args.lr:g}, constant, no clipping, no AuxK, "
            "the same batches, input scale and b_dec (geometric median) for all.",
            "",
            f"jumprelu: λ = {args.l0_coef:g} (saeclip units; sae-lens gets λ·d·σ², the same "
            f"objective), bandwidth {args.bandwidth:g}, initial θ {args.init_threshold:g}. "
            f"matryoshka: batch top-k, k = {args.k}, widths {args.widths}, equal weights; saeclip "
            "with unit-norm decoder rows (its default) and with `sae.matryoshka_decoder_norm=free`; "
            "sae-lens with `rescale_acts_by_decoder_norm=false` (free rows, the like of saeclip's "
            "`free`) and `true` (its default). "
            f"First prefix: the evr of the first {w0} latents alone; gap = evr of a "
            f"saeclip batchtopk SAE of width {w0}, k = {args.k}, trained alone − first-prefix evr "
            "(smaller is what matryoshka is for). evr, l0, dead (never fires) and MMCS on the "
            f"{heldout.shape[0]:,} held-out rows by one function (bench/architectures.py `evaluate`).",
            "",
            "| run | version | steps/s | held-out evr | l0 | dead | MMCS | first-prefix evr | gap to narrow | load during run |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
            *rows_md,
            END,
        ]
    )
    (OUT / "report.json").write_text(json.dumps({"eval": ev, "args": vars(args)}, indent=2, default=str))
    print(text)
    log(f"done in {time.perf_counter() - started:.0f} s")
    if not args.no_write:
        write_section(BEGIN, END, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
