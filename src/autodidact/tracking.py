"""Experiment tracking: the Lightning logger a run uses, and what it records beyond metrics.

    logger=wandb (default, offline)  WandbLogger: run config = the resolved Hydra config without secrets;
                                     in a multirun, group = the sweep dir, name = the job's overrides;
                                     cards as artifacts (type "skill-card"), results as wandb.Table
    logger=csv                       CSVLogger: <run dir>/csv/metrics.csv, tables as <key>.csv beside it
    logger=none                      nothing

Every helper takes whatever logger the run has (or None) and does nothing where a logger cannot hold
the thing, so the loop calls them without asking which logger it was given.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from autodidact.config import where_to_fix
from autodidact.errors import ConfigError

log = logging.getLogger(__name__)
CARD_ARTIFACT_TYPE = "skill-card"


def _is_wandb(logger) -> bool:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - lightning is a dependency
        return False
    return isinstance(logger, WandbLogger)


def _is_csv(logger) -> bool:
    from lightning.pytorch.loggers import CSVLogger

    return isinstance(logger, CSVLogger)


# -- building the logger ----------------------------------------------------------------------------
def run_config(cfg: DictConfig) -> dict:
    """The run's config, resolved, teacher keys redacted; the logger's own section left out."""
    from autodidact.teachers import public_run_config

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("logger", None)  # where W&B writes is not part of the experiment (and names the run dir)
    return public_run_config(cfg)


def sweep_identity() -> tuple[str | None, str | None]:
    """(group, job name) in a Hydra multirun: the sweep dir's last two parts, the job's overrides."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None, None
    group = "/".join(Path(hc.sweep.dir).parts[-2:])[-128:]
    name = f"{hc.job.num}:{hc.job.override_dirname or 'default'}"[:128]
    return group, name


def instantiate_logger(cfg: DictConfig):
    """Build ``cfg.logger`` with ``hydra.utils.instantiate``; a W&B logger also gets config and group.

    The extra W&B arguments are passed at call time (``_partial_``), not merged into the OmegaConf
    node, so a string in the config such as a query holding ``${`` is never re-read as interpolation.
    """
    import hydra

    if cfg.get("logger") is None:
        return None
    target = str(cfg.logger.get("_target_", ""))
    try:
        # The W&B and CSV loggers' arguments were checked before anything loaded (settings.py); a
        # logger class of the user's own is checked here, by building it.
        factory = hydra.utils.instantiate(cfg.logger, _partial_=True)
        if not target.endswith("WandbLogger"):
            return factory()
    except Exception as exc:  # noqa: BLE001 - Hydra wraps whatever the class raised
        raise ConfigError(f"invalid logger config:\n  - logger: {target or 'no _target_'} could not be built: "
                          f"{exc}\n{where_to_fix(['logger'])}") from None
    import wandb

    extra: dict[str, Any] = {"config": run_config(cfg)}
    group, name = sweep_identity()
    if group and not cfg.logger.get("group"):
        extra["group"] = group
    if name and not cfg.logger.get("name"):
        extra["name"] = name
    # W&B reads WANDB_SILENT in setup(); init() validates its settings first and would print a
    # deprecation notice for Lightning's anonymous=None before the silence takes effect.
    wandb.setup()
    return factory(**extra)


def finish(logger, status: str = "success") -> None:
    """Finalize ``logger``; a W&B run is also closed, so the next job of a multirun starts its own."""
    if logger is None:
        return
    logger.finalize(status)
    if _is_wandb(logger) and getattr(logger, "_experiment", None) is not None:
        logger.experiment.finish()


# -- what a run records beyond metrics -------------------------------------------------------------
def _artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:128] or "card"


def log_card_artifact(logger, path: str | os.PathLike, name: str | None = None):
    """Log the card at ``path`` as a W&B artifact (type ``skill-card``); no-op for other loggers.

    The artifact's metadata carries the card's skill, base model, LoRA settings, training figures
    and verification, so the W&B UI can filter cards without downloading them. Returns the artifact.
    """
    if not _is_wandb(logger):
        return None
    import wandb

    from autodidact.card import read_card

    path = Path(path)
    card = read_card(path)
    keep = ("skill", "base_model", "lora", "train", "verify", "teacher", "created_at", "format_version")
    meta = {k: card.meta[k] for k in keep if k in card.meta}
    artifact = wandb.Artifact(_artifact_name(name or card.skill), type=CARD_ARTIFACT_TYPE, metadata=meta,
                              description=f"autodidact skill card {path.name}")
    artifact.add_file(str(path), name=path.name)
    logger.experiment.log_artifact(artifact)
    return artifact


def _cell(v: Any) -> Any:
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return json.dumps(v, ensure_ascii=False, default=str)


def log_table(logger, key: str, rows: list[dict]) -> None:
    """Log ``rows`` (dicts; columns = every key, first-seen order) as a ``wandb.Table`` under ``key``.

    Nested values become JSON text. A CSV logger gets ``<log dir>/<key>.csv`` instead; others nothing.
    """
    if not rows or not (_is_wandb(logger) or _is_csv(logger)):
        return
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    data = [[_cell(row.get(c)) for c in columns] for row in rows]
    if _is_wandb(logger):
        logger.log_table(key=key, columns=columns, data=data)
        return
    out = Path(logger.log_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(data)
