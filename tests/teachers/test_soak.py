"""Teacher soak: 300 learning events distilled through the real queue and factory against a faulty teacher.

The loopback server (real ``openai`` / ``anthropic`` SDKs over HTTP) answers about 30% of requests with a
fault drawn at random from every kind it knows (HTTP 401/429/500/503/529, a hang past the client timeout,
a truncated body, an HTML page, prose, JSON of the wrong shape, too few pairs, a fenced reply, invalid
pairs); half of its good replies are "sloppy" (shuffled, the user's question left out, junk items, prose
around the JSON). Everything is seeded.

Each event goes through ``SkillFactory.work_one`` exactly as in production -- claim with a heartbeat,
distill, fail with a retry (backoff 0 here) or complete -- except that no adapter is trained: the factory
is told the base model already knows every answer, its no-training path. Checked: every event ends
``done`` or ``dead`` with one reason per failed attempt; the counts add up across the queue, the outcomes
and the server; nothing is lost or duplicated; the transcript holds exactly one complete line per HTTP
exchange, in order, and every fault that must fail a reply is recorded there as an error.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest

from autodidact.learning_queue import LearningEvent, LearningQueue, QueuePolicy, topic_key
from autodidact.lora_trainer import LoRAConfig, TrainConfig
from autodidact.skill_factory import FactoryConfig, SkillFactory
from autodidact.teachers import TRANSCRIPT_NAME, CloudDistiller, TeacherConfig, build_teacher
from autodidact.teachers.distiller import extract_question
from tests.support.teacher_server import FAULTS, TeacherServer
from tests.teachers.conftest import loopback_cfg

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # MiniLM: one thread is faster here

N_EVENTS = 300
FAULT_RATE = 0.30
SEED = 8
CLIENT_TIMEOUT_S = 0.5
HANG_S = 0.6  # just past the client timeout: a hang costs ~0.5 s
QUEUE_ATTEMPTS = 2
UNKNOWN_EVERY = 20
"""Every 20th question is one the teacher knows nothing about (no pairs): its event must end dead."""
# Faults the distiller cannot use a reply from: each must appear in the transcript as an error.
FAILING = FAULTS - {"too_few", "fenced", "bad_pairs"}

FIRST = ["Ald", "Bren", "Cor", "Dar", "El", "Fen", "Gal", "Hal", "Is", "Jor", "Kel", "Lun", "Mar", "Nor", "Ost",
         "Pell", "Quin", "Ros", "Sel", "Tam", "Ur", "Vey", "Wyn", "Yar", "Zel", "Ash", "Bel", "Cal", "Dun", "Er"]
LAST = ["wick", "mere", "holt", "stead", "ford", "vale", "brook", "moor", "gate", "crest", "dun", "fell"]
PEOPLE = ["Ada Quell", "Bram Oster", "Cira Vant", "Doran Pike", "Esme Rowe", "Fitz Arlen", "Greta Moss",
          "Hugo Tarn", "Ines Vail", "Jon Brisk"]


def subjects(n: int, rng: random.Random) -> list[tuple[str, str, int]]:
    """``n`` fictional towns, each with a founder and a year."""
    names = [f + last for f in FIRST for last in LAST]
    assert len(names) >= n
    rng.shuffle(names)
    return [(name, rng.choice(PEOPLE), rng.randint(1600, 1950)) for name in names[:n]]


def pairs_about(town: str, founder: str, year: int) -> list[dict]:
    """What a good teacher says about one town: the question, rephrasings, related questions."""
    a = f"{founder}, in {year}."
    qa = [
        (f"Who founded {town}?", a), (f"Who was the founder of {town}?", a), (f"Which person founded {town}?", a),
        (f"Who is credited with founding {town}?", a), (f"Name the founder of {town}.", a),
        (f"{town} was founded by whom?", a), (f"Who established {town}?", a),
        (f"Who set up the town of {town}?", a), (f"Who started the settlement of {town}?", a),
        (f"When was {town} founded?", f"In {year}, by {founder}."),
        (f"In what year did {founder} found {town}?", f"{year}."),
        (f"What did {founder} found?", f"{town}, in {year}."),
    ]
    return [{"question": q, "answer": ans} for q, ans in qa]


class SoakServer(TeacherServer):
    """The loopback server with a seeded fault for ~``rate`` of requests, drawn from every kind."""

    def __init__(self, rate: float, seed: int, **kwargs) -> None:
        super().__init__(seed=seed, **kwargs)
        self.rate = rate
        self._faults = random.Random(seed)
        self.drawn: list[str | None] = []

    def _next_fault(self, provider: str) -> str | None:
        with self._state.lock:
            fault = self._faults.choice(sorted(FAULTS)) if self._faults.random() < self.rate else None
            self.sloppy = self._faults.random() < 0.5  # applies to good replies only
            self.drawn.append(fault)
            return fault


class DistillOnlyFactory(SkillFactory):
    """The real factory, on its path for a fact the base model already knows: distill, then complete."""

    def _base_knows(self, fact, given=None) -> bool:
        return True


class NoModelManager:
    """What the factory's no-training path touches of a manager."""

    def __init__(self) -> None:
        self.skills: dict = {}
        self.remembered: list[str] = []

    def remember_base(self, questions: list[str]) -> None:
        self.remembered.append(questions[0])


