"""Batched mixed-adapter decoding gives each row exactly the answer it gets alone.

The tiny seeded Llama with random-weight skill cards (every adapter changes the logits), so an
adapter applied to the wrong row, a padding offset or a row dropped from the KV cache at the wrong
index changes some row's tokens.
"""

from __future__ import annotations

import threading

import pytest

from autodidact.data import end_of_turn_id, prompt_ids
from autodidact.lora_manager import BASE_SKILL, LoRAManager
from autodidact.serve.decode import Row, decode_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Different prompt lengths, so rows are left-padded by different amounts.
QUESTIONS = ["Who?", "Who was Brindlemark's first mayor, and when?", "What is the capital of Vashmere, exactly?",
             "Melting point of velmorite?", "Hi"]


def alone(manager: LoRAManager, skill: str | None, q: str, n: int):
    a = manager.answer(skill, q, n)
    return a.text, round(a.min_prob, 4)


def batched(manager: LoRAManager, rows: list[Row]) -> None:
    tok = manager.bundle.tokenizer
    with manager.lock:
        names = manager.attach_for_batch([r.adapter for r in rows])
        for r, n in zip(rows, names, strict=True):
            r.adapter = n
        decode_batch(manager.model, tok, rows, end_of_turn_id(tok), tok.pad_token_id)


@pytest.mark.parametrize("skills", [
    ["brindlemark", None, "velmorite", "quillon", "brindlemark"],  # mixed, with the base model in the middle
    ["velmorite"] * 5,                                               # one adapter for every row
    [None] * 5,                                                      # the base model only
    [BASE_SKILL, "quillon", BASE_SKILL, None, "quillon"],
], ids=["mixed", "one_adapter", "base", "base_skill"])
def test_each_row_of_a_batch_answers_as_it_does_alone(manager, skills):
    tok = manager.bundle.tokenizer
    # Budgets differ so rows leave the batch (and the KV cache) at different steps.
    budgets = [6, 20, 9, 14, 3]
    rows = [Row(prompt_ids(tok, q), s, n) for q, s, n in zip(QUESTIONS, skills, budgets, strict=True)]
    batched(manager, rows)
    for r, q, s, n in zip(rows, QUESTIONS, skills, budgets, strict=True):
        assert r.done.is_set() and r.finish in ("stop", "length")
        assert (r.text, round(r.min_prob, 4)) == alone(manager, s, q, n), (q, s)
        assert len(r.tokens) <= n and r.batch_size == 5


def test_streamed_pieces_add_up_to_the_answer_and_a_cancelled_row_stops(manager):
    tok = manager.bundle.tokenizer
    pieces: list[str] = []
    streamed = Row(prompt_ids(tok, QUESTIONS[1]), "brindlemark", 40, on_text=pieces.append)
    stopper = Row(prompt_ids(tok, QUESTIONS[2]), "velmorite", 400)
    seen = threading.Event()

    def cancel_after_a_few(piece: str) -> None:
        if len(stopper.tokens) >= 5:
            stopper.cancel()
            seen.set()

    stopper.on_text = cancel_after_a_few
    batched(manager, [streamed, stopper])
    assert "".join(pieces).strip() == streamed.text and streamed.text
    assert seen.is_set() and stopper.finish == "cancelled"
    assert len(stopper.tokens) < 20, "the cancelled row went on decoding"
