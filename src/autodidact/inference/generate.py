"""Answering: the model's own chat template around the question, greedy decoding by default.

Decoding runs on ONE torch thread by default. Token-by-token generation is a chain of small
matrix-vector products where thread hand-offs cost more than they save, and when anything else
holds a core (a test runner, a training job) a 2-thread OpenMP pool spin-waits on it: measured
on this 2-core machine with one core busy, 32 tokens of SmolLM2 took 5.97 s on 2 threads and
0.59 s on 1. Training keeps every core (large matmuls do scale).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from autodidact.data import end_of_turn_id, prompt_ids


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None: leave as is), then restore."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def generate_answer(
    model: torch.nn.Module,
    tokenizer,
    question: str,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 1.0,
    threads: int | None = 1,
) -> str:
    """Generate the assistant's reply to ``question`` with whatever adapter is active."""
    was_training = model.training
    model.eval()
    ids = torch.tensor([prompt_ids(tokenizer, question)])
    eot = end_of_turn_id(tokenizer)
    with torch_threads(threads):
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
