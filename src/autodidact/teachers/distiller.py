"""``CloudDistiller``: turn one question the local model could not answer into QA pairs to learn from.

The teacher is asked for one JSON object ``{"pairs": [{"question": ..., "answer": ...}, ...]}``: the
question with its short answer, rephrasings of it, and closely related questions about the same fact.
Where the provider offers it, native structured output enforces that shape (``PAIRS_SCHEMA``);
otherwise the reply is read as plain text, with or without a code fence or prose around it.

Nothing depends on the order or the count the teacher chose (real models return fewer pairs than
asked, in their own order, with the user's question paraphrased):

* Pairs are validated (both strings, non-empty, under length caps); near-duplicates are removed by
  meaning (MiniLM cosine >= ``near_duplicate``), not only by exact text.
* The *reference* answer is chosen by meaning: among the pairs whose question means the same as the
  user's (cosine >= ``paraphrase_min``), the answer most of them agree on. If no pair asks the user's
  question, the teacher is asked for that one answer on its own.
* *Held-out* pairs (never trained on; verification) are other rephrasings of the user's question that
  agree with the reference: about a fifth of what came back (at least 1, at most ``n_heldout``).
* Training proceeds with whatever is left if that is at least ``min_pairs``; the teacher is asked
  again only while fewer than half of ``n_pairs`` training pairs came back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import string
from dataclasses import asdict, dataclass, field

import torch

from autodidact.data import QAPair
from autodidact.errors import ConfigError
from autodidact.evaluation import answer_is_correct
from autodidact.teachers.errors import BadReply, excerpt, scrub
from autodidact.teachers.failover import FailoverChain
from autodidact.teachers.providers import Completion
from autodidact.teachers.settings import DistillConfig

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a teacher writing flashcards for a small language model that must learn one fact. "
    "Reply with exactly one JSON object and nothing else, of the form "
    '{"pairs": [{"question": "...", "answer": "..."}, ...]}. '
    "Every answer is short (under 12 words) and states the key fact itself (names, numbers, dates)."
)
QUESTION_OPEN, QUESTION_CLOSE = "<question>", "</question>"

PAIRS_SCHEMA: dict = {
    "title": "qa_pairs",
    "description": "Question-answer flashcards that teach one fact.",
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["pairs"],
    "additionalProperties": False,
}
"""What the teacher must return; providers with structured output enforce it natively."""


@dataclass
class DistillResult:
    """What one distillation produced, split by purpose."""

    query: str
    """The user's question, verbatim."""
    reference: QAPair
    """The user's question with the teacher's reference answer."""
    heldout: list[QAPair]
    """Rephrasings with answers, never trained on: for verification."""
    pairs: list[QAPair]
    """Training pairs."""
    provider: str
    """Which provider gave the (last) reply."""
    model: str
    """That provider's model."""
    offline: bool = False
    """True when the pairs are the offline demo pack's fictional facts, not a cloud model's."""
    rounds: int = 1
    """How many requests it took (the reference-only request included)."""
    usage: dict[str, int] = field(default_factory=dict)
    """Token usage summed over the rounds."""
    reference_from: str = "pairs"
    """``pairs``: the agreed answer of the pairs asking the user's question; ``asked``: asked on its own."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Pairs discarded, by reason (invalid, duplicate, near_duplicate)."""

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
        "Include the question above with its correct short answer, at least "
        f"{max(n_heldout, 1) + 2} rephrasings of it with the same answer, and closely related questions "
        "(who, when, where, what) about the same fact, each answer short and containing the key facts.",
    ]
    if known:
        lines += ["", "You already gave these questions; do not repeat them, write new ones:"]
        lines += [f"- {q}" for q in known]
    return "\n".join(lines)


def build_answer_request(query: str) -> str:
    """The user message asking for the answer to the user's question alone (one pair)."""
    return "\n".join([
        "Answer this question correctly and briefly:",
        QUESTION_OPEN,
        query,
        QUESTION_CLOSE,
        "",
        'Reply with one JSON object {"pairs": [{"question": "...", "answer": "..."}]} holding exactly one '
        "pair: the question above, verbatim, and its short answer (under 12 words, with the key facts).",
    ])


def extract_question(user: str) -> str:
    """The question inside ``<question>`` tags of a distiller request (the whole text if untagged)."""
    start = user.find(QUESTION_OPEN)
    end = user.find(QUESTION_CLOSE, start + 1)
    if start < 0 or end < 0:
        return user.strip()
    return user[start + len(QUESTION_OPEN) : end].strip()


_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


def _json_values(text: str):
    """``(value, whole)`` for every JSON value in ``text``: a fenced block and the whole text
    (``whole=True``), then each object that starts somewhere inside prose."""
    decoder = json.JSONDecoder()
    fenced = _FENCE.search(text)
    candidates = ([fenced.group(1).strip()] if fenced else []) + [text]
    for candidate in candidates:
        with contextlib.suppress(json.JSONDecodeError):
            yield json.loads(candidate), True
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                yield decoder.raw_decode(text, i)[0], False
            except json.JSONDecodeError:
                continue


