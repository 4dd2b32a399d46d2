"""Train the Python peers of `make bench-train` on the ground-truth rows: sae-lens and overcomplete.

Runs in the separate `.venv-peers` (sae-lens and overcomplete with torch 2.11.0), started by
bench/train.py once per trainer:

    .venv-peers/bin/python bench/train_peers.py --trainer saelens|overcomplete \
        --data DIR/data.safetensors --out CKPT.safetensors --steps S [--batch 4096] \
        [--d-sae 16384] [--k 64] [--lr 4e-4] [--threads 2] [--skip-steps 5] [--seed 0]

Each trainer gets what saeclip's `train` gives itself (src/sae/train.rs, src/sae/model.rs):
- the rows in saeclip's order: its epoch-0 shuffle, `torch.manual_seed(seed·1000003 + 1)`
  then `torch.randperm(N)` (same libtorch, same generator), batch i = rows
  order[i·B:(i+1)·B];
- the same input scale s = √D / mean‖x‖ over the same sample (`torch.manual_seed(seed)`,
  the first 65,536 of `torch.randperm(N)`), applied to each batch inside the loop;
- b_dec (sae-lens only; overcomplete's TopK SAE has no decoder bias) = the geometric median of
  the scaled sample by Weiszfeld iterations in f64 from the mean (100 at most, tol 1e-7);
- unit-norm decoder rows at init and W_enc = W_decᵀ, b_enc = 0 (sae-lens:
  `decoder_init_norm=1.0`; overcomplete: `.untied(bias=True, copy_from_dictionary=True)`);
- Adam (torch.optim.Adam, the given lr, betas (0.9, 0.999), eps 1e-8), constant lr, no
  gradient clipping, no auxiliary loss.

The loops are the libraries' own trainers' steps without their logging:
- sae-lens: `TopKTrainingSAE.training_forward_pass`, the trainer's firing bookkeeping
  (`n_forward_passes_since_fired`), backward, Adam step, zero_grad (SAETrainer._train_step
  without clip_grad_norm_(1.0), which it hard-codes);
- overcomplete: zero_grad, forward, MSE (mean over B·D, as overcomplete's losses),
  `DeadCodeTracker.update`, backward, Adam step (train_sae's step with clip_grad=0,
  monitoring=0).

`--trainer autograd` is not a peer but a diagnostic: saeclip's own SAE and step written with
autograd (it reproduces saeclip's held-out evr), with switches for the decoder constraint and
the encoder's initial scale, to measure what a change to saeclip would buy before making it.

Writes the SAE as a saeclip-format checkpoint (W_enc [D, F], b_enc, W_dec [F, D] with unit
rows, b_dec, metadata `saeclip` JSON with `input_scale`), so that one script evaluates all
three: z = TopK(ReLU((x·s − b_dec)·W_enc + b_enc)), x̂ = (z·W_dec + b_dec)/s. Prints one JSON
line: steps/s over the steps after the first `--skip-steps`, and what was used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INIT_SAMPLE_ROWS = 65_536  # as src/sae/train.rs


def log(msg: str) -> None:
    print(f"[train_peers] {msg}", file=sys.stderr, flush=True)


def epoch_order(n: int, seed: int) -> torch.Tensor:
    """saeclip's shuffle of epoch 0 (src/sae/train.rs)."""
    torch.manual_seed(seed * 1_000_003 + 1)
    return torch.randperm(n)


