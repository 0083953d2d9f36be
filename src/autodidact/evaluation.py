"""Is a generated answer correct? A lenient, explainable check against a short reference answer.

Short factual answers vary in wording ("Ilsabet Quorne, in 1903." vs "It was designed by Ilsabet
Quorne in 1903"), so exact string match is too strict. An answer counts as correct when it contains
every number of the reference and at least ``min_recall`` of its content words (case-folded,
stopwords and punctuation ignored).
"""

from __future__ import annotations

import re

_STOP = frozenset(
    ["a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "by", "with", "from", "is", "was", "were", "are", "be", "been", "it", "its", "it's", "this", "that", "these", "those", "as", "into", "than", "then", "there", "their", "they", "he", "she", "his", "her", "him", "them", "who", "whom", "what", "when", "where", "which", "why", "how", "do", "does", "did", "i", "you", "we", "our", "your", "my", "me", "not", "no", "yes", "so"]
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.casefold()) if w not in _STOP]


def answer_is_correct(prediction: str, reference: str, min_recall: float = 0.75) -> bool:
    ref = content_words(reference)
    if not ref:
        return prediction.strip().casefold() == reference.strip().casefold()
    pred = set(content_words(prediction))
    numbers = [w for w in ref if w.isdigit()]
    if any(n not in pred for n in numbers):
        return False
    recall = sum(w in pred for w in ref) / len(ref)
    return recall >= min_recall


def heldout_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """SQuAD-style exact match and token F1 of ``predictions`` against ``references`` (torchmetrics),
    as shares in [0, 1]. Reported beside the lenient verdict above: exact match says how often the
    skill reproduces the teacher's wording, F1 how much of it, so a drift in answers shows before
    they turn wrong. Empty lists give None for both."""
    if not predictions:
        return {"exact_match": None, "token_f1": None}
    from torchmetrics.functional.text import squad  # imported here: verification is its only user

    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [{"answers": {"answer_start": [0], "text": [r]}, "id": str(i)} for i, r in enumerate(references)]
    scores = squad(preds, target)
    return {"exact_match": round(float(scores["exact_match"]) / 100, 4),
            "token_f1": round(float(scores["f1"]) / 100, 4)}
