"""The real openai/anthropic SDKs against the loopback server, one fault script per row."""

from __future__ import annotations

import json
import random

import pytest

from autodidact.teachers import AllProvidersFailed, BadReply, build_distiller
from autodidact.teachers.offline import load_pack, match_fact
from tests.support.teacher_server import TeacherServer
from tests.teachers.conftest import loopback_cfg

QUESTION = "Who was Brindlemark's first mayor, and when?"
ANSWER = "Odalys Fenwright, elected in 1847."

# (id, openai faults queued, anthropic faults queued, openai always, provider that answers,
#  expected openai requests, expected anthropic requests)
CASES = [
    ("ok", [], [], None, "openai", 1, 0),
    ("429-retry-after", ["429"], [], None, "openai", 2, 0),
    ("500-retry", ["500"], [], None, "openai", 2, 0),
    ("503-twice-retry", ["503", "503"], [], None, "openai", 3, 0),
    ("503-always-failover", [], [], "503", "anthropic", 3, 1),
    ("anthropic-529-retry", [], ["529", "529"], "503", "anthropic", 3, 3),
    ("hang-timeout-retry", ["hang"], [], None, "openai", 2, 0),
    ("truncated-body-retry", ["truncated"], [], None, "openai", 2, 0),
    ("garbage-body-retry", ["garbage_body"], [], None, "openai", 2, 0),
    ("non-json-text-retry", ["non_json_text"], [], None, "openai", 2, 0),
    ("wrong-shape-retry", ["wrong_shape"], [], None, "openai", 2, 0),
    ("fenced-accepted", ["fenced"], [], None, "openai", 1, 0),
    ("too-few-asks-again", ["too_few"], [], None, "openai", 2, 0),
    ("bad-pairs-filtered-asks-again", ["bad_pairs"], [], None, "openai", 2, 0),
    ("401-fails-over-at-once", ["401"], [], None, "anthropic", 1, 1),
    ("mixed-then-failover", ["429", "hang", "non_json_text"], ["truncated"], None, "anthropic", 3, 2),
]


