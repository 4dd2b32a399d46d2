"""Reference oracle for saeclip's CLIP image preprocessing (tests/preprocess_parity.rs).

Writes procedurally generated test images (seeded) in many sizes, pixel formats and file
formats into --out DIR, and for each the Pillow / Hugging Face results:

  <name>/decoded        uint8 (H, W, 3)     Image.open(f).convert("RGB")
  <name>/hf_crop        uint8 (224, 224, 3) Hugging Face's PIL path: BICUBIC resize of the
                                            shortest side to 224, center crop with floor
  <name>/openai_crop    uint8 (224, 224, 3) OpenAI CLIP / torchvision: Resize(224, BICUBIC),
                                            CenterCrop(224) (round-half-even offsets)
  <name>/pixel_values   float32 (3,224,224) CLIPImageProcessorPil on the RGB image
  <name>/hf_raw_pixel_values                the same on the image as opened (transformers 5
                                            composites transparency onto white), only for
                                            images with transparency

into DIR/reference.safetensors, and DIR/index.json listing the files, with, for information,
how far transformers' default CLIPImageProcessor (torchvision backend since transformers 5)
is from the slow PIL one.

The slow processor is checked against the direct PIL steps here, so the Rust test can compare
with either. Besides Pillow's own writers, a small baseline JPEG writer produces the layouts
Pillow cannot write (4:4:0, 4:1:1, YCCK, Adobe RGB, separate scans, restart intervals), so
every path of the Rust JPEG decoder meets libjpeg-turbo's output.

Usage: preprocess_reference.py --out DIR
"""

import argparse
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import transformers
from PIL import Image, features
from safetensors.numpy import save_file
from torchvision import transforms as T
from transformers import CLIPImageProcessor, CLIPImageProcessorPil

SIZE = 224


# ---------------------------------------------------------------- procedural content
def gradient(rng, w, h):
    x = np.linspace(0, 255, w)[None, :]
    y = np.linspace(0, 255, h)[:, None]
    r = np.broadcast_to(x, (h, w))
    g = np.broadcast_to(y, (h, w))
    b = (r + g) / 2 * rng.uniform(0.5, 1.0)
    return np.stack([r, g, b], -1).round().astype(np.uint8)


def noise(rng, w, h):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth(rng, w, h):
    """Photo-like: low-resolution noise enlarged, plus fine grain."""
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR), dtype=np.int16)
    grain = rng.integers(-12, 13, (h, w, 3))
    return np.clip(big + grain, 0, 255).astype(np.uint8)


def shapes(rng, w, h):
    img = gradient(rng, w, h).astype(np.int16)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(8):
        color = rng.integers(0, 256, 3)
        if rng.random() < 0.5:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(1, max(w, h) / 3)
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        else:
            x0, y0 = rng.integers(0, w), rng.integers(0, h)
            mask = (xx >= x0) & (xx < x0 + rng.integers(1, w + 1)) & (yy >= y0) & (yy < y0 + rng.integers(1, h + 1))
        img[mask] = color
    return img.astype(np.uint8)


