"""Which skill answers a query, and how sure we are: a calibrated model over similarity and words.

Each skill carries a routing key: the MiniLM embeddings of its training questions, K_s (n_s, 384),
and the words of those questions (``route_features.Vocab``). For a query q, the ``top_k`` skills by
cosine are scored on five features (``route_features``: best and top-3 cosine, how much of the query
the skill's words cover, how much of the skill's subject the query names, unseen words) and

    z_s     = b + w · f(q, s)                       # fitted logistic model: P(s answers q) = σ(z_s)
    logits  = [z_1 … z_K, 0]                        # 0 = the "no skill" outcome
    p       = softmax(logits)                       # p[-1] = P(no skill)

so with one skill installed p is exactly the fitted probability σ(z), and with many a query must
beat "no skill" on its own merits, not only its rivals. A query is dissonant when the best p is under
``threshold``. A second logistic model on the same features, fitted to say whether the query is about
the same *subject* (another fact about a subject already learned), names the skill a new fact should
join (``RouteResult.subject``).

Both models are fitted on the routing dataset's dev split by ``experiments/calibrate_router.py``,
which writes the weights to ``conf/router/default.yaml`` and reports AUROC, false captures and
rephrasing recall on the test split at 1, 10, 100 and 1000 installed skills (README "Router").
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from autodidact.errors import AutodidactError, ConfigError
from autodidact.inference.encoder import EMBED_DIM, MODEL_NAME, SentenceEncoder, get_encoder
from autodidact.inference.route_features import Vocab, idf_from_df, word_counts, word_features, words
from autodidact.inference.router_config import RouterConfig  # noqa: F401 - re-exported
from autodidact.learning_queue import LearningEvent

log = logging.getLogger(__name__)

NO_SKILL = "<none>"
"""Key of the "no installed skill knows this" outcome in ``RouteResult.probs``."""
MAX_KEY_ROWS = 64
"""Rows kept in a routing key built from questions (more add little and cost card space)."""
_MAX_DECODE_ROWS = 4096  # refuse absurd cards rather than allocate for them
_MAX_WORDS = 20000
_DTYPES = {"float16": np.float16, "float32": np.float32}


class RoutingError(AutodidactError):
    """The router cannot route this query or use this skill."""


class RoutingKeyError(RoutingError):
    """A skill's routing key (the ``routing`` dict in its card) is malformed."""


class EmptyQueryError(RoutingError):
    """An empty or whitespace-only query was routed."""


# -- routing keys: build, and the JSON-safe form that travels in a skill's card ----------------


def routing_key_from_questions(
    questions: Iterable[str], encoder: SentenceEncoder, max_rows: int = MAX_KEY_ROWS
) -> torch.Tensor:
    """Embed a skill's training questions into its routing key, (n <= max_rows, 384) float32.

    With more than ``max_rows`` distinct questions, farthest-point sampling keeps the most varied
    phrasings, since only the best-matching row counts when routing.
    """
    unique = list(dict.fromkeys(q.strip() for q in questions if q and q.strip()))
    if not unique:
        raise RoutingKeyError("A routing key needs at least one non-empty training question.")
    emb = encoder.encode(unique)  # (n, 384)
    if len(unique) <= max_rows:
        return emb
    chosen = [0]
    nearest = emb @ emb[0]  # (n,) similarity to the closest chosen row
    for _ in range(max_rows - 1):
        i = int(torch.argmin(nearest))
        chosen.append(i)
        nearest = torch.maximum(nearest, emb @ emb[i])
    return emb[sorted(chosen)]


