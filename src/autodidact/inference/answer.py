"""An answer and how sure the model is of it: greedy decoding that keeps each token's probability.

The router says which skill a question is about; only the skill can say whether it knows *this*
fact. A skill asked about a detail it never learned ("the ferry's cook" after "the ferry's captain")
tends to hesitate somewhere in its answer, so the lowest probability the model gave any token of its
own greedy answer is the signal (``DissonanceDetector.answer_threshold``): a learned answer is
reproduced with every token near 1, an unlearned one has a weak token where it guesses.

Checking an expected answer costs one forward pass, not one per token. Verification asks a freshly
trained skill questions whose answers it was taught, so the caller usually knows what greedy decoding
*should* produce. ``drafts`` passes that guess: prompt and draft go through the model together, and
the greedy answer keeps the draft's tokens for as long as each is the model's own argmax, plus the
model's choice at the first one that is not (speculative decoding, Leviathan et al. 2023, with the
expected answer as the draft model). Only what remains is decoded token by token. The result is the
greedy answer either way; a wrong draft costs one extra forward pass. Decoding is bound by reading
the weights (SmolLM2 in fp32: ~100 ms a token here for any handful of rows). Measured on this 2-core
CPU with a trained SmolLM2 skill: one question and its taught answer, 0.28 s against 1.55 s decoded;
a question and four rephrasings with their expected answers and the training answers as the pool,
1.33 s against 3.23 s (all answers identical).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from autodidact.data import answer_ids, end_of_turn_id, prompt_ids
from autodidact.inference.generate import torch_threads


@dataclass(frozen=True)
class Answer:
    """A greedy answer with its token probabilities."""

    text: str
    min_prob: float
    """Lowest probability of any generated token (end-of-turn included): the confidence signal."""
    mean_prob: float
    """Mean token probability, for the record."""


def answer_with_confidence(
    model: torch.nn.Module, tokenizer, question: str, max_new_tokens: int = 48, threads: int | None = 1,
    draft: str | None = None, pool: Sequence[str] = (),
) -> Answer:
    """Greedy answer to ``question`` with whatever adapter is active, and its token probabilities."""
    return answers_with_confidence(model, tokenizer, [question], max_new_tokens, threads, [draft], pool)[0]


def draft_pool(answers: Iterable[str | None]) -> list[str]:
    """Taught answers as a ``pool``: each distinct non-empty answer once, the most often taught first
    (a paraphrased question's answer is most likely the answer the skill was taught most)."""
    counts = Counter(a for a in answers if isinstance(a, str) and a.strip())
    return [a for a, _ in counts.most_common()]


def draftable(model: torch.nn.Module) -> bool:
    """Greedy decoding here is the plain argmax of the logits: no generation-config processor
    (repetition penalty, banned n-grams or words, forced or minimum tokens) changes a choice, so a
    forward pass over a draft sees exactly what decoding would pick."""
    g = getattr(model, "generation_config", None)
    if g is None:
        return True
    return (getattr(g, "repetition_penalty", None) in (None, 1.0)
            and not getattr(g, "no_repeat_ngram_size", None)
            and not getattr(g, "encoder_no_repeat_ngram_size", None)
            and not getattr(g, "bad_words_ids", None)
            and not getattr(g, "sequence_bias", None)
            and not getattr(g, "suppress_tokens", None)
            and not getattr(g, "begin_suppress_tokens", None)
            and getattr(g, "forced_bos_token_id", None) is None
            and getattr(g, "forced_eos_token_id", None) is None
            and not getattr(g, "min_new_tokens", None)
            and not getattr(g, "min_length", None))


DRAFT_ROUNDS = 3
"""Forward passes spent on drafts before the rest is decoded token by token. A pass over one row costs
about what 2-3 decode steps do here, over five rows 5-6, so a draft must save more than that to pay."""


@torch.no_grad()
def answers_with_confidence(
    model: torch.nn.Module, tokenizer, questions: list[str], max_new_tokens: int = 48, threads: int | None = 1,
    drafts: Sequence[str | None] | None = None, pool: Sequence[str] = (),
) -> list[Answer]:
    """Greedy answers to several questions in one batch (prompts left-padded), each with its token
    probabilities.

    On a CPU a decode step of a 135M model costs about the same for one row as for a handful (it is
    bound by reading the weights), so verifying a question and its rephrasings together takes about
    as long as the longest answer alone.

    ``drafts[i]``: the answer expected for ``questions[i]`` (or None); ``pool``: other answers the
    model was taught (a skill's training answers). Each is checked in one forward pass (module
    docstring). Where the model parts from its draft, the next draft is a pool answer that begins with
    what it has said so far ("Ilsabet Quorne," then ", in 1903." rather than " designed it in 1903."),
    for up to ``DRAFT_ROUNDS`` passes; what no draft covers is decoded. The answers are the same with
    or without drafts, up to floating-point rounding between one pass and token-by-token decoding.
    """
    if not questions:
        return []
    drafts = list(drafts) if drafts is not None else [None] * len(questions)
    if len(drafts) != len(questions):
        raise ValueError(f"{len(drafts)} drafts for {len(questions)} questions")
    was_training = model.training
    model.eval()
    eot = end_of_turn_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    kept: list[list[int]] = [[] for _ in questions]  # answer tokens settled so far, per question
    probs: list[list[float]] = [[] for _ in questions]
    finished = [False] * len(questions)
    try:
        with torch_threads(threads):
            if max_new_tokens > 0 and draftable(model) and (pool or any(drafts)):
                _settle_drafts(model, tokenizer, prompts, drafts, pool, max_new_tokens, pad, eot, kept, probs, finished)
            rest = [i for i in range(len(questions)) if not finished[i]]
            if rest:
                budget = max(max_new_tokens - len(kept[i]) for i in rest)
                for i, (toks, ps) in zip(rest, _decode(model, [prompts[i] + kept[i] for i in rest], budget, pad, eot),
                                         strict=True):
                    room = max_new_tokens - len(kept[i])  # rows past their own budget are cut there
                    kept[i] += toks[:room]
                    probs[i] += ps[:room]
    finally:
        model.train(was_training)
    answers = []
    for toks, ps in zip(kept, probs, strict=True):
        text = tokenizer.decode(toks, skip_special_tokens=True).strip()
        answers.append(Answer(text, min(ps), sum(ps) / len(ps)) if ps else Answer(text, 0.0, 0.0))
    return answers


def _settle_drafts(model, tokenizer, prompts, drafts, pool, max_new_tokens, pad, eot, kept, probs, finished) -> None:
    """Up to ``DRAFT_ROUNDS`` passes over the rows that have a draft consistent with what they have said;
    fills ``kept``/``probs`` with each row's greedy prefix and marks the rows that are done."""

    def ids(text: str) -> list[int]:  # the tokens training taught, cut to the budget
        return answer_ids(tokenizer, text)[:max_new_tokens]

    own = [ids(d) if d else None for d in drafts]
    shared = [ids(text) for text in dict.fromkeys(t for t in pool if t)]
    tried: list[set[tuple[int, ...]]] = [set() for _ in prompts]
    stuck = [False] * len(prompts)
    for _ in range(DRAFT_ROUNDS):
        batch = []
        for i in range(len(prompts)):
            if finished[i] or stuck[i]:
                continue
            k = kept[i]
            for cand in ([own[i]] if own[i] else []) + shared:
                if len(cand) > len(k) and cand[: len(k)] == k and tuple(cand) not in tried[i]:
                    tried[i].add(tuple(cand))
                    batch.append((i, cand))
                    break
        if not batch:
            return
        checked = _check_drafts(model, [prompts[i] for i, _ in batch], [c for _, c in batch], pad)
        for (i, _), (toks, ps) in zip(batch, checked, strict=True):
            # A row that parted from a second draft at its first new token is saying something no
            # draft holds: decoding it costs less than trying the rest of the pool.
            stuck[i] = len(tried[i]) > 1 and len(toks) <= len(kept[i]) + 1
            kept[i], probs[i] = toks, ps
            finished[i] = toks[-1] == eot or len(toks) >= max_new_tokens


@torch.no_grad()
def _check_drafts(model, prompts: list[list[int]], drafts: list[list[int]], pad: int) -> list[tuple[list[int], list[float]]]:
    """One forward pass over each prompt + draft: the draft's leading tokens that are the model's own
    greedy choices, then the model's choice where they part (if they do), with their probabilities.

    Rows are left-padded so every draft ends at the last position; positions count from each row's
    first real token, as ``generate`` numbers them, and only the last ``D + 1`` positions go through
    the output head (``D``: the longest draft).
    """
    ids, mask = _left_padded([p + d for p, d in zip(prompts, drafts, strict=True)], pad)  # (B, T) each
    longest = max(map(len, drafts))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=longest + 1).logits  # (B, D+1, V): position t predicts token t+1
    out = []
    for b, d in enumerate(drafts):
        rows = logits[b, longest - len(d): longest].float()  # (len(d), V): the logits that pick d[0..]
        p = torch.softmax(rows, dim=-1)
        best = p.argmax(dim=-1).tolist()
        toks, ps = [], []
        for j, tok in enumerate(d):
            toks.append(best[j])
            ps.append(float(p[j, best[j]]))
            if best[j] != tok:
                break  # the model's own token here; what follows it is decoded
        out.append((toks, ps))
    return out


@torch.no_grad()
def _decode(model, inputs: list[list[int]], max_new_tokens: int, pad: int, eot: int) -> list[tuple[list[int], list[float]]]:
    """Greedy continuation of each left-padded input, to its end of turn or ``max_new_tokens``."""
    ids, mask = _left_padded(inputs, pad)  # (B, T) each
    width = ids.shape[1]
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=eot,
        pad_token_id=pad,
        output_scores=True,
        return_dict_in_generate=True,
    )
    rows = []
    for b in range(len(inputs)):
        new = out.sequences[b, width:].tolist()  # (T,)
        if eot in new:  # a row that finished early is padded after its end of turn
            new = new[: new.index(eot) + 1]
        # scores[t]: (B, V) logits that chose token t; greedy, so its probability is the max of the softmax.
        rows.append((new, [float(torch.softmax(out.scores[t][b].float(), dim=-1)[tok]) for t, tok in enumerate(new)]))
    return rows


def _left_padded(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows left-padded to one width, and their attention mask: (B, T) each."""
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask
