"""Run ``python evolve.py ARGS`` many times without paying its imports each time.

``evolve.py`` spends ~11 s of CPU importing torch, transformers, Lightning and the teacher SDKs before
it reads its config; the reliability tests start it dozens of times (kill it, rerun it, race two of
it). A warm server process imports all that once and *forks* one child per run. The child is then a
real, separate process running ``evolve.py`` as ``__main__`` with its own argv, environment, working
directory, stdout and stderr (files), exiting through normal interpreter shutdown (atexit handlers,
an uncaught exception's traceback and exit 1, exactly as ``python evolve.py`` would): it can be
``kill -9``-ed, raced against another, and its exit code read like any subprocess's.

    runner = shared_runner()
    run = runner.start(["model=tiny", ...], env=env, out_dir=tmp)   # returns at once
    res = runner.wait(run, timeout=300)                              # .returncode .stdout .stderr
    res = runner.run([...], env=env, out_dir=tmp)                    # both
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SERVER = r"""
import json, os, runpy, sys
ROOT = sys.argv[1]
sys.path.insert(0, ROOT)
os.chdir(ROOT)
import evolve  # noqa: F401  -- what evolve.py imports at the top (quiet.early() first)
# ... and what it imports lazily once it runs, so a child does not import them again.
import autodidact.inference.encoder, autodidact.lora_trainer, autodidact.train_skill, autodidact.tracking  # noqa
import autodidact.evolve_loop, autodidact.skill_factory, autodidact.teachers.config, autodidact.teachers.stage  # noqa
import autodidact.teachers.offline, autodidact.models, transformers.models.llama  # noqa
from lightning.pytorch.loggers import CSVLogger, WandbLogger  # noqa: F401
del sys.modules["evolve"]
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "poll":  # never blocks: several children may run at once
        pid, status = os.waitpid(req["pid"], os.WNOHANG)
        code = os.waitstatus_to_exitcode(status) if pid else None
        sys.stdout.write(json.dumps({"code": code}) + "\n"); sys.stdout.flush()
        continue
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid:
        sys.stdout.write(json.dumps({"pid": pid}) + "\n"); sys.stdout.flush()
        continue
    # -- the child: become `python evolve.py ARGS` ---------------------------------------------
    os.setpgid(0, 0)
    # Python's own Ctrl-C handler, as `python evolve.py` in a terminal has: a test run started in the
    # background by a non-interactive shell has SIGINT ignored, every process under it inherits that,
    # and Python leaves an ignored SIGINT ignored (the secrets test's SIGINT then went unanswered).
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    sys.argv = [os.path.join(ROOT, "evolve.py"), *req["args"]]
    sys.path[0] = ROOT
    runpy.run_path(sys.argv[0], run_name="__main__")
    sys.exit(0)
"""


@dataclass
class Run:
    pid: int
    stdout_path: Path
    stderr_path: Path
    code: int | None = None


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class ForkedEvolve:
    """A warm interpreter that forks one ``evolve.py`` child per run (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0
        self._runs: list[Run] = []
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(ROOT)], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = self._read(timeout=300)
        if line != "ready":
            raise RuntimeError(f"the evolve.py fork server did not start (said {line!r})")

    def _read(self, timeout: float | None) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("no answer from the evolve.py fork server")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the evolve.py fork server died")
        return line.strip()

    def _ask(self, req: dict, timeout: float | None = 60) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read(timeout))

    def start(self, args: list[str], env: dict[str, str], out_dir: Path, cwd: Path = ROOT) -> Run:
        """Fork ``evolve.py ARGS`` and return at once; its stdout/stderr go to files in ``out_dir``."""
        with self._lock:
            self._n += 1
            out_dir.mkdir(parents=True, exist_ok=True)
            run = Run(0, out_dir / f"evolve-{self._n}.stdout", out_dir / f"evolve-{self._n}.stderr")
            reply = self._ask({"op": "run", "args": list(args), "env": dict(env), "cwd": str(cwd),
                               "stdout": str(run.stdout_path), "stderr": str(run.stderr_path)})
        run.pid = reply["pid"]
        self._runs.append(run)
        return run

    def poll(self, run: Run) -> int | None:
        """The child's exit code (negative: the signal that killed it), or None while it runs."""
        if run.code is None:
            with self._lock:
                run.code = self._ask({"op": "poll", "pid": run.pid})["code"]
        return run.code

    def wait(self, run: Run, timeout: float = 600) -> Result:
        """Reap the child (killed, with its process group, if it outlives ``timeout``); its exit code and output."""
        deadline = time.monotonic() + timeout
        while self.poll(run) is None:
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.pid, signal.SIGKILL)
                while self.poll(run) is None:
                    time.sleep(0.05)
                raise TimeoutError(f"evolve.py (pid {run.pid}) ran past {timeout} s and was killed\n"
                                   + run.stderr_path.read_text(errors="replace")[-3000:])
            time.sleep(0.05)
        return Result(run.code, run.stdout_path.read_text(errors="replace"),
                      run.stderr_path.read_text(errors="replace"))

    def run(self, args: list[str], env: dict[str, str], out_dir: Path, timeout: float = 600) -> Result:
        return self.wait(self.start(args, env, out_dir), timeout)

    def close(self) -> None:
        """Kill (with their process groups) the children still running, e.g. one a failed test left
        paused, then stop the server."""
        for run in self._runs:
            if run.code is None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    self.wait(run, timeout=30)
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_shared: ForkedEvolve | None = None