def parse_reply(completion: Completion) -> list:
    """The raw ``pairs`` list from a reply; raises ``BadReply`` when no such JSON is in it.

    Accepts ``{"pairs": [...]}`` anywhere in the text (prose or a code fence around it) and, as
    some models answer, a reply that is only a JSON list of pair objects.
    """
    text = completion.text.strip()
    seen_json = None
    for value, whole in _json_values(text):
        if isinstance(value, dict) and isinstance(value.get("pairs"), list):
            return value["pairs"]
        if whole and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return value
        if seen_json is None:
            seen_json = value
    if seen_json is None:
        raise BadReply(f"reply is not JSON: {excerpt(text, 120)!r}", provider=completion.provider)
    raise BadReply(
        f'reply is JSON but not {{"pairs": [...]}} (got {type(seen_json).__name__} '
        f"with keys {sorted(seen_json)[:5] if isinstance(seen_json, dict) else '-'})",
        provider=completion.provider,
    )


def normalize(question: str) -> str:
    """Comparison key for duplicates: case, punctuation and spacing ignored."""
    table = str.maketrans("", "", string.punctuation + "\u2019\u2018\u201c\u201d")
    return " ".join(question.casefold().translate(table).split())


# Words whose presence or absence does not change what a question asks. Question words are NOT here:
# "By whom was X built?" and "In what year was X built?" sit at cosine 0.98 and are different questions.
_FILLER = frozenset(["a", "an", "the", "of", "on", "in", "at", "to", "for", "is", "are", "was", "were", "be", "been", "it", "its", "this", "that", "s"])


def same_words(a: str, b: str) -> bool:
    """The two questions use the same words, filler aside (``near_duplicate``'s lexical half)."""
    return set(normalize(a).split()) - _FILLER == set(normalize(b).split()) - _FILLER


def answers_agree(a: str, b: str) -> bool:
    """Two short answers state the same fact (either one contains the other's key words)."""
    return answer_is_correct(a, b) or answer_is_correct(b, a)


@dataclass
class Split:
    """The pairs a teacher gave, sorted by purpose (see ``split_pairs``)."""

    reference: QAPair | None
    heldout: list[QAPair]
    training: list[QAPair]


def split_pairs(
    query: str, pairs: list[QAPair], similarity: list[float], paraphrase_min: float, n_heldout: int
) -> Split:
    """Reference, held-out and training pairs, by meaning and agreement, never by position.

    ``similarity[i]`` is the cosine between ``query`` and ``pairs[i].question``.
    """
    same = [i for i, s in enumerate(similarity) if s >= paraphrase_min]
    reference = None
    if same:
        # The answer the rephrasings agree on, weighted by how close each is to the user's question:
        # one odd pair (a related question that slipped over the cosine line) cannot outvote them.
        support = {i: sum(similarity[j] for j in same if answers_agree(pairs[i].answer, pairs[j].answer))
                   for i in same}
        best = max(same, key=lambda i: (support[i], similarity[i]))
        reference = QAPair(query, pairs[best].answer)
    key = normalize(query)
    pool = [i for i in range(len(pairs)) if normalize(pairs[i].question) != key]
    if reference is None:
        return Split(None, [], [pairs[i] for i in pool])
    rephrasings = sorted(
        (i for i in pool if similarity[i] >= paraphrase_min and answers_agree(pairs[i].answer, reference.answer)),
        key=lambda i: -similarity[i],
    )
    k = min(n_heldout, max(1, round(len(pool) / 5)), len(rephrasings)) if n_heldout else 0
    # Every other rephrasing from the second closest on: the closest stays in training, and the
    # held-out set spans near and far wordings instead of only the easiest ones.
    order = rephrasings[1::2] + rephrasings[0::2]
    held = set(order[:k])
    return Split(
        reference,
        [pairs[i] for i in rephrasings if i in held],
        [pairs[i] for i in pool if i not in held],
    )


