"""Greedy answers with token probabilities: a batch of questions (left-padded) answers each one
exactly as it is answered alone, which is what lets verification ask them together; a draft of the
expected answer, checked in one forward pass, never changes an answer."""

from __future__ import annotations

import pytest
import torch

from autodidact.data import end_of_turn_id, prompt_ids
from autodidact.inference.answer import (
    _check_drafts,
    _decode,
    answer_with_confidence,
    answers_with_confidence,
    draftable,
)
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


# -- drafts: an expected answer checked in one forward pass ----------------------------------------
def _greedy_tokens(bundle, question: str, n: int) -> tuple[list[int], list[float]]:
    eot = end_of_turn_id(bundle.tokenizer)
    return _decode(bundle.model, [prompt_ids(bundle.tokenizer, question)], n, bundle.tokenizer.pad_token_id, eot)[0]


def test_a_right_draft_is_the_greedy_answer_from_one_forward_pass(bundle) -> None:
    prompts = [prompt_ids(bundle.tokenizer, q) for q in QUESTIONS]
    greedy = [_greedy_tokens(bundle, q, 12) for q in QUESTIONS]
    checked = _check_drafts(bundle.model, prompts, [t for t, _ in greedy], bundle.tokenizer.pad_token_id)
    for (toks, probs), (got, got_probs) in zip(greedy, checked, strict=True):
        assert got == toks
        assert got_probs == pytest.approx(probs, abs=1e-5)


def test_a_draft_is_kept_up_to_where_the_model_parts_from_it(bundle) -> None:
    toks, probs = _greedy_tokens(bundle, QUESTIONS[2], 12)
    wrong = [*toks[:5], (toks[5] + 1) % 200, *toks[6:]]
    got, got_probs = _check_drafts(bundle.model, [prompt_ids(bundle.tokenizer, QUESTIONS[2])], [wrong],
                                   bundle.tokenizer.pad_token_id)[0]
    assert got == toks[:6]  # five drafted tokens, then the model's own sixth
    assert got_probs == pytest.approx(probs[:6], abs=1e-5)


def test_drafts_never_change_an_answer(bundle, monkeypatch) -> None:
    plain = answers_with_confidence(bundle.model, bundle.tokenizer, QUESTIONS, max_new_tokens=12)
    # Wrong drafts, a draft longer than the budget, and no draft: each answer is decoded as before.
    drafts = ["nothing like it", "x" * 40, None, plain[0].text[:3] + "zz"]
    got = answers_with_confidence(bundle.model, bundle.tokenizer, QUESTIONS, max_new_tokens=12, drafts=drafts)
    assert [a.text for a in got] == [a.text for a in plain]
    for a, b in zip(plain, got, strict=True):
        assert b.min_prob == pytest.approx(a.min_prob, abs=1e-5)
        assert b.mean_prob == pytest.approx(a.mean_prob, abs=1e-5)
    with pytest.raises(ValueError, match="2 drafts for 4 questions"):
        answers_with_confidence(bundle.model, bundle.tokenizer, QUESTIONS, drafts=["a", "b"])


def test_drafts_are_ignored_where_decoding_is_not_the_plain_argmax(bundle, monkeypatch) -> None:
    assert draftable(bundle.model)
    monkeypatch.setattr(bundle.model.generation_config, "repetition_penalty", 1.3)
    assert not draftable(bundle.model)
    calls = []
    real = bundle.model.generate
    monkeypatch.setattr(bundle.model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    answers_with_confidence(bundle.model, bundle.tokenizer, QUESTIONS[:1], max_new_tokens=4, drafts=["abc"])
    assert calls == [1]  # decoded token by token, with the penalty


def test_draft_pool_orders_taught_answers_by_frequency_once_each():
    from autodidact.inference.answer import draft_pool

    assert draft_pool(["b", "a", "", None, "b", "  ", "c", "b", "a"]) == ["b", "a", "c"]
    assert draft_pool([]) == []
