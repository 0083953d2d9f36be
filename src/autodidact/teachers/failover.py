"""Failover as data: an ordered provider chain, one retry layer, a cooldown and one deadline.

For each call the chain walks the providers in order, skipping those in cooldown (unless every one
is). A provider gets up to ``max_attempts`` tries on retryable errors (429, 5xx, 529, timeouts,
unparseable replies), with exponential backoff and jitter between tries:

    delay_k = min(backoff_max_s, backoff_base_s * 2**(k-1)) * (1 - jitter * U[0, 1))

and at least ``retry-after`` when a 429 asks for it. Non-retryable errors (auth, refused request) fail
over at once. A provider that used up its tries sits out ``cooldown_s``. The whole call must finish
within ``deadline_s``; when everything fails, ``AllProvidersFailed`` lists what each provider said.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from autodidact.errors import ConfigError
from autodidact.teachers.errors import AllProvidersFailed, RateLimited, TeacherError, TeacherTimeout
from autodidact.teachers.providers import Completion, Provider
from autodidact.teachers.settings import FailoverPolicy
from autodidact.teachers.transcript import Transcript

log = logging.getLogger(__name__)
T = TypeVar("T")


def _identity(completion: Completion) -> Completion:
    return completion


class FailoverChain:
    """The teacher the rest of the project talks to: ordered providers behind one ``complete`` call."""

    def __init__(
        self,
        providers: list[Provider],
        policy: FailoverPolicy | None = None,
        transcript: Transcript | None = None,
        *,
        offline: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not providers:
            raise ConfigError("a teacher chain needs at least one provider")
        self.providers = list(providers)
        self.policy = policy or FailoverPolicy()
        self.policy.validate()
        self.transcript = transcript
        self.offline = offline
        self._sleep, self._clock = sleep, clock
        self._rng = rng or random.Random()
        self._cooldown_until: dict[int, float] = {}

    def describe(self) -> str:
        if len(self.providers) == 1:
            return self.providers[0].describe()
        return "failover chain " + " -> ".join(p.describe() for p in self.providers)

    def _order(self, now: float) -> list[int]:
        """Provider indices to try: those not cooling down, in order; all of them if every one is."""
        ready = [i for i in range(len(self.providers)) if self._cooldown_until.get(i, 0.0) <= now]
        # With nothing ready, trying a cooled provider beats failing without a single request.
        return ready or list(range(len(self.providers)))

    def complete(
        self,
        system: str,
        user: str,
        parse: Callable[[Completion], T] = _identity,
        schema: dict | None = None,
    ) -> tuple[T, Completion]:
        """Ask the chain; ``parse`` runs inside the retry loop, so a ``BadReply`` it raises is retried.

        ``schema`` is passed on to each provider, which asks for native structured output with it.

        Returns the parsed value and the completion it came from; raises ``AllProvidersFailed``.
        """
        start = self._clock()
        deadline = start + self.policy.deadline_s
        errors: list[TeacherError] = []
        for index in self._order(start):
            provider = self.providers[index]
            for attempt in range(1, self.policy.max_attempts + 1):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    errors.append(TeacherTimeout("overall deadline (teacher.policy.deadline_s) passed",
                                                 provider=provider.name))
                    raise AllProvidersFailed(errors, reason="the teacher deadline passed")
                t0 = self._clock()
                completion = None
                try:
                    completion = provider.complete(system, user, timeout=remaining, schema=schema)
                    value = parse(completion)
                except TeacherError as err:
                    self._record(provider, system, user, attempt, completion, err, self._clock() - t0)
                    log.warning("teacher %s try %d/%d failed: %s", provider.name, attempt,
                                self.policy.max_attempts, err)
                    if not err.retryable or attempt == self.policy.max_attempts:
                        errors.append(err)
                        break
                    delay = self.policy.backoff(attempt, self._rng)
                    if isinstance(err, RateLimited) and err.retry_after is not None:
                        if err.retry_after > self.policy.backoff_max_s:
                            errors.append(err)
                            break  # asked to wait longer than we are willing to: fail over now
                        delay = max(delay, err.retry_after)
                    if self._clock() + delay >= deadline:
                        errors.append(err)
                        break
                    self._sleep(delay)
                    continue
                self._record(provider, system, user, attempt, completion, None, completion.latency_s)
                self._cooldown_until.pop(index, None)
                return value, completion
            self._cooldown_until[index] = self._clock() + self.policy.cooldown_s
            if index != len(self.providers) - 1:
                log.warning("teacher %s failed; failing over to the next provider", provider.name)
        if len(self.providers) == 1 and len(errors) == 1 and not errors[0].retryable:
            raise errors[0]  # one provider that said "no" (bad key, unknown topic) says it best itself
        raise AllProvidersFailed(errors)

    def _record(self, provider, system, user, attempt, completion, error, latency) -> None:
        if self.transcript is not None:
            self.transcript.record(provider=provider.name, model=provider.model, system=system, user=user,
                                   attempt=attempt, completion=completion, error=error, latency_s=latency)
