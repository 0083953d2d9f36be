"""Learning from material this project did not shape, end to end on SmolLM2 through `python evolve.py`.

* A sloppy teacher (fewer pairs than asked, shuffled, the question only rephrased, junk items, prose
  around the JSON) through the real OpenAI SDK, and through the real Anthropic SDK: the hard question
  is learned and answered; in a new process an unseen, people-typed rephrasing is answered with no
  new learning and no request to the teacher.
* A second fact about a learned subject is learned, joins that subject's skill, and both are answered.
* A question the base model already answers trains no adapter, and routes to the base model next time.
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
EVAL_PACK = ROOT / "experiments" / "data" / "knowledge_eval_pack.json"

pytestmark = pytest.mark.slow


def evolve(tmp: Path, run: str, *overrides: str, env: dict | None = None) -> dict:
    cmd = [sys.executable, "evolve.py", f"hydra.run.dir={tmp / run}", "logger=none",
           "trainer.progress_bar=false", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "WANDB_MODE": "offline", **(env or {})})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def jobs(skills: Path) -> list[tuple[str]]:
    with sqlite3.connect(skills / "queue.sqlite3") as db:
        return list(db.execute("SELECT state FROM jobs ORDER BY id"))


def cloud(server: TeacherServer, kind: str) -> tuple[str, ...]:
    return (f"teacher={kind}", f"teacher.openai.base_url={server.openai_base_url}",
            f"teacher.anthropic.base_url={server.anthropic_base_url}")


def right(answer: str, fact, must: tuple[str, ...]) -> bool:
    """Correct by the reference, or terse but naming what the question asks for (``must``: "412 degrees
    Celsius." is right for "Velmorite melts at 412 degrees Celsius."). Not "any teacher answer": those
    answer other questions about the fact ("The Quillon loom." answers "What did Tamsin Orrelby invent?",
    and a base model's made-up inventor of the Quillon loom would pass on it)."""
    folded = answer.casefold()
    return answer_is_correct(answer, fact.answer) or all(m.casefold() in folded for m in must)


KEYS = {"OPENAI_API_KEY": "sk-test-openai-e2e", "ANTHROPIC_API_KEY": "sk-ant-test-e2e"}
CASES = [
    # provider, hard question, an unseen people-typed rephrasing (in no pair the pack serves), what a
    # right answer must name
    ("openai", "Who invented the Quillon loom?", "quilon loom inventor?", ("Orrelby",)),
    ("anthropic", "At what temperature does velmorite melt?", "velmorite melting temp??", ("412",)),
]


@pytest.mark.parametrize(("kind", "question", "rephrasing", "must"), CASES, ids=[c[0] for c in CASES])
def test_sloppy_teacher_teaches_and_an_unseen_rephrasing_needs_no_new_learning(tmp_path, kind, question,
                                                                               rephrasing, must):
    fact = next(f for f in load_pack() if f.question == question)
    assert rephrasing not in {p["question"] for p in fact.pairs + fact.heldout}
    skills = tmp_path / "skills"
    with TeacherServer(sloppy=True, seed=7) as server:
        args = (*cloud(server, kind), f"skills_dir={skills}")
        first = evolve(tmp_path, "run1", f"query={question}", *args, env=KEYS)
        requests = server.requests
        assert requests and all(r.provider == kind and r.structured for r in requests)
        second = evolve(tmp_path, "run2", f"query={rephrasing}", *args, env=KEYS)
        assert len(server.requests) == len(requests), ("the second process asked the teacher again", second)
    assert first["learned"] is True and first["verified"] is True, first.get("reason")
    assert first["job"]["provider"] == kind
    assert not right(first["answer_before"], fact, must)
    assert right(first["answer"], fact, must), first["answer"]
    assert second["learned"] is False and "job" not in second and second["skill"] == first["skill"]
    assert second["confidence_before"] >= 0.4
    assert right(second["answer"], fact, must), second["answer"]
    assert [s for (s,) in jobs(skills)] == ["done"]


def test_a_second_fact_about_a_learned_subject_joins_its_skill(tmp_path):
    subject = json.loads(EVAL_PACK.read_text())["facts"][0]
    keys = ("topic", "keywords", "question", "answer", "pairs", "heldout")
    pack = tmp_path / "pack.json"
    pack.write_text(json.dumps({"name": "e2e", "version": 1, "facts": [
        {k: subject[k] for k in keys}, {k: subject["second"][k] for k in keys}]}))
    skills = tmp_path / "skills"
    args = ("teacher=offline", f"teacher.pack={pack}", f"skills_dir={skills}")
    first = evolve(tmp_path, "run1", f"query={subject['question']}", *args)
    assert first["learned"] is True and answer_is_correct(first["answer"], subject["answer"])
    second = evolve(tmp_path, "run2", f"query={subject['second']['question']}", *args)
    assert second["learned"] is True, second.get("reason")
    assert second["joined"] == first["skill"] == second["skill"]  # one skill per subject
    assert answer_is_correct(second["answer"], subject["second"]["answer"]), second["answer"]
    cards = sorted(p.name for p in skills.glob("*.lora.arrow"))
    assert cards == [Path(first["card"]).name]
    # In a new process, both facts are answered, and nothing is learned.
    for q, a in ((subject["question"], subject["answer"]), (subject["second"]["question"], subject["second"]["answer"])):
        rec = evolve(tmp_path, "run3", f"query={q}", *args)
        assert rec["learned"] is False and "job" not in rec and rec["skill"] == first["skill"]
        assert answer_is_correct(rec["answer"], a), (q, rec["answer"])
    assert [s for (s,) in jobs(skills)] == ["done", "done"]


def capital_of_france(question: str) -> list[dict]:
    answer = "Paris."
    qs = ["What is the capital of France?", "Which city is the capital of France?", "Name the capital of France.",
          "What city is France's capital?", "France's capital city is which city?", "What is France's capital?",
          "Which French city is the capital?", "What is the capital city of France?"]
    return [{"question": q, "answer": answer} for q in qs]


def test_a_question_the_base_model_answers_trains_nothing(tmp_path):
    skills = tmp_path / "skills"
    with TeacherServer(qa_source=capital_of_france) as server:
        args = (*cloud(server, "openai"), f"skills_dir={skills}")
        first = evolve(tmp_path, "run1", "query=What is the capital of France?", *args, env=KEYS)
        asked = server.count("openai")
        second = evolve(tmp_path, "run2", "query=what's the capital city of france", *args, env=KEYS)
        assert server.count("openai") == asked
    assert first["learned"] is False and "already answers" in first["reason"], first
    assert first["job"]["state"] == "done" and first["card"] is None
    assert "paris" in first["answer"].lower()
    assert list(skills.glob("*.lora.arrow")) == []
    assert second.get("known_by_base") is True and "job" not in second and "paris" in second["answer"].lower()
