"""SkillFactory: works the durable queue of learning events into verified, deployed skills.

    claim event ─► distill (teacher) ─► fit (LoRA) ─► verify ─┬─► export card ─► manager.install ─► complete
                                          ▲                    │
                                          └── more steps/pairs ┘ (up to verify rounds) ─► dead letter

Nothing is dropped: a teacher outage fails the job *with retry* (backoff in the queue); a skill that
cannot be verified after every round is dead-lettered with the reason; a worker killed mid-job
leaves a lease that expires, and the job is claimed again. A card reaches ``skills_dir`` only after
it answered the original question and enough held-out paraphrases correctly, and only by an
atomic rename.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from autodidact.card import SUFFIX
from autodidact.data import QAPair, save_pairs
from autodidact.evaluation import answer_is_correct, content_words
from autodidact.inference.generate import generate_answer
from autodidact.inference.lora_layer import delete_adapter, set_adapter
from autodidact.inference.lora_router import build_routing
from autodidact.learning_queue import Job, LearningEvent, LearningQueue, topic_key
from autodidact.lora_manager import LoRAManager
from autodidact.lora_trainer import LoRAConfig, LoRATrainer, TrainConfig
from autodidact.teachers import CloudDistiller, TeacherError

log = logging.getLogger(__name__)


@dataclass
class FactoryConfig:
    """How the factory verifies and retries (config key ``factory``)."""

    verify_rounds: int = 2
    """Training rounds before a skill that fails verification is dead-lettered."""
    min_heldout_fraction: float = 0.5
    """Share of held-out paraphrases that must be answered correctly (the original question always must)."""
    retrain_step_factor: float = 2.0
    """Each extra round trains at least this many times the previous round's steps."""
    lease_s: float = 1800.0
    """How long a claimed job is ours before another worker may take it over."""
    max_new_tokens: int = 48
    """Generation budget when verifying answers."""
    card_dtype: str = "float16"
    """Storage dtype of exported cards."""

    def problems(self) -> list[str]:
        p = []
        if self.verify_rounds < 1:
            p.append(f"factory.verify_rounds must be >= 1 (got {self.verify_rounds})")
        if not 0 <= self.min_heldout_fraction <= 1:
            p.append(f"factory.min_heldout_fraction must be in [0, 1] (got {self.min_heldout_fraction})")
        if self.retrain_step_factor < 1:
            p.append(f"factory.retrain_step_factor must be >= 1 (got {self.retrain_step_factor})")
        if self.lease_s <= 0:
            p.append(f"factory.lease_s must be > 0 (got {self.lease_s})")
        return p


@dataclass
class SkillOutcome:
    """What working one learning event produced."""

    job_id: int
    query: str
    skill: str
    state: str
    """done | retry | dead"""
    card: str | None = None
    verified: bool | None = None
    reason: str | None = None
    provider: str | None = None
    rounds: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    card_bytes: int | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


MAX_STEM_CHARS = 60
"""Longest readable part of a skill name; the topic digest after it keeps names distinct."""


def skill_name(query: str) -> str:
    """A stable, filesystem- and module-safe name for the skill that answers ``query``.

    The same topic always maps to the same name, so re-learning replaces the old card.
    """
    words = [w for w in content_words(query) if w.isascii() and w.replace("'", "").isalnum()][:5]
    # Capped: one long "word" (a number, a hash) must not push the card's file name past 255 bytes.
    stem = "_".join(w.replace("'", "") for w in words)[:MAX_STEM_CHARS].rstrip("_") or "skill"
    digest = hashlib.sha256(topic_key(query).encode()).hexdigest()[:6]
    return f"{stem}_{digest}"


