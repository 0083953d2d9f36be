"""The durable learning queue: dedup, leases, backoff, dead letters, and crash/restart across processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autodidact.learning_queue import (
    DEFAULT_LEASE_S,
    QUEUE_FILENAME,
    LearningEvent,
    LearningQueue,
    LeaseLost,
    QueueError,
    QueuePolicy,
    QueueStorageError,
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


# -- a dead worker's job is taken over at once (holder pid/host), live ones keep theirs (heartbeat) ----
_CLAIM_AND_WAIT = """
import sys, time
from autodidact.learning_queue import LearningQueue
job = LearningQueue(sys.argv[1]).claim("doomed", lease_s=3600)
print(job.id, job.holder_pid, flush=True)
time.sleep(600)
"""


def test_sigkilled_worker_on_this_host_is_taken_over_immediately(tmp_path: Path) -> None:
    """A real process claims with an hour's lease and is killed with SIGKILL; the next claim takes over at once."""
    path = tmp_path / QUEUE_FILENAME
    with LearningQueue(path) as q:
        job_id, _ = q.put(event())
        p = _python(_CLAIM_AND_WAIT, str(path))
        try:
            claimed_id, pid = map(int, p.stdout.readline().split())
            assert (claimed_id, pid) == (job_id, p.pid)
            held = q.get(job_id)
            assert held.state == "running" and held.holder_pid == p.pid and held.lease_s == 3600
            assert q.claim("rescuer") is None  # its holder is alive: hands off
        finally:
            os.kill(p.pid, signal.SIGKILL)  # no cleanup, no rollback: the lease is left behind
            p.wait(timeout=10)
        t0 = time.perf_counter()
        job = q.claim("rescuer", lease_s=60)  # real clock: the hour-long lease has 59+ minutes left
        took = time.perf_counter() - t0
        assert job is not None and job.id == job_id and job.attempts == 2 and job.worker_id == "rescuer"
        assert job.holder_pid == os.getpid()
        assert "worker 'doomed'" in job.errors[0] and "died holding the job (the process has exited)" in job.errors[0]
        assert took < 1.0
        q.complete(job, {"ok": True})
        assert q.counts() == {"pending": 0, "running": 0, "done": 1, "dead": 0}


