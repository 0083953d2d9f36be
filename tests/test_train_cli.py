"""``python train.py`` end to end in a subprocess: the printed summary, the card it writes, clean errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from autodidact.card import load_card
from autodidact.data import load_pairs, save_pairs
from autodidact.models import load_tiny
from autodidact.train_skill import example_data_path

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 30


def run_train(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "train.py", "model=tiny", "model.threads=1", "logger=none", "trainer.progress_bar=false",
         *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    run_dir: Path
    card: Path
    summary: dict[str, str]


SUMMARY = re.compile(r"^(skill|loss|steps|seconds|card)\s{2,}(.+)$", re.M)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    d = tmp_path_factory.mktemp("train_cli")
    data = d / "velmora.jsonl"
    save_pairs(data, load_pairs(example_data_path())[:8])
    run_dir, card = d / "run", d / "x.lora.arrow"
    proc = run_train(f"hydra.run.dir={run_dir}", f"data.path={data}", f"card.path={card}",
                     f"trainer.max_steps={MAX_STEPS}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Run(proc=proc, run_dir=run_dir, card=card, summary=dict(SUMMARY.findall(proc.stdout)))


def test_summary_is_printed(run: Run) -> None:
    s = run.summary
    assert set(s) == {"skill", "loss", "steps", "seconds", "card"}, run.proc.stdout[-2000:]
    assert s["skill"] == "velmora"  # the data file's stem
    loss = re.fullmatch(r"(\d+\.\d{4}) -> (\d+\.\d{4})", s["loss"])
    assert loss, s["loss"]
    before, after = map(float, loss.groups())
    assert after < before  # 30 steps at the default lr move a random tiny model a little
    steps = re.match(r"(\d+) \((\d+) epochs\), learned=(True|False) \(exact match (\d\.\d\d)\)", s["steps"])
    assert steps, s["steps"]
    assert 1 <= int(steps.group(1)) <= MAX_STEPS
    assert float(s["seconds"]) > 0
    card = re.fullmatch(r"(.+) \((\d+) KiB\)", s["card"])
    assert card, s["card"]
    assert card.group(1) == str(run.card)
    assert int(card.group(2)) == round(run.card.stat().st_size / 1024)
    assert "Traceback" not in run.proc.stderr


def test_the_card_loads_into_a_fresh_tiny_model_and_matches_the_summary(run: Run) -> None:
    bundle = load_tiny(seed=0)
    card = load_card(run.card, bundle.model, bundle.fingerprint)
    assert card.skill == "velmora"
    assert card.meta["base_model"]["fingerprint"] == bundle.fingerprint
    shipped = OmegaConf.load(ROOT / "conf" / "lora" / "default.yaml")
    assert card.meta["lora"]["target_modules"] == list(shipped.target_modules)
    train = card.meta["train"]
    assert f"{train['loss_initial']:.4f} -> {train['loss_final']:.4f}" == run.summary["loss"]
    assert run.summary["steps"].startswith(f"{train['steps']} ")
    assert any(t.abs().max() > 0 for n, t in card.tensors.items() if n.endswith("lora_B"))  # it trained
    assert all(t.dtype == torch.float16 for t in card.tensors.values())  # card.dtype default


def test_hydra_records_the_run_config(run: Run) -> None:
    cfg = (run.run_dir / ".hydra" / "config.yaml").read_text()
    assert f"max_steps: {MAX_STEPS}" in cfg
    assert str(run.card) in cfg


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["data.path={tmp}/missing.jsonl"], ["error: QA file {tmp}/missing.jsonl does not exist"]),
        (["trainer.lr=-1", "trainer.batch_size=0"],
         ["error: invalid trainer config", "trainer.lr must be > 0", "trainer.batch_size must be >= 1"]),
        (["+bogus=1", "card.dtype=int8", "model.threads=abc", "data.val_fraction=1.5"],
         ["error: invalid config", "bogus is not a setting (known: card", "card.dtype='int8' must be one of",
          "model.threads='abc' should be int or null", "data.val_fraction=1.5 must be in [0, 1)",
          "or in conf/train.yaml, conf/model/*.yaml, conf/data/*.yaml"]),
    ],
    ids=["missing-data", "bad-trainer-lists-every-problem", "every-section-before-loading"],
)
def test_errors_exit_nonzero_with_a_clear_message(tmp_path: Path, overrides: list[str], needles: list[str]) -> None:
    proc = run_train(f"hydra.run.dir={tmp_path / 'run'}", *(o.format(tmp=tmp_path) for o in overrides))
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle.format(tmp=tmp_path) in proc.stderr, proc.stderr
    if overrides[0].startswith("data.path"):
        assert proc.stderr.strip() == errors[0]  # nothing but the one line
    assert not list(tmp_path.glob("**/*.lora.arrow"))
