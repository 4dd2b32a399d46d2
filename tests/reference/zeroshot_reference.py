#!/usr/bin/env python3
"""Zero-shot classification reference for tests/eval_zeroshot.rs, with transformers.

Usage:
    zeroshot_reference.py --model HF_DIR --images DIR --out FILE.json
                          [--templates single|ensemble] [--template TEXT]

DIR is an image folder with one subfolder per class (saeclip's `folder:` dataset): classes
are the subfolder names sorted by bytes, images the files below each class folder sorted by
path; a file PIL cannot open is skipped and listed.

- Class texts: each class name through each template (`single`: --template, default
  "a photo of a {}."; `ensemble`: the 18 CIFAR templates of assets/clip_zeroshot_prompts.json,
  from openai/CLIP), tokenized with open_clip.tokenize (zero padding, end-of-text 49407)
  and embedded with CLIPModel.get_text_features. transformers pools the text at the first
  end-of-text token (the tiny models record eos_token_id 49407), which is also the argmax
  of open_clip's zero-padded ids, so open_clip's padding gives transformers' embeddings.
  Per class: normalise each template's embedding, average, renormalise (CLIP's
  Prompt_Engineering_for_ImageNet notebook).
- Images: CLIPImageProcessorPil (transformers' PIL path, the one saeclip reproduces bit for
  bit; the default CLIPImageProcessor of transformers 5 is the torchvision one) on
  Image.open(f).convert("RGB"), then get_image_features.
- Logits: exp(logit_scale) * cos(image, class); top-5 = the min(5, C) best classes.

Writes JSON: {"classes": [...], "templates": [...], "logit_scale": float,
"class_embeds": [[...]], "images": [{"source", "label", "top5": [...], "logits": [...]}],
"skipped": [source, ...]}.
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip
import torch
import transformers
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "assets" / "clip_zeroshot_prompts.json"


def features(out):
    """get_*_features return a tensor in transformers 4 and a pooled output in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def list_folder(root: Path):
    classes = sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda n: n.encode())
    items = []
    for label, name in enumerate(classes):
        files = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if not f.startswith("."):
                    files.append(Path(dirpath) / f)
        for f in sorted(files, key=lambda p: str(p.relative_to(root)).encode()):
            items.append((f, label))
    return classes, items


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--templates", choices=["single", "ensemble"], default="single")
    ap.add_argument("--template", default="a photo of a {}.")
    args = ap.parse_args()
    transformers.utils.logging.set_verbosity_error()

    root = Path(args.images)
    classes, items = list_folder(root)
    if args.templates == "single":
        templates = [args.template]
    else:
        templates = json.loads(PROMPTS.read_text())["cifar10"]["templates"]

    model = CLIPModel.from_pretrained(args.model, attn_implementation="eager").eval()
    texts = [t.format(c) for c in classes for t in templates]
    ids = open_clip.tokenize(texts, context_length=77).to(torch.int64)
    text = features(model.get_text_features(input_ids=ids))
    text = text / text.norm(dim=-1, keepdim=True)
    text = text.view(len(classes), len(templates), -1).mean(dim=1)
    text = text / text.norm(dim=-1, keepdim=True)
    scale = model.logit_scale.exp()

    processor = CLIPImageProcessorPil()
    images, skipped = [], []
    for path, label in items:
        source = str(path.relative_to(root))
        try:
            image = Image.open(path).convert("RGB")
        except Exception:  # noqa: BLE001 - any unreadable file is skipped, as saeclip does
            skipped.append(source)
            continue
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        emb = features(model.get_image_features(pixel_values=pixels))
        emb = emb / emb.norm(dim=-1, keepdim=True)
        logits = (scale * emb @ text.T)[0]
        top5 = logits.topk(min(5, len(classes))).indices.tolist()
        images.append({"source": source, "label": label, "top5": top5, "logits": logits.tolist()})

    Path(args.out).write_text(json.dumps({
        "classes": classes,
        "templates": templates,
        "logit_scale": float(model.logit_scale),
        "class_embeds": text.tolist(),
        "images": images,
        "skipped": skipped,
    }))


if __name__ == "__main__":
    main()
