"""``.lora.arrow`` cards: round trip into a fresh model, metadata, the Arrow layout, and every refusal.

The source adapter is the seeded tiny Llama with random (non-zero) LoRA values, exported through
``LoRATrainer.export`` so the metadata is the one real training writes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from autodidact.card import (
    MAX_CARD_BYTES,
    META_KEY,
    SCHEMA,
    CardError,
    attach_card,
    check_card_fits,
    decode_card,
    encode_card,
    load_card,
    read_card,
    write_card,
)
from autodidact.errors import AutodidactError
from autodidact.inference.lora_layer import inject_lora, lora_layers, lora_state_dict, set_adapter
from autodidact.lora_trainer import LoRAConfig, LoRATrainer, TrainConfig, TrainResult
from autodidact.models import ModelBundle, load_tiny, weights_fingerprint

LORA = LoRAConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"])
SKILL = "velmora"
IDS = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(0))
RESULT = TrainResult(
    adapter=SKILL, loss_initial=5.5, loss_final=0.25, steps=12, epochs=3, seconds=1.5, learned=True,
    exact_match=1.0, losses=[5.5, 0.25],
)


@dataclass
class Source:
    bundle: ModelBundle
    logits: torch.Tensor  # the adapted model's logits on IDS
    cards: dict[str, Path]  # dtype -> card path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Source:
    bundle = load_tiny(seed=0)
    inject_lora(bundle.model, LORA.target_modules, LORA.r, LORA.alpha, adapter_name=SKILL)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(bundle.model).values():
            b = layer.lora_B[SKILL]
            b.copy_(torch.randn(b.shape, generator=g) * 0.3)  # B starts at zero: make the adapter matter
        logits = bundle.model(input_ids=IDS).logits
    trainer = LoRATrainer(bundle, LORA, TrainConfig(progress_bar=False))
    d = tmp_path_factory.mktemp("cards")
    cards = {
        dt: trainer.export(d / f"{dt}.lora.arrow", adapter=SKILL, skill=SKILL, result=RESULT, dtype=dt)
        for dt in ("float32", "float16", "bfloat16")
    }
    return Source(bundle=bundle, logits=logits, cards=cards)


def _base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.replace(".base_layer.", "."): v.clone() for k, v in model.state_dict().items() if "lora_" not in k}


# -- round trip ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "atol"), [("float32", 0.0), ("float16", 2e-3), ("bfloat16", 2e-2)]
)
def test_round_trip_into_a_fresh_model(source: Source, dtype: str, atol: float) -> None:
    fresh = load_tiny(seed=0)
    assert fresh.fingerprint == source.bundle.fingerprint  # same seed, same weights
    with torch.no_grad():
        base_logits = fresh.model(input_ids=IDS).logits
    assert not torch.allclose(base_logits, source.logits, atol=1e-2), "the adapter changes nothing"
    before = _base_state(fresh.model)

    card = load_card(source.cards[dtype], fresh.model, fresh.fingerprint)

    assert card.skill == SKILL
    assert card.layers == [f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    with torch.no_grad():
        logits = fresh.model(input_ids=IDS).logits
    if atol == 0.0:
        assert torch.equal(logits, source.logits)
    else:
        assert torch.allclose(logits, source.logits, atol=atol, rtol=0)
    # loading copies LoRA values only: every base tensor is bit-identical, and the fingerprint holds
    after = _base_state(fresh.model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert weights_fingerprint(fresh.model) == fresh.fingerprint
    # the loaded adapter is frozen and switchable
    assert all(not p.requires_grad for p in fresh.model.parameters())
    set_adapter(fresh.model, None)
    with torch.no_grad():
        assert torch.equal(fresh.model(input_ids=IDS).logits, base_logits)


def test_card_tensors_match_the_exported_adapter(source: Source) -> None:
    card = read_card(source.cards["float32"])
    state = lora_state_dict(source.bundle.model, SKILL)
    assert card.tensors.keys() == state.keys()
    assert all(torch.equal(card.tensors[k], state[k]) for k in state)
    assert card.num_parameters == sum(t.numel() for t in state.values())
    half = read_card(source.cards["float16"])
    assert all(t.dtype == torch.float16 for t in half.tensors.values())


def test_metadata(source: Source) -> None:
    meta = read_card(source.cards["float16"]).meta
    assert meta["format_version"] == 1
    assert meta["skill"] == SKILL
    assert meta["base_model"] == {"name": "tiny-llama-s0", "fingerprint": source.bundle.fingerprint}
    assert meta["lora"] == {"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}
    train = meta["train"]
    assert {k: train[k] for k in ("loss_initial", "loss_final", "steps", "seconds")} == {
        "loss_initial": 5.5, "loss_final": 0.25, "steps": 12, "seconds": 1.5,
    }
    assert "losses" not in train and "adapter" not in train
    created = datetime.fromisoformat(meta["created_at"])
    assert created.tzinfo is not None


def test_card_is_a_plain_arrow_ipc_file(source: Source) -> None:
    path = source.cards["float16"]
    with pa.memory_map(str(path)) as f:
        reader = pa.ipc.open_file(f)
        table = reader.read_all()
    assert table.schema.names == ["name", "shape", "dtype", "data"]
    assert [str(t) for t in table.schema.types] == ["string", "list<item: int64>", "string", "binary"]
    state = lora_state_dict(source.bundle.model, SKILL)
    assert table.num_rows == len(state)
    rows = {r["name"]: r for r in table.to_pylist()}
    for name, t in state.items():
        assert rows[name]["shape"] == list(t.shape)
        assert rows[name]["dtype"] == "float16"
        assert len(rows[name]["data"]) == t.numel() * 2
    meta = json.loads(table.schema.metadata[META_KEY])
    assert meta["skill"] == SKILL
    assert path.stat().st_size < 64 * 1024


def test_decode_card_from_bytes(source: Source) -> None:
    data = source.cards["float32"].read_bytes()
    card = decode_card(data)
    assert card.path is None and card.skill == SKILL
    with pytest.raises(CardError, match="corrupt or truncated"):
        decode_card(data[: len(data) // 2], path="mem.lora.arrow")


# -- refusals --------------------------------------------------------------------------------------
def _rewrite(src: Path, dst: Path, rows: Callable[[list[dict]], list[dict]] | None = None,
             meta: Callable[[dict], dict | None] | None = None, raw_meta: bytes | None = None,
             schema: pa.Schema = SCHEMA) -> Path:
    """Copy a card, editing its rows and/or metadata, written as a valid Arrow IPC file."""
    with pa.memory_map(str(src)) as f:
        table = pa.ipc.open_file(f).read_all()
    r = table.to_pylist()
    m = json.loads(table.schema.metadata[META_KEY])
    if rows:
        r = rows(r)
    if meta:
        m = meta(m)
    if raw_meta is not None:
        md = {META_KEY: raw_meta}
    else:
        md = {META_KEY: json.dumps(m).encode()} if m is not None else None
    cols = {f.name: [row.get(f.name) for row in r] for f in schema}
    new = pa.table(cols, schema=schema.with_metadata(md) if md else schema)
    with pa.OSFile(str(dst), "wb") as sink, pa.ipc.new_file(sink, new.schema) as w:
        w.write_table(new)
    return dst


def _edit_row(i: int, **changes) -> Callable[[list[dict]], list[dict]]:
    def f(rows: list[dict]) -> list[dict]:
        rows = [dict(r) for r in rows]
        rows[i].update({k: (v(rows[i]) if callable(v) else v) for k, v in changes.items()})
        return rows

    return f


def _set(key: str, value) -> Callable[[dict], dict]:
    return lambda m: {**m, key: value}


def _drop(key: str) -> Callable[[dict], dict]:
    return lambda m: {k: v for k, v in m.items() if k != key}


def _special(d: Path, make: Callable[[Path], object]) -> Path:
    p = d / "special.lora.arrow"
    make(p)
    return p


def _compressed(src: Path, dst: Path) -> Path:
    """The same card, its record batches LZ4-compressed (each buffer then states its own decoded size)."""
    with pa.memory_map(str(src)) as f:
        table = pa.ipc.open_file(f).read_all()
    with pa.OSFile(str(dst), "wb") as sink, pa.ipc.new_file(
        sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")
    ) as w:
        w.write_table(table)
    return dst


NAN_F32 = b"\x00\x00\xc0\x7f"  # float32 NaN, little-endian


@dataclass
class Refusal:
    id: str
    make: Callable[[Path, Path], Path]  # (good float32 card, tmp dir) -> the bad card
    needle: str  # a phrase of the problem the message must name
    into: Callable[[], ModelBundle] = lambda: load_tiny(seed=0)
    use_card_fingerprint: bool = False  # skip the fingerprint check to reach the shape check


def _truncate(at: Callable[[int], int]) -> Callable[[Path, Path], Path]:
    def make(good: Path, d: Path) -> Path:
        data = good.read_bytes()
        p = d / "cut.lora.arrow"
        p.write_bytes(data[: at(len(data))])
        return p

    return make


def _bytes(data: bytes, name: str = "bad.lora.arrow") -> Callable[[Path, Path], Path]:
    def make(good: Path, d: Path) -> Path:
        p = d / name
        p.write_bytes(data)
        return p

    return make


REFUSALS = [
    Refusal("random-bytes", _bytes(os.urandom(4096)), "corrupt or truncated"),
    Refusal("empty-file", _bytes(b""), "corrupt or truncated"),
    Refusal("json-not-arrow", _bytes(b'{"skill": "x"}\n'), "corrupt or truncated"),
    *[
        Refusal(f"truncated-{label}", _truncate(at), "corrupt or truncated")
        for label, at in [
            ("8B", lambda n: 8),
            ("100B", lambda n: 100),
            ("half", lambda n: n // 2),
            ("minus-1", lambda n: n - 1),
            ("minus-16", lambda n: n - 16),
        ]
    ],
    Refusal("missing-file", lambda good, d: d / "absent.lora.arrow", "cannot be read"),
    Refusal(
        "over-10MB",
        lambda good, d: _bytes(good.read_bytes() + b"\0" * (MAX_CARD_BYTES + 1), "huge.lora.arrow")(good, d),
        "over the 10 MB",
    ),
    Refusal("no-metadata", lambda g, d: _rewrite(g, d / "x.lora.arrow", meta=lambda m: None),
            "no 'autodidact' metadata"),
    Refusal("metadata-not-json", lambda g, d: _rewrite(g, d / "x.lora.arrow", raw_meta=b"{not json"),
            "not valid JSON"),
    Refusal("metadata-not-object", lambda g, d: _rewrite(g, d / "x.lora.arrow", raw_meta=b"[1, 2]"),
            "not a JSON object"),
    Refusal("format-version-2", lambda g, d: _rewrite(g, d / "x.lora.arrow", meta=_set("format_version", 2)),
            "format_version 2 is not supported"),
    Refusal("format-version-missing",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", meta=_drop("format_version")),
            "format_version None"),
    *[
        Refusal(f"metadata-lacks-{k}", lambda g, d, k=k: _rewrite(g, d / "x.lora.arrow", meta=_drop(k)),
                f"metadata lacks {k}")
        for k in ("skill", "base_model", "lora", "train", "created_at")
    ],
    Refusal("empty-skill", lambda g, d: _rewrite(g, d / "x.lora.arrow", meta=_set("skill", "")),
            "'skill' must be a non-empty string"),
    Refusal("no-fingerprint", lambda g, d: _rewrite(g, d / "x.lora.arrow", meta=_set("base_model", {"name": "x"})),
            "'fingerprint' string"),
    Refusal("lora-r-not-int",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", meta=_set("lora", {"r": "4", "alpha": 8})),
            "integer 'r'"),
    Refusal("lora-r-zero",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", meta=_set("lora", {"r": 0, "alpha": 8})),
            "r=0"),
    Refusal("rank-mismatch",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", meta=_set("lora", {"r": 8, "alpha": 8.0})),
            "metadata says r=8"),
    Refusal("unknown-dtype", lambda g, d: _rewrite(g, d / "x.lora.arrow", rows=_edit_row(0, dtype="int8")),
            "dtype 'int8'"),
    Refusal("data-too-short",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", rows=_edit_row(0, data=lambda r: r["data"][:-4])),
            "bytes of data"),
    Refusal("data-too-long",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", rows=_edit_row(1, data=lambda r: r["data"] + b"\0" * 4)),
            "bytes of data"),
    Refusal("shape-disagrees-with-data",
            lambda g, d: _rewrite(g, d / "x.lora.arrow",
                                  rows=_edit_row(0, shape=lambda r: [r["shape"][0], r["shape"][1] + 1])),
            "bytes of data"),
    Refusal("shape-3d",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", rows=_edit_row(0, shape=lambda r: [1, *r["shape"]])),
            "LoRA tensors are 2-D"),
    Refusal("nan-values",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", rows=_edit_row(0, data=lambda r: NAN_F32 + r["data"][4:])),
            "NaN or Inf"),
    Refusal("not-a-lora-name",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", rows=_edit_row(0, name="model.embed_tokens.weight")),
            "not a LoRA tensor"),
    Refusal("duplicate-name",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", rows=lambda rs: [*rs, rs[0]]),
            "appears twice"),
    Refusal("missing-twin", lambda g, d: _rewrite(g, d / "x.lora.arrow", rows=lambda rs: rs[1:]),
            "has no matching"),
    Refusal("no-tensors", lambda g, d: _rewrite(g, d / "x.lora.arrow", rows=lambda rs: []), "holds no tensors"),
    Refusal("wrong-columns",
            lambda g, d: _rewrite(g, d / "x.lora.arrow",
                                  schema=pa.schema([("name", pa.string()), ("shape", pa.list_(pa.int64())),
                                                    ("dtype", pa.string()), ("blob", pa.binary())])),
            "expected name, shape, dtype, data"),
    Refusal("unknown-layer",
            lambda g, d: _rewrite(
                g, d / "x.lora.arrow",
                rows=lambda rs: [{**r, "name": r["name"].replace("layers.0.", "layers.7.")} for r in rs]),
            "has no linear layer 'model.layers.7"),
    Refusal("layer-is-not-linear",
            lambda g, d: _rewrite(
                g, d / "x.lora.arrow",
                rows=lambda rs: [{**r, "name": r["name"].replace("self_attn.q_proj", "input_layernorm")}
                                 for r in rs]),
            "has no linear layer 'model.layers.0.input_layernorm'"),
    # Found by tests/test_card_fuzz.py: each was a hang, an unbounded read, a huge allocation or a raw
    # exception before card.py checked for it.
    Refusal("fifo", lambda g, d: _special(d, lambda p: os.mkfifo(p)), "not a regular file"),
    Refusal("symlink-to-dev-zero", lambda g, d: _special(d, lambda p: p.symlink_to("/dev/zero")),
            "not a regular file"),
    Refusal("compressed-batches", lambda g, d: _compressed(g, d / "x.lora.arrow"), "compressed record batches"),
    Refusal("metadata-deeply-nested", lambda g, d: _rewrite(g, d / "x.lora.arrow", raw_meta=b"[" * 100_000),
            "not valid JSON"),
    Refusal("metadata-int-past-digit-limit",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", raw_meta=b'{"format_version": ' + b"1" * 5000 + b"}"),
            "not valid JSON"),
    Refusal("alpha-too-big-for-float",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", meta=_set("lora", {"r": 4, "alpha": 10**400})),
            "alpha="),
    Refusal("name-path-trick",
            lambda g, d: _rewrite(g, d / "x.lora.arrow",
                                  rows=lambda rs: [{**r, "name": "../../" + r["name"]} for r in rs]),
            "not a plain layer path"),
    Refusal("name-inside-a-lora-wrapper",
            lambda g, d: _rewrite(g, d / "x.lora.arrow",
                                  rows=lambda rs: [{**r, "name": r["name"].replace("q_proj.", "q_proj.base_layer.")}
                                                   for r in rs]),
            "not a plain layer path"),
    Refusal("skill-with-a-slash", lambda g, d: _rewrite(g, d / "x.lora.arrow", meta=_set("skill", "../evil")),
            "not usable as a skill name"),
    Refusal("wrong-base-seed-1", lambda g, d: g, "fingerprint", into=lambda: load_tiny(seed=1)),
    Refusal("wrong-base-hidden-32", lambda g, d: g, "fingerprint", into=lambda: load_tiny(seed=0, hidden=32)),
    # Even with the fingerprint check out of the way, tensors sized for hidden 64 don't fit hidden 32.
    Refusal("wrong-shape-hidden-32", lambda g, d: g, "the model's layer needs (4, 32)",
            into=lambda: load_tiny(seed=0, hidden=32), use_card_fingerprint=True),
    Refusal("wrong-shape-one-layer",
            lambda g, d: _rewrite(g, d / "x.lora.arrow", rows=_edit_row(
                0, shape=lambda r: [r["shape"][0], r["shape"][1] // 2],
                data=lambda r: r["data"][: len(r["data"]) // 2])),
            "the model's layer needs"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.id for c in REFUSALS])
def test_refusals_name_the_file_and_the_problem(source: Source, tmp_path: Path, case: Refusal) -> None:
    good = source.cards["float32"]
    path = case.make(good, tmp_path)
    bundle = case.into()
    fingerprint = read_card(good).meta["base_model"]["fingerprint"] if case.use_card_fingerprint else bundle.fingerprint
    before = _base_state(bundle.model)
    with pytest.raises(CardError) as e:
        load_card(path, bundle.model, fingerprint)
    msg = str(e.value)
    assert str(path) in msg, msg
    assert case.needle in msg, msg
    assert e.value.path == str(path)
    assert "Traceback" not in msg
    # a refused card leaves the model as it was: no LoRA layer injected, no weight touched
    assert not lora_layers(bundle.model)
    after = _base_state(bundle.model)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("row", [0, -1], ids=["first", "last"])
def test_a_non_finite_value_is_refused_naming_its_tensor(source: Source, tmp_path: Path, row: int) -> None:
    """Finiteness is checked over all of a card's tensors at once; the refusal still names the one."""
    good = source.cards["float32"]
    with pa.memory_map(str(good)) as f:
        name = pa.ipc.open_file(f).read_all().column("name").to_pylist()[row]
    inf = b"\x00\x00\x80\x7f"  # float32 +Inf, little-endian
    path = _rewrite(good, tmp_path / "x.lora.arrow", rows=_edit_row(row, data=lambda r: r["data"][:-4] + inf))
    with pytest.raises(CardError, match=f"tensor '{re.escape(name)}' holds NaN or Inf"):
        read_card(path)


