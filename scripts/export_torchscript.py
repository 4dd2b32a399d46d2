#!/usr/bin/env python3
"""Export a CLIP checkpoint to a self-contained TorchScript module that saeclip loads.

Usage:
    python scripts/export_torchscript.py --model PATH --out FILE.pt [--check]

PATH is one of
  * a Hugging Face CLIP directory: config.json + model.safetensors (transformers CLIPModel);
  * an open_clip directory: open_clip_config.json + open_clip_model.safetensors;
  * an open_clip .safetensors file with open_clip_config.json next to it.

The weights are copied into this file's own small CLIP (`ScriptedClip`: plain torch ops, fp32,
OpenAI / open_clip parameter names), which is compiled with torch.jit.script, compared with
the source model on random inputs (image and text embeddings, every vision block's residual
stream, and resuming from every block) and written with torch.jit.save. A difference above
1e-4 (absolute; for residual streams relative to their largest value where that exceeds 1)
aborts the export, and nothing is written. `--check` also reloads the written file and
repeats the comparison.

Methods of the exported module (called from Rust through tch `CModule::method_is`):
    residual(pixel_values: Tensor[B,3,S,S], layer: int) -> Tensor[B,T,D]
        output of vision block `layer` (0-based), all tokens; later blocks are not run.
        layer = -1 gives the block-0 input (embeddings after ln_pre = HF hidden_states[0]).
    from_layer(residual: Tensor[B,T,D], layer: int) -> Tensor[B,E]
        run blocks layer+1.. on the given output of block `layer`, ln_post on token 0,
        project: unnormalised image embeddings. layer = num_layers-1 runs no block.
    encode_image(pixel_values) -> Tensor[B,E]       unnormalised image embeddings
    encode_text(input_ids: int64 [N,C]) -> Tensor[N,E]  unnormalised, pooled at argmax(ids)
    get_logit_scale() -> Tensor[]                   the raw (log) logit scale
    config() -> List[int]  [vision_layers, vision_width, vision_heads, text_layers, text_width,
                            text_heads, embed_dim, image_size, patch_size, context_length,
                            vocab_size]
The file also carries `extra/saeclip.json` (format, version, source, activation, eps).

Importable: make_models.py (tests/reference) reuses `hf_to_openclip_config`,
`hf_to_openclip_state_dict` and `export`.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMAT = "saeclip-clip-torchscript"
FORMAT_VERSION = 1
TOLERANCE = 1e-4
DEFAULT_EPS = 1e-5  # open_clip's nn.LayerNorm default, and CLIP's


class ExportError(Exception):
    """A problem with the input or the result, reported as one line."""


# ---------------------------------------------------------------------------------------------
# The scripted model. Shapes: B batch, T tokens, D width, H heads, K head width, E embedding.
# Parameter names follow OpenAI CLIP / open_clip, so an open_clip state dict loads as is.
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with a fused q/k/v projection (nn.MultiheadAttention layout)."""

    heads: torch.jit.Final[int]
    head_width: torch.jit.Final[int]
    scale: torch.jit.Final[float]

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads != 0:
            raise ExportError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.head_width = width // heads
        self.scale = self.head_width**-0.5
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # [3D, D] = q;k;v
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        b, t, d = x.size(0), x.size(1), x.size(2)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # B T 3D
        qkv = qkv.reshape(b, t, 3, self.heads, self.head_width).permute(2, 0, 3, 1, 4)  # 3 B H T K
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q * self.scale, k.transpose(-2, -1))  # B H T T
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(dim=-1)
        y = torch.matmul(weights, v).transpose(1, 2).reshape(b, t, d)  # B T D
        return self.out_proj(y)


class Mlp(nn.Module):
    """c_fc -> activation -> c_proj; activation is QuickGELU x*sigmoid(1.702x) or exact GELU."""

    quick_gelu: torch.jit.Final[bool]

    def __init__(self, width: int, hidden: int, quick_gelu: bool):
        super().__init__()
        self.quick_gelu = quick_gelu
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        if self.quick_gelu:
            h = h * torch.sigmoid(1.702 * h)
        else:
            h = F.gelu(h)  # exact (erf) GELU
        return self.c_proj(h)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, hidden: int, quick_gelu: bool, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, hidden, quick_gelu)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Stack(nn.Module):
    """Holds the blocks under `resblocks`, as open_clip's Transformer does."""

    def __init__(self, layers: int, width: int, heads: int, hidden: int, quick_gelu: bool, eps: float):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [Block(width, heads, hidden, quick_gelu, eps) for _ in range(layers)]
        )


