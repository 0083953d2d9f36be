"""The OpenAI chat format: request checking, the prompt, and the response and chunk bodies.

Errors a client causes are :class:`RequestError` with an HTTP status and OpenAI's error ``type`` /
``param`` / ``code``, so the app answers them the way the OpenAI API does.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from autodidact.data import CHATML_USER, prompt_ids
from autodidact.errors import AutodidactError

ROLES = ("system", "developer", "user", "assistant", "tool")


class RequestError(AutodidactError):
    """A request the server refuses, with the status and OpenAI-style fields to answer with."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """A checked ``POST /v1/chat/completions`` body (only what the local model uses)."""

    messages: list[dict[str, str]]
    """Role and plain-text content of every turn."""
    query: str
    """The last user message: what is routed and may become a learning event."""
    model: str
    max_tokens: int | None
    stream: bool


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for i, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise RequestError(f"{where}.content[{i}] must be a text part ({{'type': 'text', 'text': '...'}}); "
                                   "this model reads text only", param=f"{where}.content")
            parts.append(p["text"])
        return "\n".join(parts)
    raise RequestError(f"{where}.content must be a string or a list of text parts", param=f"{where}.content")


def parse_chat(body: Any, max_tokens_limit: int) -> ChatRequest:
    """Check a request body; RequestError (400) naming the first problem."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", param="messages")
    messages = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})", param=f"{where}.role")
        messages.append({"role": "system" if role == "developer" else role, "content": _text(m.get("content"), where)})
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise RequestError("there is no user message to answer", param="messages")
    query = users[-1]["content"]
    if not query.strip():
        raise RequestError("the last user message is empty; ask something", param="messages")
    model = body.get("model", "")
    if not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false", param="stream")
    n = body.get("n", 1)
    if n != 1:
        raise RequestError("only n=1 is supported (one greedy answer)", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or not 1 <= max_tokens <= max_tokens_limit):
        raise RequestError(f"'max_tokens' must be a whole number from 1 to {max_tokens_limit}", param="max_tokens")
    return ChatRequest(messages, query, model, max_tokens, stream)


def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Prompt ids for a conversation, ending with the assistant header.

    A lone user message gets exactly the prompt skills were trained on (``data.prompt_ids``). A
    conversation goes through the chat template; ChatML (SmolLM2, the tiny model) is written out turn
    by turn with no default system turn added, as ``data.prompt_text`` does for one question.
    """
    if len(messages) == 1:
        return prompt_ids(tokenizer, messages[0]["content"])
    if "<|im_start|>" in (getattr(tokenizer, "chat_template", None) or ""):
        head = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages[:-1])
        last = messages[-1]
        tail = (CHATML_USER.format(question=last["content"]) if last["role"] == "user"
                else f"<|im_start|>{last['role']}\n{last['content']}<|im_end|>\n<|im_start|>assistant\n")
        return list(tokenizer(head + tail, add_special_tokens=False)["input_ids"])
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion_body(cid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                    autodidact: dict) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                     "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "autodidact": autodidact,
    }


def chunk_body(cid: str, model: str, delta: dict, finish: str | None = None, **extra: Any) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}


def chat_body_error(message: str, type_: str = "server_error") -> dict:
    """An error inside an event stream, after the 200 status was already sent (OpenAI streams it so)."""
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}
