"""The durable learning queue: dedup, leases, backoff, dead letters, and crash/restart across processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autodidact.learning_queue import (
    QUEUE_FILENAME,
    LearningEvent,
    LearningQueue,
    LeaseLost,
    QueueError,
    QueuePolicy,
    topic_key,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


class Clock:
    """A hand-wound clock, so lease expiry and backoff are tested without sleeping."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def event(query: str = "Who was the first mayor of Brindlemark?") -> LearningEvent:
    return LearningEvent(query=query, best_skill=None, confidence=0.1, extra={"scores": {"x": 0.2}})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> LearningQueue:
    q = LearningQueue.in_skills_dir(tmp_path, clock=clock, policy=QueuePolicy(3, 10.0, 25.0))
    yield q
    q.close()


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("Who was the first mayor of Brindlemark?", "who was the FIRST mayor of brindlemark", True),
        ("Who  was\tthe first mayor of Brindlemark ?!", "who was the first mayor of brindlemark", True),
        ("Who was the first mayor of Brindlemark?", "Who was the first mayor of Quillhaven?", False),
    ],
)
def test_topic_key_normalises_case_space_and_punctuation(a: str, b: str, same: bool) -> None:
    assert (topic_key(a) == topic_key(b)) is same


def test_event_with_empty_topic_is_refused() -> None:
    with pytest.raises(QueueError, match="empty topic"):
        LearningEvent(query=" ?! ", best_skill=None, confidence=0.0)


def test_queue_file_lives_in_the_skills_dir(queue: LearningQueue, tmp_path: Path) -> None:
    assert queue.path == tmp_path / QUEUE_FILENAME
    assert queue.path.exists()
    mode = queue._conn().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_put_dedups_in_flight_topics(queue: LearningQueue) -> None:
    first = queue.put(event())
    assert first[1] is True
    assert queue.put(event("who was the first mayor of brindlemark")) == (first[0], False)
    other = queue.put(event("Who was the first mayor of Quillhaven?"))
    assert other[1] is True and other[0] != first[0]
    # still deduped while running
    queue.claim("w1", lease_s=60)
    assert queue.put(event()) == (first[0], False)
    assert queue.counts() == {"pending": 1, "running": 1, "done": 0, "dead": 0}


def test_done_topic_is_requeued_only_with_relearn(queue: LearningQueue) -> None:
    job_id, _ = queue.put(event())
    queue.complete(queue.claim("w1", 60), {"skill": "brindlemark"})
    assert queue.put(event()) == (job_id, False)
    new_id, created = queue.put(event(), relearn=True)
    assert created and new_id != job_id
    assert queue.put(event(), relearn=True) == (new_id, False)  # relearn never duplicates in-flight


def test_claim_round_trips_the_event_as_json(queue: LearningQueue) -> None:
    e = event()
    queue.put(e)
    job = queue.claim("w1", 60)
    assert job.event == e and job.state == "running" and job.attempts == 1 and job.worker_id == "w1"
    assert queue.claim("w2", 60) is None  # nothing else ready
    done = queue.complete(job, {"skill": "brindlemark", "loss": 0.12})
    assert done.state == "done" and done.result == {"skill": "brindlemark", "loss": 0.12}
    raw = queue._conn().execute("SELECT event, result FROM jobs").fetchone()
    assert json.loads(raw["event"])["query"] == e.query and json.loads(raw["result"])["loss"] == 0.12


def test_expired_lease_is_reclaimed_and_old_worker_cannot_finish(queue: LearningQueue, clock: Clock) -> None:
    queue.put(event())
    stale = queue.claim("w1", lease_s=30)
    clock.t += 29
    assert queue.claim("w2", 30) is None  # lease still valid
    clock.t += 2
    fresh = queue.claim("w2", 30)
    assert fresh.id == stale.id and fresh.worker_id == "w2" and fresh.attempts == 2
    with pytest.raises(LeaseLost, match="w2"):
        queue.complete(stale, {"skill": "late"})
    queue.complete(fresh, {"skill": "ok"})
    assert queue.get(fresh.id).result == {"skill": "ok"}


def test_renew_keeps_a_long_job(queue: LearningQueue, clock: Clock) -> None:
    queue.put(event())
    job = queue.claim("w1", lease_s=30)
    clock.t += 20
    job = queue.renew(job, 30)
    clock.t += 20  # past the first lease, inside the renewed one
    assert queue.claim("w2", 30) is None
    assert queue.complete(job, {}).state == "done"


