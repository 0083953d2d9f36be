"""The self-evolving loop: route -> (dissonance -> learn -> deploy) -> answer, one record per query.

``Autodidact`` takes already-built parts, so tests drive it without Hydra; ``run_evolve(cfg, run_dir)``
builds them from the Hydra config for ``evolve.py``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from autodidact.errors import AutodidactError, ConfigError
from autodidact.fileio import append_jsonl
from autodidact.inference.lora_router import DissonanceDetector, EmptyQueryError, LoRARouter
from autodidact.learning_queue import LearningQueue, topic_key
from autodidact.lora_manager import BASE_SKILL
from autodidact.settings import ManagerConfig, check_evolve_config  # noqa: F401 - ManagerConfig re-exported

if TYPE_CHECKING:
    from autodidact.lora_manager import LoRAManager
    from autodidact.skill_factory import SkillFactory

log = logging.getLogger(__name__)
RESULTS_NAME = "results.jsonl"


class Autodidact:
    """Answers questions, learning a new skill first whenever the router is not confident."""

    def __init__(
        self,
        manager: LoRAManager,
        router: LoRARouter,
        factory: SkillFactory,
        threshold: float = 0.4,
        answer_threshold: float = 0.0,
        learn: bool = True,
        max_new_tokens: int = 48,
        logger=None,
    ) -> None:
        self.manager = manager
        self.router = router
        self.factory = factory
        self.detector = DissonanceDetector(factory, threshold=threshold, answer_threshold=answer_threshold)
        self.threshold = threshold
        self.learn = learn
        self.max_new_tokens = max_new_tokens
        self.logger = logger
        self._asked = 0

    def _answer(self, skill: str | None, query: str):
        return self.manager.answer(skill, query, self.max_new_tokens)

    def ask(self, query: str) -> dict:
        """Answer ``query``; returns the JSON-safe record that evolve.py prints."""
        if not isinstance(query, str) or not query.strip():
            raise EmptyQueryError('the question is empty; ask something: python evolve.py query="..."')
        t0 = time.perf_counter()
        stages: dict[str, float] = {}
        r = self.router.route(query)
        skill = self.detector.selected(r)
        stages["route"] = round(time.perf_counter() - t0, 3)
        q = r.query  # the router's (possibly truncated) text: a huge query never reaches the model whole
        ans = None
        if skill is not None:
            t = time.perf_counter()
            ans = self._answer(skill, q)
            stages["answer_check"] = round(time.perf_counter() - t, 3)
        # Only an adapter's answer is checked: the base model's knowledge was verified when remembered.
        weak = skill not in (None, BASE_SKILL) and self.detector.weak_answer(ans.min_prob)
        rec: dict = {
            "query": query,
            "answer": None,
            "skill": skill,
            "confidence_before": round(r.confidence, 4),
            "confidence_after": round(r.confidence, 4),
            "learned": False,
            "card": None,
            "verified": None,
        }
        if weak:
            rec["answer_confidence_before"] = round(ans.min_prob, 4)
        if (skill is None or weak) and self.learn:
            t = time.perf_counter()
            rec["answer_before"] = (ans if ans is not None else self._answer(None, q)).text
            stages["answer_before"] = round(time.perf_counter() - t, 3)
            why = (f"skill {skill!r} is unsure of its answer ({ans.min_prob:.2f} < {self.detector.answer_threshold})"
                   if weak else f"confidence {r.confidence:.3f} < {self.threshold}")
            print(f"[autodidact] dissonance: {why} for {query!r}; learning", file=sys.stderr)
            # Routing dissonance: what was just generated is the base model's greedy answer to the
            # query, which the factory's "does the base model already know it?" check needs too.
            base = None if ans is not None else {"text": rec["answer_before"], "max_new_tokens": self.max_new_tokens}
            self.detector.check(r, ans.min_prob if weak else None, base_answer=base)
            t = time.perf_counter()
            outcomes = self.factory.drain()
            stages["learn"] = round(time.perf_counter() - t, 3)
            mine = [o for o in outcomes if topic_key(o.query) == topic_key(r.query)]
            if mine:
                o = mine[-1]
                rec["verified"] = o.verified
                rec["job"] = {"id": o.job_id, "state": o.state, "rounds": o.rounds, "seconds": o.seconds,
                              "provider": o.provider}
                if o.joined:
                    rec["joined"] = o.joined
                if o.state != "done" or o.learned is False:
                    rec["reason"] = o.reason
                for k, v in o.seconds.items():
                    stages[k] = v
            else:
                rec["reason"] = self._why_not_learned(r.query)
            r2 = self.router.route(query)
            skill, ans = self.detector.selected(r2), None
            if mine and skill == mine[-1].skill and self.factory.config.max_new_tokens == self.max_new_tokens:
                # The card just verified answered this very question (read back from its bytes, as
                # installed) with this token budget: that answer is the one to give, not a second
                # greedy decode of it. Only a deployed outcome carries answers.
                ans = mine[-1].answers.get(q)
            rec["confidence_after"] = round(r2.confidence, 4)
            rec["learned"] = bool(mine and mine[-1].state == "done" and mine[-1].learned and skill is not None)
        rec["skill"] = None if skill == BASE_SKILL else skill
        if skill == BASE_SKILL:
            rec["known_by_base"] = True
        if skill is not None and skill in self.manager.skills:
            rec["card"] = str(self.manager.skills[skill].path)
        t = time.perf_counter()
        if ans is None:
            ans = self._answer(skill, q)
        rec["answer"] = ans.text
        rec["answer_confidence"] = round(ans.min_prob, 4)
        stages["answer"] = round(time.perf_counter() - t, 3)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        rec["stage_seconds"] = stages
        self._log(rec)
        return rec

    def _why_not_learned(self, query: str) -> str:
        for job in self.factory.queue.list():
            if job.event.topic != topic_key(query) or job.state not in ("pending", "running"):
                continue
            if job.state == "running":
                who = f"pid {job.holder_pid} on {job.holder_host}" if job.holder_pid else job.worker_id
                return (f"this topic is being learned right now by another worker ({who}, job {job.id}, "
                        f"attempt {job.attempts}); ask again when it is done")
            return (f"a learning event for this topic is queued (job {job.id}, attempt {job.attempts}) and "
                    "backing off after a failure; it will be retried after its backoff")
        for job in self.factory.queue.list("dead"):
            if job.event.topic == topic_key(query):
                return f"learning this topic failed for good (job {job.id}): {job.errors[-1] if job.errors else '?'}"
        return "no learning event was worked"

    def _log(self, rec: dict) -> None:
        if self.logger is None:
            return
        self._asked += 1
        m = {"query/confidence_before": rec["confidence_before"], "query/confidence_after": rec["confidence_after"],
             "query/learned": float(rec["learned"]), "query/seconds": rec["seconds"]}
        m.update({f"query/stage_seconds/{k}": v for k, v in rec["stage_seconds"].items()})
        self.logger.log_metrics(m, step=None)


# -- building from config ----------------------------------------------------------------------------
def resolve_skills_dir(value: str | None) -> Path:
    if value:
        return Path(value).expanduser()
    if os.environ.get("AUTODIDACT_SKILLS_DIR"):
        return Path(os.environ["AUTODIDACT_SKILLS_DIR"]).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("autodidact")) / "skills"


def read_queries(cfg: DictConfig) -> tuple[list[str], bool]:
    """The questions to answer and whether they are the built-in demo."""
    if cfg.get("query") is not None:
        return [str(cfg.query)], False
    if cfg.get("queries"):
        path = Path(cfg.queries).expanduser()
        if not path.exists():
            raise ConfigError(f"queries={path} does not exist; give a file with one question per line")
        qs = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not qs:
            raise ConfigError(f"queries={path} holds no questions")
        return qs, False
    from autodidact.teachers.offline import load_pack

    return [f.question for f in load_pack(cfg.teacher.get("pack"))], True


def build_autodidact(cfg: DictConfig, run_dir: str | Path, banner: str | None = None) -> Autodidact:
    """Every part of the loop from the Hydra config, checked first (all problems in one error).

    The config is checked before the model, the teachers' SDKs or Lightning are imported, so a bad
    setting costs a second, not a model load. The caller closes ``bot.factory.queue`` and finishes
    ``bot.logger`` (``close_autodidact``).
    """
    s = check_evolve_config(cfg)
    from autodidact.inference.encoder import get_encoder
    from autodidact.inference.lora_layer import find_targets
    from autodidact.lora_manager import LoRAManager
    from autodidact.skill_factory import SkillFactory
    from autodidact.teachers import TRANSCRIPT_NAME, CloudDistiller, build_teacher
    from autodidact.train_skill import build_logger, load_bundle, start_logger

    run_dir = Path(run_dir)
    skills_dir = resolve_skills_dir(s.run.skills_dir)
    if banner:
        print(f"{banner}; skills go to {skills_dir}", file=sys.stderr)

    logger = build_logger(cfg)
    # W&B's start (a service process, its own imports: ~4 s of the first skill's training before) runs
    # while the model, the encoder and the skills load; joined below, before anything can log.
    starting = start_logger(logger)
    try:
        bundle = load_bundle(s.model)
        find_targets(bundle.model, s.lora.target_modules)  # a wrong lora.target_modules fails now, not mid-learning
        router = LoRARouter(s.router, get_encoder(s.router.encoder_path))
        manager = LoRAManager(bundle, skills_dir, router, max_loaded=s.manager.max_loaded)
        changes = manager.scan()
        print(f"[autodidact] {len(manager.skills)} skills installed from {skills_dir}"
              + (f"; refused {len(changes['refused'])} invalid cards (see log)" if changes["refused"] else ""),
              file=sys.stderr)
        queue = LearningQueue.in_skills_dir(skills_dir, policy=s.queue)
        factory = SkillFactory(
            queue,
            CloudDistiller(build_teacher(s.teacher, run_dir / TRANSCRIPT_NAME), s.teacher.distill, encoder=router.encoder),
            manager,
            s.lora,
            s.trainer,
            s.factory,
            work_dir=run_dir / "work",
            logger=logger,
        )
    except BaseException:
        # The run W&B just started is closed as failed, not left open in its directory.
        from autodidact.tracking import finish

        if starting is not None:
            starting.join()
        try:
            finish(logger, "failed")
        except Exception:  # noqa: BLE001 - the error that stopped the build is the one to report
            log.debug("closing the logger after a failed build failed too", exc_info=True)
        raise
    if starting is not None:
        starting.join()
    return Autodidact(manager, router, factory, threshold=s.router.threshold,
                      answer_threshold=s.router.answer_threshold, learn=s.run.learn,
                      max_new_tokens=s.model.max_new_tokens, logger=logger)


def close_autodidact(bot: Autodidact, records: list[dict] | None = None) -> None:
    """Close the queue and finish the logger of a ``build_autodidact`` loop (results as a table first)."""
    from autodidact.tracking import finish, log_table

    bot.factory.queue.close()
    if bot.logger is not None:
        if records:
            log_table(bot.logger, "results", records)
        finish(bot.logger)


def run_evolve(cfg: DictConfig, run_dir: str | Path) -> list[dict]:
    run_dir = Path(run_dir)
    queries, demo = read_queries(cfg)
    banner = (f"[autodidact] demo: {len(queries)} questions from the offline demo knowledge pack (fictional facts)"
              if demo else None)
    bot = build_autodidact(cfg, run_dir, banner)
    records = []
    try:
        if bot.learn:
            # Jobs left by a worker that died (or backed off and are due) are finished first, at once,
            # rather than whenever someone happens to ask the same question again.
            bot.factory.drain()
        for q in queries:
            try:
                rec = bot.ask(q)
            except AutodidactError as e:
                rec = {"query": q, "answer": None, "skill": None, "confidence_before": None,
                       "confidence_after": None, "learned": False, "card": None, "verified": None,
                       "seconds": 0.0, "error": str(e)}
            append_jsonl(run_dir / RESULTS_NAME, rec)
            records.append(rec)
            if "error" in rec:
                print(f"error: {rec['error']}", file=sys.stderr)
            print(json.dumps(rec, ensure_ascii=False), flush=True)
    finally:
        close_autodidact(bot, records)
    return records
