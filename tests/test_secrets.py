"""Secrets: with canary API keys in the environment, no file or output of a run ever holds them.

Three ``evolve.py`` runs share one skills dir, each with W&B logging offline into the tmp dir and the
loopback teacher (real ``openai`` / ``anthropic`` SDKs) as the cloud teacher:

1. learns a skill: OpenAI refuses the key (401), so the chain fails over to Anthropic, which teaches;
2. the teacher fails for good (401 and 500): the event is kept with the reasons, in the queue and the record;
3. crashes: interrupted (SIGINT) while waiting for the teacher, so Python prints a traceback.

Then every byte of every file under the tmp dir (run dirs, Hydra's saved configs, transcripts, logs,
results, the skills dir with its cards and queue database, W&B's offline runs, debug logs, staging and
settings) and every run's stdout and stderr are searched for the canaries: none may hold them. The
canaries must have reached the server, so the test cannot pass by never using them.

A second test has the server repeat the key it was sent: in a 401's message (a careless gateway), and
in a 200 reply that is not what was asked for (a proxy's HTML page, a model's prose).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from autodidact.card import SUFFIX
from autodidact.learning_queue import LearningQueue
from autodidact.teachers.offline import load_pack, match_fact
from tests.support.forked_evolve import (
    evolve_env,
    last_json,
    quick_learn_args,
    quick_question,
    shared_runner,
    write_quick_pack,
)
from tests.support.teacher_server import TeacherServer, _anthropic_body, _make_handler, _openai_body

pytestmark = pytest.mark.slow

OPENAI_CANARY = "sk-canary-openai-7f3a9c1e5b2d4f6a8c0e"
ANTHROPIC_CANARY = "sk-ant-canary-2b4d6f8a0c1e3g5i7k9m"
CANARIES = (OPENAI_CANARY, ANTHROPIC_CANARY)


class EchoingServer(TeacherServer):
    """The loopback teacher, except that it repeats the key it was sent, whole: in a 401's error message
    (as careless gateways do), in a 200 HTML error page (a proxy) and in the model's prose reply."""

    def start(self) -> EchoingServer:
        base = _make_handler(self)

        class Handler(base):
            def _respond(self, provider, model, question, fault, structured=False, tool=None):
                key = self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ")
                if fault == "401":
                    message = f"Incorrect API key provided: {key}. You can find your API key in your account."
                    body = ({"type": "error", "error": {"type": "authentication_error", "message": message}}
                            if provider == "anthropic" else
                            {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}})
                    self._send(401, json.dumps(body).encode())
                elif fault == "garbage_body":
                    self._send(200, f"<html><body>502 from the proxy (key {key})</body></html>".encode(), "text/html")
                elif fault == "non_json_text":
                    text = f"I cannot help with that. Your key {key} is not allowed to use this model."
                    envelope = _openai_body(model, text) if provider == "openai" else _anthropic_body(model, text)
                    self._send(200, json.dumps(envelope).encode())
                else:
                    super()._respond(provider, model, question, fault, structured, tool)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self


def files_holding(root: Path, secrets: tuple[str, ...]) -> dict[str, list[str]]:
    """Every file under ``root`` whose bytes hold one of ``secrets`` (UTF-8), and which."""
    found = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            hits = [s for s in secrets if s.encode() in data]
            if hits:
                found[str(p.relative_to(root))] = hits
    return found


def teacher_for(pack_path: Path):
    facts = load_pack(pack_path)

    def teach(question: str):
        fact = match_fact(question, facts)
        return [{"question": question, "answer": fact.answer}, *fact.heldout, *fact.pairs] if fact else None

    return teach


def evolve_args(server: TeacherServer, pack: Path, skills: Path, run_dir: Path, question: str,
                timeout: float = 5.0) -> list[str]:
    return [*quick_learn_args(pack, skills, run_dir), "logger=wandb", "teacher=failover",
            f"teacher.openai.base_url={server.openai_base_url}", f"teacher.anthropic.base_url={server.anthropic_base_url}",
            f"teacher.openai.timeout={timeout}", f"teacher.anthropic.timeout={timeout}",
            "teacher.policy.backoff_base_s=0.01", "teacher.policy.backoff_max_s=0.05", "teacher.distill.n_pairs=8",
            f"query={question}"]


def canary_env(tmp: Path) -> dict[str, str]:
    return evolve_env(tmp, OPENAI_API_KEY=OPENAI_CANARY, ANTHROPIC_API_KEY=ANTHROPIC_CANARY)


