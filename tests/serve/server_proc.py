"""``python evolve.py stage=serve`` in a subprocess on a free port, for the serve tests and the benchmark."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[2]
# The tiny model learns the demo fact in ~120 one-thread steps (tests/test_skill_factory.py); it
# memorises without generalising, so held-out rephrasings are not required at verification, and its
# answers are never confident token by token, so the weak-answer check is off (answer_threshold=0).
TINY = ["model=tiny", "model.threads=1", "lora=all_linear", "trainer.lr=0.01", "trainer.max_steps=120",
        "trainer.precision=32-true", "trainer.progress_bar=false", "factory.min_heldout_fraction=0",
        "router.answer_threshold=0"]


QUESTION = "Who was Brindlemark's first mayor, and when?"
"""The hard question the serve tests learn (a demo-pack fact the loopback teacher knows)."""


def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, q: str, **kw):
    return client.chat.completions.create(model="anything", messages=[{"role": "user", "content": q}], **kw)


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "WANDB_API_KEY", "AUTODIDACT_SKILLS_DIR")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT),
               WANDB_DIR=str(tmp / "wandb"), **extra)
    return env


class ServerProcess:
    """The server as a user starts it; ``url`` once it printed it (it does so when ready)."""

    def __init__(self, tmp: Path, overrides: list[str], env: dict[str, str] | None = None,
                 start_timeout_s: float = 240) -> None:
        self.tmp = tmp
        self.run_dir = tmp / "run"
        self.stderr_path = tmp / "server.stderr"
        cmd = [sys.executable, "evolve.py", "stage=serve", "server.port=0", "logger=none",
               f"hydra.run.dir={self.run_dir}", *overrides]
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env or clean_env(tmp), stdout=subprocess.PIPE,
                                     stderr=self._err, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout_s)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the server did not print its URL (got {line!r}):\n{self.stderr()[-3000:]}")
        self.url = line
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def health(self) -> dict:
        return self.client.get("/healthz").json()

    def wait_job(self, job_id: int, states=("done", "dead"), timeout_s: float = 300) -> dict:
        t0 = time.monotonic()
        while True:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in states:
                return job
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s} s: {job}")
            time.sleep(0.2)

    def stop(self, timeout_s: float = 30) -> int | None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # what Ctrl-C does: uvicorn's graceful shutdown
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._err.close()
        return self.proc.returncode
