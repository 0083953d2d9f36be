"""Our own small family of teacher errors.

Every SDK exception (``openai``, ``anthropic``) is mapped to one of these first, so the failover
policy decides on *our* classes and never imports an SDK: ``retryable`` says whether trying the same
provider again can help; everything that is not retryable fails over at once.
"""

from __future__ import annotations

from autodidact.errors import AutodidactError


class TeacherError(AutodidactError):
    """A teacher (cloud provider, offline pack or replay) could not give a usable reply."""

    retryable: bool = False

    def __init__(self, message: str, *, provider: str = "teacher") -> None:
        super().__init__(message)
        self.provider = provider

    def __str__(self) -> str:
        return f"{self.provider}: {self.args[0]}"


class RateLimited(TeacherError):
    """HTTP 429: the provider asks us to slow down, optionally saying for how long."""

    retryable = True

    def __init__(self, message: str, *, provider: str = "teacher", retry_after: float | None = None) -> None:
        super().__init__(message, provider=provider)
        self.retry_after = retry_after


class Unavailable(TeacherError):
    """5xx, Anthropic's 529 "overloaded", or the connection broke (refused, reset, truncated body)."""

    retryable = True


class TeacherTimeout(TeacherError):
    """No reply within the configured timeout (or the overall deadline)."""

    retryable = True


class BadReply(TeacherError):
    """A reply came back but it is not what we asked for (not JSON, wrong shape, empty)."""

    retryable = True


class AuthFailed(TeacherError):
    """401/403: the API key is missing, wrong or lacks access. Retrying cannot help."""


class Rejected(TeacherError):
    """The provider refused the request itself (400/404/422: wrong model name or endpoint?)."""


class OutOfPack(TeacherError):
    """The offline demo teacher was asked about something outside its demo knowledge pack."""


class ReplayMiss(TeacherError):
    """A replayed transcript holds no (more) replies for this exact request."""


class AllProvidersFailed(TeacherError):
    """Every provider in the chain failed; ``errors`` holds what each one said, in order."""

    def __init__(self, errors: list[TeacherError], *, reason: str = "every provider failed") -> None:
        self.errors = list(errors)
        lines = [f"  - {e}" for e in self.errors] or ["  (no provider was tried)"]
        msg = (
            f"{reason}:\n" + "\n".join(lines) + "\nCheck the API keys (OPENAI_API_KEY, ANTHROPIC_API_KEY), "
            "teacher.*.base_url and your network, or run with teacher=offline for the demo facts."
        )
        super().__init__(msg, provider="teacher chain")
