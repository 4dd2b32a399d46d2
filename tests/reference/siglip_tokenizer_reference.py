#!/usr/bin/env python3
"""Tokenizers trained here (no download) and transformers' ids for them, for
tests/siglip_tokenizer.rs.

Usage: siglip_tokenizer_reference.py --out DIR

Trains, on a corpus generated from a fixed seed plus the zero-shot class names and templates
of assets/clip_zeroshot_prompts.json, with the `tokenizers` package:
  - a Gemma-style BPE (byte fallback, spaces as "▁", `<pad> <eos> <bos> <unk> <mask>` and the
    256 byte tokens first), saved as SigLIP 2's fixed-resolution checkpoints save theirs:
    tokenizer_class GemmaTokenizer, add_bos_token false, add_eos_token true, padding_side right;
    written twice, under a `model_type` siglip config (transformers loads GemmaTokenizer) and a
    siglip2 config (transformers loads Siglip2Tokenizer, which lowercases);
  - a SentencePiece-style Unigram (Metaspace), eos `</s>` appended by the file's own
    post-processor, pad `</s>`, tokenizer_class PreTrainedTokenizerFast, no padding_side.
Each goes to DIR/<name>/ (config.json, tokenizer.json, tokenizer_config.json). DIR/reference.json:
    {"transformers": version, "tokenizers": version, "context": 64,
     "cases": [{"name": str, "class": transformers class, "texts": [...], "ids": [[64 ids]...]}]}
ids are AutoTokenizer.from_pretrained(dir)(texts, padding="max_length", max_length=64,
truncation=True)["input_ids"], the pipeline SigLIP's model cards use.
"""

import argparse
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tokenizers
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, Siglip2Config, SiglipConfig

transformers.utils.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = 64


def prompt_sets():
    data = json.loads((ROOT / "assets" / "clip_zeroshot_prompts.json").read_text())
    return [(s["classes"], s["templates"]) for s in data.values() if isinstance(s, dict)]


def corpus(seed: int):
    rng = random.Random(seed)
    lines = []
    for classes, templates in prompt_sets():
        for c in classes:
            lines.append(rng.choice(templates).replace("{}", c))
    syllables = ["ka", "lo", "mi", "tre", "sun", "dor", "ph", "ing", "ed", "qu", "x", "zz"]
    for _ in range(400):
        words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(2, 9))]
        lines.append(" ".join(words))
    lines += ["A Photo Of A Cat.", "Café crème, naïve façade", "数字 写真", "numbers 12345 and 3.14"]
    return lines


def texts():
    rng = random.Random(7)
    out = []
    for classes, templates in prompt_sets():
        for t in templates[:6]:
            out.append(t.replace("{}", rng.choice(classes)))
        out += [t.replace("{}", c) for t, c in zip(templates[-3:], classes[-3:])]
    out += [
        "", " ", "a", "A PHOTO OF A DOG!", "  leading and trailing spaces  ", "two  spaces",
        "tab\tand\nnewline", "emoji 🐱 and ✓", "Ünïcödé façade", "unseen glyphs ℵ ∑ ∫",
        "word " * 80, "a photo of a {}.", "<eos> inside text", "x" * 300,
    ]
    return out


def gemma_style(lines):
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials + byte_tokens, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0 <eos>:0", pair="$A:0 <eos>:0 $B:1 <eos>:1",
        special_tokens=[("<eos>", tok.token_to_id("<eos>"))])
    config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True,
              "padding_side": "right", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
              "unk_token": "<unk>", "mask_token": "<mask>", "model_max_length": CONTEXT}
    return tok, config


def unigram_style(lines):
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=500, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "pad_token": "</s>",
              "unk_token": "<unk>", "model_max_length": CONTEXT}
    return tok, config


def write(base: Path, name: str, tok, tok_config: dict, model_config) -> Path:
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    model_config.save_pretrained(str(d))
    return d


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    lines = corpus(3)
    gemma, gemma_config = gemma_style(lines)
    unigram, unigram_config = unigram_style(lines)
    dirs = [
        ("gemma-siglip", gemma, gemma_config, SiglipConfig(), "GemmaTokenizer"),
        ("gemma-siglip2", gemma, gemma_config, Siglip2Config(), "Siglip2Tokenizer"),
        ("unigram-siglip", unigram, unigram_config, SiglipConfig(), "TokenizersBackend"),
    ]
    sample = texts()
    cases = []
    for name, tok, tok_config, model_config, expected_class in dirs:
        d = write(args.out, name, tok, tok_config, model_config)
        hf = AutoTokenizer.from_pretrained(str(d))
        if type(hf).__name__ != expected_class:
            raise AssertionError(f"{name}: transformers loaded {type(hf).__name__}, not {expected_class}")
        ids = hf(sample, padding="max_length", max_length=CONTEXT, truncation=True)["input_ids"]
        if any(len(row) != CONTEXT for row in ids):
            raise AssertionError(f"{name}: a row is not {CONTEXT} ids long")
        cases.append({"name": name, "class": type(hf).__name__, "texts": sample, "ids": ids})
    # the cases differ where they should: lowercasing, and the two vocabularies
    if cases[0]["ids"] == cases[1]["ids"]:
        raise AssertionError("Siglip2Tokenizer's lowercasing changed nothing: the texts need capitals")
    (args.out / "reference.json").write_text(json.dumps({
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "context": CONTEXT, "cases": cases}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