def checker(rng, w, h, cell=3):
    """Hard black/white edges: the kernel's negative lobes overshoot and must clip."""
    yy, xx = np.mgrid[0:h, 0:w]
    on = ((xx // cell + yy // cell) % 2).astype(np.uint8) * 255
    tint = rng.integers(0, 256, 3, dtype=np.uint8)
    img = np.stack([on, on, on], -1)
    img[on == 0] = tint // 4
    return img


CONTENT = {"gradient": gradient, "noise": noise, "smooth": smooth, "shapes": shapes, "checker": checker}


# ---------------------------------------------------------------- writers
def png_bytes(arr, color_type, bit_depth=16, trns=None):
    """A minimal PNG encoder for the 16-bit layouts Pillow cannot write."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = arr.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + np.ascontiguousarray(arr[y]).astype(dtype).tobytes() for y in range(h))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def strip_adobe_marker(data):
    """Remove the APP14 'Adobe' segment Pillow writes into CMYK JPEGs."""
    pos = 2
    while pos < len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker == 0xEE and data[pos + 4 : pos + 9] == b"Adobe":
            return data[:pos] + data[pos + 2 + length :]
        if marker == 0xDA:
            break
        pos += 2 + length
    raise ValueError("no Adobe marker")


# Baseline JPEG writer for the layouts Pillow cannot produce (4:4:0, 4:1:1, 3:1, chroma
# larger than luma, YCCK, Adobe RGB, separate scans, restart intervals). Fixed-length Huffman
# codes keep it short: every DC category is 4 bits, every AC symbol 8 bits.
DC_SYMBOLS = list(range(12))
AC_SYMBOLS = [0x00, 0xF0] + [(r << 4) | s for r in range(16) for s in range(1, 11)]
ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
    20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
])
_n = np.arange(8)
DCT = np.sqrt(2 / 8) * np.cos((2 * _n[None, :] + 1) * _n[:, None] * np.pi / 16)
DCT[0] /= np.sqrt(2)


class BitWriter:
    def __init__(self):
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value, bits):
        for i in range(bits - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)
                self.acc, self.n = 0, 0

    def align(self):
        while self.n:
            self.put(1, 1)


def category(v):
    return int(abs(v)).bit_length()


def encode_block(bw, coefs, pred):
    diff = int(coefs[0]) - pred
    s = category(diff)
    bw.put(DC_SYMBOLS.index(s), 4)
    bw.put(diff if diff >= 0 else diff + (1 << s) - 1, s)
    run = 0
    for k in range(1, 64):
        v = int(coefs[ZIGZAG[k]])
        if v == 0:
            run += 1
            continue
        while run > 15:
            bw.put(AC_SYMBOLS.index(0xF0), 8)
            run -= 16
        s = category(v)
        bw.put(AC_SYMBOLS.index((run << 4) | s), 8)
        bw.put(v if v >= 0 else v + (1 << s) - 1, s)
        run = 0
    if run:
        bw.put(AC_SYMBOLS.index(0x00), 8)
    return int(coefs[0])


def jpeg_bytes(planes, factors, ids=(1, 2, 3, 4), marker="jfif", restart=0, separate_scans=False, q=6):
    """Encode full-resolution planes (already in the coded colour space) as baseline JPEG."""
    h, w = planes[0].shape
    hmax, vmax = max(f[0] for f in factors), max(f[1] for f in factors)
    mcux, mcuy = -(-w // (8 * hmax)), -(-h // (8 * vmax))
    blocks = []  # per component: quantised coefficients [by][bx] -> (64,)
    for plane, (fh, fv) in zip(planes, factors):
        sx, sy = hmax // fh, vmax // fv
        cw, ch = -(-w * fh // hmax), -(-h * fv // vmax)
        full = np.pad(plane.astype(np.float64), ((0, ch * sy - h), (0, cw * sx - w)), mode="edge")
        small = full.reshape(ch, sy, cw, sx).mean(axis=(1, 3))
        small = np.pad(small, ((0, mcuy * fv * 8 - ch), (0, mcux * fh * 8 - cw)), mode="edge") - 128
        grid = small.reshape(mcuy * fv, 8, mcux * fh, 8).transpose(0, 2, 1, 3)
        coefs = np.einsum("ij,abjk,lk->abil", DCT, grid, DCT)
        blocks.append(np.clip(np.round(coefs / q), -1023, 1023).astype(np.int32).reshape(*grid.shape[:2], 64))
        blocks[-1] = (blocks[-1], -(-cw // 8), -(-ch // 8))

    def seg(marker_byte, payload):
        return bytes([0xFF, marker_byte]) + struct.pack(">H", len(payload) + 2) + payload

    out = b"\xff\xd8"
    if marker == "jfif":
        out += seg(0xE0, b"JFIF\0\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    elif marker is not None:  # ("adobe", transform)
        out += seg(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, marker[1]))
    out += seg(0xDB, bytes([0]) + bytes([q] * 64))
    n = len(planes)
    sof = struct.pack(">BHHB", 8, h, w, n) + b"".join(bytes([ids[i], (f[0] << 4) | f[1], 0]) for i, f in enumerate(factors))
    out += seg(0xC0, sof)
    dc_counts = [0] * 16
    dc_counts[3] = len(DC_SYMBOLS)
    ac_counts = [0] * 16
    ac_counts[7] = len(AC_SYMBOLS)
    out += seg(0xC4, bytes([0x00] + dc_counts + DC_SYMBOLS) + bytes([0x10] + ac_counts + AC_SYMBOLS))
    if restart:
        out += seg(0xDD, struct.pack(">H", restart))

    def scan(members, units):
        bw, preds, rst = BitWriter(), {m: 0 for m in members}, 0
        for i, unit in enumerate(units):
            if restart and i and i % restart == 0:
                bw.align()
                bw.out += bytes([0xFF, 0xD0 + rst % 8])
                rst += 1
                preds = {m: 0 for m in members}
            for m, by, bx in unit:
                preds[m] = encode_block(bw, blocks[m][0][by, bx], preds[m])
        bw.align()
        header = bytes([len(members)]) + b"".join(bytes([ids[m], 0]) for m in members) + bytes([0, 63, 0])
        return seg(0xDA, header) + bytes(bw.out)

    if separate_scans:
        for m in range(n):
            _, bw_, bh_ = blocks[m]
            out += scan([m], [[(m, by, bx)] for by in range(bh_) for bx in range(bw_)])
    else:
        units = [
            [(m, my * factors[m][1] + v, mx * factors[m][0] + u) for m in range(n) for v in range(factors[m][1]) for u in range(factors[m][0])]
            for my in range(mcuy) for mx in range(mcux)
        ]
        out += scan(list(range(n)), units)
    return out + b"\xff\xd9"


def ycbcr_planes(rgb):
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return [np.clip(np.round(p), 0, 255) for p in (y, cb, cr)]


def save(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def build_cases(rng):
    """(name, bytes, extension, lossless) for every test image."""
    cases = []

    def add(name, data, ext, lossless):
        cases.append((name, data, ext, lossless))

    def rgb(content, w, h):
        return Image.fromarray(CONTENT[content](rng, w, h))

    # 8-bit RGB PNG: sizes and aspect ratios, shrinking, enlarging and identity.
    for content, (w, h) in [
        ("noise", (1, 1)), ("noise", (2, 3)), ("gradient", (32, 32)), ("noise", (32, 32)),
        ("shapes", (32, 32)), ("checker", (32, 32)), ("shapes", (7, 300)), ("shapes", (300, 7)),
        ("smooth", (512, 384)), ("checker", (384, 512)), ("shapes", (1000, 37)), ("smooth", (37, 1000)),
        ("noise", (224, 224)), ("smooth", (224, 300)), ("checker", (225, 224)), ("noise", (223, 223)),
        ("checker", (448, 448)), ("shapes", (299, 173)), ("smooth", (640, 480)), ("noise", (250, 250)),
        ("gradient", (1, 500)), ("smooth", (1600, 1200)), ("checker", (97, 61)), ("noise", (113, 227)),
    ]:
        add(f"png_rgb_{content}_{w}x{h}", save(rgb(content, w, h), "PNG"), "png", True)

    # Alpha and grayscale layouts.
    def with_alpha(arr):
        a = rng.integers(0, 256, arr.shape[:2], dtype=np.uint8)
        return np.concatenate([arr, a[..., None]], -1)

    add("png_rgba_64x48", save(Image.fromarray(with_alpha(shapes(rng, 64, 48)), "RGBA"), "PNG"), "png", True)
    add("png_rgba_512x384", save(Image.fromarray(with_alpha(smooth(rng, 512, 384)), "RGBA"), "PNG"), "png", True)
    add("png_l_32x32", save(rgb("noise", 32, 32).convert("L"), "PNG"), "png", True)
    add("png_l_333x222", save(rgb("shapes", 333, 222).convert("L"), "PNG"), "png", True)
    add("png_la_100x150", save(rgb("smooth", 100, 150).convert("LA"), "PNG"), "png", True)
    add("png_1bit_90x70", save(rgb("checker", 90, 70).convert("1"), "PNG"), "png", True)
    pal = rgb("shapes", 200, 120).convert("P", palette=Image.Palette.ADAPTIVE, colors=200)
    add("png_p_200x120", save(pal, "PNG"), "png", True)
    pal_t = rgb("smooth", 120, 200).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    add("png_p_transparent_120x200", save(pal_t, "PNG", transparency=3), "png", True)
    pal4 = rgb("gradient", 50, 60).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add("png_p4bit_50x60", save(pal4, "PNG", bits=4), "png", True)
    # RGB with a colour-key tRNS (no alpha channel, "transparency" in info).
    add("png_rgb_trns_80x40", save(rgb("checker", 80, 40), "PNG", transparency=(255, 255, 255)), "png", True)

    # 16-bit PNGs: gray opens as I;16 (clipped to 255 on conversion), colour keeps the MSB.
    g16 = rng.integers(0, 1000, (64, 64)).astype(np.uint16)
    add("png_gray16_low_64x64", png_bytes(g16, 0), "png", True)
    g16_full = (np.linspace(0, 65535, 80 * 60).reshape(60, 80)).astype(np.uint16)
    add("png_gray16_full_80x60", png_bytes(g16_full, 0), "png", True)
    g16_t = rng.integers(0, 600, (40, 30)).astype(np.uint16)
    add("png_gray16_trns_30x40", png_bytes(g16_t, 0, trns=struct.pack(">H", 100)), "png", True)
    rgb16 = rng.integers(0, 65536, (72, 96, 3)).astype(np.uint16)
    add("png_rgb16_96x72", png_bytes(rgb16, 2), "png", True)
    rgba16 = rng.integers(0, 65536, (64, 48, 4)).astype(np.uint16)
    add("png_rgba16_48x64", png_bytes(rgba16, 6), "png", True)
    la16 = rng.integers(0, 65536, (30, 40, 2)).astype(np.uint16)
    add("png_la16_40x30", png_bytes(la16, 4), "png", True)

    # JPEG: qualities, chroma subsampling (0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0), progressive.
    for content, (w, h), q, sub in [
        ("smooth", (512, 384), 95, 0), ("smooth", (512, 384), 75, 2), ("smooth", (512, 384), 50, 1),
        ("shapes", (384, 512), 90, 2), ("noise", (32, 32), 85, 2), ("smooth", (32, 32), 95, 0),
        ("smooth", (640, 480), 80, 2), ("shapes", (7, 300), 90, 2), ("smooth", (1001, 333), 70, 2),
        ("checker", (250, 250), 92, 1), ("smooth", (1600, 1200), 85, 2),
    ]:
        im = rgb(content, w, h)
        add(f"jpeg_q{q}_s{sub}_{content}_{w}x{h}", save(im, "JPEG", quality=q, subsampling=sub), "jpg", False)
    add("jpeg_progressive_400x300", save(rgb("smooth", 400, 300), "JPEG", quality=85, progressive=True), "jpg", False)
    add("jpeg_gray_300x200", save(rgb("smooth", 300, 200).convert("L"), "JPEG", quality=90), "jpg", False)
    # Every mode the fuzzed corpus (tests/fuzz/jpeg) starts from, progressive too.
    for sub in (0, 1, 2):
        add(f"jpeg_progressive_s{sub}_shapes_203x151", save(rgb("shapes", 203, 151), "JPEG", quality=85, subsampling=sub, progressive=True), "jpg", False)
    add("jpeg_progressive_gray_203x151", save(rgb("smooth", 203, 151).convert("L"), "JPEG", quality=85, progressive=True), "jpg", False)
    pcmyk = Image.fromarray(np.concatenate([smooth(rng, 97, 61), noise(rng, 97, 61)[..., :1] // 2], -1), "CMYK")
    add("jpeg_progressive_cmyk_97x61", save(pcmyk, "JPEG", quality=90, progressive=True), "jpg", False)
    # CMYK: Pillow writes Adobe-inverted CMYK; a copy without the Adobe marker is read the same.
    for (w, h) in [(256, 192), (31, 17)]:
        cmyk = Image.fromarray(np.concatenate([smooth(rng, w, h), noise(rng, w, h)[..., :1] // 2], -1), "CMYK")
        add(f"jpeg_cmyk_adobe_{w}x{h}", save(cmyk, "JPEG", quality=90), "jpg", False)
    cmyk = Image.fromarray(np.concatenate([shapes(rng, 128, 96), smooth(rng, 128, 96)[..., :1]], -1), "CMYK")
    add("jpeg_cmyk_noadobe_128x96", strip_adobe_marker(save(cmyk, "JPEG", quality=90)), "jpg", False)

    # Restart markers, tiny sizes (chroma two samples wide or less: no fancy upsampling).
    add("jpeg_restart_blocks_300x200", save(rgb("smooth", 300, 200), "JPEG", quality=85, restart_marker_blocks=5), "jpg", False)
    add("jpeg_progressive_restart_rows_257x129", save(rgb("shapes", 257, 129), "JPEG", quality=80, progressive=True, restart_marker_rows=2), "jpg", False)
    for (w, h), sub in [((1, 1), 2), ((3, 40), 2), ((4, 33), 1), ((2, 2), 0), ((5, 6), 2), ((17, 3), 1)]:
        add(f"jpeg_tiny_s{sub}_{w}x{h}", save(rgb("noise", w, h), "JPEG", quality=90, subsampling=sub), "jpg", False)

    # Layouts written by the small encoder above.
    photo = smooth(rng, 203, 151)
    ycc = ycbcr_planes(photo)
    for name, factors in [
        ("440", [(1, 2), (1, 1), (1, 1)]),
        ("411", [(4, 1), (1, 1), (1, 1)]),
        ("31", [(3, 1), (1, 1), (1, 1)]),
        ("chroma_larger", [(1, 1), (2, 2), (2, 2)]),
        ("420_h2v2_both", [(2, 2), (1, 1), (2, 1)]),
    ]:
        add(f"jpeg_enc_{name}_203x151", jpeg_bytes(ycc, factors), "jpg", False)
    add("jpeg_enc_420_restart_separate_scans", jpeg_bytes(ycc, [(2, 2), (1, 1), (1, 1)], restart=7, separate_scans=True), "jpg", False)
    add("jpeg_enc_no_marker_ids123", jpeg_bytes(ycc, [(2, 1), (1, 1), (1, 1)], marker=None), "jpg", False)
    rgb_planes = [photo[..., i] for i in range(3)]
    add("jpeg_enc_adobe_rgb", jpeg_bytes(rgb_planes, [(1, 1)] * 3, marker=("adobe", 0)), "jpg", False)
    add("jpeg_enc_ids_rgb", jpeg_bytes(rgb_planes, [(1, 1)] * 3, ids=(82, 71, 66), marker=None), "jpg", False)
    k = smooth(rng, 203, 151)[..., 0]
    add("jpeg_enc_ycck", jpeg_bytes(ycc + [k], [(2, 2), (1, 1), (1, 1), (2, 2)], marker=("adobe", 2)), "jpg", False)
    add("jpeg_enc_cmyk_411", jpeg_bytes(rgb_planes + [k], [(2, 1), (1, 1), (1, 1), (2, 1)], marker=("adobe", 0)), "jpg", False)

    # Other containers.
    add("gif_100x80", save(rgb("shapes", 100, 80).convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), "gif", True)
    add("bmp_77x55", save(rgb("noise", 77, 55), "BMP"), "bmp", True)
    add("tiff_60x90", save(rgb("smooth", 60, 90), "TIFF"), "tiff", True)
    gif_t = rgb("smooth", 64, 40).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    add("gif_transparent_64x40", save(gif_t, "GIF", transparency=5), "gif", True)
    add("webp_lossless_90x60", save(rgb("shapes", 90, 60), "WEBP", lossless=True), "webp", True)
    add("webp_lossy_120x90", save(rgb("smooth", 120, 90), "WEBP", quality=80), "webp", False)
    add("webp_lossy_rgba_64x48", save(Image.fromarray(with_alpha(shapes(rng, 64, 48)), "RGBA"), "WEBP", quality=80), "webp", False)
    return cases


# ---------------------------------------------------------------- references
def hf_crop_direct(im):
    """Hugging Face's steps written out: shortest side to SIZE (long = int(SIZE*long/short)),
    PIL BICUBIC, crop at (h - SIZE) // 2, (w - SIZE) // 2."""
    w, h = im.size
    if w <= h:
        nw, nh = SIZE, int(SIZE * h / w)
    else:
        nw, nh = int(SIZE * w / h), SIZE
    arr = np.asarray(im.resize((nw, nh), Image.Resampling.BICUBIC))
    top, left = (nh - SIZE) // 2, (nw - SIZE) // 2
    return arr[top : top + SIZE, left : left + SIZE]


def has_transparency(im):
    return "A" in im.getbands() or im.info.get("transparency") is not None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(20240611)
    slow = CLIPImageProcessorPil()
    slow_crop_only = CLIPImageProcessorPil(do_rescale=False, do_normalize=False)
    fast = CLIPImageProcessor()
    openai = T.Compose([T.Resize(SIZE, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(SIZE)])

    tensors, index = {}, []
    for name, data, ext, lossless in build_cases(rng):
        path = args.out / f"{name}.{ext}"
        path.write_bytes(data)
        raw = Image.open(path)
        mode = raw.mode
        decoded = np.asarray(raw.convert("RGB"))
        # A fresh image without info["transparency"] (convert keeps a colour key, and
        # transformers 5 would composite it onto white): exactly Pillow's RGB pixels.
        rgb = Image.fromarray(decoded)
        hf_crop = hf_crop_direct(rgb)
        # The slow processor must agree with the direct PIL steps.
        slow_out = slow_crop_only(rgb, return_tensors="np")["pixel_values"][0]
        assert np.array_equal(slow_out.transpose(1, 2, 0), hf_crop), name
        tensors[f"{name}/decoded"] = np.ascontiguousarray(decoded)
        tensors[f"{name}/hf_crop"] = np.ascontiguousarray(hf_crop)
        tensors[f"{name}/openai_crop"] = np.ascontiguousarray(np.asarray(openai(rgb)))
        tensors[f"{name}/pixel_values"] = slow(rgb, return_tensors="np")["pixel_values"][0].astype(np.float32)
        fast_values = fast(rgb, return_tensors="pt")["pixel_values"][0].numpy()
        fast_diff = float(np.abs(fast_values - tensors[f"{name}/pixel_values"]).max())
        transparent = has_transparency(raw)
        if transparent:
            composited = slow(Image.open(path), return_tensors="np")["pixel_values"][0]
            tensors[f"{name}/hf_raw_pixel_values"] = composited.astype(np.float32)
        index.append(
            {
                "name": name,
                "file": path.name,
                "format": raw.format,
                "pil_mode": mode,
                "lossless": lossless,
                "transparency": transparent,
                "width": raw.width,
                "height": raw.height,
                "fast_processor_max_abs_diff": fast_diff,
            }
        )

    save_file(tensors, str(args.out / "reference.safetensors"))
    meta = {
        "size": SIZE,
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "images": index,
    }
    (args.out / "index.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {len(index)} images and references to {args.out}")


if __name__ == "__main__":
    main()