def test_loading_the_same_adapter_twice_is_refused(source: Source) -> None:
    fresh = load_tiny(seed=0)
    load_card(source.cards["float16"], fresh.model, fresh.fingerprint)
    with pytest.raises(CardError, match="already loaded"):
        load_card(source.cards["float16"], fresh.model, fresh.fingerprint)
    # under another adapter name it loads beside the first
    card = read_card(source.cards["float32"])
    assert attach_card(card, fresh.model, fresh.fingerprint, adapter_name="second") == "second"
    assert all(layer.adapters == [SKILL, "second"] for layer in lora_layers(fresh.model).values())


@pytest.mark.parametrize("skill", ["a.b", "update"])
def test_a_card_whose_skill_is_not_a_usable_adapter_name_is_refused_cleanly(
    source: Source, tmp_path: Path, skill: str
) -> None:
    path = _rewrite(source.cards["float32"], tmp_path / "x.lora.arrow", meta=_set("skill", skill))
    fresh = load_tiny(seed=0)
    with pytest.raises(AutodidactError, match="not usable"):
        load_card(path, fresh.model, fresh.fingerprint)


def test_check_card_fits_accepts_the_source_model(source: Source) -> None:
    check_card_fits(read_card(source.cards["float16"]), source.bundle.model, source.bundle.fingerprint)