def encode_routing_key(
    keys: torch.Tensor | np.ndarray, word_counts: Mapping[str, int] | None = None, n_questions: int | None = None
) -> dict:
    """The JSON-safe ``routing`` dict for a skill card: float16 rows in base64, plus its word counts."""
    arr = _as_key_array(keys)
    d: dict[str, Any] = {
        "encoder": MODEL_NAME,
        "dim": EMBED_DIM,
        "count": int(arr.shape[0]),
        "dtype": "float16",  # half the bytes; cosine error ~1e-3, far below the routing margins
        "data_b64": base64.b64encode(arr.astype("<f2").tobytes()).decode("ascii"),
    }
    if word_counts is not None:
        d["words"] = {str(k): int(v) for k, v in word_counts.items()}
        d["n_questions"] = int(n_questions or max(word_counts.values(), default=1))
    return d


def build_routing(questions: Iterable[str], encoder: SentenceEncoder) -> dict:
    """Routing key and vocabulary for a skill, from its training questions, ready for the card."""
    questions = list(dict.fromkeys(q.strip() for q in questions if q and q.strip()))
    counts, n = word_counts(questions)
    return encode_routing_key(routing_key_from_questions(questions, encoder), counts, n)


def decode_routing_key(d: Mapping[str, Any]) -> torch.Tensor:
    """A card's ``routing`` dict back to a (count, 384) float32 tensor of unit rows."""
    fix = "Re-export the skill so its card gets a fresh routing key."
    if not isinstance(d, Mapping):
        raise RoutingKeyError(f"Routing key must be a dict, got {type(d).__name__}. {fix}")
    missing = [k for k in ("encoder", "dim", "count", "dtype", "data_b64") if k not in d]
    if missing:
        raise RoutingKeyError(f"Routing key lacks {missing}. {fix}")
    if d["encoder"] != MODEL_NAME:
        raise RoutingKeyError(
            f"Routing key was made with encoder {d['encoder']!r}, not {MODEL_NAME!r}. {fix}"
        )
    if d["dim"] != EMBED_DIM:
        raise RoutingKeyError(f"Routing key has dim {d['dim']!r}, expected {EMBED_DIM}. {fix}")
    count = d["count"]
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= _MAX_DECODE_ROWS:
        raise RoutingKeyError(f"Routing key count {count!r} must be an int in 1..{_MAX_DECODE_ROWS}. {fix}")
    if d["dtype"] not in _DTYPES:
        raise RoutingKeyError(f"Routing key dtype {d['dtype']!r} must be one of {sorted(_DTYPES)}. {fix}")
    try:
        raw = base64.b64decode(d["data_b64"], validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise RoutingKeyError(f"Routing key data_b64 is not valid base64 ({e}). {fix}") from e
    dtype = np.dtype(_DTYPES[d["dtype"]]).newbyteorder("<")
    expected = count * EMBED_DIM * dtype.itemsize
    if len(raw) != expected:
        raise RoutingKeyError(
            f"Routing key data is {len(raw)} bytes; count={count} × dim={EMBED_DIM} × {dtype.itemsize} "
            f"needs {expected}. {fix}"
        )
    arr = np.frombuffer(raw, dtype=dtype).reshape(count, EMBED_DIM).astype(np.float32)
    return torch.from_numpy(_as_key_array(arr))


def decode_routing_vocab(d: Mapping[str, Any]) -> Vocab:
    """The vocabulary of a card's ``routing`` dict (``words`` + ``n_questions``; older cards carry
    only ``terms``, their distinctive words, which then stand for the whole vocabulary)."""
    fix = "Re-export the skill so its card gets a fresh routing key."
    counts = d.get("words", d.get("terms"))
    if counts is None:
        return Vocab(frozenset(), frozenset())
    if (not isinstance(counts, Mapping) or len(counts) > _MAX_WORDS or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0 for k, v in counts.items()
    )):
        raise RoutingKeyError(f"Routing key 'words' must map at most {_MAX_WORDS} words to positive counts. {fix}")
    n = d.get("n_questions", max(counts.values(), default=1))
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise RoutingKeyError(f"Routing key 'n_questions' must be a positive int, got {n!r}. {fix}")
    # Stored words are normalised already; normalising again keeps older cards' raw terms comparable.
    normed: dict[str, int] = {}
    for w, c in counts.items():
        for x in words(w) or [w.casefold()]:
            normed[x] = max(normed.get(x, 0), c)
    return Vocab.from_counts(normed, n)


