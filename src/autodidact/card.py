"""``.lora.arrow`` skill cards: one LoRA adapter plus everything needed to trust and route it.

An Arrow IPC *file* (``pyarrow.ipc.new_file``), one row per tensor:

    name   string          qualified layer path + ".lora_A" | ".lora_B"
    shape  list<int64>     (r, in) for lora_A, (out, r) for lora_B
    dtype  string          float16 | bfloat16 | float32
    data   binary          raw little-endian bytes, row-major

Schema metadata key ``autodidact`` holds a JSON object: ``format_version``, ``skill``,
``base_model`` {name, fingerprint}, ``lora`` {r, alpha, target_modules}, ``train`` {loss_initial,
loss_final, steps, seconds, ...}, ``created_at``, and optional blocks such as ``routing``.

No pickle anywhere: a card is data, so loading a hostile one can at worst be refused. Writes go
through a temp file and a rename, so a reader (or a crash) never sees half a card. Every check a
load makes raises :class:`CardError` naming the file and what to do, never an error from inside
torch or Arrow.

Reading trusts nothing the file claims. Only a regular file of at most ``MAX_CARD_BYTES`` is read (a
FIFO or device would block or never end). The Arrow messages are walked one by one: dictionary batches
and compressed bodies are refused *before* Arrow decodes them (a compressed buffer states its own
decompressed size, so a 1 KB file could make Arrow allocate gigabytes), each batch is fully validated
(offsets inside their buffers) before a value is read, the row count is capped, every shape is checked
against the byte count it implies before any tensor is made, and names are checked as plain
``a.b.c`` module paths before they are looked up in a model.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn as nn

from autodidact.errors import AutodidactError
from autodidact.fileio import atomic_write_bytes
from autodidact.inference.lora_layer import LoRAError, LoRALinear, inject_lora, lora_layers

FORMAT_VERSION = 1
META_KEY = b"autodidact"
SUFFIX = ".lora.arrow"
MAX_CARD_BYTES = 10 * 1024 * 1024  # the requirements' storage limit per card

# name -> (torch dtype, numpy little-endian dtype used to move the bytes)
DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float16": (torch.float16, "<f2"),
    "bfloat16": (torch.bfloat16, "<i2"),  # numpy has no bfloat16: move the bit pattern as int16
    "float32": (torch.float32, "<f4"),
}
SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("dtype", pa.string()),
        ("data", pa.binary()),
    ]
)
REQUIRED_META = ("format_version", "skill", "base_model", "lora", "train", "created_at")
MAX_ROWS = 4096  # a real card has 2 rows per adapted layer: SmolLM2 with every linear layer is 420
ARROW_MAGIC = b"ARROW1"
# A tensor name is a module path of plain components; the wrapper's own submodules are not layers.
_LAYER_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_NOT_A_LAYER = {"base_layer", "lora_A", "lora_B", "lora_dropout"}
MAX_NAME_CHARS = 300
# A skill name becomes an adapter (parameter) name, a log word and often part of a file name.
_SKILL_NAME = re.compile(r"\w[\w\- ]{0,199}")
_PARAMETER_DICT = nn.ParameterDict()  # adapter names may not shadow its methods or attributes ('copy', 'training')


class CardError(AutodidactError):
    """A card is unreadable, corrupt, too large, or does not fit the model it is loaded into."""

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = str(path) if path is not None else None
        self.problem = problem
        where = f"skill card {self.path}" if self.path else "skill card"
        super().__init__(f"{where}: {problem}")


@dataclass
class Card:
    """A decoded card: its metadata and its tensors (``name -> tensor``, stored dtype)."""

    path: Path | None
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def skill(self) -> str:
        return self.meta["skill"]

    @property
    def layers(self) -> list[str]:
        """Qualified names of the layers the adapter attaches to."""
        return sorted({n.rsplit(".", 1)[0] for n in self.tensors})

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


# -- write ---------------------------------------------------------------------------------------
def _to_bytes(t: torch.Tensor, dtype: str) -> bytes:
    tdt, npdt = DTYPES[dtype]
    t = t.detach().to("cpu", tdt).contiguous()
    arr = t.view(torch.int16).numpy() if dtype == "bfloat16" else t.numpy()
    return arr.astype(npdt, copy=False).tobytes()


def encode_card(state: dict[str, torch.Tensor], meta: dict, dtype: str = "float16") -> bytes:
    """Serialise an adapter state dict and its metadata to card bytes."""
    if dtype not in DTYPES:
        raise CardError(None, f"cannot store dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    for name, t in state.items():
        if not name.endswith((".lora_A", ".lora_B")):
            raise CardError(None, f"tensor {name!r} is not a LoRA tensor (must end in .lora_A or .lora_B)")
        if not torch.isfinite(t).all():
            raise CardError(None, f"tensor {name!r} holds NaN or Inf; refusing to export a broken adapter")
    meta = {"format_version": FORMAT_VERSION, "created_at": datetime.now(UTC).isoformat(timespec="seconds"), **meta}
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CardError(None, f"metadata lacks {missing}")
    names = sorted(state)
    table = pa.table(
        {
            "name": pa.array(names, pa.string()),
            "shape": pa.array([list(state[n].shape) for n in names], pa.list_(pa.int64())),
            "dtype": pa.array([dtype] * len(names), pa.string()),
            "data": pa.array([_to_bytes(state[n], dtype) for n in names], pa.binary()),
        },
        schema=SCHEMA.with_metadata({META_KEY: json.dumps(meta, ensure_ascii=False).encode()}),
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def write_card(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict, dtype: str = "float16") -> Path:
    """Encode and write atomically (temp file + fsync + rename). Refuses cards over the size limit."""
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise CardError(path, f"card file names end in {SUFFIX}")
    data = encode_card(state, meta, dtype)
    if len(data) > MAX_CARD_BYTES:
        raise CardError(path, f"would be {len(data) / 2**20:.1f} MB, over the {MAX_CARD_BYTES / 2**20:.0f} MB "
                              "limit; lower lora.r or target fewer modules")
    return atomic_write_bytes(path, data)


# -- read ----------------------------------------------------------------------------------------
def read_card(path: str | os.PathLike, max_bytes: int = MAX_CARD_BYTES) -> Card:
    """Read and check a card on its own (format, metadata, dtypes, byte counts). No model needed."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO planted under a card's name must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise CardError(path, f"cannot be read ({e.strerror}); check the path") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CardError(path, "is not a regular file (a directory, pipe or device); remove it from the "
                                  "skills directory")
        if st.st_size > max_bytes:
            raise CardError(path, f"is {st.st_size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB card "
                                  "limit; it is not a card this system wrote (or was trained with a huge rank)")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            blob = f.read(max_bytes + 1)  # never more than the limit, even if the file grew meanwhile
    except OSError as e:
        raise CardError(path, f"cannot be read ({e.strerror}); check the path") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(blob) > max_bytes:
        raise CardError(path, f"grew past the {max_bytes / 2**20:.0f} MB card limit while being read")
    return decode_card(blob, path)


