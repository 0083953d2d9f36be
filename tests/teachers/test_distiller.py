"""Reading and validating teacher replies, and splitting reference / held-out / training pairs."""

from __future__ import annotations

import json

import pytest

from autodidact.errors import ConfigError
from autodidact.teachers import BadReply, CloudDistiller, DistillConfig, FailoverChain, OfflineProvider
from autodidact.teachers.distiller import build_request, extract_question, normalize, parse_reply
from autodidact.teachers.providers import Completion

PAIRS = [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}]
BODY = json.dumps({"pairs": PAIRS})


def _c(text: str) -> Completion:
    return Completion(text, "test", "m")


@pytest.mark.parametrize(
    "text",
    [
        BODY,
        f"```json\n{BODY}\n```",
        f"```\n{BODY}\n```",
        f"Here are your pairs:\n```json\n{BODY}\n```\nEnjoy!",
        f"Sure. {BODY} Hope this helps.",
        f"  \n{BODY}\n  ",
    ],
    ids=["plain", "fenced-json", "fenced-bare", "fenced-with-prose", "prose-around", "whitespace"],
)
def test_parse_reply_accepts(text):
    assert parse_reply(_c(text)) == PAIRS


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Sure! Here are some questions.", "not JSON"),
        ('{"pairs": [', "not JSON"),
        (json.dumps(PAIRS), "not"),
        (json.dumps({"qa": PAIRS}), r'not \{"pairs"'),
        (json.dumps({"pairs": "Q1? A1."}), r'not \{"pairs"'),
        ("", "not JSON"),
    ],
    ids=["prose", "truncated", "bare-list", "wrong-key", "pairs-not-list", "empty"],
)
def test_parse_reply_rejects(text, match):
    with pytest.raises(BadReply, match=match):
        parse_reply(_c(text))


@pytest.mark.parametrize(
    ("a", "b"),
    [("Who was X?", "who was x"), ("Who  was\tX ?", "Who was X?"), ("Brindlemark\u2019s mayor?", "Brindlemark's mayor")],
)
def test_normalize_ignores_case_punctuation_and_spacing(a, b):
    assert normalize(a) == normalize(b)


def test_request_carries_the_question_verbatim_and_round_trips():
    q = 'Who was Brindlemark\'s first mayor, and when? (say "when")'
    request = build_request(q, 29, 4, known=["Q1?"])
    assert q in request and "Q1?" in request and "29" in request
    assert extract_question(request) == q


@pytest.mark.parametrize(
    ("field", "value"),
    [("n_pairs", 0), ("n_heldout", -1), ("min_pairs", 100), ("max_rounds", 0), ("max_answer_chars", 0)],
)
def test_distill_config_rejects(field, value):
    with pytest.raises(ConfigError, match=field):
        DistillConfig(**{field: value}).validate()


def test_offline_distill_splits_reference_heldout_training():
    teacher = FailoverChain([OfflineProvider()], offline=True)
    result = CloudDistiller(teacher, DistillConfig(n_pairs=10, n_heldout=3, min_pairs=5)).distill(
        "  Who was Brindlemark's first mayor, and when?  "
    )
    assert result.offline and result.provider == "offline-demo"
    assert result.reference.question == "Who was Brindlemark's first mayor, and when?"
    assert len(result.heldout) == 3 and len(result.pairs) == 11  # reference + 10
    assert result.pairs[0] == result.reference
    assert not {normalize(p.question) for p in result.pairs} & {normalize(p.question) for p in result.heldout}


def test_reference_can_be_kept_out_of_training():
    teacher = FailoverChain([OfflineProvider()], offline=True)
    cfg = DistillConfig(include_reference_in_training=False)
    result = CloudDistiller(teacher, cfg).distill("What is the capital of Vashmere?")
    assert result.reference not in result.pairs and len(result.pairs) == 24


def test_empty_question_is_a_config_error():
    with pytest.raises(ConfigError, match="query"):
        CloudDistiller(FailoverChain([OfflineProvider()])).distill("   ")
