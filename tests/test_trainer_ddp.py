"""``trainer=ddp trainer.devices=2`` on CPU (gloo): two processes train the card one process trains.

Lightning launches the second process itself (it re-runs ``train.py`` with Hydra's run dir); nothing
here or in ``src/`` distributes anything. The comparison is exact in what it feeds the two runs:

* full batches: 8 pairs, one batch of 8 in one process vs 4 + 4 in two, so every step sees every
  example in both runs, whatever order the distributed sampler deals them in;
* every answer is the same number of tokens, so the mean of the two processes' per-token mean losses
  (what DDP's gradient averaging computes) *is* the one process's per-token mean;
* the same seed (adapter init), the fixed step budget (the tiny model at hidden 64 cannot reproduce
  the answers, so the learned-stop never fires, but its cross-process check runs every step), float32
  cards.

What remains is float32 rounding: two half-batch sums added in another order, each process padded to
its own longest example, then Adam's division by sqrt(v) over 12 steps. Measured on this machine: the
largest difference is 1.5e-5 of a tensor's largest value, final losses equal to 1e-6. The test allows
1e-4 relative, an order of magnitude above that, and a different step count or batch fails it by far
(measured: a batch of 4 in one process ends 1.16 of the largest value away).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autodidact.card import read_card
from autodidact.data import QAPair, save_pairs
from autodidact.models import load_tiny

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["Blue", "Gold", "Grey", "Pink", "Teal", "Jade", "Ruby", "Rose"]
PAIRS = [QAPair(f"Which colour is Zor flag {i}?", f"{w}.") for i, w in enumerate(WORDS)]
REL_TOL = 1e-4


def train(tmp: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "train.py", "model=tiny", "model.threads=1", "logger=none", "trainer.progress_bar=false",
         f"data.path={tmp / 'zor.jsonl'}", "card.dtype=float32", "trainer.max_steps=12",
         f"hydra.run.dir={tmp / name}", f"card.path={tmp / name}.lora.arrow", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_two_cpu_processes_train_the_single_process_card(tmp_path: Path) -> None:
    tok = load_tiny().tokenizer
    lengths = {len(tok(p.answer, add_special_tokens=False)["input_ids"]) for p in PAIRS}
    assert len(lengths) == 1, "the comparison needs answers of equal token length (see the docstring)"
    save_pairs(tmp_path / "zor.jsonl", PAIRS)

    one = train(tmp_path, "one", "trainer=cpu", "trainer.batch_size=8")
    assert one.returncode == 0, one.stderr[-3000:]
    two = train(tmp_path, "two", "trainer=ddp", "trainer.devices=2", "trainer.batch_size=4")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("skill       zor") == 1  # only the first process writes the card and summary

    a, b = read_card(tmp_path / "one.lora.arrow"), read_card(tmp_path / "two.lora.arrow")
    assert a.meta["train"]["steps"] == b.meta["train"]["steps"] == 12
    assert sorted(a.tensors) == sorted(b.tensors)
    for name, x in a.tensors.items():
        x, y = x.float(), b.tensors[name].float()
        rel = ((x - y).abs().max() / x.abs().max()).item()
        assert rel < REL_TOL, f"{name}: differs by {rel:.2e} of its largest value"
    assert b.meta["train"]["loss_final"] == pytest.approx(a.meta["train"]["loss_final"], rel=1e-5)
    assert b.meta["train"]["loss_final"] < a.meta["train"]["loss_initial"]  # it did train
