"""Read an offline W&B run's ``run-*.wandb`` file: the records W&B would upload on ``wandb sync``.

The file is a LevelDB-style log (what wandb's old ``datastore.py`` wrote and wandb-core still writes):
a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of records, each with a
7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last) and a protobuf ``Record``.
"""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    chunks, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the writer pads a block's tail that cannot hold a record header
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        body = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            chunks.append(body)
        elif kind == 2:
            pending = body
        elif kind == 3:
            pending += body
        elif kind == 4:
            chunks.append(pending + body)
            pending = b""
        else:  # zero fill at the end of the file
            break
    records = []
    for c in chunks:
        r = pb.Record()
        r.ParseFromString(c)
        records.append(r)
    return records


def offline_run(save_dir: str | Path) -> Path:
    """The single ``offline-run-*`` folder under ``save_dir/wandb``."""
    runs = sorted((Path(save_dir) / "wandb").glob("offline-run-*"))
    if len(runs) != 1:
        raise AssertionError(f"expected one offline run under {save_dir}, found {[p.name for p in runs]}")
    return runs[0]