@pytest.mark.parametrize(
    ("openai_faults", "anthropic_faults", "openai_always", "provider", "n_openai", "n_anthropic"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_fault_then_valid_pairs(
    teacher_server, make_cfg, tmp_path, openai_faults, anthropic_faults, openai_always, provider, n_openai,
    n_anthropic,
):
    teacher_server.script("openai", *openai_faults) if openai_faults else None
    teacher_server.script("anthropic", *anthropic_faults) if anthropic_faults else None
    teacher_server.fail_always("openai", openai_always)
    sleeps: list[float] = []
    distiller = build_distiller(make_cfg(), tmp_path / "t.jsonl", sleep=sleeps.append, rng=random.Random(0))

    result = distiller.distill(QUESTION)

    assert result.provider == provider
    assert (teacher_server.count("openai"), teacher_server.count("anthropic")) == (n_openai, n_anthropic)
    assert result.reference.question == QUESTION and result.reference.answer == ANSWER
    # the user's question + up to 24 (near-duplicates by meaning dropped)
    assert 20 <= len(result.pairs) <= 25 and len(result.heldout) == 4
    assert all(p.question and p.answer for p in result.pairs)
    train_q = {p.question for p in result.pairs}
    assert not train_q & {p.question for p in result.heldout}
    assert len(train_q) == len(result.pairs)
    # Every request carried the user's question verbatim.
    assert all(QUESTION in json.dumps(r.body, ensure_ascii=False) for r in teacher_server.requests)
    # The transcript has one line per exchange, including the failed ones.
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == n_openai + n_anthropic


def test_429_waits_at_least_retry_after(teacher_server, make_cfg, tmp_path):
    teacher_server.retry_after = "0.15"
    teacher_server.script("openai", "429")
    sleeps: list[float] = []
    build_distiller(make_cfg(), tmp_path / "t.jsonl", sleep=sleeps.append).distill(QUESTION)
    assert sleeps and sleeps[0] >= 0.15


def test_retry_after_longer_than_backoff_cap_fails_over_now(teacher_server, make_cfg, tmp_path):
    teacher_server.retry_after = "30"
    teacher_server.script("openai", "429")
    sleeps: list[float] = []
    result = build_distiller(make_cfg(), tmp_path / "t.jsonl", sleep=sleeps.append).distill(QUESTION)
    assert result.provider == "anthropic" and teacher_server.count("openai") == 1 and not sleeps


def test_backoff_grows_exponentially_with_bounded_jitter(teacher_server, make_cfg, tmp_path):
    teacher_server.fail_always("openai", "500")
    sleeps: list[float] = []
    cfg = make_cfg(policy={"max_attempts": 4, "backoff_base_s": 0.01, "backoff_max_s": 0.03, "jitter": 0.5})
    build_distiller(cfg, tmp_path / "t.jsonl", sleep=sleeps.append).distill(QUESTION)
    assert len(sleeps) == 3  # between 4 tries of openai
    for delay, cap in zip(sleeps, [0.01, 0.02, 0.03], strict=True):
        assert cap * 0.5 <= delay <= cap


def test_all_providers_fail_lists_each(teacher_server, make_cfg, tmp_path):
    teacher_server.fail_always("openai", "503")
    teacher_server.fail_always("anthropic", "529")
    with pytest.raises(AllProvidersFailed) as info:
        build_distiller(make_cfg(), tmp_path / "t.jsonl", sleep=lambda s: None).distill(QUESTION)
    message = str(info.value)
    assert "openai: HTTP 503" in message and "anthropic: HTTP 529" in message
    assert [type(e).__name__ for e in info.value.errors] == ["Unavailable", "Unavailable"]


def test_bad_keys_say_which_key(teacher_server, make_cfg, tmp_path):
    teacher_server.fail_always("openai", "401")
    teacher_server.fail_always("anthropic", "401")
    with pytest.raises(AllProvidersFailed) as info:
        build_distiller(make_cfg(), tmp_path / "t.jsonl").distill(QUESTION)
    assert "OPENAI_API_KEY" in str(info.value) and "ANTHROPIC_API_KEY" in str(info.value)
    assert (teacher_server.count("openai"), teacher_server.count("anthropic")) == (1, 1)  # no retries


def test_cooldown_skips_a_failing_provider_on_the_next_call(teacher_server, make_cfg, tmp_path):
    teacher_server.fail_always("openai", "503")
    distiller = build_distiller(make_cfg(), tmp_path / "t.jsonl", sleep=lambda s: None)
    distiller.distill(QUESTION)
    before = teacher_server.count("openai")
    distiller.distill("What is the capital of Vashmere?")
    assert teacher_server.count("openai") == before  # cooling down: not asked again


def test_overall_deadline_bounds_a_hanging_chain(teacher_server, make_cfg, tmp_path):
    teacher_server.fail_always("openai", "hang")
    teacher_server.fail_always("anthropic", "hang")
    cfg = make_cfg(policy={"deadline_s": 0.8})
    with pytest.raises(AllProvidersFailed, match="deadline"):
        build_distiller(cfg, tmp_path / "t.jsonl", sleep=lambda s: None).distill(QUESTION)


def test_too_few_pairs_every_time_is_a_clear_error(teacher_server, make_cfg, tmp_path):
    teacher_server.fail_always("openai", "too_few")
    with pytest.raises(BadReply, match="min_pairs"):
        build_distiller(make_cfg(), tmp_path / "t.jsonl").distill(QUESTION)
    assert teacher_server.count("openai") == 3  # max_rounds requests


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_single_provider_kinds_use_their_wire_format(teacher_server, make_cfg, tmp_path, kind):
    result = build_distiller(make_cfg(kind), tmp_path / "t.jsonl").distill("What is the capital of Vashmere?")
    (request,) = teacher_server.requests
    assert request.provider == kind and result.provider == kind
    assert request.path == {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}[kind]
    assert request.body["max_tokens"] == 2048 and request.body["model"].endswith("-loop")
    assert result.reference.answer == "Port Cellaway is the capital of Vashmere."


def test_loopback_serves_every_pack_fact(teacher_server, make_cfg, tmp_path):
    distiller = build_distiller(make_cfg("openai"), tmp_path / "t.jsonl")
    for fact in load_pack():
        assert distiller.distill(fact.question).reference.answer == fact.answer


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "plain-text"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_sloppy_teacher_through_the_real_sdks(tmp_path, kind, structured):
    """Fewer pairs than asked, shuffled, the user's question only rephrased, junk items, prose around
    the JSON: the reference is still the user's question with the right answer, never "pair 1"."""
    fact = match_fact(QUESTION, load_pack())
    with TeacherServer(sloppy=True, seed=3) as server:
        cfg = loopback_cfg(server, kind, **{kind: {"structured_output": structured}}, distill={"min_pairs": 6})
        result = build_distiller(cfg, tmp_path / "t.jsonl").distill(QUESTION)
        requests = server.requests
    assert all(r.structured == structured for r in requests)
    if kind == "anthropic" and structured:
        assert requests[0].body["tool_choice"] == {"type": "tool", "name": "qa_pairs"}
    if kind == "openai" and structured:
        assert requests[0].body["response_format"]["json_schema"]["schema"]["required"] == ["pairs"]
    assert result.reference.question == QUESTION and result.reference.answer == ANSWER
    assert result.reference_from == "pairs" and result.dropped["invalid"] >= 3
    paraphrases = {p["question"] for p in fact.heldout + fact.pairs}
    assert 1 <= len(result.heldout) <= 4 and {p.question for p in result.heldout} <= paraphrases
    assert len(result.pairs) >= 7  # the reference + what the teacher gave, less held-out
    assert not {p.question for p in result.pairs} & {p.question for p in result.heldout}


def test_server_without_structured_output_gets_plain_text_after_one_400(tmp_path):
    with TeacherServer(sloppy=True, structured=False) as server:
        cfg = loopback_cfg(server, "openai", distill={"min_pairs": 6})
        distiller = build_distiller(cfg, tmp_path / "t.jsonl")
        result = distiller.distill(QUESTION)
        distiller.distill("What is the capital of Vashmere?")
        flags = [r.structured for r in server.requests]
    assert result.reference.answer == ANSWER
    assert flags[0] is True and not any(flags[1:])  # refused once, plain text from then on
