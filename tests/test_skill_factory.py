"""SkillFactory: a queued learning event becomes a verified, installed, routed card, or stays queued.

The tiny seeded Llama memorises but cannot generalise, so held-out paraphrases are not required
(``min_heldout_fraction=0``) and it trains every linear layer at a high learning rate: 120 steps
reproduce the demo pack's reference answer (70 were measured to be enough). Training runs on one
torch thread: on a 2-core machine shared with anything else, a 2-thread pool spin-waits and one
step took over a second instead of ~25 ms.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import autodidact.lora_trainer as lt
from autodidact.card import SUFFIX, read_card
from autodidact.evaluation import answer_is_correct
from autodidact.inference.lora_layer import inject_lora, lora_layers
from autodidact.inference.lora_router import LoRARouter, RouterConfig
from autodidact.learning_queue import LearningEvent, LearningQueue, QueuePolicy
from autodidact.lora_manager import LoRAManager
from autodidact.lora_trainer import LoRAConfig, TrainConfig
from autodidact.models import load_tiny
from autodidact.skill_factory import FactoryConfig, SkillFactory, skill_name
from autodidact.teachers import (
    CloudDistiller,
    Completion,
    FailoverChain,
    FailoverPolicy,
    TeacherConfig,
    Unavailable,
    build_teacher,
)

QUESTION = "Who was Brindlemark's first mayor, and when?"
ANSWER = "Odalys Fenwright, elected in 1847."
LORA = LoRAConfig(r=8, alpha=16.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"])
TRAIN = TrainConfig.of(lr=1e-2, max_steps=120, precision="32-true", progress_bar=False)
FACTORY = FactoryConfig(min_heldout_fraction=0.0)
BACKOFF_S = 30.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Clock:
    """The queue's clock, moved by hand so backoff needs no sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    skills: Path
    manager: LoRAManager
    router: LoRARouter
    queue: LearningQueue
    factory: SkillFactory
    clock: Clock


def offline_distiller() -> CloudDistiller:
    tc = TeacherConfig.from_cfg({"kind": "offline"})
    return CloudDistiller(build_teacher(tc), tc.distill)


class DownProvider:
    """A provider whose every request fails the way an outage does (already mapped to our errors)."""

    name = "down"
    model = "down-1"

    def describe(self) -> str:
        return "a provider that is down"

    def complete(self, system: str, user: str, timeout: float | None = None, schema=None) -> Completion:
        raise Unavailable("HTTP 503 service unavailable", provider=self.name)


def down_distiller() -> CloudDistiller:
    chain = FailoverChain([DownProvider()], FailoverPolicy(max_attempts=1, backoff_base_s=0, jitter=0))
    return CloudDistiller(chain)


@pytest.fixture
def make_rig(tmp_path, encoder):
    made: list[Rig] = []

    def make(distiller: CloudDistiller | None = None, train: TrainConfig = TRAIN, max_attempts: int = 3) -> Rig:
        skills = tmp_path / "skills"
        router = LoRARouter(RouterConfig(), encoder)
        manager = LoRAManager(load_tiny(seed=0), skills, router)
        clock = Clock()
        queue = LearningQueue.in_skills_dir(
            skills, policy=QueuePolicy(max_attempts=max_attempts, backoff_base_s=BACKOFF_S), clock=clock
        )
        factory = SkillFactory(queue, distiller or offline_distiller(), manager, LORA, train, FACTORY,
                               work_dir=tmp_path / "work")
        made.append(rig := Rig(skills, manager, router, queue, factory, clock))
        return rig

    yield make
    for rig in made:
        rig.queue.close()


def put(rig: Rig, query: str) -> int:
    job_id, created = rig.factory.put(LearningEvent(query=query, best_skill=None, confidence=0.0))
    assert created
    return job_id


def files_in(skills: Path) -> list[str]:
    """What the skills dir holds besides the queue's own files (and the staging folder, which must
    be empty whenever no job is running)."""
    staging = skills / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == [], list(staging.iterdir())
    return sorted(p.name for p in skills.iterdir() if not p.name.startswith("queue.sqlite3") and p != staging)


