"""saeclip extract vs a PIL + transformers pipeline: end-to-end activation extraction on the CPU.

`make bench-extract` runs this after building the release binary and the Rust bench. It

1. writes (once) 256 seeded synthetic JPEGs of Food-101-like sizes (512x384, 384x512,
   512x512; gradients, shapes and noise; quality 90) as a `folder:` dataset with four class
   subfolders under target/bench/extract-images/, and (once, shared with bench-clip) a seeded
   random-weight transformers CLIPModel with CLIPConfig() defaults (ViT-B/32) under
   target/bench/vit-b-32-hf/;
2. alternates rounds of, each timed end to end as a fresh process (start-up and model load
   included):
   - `saeclip extract` of layer 11, CLS token, f16, batch 32 (and its own images/s, which
     covers the extraction loop only);
   - the Python reference: PIL + transformers' `CLIPImageProcessorPil` in a torch DataLoader
     with 2 workers, batch 32, and transformers' CLIP vision tower
     (`hidden_states[12][:, 0]` as f16), with as many torch threads as cores;
   - `saeclip extract` of layer 5 (the forward stops after block 5);
   - decoding + preprocessing alone: saeclip's code (benches/extract_pipeline.rs, rayon over
     all cores) and PIL + `CLIPImageProcessorPil` in a DataLoader with 2 worker processes;
3. runs the bench's breakdown once (`--model`): in one process, saeclip's forward alone,
   decoding overlapped with it as `extract` does, and decoding then forward, to show where
   the time goes and what overlapping decode with libtorch costs on this machine;
4. checks that saeclip's cache and the Python activations agree, so that the same
   computation is timed;
5. rewrites the `<!-- extract -->` section of bench/RESULTS.md with the best run of each.

Exits non-zero when the activations disagree or a peer fails, not when a target is missed.
Run `bench/extract.py --python-reference OUT` to run the Python pipeline alone.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, RESULTS, bench_executable, cpu_model, rust_env, write_section

BENCH_DIR = ROOT / "target" / "bench"
MODEL_DIR = BENCH_DIR / "vit-b-32-hf"
IMAGE_DIR = BENCH_DIR / "extract-images"
# Written last into IMAGE_DIR; a hidden name, so that neither the dataset nor the decode
# bench counts it as an image.
IMAGES_DONE = ".complete.json"
WORK_DIR = BENCH_DIR / "extract-runs"
BIN = ROOT / "target" / "release" / "saeclip"
BEGIN, END = "<!-- extract -->", "<!-- /extract -->"

CLASSES = ["apple_pie", "caesar_salad", "donuts", "ramen"]
# (width, height) and how often each occurs; Food-101 images are at most 512 a side.
SIZES = [((512, 384), 0.6), ((384, 512), 0.2), ((512, 512), 0.2)]

# Targets from the issue.
TARGET_RATIO = 1.0  # saeclip images/s over Python's, end to end
TARGET_DECODE = 150.0  # images/s, decode + preprocess alone
TARGET_SPEEDUP = 1.8  # block 5 over block 11
# Largest |saeclip - Python| over the largest |Python| allowed on the f16 activations.
MAX_REL_DIFF = 1e-2


def log(msg: str) -> None:
    print(f"[bench-extract] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Inputs


def make_images(count: int, seed: int) -> None:
    """Write `count` seeded JPEGs once; a complete folder (marker file) is reused."""
    done = IMAGE_DIR / IMAGES_DONE
    want = {"count": count, "seed": seed, "version": 1}
    if done.is_file() and json.loads(done.read_text()) == want:
        return
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    log(f"writing {count} JPEGs (seed {seed}) to {IMAGE_DIR}")
    tmp = IMAGE_DIR.with_name(IMAGE_DIR.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    sizes = [s for s, _ in SIZES]
    weights = [w for _, w in SIZES]
    for i in range(count):
        w, h = sizes[rng.choice(len(sizes), p=weights)]
        # A two-colour gradient at a random angle with a low-frequency ripple.
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, 2 * np.pi)
        t = (xx * np.cos(a) + yy * np.sin(a)) / max(w, h)
        t = (t - t.min()) / (t.max() - t.min() + 1e-6)
        c0, c1 = rng.uniform(0, 255, (2, 3))
        ripple = 12 * np.sin(xx / rng.uniform(15, 60) + yy / rng.uniform(15, 60))
        base = c0 + t[..., None] * (c1 - c0) + ripple[..., None]
        img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
        # Shapes: ellipses, rectangles and polygons in random colours, softened.
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(4, 12)):
            x0, y0 = rng.uniform(-0.1, 0.9, 2) * (w, h)
            x1, y1 = x0 + rng.uniform(0.05, 0.5) * w, y0 + rng.uniform(0.05, 0.5) * h
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = rng.integers(3)
            if kind == 0:
                draw.ellipse([x0, y0, x1, y1], fill=fill)
            elif kind == 1:
                draw.rectangle([x0, y0, x1, y1], fill=fill)
            else:
                pts = [tuple(p) for p in rng.uniform(0, 1, (rng.integers(3, 7), 2)) * (w, h)]
                draw.polygon(pts, fill=fill)
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        # Sensor-like noise.
        pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(3, 12), (h, w, 3))
        img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        out = tmp / CLASSES[i % len(CLASSES)] / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(out, format="JPEG", quality=90)
    (tmp / IMAGES_DONE).write_text(json.dumps(want))
    shutil.rmtree(IMAGE_DIR, ignore_errors=True)
    tmp.rename(IMAGE_DIR)


def image_files() -> list[Path]:
    """The dataset's images in saeclip's `folder:` order: classes sorted, then paths sorted."""
    files = []
    for cls in sorted(p for p in IMAGE_DIR.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files += sorted(p for p in cls.rglob("*") if p.is_file() and not p.name.startswith("."))
    return files


def model_complete() -> bool:
    from safetensors import safe_open

    if not (MODEL_DIR / "config.json").is_file() or not (MODEL_DIR / "model.safetensors").is_file():
        return False
    try:
        with safe_open(str(MODEL_DIR / "model.safetensors"), "pt") as f:
            return any(k.startswith("vision_model.") for k in f.keys())
    except Exception:  # a half-written file
        return False


def make_model(seed: int) -> None:
    """Save a random-weight ViT-B/32 CLIPModel once (bench-clip makes the same one)."""
    if model_complete():
        return
    import torch
    from transformers import CLIPConfig, CLIPModel

    log(f"creating random-weight ViT-B/32 (seed {seed}) in {MODEL_DIR}")
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig()).eval()
    tmp = MODEL_DIR.with_name(MODEL_DIR.name + f".partial-{os.getpid()}")
    # transformers 5 always writes safetensors (the safe_serialization flag is gone).
    model.save_pretrained(tmp)
    if model_complete():  # another bench finished it meanwhile
        shutil.rmtree(tmp)
        return
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    tmp.rename(MODEL_DIR)


# ---------------------------------------------------------------------------------------
# The Python reference pipeline (runs in a child process, so that its start-up counts)


class PilClipImages:
    """The images, each opened with PIL and preprocessed by CLIPImageProcessorPil."""

    def __init__(self, files: list[Path]):
        from transformers import CLIPImageProcessorPil

        self.files = files
        self.processor = CLIPImageProcessorPil()  # OpenAI CLIP's 224 px preprocessing

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as img:
            rgb = img.convert("RGB")
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"][0]


def python_reference(out: Path, layer: int, batch: int, workers: int, threads: int) -> int:
    """Extract the CLS token after block `layer` for every image into `out` (f16 safetensors)
    and print timings as JSON."""
    start = time.perf_counter()
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    imported = time.perf_counter()
    model = CLIPModel.from_pretrained(MODEL_DIR).eval()
    loaded = time.perf_counter()
    files = image_files()
    loader = torch.utils.data.DataLoader(PilClipImages(files), batch_size=batch, num_workers=workers)
    acts = []
    with torch.inference_mode():
        for pixels in loader:
            hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
            acts.append(hidden[layer + 1][:, 0].to(torch.float16))  # hidden_states[L+1] = block L
    sources = [str(p.relative_to(IMAGE_DIR)) for p in files]
    save_file({"activations": torch.cat(acts).contiguous()}, str(out), metadata={"sources": json.dumps(sources)})
    end = time.perf_counter()
    print(
        json.dumps(
            {
                "images": len(files),
                "import_s": imported - start,
                "load_s": loaded - imported,
                "loop_s": end - loaded,
                "threads": torch.get_num_threads(),
            }
        )
    )
    return 0


# ---------------------------------------------------------------------------------------
# Timed runs


def build_decode_bench() -> Path:
    """The built extract_pipeline bench executable, so that every round runs the same one."""
    return bench_executable("extract_pipeline")


def children_cpu_s() -> float:
    """User + system CPU seconds of all waited-for child processes so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def snapshot(exe: Path, name: str) -> Path:
    """A copy of a built executable, so that every run uses the same one even when someone
    rebuilds the shared target directory meanwhile (libtorch is found through its absolute
    RUNPATH, so the copy runs from anywhere)."""
    copy = WORK_DIR / name
    copy.unlink(missing_ok=True)
    shutil.copy2(exe, copy)
    return copy