def _as_key_array(keys: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = keys.detach().cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != EMBED_DIM or arr.shape[0] == 0:
        raise RoutingKeyError(
            f"Routing key must be (n >= 1, {EMBED_DIM}) embeddings from {MODEL_NAME}, got shape {arr.shape}."
        )
    arr = arr.astype(np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if not np.all(np.isfinite(arr)) or np.any(norms < 1e-6):
        raise RoutingKeyError("Routing key has NaN/inf or all-zero rows; rebuild it from the questions.")
    return arr / norms  # unit rows again (float16 storage nudges the norms)


# -- the router -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteResult:
    """How one query routes."""

    query: str
    """The routed text (truncated if it was over ``max_query_chars``)."""
    probs: dict[str, float]
    """Probability per installed skill plus ``NO_SKILL``; sums to 1."""
    best_skill: str | None
    """Most probable installed skill (even if unlikely); None when no skill is installed."""
    confidence: float
    """``probs[best_skill]``, or 0.0 with no skills."""
    selected: str | None
    """``best_skill`` if ``confidence >= threshold``, else None: the skill that should answer."""
    scores: dict[str, float] = field(repr=False)
    """Fact-model logit per scored skill (what the softmax saw)."""
    similarity: dict[str, float] = field(repr=False)
    """Best raw cosine per skill."""
    subject: str | None = None
    """The skill whose subject the query is about (same-subject model), None if none is."""
    subject_prob: float = 0.0
    """The same-subject model's probability for ``subject`` (or for the best candidate)."""
    truncated: bool = False
    """Whether the query was cut to ``max_query_chars``."""

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable outcomes, ``NO_SKILL`` included."""
        return sorted(self.probs.items(), key=lambda kv: -kv[1])[:k]


@dataclass(frozen=True)
class _Index:
    # Immutable, swapped whole on add/remove, so route() reads it without a lock.
    names: tuple[str, ...] = ()
    # (R, 384) float16: every skill's key rows, at the precision its card stores them. A query is one
    # matrix-vector product over them, bound by memory at 1000 skills (23k rows): float16 rows read
    # half the bytes and took 1.0 ms where fp32 took 2.7 ms on this CPU (its float16 kernel
    # accumulates in fp32: a cosine moves by at most ~1e-4).
    keys: torch.Tensor = field(default_factory=lambda: torch.empty(0, EMBED_DIM, dtype=torch.float16))
    owner: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))  # (R,) skill idx
    start: tuple[int, ...] = ()  # first key row of each skill
    vocabs: tuple[Vocab, ...] = ()
    idf: dict[str, float] = field(default_factory=dict)
    unseen_idf: float = 1.0


@dataclass(frozen=True)
class Candidate:
    """One scored (query, skill) pair: what the fitted models see."""

    skill: str
    features: tuple[float, ...]


class LoRARouter:
    """Scores queries against every installed skill's routing key; see the module docstring."""

    def __init__(self, config: RouterConfig | None = None, encoder: SentenceEncoder | None = None) -> None:
        """``encoder`` defaults to the process-wide MiniLM (``config.encoder_path``), loaded lazily."""
        self.config = config or RouterConfig()
        self._encoder = encoder
        # name -> (its key rows, (n, 384) float16, contiguous; its vocabulary)
        self._skills: dict[str, tuple[torch.Tensor, Vocab]] = {}
        self._index = _Index()
        self._keys_buf: torch.Tensor | None = None  # (capacity, 384): keys is a view of its first rows
        self._owner_buf: torch.Tensor | None = None  # (capacity,)
        self._df: Counter[str] = Counter()  # word -> installed skills using it (for the IDF)
        self._lock = threading.Lock()
        self._w = torch.tensor(self.config.weights)
        self._ws = torch.tensor(self.config.subject_weights)

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            self._encoder = get_encoder(Path(self.config.encoder_path) if self.config.encoder_path else None)
        return self._encoder

    @property
    def skills(self) -> list[str]:
        """Installed skill names, in installation order."""
        return list(self._index.names)

    def add_skill(
        self,
        name: str,
        keys: torch.Tensor | np.ndarray | Mapping[str, Any],
        vocab: Vocab | None = None,
    ) -> None:
        """Install (or replace) a skill's routing key: a card's ``routing`` dict, or embeddings and a Vocab."""
        if not name or name == NO_SKILL:
            raise RoutingError(f"Skill name {name!r} is reserved or empty; give the skill a real name.")
        if isinstance(keys, Mapping):
            vocab = decode_routing_vocab(keys) if vocab is None else vocab
            key = decode_routing_key(keys)
        else:
            key = torch.from_numpy(_as_key_array(keys))
        entry = (key.to(torch.float16).contiguous(), vocab or Vocab(frozenset(), frozenset()))
        with self._lock:
            new = name not in self._skills
            self._skills[name] = entry
            if new:
                self._append(name, *entry)
            else:
                self._rebuild()

    def add_skills(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Install many skills from routing dicts with one index rebuild (start-up, benchmarks)."""
        decoded = [(n, decode_routing_key(d), decode_routing_vocab(d)) for n, d in items]
        with self._lock:
            for n, k, v in decoded:
                self._skills[n] = (k.to(torch.float16).contiguous(), v)
            self._rebuild()

    def remove_skill(self, name: str) -> None:
        """Uninstall a skill; RoutingError if it is not installed."""
        with self._lock:
            if name not in self._skills:
                raise RoutingError(f"No skill {name!r} is installed; installed: {sorted(self._skills)}.")
            del self._skills[name]
            self._rebuild()

    # The index's key matrix and owner vector are views into buffers with spare rows, so a new skill
    # (a hot-load) is written into the free rows in place: the rows already there are never copied.
    # Snapshots taken before read only the rows they had, which an append never touches. A removal or
    # a replacement builds fresh buffers (older snapshots keep the old ones). Copying the whole matrix
    # on each hot-load cost 5-13 ms at 100 skills and 105-190 ms at 1000 on this CPU, mostly page faults.

    def _rebuild(self) -> None:
        # Built aside and published with one assignment: a concurrent route() sees the old index or
        # the new one, never a half-built one.
        names = tuple(self._skills)
        self._df = Counter()
        if not names:
            self._index, self._keys_buf, self._owner_buf = _Index(), None, None
            return
        rows = sum(self._skills[n][0].shape[0] for n in names)
        self._keys_buf = torch.empty(max(2 * rows, 256), EMBED_DIM, dtype=torch.float16)
        self._owner_buf = torch.empty(self._keys_buf.shape[0], dtype=torch.long)
        index = _Index()
        for n in names:
            index = self._appended(index, n, *self._skills[n])
        self._index = self._with_idf(index)

    def _append(self, name: str, key: torch.Tensor, vocab: Vocab) -> None:
        index, n = self._index, key.shape[0]
        rows = index.keys.shape[0]
        if self._keys_buf is None or rows + n > self._keys_buf.shape[0]:
            self._rebuild()  # no room (or no buffer yet): fresh buffers with room to spare; holds ``name``
            return
        self._index = self._with_idf(self._appended(index, name, key, vocab))

    def _appended(self, index: _Index, name: str, key: torch.Tensor, vocab: Vocab) -> _Index:
        """``index`` plus one skill, its rows written into the buffers' next free rows."""
        rows, n = index.keys.shape[0], key.shape[0]
        self._keys_buf[rows : rows + n] = key
        self._owner_buf[rows : rows + n] = len(index.names)
        self._df.update(vocab.words)
        return _Index(
            names=(*index.names, name),
            keys=self._keys_buf[: rows + n],
            owner=self._owner_buf[: rows + n],
            start=(*index.start, rows),
            vocabs=(*index.vocabs, vocab),
        )

    def _with_idf(self, index: _Index) -> _Index:
        idf, unseen = idf_from_df(self._df, len(index.names))
        return replace(index, idf=idf, unseen_idf=unseen)

    def route(self, query: str) -> RouteResult:
        """Route one query; EmptyQueryError if it is blank."""
        return self.route_batch([query])[0]

    @torch.inference_mode()
    def candidates(self, queries: Sequence[str]) -> list[list[Candidate]]:
        """For each query, its ``top_k`` skills by cosine with their features (what the models score)."""
        texts = [self._prepare(q)[0] for q in queries]
        return self._candidates(texts, self._index, self._encode(texts))[0]

    def _candidates(self, texts, index: _Index, q: torch.Tensor):
        B, S = q.shape[0], len(index.names)
        if not S:
            return [[] for _ in texts], torch.empty(B, 0)
        qh = q.to(torch.float16)
        rows = torch.stack([torch.mv(index.keys, qh[b]) for b in range(B)]).float()  # (B, R) cosine to every row
        sim = torch.full((B, S), -1.0).scatter_reduce(1, index.owner.expand(B, -1), rows, reduce="amax")  # (B, S)
        k = min(self.config.top_k, S)
        top = sim.topk(k, dim=1).indices.tolist()  # (B, k)
        # Per-candidate slices in numpy: 16 tiny torch ops per query cost more than the arithmetic.
        cos = rows.numpy()
        out = []
        for b, text in enumerate(texts):
            qw = words(text)
            row = []
            for s in top[b]:
                lo = index.start[s]
                hi = index.start[s + 1] if s + 1 < S else cos.shape[1]
                seg = cos[b, lo:hi]
                best = np.partition(seg, hi - lo - 3)[-3:] if hi - lo > 3 else seg  # the (<=3) best rows
                q_cov, s_cov, miss = word_features(qw, index.vocabs[s], index.idf, index.unseen_idf)
                row.append(Candidate(index.names[s], (float(best.max()), float(best.mean()), q_cov, s_cov, miss)))
            out.append(row)
        return out, sim

    @torch.inference_mode()
    def route_batch(self, queries: list[str]) -> list[RouteResult]:
        """Route many queries with one encoder call."""
        if not queries:
            return []
        cfg, index = self.config, self._index  # one snapshot for the whole batch
        texts, cut = zip(*(self._prepare(q) for q in queries), strict=True)
        q = self._encode(texts)  # (B, 384)
        cands, sim = self._candidates(texts, index, q)
        out = []
        for b, text in enumerate(texts):
            names = [c.skill for c in cands[b]]
            probs = dict.fromkeys(index.names, 0.0)
            scores: dict[str, float] = {}
            best = conf = subject = None
            subject_prob = 0.0
            if names:
                f = torch.tensor([c.features for c in cands[b]])  # (k, F)
                z = cfg.bias + f @ self._w  # (k,)
                p = torch.softmax(torch.cat([z, torch.zeros(1)]), dim=0)  # (k+1,): last = no skill
                for n, zi, pi in zip(names, z.tolist(), p[:-1].tolist(), strict=True):
                    scores[n], probs[n] = zi, pi
                probs[NO_SKILL] = float(p[-1])
                i = int(p[:-1].argmax())
                best, conf = names[i], float(p[i])
                ps = torch.sigmoid(cfg.subject_bias + f @ self._ws)  # (k,)
                j = int(ps.argmax())
                subject_prob = float(ps[j])
                subject = names[j] if subject_prob >= 0.5 else None
            else:
                probs[NO_SKILL] = 1.0
            out.append(
                RouteResult(
                    query=text,
                    probs=probs,
                    best_skill=best,
                    confidence=conf or 0.0,
                    selected=best if (conf or 0.0) >= cfg.threshold else None,
                    scores=scores,
                    similarity=dict(zip(index.names, sim[b].tolist(), strict=True)) if index.names else {},
                    subject=subject,
                    subject_prob=subject_prob,
                    truncated=cut[b],
                )
            )
        return out

    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        # Queries take MiniLM's int8 path (router.encoder_int8): routing is the per-query hot path.
        # Keys, built once per skill from its training questions, stay fp32 (routing_key_from_questions).
        return self.encoder.encode(list(texts), int8=self.config.encoder_int8)

    def _prepare(self, query: str) -> tuple[str, bool]:
        if not isinstance(query, str) or not query.strip():
            raise EmptyQueryError(f"Cannot route an empty query ({query!r}); ask a question with some text.")
        text = clean_query(query)
        if not any(c.isalnum() for c in text):
            raise EmptyQueryError(f"The query {query[:80]!r} has no words to route; ask a question with some text.")
        limit = self.config.max_query_chars
        if len(text) <= limit:
            return text, False
        log.warning("Query of %d chars truncated to router.max_query_chars=%d for routing.", len(text), limit)
        cut = text[:limit]
        return (cut.rsplit(None, 1)[0] if " " in cut[limit // 2 :] else cut), True


def clean_query(query: str) -> str:
    """NFC text with control and format characters (NUL, escapes, zero-width, bidi overrides) turned into
    spaces and whitespace collapsed: what reaches the event, the teacher and the model."""
    text = unicodedata.normalize("NFC", query)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)
    return " ".join(text.split())


class _Queue(Protocol):
    def put(self, event: LearningEvent) -> Any: ...


class DissonanceDetector:
    """The one place that decides dissonance; turns it into learning events on a queue.

    A query is dissonant when no skill is confident enough (best routing probability under
    ``threshold``) or, when one is, when that skill's own answer is weak (its lowest token
    probability under ``answer_threshold``): a new fact about a subject already learned.
    """

    def __init__(
        self, queue: _Queue, threshold: float = 0.4, top_k: int = 3, answer_threshold: float = 0.0
    ) -> None:
        """``threshold``: an event fires when the best real skill's probability is below it."""
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"Dissonance threshold {threshold} must be in (0, 1); see router.threshold.")
        if not 0.0 <= answer_threshold < 1.0:
            raise ConfigError(f"answer_threshold {answer_threshold} must be in [0, 1); see router.answer_threshold.")
        self.queue = queue
        self.threshold = threshold
        self.answer_threshold = answer_threshold
        self.top_k = top_k

    def selected(self, result: RouteResult) -> str | None:
        """The skill that should answer, or None when routing alone is dissonant."""
        if result.best_skill is not None and result.confidence >= self.threshold:
            return result.best_skill
        return None

    def weak_answer(self, answer_confidence: float | None) -> bool:
        """Whether a routed skill's answer is too unsure to trust."""
        return answer_confidence is not None and answer_confidence < self.answer_threshold

    def check(
        self, result: RouteResult, answer_confidence: float | None = None, base_answer: dict | None = None
    ) -> LearningEvent | None:
        """Queue and return a LearningEvent if ``result`` (and the answer's confidence) is dissonant.

        ``base_answer`` (``{"text", "max_new_tokens"}``): the base model's greedy answer to this very
        query, when the caller already has it; the factory then need not generate it again to see
        whether the base model already knows the fact.
        """
        skill = self.selected(result)
        if skill is not None and not self.weak_answer(answer_confidence):
            return None
        # The skill the new fact should join: the routed one when only its answer was weak, else the
        # one whose subject the query names (if any).
        join = skill if skill is not None else result.subject
        event = LearningEvent(
            query=result.query,
            best_skill=result.best_skill,
            confidence=result.confidence,
            extra={"top": [list(kv) for kv in result.top(self.top_k)], "truncated": result.truncated,
                   "join": join, "answer_confidence": answer_confidence,
                   "reason": "weak answer" if skill is not None else "no confident skill"}
            | ({"base_answer": base_answer} if base_answer is not None else {}),
        )
        self.queue.put(event)
        return event