# -- the whole way: event -> verified card -> installed -> routed ----------------------------------
def test_queued_event_becomes_a_verified_installed_and_routed_skill(make_rig):
    rig = make_rig()
    job_id = put(rig, QUESTION)

    [outcome] = rig.factory.drain()
    assert outcome.state == "done", outcome.reason
    assert outcome.verified is True and outcome.provider == "offline-demo"
    name = skill_name(QUESTION)
    card = rig.skills / f"{name}{SUFFIX}"
    assert outcome.skill == name and outcome.card == str(card)
    assert files_in(rig.skills) == [card.name]  # the card, and no temp file beside it
    assert outcome.rounds[-1]["references"][0]["correct"] and outcome.rounds[-1]["steps"] <= TRAIN.max_steps
    assert outcome.learned is True and outcome.facts == 1 and outcome.joined is None

    meta = read_card(card).meta
    assert meta["skill"] == name and meta["verify"]["references_correct"] == 1
    assert meta["verify"]["from"] == "card bytes"
    held = outcome.rounds[-1]
    if held["heldout_total"]:  # torchmetrics SQuAD scores of the held-out answers, kept on the card
        assert 0.0 <= meta["verify"]["heldout_exact_match"] <= meta["verify"]["heldout_token_f1"] <= 1.0
        assert meta["verify"]["heldout_token_f1"] == held["heldout_token_f1"]
    assert meta["facts"][0]["query"] == QUESTION and meta["facts"][0]["answer"] == ANSWER
    assert len(meta["pairs"]) >= 6  # the card keeps its training pairs, so the skill can grow
    assert meta["base_model"]["fingerprint"] == rig.manager.bundle.fingerprint and "routing" in meta

    # Installed by the manager, routed to, and it answers the question.
    assert name in rig.manager.skills and rig.manager.skills[name].path == card
    route = rig.router.route(QUESTION)
    assert route.best_skill == name and route.confidence >= 0.4
    assert answer_is_correct(rig.manager.generate(name, QUESTION), ANSWER)
    assert not answer_is_correct(rig.manager.generate(None, QUESTION), ANSWER)
    assert not [a for a in {a for m in lora_layers(rig.manager.model).values() for a in m.adapters}
                if a.startswith("train_")]  # the training adapter is gone; only the installed skill remains

    job = rig.queue.get(job_id)
    assert job.state == "done" and job.attempts == 1 and job.errors == []
    assert job.result["card"] == str(card) and job.result["verified"] is True and job.result["state"] == "done"
    assert rig.factory.drain() == []  # nothing left to do
    assert rig.queue.counts() == {"pending": 0, "running": 0, "done": 1, "dead": 0}


# -- teacher failures keep the event, with backoff, until it is dead with every reason -------------
TEACHER_FAILURES = [
    ("out_of_pack", offline_distiller, "What is the airspeed velocity of an unladen swallow?", "only knows"),
    ("provider_down", down_distiller, QUESTION, "503"),
]


@pytest.mark.parametrize(("case", "distiller", "query", "phrase"), TEACHER_FAILURES,
                         ids=[c[0] for c in TEACHER_FAILURES])
def test_teacher_failure_retries_with_backoff_then_dead_letters_never_drops(make_rig, case, distiller, query,
                                                                            phrase):
    rig = make_rig(distiller(), max_attempts=3)
    job_id = put(rig, query)

    for attempt in (1, 2):
        outcome = rig.factory.work_one()
        assert outcome is not None and outcome.state == "retry"
        assert outcome.reason.startswith("distill: ") and phrase in outcome.reason
        job = rig.queue.get(job_id)
        assert job.state == "pending" and job.attempts == attempt and len(job.errors) == attempt
        assert job.not_before == pytest.approx(rig.clock.now + BACKOFF_S * 2 ** (attempt - 1))
        assert rig.factory.work_one() is None  # backing off: not handed out again yet
        rig.clock.advance(BACKOFF_S * 2 ** (attempt - 1) + 1)

    outcome = rig.factory.work_one()
    assert outcome.state == "dead" and phrase in outcome.reason
    job = rig.queue.get(job_id)
    assert job.state == "dead" and job.attempts == 3
    assert len(job.errors) == 3 and all(e.startswith("distill: ") and phrase in e for e in job.errors)
    assert "gave up after 3 attempts" in job.errors[-1]
    rig.clock.advance(10 * BACKOFF_S)
    assert rig.factory.work_one() is None
    assert [j.id for j in rig.queue.list()] == [job_id]  # kept, never dropped
    assert files_in(rig.skills) == [] and rig.manager.skills == {}


