"""Greedy answers with token probabilities: a batch of questions (left-padded) answers each one
exactly as it is answered alone, which is what lets verification ask them together."""

from __future__ import annotations

import pytest
import torch

from autodidact.inference.answer import answer_with_confidence, answers_with_confidence
from autodidact.inference.lora_layer import inject_lora, set_adapter
from autodidact.models import load_tiny

QUESTIONS = [
    "Who kept the Velmora lighthouse?",
    "hi",  # a much shorter prompt: most of its row is padding
    "When was the old market on Willow Road built, and by whom was it designed?",
    "What is 2+2?",
]


@pytest.fixture(scope="module")
def bundle():
    b = load_tiny(seed=0)
    # Random LoRA weights so the answers are not the base model's alone (B = 0 would be a no-op).
    inject_lora(b.model, ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"], 4, 8.0, 0.0, "a")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in b.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    set_adapter(b.model, "a")
    return b


def test_a_batch_answers_each_question_as_it_is_answered_alone(bundle) -> None:
    alone = [answer_with_confidence(bundle.model, bundle.tokenizer, q, max_new_tokens=12) for q in QUESTIONS]
    together = answers_with_confidence(bundle.model, bundle.tokenizer, QUESTIONS, max_new_tokens=12)
    assert [a.text for a in together] == [a.text for a in alone]
    for a, b in zip(alone, together, strict=True):
        assert b.min_prob == pytest.approx(a.min_prob, abs=1e-5)
        assert b.mean_prob == pytest.approx(a.mean_prob, abs=1e-5)
        assert 0.0 < b.min_prob <= b.mean_prob <= 1.0


def test_no_questions_no_answers(bundle) -> None:
    assert answers_with_confidence(bundle.model, bundle.tokenizer, []) == []
