"""Reference oracle for saeclip's SAE-Lens export and import (tests/saelens_interop.rs).

Reads a JSON list of jobs (--jobs FILE) and runs them in order, in one process (importing
sae_lens takes seconds):

  {"op": "run", "sae": DIR, "inputs": IN, "out": OUT}
      Load DIR with sae_lens.SAE.load_from_disk and, for the rows `x` of IN (safetensors),
      write OUT (safetensors): `z` = sae.encode(x), `x_hat` = sae.decode(z), and when IN
      holds `z_saeclip` (saeclip's codes) `x_hat_from_z` = sae.decode(z_saeclip). OUT's
      metadata holds the loaded class, architecture and d_sae. With "training": true the
      folder is loaded with sae_lens.TrainingSAE.load_from_disk instead (SAE-Lens's
      training classes, e.g. matryoshka_batchtopk, whose encode is batch top-k).

  {"op": "make", "out": DIR, "architecture": "topk"|"jumprelu"|"standard"|
   "matryoshka_batchtopk", "d_in": D, "widths": [W1, ...] (matryoshka),
   "d_sae": F, "k": K, "seed": S, "threshold": T, "threshold_spread": 0.0,
   "apply_b_dec_to_input": true, "rescale_acts_by_decoder_norm": false}
      Build an SAE-Lens SAE with random parameters (biases non-zero; jumprelu thresholds
      T + spread·U(0, 1); matryoshka: topk_threshold T) and save it with
      sae.save_model(DIR), as SAE-Lens users do.

A missing sae-lens is an error (exit 2) with the fix, never a skip.

Usage: saelens_reference.py --jobs JOBS.json
"""

import argparse
import json
import sys

try:
    import torch
    from safetensors.torch import load_file, save_file
    from sae_lens import SAE, __version__ as sae_lens_version
    from sae_lens import TrainingSAE
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
except ImportError as e:  # pragma: no cover - the message is the point
    print(
        f"sae-lens is not importable from {sys.executable} ({e}): run `make setup` "
        "(requirements.txt pins sae-lens)",
        file=sys.stderr,
    )
    sys.exit(2)


def run(job):
    cls = TrainingSAE if job.get("training") else SAE
    sae = cls.load_from_disk(job["sae"], device="cpu")
    sae.eval()
    inputs = load_file(job["inputs"])
    out = {}
    with torch.no_grad():
        x = inputs["x"].to(torch.float32)
        z = sae.encode(x)
        out["z"] = z.contiguous()
        out["x_hat"] = sae.decode(z).contiguous()
        if "z_saeclip" in inputs:
            out["x_hat_from_z"] = sae.decode(inputs["z_saeclip"].to(torch.float32)).contiguous()
    meta = {
        "class": type(sae).__name__,
        "architecture": sae.cfg.architecture(),
        "d_sae": str(sae.cfg.d_sae),
        "sae_lens_version": sae_lens_version,
        "hook_name": str(sae.cfg.metadata.hook_name),
    }
    save_file(out, job["out"], metadata=meta)


def make(job):
    arch = job["architecture"]
    common = dict(
        d_in=job["d_in"],
        d_sae=job["d_sae"],
        apply_b_dec_to_input=job.get("apply_b_dec_to_input", True),
        metadata=SAEMetadata(
            model_name="reference/clip", hook_name="blocks.3.hook_resid_post"
        ),
    )
    if arch == "topk":
        sae = TopKSAE(
            TopKSAEConfig(
                k=job["k"],
                rescale_acts_by_decoder_norm=job.get("rescale_acts_by_decoder_norm", False),
                **common,
            )
        )
    elif arch == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    elif arch == "matryoshka_batchtopk":
        sae = MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(
                k=job["k"], matryoshka_widths=list(job["widths"]), **common
            )
        )
    elif arch == "standard":
        sae = StandardSAE(StandardSAEConfig(**common))
    else:
        raise SystemExit(f"unknown architecture {arch}")
    g = torch.Generator().manual_seed(job.get("seed", 0))
    d, f = job["d_in"], job["d_sae"]
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, f, generator=g) / d**0.5)
        sae.W_dec.copy_(torch.randn(f, d, generator=g) / d**0.5)
        sae.b_enc.copy_(torch.randn(f, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d, generator=g) * 0.5)
        if arch == "jumprelu":
            spread = job.get("threshold_spread", 0.0)
            sae.threshold.copy_(
                job.get("threshold", 0.1) + spread * torch.rand(f, generator=g)
            )
        if arch == "matryoshka_batchtopk":
            sae.topk_threshold = torch.tensor(job.get("threshold", 0.1), dtype=torch.double)
    sae.save_model(job["out"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", required=True)
    args = p.parse_args()
    with open(args.jobs) as f:
        jobs = json.load(f)
    for job in jobs:
        {"run": run, "make": make}[job["op"]](job)


if __name__ == "__main__":
    main()
