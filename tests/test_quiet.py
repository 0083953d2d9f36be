"""Quiet by default: third-party banners and warnings reach the run log, not the terminal.

The banner strings are the ones a first demo run printed before (W&B's banner and run summary,
Lightning's device lines, AMP notice and litlogger tip, deprecation warnings).
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from autodidact import quiet

ROOT = Path(__file__).resolve().parents[1]
BANNERS = ("wandb:", "GPU available", "TPU available", "HPU available", "💡", "Tip:", "litlogger", "tensorboard",
           "LitLogger", "Automatic Mixed Precision", "`Trainer.fit` stopped", "Warning", "deprecated",
           "LOCAL_RANK", "Loading weights")
QUESTION = "Who was Brindlemark's first mayor, and when?"


def banners_in(text: str) -> list[str]:
    return [b for b in BANNERS if b in text]


# -- the routing itself, in process ----------------------------------------------------------------------
@pytest.fixture
def handlers(tmp_path):
    """Root logger with only a console (StringIO) and a file handler, as Hydra's job_logging sets it up."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    console, path = io.StringIO(), tmp_path / "run.log"
    file = logging.FileHandler(path)
    root.handlers = [logging.StreamHandler(console), file]
    root.setLevel(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield console, path
        logging.captureWarnings(False)
    file.close()
    root.handlers, root.level = saved, level


def emit() -> None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")
    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", UserWarning, stacklevel=1)
    logging.getLogger("transformers.modeling_utils").error("a library error still shows")
    logging.getLogger("autodidact.skill_factory").info("learning skill 'x'")


@pytest.mark.parametrize("verbose", [False, True])
def test_library_output_goes_to_the_file_and_only_to_the_console_when_verbose(handlers, verbose):
    console, path = handlers
    quiet.configure(verbose=verbose)
    emit()
    logging.getLogger().handlers[1].flush()
    shown, logged = console.getvalue(), path.read_text()
    for text in ("GPU available", "is deprecated", "a library error still shows", "learning skill 'x'"):
        assert text in logged  # the log file keeps everything
    assert "learning skill 'x'" in shown and "a library error still shows" in shown
    assert ("GPU available" in shown) is verbose
    assert ("is deprecated" in shown) is verbose


def test_records_from_before_logging_is_set_up_are_replayed(handlers):
    console, path = handlers
    root = logging.getLogger()
    real = list(root.handlers)
    root.handlers = []
    quiet.early()  # as at the top of evolve.py: nothing is configured yet
    logging.getLogger("lightning.pytorch").info("TPU available: False")
    root.handlers = real  # Hydra's job_logging replaces the root handlers
    quiet.configure(verbose=False)
    real[1].flush()
    assert "TPU available" in path.read_text() and "TPU available" not in console.getvalue()


# -- the entry points, as a user runs them -----------------------------------------------------------------
def clean_env(tmp_path: Path) -> dict[str, str]:
    """No WANDB_SILENT and no keys: the silence must come from the project, not the environment."""
    drop = ("WANDB_SILENT", "WANDB_QUIET", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "WANDB_API_KEY",
            "AUTODIDACT_SKILLS_DIR", "WANDB_MODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    w = tmp_path / "wandb-home"
    env.update(WANDB_CONFIG_DIR=str(w / "config"), WANDB_CACHE_DIR=str(w / "cache"),
               WANDB_DATA_DIR=str(w / "data"), PYTHONPATH=str(ROOT))
    return env


@pytest.mark.slow
def test_default_evolve_run_prints_no_third_party_banner(tmp_path):
    """A first run with the default logger (W&B, offline) that learns (briefly) on the tiny model."""
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "evolve.py", "model=tiny", "model.threads=1", "teacher=offline", f"query={QUESTION}",
         f"skills_dir={tmp_path / 'skills'}", f"hydra.run.dir={run}", "trainer.max_steps=3",
         "factory.verify_rounds=1"],
        cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[autodidact] dissonance" in proc.stderr  # the project's own progress is still shown
    assert banners_in(proc.stderr) == [], proc.stderr[-3000:]
    log = (run / "evolve.log").read_text()
    assert "GPU available" in log  # routed to the log file, not lost
    assert list((run / "wandb").glob("offline-run-*")), "W&B still logged the run"


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_train_py_is_quiet_unless_verbose(tmp_path, verbose):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "model=tiny", "model.threads=1", "trainer.max_steps=2",
         "trainer.progress_bar=false", f"hydra.run.dir={run}", f"card.path={tmp_path / 'x.lora.arrow'}",
         f"verbose={str(verbose).lower()}"],
        cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skill       velmora_lighthouse" in proc.stdout
    found = banners_in(proc.stderr)
    if verbose:
        assert "GPU available" in found and "wandb:" in found, proc.stderr[-3000:]
    else:
        assert found == [], proc.stderr[-3000:]
    assert "GPU available" in (run / "train.log").read_text()