class VisionTower(nn.Module):
    """Patch embedding, class token, positions, ln_pre, blocks, ln_post on token 0, proj."""

    image_size: torch.jit.Final[int]
    patch_size: torch.jit.Final[int]
    layers: torch.jit.Final[int]

    def __init__(self, cfg: "Dims"):
        super().__init__()
        self.image_size = cfg.image_size
        self.patch_size = cfg.patch_size
        self.layers = cfg.vision_layers
        width = cfg.vision_width
        grid = cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv2d(3, width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=cfg.vision_eps)
        self.transformer = Stack(
            cfg.vision_layers, width, cfg.vision_heads, cfg.vision_mlp, cfg.quick_gelu, cfg.vision_eps
        )
        self.ln_post = nn.LayerNorm(width, eps=cfg.vision_eps)
        self.proj = nn.Parameter(torch.empty(width, cfg.embed_dim))  # [D, E]

    def embed(self, pixel_values: Tensor) -> Tensor:
        if pixel_values.dim() != 4 or pixel_values.size(1) != 3:
            raise ValueError("pixel_values must be [B, 3, S, S]")
        if pixel_values.size(2) != self.image_size or pixel_values.size(3) != self.image_size:
            raise ValueError("pixel_values must be " + str(self.image_size) + " pixels square")
        x = self.conv1(pixel_values)  # B D g g
        x = x.flatten(2).transpose(1, 2)  # B T-1 D
        cls = self.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.size(0), 1, x.size(2))
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # B T D
        return self.ln_pre(x)

    def check_layer(self, layer: int):
        if layer < -1 or layer >= self.layers:
            raise ValueError(
                "layer " + str(layer) + " out of range -1.." + str(self.layers - 1)
            )

    def residual(self, pixel_values: Tensor, layer: int) -> Tensor:
        self.check_layer(layer)
        x = self.embed(pixel_values)
        for i, block in enumerate(self.transformer.resblocks):
            if i <= layer:
                x = block(x, None)
        return x

    def from_layer(self, residual: Tensor, layer: int) -> Tensor:
        self.check_layer(layer)
        x = residual
        for i, block in enumerate(self.transformer.resblocks):
            if i > layer:
                x = block(x, None)
        pooled = self.ln_post(x[:, 0, :])  # B D
        return torch.matmul(pooled, self.proj)  # B E


