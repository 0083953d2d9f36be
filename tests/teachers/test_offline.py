"""The shipped demo knowledge pack and the offline teacher that serves it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autodidact.errors import ConfigError
from autodidact.teachers import OfflineProvider, OutOfPack, load_pack
from autodidact.teachers.distiller import build_request, normalize
from autodidact.teachers.offline import match_fact

FACTS = load_pack()


def test_pack_has_brindlemark_and_about_five_facts():
    assert 4 <= len(FACTS) <= 8
    mayor = next(f for f in FACTS if "brindlemark" in f.keywords)
    assert "Odalys Fenwright" in mayor.answer and "1847" in mayor.answer


@pytest.mark.parametrize("fact", FACTS, ids=[f.topic for f in FACTS])
def test_pack_fact_is_learnable_by_a_small_model(fact):
    assert len(fact.pairs) >= 20 and len(fact.heldout) >= 3
    train = {normalize(p["question"]) for p in fact.pairs}
    assert len(train) == len(fact.pairs), "duplicate training questions"
    assert not train & {normalize(p["question"]) for p in fact.heldout}, "held-out leaked into training"
    for pair in [*fact.pairs, *fact.heldout, {"question": fact.question, "answer": fact.answer}]:
        assert len(pair["answer"].split()) <= 12, pair
    # The key answer words show up in most training answers (names/years), so greedy decoding can learn them.
    key = fact.answer.split()[0].strip(",.")
    assert sum(key in p["answer"] or key in p["question"] for p in fact.pairs) >= len(fact.pairs) * 0.75


@pytest.mark.parametrize(
    ("question", "topic"),
    [(f.question, f.topic) for f in FACTS]
    + [(h["question"], f.topic) for f in FACTS for h in f.heldout]
    + [("who was brindlemarks first MAYOR", "Brindlemark's first mayor")],
)
def test_questions_route_to_their_fact(question, topic):
    assert match_fact(question, FACTS).topic == topic


@pytest.mark.parametrize(
    "question",
    ["Who was the first mayor of London?", "What is the melting point of iron?", "Tell me a joke", ""],
)
def test_other_questions_are_refused_with_the_list_of_demo_facts(question):
    with pytest.raises(OutOfPack) as info:
        OfflineProvider().complete("system", build_request(question or "?", 29, 4, []))
    message = str(info.value)
    assert "offline demo teacher only knows" in message
    assert all(f.question in message for f in FACTS)


def test_offline_reply_is_the_cloud_wire_format():
    q = "Who was Brindlemark's first mayor, and when?"
    completion = OfflineProvider().complete("system", build_request(q, 29, 4, []))
    pairs = json.loads(completion.text)["pairs"]
    assert pairs[0] == {"question": q, "answer": "Odalys Fenwright, elected in 1847."}
    assert completion.provider == "offline-demo"
    assert "not a cloud model" in OfflineProvider().describe()


def test_a_broken_pack_is_a_config_error(tmp_path):
    bad = tmp_path / "pack.json"
    bad.write_text('{"facts": [{"topic": "x"}]}')
    with pytest.raises(ConfigError, match="teacher.pack"):
        OfflineProvider(bad)


def test_an_offline_teacher_and_the_factory_load_no_cloud_sdk():
    # openai + anthropic took 2.6-3.6 s to import here: an offline (or replay) run must not pay for them.
    code = ("import sys; import autodidact.skill_factory; from autodidact.teachers import OfflineProvider; "
            "OfflineProvider(); loaded = [m for m in ('openai', 'anthropic') if m in sys.modules]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