def test_fail_backs_off_exponentially_then_dead_letters(queue: LearningQueue, clock: Clock) -> None:
    job_id, _ = queue.put(event())
    delays = []
    for attempt in (1, 2):
        job = queue.claim("w", 60)
        assert job.attempts == attempt
        failed = queue.fail(job, f"teacher down #{attempt}")
        assert failed.state == "pending"
        delays.append(failed.not_before - clock.t)
        assert queue.claim("w", 60) is None  # backing off
        clock.t = failed.not_before
    assert delays == [10.0, 20.0]
    dead = queue.fail(queue.claim("w", 60), "teacher down #3")
    assert dead.state == "dead"
    assert dead.errors == ["teacher down #1", "teacher down #2", "teacher down #3 (gave up after 3 attempts)"]
    assert queue.claim("w", 60) is None
    assert queue.list("dead")[0].id == job_id
    assert queue.put(event()) == (job_id, False)  # a dead topic is not silently retried either


def test_backoff_is_capped() -> None:
    assert [QueuePolicy(9, 10.0, 25.0).backoff(n) for n in (1, 2, 3, 4)] == [10.0, 20.0, 25.0, 25.0]


def test_fail_without_retry_goes_dead_at_once(queue: LearningQueue) -> None:
    queue.put(event())
    dead = queue.fail(queue.claim("w", 60), "teacher refused: policy", retry=False)
    assert dead.state == "dead" and dead.errors == ["teacher refused: policy"]


def test_job_that_keeps_killing_its_worker_is_dead_lettered(queue: LearningQueue, clock: Clock) -> None:
    queue.put(event())
    for _ in range(3):
        assert queue.claim("w", lease_s=5) is not None
        clock.t += 6  # worker died: lease runs out
    assert queue.claim("w", 5) is None
    (dead,) = queue.list("dead")
    assert "expired" in dead.errors[-1]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda q: q.get(999), "No learning job"),
        (lambda q: q.list("sleeping"), "Unknown job state"),
        (lambda q: q.claim("w", 0), "lease_s"),
        (lambda q: q.complete(q.put(event())[0], {}), "claim\\(\\) it"),
        (lambda q: QueuePolicy(max_attempts=0), "max_attempts"),
    ],
)
def test_misuse_gives_our_errors(queue: LearningQueue, call, error: str) -> None:
    with pytest.raises(QueueError, match=error):
        call(queue)


def test_result_must_be_json(queue: LearningQueue) -> None:
    queue.put(event())
    job = queue.claim("w", 60)
    with pytest.raises(TypeError):
        queue.complete(job, {"obj": object()})
    assert queue.get(job.id).state == "running"  # unchanged


def test_threads_share_one_queue_without_double_claims(queue: LearningQueue) -> None:
    for i in range(40):
        queue.put(event(f"question number {i}"))
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := queue.claim(name, 60)) is not None:
            queue.complete(job, {"by": name})
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40
    assert queue.counts()["done"] == 40


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_WORKER = """
import json, sys
from autodidact.learning_queue import LearningQueue
q = LearningQueue(sys.argv[1])
done = []
while (job := q.claim(sys.argv[2], lease_s=60)) is not None:
    q.complete(job, {"by": sys.argv[2]})
    done.append(job.id)
print(json.dumps(done))
"""


def test_event_put_here_is_done_exactly_once_by_new_processes(tmp_path: Path) -> None:
    path = tmp_path / QUEUE_FILENAME
    with LearningQueue(path) as q:
        ids = [q.put(event(f"fact {i}"))[0] for i in range(20)]
    procs = [_python(_WORKER, str(path), f"proc{i}") for i in range(3)]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        done += json.loads(out)
    assert sorted(done) == sorted(ids)  # every job once, none twice
    with LearningQueue(path) as q:
        assert q.counts() == {"pending": 0, "running": 0, "done": 20, "dead": 0}
        assert {j.result["by"] for j in q.list("done")} <= {"proc0", "proc1", "proc2"}


_CLAIM_AND_HANG = """
import sys, time
from autodidact.learning_queue import LearningQueue
job = LearningQueue(sys.argv[1]).claim("doomed", lease_s=2)
print(job.id, flush=True)
time.sleep(600)
"""


def test_job_of_a_killed_worker_survives_and_is_reclaimed(tmp_path: Path) -> None:
    path = tmp_path / QUEUE_FILENAME
    with LearningQueue(path) as q:
        job_id, _ = q.put(event())
    p = _python(_CLAIM_AND_HANG, str(path))
    assert int(p.stdout.readline()) == job_id
    os.kill(p.pid, signal.SIGKILL)  # no cleanup, no rollback: the lease is left behind
    p.wait(timeout=10)
    later = Clock(time.time() + 3)  # past the 2 s lease, without sleeping
    with LearningQueue(path, clock=later) as q:
        assert q.get(job_id).state == "running"
        job = q.claim("rescuer", 60)
        assert job.id == job_id and job.attempts == 2
        q.complete(job, {"ok": True})
        assert q.get(job_id).state == "done"
