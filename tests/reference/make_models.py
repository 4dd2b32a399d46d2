#!/usr/bin/env python3
"""Build random-weight CLIP models and reference outputs for saeclip's CLIP tests.

Usage:
    python tests/reference/make_models.py --out BASE --name NAME

NAME is tiny-quick, tiny-gelu or vit-b-32 (see MODELS). Everything is deterministic and
offline. Writes BASE/NAME/:
    hf/config.json, hf/model.safetensors                 transformers CLIPModel.save_pretrained
    open_clip/open_clip_config.json,
    open_clip/open_clip_model.safetensors                the same weights under OpenAI names
    torchscript.pt                                       scripts/export_torchscript.py of hf/
    reference.safetensors                                inputs and outputs, listed below

reference.safetensors (float32 unless noted; B images, N texts, L vision blocks, M text blocks):
    pixel_values [B,3,S,S]; input_ids int64 [N,77] (open_clip tokenizer, zero padded);
    splice_layer int64 [1]
    hf.hidden_states.{0..L}       vision residual stream; 0 = embeddings after pre_layrnorm,
                                  i = output of block i-1
    hf.text_hidden_states.{0..M}  the same for the text encoder (0 = token + position embeddings)
    hf.image_embeds [B,E], hf.text_embeds [N,E]   projected, not normalised
    hf.logits_per_image [B,N]
    hf.spliced.image_embeds [B,E] image embeddings with block splice_layer's output x
                                  replaced by 0.5 * x + 0.1
    open_clip.resblocks.{0..L-1}  [B,T,D] output of visual.transformer.resblocks[i]
    open_clip.image_features, open_clip.text_features   normalize=False
    open_clip.logits [B,N]        exp(logit_scale) * normalised image @ normalised text.T
The script fails if transformers, open_clip and the TorchScript export disagree (<= 1e-4 abs
for the tiny models, <= 1e-3 relative to the reference's largest value for vit-b-32).
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

import open_clip
import transformers
from transformers import CLIPConfig, CLIPModel

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parents[2]
EXPORT_SCRIPT = ROOT / "scripts" / "export_torchscript.py"

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
TEXTS = ["a photo of a cat", "a photo of a dog.", "an extremely long description " * 20, ""]
SPLICE_SCALE, SPLICE_SHIFT = 0.5, 0.1

MODELS = {
    "tiny-quick": dict(
        vision=dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                    intermediate_size=256, patch_size=32, image_size=224, hidden_act="quick_gelu"),
        text=dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=256, vocab_size=49408, max_position_embeddings=77,
                  hidden_act="quick_gelu"),
        projection_dim=32, images=3, splice_layer=1, seed=1001, tolerance=("abs", 1e-4),
    ),
    "tiny-gelu": dict(
        vision=dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=3,
                    intermediate_size=384, patch_size=16, image_size=64, hidden_act="gelu"),
        text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, vocab_size=49408, max_position_embeddings=77,
                  hidden_act="gelu"),
        projection_dim=48, images=3, splice_layer=1, seed=1002, tolerance=("abs", 1e-4),
    ),
    # CLIPConfig's defaults are openai/clip-vit-base-patch32's dimensions.
    "vit-b-32": dict(
        vision=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, patch_size=32, image_size=224, hidden_act="quick_gelu"),
        text=dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8,
                  intermediate_size=2048, vocab_size=49408, max_position_embeddings=77,
                  hidden_act="quick_gelu"),
        projection_dim=512, images=2, splice_layer=5, seed=1003, tolerance=("rel", 1e-3),
    ),
}


def load_export_module():
    spec = importlib.util.spec_from_file_location("export_torchscript", EXPORT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def make_config(spec: dict) -> CLIPConfig:
    e = spec["projection_dim"]
    config = CLIPConfig(
        vision_config=dict(spec["vision"], layer_norm_eps=1e-5, projection_dim=e),
        text_config=dict(spec["text"], layer_norm_eps=1e-5, projection_dim=e),
        projection_dim=e,
    )
    config._attn_implementation = "eager"
    return config


def _is_layer_norm(name: str) -> bool:
    return any(s in name for s in ("layer_norm1", "layer_norm2", "pre_layrnorm", "post_layernorm",
                                   "final_layer_norm"))


@torch.no_grad()
def perturb(model: CLIPModel, seed: int) -> None:
    """Move every parameter off its initial value with seeded noise, keeping activations sane.

    - layer norms: weight 1 + N(0, 0.1), bias N(0, 0.1);
    - linear biases (zero at init): N(0, 0.05);
    - q/k projections rescaled so attention logits have a std of about 1.5 (at init they are
      ~1/(2 layers): near-uniform attention, which would hide scale, head-split and mask bugs);
    - fc1 rescaled so MLP pre-activations have a std of about 1.5, where quick_gelu and gelu
      differ;
    - other tensors (embeddings, projections, class token): + 0.1 * their std * N(0, 1);
    - logit_scale: + N(0, 0.2) around log(1/0.07).
    Stds of the rescaled weights are measured on the weights, so any width/depth works."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if name == "logit_scale":
            p.add_(noise, alpha=0.2)
        elif _is_layer_norm(name):
            p.add_(noise, alpha=0.1)
        elif name.endswith(".bias"):
            p.add_(noise, alpha=0.05)
        elif name.endswith(("q_proj.weight", "k_proj.weight", "fc1.weight")):
            # output std ~ sqrt(fan_in) * weight std for unit-variance (layer-normed) inputs;
            # attention logits ~ std(q) * std(k) after the 1/sqrt(head width) scaling
            target = 1.5 if name.endswith("fc1.weight") else 1.5**0.5
            p.add_(noise, alpha=0.1 * float(p.std()))
            p.mul_(target / (p.shape[1] ** 0.5 * float(p.std())))
        else:
            p.add_(noise, alpha=0.1 * float(p.std()))


