#!/usr/bin/env python3
"""Train the demo CLIP: a small CLIP, contrastively, on saeclip's procedural images.

The images come from saeclip itself (`saeclip dev dump-images`: the procedural generator,
CLIP's resize and centre crop), so Python never re-implements either. Each image gets a
caption built from its factors (shape, colour, texture, background, size, position) with
variety: factor order, omitted factors, synonyms and CLIP's prompt templates, so that the
text tower answers the prompts users type ("a photo of a red star.", "striped", "on sand").

The model is transformers' `CLIPModel` with the demo's dimensions; the output is config.json,
training.json and model.trimmed.safetensors: the float16 state dict with the token embedding
trimmed to the rows the captions used (`...token_embedding.weight.rows` [U, D] and `.ids` [U];
the other rows of the 49,408 are zero). `saeclip demo` expands it into a Hugging Face CLIP
directory (src/clip/demo_model.rs). `--trim-from DIR` converts a full directory
(model.safetensors) into that form.

Seeded: the same command gives the same weights on the same machine and torch build.

    python scripts/train_demo_clip.py --threads 1 --eval-every 300 --out DIR   # the shipped model

(its defaults are the shipped model's recipe; copy DIR's three files into assets/demo-clip).
"""

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel

CONTEXT = 24  # caption tokens used in training (CLIP's 77 positions stay in the model)
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

TEMPLATES = [
    "a photo of a {}.",
    "a photo of the {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a {}.",
    "{}",
    "a good photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
]
SYNONYMS = {
    "circle": ["circle", "circle", "disc", "round shape"],
    "square": ["square", "square", "box"],
    "triangle": ["triangle", "triangle"],
    "star": ["star", "star"],
    "ring": ["ring", "ring", "donut", "hollow circle"],
    "cross": ["cross", "cross", "plus sign"],
    "striped": ["striped", "striped", "stripy"],
    "dotted": ["dotted", "dotted", "spotted", "polka dot"],
    "checkered": ["checkered", "checkered", "checked"],
    "solid": ["solid", "plain", "solid"],
    "purple": ["purple", "purple", "violet"],
}
BACKGROUND_WORDS = {
    "sky": ["sky", "blue sky"],
    "sand": ["sand", "sandy ground"],
    "grass": ["grass", "green grass"],
    "slate": ["slate", "grey slate"],
    "dusk": ["dusk", "a dusk sky"],
    "noise": ["noise", "grey noise"],
}


def syn(rng, word):
    return rng.choice(SYNONYMS.get(word, [word]))


def factors_of(source):
    q = parse_qs(urlsplit(source.replace("procedural:", "procedural://", 1)).query)
    return {k: v[0] for k, v in q.items()}


ATTRIBUTES = ["colour", "shape", "texture", "background", "size", "where"]


def derived(f):
    """The factors a caption can name, with size and position as words."""
    side = int(f["side"])
    r = int(f["radius"]) / side
    x, y = int(f["x"]) / side, int(f["y"]) / side
    size = "small" if r < 0.29 else ("large" if r > 0.33 else "medium")
    vert = "top" if y < 0.4 else ("bottom" if y > 0.6 else "")
    horiz = "left" if x < 0.4 else ("right" if x > 0.6 else "")
    where = " ".join(w for w in (vert, horiz) if w) or "centre"
    return {"colour": f["colour"], "shape": f["shape"], "texture": f["texture"],
            "background": f["background"], "size": size, "where": where}


def caption(rng, d, shape_only=0.0):
    """One caption naming the image's shape, its colour (unless drawn for a shape-only
    caption, with probability `shape_only`) and a random subset of the rest, and the
    factors it names (every image with those factors matches it)."""
    with_colour = rng.random() >= shape_only
    named = {"colour": d["colour"], "shape": d["shape"]} if with_colour else {"shape": d["shape"]}
    adjectives = []
    if d["size"] != "medium" and rng.random() < 0.4:
        adjectives.append(d["size"])
        named["size"] = d["size"]
    texture = d["texture"]
    use_texture = rng.random() < 0.6
    if use_texture:
        named["texture"] = texture
        if rng.random() < 0.5:
            adjectives.append(syn(rng, texture))
            use_texture = False
    if with_colour:
        adjectives.append(syn(rng, d["colour"]))
    parts = [" ".join(adjectives + [syn(rng, d["shape"])])]
    if use_texture:
        parts.append("with a " + syn(rng, texture) + " pattern" if texture != "solid" else "in a single colour")
    if rng.random() < 0.5:
        parts.append("on " + rng.choice(BACKGROUND_WORDS[d["background"]]))
        named["background"] = d["background"]
    if rng.random() < 0.3:
        parts.append("in the " + d["where"])
        named["where"] = d["where"]
    extra = parts[1:]
    rng.shuffle(extra)
    return rng.choice(TEMPLATES).format(" ".join([parts[0]] + extra)), named


