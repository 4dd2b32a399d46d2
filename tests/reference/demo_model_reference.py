"""transformers' outputs of the demo CLIP as saeclip writes it out, for tests/demo_model.rs.

Writes OUT/reference.safetensors: pixel_values [4,3,S,S] (seeded normal, S the model's
image_size), input_ids
[4,77] (open_clip's tokenizer, zero padded), image_embeds / text_embeds (projected, not
normalised) and the vision tower's hidden_states.{i}, all computed by
`CLIPModel.from_pretrained(MODEL)` in float32.
"""

import argparse
import os

import torch
from open_clip.tokenizer import tokenize
from safetensors.torch import save_file
from transformers import CLIPModel

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--out", required=True)
a = ap.parse_args()
model = CLIPModel.from_pretrained(a.model, dtype=torch.float32).eval()
g = torch.Generator().manual_seed(0)
size = model.config.vision_config.image_size
pixels = torch.randn(4, 3, size, size, generator=g)
ids = tokenize(["a photo of a red star.", "striped", "a blue ring on sand", "a dotted yellow cross in the top left"])
with torch.no_grad():
    vision = model.vision_model(pixel_values=pixels, output_hidden_states=True)
    text = model.text_model(input_ids=ids)
    ref = {
        "pixel_values": pixels,
        "input_ids": ids.to(torch.int64),
        "image_embeds": model.visual_projection(vision.pooler_output),
        "text_embeds": model.text_projection(text.pooler_output),
    }
    for i, h in enumerate(vision.hidden_states):
        ref[f"hidden_states.{i}"] = h
os.makedirs(a.out, exist_ok=True)
save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(a.out, "reference.safetensors"))