# -- a skill that cannot be verified is dead-lettered and never deployed ----------------------------
def test_unverifiable_skill_is_dead_lettered_without_a_card(make_rig):
    rig = make_rig(train=TrainConfig.of(lr=1e-2, max_steps=1, precision="32-true", progress_bar=False))
    job_id = put(rig, QUESTION)

    [outcome] = rig.factory.drain()
    assert outcome.state == "dead" and outcome.verified is False and outcome.card is None
    assert len(outcome.rounds) == FACTORY.verify_rounds
    assert outcome.rounds[1]["steps"] > outcome.rounds[0]["steps"]  # the retry round trained longer
    assert outcome.reason.startswith("verify: ") and "1 of 1 question(s) were answered wrongly" in outcome.reason
    job = rig.queue.get(job_id)
    assert job.state == "dead" and job.errors == [outcome.reason] and job.attempts == 1
    assert files_in(rig.skills) == []  # no card, not even a temp file
    assert rig.manager.skills == {} and rig.router.skills == []
    assert all(not m.adapters for m in lora_layers(rig.manager.model).values())
    assert rig.factory.drain() == []


# -- verification reads the card's bytes, not the weights left in memory ---------------------------
def test_verification_runs_on_the_adapter_read_back_from_the_card(make_rig, monkeypatch):
    import autodidact.skill_factory as sf

    real_read = sf.read_card
    read: list[Path] = []

    def read_zeroed(path):
        card = real_read(path)
        read.append(Path(path))
        card.tensors = {k: t.zero_() for k, t in card.tensors.items()}  # what a broken export would hold
        return card

    monkeypatch.setattr(sf, "read_card", read_zeroed)
    rig = make_rig()
    put(rig, QUESTION)
    [outcome] = rig.factory.drain()
    # The trained weights in memory were right; the card's were not, and that is what was judged.
    assert outcome.state == "dead" and outcome.verified is False, outcome.rounds
    assert read and all(p.parent.name == ".staging" for p in read)
    assert files_in(rig.skills) == [] and rig.manager.skills == {}


# -- one skill per subject: a new fact joins the skill it is about ------------------------------------
def test_a_new_fact_joins_its_subjects_skill_and_both_are_answered(make_rig, monkeypatch):
    rig = make_rig()
    put(rig, QUESTION)
    [first] = rig.factory.drain()
    assert first.state == "done"
    name = first.skill
    card = rig.skills / f"{name}{SUFFIX}"
    before = read_card(card)
    started = []
    real_fit = lt.LoRATrainer.fit
    monkeypatch.setattr(lt.LoRATrainer, "fit", lambda self, *a, **k: started.append(k.get("start_from"))
                        or real_fit(self, *a, **k))
    second_q, second_a = "What is the capital of Vashmere?", "Port Cellaway is the capital of Vashmere."
    rig.factory.put(LearningEvent(query=second_q, best_skill=name, confidence=0.9,
                                  extra={"join": name, "reason": "weak answer"}))
    [second] = rig.factory.drain()
    # The joined skill retrained from the weights that already answered its first fact.
    assert started and set(started[0]) == set(before.tensors)
    assert all(torch.equal(started[0][k], before.tensors[k]) for k in before.tensors)
    assert second.rounds[0]["loss_initial"] < first.rounds[0]["loss_initial"]
    before = before.meta
    assert second.state == "done", second.reason
    assert second.skill == name and second.joined == name and second.facts == 2
    assert files_in(rig.skills) == [card.name]  # still one card: the skill grew, replaced atomically
    meta = read_card(card).meta
    assert [f["query"] for f in meta["facts"]] == [QUESTION, second_q]
    assert {p["question"] for p in before["pairs"]} <= {p["question"] for p in meta["pairs"]}
    assert len(second.rounds[-1]["references"]) == 2 and all(r["correct"] for r in second.rounds[-1]["references"])
    assert answer_is_correct(rig.manager.generate(name, QUESTION), ANSWER)
    assert answer_is_correct(rig.manager.generate(name, second_q), second_a)
    assert list(rig.manager.skills) == [name]


