"""ServeEngine without HTTP: the dissonance decisions ``ask()`` makes, taken without waiting for learning,
and a card dropped into skills_dir picked up by the next poll.

Real parts throughout: the tiny model, MiniLM routing, random-weight skill cards, the durable queue and
``Autodidact`` itself (its factory is never worked here: learning is the learner process's job).
"""

from __future__ import annotations

import pytest

from autodidact.card import SUFFIX
from autodidact.evolve_loop import Autodidact
from autodidact.inference.lora_router import LoRARouter, RouterConfig
from autodidact.learning_queue import LearningQueue
from autodidact.lora_manager import LoRAManager
from autodidact.lora_trainer import LoRAConfig, TrainConfig
from autodidact.models import load_tiny
from autodidact.serve.chat import parse_chat
from autodidact.serve.config import ServerConfig
from autodidact.serve.engine import ServeEngine
from autodidact.skill_factory import SkillFactory
from autodidact.teachers import CloudDistiller, TeacherConfig, build_teacher
from tests.test_lora_manager import SKILLS, make_card

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def make_engine(tmp_path, encoder):
    made: list[ServeEngine] = []

    def make(answer_threshold: float = 0.0, learn: bool = True) -> ServeEngine:
        skills = tmp_path / "skills"
        skills.mkdir(exist_ok=True)
        make_card(skills / f"brindlemark{SUFFIX}", "brindlemark", encoder, seed=1)
        router = LoRARouter(RouterConfig(answer_threshold=answer_threshold), encoder)
        manager = LoRAManager(load_tiny(seed=0), skills, router)
        manager.scan()
        tc = TeacherConfig.from_cfg({"kind": "offline"})
        factory = SkillFactory(LearningQueue.in_skills_dir(skills), CloudDistiller(build_teacher(tc), tc.distill),
                               manager, LoRAConfig(), TrainConfig(progress_bar=False), work_dir=tmp_path / "work")
        bot = Autodidact(manager, router, factory, answer_threshold=answer_threshold, learn=learn, max_new_tokens=6)
        engine = ServeEngine(bot, ServerConfig(watch_interval_s=3600), model_id="tiny").start()
        made.append(engine)
        return engine

    yield make
    for e in made:
        e.close()
        e.queue.close()


def chat(engine: ServeEngine, q: str) -> dict:
    p = engine.submit(parse_chat({"messages": [{"role": "user", "content": q}]}, 512))
    assert p.row.done.wait(60)
    return {"text": p.row.text, **engine.finish(p)}


def test_an_unknown_question_is_answered_by_the_base_model_and_queued_once(make_engine):
    engine = make_engine()
    q = "What is the airspeed of an unladen swallow?"
    a = chat(engine, q)
    assert a["skill"] is None and a["answered_by"] == "base model" and a["learning"]["state"] == "pending"
    b = chat(engine, q)  # asked again before it is learned: the same job, not a second one
    assert b["learning"]["job"] == a["learning"]["job"]
    [job] = engine.queue.list()
    assert job.event.query == q and job.event.extra["reason"] == "no confident skill"
    assert [e["kind"] for e in engine.events].count("dissonance") == 2


def test_a_routed_skill_answers_and_a_weak_answer_queues_a_new_fact_for_that_skill(make_engine):
    q = SKILLS["brindlemark"][0][1]  # one of the questions in the card's routing key
    sure = chat(make_engine(answer_threshold=0.0), q)
    assert sure["skill"] == "brindlemark" and sure["answered_by"] == "skill" and sure["learning"] is None
    # The random adapter is never sure of its tokens: with a high bar its answer is weak.
    engine = make_engine(answer_threshold=0.99)
    weak = chat(engine, q)
    assert weak["skill"] == "brindlemark" and weak["weak_answer"] is True and weak["answer_confidence"] < 0.99
    [job] = engine.queue.list()
    assert weak["learning"]["job"] == job.id and job.event.extra["join"] == "brindlemark"
    assert job.event.extra["reason"] == "weak answer"


def test_with_learning_off_nothing_is_queued(make_engine):
    engine = make_engine(learn=False)
    a = chat(engine, "What is the airspeed of an unladen swallow?")
    assert a["learning"] is None and engine.queue.list() == []


def test_a_card_published_in_skills_dir_is_routed_to_after_the_next_poll(make_engine, encoder):
    engine = make_engine()
    q = SKILLS["velmorite"][0][1]
    assert chat(engine, q)["skill"] is None
    make_card(engine.manager.skills_dir / f"velmorite{SUFFIX}", "velmorite", encoder, seed=2)
    engine.poll()  # what the watcher does every server.watch_interval_s
    assert any(e["kind"] == "installed" and e["skill"] == "velmorite" for e in engine.events)
    after = chat(engine, q)
    assert after["skill"] == "velmorite" and after["answered_by"] == "skill"
    assert {s["id"] for s in engine.skills()} == {"brindlemark", "velmorite"}
