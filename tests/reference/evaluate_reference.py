#!/usr/bin/env python3
"""Independent references for tests/evaluate.rs, in plain torch.

    evaluate_reference.py reconstruction --ckpt SAE.safetensors --cache DIR --out FILE.json
        The `reconstruction` section of `saeclip evaluate` computed from the checkpoint's
        tensors and header (safetensors + json only) over every row of the cache:
        pre = (x*s - b_dec) @ W_enc + b_enc; topk: keep the k largest per row, relu;
        x_hat = (z @ W_dec + b_dec) / s; evr = 1 - sum((x - x_hat)^2) / sum((x - mean)^2);
        fvu = 1 - evr; cosine = mean cos(x, x_hat); l0 = mean count of z > 0 per row;
        dead_frac / dense_frac = share of latents firing on no row / on > 10 % of rows.

    evaluate_reference.py zeroshot --model HF_DIR --images DIR --layer L --out FILE.json
        Plain and zero-ablated CLIP on an image folder (zeroshot_reference.py's listing and
        preprocessing; template "a photo of a {}."): the CLS token of the output of vision
        block L (0-based) is set to zero by a forward hook. Writes top-1 accuracies (%) and
        the mean KL(plain || zero-ablated) of softmax(exp(logit_scale) * cos).
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))


def reconstruction(args):
    with safe_open(args.ckpt, "pt") as f:
        header = json.loads(f.metadata()["saeclip"])
    t = load_file(args.ckpt)
    w_enc, b_enc = t["W_enc"].double(), t["b_enc"].double()
    w_dec, b_dec = t["W_dec"].double(), t["b_dec"].double()
    s, k = float(header["input_scale"]), int(header["k"])
    assert header["architecture"] == "topk", "the reference covers top-k SAEs"
    manifest = json.loads((Path(args.cache) / "manifest.json").read_text())
    x = torch.cat([load_file(str(Path(args.cache) / sh["file"]))["activations"].double()
                   for sh in manifest["shards"]])
    pre = (x * s - b_dec) @ w_enc + b_enc
    vals, idx = pre.topk(k, dim=1)
    z = torch.zeros_like(pre).scatter(1, idx, vals.relu())
    x_hat = (z @ w_dec + b_dec) / s
    evr = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    cos = (x * x_hat).sum(1) / (x.norm(dim=1) * x_hat.norm(dim=1)).clamp_min(1e-12)
    fired = (z > 0).sum(0).double() / x.shape[0]
    out = {
        "rows": x.shape[0],
        "evr": float(evr),
        "fvu": float(1 - evr),
        "cosine": float(cos.mean()),
        "l0": float((z > 0).sum(1).double().mean()),
        "dead_frac": float((fired == 0).double().mean()),
        "dense_frac": float((fired > 0.1).double().mean()),
    }
    Path(args.out).write_text(json.dumps(out))


@torch.no_grad()
def zeroshot(args):
    import open_clip
    import transformers
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPModel
    from zeroshot_reference import features, list_folder

    transformers.utils.logging.set_verbosity_error()
    root = Path(args.images)
    classes, items = list_folder(root)
    model = CLIPModel.from_pretrained(args.model, attn_implementation="eager").eval()
    ids = open_clip.tokenize([f"a photo of a {c}." for c in classes], context_length=77).to(torch.int64)
    text = features(model.get_text_features(input_ids=ids))
    text = text / text.norm(dim=-1, keepdim=True)
    scale = model.logit_scale.exp()
    processor = CLIPImageProcessorPil()
    ablate = {"on": False}

    def hook(_module, _inputs, output):
        if not ablate["on"]:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, 0] = 0
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    model.vision_model.encoder.layers[args.layer].register_forward_hook(hook)
    n = hits_plain = hits_zero = 0
    kl = 0.0
    for path, label in items:
        try:
            image = Image.open(path).convert("RGB")
        except Exception:  # noqa: BLE001 - unreadable files are skipped, as saeclip does
            continue
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        logits = []
        for on in (False, True):
            ablate["on"] = on
            e = features(model.get_image_features(pixel_values=pixels))
            e = e / e.norm(dim=-1, keepdim=True)
            logits.append((scale * e @ text.T)[0].double())
        p, q = logits[0].log_softmax(0), logits[1].log_softmax(0)
        kl += float((p.exp() * (p - q)).sum())
        hits_plain += int(logits[0].argmax() == label)
        hits_zero += int(logits[1].argmax() == label)
        n += 1
    Path(args.out).write_text(json.dumps({
        "samples": n,
        "clip_top1": 100.0 * hits_plain / n,
        "zero_ablation_top1": 100.0 * hits_zero / n,
        "kl_zero_ablation": kl / n,
    }))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reconstruction")
    r.add_argument("--ckpt", required=True)
    r.add_argument("--cache", required=True)
    r.add_argument("--out", required=True)
    z = sub.add_parser("zeroshot")
    z.add_argument("--model", required=True)
    z.add_argument("--images", required=True)
    z.add_argument("--layer", type=int, required=True)
    z.add_argument("--out", required=True)
    args = ap.parse_args()
    reconstruction(args) if args.cmd == "reconstruction" else zeroshot(args)


if __name__ == "__main__":
    main()