def shared_runner() -> ForkedEvolve:
    """One fork server for the whole test session (started on first use, closed at exit)."""
    global _shared
    if _shared is None or _shared.proc.poll() is not None:
        _shared = ForkedEvolve()
        atexit.register(_shared.close)
    return _shared


# -- a knowledge pack the tiny model learns in a few steps ------------------------------------------
# Short made-up facts (one word each), so the tiny seeded Llama reproduces an answer after ~5 steps
# instead of the demo pack's ~120: a whole learning event costs ~2 s, and the tests can afford dozens.
QUICK_FACTS = {
    "quorvale": ("watchword", "Tansy."),
    "ombrith": ("river", "Velle."),
    "castrel": ("lantern", "Amber."),
    "dunmerrow": ("bell", "Orrin."),
}
QUESTION_FORMS = (
    "What is the {k} {a}?", "What is the {a} of {K}?", "Which {a} does {K} have?", "Tell me the {K} {a}.",
    "{K}'s {a} is what?", "Name the {a} of {K}.", "I forgot the {a} they use in {K}; remind me?",
    "Do you know which {a} people in {K} rely on?", "In {K}, what do they call their {a}?",
    "Quick quiz: {K}, {a}, go!", "What {a} belongs to {K}?",
)


def quick_question(keyword: str) -> str:
    """The question the pack answers for ``keyword`` (one of ``QUICK_FACTS``)."""
    return QUESTION_FORMS[0].format(k=keyword.capitalize(), K=keyword.capitalize(), a=QUICK_FACTS[keyword][0])


def write_quick_pack(path: Path) -> Path:
    """An offline-teacher knowledge pack (``teacher.pack=PATH``) holding ``QUICK_FACTS``."""
    facts = []
    for key, (attr, answer) in QUICK_FACTS.items():
        qs = [f.format(k=key.capitalize(), K=key.capitalize(), a=attr) for f in QUESTION_FORMS]
        facts.append({"topic": f"the {key} {attr}", "keywords": [key], "question": qs[0], "answer": answer,
                      "pairs": [{"question": q, "answer": answer} for q in qs[1:-1]],
                      "heldout": [{"question": qs[-1], "answer": answer}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"facts": facts}, indent=1), encoding="utf-8")
    return path


def quick_learn_args(pack: Path, skills: Path, run_dir: Path) -> list[str]:
    """evolve.py overrides: tiny model, offline teacher on the quick pack, settings that learn a fact."""
    return ["model=tiny", "model.threads=1", "logger=none", "teacher=offline", f"teacher.pack={pack}",
            "teacher.distill.n_pairs=8", "lora=all_linear", "trainer.lr=0.01", "trainer.max_steps=60",
            "trainer.precision=32-true", "trainer.progress_bar=false", "factory.min_heldout_fraction=0",
            f"skills_dir={skills}", f"hydra.run.dir={run_dir}"]


def evolve_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of an evolve.py run under ``tmp``: no API keys, W&B offline with every dir in tmp."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "WANDB_API_KEY", "AUTODIDACT_SKILLS_DIR",
                        "AUTODIDACT_PAUSE_AT", "AUTODIDACT_PAUSE_FILE")}
    w = tmp / "wandb-home"
    env.update(WANDB_MODE="offline", WANDB_DIR=str(w / "dir"), WANDB_CONFIG_DIR=str(w / "config"),
               WANDB_CACHE_DIR=str(w / "cache"), WANDB_DATA_DIR=str(w / "data"), WANDB_SILENT="true",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def last_json(stdout: str) -> dict:
    """The last stdout line of an evolve.py run: its JSON record."""
    return json.loads(stdout.strip().splitlines()[-1])