def test_an_unreaped_zombie_holder_counts_as_dead(tmp_path: Path) -> None:
    path = tmp_path / QUEUE_FILENAME
    with LearningQueue(path) as q:
        job_id, _ = q.put(event())
        p = _python(_CLAIM_AND_WAIT, str(path))
        try:
            assert int(p.stdout.readline().split()[0]) == job_id
            os.kill(p.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            os.kill(p.pid, 0)  # still "exists" for kill(): only its state tells
            job = q.claim("rescuer")
            assert job is not None and job.id == job_id and "zombie" in job.errors[0]
        finally:
            p.wait(timeout=10)


def test_holder_on_another_host_keeps_the_job_until_its_lease_runs_out(
    queue: LearningQueue, clock: Clock, monkeypatch
) -> None:
    queue.put(event())
    monkeypatch.setattr("autodidact.learning_queue.host_id", lambda: "other-machine")
    remote = queue.claim("remote", lease_s=30)
    monkeypatch.undo()
    assert remote.holder_host == "other-machine"
    # its pid means nothing here (it is even our own pid): only the lease can tell
    clock.t += 29
    assert queue.claim("local", 30) is None
    clock.t += 2
    job = queue.claim("local", 30)
    assert job.id == remote.id and "the lease of worker 'remote'" in job.errors[0] and "expired" in job.errors[0]


@pytest.mark.parametrize(
    ("patch", "why"),
    [
        ("process_start", "its pid now belongs to another process"),
        ("boot_id", "the machine has rebooted since"),
    ],
)
def test_pid_reuse_and_reboot_are_seen(queue: LearningQueue, monkeypatch, patch: str, why: str) -> None:
    """The holder's pid is alive (it is ours) but was another process's: it started earlier, or before a reboot."""
    queue.put(event())
    monkeypatch.setattr(f"autodidact.learning_queue.{patch}", lambda *a: "earlier")
    queue.claim("before", lease_s=600)
    monkeypatch.undo()
    job = queue.claim("after", lease_s=600)
    assert job is not None and job.worker_id == "after" and why in job.errors[0]


def test_a_live_holder_is_never_taken_over_before_its_lease(queue: LearningQueue, clock: Clock) -> None:
    queue.put(event())
    held = queue.claim("me", lease_s=60)  # this process: alive
    clock.t += 59
    assert queue.claim("other") is None
    assert queue.get(held.id).worker_id == "me"


def test_default_lease_is_short_and_heartbeat_renews_it(queue: LearningQueue, clock: Clock, monkeypatch) -> None:
    queue.put(event())
    job = queue.claim("w")
    assert job.lease_s == DEFAULT_LEASE_S == 60.0 and job.lease_expires == clock.t + 60
    clock.t += 50
    job = queue.heartbeat(job)
    assert job.lease_expires == clock.t + 60  # renewed by the claimed length
    monkeypatch.setattr("autodidact.learning_queue.host_id", lambda: "elsewhere")  # claim as another machine
    clock.t += 59
    assert queue.claim("other") is None
    clock.t += 2
    taken = queue.claim("other")
    assert taken.id == job.id
    with pytest.raises(LeaseLost, match="other"):
        queue.heartbeat(job)


def test_keep_alive_holds_a_short_lease_through_a_long_step(tmp_path: Path, monkeypatch) -> None:
    with LearningQueue(tmp_path / QUEUE_FILENAME) as q:
        q.put(event())
        job = q.claim("trainer", lease_s=0.3)
        with q.keep_alive(job, every_s=0.05) as beat:
            for _ in range(8):  # 0.8 s of "training": well past the 0.3 s lease
                time.sleep(0.1)
                with monkeypatch.context() as m:
                    m.setattr("autodidact.learning_queue.host_id", lambda: "elsewhere")
                    assert q.claim("thief") is None
        assert beat.error is None and beat.beats >= 5
        assert q.complete(job, {"ok": 1}).state == "done"
        assert len(q._all) == 1  # the heartbeat thread closed its own connection


def test_keep_alive_stops_and_reports_a_lost_lease(tmp_path: Path) -> None:
    with LearningQueue(tmp_path / QUEUE_FILENAME) as q:
        q.put(event())
        job = q.claim("trainer", lease_s=5)
        with q.keep_alive(job, every_s=0.05) as beat:
            q.fail(job, "someone else gave up on it", retry=False)
            time.sleep(0.3)
        assert isinstance(beat.error, LeaseLost) and "dead" in str(beat.error)
        with pytest.raises(LeaseLost):
            q.complete(job, {})


_OLD_SCHEMA = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')), event TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL, worker_id TEXT, lease_expires REAL,
    result TEXT, errors TEXT NOT NULL DEFAULT '[]', created_at REAL NOT NULL, updated_at REAL NOT NULL);
