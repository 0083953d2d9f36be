"""The decoder thread: takes waiting requests in batches and decodes them while holding the model.

One thread owns generation. Request threads put a :class:`Row` in; it takes up to ``max_batch`` of
them (``batching=off``: one), attaches the adapters they need under the manager's lock and decodes
them together. A card the learner published is installed by the watcher under the same lock, so a
swap waits at most for the batch in flight, and a request waits at most for the swap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from autodidact.data import end_of_turn_id
from autodidact.errors import AutodidactError
from autodidact.lora_manager import BASE_SKILL, LoRAManager
from autodidact.serve.decode import Row, decode_batch

log = logging.getLogger(__name__)


class Busy(AutodidactError):
    """More requests are waiting than ``server.max_waiting`` allows."""


class Decoder:
    """Batches waiting rows and decodes them on one thread (see the module docstring)."""

    def __init__(self, manager: LoRAManager, max_batch: int = 8, batching: str = "mixed",
                 max_waiting: int = 64) -> None:
        self.manager = manager
        self.max_batch = 1 if batching == "off" else max_batch
        self.max_waiting = max_waiting
        tok = manager.bundle.tokenizer
        self.eos_id = end_of_turn_id(tok)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        self._waiting: deque[Row] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self.decoding = 0
        self.stats = {"batches": 0, "rows": 0, "cancelled": 0, "errors": 0, "max_batch_seen": 0,
                      "last_cancelled_tokens": None}
        self._thread = threading.Thread(target=self._loop, name="autodidact-decoder", daemon=True)

    def start(self) -> Decoder:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, row: Row) -> Row:
        """Queue ``row`` for decoding; :class:`Busy` when too many are waiting already."""
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"{len(self._waiting)} requests are already waiting (server.max_waiting); retry shortly")
            self._waiting.append(row)
            self._cond.notify()
        return row

    def _take(self) -> list[Row]:
        """Up to ``max_batch`` waiting rows, oldest first, with at most ``manager.max_loaded`` distinct
        adapters (a row that would need one more waits for the next batch)."""
        batch: list[Row] = []
        names: set[str] = set()
        rest: deque[Row] = deque()
        while self._waiting and len(batch) < self.max_batch:
            r = self._waiting.popleft()
            if r.cancelled.is_set():  # its client left while it waited: it frees its place at once
                self._count_cancel(r)
                continue
            key = r.adapter if r.adapter not in (None, BASE_SKILL) else None
            if key is not None and key not in names and len(names) >= self.manager.max_loaded:
                rest.append(r)
                continue
            if key is not None:
                names.add(key)
            batch.append(r)
        self._waiting.extendleft(reversed(rest))
        return batch

    def _count_cancel(self, row: Row) -> None:
        self.stats["cancelled"] += 1
        row.mark_done("cancelled")

    def _on_finish(self, row: Row) -> None:
        self.decoding -= 1
        if row.finish == "cancelled":
            self.stats["cancelled"] += 1
            self.stats["last_cancelled_tokens"] = len(row.tokens)  # how far it got: the slot was freed there

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stop:
                    self._cond.wait()
                if self._stop:
                    for r in self._waiting:
                        r.mark_done("error", "the server is shutting down")
                    return
                batch = self._take()
            if not batch:
                continue
            self.decoding = len(batch)
            self.stats["batches"] += 1
            self.stats["rows"] += len(batch)
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(batch))
            t = time.perf_counter()
            try:
                with self.manager.lock:
                    adapters = self.manager.attach_for_batch([r.adapter for r in batch])
                    for r, a in zip(batch, adapters, strict=True):
                        r.adapter = a
                    decode_batch(self.manager.model, self.manager.bundle.tokenizer, batch, self.eos_id, self.pad_id,
                                 on_finish=self._on_finish)
            except Exception:  # the rows already carry the error; the thread goes on serving
                self.stats["errors"] += 1
                log.exception("decoding a batch of %d failed", len(batch))
                for r in batch:
                    r.mark_done("error", r.error or "decoding failed")
            finally:
                self.decoding = 0
            log.debug("batch of %d decoded in %.3f s", len(batch), time.perf_counter() - t)