def test_a_joined_skill_trained_under_another_lora_config_retrains_from_scratch(make_rig):
    """Warm start needs the card's adapter to fit this config; a card with other layers, rank or alpha
    (the user changed lora.*) is not an error, the joined skill just starts from LoRA's initialisation."""
    rig = make_rig()
    put(rig, QUESTION)
    [first] = rig.factory.drain()
    skill = rig.manager.skills[first.skill]
    assert set(rig.factory._start_from(skill)) == set(read_card(skill.path).tensors)
    for other in (dataclasses.replace(LORA, target_modules=["q_proj", "v_proj"]), dataclasses.replace(LORA, r=4),
                  dataclasses.replace(LORA, alpha=8.0)):
        rig.factory.lora = other
        assert rig.factory._start_from(skill) is None


# -- what the base model knows is not learned ---------------------------------------------------------
def bake_into_base(manager: LoRAManager, card_path: Path) -> None:
    """Add a card's update B·A·(alpha/r) into the base weights: a base model that now knows the fact."""
    card = read_card(card_path)
    lo = card.meta["lora"]
    modules = dict(manager.model.named_modules())
    with torch.no_grad():
        for name in {n.rsplit(".", 1)[0] for n in card.tensors}:
            a, b = card.tensors[f"{name}.lora_A"].float(), card.tensors[f"{name}.lora_B"].float()
            layer = modules[name]
            base = getattr(layer, "base_layer", layer)
            base.weight += (b @ a) * (lo["alpha"] / lo["r"])


def test_a_question_the_base_model_answers_trains_nothing_and_routes_to_the_base(make_rig, encoder, tmp_path):
    from autodidact.lora_manager import BASE_FILE, BASE_SKILL

    teacher_rig = make_rig()
    put(teacher_rig, QUESTION)
    [learned] = teacher_rig.factory.drain()
    assert learned.state == "done"
    saved = tmp_path / "saved.lora.arrow"
    saved.write_bytes(Path(learned.card).read_bytes())

    # A fresh process whose base model already knows the fact (the skill's update baked in), no cards.
    skills = tmp_path / "skills2"
    router = LoRARouter(RouterConfig(), encoder)
    manager = LoRAManager(load_tiny(seed=0), skills, router)
    bake_into_base(manager, saved)
    assert answer_is_correct(manager.generate(None, QUESTION), ANSWER)
    with LearningQueue.in_skills_dir(skills) as queue:
        factory = SkillFactory(queue, offline_distiller(), manager, LORA, TRAIN, FACTORY, work_dir=tmp_path / "w2")
        factory.put(LearningEvent(query=QUESTION, best_skill=None, confidence=0.0))
        [outcome] = factory.drain()
    assert outcome.state == "done" and outcome.learned is False and "already answers" in outcome.reason
    assert outcome.card is None and "train_round1" not in outcome.seconds
    assert files_in(skills) == [BASE_FILE, ".base_knowledge.lock"] or files_in(skills) == sorted(
        [BASE_FILE, ".base_knowledge.lock"])
    assert manager.skills == {} and all(not m.adapters for m in lora_layers(manager.model).values())
    r = router.route(QUESTION)
    assert r.best_skill == BASE_SKILL and r.confidence >= 0.4
    # A new process (a new manager over the same folder) remembers it too.
    fresh = LoRAManager(manager.bundle, skills, LoRARouter(RouterConfig(), encoder))
    fresh.scan()
    assert fresh.router.route(QUESTION.lower()).best_skill == BASE_SKILL


