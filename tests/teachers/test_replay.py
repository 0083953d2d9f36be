"""A recorded run served back from its transcript: same pairs, byte for byte, with no provider called."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from autodidact.errors import ConfigError
from autodidact.teachers import ReplayMiss, ReplayProvider
from autodidact.teachers.stage import run_distill_stage
from tests.teachers.conftest import loopback_cfg

QUESTION = "Who invented the Quillon loom?"


def _cfg(teacher: dict, query: str = QUESTION):
    return OmegaConf.create({"query": query, "teacher": teacher})


def test_replay_reproduces_pairs_byte_for_byte_offline(teacher_server, tmp_path):
    # The recorded run saw a rate limit, a prose reply, too few pairs and a failover.
    teacher_server.script("openai", "429", "non_json_text", "too_few")
    teacher_server.fail_always("openai", None)
    recorded = tmp_path / "recorded"
    out = run_distill_stage(_cfg(loopback_cfg(teacher_server)), recorded)
    teacher_server.stop()  # nothing left to call
    n_requests = len(teacher_server.requests)

    replayed = tmp_path / "replayed"
    replay_out = run_distill_stage(_cfg({"kind": "replay", "path": out["transcript"]}), replayed)

    for name in ("pairs.jsonl", "verify.json"):
        assert (recorded / name).read_bytes() == (replayed / name).read_bytes(), name
    assert replay_out["n_pairs"] == out["n_pairs"] == 25
    assert len(teacher_server.requests) == n_requests
    records = [json.loads(line) for line in (replayed / "teacher_transcript.jsonl").read_text().splitlines()]
    assert {r["provider"] for r in records} == {"replay"}


def test_replay_of_a_different_question_is_a_clear_miss(teacher_server, tmp_path):
    out = run_distill_stage(_cfg(loopback_cfg(teacher_server)), tmp_path / "rec")
    with pytest.raises(ReplayMiss, match="no \\(more\\) recorded replies"):
        run_distill_stage(_cfg({"kind": "replay", "path": out["transcript"]}, "Who composed the Lantern Symphony?"),
                          tmp_path / "rep")


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "cannot read the transcript"), ("not json\n", "is not a transcript record"), ('{"a": 1}\n', "record")],
)
def test_bad_transcripts_are_config_errors(tmp_path, content, match):
    path = tmp_path / "t.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        ReplayProvider(path)


def test_replay_without_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="teacher.path"):
        run_distill_stage(_cfg({"kind": "replay"}), tmp_path)
