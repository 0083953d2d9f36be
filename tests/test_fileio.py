"""A full or read-only disk while writing a card or a JSONL log: our error, and the old file as it was.

Full disk: ``os.write`` / ``os.fsync`` are made to fail with ENOSPC (after part of the data went out, as a
real full disk does), deterministically; plus two real kernel refusals: ``/dev/full`` (ENOSPC on every
write) and ``RLIMIT_FSIZE`` (EFBIG past a size, in a subprocess). Read-only: tests run as root, whom
``chmod`` does not stop, and mounting a read-only file system needs privileges a test does not have, so
EROFS / EACCES are raised from the calls a read-only disk would fail (``mkstemp``, ``os.replace``,
``os.open``).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autodidact.card import read_card, write_card
from autodidact.errors import AutodidactError
from autodidact.fileio import StorageError, append_jsonl, atomic_write_bytes

SRC = str(Path(__file__).resolve().parents[1] / "src")


class Disk:
    """Makes the next writes to files fail the way a full disk does: some bytes go out, then ENOSPC."""

    def __init__(self, monkeypatch, after_bytes: int = 10, err: int = errno.ENOSPC) -> None:
        self.left = after_bytes
        self.err = err
        real_write = os.write

        def write(fd: int, data) -> int:
            if self.left <= 0:
                raise OSError(self.err, os.strerror(self.err))
            n = real_write(fd, bytes(data[: self.left]))
            self.left -= n
            return n

        monkeypatch.setattr("autodidact.fileio.os.write", write)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"model.layers.0.self_attn.q_proj.lora_A": torch.randn(4, 64, generator=g),
            "model.layers.0.self_attn.q_proj.lora_B": torch.randn(64, 4, generator=g)}


META = {"skill": "velmora", "base_model": {"name": "tiny", "fingerprint": "f" * 64},
        "lora": {"r": 4, "alpha": 8.0, "target_modules": ["q_proj"]}, "train": {"steps": 1}}


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# -- cards (atomic writes) ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "err", "needle"),
    [
        ("write", errno.ENOSPC, "no space is left on the disk (ENOSPC)"),
        ("write", errno.EDQUOT, "disk quota is used up (EDQUOT)"),
        ("fsync", errno.ENOSPC, "no space is left on the disk (ENOSPC)"),
        ("fsync", errno.EIO, "Input/output error (EIO)"),
        ("mkstemp", errno.EROFS, "the file system is read-only (EROFS)"),
        ("mkstemp", errno.EACCES, "permission was denied (EACCES)"),
        ("replace", errno.EROFS, "the file system is read-only (EROFS)"),
    ],
)
def test_card_write_refused_by_the_disk_keeps_the_previous_card(
    tmp_path: Path, monkeypatch, where: str, err: int, needle: str
) -> None:
    path = tmp_path / "velmora.lora.arrow"
    write_card(path, _state(), META)
    previous = path.read_bytes()

    def refuse(*a, **k):
        raise OSError(err, os.strerror(err))

    if where == "write":
        Disk(monkeypatch, after_bytes=100, err=err)
    else:
        target = {"fsync": "autodidact.fileio.os.fsync", "mkstemp": "autodidact.fileio.tempfile.mkstemp",
                  "replace": "autodidact.fileio.os.replace"}[where]
        monkeypatch.setattr(target, refuse)
    newer = {k: v * 2 for k, v in _state().items()}
    with pytest.raises(StorageError) as e:
        write_card(path, newer, {**META, "skill": "velmora"})
    monkeypatch.undo()
    msg = str(e.value)
    assert isinstance(e.value, AutodidactError) and isinstance(e.value, OSError) and e.value.errno == err
    assert msg.startswith(f"cannot write {path}: ") and needle in msg, msg
    assert "velmora.lora.arrow was left as it was." in msg
    assert path.read_bytes() == previous  # the previous card, whole
    assert read_card(path).skill == "velmora"
    assert _listing(tmp_path) == ["velmora.lora.arrow"]  # no temp file left behind
    write_card(path, newer, META)  # the disk is fine again: the write goes through
    assert torch.equal(read_card(path).tensors["model.layers.0.self_attn.q_proj.lora_A"],
                       newer["model.layers.0.self_attn.q_proj.lora_A"].half())


def test_first_card_refused_by_a_full_disk_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    Disk(monkeypatch, after_bytes=0)
    with pytest.raises(StorageError, match="velmora.lora.arrow was not created"):
        write_card(tmp_path / "velmora.lora.arrow", _state(), META)
    assert _listing(tmp_path) == []


def test_an_error_without_errno_is_not_dressed_up(tmp_path: Path, monkeypatch) -> None:
    def boom(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr("autodidact.fileio.os.replace", boom)
    with pytest.raises(OSError, match="disk on fire") as e:
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert not isinstance(e.value, StorageError)
    assert _listing(tmp_path) == []


_FSIZE = """
import resource, signal, sys
import torch
from autodidact.card import write_card
from autodidact.fileio import StorageError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)            # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # no file may grow past 1000 bytes
state = {"l.lora_A": torch.ones(4, 64), "l.lora_B": torch.ones(64, 4)}
meta = {"skill": "big", "base_model": {"name": "t", "fingerprint": "f"}, "lora": {"r": 4, "alpha": 8.0},
        "train": {}}
