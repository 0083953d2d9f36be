"""``ReplayProvider``: serve a recorded teacher transcript back, so a run repeats offline, byte for byte.

Replies are looked up by the exact request (system + user text) and served in the order they were
recorded, including replies that failed to parse (so the same retries happen). Exchanges that never
got a reply (HTTP errors, timeouts) are skipped: they changed nothing but the wait.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict, deque
from pathlib import Path

from autodidact.errors import ConfigError
from autodidact.teachers.errors import ReplayMiss
from autodidact.teachers.providers import Completion


class ReplayProvider:
    """A provider whose replies come from a transcript file instead of the network."""

    name = "replay"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._replies: dict[tuple[str, str], deque[dict]] = defaultdict(deque)
        try:
            lines = self.path.read_text("utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the transcript to replay ({self.path}): {exc}. Pass teacher.path=FILE, the "
                "teacher_transcript.jsonl of an earlier run."
            ) from exc
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (rec["request"]["system"], rec["request"]["user"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{self.path}:{n} is not a transcript record ({exc})") from exc
            if rec.get("reply") is not None:
                self._replies[key].append(rec)
        models = {r["model"] for q in self._replies.values() for r in q}
        self.model = ",".join(sorted(models)) or "none"

    def describe(self) -> str:
        return f"replay of {self.path} (no provider is called)"

    def complete(
        self, system: str, user: str, timeout: float | None = None, schema: dict | None = None
    ) -> Completion:
        queue = self._replies.get((system, user))
        if not queue:
            raise ReplayMiss(
                f"{self.path} has no (more) recorded replies for this request; the run diverged from the "
                "recorded one (different query, teacher.distill settings or code version?)",
                provider=self.name,
            )
        rec = queue.popleft()
        # Report the original provider, so outputs match the recorded run exactly.
        return Completion(rec["reply"], rec["provider"], rec["model"], 0.0, rec.get("usage") or {})
