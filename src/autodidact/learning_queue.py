"""A durable queue of learning events, one SQLite file next to the skills (``queue.sqlite3``).

Life of a job::

    put ──> pending ──claim──> running ──complete──> done
               ^                  │ fail(retry) / lease expired
               └── not_before ────┘ (exponential backoff)
                                  │ fail(retry=False) / attempts used up
                                  └──────────────> dead   (reason kept, never dropped)

- Dedup: at most one job per topic key is in flight (pending or running); a partial UNIQUE index
  enforces it across processes. A topic that is done or dead is re-queued only with ``relearn=True``,
  so a learned (or hopeless) topic is not learned again every time someone asks it.
- Crash safety: ``claim`` takes a lease. A worker that dies (kill -9, power cut) leaves its job
  ``running`` with a lease in the past; the next ``claim`` takes it over. Each claim counts as an
  attempt, so a job that keeps killing its worker ends ``dead`` instead of looping forever.
- Atomicity: every state change is one ``BEGIN IMMEDIATE`` transaction (takes the write lock up
  front, so two claimers cannot both read the same pending row).
- Durability: WAL + ``synchronous=FULL``. Events are rare (one per dissonant query) and each one
  costs a distillation run, so losing an acknowledged ``put`` on power loss is worse than the
  extra fsync per commit that NORMAL would save.
- Everything stored is JSON text; nothing is pickled.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autodidact.errors import AutodidactError

QUEUE_FILENAME = "queue.sqlite3"
STATES = ("pending", "running", "done", "dead")
IN_FLIGHT = ("pending", "running")


class QueueError(AutodidactError):
    """The learning queue was used wrongly or its file is unusable."""


class LeaseLost(QueueError):
    """A worker tried to finish a job that is no longer leased to it."""


def topic_key(query: str) -> str:
    """Normalise a query for dedup: NFKC, casefold, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", query).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