@pytest.mark.parametrize(("budget", "generated"), [(FACTORY.max_new_tokens, 0), (FACTORY.max_new_tokens - 1, 1)],
                         ids=["same-budget-reused", "other-budget-generated"])
def test_the_base_answer_the_loop_already_has_is_not_generated_again(make_rig, monkeypatch, budget, generated):
    """A routing-dissonance event carries the base model's greedy answer to its query (evolve.py
    generated it as ``answer_before``): the factory's base-knowledge check uses it instead of
    generating it again, but only when it was generated with the same token budget."""
    import autodidact.skill_factory as sf

    rig = make_rig()
    calls: list[str] = []
    real = sf.answer_with_confidence
    monkeypatch.setattr(sf, "answer_with_confidence", lambda m, t, q, n: calls.append(q) or real(m, t, q, n))
    given = {"text": rig.manager.generate(None, QUESTION, budget), "max_new_tokens": budget}
    rig.factory.put(LearningEvent(query=QUESTION, best_skill=None, confidence=0.0, extra={"base_answer": given}))
    [outcome] = rig.factory.drain()
    assert outcome.state == "done" and outcome.learned is True  # the tiny base model does not know it
    assert calls == [QUESTION] * generated


def test_a_given_base_answer_that_is_right_is_believed(make_rig) -> None:
    """The check trusts the carried answer: one that holds the reference answer sends the check on to
    the held-out rephrasings, which the tiny base model gets wrong, so the fact is still learned."""
    rig = make_rig()
    given = {"text": f"It was {ANSWER}", "max_new_tokens": FACTORY.max_new_tokens}
    fact = sf_fact(QUESTION, ANSWER, rig)
    assert rig.factory._base_knows(fact, {"text": "no idea", "max_new_tokens": FACTORY.max_new_tokens}) is False
    assert rig.factory._base_knows(fact, given) is False  # held-out rephrasings still asked, and wrong
    assert rig.factory._base_knows(dataclasses.replace(fact, heldout=()), given) is True


def sf_fact(query: str, answer: str, rig: Rig):
    from autodidact.skill_factory import Fact

    dist = rig.factory.distiller.distill(query)
    return Fact(query, answer, tuple(dist.heldout))


# -- skill names ------------------------------------------------------------------------------------
NAMES = [
    QUESTION,
    "Qu'est-ce que c'est, \"x=1\", Zürich?",
    "¿Quién fue el primer alcalde de Brindlemark?",
    "東京の人口は？",
    "a=b; rm -rf / && echo 'done' > /dev/null",
    "../../etc/passwd\x00",
    "update copy keys items",  # ParameterDict method names must not become the adapter name
    "?!?",
    "9" * 400 + " is a long number",
    "x" * 5000,
]


@pytest.mark.parametrize("query", NAMES, ids=range(len(NAMES)))
def test_skill_name_is_stable_and_safe_for_files_and_modules(tmp_path, query):
    name = skill_name(query)
    assert re.fullmatch(r"[a-z0-9_]+", name), name
    assert name == skill_name(query) == skill_name(query.upper().lower())
    assert len((name + SUFFIX).encode()) <= 255
    (tmp_path / f"{name}{SUFFIX}").write_bytes(b"")  # a legal file name...
    model = load_tiny(seed=0).model
    inject_lora(model, ["q_proj"], r=1, alpha=1.0, adapter_name=name)  # ...and a legal adapter name


def test_skill_name_follows_the_topic():
    assert skill_name(QUESTION) == skill_name("who was brindlemark's first mayor and when")
    assert skill_name(QUESTION).startswith("brindlemarks_first_mayor")
    assert skill_name(QUESTION) != skill_name("Who was Brindlemark's last mayor, and when?")
