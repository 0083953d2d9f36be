"""Two processes, one skills directory: two ``evolve.py`` runs at once, and the one-time SmolLM2 conversion.

* Two runs ask overlapping questions at the same moment (the same question, typed differently, first in
  both). The queue's per-topic dedup must make each topic trained once: both runs print an answer for
  every question, every asked topic ends with exactly one job, done, claimed once, and a manager
  scanning the shared folder all the while never meets a half-written card.
* Two processes loading SmolLM2 into an empty cache: one converts the wheel's GGUF, the other waits on
  the conversion's file lock and reuses the folder (slow: the conversion alone takes ~25 s).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from autodidact.card import SUFFIX, CardError, read_card
from autodidact.inference.lora_router import LoRARouter, RouterConfig
from autodidact.learning_queue import QUEUE_FILENAME, LearningQueue, topic_key
from autodidact.lora_manager import LoRAManager
from autodidact.models import SMOLLM2_NAME, load_tiny
from autodidact.skill_factory import skill_name
from tests.support.forked_evolve import (
    evolve_env,
    quick_learn_args,
    quick_question,
    shared_runner,
    write_quick_pack,
)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


class Watcher:
    """Scans ``skills_dir`` with a real manager (and reads every card) every few ms until stopped."""

    def __init__(self, skills: Path, encoder) -> None:
        self.manager = LoRAManager(load_tiny(seed=0), skills, LoRARouter(RouterConfig(), encoder))
        self.skills = skills
        self.scans = self.reads = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            try:
                changes = self.manager.scan()
                self.problems += [f"refused {path}: {why}" for path, why in changes["refused"]]
                self.scans += 1
                for card in self.skills.glob(f"*{SUFFIX}"):
                    read_card(card)
                    self.reads += 1
            except CardError as e:
                self.problems.append(f"half-read card: {e}")
            except Exception as e:  # noqa: BLE001 - anything a scan meets is a finding
                self.problems.append(f"{type(e).__name__}: {e}")

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_two_evolve_runs_on_one_skills_dir_train_each_topic_once(tmp_path, encoder):
    pack = write_quick_pack(tmp_path / "pack.json")
    skills = tmp_path / "skills"
    skills.mkdir()
    shared = quick_question("ombrith")
    asks = {
        "a": [shared, quick_question("quorvale")],
        "b": ["what is the ombrith river", quick_question("castrel")],  # the shared question, typed lazily
    }
    assert topic_key(asks["a"][0]) == topic_key(asks["b"][0])
    runner = shared_runner()
    with Watcher(skills, encoder) as watcher:
        runs = {}
        for who, questions in asks.items():
            qfile = tmp_path / f"{who}.txt"
            qfile.write_text("\n".join(questions) + "\n")
            args = [*quick_learn_args(pack, skills, tmp_path / f"run-{who}"), f"queries={qfile}"]
            runs[who] = runner.start(args, evolve_env(tmp_path), tmp_path / "out")
        results = {who: runner.wait(run, timeout=400) for who, run in runs.items()}
        time.sleep(0.1)  # one more scan after both are done

    # Both runs answered every question they were asked.
    records = {}
    for who, res in results.items():
        assert res.returncode == 0, res.stderr[-4000:]
        assert "Traceback" not in res.stderr
        records[who] = [json.loads(line) for line in res.stdout.strip().splitlines()]
        assert [r["query"] for r in records[who]] == asks[who]
        assert all(isinstance(r["answer"], str) and "error" not in r for r in records[who]), records[who]

    # Each topic: one job, done, claimed once (nothing lost, nothing duplicated), one card that reads back.
    topics = {topic_key(q) for qs in asks.values() for q in qs}
    with LearningQueue.in_skills_dir(skills) as queue:
        jobs = queue.list()
    assert sorted(j.event.topic for j in jobs) == sorted(topics)
    assert all(j.state == "done" and j.attempts == 1 and j.errors == [] for j in jobs), jobs
    claims = Counter()
    for who in asks:
        log = (tmp_path / f"run-{who}" / "evolve.log").read_text()
        claims.update(re.findall(r"learning '(\w+)' for .* \(job \d+, attempt \d+\)", log))
    names = {skill_name(j.event.query) for j in jobs}
    assert claims == Counter({n: 1 for n in names}), claims
    assert sorted(p.name for p in skills.glob(f"*{SUFFIX}")) == sorted(f"{n}{SUFFIX}" for n in names)
    for p in skills.glob(f"*{SUFFIX}"):
        read_card(p)
    with sqlite3.connect(skills / QUEUE_FILENAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # The shared question was learned by one run; the other was told why it did not learn it.
    first = {who: records[who][0] for who in asks}
    learners = [who for who, r in first.items() if r["learned"]]
    assert len(learners) == 1, first
    other = first["b" if learners == ["a"] else "a"]
    assert other["learned"] is False and other["reason"], other

    # The watcher never met a refused or half-written card, and saw all of them installed.
    assert watcher.problems == [], watcher.problems[:5]
    assert watcher.scans > 10 and set(watcher.manager.skills) == names, (watcher.scans, watcher.manager.skills)
    print(f"learned by {learners[0]}; the other: {other['reason']!r}; watcher: {watcher.scans} scans, "
          f"{watcher.reads} card reads")


CONVERT = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from autodidact.models import load_smollm2
t = time.perf_counter()
bundle = load_smollm2()
print(json.dumps({"fingerprint": bundle.fingerprint, "seconds": round(time.perf_counter() - t, 1)}))
"""


def test_two_processes_converting_smollm2_at_once_convert_it_once(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "AUTODIDACT_CACHE_DIR": str(cache), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert results[0]["fingerprint"] == results[1]["fingerprint"]
    logs = [err for _, err in outs]
    converted = [i for i, err in enumerate(logs) if "to an fp32 transformers folder" in err]
    assert len(converted) == 1, logs  # one conversion, not two
    waited = logs[1 - converted[0]]
    assert "waiting for it" in waited and "converted by another process" in waited, waited
    models = cache / "models"
    assert (models / f"{SMOLLM2_NAME}-fp32" / "READY").exists()
    assert sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) == [f"{SMOLLM2_NAME}-fp32"]
    print("conversion race:", results)
