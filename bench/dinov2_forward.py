"""saeclip vs transformers: DINOv2 ViT-B/14 image-forward throughput on the CPU.

`make bench-clip` runs this after bench/clip_forward.py. It

1. makes (once) a seeded random-weight transformers Dinov2Model with facebook/dinov2-base's
   dimensions (768 wide, 12 blocks, patch 14, pretrained at 518 px) under
   target/bench/dinov2-base-hf/, and a seeded batch of 224 px pixels, so that both peers run
   the same weights on the same input (the position embeddings are interpolated from 37×37
   to 16×16 patches in both, as for the published checkpoints);
2. races transformers' `Dinov2Model(...).pooler_output` against saeclip through
   bench/forward_peer.py (alternating rounds, the same threads, outputs checked equal,
   the `<!-- dinov2_forward -->` section of bench/RESULTS.md rewritten with the medians).
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import Dinov2Config, Dinov2Model

import forward_peer as fp

MODEL_DIR = fp.BENCH_DIR / "dinov2-base-hf"
SIZE = 224


def log(msg: str) -> None:
    print(f"[bench-dinov2] {msg}", file=sys.stderr, flush=True)


def make_model(seed: int) -> None:
    if (MODEL_DIR / "config.json").is_file() and (MODEL_DIR / "model.safetensors").is_file():
        return
    log(f"creating random-weight DINOv2 ViT-B/14 (seed {seed}) in {MODEL_DIR}")
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          image_size=518, patch_size=14)  # fmt: skip
    Dinov2Model(config).eval().save_pretrained(MODEL_DIR)
    # The published processor: shortest edge 256, crop 224 (what saeclip's input size follows).
    (MODEL_DIR / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 256}, "crop_size": {"height": SIZE, "width": SIZE},
        "resample": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }))  # fmt: skip


RACE = fp.Race(
    name="dinov2",
    log=log,
    model_dir=MODEL_DIR,
    load=lambda: Dinov2Model.from_pretrained(MODEL_DIR).eval(),
    forward=lambda model, pixels: model(pixel_values=pixels).pooler_output,
    size=SIZE,
    title="DINOv2 image forward (saeclip vs transformers)",
    command="runs `bench/dinov2_forward.py`, which alternates {rounds} rounds of the `clip_forward` "
    "bench executable and of transformers in this process",
    workload="DINOv2 ViT-B/14 (facebook/dinov2-base dimensions, pretrained size 518 px), random "
    "weights (seed {seed}), batch {batch} of 3×224×224 (positions interpolated 37² → 16²), fp32, "
    "the same weights file and pixel batch for both",
    output="the pooled output",
    row="full forward (`image_embeds` / `pooler_output`)",
    digits=2,
)


def main() -> int:
    args = fp.parse_args(__doc__.split("\n\n")[0], rounds=3, iters=3, batch=16)
    make_model(args.seed)
    return fp.run(RACE, args)


if __name__ == "__main__":
    sys.exit(main())
