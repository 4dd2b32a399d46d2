#!/usr/bin/env python3
"""Random-weight backbones (DINOv2, DINOv2 with registers, CLIP at the published sizes) and
transformers reference outputs for tests/backbones.rs.

Usage:
    python tests/reference/make_backbones.py --out BASE --name NAME

NAME is one of MODELS (a model and its forward references) or `photos` (real photographs
through each family's PIL image processor and model). Deterministic and offline. Writes
BASE/NAME/:
    model/config.json, model/model.safetensors      save_pretrained of the transformers model
    model/preprocessor_config.json                  when the spec has one
    reference.safetensors                           float32 unless noted:
        splice_layer int64 [1]
        pixel_values.{S} [B,3,S,S]       random inputs of side S, for each S in the spec's sizes
        hidden_states.{S}.{i}            i = 0 (embeddings) .. L (output of block L-1)
        pooled.{S} [B,D] / [B,E]         DINOv2: pooler_output (class token after the final
                                         layernorm); CLIP: image_embeds (projected)
        spliced.{S}                      the same with block splice_layer's output x replaced
                                         by 0.5 * x + 0.1 (a forward hook)
        CLIP only: input_ids int64 [N,77], text_hidden_states.{i}, text_embeds [N,E],
        logits_per_image.{S} [B,N]
photos/: images/photo/<name> (scikit-image's sample photographs, copied), and per model M of
PHOTO_MODELS a directory M/ (as above) plus in reference.safetensors
        pixels.M.<name> [3,S,S]          the model's PIL image processor output
        layer.M.<name> [T,D]             hidden_states[layer + 1] of that input (all tokens)
"""

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor
from transformers import (BitImageProcessorPil, CLIPConfig, CLIPImageProcessorPil, CLIPModel,
                          Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig,
                          Dinov2WithRegistersModel)

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

SPLICE_SCALE, SPLICE_SHIFT = 0.5, 0.1
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TEXT = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
            vocab_size=49408, max_position_embeddings=77)


def dino(**kw):
    return dict(family="dinov2", **kw)


def clip(**kw):
    return dict(family="clip", **kw)


MODELS = {
    # Tiny: pretrained at 28 px = 7x7 patches. 28 keeps the stored positions, 30 too (7x7
    # patches, the remainder dropped by the stride), 36 upsamples them to 9x9, 20
    # downsamples to 5x5.
    "dinov2-tiny": dino(config=dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                    image_size=28, patch_size=4),
                        sizes=[28, 30, 36, 20], images=2, splice_layer=1, seed=2001),
    "dinov2-reg-tiny": dino(registers=True,
                            config=dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                        image_size=28, patch_size=4, num_register_tokens=4),
                            sizes=[28, 36, 20], images=2, splice_layer=1, seed=2002),
    # The giant model's SwiGLU MLP at a tiny width.
    "dinov2-swiglu-tiny": dino(config=dict(hidden_size=48, num_hidden_layers=2,
                                           num_attention_heads=3, image_size=28, patch_size=4,
                                           use_swiglu_ffn=True),
                               sizes=[28, 36], images=2, splice_layer=0, seed=2003),
    # Full size: facebook/dinov2-small and dinov2-with-registers-small dimensions (ViT-S/14,
    # pretrained at 518 px = 37x37) at the 224 px the processors crop to (16x16).
    "dinov2-small": dino(config=dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                     image_size=518, patch_size=14),
                         sizes=[224], images=1, splice_layer=5, seed=2004),
    "dinov2-reg-small": dino(registers=True,
                             config=dict(hidden_size=384, num_hidden_layers=12,
                                         num_attention_heads=6, image_size=518, patch_size=14,
                                         num_register_tokens=4),
                             sizes=[224], images=1, splice_layer=5, seed=2005),
    # CLIP vision geometries at reduced depth (the text tower is kept tiny).
    "clip-b16": clip(vision=dict(hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                                 intermediate_size=3072, patch_size=16, image_size=224,
                                 hidden_act="quick_gelu"),
                     projection_dim=512, sizes=[224], images=1, splice_layer=0, seed=2101),
    "clip-l14": clip(vision=dict(hidden_size=1024, num_hidden_layers=2, num_attention_heads=16,
                                 intermediate_size=4096, patch_size=14, image_size=224,
                                 hidden_act="quick_gelu"),
                     projection_dim=768, sizes=[224], images=1, splice_layer=0, seed=2102),
    "clip-l14-336": clip(vision=dict(hidden_size=1024, num_hidden_layers=1, num_attention_heads=16,
                                     intermediate_size=4096, patch_size=14, image_size=336,
                                     hidden_act="quick_gelu"),
                         projection_dim=768, sizes=[336], images=1, splice_layer=0, seed=2103,
                         processor=dict(size={"shortest_edge": 336},
                                        crop_size={"height": 336, "width": 336})),
    "clip-h14": clip(vision=dict(hidden_size=1280, num_hidden_layers=1, num_attention_heads=16,
                                 intermediate_size=5120, patch_size=14, image_size=224,
                                 hidden_act="gelu"),
                     projection_dim=1024, sizes=[224], images=1, splice_layer=0, seed=2104),
}

