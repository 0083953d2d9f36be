"""Hydra launchers: ``hydra/launcher=joblib`` runs a multirun's jobs in parallel local processes
(the hydra-joblib-launcher plugin, a dependency); ``hydra/launcher=slurm`` is the submitit config,
an optional extra that is not installed here, so only its file is checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from autodidact.card import read_card
from autodidact.data import QAPair, save_pairs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def test_the_joblib_launcher_is_installed_and_selected() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("joblib_launcher.JoblibLauncher")


def test_the_slurm_config_extends_the_submitit_plugins() -> None:
    data = yaml.safe_load((CONF / "hydra" / "launcher" / "slurm.yaml").read_text())
    assert data["defaults"] == ["submitit_slurm"]  # the plugin's schema: every field it has is settable
    assert data["tasks_per_node"] == 1 and data["timeout_min"] > 0
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'slurm = ["hydra-submitit-launcher' in pyproject  # the extra the README tells people to install


@pytest.mark.slow
def test_a_joblib_multirun_trains_each_job_in_its_own_dir(tmp_path: Path) -> None:
    save_pairs(tmp_path / "zor.jsonl", [QAPair(f"Zor fact {i}?", f"Fact {i}.") for i in range(4)])
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         f"hydra.sweep.dir={tmp_path / 'sweep'}", "model=tiny", "model.threads=1", "logger=none",
         "trainer.progress_bar=false", f"data.path={tmp_path / 'zor.jsonl'}", "trainer.max_steps=2",
         "trainer.lr=1e-3,1e-2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stderr + proc.stdout  # the plugin ran them, not the basic launcher
    cards = [read_card(tmp_path / "sweep" / str(i) / "zor.lora.arrow") for i in (0, 1)]
    assert cards[0].meta["train"]["loss_final"] != cards[1].meta["train"]["loss_final"]  # two learning rates
