"""What every benchmark under experiments/ shares: a run directory, the machine, a table, JSON + PNG.

Each benchmark is one command on a fresh clone and writes into ``--out`` (default
``.bench/<name>/<timestamp>/``, git-ignored): ``results.json`` (the figures, the machine, the
command) and one or more PNG charts. Benchmarks measure and print; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def shipped_lora(r: int | None = None):
    """``conf/lora/default.yaml`` as a ``LoRAConfig`` (rank ``r`` if given): the adapter shape train.py
    and the loop read, for benchmarks that build a trainer or a card without Hydra. Plain YAML (the
    file has no interpolations), so the GPU script needs nothing beyond PyYAML to read it."""
    import yaml

    from autodidact.lora_trainer import LoRAConfig

    d = yaml.safe_load((REPO / "conf" / "lora" / "default.yaml").read_text("utf-8"))
    if r is not None:
        d["r"] = r
    return LoRAConfig(**d)


def run_dir(name: str, out: str | None) -> Path:
    d = Path(out) if out else REPO / ".bench" / name / time.strftime("%Y%m%d-%H%M%S")
    d.mkdir(parents=True, exist_ok=True)
    return d


def machine() -> dict:
    """CPU model, cores, load and library versions: the context every figure needs."""
    info: dict = {"python": platform.python_version(), "cores": len(os.sched_getaffinity(0))}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
        info["simd"] = sorted({fl for fl in flags if fl.startswith(("avx", "amx"))})
    except OSError:
        pass
    info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain fixed-width table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    width = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, width, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in width) + "|", *map(line, cells[1:])])


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 100 else f"{c:.0f}"
    return str(c)


def save(out: Path, name: str, results: dict) -> Path:
    results = {"benchmark": name, "command": " ".join(shlex.quote(a) for a in [Path(PY).name, *sys.argv]),
               "machine": results.pop("machine", None) or machine(), **results}
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def child_env(**extra: str) -> dict[str, str]:
    """Environment for benchmark children: the repo's src importable, W&B offline, quiet tokenizers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def run_child(argv: Sequence[str], cwd: Path | None = None, env: dict | None = None, timeout: float | None = None
              ) -> dict:
    """Run a whole process: its wall seconds, its own peak RSS (``wait4``; not its children's) and output."""
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(argv), cwd=cwd or REPO, env=env or child_env(), stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout, p.kill) if timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(p.pid, 0)  # reaps the child and returns its own rusage
        wall = time.perf_counter() - t0
        if timer:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"rc": p.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
                "stdout": out.read(), "stderr": err.read()}
