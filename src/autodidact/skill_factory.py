"""SkillFactory: works the durable queue of learning events into verified, deployed skills.

    claim event ─► distill (teacher) ─► base model knows it? ─ yes ─► remember, train nothing ─► complete
                                          │ no
                   joins a skill? (a new fact about its subject): its facts and pairs + the new ones
                                          ▼
                   fit (LoRA) ─► card (staging) ─► verify the card's own bytes ─┬─► publish ─► install ─► complete
                     ▲                                                           │
                     └──────────────── more steps ───────────────────────────────┘ (verify rounds) ─► dead letter

One skill per subject: a learning event that carries ``join`` (set by the DissonanceDetector when the
question is about a learned skill's subject, or that skill's answer was weak) retrains that skill on
its old pairs and the new ones together, verifies every fact it holds, and replaces its card.

Nothing is dropped: a teacher outage fails the job *with retry* (backoff in the queue); a skill that
cannot be verified after every round is dead-lettered with the reason; a worker killed mid-job
leaves a lease that expires, and the job is claimed again. A card reaches ``skills_dir`` only after
the adapter *as stored in it* (16-bit, read back from the card's bytes) answered every fact's question
and enough held-out rephrasings correctly, and only by an atomic rename; the staging copy lives in
``skills_dir/.staging``, which the manager never scans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from autodidact.card import SUFFIX, Card, CardError, attach_card, read_card, write_card
from autodidact.data import QAPair, save_pairs
from autodidact.evaluation import answer_is_correct, content_words, heldout_scores
from autodidact.inference.answer import Answer, answer_with_confidence, answers_with_confidence, draft_pool
from autodidact.inference.lora_layer import delete_adapter, set_adapter
from autodidact.inference.lora_router import build_routing
from autodidact.learning_queue import Job, LearningEvent, LearningQueue, topic_key
from autodidact.lora_manager import LoRAManager
from autodidact.lora_trainer import LoRATrainer, adapter_targets
from autodidact.settings import FactoryConfig, LoRAConfig, TrainConfig
from autodidact.teachers import CloudDistiller, TeacherError
from autodidact.teachers.distiller import normalize

log = logging.getLogger(__name__)

PAUSE_ENV, PAUSE_FILE_ENV = "AUTODIDACT_PAUSE_AT", "AUTODIDACT_PAUSE_FILE"
STAGES = ("distilling", "training", "verifying", "exporting", "installing")


def stage_reached(stage: str) -> None:
    """Crash tests' hook: with ``AUTODIDACT_PAUSE_AT=<stage>`` the worker announces the stage (pid into
    ``AUTODIDACT_PAUSE_FILE``) and waits there until it is killed, so a test kills it at a known point
    instead of after a guessed sleep. Without the variable this does nothing."""
    if os.environ.get(PAUSE_ENV) != stage:
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        Path(marker).write_text(f"{os.getpid()} {stage}\n")
    log.warning("paused at stage %r (%s is set); waiting to be killed", stage, PAUSE_ENV)
    while True:
        time.sleep(3600)


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
    learned: bool | None = None
    """False when the base model already knew the answer and nothing was trained."""
    joined: str | None = None
    """The existing skill the new fact joined (one skill per subject), if any."""
    facts: int | None = None
    """How many facts the deployed skill holds."""
    answers: dict[str, Answer] = field(default_factory=dict, repr=False)
    """The deployed card's answers to its facts' questions, from the verification that passed it
    (the card read back from its bytes, as installed): the caller need not generate them again."""

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("answers")  # Answer objects; the verdicts they gave are already in ``rounds``
        return d


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


@dataclass(frozen=True)
class Fact:
    """One fact a skill must answer: the user's question, the reference answer, held-out rephrasings."""

    query: str
    answer: str
    heldout: tuple[QAPair, ...] = ()

    def to_dict(self) -> dict:
        return {"query": self.query, "answer": self.answer, "heldout": [p.to_dict() for p in self.heldout]}

    @classmethod
    def from_dict(cls, d: dict) -> Fact:
        return cls(d["query"], d["answer"], tuple(QAPair(h["question"], h["answer"]) for h in d.get("heldout", [])))


