"""Load a folder `saeclip export --format sparsify|saev` wrote with that tool's own released
code (eai-sparsify 1.3.3 `SparseCoder.load_from_disk`, saev 0.1.0 `saev.nn.load`) and write
its codes and reconstruction of the inputs (tests/interop_export.rs).

Reads `x` [N, D] from --input (safetensors), writes `z` [N, F] and `x_hat` [N, D] to --output.
A missing package is an error (exit 2) with the fix, never a skip.

Usage: export_reference.py --format sparsify|saev --dir DIR --input X --output OUT
"""

import argparse
import os
import sys

os.environ["SPARSIFY_DISABLE_TRITON"] = "1"

try:
    import torch
    from safetensors.torch import load_file, save_file
    import saev.nn
    from sparsify import SparseCoder
except ImportError as e:
    print(f"{e}: run `make setup` (pinned saev and eai-sparsify in requirements.txt)", file=sys.stderr)
    sys.exit(2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--format", required=True, choices=["sparsify", "saev"])
    p.add_argument("--dir", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    a = p.parse_args()
    x = load_file(a.input)["x"].to(torch.float32)
    with torch.no_grad():
        if a.format == "sparsify":
            sae = SparseCoder.load_from_disk(a.dir)
            enc = sae.encode(x)
            z = torch.zeros(x.shape[0], sae.num_latents)
            z.scatter_(1, enc.top_indices, enc.top_acts)
            x_hat = sae.decode(enc.top_acts, enc.top_indices)
        else:
            sae = saev.nn.load(os.path.join(a.dir, "sae.pt"))
            x_hat, z, _ = sae(x)
    save_file({"z": z.contiguous(), "x_hat": x_hat.contiguous()}, a.output)


if __name__ == "__main__":
    main()
