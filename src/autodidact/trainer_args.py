"""The ``lightning.Trainer`` half of the ``trainer`` config group, checked without importing Lightning.

A ``conf/trainer/*.yaml`` file is a Lightning Trainer config (``_target_: lightning.Trainer``, built
with ``hydra.utils.instantiate``) with the project's own training settings (``TrainConfig``: lr,
batch size, the learned-stop...) beside it. ``split`` separates the two; ``problems`` checks the
Trainer's half against the arguments ``lightning.Trainer.__init__`` takes, so ``trainer.max_step=5``
is refused in a second, with a suggestion, before torch and Lightning load (~10 s).
"""

from __future__ import annotations

import difflib
from typing import Any

TRAINER_TARGETS = ("lightning.Trainer", "lightning.pytorch.Trainer", "lightning.pytorch.trainer.Trainer",
                   "lightning.pytorch.trainer.trainer.Trainer")
TRAINER_ARGS = (
    "accelerator", "strategy", "devices", "num_nodes", "precision", "logger", "callbacks", "fast_dev_run",
    "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches",
    "limit_val_batches", "limit_test_batches", "limit_predict_batches", "overfit_batches",
    "val_check_interval", "check_val_every_n_epoch", "num_sanity_val_steps", "log_every_n_steps",
    "enable_checkpointing", "enable_progress_bar", "enable_model_summary", "accumulate_grad_batches",
    "gradient_clip_val", "gradient_clip_algorithm", "deterministic", "benchmark", "inference_mode",
    "use_distributed_sampler", "profiler", "detect_anomaly", "barebones", "plugins", "sync_batchnorm",
    "reload_dataloaders_every_n_epochs", "default_root_dir", "enable_autolog_hparams", "model_registry",
)
"""``lightning.Trainer.__init__``'s parameters (Lightning 2.6); a test compares them with the real one."""

OWN_ARGS = {
    "callbacks": "the project adds its own (the learned-stop, the fp32 confirmation, the progress bar)",
    "logger": "choose it with the logger group (logger=wandb|csv|none)",
    "enable_progress_bar": "use trainer.progress_bar=true|false",
}
"""Trainer arguments the project passes itself: setting them in the config would be silently lost."""

DEFAULTS: dict[str, Any] = {
    "_target_": "lightning.Trainer",
    "accelerator": "cpu",
    "devices": 1,
    "strategy": "auto",
    "precision": "auto",
    "max_steps": 300,
    "min_steps": None,
    "max_epochs": -1,
    "gradient_clip_val": 1.0,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "log_every_n_steps": 1,
    "num_sanity_val_steps": 0,
}
"""conf/trainer/cpu.yaml's Trainer half: what a ``TrainConfig`` built in code trains with (a test keeps
the two equal). ``max_epochs=-1``: the step budget and the learned-stop end training, not epochs."""

PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64")
"""``auto`` is the project's (``lora_trainer.resolve_precision``); the rest are Lightning's."""


def split(data: dict[str, Any], own: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the project's keys, the Trainer's keys incl. ``_target_``) of one ``trainer`` section."""
    mine = {k: v for k, v in data.items() if k in own}
    lightning = {k: v for k, v in data.items() if k not in own}
    return mine, lightning


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def problems(args: dict[str, Any], own: list[str], where: str = "trainer") -> list[str]:
    """Every problem with the Trainer's half of a section (``args``: its keys, ``_target_`` included)."""
    p: list[str] = []
    target = args.get("_target_", DEFAULTS["_target_"])
    for key in args:
        if key == "_target_":
            continue
        if key in OWN_ARGS:
            p.append(f"{where}.{key} is set by autodidact: {OWN_ARGS[key]}")
        elif target in TRAINER_TARGETS and key not in TRAINER_ARGS:
            # The validator's own wording (config.py), the Trainer's arguments among the known keys.
            known = sorted({*own, *TRAINER_ARGS} - set(OWN_ARGS))
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {where}.{near[0]}?" if near else ""
            p.append(f"{where}.{key} is not a setting (known: {', '.join(known)}: autodidact's own and "
                     f"lightning.Trainer's arguments){hint}")
    merged = {**DEFAULTS, **args}
    steps, min_steps = merged["max_steps"], merged["min_steps"]
    if not _int(steps) or steps < 1:
        p.append(f"{where}.max_steps={steps!r} must be an integer >= 1 (the budget; training usually stops "
                 "sooner, once the skill is learned)")
    if min_steps is not None and (not _int(min_steps) or min_steps < 0):
        p.append(f"{where}.min_steps={min_steps!r} must be null or an integer >= 0")
    if merged["precision"] not in PRECISIONS:
        p.append(f"{where}.precision={merged['precision']!r} must be one of {', '.join(PRECISIONS)}")
    devices = merged["devices"]
    if not (devices == "auto" or (_int(devices) and devices != 0) or isinstance(devices, (list, str))):
        p.append(f"{where}.devices={devices!r} must be a count (-1: all), a list of device ids, or auto")
    clip = merged["gradient_clip_val"]
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0):
        p.append(f"{where}.gradient_clip_val={clip!r} must be null or a number >= 0 (0 or null: no clipping)")
    return p
