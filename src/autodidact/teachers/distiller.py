"""``CloudDistiller``: turn one question the local model could not answer into QA pairs to learn from.

The teacher is asked for a single JSON object ``{"pairs": [{"question": ..., "answer": ...}, ...]}``:
first the user's question verbatim with its short answer (kept as the *reference*), then a few
paraphrases (kept *held out* for verification), then paraphrases and related questions (the
*training* pairs). The reply is read as plain text, with or without a Markdown code fence, so any
provider works without structured-output features. Pairs are validated (schema, non-empty strings,
length caps, duplicates removed) and the teacher is asked again while too few valid ones came back.
"""

from __future__ import annotations

import json
import logging
import re
import string
from dataclasses import asdict, dataclass, field

from autodidact.data import QAPair
from autodidact.errors import ConfigError
from autodidact.teachers.errors import BadReply
from autodidact.teachers.failover import FailoverChain
from autodidact.teachers.providers import Completion

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a teacher writing flashcards for a small language model that must learn one fact. "
    "Reply with exactly one JSON object and nothing else, of the form "
    '{"pairs": [{"question": "...", "answer": "..."}, ...]}. '
    "Every answer is short (under 12 words) and states the key fact itself (names, numbers, dates)."
)
QUESTION_OPEN, QUESTION_CLOSE = "<question>", "</question>"


@dataclass
class DistillConfig:
    """How many pairs to ask for and how to validate them."""

    n_pairs: int = 24
    """Training pairs wanted per question."""
    n_heldout: int = 4
    """Paraphrases kept apart from training, to verify the learned skill generalizes."""
    min_pairs: int = 12
    """Fewest training pairs accepted after ``max_rounds`` requests; fewer is an error."""
    max_rounds: int = 3
    """Requests per question at most (the first, then asks for more while too few came back)."""
    max_question_chars: int = 300
    """Longer questions are dropped, not truncated."""
    max_answer_chars: int = 200
    """Longer answers are dropped: a small model must be able to reproduce them."""
    include_reference_in_training: bool = True
    """Also train on the user's own question: it is the one the adapter must answer."""

    def validate(self) -> None:
        problems = []
        for name in ("n_pairs", "min_pairs", "max_rounds", "max_question_chars", "max_answer_chars"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_heldout < 0:
            problems.append(f"n_heldout must be >= 0 (got {self.n_heldout})")
        if self.min_pairs > self.n_pairs:
            problems.append(f"min_pairs ({self.min_pairs}) must be <= n_pairs ({self.n_pairs})")
        if problems:
            raise ConfigError("teacher.distill: " + "; ".join(problems))


@dataclass
class DistillResult:
    """What one distillation produced, split by purpose."""

    query: str
    """The user's question, verbatim."""
    reference: QAPair
    """The user's question with the teacher's reference answer."""
    heldout: list[QAPair]
    """Paraphrases with answers, never trained on: for verification."""
    pairs: list[QAPair]
    """Training pairs."""
    provider: str
    """Which provider gave the (last) reply."""
    model: str
    """That provider's model."""
    offline: bool = False
    """True when the pairs are the offline demo pack's fictional facts, not a cloud model's."""
    rounds: int = 1
    """How many requests it took."""
    usage: dict[str, int] = field(default_factory=dict)
    """Token usage summed over the rounds."""

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("pairs", "heldout")} | {
            "n_pairs": len(self.pairs),
            "n_heldout": len(self.heldout),
        }


def build_request(query: str, n_total: int, n_heldout: int, known: list[str]) -> str:
    """The user message: instructions plus the question verbatim between ``<question>`` tags."""
    lines = [
        "A student model could not answer this question:",
        QUESTION_OPEN,
        query,
        QUESTION_CLOSE,
        "",
        f"Write {n_total} question-answer pairs that teach the fact behind it, as one JSON object "
        '{"pairs": [{"question": "...", "answer": "..."}, ...]}.',
        "Pair 1: the question above, verbatim, with its correct short answer.",
        f"Pairs 2 to {n_heldout + 1}: paraphrases of the question with the same answer.",
        "The rest: more paraphrases and closely related questions (who, when, where, what), "
        "each answer short and containing the key facts.",
    ]
    if known:
        lines += ["", "You already gave these questions; do not repeat them, write new ones:"]
        lines += [f"- {q}" for q in known]
    return "\n".join(lines)


def extract_question(user: str) -> str:
    """The question inside ``<question>`` tags of a distiller request (the whole text if untagged)."""
    start = user.find(QUESTION_OPEN)
    end = user.find(QUESTION_CLOSE, start + 1)
    if start < 0 or end < 0:
        return user.strip()
    return user[start + len(QUESTION_OPEN) : end].strip()


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


def parse_reply(completion: Completion) -> list[dict]:
    """The raw ``pairs`` list from a reply; raises ``BadReply`` when it is not that JSON object."""
    text = completion.text.strip()
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1).strip()] if fenced else []
    candidates.append(text)
    if "{" in text:  # a reply with a sentence around the object
        candidates.append(text[text.find("{") : text.rfind("}") + 1])
    obj, last_error = None, "empty reply"
    for candidate in candidates:
        try:
            obj = json.loads(candidate)
            break
        except json.JSONDecodeError as exc:
            last_error = str(exc)
    if obj is None:
        raise BadReply(f"reply is not JSON ({last_error}): {text[:120]!r}", provider=completion.provider)
    if not isinstance(obj, dict) or not isinstance(obj.get("pairs"), list):
        raise BadReply(
            f'reply is JSON but not {{"pairs": [...]}} (got {type(obj).__name__} '
            f"with keys {sorted(obj)[:5] if isinstance(obj, dict) else '-'})",
            provider=completion.provider,
        )
    return obj["pairs"]


def normalize(question: str) -> str:
    """Comparison key for duplicates: case, punctuation and spacing ignored."""
    table = str.maketrans("", "", string.punctuation + "\u2019\u2018\u201c\u201d")
    return " ".join(question.casefold().translate(table).split())


class CloudDistiller:
    """Ask a teacher for QA pairs on a question; keep a reference, held-out paraphrases and training pairs."""

    def __init__(self, teacher: FailoverChain, config: DistillConfig | None = None) -> None:
        self.teacher = teacher
        self.config = config or DistillConfig()
        self.config.validate()

    def _valid(self, raw: list) -> list[QAPair]:
        cfg, out = self.config, []
        for item in raw:
            if not isinstance(item, dict):
                continue
            q, a = item.get("question"), item.get("answer")
            if not isinstance(q, str) or not isinstance(a, str):
                continue
            q, a = " ".join(q.split()), " ".join(a.split())
            if q and a and len(q) <= cfg.max_question_chars and len(a) <= cfg.max_answer_chars:
                out.append(QAPair(q, a))
        return out

    def distill(self, query: str) -> DistillResult:
        """Ask until ``n_pairs`` training pairs (or ``max_rounds``); raises ``TeacherError`` if too few."""
        query = query.strip()
        if not query:
            raise ConfigError("the question is empty: pass query=\"...\"")
        cfg = self.config
        n_total = cfg.n_pairs + cfg.n_heldout + 1
        reference: QAPair | None = None
        heldout: list[QAPair] = []
        training: list[QAPair] = []
        seen: set[str] = set()
        usage: dict[str, int] = {}
        completion: Completion | None = None
        rounds = 0
        while rounds < cfg.max_rounds and len(training) < cfg.n_pairs:
            rounds += 1
            known = [] if reference is None else [reference.question] + [p.question for p in heldout + training]
            user = build_request(query, n_total if not known else n_total - len(known), cfg.n_heldout, known)
            raw, completion = self.teacher.complete(SYSTEM_PROMPT, user, parse=parse_reply)
            for k, v in completion.usage.items():
                usage[k] = usage.get(k, 0) + v
            for pair in self._valid(raw):
                key = normalize(pair.question)
                if key in seen:
                    continue
                seen.add(key)
                if reference is None:
                    # The teacher was told to answer the question verbatim first; if it paraphrased it,
                    # its first answer still answers the user's question.
                    reference = QAPair(query, pair.answer)
                    seen.add(normalize(query))
                elif len(heldout) < cfg.n_heldout:
                    heldout.append(pair)
                elif len(training) < cfg.n_pairs:
                    training.append(pair)
            if len(training) < cfg.n_pairs:
                log.info("distill round %d: %d/%d training pairs so far", rounds, len(training), cfg.n_pairs)
        assert completion is not None
        if reference is None or len(training) < cfg.min_pairs:
            raise BadReply(
                f"after {rounds} request(s) the teacher gave only {len(training)} valid training pairs "
                f"(need teacher.distill.min_pairs={cfg.min_pairs}); see the transcript, or lower min_pairs",
                provider=completion.provider,
            )
        if cfg.include_reference_in_training:
            training = [reference, *training]
        return DistillResult(
            query=query,
            reference=reference,
            heldout=heldout,
            pairs=training,
            provider=completion.provider,
            model=completion.model,
            offline=self.teacher.offline,
            rounds=rounds,
            usage=usage,
        )
