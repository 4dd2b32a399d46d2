#!/usr/bin/env python3
"""Build random-weight SigLIP / SigLIP 2 models and transformers reference outputs for
tests/siglip_parity.rs.

Usage:
    python tests/reference/make_siglip.py --out BASE --name NAME

NAME is one of MODELS. Deterministic and offline. Writes BASE/NAME/:
    hf/config.json, hf/model.safetensors     SiglipModel / Siglip2Model.save_pretrained
    reference.safetensors                    inputs and outputs, listed below

reference.safetensors (float32 unless noted; B images, N texts, L vision blocks, M text blocks):
    pixel_values [B,3,S,S] (siglip2: the square image before patchification);
    input_ids int64 [N,T]; splice_layer int64 [1]
    hf.hidden_states.{0..L}        vision residual stream; 0 = patch + position embeddings,
                                   i = output of block i-1
    hf.text_hidden_states.{0..M}   the same for the text encoder
    hf.image_embeds [B,E]          vision pooler_output (the attention-pooling head)
    hf.text_embeds [N,E]           text pooler_output (head of the last token)
    hf.logits_per_image [B,N]      exp(logit_scale) * cos + logit_bias
    hf.probs [B,N]                 sigmoid(logits_per_image)
    hf.spliced.image_embeds [B,E]  image embeddings with block splice_layer's output x replaced
                                   by 0.5 * x + 0.1
siglip2 models are run as transformers runs a square image at a fixed grid: pixel values
patchified as Siglip2ImageProcessor does, spatial_shapes (grid, grid), attention mask of ones.

The tiny models' hf/ also holds what a published directory holds and the full pipeline uses:
    hf/preprocessor_config.json   SigLIP: fixed size, BICUBIC, mean = std = 0.5;
                                  SigLIP 2: patch_size, max_num_patches, BILINEAR
    hf/tokenizer.json, hf/tokenizer_config.json
                                  a Gemma-style BPE trained here on the zero-shot templates
                                  (GemmaTokenizer, add_eos_token), within the text vocabulary
    photos/*.png                  scikit-image sample photographs (SigLIP 2: the square one only,
                                  where its NaFlex processor makes the fixed grid)
and reference.safetensors adds:
    prompt.input_ids [P,64]       AutoTokenizer(hf/)(PROMPTS, padding="max_length", max_length=64,
                                  truncation=True)
    prompt.text_embeds [P,E]
    photo.pixel_values            the model's own PIL image processor on photos/ (SigLIP:
                                  SiglipImageProcessorPil [F,3,S,S]; SigLIP 2:
                                  Siglip2ImageProcessorPil, patchified [F,N,p*p*3])
    photo.image_embeds [F,E], photo.logits [F,P], photo.probs [F,P] (sigmoid)
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import save_file
from torch import Tensor

import transformers
from transformers import Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

SPLICE_SCALE, SPLICE_SHIFT = 0.5, 0.1

PHOTOS = ["astronaut", "coffee", "chelsea"]
PROMPTS = ["a photo of a cat.", "A photo of a Dog", "an astronaut in a white suit",
           "a cup of coffee on a saucer", "a blurry photo of a rocket."]

MODELS = {
    "siglip-tiny": dict(
        family="siglip",
        vision=dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=160,
                    patch_size=16, image_size=64),
        text=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                  vocab_size=300, max_position_embeddings=64, projection_size=64),
        images=3, texts=4, splice_layer=1, seed=2001, pipeline=True,
    ),
    "siglip2-tiny": dict(
        family="siglip2",
        vision=dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=160,
                    patch_size=8, num_patches=36),
        text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                  vocab_size=300, max_position_embeddings=64),
        images=3, texts=4, splice_layer=1, seed=2002, pipeline=True,
    ),
    # SiglipConfig's defaults are google/siglip-base-patch16-224's dimensions.
    "siglip-base": dict(
        family="siglip", vision=dict(), text=dict(),
        images=1, texts=2, splice_layer=5, seed=2003,
    ),
}


def make_config(spec: dict):
    if spec["family"] == "siglip":
        config = SiglipConfig(vision_config=spec["vision"], text_config=spec["text"])
    else:
        config = Siglip2Config(vision_config=spec["vision"], text_config=spec["text"])
    # ids in the tiny vocabularies: transformers warns about the CLIP-style defaults otherwise
    config.text_config.bos_token_id = None
    config.text_config.eos_token_id = 2
    config.text_config.pad_token_id = 1
    config._attn_implementation = "eager"
    return config


def _is_layer_norm(name: str) -> bool:
    return any(s in name for s in ("layer_norm1", "layer_norm2", "post_layernorm", "final_layer_norm",
                                   "head.layernorm"))


@torch.no_grad()
def perturb(model, seed: int) -> None:
    """Seeded noise on every parameter (as tests/reference/make_models.py does for CLIP): layer
    norms 1 + N(0, 0.1) / N(0, 0.1); biases N(0, 0.05); q/k and fc1 rescaled so attention logits
    and MLP pre-activations have a std near 1.5 (where gelu_pytorch_tanh differs from gelu and
    attention is far from uniform); the pooling head's packed in_proj likewise for its q and k
    thirds; logit_scale N(log 10, 0.2), logit_bias N(-2, 0.5); the rest + 0.1 std noise."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if name == "logit_scale":
            p.copy_(2.3 + 0.2 * noise)
        elif name == "logit_bias":
            p.copy_(-2.0 + 0.5 * noise)
        elif _is_layer_norm(name):
            p.add_(noise, alpha=0.1)
        elif name.endswith("bias"):
            p.add_(noise, alpha=0.05)
        elif name.endswith("head.attention.in_proj_weight"):
            d = p.shape[1]
            p.add_(noise, alpha=0.1 * float(p.std()))
            for part in (p[:d], p[d:2 * d]):
                part.mul_(1.5**0.5 / (d**0.5 * float(part.std())))
        elif name.endswith(("q_proj.weight", "k_proj.weight", "fc1.weight")):
            target = 1.5 if name.endswith("fc1.weight") else 1.5**0.5
            p.add_(noise, alpha=0.1 * float(p.std()))
            p.mul_(target / (p.shape[1] ** 0.5 * float(p.std())))
        else:
            p.add_(noise, alpha=0.1 * float(p.std()) + 1e-3)


