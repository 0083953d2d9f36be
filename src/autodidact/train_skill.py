"""``train.py``'s work as a plain function: QA pairs -> trained adapter -> ``.lora.arrow`` card."""

from __future__ import annotations

import importlib.resources
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from autodidact.config import to_dataclass
from autodidact.data import load_pairs
from autodidact.lora_trainer import LoRATrainer, TrainResult
from autodidact.models import ModelBundle, configure_threads, load_model
from autodidact.settings import ModelConfig, check_train_config

log = logging.getLogger(__name__)


def example_data_path() -> Path:
    """The shipped example set: 22 QA pairs about a fictional lighthouse no model can know."""
    return Path(str(importlib.resources.files("autodidact") / "resources" / "example_qa.jsonl"))


def load_bundle(model: ModelConfig | DictConfig) -> ModelBundle:
    """The base model of a ``model`` section (checked first when it is a raw config node)."""
    if not isinstance(model, ModelConfig):
        model = to_dataclass(ModelConfig, model, "model")
    configure_threads(model.threads)
    return load_model(model.kind, path=model.path, seed=model.seed, cache_dir=model.cache_dir)


def build_logger(cfg: DictConfig):
    """Instantiate ``cfg.logger``: W&B (offline by default; gets the secret-free config and, in a
    multirun, the sweep as its group), ``logger=csv``, or None for ``logger=none``."""
    from autodidact.tracking import instantiate_logger

    return instantiate_logger(cfg)


def start_logger(logger) -> threading.Thread | None:
    """Create the logger's run (``logger.experiment``) in a background thread; join it before training.

    W&B's offline start-up was measured at ~5 s of a ~30 s tiny-model train.py on this machine, most
    of it waiting for its service process, which the model load can fill. If it fails here it is
    simply retried, and raised, on the main thread when Lightning first uses the logger.
    """
    # Look on the class: ``hasattr(logger, "experiment")`` would run the property, i.e. start the run
    # here on the main thread, which is what this function exists to avoid.
    if logger is None or not hasattr(type(logger), "experiment"):
        return None

    def touch() -> None:
        try:
            logger.experiment  # noqa: B018 - the property creates the run
        except Exception:  # noqa: BLE001 - Lightning's own access will raise it where it can be handled
            log.debug("logger start-up in the background failed; retried on first use", exc_info=True)

    t = threading.Thread(target=touch, name="logger-start", daemon=True)
    t.start()
    return t


@dataclass
class TrainSummary:
    skill: str
    card: Path
    card_bytes: int
    result: TrainResult

    def lines(self) -> list[str]:
        r = self.result
        return [
            f"skill       {self.skill}",
            f"loss        {r.loss_initial:.4f} -> {r.loss_final:.4f}",
            f"steps       {r.steps} ({r.epochs} epochs), learned={r.learned} (exact match {r.exact_match:.2f})",
            f"seconds     {r.seconds:.1f}",
            f"card        {self.card} ({self.card_bytes / 1024:.0f} KiB)",
        ]


def train(cfg: DictConfig, run_dir: Path) -> TrainSummary | None:
    s = check_train_config(cfg)
    data_path = Path(s.data.path) if s.data.path else example_data_path()
    pairs = load_pairs(data_path)
    skill = s.run.skill or ("velmora_lighthouse" if not s.data.path else data_path.name.split(".")[0])
    card_path = Path(s.run.card.path) if s.run.card.path else run_dir / f"{skill}.lora.arrow"
    logger = build_logger(cfg)
    starting = start_logger(logger)  # W&B's start-up (it spawns a service process) overlaps the model load
    bundle = load_bundle(s.model)
    if starting is not None:
        starting.join()
    trainer = LoRATrainer(bundle, s.lora, s.trainer, logger=logger)
    n_val = int(round(len(pairs) * s.data.val_fraction))
    val, train_pairs = pairs[:n_val], pairs[n_val:]
    # This process exports the card and stops: the frozen lower layers' weights can go once cached.
    result = trainer.fit(train_pairs, adapter=skill, val_pairs=val, release_frozen=True)
    if not trainer.is_global_zero:
        return None  # another process of a ddp run: the first one writes the card and the summary
    path = trainer.export(card_path, adapter=skill, skill=skill, result=result, dtype=s.run.card.dtype)
    if logger is not None:
        logger.log_metrics({"card/bytes": path.stat().st_size, "train/seconds": result.seconds})
        logger.finalize("success")
    return TrainSummary(skill=skill, card=path, card_bytes=path.stat().st_size, result=result)
