"""Our own small family of teacher errors.

Every SDK exception (``openai``, ``anthropic``) is mapped to one of these first, so the failover
policy decides on *our* classes and never imports an SDK: ``retryable`` says whether trying the same
provider again can help; everything that is not retryable fails over at once.
"""

from __future__ import annotations

import threading

from autodidact.errors import AutodidactError

# Every API key a provider of this process was built with. A reply can quote the key it was sent (a
# gateway's 401, a proxy's HTML page, a model repeating its headers) and our messages quote replies,
# so every TeacherError is scrubbed of all of them where it is built: from there a message reaches
# logs, records, the queue's job errors and W&B, and no later step has to remember to scrub.
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
MIN_SECRET_CHARS = 8
"""Shorter strings are not treated as secrets: scrubbing them would mangle ordinary words."""


def register_secrets(*secrets: str | None) -> None:
    """Remember keys to scrub from every teacher error message built from now on."""
    with _SECRETS_LOCK:
        _SECRETS.update(s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)  # a key containing another goes first
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def excerpt(text: str, limit: int = 300) -> str:
    """A one-line quote of a reply for an error message: scrubbed *before* it is cut, so a key that
    straddles the cut cannot leave its first characters behind."""
    text = " ".join(scrub(str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TeacherError(AutodidactError):
    """A teacher (cloud provider, offline pack or replay) could not give a usable reply."""

    retryable: bool = False

    def __init__(self, message: str, *, provider: str = "teacher") -> None:
        super().__init__(scrub(message))
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
