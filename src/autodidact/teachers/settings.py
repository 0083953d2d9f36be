"""Typed teacher settings (the Hydra group ``teacher``), in a module that imports no SDK and no torch.

``evolve.py`` checks every config section before it imports the teachers (the ``openai`` and
``anthropic`` SDKs) or torch, so a typo here is reported at once; ``config.py``/``failover.py``/
``distiller.py`` re-export these classes where they are used.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from autodidact.backoff import backoff_s
from autodidact.config import check_dataclass, to_dataclass

KINDS = ("auto", "openai", "anthropic", "failover", "offline", "replay")
CLOUD_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
"""Cloud providers and the environment variable each one's key comes from."""


@dataclass
class FailoverPolicy:
    """Retry, backoff, cooldown and deadline settings for a provider chain."""

    max_attempts: int = 3
    """Tries per provider per call on retryable errors (1 = no retry, straight to the next provider)."""
    backoff_base_s: float = 1.0
    """Delay before the second try; doubles on each further try."""
    backoff_max_s: float = 20.0
    """Cap on one delay; a 429 asking for longer than this fails over instead of waiting."""
    jitter: float = 0.5
    """Fraction of each delay drawn at random, so many clients do not retry in lockstep."""
    cooldown_s: float = 60.0
    """How long a provider that used up its tries is skipped by later calls."""
    deadline_s: float = 300.0
    """Overall limit for one call across every provider and retry."""

    def problems(self) -> list[str]:
        problems = []
        if self.max_attempts < 1:
            problems.append(f"teacher.policy.max_attempts must be >= 1 (got {self.max_attempts})")
        for name in ("backoff_base_s", "backoff_max_s", "cooldown_s"):
            if getattr(self, name) < 0:
                problems.append(f"teacher.policy.{name} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.jitter <= 1:
            problems.append(f"teacher.policy.jitter must be in [0, 1] (got {self.jitter})")
        if self.deadline_s <= 0:
            problems.append(f"teacher.policy.deadline_s must be > 0 (got {self.deadline_s})")
        return problems

    def validate(self) -> None:
        check_dataclass(self, "teacher.policy")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay after failed try number ``attempt`` (1-based)."""
        return backoff_s(attempt, self.backoff_base_s, self.backoff_max_s, self.jitter, rng)


@dataclass
class DistillConfig:
    """How many pairs to ask for and how to validate them."""

    n_pairs: int = 24
    """Training pairs asked for per question."""
    n_heldout: int = 4
    """Most held-out rephrasings kept apart from training (about a fifth of what came back is used)."""
    min_pairs: int = 6
    """Fewest training pairs to train on after ``max_rounds`` requests; fewer is an error."""
    max_rounds: int = 3
    """Requests per question at most (the first, then more while under half of ``n_pairs`` came back)."""
    max_question_chars: int = 300
    """Longer questions are dropped, not truncated."""
    max_answer_chars: int = 200
    """Longer answers are dropped: a small model must be able to reproduce them."""
    include_reference_in_training: bool = True
    """Also train on the user's own question: it is the one the adapter must answer."""
    paraphrase_min: float = 0.8
    """MiniLM cosine at which a pair's question means the same as the user's (reference, held-out);
    fitted on the routing dev split by experiments/calibrate_router.py."""
    near_duplicate: float = 0.95
    """MiniLM cosine at which two questions using the same words (filler aside) are one (the later is
    dropped). Cosine alone would merge "By whom was X built?" and "In what year was X built?" (0.98)."""

    def problems(self) -> list[str]:
        problems = []
        for name in ("n_pairs", "min_pairs", "max_rounds", "max_question_chars", "max_answer_chars"):
            if getattr(self, name) < 1:
                problems.append(f"teacher.distill.{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_heldout < 0:
            problems.append(f"teacher.distill.n_heldout must be >= 0 (got {self.n_heldout})")
        if self.min_pairs > self.n_pairs:
            problems.append(f"teacher.distill.min_pairs ({self.min_pairs}) must be <= n_pairs ({self.n_pairs})")
        for name in ("paraphrase_min", "near_duplicate"):
            if not 0.0 < getattr(self, name) <= 1.0:
                problems.append(f"teacher.distill.{name} must be a cosine in (0, 1] (got {getattr(self, name)})")
        return problems

    def validate(self) -> None:
        check_dataclass(self, "teacher.distill")


@dataclass
class ProviderSettings:
    """One cloud provider's endpoint and limits."""

    api_key: str | None = None
    """Secret; set through the environment, never on the command line or in a file."""
    base_url: str = ""
    """Endpoint root (OpenAI: including ``/v1``; Anthropic: without it, the SDK adds ``/v1/messages``)."""
    model: str = ""
    """Model name sent with every request."""
    timeout: float = 60.0
    """Seconds to wait for one reply."""
    max_tokens: int = 4096
    """Reply length cap; 24+ pairs of JSON need a few thousand tokens."""
    structured_output: bool = True
    """Ask for native structured output (OpenAI ``response_format`` JSON schema, Anthropic tool use);
    a server that refuses it is asked in plain text instead."""


@dataclass
class TeacherConfig:
    """The whole ``teacher`` config group."""

    kind: str = "auto"
    """Which chain: auto | openai | anthropic | failover | offline | replay."""
    chain: list[str] = field(default_factory=lambda: ["openai", "anthropic"])
    """Provider order for ``failover`` and ``auto``."""
    openai: ProviderSettings = field(
        default_factory=lambda: ProviderSettings(base_url="https://api.openai.com/v1", model="gpt-4o-mini")
    )
    """OpenAI settings (present whichever kind is chosen)."""
    anthropic: ProviderSettings = field(
        default_factory=lambda: ProviderSettings(base_url="https://api.anthropic.com", model="claude-haiku-4-5")
    )
    """Anthropic settings (present whichever kind is chosen)."""
    policy: FailoverPolicy = field(default_factory=FailoverPolicy)
    """Retries, backoff, cooldown and deadline."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """How many pairs to ask for and how to check them."""
    path: str | None = None
    """Transcript to serve back when ``kind=replay``."""
    pack: str | None = None
    """Knowledge pack for ``kind=offline``; null = the shipped demo pack."""

    @classmethod
    def from_cfg(cls, cfg: TeacherConfig | Mapping[str, Any]) -> TeacherConfig:
        """Build and validate from the Hydra node (or a partial dict); one error lists every problem."""
        if isinstance(cfg, TeacherConfig):
            cfg.validate()
            return cfg
        return to_dataclass(cls, cfg, "teacher")

    def problems(self) -> list[str]:
        """This section's own checks; ``policy`` and ``distill`` check themselves (``all_problems``)."""
        problems = []
        if self.kind not in KINDS:
            problems.append(f"teacher.kind must be one of {KINDS} (got {self.kind!r})")
        bad = [c for c in self.chain if c not in CLOUD_KEYS]
        if bad:
            problems.append(f"teacher.chain may only name {sorted(CLOUD_KEYS)} (got {bad})")
        if self.kind == "replay" and not self.path:
            problems.append("teacher=replay needs teacher.path=FILE (a teacher_transcript.jsonl)")
        for name in CLOUD_KEYS:
            s: ProviderSettings = getattr(self, name)
            if self.kind in (name, "failover", "auto") and (not s.base_url or not s.model):
                problems.append(f"teacher.{name}.base_url and teacher.{name}.model must be set")
            if s.timeout <= 0 or s.max_tokens < 1:
                problems.append(f"teacher.{name}.timeout and max_tokens must be positive")
        return problems

    def validate(self) -> None:
        check_dataclass(self, "teacher")


# In this SDK-free module so that logging a run config (train.py, W&B) never imports openai/anthropic.
def public_config(cfg: TeacherConfig | DictConfig | dict) -> dict:
    """The teacher config with every API key replaced by ``"***"`` (or None when unset): safe to save."""
    data = dataclasses.asdict(TeacherConfig.from_cfg(cfg))
    for name in CLOUD_KEYS:
        data[name]["api_key"] = "***" if data[name]["api_key"] else None
    return data


def public_run_config(cfg: DictConfig) -> dict:
    """The whole run config, resolved, with ``teacher`` in its ``public_config`` form: for W&B and cards."""
    cfg = cfg.copy()
    if "teacher" in cfg:
        # Swap the redacted teacher in *before* resolving, so the key is never even read.
        with open_dict(cfg):
            cfg.teacher = public_config(cfg.teacher)
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    return data
