"""Card fuzzing: hundreds of seeded mutations of valid ``.lora.arrow`` cards, each loaded into a tiny model.

Every mutation must end one of two ways: refused with :class:`CardError` naming the file and the
problem, or loaded harmlessly (the adapter attaches, the model runs, and unloading it leaves the base
weights bit-identical). Never any other exception, never a hang (a watchdog kills the process), and
never an allocation sized by what the file claims (Arrow's allocator peak and the process's peak RSS
are measured across the whole run).

Mutation families: truncations, byte flips (anywhere, in the schema/metadata region, in the footer),
broken metadata JSON (text damage, wrong types, huge numbers, deep nesting), wrong dtypes, absurd shapes,
tensor and skill names that do not exist or carry path tricks, a card for another base model, files
over the size cap (padding, a real oversized tensor, a sparse 1 TB file, a FIFO), and Arrow files with
extra or missing columns, other column types, extra/empty/duplicated batches, compression (with
honest and lying lengths), the IPC stream format, dictionary encoding and non-UTF-8 metadata.
"""

from __future__ import annotations

import faulthandler
import io
import json
import os
import random
import re
import resource
import struct
import time
import tokenize
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from autodidact.card import MAX_CARD_BYTES, META_KEY, SCHEMA, CardError, encode_card, load_card
from autodidact.inference.lora_layer import (
    delete_adapter,
    inject_lora,
    lora_layers,
    lora_state_dict,
    set_adapter,
)
from autodidact.models import ModelBundle, load_tiny, weights_fingerprint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEED = 20_240_807
SKILL = "velmora"
R = 4
IDS = torch.randint(0, 250, (1, 12), generator=torch.Generator().manual_seed(1))


# -- valid source cards ----------------------------------------------------------------------------
@dataclass
class Good:
    """One valid card: its bytes, and the parts it was built from (for structural mutations)."""

    dtype: str
    data: bytes
    rows: list[dict]
    meta: dict


def _good_cards(bundle: ModelBundle) -> dict[str, Good]:
    model = load_tiny(seed=0).model  # a private copy: the shared model stays free of LoRA layers
    inject_lora(model, ["q_proj", "v_proj"], r=R, alpha=8.0, adapter_name=SKILL)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B[SKILL].copy_(torch.randn(layer.lora_B[SKILL].shape, generator=g) * 0.3)
    state = lora_state_dict(model, SKILL)
    meta = {
        "skill": SKILL,
        "base_model": {"name": bundle.name, "fingerprint": bundle.fingerprint},
        "lora": {"r": R, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]},
        "train": {"loss_initial": 5.5, "loss_final": 0.25, "steps": 12, "seconds": 1.5},
        "routing": {"note": "not read by card.py"},
        "created_at": "2025-01-01T00:00:00+00:00",  # fixed, so every run mutates the same bytes
    }
    out = {}
    for dt in ("float32", "float16", "bfloat16"):
        data = encode_card(state, meta, dtype=dt)
        table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
        out[dt] = Good(dt, data, table.to_pylist(), json.loads(table.schema.metadata[META_KEY]))
    return out


