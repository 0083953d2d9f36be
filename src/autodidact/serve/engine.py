"""ServeEngine: answers at once with what the model knows, queues what it does not, picks up new skills.

The same decisions as ``Autodidact.ask`` (its router, its ``DissonanceDetector``, its manager), without
waiting for learning: a dissonant query is answered by the base model and its learning event is
queued in the durable queue in ``skills_dir``; the learner process works it and publishes a card
there; the watcher here installs it (hot swap, between batches) and the next ask is routed to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from autodidact.evolve_loop import Autodidact
from autodidact.learning_queue import Job
from autodidact.lora_manager import BASE_SKILL
from autodidact.serve.chat import ChatRequest, RequestError, chat_prompt_ids
from autodidact.serve.config import ServerConfig
from autodidact.serve.decode import Row
from autodidact.serve.scheduler import Decoder

log = logging.getLogger(__name__)
HEAVY_META = ("routing", "pairs")  # embeddings and training pairs: too big for a listing


@dataclass
class Pending:
    """A request routed and handed to the decoder; ``finish`` completes it once ``row.done``."""

    request: ChatRequest
    row: Row
    route: object  # RouteResult
    skill: str | None
    learning: dict | None
    t0: float


class ServeEngine:
    """Routing, learning events, batched decoding and skill pick-up for the HTTP layer."""

    def __init__(self, bot: Autodidact, cfg: ServerConfig, model_id: str) -> None:
        self.bot = bot
        self.manager, self.router, self.detector = bot.manager, bot.router, bot.detector
        self.queue = bot.factory.queue
        self.cfg = cfg
        self.model_id = model_id
        self.max_new_tokens = bot.max_new_tokens
        self.context = int(getattr(self.manager.model.config, "max_position_embeddings", 2048))
        self.decoder = Decoder(self.manager, cfg.max_batch, cfg.batching, cfg.max_waiting)
        self.events: deque[dict] = deque(maxlen=cfg.events_kept)
        self._job_states: dict[int, str] = {}
        self._stop = threading.Event()
        self._scan_lock = threading.Lock()  # the watcher and a /v1/jobs/{id} request may both scan
        self._watcher = threading.Thread(target=self._watch, name="autodidact-serve-watcher", daemon=True)
        self.started = time.time()
        self.learner = None  # set by the app: LearnerProcess or None

    # -- life ---------------------------------------------------------------------------------------
    def start(self) -> ServeEngine:
        # Decoding is a chain of small matmuls: one thread (see inference/generate.py); the learner
        # process has the other core.
        torch.set_num_threads(1)
        self._job_states = {j.id: j.state for j in self.queue.list()}
        self.decoder.start()
        self._watcher.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.decoder.stop()
        self._watcher.join(timeout=10)

    def _event(self, kind: str, **fields) -> None:
        self.events.appendleft({"time": time.time(), "kind": kind, **fields})

    def _watch(self) -> None:
        """Install cards the learner published; note job state changes for the page."""
        while not self._stop.wait(self.cfg.watch_interval_s):
            try:
                self.poll()
            except Exception:  # a bad scan must not stop the next one
                log.exception("watching skills_dir failed")

    def poll(self) -> None:
        if self.learner is not None:
            self.learner.ensure()
        with self._scan_lock:
            changes = self.manager.scan()
        for name in changes["installed"]:
            self._event("installed", skill=name)
        for path, why in changes["refused"]:
            self._event("refused", card=path, reason=why)
        for name in changes["removed"]:
            self._event("removed", skill=name)
        for job in self.queue.list():
            if self._job_states.get(job.id) != job.state:
                self._job_states[job.id] = job.state
                extra = {"reason": job.errors[-1]} if job.state == "dead" and job.errors else {}
                if job.state == "done" and job.result:
                    extra = {"skill": job.result.get("skill"), "learned": job.result.get("learned")}
                self._event(f"job {job.state}", job=job.id, query=job.event.query, **extra)

    # -- answering ----------------------------------------------------------------------------------
    def submit(self, req: ChatRequest, on_text: Callable[[str], None] | None = None,
               on_done: Callable[[], None] | None = None) -> Pending:
        """Route, queue learning if routing is dissonant, hand the prompt to the decoder; returns at once.

        RequestError for what the client must change; ``Busy`` when too many requests wait.
        """
        t0 = time.perf_counter()
        r = self.router.route(req.query)  # EmptyQueryError for a query with no words
        skill = self.detector.selected(r)
        learning = self._learn(r, None) if skill is None else None
        max_tokens = req.max_tokens or self.max_new_tokens
        prompt = chat_prompt_ids(self.manager.bundle.tokenizer, req.messages)
        if len(prompt) + max_tokens > self.context:
            raise RequestError(f"this model's context is {self.context} tokens; the messages take {len(prompt)} "
                               f"and max_tokens asks for {max_tokens} more. Shorten the messages or max_tokens",
                               param="messages", code="context_length_exceeded")
        row = Row(prompt, skill if skill != BASE_SKILL else None, max_tokens, on_text=on_text, on_done=on_done)
        self.decoder.submit(row)
        return Pending(req, row, r, skill, learning, t0)

    def finish(self, p: Pending) -> dict:
        """After the row is done: the answer's own dissonance check, and the ``autodidact`` object."""
        row, r, skill = p.row, p.route, p.skill
        learning = p.learning
        # Only an adapter's answer is checked, as in Autodidact.ask: the base model's was verified.
        weak = (skill not in (None, BASE_SKILL) and row.finish in ("stop", "length")
                and self.detector.weak_answer(row.min_prob))
        if weak:
            learning = self._learn(r, row.min_prob)
        info = {
            "skill": None if skill == BASE_SKILL else skill,
            "confidence": round(r.confidence, 4),
            "answered_by": "skill" if skill not in (None, BASE_SKILL) else "base model",
            "answer_confidence": round(row.min_prob, 4),
            "learning": learning,
            "batch_size": row.batch_size,
            "seconds": round(time.perf_counter() - p.t0, 3),
        }
        if skill == BASE_SKILL:
            info["known_by_base"] = True
        if weak:
            info["weak_answer"] = True
        return info

    def _learn(self, r, answer_confidence: float | None) -> dict | None:
        """Queue a learning event for a dissonant query (deduplicated by topic); the job it joined."""
        if not self.bot.learn:
            return None
        event = self.detector.check(r, answer_confidence)
        if event is None:
            return None
        job_id, _ = self.queue.put(event)  # the same topic again: the job just queued (or already known)
        job = self.queue.get(job_id)
        self._event("dissonance", query=r.query, confidence=round(r.confidence, 4), job=job_id,
                    reason=event.extra.get("reason"))
        return {"job": job_id, "state": job.state}

    # -- what the endpoints list ------------------------------------------------------------------
    def skills(self) -> list[dict]:
        out = []
        for s in list(self.manager.skills.values()):
            meta = {k: v for k, v in s.meta.items() if k not in HEAVY_META}
            try:
                size = s.path.stat().st_size
            except OSError:
                size = None
            out.append({"id": s.name, "object": "skill", "card": str(s.path), "card_bytes": size,
                        "pairs": len(s.meta.get("pairs", [])), **meta})
        return out

    def jobs(self) -> list[dict]:
        return [job_dict(j) for j in self.queue.list()]

    def job(self, job_id: int) -> dict:
        job = self.queue.get(job_id)
        skill = (job.result or {}).get("skill")
        if job.state == "done" and (job.result or {}).get("learned") and skill not in self.manager.skills:
            # Done means its card is published; install it now rather than at the watcher's next scan,
            # so a client that saw "done" is answered by the new skill on its very next request.
            self.poll()
        return job_dict(job)

    def health(self) -> dict:
        learner = self.learner.status() if self.learner is not None else None
        return {"status": "ok", "model": self.model_id, "skills": len(self.manager.skills),
                "uptime_s": round(time.time() - self.started, 1),
                "decoder": {"decoding": self.decoder.decoding, "waiting": self.decoder.waiting,
                            "max_batch": self.decoder.max_batch, **self.decoder.stats},
                "queue": self.queue.counts(), "learner": learner}


def job_dict(j: Job) -> dict:
    """A job as ``/v1/jobs`` shows it: state, attempts, reasons, seconds per stage."""
    res = j.result or {}
    return {"id": j.id, "object": "learning.job", "query": j.event.query, "state": j.state, "attempts": j.attempts,
            "reasons": j.errors, "seconds": res.get("seconds", {}), "skill": res.get("skill"),
            "learned": res.get("learned"), "verified": res.get("verified"), "joined": res.get("joined"),
            "reason": res.get("reason"), "created_at": j.created_at, "updated_at": j.updated_at,
            "event": {"best_skill": j.event.best_skill, "confidence": j.event.confidence,
                      "reason": (j.event.extra or {}).get("reason")}}