class ScriptedClip(nn.Module):
    """CLIP with the methods saeclip calls; see the module docstring."""

    context_length: torch.jit.Final[int]
    dims: List[int]

    def __init__(self, cfg: "Dims"):
        super().__init__()
        self.context_length = cfg.context_length
        self.dims = cfg.as_list()
        self.visual = VisionTower(cfg)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.transformer = Stack(
            cfg.text_layers, cfg.text_width, cfg.text_heads, cfg.text_mlp, cfg.quick_gelu, cfg.text_eps
        )
        self.ln_final = nn.LayerNorm(cfg.text_width, eps=cfg.text_eps)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))  # [D, E]
        self.logit_scale = nn.Parameter(torch.empty(()))

    @torch.jit.export
    def residual(self, pixel_values: Tensor, layer: int) -> Tensor:
        return self.visual.residual(pixel_values, layer)

    @torch.jit.export
    def from_layer(self, residual: Tensor, layer: int) -> Tensor:
        return self.visual.from_layer(residual, layer)

    @torch.jit.export
    def encode_image(self, pixel_values: Tensor) -> Tensor:
        return self.visual.from_layer(self.visual.residual(pixel_values, -1), -1)

    @torch.jit.export
    def encode_text(self, input_ids: Tensor) -> Tensor:
        if input_ids.dim() != 2 or input_ids.size(1) > self.context_length:
            raise ValueError("input_ids must be [N, C] with C <= " + str(self.context_length))
        t = input_ids.size(1)
        x = self.token_embedding(input_ids) + self.positional_embedding[:t]  # N T D
        causal = torch.full((t, t), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
        for block in self.transformer.resblocks:
            x = block(x, causal)
        x = self.ln_final(x)
        eot = input_ids.argmax(dim=-1)  # end-of-text has the largest id
        pooled = x[torch.arange(x.size(0), device=x.device), eot]  # N D
        return torch.matmul(pooled, self.text_projection)  # N E

    @torch.jit.export
    def get_logit_scale(self) -> Tensor:
        return self.logit_scale.detach().clone()

    @torch.jit.export
    def config(self) -> List[int]:
        return list(self.dims)

    def forward(self, pixel_values: Tensor, input_ids: Tensor) -> Tuple[Tensor, Tensor]:
        return self.encode_image(pixel_values), self.encode_text(input_ids)


# ---------------------------------------------------------------------------------------------
# Dimensions and configuration formats
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Dims:
    vision_layers: int
    vision_width: int
    vision_heads: int
    vision_mlp: int
    text_layers: int
    text_width: int
    text_heads: int
    text_mlp: int
    embed_dim: int
    image_size: int
    patch_size: int
    context_length: int
    vocab_size: int
    quick_gelu: bool
    vision_eps: float = DEFAULT_EPS
    text_eps: float = DEFAULT_EPS

    def as_list(self) -> List[int]:
        return [
            self.vision_layers, self.vision_width, self.vision_heads,
            self.text_layers, self.text_width, self.text_heads,
            self.embed_dim, self.image_size, self.patch_size, self.context_length, self.vocab_size,
        ]


def _act_is_quick(act: str, where: str) -> bool:
    if act == "quick_gelu":
        return True
    if act == "gelu":
        return False
    raise ExportError(f"{where}: hidden_act {act!r} is not supported (use quick_gelu or gelu)")


def _square(value, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ExportError(f"{where}: only square sizes are supported, got {value}")
        value = value[0]
    return int(value)


def hf_to_openclip_config(hf_config) -> dict:
    """open_clip `model_cfg` equivalent to a transformers CLIPConfig (raises if there is none)."""
    v, t = hf_config.vision_config, hf_config.text_config
    quick_v = _act_is_quick(v.hidden_act, "vision_config")
    quick_t = _act_is_quick(t.hidden_act, "text_config")
    if quick_v != quick_t:
        raise ExportError("vision and text towers use different activations; open_clip has one flag")
    if v.hidden_size % v.num_attention_heads != 0:
        raise ExportError("vision_config: hidden_size is not a multiple of num_attention_heads")
    vision_cfg = {
        "image_size": _square(v.image_size, "vision_config.image_size"),
        "layers": v.num_hidden_layers,
        "width": v.hidden_size,
        "patch_size": _square(v.patch_size, "vision_config.patch_size"),
        "head_width": v.hidden_size // v.num_attention_heads,
        "mlp_ratio": v.intermediate_size / v.hidden_size,
    }
    text_cfg = {
        "context_length": t.max_position_embeddings,
        "vocab_size": t.vocab_size,
        "width": t.hidden_size,
        "heads": t.num_attention_heads,
        "layers": t.num_hidden_layers,
        "mlp_ratio": t.intermediate_size / t.hidden_size,
    }
    if v.layer_norm_eps != DEFAULT_EPS:
        vision_cfg["norm_kwargs"] = {"eps": v.layer_norm_eps}
    if t.layer_norm_eps != DEFAULT_EPS:
        text_cfg["norm_kwargs"] = {"eps": t.layer_norm_eps}
    for name, cfg, hf in (("vision", vision_cfg, v), ("text", text_cfg, t)):
        if int(cfg["width"] * cfg["mlp_ratio"]) != hf.intermediate_size:
            raise ExportError(f"{name}: intermediate_size {hf.intermediate_size} is not width * mlp_ratio")
    return {
        "embed_dim": hf_config.projection_dim,
        "quick_gelu": quick_v,
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }


# Keys that change only tokenisation, training or dtype, never the fp32 forward we build.
_HARMLESS_TOP = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "custom_text", "cast_dtype",
                 "init_logit_scale", "nonscalar_logit_scale", "output_dict"}
_SUPPORTED_VISION = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio",
                     "norm_kwargs", "patch_dropout", "output_tokens"}
