"""saeclip vs transformers: SigLIP base-patch16-224 image-forward throughput on the CPU.

Part of `make bench-clip`. It makes (once) a seeded random-weight transformers SiglipModel
with SiglipConfig() defaults (google/siglip-base-patch16-224's dimensions) under
target/bench/siglip-base-hf/ and a seeded pixel batch, then races transformers'
`SiglipModel.get_image_features` against saeclip through bench/forward_peer.py (alternating
rounds, the same intra-op threads, both image embeddings (the attention-pooling head's
output) checked equal, the `<!-- siglip_forward -->` section of bench/RESULTS.md rewritten).
"""

from __future__ import annotations

import sys

import torch
from transformers import SiglipConfig, SiglipModel

import forward_peer as fp

MODEL_DIR = fp.BENCH_DIR / "siglip-base-hf"


def log(msg: str) -> None:
    print(f"[bench-siglip] {msg}", file=sys.stderr, flush=True)


def make_model(seed: int) -> None:
    if (MODEL_DIR / "config.json").is_file() and (MODEL_DIR / "model.safetensors").is_file():
        return
    log(f"creating random-weight SigLIP base-patch16-224 (seed {seed}) in {MODEL_DIR}")
    torch.manual_seed(seed)
    SiglipModel(SiglipConfig()).eval().save_pretrained(MODEL_DIR)


def features(model, pixels):
    out = model.get_image_features(pixel_values=pixels)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


RACE = fp.Race(
    name="siglip",
    log=log,
    model_dir=MODEL_DIR,
    load=lambda: SiglipModel.from_pretrained(MODEL_DIR).eval(),
    forward=features,
    size=224,
    title="SigLIP image forward (saeclip vs transformers)",
    command="runs `bench/siglip_forward.py`: {rounds} alternating rounds of the `clip_forward` "
    "bench executable and of transformers in this process",
    workload="SigLIP base-patch16-224 (SiglipConfig() defaults), random weights (seed {seed}), "
    "batch {batch} of 3×224×224, fp32, image embeddings through the attention-pooling head",
    output="the image embeddings",
    row="full image forward (`image_embeds` / `get_image_features`)",
    digits=1,
)


def main() -> int:
    args = fp.parse_args(__doc__.split("\n\n")[0], rounds=2, iters=2, batch=8)
    make_model(args.seed)
    return fp.run(RACE, args)


if __name__ == "__main__":
    sys.exit(main())
