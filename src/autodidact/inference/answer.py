"""An answer and how sure the model is of it: greedy decoding that keeps each token's probability.

The router says which skill a question is about; only the skill can say whether it knows *this*
fact. A skill asked about a detail it never learned ("the ferry's cook" after "the ferry's captain")
tends to hesitate somewhere in its answer, so the lowest probability the model gave any token of its
own greedy answer is the signal (``DissonanceDetector.answer_threshold``): a learned answer is
reproduced with every token near 1, an unlearned one has a weak token where it guesses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autodidact.data import end_of_turn_id, prompt_ids
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
    model: torch.nn.Module, tokenizer, question: str, max_new_tokens: int = 48, threads: int | None = 1
) -> Answer:
    """Greedy answer to ``question`` with whatever adapter is active, and its token probabilities."""
    return answers_with_confidence(model, tokenizer, [question], max_new_tokens, threads)[0]


@torch.no_grad()
def answers_with_confidence(
    model: torch.nn.Module, tokenizer, questions: list[str], max_new_tokens: int = 48, threads: int | None = 1
) -> list[Answer]:
    """Greedy answers to several questions in one batch (prompts left-padded), each with its token
    probabilities.

    On a CPU a decode step of a 135M model costs about the same for one row as for a handful (it is
    bound by reading the weights), so verifying a question and its rephrasings together takes about
    as long as the longest answer alone.
    """
    if not questions:
        return []
    was_training = model.training
    model.eval()
    eot = end_of_turn_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # (B, T) left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (B, T)
    with torch_threads(threads):
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
    model.train(was_training)
    answers = []
    for b in range(len(questions)):
        new = out.sequences[b, width:].tolist()  # (T,)
        if eot in new:  # a row that finished early is padded after its end of turn
            new = new[: new.index(eot) + 1]
        # scores[t]: (B, V) logits that chose token t; greedy, so its probability is the max of the softmax.
        probs = [float(torch.softmax(out.scores[t][b].float(), dim=-1)[tok]) for t, tok in enumerate(new)]
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        answers.append(Answer(text, min(probs), sum(probs) / len(probs)) if probs else Answer(text, 0.0, 0.0))
    return answers