class CloudDistiller:
    """Ask a teacher for QA pairs on a question; keep a reference, held-out rephrasings and training pairs."""

    def __init__(self, teacher: FailoverChain, config: DistillConfig | None = None, encoder=None) -> None:
        """``encoder``: the MiniLM ``SentenceEncoder`` that judges meaning (default: the shared one)."""
        self.teacher = teacher
        self.config = config or DistillConfig()
        self.config.validate()
        self._encoder = encoder

    @property
    def encoder(self):
        if self._encoder is None:
            from autodidact.inference.encoder import get_encoder

            self._encoder = get_encoder()
        return self._encoder

    def _valid(self, raw: list, dropped: dict[str, int]) -> list[QAPair]:
        cfg, out = self.config, []
        for item in raw:
            q = item.get("question") if isinstance(item, dict) else None
            a = item.get("answer") if isinstance(item, dict) else None
            if not isinstance(q, str) or not isinstance(a, str):
                dropped["invalid"] = dropped.get("invalid", 0) + 1
                continue
            q, a = " ".join(q.split()), " ".join(a.split())
            if scrub(q) != q or scrub(a) != a:
                # A pair repeating an API key would be trained into a card and kept in its metadata,
                # pairs.jsonl and the record: such a pair is never learned.
                dropped["holds_a_key"] = dropped.get("holds_a_key", 0) + 1
                continue
            if q and a and len(q) <= cfg.max_question_chars and len(a) <= cfg.max_answer_chars:
                out.append(QAPair(q, a))
            else:
                dropped["invalid"] = dropped.get("invalid", 0) + 1
        return out

    def _ask(self, user: str, usage: dict[str, int]) -> tuple[list, Completion]:
        raw, completion = self.teacher.complete(SYSTEM_PROMPT, user, parse=parse_reply, schema=PAIRS_SCHEMA)
        for k, v in completion.usage.items():
            usage[k] = usage.get(k, 0) + v
        return raw, completion

    def distill(self, query: str) -> DistillResult:
        """Ask until enough training pairs (or ``max_rounds``); raises ``TeacherError`` if too few."""
        query = query.strip()
        if not query:
            raise ConfigError("the question is empty: pass query=\"...\"")
        cfg = self.config
        n_total = cfg.n_pairs + cfg.n_heldout + 1
        q_emb = self.encoder.encode([query])[0]  # (384,)
        kept: list[QAPair] = []
        kept_emb = torch.empty(0, q_emb.shape[0])  # (n, 384)
        seen: set[str] = set()
        dropped: dict[str, int] = {}
        usage: dict[str, int] = {}
        completion: Completion | None = None
        rounds = 0
        split = Split(None, [], [])
        while rounds < cfg.max_rounds:
            rounds += 1
            known = [p.question for p in kept]
            user = build_request(query, max(n_total - len(known), cfg.min_pairs), cfg.n_heldout, known)
            raw, completion = self._ask(user, usage)
            fresh = []
            for pair in self._valid(raw, dropped):
                key = normalize(pair.question)
                if key in seen:
                    dropped["duplicate"] = dropped.get("duplicate", 0) + 1
                    continue
                seen.add(key)
                fresh.append(pair)
            if fresh:
                emb = self.encoder.encode([p.question for p in fresh])  # (m, 384)
                for pair, e in zip(fresh, emb, strict=True):
                    close = (kept_emb @ e >= cfg.near_duplicate).nonzero().flatten().tolist() if kept else []
                    if any(same_words(pair.question, kept[i].question) for i in close):
                        dropped["near_duplicate"] = dropped.get("near_duplicate", 0) + 1
                        continue
                    kept.append(pair)
                    kept_emb = torch.cat([kept_emb, e[None]])
            split = split_pairs(query, kept, (kept_emb @ q_emb).tolist(), cfg.paraphrase_min, cfg.n_heldout)
            if len(split.training) >= max(cfg.min_pairs, cfg.n_pairs // 2):
                break
            log.info("distill round %d: %d training pairs so far (asking again below %d)", rounds,
                     len(split.training), max(cfg.min_pairs, cfg.n_pairs // 2))
        assert completion is not None
        if len(split.training) < cfg.min_pairs:
            raise BadReply(
                f"after {rounds} request(s) the teacher gave only {len(split.training)} usable training pairs "
                f"(need teacher.distill.min_pairs={cfg.min_pairs}; dropped: {dropped or 'none'}); "
                "see the transcript, or lower min_pairs",
                provider=completion.provider,
            )
        reference, reference_from = split.reference, "pairs"
        if reference is None:
            reference, completion = self._ask_reference(query, usage)
            rounds += 1
            reference_from = "asked"
        training = split.training[: cfg.n_pairs]  # bounded: training time grows with every pair
        if cfg.include_reference_in_training:
            training = [reference, *training]
        log.info("distilled %d training + %d held-out pairs in %d request(s); reference from %s: %r",
                 len(training), len(split.heldout), rounds, reference_from, reference.answer)
        return DistillResult(
            query=query,
            reference=reference,
            heldout=split.heldout,
            pairs=training,
            provider=completion.provider,
            model=completion.model,
            offline=self.teacher.offline,
            rounds=rounds,
            usage=usage,
            reference_from=reference_from,
            dropped=dropped,
        )

    def _ask_reference(self, query: str, usage: dict[str, int]) -> tuple[QAPair, Completion]:
        """No pair asked the user's question: ask for its answer on its own."""
        raw, completion = self._ask(build_answer_request(query), usage)
        answers = self._valid(raw, {})
        if not answers:
            raise BadReply("asked for the answer to the question alone, the teacher gave no valid pair",
                           provider=completion.provider)
        if len(answers) > 1:  # a chatty teacher: take the pair that asks the user's question
            sims = (self.encoder.encode([p.question for p in answers]) @ self.encoder.encode([query])[0]).tolist()
            answers = [answers[max(range(len(answers)), key=sims.__getitem__)]]
        return QAPair(query, answers[0].answer), completion
