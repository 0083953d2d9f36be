"""Check experiments/data/knowledge_eval_pack.json (or the dev pack) before an evaluation uses it.

The evaluation pack has 24 subjects and the dev pack ``knowledge_eval_dev_pack.json`` (used only to
fit constants such as the answer-confidence threshold, never to report) has 8; each entry is an
ordinary offline pack fact (``load_pack`` reads it) plus a ``second`` fact about the same subject,
people-typed ``rephrasings`` and ``locality`` questions. The evaluation flattens it as [all first
facts] + [all second facts] and routes questions with ``match_fact``, so this script does the same
and checks that:

* the counts are right (24 subjects for the evaluation pack, 8 for the dev pack, the pack's own count
  for any other pack unless ``--subjects`` says; 20 pairs, 4 held-out, 3 rephrasings per fact; 2
  locality questions);
* every question of a fact (its question, pairs, held-out and rephrasings) is routed to that fact;
* pairs, held-out paraphrases, rephrasings and the question itself do not repeat one another;
* answers are short, rephrasings carry the fact's answer verbatim, every pair/held-out answer contains
  the answer's key words, and a subject's second fact has a different answer;
* no locality question (general knowledge or look-alike) is routed to any fact;
* no keyword of the other pack (dev vs evaluation, both ways) appears in this one.

Run:  .venv/bin/python experiments/data/check_eval_pack.py [pack.json] [--subjects N]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

from autodidact.teachers.offline import _words, load_pack, match_fact

PACK = Path(__file__).with_name("knowledge_eval_pack.json")
DEV_PACK = Path(__file__).with_name("knowledge_eval_dev_pack.json")
# Expected subject counts of the shipped packs; any other pack is checked against its own count.
EXPECTED_SUBJECTS = {PACK.name: 24, DEV_PACK.name: 8}
N_PAIRS, N_HELDOUT, N_REPHRASINGS = 20, 4, 3
MAX_ANSWER_WORDS = 10
USED_ELSEWHERE = (
    "brindlemark",
    "quillhaven",
    "orvanis",
    "velmora",
    "zorbax",
    "kelyarven",
    "thessaly",
    "lumenfall",
    "ashgrove",
)


def norm(text: str) -> str:
    """A question as a typist sees it: lower case, words only."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def flatten(data: dict) -> list[dict]:
    """[all first facts] + [all second facts], as the evaluation lays them out."""
    return list(data["facts"]) + [f["second"] for f in data["facts"]]


