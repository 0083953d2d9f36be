"""Answering: the model's own chat template around the question, greedy decoding by default."""

from __future__ import annotations

import torch

from autodidact.data import end_of_turn_id, prompt_ids


@torch.no_grad()
def generate_answer(
    model: torch.nn.Module,
    tokenizer,
    question: str,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 1.0,
) -> str:
    """Generate the assistant's reply to ``question`` with whatever adapter is active."""
    was_training = model.training
    model.eval()
    ids = torch.tensor([prompt_ids(tokenizer, question)])
    eot = end_of_turn_id(tokenizer)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=None,
        top_k=None,
        eos_token_id=eot,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot,
    )
    model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
