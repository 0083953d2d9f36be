"""Teachers: cloud providers with failover, the offline demo pack, replay, and the distiller.

A caller (``skill_factory.py``, ``evolve.py stage=distill``) needs only::

    teacher = build_teacher(cfg.teacher, run_dir / TRANSCRIPT_NAME)
    result = CloudDistiller(teacher, TeacherConfig.from_cfg(cfg.teacher).distill).distill(question)
    result.pairs, result.reference, result.heldout
"""

from autodidact.teachers.config import (
    ProviderSettings,
    TeacherConfig,
    build_distiller,
    build_teacher,
    public_config,
    public_run_config,
)
from autodidact.teachers.distiller import CloudDistiller, DistillConfig, DistillResult, QAPair
from autodidact.teachers.errors import (
    AllProvidersFailed,
    AuthFailed,
    BadReply,
    OutOfPack,
    RateLimited,
    Rejected,
    ReplayMiss,
    TeacherError,
    TeacherTimeout,
    Unavailable,
)
from autodidact.teachers.failover import FailoverChain, FailoverPolicy
from autodidact.teachers.offline import OfflineProvider, load_pack
from autodidact.teachers.providers import AnthropicProvider, Completion, OpenAIProvider, Provider
from autodidact.teachers.replay import ReplayProvider
from autodidact.teachers.transcript import TRANSCRIPT_NAME, Transcript

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
