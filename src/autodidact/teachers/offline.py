"""``OfflineProvider``: the teacher for a machine with no API key, serving the shipped demo pack.

The pack (``resources/demo_pack.json``) holds a few *fictional* facts that no base model can know,
each with a reference answer, training pairs and held-out paraphrases. The provider answers a
distiller request in exactly the wire format a cloud teacher is asked for, so the distill path is the
same; it is labelled as offline demo data everywhere and never pretends to be a cloud model.

A request is routed to a fact by its keywords (names that only that fact uses) and then by word
overlap; a question about anything else is refused with the list of what the pack knows.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from autodidact.errors import ConfigError
from autodidact.teachers.distiller import extract_question
from autodidact.teachers.errors import OutOfPack
from autodidact.teachers.providers import Completion

OFFLINE_LABEL = "offline demo knowledge pack"
_WORD = re.compile(r"[a-z0-9]+")
# Question words carry no topic; leaving them out keeps the overlap score about the subject.
_STOP_WORDS = (
    "a an and the of in on at to is was were be been who whom whose what which when where why how "
    "did does do for by with as it its this that from or tell me name give can you please"
)
_STOP = frozenset(_STOP_WORDS.split())


@dataclass(frozen=True)
class PackFact:
    """One fictional fact in the demo pack."""

    topic: str
    """Short description, e.g. "Brindlemark's first mayor"."""
    keywords: tuple[str, ...]
    """Lower-case words only this fact uses; a question must contain one to match."""
    question: str
    """The "hard question" the demo asks."""
    answer: str
    """Its short reference answer."""
    pairs: tuple[dict, ...]
    """Training QA pairs."""
    heldout: tuple[dict, ...]
    """Held-out paraphrases with answers, disjoint from ``pairs``."""


def _stem(word: str) -> str:
    # "Brindlemark's", "Brindlemarks" and "brindlemark" are the same word to someone typing fast.
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _words(text: str) -> set[str]:
    text = text.lower().replace("\u2019", "'").replace("'s", "")
    return {_stem(w) for w in _WORD.findall(text) if w not in _STOP}


def load_pack(path: str | os.PathLike | None = None) -> list[PackFact]:
    """Read a knowledge pack (the shipped demo pack when ``path`` is None)."""
    try:
        if path is None:
            text = resources.files("autodidact.resources").joinpath("demo_pack.json").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        data = json.loads(text)
        facts = [
            PackFact(
                topic=f["topic"],
                keywords=tuple(k.lower() for k in f["keywords"]),
                question=f["question"],
                answer=f["answer"],
                pairs=tuple(f["pairs"]),
                heldout=tuple(f["heldout"]),
            )
            for f in data["facts"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"cannot read the knowledge pack {path or 'demo_pack.json'}: {exc}. "
            "Point teacher.pack at a JSON file shaped like resources/demo_pack.json, or leave it null."
        ) from exc
    if not facts:
        raise ConfigError(f"the knowledge pack {path or 'demo_pack.json'} has no facts")
    return facts


def match_fact(question: str, facts: list[PackFact]) -> PackFact | None:
    """The fact a question is about: it must name one of the fact's keywords; ties go to word overlap."""
    words = _words(question)
    best, best_score = None, 0.0
    for fact in facts:
        if not words & {_stem(k) for k in fact.keywords}:
            continue
        vocab = _words(fact.question + " " + fact.topic + " " + " ".join(p["question"] for p in fact.pairs))
        score = len(words & vocab) / max(1, len(words))
        if score > best_score:
            best, best_score = fact, score
    return best


def render_reply(fact: PackFact, question: str) -> str:
    """The JSON a cloud teacher is asked for: the question verbatim first, then held-out, then training."""
    pairs = [{"question": question, "answer": fact.answer}, *fact.heldout, *fact.pairs]
    return json.dumps({"pairs": pairs}, ensure_ascii=False)


class OfflineProvider:
    """Serves the demo knowledge pack through the same interface as a cloud provider."""

    name = "offline-demo"
    model = "demo-pack-v1"

    def __init__(self, pack_path: str | os.PathLike | None = None) -> None:
        self.pack_path = pack_path
        self.facts = load_pack(pack_path)

    def describe(self) -> str:
        return f"{OFFLINE_LABEL} (fictional demo facts, not a cloud model)"

    def topics(self) -> list[str]:
        return [f.question for f in self.facts]

    def complete(
        self, system: str, user: str, timeout: float | None = None, schema: dict | None = None
    ) -> Completion:
        start = time.monotonic()
        question = extract_question(user)
        fact = match_fact(question, self.facts)
        if fact is None:
            known = "\n".join(f"    * {q}" for q in self.topics())
            raise OutOfPack(
                f"the offline demo teacher only knows its fictional demo facts, and {question!r} is not "
                f"one of them. Ask one of:\n{known}\n  or set OPENAI_API_KEY / ANTHROPIC_API_KEY for a "
                "real cloud teacher.",
                provider=self.name,
            )
        return Completion(render_reply(fact, question), self.name, self.model, time.monotonic() - start, {})
