"""Crash safety end to end: ``kill -9`` of ``evolve.py`` in each stage of learning, then the same command again.

For each stage the factory passes through (distilling, training, verifying, exporting, installing),
``evolve.py`` runs with ``AUTODIDACT_PAUSE_AT=<stage>``: the worker writes its pid to a marker file when it
gets there and waits. The test kills it with SIGKILL at that known point (no guessed sleep) and at once
runs the same command without the pause. The rerun must notice the dead worker at once, take its job
over and learn the skill in that same run; the event completes exactly once; no partial or temporary
card is ever visible in ``skills_dir`` (a staging leftover of the killed run is never installed); the
queue database stays consistent.

The five kill/rerun pairs run side by side (each in its own tmp dir) through the fork server of
``tests/support/forked_evolve.py``; each parametrized test then checks one stage's outcome.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autodidact.card import SUFFIX, read_card
from autodidact.inference.lora_router import LoRARouter, RouterConfig
from autodidact.learning_queue import QUEUE_FILENAME, LearningQueue
from autodidact.lora_manager import LoRAManager
from autodidact.models import load_tiny
from autodidact.skill_factory import PAUSE_ENV, PAUSE_FILE_ENV, STAGES, skill_name
from tests.support.forked_evolve import (
    Result,
    evolve_env,
    last_json,
    quick_learn_args,
    quick_question,
    shared_runner,
    write_quick_pack,
)

pytestmark = pytest.mark.slow

QUESTION = quick_question("quorvale")
NAME = skill_name(QUESTION)
PAUSE_TIMEOUT_S = 240
# What skills_dir may hold besides cards: the queue (WAL mode), the base-knowledge file and its lock,
# and the staging folder the manager never scans.
ALLOWED = {QUEUE_FILENAME, f"{QUEUE_FILENAME}-wal", f"{QUEUE_FILENAME}-shm", "base_knowledge.json",
           ".base_knowledge.lock", ".staging"}


@dataclass
class Crash:
    stage: str
    skills: Path
    marker: str = ""
    killed_code: int | None = None
    after_kill: dict[str, list[str]] = field(default_factory=dict)
    rerun: Result | None = None
    rerun_pid: int | None = None
    kill_to_rerun_s: float | None = None
    error: str | None = None


def skills_dir_view(skills: Path) -> dict[str, list[str]]:
    """What a manager scanning ``skills_dir`` could see: cards (each must read back whole), and anything else."""
    cards, unexpected = [], []
    for p in sorted(skills.iterdir()):
        if p.name.endswith(SUFFIX) and p.is_file():
            read_card(p)  # raises CardError on a partial or damaged card
            cards.append(p.name)
        elif p.name not in ALLOWED:
            unexpected.append(p.name)
    staging = skills / ".staging"
    leftovers = sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []
    return {"cards": cards, "unexpected": unexpected, "staging": leftovers}


def crash_and_rerun(tmp: Path, stage: str, pack: Path) -> Crash:
    runner = shared_runner()
    skills, run_dir, marker = tmp / "skills", tmp / "run", tmp / "paused"
    crash = Crash(stage, skills)
    # answer_threshold=0: a routed skill's answer is trusted, as SmolLM2's confident answers are; the tiny
    # model's low token probabilities would otherwise make every rerun learn again whatever it found.
    args = [*quick_learn_args(pack, skills, run_dir), "router.answer_threshold=0", f"query={QUESTION}"]
    paused = runner.start(args, evolve_env(tmp, **{PAUSE_ENV: stage, PAUSE_FILE_ENV: str(marker)}), tmp / "out")
    try:
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while not marker.exists():
            if runner.poll(paused) is not None or time.monotonic() > deadline:
                crash.error = (f"evolve.py never paused at {stage!r} (exit {paused.code}):\n"
                               + paused.stderr_path.read_text(errors="replace")[-3000:])
                return crash
            time.sleep(0.05)
        time.sleep(0.05)  # the marker is written in one call; let it land
        crash.marker = marker.read_text().strip()
        os.kill(paused.pid, signal.SIGKILL)
        while runner.poll(paused) is None:
            time.sleep(0.01)
    finally:
        if paused.code is None:  # never left paused: nothing would ever kill it
            os.killpg(paused.pid, signal.SIGKILL)
            runner.wait(paused, timeout=30)
    crash.killed_code = paused.code
    killed_at = time.monotonic()
    crash.after_kill = skills_dir_view(skills)
    rerun = runner.start(args, evolve_env(tmp), tmp / "out")  # the same command, no pause
    crash.kill_to_rerun_s = time.monotonic() - killed_at
    crash.rerun_pid = rerun.pid
    crash.rerun = runner.wait(rerun, timeout=300)
    return crash


@pytest.fixture(scope="module")
def crashes(request, tmp_path_factory) -> dict[str, Crash]:
    """The kill/rerun pairs of the selected stages, side by side (much of their time is start-up)."""
    stages = [i.callspec.params["stage"] for i in request.session.items
              if i.module is request.module and hasattr(i, "callspec")]
    base = tmp_path_factory.mktemp("crash")
    pack = write_quick_pack(base / "pack.json")
    shared_runner()  # warm it once before the threads share it
    out: dict[str, Crash] = {}

    def one(stage: str) -> None:
        try:
            out[stage] = crash_and_rerun(base / stage, stage, pack)
        except Exception as e:  # reported by that stage's test
            out[stage] = Crash(stage, base / stage / "skills", error=f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(s,)) for s in stages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_in_a_stage_then_the_same_command_learns_the_skill_exactly_once(crashes, encoder, stage):
    crash = crashes[stage]
    assert crash.error is None, crash.error
    assert crash.marker.endswith(stage) and crash.killed_code == -signal.SIGKILL

    # Right after the kill: every card in skills_dir reads back whole; nothing half-written or temporary.
    assert crash.after_kill["unexpected"] == [], crash.after_kill
    assert set(crash.after_kill["cards"]) <= {f"{NAME}{SUFFIX}"}

    # The rerun took the job over at once and learned the skill in the same run.
    rerun = crash.rerun
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "Traceback" not in rerun.stderr
    rec = last_json(rerun.stdout)
    skills = crash.skills
    card = skills / f"{NAME}{SUFFIX}"
    assert rec["skill"] == NAME and rec["card"] == str(card), rec
    assert rec["answer"] == "Tansy.", rec["answer"]
    # Learned while answering (the record says so), or before the question came (a loop that drains
    # ready jobs first answers with the fresh card): either way by this rerun, checked below.
    if rec["learned"]:
        assert rec["verified"] is True and rec["job"]["id"] == 1 and rec["job"]["state"] == "done", rec

    # Exactly once: one job, done, on its second attempt, the takeover recorded as a death (not a lapsed lease).
    with LearningQueue.in_skills_dir(skills) as queue:
        assert queue.counts() == {"pending": 0, "running": 0, "done": 1, "dead": 0}
        [job] = queue.list()
    assert job.attempts == 2 and job.result["card"] == str(card) and job.holder_pid == crash.rerun_pid, job
    assert len(job.errors) == 1 and "died holding the job" in job.errors[0], job.errors
    with sqlite3.connect(skills / QUEUE_FILENAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # What a manager scanning skills_dir sees: the one verified card; a staging leftover never installed.
    view = skills_dir_view(skills)
    assert view["cards"] == [f"{NAME}{SUFFIX}"] and view["unexpected"] == [], view
    assert read_card(card).meta["verify"]["from"] == "card bytes"
    manager = LoRAManager(load_tiny(seed=0), skills, LoRARouter(RouterConfig(), encoder))
    changes = manager.scan()
    assert changes["installed"] == [NAME] and changes["refused"] == [], changes
    assert all(s.path.parent == skills for s in manager.skills.values())
    # ... and the rerun never installed what the killed run left in staging.
    installs = [line for line in rerun.stderr.splitlines() if re.search(r"(installed|replaced) skill '", line)]
    assert installs and not any(".staging" in line for line in installs), installs
    print(f"{stage}: killed -9, rerun started {crash.kill_to_rerun_s:.2f} s later; staging after the kill "
          f"{crash.after_kill['staging']}, after the rerun {view['staging']}; rerun {rec['seconds']:.1f} s")
