"""A loopback teacher: one local HTTP server that speaks both OpenAI's and Anthropic's wire formats.

Tests drive the real ``openai`` and ``anthropic`` SDKs against it (nothing touches the internet)::

    with TeacherServer() as server:                 # 127.0.0.1, random port, background thread
        server.fail_always("openai", "503")          # OpenAI keeps failing ...
        server.script("anthropic", "529", "429")     # ... Anthropic fails twice, then answers
        cfg.teacher.openai.base_url = server.openai_base_url        # http://127.0.0.1:PORT/v1
        cfg.teacher.anthropic.base_url = server.anthropic_base_url  # http://127.0.0.1:PORT
        ...
        server.requests                              # what it received, in order

Normal replies are the JSON the distiller asks for. By default a question about a demo-pack fact gets
that fact's pairs (so a loop against this server can really learn it); any other question gets
generic pairs. Pass ``qa_source(question) -> list[{"question","answer"}] | None`` to serve your own.

Sloppy mode (``TeacherServer(sloppy=True)``) answers the way language models often do instead of
the way the distiller asks: 10-12 of the pairs (not the number asked for), shuffled, the user's own
question left out (only rephrasings of it remain), a few items with wrong keys or empty answers, and
prose around the JSON. Seeded (``seed=``) so a test is repeatable.

Structured output: a request with OpenAI's ``response_format`` gets bare JSON content (no prose, as a
schema-enforcing API returns); a request with Anthropic ``tools`` + ``tool_choice`` gets a ``tool_use``
block whose ``input`` is the object. ``structured=False`` makes the server refuse ``response_format``
with HTTP 400, as OpenAI-compatible servers without that feature do.

Faults (per provider, a queue used up first, then ``fail_always``, then normal replies):
``429`` (with ``retry-after``), ``500``, ``503``, ``529`` (Anthropic's overloaded), ``401``,
``hang`` (sleeps ``hang_s`` before answering; keep it just past the client timeout),
``truncated`` (Content-Length promises more than is sent), ``garbage_body`` (200 with an HTML page),
``non_json_text`` (the model's text is prose), ``wrong_shape`` (JSON, but not ``{"pairs": [...]}``),
``too_few`` (only two pairs), ``fenced`` (valid pairs inside a Markdown code fence),
``bad_pairs`` (invalid items mixed with two valid ones).
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from autodidact.teachers.distiller import extract_question
from autodidact.teachers.offline import load_pack, match_fact

FAULTS = frozenset({
    "429", "500", "503", "529", "401", "hang", "truncated", "garbage_body", "non_json_text", "wrong_shape",
    "too_few", "fenced", "bad_pairs",
})
PATHS = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}


@dataclass
class RecordedRequest:
    """One request the server received."""

    provider: str
    path: str
    headers: dict[str, str]
    """Lower-cased names, e.g. ``authorization`` (OpenAI) or ``x-api-key`` (Anthropic)."""
    body: dict
    fault: str | None
    question: str = ""
    structured: bool = False
    """Whether the request asked for native structured output (response_format / forced tool use)."""


@dataclass
class _State:
    queues: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    always: dict[str, str | None] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def pack_or_generic_pairs(question: str) -> list[dict]:
    """Default ``qa_source``: the demo-pack fact's pairs, else 29 generic pairs about the question."""
    fact = match_fact(question, load_pack())
    if fact is not None:
        return [{"question": question, "answer": fact.answer}, *fact.heldout, *fact.pairs]
    answer = "The loopback teacher's answer."
    return [{"question": question, "answer": answer}] + [
        {"question": f"{question} (variant {i})", "answer": answer} for i in range(1, 29)
    ]


class TeacherServer:
    """Loopback OpenAI + Anthropic server with scripted faults; a context manager or start()/stop()."""

    def __init__(
        self,
        qa_source: Callable[[str], list[dict] | None] | None = None,
        *,
        hang_s: float = 1.5,
        retry_after: str = "0.05",
        sloppy: bool = False,
        seed: int = 0,
        structured: bool = True,
    ) -> None:
        self.qa_source = qa_source or pack_or_generic_pairs
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.sloppy = sloppy
        self.structured = structured
        self._rng = random.Random(seed)
        self._state = _State()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> TeacherServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True  # a hanging handler must not block stop()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="teacher-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes any "hang" early
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TeacherServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return self._httpd.server_address[1]

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, provider: str, *faults: str) -> None:
        """Queue faults for ``provider``: the next requests get these, in order."""
        _check(provider, faults)
        with self._state.lock:
            self._state.queues[provider].extend(faults)

    def fail_always(self, provider: str, fault: str | None) -> None:
        """Every request to ``provider`` (after its queue) gets ``fault``; None to answer normally."""
        _check(provider, [fault] if fault else [])
        with self._state.lock:
            self._state.always[provider] = fault

    def reset(self) -> None:
        with self._state.lock:
            self._state.queues.clear()
            self._state.always.clear()
            self._state.requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def count(self, provider: str) -> int:
        return sum(r.provider == provider for r in self.requests)

    def _next_fault(self, provider: str) -> str | None:
        with self._state.lock:
            queue = self._state.queues[provider]
            return queue.popleft() if queue else self._state.always.get(provider)

    def _record(self, rec: RecordedRequest) -> None:
        with self._state.lock:
            self._state.requests.append(rec)


def _check(provider: str, faults) -> None:
    if provider not in ("openai", "anthropic"):
        raise ValueError(f"provider must be 'openai' or 'anthropic', not {provider!r}")
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise ValueError(f"unknown fault(s) {bad}; known: {sorted(FAULTS)}")


