"""``evolve.py stage=distill`` end to end: offline on a fresh machine, and failover over the loopback server.

A canary key is set in the environment; it must reach the server (it is really used) and appear in no
file the run writes and no line it prints or logs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autodidact.errors import ConfigError
from autodidact.teachers.stage import run_distill_stage
from tests.teachers.conftest import loopback_cfg

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "Who was Brindlemark's first mayor, and when?"
CANARY = "sk-canary-1234567890abcdef"
CANARY_ANT = "sk-ant-canary-abcdef1234567890"


def _env(**keys: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    env.update(keys, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return env


def _evolve(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "evolve.py"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _all_text(run_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())


def test_distill_offline_on_a_fresh_machine(tmp_path):
    run_dir = tmp_path / "run"
    env = _env(HOME=str(tmp_path / "home"))
    proc = _evolve(["stage=distill", f"query={QUESTION}", "teacher=offline", f"hydra.run.dir={run_dir}"],
                   env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pairs = [json.loads(line) for line in (run_dir / "pairs.jsonl").read_text().splitlines()]
    assert pairs[0] == {"question": QUESTION, "answer": "Odalys Fenwright, elected in 1847."}
    assert len(pairs) == 24  # the reference + 23: one near-duplicate dropped by meaning
    assert str(run_dir / "pairs.jsonl") in proc.stdout and "teacher_transcript.jsonl" in proc.stdout
    assert "fictional demo data, not from a cloud model" in proc.stdout
    assert json.loads((run_dir / "verify.json").read_text())["reference"]["question"] == QUESTION


def test_default_teacher_without_keys_is_offline_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    proc = _evolve(["stage=distill", "query=What is the capital of Vashmere?", f"hydra.run.dir={run_dir}"],
                   _env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = (run_dir / "evolve.log").read_text()
    assert "no OPENAI_API_KEY or ANTHROPIC_API_KEY set" in log and "not a cloud model" in log


def test_distill_failover_over_loopback_with_openai_503_leaks_no_key(teacher_server, tmp_path):
    teacher_server.fail_always("openai", "503")
    run_dir = tmp_path / "run"
    args = [
        "stage=distill", f"query={QUESTION}", "teacher=failover", f"hydra.run.dir={run_dir}",
        f"teacher.openai.base_url={teacher_server.openai_base_url}",
        f"teacher.anthropic.base_url={teacher_server.anthropic_base_url}",
        "teacher.policy.backoff_base_s=0.01", "teacher.policy.backoff_max_s=0.05",
    ]
    proc = _evolve(args, _env(OPENAI_API_KEY=CANARY, ANTHROPIC_API_KEY=CANARY_ANT), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    by = {r.provider: r for r in teacher_server.requests}
    assert by["openai"].headers["authorization"] == f"Bearer {CANARY}"  # the key was really used
    ant = by["anthropic"].headers  # this SDK version sends a bearer token; older ones x-api-key
    assert CANARY_ANT in (ant.get("x-api-key"), ant.get("authorization", "").removeprefix("Bearer "))
    assert teacher_server.count("openai") == 3 and teacher_server.count("anthropic") == 1
    assert "distilled 24 training pairs from anthropic" in proc.stdout
    everything = _all_text(run_dir) + proc.stdout + proc.stderr
    assert "HTTP 503" in everything  # the failed exchanges are in the transcript and the log
    assert CANARY not in everything and CANARY_ANT not in everything

    # ... and the same run again, offline from its transcript: the same pairs, no request made.
    teacher_server.stop()
    replay_dir = tmp_path / "replay"
    proc = _evolve(["stage=distill", f"query={QUESTION}", "teacher=replay",
                    f"teacher.path={run_dir / 'teacher_transcript.jsonl'}", f"hydra.run.dir={replay_dir}"],
                   _env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (replay_dir / "pairs.jsonl").read_bytes() == (run_dir / "pairs.jsonl").read_bytes()


def test_in_process_distill_logs_and_files_hold_no_key(teacher_server, tmp_path, caplog, capsys):
    teacher_server.script("openai", "401")
    teacher_server.script("anthropic", "non_json_text")
    cfg = loopback_cfg(teacher_server, openai={"api_key": CANARY}, anthropic={"api_key": CANARY_ANT})
    with caplog.at_level(logging.DEBUG):
        run_distill_stage(OmegaConf.create({"query": QUESTION, "teacher": cfg}), tmp_path)
    text = _all_text(tmp_path) + caplog.text + "".join(capsys.readouterr())
    assert "***" in (tmp_path / "distill.json").read_text()
    assert CANARY not in text and CANARY_ANT not in text


def test_distill_without_a_question_says_how(tmp_path):
    with pytest.raises(ConfigError, match='query="..."'):
        run_distill_stage(OmegaConf.create({"query": None, "teacher": {"kind": "offline"}}), tmp_path)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["stage=distill", "teacher=offline", "query=Who was the first mayor of London?"], 1,
         "offline demo teacher only knows"),
        (["stage=distill", f"teacher.openai.api_key={CANARY}", "query=x"], 2, "in the environment"),
        (["stage=bogus"], 2, "unknown stage=bogus"),
    ],
    ids=["out-of-pack", "key-on-cli", "unknown-stage"],
)
def test_user_errors_are_one_clear_message(tmp_path, args, code, message):
    proc = _evolve([*args, f"hydra.run.dir={tmp_path / 'run'}"], _env(), cwd=tmp_path)
    assert proc.returncode == code
    assert message in proc.stderr and "Traceback" not in proc.stderr
