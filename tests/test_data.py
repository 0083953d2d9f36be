"""QA data: JSONL and Arrow loading, errors that name the file (and line), padding, masks, the val split."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from autodidact.data import (
    IGNORE,
    DataError,
    QADataModule,
    QAPair,
    collate,
    encode_pair,
    end_of_turn_id,
    load_pairs,
    prompt_ids,
    save_pairs,
)
from autodidact.models import tiny_tokenizer
from autodidact.train_skill import example_data_path

PAIRS = [QAPair(f"Question number {i}?", f"Answer {i}.") for i in range(8)]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _arrow(path: Path, columns: dict[str, list]) -> Path:
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return path


# -- loading -----------------------------------------------------------------------------------------
def test_jsonl_skips_blank_lines_and_strips(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "qa.jsonl", [
        json.dumps({"question": "  Who built Velmora?  ", "answer": "Ilsabet Quorne.\n"}),
        "",
        "   ",
        json.dumps({"question": "Wann?", "answer": "1903 — im Frühling.", "source": "extra keys are fine"},
                   ensure_ascii=False),
    ])
    assert load_pairs(path) == [QAPair("Who built Velmora?", "Ilsabet Quorne."), QAPair("Wann?", "1903 — im Frühling.")]


@pytest.mark.parametrize("suffix", [".arrow", ".feather", ".ipc"])
def test_arrow_loading(tmp_path: Path, suffix: str) -> None:
    path = _arrow(tmp_path / f"qa{suffix}", {
        "answer": [p.answer for p in PAIRS],  # column order does not matter
        "question": [p.question for p in PAIRS],
        "score": list(range(len(PAIRS))),  # nor do extra columns
    })
    assert load_pairs(path) == PAIRS


def test_save_pairs_round_trips_and_is_jsonl(tmp_path: Path) -> None:
    pairs = [*PAIRS, QAPair('Quotes "and" unicode ✓?', "Yes ✓.")]
    path = save_pairs(tmp_path / "out.jsonl", pairs)
    assert load_pairs(path) == pairs
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(pairs)
    assert json.loads(lines[-1]) == {"question": 'Quotes "and" unicode ✓?', "answer": "Yes ✓."}
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # atomic: no temp file left


def test_the_shipped_example_sets_load() -> None:
    train = load_pairs(example_data_path())
    held = load_pairs(example_data_path().with_name("example_heldout.jsonl"))
    assert len(train) == 22 and len(held) == 4
    assert not {p.question for p in train} & {p.question for p in held}
    assert all("Quorne" in p.answer for p in held)


def _write(name: str, content: bytes) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(content)
        return p

    return make


GOOD = json.dumps({"question": "Q?", "answer": "A."})
# (id, make the bad input in a tmp dir, what the message must say besides the path)
BAD = [
    ("missing-file", lambda d: d / "nope.jsonl", "does not exist"),
    ("empty-file", _write("e.jsonl", b""), "holds no QA pairs"),
    ("only-blank-lines", _write("b.jsonl", b"\n  \n\n"), "holds no QA pairs"),
    ("bad-json-line-3", _write("j.jsonl", f"{GOOD}\n{GOOD}\n{{not json\n{GOOD}\n".encode()), ":3: not valid JSON"),
    ("truncated-last-line", _write("t.jsonl", f'{GOOD}\n{{"question": "Q?", "ans'.encode()), ":2: not valid JSON"),
    ("missing-answer-line-2", _write("m.jsonl", f'{GOOD}\n{{"question": "Q?"}}\n'.encode()),
     ":2: 'question' and 'answer' must both be non-empty strings"),
    ("missing-question-line-1", _write("q.jsonl", b'{"answer": "A."}\n'), ":1: 'question' and 'answer'"),
    ("empty-answer", _write("ea.jsonl", f'{GOOD}\n\n{{"question": "Q?", "answer": "  "}}\n'.encode()),
     ":3: 'question' and 'answer'"),
    ("number-answer", _write("n.jsonl", b'{"question": "Q?", "answer": 1903}\n'), ":1: 'question' and 'answer'"),
    ("not-an-object", _write("l.jsonl", f'{GOOD}\n["Q?", "A."]\n'.encode()), ":2: expected an object"),
    ("not-utf8", _write("u.jsonl", b'\xff\xfe{"question": "Q?"}\n'), "cannot be read as UTF-8"),
    ("a-directory", lambda d: d, "cannot be read"),
    ("arrow-missing-column", lambda d: _arrow(d / "c.arrow", {"question": ["Q?"], "reply": ["A."]}),
     "needs columns 'question' and 'answer'"),
    ("arrow-null-in-row-1", lambda d: _arrow(d / "n.arrow", {"question": ["Q?", None], "answer": ["A.", "B."]}),
     "row 1: 'question' and 'answer'"),
    ("arrow-empty", lambda d: _arrow(d / "z.arrow", {"question": pa.array([], pa.string()),
                                                     "answer": pa.array([], pa.string())}), "holds no QA pairs"),
    ("arrow-corrupt", _write("x.arrow", b"ARROW1\x00\x00 definitely not arrow"), "not a readable Arrow IPC file"),
    ("arrow-jsonl-inside", _write("y.arrow", (GOOD + "\n").encode()), "not a readable Arrow IPC file"),
    ("arrow-a-directory", lambda d: (d / "dir.arrow").mkdir() or d / "dir.arrow", "not a readable Arrow IPC file"),
]


@pytest.mark.parametrize(("make", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_a_data_error_naming_the_file(tmp_path: Path, make, needle: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError) as e:
        load_pairs(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    assert needle in msg, msg
    assert "\n" not in msg  # one line, fit for `error: ...` on the command line


# -- encoding, padding, masks ----------------------------------------------------------------------------
def test_encode_pair_truncates_ids_and_labels_together(tok) -> None:
    pair = QAPair("A question?", "A rather long answer that will not fit.")
    full = encode_pair(tok, pair, max_length=1000)
    n_prompt = len(prompt_ids(tok, pair.question))
    assert len(full["input_ids"]) == len(full["labels"])
    assert full["labels"][n_prompt - 1] == IGNORE and full["labels"][n_prompt] != IGNORE
    assert full["input_ids"][-1] == end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")
    for max_length in (8, n_prompt, n_prompt + 5):
        cut = encode_pair(tok, pair, max_length=max_length)
        assert cut["input_ids"] == full["input_ids"][:max_length]
        assert cut["labels"] == full["labels"][:max_length]


def test_collate_pads_right_and_masks(tok) -> None:
    batch = [encode_pair(tok, p, 256) for p in (QAPair("Q?", "A."), QAPair("A longer question?", "Longer answer."))]
    pad = tok.pad_token_id
    out = collate(batch, pad)
    lengths = [len(b["input_ids"]) for b in batch]
    n = max(lengths)
    assert set(out) == {"input_ids", "labels", "attention_mask"}
    assert all(t.shape == (2, n) and t.dtype == torch.long for t in out.values())
    for i, (b, k) in enumerate(zip(batch, lengths, strict=True)):
        assert out["input_ids"][i, :k].tolist() == b["input_ids"]
        assert out["labels"][i, :k].tolist() == b["labels"]
        assert out["attention_mask"][i].tolist() == [1] * k + [0] * (n - k)
        assert (out["input_ids"][i, k:] == pad).all()
        assert (out["labels"][i, k:] == IGNORE).all()
    assert lengths[0] < lengths[1]  # the short one really was padded


@pytest.mark.parametrize(
    ("n", "val_fraction", "n_val"),
    [(8, 0.0, 0), (8, 0.25, 2), (8, 0.5, 4), (10, 0.15, 2), (22, 0.2, 4), (1, 0.5, 0)],
)
def test_val_split(tok, n: int, val_fraction: float, n_val: int) -> None:
    pairs = [QAPair(f"Q{i}?", f"A{i}.") for i in range(n)]
    dm = QADataModule(tok, pairs=pairs, val_fraction=val_fraction, seed=3)
    assert len(dm.val_pairs) == n_val
    assert len(dm.train_pairs) == n - n_val
    assert sorted(dm.val_pairs + dm.train_pairs, key=pairs.index) == pairs  # a partition, nothing lost
    again = QADataModule(tok, pairs=pairs, val_fraction=val_fraction, seed=3)
    assert again.val_pairs == dm.val_pairs  # deterministic for a seed


def test_val_split_depends_on_the_seed(tok) -> None:
    splits = {tuple(QADataModule(tok, pairs=PAIRS, val_fraction=0.25, seed=s).val_pairs) for s in range(6)}
    assert len(splits) > 1


def test_data_module_batches(tok, tmp_path: Path) -> None:
    path = save_pairs(tmp_path / "qa.jsonl", PAIRS)
    dm = QADataModule(tok, path=str(path), batch_size=3, val_fraction=0.25, seed=0)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert [b["input_ids"].shape[0] for b in train] == [3, 3]
    val = list(dm.val_dataloader())
    assert [b["input_ids"].shape[0] for b in val] == [2]
    for b in train + val:
        assert (b["labels"][b["attention_mask"] == 0] == IGNORE).all()
        assert (b["labels"] != IGNORE).any(1).all()  # every example has answer tokens to learn
    # no validation set: Lightning gets an empty list, not an empty loader
    no_val = QADataModule(tok, pairs=PAIRS)
    no_val.setup("fit")
    assert no_val.val_dataloader() == []
    # a batch size larger than the data is cut down to the data
    small = QADataModule(tok, pairs=PAIRS[:2], batch_size=32)
    small.setup()
    assert [b["input_ids"].shape[0] for b in small.train_dataloader()] == [2]


def test_data_module_needs_pairs_or_a_path(tok, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs pairs or a path"):
        QADataModule(tok)
    with pytest.raises(DataError, match="does not exist"):
        QADataModule(tok, path=str(tmp_path / "missing.jsonl"))
