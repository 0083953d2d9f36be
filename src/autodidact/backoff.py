"""One exponential backoff, shared by the learning queue (retrying a job) and the teacher chain
(retrying a provider): the same doubling, cap and jitter rule in one place."""

from __future__ import annotations

import random


def backoff_s(attempt: int, base_s: float, max_s: float, jitter: float = 0.0,
              rng: random.Random | None = None) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based): ``base_s`` doubled per earlier
    failure, capped at ``max_s``, then shortened by up to ``jitter`` (a share in [0, 1], drawn from
    ``rng``) so that many retrying clients do not fire in step."""
    delay = min(max_s, base_s * 2 ** max(0, attempt - 1))
    if jitter and rng is not None:
        delay *= 1.0 - jitter * rng.random()
    return delay
