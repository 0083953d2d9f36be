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
- Crash safety: ``claim`` takes a short lease (``DEFAULT_LEASE_S``) and records the holder's pid,
  host and process start time. A worker that dies (kill -9, power cut) leaves its job ``running``; the
  next ``claim`` on the same host takes it over *at once* when that pid is gone (or is a zombie, or now
  belongs to another process), and any ``claim`` anywhere takes it over once the lease has run out.
  A live worker keeps its lease with ``heartbeat`` (``keep_alive`` does it from a daemon thread during a
  long training step). Each claim counts as an attempt, so a job that keeps killing its worker ends
  ``dead`` instead of looping forever; every takeover is written into the job's ``errors``.
- Disk trouble: a full or read-only disk, a damaged file or a lock held too long raise
  :class:`QueueError` subclasses that say what to do; the failed transaction is rolled back, so every
  event that was queued is still queued.
- Atomicity: every state change is one ``BEGIN IMMEDIATE`` transaction (takes the write lock up
  front, so two claimers cannot both read the same pending row).
- Durability: WAL + ``synchronous=FULL``. Events are rare (one per dissonant query) and each one
  costs a distillation run, so losing an acknowledged ``put`` on power loss is worse than the
  extra fsync per commit that NORMAL would save.
- Everything stored is JSON text; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autodidact.backoff import backoff_s
from autodidact.config import check_dataclass
from autodidact.errors import AutodidactError, ConfigError

QUEUE_FILENAME = "queue.sqlite3"
STATES = ("pending", "running", "done", "dead")
IN_FLIGHT = ("pending", "running")
DEFAULT_LEASE_S = 60.0
"""Lease a ``claim`` takes unless told otherwise; a live worker renews it with ``heartbeat``."""


class QueueError(AutodidactError):
    """The learning queue was used wrongly or its file is unusable."""


class QueuePolicyError(QueueError, ConfigError):
    """A ``queue`` setting is invalid (a config error, and the queue's own)."""


class LeaseLost(QueueError):
    """A worker tried to finish a job that is no longer leased to it."""


class QueueStorageError(QueueError):
    """The queue's file cannot be read or written (disk full, read-only, damaged, locked)."""


# -- who holds a job -------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def host_id() -> str:
    """This machine *and* pid namespace: a pid is only comparable within one (containers share hosts)."""
    ns = None
    with contextlib.suppress(OSError):
        ns = os.readlink("/proc/self/ns/pid")
    return socket.gethostname() + (f"/{ns}" if ns else "")


def boot_id() -> str | None:
    """Changes at every reboot: a job held before it was held by a process that no longer exists."""
    return _read("/proc/sys/kernel/random/boot_id")


def process_start(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), to tell it from a later process reusing the pid."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name in (...) may hold spaces
    return fields[19] if len(fields) > 19 else None


def holder_is_gone(pid: int | None, host: str | None, boot: str | None, started: str | None) -> str | None:
    """Why the process that claimed a job is certainly dead, or None if it may be alive (or is elsewhere)."""
    if pid is None or host != host_id():
        return None  # another machine or pid namespace: only its lease can tell
    here_boot = boot_id()
    if boot and here_boot and boot != here_boot:
        return "the machine has rebooted since"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "the process has exited"
    except PermissionError:
        pass  # exists, under another user
    stat = _read(f"/proc/{pid}/stat")
    if stat is not None and stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
        return "the process has exited (a zombie not yet reaped)"
    now_started = process_start(pid)
    if started and now_started and started != now_started:
        return "the process has exited (its pid now belongs to another process)"
    return None


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
    lease_s: float | None = None
    """Length of the lease this claim took; ``heartbeat`` renews it by as much."""
    holder_pid: int | None = None
    """Process id of the worker holding (or that last held) the job."""
    holder_host: str | None = None
    """``host_id()`` of that worker's machine."""


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
        # Checked here, not only by the config loader: a QueuePolicy built in code gets the same error,
        # never a TypeError from a comparison below.
        check_dataclass(self, "queue", QueuePolicyError)

    def problems(self) -> list[str]:
        problems = []
        for name, kind in (("max_attempts", "a whole number"), ("backoff_base_s", "a number of seconds"),
                           ("backoff_max_s", "a number of seconds")):
            value = getattr(self, name)
            whole = isinstance(value, int) and not isinstance(value, bool)
            if not (whole or (kind != "a whole number" and isinstance(value, float))):
                problems.append(f"queue.{name}={value!r} must be {kind}")
        if not problems:
            if self.max_attempts < 1:
                problems.append(f"queue.max_attempts={self.max_attempts} must be >= 1")
            if self.backoff_base_s < 0 or self.backoff_max_s < 0:
                problems.append("queue.backoff_base_s and queue.backoff_max_s must be >= 0")
        return problems

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        return backoff_s(attempts, self.backoff_base_s, self.backoff_max_s)


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
    updated_at    REAL    NOT NULL,
    lease_s       REAL,
    holder_pid    INTEGER,
    holder_host   TEXT,
    holder_boot   TEXT,
    holder_start  TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_in_flight_per_topic
    ON jobs (topic) WHERE state IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, not_before);
