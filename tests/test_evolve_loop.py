"""The loop: ``Autodidact.ask`` driven with hand-built parts, and ``evolve.py`` run as a user runs it.

Everything uses the seeded tiny Llama (``model=tiny``) and the real MiniLM router. ``evolve.py`` runs
in subprocesses with every file under tmp (skills dir, run dir, W&B dirs); ``model.threads=1`` keeps
a subprocess from spin-waiting against whatever else holds the second core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autodidact.card import SUFFIX
from autodidact.errors import AutodidactError
from autodidact.evolve_loop import RESULTS_NAME, Autodidact
from autodidact.inference.encoder import SentenceEncoder
from autodidact.inference.lora_router import EmptyQueryError, LoRARouter, RouterConfig, build_routing
from autodidact.learning_queue import LearningQueue, QueuePolicy, topic_key
from autodidact.lora_manager import LoRAManager
from autodidact.lora_trainer import LoRAConfig, TrainConfig
from autodidact.models import load_tiny
from autodidact.skill_factory import FactoryConfig, SkillFactory, skill_name
from autodidact.teachers import CloudDistiller, TeacherConfig, build_teacher, load_pack
from tests.test_lora_manager import make_card
from tests.test_skill_factory import LORA, down_distiller

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Who was Brindlemark's first mayor, and when?"
RECORD_KEYS = {"query", "answer", "skill", "confidence_before", "confidence_after", "learned", "card", "verified",
               "seconds"}
# Learns the demo fact on the tiny model in ~120 one-thread steps (see tests/test_skill_factory.py).
LEARN_OVERRIDES = ["teacher=offline", "lora=all_linear", "trainer.lr=0.01", "trainer.max_steps=120",
                   "trainer.precision=32-true", "trainer.progress_bar=false", "factory.min_heldout_fraction=0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build_bot(skills: Path, encoder: SentenceEncoder, distiller: CloudDistiller | None = None,
              threshold: float = 0.4, learn: bool = True, answer_threshold: float = 0.0) -> Autodidact:
    router = LoRARouter(RouterConfig(threshold=threshold), encoder)
    manager = LoRAManager(load_tiny(seed=0), skills, router)
    manager.scan()
    if distiller is None:
        tc = TeacherConfig.from_cfg({"kind": "offline"})
        distiller = CloudDistiller(build_teacher(tc), tc.distill)
    queue = LearningQueue.in_skills_dir(skills, policy=QueuePolicy(backoff_base_s=30.0))
    factory = SkillFactory(queue, distiller, manager, LoRAConfig(target_modules=["q_proj", "v_proj"]),
                           TrainConfig.of(lr=1e-2, max_steps=120, precision="32-true", progress_bar=False),
                           FactoryConfig(min_heldout_fraction=0.0), work_dir=skills.parent / "work")
    return Autodidact(manager, router, factory, threshold=threshold, learn=learn, max_new_tokens=8,
                      answer_threshold=answer_threshold)


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "WANDB_API_KEY", "AUTODIDACT_SKILLS_DIR")}
    w = tmp_path / "wandb-home"
    env.update(WANDB_MODE="offline", WANDB_DIR=str(w / "dir"), WANDB_CONFIG_DIR=str(w / "config"),
               WANDB_CACHE_DIR=str(w / "cache"), WANDB_DATA_DIR=str(w / "data"), WANDB_SILENT="true",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    return env


def evolve(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 400):
    """``python evolve.py ARGS`` from the repo root; fails with its stderr if it exits non-zero."""
    proc = subprocess.run([sys.executable, "evolve.py", *args], cwd=ROOT, env=env or subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"evolve.py exited {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc


def last_record(stdout: str) -> dict:
    rec = json.loads(stdout.strip().splitlines()[-1])
    assert isinstance(rec, dict) and rec.keys() >= RECORD_KEYS, rec
    return rec


def read_results(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / RESULTS_NAME).read_text(encoding="utf-8").splitlines()]


# -- Autodidact.ask with hand-built parts ------------------------------------------------------------
@pytest.mark.parametrize("query", ["", "   \n\t"], ids=["empty", "blank"])
def test_ask_refuses_an_empty_question_clearly(tmp_path, encoder, query):
    bot = build_bot(tmp_path / "skills", encoder)
    with pytest.raises(EmptyQueryError, match=r"query=") as info:
        bot.ask(query)
    assert isinstance(info.value, AutodidactError)
    assert bot.factory.queue.list() == []  # nothing was queued for it


@pytest.mark.parametrize("learn", [False, True], ids=["answer_only", "learn"])
def test_ask_survives_a_huge_question_and_returns_every_key(tmp_path, encoder, learn):
    query = "What is the meaning of this rather long question? " * 1000  # 51,000 characters
    bot = build_bot(tmp_path / "skills", encoder, learn=learn)
    rec = bot.ask(query)
    assert rec.keys() >= RECORD_KEYS
    assert rec["query"] == query and isinstance(rec["answer"], str)
    assert rec["skill"] is None and rec["learned"] is False and rec["card"] is None
    assert rec["confidence_before"] == rec["confidence_after"] == 0.0
    json.dumps(rec)  # what evolve.py prints
    jobs = bot.factory.queue.list()
    if not learn:
        assert jobs == []
        return
    # The offline teacher does not know it: the (truncated) event stays queued for a retry.
    [job] = jobs
    assert job.state == "pending" and 1900 <= len(job.event.query) <= RouterConfig().max_query_chars
    assert "distill" in rec["reason"] and rec["job"]["state"] == "retry"


# -- the threshold decides what triggers learning ----------------------------------------------------
# A held-out rephrasing: the calibrated router gives it 0.92 against the skill below (measured; a
# rephrasing with words the skill never saw, "Which official first ran Brindlemark?", gets 0.01).
PARAPHRASE = "Which person first served as mayor of Brindlemark, and in which year?"
LOW, HIGH = 0.5, 0.99


def test_threshold_decides_between_answering_with_the_skill_and_queueing_a_learning_event(tmp_path, encoder):
    skills = tmp_path / "skills"
    skills.mkdir()
    fact = load_pack()[0]
    routing = build_routing([fact.question, *(p["question"] for p in fact.pairs)], encoder)
    make_card(skills / f"brindlemark{SUFFIX}", "brindlemark", encoder, routing=routing)

    low = build_bot(skills, encoder, down_distiller(), threshold=LOW)
    conf = low.router.route(PARAPHRASE).confidence
    assert LOW < conf < HIGH, f"the paraphrase's confidence {conf:.3f} must lie between the thresholds"
    rec = low.ask(PARAPHRASE)
    assert rec["skill"] == "brindlemark" and rec["card"] == str(skills / f"brindlemark{SUFFIX}")
    assert rec["confidence_before"] == rec["confidence_after"] == round(conf, 4)
    assert low.factory.queue.list() == []  # confident enough: nothing to learn

    high = build_bot(skills, encoder, down_distiller(), threshold=HIGH)
    rec = high.ask(PARAPHRASE)
    assert rec["skill"] is None and rec["learned"] is False and rec["card"] is None
    [job] = high.factory.queue.list()
    assert job.event.topic == topic_key(PARAPHRASE) and job.event.best_skill == "brindlemark"
    assert job.event.confidence == pytest.approx(conf)
    assert job.state == "pending" and "503" in job.errors[0]  # the teacher is down: kept for a retry
    assert "distill" in rec["reason"]


# -- the queue across processes ------------------------------------------------------------------------
KILLED_WORKER = textwrap.dedent("""
    import os, sys
    from autodidact.learning_queue import LearningEvent, LearningQueue
    q = LearningQueue.in_skills_dir(sys.argv[1])
    q.put(LearningEvent(query=sys.argv[2], best_skill=None, confidence=0.0))
    job = q.claim("doomed-worker", lease_s=0.5)
    print(job.id, flush=True)
    os._exit(9)  # killed mid-job: never completes, never closes the queue