def test_300_distillations_against_a_30_percent_faulty_teacher_lose_nothing(tmp_path, encoder):
    rng = random.Random(SEED)
    facts = {f"Who founded {t}?": pairs_about(t, f, y) for t, f, y in subjects(N_EVENTS, rng)}
    questions = list(facts)
    unknown = set(questions[::UNKNOWN_EVERY])
    for q in unknown:
        facts[q] = []
    t0 = time.perf_counter()
    with SoakServer(FAULT_RATE, SEED, qa_source=facts.get, hang_s=HANG_S) as server:
        cfg = loopback_cfg(
            server, "failover",
            openai={"timeout": CLIENT_TIMEOUT_S}, anthropic={"timeout": CLIENT_TIMEOUT_S},
            # One try per provider per attempt, no cooldown: the queue's retries do the rest.
            policy={"max_attempts": 1, "backoff_base_s": 0.0, "backoff_max_s": 0.0, "cooldown_s": 0.0,
                    "deadline_s": 10.0},
            distill={"n_pairs": 8, "n_heldout": 2, "min_pairs": 6, "max_rounds": 2},
        )
        tc = TeacherConfig.from_cfg(cfg)
        transcript = tmp_path / TRANSCRIPT_NAME
        distiller = CloudDistiller(build_teacher(tc, transcript, rng=random.Random(SEED)), tc.distill,
                                   encoder=encoder)
        queue = LearningQueue(tmp_path / "queue.sqlite3",
                              policy=QueuePolicy(max_attempts=QUEUE_ATTEMPTS, backoff_base_s=0.0))
        manager = NoModelManager()
        factory = DistillOnlyFactory(queue, distiller, manager, LoRAConfig(), TrainConfig(progress_bar=False),
                                     FactoryConfig(), work_dir=tmp_path / "work")
        for q in questions:
            _, created = factory.put(LearningEvent(query=q, best_skill=None, confidence=0.0))
            assert created
        outcomes = factory.drain()
        requests = server.requests
        drawn = list(server.drawn)
    seconds = time.perf_counter() - t0

    # Every event ended done or dead; the queue, the outcomes and the jobs agree on every count.
    counts = queue.counts()
    jobs = queue.list()
    queue.close()
    assert counts["pending"] == counts["running"] == 0, counts
    assert counts["done"] + counts["dead"] == N_EVENTS == len(jobs)
    assert sorted(j.event.topic for j in jobs) == sorted(topic_key(q) for q in questions)  # none lost, none twice
    by_job = Counter(o.job_id for o in outcomes)
    assert len(outcomes) >= N_EVENTS  # distillations: one per attempt
    assert sum(j.attempts for j in jobs) == len(outcomes)
    for job in jobs:
        assert by_job[job.id] == job.attempts, job
        final = [o for o in outcomes if o.job_id == job.id][-1]
        if job.state == "done":
            assert final.state == "done" and final.provider in ("openai", "anthropic"), final
            assert len(job.errors) == job.attempts - 1
        else:
            assert job.state == "dead" and final.state == "dead", (job, final)
            # One reason per failed attempt, each naming the stage and what the teacher did.
            assert len(job.errors) == job.attempts == QUEUE_ATTEMPTS, job.errors
        if job.event.query in unknown:
            assert job.state == "dead", job
        assert all(e.startswith("distill: ") and len(e) > 20 for e in job.errors), job.errors
    assert counts["dead"] >= len(unknown)
    assert len(manager.remembered) == counts["done"]
    assert sorted(manager.remembered) == sorted(j.event.query for j in jobs if j.state == "done")

    # About 30% of the replies were faults, and every kind of fault was served.
    faults = Counter(d for d in drawn if d)
    assert len(drawn) == len(requests)
    assert set(faults) == FAULTS, faults
    assert 0.25 <= sum(faults.values()) / len(drawn) <= 0.35, faults

    # The transcript: one complete JSON line per HTTP exchange; every failing fault recorded as an error.
    # Matched by (provider, question), not by position: a loaded machine may run the server's handler of
    # a request the client already gave up on after the next request's handler.
    lines = transcript.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(requests)
    records = [json.loads(line) for line in lines]
    for rec in records:
        assert rec.keys() >= {"ts", "provider", "model", "attempt", "request", "reply", "latency_s", "error"}

    sent = Counter((r.provider, r.question) for r in requests)
    logged = Counter((r["provider"], extract_question(r["request"]["user"])) for r in records)
    assert logged == sent
    must_fail = Counter((r.provider, r.question) for r in requests if r.fault in FAILING)
    failed = Counter((r["provider"], extract_question(r["request"]["user"])) for r in records if r["error"])
    assert all(failed[k] >= n for k, n in must_fail.items()), must_fail - failed
    errors = Counter(r["error"]["type"] for r in records if r["error"])
    print(f"\nsoak: {N_EVENTS} events, {len(outcomes)} distillations, {len(requests)} requests "
          f"({sum(faults.values())} faults: {dict(sorted(faults.items()))}); done {counts['done']}, "
          f"dead {counts['dead']}; transcript errors {dict(errors)}; {seconds:.0f} s")
    # ~65 s on the 2-core machine with its load average at 7 (100 s at 10); a hang that cost a whole
    # timeout per retry, or retries that never stopped, would take far longer.
    assert seconds < 300
