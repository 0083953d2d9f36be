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
        json.dumps(PAIRS),
        f"Note {{this}}: here they are.\n{BODY}\nAnything else?",
    ],
    ids=["plain", "fenced-json", "fenced-bare", "fenced-with-prose", "prose-around", "whitespace", "bare-list",
         "braces-in-prose"],
)
def test_parse_reply_accepts(text):
    assert parse_reply(_c(text)) == PAIRS


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Sure! Here are some questions.", "not JSON"),
        ('{"pairs": [', "not JSON"),
        (json.dumps({"qa": PAIRS}), r'not \{"pairs"'),
        (json.dumps({"pairs": "Q1? A1."}), r'not \{"pairs"'),
        ("", "not JSON"),
    ],
    ids=["prose", "truncated", "wrong-key", "pairs-not-list", "empty"],
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
    assert len(result.heldout) == 3 and len(result.pairs) == 11  # reference + n_pairs
    assert result.pairs[0] == result.reference
    assert not {normalize(p.question) for p in result.pairs} & {normalize(p.question) for p in result.heldout}


def test_reference_can_be_kept_out_of_training():
    teacher = FailoverChain([OfflineProvider()], offline=True)
    cfg = DistillConfig(include_reference_in_training=False)
    result = CloudDistiller(teacher, cfg).distill("What is the capital of Vashmere?")
    assert result.reference not in result.pairs and 18 <= len(result.pairs) <= 24


def test_empty_question_is_a_config_error():
    with pytest.raises(ConfigError, match="query"):
        CloudDistiller(FailoverChain([OfflineProvider()])).distill("   ")


# -- a teacher that answers the way language models do -------------------------------------------
class Scripted:
    """A provider that replies with the given texts in order (the last one again and again, as a teacher
    with nothing new to say does) and records what it was asked."""

    name, model = "scripted", "m"

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.asked: list[str] = []

    def complete(self, system, user, timeout=None, schema=None) -> Completion:
        self.asked.append(user)
        return Completion(self.texts.pop(0) if len(self.texts) > 1 else self.texts[0], self.name, self.model)

    def describe(self) -> str:
        return "scripted"


QUERY = "who built the old market on willow road?"
ANSWER = "Hesper Lune, a stonemason, in 1887."
# A second detail about the same subject, placed first: "pair 1" is NOT the user's question.
OTHER = [{"question": "What colour is the roof of the old market on Willow Road?", "answer": "Slate grey."},
         {"question": "Which colour is the old market's roof on Willow Road?", "answer": "It is slate grey."}]
REPHRASINGS = [
    "Who constructed the old market on Willow Road?",
    "Who was the builder of the old market on Willow Road?",
    "Which stonemason built the old market on Willow Road?",
    "Who put up the old market building on Willow Road?",
    "By whom was the old market on Willow Road built?",
    "Who erected the old market on Willow Road, and when?",
]
RELATED = [
    "In what year was the old market on Willow Road built?",
    "What was Hesper Lune's trade?",
    "When did Hesper Lune finish the old market on Willow Road?",
    "What did Hesper Lune build on Willow Road?",
]


def _sloppy_reply() -> str:
    pairs = OTHER + [{"question": q, "answer": ANSWER} for q in REPHRASINGS + RELATED]
    pairs.insert(3, {"q": "wrong keys", "a": "x"})
    pairs.insert(5, {"question": "Empty?", "answer": ""})
    return "Of course! Here are the flashcards:\n" + json.dumps({"pairs": pairs}) + "\nHope this helps."


def test_reference_is_chosen_by_meaning_not_position(encoder):
    teacher = Scripted(_sloppy_reply())
    result = CloudDistiller(FailoverChain([teacher]), DistillConfig(), encoder=encoder).distill(QUERY)
    assert result.reference.question == QUERY and result.reference.answer == ANSWER
    # too few for a full set, so it asked again; the same reply again adds only duplicates
    assert result.reference_from == "pairs" and result.rounds == 3
    assert result.dropped == {"invalid": 6, "duplicate": 24}
    # held-out: rephrasings of the user's question with the reference answer, about a fifth of 12
    assert 1 <= len(result.heldout) <= 4
    # MiniLM puts "In what year was it built?" at 0.97 from "who built it?"; it shares the answer, so it
    # may be held out too. The other detail (the roof's colour) never is.
    assert all(p.answer == ANSWER and p.question in REPHRASINGS + RELATED for p in result.heldout)
    assert not {p.question for p in result.heldout} & {p.question for p in result.pairs}
    assert result.pairs[0] == result.reference
    assert len(result.pairs) == 1 + 12 - len(result.heldout)  # trained on everything else, other detail included


def test_no_pair_asks_the_question_so_its_answer_is_asked_for_alone(encoder):
    related = [{"question": q, "answer": ANSWER} for q in RELATED[1:]] + OTHER + [
        {"question": "Where is the old market?", "answer": "On Willow Road."},
        {"question": "What street is the old market on?", "answer": "Willow Road."}]
    alone = json.dumps({"pairs": [{"question": QUERY, "answer": "Hesper Lune built it in 1887."}]})
    teacher = Scripted(*[json.dumps({"pairs": related})] * 3, alone)
    result = CloudDistiller(FailoverChain([teacher]), DistillConfig(), encoder=encoder).distill(QUERY)
    assert result.reference_from == "asked" and result.reference.answer == "Hesper Lune built it in 1887."
    assert result.heldout == [] and len(teacher.asked) == 4  # 3 rounds of pairs, then the answer alone
    assert "exactly one" in teacher.asked[-1] and QUERY in teacher.asked[-1]


def test_near_duplicates_are_removed_by_meaning(encoder):
    pairs = [{"question": q, "answer": ANSWER} for q in REPHRASINGS + RELATED]
    pairs += [{"question": "Who constructed the old market on Willow Road ?!", "answer": ANSWER},  # exact, after normalising
              {"question": "Who constructed the old market on the Willow Road?", "answer": ANSWER}]  # by meaning
    teacher = Scripted(json.dumps({"pairs": pairs}))
    result = CloudDistiller(FailoverChain([teacher]), DistillConfig(), encoder=encoder).distill(QUERY)
    assert result.dropped == {"duplicate": 1 + 2 * 12, "near_duplicate": 1}  # 3 rounds: 12 fit for training
    kept = [p.question for p in result.pairs + result.heldout]
    assert "Who constructed the old market on the Willow Road?" not in kept


def test_too_few_pairs_asks_again_then_fails_with_what_was_dropped(encoder):
    few = json.dumps({"pairs": [{"question": q, "answer": ANSWER} for q in REPHRASINGS[:3]] + [{"q": "x"}]})
    teacher = Scripted(few)
    with pytest.raises(BadReply, match=r"min_pairs=6.*invalid"):
        CloudDistiller(FailoverChain([teacher]), DistillConfig(), encoder=encoder).distill(QUERY)
    assert len(teacher.asked) == 3 and "do not repeat" in teacher.asked[1]


def test_six_pairs_are_enough_to_train(encoder):
    six = [{"question": q, "answer": ANSWER} for q in REPHRASINGS[:2] + RELATED] + OTHER[:1] + [
        {"question": "Which guild paid for the old market on Willow Road?", "answer": "The Weavers' Guild."}]
    teacher = Scripted(json.dumps({"pairs": six}))
    result = CloudDistiller(FailoverChain([teacher]), DistillConfig(), encoder=encoder).distill(QUERY)
    # 8 pairs (none asking the user's exact words): round(8/5) = 2 held out, 6 to train, + the reference
    assert len(result.heldout) == 2 and len(result.pairs) == 1 + 6