""")


def test_queue_survives_a_killed_worker_and_completes_exactly_once_in_a_new_process(tmp_path, encoder):
    skills, run = tmp_path / "skills", tmp_path / "run"
    env = subprocess_env(tmp_path)
    killed = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(skills), QUESTION], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9, killed.stderr
    job_id = int(killed.stdout.strip())

    # A new process: evolve.py takes the dead worker's job over as it starts (it finishes ready jobs
    # before asking anything), learns the skill, and the same question is then answered with it.
    proc = evolve(tmp_path, "model=tiny", "model.threads=1", "logger=none", *LEARN_OVERRIDES,
                  f"skills_dir={skills}", f"hydra.run.dir={run}", f"query={QUESTION}", env=env)
    rec = last_record(proc.stdout)
    name = skill_name(QUESTION)
    assert rec["skill"] == name and rec["card"] == str(skills / f"{name}{SUFFIX}"), rec
    assert "job" not in rec  # learned before the question came: nothing was queued for it

    with LearningQueue.in_skills_dir(skills) as queue:
        [job] = queue.list()
        assert job.id == job_id and job.state == "done" and job.attempts == 2
        assert job.worker_id != "doomed-worker" and job.result["card"] == rec["card"]
        assert job.result["verified"] is True
        # A second drain, here in a third process, has nothing to do.
        router = LoRARouter(RouterConfig(), encoder)
        manager = LoRAManager(load_tiny(seed=0), skills, router)
        assert manager.scan()["installed"] == [name]
        tc = TeacherConfig.from_cfg({"kind": "offline"})
        factory = SkillFactory(queue, CloudDistiller(build_teacher(tc), tc.distill), manager, LoRAConfig(),
                               TrainConfig(progress_bar=False), work_dir=tmp_path / "work")
        assert factory.drain() == []
        assert queue.counts() == {"pending": 0, "running": 0, "done": 1, "dead": 0}
    assert sorted(p.name for p in skills.glob(f"*{SUFFIX}")) == [f"{name}{SUFFIX}"]


# -- evolve.py as a user runs it --------------------------------------------------------------------------
QUERIES = [QUESTION, 'Qu\'est-ce que c\'est, "x=1", Zürich?']


@pytest.mark.parametrize("query", QUERIES, ids=["brindlemark", "punctuation_and_unicode"])
def test_evolve_cli_prints_one_json_record_per_question_and_saves_it(tmp_path, query):
    run = tmp_path / "run"
    proc = evolve(tmp_path, "model=tiny", "model.threads=1", "logger=none", "learn=false",
                  f"skills_dir={tmp_path / 'skills'}", f"hydra.run.dir={run}", f"query={query}")
    rec = last_record(proc.stdout)
    assert rec["query"] == query  # exactly as typed: apostrophes, commas, quotes, '=' and non-ASCII
    assert rec["learned"] is False and rec["skill"] is None and isinstance(rec["answer"], str)
    assert read_results(run) == [rec]
    assert OmegaConf.load(run / ".hydra" / "config.yaml").query == query


def test_evolve_multirun_sweeps_the_threshold(tmp_path):
    sweep = tmp_path / "sweep"
    evolve(tmp_path, "-m", "model=tiny", "model.threads=1", "logger=none", "learn=false",
           f"skills_dir={tmp_path / 'skills'}", f"hydra.sweep.dir={sweep}", "query=hello",
           "router.threshold=0.3,0.5")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    thresholds = set()
    for job in jobs:
        [rec] = read_results(job)
        assert rec.keys() >= RECORD_KEYS and rec["query"] == "hello"
        thresholds.add(OmegaConf.load(job / ".hydra" / "config.yaml").router.threshold)
    assert thresholds == {0.3, 0.5}


def test_evolve_logs_to_wandb_offline_without_an_account(tmp_path):
    run = tmp_path / "run"
    proc = evolve(tmp_path, "model=tiny", "model.threads=1", "learn=false", f"skills_dir={tmp_path / 'skills'}",
                  f"hydra.run.dir={run}", "query=hello")  # the default logger=wandb
    assert last_record(proc.stdout)["query"] == "hello"
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].is_dir(), sorted(p.name for p in run.rglob("*"))[:50]
    assert list(runs[0].glob("*.wandb")), "the offline run holds no .wandb log"


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        (["router.threshold=2", "trainer.lr=-1"], ["router.threshold=2.0 must be in (0, 1)", "trainer.lr must be > 0"]),
        (["lora.target_modules=[foo]"], ["lora.target_modules", "this model has: ", "q_proj"]),
        (["skills_dir=/proc/autodidact-nope"], ["cannot use skills_dir=/proc/autodidact-nope"]),
        (["query="], ["the question is empty"]),
    ],
    ids=["every-config-problem-at-once", "unknown-target-modules", "unwritable-skills-dir", "empty-query"],
)
def test_bad_input_is_one_clear_error_and_a_failing_exit(tmp_path, args, messages):
    cmd = [sys.executable, "evolve.py", "model=tiny", "model.threads=1", "logger=none", "teacher=offline",
           f"hydra.run.dir={tmp_path / 'run'}", "query=hello", *args]
    if not any(a.startswith("skills_dir=") for a in args):
        cmd.append(f"skills_dir={tmp_path / 'skills'}")
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for m in messages:
        assert m in proc.stderr, proc.stderr[-3000:]


# -- a confident route whose skill is unsure of its answer is dissonance too ---------------------------
def test_a_weak_answer_from_a_routed_skill_queues_an_event_that_joins_that_skill(tmp_path, encoder):
    skills = tmp_path / "skills"
    skills.mkdir()
    fact = load_pack()[0]
    routing = build_routing([fact.question, *(p["question"] for p in fact.pairs)], encoder)
    make_card(skills / f"brindlemark{SUFFIX}", "brindlemark", encoder, routing=routing)
    # The hand-made card's random adapter is unsure of every token: below any sensible threshold.
    bot = build_bot(skills, encoder, learn=False, answer_threshold=0.99)
    rec = bot.ask(fact.question)
    assert rec["skill"] == "brindlemark" and rec["confidence_before"] >= 0.4
    assert rec["answer_confidence"] < 0.99 and rec["answer_confidence_before"] == rec["answer_confidence"]
    assert bot.factory.queue.list() == []  # learn=False: answered, nothing queued
    bot.learn = True
    bot.factory.queue.put = lambda event: queued.append(event) or (1, True)  # see the event, work nothing
    queued: list = []
    bot.factory.drain = lambda: []
    rec = bot.ask(fact.question)
    [event] = queued
    assert event.extra["join"] == "brindlemark" and event.extra["reason"] == "weak answer"
    assert event.extra["answer_confidence"] < 0.99
    assert rec["answer_before"] and rec["skill"] == "brindlemark"


def test_the_answer_after_learning_is_the_one_verification_accepted_not_a_second_decode(tmp_path, encoder):
    skills = tmp_path / "skills"
    bot = build_bot(skills, encoder)
    bot.max_new_tokens = bot.factory.config.max_new_tokens  # verified with the budget the loop answers with
    bot.factory.lora = LORA  # every linear layer, as lora=all_linear: the tiny model learns the fact
    calls = []
    answer = bot.manager.answer
    bot.manager.answer = lambda skill, q, n: calls.append(skill) or answer(skill, q, n)
    rec = bot.ask(QUESTION)
    assert rec["learned"] is True and rec["verified"] is True, rec
    [job] = bot.factory.queue.list()
    [verified] = [r for r in job.result["rounds"][-1]["references"] if r["query"] == QUESTION]
    assert verified["correct"] and rec["answer"] == verified["answer"]
    assert rec["answer_confidence"] == verified["min_prob"]
    assert calls == [None]  # the base model's answer before learning; none after it
    assert rec["stage_seconds"]["answer"] < 0.05
    # A later question goes to the installed card as before.
    again = bot.ask(QUESTION)
    assert again["skill"] == rec["skill"] and again["answer"] == rec["answer"] and calls == [None, rec["skill"]]


def test_a_build_that_fails_after_the_logger_started_closes_its_run_as_failed(tmp_path, monkeypatch):
    import threading
    import time

    from hydra import compose, initialize_config_dir

    import autodidact.train_skill as ts
    from autodidact.evolve_loop import build_autodidact

    class SlowLogger:  # starts like W&B (slowly, on first use of ``experiment``), records how it ended
        def __init__(self):
            self.started, self.status = threading.Event(), None

        @property
        def experiment(self):
            time.sleep(0.3)
            self.started.set()
            return self

        def finalize(self, status):
            self.status = status

    logger = SlowLogger()
    monkeypatch.setattr(ts, "build_logger", lambda cfg: logger)
    monkeypatch.setattr(ts, "load_bundle", lambda model: (_ for _ in ()).throw(OSError("no weights here")))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny", f"skills_dir={tmp_path / 'skills'}"])
    with pytest.raises(OSError, match="no weights here"):
        build_autodidact(cfg, tmp_path / "run")
    assert logger.started.is_set() and logger.status == "failed"  # waited for its start, then closed it
