"""Serving under change: several threads route and answer while cards are installed, replaced and removed.

Each card version carries different adapter weights, so on the tiny model each version gives its own
greedy answer to the same question: its text and the probability of every token (checked first, each
version alone; the tiny model's text is often undecodable bytes, so the probabilities tell them apart).
Then reader threads run the serving path (route, then answer with the routed skill or the base model)
while a writer drops new versions of one skill into ``skills_dir`` (atomic rename), removes it, puts it
back, and rescans, with ``max_loaded=1`` so adapters are also evicted and re-read from their files all
the while. Every answer must be exactly one version's answer, never a mix, or the base model's (the
skill was removed, before routing or between routing and answering); no query may fail.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from autodidact.card import SUFFIX
from autodidact.inference.answer import Answer
from autodidact.inference.lora_router import LoRARouter, RouterConfig
from autodidact.lora_manager import LoRAManager
from autodidact.models import load_tiny
from tests.test_lora_manager import SKILLS, make_card

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHANGING, STEADY = "brindlemark", "quillon"
VERSIONS = (1, 2, 3)
QUESTIONS = {CHANGING: SKILLS[CHANGING][0][0], STEADY: SKILLS[STEADY][0][0], None: "What colour is the sky?"}
READERS = 3
CHANGES = 40
MAX_NEW_TOKENS = 6


def drop(src: Path, dest: Path) -> None:
    """Install a file as a writer does: a temp name in the same folder, then an atomic rename."""
    tmp = dest.parent / f".{dest.name}.incoming"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


@pytest.fixture(scope="module")
def library(tmp_path_factory, encoder) -> dict[tuple[str, int], Path]:
    lib = tmp_path_factory.mktemp("cards")
    cards = {(CHANGING, v): make_card(lib / f"{CHANGING}-v{v}{SUFFIX}", CHANGING, encoder, seed=v) for v in VERSIONS}
    cards[(STEADY, 1)] = make_card(lib / f"{STEADY}-v1{SUFFIX}", STEADY, encoder, seed=11)
    return cards


def answers_alone(library, encoder, tmp: Path) -> dict[tuple[str | None, int], Answer]:
    """Each version's answer to its skill's question, each in a manager holding only that card."""
    out = {}
    for (skill, v), card in library.items():
        d = tmp / f"alone-{skill}-{v}"
        d.mkdir()
        shutil.copyfile(card, d / f"{skill}{SUFFIX}")
        manager = LoRAManager(load_tiny(seed=0), d, LoRARouter(RouterConfig(), encoder))
        assert manager.scan()["installed"] == [skill]
        out[(skill, v)] = manager.answer(skill, QUESTIONS[skill], MAX_NEW_TOKENS)
    base = LoRAManager(load_tiny(seed=0), tmp / "alone-base")
    for question in QUESTIONS.values():
        out[(question, 0)] = base.answer(None, question, MAX_NEW_TOKENS)
    return out


@dataclass
class Churn:
    expect: dict
    answers: list[tuple[str | None, str | None, Answer]]
    errors: list[str]
    changes: Counter


@pytest.fixture(scope="module")
def churn(tmp_path_factory, library, encoder) -> Churn:
    """Readers route and answer in threads while a writer makes ``CHANGES`` changes to the cards."""
    tmp = tmp_path_factory.mktemp("churn")
    expect = answers_alone(library, encoder, tmp)
    skills = tmp / "skills"
    skills.mkdir()
    drop(library[(STEADY, 1)], skills / f"{STEADY}{SUFFIX}")
    drop(library[(CHANGING, 1)], skills / f"{CHANGING}{SUFFIX}")
    router = LoRARouter(RouterConfig(), encoder)
    manager = LoRAManager(load_tiny(seed=0), skills, router, max_loaded=1)
    assert sorted(manager.scan()["installed"]) == sorted([CHANGING, STEADY])

    stop = threading.Event()
    out = Churn(expect, [], [], Counter())

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            about = rng.choice(list(QUESTIONS))
            q = QUESTIONS[about]
            try:
                skill = router.route(q).selected  # the serving path (Autodidact.ask): route, then answer
                out.answers.append((about, skill, manager.answer(skill, q, MAX_NEW_TOKENS)))
            except Exception as e:  # noqa: BLE001 - any error while serving is a finding
                out.errors.append(f"{about}: {type(e).__name__}: {e}")
            time.sleep(rng.uniform(0.0, 0.02))  # queries arrive with gaps; the lock is not fair to the writer

    def writer() -> None:
        rng = random.Random(0)
        dest = skills / f"{CHANGING}{SUFFIX}"
        for _ in range(CHANGES):
            if dest.exists() and rng.random() < 0.25:
                dest.unlink()
                out.changes["removed"] += 1
            else:
                drop(library[(CHANGING, rng.choice(VERSIONS))], dest)
                out.changes["installed or replaced"] += 1
            try:
                result = manager.scan()
            except Exception as e:  # noqa: BLE001
                out.errors.append(f"scan: {type(e).__name__}: {e}")
                continue
            if result["refused"]:
                out.errors.append(f"scan refused {result['refused']}")
            time.sleep(rng.uniform(0.0, 0.05))
        stop.set()

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    for t in readers:
        t.start()
    writer()
    for t in readers:
        t.join(timeout=60)
    return out


def test_every_answer_comes_from_exactly_one_version_while_cards_change(churn):
    versions = [churn.expect[(CHANGING, v)] for v in VERSIONS]
    base_answer = churn.expect[(QUESTIONS[CHANGING], 0)]
    assert len({*versions, base_answer}) == len(VERSIONS) + 1, (versions, base_answer)  # distinguishable
    assert churn.errors == [], "\n".join(churn.errors[:8])

    served = Counter()
    for about, skill, ans in churn.answers:
        if skill is None:  # routed to no skill (the changing one was removed): the base model answers
            assert ans == churn.expect[(QUESTIONS[about], 0)], (about, ans)
            served[f"{about}: base"] += 1
        elif skill == CHANGING and ans == base_answer:  # removed between routing and answering
            served[f"{CHANGING}: base (removed after routing)"] += 1
        elif skill == CHANGING:
            assert about == CHANGING and ans in versions, (about, ans, versions)  # one version, never a mix
            served[f"{CHANGING} v{versions.index(ans) + 1}"] += 1
        else:
            assert skill == about == STEADY and ans == churn.expect[(STEADY, 1)], (about, skill, ans)
            served[STEADY] += 1
    assert sum(churn.changes.values()) == CHANGES and churn.changes["removed"] >= 5, churn.changes
    assert len(churn.answers) >= 30 and sum(served[f"{CHANGING} v{v}"] > 0 for v in VERSIONS) >= 2, served
    print(f"\n{len(churn.answers)} answers from {READERS} threads during {dict(churn.changes)}: "
          f"{dict(sorted(served.items()))}")


def removed_between_route_and_answer(tmp: Path, library, encoder, evict: bool):
    """Route to the changing skill, then its card goes away before the answer is generated."""
    skills = tmp / "skills"
    skills.mkdir()
    for skill, v in ((CHANGING, 1), (STEADY, 1)):
        drop(library[(skill, v)], skills / f"{skill}{SUFFIX}")
    router = LoRARouter(RouterConfig(), encoder)
    manager = LoRAManager(load_tiny(seed=0), skills, router, max_loaded=1)
    manager.scan()
    if evict:
        manager.answer(STEADY, QUESTIONS[STEADY], MAX_NEW_TOKENS)  # max_loaded=1: the changing one is detached
    skill = router.route(QUESTIONS[CHANGING]).selected
    assert skill == CHANGING
    (skills / f"{CHANGING}{SUFFIX}").unlink()
    if not evict:
        manager.scan()  # the removal is seen before the answer
    return (manager.answer(skill, QUESTIONS[CHANGING], MAX_NEW_TOKENS),
            manager.answer(None, QUESTIONS[CHANGING], MAX_NEW_TOKENS))


@pytest.mark.parametrize("evict", [False, True], ids=["removed-and-scanned", "evicted-and-file-gone"])
def test_a_skill_removed_between_routing_and_answering_is_answered_by_the_base_model(tmp_path, library, encoder,
                                                                                      evict):
    ans, base = removed_between_route_and_answer(tmp_path, library, encoder, evict=evict)
    assert ans == base
