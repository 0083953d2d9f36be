"""The HTTP layer (FastAPI): OpenAI-compatible endpoints, the job and skill listings, the page.

Every error is OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}`` with the
status a client expects: 400 malformed body or empty message, 404 unknown path or job, 405 wrong
method, 413 body over ``server.max_body_bytes``, 429 too many waiting, 500 a decoding failure.
Routing and queue writes run in the thread pool, decoding on the decoder thread; the event loop only
moves bytes, so a slow answer never holds up another request's routing or a page load.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from autodidact.inference.lora_router import EmptyQueryError
from autodidact.learning_queue import QueueError
from autodidact.serve.chat import (
    RequestError,
    chat_body_error,
    chunk_body,
    completion_body,
    new_id,
    parse_chat,
)
from autodidact.serve.engine import ServeEngine
from autodidact.serve.page import render_main, render_page
from autodidact.serve.scheduler import Busy

log = logging.getLogger(__name__)
DISCONNECT_CHECK_S = 0.5
"""How often a non-streamed request waiting for its answer checks that its client is still there."""


def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> JSONResponse:
    return JSONResponse(RequestError(message, status, param, code, type_).body(), status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) one over ``limit`` bytes before reading it when its length is declared,
    and as soon as the limit is passed when it is not (chunked)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the request body is {int(declared)} bytes; the limit is {limit} (server.max_body_bytes)",
                           413, code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body is over the limit of {limit} bytes (server.max_body_bytes)",
                               413, code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(engine: ServeEngine, on_startup=None, on_shutdown=None) -> FastAPI:
    """The ASGI app over a started-or-not engine; ``on_startup``/``on_shutdown`` run in its lifespan."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if on_startup is not None:
            on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(title="autodidact", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    limit = engine.cfg.max_body_bytes

    # -- errors, all in OpenAI's shape -------------------------------------------------------------
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return error(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found")
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error(400, f"invalid request: {exc.errors()[:3]}")

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(EmptyQueryError)
    async def empty_query(request: Request, exc: EmptyQueryError):
        return error(400, str(exc), param="messages")

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return error(429, str(exc), type_="rate_limit_error", code="server_busy")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}", type_="server_error")

    # -- OpenAI-compatible ------------------------------------------------------------------------
    def model_obj() -> dict:
        return {"id": engine.model_id, "object": "model", "created": int(engine.started), "owned_by": "autodidact"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_obj()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != engine.model_id:
            return error(404, f"no model {model_id!r}; this server has {engine.model_id!r}", param="model",
                         code="model_not_found")
        return model_obj()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await read_body(request, limit)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the body is not valid JSON ({e})", code="invalid_json") from None
        req = parse_chat(body, engine.cfg.max_tokens_limit)
        cid = new_id()
        if not req.stream:
            loop = asyncio.get_running_loop()
            done = asyncio.Event()
            pending = await run_in_threadpool(engine.submit, req, None, lambda: loop.call_soon_threadsafe(done.set))
            row = pending.row
            while not done.is_set():
                try:
                    await asyncio.wait_for(done.wait(), DISCONNECT_CHECK_S)
                except TimeoutError:
                    if await request.is_disconnected():  # nobody will read the answer: free the row now
                        row.cancel()
                        await done.wait()
                        return error(499, "the client closed the request", code="client_closed")
            if row.finish == "error":
                return error(500, f"decoding failed: {row.error}", type_="server_error")
            info = await run_in_threadpool(engine.finish, pending)
            return completion_body(cid, req.model or engine.model_id, row.text, row.finish, len(row.prompt),
                                   len(row.tokens), info)
        return StreamingResponse(stream(req, cid), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stream(req, cid: str):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        model_name = req.model or engine.model_id
        pending = None
        try:
            pending = await run_in_threadpool(
                engine.submit, req, lambda s: loop.call_soon_threadsafe(q.put_nowait, s),
                lambda: loop.call_soon_threadsafe(q.put_nowait, None))
            yield sse(chunk_body(cid, model_name, {"role": "assistant", "content": ""}))
            while (piece := await q.get()) is not None:
                yield sse(chunk_body(cid, model_name, {"content": piece}))
            row = pending.row
            if row.finish == "error":
                yield sse(chat_body_error(f"decoding failed: {row.error}"))
                return
            info = await run_in_threadpool(engine.finish, pending)
            usage = {"prompt_tokens": len(row.prompt), "completion_tokens": len(row.tokens),
                     "total_tokens": len(row.prompt) + len(row.tokens)}
            yield sse(chunk_body(cid, model_name, {}, row.finish, usage=usage, autodidact=info))
            yield "data: [DONE]\n\n"
        except (RequestError, EmptyQueryError, Busy) as e:  # found before decoding: the stream says why
            yield sse(chat_body_error(str(e)))
        finally:
            # A client that went away mid-stream (or anything above failing) frees its row's slot now.
            if pending is not None and not pending.row.done.is_set():
                pending.row.cancel()

    # -- autodidact's own ------------------------------------------------------------------------
    @app.get("/v1/skills")
    async def skills():
        return {"object": "list", "data": await run_in_threadpool(engine.skills)}

    @app.get("/v1/jobs")
    async def jobs():
        return {"object": "list", "data": await run_in_threadpool(engine.jobs)}

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str):
        if not job_id.isdigit():
            return error(404, f"no learning job {job_id!r}; job ids are whole numbers (GET /v1/jobs lists them)",
                         code="job_not_found")
        try:
            return await run_in_threadpool(engine.job, int(job_id))
        except QueueError:
            return error(404, f"no learning job {job_id}; GET /v1/jobs lists them", code="job_not_found")

    @app.get("/healthz")
    async def healthz():
        return await run_in_threadpool(engine.health)

    @app.get("/", response_class=HTMLResponse)
    async def page(part: str | None = None):
        def render() -> str:
            main = render_main(engine.skills(), engine.jobs(), list(engine.events), engine.health())
            return main if part == "main" else render_page(engine.model_id, main)

        return HTMLResponse(await run_in_threadpool(render))

    return app
