"""The background learner: a separate process that works the durable learning queue.

Training a skill keeps a CPU busy for a minute; in the server's process it would take the GIL and
the cores from answering. So the server starts this module as its own process (``python -m
autodidact.serve.learner CONFIG RUN_DIR PARENT_PID``) with ``server.learner_threads`` torch threads and
a lower priority (``server.learner_nice``). It builds the same loop as ``evolve.py``
(``build_autodidact``) and runs ``SkillFactory.work_one`` until the queue is empty, then polls. Cards
reach the server through ``skills_dir``: the factory publishes a verified card by an atomic rename,
and the server's watcher installs it. A learner killed mid-job leaves its job ``running`` under its
pid; the next claim on this host takes it over at once (``learning_queue.holder_is_gone``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

POLL_S = 0.5
MAX_RESTARTS = 5


def portable_config(cfg: DictConfig) -> dict:
    """The config resolved for another process, except ``${oc.env:...}`` values (API keys): those stay
    references, so no key is ever written to disk; the learner reads them from its environment."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    done = OmegaConf.to_container(cfg, resolve=True)

    def keep(r, d):
        if isinstance(r, dict):
            return {k: keep(r[k], d[k]) for k in r}
        if isinstance(r, list):
            return [keep(a, b) for a, b in zip(r, d, strict=True)]
        if isinstance(r, str) and "${oc.env:" in r:
            return r
        return d

    return keep(raw, done)


class LearnerProcess:
    """Starts, watches and stops the learner process for the server."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, threads: int = 1, nice: int = 10) -> None:
        self.run_dir = Path(run_dir)
        self.config_path = self.run_dir / "learner" / "config.yaml"
        self.log_path = self.run_dir / "learner" / "learner.log"
        data = portable_config(cfg)
        data.setdefault("model", {})["threads"] = threads
        data.pop("server", None)
        self.data, self.nice = data, nice
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.exit_codes: list[int] = []

    def start(self) -> LearnerProcess:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(self.data), self.config_path)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "autodidact.serve.learner", str(self.config_path), str(self.run_dir),
                 str(os.getpid()), str(self.nice)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
            )
        finally:
            log.close()
        return self

    def status(self) -> dict:
        code = self.proc.poll() if self.proc else None
        return {"pid": self.proc.pid if self.proc else None, "alive": self.proc is not None and code is None,
                "restarts": self.restarts, "exit_codes": self.exit_codes, "log": str(self.log_path)}

    def ensure(self) -> None:
        """Restart a learner that died (a crash, the OOM killer), a few times at most."""
        if self.proc is None or self.proc.poll() is None:
            return
        self.exit_codes.append(self.proc.returncode)
        if self.restarts < MAX_RESTARTS:
            self.restarts += 1
            self.start()

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # between jobs it exits at once; mid-job its job is taken over later
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- the learner process itself ---------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the server exits, however it exits (kill -9 included)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: list[str]) -> int:
    config_path, run_dir, parent, nice = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    _die_with_parent()
    stopping = False

    def stop(*_):
        nonlocal stopping
        if stopping:  # a second signal while a job runs: leave now; the job's lease lets others take it
            raise SystemExit(0)
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    from autodidact import quiet

    quiet.early()
    import logging

    # force: quiet.early() already put its buffer handler on root, which made a plain basicConfig a
    # no-op; every project record (which job is learned, refused cards, tracebacks) then sat in that
    # buffer and never reached learner.log.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from autodidact.evolve_loop import build_autodidact, close_autodidact

    cfg = OmegaConf.load(config_path)
    bot = build_autodidact(cfg, run_dir, banner=f"[autodidact] learner pid {os.getpid()}")
    if nice:  # after loading: start-up at full priority, then answering wins every contest for a core
        os.nice(nice)
    print(f"[autodidact] learner ready (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        while not stopping and os.getppid() == parent:
            bot.manager.scan()  # skills published meanwhile: a new fact about one joins it
            if bot.factory.work_one() is None:
                time.sleep(POLL_S)
    finally:
        close_autodidact(bot)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
