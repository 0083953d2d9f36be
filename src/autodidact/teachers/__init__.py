"""Teachers: cloud providers with failover, the offline demo pack, replay, and the distiller.

A caller (``skill_factory.py``, ``evolve.py stage=distill``) needs only::

    teacher = build_teacher(cfg.teacher, run_dir / TRANSCRIPT_NAME)
    result = CloudDistiller(teacher, TeacherConfig.from_cfg(cfg.teacher).distill).distill(question)
    result.pairs, result.reference, result.heldout
"""

import importlib

# Loaded on first use (PEP 562), not here: the settings must be importable without the SDKs and torch
# that the providers and the distiller pull in, so evolve.py can check its config before those load.
_WHERE = {
    "build_distiller": "config",
    "build_teacher": "config",
    "public_config": "settings",
    "public_run_config": "settings",
    "DistillConfig": "settings",
    "FailoverPolicy": "settings",
    "ProviderSettings": "settings",
    "TeacherConfig": "settings",
    "CloudDistiller": "distiller",
    "DistillResult": "distiller",
    "QAPair": "distiller",
    "AllProvidersFailed": "errors",
    "AuthFailed": "errors",
    "BadReply": "errors",
    "OutOfPack": "errors",
    "RateLimited": "errors",
    "Rejected": "errors",
    "ReplayMiss": "errors",
    "TeacherError": "errors",
    "TeacherTimeout": "errors",
    "Unavailable": "errors",
    "FailoverChain": "failover",
    "OfflineProvider": "offline",
    "load_pack": "offline",
    "AnthropicProvider": "providers",
    "Completion": "providers",
    "OpenAIProvider": "providers",
    "Provider": "providers",
    "ReplayProvider": "replay",
    "TRANSCRIPT_NAME": "transcript",
    "Transcript": "transcript",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # once found, an ordinary module attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "AllProvidersFailed",
    "AnthropicProvider",
    "AuthFailed",
    "BadReply",
    "CloudDistiller",
    "Completion",
    "DistillConfig",
    "DistillResult",
    "FailoverChain",
    "FailoverPolicy",
    "OfflineProvider",
    "OpenAIProvider",
    "OutOfPack",
    "Provider",
    "ProviderSettings",
    "QAPair",
    "RateLimited",
    "Rejected",
    "ReplayMiss",
    "ReplayProvider",
    "TRANSCRIPT_NAME",
    "TeacherConfig",
    "TeacherError",
    "TeacherTimeout",
    "Transcript",
    "Unavailable",
    "build_distiller",
    "build_teacher",
    "load_pack",
    "public_config",
    "public_run_config",
]
