"""Read a saeclip activation cache with plain Python and check it against transformers.

Usage: cache_reference.py --cache DIR --model HF_DIR --images DIR --tol-kind f32|f16

The cache's images.csv names each image by its path below DIR (a `folder:` dataset). Each
image is preprocessed with transformers' PIL-backed CLIPImageProcessor and run through
CLIPModel's vision tower; hidden_states[layer + 1] at the cached token positions must equal
the cached rows: within 1e-4 for an f32 cache, within f16 rounding for an f16 cache.
Prints a JSON summary; exits 1 on a mismatch.
"""

import argparse
import csv
import json
import os
import sys

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPImageProcessorPil, CLIPModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True)
    args = ap.parse_args()

    manifest = json.load(open(os.path.join(args.cache, "manifest.json")))
    assert manifest["format"] == "saeclip-activations" and manifest["version"] == 1
    layer = manifest["layer"]
    acts, image_index, token_index = [], [], []
    for shard in manifest["shards"]:
        t = load_file(os.path.join(args.cache, shard["file"]))
        assert t["activations"].shape == (shard["rows"], manifest["d_model"])
        acts.append(t["activations"])
        image_index.append(t["image_index"])
        token_index.append(t["token_index"])
    acts = torch.cat(acts)
    image_index = torch.cat(image_index)
    token_index = torch.cat(token_index)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[manifest["dtype"]]
    assert acts.dtype == dtype, (acts.dtype, dtype)

    with open(os.path.join(args.cache, "images.csv")) as f:
        records = {int(r["image_index"]): r["source"] for r in csv.DictReader(f)}

    model = CLIPModel.from_pretrained(args.model, attn_implementation="eager").eval()
    processor = CLIPImageProcessorPil()
    worst = 0.0
    for idx, source in sorted(records.items()):
        image = Image.open(os.path.join(args.images, source))
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer + 1][0]
        rows = image_index == idx
        got = acts[rows].float()
        want = hidden[token_index[rows]]
        diff = (got - want).abs()
        if manifest["dtype"] == "f32":
            bad = diff > 1e-4
        else:
            # f16 rounding of the reference value (half an ulp, relative 2^-11), plus the
            # f32 computation noise.
            bad = diff > want.abs() * 2.0**-11 + 1e-4
        worst = max(worst, diff.max().item())
        if bad.any():
            print(f"image {idx} ({source}): max diff {diff.max().item():.3e}", file=sys.stderr)
            sys.exit(1)
    print(json.dumps({"images": len(records), "rows": int(acts.shape[0]), "max_abs_diff": worst}))


if __name__ == "__main__":
    main()