def build_hf(name: str, spec: dict) -> CLIPModel:
    torch.manual_seed(spec["seed"])
    model = CLIPModel(make_config(spec)).eval()
    perturb(model, spec["seed"] + 1)
    return model


def check_every_parameter_matters(model: CLIPModel, pixels: Tensor, ids: Tensor) -> List[str]:
    """Names of parameters whose gradient of a random projection of the outputs is (near) zero.

    Attention key biases are the expected entries: softmax is invariant to them."""
    model.zero_grad()
    out = model(input_ids=ids, pixel_values=pixels)
    g = torch.Generator().manual_seed(7)
    loss = ((out.image_embeds * torch.randn(out.image_embeds.shape, generator=g)).sum()
            + (out.text_embeds * torch.randn(out.text_embeds.shape, generator=g)).sum()
            + out.logits_per_image.sum())
    loss.backward()
    inert = []
    for name, p in model.named_parameters():
        if p.grad is None or float(p.grad.abs().max()) < 1e-7:
            inert.append(name)
    model.zero_grad()
    for p in model.parameters():
        p.requires_grad_(False)
    return inert


# ---------------------------------------------------------------------------------------------
# open_clip conversion
# ---------------------------------------------------------------------------------------------


def write_open_clip(export, model: CLIPModel, out_dir: Path) -> Tuple[dict, Dict[str, Tensor]]:
    model_cfg = export.hf_to_openclip_config(model.config)
    v, t = model.config.vision_config, model.config.text_config
    state = export.hf_to_openclip_state_dict(model.state_dict(), v.num_hidden_layers, t.num_hidden_layers)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}, indent=2) + "\n")
    save_file(state, str(out_dir / "open_clip_model.safetensors"), metadata={"format": "pt"})
    return model_cfg, state