def check(path: Path, n_subjects: int | None = None) -> list[str]:
    data = json.loads(path.read_text("utf-8"))
    problems: list[str] = []
    say = problems.append

    if "fictional" not in data.get("notice", "").lower():
        say("notice does not say the facts are fictional")
    load_pack(path)  # the pack as shipped must load as an ordinary offline pack
    subjects = data["facts"]
    if n_subjects is None:
        n_subjects = EXPECTED_SUBJECTS.get(path.name, len(subjects))
    if len(subjects) != n_subjects:
        say(f"{len(subjects)} subjects, expected {n_subjects}")

    raw = flatten(data)
    with tempfile.TemporaryDirectory() as tmp:  # parse the flattened list exactly as load_pack does
        flat_path = Path(tmp) / "flat.json"
        flat_path.write_text(json.dumps({"facts": raw}), "utf-8")
        facts = load_pack(flat_path)

    # keywords: lower case, and no subject borrows another subject's keyword
    owner: dict[str, int] = {}
    for i, f in enumerate(raw):
        for k in f["keywords"]:
            if k != k.lower():
                say(f"{f['topic']}: keyword {k!r} is not lower case")
            if owner.setdefault(k, i % len(subjects)) != i % len(subjects):
                say(f"keyword {k!r} is used by two subjects")
    text = json.dumps(data).lower()
    for name in USED_ELSEWHERE:
        if name in text:
            say(f"{name!r} is used elsewhere and must not appear in this pack")
    # the dev pack (fits constants) and the evaluation pack (reports) share no subject: neither uses
    # a keyword of the other
    for other in (PACK, DEV_PACK):
        if other.exists() and other.resolve() != path.resolve():
            theirs = {k for f in flatten(json.loads(other.read_text("utf-8"))) for k in f["keywords"]}
            for k in sorted(theirs):
                if re.search(rf"\b{re.escape(k.lower())}\b", text):
                    say(f"keyword {k!r} of {other.name} appears in this pack")

    for f, fact in zip(raw, facts, strict=True):
        t = f["topic"]
        for key, n in (("pairs", N_PAIRS), ("heldout", N_HELDOUT), ("rephrasings", N_REPHRASINGS)):
            if len(f.get(key, ())) != n:
                say(f"{t}: {len(f.get(key, ()))} {key}, expected {n}")
        if len(f["answer"].split()) >= MAX_ANSWER_WORDS:
            say(f"{t}: answer {f['answer']!r} is not short")

        # every question goes to this fact
        questions = [f["question"]] + [
            p["question"] for k in ("pairs", "heldout", "rephrasings") for p in f[k]
        ]
        for q in questions:
            got = match_fact(q, facts)
            if got is not fact:
                say(f"{t}: {q!r} is routed to {got.topic if got else None!r}")

        # no repeats between (or within) question, pairs, held-out and rephrasings
        seen = {norm(f["question"]): "question"}
        for key in ("pairs", "heldout", "rephrasings"):
            for p in f[key]:
                q = norm(p["question"])
                if q in seen:
                    say(f"{t}: {p['question']!r} in {key} repeats one in {seen[q]}")
                seen.setdefault(q, key)

        # answers carry the key words; rephrasings carry the answer verbatim
        key_words = _words(f["answer"])
        for key in ("pairs", "heldout"):
            for p in f[key]:
                if not key_words <= _words(p["answer"]):
                    say(f"{t}: {key} answer {p['answer']!r} lacks {sorted(key_words - _words(p['answer']))}")
        for p in f["rephrasings"]:
            if p["answer"] != f["answer"]:
                say(f"{t}: rephrasing {p['question']!r} has answer {p['answer']!r}, not {f['answer']!r}")

    for s in subjects:
        second = s["second"]
        if _words(second["answer"]) == _words(s["answer"]):
            say(f"{s['topic']}: the second fact has the same answer")
        if not set(s["keywords"]) & set(second["keywords"]):
            say(f"{s['topic']}: first and second facts share no subject keyword")
        kinds = [q.get("kind") for q in s.get("locality", ())]
        if kinds != ["general", "lookalike"]:
            say(f"{s['topic']}: locality kinds {kinds}, expected ['general', 'lookalike']")
        for q in s.get("locality", ()):
            got = match_fact(q["question"], facts)
            if got is not None:
                say(f"{s['topic']}: locality {q['question']!r} is routed to {got.topic!r}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pack", nargs="?", type=Path, default=PACK, help="the pack to check")
    parser.add_argument("--subjects", type=int, help="expected number of subjects")
    args = parser.parse_args()
    path = args.pack
    data = json.loads(path.read_text("utf-8"))
    flat = flatten(data)
    n_q = sum(1 + len(f["pairs"]) + len(f["heldout"]) + len(f["rephrasings"]) for f in flat)
    n_loc = sum(len(s["locality"]) for s in data["facts"])
    problems = check(path, args.subjects)
    for p in problems:
        print("FAIL", p)
    print(
        f"{path.name}: {len(data['facts'])} subjects, {len(flat)} facts, {n_q} routed questions, "
        f"{n_loc} locality questions: {'OK' if not problems else f'{len(problems)} problems'}"
    )
    assert not problems, f"{len(problems)} problems"


if __name__ == "__main__":
    main()
