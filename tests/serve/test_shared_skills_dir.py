"""Two processes, one skills directory: a server and an ``evolve.py`` run asking overlapping questions.

``python evolve.py stage=serve`` (tiny model, the offline teacher on the quick pack, its own learner
process) and a forked ``python evolve.py`` run share one ``skills_dir``. The moment the evolve run has
loaded, the server is asked the question the run asks first, typed differently, plus one of its own;
so the server's learner, the server's routing thread and the evolve run all put and claim on the same
queue at once. Then:

* each topic has exactly one job, done, claimed once across the learner's and the run's logs;
* both sides got answers (the HTTP reply names the job that evolve's record also names or explains);
* no learning event is lost or duplicated: the server lists every job, the ones evolve queued too;
* a manager scanning the folder all the while (test_concurrency's Watcher) never meets a half-written
  card, and neither does the server's own watcher;
* afterwards the server answers every topic, the ones only evolve asked included, from the installed
  skill: it hot-loads cards whichever process wrote them.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from autodidact.card import SUFFIX, read_card
from autodidact.evaluation import answer_is_correct
from autodidact.learning_queue import QUEUE_FILENAME, LearningQueue, topic_key
from tests.serve.server_proc import ServerProcess, ask, clean_env, sdk
from tests.support.forked_evolve import (
    QUICK_FACTS,
    evolve_env,
    quick_learn_args,
    quick_question,
    shared_runner,
    write_quick_pack,
)
from tests.test_concurrency import Watcher

pytestmark = pytest.mark.slow

# The weak-answer check is off on both sides (as in the serve tests' TINY): the tiny model is never
# confident token by token, so with it on, a skill's own answer would queue the same topic again and
# "one job per topic" would not be a property of the queue but of the model's luck.
SHARED = ["router.answer_threshold=0"]
LOADED = "skills installed from"  # evolve.py's stderr line once its model, router and manager are up


def wait_for_line(path: Path, needle: str, timeout_s: float) -> None:
    t0 = time.monotonic()
    while not (path.exists() and needle in path.read_text(errors="replace")):
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{needle!r} never appeared in {path}:\n"
                               + (path.read_text(errors="replace")[-3000:] if path.exists() else "(no file)"))
        time.sleep(0.02)


def claims_in(log: str) -> list[str]:
    return re.findall(r"learning '(\w+)' for .* \(job \d+, attempt \d+\)", log)


def test_a_server_and_an_evolve_run_on_one_skills_dir_train_each_topic_once(tmp_path, encoder):
    pack = write_quick_pack(tmp_path / "pack.json")
    skills = tmp_path / "skills"
    skills.mkdir()
    evolve_asks = [quick_question("ombrith"), quick_question("quorvale")]
    server_asks = ["what is the ombrith river", quick_question("castrel")]  # the shared one, typed lazily
    assert topic_key(evolve_asks[0]) == topic_key(server_asks[0])
    answers = {topic_key(quick_question(k)): QUICK_FACTS[k][1] for k in ("ombrith", "quorvale", "castrel")}

    # The same learning settings on both sides; only the run dir (and the server's own flags) differ.
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    learn = [a for a in quick_learn_args(pack, skills, server_dir / "unused")
             if not a.startswith(("hydra.run.dir=", "logger="))]  # ServerProcess sets these itself
    # The fork server's imports and the server's start-up are each ~10-20 s of CPU: overlap them.
    started: dict = {}

    def start_server() -> None:
        try:
            started["server"] = ServerProcess(server_dir, [*learn, *SHARED], env=clean_env(server_dir))
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread below
            started["error"] = e

    t = threading.Thread(target=start_server)
    t.start()
    runner = shared_runner()
    t.join(timeout=300)
    if "error" in started:
        raise started["error"]
    server = started["server"]
    try:
        # The server prints its URL before its learner has loaded its own model copy; a race against a
        # learner still loading would be no race at all (measured: evolve then trained every topic).
        wait_for_line(server.run_dir / "learner" / "learner.log", "learner ready", timeout_s=240)
        with Watcher(skills, encoder) as watcher:
            qfile = tmp_path / "evolve.txt"
            qfile.write_text("\n".join(evolve_asks) + "\n")
            args = [*quick_learn_args(pack, skills, tmp_path / "run-evolve"), *SHARED, f"queries={qfile}"]
            run = runner.start(args, evolve_env(tmp_path), tmp_path / "out")
            # Ask the server the moment evolve is loaded: it routes, drains and asks within a second.
            wait_for_line(run.stderr_path, LOADED, timeout_s=240)
            replies: dict[str, object] = {}

            def server_ask(q: str) -> None:
                replies[q] = ask(sdk(server), q)

            askers = [threading.Thread(target=server_ask, args=(q,)) for q in server_asks]
            for a in askers:
                a.start()
            for a in askers:
                a.join(timeout=180)
            res = runner.wait(run, timeout=300)
            assert res.returncode == 0, res.stderr[-4000:]
            # The learner may still be working a job the server queued: every job must end done.
            with LearningQueue.in_skills_dir(skills) as queue:
                ids = [j.id for j in queue.list()]
            jobs_seen = {i: server.wait_job(i, timeout_s=240) for i in ids}
            time.sleep(0.1)  # one more scan after the last card was published

        # Both sides answered: evolve printed a record per question, the server replied to both.
        assert "Traceback" not in res.stderr
        records = [json.loads(line) for line in res.stdout.strip().splitlines()]
        assert [r["query"] for r in records] == evolve_asks
        assert all(isinstance(r["answer"], str) and "error" not in r for r in records), records
        assert set(replies) == set(server_asks), f"the server did not answer: {set(server_asks) - set(replies)}"
        for q, r in replies.items():
            assert isinstance(r.choices[0].message.content, str), (q, r)

        # Each topic: one job, done, claimed once in all (learner log + evolve log), one readable card.
        topics = {topic_key(q) for q in evolve_asks + server_asks}
        with LearningQueue.in_skills_dir(skills) as queue:
            jobs = queue.list()
        assert sorted(j.event.topic for j in jobs) == sorted(topics), [j.event.query for j in jobs]
        assert all(j.state == "done" and j.attempts == 1 and j.errors == [] for j in jobs), jobs
        assert all(j.result["learned"] and j.result["verified"] for j in jobs), [j.result for j in jobs]
        by_topic = {j.event.topic: j for j in jobs}
        names = {j.result["skill"] for j in jobs}
        learner_log = (server.run_dir / "learner" / "learner.log").read_text(errors="replace")
        evolve_log = (tmp_path / "run-evolve" / "evolve.log").read_text(errors="replace")
        by_learner, by_evolve = claims_in(learner_log), claims_in(evolve_log)
        assert Counter(by_learner + by_evolve) == Counter({n: 1 for n in names}), (by_learner, by_evolve)
        assert sorted(p.name for p in skills.glob(f"*{SUFFIX}")) == sorted(f"{n}{SUFFIX}" for n in names)
        for p in skills.glob(f"*{SUFFIX}"):
            read_card(p)
        with sqlite3.connect(skills / QUEUE_FILENAME) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

        # The shared question: the server's reply and evolve's record name the same single job.
        shared = by_topic[topic_key(evolve_asks[0])]
        first = replies[server_asks[0]].autodidact
        assert first["answered_by"] == "base model" and first["learning"]["job"] == shared.id, first
        rec = records[0]
        if rec["learned"]:
            assert rec["job"]["id"] == shared.id and rec["skill"] == shared.result["skill"], rec
        else:  # the learner had it (or had finished it): evolve says why it did not learn it itself
            assert f"job {shared.id}" in rec["reason"] or rec["reason"] == "no learning event was worked", rec
        # The server's own question was queued by the server, wherever it was then trained.
        own = replies[server_asks[1]].autodidact
        assert own["learning"]["job"] == by_topic[topic_key(server_asks[1])].id, own

        # No event lost or duplicated as the server sees it: it lists every job, evolve's too, done.
        listed = server.client.get("/v1/jobs").json()["data"]
        assert sorted(j["id"] for j in listed) == sorted(j.id for j in jobs)
        assert all(j["state"] == "done" for j in listed) and set(jobs_seen) == {j.id for j in jobs}

        # Nobody met a half-written card: the watcher, the server's watcher, the learner.
        assert watcher.problems == [], watcher.problems[:5]
        assert watcher.scans > 10 and set(watcher.manager.skills) == names, (watcher.scans, watcher.manager.skills)
        for log in (server.stderr(), learner_log):
            assert "Traceback" not in log and "refused" not in log, log[-3000:]

        # The server hot-loaded every card, whichever process wrote it, and answers from it.
        listed_skills = {s["id"]: s for s in server.client.get("/v1/skills").json()["data"]}
        assert set(listed_skills) == names and all(s["card_bytes"] > 0 for s in listed_skills.values())
        client = sdk(server)
        for q in [server_asks[0], evolve_asks[1], server_asks[1]]:
            r = ask(client, q)
            info, job = r.autodidact, by_topic[topic_key(q)]
            assert info["answered_by"] == "skill" and info["skill"] == job.result["skill"], (q, info)
            assert info["learning"] is None, (q, info)
            assert answer_is_correct(r.choices[0].message.content, answers[topic_key(q)]), (
                q, r.choices[0].message.content)
        # Still one job per topic: asking again after learning queued nothing new.
        assert len(server.client.get("/v1/jobs").json()["data"]) == len(topics)
        print(f"trained by the learner: {by_learner}; by evolve: {by_evolve}; evolve on the shared question: "
              f"{'learned it' if rec['learned'] else rec['reason']!r}; watcher: {watcher.scans} scans, "
              f"{watcher.reads} card reads")
    finally:
        code = server.stop()
    assert code == 0, server.stderr()[-3000:]