def saeclip_command(layer: int, out: Path, batch: int, exe: Path = BIN) -> list[str]:
    # Without -q, so that the command's own summary line (images/s over the loop) is printed;
    # -q changes nothing else (the progress bar is hidden anyway when stderr is a pipe).
    return [
        str(exe.relative_to(ROOT)), "extract", "--device", "cpu",
        "--model", str(MODEL_DIR.relative_to(ROOT)),
        "--dataset", f"folder:{IMAGE_DIR.relative_to(ROOT)}",
        "--layer", str(layer), "--tokens", "cls", "--out", str(out.relative_to(ROOT)),
        "--dtype", "f16", "--batch-size", str(batch), "--force",
    ]  # fmt: skip


SUMMARY = re.compile(r"extracted (\d+) images .* in ([\d.]+)s, ([\d.]+) images/s")


def run_saeclip(exe: Path, layer: int, batch: int, extra_env: dict[str, str] | None = None) -> dict:
    out = WORK_DIR / f"saeclip-l{layer}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = saeclip_command(layer, out, batch, exe)
    env = rust_env() | (extra_env or {})
    load = os.getloadavg()[0]
    cpu = children_cpu_s()
    start = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    cpu = children_cpu_s() - cpu
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    m = SUMMARY.search(p.stderr)
    if not m:
        raise SystemExit(f"no summary line in the output of {' '.join(cmd)}:\n{p.stderr}")
    images = int(m.group(1))
    return {
        "images": images,
        "wall_s": wall,
        "images_per_s": images / wall,
        "loop_s": float(m.group(2)),
        "loop_images_per_s": float(m.group(3)),
        "cache": out,
        "load": load,
        "cpu_s": cpu,
    }


