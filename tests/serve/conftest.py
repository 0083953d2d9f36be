"""One served tiny model with the loopback teacher for the serve tests (started once per session)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.serve.server_proc import QUESTION, TINY, ServerProcess, ask, clean_env, sdk
from tests.support.teacher_server import TeacherServer

KEY = "sk-test-serve-loopback-0123456789"


@pytest.fixture(scope="session")
def manager(tmp_path_factory, encoder):
    """The tiny model with three skills of random adapter weights (each changes the logits)."""
    from autodidact.card import SUFFIX
    from autodidact.inference.lora_router import LoRARouter, RouterConfig
    from autodidact.lora_manager import LoRAManager
    from autodidact.models import load_tiny
    from tests.test_lora_manager import make_card

    skills = tmp_path_factory.mktemp("skills")
    for i, name in enumerate(("brindlemark", "velmorite", "quillon")):
        make_card(skills / f"{name}{SUFFIX}", name, encoder, seed=i + 1)
    m = LoRAManager(load_tiny(seed=0), skills, LoRARouter(RouterConfig(), encoder))
    m.scan()
    return m


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


@pytest.fixture(scope="session")
def learned(server):
    """Ask the hard question, keep two other clients asking while the learner works, wait for done.

    Whichever test asks first runs this on the fresh server; every later one sees the learned skill."""
    client = sdk(server)
    t0 = time.monotonic()
    first = ask(client, QUESTION)
    first_s = time.monotonic() - t0
    job_id = first.autodidact["learning"]["job"]

    stop = threading.Event()
    states: list[tuple[float, str]] = []
    records: list[tuple[float, float, str, bool]] = []  # start, end, kind, ok

    def poll_job() -> None:
        while not stop.is_set():
            state = server.client.get(f"/v1/jobs/{job_id}").json()["state"]
            states.append((time.monotonic(), state))
            if state in ("done", "dead"):
                stop.set()
            time.sleep(0.05)

    def other_client(streaming: bool) -> None:
        c = sdk(server)
        # The same topic (deduplicated into the same job), so the other client adds no learning work.
        messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
        while not stop.is_set():
            t = time.monotonic()
            try:
                if streaming:
                    list(c.chat.completions.create(model="m", messages=messages, stream=True, max_tokens=16))
                else:
                    c.chat.completions.create(model="m", messages=messages, max_tokens=16)
                ok = True
            except Exception:  # noqa: BLE001 - counted: the test fails on any
                ok = False
            records.append((t, time.monotonic(), "stream" if streaming else "plain", ok))
            stop.wait(0.2)  # a person's pace, not a flood: the learner shares these two cores

    threads = [threading.Thread(target=poll_job), threading.Thread(target=other_client, args=(False,)),
               threading.Thread(target=other_client, args=(True,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=400)
    stop.set()
    job = server.client.get(f"/v1/jobs/{job_id}").json()
    return {"first": first, "first_s": first_s, "job": job, "states": states, "records": records}