_SUPPORTED_TEXT = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio",
                   "norm_kwargs", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs",
                   "pad_id", "eos_id", "output_tokens"}


def _eps(cfg: dict, where: str) -> float:
    kwargs = cfg.get("norm_kwargs") or {}
    extra = set(kwargs) - {"eps"}
    if extra:
        raise ExportError(f"{where}.norm_kwargs: unsupported keys {sorted(extra)}")
    return float(kwargs.get("eps", DEFAULT_EPS))


def check_openclip_config(model_cfg: dict) -> None:
    """Raise unless model_cfg describes a plain ViT + causal text transformer CLIP."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    extra = set(model_cfg) - _HARMLESS_TOP
    if model_cfg.get("init_logit_bias") is not None:
        raise ExportError("model_cfg.init_logit_bias: models with a logit bias (SigLIP) are not supported")
    extra.discard("init_logit_bias")
    if extra:
        raise ExportError(f"model_cfg: unsupported keys {sorted(extra)}")
    for name, cls, supported in (("vision_cfg", CLIPVisionCfg, _SUPPORTED_VISION),
                                 ("text_cfg", CLIPTextCfg, _SUPPORTED_TEXT)):
        cfg = model_cfg.get(name)
        if not isinstance(cfg, dict):
            raise ExportError(f"model_cfg.{name} is missing")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key, value in cfg.items():
            if key in supported:
                continue
            if key not in defaults:
                raise ExportError(f"model_cfg.{name}.{key}: unknown option")
            if value != defaults[key]:
                raise ExportError(f"model_cfg.{name}.{key} = {value!r} is not supported "
                                  f"(only the default {defaults[key]!r})")
        if isinstance(cfg.get("layers", 12), (list, tuple)):
            raise ExportError(f"model_cfg.{name}.layers: ResNet towers are not supported")


def dims_from_hf_config(hf_config) -> Dims:
    v, t = hf_config.vision_config, hf_config.text_config
    quick = hf_to_openclip_config(hf_config)["quick_gelu"]  # validates activations and sizes
    image_size = _square(v.image_size, "vision_config.image_size")
    patch_size = _square(v.patch_size, "vision_config.patch_size")
    if image_size % patch_size != 0:
        raise ExportError(f"vision_config: image_size {image_size} is not a multiple of patch_size {patch_size}")
    return Dims(
        vision_layers=v.num_hidden_layers, vision_width=v.hidden_size,
        vision_heads=v.num_attention_heads, vision_mlp=v.intermediate_size,
        text_layers=t.num_hidden_layers, text_width=t.hidden_size,
        text_heads=t.num_attention_heads, text_mlp=t.intermediate_size,
        embed_dim=hf_config.projection_dim, image_size=image_size, patch_size=patch_size,
        context_length=t.max_position_embeddings, vocab_size=t.vocab_size, quick_gelu=quick,
        vision_eps=float(v.layer_norm_eps), text_eps=float(t.layer_norm_eps),
    )


def dims_from_openclip_config(model_cfg: dict) -> Dims:
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    v = dataclasses.asdict(CLIPVisionCfg())
    v.update(model_cfg["vision_cfg"])
    t = dataclasses.asdict(CLIPTextCfg())
    t.update(model_cfg["text_cfg"])
    image_size = _square(v["image_size"], "vision_cfg.image_size")
    patch_size = _square(v["patch_size"], "vision_cfg.patch_size")
    if image_size % patch_size != 0:
        raise ExportError(f"vision_cfg: image_size {image_size} is not a multiple of patch_size {patch_size}")
    if v["width"] % v["head_width"] != 0:
        raise ExportError("vision_cfg: width is not a multiple of head_width")
    return Dims(
        vision_layers=int(v["layers"]), vision_width=int(v["width"]),
        vision_heads=int(v["width"]) // int(v["head_width"]),
        vision_mlp=int(v["width"] * v["mlp_ratio"]),
        text_layers=int(t["layers"]), text_width=int(t["width"]), text_heads=int(t["heads"]),
        text_mlp=int(t["width"] * t["mlp_ratio"]),
        embed_dim=int(model_cfg["embed_dim"]), image_size=image_size, patch_size=patch_size,
        context_length=int(t["context_length"]), vocab_size=int(t["vocab_size"]),
        quick_gelu=bool(model_cfg.get("quick_gelu", False)),
        vision_eps=_eps(v, "vision_cfg"), text_eps=_eps(t, "text_cfg"),
    )


def hf_to_openclip_state_dict(hf: Dict[str, Tensor], vision_layers: int, text_layers: int) -> Dict[str, Tensor]:
    """Rename a transformers CLIPModel state dict to OpenAI / open_clip names.

    q, k and v projections are concatenated into in_proj_*; the two projections are transposed
    to [width, embed]. Every source tensor must be used exactly once (buffers such as
    position_ids are ignored)."""
    src = {k: v for k, v in hf.items() if not k.endswith("position_ids")}
    used = set()

    def take(key: str) -> Tensor:
        if key not in src:
            raise ExportError(f"Hugging Face state dict lacks {key}")
        used.add(key)
        return src[key]

    out: Dict[str, Tensor] = {}

    def blocks(hf_prefix: str, oc_prefix: str, layers: int):
        for i in range(layers):
            h, o = f"{hf_prefix}.encoder.layers.{i}", f"{oc_prefix}.resblocks.{i}"
            for part in ("weight", "bias"):
                out[f"{o}.ln_1.{part}"] = take(f"{h}.layer_norm1.{part}")
                out[f"{o}.attn.in_proj_{part}"] = torch.cat(
                    [take(f"{h}.self_attn.{p}_proj.{part}") for p in ("q", "k", "v")], dim=0
                )
                out[f"{o}.attn.out_proj.{part}"] = take(f"{h}.self_attn.out_proj.{part}")
                out[f"{o}.ln_2.{part}"] = take(f"{h}.layer_norm2.{part}")
                out[f"{o}.mlp.c_fc.{part}"] = take(f"{h}.mlp.fc1.{part}")
                out[f"{o}.mlp.c_proj.{part}"] = take(f"{h}.mlp.fc2.{part}")

    out["visual.conv1.weight"] = take("vision_model.embeddings.patch_embedding.weight")
    out["visual.class_embedding"] = take("vision_model.embeddings.class_embedding")
    out["visual.positional_embedding"] = take("vision_model.embeddings.position_embedding.weight")
    for part in ("weight", "bias"):
        out[f"visual.ln_pre.{part}"] = take(f"vision_model.pre_layrnorm.{part}")
        out[f"visual.ln_post.{part}"] = take(f"vision_model.post_layernorm.{part}")
        out[f"ln_final.{part}"] = take(f"text_model.final_layer_norm.{part}")
    blocks("vision_model", "visual.transformer", vision_layers)
    out["visual.proj"] = take("visual_projection.weight").t()
    out["token_embedding.weight"] = take("text_model.embeddings.token_embedding.weight")
    out["positional_embedding"] = take("text_model.embeddings.position_embedding.weight")
    blocks("text_model", "transformer", text_layers)
    out["text_projection"] = take("text_projection.weight").t()
    out["logit_scale"] = take("logit_scale").reshape(())
    left = sorted(set(src) - used)
    if left:
        raise ExportError(f"Hugging Face state dict has tensors this converter does not know: {left[:5]}")
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Sources: what the scripted model is built from and checked against
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Source:
    kind: str  # "hf" | "open_clip"
    path: Path  # the weights file
    dims: Dims
    state_dict: Dict[str, Tensor]  # open_clip names
    model: nn.Module  # the reference implementation, eval mode, fp32

    def image_embeds(self, pixel_values: Tensor) -> Tensor:
        if self.kind == "hf":
            return self.model.get_image_features(pixel_values=pixel_values).pooler_output
        return self.model.encode_image(pixel_values, normalize=False)

    def text_embeds(self, input_ids: Tensor) -> Tensor:
        if self.kind == "hf":
            return self.model.get_text_features(input_ids=input_ids).pooler_output
        return self.model.encode_text(input_ids, normalize=False)

    def block_outputs(self, pixel_values: Tensor) -> List[Tensor]:
        """Output of every vision block, [B, T, D] each."""
        if self.kind == "hf":
            out = self.model.vision_model(pixel_values=pixel_values, output_hidden_states=True)
            return list(out.hidden_states[1:])
        outputs: List[Tensor] = []
        handles = [b.register_forward_hook(lambda _m, _i, o: outputs.append(o))
                   for b in self.model.visual.transformer.resblocks]
        try:
            self.model.encode_image(pixel_values)
        finally:
            for h in handles:
                h.remove()
        if not self.model.visual.transformer.batch_first:
            outputs = [o.transpose(0, 1) for o in outputs]
        return outputs

    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.detach().reshape(())


def _resolve(path: Path) -> Tuple[str, Path, Path]:
    """(kind, config file, weights file) for a --model argument."""
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            return "hf", path / "config.json", path / "model.safetensors"
        if (path / "open_clip_config.json").is_file() and (path / "open_clip_model.safetensors").is_file():
            return "open_clip", path / "open_clip_config.json", path / "open_clip_model.safetensors"
        raise ExportError(f"{path}: expected config.json + model.safetensors (Hugging Face) or "
                          "open_clip_config.json + open_clip_model.safetensors (open_clip)")
    if path.is_file() and path.suffix == ".safetensors":
        cfg = path.parent / "open_clip_config.json"
        if not cfg.is_file():
            raise ExportError(f"{path}: an open_clip .safetensors file needs {cfg} next to it")
        return "open_clip", cfg, path
    raise ExportError(f"{path}: no such model directory or .safetensors file")


def load_source(path: Path) -> Source:
    kind, cfg_path, weights = _resolve(path)
    from safetensors.torch import load_file

    if kind == "hf":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers
        from transformers import CLIPModel

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        try:
            model, info = CLIPModel.from_pretrained(
                str(cfg_path.parent), attn_implementation="eager", dtype=torch.float32,
                output_loading_info=True,
            )
        except Exception as e:  # transformers raises many types for a bad directory
            raise ExportError(f"{cfg_path.parent}: transformers cannot load it as CLIPModel: {e}") from e
        if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
            raise ExportError(f"{weights}: does not match config.json: {info}")
        dims = dims_from_hf_config(model.config)
        state = hf_to_openclip_state_dict(load_file(str(weights)), dims.vision_layers, dims.text_layers)
        return Source(kind, weights, dims, state, model.eval())

    import open_clip

    try:
        raw_cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{cfg_path}: not valid JSON: {e}") from e
    model_cfg = dict(raw_cfg.get("model_cfg", raw_cfg))
    check_openclip_config(model_cfg)
    dims = dims_from_openclip_config(model_cfg)
    state = load_file(str(weights))
    if state and next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    for key in ("attn_mask", "input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    if "logit_scale" in state:
        state["logit_scale"] = state["logit_scale"].reshape(())
    state = {k: v.to(torch.float32) for k, v in state.items()}
    model_cfg.pop("custom_text", None)
    model = open_clip.model.CLIP(**model_cfg)
    reference_state = dict(state)
    reference_state["logit_scale"] = reference_state["logit_scale"].reshape(model.logit_scale.shape)
    load_strict(model, reference_state, f"{weights}: does not match {cfg_path}")
    return Source(kind, weights, dims, state, model.eval())


# ---------------------------------------------------------------------------------------------
# Build, compare, save
# ---------------------------------------------------------------------------------------------


def load_strict(model: nn.Module, state: Dict[str, Tensor], what: str, assign: bool = False) -> None:
    """load_state_dict(strict=True), with the first offending names in the error."""
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ExportError(f"{what}: " + "; ".join(problems[:3]) + more)
    model.load_state_dict(state, strict=True, assign=assign)


def build(source: Source) -> torch.jit.ScriptModule:
    with torch.device("meta"):  # no random init: every tensor comes from the state dict
        model = ScriptedClip(source.dims)
    load_strict(model, source.state_dict, f"{source.path}: weights do not fit the model", assign=True)
    model = model.to(torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return torch.jit.script(model)


def random_inputs(dims: Dims, images: int = 2, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Random pixels and random token sequences: start token, random ids, EOT, zero padding."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(images, 3, dims.image_size, dims.image_size, generator=g)
    eot = dims.vocab_size - 1
    ids = torch.zeros(4, dims.context_length, dtype=torch.int64)
    ends = [1, 5, dims.context_length // 2, dims.context_length - 1]
    for row, end in enumerate(ends):
        ids[row, 0] = eot - 1
        ids[row, 1:end] = torch.randint(1, eot - 1, (end - 1,), generator=g)
        ids[row, end] = eot
    return pixels, ids


def _diff(got: Tensor, want: Tensor, relative: bool = False) -> Tuple[float, float]:
    """(max abs difference, tolerance for it): TOLERANCE, times the reference's largest value
    where `relative` and that exceeds 1 (trained CLIPs carry residual values in the hundreds)."""
    if got.shape != want.shape:
        raise ExportError(f"shape {tuple(got.shape)} != reference {tuple(want.shape)}")
    scale = max(1.0, float(want.abs().max())) if relative else 1.0
    return float((got - want).abs().max()), TOLERANCE * scale


@torch.no_grad()
def compare(module, source: Source, seed: int = 0) -> Dict[str, float]:
    """Max abs differences between the scripted module and the source; raise if any is too big."""
    pixels, ids = random_inputs(source.dims, seed=seed)
    checks: Dict[str, Tuple[float, float]] = {}
    checks["image_embeds"] = _diff(module.encode_image(pixels), source.image_embeds(pixels))
    checks["text_embeds"] = _diff(module.encode_text(ids), source.text_embeds(ids))
    checks["logit_scale"] = _diff(module.get_logit_scale(), source.logit_scale())
    # every layer's stop and resume, on one image to keep ViT-B/32 quick on a CPU
    pixels = pixels[:1]
    want_image = source.image_embeds(pixels)
    blocks = source.block_outputs(pixels)
    worst_res = (0.0, 1.0)
    worst_resume = (0.0, 1.0)
    for layer, want in enumerate(blocks):
        got = module.residual(pixels, layer)
        d = _diff(got, want, relative=True)
        worst_res = max(worst_res, d, key=lambda x: x[0] / x[1])
        d = _diff(module.from_layer(want, layer), want_image)
        worst_resume = max(worst_resume, d, key=lambda x: x[0] / x[1])
    checks["residual(all layers)"] = worst_res
    checks["from_layer(all layers)"] = worst_resume
    bad = [f"{k}: {d:.3g} > {tol:.3g}" for k, (d, tol) in checks.items() if not d <= tol]
    if list(module.config()) != source.dims.as_list():
        bad.append(f"config() {list(module.config())} != {source.dims.as_list()}")
    if bad:
        raise ExportError("scripted model differs from the source: " + "; ".join(bad))
    return {k: d for k, (d, _) in checks.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(model_path, out, check: bool = False, verbose: bool = True,
           source_label: Optional[str] = None) -> Dict[str, float]:
    """Export `model_path` to `out`; returns the measured differences (see `compare`).
    `source_label` is what the file records as its source (default: the weights' path)."""
    model_path, out = Path(model_path), Path(out)
    source = load_source(model_path)
    module = build(source)
    diffs = compare(module, source)
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "source_kind": source.kind,
        "source": source_label or str(source.path), "source_sha256": _sha256(source.path),
        "quick_gelu": source.dims.quick_gelu, "vision_eps": source.dims.vision_eps,
        "text_eps": source.dims.text_eps, "config": source.dims.as_list(),
        "torch": torch.__version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written under its final name in a scratch directory (the zip archive is named after the
    # file, so this keeps the bytes reproducible), then moved into place.
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as scratch:
        tmp = Path(scratch) / out.name
        torch.jit.save(module, str(tmp), _extra_files={"saeclip.json": json.dumps(meta, sort_keys=True)})
        if check:
            reloaded = torch.jit.load(str(tmp), map_location="cpu")
            diffs.update({f"reloaded {k}": v for k, v in compare(reloaded, source, seed=1).items()})
        os.replace(tmp, out)
    if verbose:
        print(f"wrote {out} ({source.kind} source {source.path})", file=sys.stderr)
        for k, d in diffs.items():
            print(f"  max |diff| {k}: {d:.3g}", file=sys.stderr)
    return diffs


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path,
                        help="Hugging Face CLIP dir, open_clip dir, or open_clip .safetensors file")
    parser.add_argument("--out", required=True, type=Path, help="TorchScript file to write (.pt)")
    parser.add_argument("--check", action="store_true",
                        help="also reload the written file and compare it with the source again")
    args = parser.parse_args(argv)
    try:
        export(args.model, args.out, check=args.check)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
