"""One served tiny model with the loopback teacher for the serve tests (started once per session)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.serve.server_proc import TINY, ServerProcess, clean_env
from tests.support.teacher_server import TeacherServer

KEY = "sk-test-serve-loopback-0123456789"


@pytest.fixture(scope="session")
def teacher():
    with TeacherServer() as server:
        yield server


@pytest.fixture(scope="session")
def server(tmp_path_factory, teacher):
    """``evolve.py stage=serve`` on the tiny model, learning through the real OpenAI SDK from the loopback
    teacher (teacher=openai pointed at it)."""
    tmp = tmp_path_factory.mktemp("serve")
    env = clean_env(tmp, OPENAI_API_KEY=KEY)
    proc = ServerProcess(tmp, [*TINY, "teacher=openai", f"teacher.openai.base_url={teacher.openai_base_url}",
                               f"skills_dir={tmp / 'skills'}", "server.max_body_bytes=65536"], env=env)
    yield proc
    learner = proc.health()["learner"]["pid"]
    code = proc.stop()
    # Ctrl-C stops the server cleanly (exit 0) and its learner process with it.
    assert code == 0, proc.stderr()[-3000:]
    deadline = time.monotonic() + 15
    while Path(f"/proc/{learner}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{learner}").exists(), f"learner pid {learner} outlived the server"
