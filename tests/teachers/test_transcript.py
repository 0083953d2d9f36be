"""The teacher transcript on a full or read-only disk: our error, earlier records intact, still replayable.

Full disk: ``os.write`` in ``autodidact.fileio`` fails with ENOSPC after part of the record went out
(deterministic), and ``/dev/full`` gives the kernel's own ENOSPC. Read-only: tests run as root, whom chmod
does not stop, so EROFS is raised from the ``os.open`` a read-only file system would fail.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from autodidact.errors import AutodidactError
from autodidact.fileio import StorageError
from autodidact.teachers import ReplayProvider
from autodidact.teachers.providers import Completion
from autodidact.teachers.transcript import TRANSCRIPT_NAME, Transcript

SECRET = "sk-test-canary-0123456789"


def _record(t: Transcript, n: int) -> None:
    reply = Completion(text=json.dumps({"pairs": [{"q": f"q{n}", "a": f"a{n}"}]}), provider="openai", model="gpt",
                       latency_s=0.1, usage={"input_tokens": 3, "output_tokens": 5})
    t.record(provider="openai", model="gpt", system="sys", user=f"question {n} (key {SECRET})", attempt=1,
             completion=reply)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_full_disk_mid_record_keeps_earlier_records_and_no_torn_line(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / TRANSCRIPT_NAME
    t = Transcript(path, secrets=[SECRET])
    _record(t, 1)
    before = path.read_bytes()
    real_write = os.write
    sent = {"n": 0}

    def full_after_20_bytes(fd: int, data) -> int:
        if sent["n"] >= 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data[: 20 - sent["n"]]))
        sent["n"] += n
        return n

    monkeypatch.setattr("autodidact.fileio.os.write", full_after_20_bytes)
    with pytest.raises(StorageError) as e:
        _record(t, 2)
    monkeypatch.undo()
    msg = str(e.value)
    assert isinstance(e.value, AutodidactError) and str(path) in msg and "no space is left on the disk" in msg
    assert "free space on that disk" in msg
    assert path.read_bytes() == before  # the 20 bytes that got out were cut back
    _record(t, 3)  # space again
    records = _lines(path)
    assert [r["request"]["user"] for r in records] == ["question 1 (key ***)", "question 3 (key ***)"]
    assert SECRET not in path.read_text("utf-8")
    replay = ReplayProvider(path)  # every line is a whole record: the transcript still replays
    assert replay.complete("sys", "question 3 (key ***)").text == records[1]["reply"]


def test_transcript_on_dev_full_is_a_real_enospc(tmp_path: Path) -> None:
    path = tmp_path / TRANSCRIPT_NAME
    path.symlink_to("/dev/full")
    with pytest.raises(StorageError, match=r"ENOSPC") as e:
        _record(Transcript(path), 1)
    assert e.value.errno == errno.ENOSPC


def test_transcript_on_a_read_only_disk_is_our_error(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "run" / TRANSCRIPT_NAME
    real_open = os.open

    def erofs(p, flags, *a):
        if Path(p) == path:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(p, flags, *a)

    monkeypatch.setattr("autodidact.fileio.os.open", erofs)
    with pytest.raises(StorageError, match=r"read-only \(EROFS\).*writable one") as e:
        _record(Transcript(path), 1)
    assert SECRET not in str(e.value)
    assert not path.exists()