class Codes:
    """Each image's factors as integers, to find every image a caption describes."""

    def __init__(self, derived_factors):
        self.values = {a: sorted({d[a] for d in derived_factors}) for a in ATTRIBUTES}
        self.codes = torch.tensor([[self.values[a].index(d[a]) for a in ATTRIBUTES] for d in derived_factors])

    def matches(self, idx, named):
        """[images, captions]: whether image idx[i] has every factor caption j names."""
        want = torch.tensor([[self.values[a].index(n[a]) if a in n else -1 for a in ATTRIBUTES] for n in named])
        have = self.codes[idx]
        return ((want[None, :, :] == -1) | (want[None, :, :] == have[:, None, :])).all(-1)


def dump(saeclip, spec, split, limit, tmp, size):
    out = os.path.join(tmp, spec.replace(":", "-") + "-" + split)
    subprocess.run(
        [saeclip, "-q", "dev", "dump-images", "--dataset", spec, "--split", split,
         "--limit", str(limit), "--size", str(size), "--out", out],
        check=True, stdout=subprocess.DEVNULL,
    )
    raw = np.fromfile(out + ".u8", dtype=np.uint8)
    n = raw.size // (size * size * 3)
    images = torch.from_numpy(raw.reshape(n, size, size, 3).copy())
    sources = open(out + ".txt").read().split("\n")[:n]
    return images, [factors_of(s) for s in sources]


def pixels(u8):
    x = u8.permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


class Tokens:
    def __init__(self):
        self.tok = SimpleTokenizer()
        self.sot = self.tok.encoder["<start_of_text>"]
        self.eot = self.tok.encoder["<end_of_text>"]
        self.cache = {}
        self.used = {self.sot, self.eot}

    def __call__(self, texts, length):
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.cache.get(t)
            if ids is None:
                ids = [self.sot] + self.tok.encode(t)[: length - 2] + [self.eot]
                self.cache[t] = ids
                self.used.update(ids)
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def config(image_size=64, patch_size=16):
    # The demo's dimensions: 4 + 4 blocks of width 128, projection 64; 64-pixel images in
    # 16-pixel patches (a 4 × 4 grid) by default, 3× cheaper a step than 224 / 32.
    return CLIPConfig(
        projection_dim=64,
        logit_scale_init_value=2.6592,
        text_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=77, vocab_size=49408,
                         hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=1, projection_dim=64),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                           num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                           hidden_act="quick_gelu", projection_dim=64),
    )


def image_features(model, x):
    return model.visual_projection(model.vision_model(pixel_values=x).pooler_output)


def text_features(model, ids):
    return model.text_projection(model.text_model(input_ids=ids).pooler_output)


@torch.no_grad()
def zeroshot(model, tokens, images, labels, classes, template="a photo of a {}."):
    model.eval()
    ids = tokens([template.format(c) for c in classes], CONTEXT)
    t = F.normalize(text_features(model, ids), dim=-1)
    predicted = []
    for s in range(0, len(images), 256):
        v = F.normalize(image_features(model, pixels(images[s : s + 256])), dim=-1)
        predicted.append((v @ t.T).argmax(-1))
    predicted = torch.cat(predicted)
    model.train()
    # Classes are colour-major over 6 shapes: also the share with the right colour, shape.
    colour = predicted.div(6, rounding_mode="floor").eq(labels.div(6, rounding_mode="floor"))
    shape = predicted.remainder(6).eq(labels.remainder(6))
    return (predicted.eq(labels).float().mean().item(), colour.float().mean().item(),
            shape.float().mean().item())


TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"


def save_trimmed(state, out):
    """Write the state dict with the token embedding cut to its non-zero rows."""
    emb = state.pop(TOKEN_EMBEDDING)
    ids = emb.ne(0).any(1).nonzero().flatten()
    state[TOKEN_EMBEDDING + ".rows"] = emb[ids].contiguous()
    state[TOKEN_EMBEDDING + ".ids"] = ids.to(torch.int64)
    save_file(state, os.path.join(out, "model.trimmed.safetensors"),
              metadata={"format": "pt", "vocab_size": str(emb.shape[0])})


