"""End to end on the real default model (SmolLM2-135M) through `python evolve.py`, in fresh processes.

A hard question is answered wrongly with low confidence, triggers learning, and -- in a *new
process* reading the same skills_dir -- is answered correctly with confidence >= threshold and no
new learning event. Once with the offline teacher, once through the real SDKs against the loopback
teacher server with the OpenAI side failing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autodidact.evaluation import answer_is_correct
from autodidact.teachers.offline import load_pack
from tests.support.teacher_server import TeacherServer

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.4
KEYS = ("query", "answer", "skill", "confidence_before", "confidence_after", "learned", "card", "verified", "seconds")

pytestmark = pytest.mark.slow


def fact(question: str):
    return next(f for f in load_pack() if f.question == question)


def evolve(tmp: Path, run: str, *overrides: str, env: dict | None = None) -> dict:
    cmd = [sys.executable, "evolve.py", f"hydra.run.dir={tmp / run}", "logger=none",
           "trainer.progress_bar=false", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "WANDB_MODE": "offline", **(env or {})})
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    rec = json.loads(last)
    assert set(KEYS) <= set(rec)
    saved = [json.loads(line) for line in (tmp / run / "results.jsonl").read_text().splitlines()]
    assert saved[-1] == rec
    return rec


def queue_states(skills_dir: Path) -> list[str]:
    with sqlite3.connect(skills_dir / "queue.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT state FROM jobs ORDER BY id")]


def check_learn_then_recall(first: dict, second: dict, reference: str, skills_dir: Path) -> None:
    # Before: low confidence, wrong answer, a learning event, a verified card.
    assert first["confidence_before"] < THRESHOLD
    assert not answer_is_correct(first["answer_before"], reference), first["answer_before"]
    assert first["learned"] is True and first["verified"] is True
    assert first["confidence_after"] >= THRESHOLD
    assert Path(first["card"]).exists() and Path(first["card"]).parent == skills_dir
    assert Path(first["card"]).stat().st_size < 2 * 2**20
    assert answer_is_correct(first["answer"], reference), first["answer"]
    # After, in a new process: routed confidently, answered correctly, nothing new learned.
    assert second["confidence_before"] >= THRESHOLD
    assert second["learned"] is False and second["skill"] == first["skill"]
    assert answer_is_correct(second["answer"], reference), second["answer"]
    assert queue_states(skills_dir) == ["done"]


def test_offline_teacher_learns_then_recalls_in_new_process(tmp_path):
    q = "Who was Brindlemark's first mayor, and when?"
    skills = tmp_path / "skills"
    args = (f"query={q}", "teacher=offline", f"skills_dir={skills}")
    first = evolve(tmp_path, "run1", *args)
    second = evolve(tmp_path, "run2", *args)
    check_learn_then_recall(first, second, fact(q).answer, skills)
    print("offline:", json.dumps(first["stage_seconds"]))


def test_loopback_cloud_teacher_with_openai_failing(tmp_path):
    q = "Who invented the Quillon loom?"
    skills = tmp_path / "skills"
    env = {"OPENAI_API_KEY": "sk-test-openai-e2e", "ANTHROPIC_API_KEY": "sk-ant-test-e2e"}
    with TeacherServer() as server:
        server.fail_always("openai", "503")
        args = (
            f"query={q}",
            "teacher=failover",
            f"teacher.openai.base_url={server.openai_base_url}",
            f"teacher.anthropic.base_url={server.anthropic_base_url}",
            "teacher.policy.backoff_base_s=0.01",
            "teacher.policy.backoff_max_s=0.05",
            f"skills_dir={skills}",
        )
        first = evolve(tmp_path, "run1", *args, env=env)
        assert server.count("openai") >= 1, "the OpenAI SDK was never exercised"
        assert server.count("anthropic") >= 1, "no failover to Anthropic"
        assert first["job"]["provider"].startswith("anthropic")
        asked = server.count("anthropic")
        second = evolve(tmp_path, "run2", *args, env=env)
        assert server.count("anthropic") == asked, "the second process asked the teacher again"
    check_learn_then_recall(first, second, fact(q).answer, skills)