# Models the photographs go through: the processor settings differ from each family's
# default so that reading preprocessor_config.json is what makes them agree.
PHOTO_MODELS = {
    "dinov2": dino(config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=28, patch_size=4),
                   processor=dict(size={"shortest_edge": 40},
                                  crop_size={"height": 36, "width": 36},
                                  image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
                   layer=1, seed=2201),
    "dinov2-reg": dino(registers=True,
                       config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=28, patch_size=4, num_register_tokens=2),
                       processor=dict(size={"shortest_edge": 32},
                                      crop_size={"height": 28, "width": 28},
                                      image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
                       layer=0, seed=2202),
    "clip": clip(vision=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=256, patch_size=16, image_size=64,
                             hidden_act="quick_gelu"),
                 projection_dim=32,
                 processor=dict(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64},
                                resample=2),
                 layer=1, seed=2203),
}

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "camera.png", "rocket.jpg"]


def splice(x: Tensor) -> Tensor:
    return SPLICE_SCALE * x + SPLICE_SHIFT


@torch.no_grad()
def perturb(model, seed: int) -> None:
    """Move every parameter off its initial value with seeded noise, keeping activations sane:
    norms 1 + N(0, 0.1) / N(0, 0.1); LayerScale U(0.2, 1.2); biases N(0, 0.05); q, k, fc1
    and the SwiGLU input rescaled to pre-activations of std ~1.5; class, register and position
    embeddings N(0, 0.5) (so that their interpolation shows); the rest + 0.1 std noise."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if name == "logit_scale":
            p.add_(noise, alpha=0.2)
        elif "norm" in name or "layrnorm" in name:
            p.add_(noise, alpha=0.1)
        elif name.endswith("lambda1"):
            p.copy_(0.2 + torch.rand(p.shape, generator=g))
        elif name.endswith(".bias"):
            p.add_(noise, alpha=0.05)
        elif any(s in name for s in ("cls_token", "register_tokens", "mask_token",
                                     "position_embeddings", "class_embedding",
                                     "position_embedding")):
            p.copy_(noise * 0.5)
        elif name.endswith(("q_proj.weight", "k_proj.weight", "query.weight", "key.weight",
                            "fc1.weight", "gate_proj.weight", "up_proj.weight",
                            "weights_in.weight")):
            is_qk = name.endswith(("q_proj.weight", "k_proj.weight", "query.weight", "key.weight"))
            target = 1.5**0.5 if is_qk else 1.5
            p.add_(noise, alpha=0.1 * float(p.std()))
            p.mul_(target / (p.shape[1] ** 0.5 * float(p.std())))
        else:
            p.add_(noise, alpha=0.1 * float(p.std()) + 1e-3)


def build(spec: dict):
    torch.manual_seed(spec["seed"])
    if spec["family"] == "dinov2":
        if spec.get("registers"):
            config = Dinov2WithRegistersConfig(**spec["config"])
            model = Dinov2WithRegistersModel(config)
        else:
            config = Dinov2Config(**spec["config"])
            model = Dinov2Model(config)
    else:
        e = spec["projection_dim"]
        config = CLIPConfig(vision_config=dict(spec["vision"], projection_dim=e),
                            text_config=dict(TEXT, hidden_act=spec["vision"]["hidden_act"],
                                             projection_dim=e),
                            projection_dim=e)
        model = CLIPModel(config)
    config._attn_implementation = "eager"
    model = model.eval()
    perturb(model, spec["seed"] + 1)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def blocks(model, spec):
    if spec["family"] == "dinov2":
        return model.encoder.layer
    return model.vision_model.encoder.layers


def write_model(model, spec: dict, out: Path) -> None:
    model.save_pretrained(str(out))
    if "processor" in spec:
        cls = BitImageProcessorPil if spec["family"] == "dinov2" else CLIPImageProcessorPil
        cls(**spec["processor"]).save_pretrained(str(out))


@torch.no_grad()
def vision_forward(model, spec: dict, pixels: Tensor):
    if spec["family"] == "dinov2":
        out = model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states, out.pooler_output
    out = model.vision_model(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states, model.visual_projection(out.pooler_output)


@torch.no_grad()
def references(model, spec: dict) -> Dict[str, Tensor]:
    ref: Dict[str, Tensor] = {"splice_layer": torch.tensor([spec["splice_layer"]])}
    g = torch.Generator().manual_seed(spec["seed"] + 2)
    layers = len(blocks(model, spec))
    for s in spec["sizes"]:
        pixels = torch.randn(spec["images"], 3, s, s, generator=g)
        ref[f"pixel_values.{s}"] = pixels
        hidden, pooled = vision_forward(model, spec, pixels)
        if len(hidden) != layers + 1:
            raise AssertionError(f"{len(hidden)} hidden states for {layers} blocks")
        for i, h in enumerate(hidden):
            ref[f"hidden_states.{s}.{i}"] = h
        ref[f"pooled.{s}"] = pooled
        hook = blocks(model, spec)[spec["splice_layer"]].register_forward_hook(
            lambda _m, _i, out: (splice(out[0]),) + tuple(out[1:]) if isinstance(out, tuple)
            else splice(out))
        try:
            _, spliced = vision_forward(model, spec, pixels)
        finally:
            hook.remove()
        if torch.allclose(spliced, pooled):
            raise AssertionError("the splice hook changed nothing")
        ref[f"spliced.{s}"] = spliced
    if spec["family"] == "clip":
        ids = torch.randint(1, 49406, (3, 77), generator=g)
        ids[:, 0] = 49406
        for row, end in enumerate([5, 12, 76]):
            ids[row, end] = 49407
            ids[row, end + 1:] = 0
        ref["input_ids"] = ids
        text = model.text_model(input_ids=ids, output_hidden_states=True)
        for i, h in enumerate(text.hidden_states):
            ref[f"text_hidden_states.{i}"] = h
        ref["text_embeds"] = model.text_projection(text.pooler_output)
        out = model(input_ids=ids, pixel_values=ref[f"pixel_values.{spec['sizes'][0]}"])
        ref[f"logits_per_image.{spec['sizes'][0]}"] = out.logits_per_image
    return ref


@torch.no_grad()
def photos(base: Path) -> None:
    import skimage
    root = base / "photos"
    src = Path(skimage.__file__).parent / "data"
    images = root / "images" / "photo"
    images.mkdir(parents=True)
    for name in PHOTOS:
        shutil.copy(src / name, images / name)
    ref: Dict[str, Tensor] = {}
    for m, spec in PHOTO_MODELS.items():
        model = build(spec)
        write_model(model, spec, root / m)
        cls = BitImageProcessorPil if spec["family"] == "dinov2" else CLIPImageProcessorPil
        processor = cls.from_pretrained(str(root / m))
        for name in PHOTOS:
            with Image.open(images / name) as img:
                pixels = processor(images=img, return_tensors="pt")["pixel_values"]
            hidden, _ = vision_forward(model, spec, pixels)
            ref[f"pixels.{m}.{name}"] = pixels[0]
            ref[f"layer.{m}.{name}"] = hidden[spec["layer"] + 1][0]
    save_file({k: v.contiguous() for k, v in ref.items()}, str(root / "reference.safetensors"))


def make(base: Path, name: str) -> None:
    if name == "photos":
        shutil.rmtree(base / name, ignore_errors=True)
        photos(base)
        return
    spec = MODELS[name]
    root = base / name
    shutil.rmtree(root, ignore_errors=True)
    model = build(spec)
    write_model(model, spec, root / "model")
    ref = references(model, spec)
    save_file({k: v.contiguous() for k, v in ref.items()}, str(root / "reference.safetensors"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--name", required=True, choices=sorted(MODELS) + ["photos"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    make(args.out, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
