"""Cloud teachers on the official SDKs: ``OpenAIProvider`` and ``AnthropicProvider``.

Both speak one small interface, ``complete(system, user, timeout=None) -> Completion``, and turn every
SDK exception into our own family (``errors.py``) so that the failover chain never sees SDK classes.
The SDKs' own retries are switched off (``max_retries=0``): ``failover.py`` is the one retry layer.

Structured output: when the caller passes a JSON ``schema`` and ``structured_output`` is on, OpenAI is
asked with ``response_format={"type": "json_schema", ...}`` and Anthropic with a forced tool call whose
``input_schema`` is the schema; either way the reply's JSON comes back as ``Completion.text``, so one
parser reads every provider. A server that refuses ``response_format`` (many OpenAI-compatible servers
do, with HTTP 400) is asked again once in plain text, and that provider stays on plain text after.

The API key lives only inside the SDK client; ``repr`` and ``describe`` never show it.

The SDKs are imported when the first provider is made (or an SDK error is mapped), not with this
module: together they took 2.6-3.6 s to import on the project's machine, which an offline or replay
run (the distiller imports this module for ``Completion``) would otherwise pay at every start.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import anthropic
    import openai

from autodidact.teachers.errors import (
    AuthFailed,
    BadReply,
    RateLimited,
    Rejected,
    TeacherError,
    TeacherTimeout,
    Unavailable,
    excerpt,
    register_secrets,
    scrub,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Completion:
    """One reply from a teacher."""

    text: str
    """The reply's plain text."""
    provider: str
    """Which provider answered (``openai``, ``anthropic``, ``offline-demo``, ...)."""
    model: str
    """The model name that provider reported (or was configured with)."""
    latency_s: float = 0.0
    """Wall-clock seconds the request took."""
    usage: dict[str, int] = field(default_factory=dict)
    """Token counts: ``input_tokens`` and ``output_tokens`` where the provider reports them."""


class Provider(Protocol):
    """Anything that turns a (system, user) prompt into a ``Completion`` or raises a ``TeacherError``."""

    name: str
    model: str

    def complete(
        self, system: str, user: str, timeout: float | None = None, schema: dict | None = None
    ) -> Completion: ...

    def describe(self) -> str: ...


def _retry_after(headers) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (number form); None when absent or a date."""
    for header, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header) if headers is not None else None
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            continue
    return None


def _scrub_sdk_exception(exc: BaseException) -> None:
    """Scrub the SDK exception itself: it stays our error's ``__cause__``, and a traceback prints it."""
    exc.args = tuple(scrub(a) if isinstance(a, str) else a for a in exc.args)
    if isinstance(getattr(exc, "message", None), str):
        exc.message = scrub(exc.message)


def map_sdk_error(exc: Exception, provider: str, key_hint: str) -> TeacherError:
    """Translate an ``openai``/``anthropic`` exception into our family.

    Both SDKs share the same shape (``APITimeoutError`` < ``APIConnectionError``, ``APIStatusError``
    with ``status_code``), so one mapping serves both; the status code decides, not the class name.
    Every quote of the server's words goes through ``excerpt``, which scrubs the keys before cutting.
    """
    import anthropic  # the SDKs load with their first provider, not with this module (see the docstring)
    import openai

    _scrub_sdk_exception(exc)
    timeout_types = (openai.APITimeoutError, anthropic.APITimeoutError)
    connection_types = (openai.APIConnectionError, anthropic.APIConnectionError)
    status_types = (openai.APIStatusError, anthropic.APIStatusError)
    validation_types = (openai.APIResponseValidationError, anthropic.APIResponseValidationError)
    if isinstance(exc, timeout_types):
        return TeacherTimeout("no reply before the timeout (teacher.*.timeout)", provider=provider)
    if isinstance(exc, connection_types):
        return Unavailable(f"connection failed: {exc.__cause__ or exc}", provider=provider)
    if isinstance(exc, validation_types):
        return BadReply(f"reply did not match the API schema: {exc}", provider=provider)
    if isinstance(exc, status_types):
        code = exc.status_code
        detail = excerpt(str(getattr(exc, "message", str(exc))))  # some gateways echo the refused key
        if code in (401, 403):
            return AuthFailed(
                f"HTTP {code}: the API key was rejected. Check {key_hint} (and the endpoint "
                f"teacher.{provider}.base_url). Server said: {detail}",
                provider=provider,
            )
        if code == 429:
            return RateLimited(
                f"HTTP 429 rate limited: {detail}", provider=provider, retry_after=_retry_after(exc.response.headers)
            )
        if code == 408:
            return TeacherTimeout(f"HTTP 408: {detail}", provider=provider)
        if code >= 500 or code == 409:
            # 529 is Anthropic's "overloaded"; 409 is a transient conflict both SDKs would retry.
            return Unavailable(f"HTTP {code}: {detail}", provider=provider)
        return Rejected(
            f"HTTP {code}: the request was refused (check teacher.{provider}.model and base_url): {detail}",
            provider=provider,
        )
    return BadReply(f"unexpected {type(exc).__name__}: {excerpt(str(exc))}", provider=provider)