class SkillFactory:
    """Queue in, verified skill cards out."""

    def __init__(
        self,
        queue: LearningQueue,
        distiller: CloudDistiller,
        manager: LoRAManager,
        lora: LoRAConfig,
        train: TrainConfig,
        config: FactoryConfig | None = None,
        work_dir: str | Path | None = None,
        logger=None,
        worker_id: str | None = None,
    ) -> None:
        self.queue = queue
        self.distiller = distiller
        self.manager = manager
        self.lora = lora
        self.train = train
        self.config = config or FactoryConfig()
        self.work_dir = Path(work_dir) if work_dir else manager.skills_dir / "work"
        self.logger = logger
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}"

    # -- queue side --------------------------------------------------------------------------------
    def put(self, event: LearningEvent) -> tuple[int, bool]:
        """Enqueue a learning event (the DissonanceDetector calls this). Deduplicated by topic."""
        return self.queue.put(event)

    def work_one(self) -> SkillOutcome | None:
        """Claim and work one job; None when nothing is ready."""
        job = self.queue.claim(self.worker_id, lease_s=self.config.lease_s)
        if job is None:
            return None
        return self.work(job)

    def drain(self, max_jobs: int | None = None) -> list[SkillOutcome]:
        """Work jobs until none is ready (or ``max_jobs`` are done)."""
        out: list[SkillOutcome] = []
        while max_jobs is None or len(out) < max_jobs:
            o = self.work_one()
            if o is None:
                break
            out.append(o)
        return out

    # -- one job ---------------------------------------------------------------------------------
    def work(self, job: Job) -> SkillOutcome:
        query = job.event.query
        name = skill_name(query)
        outcome = SkillOutcome(job_id=job.id, query=query, skill=name, state="running")
        log.info("learning skill %r for %r (job %d, attempt %d)", name, query, job.id, job.attempts)
        t0 = time.perf_counter()
        try:
            dist = self.distiller.distill(query)
        except Exception as e:  # TeacherError or anything a provider raised: never lose the event
            # The teacher may come back: keep the event, back off, try again later.
            if not isinstance(e, TeacherError):
                log.exception("job %d: the teacher raised an unexpected error", job.id)
            job = self.queue.fail(job, f"distill: {e}", retry=True)
            outcome.state, outcome.reason = ("dead" if job.state == "dead" else "retry"), f"distill: {e}"
            log.warning("job %d: teacher failed (%s); %s", job.id, e, job.state)
            return outcome
        outcome.seconds["distill"] = round(time.perf_counter() - t0, 3)
        outcome.provider = dist.provider
        log.info("distilled %d training pairs + %d held-out from %s (%s)%s", len(dist.pairs), len(dist.heldout),
                 dist.provider, dist.model, " [offline demo data]" if dist.offline else "")
        jobdir = self.work_dir / f"job-{job.id}"
        save_pairs(jobdir / "pairs.jsonl", dist.pairs)
        save_pairs(jobdir / "verify.jsonl", [dist.reference, *dist.heldout])

        try:
            card, verified, reason = self._train_verify_export(name, dist.pairs, dist.reference, dist.heldout, outcome)
        except Exception as e:  # training blew up: keep the event for another try, never drop it
            log.exception("job %d: training failed", job.id)
            job = self.queue.fail(job, f"train: {type(e).__name__}: {e}", retry=True)
            outcome.state, outcome.reason = ("dead" if job.state == "dead" else "retry"), f"train: {e}"
            return outcome
        outcome.verified = verified
        if not verified:
            self.queue.fail(job, f"verify: {reason}", retry=False)
            outcome.state, outcome.reason = "dead", f"verify: {reason}"
            log.warning("job %d: skill %r not deployed: %s", job.id, name, reason)
            return outcome
        t1 = time.perf_counter()
        self.manager.install(card)
        outcome.seconds["deploy"] = round(time.perf_counter() - t1, 3)
        outcome.card = str(card)
        outcome.card_bytes = card.stat().st_size
        outcome.state = "done"
        self.queue.complete(job, outcome.to_dict())
        log.info("deployed skill %r: %s (%.0f KiB)", name, card, outcome.card_bytes / 1024)
        self._log_metrics(name, outcome)
        return outcome

    def _train_verify_export(
        self, name: str, pairs: list[QAPair], reference: QAPair, heldout: list[QAPair], outcome: SkillOutcome
    ) -> tuple[Path | None, bool, str | None]:
        adapter = f"train_{name}"
        mgr = self.manager
        min_steps, reason = 0, None
        for rnd in range(1, self.config.verify_rounds + 1):
            tcfg = dataclasses.replace(self.train, min_steps=min_steps, max_steps=max(self.train.max_steps, min_steps))
            trainer = LoRATrainer(mgr.bundle, self.lora, tcfg, logger=self.logger)
            with mgr.lock:
                delete_adapter(mgr.model, adapter)  # a fresh adapter each round
                t = time.perf_counter()
                result = trainer.fit(pairs, adapter=adapter, metric_prefix=f"skills/{name}/")
                outcome.seconds[f"train_round{rnd}"] = round(time.perf_counter() - t, 3)
                set_adapter(mgr.model, adapter)
                ref_answer = generate_answer(mgr.model, mgr.bundle.tokenizer, reference.question,
                                             self.config.max_new_tokens)
                held = [(p, generate_answer(mgr.model, mgr.bundle.tokenizer, p.question, self.config.max_new_tokens))
                        for p in heldout]
                set_adapter(mgr.model, None)
            ref_ok = answer_is_correct(ref_answer, reference.answer)
            held_ok = sum(answer_is_correct(a, p.answer) for p, a in held)
            held_frac = held_ok / len(held) if held else 1.0
            outcome.rounds.append({
                "round": rnd, "steps": result.steps, "loss_initial": result.loss_initial,
                "loss_final": result.loss_final, "learned": result.learned, "reference_answer": ref_answer,
                "reference_correct": ref_ok, "heldout_correct": held_ok, "heldout_total": len(held),
            })
            log.info("round %d: reference %s (%r), held-out %d/%d", rnd, "ok" if ref_ok else "WRONG",
                     ref_answer, held_ok, len(held))
            if ref_ok and held_frac >= self.config.min_heldout_fraction:
                routing = build_routing([reference.question, *(p.question for p in pairs)], mgr.router.encoder)
                extra = {
                    "routing": routing,
                    "query": reference.question,
                    "reference_answer": reference.answer,
                    "verify": {"reference_correct": True, "heldout_correct": held_ok, "heldout_total": len(held)},
                    "teacher": {"provider": outcome.provider},
                }
                path = mgr.skills_dir / f"{name}{SUFFIX}"
                with mgr.lock:
                    card = trainer.export(path, adapter, name, result, extra=extra, dtype=self.config.card_dtype)
                    delete_adapter(mgr.model, adapter)
                return card, True, None
            reason = (f"after round {rnd} the reference answer was {'right' if ref_ok else 'wrong'} "
                      f"({ref_answer!r}) and {held_ok}/{len(held)} held-out paraphrases were right")
            min_steps = int(max(result.steps, 1) * self.config.retrain_step_factor)
        with mgr.lock:
            delete_adapter(mgr.model, adapter)
        return None, False, reason

    def _log_metrics(self, name: str, outcome: SkillOutcome) -> None:
        if self.logger is None:
            return
        metrics = {f"skills/{name}/card_bytes": outcome.card_bytes or 0}
        metrics.update({f"skills/{name}/seconds_{k}": v for k, v in outcome.seconds.items()})
        self.logger.log_metrics(metrics)
