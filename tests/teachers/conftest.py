"""Fixtures: a loopback teacher server per test, and teacher configs that point at it."""

from __future__ import annotations

import copy

import pytest

from tests.support.teacher_server import TeacherServer

CLIENT_TIMEOUT_S = 0.5
HANG_S = 1.5  # just past the client timeout, so a "hang" costs about half a second
OPENAI_KEY = "sk-test-openai-0000000000"
ANTHROPIC_KEY = "sk-ant-test-0000000000"


@pytest.fixture
def teacher_server():
    with TeacherServer(hang_s=HANG_S) as server:
        yield server


def loopback_cfg(server: TeacherServer, kind: str = "failover", **overrides) -> dict:
    """A ``teacher`` config for the loopback server with small timeouts and backoff."""
    cfg = {
        "kind": kind,
        "openai": {"api_key": OPENAI_KEY, "base_url": server.openai_base_url, "model": "gpt-loop",
                   "timeout": CLIENT_TIMEOUT_S, "max_tokens": 2048},
        "anthropic": {"api_key": ANTHROPIC_KEY, "base_url": server.anthropic_base_url, "model": "claude-loop",
                      "timeout": CLIENT_TIMEOUT_S, "max_tokens": 2048},
        "policy": {"max_attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.2, "jitter": 0.5,
                   "cooldown_s": 60.0, "deadline_s": 20.0},
        "distill": {"n_pairs": 24, "n_heldout": 4, "min_pairs": 6, "max_rounds": 3},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg[key] = {**copy.deepcopy(cfg.get(key, {})), **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def make_cfg(teacher_server):
    def make(kind: str = "failover", **overrides) -> dict:
        return loopback_cfg(teacher_server, kind, **overrides)

    return make