def decode_card(data: bytes, path: str | os.PathLike | None = None) -> Card:
    """Decode and check card bytes (``path`` only names them in errors)."""
    path = Path(path) if path else None
    if len(data) > MAX_CARD_BYTES:
        raise CardError(path, f"is {len(data) / 2**20:.1f} MB, over the {MAX_CARD_BYTES / 2**20:.0f} MB card limit")
    return _decode(path, _read_table(data, path))


def _corrupt(path: Path | None, why: str) -> CardError:
    return CardError(path, f"is corrupt or truncated, not an Arrow IPC file ({why}); delete it "
                           "and let the skill be learned again")


def _read_table(data: bytes, path: Path | None) -> pa.Table:
    """The card's one table, read without letting the file size any allocation."""
    if len(data) < 2 * len(ARROW_MAGIC) + 4 or data[:6] != ARROW_MAGIC or data[-6:] != ARROW_MAGIC:
        raise _corrupt(path, "no Arrow file magic at both ends")
    buf = pa.py_buffer(data)
    schema: pa.Schema | None = None
    batches: list[pa.RecordBatch] = []
    rows = 0
    try:
        # The file is a stream of messages (schema, batches) between the magic and the footer; walk it.
        reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(buf[8:]))
        while True:
            try:
                msg = reader.read_next_message()
            except StopIteration:
                break
            if schema is None:
                if msg.type != "schema":
                    raise _corrupt(path, f"first message is a {msg.type}, not the schema")
                schema = pa.ipc.read_schema(msg)
            elif msg.type == "record batch":
                if _is_compressed(msg.metadata.to_pybytes()):
                    raise CardError(path, "has compressed record batches; cards are written uncompressed "
                                          "(a compressed body could claim any size); re-export the card")
                batch = pa.ipc.read_record_batch(msg, schema)
                batch.validate(full=True)  # offsets inside their buffers before any value is read
                batches.append(batch)
                rows += batch.num_rows
                if rows > MAX_ROWS or len(batches) > MAX_ROWS:
                    raise CardError(path, f"has over {MAX_ROWS} tensors or batches; no LoRA card is that large")
            else:
                raise CardError(path, f"holds a {msg.type} message; a card has one schema and record batches")
        if schema is None:
            raise _corrupt(path, "no schema")
        # The footer must describe the same file (the walk above ignored it).
        footer = pa.ipc.open_file(buf)
        if footer.num_record_batches != len(batches) or not footer.schema.equals(schema, check_metadata=True):
            raise _corrupt(path, "its footer does not match its contents")
        return pa.Table.from_batches(batches, schema)
    except CardError:
        raise
    except (pa.ArrowException, OSError, ValueError, struct.error) as e:
        raise _corrupt(path, _short(e)) from None