# -- writing -------------------------------------------------------------------------------------
def _state(source: Source) -> dict[str, torch.Tensor]:
    return lora_state_dict(source.bundle.model, SKILL)


def _meta(source: Source) -> dict:
    return read_card(source.cards["float16"]).meta


@pytest.mark.parametrize(
    ("name", "state_edit", "meta_edit", "dtype", "needle"),
    [
        ("bad.arrow", None, None, "float16", "end in .lora.arrow"),
        ("x.lora.arrow", None, None, "int8", "cannot store dtype 'int8'"),
        ("x.lora.arrow", lambda s: {**s, "model.lm_head.weight": torch.zeros(2, 2)}, None, "float16",
         "not a LoRA tensor"),
        ("x.lora.arrow", lambda s: {k: v * float("nan") for k, v in s.items()}, None, "float16", "NaN or Inf"),
        ("x.lora.arrow", None, _drop("skill"), "float16", "metadata lacks ['skill']"),
        ("x.lora.arrow", lambda s: {"big.lora_A": torch.ones(1, 3_000_000), "big.lora_B": torch.ones(3_000_000, 1)},
         None, "float32", "over the 10 MB limit"),
    ],
    ids=["suffix", "dtype", "non-lora", "nan", "meta", "too-big"],
)
def test_failed_write_leaves_the_existing_card_untouched(
    source: Source, tmp_path: Path, name: str, state_edit, meta_edit, dtype: str, needle: str
) -> None:
    path = tmp_path / name
    old = b"the card that was here before"
    path.write_bytes(old)
    state, meta = _state(source), _meta(source)
    with pytest.raises(CardError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        write_card(path, state_edit(state) if state_edit else state, meta_edit(meta) if meta_edit else meta,
                   dtype=dtype)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_write_is_atomic_and_leaves_no_temp_files(source: Source, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "skill.lora.arrow"
    write_card(path, _state(source), _meta(source))
    assert [p.name for p in tmp_path.iterdir()] == ["skill.lora.arrow"]
    good = path.read_bytes()
    assert read_card(path).skill == SKILL

    # a crash between writing the temp file and renaming it: the old card stays, the temp file goes
    def boom(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr("autodidact.fileio.os.replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_card(path, _state(source), {**_meta(source), "skill": "other"})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["skill.lora.arrow"]

    # a successful overwrite replaces it whole, with ordinary file permissions
    write_card(path, _state(source), {**_meta(source), "skill": "other"})
    assert read_card(path).skill == "other"
    assert [p.name for p in tmp_path.iterdir()] == ["skill.lora.arrow"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_encode_keeps_extra_metadata_and_format_version(source: Source) -> None:
    meta = {**_meta(source), "routing": {"key": "abc"}}
    meta.pop("format_version")
    card = decode_card(encode_card(_state(source), meta))
    assert card.meta["routing"] == {"key": "abc"}
    assert card.meta["format_version"] == 1