"""
# Columns added after the first release: a queue file written by an older version gains them on open.
_ADDED_COLUMNS = {
    "lease_s": "REAL", "holder_pid": "INTEGER", "holder_host": "TEXT", "holder_boot": "TEXT", "holder_start": "TEXT",
}

# SQLite result codes (primary, the low byte) and what each means for the person running autodidact.
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_NOTADB = 13, 8, 11, 26
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR, _SQLITE_CANTOPEN, _SQLITE_PERM = 5, 6, 10, 14, 3


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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QueueStorageError(
                f"Cannot create the folder of the learning queue {self.path} ({e.strerror}); make it "
                "writable, or set skills_dir=DIR to a writable folder."
            ) from None
        with self._guard("open"):
            db = self._conn()
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({ok})")
            db.executescript(_SCHEMA)  # idempotent; safe if another process races us
            with self._tx() as tx:  # migrate inside the write lock, so two processes cannot both ALTER
                have = {r["name"] for r in tx.execute("PRAGMA table_info(jobs)")}
                for col, kind in _ADDED_COLUMNS.items():
                    if col not in have:
                        tx.execute(f"ALTER TABLE jobs ADD COLUMN {col} {kind}")

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
            except sqlite3.Error as e:
                raise self._storage_error(e, "open") from None
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
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")  # in WAL mode the disk is written here: it can fail too
                    return
                except BaseException:
                    self._rollback()
                    raise
            self._rollback()

        def _rollback(self) -> None:
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")

    def _tx(self) -> LearningQueue._Tx:
        return self._Tx(self._conn())

    @contextlib.contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turn SQLite's errors into ours; the transaction inside has already been rolled back."""
        try:
            yield
        except sqlite3.Error as e:
            raise self._storage_error(e, doing) from None

    def _storage_error(self, e: sqlite3.Error, doing: str) -> QueueStorageError:
        code = getattr(e, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(e).lower()
        where = f"The learning queue {self.path}"
        kept = "Nothing was changed: every event queued before is still queued."
        if primary == _SQLITE_FULL or "disk is full" in text:
            msg = (f"{where} cannot be written ({doing}): the disk is full. Free space on that disk, or set "
                   f"skills_dir=DIR to a folder on another one. {kept}")
        elif primary in (_SQLITE_READONLY, _SQLITE_PERM) or "readonly" in text or "read-only" in text:
            msg = (f"{where} cannot be written ({doing}): it or its folder is read-only. Make "
                   f"{self.path.parent} writable, or set skills_dir=DIR to a writable folder. {kept}")
        elif primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "not a database" in text or "malformed" in text:
            msg = (f"{where} is damaged ({e}). Move it aside (mv {self.path} {self.path}.broken) and start "
                   "again: a new empty queue is created, the skill cards beside it are not touched, and the "
                   "moved file can still be inspected with sqlite3.")
        elif primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
            msg = (f"{where} stayed locked by another process for over {self.busy_timeout_s:.0f} s ({doing}); "
                   f"see whether another autodidact run is stuck, then try again. {kept}")
        elif primary == _SQLITE_CANTOPEN or "unable to open" in text:
            msg = (f"{where} cannot be opened ({e}); check that {self.path.parent} exists and is writable, "
                   "or set skills_dir=DIR to another folder.")
        else:
            msg = f"{where} failed ({doing}): {e}. Check the disk; {kept[0].lower()}{kept[1:]}"
        return QueueStorageError(msg)

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._all_lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()

    def _close_thread_connection(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            with self._all_lock:
                if db in self._all:
                    self._all.remove(db)
            db.close()
            self._local.db = None

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
        with self._guard("put"), self._tx() as db:
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

    def claim(self, worker_id: str, lease_s: float = DEFAULT_LEASE_S) -> Job | None:
        """Lease the oldest ready job to ``worker_id`` for ``lease_s`` seconds; None if none is ready.

        Ready means: pending and past its backoff; or running with its lease run out; or running for a
        process on this host that is gone (see :func:`holder_is_gone`): that one is taken over at once.
        """
        if not lease_s > 0:
            raise QueueError(f"lease_s={lease_s} must be > 0 seconds.")
        now = self.clock()
        me = (os.getpid(), host_id(), boot_id(), process_start(os.getpid()))
        with self._guard("claim"), self._tx() as db:
            # Running jobs whose holder died on this host: theirs to take now, whatever the lease says.
            gone: dict[int, str] = {}
            for r in db.execute(
                "SELECT id, holder_pid, holder_host, holder_boot, holder_start FROM jobs "
                "WHERE state = 'running' AND lease_expires > ? AND holder_host = ?", (now, me[1])
            ).fetchall():
                why = holder_is_gone(r["holder_pid"], r["holder_host"], r["holder_boot"], r["holder_start"])
                if why:
                    gone[r["id"]] = why
            marks = ",".join("?" * len(gone))
            while True:
                row = db.execute(
                    "SELECT * FROM jobs WHERE (state = 'pending' AND not_before <= ?) "
                    "OR (state = 'running' AND lease_expires <= ?) "
                    + (f"OR (state = 'running' AND id IN ({marks})) " if gone else "")
                    + "ORDER BY not_before, id LIMIT 1",
                    (now, now, *gone),
                ).fetchone()
                if row is None:
                    return None
                errors = json.loads(row["errors"])
                if row["state"] == "running":
                    who = f"worker {row['worker_id']!r} (pid {row['holder_pid']} on {row['holder_host']})"
                    why = gone.pop(row["id"], None)
                    reason = (f"attempt {row['attempts']}: {who} died holding the job ({why})" if why
                              else f"attempt {row['attempts']}: the lease of {who} expired")
                    if row["attempts"] >= self.policy.max_attempts:
                        # Its worker died holding it on every attempt: a poison job. Record, don't retry.
                        self._set_dead(db, row, f"{reason} on the last allowed attempt", now)
                        continue
                    errors.append(reason)
                db.execute(
                    "UPDATE jobs SET state = 'running', worker_id = ?, lease_expires = ?, lease_s = ?, "
                    "attempts = attempts + 1, errors = ?, holder_pid = ?, holder_host = ?, holder_boot = ?, "
                    "holder_start = ?, updated_at = ? WHERE id = ?",
                    (worker_id, now + lease_s, lease_s, json.dumps(errors), *me, now, row["id"]),
                )
                return self._get(db, row["id"])

    def renew(self, job: Job, lease_s: float) -> Job:
        """Extend a held lease to ``lease_s`` from now (long jobs: see :meth:`heartbeat`, :meth:`keep_alive`)."""
        if not lease_s > 0:
            raise QueueError(f"lease_s={lease_s} must be > 0 seconds.")
        now = self.clock()
        with self._guard("renew"), self._tx() as db:
            self._owned_row(db, job)
            db.execute(
                "UPDATE jobs SET lease_expires = ?, updated_at = ? WHERE id = ?", (now + lease_s, now, job.id)
            )
            return self._get(db, job.id)

    def heartbeat(self, job: Job, lease_s: float | None = None) -> Job:
        """Renew the lease of a job this worker holds by the length it was claimed with (or ``lease_s``).

        Raises :class:`LeaseLost` if the job was taken over (the worker should stop and drop its work).
        """
        return self.renew(job, lease_s or job.lease_s or DEFAULT_LEASE_S)

    @contextlib.contextmanager
    def keep_alive(self, job: Job, every_s: float | None = None) -> Iterator[Heartbeat]:
        """Heartbeat ``job`` from a daemon thread every ``every_s`` seconds (default: a third of its lease).

        For work that cannot stop to call :meth:`heartbeat` (a training step). The lease then lapses only
        if the process dies or stalls. Yields a :class:`Heartbeat`; its ``error`` is set (and beating
        stops) if the lease was lost; ``complete`` or ``fail`` will then raise :class:`LeaseLost` too.
        """
        every = every_s if every_s is not None else (job.lease_s or DEFAULT_LEASE_S) / 3
        if not every > 0:
            raise QueueError(f"keep_alive every_s={every_s} must be > 0 seconds.")
        beat = Heartbeat(job=job)
        stop = threading.Event()

        def loop() -> None:
            try:
                while not stop.wait(every):
                    try:
                        beat.job = self.heartbeat(beat.job)
                        beat.beats += 1
                    except QueueError as e:  # LeaseLost, or the disk: stop, and let the worker see it
                        beat.error = e
                        return
            finally:
                self._close_thread_connection()

        thread = threading.Thread(target=loop, name=f"autodidact-heartbeat-job{job.id}", daemon=True)
        thread.start()
        try:
            yield beat
        finally:
            stop.set()
            thread.join()

    def complete(self, job: Job | int, result: dict[str, Any]) -> Job:
        """Mark a running job done with a JSON-safe ``result``.

        Pass the ``Job`` from ``claim`` (not just its id) to have the lease's owner checked.
        """
        payload = json.dumps(result)  # fail before touching the row if result is not JSON-safe
        now = self.clock()
        with self._guard("complete"), self._tx() as db:
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
        with self._guard("fail"), self._tx() as db:
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
        with self._guard("get"):
            return self._get(self._conn(), job_id)

    def list(self, state: str | None = None) -> list[Job]:
        """All jobs (oldest first), optionally only those in ``state``."""
        if state is not None and state not in STATES:
            raise QueueError(f"Unknown job state {state!r}; use one of {', '.join(STATES)}.")
        with self._guard("list"):
            db = self._conn()
            if state is None:
                rows = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,)).fetchall()
            return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        with self._guard("counts"):
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


@dataclass
class Heartbeat:
    """What :meth:`LearningQueue.keep_alive` reports: the latest renewal, how many, and a lost lease."""

    job: Job
    """The job as of the last renewal (its ``lease_expires`` moves forward)."""
    beats: int = 0
    """Renewals so far."""
    error: QueueError | None = None
    """Why beating stopped early (usually :class:`LeaseLost`), else None."""


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
        lease_s=row["lease_s"],
        holder_pid=row["holder_pid"],
        holder_host=row["holder_host"],
    )