def _is_compressed(fb: bytes) -> bool:
    """Whether a record-batch message sets ``RecordBatch.compression`` (Arrow ``Message.fbs``).

    A minimal flatbuffer walk: Message field 2 is the header union's value, RecordBatch field 3 is
    ``compression``. Out-of-range offsets raise ``struct.error`` (reported as a corrupt card).
    """

    def field(table: int, index: int) -> int | None:
        vtable = table - struct.unpack_from("<i", fb, table)[0]
        vt_size = struct.unpack_from("<H", fb, vtable)[0]
        slot = 4 + 2 * index
        off = struct.unpack_from("<H", fb, vtable + slot)[0] if slot + 2 <= vt_size else 0
        return table + off if off else None

    header = field(struct.unpack_from("<I", fb, 0)[0], 2)
    if header is None:
        return False
    return field(header + struct.unpack_from("<I", fb, header)[0], 3) is not None


def _short(e: Exception) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return s[:160]


def _show(value: object, limit: int = 60) -> str:
    """``repr`` of a value read from a file, cut short: a message must not carry a hostile megabyte."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_meta(path: Path | None, raw: bytes | None) -> dict:
    if raw is None:
        raise CardError(path, "has no 'autodidact' metadata; it is an Arrow file but not a skill card")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, a number past int's digit limit, deep nesting
        raise CardError(path, "metadata is not valid JSON (the file is damaged)") from None
    if not isinstance(meta, dict):
        raise CardError(path, "metadata is not a JSON object")
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise CardError(path, f"format_version {_show(version)} is not supported (this autodidact reads "
                              f"version {FORMAT_VERSION}); upgrade autodidact or re-export the card")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CardError(path, f"metadata lacks {', '.join(missing)}")
    skill = meta["skill"]
    if not isinstance(skill, str) or not skill:
        raise CardError(path, "metadata 'skill' must be a non-empty string")
    if not _SKILL_NAME.fullmatch(skill) or skill.endswith(" ") or hasattr(_PARAMETER_DICT, skill):
        raise CardError(path, f"metadata 'skill' {_show(skill)} is not usable as a skill name; use up to 200 "
                              "letters, digits, '_', '-' or spaces, starting with a letter or digit "
                              "(e.g. velmora_lighthouse)")
    bm, lo = meta["base_model"], meta["lora"]
    if not isinstance(bm, dict) or not isinstance(bm.get("fingerprint"), str):
        raise CardError(path, "metadata 'base_model' must hold a 'fingerprint' string")
    if not isinstance(lo, dict) or type(lo.get("r")) is not int or type(lo.get("alpha")) not in (int, float):
        raise CardError(path, "metadata 'lora' must hold integer 'r' and numeric 'alpha'")
    try:
        alpha_ok = math.isfinite(float(lo["alpha"]))
    except OverflowError:  # an integer too large for a float
        alpha_ok = False
    if lo["r"] < 1 or not alpha_ok:
        raise CardError(path, f"metadata 'lora' has r={_show(lo['r'])}, alpha={_show(lo['alpha'])}")
    targets = lo.get("target_modules", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise CardError(path, "metadata 'lora.target_modules' must be a list of layer names")
    if not isinstance(meta["train"], dict) or not isinstance(meta["created_at"], str):
        raise CardError(path, "metadata 'train' must be an object and 'created_at' a string")
    return meta


def _decode(path: Path | None, table: pa.Table) -> Card:
    meta = _check_meta(path, (table.schema.metadata or {}).get(META_KEY))
    if [(f.name, str(f.type)) for f in table.schema] != [(f.name, str(f.type)) for f in SCHEMA]:
        raise CardError(path, f"columns are {_show(table.schema.names, 200)}, expected name, shape, dtype, data")
    shape_lengths = pc.list_value_length(table.column("shape"))
    if table.num_rows and (shape_lengths.null_count or pc.min_max(shape_lengths).as_py() != {"min": 2, "max": 2}):
        raise CardError(path, "has a tensor whose shape is not 2-D; LoRA tensors are 2-D")

    tensors: dict[str, torch.Tensor] = {}
    columns = [table.column(c).to_pylist() for c in ("name", "shape", "dtype", "data")]
    for name, shape, dtype, data in zip(*columns, strict=True):
        if not isinstance(name, str) or not name.endswith((".lora_A", ".lora_B")):
            raise CardError(path, f"row {_show(name)} is not a LoRA tensor (names end in .lora_A or .lora_B)")
        layer = name.rsplit(".", 1)[0]
        if (len(name) > MAX_NAME_CHARS or not _LAYER_PATH.fullmatch(layer)
                or _NOT_A_LAYER.intersection(layer.split("."))):
            raise CardError(path, f"tensor name {_show(name)} is not a plain layer path (like "
                                  "model.layers.0.self_attn.q_proj.lora_A); the card is damaged or hostile")
        if name in tensors:
            raise CardError(path, f"tensor {name!r} appears twice")
        if dtype not in DTYPES:
            raise CardError(path, f"tensor {name!r} has dtype {_show(dtype)}; supported: {', '.join(DTYPES)}")
        if any(s is None or s < 1 for s in shape):
            raise CardError(path, f"tensor {name!r} has shape {_show(shape)}; LoRA tensors are 2-D")
        tdt, npdt = DTYPES[dtype]
        expected = shape[0] * shape[1] * np.dtype(npdt).itemsize  # Python ints: no overflow
        if data is None or len(data) != expected:
            raise CardError(path, f"tensor {name!r}: {0 if data is None else len(data)} bytes of data, shape "
                                  f"{_show(shape)} {dtype} needs {_show(expected, 30)}; the card is damaged")
        arr = np.frombuffer(data, dtype=npdt).reshape(shape)
        t = torch.from_numpy(arr.copy())
        t = t.view(torch.bfloat16) if dtype == "bfloat16" else t.to(tdt)
        tensors[name] = t
    if not tensors:
        raise CardError(path, "holds no tensors")
    # One finiteness check per dtype over all of a card's tensors: a card has ~40 small ones, and a
    # check per tensor (two kernels each) was a quarter of a hot-load's read. The culprit is named after.
    for group in _by_dtype(tensors.values()):
        if not torch.isfinite(torch.cat([t.reshape(-1) for t in group])).all():
            bad = next(n for n, t in tensors.items() if not torch.isfinite(t).all())
            raise CardError(path, f"tensor {bad!r} holds NaN or Inf")
    r = meta["lora"]["r"]
    for name, t in tensors.items():
        layer, kind = name.rsplit(".", 1)
        twin = f"{layer}.{'lora_B' if kind == 'lora_A' else 'lora_A'}"
        if twin not in tensors:
            raise CardError(path, f"{name} has no matching {twin}")
        rank_dim = t.shape[0] if kind == "lora_A" else t.shape[1]
        if rank_dim != r:
            raise CardError(path, f"tensor {name} has rank {rank_dim}, metadata says r={r}")
    return Card(path=path, meta=meta, tensors=tensors)


def _by_dtype(tensors) -> list[list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())


# -- fit to a model --------------------------------------------------------------------------------
def check_card_fits(card: Card, model: nn.Module, fingerprint: str) -> None:
    """Refuse a card trained on other base weights, or whose tensors don't match the model's layers."""
    want = card.meta["base_model"]["fingerprint"]
    if want != fingerprint:
        name = card.meta["base_model"].get("name", "?")
        raise CardError(card.path, f"was trained on base model {name!r} ({want}), but the loaded base model "
                                   f"has fingerprint {fingerprint}; load it with the model it was trained on, "
                                   "or retrain the skill")
    lora = lora_layers(model)  # cached: most of a card's layers already carry adapters
    modules: dict[str, nn.Module] | None = None
    for name, t in card.tensors.items():
        layer, kind = name.rsplit(".", 1)
        m = lora.get(layer)
        if m is None:
            modules = dict(model.named_modules()) if modules is None else modules
            m = modules.get(layer)
        base = m.base_layer if isinstance(m, LoRALinear) else m
        if not isinstance(base, nn.Linear):
            raise CardError(card.path, f"tensor {name}: the model has no linear layer {layer!r}")
        r = card.meta["lora"]["r"]
        expected = (r, base.in_features) if kind == "lora_A" else (base.out_features, r)
        if tuple(t.shape) != expected:
            raise CardError(card.path, f"tensor {name} has shape {tuple(t.shape)}, the model's layer needs {expected}")


@torch.no_grad()
def attach_card(card: Card, model: nn.Module, fingerprint: str, adapter_name: str | None = None,
                checked: bool = False) -> str:
    """Check ``card`` against ``model`` and add it as adapter ``adapter_name`` (default: the skill).

    The adapter's weights are copied into new LoRA parameters; base weights are untouched.
    ``checked``: the caller has just run ``check_card_fits`` on this card and model (the manager's
    install does, before it changes any state), so it is not run twice.
    """
    if not checked:
        check_card_fits(card, model, fingerprint)
    name = adapter_name or card.skill
    lo = card.meta["lora"]
    try:  # inject_lora refuses a name clash before it touches the model
        # init=False: every A and B is overwritten from the card just below.
        inject_lora(model, card.layers, r=lo["r"], alpha=lo["alpha"], dropout=0.0, adapter_name=name, init=False)
    except LoRAError as e:
        reason = "is already loaded; unload it before loading it again" if "already exists" in str(e) else str(e)
        raise CardError(card.path, f"adapter {name!r} {reason}") from None
    for tname, t in card.tensors.items():
        layer, kind = tname.rsplit(".", 1)
        m: LoRALinear = model.get_submodule(layer)
        param = getattr(m, kind)[name]
        param.copy_(t.to(param.dtype))
        param.requires_grad = False
    return name


def load_card(path: str | os.PathLike, model: nn.Module, fingerprint: str, adapter_name: str | None = None) -> Card:
    """Read, check and attach a card file; returns the decoded card."""
    card = read_card(path)
    attach_card(card, model, fingerprint, adapter_name)
    return card