def assert_sent_and_not_leaked(tmp: Path, requests, outputs: list[str]) -> None:
    # The canaries were really sent (so they were there to leak) ...
    sent = " ".join(v for r in requests for k, v in r.headers.items() if k in ("authorization", "x-api-key"))
    assert OPENAI_CANARY in sent and ANTHROPIC_CANARY in sent
    # ... and no file under tmp (run dirs, skills dir, W&B dirs, the runs' stdout/stderr files) holds them.
    leaks = files_holding(tmp, CANARIES)
    printed = [s for s in CANARIES for out in outputs if s in out]
    n_files = sum(1 for p in tmp.rglob("*") if p.is_file())
    print(f"\nsearched {n_files} files and {len(outputs)} outputs; {len(requests)} requests carried the canaries")
    assert leaks == {} and printed == [], (leaks, printed)


def test_canary_keys_appear_in_no_file_and_no_output(tmp_path):
    pack = write_quick_pack(tmp_path / "pack.json")
    skills, env, runner = tmp_path / "skills", canary_env(tmp_path), shared_runner()
    outputs: list[str] = []
    with TeacherServer(qa_source=teacher_for(pack), hang_s=120) as server:
        # 1. Learn: OpenAI refuses the key, Anthropic teaches.
        server.fail_always("openai", "401")
        res = runner.run(evolve_args(server, pack, skills, tmp_path / "run1", quick_question("quorvale")), env,
                         tmp_path / "out", timeout=400)
        outputs += [res.stdout, res.stderr]
        assert res.returncode == 0, res.stderr[-4000:]
        rec = last_json(res.stdout)
        assert rec["learned"] is True and rec["job"]["provider"].startswith("anthropic"), rec
        assert Path(rec["card"]).name.endswith(SUFFIX)

        # 2. The teacher fails for good: the event is kept, with the reasons.
        server.fail_always("anthropic", "500")
        res = runner.run(evolve_args(server, pack, skills, tmp_path / "run2", quick_question("ombrith")), env,
                         tmp_path / "out", timeout=400)
        outputs += [res.stdout, res.stderr]
        rec = last_json(res.stdout)
        assert rec["learned"] is False and "distill" in rec["reason"] and "401" in rec["reason"], rec

        # 3. A crash: SIGINT while the teacher hangs, so Python prints a traceback.
        server.fail_always("openai", "hang")
        asked = len(server.requests)
        run = runner.start(evolve_args(server, pack, skills, tmp_path / "run3", quick_question("castrel"), timeout=60),
                           env, tmp_path / "out")
        deadline = time.monotonic() + 300
        while len(server.requests) == asked and runner.poll(run) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(run.pid, signal.SIGINT)
        res = runner.wait(run, timeout=120)
        outputs += [res.stdout, res.stderr]
        assert res.returncode != 0 and "KeyboardInterrupt" in res.stderr, (res.returncode, res.stderr[-3000:])
        requests = server.requests

    # The places the keys must not reach exist.
    with LearningQueue.in_skills_dir(skills) as queue:
        errors = [e for j in queue.list() for e in j.errors]
    assert any("401" in e for e in errors), errors
    for run in ("run1", "run2", "run3"):
        assert (tmp_path / run / ".hydra" / "config.yaml").exists() and (tmp_path / run / "evolve.log").exists()
    for run in ("run1", "run2"):  # run 3 was interrupted before its one exchange ended
        assert "401" in (tmp_path / run / "teacher_transcript.jsonl").read_text()
    # One per run: W&B starts while the model loads, so run 3 had its run before it was interrupted.
    wandb_runs = list(tmp_path.rglob("offline-run-*"))
    assert len(wandb_runs) == 3 and all(list(r.glob("*.wandb")) for r in wandb_runs), wandb_runs
    assert_sent_and_not_leaked(tmp_path, requests, outputs)


@pytest.mark.parametrize("faults", [
    pytest.param(("401", "401"), id="in-a-401-message"),
    # A proxy's HTML page and a model's prose: quoted in BadReply messages, scrubbed where they are built.
    pytest.param(("garbage_body", "non_json_text"), id="in-a-200-reply"),
])
def test_a_provider_that_repeats_the_key_does_not_leak_it(tmp_path, faults):
    pack = write_quick_pack(tmp_path / "pack.json")
    with EchoingServer(qa_source=teacher_for(pack)) as server:
        server.fail_always("openai", faults[0])
        server.fail_always("anthropic", faults[1])
        res = shared_runner().run(evolve_args(server, pack, tmp_path / "skills", tmp_path / "run",
                                              quick_question("quorvale")), canary_env(tmp_path), tmp_path / "out",
                                  timeout=400)
        requests = server.requests
    rec = last_json(res.stdout)
    assert rec["learned"] is False and "distill" in rec["reason"], rec
    assert_sent_and_not_leaked(tmp_path, requests, [res.stdout, res.stderr])