def load_open_clip(out_dir: Path) -> open_clip.model.CLIP:
    """Build open_clip's CLIP from the written config and load the written weights strictly,
    both directly and through open_clip's own loader (create_model('local-dir:...'))."""
    model_cfg = json.loads((out_dir / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.model.CLIP(**model_cfg)
    model.load_state_dict(load_file(str(out_dir / "open_clip_model.safetensors")), strict=True)
    via_factory = open_clip.create_model(f"local-dir:{out_dir}", pretrained=None, load_weights=True)
    for (k1, a), (k2, b) in zip(model.state_dict().items(), via_factory.state_dict().items()):
        if k1 != k2 or not torch.equal(a, b):
            raise AssertionError(f"open_clip.create_model(local-dir) loaded {k2} differently")
    return model.eval()


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def make_inputs(spec: dict, image_size: int, seed: int) -> Tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(spec["images"], 3, image_size, image_size, generator=g)
    ids = open_clip.tokenizer.tokenize(TEXTS, context_length=77).to(torch.int64)
    return pixels, ids


def splice(x: Tensor) -> Tensor:
    return SPLICE_SCALE * x + SPLICE_SHIFT


def _hf_forward(model: CLIPModel, pixels: Tensor, ids: Tensor) -> Dict[str, Tensor]:
    """One CLIPModel forward. Its vision/text_model_output.pooler_output is what
    get_image_features / get_text_features return: projected, not normalised."""
    out = model(input_ids=ids, pixel_values=pixels, output_hidden_states=True)
    ref = {f"hf.hidden_states.{i}": h for i, h in enumerate(out.vision_model_output.hidden_states)}
    ref.update({f"hf.text_hidden_states.{i}": h for i, h in enumerate(out.text_model_output.hidden_states)})
    ref["hf.image_embeds"] = out.vision_model_output.pooler_output
    ref["hf.text_embeds"] = out.text_model_output.pooler_output
    ref["hf.logits_per_image"] = out.logits_per_image
    return ref


@torch.no_grad()
def hf_references(model: CLIPModel, pixels: Tensor, ids: Tensor, splice_layer: int) -> Dict[str, Tensor]:
    ref: Dict[str, Tensor] = {}
    ref.update(_hf_forward(model, pixels, ids))
    layer = model.vision_model.encoder.layers[splice_layer]
    handle = layer.register_forward_hook(lambda _m, _i, o: splice(o))
    try:
        ref["hf.spliced.image_embeds"] = model.get_image_features(pixel_values=pixels).pooler_output
    finally:
        handle.remove()
    return ref


@torch.no_grad()
def open_clip_references(model, pixels: Tensor, ids: Tensor, splice_layer: int) -> Dict[str, Tensor]:
    ref: Dict[str, Tensor] = {}
    blocks = model.visual.transformer.resblocks
    seen: List[Tensor] = []
    handles = [b.register_forward_hook(lambda _m, _i, o: seen.append(o)) for b in blocks]
    try:
        image = model.encode_image(pixels, normalize=False)
    finally:
        for h in handles:
            h.remove()
    if not model.visual.transformer.batch_first:  # open_clip 3.x is batch first; older is not
        seen = [o.transpose(0, 1) for o in seen]
    for i, h in enumerate(seen):
        ref[f"open_clip.resblocks.{i}"] = h
    text = model.encode_text(ids, normalize=False)
    ref["open_clip.image_features"] = image
    ref["open_clip.text_features"] = text
    ref["open_clip.logits"] = model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    # not stored: spliced embeddings and text block outputs, compared with transformers below
    handle = blocks[splice_layer].register_forward_hook(lambda _m, _i, o: splice(o))
    try:
        ref["check.open_clip.spliced"] = model.encode_image(pixels, normalize=False)
    finally:
        handle.remove()
    seen.clear()
    handles = [b.register_forward_hook(lambda _m, _i, o: seen.append(o)) for b in model.transformer.resblocks]
    try:
        model.encode_text(ids)
    finally:
        for h in handles:
            h.remove()
    for i, h in enumerate(seen):
        ref[f"check.open_clip.text_resblocks.{i}"] = h
    return ref


@torch.no_grad()
def torchscript_references(path: Path, pixels: Tensor, ids: Tensor, layers: int,
                           splice_layer: int) -> Dict[str, Tensor]:
    """The written TorchScript file on the reference inputs (the exporter itself already
    compared every layer with transformers on other random inputs)."""
    ts = torch.jit.load(str(path), map_location="cpu")
    ref = {f"check.ts.residual.{i}": ts.residual(pixels, i) for i in sorted({-1, 0, splice_layer, layers - 1})}
    ref["check.ts.image"] = ts.encode_image(pixels)
    ref["check.ts.text"] = ts.encode_text(ids)
    ref["check.ts.spliced"] = ts.from_layer(splice(ts.residual(pixels, splice_layer)), splice_layer)
    ref["check.ts.logit_scale"] = ts.get_logit_scale()
    ref["check.ts.config"] = torch.tensor(ts.config())
    return ref


def compare_all(ref: Dict[str, Tensor], tolerance: Tuple[str, float], vision_layers: int,
                text_layers: int, logit_scale: Tensor) -> List[Tuple[str, float, float]]:
    """(what, max abs diff, diff relative to the reference's largest value) for each pair."""
    pairs = []
    for i in range(-1, vision_layers):
        if i >= 0:
            pairs.append((f"open_clip.resblocks.{i}", f"hf.hidden_states.{i + 1}"))
        if f"check.ts.residual.{i}" in ref:
            pairs.append((f"check.ts.residual.{i}", f"hf.hidden_states.{i + 1}"))
    for i in range(text_layers):
        pairs.append((f"check.open_clip.text_resblocks.{i}", f"hf.text_hidden_states.{i + 1}"))
    pairs += [
        ("open_clip.image_features", "hf.image_embeds"),
        ("open_clip.text_features", "hf.text_embeds"),
        ("open_clip.logits", "hf.logits_per_image"),
        ("check.open_clip.spliced", "hf.spliced.image_embeds"),
        ("check.ts.image", "hf.image_embeds"),
        ("check.ts.text", "hf.text_embeds"),
        ("check.ts.spliced", "hf.spliced.image_embeds"),
    ]
    rows = []
    for got, want in pairs:
        a, b = ref[got], ref[want]
        if a.shape != b.shape:
            raise AssertionError(f"{got} {tuple(a.shape)} vs {want} {tuple(b.shape)}")
        d = float((a - b).abs().max())
        rows.append((f"{got} vs {want}", d, d / float(b.abs().max())))
    d = float((ref["check.ts.logit_scale"] - logit_scale).abs())
    rows.append(("check.ts.logit_scale vs hf logit_scale", d, d / abs(float(logit_scale))))
    kind, tol = tolerance
    bad = [r for r in rows if not (r[1] if kind == "abs" else r[2]) <= tol]
    if bad:
        raise AssertionError("references disagree: " + "; ".join(f"{w}: abs {d:.3g} rel {r:.3g}" for w, d, r in bad))
    return rows


@torch.no_grad()
def sdpa_difference(hf_dir: Path, pixels: Tensor, ids: Tensor, ref: Dict[str, Tensor]) -> Dict[str, float]:
    model = CLIPModel.from_pretrained(str(hf_dir), attn_implementation="sdpa").eval()
    got = _hf_forward(model, pixels, ids)
    diff = lambda keys: max(float((got[k] - ref[k]).abs().max()) for k in keys)  # noqa: E731
    hidden = [k for k in got if "hidden_states" in k]
    return {"hidden states": diff(hidden), "embeds": diff(["hf.image_embeds", "hf.text_embeds"]),
            "logits": diff(["hf.logits_per_image"])}


def activation_summary(ref: Dict[str, Tensor], vision_layers: int) -> str:
    stds = [float(ref[f"hf.hidden_states.{i}"].std()) for i in range(vision_layers + 1)]
    img = F.normalize(ref["hf.image_embeds"], dim=-1)
    txt = F.normalize(ref["hf.text_embeds"], dim=-1)
    off = lambda m: m[~torch.eye(m.shape[0], dtype=torch.bool)]  # noqa: E731
    return (f"vision residual std by layer {min(stds):.3g}..{max(stds):.3g}; "
            f"|image_embeds| {float(ref['hf.image_embeds'].norm(dim=-1).mean()):.3g}, "
            f"|text_embeds| {float(ref['hf.text_embeds'].norm(dim=-1).mean()):.3g}; "
            f"cos image-image max {float(off(img @ img.T).max()):.3f}, "
            f"text-text max {float(off(txt @ txt.T).max()):.3f}; "
            f"logits {float(ref['hf.logits_per_image'].min()):.3g}..{float(ref['hf.logits_per_image'].max()):.3g}")


# ---------------------------------------------------------------------------------------------


def make(base: Path, name: str) -> None:
    spec = MODELS[name]
    start = last = time.perf_counter()
    lap = {}

    def mark(what: str) -> None:
        nonlocal last
        now = time.perf_counter()
        lap[what], last = now - last, now

    export = load_export_module()
    # Built in a scratch directory and moved to BASE/NAME at the end: a failed run leaves no
    # half-written model behind, and a rerun never mixes old and new files.
    final = base / name
    root = base / f".{name}.partial"
    shutil.rmtree(root, ignore_errors=True)
    hf_dir, oc_dir = root / "hf", root / "open_clip"
    root.mkdir(parents=True)

    model = build_hf(name, spec)
    v, t = model.config.vision_config, model.config.text_config
    pixels, ids = make_inputs(spec, v.image_size, spec["seed"] + 2)
    inert = check_every_parameter_matters(model, pixels[:1], ids)
    unexpected = [n for n in inert if not n.endswith("k_proj.bias")]
    if unexpected:
        raise AssertionError(f"parameters with no influence on the outputs: {unexpected}")
    model.save_pretrained(str(hf_dir), safe_serialization=True)
    mark("build+save hf")

    # Everything below uses the files as written.
    hf, info = CLIPModel.from_pretrained(str(hf_dir), attn_implementation="eager", output_loading_info=True)
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise AssertionError(f"{hf_dir} does not reload cleanly: {info}")
    hf = hf.eval()
    with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
        hf_keys = sorted(f.keys())
    write_open_clip(export, hf, oc_dir)
    oc = load_open_clip(oc_dir)
    mark("open_clip convert+load")

    export_diffs = export.export(hf_dir, root / "torchscript.pt", check=False, verbose=False,
                                 source_label=f"{name}/hf/model.safetensors")
    mark("torchscript export")

    splice_layer = spec["splice_layer"]
    ref = {"pixel_values": pixels, "input_ids": ids,
           "splice_layer": torch.tensor([splice_layer], dtype=torch.int64)}
    ref.update(hf_references(hf, pixels, ids, splice_layer))
    ref.update(open_clip_references(oc, pixels, ids, splice_layer))
    ref.update(torchscript_references(root / "torchscript.pt", pixels, ids, v.num_hidden_layers, splice_layer))
    if ref["check.ts.config"].tolist() != [
        v.num_hidden_layers, v.hidden_size, v.num_attention_heads, t.num_hidden_layers, t.hidden_size,
        t.num_attention_heads, model.config.projection_dim, v.image_size, v.patch_size,
        t.max_position_embeddings, t.vocab_size,
    ]:
        raise AssertionError(f"torchscript config() {ref['check.ts.config'].tolist()} is wrong")
    for k, x in ref.items():
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise AssertionError(f"{k} is not finite")
    rows = compare_all(ref, spec["tolerance"], v.num_hidden_layers, t.num_hidden_layers,
                       hf.logit_scale.detach())
    sdpa = sdpa_difference(hf_dir, pixels, ids, ref)
    mark("references")

    stored = {k: x.detach().contiguous() for k, x in ref.items() if not k.startswith("check.")}
    save_file(stored, str(root / "reference.safetensors"),
              # one key: safetensors writes several in no fixed order, and the bytes should repeat
              metadata={"saeclip": json.dumps({
                  "format": "saeclip-clip-reference", "version": 1, "name": name,
                  "splice": f"{SPLICE_SCALE} * x + {SPLICE_SHIFT}", "texts": TEXTS,
                  "torch": torch.__version__, "transformers": transformers.__version__,
                  "open_clip": open_clip.__version__}, sort_keys=True)})
    if final.exists():
        shutil.rmtree(final)
    os.replace(root, final)
    mark("write")
    total = time.perf_counter() - start

    print(f"{name}: wrote {final}")
    for f in sorted(p for p in final.rglob("*") if p.is_file()):
        print(f"  {f.relative_to(base)}  {f.stat().st_size / 1e6:.2f} MB")
    print(f"  hf keys: {len(hf_keys)} tensors"
          f"{', position_ids present' if any('position_ids' in k for k in hf_keys) else ', no position_ids'}")
    print(f"  parameters with ~zero gradient: {len(inert)}, all attention key biases (softmax ignores them)")
    print(f"  {activation_summary(ref, v.num_hidden_layers)}")
    worst = max(rows, key=lambda r: r[1])
    worst_rel = max(rows, key=lambda r: r[2])
    print(f"  max abs diff over {len(rows)} cross-checks: {worst[1]:.3g} ({worst[0]})")
    print(f"  max rel diff: {worst_rel[2]:.3g} ({worst_rel[0]})")
    for what, d, r in rows:
        if not what.startswith(("open_clip.resblocks", "check.ts.residual", "check.open_clip.text_resblocks")):
            print(f"    {what}: abs {d:.3g} rel {r:.3g}")
    print(f"  export_torchscript self-check: " + ", ".join(f"{k} {d:.3g}" for k, d in export_diffs.items()))
    print("  sdpa vs eager max abs diff: " + ", ".join(f"{k} {d:.3g}" for k, d in sdpa.items()))
    print("  time: " + ", ".join(f"{k} {s:.1f}s" for k, s in lap.items()) + f", total {total:.1f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="base directory; NAME/ is created in it")
    parser.add_argument("--name", required=True, choices=sorted(MODELS))
    args = parser.parse_args()
    make(args.out, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