def run_python(layer: int, batch: int, workers: int, threads: int) -> dict:
    out = WORK_DIR / f"python-l{layer}.safetensors"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--python-reference", str(out)]
    cmd += ["--layer", str(layer), "--batch", str(batch), "--workers", str(workers), "--threads", str(threads)]
    load = os.getloadavg()[0]
    cpu = children_cpu_s()
    start = time.perf_counter()
    # The DataLoader joins its workers, so their CPU time is counted in the child's.
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    cpu = children_cpu_s() - cpu
    if p.returncode != 0:
        raise SystemExit(f"the Python reference failed ({p.returncode})")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(
        wall_s=wall,
        images_per_s=r["images"] / wall,
        loop_images_per_s=r["images"] / r["loop_s"],
        out=out,
        load=load,
        cpu_s=cpu,
    )
    return r


def run_decode_rust(exe: Path, rounds: int) -> dict:
    cmd = [str(exe), "--images", str(IMAGE_DIR), "--rounds", str(rounds), "--warmup", "1"]
    p = subprocess.run(cmd, cwd=ROOT, env=rust_env(), check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_breakdown(exe: Path, layer: int, batch: int, rounds: int) -> dict:
    """Where saeclip's extraction time goes, measured in one process (see the bench's docs)."""
    cmd = [str(exe), "--images", str(IMAGE_DIR), "--rounds", "1", "--warmup", "0", "--model", str(MODEL_DIR)]
    cmd += ["--layer", str(layer), "--batch", str(batch), "--breakdown-rounds", str(rounds)]
    load = os.getloadavg()[0]
    p = subprocess.run(cmd, cwd=ROOT, env=rust_env(), check=True, stdout=subprocess.PIPE, text=True)
    r = json.loads(p.stdout.strip().splitlines()[-1])["breakdown"]
    r["load"] = load
    return r


def time_decode_python(files: list[Path], batch: int, workers: int, rounds: int) -> list[float]:
    """Seconds per pass of PIL + CLIPImageProcessorPil over all files in a DataLoader with
    `workers` processes (kept alive; one untimed pass first), no model."""
    import torch

    loader = torch.utils.data.DataLoader(
        PilClipImages(files), batch_size=batch, num_workers=workers, persistent_workers=True
    )
    times = []
    for i in range(rounds + 1):
        start = time.perf_counter()
        n = sum(len(b) for b in loader)
        if i > 0:
            times.append(time.perf_counter() - start)
        assert n == len(files), n
    del loader
    return times


# ---------------------------------------------------------------------------------------
# Checks and report


def compare(cache: Path, python_out: Path) -> dict:
    """max |saeclip - Python| / max |Python| over all images, matched by file name."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["dtype"] == "f16" and not manifest["skipped"], manifest
    with (cache / "images.csv").open() as f:
        source_of = {int(r["image_index"]): r["source"] for r in csv.DictReader(f)}
    ours = {}
    for shard in manifest["shards"]:
        t = load_file(str(cache / shard["file"]))
        for idx, row in zip(t["image_index"].tolist(), t["activations"]):
            ours[source_of[idx]] = row
    with safe_open(str(python_out), "pt") as f:
        sources = json.loads(f.metadata()["sources"])
        theirs = f.get_tensor("activations")
    assert set(sources) == set(ours), "saeclip and Python saw different images"
    a = torch.stack([ours[s] for s in sources]).float()
    b = theirs.float()
    return {
        "rows": len(sources),
        "d_model": a.shape[1],
        "max_abs": (a - b).abs().max().item(),
        "scale": b.abs().max().item(),
        "rel": ((a - b).abs().max() / b.abs().max()).item(),
    }


def best(runs: list[dict], key: str) -> dict:
    """The run with the highest `key`."""
    return max(runs, key=lambda r: r[key])


def render(r: dict) -> str:
    verdict = lambda ok: "**PASS**" if ok else "**FAIL**"  # noqa: E731
    fmt_runs = lambda runs: ", ".join(  # noqa: E731
        f"{x['images_per_s']:.2f} ({x['loop_images_per_s']:.2f}; {x['cpu_s']:.0f} CPU s; load {x['load']:.1f})"
        for x in runs
    )
    s11, py, s5 = r["saeclip_l11"], r["python"], r["saeclip_l5"]
    b11, bpy, b5 = best(s11, "images_per_s"), best(py, "images_per_s"), best(s5, "images_per_s")
    l11, lpy, l5 = (best(x, "loop_images_per_s") for x in (s11, py, s5))
    dec, dec_py = r["decode_rust"], r["decode_python"]
    ratio = b11["images_per_s"] / bpy["images_per_s"]
    loop_ratio = l11["loop_images_per_s"] / lpy["loop_images_per_s"]
    speedup = l5["loop_images_per_s"] / l11["loop_images_per_s"]
    speedup_e2e = b5["images_per_s"] / b11["images_per_s"]
    c = r["parity"]
    load = lambda xs: " / ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    n = r["images"]
    return "\n".join(
        [
            BEGIN,
            "## Activation extraction end to end (`saeclip extract` vs PIL + transformers)",
            "",
            f"- Command: `make bench-extract` (runs `bench/extract.py`: {r['rounds']} interleaved rounds "
            f"of saeclip layer 11, the Python reference, saeclip layer 5 and both decode benches)",
            f"- Date: {r['date']}",
            f"- Machine: {r['cpu']}, {r['cores']} cores",
            f"- Load average (1/5/15 min): {load(r['load_before'])} at start, {load(r['load_after'])} at end",
            *busy_warning(r),
            f"- Software: torch {r['torch']} (libtorch for both), transformers {r['transformers']}, "
            f"Pillow {r['pillow']}, Python {r['python_version']}",
            f"- Workload: {n} synthetic JPEGs (q 90; {r['size_mix']}) as a `folder:` dataset of "
            f"{len(CLASSES)} classes; ViT-B/32 (CLIPConfig() defaults), random weights, fp32 forward; "
            f"CLS token after block 11 stored as f16; batch {r['batch']}",
            f"- saeclip: `{' '.join(saeclip_command(11, WORK_DIR / 'saeclip-l11', r['batch']))}` "
            f"(run from a copy of the binary taken at the start; libtorch and rayon at their "
            f"defaults: {r['cores']} threads each)",
            f"- Python: PIL + `CLIPImageProcessorPil` in a torch `DataLoader` ({r['workers']} workers, "
            f"batch {r['batch']}), `CLIPModel.from_pretrained` + `vision_model(..., "
            f"output_hidden_states=True).hidden_states[12][:, 0]` → f16, `torch.set_num_threads({r['threads']})`, "
            f"under `inference_mode`",
            "- End to end = wall time of a fresh process (start-up, imports, model load, extraction, "
            "writing); loop = extraction after the model is loaded (saeclip's own summary line; "
            "Python: DataLoader start to file written)",
            f"- Each figure is the best of {r['rounds']} runs; every run is listed below the table",
            f"- Same computation: max |saeclip − Python| / max |Python| over the {c['rows']}×{c['d_model']} "
            f"f16 activations = {c['rel']:.1e} (max |Δ| {c['max_abs']:.2e}, max |Python| {c['scale']:.2f}; "
            f"limit {MAX_REL_DIFF:.0e})",
            "",
            "| what | saeclip | Python | ratio saeclip/Python |",
            "|---|---:|---:|---:|",
            f"| end to end, images/s (layer 11) | {b11['images_per_s']:.2f} | {bpy['images_per_s']:.2f} "
            f"| {ratio:.2f} |",
            f"| end to end, seconds for {n} images | {b11['wall_s']:.1f} | {bpy['wall_s']:.1f} | — |",
            f"| end to end, CPU seconds (least of the runs; process + children) "
            f"| {min(x['cpu_s'] for x in s11):.1f} | {min(x['cpu_s'] for x in py):.1f} | — |",
            f"| extraction loop only, images/s (layer 11) | {l11['loop_images_per_s']:.2f} "
            f"| {lpy['loop_images_per_s']:.2f} | {loop_ratio:.2f} |",
            f"| decode + preprocess alone, images/s | {dec['images_per_s']:.1f} "
            f"| {dec_py['images_per_s']:.1f} | {dec['images_per_s'] / dec_py['images_per_s']:.2f} |",
            f"| extraction loop only, images/s (layer 5) | {l5['loop_images_per_s']:.2f} | — | — |",
            f"| end to end, images/s (layer 5) | {b5['images_per_s']:.2f} | — | — |",
            "",
            f"Block 5 vs block 11 (saeclip): **{speedup:.2f}×** over the extraction loop, "
            f"{speedup_e2e:.2f}× end to end (model load and start-up are the same for both).",
            "",
            f"Decode + preprocess alone: saeclip (benches/extract_pipeline.rs, `preprocess_file` on a "
            f"rayon pool of {dec['threads']} threads) **{dec['images_per_s']:.1f} images/s** "
            f"(median of {len(dec['rounds_s'])} passes over all {dec['images']} files after one "
            f"warm-up pass; passes {', '.join(f'{x:.3f}' for x in dec['rounds_s'])} s); PIL + "
            f"`CLIPImageProcessorPil` in a DataLoader with {r['workers']} worker processes "
            f"{dec_py['images_per_s']:.1f} images/s (median pass after one warm-up pass, "
            f"passes {', '.join(f'{x:.3f}' for x in dec_py['rounds_s'])} s).",
            "",
            *breakdown_lines(r),
            "Every run, in order: images/s end to end (images/s over the loop; CPU seconds of the "
            "process and its children; 1-min load average when it started):",
            f"- saeclip layer 11: {fmt_runs(s11)}",
            f"- Python layer 11: {fmt_runs(py)}",
            f"- saeclip layer 5: {fmt_runs(s5)}",
            "",
            "Targets:",
            f"- saeclip/Python end to end ≥ {TARGET_RATIO:.1f}: {verdict(ratio >= TARGET_RATIO)} ({ratio:.2f})",
            f"- Decode + preprocess ≥ {TARGET_DECODE:.0f} images/s: "
            f"{verdict(dec['images_per_s'] >= TARGET_DECODE)} ({dec['images_per_s']:.1f})",
            f"- Block-5 speed-up ≥ {TARGET_SPEEDUP:.1f}× (extraction loop): "
            f"{verdict(speedup >= TARGET_SPEEDUP)} ({speedup:.2f}×; end to end, where start-up and model "
            f"load cost the same for both, {speedup_e2e:.2f}×, which alone would "
            f"{'pass' if speedup_e2e >= TARGET_SPEEDUP else 'miss'})",
            END,
        ]
    )


def busy_warning(r: dict) -> list[str]:
    """A warning when other work competed for the CPU. The bench itself keeps about one thread
    per core busy, so a load average up to cores + 1 still means a quiet machine."""
    runs = [x["load"] for k in ("saeclip_l11", "python", "saeclip_l5") for x in r[k]]
    peak = max([r["load_before"][0], r["load_after"][0], *runs])
    if peak <= r["cores"] + 1:
        return []
    return [
        f"- **Busy machine**: the 1-min load average reached {peak:.1f} on {r['cores']} cores during this "
        "run (the bench alone accounts for about one per core), so other work competed for the CPU: "
        "wall times are noisy lower bounds on speed; the CPU seconds are steadier"
    ]


def breakdown_lines(r: dict) -> list[str]:
    b = r["breakdown"]
    if not b:
        return []
    n, dec = r["images"], r["decode_rust"]
    fwd, pipe, seq = b["forward_median_s"], b["pipelined_median_s"], b["sequential_median_s"]
    decode_s = n / dec["images_per_s"]
    return [
        f"Where saeclip's time goes (benches/extract_pipeline.rs `--model`, one process, layer "
        f"{b['layer']}, batch {b['batch']}, libtorch {b['torch_threads']} threads, rayon "
        f"{dec['threads']}; median wall time of {len(b['forward_s'])} round(s), least CPU time; "
        f"1-min load {b['load']:.1f}):",
        f"- model load: {b['load_s']:.1f} s; decode + preprocess of all {n} images alone: {decode_s:.1f} s; "
        f"the first forward of the process (batch {b['batch']}, not in the figures below): "
        f"{b['first_forward_s']:.2f} s",
        f"- forward alone on images decoded beforehand: {fwd:.1f} s ({n / fwd:.2f} images/s; "
        f"{min(b['forward_cpu_s']):.1f} CPU s)",
        f"- decoding overlapped with the forward, as `extract` does: {pipe:.1f} s ({n / pipe:.2f} images/s, "
        f"{100 * (pipe / fwd - 1):+.0f}% vs the forward alone; {min(b['pipelined_cpu_s']):.1f} CPU s)",
        f"- decode then forward, batch after batch: {seq:.1f} s ({100 * (seq / fwd - 1):+.0f}% vs the forward "
        f"alone; {min(b['sequential_cpu_s']):.1f} CPU s)",
        "",
    ]


def write_results(section: str) -> None:
    write_section(BEGIN, END, section)


def main() -> int:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="JPEGs in the dataset")
    p.add_argument("--rounds", type=int, default=3, help="interleaved runs of each pipeline")
    p.add_argument("--decode-rounds", type=int, default=3, help="timed passes of each decode bench per round")
    p.add_argument("--breakdown-rounds", type=int, default=1, help="rounds of the time breakdown (0: skip it)")
    p.add_argument("--batch", type=int, default=32, help="images per forward")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (Python)")
    p.add_argument("--threads", type=int, default=cores, help="torch intra-op threads (Python)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images and the weights")
    p.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    p.add_argument("--python-reference", type=Path, metavar="OUT", help="only run the Python pipeline into OUT")
    p.add_argument("--layer", type=int, default=11, help="with --python-reference: the block kept")
    args = p.parse_args()

    if args.python_reference:
        return python_reference(args.python_reference, args.layer, args.batch, args.workers, args.threads)

    import PIL
    import torch
    import transformers

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    if not BIN.is_file():
        raise SystemExit(f"{BIN} is missing: run `cargo build --release` (or `make bench-extract`)")
    make_images(args.images, args.seed)
    make_model(args.seed)
    decode_exe = snapshot(build_decode_bench(), "extract_pipeline")
    saeclip = snapshot(BIN, "saeclip")
    help_text = subprocess.run([str(saeclip), "extract", "--help"], env=rust_env(), capture_output=True, text=True)
    if help_text.returncode != 0:
        raise SystemExit(f"{BIN} has no working `extract` command:\n{help_text.stderr}")
    files = image_files()
    assert len(files) == args.images, len(files)
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    started = time.perf_counter()
    s11, py, s5, dec, dec_py = [], [], [], [], []
    for r in range(args.rounds):
        # Alternate which end-to-end peer goes first.
        order = ["saeclip", "python"] if r % 2 == 0 else ["python", "saeclip"]
        for peer in order + ["saeclip-l5", "decode"]:
            if peer == "saeclip":
                s11.append(run_saeclip(saeclip, 11, args.batch))
                x = s11[-1]
                log(f"round {r + 1}: saeclip l11 {x['wall_s']:.1f}s end to end "
                    f"({x['images_per_s']:.2f}/s), loop {x['loop_images_per_s']:.2f}/s, {x['cpu_s']:.0f} CPU s, load {x['load']:.1f}")  # fmt: skip
            elif peer == "python":
                py.append(run_python(11, args.batch, args.workers, args.threads))
                x = py[-1]
                log(f"round {r + 1}: python l11 {x['wall_s']:.1f}s end to end "
                    f"({x['images_per_s']:.2f}/s), loop {x['loop_images_per_s']:.2f}/s "
                    f"(imports {x['import_s']:.1f}s, model {x['load_s']:.1f}s), {x['cpu_s']:.0f} CPU s, load {x['load']:.1f}")  # fmt: skip
            elif peer == "saeclip-l5":
                s5.append(run_saeclip(saeclip, 5, args.batch))
                x = s5[-1]
                log(f"round {r + 1}: saeclip l5 {x['wall_s']:.1f}s end to end "
                    f"({x['images_per_s']:.2f}/s), loop {x['loop_images_per_s']:.2f}/s, {x['cpu_s']:.0f} CPU s, load {x['load']:.1f}")  # fmt: skip
            else:
                dec.append(run_decode_rust(decode_exe, args.decode_rounds))
                t = time_decode_python(files, args.batch, args.workers, args.decode_rounds)
                t.sort()
                dec_py.append({"rounds_s": t, "images_per_s": len(files) / t[len(t) // 2]})
                log(f"round {r + 1}: decode saeclip {dec[-1]['images_per_s']:.1f}/s, "
                    f"python {dec_py[-1]['images_per_s']:.1f}/s")  # fmt: skip
    breakdown = None
    if args.breakdown_rounds > 0:
        breakdown = run_breakdown(decode_exe, 11, args.batch, args.breakdown_rounds)
        b = breakdown
        log(f"breakdown: forward alone {b['forward_median_s']:.1f}s, overlapped as extract "
            f"{b['pipelined_median_s']:.1f}s, decode then forward {b['sequential_median_s']:.1f}s, "
            f"load {b['load']:.1f}")  # fmt: skip
    log(f"timed part took {time.perf_counter() - started:.0f}s")
    load_after = os.getloadavg()

    parity = compare(s11[-1]["cache"], py[-1]["out"])
    log(f"max |saeclip - python| / max |python| = {parity['rel']:.2e}")
    counts: dict[tuple[int, int], int] = {}
    from PIL import Image

    for f in files:
        with Image.open(f) as img:
            counts[img.size] = counts.get(img.size, 0) + 1
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": cores,
        "load_before": load_before,
        "load_after": load_after,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "python_version": platform.python_version(),
        "images": len(files),
        "size_mix": ", ".join(f"{c} × {w}×{h}" for (w, h), c in sorted(counts.items(), key=lambda kv: -kv[1])),
        "batch": args.batch,
        "workers": args.workers,
        "threads": args.threads,
        "rounds": args.rounds,
        "saeclip_l11": s11,
        "python": py,
        "saeclip_l5": s5,
        "decode_rust": best(dec, "images_per_s"),
        "decode_python": best(dec_py, "images_per_s"),
        "parity": parity,
        "breakdown": breakdown,
    }
    print(json.dumps(res, default=str))
    if parity["rel"] > MAX_REL_DIFF:
        log(f"FAIL: the activations differ (relative {parity['rel']:.2e} > {MAX_REL_DIFF:.0e})")
        return 1
    section = render(res)
    if args.no_write:
        print(section)
    else:
        write_results(section)
        log(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