def sloppy_pairs(question: str, pairs: list[dict], rng: random.Random) -> list:
    """What a language model often returns: 10-12 pairs in its own order, the user's question only
    rephrased, plus a few items with wrong keys or empty answers."""
    same = " ".join(question.casefold().split())
    kept = [p for p in pairs if " ".join(p["question"].casefold().split()) != same]
    rng.shuffle(kept)
    kept = kept[: rng.randint(10, 12)]
    junk = [{"q": kept[0]["question"] if kept else "?", "a": "wrong keys"},
            {"question": "And what else is there to know?", "answer": ""},
            {"Question": "Capitalised keys?", "Answer": "also wrong"}]
    out = kept + junk
    rng.shuffle(out)
    return out


def _reply_text(server: TeacherServer, question: str, fault: str | None, structured: bool = False) -> str:
    pairs = server.qa_source(question) or []
    if server.sloppy and fault is None:
        with server._state.lock:
            pairs = sloppy_pairs(question, pairs, server._rng)
        text = json.dumps({"pairs": pairs}, ensure_ascii=False, indent=2)
        if structured:
            return text
        return (f"Sure! Here are some flashcards to help a student learn this fact.\n\n{text}\n\n"
                "Let me know if you would like more questions or a different format!")
    if fault == "non_json_text":
        return "Sure! Here are some great questions about that topic. 1. Who ... 2. When ..."
    if fault == "wrong_shape":
        return json.dumps({"qa": pairs[:5], "note": "keys renamed"})
    if fault == "too_few":
        return json.dumps({"pairs": pairs[:2]})
    if fault == "bad_pairs":
        junk = [
            "not an object",
            {"question": "", "answer": "empty question"},
            {"question": "No answer?"},
            {"question": "Too long?", "answer": "x" * 5000},
            {"question": 42, "answer": "numbers are not text"},
        ]
        return json.dumps({"pairs": junk + pairs[:2] + pairs[:2]})  # and duplicates
    text = json.dumps({"pairs": pairs}, ensure_ascii=False)
    if fault == "fenced":
        return f"Here you go:\n```json\n{text}\n```\n"
    return text


def _openai_body(model: str, text: str) -> dict:
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": len(text) // 4, "total_tokens": 100 + len(text) // 4},
    }


def _anthropic_body(model: str, text: str, tool: str | None = None) -> dict:
    content = [{"type": "text", "text": text}]
    if tool is not None:
        # A forced tool call: the object itself is the tool's input. A fault that is not JSON stays
        # text, as a misbehaving API would send it.
        with contextlib.suppress(json.JSONDecodeError):
            content = [{"type": "tool_use", "id": "toolu_loopback", "name": tool, "input": json.loads(text)}]
    return {
        "id": "msg_loopback",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": len(text) // 4},
    }


def _error_body(provider: str, code: int) -> dict:
    kinds = {401: "authentication_error", 429: "rate_limit_error", 500: "api_error", 503: "api_error",
             529: "overloaded_error"}
    message = {401: "invalid x-api-key / Incorrect API key provided", 529: "Overloaded"}.get(code, f"loopback {code}")
    if provider == "anthropic":
        return {"type": "error", "error": {"type": kinds.get(code, "api_error"), "message": message}}
    return {"error": {"message": message, "type": kinds.get(code, "server_error"), "code": None}}


def _make_handler(server: TeacherServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json", headers=None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            provider = PATHS.get(path)
            if provider is None:
                self._send(404, b'{"error": {"message": "no such endpoint"}}')
                return
            body = json.loads(raw or b"{}")
            messages = body.get("messages") or [{}]
            user = messages[-1].get("content", "")
            if isinstance(user, list):  # Anthropic content blocks
                user = "".join(b.get("text", "") for b in user if isinstance(b, dict))
            question = extract_question(user)
            fault = server._next_fault(provider)
            headers = {k.lower(): v for k, v in self.headers.items()}
            tool = (body.get("tool_choice") or {}).get("name") if provider == "anthropic" else None
            structured = bool(body.get("response_format")) or tool is not None
            server._record(RecordedRequest(provider, path, headers, body, fault, question, structured))
            # A client that gave up (timeout) closed its end: there is nobody left to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if body.get("response_format") and not server.structured:
                    msg = {"error": {"message": "response_format is not supported", "type": "invalid_request_error",
                                     "code": None}}
                    self._send(400, json.dumps(msg).encode())
                    return
                self._respond(provider, body.get("model", "loopback"), question, fault, structured, tool)

        def _respond(self, provider: str, model: str, question: str, fault: str | None, structured: bool = False,
                     tool: str | None = None) -> None:
            if fault in ("401", "429", "500", "503", "529"):
                code = int(fault)
                headers = {"retry-after": server.retry_after} if code == 429 else {}
                if provider == "openai" and code == 429:
                    headers["x-ratelimit-remaining-requests"] = "0"
                self._send(code, json.dumps(_error_body(provider, code)).encode(), headers=headers)
                return
            if fault == "garbage_body":
                self._send(200, b"<html><body>502 Bad Gateway (proxy)</body></html>", "text/html")
                return
            if fault == "hang" and server._stopping.wait(server.hang_s):
                return  # stop() was called mid-hang
            text = _reply_text(server, question, fault, structured)
            envelope = _openai_body(model, text) if provider == "openai" else _anthropic_body(model, text, tool)
            data = json.dumps(envelope, ensure_ascii=False).encode()
            if fault == "truncated":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(200, data)

    return Handler
