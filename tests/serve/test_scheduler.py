"""The decoder thread's batching: what it takes together, what it refuses, and concurrent requests."""

from __future__ import annotations

import threading

import pytest

from autodidact.data import prompt_ids
from autodidact.serve.decode import Row
from autodidact.serve.scheduler import Busy, Decoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def row(manager, skill, q="Who?", n=4) -> Row:
    return Row(prompt_ids(manager.bundle.tokenizer, q), skill, n)


def test_more_waiting_requests_than_allowed_are_refused(manager):
    d = Decoder(manager, max_batch=4, max_waiting=2)  # not started: rows only wait
    d.submit(row(manager, None))
    d.submit(row(manager, None))
    with pytest.raises(Busy, match="max_waiting"):
        d.submit(row(manager, None))


def test_a_batch_takes_the_oldest_rows_within_max_batch_and_max_loaded_skills(manager):
    old = manager.max_loaded
    manager.max_loaded = 2
    try:
        d = Decoder(manager, max_batch=4, max_waiting=10)
        rows = [row(manager, s) for s in ("brindlemark", "velmorite", "quillon", None, "brindlemark", None)]
        gone = row(manager, "quillon")
        gone.cancel()  # its client left while it waited
        for r in [gone, *rows]:
            d.submit(r)
        first = d._take()
        # quillon would be a third adapter: it waits, the rows behind it come along (FIFO otherwise).
        assert first == [rows[0], rows[1], rows[3], rows[4]]
        assert gone.done.is_set() and gone.finish == "cancelled" and d.stats["cancelled"] == 1
        assert d._take() == [rows[2], rows[5]]
    finally:
        manager.max_loaded = old


def test_batching_off_decodes_one_request_at_a_time(manager):
    d = Decoder(manager, max_batch=8, batching="off")
    for _ in range(3):
        d.submit(row(manager, None))
    assert len(d._take()) == 1


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer(manager):
    d = Decoder(manager, max_batch=8, max_waiting=64)
    skills = ["brindlemark", "velmorite", None, "quillon"] * 4
    rows = [row(manager, s, q=f"Question number {i}?", n=12) for i, s in enumerate(skills)]
    threads = [threading.Thread(target=d.submit, args=(r,)) for r in rows]  # from 16 request threads at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d.start()  # every request is waiting when the decoder first looks
    try:
        for r in rows:
            assert r.done.wait(60) and r.finish in ("stop", "length")
    finally:
        d.stop()
    assert d.stats["max_batch_seen"] == 8 and d.stats["rows"] == 16 and d.stats["batches"] == 2
    for r, s, i in zip(rows, skills, range(16), strict=True):
        alone = manager.answer(s, f"Question number {i}?", 12)
        assert r.text == alone.text and r.batch_size == 8