class _SDKProvider:
    """What the two cloud providers share: settings, timing, error mapping, a key-free repr."""

    name = "provider"
    key_env = "API_KEY"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        model: str,
        timeout: float,
        max_tokens: int,
        structured_output: bool = True,
    ) -> None:
        if not api_key:
            raise AuthFailed(f"no API key: set {self.key_env}", provider=self.name)
        self.base_url = base_url
        self.model = model
        self.timeout = float(timeout)
        self.max_tokens = int(max_tokens)
        self.structured_output = bool(structured_output)
        register_secrets(api_key)  # scrubbed from every teacher error message from now on
        self._client = self._make_client(api_key)

    def _make_client(self, api_key: str):  # pragma: no cover - overridden
        raise NotImplementedError

    def _request(
        self, system: str, user: str, timeout: float, schema: dict | None
    ) -> tuple[str, str, dict[str, int]]:
        raise NotImplementedError  # pragma: no cover - overridden

    def complete(
        self, system: str, user: str, timeout: float | None = None, schema: dict | None = None
    ) -> Completion:
        """One request; ``schema`` (a JSON schema) asks for native structured output where it is on."""
        timeout = self.timeout if timeout is None else min(self.timeout, timeout)
        start = time.monotonic()
        structured = schema if self.structured_output else None
        try:
            try:
                text, model, usage = self._request(system, user, timeout, structured)
            except Exception as exc:
                err = exc if isinstance(exc, TeacherError) else map_sdk_error(exc, self.name, self._key_hint)
                if structured is None or not isinstance(err, Rejected):
                    raise
                # An OpenAI-compatible server without structured output: say so once, then plain text.
                log.warning("%s refused structured output (%s); asking in plain text from now on "
                            "(teacher.%s.structured_output=false skips the try)", self.name, err, self.name)
                self.structured_output = False
                remaining = max(0.1, timeout - (time.monotonic() - start))
                text, model, usage = self._request(system, user, remaining, None)
        except TeacherError:
            raise
        except Exception as exc:  # every SDK/transport failure becomes one of ours
            raise map_sdk_error(exc, self.name, self._key_hint) from exc
        return Completion(text, self.name, model, time.monotonic() - start, usage)

    @property
    def _key_hint(self) -> str:
        return f"{self.key_env} / teacher.{self.name}.api_key"

    def describe(self) -> str:
        return f"{self.name}({self.model} @ {self.base_url})"

    def __repr__(self) -> str:
        # Deliberately without the key: reprs end up in logs and tracebacks.
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, api_key='***')"


class OpenAIProvider(_SDKProvider):
    """OpenAI (or any OpenAI-compatible server) through ``chat.completions``: POST {base_url}/chat/completions."""

    name = "openai"
    key_env = "OPENAI_API_KEY"

    def _make_client(self, api_key: str) -> openai.OpenAI:
        import openai

        return openai.OpenAI(api_key=api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0)

    def _request(
        self, system: str, user: str, timeout: float, schema: dict | None
    ) -> tuple[str, str, dict[str, int]]:
        extra = {}
        if schema is not None:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema.get("title", "reply"), "schema": schema, "strict": True},
            }
        resp = self._client.chat.completions.create(
            model=self.model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            max_tokens=self.max_tokens,
            timeout=timeout,
            **extra,
        )
        if not getattr(resp, "choices", None):
            raise BadReply(f"reply has no choices: {excerpt(repr(resp))}", provider=self.name)
        text = resp.choices[0].message.content
        if not isinstance(text, str) or not text.strip():
            raise BadReply("reply has no text content", provider=self.name)
        usage = {}
        if resp.usage is not None:
            usage = {"input_tokens": resp.usage.prompt_tokens, "output_tokens": resp.usage.completion_tokens}
        return text, resp.model or self.model, usage


class AnthropicProvider(_SDKProvider):
    """Anthropic through ``messages``: POST {base_url}/v1/messages (the SDK appends ``/v1/messages``)."""

    name = "anthropic"
    key_env = "ANTHROPIC_API_KEY"

    def _make_client(self, api_key: str) -> anthropic.Anthropic:
        import anthropic

        return anthropic.Anthropic(api_key=api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0)

    def _request(
        self, system: str, user: str, timeout: float, schema: dict | None
    ) -> tuple[str, str, dict[str, int]]:
        extra = {}
        if schema is not None:
            # Anthropic's structured output is a tool the model must call; its input is the JSON.
            tool = schema.get("title", "reply")
            extra["tools"] = [{"name": tool, "description": schema.get("description", "Record the reply."),
                               "input_schema": schema}]
            extra["tool_choice"] = {"type": "tool", "name": tool}
        resp = self._client.messages.create(
            model=self.model,
            system=system,
            messages=[{"role": "user", "content": user}],
            max_tokens=self.max_tokens,
            timeout=timeout,
            **extra,
        )
        blocks = getattr(resp, "content", None)
        if not isinstance(blocks, list):
            raise BadReply(f"reply has no content blocks: {excerpt(repr(resp))}", provider=self.name)
        calls = [b for b in blocks if getattr(b, "type", None) == "tool_use"]
        if calls:
            text = json.dumps(getattr(calls[0], "input", None), ensure_ascii=False)
        else:
            text = "".join(getattr(b, "text", "") for b in blocks if getattr(b, "type", None) == "text")
        if not text.strip():
            raise BadReply("reply has no text content", provider=self.name)
        usage = {}
        if resp.usage is not None:
            usage = {"input_tokens": resp.usage.input_tokens, "output_tokens": resp.usage.output_tokens}
        return text, resp.model or self.model, usage
