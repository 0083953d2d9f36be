"""The teacher transcript: one JSON line per teacher exchange, appended to the run directory.

Each record holds provider, model, request, reply, latency, token usage and error. ``replay.py`` serves
the replies back, so a run can be reproduced offline without paying for the teacher twice.
Any known secret is scrubbed from every string before it is written.

A disk that refuses the write (full, read-only) raises :class:`~autodidact.fileio.StorageError`, which
names the file and what to do; the transcript keeps every earlier record and never a torn line, so it
can still be replayed. The error is not swallowed: a transcript with a hole would replay differently,
so the distillation fails and its learning event stays queued for a retry.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from autodidact.fileio import append_jsonl
from autodidact.teachers.errors import TeacherError
from autodidact.teachers.providers import Completion

TRANSCRIPT_NAME = "teacher_transcript.jsonl"


class Transcript:
    """Append-only JSONL log of teacher exchanges; scrubs ``secrets`` from everything it writes."""

    def __init__(self, path: str | os.PathLike, secrets: list[str] | None = None) -> None:
        self.path = Path(path)
        # Short strings would scrub ordinary words; real keys are long.
        self._secrets = [s for s in (secrets or []) if s and len(s) >= 8]

    def _scrub(self, value):
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, "***")
            return value
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrub(v) for v in value]
        return value

    def record(
        self,
        *,
        provider: str,
        model: str,
        system: str,
        user: str,
        attempt: int,
        completion: Completion | None = None,
        error: TeacherError | None = None,
        latency_s: float | None = None,
    ) -> None:
        """Append one exchange: a reply, an error, or a reply that failed to parse (both).

        Raises :class:`~autodidact.fileio.StorageError` if the disk refuses the record.
        """
        rec = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "provider": provider,
            "model": completion.model if completion else model,
            "attempt": attempt,
            "request": {"system": system, "user": user},
            "reply": completion.text if completion else None,
            "latency_s": round(completion.latency_s if completion else (latency_s or 0.0), 4),
            "usage": completion.usage if completion else None,
            "error": {"type": type(error).__name__, "message": str(error)} if error else None,
        }
        append_jsonl(self.path, self._scrub(rec))