def init_sample(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """The rows saeclip chooses input_scale and b_dec from (src/sae/train.rs)."""
    torch.manual_seed(seed)
    pick = torch.randperm(rows.shape[0])[:INIT_SAMPLE_ROWS]
    return rows.index_select(0, pick).float()


def input_scale(sample: torch.Tensor) -> float:
    """s = √D / mean‖x‖ (src/sae/model.rs input_scale)."""
    mean_norm = sample.double().square().sum(1).sqrt().mean().item()
    return sample.shape[1] ** 0.5 / mean_norm


def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld from the mean in f64 (src/sae/model.rs geometric_median)."""
    p = points.double()
    y = p.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (p - y).square().sum(1).sqrt().clamp_min(1e-12)
        nxt = (p * w[:, None]).sum(0) / w.sum()
        shift = (nxt - y).norm().item()
        size = nxt.norm().item()
        y = nxt
        if shift <= tol * (1.0 + size):
            break
    return y


def checkpoint_metadata(trainer: str, args, scale: float) -> dict[str, str]:
    info = {
        "version": 1,
        "architecture": "topk",
        "k": args.k,
        "d_in": args.d_in,
        "d_sae": args.d_sae,
        "input_scale": scale,
        "trained_by": trainer,
    }
    return {"saeclip": json.dumps(info)}


def train_saelens(args, rows, order, scale, b_dec):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(args.seed)
    cfg = TopKTrainingSAEConfig(
        d_in=args.d_in,
        d_sae=args.d_sae,
        k=args.k,
        aux_loss_coefficient=0.0,
        decoder_init_norm=1.0,
        dtype="float32",
        device="cpu",
        **args.saelens_config,
    )
    sae = TopKTrainingSAE(cfg)
    with torch.no_grad():
        sae.b_dec.copy_(b_dec.float())
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    since_fired = torch.zeros(args.d_sae)
    sae.train()

    def step(i: int, x: torch.Tensor) -> None:
        out = sae.training_forward_pass(
            step_input=TrainStepInput(
                sae_in=x,
                coefficients={},
                dead_neuron_mask=None,
                n_training_steps=i,
                is_logging_step=False,
            )
        )
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    clock = run_steps(args, rows, order, scale, step)
    with torch.no_grad():
        # Fold the decoder norms into the encoder (sae-lens's own _fold_norm_topk for
        # rescale_acts_by_decoder_norm): the same SAE with unit decoder rows.
        norms = sae.W_dec.norm(dim=-1)
        tensors = {
            "W_enc": (sae.W_enc * norms[None, :]).contiguous(),
            "b_enc": (sae.b_enc * norms).contiguous(),
            "W_dec": (sae.W_dec / norms[:, None]).contiguous(),
            "b_dec": (sae.b_dec * float(cfg.apply_b_dec_to_input)).contiguous(),
        }
    notes = {
        "rescale_acts_by_decoder_norm": cfg.rescale_acts_by_decoder_norm,
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "decoder_init_norm": cfg.decoder_init_norm,
        "use_sparse_activations": cfg.use_sparse_activations,
        "aux_loss_coefficient": cfg.aux_loss_coefficient,
    }
    return tensors, clock, notes


def train_overcomplete(args, rows, order, scale, b_dec):
    from overcomplete.sae import TopKSAE
    from overcomplete.sae.trackers import DeadCodeTracker

    torch.manual_seed(args.seed)
    model = TopKSAE(args.d_in, nb_concepts=args.d_sae, top_k=args.k, device="cpu")
    # Encoder = dictionaryᵀ (unit rows) with a zero bias, like saeclip's and sae-lens's init.
    model.untied(bias=True, copy_from_dictionary=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    tracker = DeadCodeTracker(args.d_sae, "cpu")
    model.train()

    def step(i: int, x: torch.Tensor) -> None:
        optimizer.zero_grad()
        z_pre, z, x_hat = model(x)
        loss = (x - x_hat).square().mean()
        tracker.update(z)
        loss.backward()
        optimizer.step()

    clock = run_steps(args, rows, order, scale, step)
    with torch.no_grad():
        dictionary = model.dictionary.normalization(model.dictionary._weights) * torch.exp(
            model.dictionary.multiplier
        )
        enc = model.encoder
        tensors = {
            "W_enc": enc.weight.t().contiguous(),
            "b_enc": enc.bias.detach().contiguous(),
            "W_dec": dictionary.contiguous(),
            "b_dec": torch.zeros(args.d_in),
        }
    notes = {
        "encoder": "TieableEncoder (untied, bias) initialised from the dictionary",
        "dictionary_normalization": "l2 (rows renormalised before each training forward)",
        "decoder_bias": False,
        "b_dec_used": False,
    }
    del b_dec
    return tensors, clock, notes


def train_autograd(args, rows, order, scale, b_dec):
    """Diagnostics, not a peer: saeclip's SAE and step written with autograd, with switches.

    `--decoder unit` is saeclip's constraint (gradient component along each decoder row
    removed, rows renormalised after the step); `free` leaves the row norms to Adam (as
    sae-lens without rescaling). `--encoder-init transpose` is saeclip's W_enc = W_decᵀ;
    `lsq` scales it by the least-squares factor c that best fits the initial
    reconstructions of the first batch of the sample to their inputs (top-k codes are
    positively homogeneous in W_enc when b_enc = 0, so the same latents fire, scaled by c).
    """
    torch.manual_seed(args.seed)
    w_dec = torch.randn(args.d_sae, args.d_in)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    w_enc = w_dec.t().clone()
    c = 1.0
    if args.encoder_init == "lsq":
        xs = init_sample(rows, args.seed)[: args.batch] * scale - b_dec
        pre = xs @ w_enc
        values, latents = pre.topk(args.k, dim=1)
        recon = torch.zeros_like(pre).scatter_(1, latents, values.relu()) @ w_dec
        c = float((xs * recon).sum() / recon.square().sum())
        w_enc *= c
    p = {
        "W_enc": w_enc.requires_grad_(),
        "b_enc": torch.zeros(args.d_sae, requires_grad=True),
        "W_dec": w_dec.requires_grad_(),
        "b_dec": b_dec.clone().requires_grad_(),
    }
    optimizer = torch.optim.Adam(p.values(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)

    def step(i: int, x: torch.Tensor) -> None:
        pre = torch.addmm(p["b_enc"], x - p["b_dec"], p["W_enc"])
        values, latents = pre.topk(args.k, dim=1)
        z = torch.zeros_like(pre).scatter(1, latents, values.relu())
        loss = (x - torch.addmm(p["b_dec"], z, p["W_dec"])).square().mean()
        optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():
            w = p["W_dec"]
            if args.decoder == "unit":
                w.grad -= (w.grad * w).sum(1, keepdim=True) * w
            optimizer.step()
            if args.decoder == "unit":
                w /= w.norm(dim=1, keepdim=True)

    clock = run_steps(args, rows, order, scale, step)
    with torch.no_grad():
        norms = p["W_dec"].norm(dim=1)
        tensors = {
            "W_enc": (p["W_enc"] * norms[None, :]).contiguous(),
            "b_enc": (p["b_enc"] * norms).contiguous(),
            "W_dec": (p["W_dec"] / norms[:, None]).contiguous(),
            "b_dec": p["b_dec"].detach().contiguous(),
        }
    notes = {
        "decoder": args.decoder,
        "encoder_init": args.encoder_init,
        "encoder_scale": c,
        "decoder_norms": [norms.min().item(), norms.mean().item(), norms.max().item()],
    }
    return tensors, clock, notes


def run_steps(args, rows, order, scale, step) -> list[float]:
    """Run the steps; the clock after each, from the loop's start."""
    clock = []
    start = time.perf_counter()
    for i in range(args.steps):
        idx = order[i * args.batch : (i + 1) * args.batch]
        x = rows.index_select(0, idx) * scale
        step(i, x)
        clock.append(time.perf_counter() - start)
        if (i + 1) % 10 == 0:
            log(f"{args.trainer}: step {i + 1}/{args.steps}, {clock[-1]:.1f} s")
    return clock


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainer", choices=["saelens", "overcomplete", "autograd"], required=True)
    p.add_argument("--data", required=True, help="data.safetensors of the bench's data folder")
    p.add_argument("--out", required=True, help="checkpoint to write (saeclip format)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoder", choices=["unit", "free"], default="unit", help="autograd: decoder rows")
    p.add_argument(
        "--encoder-init", choices=["transpose", "lsq"], default="transpose", help="autograd: W_enc at init"
    )
    p.add_argument(
        "--saelens-config",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a TopKTrainingSAEConfig field (diagnostics), e.g. rescale_acts_by_decoder_norm=false",
    )
    args = p.parse_args()
    args.saelens_config = dict((kv.split("=", 1)[0], json.loads(kv.split("=", 1)[1])) for kv in args.saelens_config)
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()

    with safe_open(args.data, framework="pt") as f:
        rows = f.get_tensor("train")
    args.d_in = rows.shape[1]
    if rows.shape[0] < args.steps * args.batch:
        raise SystemExit(f"{args.data} has {rows.shape[0]} rows, fewer than {args.steps} steps of {args.batch}")
    order = epoch_order(rows.shape[0], args.seed)
    sample = init_sample(rows, args.seed)
    scale = input_scale(sample)
    b_dec = geometric_median(sample * scale).float()
    del sample

    train = {"saelens": train_saelens, "overcomplete": train_overcomplete, "autograd": train_autograd}[args.trainer]
    tensors, clock, notes = train(args, rows, order, scale, b_dec)
    save_file(tensors, args.out, metadata=checkpoint_metadata(args.trainer, args, scale))

    w = args.skip_steps
    timed = clock[-1] - clock[w - 1] if w > 0 else clock[-1]
    package = {"saelens": "sae-lens", "overcomplete": "overcomplete", "autograd": "torch"}[args.trainer]
    report = {
        "trainer": args.trainer,
        "package": package,
        "version": metadata.version(package),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "timed_steps": args.steps - w,
        "timed_s": timed,
        "steps_per_s": (args.steps - w) / timed,
        "first_steps_s": clock[w - 1] if w > 0 else 0.0,
        "wall_s": time.perf_counter() - wall,
        "input_scale": scale,
        "checkpoint": args.out,
        "notes": notes,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