def save(model, tokens, a, acc, steps, step, train_images, seconds):
    """Write the model as a Hugging Face CLIP directory in float16, with training.json."""
    # Rows of the token embedding the captions never used: zero (they were never trained).
    with torch.no_grad():
        emb = model.text_model.embeddings.token_embedding.weight
        keep = torch.zeros(emb.shape[0], dtype=torch.bool)
        keep[sorted(tokens.used)] = True
        emb[~keep] = 0.0
    os.makedirs(a.out, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if not k.endswith("position_ids")}
    save_trimmed(state, a.out)
    cfg = model.config.to_dict()
    cfg["torch_dtype"] = "float16"
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    with open(os.path.join(a.out, "training.json"), "w") as f:
        json.dump({"script": "scripts/train_demo_clip.py", "args": vars(a), "steps": steps,
                   "steps_done": step, "train_images": train_images, "seconds": round(seconds, 1),
                   "zeroshot_top1_48": acc, "torch": torch.__version__}, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--saeclip", default="target/release/saeclip")
    ap.add_argument("--out", default="models/demo-clip")
    ap.add_argument("--seeds", type=int, default=3, help="procedural seeds 1..N for training")
    ap.add_argument("--images", type=int, default=4800, help="train images per seed")
    ap.add_argument("--epochs", type=float, default=16.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=0, help="steps between zero-shot checks (0: none)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--shape-only", type=float, default=0.25,
                    help="share of captions that name the shape without the colour")
    ap.add_argument("--freeze-text", type=float, default=0.0,
                    help="share of the steps, at the start, during which the text tower and its "
                         "projection stay at their random initialisation")
    ap.add_argument("--hard", type=float, default=0.5,
                    help="share of batches drawn from images of two colours only (hard negatives: "
                         "shape, texture and background must tell their captions apart)")
    ap.add_argument("--trim-from", metavar="DIR",
                    help="only convert DIR/model.safetensors into --out's trimmed form")
    a = ap.parse_args()
    if a.trim_from:
        os.makedirs(a.out, exist_ok=True)
        save_trimmed(load_file(os.path.join(a.trim_from, "model.safetensors")), a.out)
        return
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = random.Random(a.seed)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        parts = [dump(a.saeclip, f"procedural:{s}", "train", a.images, tmp, a.image_size)
                 for s in range(1, a.seeds + 1)]
        test_images, test_factors = dump(a.saeclip, "procedural:0", "test", 960, tmp, a.image_size)
    images = torch.cat([p[0] for p in parts])
    factors = [derived(f) for p in parts for f in p[1]]
    codes = Codes(factors)
    print(f"{len(images)} train images, {len(test_images)} test (procedural:0 test) in {time.time() - start:.0f}s", flush=True)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    shapes = ["circle", "square", "triangle", "star", "ring", "cross"]
    classes = [f"{c} {s}" for c in colours for s in shapes]
    test_labels = torch.tensor([classes.index(f"{f['colour']} {f['shape']}") for f in test_factors])

    model = CLIPModel(config(a.image_size, a.patch_size))
    by_colour = {c: torch.tensor([i for i, f in enumerate(factors) if f["colour"] == c]) for c in colours}
    tokens = Tokens()
    steps = int(a.epochs * len(images) / a.batch)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in n or "logit_scale" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    gen = torch.Generator().manual_seed(a.seed)
    order = torch.randperm(len(images), generator=gen)
    pos = 0
    model.train()
    text_params = list(model.text_model.parameters()) + list(model.text_projection.parameters())
    frozen_until = int(a.freeze_text * steps)
    for p in text_params:
        p.requires_grad_(frozen_until == 0)
    for step in range(steps):
        if step == frozen_until and frozen_until > 0:
            for p in text_params:
                p.requires_grad_(True)
        if pos + a.batch > len(order):
            order, pos = torch.randperm(len(images), generator=gen), 0
        if rng.random() < a.hard:
            pool = torch.cat([by_colour[c] for c in rng.sample(colours, 2)])
            idx = pool[torch.randperm(len(pool), generator=gen)[: a.batch]]
        else:
            idx = order[pos : pos + a.batch]
            pos += a.batch
        x = pixels(images[idx])
        texts, named = zip(*[caption(rng, factors[i], a.shape_only) for i in idx.tolist()])
        ids = tokens(list(texts), CONTEXT)
        v = F.normalize(image_features(model, x), dim=-1)
        t = F.normalize(text_features(model, ids), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * v @ t.T
        # Every image a caption describes is a positive for it (the batch holds many red
        # stars): the targets spread evenly over them, in both directions.
        m = codes.matches(idx, named).float()
        loss = (F.cross_entropy(logits, m / m.sum(1, keepdim=True))
                + F.cross_entropy(logits.T, m.T / m.T.sum(1, keepdim=True))) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
        if a.eval_every and step % a.eval_every == a.eval_every - 1:
            acc, colour_acc, shape_acc = zeroshot(model, tokens, test_images, test_labels, classes)
            print(f"  zero-shot top-1 (48 classes, procedural:0 test): {acc:.3f} "
                  f"(colour right {colour_acc:.3f}, shape right {shape_acc:.3f})", flush=True)
            save(model, tokens, a, acc, steps, step + 1, len(images), time.time() - start)
    acc, colour_acc, shape_acc = zeroshot(model, tokens, test_images, test_labels, classes)
    print(f"colour right {colour_acc:.4f}, shape right {shape_acc:.4f}")
    print(f"zero-shot top-1 on 48 colour x shape classes (procedural:0 test, 'a photo of a {{}}.'): {acc:.4f}")
    save(model, tokens, a, acc, steps, steps, len(images), time.time() - start)
    print(f"wrote {a.out} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