@dataclass(frozen=True)
class LearningEvent:
    """A query the router could not answer confidently: something to learn."""

    query: str
    """The user's query (possibly truncated by the router)."""
    best_skill: str | None
    """The closest installed skill, or None when no skill is installed."""
    confidence: float
    """Routing probability of ``best_skill``; below the router threshold by construction."""
    created_at: float = field(default_factory=time.time)
    """Unix time the dissonance was detected."""
    topic: str = ""
    """Dedup key; defaults to ``topic_key(query)``."""
    extra: dict[str, Any] = field(default_factory=dict)
    """JSON-safe context (e.g. the top routing scores) for the distiller."""

    def __post_init__(self) -> None:
        if not self.topic:
            object.__setattr__(self, "topic", topic_key(self.query))
        if not self.topic:
            raise QueueError(
                f"Learning event for {self.query!r} has an empty topic; give it a non-empty query."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearningEvent:
        return cls(**d)


@dataclass(frozen=True)
class Job:
    """One leased unit of work, as handed to a worker by ``claim``."""

    id: int
    """Row id in the queue."""
    event: LearningEvent
    """What to learn."""
    state: str
    """One of ``STATES``."""
    attempts: int
    """Claims so far, this one included."""
    worker_id: str | None
    """Who holds (or last held) the lease."""
    lease_expires: float | None
    """Unix time after which another worker may take the job over."""
    not_before: float
    """Unix time before which the job is not handed out (backoff)."""
    result: dict[str, Any] | None
    """What ``complete`` recorded."""
    errors: list[str]
    """Every failure reason, oldest first."""
    created_at: float
    """Unix time of ``put``."""
    updated_at: float
    """Unix time of the last state change."""


@dataclass(frozen=True)
class QueuePolicy:
    """Retry policy, as plain data."""

    max_attempts: int = 5
    """Claims allowed before a failing job goes ``dead``."""
    backoff_base_s: float = 30.0
    """Delay after the first failure; doubles with each further attempt."""
    backoff_max_s: float = 3600.0
    """Upper bound on the backoff delay."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append(f"max_attempts={self.max_attempts} must be >= 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            problems.append("backoff_base_s and backoff_max_s must be >= 0")
        if problems:
            raise QueueError("Invalid queue policy: " + "; ".join(problems) + ".")

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempts - 1))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    topic         TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    event         TEXT    NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    REAL    NOT NULL,
    worker_id     TEXT,
    lease_expires REAL,
    result        TEXT,
    errors        TEXT    NOT NULL DEFAULT '[]',
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_in_flight_per_topic
    ON jobs (topic) WHERE state IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, not_before);
"""


class LearningQueue:
    """Durable, deduplicated, lease-based job queue; safe across threads and processes."""

    def __init__(
        self,
        path: str | Path,
        policy: QueuePolicy | None = None,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 30.0,
    ) -> None:
        """Open (creating if needed) the queue at ``path``; ``clock`` is injectable for tests."""
        self.path = Path(path)
        self.policy = policy or QueuePolicy()
        self.clock = clock
        self.busy_timeout_s = busy_timeout_s
        # sqlite3 connections must not be shared between threads mid-transaction; one per thread.
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn().executescript(_SCHEMA)  # idempotent; safe if another process races us

    @classmethod
    def in_skills_dir(cls, skills_dir: str | Path, **kwargs: Any) -> LearningQueue:
        """The queue that lives beside the skill cards, ``<skills_dir>/queue.sqlite3``."""
        return cls(Path(skills_dir) / QUEUE_FILENAME, **kwargs)

    # -- connections -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                # check_same_thread=False only so close() can reach other threads' connections;
                # each connection is still used by the one thread that opened it.
                db = sqlite3.connect(
                    self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            except sqlite3.DatabaseError as e:
                raise QueueError(
                    f"Cannot open the learning queue {self.path}: {e}. If the file is damaged, move it "
                    "aside; a new empty queue is created on the next start."
                ) from e
            db.row_factory = sqlite3.Row
            self._local.db = db
            with self._all_lock:
                self._all.append(db)
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> LearningQueue._Tx:
        return self._Tx(self._conn())

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._all_lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> LearningQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producer ----------------------------------------------------------------------------

    def put(self, event: LearningEvent, relearn: bool = False) -> tuple[int, bool]:
        """Enqueue ``event``; returns ``(job_id, created)``.

        ``created`` is False when the topic is already in flight (the existing job's id is returned),
        or when it was already learned (done) or given up on (dead) and ``relearn`` is False.
        """
        now = self.clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT id, state FROM jobs WHERE topic = ? ORDER BY id DESC LIMIT 1", (event.topic,)
            ).fetchone()
            if row is not None and (row["state"] in IN_FLIGHT or not relearn):
                return row["id"], False
            cur = db.execute(
                "INSERT INTO jobs (topic, state, event, not_before, created_at, updated_at) "
                "VALUES (?, 'pending', ?, ?, ?, ?)",
                (event.topic, json.dumps(event.to_dict()), now, now, now),
            )
            return int(cur.lastrowid), True

    # -- worker ------------------------------------------------------------------------------

    def claim(self, worker_id: str, lease_s: float = 600.0) -> Job | None:
        """Lease the oldest ready job to ``worker_id`` for ``lease_s`` seconds; None if none is ready."""
        if lease_s <= 0:
            raise QueueError(f"lease_s={lease_s} must be > 0 seconds.")
        now = self.clock()
        with self._tx() as db:
            while True:
                row = db.execute(
                    "SELECT * FROM jobs WHERE (state = 'pending' AND not_before <= ?) "
                    "OR (state = 'running' AND lease_expires <= ?) ORDER BY not_before, id LIMIT 1",
                    (now, now),
                ).fetchone()
                if row is None:
                    return None
                if row["state"] == "running" and row["attempts"] >= self.policy.max_attempts:
                    # Its worker died holding it on every attempt: a poison job. Record, don't retry.
                    reason = f"lease of worker {row['worker_id']!r} expired on the last allowed attempt"
                    self._set_dead(db, row, reason, now)
                    continue
                db.execute(
                    "UPDATE jobs SET state = 'running', worker_id = ?, lease_expires = ?, "
                    "attempts = attempts + 1, updated_at = ? WHERE id = ?",
                    (worker_id, now + lease_s, now, row["id"]),
                )
                return self._get(db, row["id"])

    def renew(self, job: Job, lease_s: float) -> Job:
        """Extend a held lease (call it from long jobs before the lease runs out)."""
        now = self.clock()
        with self._tx() as db:
            self._owned_row(db, job)
            db.execute(
                "UPDATE jobs SET lease_expires = ?, updated_at = ? WHERE id = ?", (now + lease_s, now, job.id)
            )
            return self._get(db, job.id)

    def complete(self, job: Job | int, result: dict[str, Any]) -> Job:
        """Mark a running job done with a JSON-safe ``result``.

        Pass the ``Job`` from ``claim`` (not just its id) to have the lease's owner checked.
        """
        payload = json.dumps(result)  # fail before touching the row if result is not JSON-safe
        now = self.clock()
        with self._tx() as db:
            row = self._owned_row(db, job)
            db.execute(
                "UPDATE jobs SET state = 'done', result = ?, lease_expires = NULL, updated_at = ? "
                "WHERE id = ?",
                (payload, now, row["id"]),
            )
            return self._get(db, row["id"])

    def fail(self, job: Job | int, reason: str, retry: bool = True) -> Job:
        """Record a failed attempt: back to pending after a backoff, or dead when out of attempts."""
        now = self.clock()
        with self._tx() as db:
            row = self._owned_row(db, job)
            if retry and row["attempts"] < self.policy.max_attempts:
                errors = json.loads(row["errors"]) + [reason]
                db.execute(
                    "UPDATE jobs SET state = 'pending', not_before = ?, lease_expires = NULL, "
                    "errors = ?, updated_at = ? WHERE id = ?",
                    (now + self.policy.backoff(row["attempts"]), json.dumps(errors), now, row["id"]),
                )
            else:
                why = reason if not retry else f"{reason} (gave up after {row['attempts']} attempts)"
                self._set_dead(db, row, why, now)
            return self._get(db, row["id"])

    # -- inspection --------------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        """The job with ``job_id``; QueueError if there is none."""
        return self._get(self._conn(), job_id)

    def list(self, state: str | None = None) -> list[Job]:
        """All jobs (oldest first), optionally only those in ``state``."""
        if state is not None and state not in STATES:
            raise QueueError(f"Unknown job state {state!r}; use one of {', '.join(STATES)}.")
        db = self._conn()
        if state is None:
            rows = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        else:
            rows = db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,)).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        rows = self._conn().execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {s: 0 for s in STATES} | {r["state"]: r["n"] for r in rows}

    # -- internals ---------------------------------------------------------------------------

    def _get(self, db: sqlite3.Connection, job_id: int) -> Job:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise QueueError(f"No learning job with id {job_id} in {self.path}; list() shows what exists.")
        return _job(row)

    def _owned_row(self, db: sqlite3.Connection, job: Job | int) -> sqlite3.Row:
        job_id = job.id if isinstance(job, Job) else job
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise QueueError(f"No learning job with id {job_id} in {self.path}.")
        if row["state"] != "running":
            raise LeaseLost(f"Job {job_id} is {row['state']}, not running; claim() it before finishing it.")
        if isinstance(job, Job) and (row["worker_id"] != job.worker_id or row["attempts"] != job.attempts):
            raise LeaseLost(
                f"Job {job_id}'s lease passed to worker {row['worker_id']!r} (attempt {row['attempts']}); "
                "drop this result, or renew() leases sooner for long jobs."
            )
        return row

    @staticmethod
    def _set_dead(db: sqlite3.Connection, row: sqlite3.Row, reason: str, now: float) -> None:
        errors = json.loads(row["errors"]) + [reason]
        db.execute(
            "UPDATE jobs SET state = 'dead', lease_expires = NULL, errors = ?, updated_at = ? WHERE id = ?",
            (json.dumps(errors), now, row["id"]),
        )


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        event=LearningEvent.from_dict(json.loads(row["event"])),
        state=row["state"],
        attempts=row["attempts"],
        worker_id=row["worker_id"],
        lease_expires=row["lease_expires"],
        not_before=row["not_before"],
        result=json.loads(row["result"]) if row["result"] is not None else None,
        errors=json.loads(row["errors"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