def _arrow(rows: list[dict], meta: dict | bytes | None, schema: pa.Schema = SCHEMA, batches: int = 1,
           compression: str | None = None, stream: bool = False, extra_batches: list[list[dict]] = ()) -> bytes:
    """Write ``rows`` (split into ``batches`` record batches) as Arrow IPC, with metadata as given."""
    md = None if meta is None else {META_KEY: meta if isinstance(meta, bytes) else json.dumps(meta).encode()}
    schema = schema.with_metadata(md) if md else schema

    def table(rs: list[dict]) -> pa.Table:
        return pa.table({f.name: [r.get(f.name) for r in rs] for f in schema}, schema=schema)

    sink = pa.BufferOutputStream()
    opts = pa.ipc.IpcWriteOptions(compression=compression)
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    with new(sink, schema, options=opts) as w:
        n = max(1, batches)
        size = -(-len(rows) // n) if rows else 0
        for i in range(n):
            part = rows[i * size:(i + 1) * size] if size else []
            w.write_table(table(part))
        for extra in extra_batches:
            w.write_table(table(extra))
    return sink.getvalue().to_pybytes()


# -- the mutations ---------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    family: str
    data: bytes | None = None  # the file's bytes; None: ``make`` creates the file itself
    make: Callable[[Path], None] | None = None
    other_base: bool = False  # load into a model with other weights


def _flip(rng: random.Random, data: bytes, lo: int, hi: int, n: int) -> bytes:
    b = bytearray(data)
    for _ in range(n):
        i = rng.randrange(max(0, lo), min(len(b), hi))
        b[i] ^= rng.randrange(1, 256)
    return bytes(b)


BAD_VALUES: list[object] = [
    None, True, False, 0, -1, 2**63, 1.5, float("inf"), "", "x", "\x00", [], {}, [1, 2], {"r": 4},
    "9" * 100, -(2**70),
]
# Raw JSON texts json.dumps cannot make: numbers past the int-digit limit or float range, deep nesting.
RAW_JSON_VALUES = ["1" * 5000, "1e999", "-1e999", "NaN", "Infinity", "[" * 50_000 + "]" * 50_000, '"\\ud800"']
META_PATHS = [
    ("format_version",), ("skill",), ("base_model",), ("base_model", "name"), ("base_model", "fingerprint"),
    ("lora",), ("lora", "r"), ("lora", "alpha"), ("lora", "target_modules"), ("train",), ("created_at",),
]
BAD_DTYPES = ["float64", "int8", "uint8", "bool", "", "FLOAT16", "float16 ", "float16\x00", "object", "<f2",
              "complex64", "float8_e4m3fn", None, "bfloat16", "float16", "float32", "int16"]
LAYER = "model.layers.0.self_attn.q_proj"
TRICK_LAYERS = [
    "../../etc/passwd", "/etc/passwd", "C:\\Windows\\system32", "model.layers.0.self_attn.q_proj.base_layer",
    "model..self_attn.q_proj", "", ".", "model.layers.0.self_attn.q_proj.lora_A", "model.layers.9.self_attn.q_proj",
    "model.layers.-1.self_attn.q_proj", "model.layers.00.self_attn.q_proj", "model.layers.０.self_attn.q_proj",
    "model.layers.0.self_attn.q_proj\x00", "model.layers.0.self_attn.q_proj ", "lm_head", "model.embed_tokens",
    "__class__", "model.__dict__", "model.layers.0.mlp.down_proj", "model.layers.0.self_attn.o_proj",
    "model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.v_proj", "x" * 20_000, "model.layers.0.self_attn",
    "model.layers.0.self_attn.q_proj.lora_dropout", "model.layers.0.self_attn.rotary_emb", "model.layers",
]
TRICK_SKILLS = ["../evil", "a/b", "a.b", "update", "copy", "\x00", "x" * 20_000, " ", "skill\n", "..", "/",
                "nul\x00byte", "no_skill", "__none__", "ok-name_1", "Ünïcödé", "tab\tname", "\u202eevil"]
ABSURD_SHAPES = [[], [4], [4, 64, 1], [0, 64], [-1, 64], [2**62, 2**62], [2**31, 2**31], [-(2**63), -1],
                 [64, 4], [1, 256], [256, 1], [8, 32], [2, 128], [4, 63], [4, 65], [None, 64], [4, None],
                 [2**63 - 1, 1], [1, 2**40]]


def _set_path(meta: dict, path: tuple[str, ...], value: object) -> dict:
    meta = json.loads(json.dumps(meta))
    d = meta
    for k in path[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[path[-1]] = value
    return meta


def _raw_meta_with(meta: dict, path: tuple[str, ...], raw: str) -> bytes:
    marker = "__RAW_VALUE_MARKER__"
    text = json.dumps(_set_path(meta, path, marker))
    return text.replace(json.dumps(marker), raw).encode()


def _rename(rows: list[dict], old: str, new: str) -> list[dict]:
    return [{**r, "name": new + r["name"][len(old):]} if r["name"].startswith(old + ".") else dict(r) for r in rows]


def build_cases(good: dict[str, Good]) -> list[Case]:
    rng = random.Random(SEED)
    cases: list[Case] = []
    dts = list(good)

    def pick() -> Good:
        return good[rng.choice(dts)]

    def add(family: str, data: bytes | None = None, make=None, **kw) -> None:
        cases.append(Case(f"{family}-{sum(c.family == family for c in cases)}", family, data, make, **kw))

    # truncations: fixed edges and random cut points
    for g in good.values():
        for n in (0, 1, 6, 8, 12, 64, len(g.data) // 2, len(g.data) - 10, len(g.data) - 6, len(g.data) - 1):
            add("truncate", g.data[:n])
    for _ in range(50):
        g = pick()
        add("truncate", g.data[: rng.randrange(len(g.data))])

    # byte flips: anywhere; in the first KiB (magic, schema, metadata); in the last 512 bytes (footer)
    for region, count in (("any", 120), ("head", 60), ("tail", 60)):
        for _ in range(count):
            g = pick()
            lo, hi = {"any": (0, len(g.data)), "head": (0, 1024), "tail": (len(g.data) - 512, len(g.data))}[region]
            add(f"flip-{region}", _flip(rng, g.data, lo, hi, rng.choice([1, 1, 2, 4, 16])))

    # metadata: text damage to the JSON, wrong-typed values, raw values json.dumps cannot write
    for _ in range(40):
        g = pick()
        text = json.dumps(g.meta)
        i, j = sorted(rng.randrange(len(text)) for _ in range(2))
        damage = rng.choice(["cut", "drop", "insert", "dup", "non-utf8"])
        bad = {"cut": text[:i], "drop": text[:i] + text[j:], "insert": text[:i] + rng.choice('{}[]",:\\') + text[i:],
               "dup": text[:j] + text[i:j] + text[j:], "non-utf8": None}[damage]
        raw = bad.encode() if bad is not None else text[:i].encode() + b"\xff\xfe" + text[i:].encode()
        add("meta-text", _arrow(g.rows, raw))
    for path in META_PATHS:
        for value in rng.sample(BAD_VALUES, 5):
            g = pick()
            add("meta-type", _arrow(g.rows, _set_path(g.meta, path, value)))
        g = pick()
        add("meta-missing", _arrow(g.rows, {k: v for k, v in g.meta.items() if k != path[0]}))
    for raw in RAW_JSON_VALUES:
        for path in (("lora", "r"), ("lora", "alpha"), ("skill",), ("format_version",), ("train",)):
            g = pick()
            add("meta-raw", _arrow(g.rows, _raw_meta_with(g.meta, path, raw)))
    for raw in (b"", b"null", b"[]", b'"card"', b"{}", b"\x00" * 64, b"{" * 100_000):
        add("meta-raw", _arrow(pick().rows, raw))

    # dtypes: a wrong name on one or every row
    for dt in BAD_DTYPES:
        g = pick()
        i = rng.randrange(len(g.rows))
        add("dtype", _arrow([{**r, "dtype": dt} if k == i else r for k, r in enumerate(g.rows)], g.meta))
        add("dtype", _arrow([{**r, "dtype": dt} for r in g.rows], g.meta))

    # shapes: absurd claims, with and without data of the claimed size (when it is small)
    for shape in ABSURD_SHAPES:
        for _ in range(2):
            g = pick()
            i = rng.randrange(len(g.rows))
            row = dict(g.rows[i], shape=shape)
            n = shape[0] * shape[1] if len(shape) == 2 and None not in shape and 0 < shape[0] * shape[1] < 10**5 else 0
            if n and rng.random() < 0.5:
                row["data"] = bytes(n * {"float32": 4}.get(row["dtype"], 2))
            add("shape", _arrow([row if k == i else r for k, r in enumerate(g.rows)], g.meta))

    # tensor names that do not exist or carry path tricks (a whole A/B pair, or one row), skill names
    for trick in TRICK_LAYERS:
        g = pick()
        add("name-layer", _arrow(_rename(g.rows, LAYER, trick), g.meta))
        i = rng.randrange(len(g.rows))
        add("name-row", _arrow([{**r, "name": trick + rng.choice([".lora_A", ".lora_B", ""])} if k == i else r
                                for k, r in enumerate(g.rows)], g.meta))
    for skill in TRICK_SKILLS:
        g = pick()
        add("name-skill", _arrow(g.rows, {**g.meta, "skill": skill}))

    # a card for another base model: another fingerprint, or the right one loaded into other weights
    for _ in range(6):
        g = pick()
        fp = f"{rng.getrandbits(256):064x}"
        add("other-base", _arrow(g.rows, _set_path(g.meta, ("base_model", "fingerprint"), fp)))
    for g in good.values():
        add("other-base", g.data, other_base=True)
        add("other-base", _arrow(g.rows, _set_path(g.meta, ("base_model", "name"), "SmolLM2-135M")), other_base=True)

    # over the size cap: padding, a real tensor too big, a sparse 1 TB file, not a regular file
    g = good["float32"]
    add("size", g.data + bytes(MAX_CARD_BYTES))
    big = [{"name": f"{LAYER}.lora_A", "shape": [R, 700_000], "dtype": "float32", "data": bytes(R * 700_000 * 4)},
           *[r for r in g.rows if not r["name"].startswith(LAYER + ".lora_A")]]
    add("size", _arrow(big, g.meta))

    def sparse(path: Path) -> None:
        with open(path, "wb") as f:
            f.truncate(2**40)

    add("size", make=sparse)
    add("size", make=lambda p: os.mkfifo(p))
    add("size", make=lambda p: p.mkdir())
    add("size", make=lambda p: p.symlink_to("/dev/zero"))
    add("size", make=lambda p: p.symlink_to(p.parent / "nowhere.lora.arrow"))

    # Arrow structure: columns, types, batches, compression, stream format, dictionaries
    extra_types = [pa.string(), pa.int64(), pa.binary(), pa.list_(pa.float64()), pa.struct([("a", pa.int8())])]
    for t in extra_types:
        g = pick()
        sch = SCHEMA.append(pa.field("extra", t))
        add("arrow-columns", _arrow(g.rows, g.meta, sch))
        sch = pa.schema([pa.field("extra", t), *SCHEMA])
        add("arrow-columns", _arrow(g.rows, g.meta, sch))
    for drop in SCHEMA.names:
        add("arrow-columns", _arrow(pick().rows, pick().meta, pa.schema([f for f in SCHEMA if f.name != drop])))
    add("arrow-columns", _arrow(pick().rows, pick().meta, pa.schema(list(reversed(SCHEMA)))))
    retyped = {
        "name": [pa.large_string(), pa.binary(), pa.dictionary(pa.int32(), pa.string())],
        "shape": [pa.list_(pa.int32()), pa.large_list(pa.int64()), pa.list_(pa.int64(), 2), pa.list_(pa.uint64())],
        "dtype": [pa.large_string(), pa.dictionary(pa.int8(), pa.string())],
        "data": [pa.large_binary(), pa.binary_view()],
    }
    for col, types in retyped.items():
        for t in types:
            g = pick()
            sch = pa.schema([pa.field(f.name, t) if f.name == col else f for f in SCHEMA])
            add("arrow-types", _arrow(g.rows, g.meta, sch))
    for _ in range(12):
        g = pick()
        add("arrow-batches", _arrow(g.rows, g.meta, batches=rng.randrange(2, len(g.rows) + 3)))
    for g in good.values():
        add("arrow-batches", _arrow(g.rows, g.meta, extra_batches=[g.rows[:1]]))  # a row twice
        add("arrow-batches", _arrow(g.rows, g.meta, extra_batches=[[]] * 50))  # many empty batches
        add("arrow-batches", _arrow([], g.meta))  # schema, one empty batch, no tensors
        junk = {"name": "model.layers.1.self_attn.q_proj.lora_X", "shape": [1, 1], "dtype": "float32",
                "data": b"\0\0\0\0"}
        add("arrow-batches", _arrow(g.rows, g.meta, extra_batches=[[junk]]))
    for codec in ("lz4", "zstd"):
        for g in good.values():
            honest = _arrow(g.rows, g.meta, compression=codec)
            add("arrow-compressed", honest)
            # every int64 that looks like a buffer's uncompressed length, rewritten to claim 3 GB
            for m in list(re.finditer(re.escape(struct.pack("<q", R * 64 * (4 if g.dtype == "float32" else 2))),
                                      honest))[:2]:
                lying = bytearray(honest)
                lying[m.start():m.start() + 8] = struct.pack("<q", 3 * 2**30)
                add("arrow-compressed", bytes(lying))
    for g in good.values():
        add("arrow-format", _arrow(g.rows, g.meta, stream=True))
        add("arrow-format", g.data[:8] + _arrow(g.rows, g.meta, stream=True))  # magic, then a stream
        add("arrow-format", b"PAR1" + g.data[8:])
    add("arrow-format", _arrow([], None, pa.schema([("x", pa.int64())])))
    add("arrow-format", b'{"skill": "x"}\n')
    add("arrow-format", os.urandom(0) + random.Random(SEED).randbytes(4096))

    # combinations: several families on one card
    while len(cases) < 720:
        base = rng.choice(cases)
        if base.data is None or base.other_base:
            continue
        add("combo", _flip(rng, base.data, 0, max(1, len(base.data)), rng.choice([1, 3, 8])))
    return cases


# -- the run ---------------------------------------------------------------------------------------
def _base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.replace(".base_layer.", "."): v.clone() for k, v in model.state_dict().items() if "lora_" not in k}


def _adapters(model: torch.nn.Module) -> dict[str, list[str]]:
    return {n: layer.adapters for n, layer in lora_layers(model).items()}


def test_every_mutation_is_refused_with_our_error_or_loads_harmlessly(tmp_path: Path) -> None:
    bundle = load_tiny(seed=0)
    other = load_tiny(seed=1)
    good = _good_cards(bundle)
    cases = build_cases(good)
    assert len(cases) >= 500, len(cases)
    families = Counter(c.family for c in cases)
    before = {id(bundle): _base_state(bundle.model), id(other): _base_state(other.model)}

    outcomes: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []
    slowest = (0.0, "")
    # Loading allocates from a pool nothing else in this process has used (building the cases did not),
    # so its peak is the largest Arrow allocation any mutated card caused.
    default_pool = pa.default_memory_pool()
    pool = pa.system_memory_pool()
    assert pool.max_memory() == 0 and pool.backend_name != default_pool.backend_name
    pa.set_memory_pool(pool)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    faulthandler.dump_traceback_later(120, exit=True)  # a hang kills the run with every thread's stack
    try:
        for case in cases:
            path = tmp_path / f"{case.id}.lora.arrow"
            if case.make:
                case.make(path)
            else:
                path.write_bytes(case.data)
            target = other if case.other_base else bundle
            adapters = _adapters(target.model)
            t0 = time.perf_counter()
            try:
                card = load_card(path, target.model, target.fingerprint)
            except CardError as e:
                outcome = "refused"
                msg = str(e)
                if str(path) not in msg or e.path != str(path) or not e.problem or len(msg) > len(str(path)) + 600:
                    failures.append(f"{case.id}: message does not name the file and a short problem: {msg[:300]!r}")
                if _adapters(target.model) != adapters:
                    failures.append(f"{case.id}: refused, but the model's adapters changed")
            except BaseException as e:  # noqa: BLE001 - anything else is the bug this test hunts
                outcome = "crashed"
                failures.append(f"{case.id}: {type(e).__name__}: {str(e)[:200]}")
            else:
                outcome = "loaded"
                try:  # harmless: the adapter runs, and unloading it restores the model
                    set_adapter(target.model, card.skill)
                    with torch.no_grad():
                        target.model(input_ids=IDS)
                    set_adapter(target.model, None)
                    delete_adapter(target.model, card.skill)
                except Exception as e:  # noqa: BLE001
                    failures.append(f"{case.id}: loaded, then {type(e).__name__}: {e}")
            elapsed = time.perf_counter() - t0
            slowest = max(slowest, (elapsed, case.id))
            outcomes[(case.family, outcome)] += 1
            if case.make is None or path.is_file():
                path.unlink(missing_ok=True)
            elif path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
    finally:
        faulthandler.cancel_dump_traceback_later()
        pa.set_memory_pool(default_pool)
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    table = {f: {o: outcomes[(f, o)] for o in ("refused", "loaded", "crashed") if outcomes[(f, o)]}
             for f in families}
    print(f"\n{len(cases)} mutations: {dict(Counter(o for (_, o) in outcomes.elements()))}; slowest "
          f"{slowest[0] * 1000:.0f} ms ({slowest[1]}); Arrow peak {pool.max_memory() / 2**20:.1f} MiB; "
          f"peak RSS +{rss_growth_mb:.0f} MiB")
    for f, t in table.items():
        print(f"  {f:18s} {t}")

    assert not failures, f"{len(failures)} of {len(cases)} mutations misbehaved:\n" + "\n".join(failures[:40])
    # Nothing sized by a file's claims: cards are at most 10 MB and read zero-copy, so Arrow allocates
    # little (validity bitmaps, a concatenation); a lying compressed buffer alone would ask for 3 GiB.
    assert pool.max_memory() < 16 * 2**20, pool.max_memory()
    assert rss_growth_mb < 300, rss_growth_mb
    assert slowest[0] < 5.0, slowest
    # The fuzzer reaches both outcomes, and the base weights are bit-identical after it all.
    assert outcomes[("other-base", "refused")] == families["other-base"]
    assert sum(n for (_, o), n in outcomes.items() if o == "loaded") >= 10
    assert sum(n for (_, o), n in outcomes.items() if o == "refused") >= 400
    for b in (bundle, other):
        after = _base_state(b.model)
        assert all(torch.equal(after[k], before[id(b)][k]) for k in before[id(b)])
    assert weights_fingerprint(bundle.model) == bundle.fingerprint


# -- no pickle on the load path --------------------------------------------------------------------
SRC = Path(__file__).resolve().parents[1] / "src" / "autodidact"
UNSAFE = re.compile(
    r"\b(c?pickle|cloudpickle|dill|joblib|shelve|marshal)\b|read_pickle|torch \. load\b|\b(np|numpy) \. load\b"
    r"|allow_pickle = True|weights_only = False"
)


def _code_lines(text: str) -> dict[int, str]:
    """Each line's code tokens joined by spaces: comments and string literals (docstrings) left out."""
    lines: dict[int, list[str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.NAME, tokenize.OP, tokenize.NUMBER):
            lines.setdefault(tok.start[0], []).append(tok.string)
    return {n: " ".join(t) for n, t in lines.items()}


def test_no_pickle_anywhere_in_the_package() -> None:
    """A card, a queue row or a transcript is data: no code in src/ can unpickle, or call what does."""
    files = sorted(SRC.rglob("*.py"))
    hits = [
        f"{path.relative_to(SRC.parent)}:{n}: {code}"
        for path in files
        for n, code in _code_lines(path.read_text(encoding="utf-8")).items()
        if UNSAFE.search(code)
    ]
    assert not hits, "unsafe deserialisation in src/:\n" + "\n".join(hits)
    assert len(files) > 20 and any(p.name == "card.py" for p in files)  # the walk really saw the package


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import pickle\n", True),
        ("from joblib import load\n", True),
        ("state = torch.load(f)\n", True),
        ("a = np.load(p, allow_pickle=True)\n", True),
        ("sd = torch.load(p, weights_only = False)\n", True),
        ("df = pd.read_pickle(p)\n", True),
        ('"""No pickle anywhere: a card is data."""\n', False),
        ("pickled = False  # never pickle\n", False),
        ("card = load_card(path)\n", False),
    ],
)
def test_the_grep_catches_pickle_in_code_not_in_prose(source: str, caught: bool) -> None:
    assert any(UNSAFE.search(c) for c in _code_lines(source).values()) is caught