def build(spec: dict):
    torch.manual_seed(spec["seed"])
    cls = SiglipModel if spec["family"] == "siglip" else Siglip2Model
    model = cls(make_config(spec)).eval()
    perturb(model, spec["seed"] + 1)
    return model


def image_size(spec: dict, config) -> int:
    v = config.vision_config
    if spec["family"] == "siglip":
        return v.image_size
    return int(round(v.num_patches**0.5)) * v.patch_size


def patchify(pixels: Tensor, patch: int) -> Tensor:
    """[B, C, H, W] -> [B, N, p * p * C] in Siglip2ImageProcessor's order (row, column, channel)."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def vision_inputs(spec: dict, config, pixels: Tensor) -> dict:
    if spec["family"] == "siglip":
        return {"pixel_values": pixels}
    p = config.vision_config.patch_size
    patches = patchify(pixels, p)
    grid = pixels.shape[-1] // p
    b, n = patches.shape[:2]
    return {"pixel_values": patches,
            "spatial_shapes": torch.tensor([[grid, grid]] * b, dtype=torch.int64),
            "pixel_attention_mask": torch.ones(b, n, dtype=torch.int64)}


def make_inputs(spec: dict, config, seed: int):
    g = torch.Generator().manual_seed(seed)
    s = image_size(spec, config)
    pixels = torch.randn(spec["images"], 3, s, s, generator=g)
    t = config.text_config
    length = t.max_position_embeddings
    ids = torch.randint(3, t.vocab_size, (spec["texts"], length), generator=g)
    # texts of several lengths: eos, then padding to the end, as the tokenizer pads
    for row in range(spec["texts"]):
        used = [5, 9, length, 1][row % 4]
        ids[row, used - 1] = 2
        ids[row, used:] = 1
    return pixels, ids


def splice(x: Tensor) -> Tensor:
    return SPLICE_SCALE * x + SPLICE_SHIFT


@torch.no_grad()
def references(spec: dict, model, pixels: Tensor, ids: Tensor) -> Dict[str, Tensor]:
    inputs = vision_inputs(spec, model.config, pixels)
    out = model(input_ids=ids, output_hidden_states=True, **inputs)
    ref = {f"hf.hidden_states.{i}": h for i, h in enumerate(out.vision_model_output.hidden_states)}
    ref.update({f"hf.text_hidden_states.{i}": h for i, h in enumerate(out.text_model_output.hidden_states)})
    ref["hf.image_embeds"] = out.vision_model_output.pooler_output
    ref["hf.text_embeds"] = out.text_model_output.pooler_output
    ref["hf.logits_per_image"] = out.logits_per_image
    ref["hf.probs"] = torch.sigmoid(out.logits_per_image)
    # the same image features through get_image_features
    direct = model.get_image_features(**inputs).pooler_output
    if not torch.equal(direct, ref["hf.image_embeds"]):
        raise AssertionError("get_image_features differs from the forward's pooler_output")
    layer = model.vision_model.encoder.layers[spec["splice_layer"]]
    handle = layer.register_forward_hook(lambda _m, _i, o: splice(o))
    try:
        ref["hf.spliced.image_embeds"] = model.get_image_features(**inputs).pooler_output
    finally:
        handle.remove()
    return ref


def write_pipeline_files(spec: dict, config, hf_dir: Path) -> None:
    """preprocessor_config.json and a trained tokenizer, as a published directory has them."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    v = config.vision_config
    if spec["family"] == "siglip":
        prep = {"image_processor_type": "SiglipImageProcessor", "do_resize": True,
                "size": {"height": v.image_size, "width": v.image_size}, "resample": 3}
    else:
        prep = {"image_processor_type": "Siglip2ImageProcessor", "do_resize": True,
                "patch_size": v.patch_size, "max_num_patches": v.num_patches, "resample": 2}
    prep.update({"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    (hf_dir / "preprocessor_config.json").write_text(json.dumps(prep, indent=1))
    data = json.loads((Path(__file__).resolve().parents[2] / "assets" / "clip_zeroshot_prompts.json").read_text())
    lines = [t.replace("{}", c) for d in data.values() if isinstance(d, dict)
             for t, c in zip(d["templates"], d["classes"])] + PROMPTS
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    trainer = trainers.BpeTrainer(vocab_size=config.text_config.vocab_size, show_progress=False,
                                  special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    tok.train_from_iterator(lines, trainer)
    if tok.get_vocab_size() > config.text_config.vocab_size:
        raise AssertionError("the trained vocabulary does not fit the text tower")
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0 <eos>:0", pair="$A:0 <eos>:0 $B:1 <eos>:1", special_tokens=[("<eos>", 1)])
    tok.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True,
        "padding_side": "right", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "mask_token": "<mask>", "model_max_length": 64}, indent=1))


