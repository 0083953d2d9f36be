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


@torch.no_grad()
def answer_with_confidence(
    model: torch.nn.Module, tokenizer, question: str, max_new_tokens: int = 48, threads: int | None = 1
) -> Answer:
    """Greedy answer to ``question`` with whatever adapter is active, and its token probabilities."""
    was_training = model.training
    model.eval()
    ids = torch.tensor([prompt_ids(tokenizer, question)])
    eot = end_of_turn_id(tokenizer)
    with torch_threads(threads):
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=eot,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot,
            output_scores=True,
            return_dict_in_generate=True,
        )
    model.train(was_training)
    new = out.sequences[0, ids.shape[1] :]  # (T,)
    # scores[t]: (1, V) logits that chose token t; greedy, so its probability is the max of the softmax.
    probs = [float(torch.softmax(s[0].float(), dim=-1)[tok]) for s, tok in zip(out.scores, new.tolist(), strict=False)]
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    if not probs:
        return Answer(text, 0.0, 0.0)
    return Answer(text, min(probs), sum(probs) / len(probs))
