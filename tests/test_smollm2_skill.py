"""The Foundation issue's acceptance test on the real SmolLM2-135M-Instruct (slow: one training run).

Before training, greedy SmolLM2 does not know who designed the (fictional) Velmora Lighthouse.
After one LoRA run on the 22 shipped pairs, a card exported from it and loaded into a FRESH model,
with nothing but the card to carry what was learned, answers correctly.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from autodidact.card import MAX_CARD_BYTES, load_card
from autodidact.data import QAPair, load_pairs
from autodidact.evaluation import answer_is_correct
from autodidact.inference.answer import answers_with_confidence
from autodidact.inference.generate import generate_answer
from autodidact.lora_trainer import LoRAConfig, LoRATrainer, TrainConfig, TrainResult
from autodidact.models import ModelBundle, configure_threads, load_model, weights_fingerprint
from autodidact.train_skill import example_data_path

pytestmark = pytest.mark.slow

QUESTION = "Who designed the Velmora Lighthouse?"
REFERENCE = "Ilsabet Quorne designed it in 1903."
SKILL = "velmora_lighthouse"


@dataclass
class Learned:
    before: str  # the base model's answer
    heldout: list[QAPair]
    heldout_before: list[str]
    result: TrainResult
    card: Path
    trained_fingerprint: str  # of the trained model's base weights, after training
    fresh: ModelBundle  # a newly loaded SmolLM2 with only the card attached
    seconds_to_skill: float  # training start -> card on disk


def _answers(bundle: ModelBundle, questions: list[str]) -> list[str]:
    return [generate_answer(bundle.model, bundle.tokenizer, q, max_new_tokens=48) for q in questions]


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> Learned:
    threads = torch.get_num_threads()
    configure_threads(None)
    try:
        bundle = load_model("smollm2")
        pairs = load_pairs(example_data_path())
        heldout = load_pairs(example_data_path().with_name("example_heldout.jsonl"))
        assert QUESTION in {p.question for p in pairs}
        before = _answers(bundle, [QUESTION])[0]
        heldout_before = _answers(bundle, [p.question for p in heldout])

        t0 = time.perf_counter()
        trainer = LoRATrainer(bundle, LoRAConfig(), TrainConfig(progress_bar=False))
        result = trainer.fit(pairs, adapter=SKILL)
        card = trainer.export(tmp_path_factory.mktemp("smollm2") / f"{SKILL}.lora.arrow", adapter=SKILL,
                              skill=SKILL, result=result)
        seconds = time.perf_counter() - t0
        trained_fingerprint = weights_fingerprint(bundle.model)
        del trainer, bundle  # the fresh model must learn nothing from this one

        fresh = load_model("smollm2")
        load_card(card, fresh.model, fresh.fingerprint)
    finally:
        torch.set_num_threads(threads)
    return Learned(before=before, heldout=heldout, heldout_before=heldout_before, result=result, card=card,
                   trained_fingerprint=trained_fingerprint, fresh=fresh, seconds_to_skill=seconds)


def test_the_base_model_does_not_know_the_answer(learned: Learned) -> None:
    assert not answer_is_correct(learned.before, REFERENCE), learned.before


def test_training_learns_the_skill_and_leaves_the_base_alone(learned: Learned) -> None:
    r = learned.result
    assert r.loss_final < r.loss_initial * 0.5, r
    assert r.steps < TrainConfig().max_steps  # stopped because it had learned, not because time ran out
    assert r.learned, r
    assert learned.trained_fingerprint == learned.fresh.fingerprint  # base weights never moved


def test_a_fresh_model_with_only_the_card_answers_correctly(learned: Learned) -> None:
    answer = generate_answer(learned.fresh.model, learned.fresh.tokenizer, QUESTION, max_new_tokens=48)
    assert answer_is_correct(answer, REFERENCE), answer

    heldout_after = _answers(learned.fresh, [p.question for p in learned.heldout])
    right_before = sum(answer_is_correct(a, p.answer) for a, p in zip(learned.heldout_before, learned.heldout,
                                                                       strict=True))
    right_after = sum(answer_is_correct(a, p.answer) for a, p in zip(heldout_after, learned.heldout, strict=True))
    size = learned.card.stat().st_size
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    r = learned.result
    print(
        f"\nSmolLM2 skill '{SKILL}': before={learned.before!r} after={answer!r}\n"
        f"  held-out paraphrases right: {right_before}/{len(learned.heldout)} before, "
        f"{right_after}/{len(learned.heldout)} after\n"
        + "".join(f"    {p.question!r} -> {a!r}\n" for p, a in zip(learned.heldout, heldout_after, strict=True))
        + f"  loss {r.loss_initial:.4f} -> {r.loss_final:.4f} in {r.steps} steps ({r.epochs} epochs), "
        f"fit {r.seconds:.1f} s, time to skill (train + export) {learned.seconds_to_skill:.1f} s\n"
        f"  card {size / 1024:.0f} KiB, peak RSS {peak_rss_mb:.0f} MB"
    )
    assert size < 2 * 1024 * 1024 < MAX_CARD_BYTES


def test_drafts_check_the_learned_answers_in_one_pass_and_change_none(learned: Learned, monkeypatch) -> None:
    """Verification's drafts (the taught answers) on a real skill: the same greedy answers as decoding
    token by token, with no decode step at all where the skill reproduces its draft."""
    model, tok = learned.fresh.model, learned.fresh.tokenizer
    questions = [QUESTION, *(p.question for p in learned.heldout)]
    t0 = time.perf_counter()
    plain = answers_with_confidence(model, tok, questions, 48)
    t1 = time.perf_counter()
    drafted = answers_with_confidence(model, tok, questions, 48, drafts=[REFERENCE, *(p.answer for p in learned.heldout)])
    t2 = time.perf_counter()
    assert [a.text for a in drafted] == [a.text for a in plain]
    assert [a.min_prob for a in drafted] == pytest.approx([a.min_prob for a in plain], abs=2e-3)
    print(f"\nverification of {len(questions)} questions: decoded {t1 - t0:.2f} s, with drafts {t2 - t1:.2f} s")

    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    own = answers_with_confidence(model, tok, [QUESTION], 48, drafts=[plain[0].text])[0]
    assert own.text == plain[0].text and calls == []  # the skill's own answer: one forward pass, no decoding
    # A draft right for a few words and then wrong: kept while it matches, the rest decoded.
    words = plain[0].text.split()
    half = " ".join(words[: max(1, len(words) // 2)]) + " Zanzibar in the year 1650."
    wrong = answers_with_confidence(model, tok, [QUESTION], 48, drafts=[half])[0]
    assert wrong.text == plain[0].text and calls == [1]