try:
    write_card(sys.argv[1], state, meta)
except StorageError as e:
    print(e)
"""


def test_a_real_kernel_refusal_mid_write_keeps_the_previous_card(tmp_path: Path) -> None:
    """No mock: the kernel itself stops the write at 1000 bytes (RLIMIT_FSIZE, EFBIG), as a full disk would."""
    path = tmp_path / "big.lora.arrow"
    path.write_bytes(b"the previous card")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", _FSIZE, str(path)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"cannot write {path}: File too large (EFBIG)" in out.stdout, out.stdout
    assert path.read_bytes() == b"the previous card"
    assert _listing(tmp_path) == ["big.lora.arrow"]


# -- JSONL appends (results, transcripts) ------------------------------------------------------------
def test_append_refused_part_way_leaves_no_torn_line(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "results.jsonl"
    append_jsonl(path, {"n": 1})
    before = path.read_bytes()
    Disk(monkeypatch, after_bytes=7)  # 7 bytes of the next line reach the file, then the disk is full
    with pytest.raises(StorageError, match="no space is left") as e:
        append_jsonl(path, {"n": 2, "text": "x" * 100})
    monkeypatch.undo()
    assert "results.jsonl was left as it was (this record is not in it)" in str(e.value)
    assert path.read_bytes() == before  # cut back: no half line for a reader to choke on
    append_jsonl(path, {"n": 3})
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [1, 3]


def test_append_to_dev_full_is_a_real_enospc(tmp_path: Path) -> None:
    """``/dev/full`` answers every write with ENOSPC: the kernel's own full disk, no mock."""
    path = tmp_path / "transcript.jsonl"
    path.symlink_to("/dev/full")
    with pytest.raises(StorageError, match=r"no space is left on the disk \(ENOSPC\)") as e:
        append_jsonl(path, {"n": 1})
    assert e.value.errno == errno.ENOSPC and str(path) in str(e.value)


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES])
def test_append_to_a_read_only_place_is_our_error(tmp_path: Path, monkeypatch, err: int) -> None:
    path = tmp_path / "results.jsonl"
    append_jsonl(path, {"n": 1})
    before = path.read_bytes()
    real_open = os.open

    def refuse(p, flags, *a):
        if Path(p) == path and flags & os.O_WRONLY:
            raise OSError(err, os.strerror(err))
        return real_open(p, flags, *a)

    monkeypatch.setattr("autodidact.fileio.os.open", refuse)
    with pytest.raises(StorageError) as e:
        append_jsonl(path, {"n": 2})
    assert e.value.errno == err and errno.errorcode[err] in str(e.value)
    assert path.read_bytes() == before
