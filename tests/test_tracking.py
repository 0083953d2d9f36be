"""Tracking: an offline W&B run holds the secret-free config, the sweep group, a card artifact and a
results table; ``logger=csv`` writes metrics and tables as CSV; without a logger the helpers do nothing.

The W&B run is read back from its ``run-*.wandb`` transaction log, i.e. what ``wandb sync`` would upload.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import open_dict

from autodidact.tracking import CARD_ARTIFACT_TYPE, finish, log_card_artifact, log_table
from autodidact.train_skill import build_logger
from tests.support.lora_cards import make_card
from tests.support.wandb_records import offline_run, read_records

CONF = Path(__file__).resolve().parents[1] / "conf"
SECRET = "sk-test-do-not-log-4f9a1c"
ROWS = [
    {"query": "Who kept the Velmora lighthouse?", "learned": True, "confidence_after": 0.98,
     "stage_seconds": {"learn": 40.1}},
    {"query": "hello", "learned": False, "confidence_after": 0.01, "error": "x"},
]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "wb-config",
                 "WANDB_CACHE_DIR": tmp_path / "wb-cache", "WANDB_DATA_DIR": tmp_path / "wb-data",
                 "OPENAI_API_KEY": SECRET}.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def compose_cfg(*overrides: str, hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=["model=tiny", *overrides], return_hydra_config=hydra_cfg)


def records_by_kind(save_dir: Path) -> dict[str, list]:
    # run.finish() returns before wandb-core has written the offline log (measured: ~30 ms later,
    # and sometimes the file still held only its header); teardown waits for the service to exit.
    import wandb

    wandb.teardown()
    out: dict[str, list] = {}
    for r in read_records(next(offline_run(save_dir).glob("run-*.wandb"))):
        out.setdefault(r.WhichOneof("record_type"), []).append(r)
    return out


def test_offline_wandb_run_holds_config_card_artifact_and_table(tmp_path, wandb_env):
    card = make_card(tmp_path / "velmora.lora.arrow", extra={"teacher": {"provider": "offline-demo"}})
    cfg = compose_cfg(f"logger.save_dir={tmp_path}", "router.threshold=0.37", "teacher=openai")
    logger = build_logger(cfg)
    assert isinstance(logger, WandbLogger)
    logger.log_metrics({"query/confidence_after": 0.98})
    artifact = log_card_artifact(logger, card)
    log_table(logger, "results", ROWS)
    finish(logger)
    assert artifact is not None and artifact.type == CARD_ARTIFACT_TYPE

    recs = records_by_kind(tmp_path)
    [run] = recs["run"]
    config = {item.key: json.loads(item.value_json) for item in run.run.config.update}
    assert config["router"]["threshold"] == 0.37  # the sweep parameter is in the run
    assert config["lora"]["r"] == 8 and config["model"]["kind"] == "tiny"
    assert config["teacher"]["openai"]["api_key"] == "***"
    assert "logger" not in config
    raw = next(offline_run(tmp_path).glob("run-*.wandb")).read_bytes()
    assert SECRET.encode() not in raw

    arts = {a.artifact.type: a.artifact for a in recs["artifact"]}
    card_art = arts[CARD_ARTIFACT_TYPE]
    assert card_art.name == "velmora"
    meta = json.loads(card_art.metadata)
    assert meta["skill"] == "velmora" and meta["lora"]["r"] == 4 and meta["teacher"]["provider"] == "offline-demo"
    assert [c.path for c in card_art.manifest.contents] == ["velmora.lora.arrow"]
    assert card_art.manifest.contents[0].size == card.stat().st_size
    assert "run_table" in arts  # the results wandb.Table
    table = {i.nested_key[1]: json.loads(i.value_json) for h in recs["history"] for i in h.history.item
             if list(i.nested_key[:1]) == ["results"]}
    assert table["_type"] == "table-file" and table["nrows"] == 2 and table["ncols"] == 5


def test_multirun_jobs_share_a_group_named_after_the_sweep(tmp_path, wandb_env):
    cfg = compose_cfg(f"logger.save_dir={tmp_path}", "router.threshold=0.3", hydra_cfg=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "multirun" / "2026-01-02" / "10-11-12")
        cfg.hydra.job.num = 1
        cfg.hydra.job.override_dirname = "router.threshold=0.3"
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        logger = build_logger(cfg)
        logger.log_metrics({"x": 1.0})
        finish(logger)
    finally:
        HydraConfig.instance().cfg = None
    [run] = records_by_kind(tmp_path)["run"]
    assert run.run.run_group == "2026-01-02/10-11-12"
    assert run.run.display_name == "1:router.threshold=0.3"


def test_csv_logger_writes_metrics_and_tables(tmp_path):
    cfg = compose_cfg("logger=csv", f"logger.save_dir={tmp_path}")
    logger = build_logger(cfg)
    assert isinstance(logger, CSVLogger)
    logger.log_metrics({"skills/x/train/loss": 1.5}, step=0)
    assert log_card_artifact(logger, make_card(tmp_path / "c.lora.arrow")) is None
    log_table(logger, "results", ROWS)
    finish(logger)
    metrics = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").read_text().splitlines()))
    assert float(metrics[0]["skills/x/train/loss"]) == 1.5
    table = list(csv.DictReader((tmp_path / "csv" / "results.csv").read_text().splitlines()))
    assert [r["query"] for r in table] == [r["query"] for r in ROWS]
    assert json.loads(table[0]["stage_seconds"]) == {"learn": 40.1} and table[1]["error"] == "x"


def test_no_logger_means_no_op(tmp_path):
    assert build_logger(compose_cfg("logger=none")) is None
    assert log_card_artifact(None, tmp_path / "missing.lora.arrow") is None
    log_table(None, "results", ROWS)
    finish(None)


def test_logger_run_starts_off_the_main_thread() -> None:
    """``start_logger`` returns at once and the run (W&B spawning its service) starts in a thread, so
    the model load overlaps it; reading the property on the main thread would serialise the two."""
    import threading

    from autodidact.train_skill import start_logger

    release, started_on = threading.Event(), []

    class SlowLogger:
        @property
        def experiment(self):
            started_on.append(threading.current_thread().name)
            release.wait(10)
            return object()

    thread = start_logger(SlowLogger())
    assert thread is not None and thread.is_alive()  # still starting: start_logger did not wait for it
    release.set()
    thread.join(10)
    assert started_on == ["logger-start"]
    assert start_logger(None) is None and start_logger(object()) is None  # nothing to start
