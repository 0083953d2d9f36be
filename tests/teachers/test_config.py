"""The Hydra ``teacher`` group: every choice composes, carries the same keys, and builds its chain."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from autodidact.errors import ConfigError
from autodidact.teachers import TeacherConfig, build_teacher, public_config, public_run_config

CONF = Path(__file__).resolve().parents[2] / "conf"
KEY = "sk-canary-config-1234567890"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("choice", ["auto", "openai", "anthropic", "failover", "offline", "replay"])
def test_every_teacher_choice_has_the_endpoint_keys(choice):
    cfg = _compose(f"teacher={choice}", "teacher.openai.base_url=http://127.0.0.1:9/v1")
    assert cfg.teacher.kind == choice
    assert cfg.teacher.openai.base_url == "http://127.0.0.1:9/v1"
    for name in ("openai", "anthropic"):
        assert {"api_key", "base_url", "model", "timeout", "max_tokens"} <= set(cfg.teacher[name])
    assert cfg.teacher.distill.n_pairs == 24


def test_default_teacher_is_auto_with_public_endpoints():
    cfg = _compose()
    assert cfg.teacher.kind == "auto"
    assert cfg.teacher.openai.base_url == "https://api.openai.com/v1"
    assert cfg.teacher.anthropic.base_url == "https://api.anthropic.com"


# (env keys set, kind, expected description fragment, offline?)
CHAINS = [
    ((), "auto", "offline demo knowledge pack", True),
    (("OPENAI_API_KEY",), "auto", "openai(", False),
    (("ANTHROPIC_API_KEY",), "auto", "anthropic(", False),
    (("OPENAI_API_KEY", "ANTHROPIC_API_KEY"), "auto", "failover chain openai(", False),
    (("ANTHROPIC_API_KEY",), "failover", "anthropic(", False),
    (("OPENAI_API_KEY", "ANTHROPIC_API_KEY"), "offline", "offline demo knowledge pack", True),
]


@pytest.mark.parametrize(("keys", "kind", "described", "offline"), CHAINS)
def test_chain_follows_the_keys_in_the_environment(monkeypatch, caplog, keys, kind, described, offline):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var in keys:
        monkeypatch.setenv(var, KEY)
    with caplog.at_level(logging.INFO, logger="autodidact"):
        chain = build_teacher(_compose(f"teacher={kind}").teacher)
    assert described in chain.describe() and chain.offline is offline
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.getMessage().startswith("teacher: ")]
    if offline and kind == "auto":
        assert "no OPENAI_API_KEY or ANTHROPIC_API_KEY set" in line and "not a cloud model" in line
    assert KEY not in caplog.text and KEY not in repr(chain.providers)


@pytest.mark.parametrize("kind", ["openai", "anthropic", "failover"])
def test_a_cloud_teacher_without_a_key_says_which_to_set(monkeypatch, kind):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="_API_KEY"):
        build_teacher(_compose(f"teacher={kind}").teacher)


def test_public_config_hides_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    public = public_config(_compose().teacher)
    assert public["openai"]["api_key"] == "***" and public["anthropic"]["api_key"] is None
    assert KEY not in repr(public)
    run = public_run_config(_compose("teacher=failover", "logger=none"))  # no ${hydra:} outside a run
    assert run["teacher"]["openai"]["api_key"] == "***" and run["stage"] == "loop"
    assert KEY not in repr(run)


@pytest.mark.parametrize(
    ("teacher", "match"),
    [
        ({"kind": "cloud"}, "teacher.kind must be one of"),
        ({"kind": "auto", "chain": ["openai", "gemini"]}, "teacher.chain"),
        ({"kind": "auto", "bogus": 1}, "teacher.bogus is not a setting"),
        ({"kind": "auto", "openai": {"modle": "x"}}, "teacher.openai.modle is not a setting"),
        ({"kind": "auto", "openai": {"timeout": "soon"}}, "teacher.openai.timeout='soon' should be float"),
        ({"kind": "auto", "policy": {"max_attempts": "abc"}}, "teacher.policy.max_attempts='abc' should be int"),
        ({"kind": "auto", "policy": {"max_attempts": 0}}, "max_attempts"),
        ({"kind": "auto", "distill": {"n_pairs": 0}}, "n_pairs"),
    ],
)
def test_bad_teacher_config_is_one_clear_error(teacher, match):
    with pytest.raises(ConfigError, match=match):
        TeacherConfig.from_cfg(teacher)
