"""Reference files for `saeclip import` of other tools' SAEs (tests/interop.rs).

Writes, under --out DIR, one folder per case with the SAE saved by that tool's own released
code where it installs here (saev 0.1.0, eai-sparsify 1.3.3, dictionary-learning 0.1.0,
pinned in requirements.txt), otherwise by plain Python following the layout read in the
project's source (the current saev repository's `nn.dump`, ViT-Prisma), and
`expected.safetensors`: inputs `x` [N, D] and the original computation's codes `z` [N, F]
and reconstruction `x_hat` [N, D] on them.

DIR/pickles/ holds torch.save files for the restricted reader's tests: `plain.pt` (tensors
of several dtypes and layouts plus plain values; `plain.safetensors` holds the same tensors
contiguous, `plain.json` the plain values), `parameter.pt` (an nn.Parameter), `module.pt` (a
whole nn.Linear: a class) and `payload.pt` (an object whose unpickling would run
os.system: the test checks that it is refused and that the marker file never appears).

A missing package is an error (exit 2) with the fix, never a skip.

Usage: interop_reference.py --out DIR
"""

import argparse
import json
import os
import sys
from pathlib import Path

# sparsify's Triton decoder needs a GPU; its own switch selects the eager one (same sums).
os.environ["SPARSIFY_DISABLE_TRITON"] = "1"

try:
    import torch
    from safetensors.torch import save_file
    import saev
    import saev.config
    import saev.nn
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.__main__ import RunConfig
    from dictionary_learning.dictionary import AutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.top_k import AutoEncoderTopK
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
except ImportError as e:  # pragma: no cover - the message is the point
    print(
        f"a reference package is not importable from {sys.executable} ({e}): run `make setup` "
        "(requirements.txt pins saev, eai-sparsify and dictionary-learning)",
        file=sys.stderr,
    )
    sys.exit(2)

D = 24
F = 96
K = 8
N = 64


def inputs(seed, scale=1.0, offset=0.7):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, D, generator=g) + offset) * scale


