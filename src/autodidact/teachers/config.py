"""``build_teacher``, which wires the chain from the typed ``teacher`` settings (``settings.py``).

``teacher.kind`` picks the chain: ``openai``, ``anthropic``, ``failover`` (``teacher.chain`` in order),
``offline`` (the demo pack), ``replay`` (``teacher.path``), or ``auto``: the failover chain over the
providers that have a key, and the offline demo pack when none has one.
Keys come from the environment (``${oc.env:OPENAI_API_KEY,null}``) and never leave the SDK clients:
``public_config`` is the form to log, save or send to W&B.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig

from autodidact.errors import ConfigError
from autodidact.teachers.distiller import CloudDistiller
from autodidact.teachers.errors import register_secrets
from autodidact.teachers.failover import FailoverChain, FailoverPolicy
from autodidact.teachers.offline import OFFLINE_LABEL, OfflineProvider
from autodidact.teachers.providers import AnthropicProvider, OpenAIProvider
from autodidact.teachers.replay import ReplayProvider
from autodidact.teachers.settings import (  # noqa: F401 - re-exported
    KINDS,
    ProviderSettings,
    TeacherConfig,
    public_config,
    public_run_config,
)
from autodidact.teachers.transcript import Transcript

log = logging.getLogger(__name__)

CLOUD = {"openai": (OpenAIProvider, "OPENAI_API_KEY"), "anthropic": (AnthropicProvider, "ANTHROPIC_API_KEY")}


def secrets_of(cfg: TeacherConfig) -> list[str]:
    """Every secret the teacher config holds, for scrubbing."""
    return [s.api_key for s in (cfg.openai, cfg.anthropic) if s.api_key]


def _cloud(name: str, s: ProviderSettings):
    provider_cls, _ = CLOUD[name]
    return provider_cls(api_key=s.api_key, base_url=s.base_url, model=s.model, timeout=s.timeout,
                        max_tokens=s.max_tokens, structured_output=s.structured_output)


def build_teacher(
    cfg: TeacherConfig | DictConfig | dict,
    transcript_path: str | os.PathLike | None = None,
    **chain_kwargs: Any,
) -> FailoverChain:
    """The teacher chain for ``cfg.teacher``; every exchange is appended to ``transcript_path``.

    ``chain_kwargs`` (``sleep``, ``clock``, ``rng``) exist for tests.
    """
    tc = TeacherConfig.from_cfg(cfg)
    register_secrets(*secrets_of(tc))  # every key in the config, used by this chain or not
    transcript = Transcript(transcript_path, secrets_of(tc)) if transcript_path is not None else None
    kind = tc.kind
    if kind == "offline":
        return _offline(tc, transcript, "teacher=offline", chain_kwargs)
    if kind == "replay":
        # Replay serves every recorded reply without waiting: no backoff, no deadline worth having.
        policy = FailoverPolicy(max_attempts=1000, backoff_base_s=0, backoff_max_s=0, jitter=0,
                                cooldown_s=0, deadline_s=tc.policy.deadline_s)
        chain = FailoverChain([ReplayProvider(tc.path)], policy, transcript, **chain_kwargs)
        log.info("teacher: %s", chain.describe())
        return chain
    names = [kind] if kind in CLOUD else list(tc.chain)
    keyed = [n for n in names if getattr(tc, n).api_key]
    missing = [CLOUD[n][1] for n in names if n not in keyed]
    if not keyed:
        if kind == "auto":
            return _offline(tc, transcript, f"no {' or '.join(missing)} set", chain_kwargs)
        raise ConfigError(
            f"teacher={kind} needs {' or '.join(missing)} in the environment; set it, or use "
            "teacher=offline for the demo facts"
        )
    if missing:
        log.warning("teacher: skipping %s (no %s set)", ", ".join(n for n in names if n not in keyed),
                    " / ".join(missing))
    chain = FailoverChain([_cloud(n, getattr(tc, n)) for n in keyed], tc.policy, transcript, **chain_kwargs)
    log.info("teacher: %s", chain.describe())
    return chain


def _offline(tc: TeacherConfig, transcript: Transcript | None, why: str, chain_kwargs: dict) -> FailoverChain:
    chain = FailoverChain([OfflineProvider(tc.pack)], FailoverPolicy(max_attempts=1), transcript,
                          offline=True, **chain_kwargs)
    log.info("teacher: %s (%s): these are fictional demo facts, not a cloud model", OFFLINE_LABEL, why)
    return chain


def build_distiller(
    cfg: TeacherConfig | DictConfig | dict, transcript_path: str | os.PathLike | None = None, **chain_kwargs: Any
) -> CloudDistiller:
    """``CloudDistiller`` over ``build_teacher(cfg, transcript_path)`` with ``cfg.distill`` settings."""
    tc = TeacherConfig.from_cfg(cfg)
    return CloudDistiller(build_teacher(tc, transcript_path, **chain_kwargs), tc.distill)
