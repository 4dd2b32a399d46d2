"""Reference oracle for saeclip's SAE core (tests/sae_core.rs, `matches_pytorch`).

Reads --input (safetensors: x, dead (uint8 mask), W_enc, b_enc, W_dec, b_dec, and per step t
the gradients g<t>.W_enc, ...) and --options (JSON: k, k_aux, aux_coef, data_variance, input_scale, beta1,
beta2, eps, steps, lr, max_norm), and writes --output (safetensors):

  loss, mse, aux            the top-k SAE loss with AuxK, dense, as DESIGN.md states it
  grad.<param>              its gradients by torch autograd
  norm<t>                   clip_grad_norm_'s total norm at step t
  param.<param>, exp_avg.<param>, exp_avg_sq.<param>
                            after `steps` training steps fed the given gradients: remove
                            the decoder-parallel component, clip_grad_norm_,
                            torch.optim.Adam.step, renormalise decoder rows

Usage: sae_autograd.py --input IN --options JSON --output OUT
"""

import argparse
import json

import torch
from safetensors.torch import load_file, save_file

PARAMS = ["W_enc", "b_enc", "W_dec", "b_dec"]


def loss_terms(p, x, dead, o):
    W_enc, b_enc, W_dec, b_dec = (p[n] for n in PARAMS)
    xs = x * o["input_scale"]
    pre = (xs - b_dec) @ W_enc + b_enc
    vals, idx = pre.topk(o["k"], dim=1)
    z = torch.zeros_like(pre).scatter(1, idx, vals.relu())
    e = xs - (z @ W_dec + b_dec)
    mse = e.square().mean() / o.get("data_variance", 1.0)
    ed = e.detach()
    dead_idx = dead.nonzero().view(-1)
    pd = pre[:, dead_idx]
    av, ai = pd.topk(min(o["k_aux"], len(dead_idx)), dim=1)
    z_aux = torch.zeros_like(pd).scatter(1, ai, av.relu())
    e_hat = z_aux @ W_dec[dead_idx]
    total = (ed - ed.mean(0, keepdim=True)).square().sum()
    aux = (ed - e_hat).square().sum() / total * o["aux_coef"]
    return mse + aux, mse, aux


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--options", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    o = json.loads(args.options)
    t = load_file(args.input)
    x, dead = t["x"], t["dead"].bool()
    out = {}

    p = {n: t[n].clone().requires_grad_(True) for n in PARAMS}
    loss, mse, aux = loss_terms(p, x, dead, o)
    loss.backward()
    out.update(loss=loss.detach(), mse=mse.detach(), aux=aux.detach())
    out.update({f"grad.{n}": p[n].grad for n in PARAMS})

    params = [t[n].clone().requires_grad_(True) for n in PARAMS]
    opt = torch.optim.Adam(
        params, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"], foreach=False
    )
    for step in range(o["steps"]):
        for n, q in zip(PARAMS, params):
            q.grad = t[f"g{step}.{n}"].clone()
        with torch.no_grad():
            w_dec = params[2]
            along = (w_dec.grad * w_dec).sum(1, keepdim=True)
            w_dec.grad -= along * w_dec
        out[f"norm{step}"] = torch.nn.utils.clip_grad_norm_(params, o["max_norm"])
        opt.step()
        with torch.no_grad():
            w_dec /= w_dec.square().sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    for n, q in zip(PARAMS, params):
        out[f"param.{n}"] = q.detach()
        out[f"exp_avg.{n}"] = opt.state[q]["exp_avg"]
        out[f"exp_avg_sq.{n}"] = opt.state[q]["exp_avg_sq"]
    save_file({k: v.contiguous() for k, v in out.items()}, args.output)


if __name__ == "__main__":
    main()