"""


def test_a_queue_file_from_before_holder_tracking_is_migrated_without_loss(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / QUEUE_FILENAME
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    e = json.dumps(event().to_dict())
    db.execute("INSERT INTO jobs (topic, state, event, attempts, not_before, worker_id, lease_expires, created_at, "
               "updated_at) VALUES ('t1', 'running', ?, 1, 0, 'old', 10, 0, 0)", (e,))
    db.execute("INSERT INTO jobs (topic, state, event, not_before, created_at, updated_at) "
               "VALUES ('t2', 'pending', ?, 0, 0, 0)", (e,))
    db.commit()
    db.close()
    with LearningQueue(path) as q:
        assert [(j.state, j.holder_pid) for j in q.list()] == [("running", None), ("pending", None)]
        first = q.claim("new")  # the old running job's lease (t=10) ran out long ago
        assert first.id == 1 and first.attempts == 2 and first.holder_pid == os.getpid()
        assert q.claim("new").id == 2


# -- disk full, read-only, damaged, locked: our error, nothing lost ------------------------------------
def _fill_to_the_brim(q: LearningQueue) -> None:
    """Cap the file at its current size, as a full disk would (SQLite reports SQLITE_FULL either way)."""
    db = q._conn()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def test_full_disk_on_put_and_complete_keeps_every_event(queue: LearningQueue) -> None:
    for i in range(3):
        queue.put(event(f"fact number {i}"))
    job = queue.claim("w")
    before = [(j.id, j.state, j.attempts) for j in queue.list()]
    _fill_to_the_brim(queue)
    big = {"blob": "x" * 200_000}
    with pytest.raises(QueueStorageError, match="disk is full") as e:
        queue.put(LearningEvent(query="a new fact", best_skill=None, confidence=0.1, extra=big))
    assert str(queue.path) in str(e.value) and "every event queued before is still queued" in str(e.value)
    with pytest.raises(QueueStorageError, match="disk is full"):
        queue.complete(job, big)
    assert [(j.id, j.state, j.attempts) for j in queue.list()] == before  # rolled back, nothing lost
    queue._conn().execute("PRAGMA max_page_count = 1073741823")  # space freed
    assert queue.complete(job, big).state == "done"
    assert queue.put(LearningEvent(query="a new fact", best_skill=None, confidence=0.1, extra=big))[1]


def test_read_only_queue_is_our_error_and_loses_nothing(queue: LearningQueue) -> None:
    """Read-only is simulated: tests run as root, whom chmod does not stop, and a read-only mount needs
    privileges a test does not have. SQLite's ``query_only`` makes every write fail with the same
    SQLITE_READONLY result code a read-only file or file system gives."""
    queue.put(event())
    queue._conn().execute("PRAGMA query_only = ON")
    with pytest.raises(QueueStorageError, match="read-only") as e:
        queue.claim("w")
    assert "skills_dir=DIR" in str(e.value)
    assert queue.counts()["pending"] == 1  # reads still work, the event is still queued
    queue._conn().execute("PRAGMA query_only = OFF")
    assert queue.claim("w") is not None


def test_unwritable_queue_folder_is_our_error(tmp_path: Path, monkeypatch) -> None:
    """EROFS is simulated on mkdir (root ignores chmod; see above)."""
    import errno

    def erofs(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", erofs)
    with pytest.raises(QueueStorageError, match="Read-only file system.*skills_dir=DIR"):
        LearningQueue(tmp_path / "ro" / QUEUE_FILENAME)


@pytest.mark.parametrize("damage", ["garbage", "zeroed-pages"])
def test_damaged_queue_file_says_move_it_aside_and_touches_nothing(tmp_path: Path, damage: str) -> None:
    path = tmp_path / QUEUE_FILENAME
    card = tmp_path / "skill.lora.arrow"
    card.write_bytes(b"a card beside the queue")
    if damage == "garbage":
        path.write_bytes(random.Random(7).randbytes(8192))
    else:
        with LearningQueue(path) as q:
            for i in range(200):
                q.put(event(f"fact number {i} " + "padding " * 40))
        data = bytearray(path.read_bytes())
        assert len(data) > 5 * 4096
        data[2 * 4096:4 * 4096] = random.Random(7).randbytes(2 * 4096)  # two b-tree pages overwritten
        path.write_bytes(bytes(data))
    damaged = path.read_bytes()
    with pytest.raises(QueueStorageError) as e:
        LearningQueue(path)
    msg = str(e.value)
    assert "damaged" in msg and f"mv {path} {path}.broken" in msg and "skill cards beside it are not touched" in msg
    assert path.read_bytes() == damaged  # left as it was, for whoever wants to salvage it
    assert card.read_bytes() == b"a card beside the queue"
    path.rename(path.with_name(path.name + ".broken"))  # doing what the message says works
    with LearningQueue(path) as q:
        assert q.put(event())[1]


def test_a_lock_held_too_long_is_our_error(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / QUEUE_FILENAME
    with LearningQueue(path, busy_timeout_s=0.2) as q:
        q.put(event())
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(QueueStorageError, match="stayed locked by another process"):
                q.claim("w")
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert q.claim("w") is not None
