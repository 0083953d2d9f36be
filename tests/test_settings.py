"""One config path: every section of evolve.py's config checked by one validator, before heavy imports.

The shipped config groups must pass; every kind of mistake (unknown key, wrong type, value out of
range, a mandatory value left out) in any section must be one ``ConfigError`` that lists every
problem by its setting and says where to fix it; and checking must not import torch, so
``python evolve.py <typo>`` fails in about a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from autodidact.config import to_dataclass
from autodidact.errors import ConfigError
from autodidact.settings import CSVLoggerConfig, ModelConfig, WandbLoggerConfig, check_evolve_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("overrides", [
    [], ["model=tiny"], ["model=hf", "model.path=/some/folder"], ["lora=all_linear"], ["trainer=gpu"], ["trainer=default"],
    ["teacher=offline"], ["teacher=replay", "teacher.path=t.jsonl"], ["teacher=failover"], ["logger=csv"],
    ["logger=none"], ["+experiment=threshold_sweep"], ["+experiment=demo_offline"],
], ids=lambda o: " ".join(o) or "defaults")
def test_every_shipped_choice_passes(overrides):
    s = check_evolve_config(_compose(*overrides))
    assert s.run.stage == "loop" and s.router.threshold > 0 and s.model.max_new_tokens >= 1
    if "logger=csv" in overrides:
        assert isinstance(s.logger, CSVLoggerConfig)
    elif "logger=none" in overrides:
        assert s.logger is None
    else:
        assert isinstance(s.logger, WandbLoggerConfig) and s.logger.offline is True


def test_every_problem_of_every_section_in_one_error():
    cfg = _compose("+bogus=1", "learn=abc", "+model.bogus=1", "model.threads=abc", "router.threshold=2",
                   "teacher.openai.timeout=soon", "+teacher.distill.bogus=1", "queue.max_attempts=0",
                   "logger.offline=abc")
    with pytest.raises(ConfigError) as info:
        check_evolve_config(cfg)
    msg = str(info.value)
    expected = ["bogus is not a setting (known: learn", "learn='abc' should be bool",
                "model.bogus is not a setting (known: cache_dir", "model.threads='abc' should be int or null",
                "router.threshold=2.0 must be in (0, 1)", "teacher.openai.timeout='soon' should be float",
                "teacher.distill.bogus is not a setting", "queue.max_attempts=0 must be >= 1",
                "logger.offline='abc' should be bool"]
    for needle in expected:
        assert f"\n  - {needle}" in msg, msg
    assert msg.startswith("invalid config:") and msg.count("\n  - ") == len(expected)
    assert info.value.problems == [line[4:] for line in msg.splitlines()[1:-1]]  # one per "  - " line
    last = msg.splitlines()[-1]  # where to fix them: each section's own file
    for where in ("conf/config.yaml", "conf/model/*.yaml", "conf/router/*.yaml", "conf/teacher/*.yaml",
                  "conf/logger/*.yaml"):
        assert where in last, last


def test_a_mandatory_value_left_out_is_named():
    with pytest.raises(ConfigError, match=r"model.path must be set \(model.path=...\)"):
        check_evolve_config(_compose("model=hf"))


def test_model_section_checks_its_values():
    with pytest.raises(ConfigError) as info:
        to_dataclass(ModelConfig, {"kind": "gpt5", "threads": 0, "max_new_tokens": 0}, "model")
    for needle in ("model.kind='gpt5' must be one of smollm2, tiny, hf", "model.threads=0 must be >= 1",
                   "model.max_new_tokens=0 must be >= 1"):
        assert needle in str(info.value)


def test_csv_logger_keys_are_checked():
    with pytest.raises(ConfigError, match="logger.flush_logs_every_n_steps='often' should be int"):
        check_evolve_config(_compose("logger=csv", "logger.flush_logs_every_n_steps=often"))


def test_train_pys_data_section_passes_through_and_serve_modes_server_section_is_checked():
    check_evolve_config(_compose("++data.anything=1"))  # train.py's; evolve.py reads none of it
    with pytest.raises(ConfigError) as info:
        check_evolve_config(_compose("++server.bogus=1", "server.port=abc"))
    port, bogus = info.value.problems
    assert port == "server.port='abc' should be int" and bogus.startswith("server.bogus is not a setting (known: ")


def test_checking_imports_nothing_heavy():
    code = ("import sys; from autodidact.settings import check_evolve_config; "
            "heavy = [m for m in ('torch', 'transformers', 'lightning', 'openai', 'anthropic') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_evolve_py_reports_a_config_error_before_importing_torch(tmp_path):
    # -X importtime lists every module the run imported: the config error must come before torch.
    env = {**os.environ, "AUTODIDACT_SKILLS_DIR": str(tmp_path / "skills")}
    res = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "evolve.py"), "router.threshold=abc",
                          "+routr.threshold=0.3", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert res.returncode == 1, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: invalid config:"], res.stderr[-3000:]
    assert "router.threshold='abc' should be float" in res.stderr and "routr is not a setting" in res.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "autodidact.settings" in imported
    assert not {"torch", "transformers", "lightning", "openai", "anthropic"} & imported


@pytest.mark.parametrize("overrides", [["trainer=ddp"], ["trainer=fsdp"], ["trainer.devices=2"]],
                         ids=lambda o: " ".join(o))
def test_evolve_refuses_more_than_one_training_process(overrides):
    """Lightning's ddp launcher re-runs the script: in evolve.py that would be the whole loop, twice."""
    with pytest.raises(ConfigError, match=r"evolve.py trains each skill in one process .* with train.py"):
        check_evolve_config(_compose(*overrides))


def test_lora_config_defaults_are_the_shipped_lora_file() -> None:
    """Code that builds a LoRAConfig() directly (benchmarks, library users) gets the shape train.py and
    the loop read from conf/lora/default.yaml: the two are kept in step by hand, so this checks it."""
    import dataclasses

    from omegaconf import OmegaConf

    from autodidact.settings import LoRAConfig

    shipped = OmegaConf.to_container(OmegaConf.load(CONF / "lora" / "default.yaml"))
    assert dataclasses.asdict(LoRAConfig()) == shipped
