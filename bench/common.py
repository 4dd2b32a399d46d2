"""Helpers shared by the benchmark drivers in bench/: the environment that builds the Rust
benches, their executables, the machine's CPU model and the sections of bench/RESULTS.md.

The drivers run as scripts (`python bench/NAME.py`), so this directory is on `sys.path` and
they import this module as `common`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
TITLE = "# saeclip benchmark results"


def rust_env() -> dict[str, str]:
    """The environment `make` builds with: `.venv/bin` first on PATH, libtorch from its torch."""
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    env["LIBTORCH_USE_PYTORCH"] = "1"
    return env


def bench_executable(name: str, log: Callable[[str], None] | None = None) -> Path:
    """Build `cargo bench --bench NAME` once (without running it) and return its executable,
    so that every round of a driver runs the same binary. Compile errors pass through."""
    cmd = ["cargo", "bench", "--bench", name, "--no-run", "--message-format=json"]
    if log:
        log(" ".join(cmd))
    out = subprocess.run(cmd, cwd=ROOT, env=rust_env(), check=True, stdout=subprocess.PIPE, text=True)
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        target = msg.get("target", {})
        if (
            msg.get("reason") == "compiler-artifact"
            and target.get("name") == name
            and "bench" in target.get("kind", [])
            and msg.get("executable")
        ):
            return Path(msg["executable"])
    raise SystemExit(f"cargo bench --no-run did not report the {name} executable")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_section(begin: str, end: str, section: str) -> None:
    """Replace the text from `begin` to `end` in bench/RESULTS.md by `section` (which starts
    and ends with those markers), or append it when the file has no such section yet."""
    text = RESULTS.read_text() if RESULTS.is_file() else f"{TITLE}\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)