def randomize(module, seed, bias_offset=0.3):
    """Random parameters: unit-norm-ish matrices, non-zero biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5 * 2)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + bias_offset)


def expected(dir, x, z, x_hat):
    save_file(
        {"x": x.contiguous(), "z": z.contiguous(), "x_hat": x_hat.contiguous()},
        str(dir / "expected.safetensors"),
    )


def saev_legacy(out):
    """saev 0.1.0: nn.dump beside the training config.json; data normalised by a mean
    and a scalar read from torch.save files (DataLoad.scale_mean / scale_norm paths)."""
    cfg = saev.config.SparseAutoencoder(d_vit=D, exp_factor=F // D, seed=0)
    sae = saev.nn.SparseAutoencoder(cfg)
    randomize(sae, 1)
    run = out / "saev010"
    run.mkdir(parents=True)
    saev.nn.dump(str(run / "sae.pt"), sae)
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(D, generator=g) * 3.0
    scalar = 7.5
    torch.save(mean, run / "mean.pt")
    torch.save(torch.tensor(scalar), run / "scalar.pt")
    data = saev.config.DataLoad(
        shard_root=str(run / "no-shards"),
        patches="cls",
        layer=7,
        scale_mean="mean.pt",
        scale_norm="scalar.pt",
    )
    train = saev.config.Train(data=data, sae=cfg)
    import dataclasses

    with open(run / "config.json", "w") as f:
        json.dump(dataclasses.asdict(train), f, indent=4)
    x = inputs(3, scale=7.5) + mean
    with torch.no_grad():
        xs = (x - mean) / scalar
        x_hat, f_x, _ = sae(xs)
        x_hat = x_hat * scalar + mean
    expected(run, x, f_x, x_hat)

    # The same kind of file alone: the hook point and the normalisation must come by flag.
    bare = out / "saev010_bare"
    bare.mkdir()
    saev.nn.dump(str(bare / "sae.pt"), sae)
    x = inputs(4)
    with torch.no_grad():
        x_hat, f_x, _ = sae(x)
    expected(bare, x, f_x, x_hat)


def saev_current(out, name, activation, threshold=None):
    """The current saev repository's nn.dump (schema 5) in <run>/checkpoint/, written by
    plain Python from src/saev/nn/modeling.py: no b_dec subtraction in the encoder."""
    g = torch.Generator().manual_seed(5)
    w_dec = torch.randn(F, D, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    state = {
        "W_dec": w_dec,
        "b_dec": torch.randn(D, generator=g) * 0.5,
        "W_enc": w_dec.T.clone() + torch.randn(D, F, generator=g) * 0.1,
        "b_enc": torch.randn(F, generator=g) * 0.2 + 0.1,
    }
    params = {"key": activation[0], "top_k": K, "sparsity": {"cls": "NoSparsity", "params": {"key": "no-sparsity"}}}
    if threshold is not None:
        state["activation.threshold"] = torch.tensor(threshold)
        params["momentum"] = 0.1
    header = {
        "schema": 5,
        "cfg": {
            "d_model": D,
            "d_sae": F,
            "activation": {"cls": activation[1], "params": params},
            "reinit_blend": 0.8,
            "reinit_enc_dec_tranpose": True,
            "remove_parallel_grads": True,
            "normalize_w_dec": True,
        },
        "commit": "unknown",
        "lib": "1.0.0",
    }
    ckpt = out / name / "checkpoint"
    ckpt.mkdir(parents=True)
    with open(ckpt / "sae.pt", "wb") as fd:
        fd.write((json.dumps(header) + "\n").encode())
        torch.save(state, fd)
    with open(ckpt / "config.json", "w") as f:
        json.dump(
            {"train_data": {"shards": str(out / "no-shards"), "tokens": "content", "layer": 5, "scale_norm": False}},
            f,
            indent=2,
        )
    x = inputs(6)
    h = x @ state["W_enc"] + state["b_enc"]
    if activation[1] == "TopK":
        _, idx = torch.topk(h, K, dim=-1)
        z = torch.zeros_like(h).scatter(-1, idx, 1.0) * h
    else:
        z = torch.where(h > threshold, h, torch.zeros_like(h))
    x_hat = z @ state["W_dec"] + state["b_dec"]
    expected(out / name, x, z, x_hat)


def sparsify_cases(out):
    """SparseCoder.save_to_disk: one folder, and a run with one folder per hook point."""

    def coder(seed):
        sae = SparseCoder(D, SparseCoderConfig(num_latents=F, k=K))
        randomize(sae, seed)
        return sae

    def run(sae, x):
        with torch.no_grad():
            enc = sae.encode(x)
            z = torch.zeros(N, F).scatter(-1, enc.top_indices, enc.top_acts)
            x_hat = sae.decode(enc.top_acts, enc.top_indices)
        return z, x_hat

    single = out / "sparsify"
    sae = coder(7)
    sae.save_to_disk(single)
    x = inputs(8)
    expected(single, x, *run(sae, x))

    hooks = ["vision_model.encoder.layers.3", "vision_model.encoder.layers.10"]
    root = out / "sparsify_run"
    for i, h in enumerate(hooks):
        sae = coder(9 + i)
        sae.save_to_disk(root / h)
        x = inputs(11 + i)
        expected(root / h, x, *run(sae, x))
    RunConfig(
        sae=SparseCoderConfig(num_latents=F, k=K),
        model="openai/clip-vit-base-patch32",
        hookpoints=hooks,
    ).save_json(root / "config.json")


def dictionary_learning_cases(out):
    """Each dictionary class's state dict saved as dictionary_learning's trainer saves it
    (ae.pt beside config.json {"trainer": ...})."""
    cases = [
        ("dl_standard", AutoEncoder(D, F), "AutoEncoder", "StandardTrainer", None),
        ("dl_topk", AutoEncoderTopK(D, F, K), "AutoEncoderTopK", "TopKTrainer", None),
        ("dl_batchtopk", BatchTopKSAE(D, F, K), "BatchTopKSAE", "BatchTopKTrainer", 0.35),
        (
            "dl_matryoshka",
            MatryoshkaBatchTopKSAE(D, F, K, group_sizes=[16, 32, 48]),
            "MatryoshkaBatchTopKSAE",
            "MatryoshkaBatchTopKTrainer",
            0.3,
        ),
        ("dl_jumprelu", JumpReluAutoEncoder(D, F), "JumpReluAutoEncoder", "JumpReluTrainer", None),
    ]
    for i, (name, ae, dict_class, trainer_class, threshold) in enumerate(cases):
        randomize(ae, 20 + i)
        with torch.no_grad():
            if threshold is not None:
                ae.threshold.fill_(threshold)
            if dict_class == "JumpReluAutoEncoder":
                g = torch.Generator().manual_seed(40)
                ae.threshold.copy_(torch.rand(F, generator=g) * 0.8 - 0.1)
        d = out / name
        d.mkdir()
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, d / "ae.pt")
        trainer = {
            "dict_class": dict_class,
            "trainer_class": trainer_class,
            "activation_dim": D,
            "dict_size": F,
            "layer": 9,
            "lm_name": "openai/clip-vit-base-patch32",
            "submodule_name": "vision_model.encoder.layers.9",
            "device": "cpu",
        }
        if hasattr(ae, "k"):
            trainer["k"] = int(ae.k)
        with open(d / "config.json", "w") as f:
            json.dump({"trainer": trainer, "buffer": {"d_submodule": D}}, f, indent=4)
        x = inputs(30 + i)
        with torch.no_grad():
            x_hat, z = ae(x, output_features=True)
        expected(d, x, z, x_hat)


class Payload:
    """Unpickling this runs os.system (what a malicious .pt would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def prisma_cases(out):
    """ViT-Prisma: config.json (VisionModelSAERunnerConfig.save_config's keys) and a .pt
    state dict, computed as SparseAutoencoder.encode_standard / forward do."""
    for name, act, k, wrap in [("prisma_topk", "topk", K, False), ("prisma_relu", "relu", None, True)]:
        g = torch.Generator().manual_seed(50 + len(name))
        state = {
            "W_enc": torch.randn(D, F, generator=g) / D**0.5,
            "b_enc": torch.randn(F, generator=g) * 0.2,
            "W_dec": torch.randn(F, D, generator=g) / F**0.5,
            "b_dec": torch.randn(D, generator=g) * 0.5,
        }
        cfg = {
            "model_class_name": "HookedViT",
            "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
            "hook_point_layer": 9,
            "layer_subtype": "hook_resid_post",
            "hook_point_head_index": None,
            "context_size": 50,
            "use_patches_only": False,
            "d_in": D,
            "activation_fn_str": act,
            "activation_fn_kwargs": {"k": k} if k else {},
            "cls_token_only": act == "topk",
            "normalize_activations": "none",
            "architecture": "standard",
            "expansion_factor": F // D,
            "d_sae": F,
            "device": {"__type__": "torch.device", "value": "cpu"},
            "dtype": {"__type__": "torch.dtype", "value": "torch.float32"},
            "vit_model_cfg": {"n_layers": 12, "d_model": D},
        }
        d = out / name
        d.mkdir()
        with open(d / "config.json", "w") as f:
            json.dump(cfg, f, indent=4)
        payload = {"cfg": {"d_in": D}, "state_dict": state} if wrap else state
        torch.save(payload, d / "n_images_520028.pt")
        x = inputs(60 + len(name))
        pre = (x - state["b_dec"]) @ state["W_enc"] + state["b_enc"]
        if act == "topk":
            top = torch.topk(pre, k=k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        else:
            z = torch.relu(pre)
        x_hat = z @ state["W_dec"] + state["b_dec"]
        expected(d, x, z, x_hat)


def pickles(out):
    d = out / "pickles"
    d.mkdir()
    g = torch.Generator().manual_seed(70)
    base = torch.randn(5, 6, generator=g)
    shared = torch.arange(20, dtype=torch.float64)
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.arange(-5, 5),
        "i32": torch.tensor([1, -2, 3], dtype=torch.int32),
        "bool": torch.tensor([True, False, True]),
        "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "transposed": base.t(),
        "slice": base[1:4, 2:],
        "view_a": shared[2:7],
        "view_b": shared.view(4, 5)[:, 1],
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    plain = {
        "int": 3,
        "big": 2**40,
        "neg": -7,
        "float": 0.125,
        "str": "hello é",
        "none": None,
        "flag": True,
        "list": [1, 2.5, "x"],
        "tuple": (4, None),
        "nested": {"a": [True, False]},
    }
    torch.save({**tensors, **plain}, d / "plain.pt")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "plain.safetensors"))
    with open(d / "plain.json", "w") as f:
        json.dump(plain, f)
    torch.save(torch.nn.Parameter(torch.ones(2, 2) * 3), d / "parameter.pt")
    torch.save(torch.nn.Linear(2, 3), d / "module.pt")
    torch.save({"W": torch.ones(2), "x": Payload(d / "PWNED")}, d / "payload.pt")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    saev_legacy(out)
    saev_current(out, "saev_topk", ("top-k", "TopK"))
    saev_current(out, "saev_batchtopk", ("batch-top-k", "BatchTopK"), threshold=0.6)
    sparsify_cases(out)
    dictionary_learning_cases(out)
    prisma_cases(out)
    pickles(out)


if __name__ == "__main__":
    main()