def skill_facts(meta: dict) -> tuple[list[Fact], list[QAPair]]:
    """The facts and training pairs a card keeps (cards from before skills could grow keep only their
    question and reference answer: that is then their one fact, and they have no pairs to retrain on)."""
    if isinstance(meta.get("facts"), list):
        facts = [Fact.from_dict(f) for f in meta["facts"]]
    elif meta.get("query") and meta.get("reference_answer"):
        facts = [Fact(meta["query"], meta["reference_answer"])]
    else:
        facts = []
    pairs = [QAPair(p["question"], p["answer"]) for p in meta.get("pairs", [])]
    return facts, pairs


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
        # A heartbeat renews the short lease while the job is worked, so a crash frees it fast and a
        # long training step does not.
        with self.queue.keep_alive(job) as beat:
            outcome = self.work(job)
        if beat.error is not None:
            log.warning("job %d: lease lost while working (%s); another worker owns it now", job.id, beat.error)
        return outcome

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
        join = (job.event.extra or {}).get("join")
        old = self.manager.skills.get(join) if join else None
        name = old.name if old is not None else skill_name(query)
        outcome = SkillOutcome(job_id=job.id, query=query, skill=name, state="running")
        log.info("learning %r for %r (job %d, attempt %d)%s", name, query, job.id, job.attempts,
                 " as a new fact of that skill" if old is not None else "")
        t0 = time.perf_counter()
        try:
            stage_reached("distilling")
            dist = self.distiller.distill(query)
            jobdir = self.work_dir / f"job-{job.id}"
            save_pairs(jobdir / "pairs.jsonl", dist.pairs)
            save_pairs(jobdir / "verify.jsonl", [dist.reference, *dist.heldout])
        except Exception as e:  # TeacherError, a full disk, anything a provider raised: never lose the event
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
        new = Fact(dist.reference.question, dist.reference.answer, tuple(dist.heldout))

        t1 = time.perf_counter()
        known = self._base_knows(new, (job.event.extra or {}).get("base_answer") if new.query == query else None)
        outcome.seconds["base_check"] = round(time.perf_counter() - t1, 3)
        if known:
            # Nothing to learn: remember the question so it routes to the base model next time.
            self.manager.remember_base([new.query, *(p.question for p in new.heldout)])
            outcome.state, outcome.learned, outcome.verified = "done", False, True
            outcome.reason = "the base model already answers this question and its rephrasings; no adapter trained"
            self.queue.complete(job, outcome.to_dict())
            log.info("job %d: %s", job.id, outcome.reason)
            return outcome

        facts, pairs = [new], list(dist.pairs)
        if old is not None:
            prior_facts, prior_pairs = skill_facts(old.meta)
            facts = [f for f in prior_facts if normalize(f.query) != normalize(new.query)] + [new]
            have = {normalize(p.question) for p in dist.pairs}
            pairs = [p for p in prior_pairs if normalize(p.question) not in have] + pairs
            outcome.joined = old.name
        start = self._start_from(old) if old is not None and self.config.warm_start_joins else None
        try:
            card, verified, reason = self._train_verify_export(name, pairs, facts, outcome, job.id, start)
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
        stage_reached("installing")
        self.manager.install(card.path, card=card)  # handed over in memory; the file is already in place
        outcome.seconds["deploy"] = round(time.perf_counter() - t1, 3)
        outcome.card = str(card.path)
        outcome.card_bytes = card.path.stat().st_size
        outcome.state, outcome.learned, outcome.facts = "done", True, len(facts)
        self.queue.complete(job, outcome.to_dict())
        log.info("deployed skill %r: %s (%.0f KiB, %d fact(s))", name, card.path, outcome.card_bytes / 1024,
                 len(facts))
        self._log_metrics(name, outcome)
        return outcome

    def _check(self, facts: list[Fact], pairs: list[QAPair] = ()) -> tuple[bool, dict, dict[str, Answer]]:
        """Answer every fact's question and held-out rephrasings with the active adapter: the verdict,
        its report, and the answers to the facts' questions."""
        mgr = self.manager
        questions = [q for f in facts for q in (f.query, *(h.question for h in f.heldout))]
        # The answers the skill was taught are the drafts (each question's expected answer, then the
        # training answers, most common first): a skill that learned them is checked in a forward pass
        # or two instead of a decode step per token, with the same greedy answers either way.
        drafts = [a for f in facts for a in (f.answer, *(h.answer for h in f.heldout))]
        pool = draft_pool(p.answer for p in pairs)
        answers = iter(answers_with_confidence(mgr.model, mgr.bundle.tokenizer, questions, self.config.max_new_tokens,
                                               drafts=drafts, pool=pool))
        refs, held, texts, golds, answered = [], [], [], [], {}
        for f in facts:
            a = answered[f.query] = next(answers)
            refs.append({"query": f.query, "answer": a.text, "correct": answer_is_correct(a.text, f.answer),
                         "min_prob": round(a.min_prob, 4)})
            for h in f.heldout:
                text = next(answers).text
                held.append(answer_is_correct(text, h.answer))
                texts.append(text)
                golds.append(h.answer)
        held_ok = sum(held)
        ok = all(r["correct"] for r in refs) and (held_ok / len(held) if held else 1.0) >= self.config.min_heldout_fraction
        scores = heldout_scores(texts, golds)
        return ok, {"references": refs, "heldout_correct": held_ok, "heldout_total": len(held),
                    "heldout_exact_match": scores["exact_match"], "heldout_token_f1": scores["token_f1"]}, answered

    def _base_knows(self, fact: Fact, given: dict | None = None) -> bool:
        """The base model alone answers the question and every held-out rephrasing.

        ``given``: the base model's greedy answer to ``fact.query`` already generated by the caller
        (``{"text", "max_new_tokens"}``, carried by the learning event); used when it was generated
        with the same token budget, so it is exactly what this check would generate.
        """
        mgr, n = self.manager, self.config.max_new_tokens
        with mgr.use(None):
            # The question alone first: the base model usually fails it, and then that is the whole check.
            if given and given.get("max_new_tokens") == n and isinstance(given.get("text"), str):
                text = given["text"]
            else:
                text = answer_with_confidence(mgr.model, mgr.bundle.tokenizer, fact.query, n).text
            if not answer_is_correct(text, fact.answer):
                return False
            held = answers_with_confidence(mgr.model, mgr.bundle.tokenizer, [h.question for h in fact.heldout], n,
                                           drafts=[h.answer for h in fact.heldout])
            return all(answer_is_correct(x.text, h.answer) for x, h in zip(held, fact.heldout, strict=True))

    def _start_from(self, skill) -> dict | None:
        """The adapter weights of the skill a new fact joins, read from its card (None: train afresh)."""
        try:
            card = read_card(skill.path)
        except CardError as e:
            log.warning("skill %r: its card cannot be read (%s); the joined skill trains from scratch", skill.name, e)
            return None
        lo = card.meta.get("lora") or {}
        try:
            targets = set(adapter_targets(self.manager.model, self.lora))
        except ValueError:
            return None  # a LoRA config that selects no layer: training reports it
        if lo.get("r") != self.lora.r or lo.get("alpha") != self.lora.alpha or set(card.layers) != targets:
            return None  # trained under another LoRA config (rank, alpha or layers): its weights do not fit
        return card.tensors

    def _train_verify_export(
        self, name: str, pairs: list[QAPair], facts: list[Fact], outcome: SkillOutcome, job_id: int,
        start_from: dict | None = None,
    ) -> tuple[Card | None, bool, str | None]:
        adapter, probe = f"train_{name}", f"verify_{name}"
        mgr = self.manager
        staging = mgr.skills_dir / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        staged = staging / f"{name}.job{job_id}{SUFFIX}"
        min_steps, reason = 0, None
        try:
            for rnd in range(1, self.config.verify_rounds + 1):
                tcfg = dataclasses.replace(self.train, lightning={
                    **self.train.lightning, "min_steps": min_steps, "max_steps": max(self.train.max_steps, min_steps)})
                trainer = LoRATrainer(mgr.bundle, self.lora, tcfg, logger=self.logger)
                with mgr.lock:
                    delete_adapter(mgr.model, adapter)  # a fresh adapter each round
                    t = time.perf_counter()
                    stage_reached("training")
                    # A joined skill starts from the weights that already answer its old facts (round 1;
                    # a retry starts afresh, from elsewhere).
                    result = trainer.fit(pairs, adapter=adapter, metric_prefix=f"skills/{name}/",
                                         start_from=start_from if rnd == 1 else None)
                    outcome.seconds[f"train_round{rnd}"] = round(time.perf_counter() - t, 3)
                    set_adapter(mgr.model, None)
                    t = time.perf_counter()
                    meta = {
                        "routing": build_routing([*(f.query for f in facts), *(p.question for p in pairs)],
                                                 mgr.router.encoder),
                        "query": facts[0].query,
                        "reference_answer": facts[0].answer,
                        "facts": [f.to_dict() for f in facts],
                        "pairs": [p.to_dict() for p in pairs],
                        "teacher": {"provider": outcome.provider},
                        # The per-step training loss, so a card can show how it was learned (serve's page).
                        "loss_curve": [round(x, 4) for x in result.losses],
                    }
                    # Verify what ships: the adapter cast to the card's dtype and read back from its bytes.
                    trainer.export(staged, adapter, name, result, extra=meta, dtype=self.config.card_dtype)
                    delete_adapter(mgr.model, adapter)
                    card = read_card(staged)
                    stage_reached("verifying")
                    attach_card(card, mgr.model, mgr.bundle.fingerprint, adapter_name=probe)
                    set_adapter(mgr.model, probe)
                    try:
                        ok, report, answered = self._check(facts, pairs)
                    finally:
                        set_adapter(mgr.model, None)
                        delete_adapter(mgr.model, probe)
                    outcome.seconds[f"verify_round{rnd}"] = round(time.perf_counter() - t, 3)
                outcome.rounds.append({
                    "round": rnd, "steps": result.steps, "loss_initial": result.loss_initial,
                    "loss_final": result.loss_final, "learned": result.learned, **report,
                })
                refs = report["references"]
                log.info("round %d: references %d/%d right, held-out %d/%d", rnd, sum(r["correct"] for r in refs),
                         len(refs), report["heldout_correct"], report["heldout_total"])
                if ok:
                    t = time.perf_counter()
                    stage_reached("exporting")
                    card.meta["verify"] = {"references_correct": len(refs), "heldout_correct": report["heldout_correct"],
                                           "heldout_total": report["heldout_total"],
                                           "heldout_exact_match": report["heldout_exact_match"],
                                           "heldout_token_f1": report["heldout_token_f1"], "from": "card bytes"}
                    final = write_card(mgr.skills_dir / f"{name}{SUFFIX}", card.tensors, card.meta,
                                       dtype=self.config.card_dtype)
                    outcome.seconds["export"] = round(time.perf_counter() - t, 3)
                    outcome.answers = answered
                    return Card(final, card.meta, card.tensors), True, None
                wrong = "; ".join(f"{r['query']!r} -> {r['answer']!r}" for r in refs if not r["correct"])
                reason = (f"after round {rnd}, {sum(not r['correct'] for r in refs)} of {len(refs)} question(s) "
                          f"were answered wrongly ({wrong or 'none'}) and "
                          f"{report['heldout_correct']}/{report['heldout_total']} held-out rephrasings were right")
                min_steps = int(max(result.steps, 1) * self.config.retrain_step_factor)
        finally:
            with mgr.lock:
                delete_adapter(mgr.model, adapter)
            staged.unlink(missing_ok=True)
        return None, False, reason

    def _log_metrics(self, name: str, outcome: SkillOutcome) -> None:
        if self.logger is None:
            return
        from autodidact.tracking import log_card_artifact

        if outcome.card:
            log_card_artifact(self.logger, outcome.card, name)
        metrics = {f"skills/{name}/card_bytes": outcome.card_bytes or 0}
        metrics.update({f"skills/{name}/seconds_{k}": v for k, v in outcome.seconds.items()})
        last = outcome.rounds[-1] if outcome.rounds else {}
        for key in ("heldout_exact_match", "heldout_token_f1"):  # torchmetrics SQuAD EM / F1 of the shipped card
            if last.get(key) is not None:
                metrics[f"skills/{name}/{key}"] = last[key]
        self.logger.log_metrics(metrics)