@torch.no_grad()
def pipeline_references(spec: dict, model, hf_dir: Path, photo_dir: Path) -> Dict[str, Tensor]:
    """Photos through the model's own PIL image processor, prompts through AutoTokenizer."""
    import numpy as np
    from PIL import Image
    from skimage import data as samples
    from transformers import AutoTokenizer, Siglip2ImageProcessorPil, SiglipImageProcessorPil
    photo_dir.mkdir(parents=True, exist_ok=True)
    names = PHOTOS if spec["family"] == "siglip" else PHOTOS[:1]
    images = []
    for n in names:
        img = Image.fromarray(np.asarray(getattr(samples, n)()))
        img.save(photo_dir / f"{n}.png")
        images.append(Image.open(photo_dir / f"{n}.png").convert("RGB"))
    if spec["family"] == "siglip":
        processor = SiglipImageProcessorPil.from_pretrained(str(hf_dir))
        inputs = {"pixel_values": processor(images=images, return_tensors="pt")["pixel_values"]}
    else:
        processor = Siglip2ImageProcessorPil.from_pretrained(str(hf_dir))
        out = processor(images=images, return_tensors="pt")
        inputs = {"pixel_values": out["pixel_values"], "spatial_shapes": out["spatial_shapes"],
                  "pixel_attention_mask": out["pixel_attention_mask"]}
        grid = int(round(model.config.vision_config.num_patches ** 0.5))
        if out["spatial_shapes"].tolist() != [[grid, grid]] * len(images):
            raise AssertionError(f"the square photo did not make the {grid}x{grid} grid: {out['spatial_shapes']}")
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    ids = tokenizer(PROMPTS, padding="max_length", max_length=64, truncation=True,
                    return_tensors="pt")["input_ids"].to(torch.int64)
    out = model(input_ids=ids, **inputs)
    return {"prompt.input_ids": ids, "prompt.text_embeds": out.text_model_output.pooler_output,
            "photo.pixel_values": inputs["pixel_values"],
            "photo.image_embeds": out.vision_model_output.pooler_output,
            "photo.logits": out.logits_per_image, "photo.probs": torch.sigmoid(out.logits_per_image)}


def make(base: Path, name: str) -> None:
    spec = MODELS[name]
    final = base / name
    root = base / f".{name}.partial"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    model = build(spec)
    model.save_pretrained(str(root / "hf"), safe_serialization=True)
    cls = type(model)
    hf, info = cls.from_pretrained(str(root / "hf"), attn_implementation="eager", output_loading_info=True)
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise AssertionError(f"{root / 'hf'} does not reload cleanly: {info}")
    hf = hf.eval()
    pixels, ids = make_inputs(spec, hf.config, spec["seed"] + 2)
    ref = {"pixel_values": pixels, "input_ids": ids,
           "splice_layer": torch.tensor([spec["splice_layer"]], dtype=torch.int64)}
    ref.update(references(spec, hf, pixels, ids))
    if spec.get("pipeline"):
        write_pipeline_files(spec, hf.config, root / "hf")
        ref.update(pipeline_references(spec, hf, root / "hf", root / "photos"))
    for k, x in ref.items():
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise AssertionError(f"{k} is not finite")
    probs = ref["hf.probs"]
    save_file({k: x.detach().contiguous() for k, x in ref.items()}, str(root / "reference.safetensors"),
              metadata={"saeclip": json.dumps({
                  "format": "saeclip-siglip-reference", "version": 1, "name": name,
                  "splice": f"{SPLICE_SCALE} * x + {SPLICE_SHIFT}", "torch": torch.__version__,
                  "transformers": transformers.__version__}, sort_keys=True)})
    if final.exists():
        shutil.rmtree(final)
    os.replace(root, final)
    stds = [float(ref[f"hf.hidden_states.{i}"].std()) for i in range(hf.config.vision_config.num_hidden_layers + 1)]
    print(f"{name}: wrote {final}; vision residual std {min(stds):.3g}..{max(stds):.3g}; "
          f"sigmoid scores {float(probs.min()):.3g}..{float(probs.max()):.3g}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="base directory; NAME/ is created in it")
    parser.add_argument("--name", required=True, choices=sorted(MODELS))
    args = parser.parse_args()
    make(args.out, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
