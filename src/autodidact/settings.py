"""Every section of the run config as a small typed dataclass, and ``check_evolve_config``.

Each class has a default and a docstring per field, and ``problems()`` for what types cannot say
(ranges, consistency), one line each naming ``section.key``. ``config.check_sections`` builds them all
and reports every problem of every section in one error.

This module must stay light (no torch, transformers, lightning, SDKs): ``evolve.py`` runs
``check_evolve_config`` before it imports any of those, so ``model=nonsense`` or a typo fails in
about a second instead of after ~11 s of imports. The modules that use a class re-export it
(``lora_trainer.LoRAConfig``, ``skill_factory.FactoryConfig``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autodidact import trainer_args
from autodidact.config import check_sections, config_error
from autodidact.inference.router_config import RouterConfig
from autodidact.learning_queue import QueuePolicy
from autodidact.serve.config import ServerConfig
from autodidact.teachers.settings import TeacherConfig

MODEL_KINDS = ("smollm2", "tiny", "hf")


@dataclass
class ModelConfig:
    """The base model (Hydra group ``model``)."""

    kind: str = "smollm2"
    """smollm2 (the shipped wheel), tiny (a random 2-layer Llama for tests) or hf (a local folder)."""
    name: str | None = None
    """Display name (the served model id); null: the kind."""
    path: str | None = None
    """model=hf: a local transformers causal-LM folder."""
    cache_dir: str | None = None
    """Where SmolLM2 is converted to once; null: the user cache dir (AUTODIDACT_CACHE_DIR overrides)."""
    seed: int = 0
    """Seed of the tiny model's random weights."""
    threads: int | None = None
    """Torch threads; null: one per CPU in this process's affinity mask."""
    max_new_tokens: int = 48
    """Answer length cap, in tokens."""

    def problems(self) -> list[str]:
        p = []
        if self.kind not in MODEL_KINDS:
            p.append(f"model.kind={self.kind!r} must be one of {', '.join(MODEL_KINDS)} (model=smollm2|tiny|hf)")
        if self.kind == "hf" and not self.path:
            p.append("model=hf needs model.path=DIR, a local transformers causal-LM folder")
        if self.threads is not None and self.threads < 1:
            p.append(f"model.threads={self.threads} must be >= 1, or null for one per CPU")
        if self.max_new_tokens < 1:
            p.append(f"model.max_new_tokens={self.max_new_tokens} must be >= 1")
        return p


@dataclass
class LoRAConfig:
    """Shape of the adapter (Hydra group ``lora``)."""

    r: int = 8
    """Rank of the update B·A."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input; 0 keeps the learned-check exact and training deterministic."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"])
    """Leaf names of the nn.Linear layers that get an adapter (PEFT's target_modules)."""
    top_layers: int | None = 4
    """Adapters only on the top N decoder layers (a shorter backward, and the frozen layers below run
    once per example); null: every layer."""
    layers_to_transform: list[int] | None = None
    """Decoder layer indices that get adapters (PEFT's layers_to_transform); overrides top_layers."""

    def problems(self) -> list[str]:
        p = []
        if self.layers_to_transform is not None and (
            not self.layers_to_transform or any(i < 0 for i in self.layers_to_transform)
        ):
            p.append(f"lora.layers_to_transform must be null or a non-empty list of layer indices >= 0 "
                     f"(got {self.layers_to_transform})")
        if self.top_layers is not None and self.top_layers < 1:
            p.append(f"lora.top_layers must be null or >= 1 (got {self.top_layers})")
        if self.r < 1:
            p.append(f"lora.r must be >= 1 (got {self.r})")
        if self.alpha <= 0:
            p.append(f"lora.alpha must be > 0 (got {self.alpha})")
        if not 0 <= self.dropout < 1:
            p.append(f"lora.dropout must be in [0, 1) (got {self.dropout})")
        if not self.target_modules:
            p.append("lora.target_modules must name at least one layer, e.g. [q_proj, v_proj]")
        return p


@dataclass
class TrainConfig:
    """How to train one skill: the project's half of the Hydra group ``trainer``.

    The group's files are ``lightning.Trainer`` configs (``_target_``, ``max_steps``, ``precision``,
    ``strategy``, ``devices``...) with these settings beside them; every key that is not a field here is
    a Trainer argument and lands in ``lightning`` (``arrange``), checked by ``trainer_args.problems``.
    """

    lr: float = 1e-2
    """AdamW learning rate for the LoRA parameters (tuned: see conf/trainer/cpu.yaml)."""
    weight_decay: float = 0.0
    """AdamW weight decay (on LoRA parameters only)."""
    lr_b_ratio: float = 1.0
    """Learning rate of the ``lora_B`` matrices as a multiple of ``lr`` (LoRA+, Hayou et al. 2024: B
    learns faster than A at the same step size when it is larger); 1 = one rate for both."""
    warmup_steps: int = 0
    """Steps over which the learning rate rises linearly to ``lr`` (0: from the first step)."""
    decay_steps: int = 0
    """After warmup, steps over which the learning rate falls to ``lr * min_lr_ratio`` along a half
    cosine, then stays there until training stops (0: constant ``lr``). Training has no fixed length
    (it stops once the skill is learned), so the floor is kept rather than decaying to zero."""
    min_lr_ratio: float = 0.1
    """The floor of the decay, as a multiple of ``lr``."""
    batch_size: int = 4
    """Examples per optimizer step (per process under ddp: the global batch is this times the devices)."""
    stop_when_learned: bool = True
    """Stop once greedy decoding reproduces every training answer (the SkillLearnedStop callback)."""
    stop_mid_epoch: bool = False
    """Judge "reproduced" per example as soon as each was last seen, not per whole epoch. Off: on the
    shipped example set it stopped at 33 steps instead of 36 and answered 3/4 held-out rephrasings
    instead of 4/4 (experiments/bench_peft.py), so it saves little and can cost accuracy."""
    loss_floor: float = 0.0
    """Also stop once an epoch's mean loss is below this (0 disables)."""
    max_length: int = 256
    """Truncate examples to this many tokens."""
    mask_prompt: bool = True
    """Compute the loss on answer tokens only."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to cut memory (slower)."""
    cache_frozen_layers: bool = True
    """Run the frozen layers below the lowest adapter once per example instead of every step."""
    seed: int = 0
    """Seed for adapter init and batch order."""
    progress_bar: bool = True
    """Show a progress bar (on stderr: evolve.py's stdout carries its JSON result lines)."""
    lightning: dict[str, Any] = field(default_factory=dict)
    """The lightning.Trainer arguments: the group's other keys, over ``trainer_args.DEFAULTS``."""

    @classmethod
    def arrange(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A flat ``trainer`` section -> this class's fields, the Trainer's keys gathered in ``lightning``."""
        own = {f for f in cls.__dataclass_fields__ if f != "lightning"}
        mine, lightning = trainer_args.split(data, own)
        return {**mine, "lightning": {**(data.get("lightning") or {}), **lightning}} if lightning else mine

    @classmethod
    def of(cls, **flat: Any) -> TrainConfig:
        """Built in code the way the YAML reads: ``TrainConfig.of(lr=1e-2, max_steps=120, precision="32-true")``."""
        return cls(**cls.arrange(flat))

    @property
    def trainer_args(self) -> dict[str, Any]:
        """Everything ``hydra.utils.instantiate`` gets for the Trainer, defaults included."""
        return {**trainer_args.DEFAULTS, **self.lightning}

    @property
    def max_steps(self) -> int:
        return self.trainer_args["max_steps"]

    def problems(self) -> list[str]:
        p = []
        if not self.lr > 0:
            p.append(f"trainer.lr must be > 0 (got {self.lr})")
        if not self.lr_b_ratio > 0:
            p.append(f"trainer.lr_b_ratio must be > 0 (got {self.lr_b_ratio}); 1 trains A and B at one rate")
        for name in ("warmup_steps", "decay_steps"):
            if getattr(self, name) < 0:
                p.append(f"trainer.{name} must be >= 0 (got {getattr(self, name)})")
        if not 0 < self.min_lr_ratio <= 1:
            p.append(f"trainer.min_lr_ratio must be in (0, 1] (got {self.min_lr_ratio})")
        if self.batch_size < 1:
            p.append(f"trainer.batch_size must be >= 1 (got {self.batch_size})")
        if self.max_length < 8:
            p.append(f"trainer.max_length must be >= 8 (got {self.max_length})")
        own = [f for f in self.__dataclass_fields__ if f != "lightning"]
        return p + trainer_args.problems(self.lightning, own)


@dataclass
class FactoryConfig:
    """How the factory verifies and retries (config key ``factory``)."""

    verify_rounds: int = 2
    """Training rounds before a skill that fails verification is dead-lettered."""
    min_heldout_fraction: float = 0.5
    """Share of held-out paraphrases that must be answered correctly (the original question always must)."""
    retrain_step_factor: float = 2.0
    """Each extra round trains at least this many times the previous round's steps."""
    lease_s: float = 60.0
    """Lease on a claimed job, renewed by a heartbeat while the job is worked: a worker on another host
    takes the job over this long after its holder stopped beating (on the same host, at once)."""
    max_new_tokens: int = 48
    """Generation budget when verifying answers."""
    card_dtype: str = "float16"
    """Storage dtype of exported cards."""
    warm_start_joins: bool = True
    """A skill that a new fact joins retrains starting from its card's adapter, not from LoRA's
    initialisation (measured with ``experiments/sweep_lr.py --join --warm 0 1`` on the dev pack)."""

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
class ManagerConfig:
    """Config key ``manager``."""

    max_loaded: int = 8
    """Adapters kept attached to the model at once (least recently used detached first)."""

    def problems(self) -> list[str]:
        return [] if self.max_loaded >= 1 else [f"manager.max_loaded must be >= 1 (got {self.max_loaded})"]


@dataclass
class WandbLoggerConfig:
    """``logger=wandb``: Lightning's WandbLogger; the keys W&B's own ``wandb.init`` takes pass through."""

    project: str | None = "autodidact"
    """W&B project."""
    offline: bool = True
    """Log to <run dir>/wandb only; ``wandb sync`` uploads later. false needs WANDB_API_KEY."""
    save_dir: str = "."
    """Where the run is written (the Hydra run dir)."""
    name: str | None = None
    """Run name; null: the job's overrides in a multirun, else W&B's own."""
    log_model: bool | str = False
    """Lightning checkpoints as W&B artifacts (cards are logged separately)."""
    version: str | None = None
    id: str | None = None
    dir: str | None = None
    prefix: str = ""
    anonymous: bool | None = None
    checkpoint_name: str | None = None
    entity: str | None = None
    group: str | None = None
    """Run group; null: the sweep, in a multirun."""
    job_type: str | None = None
    tags: list[str] | None = None
    notes: str | None = None
    mode: str | None = None
    resume: bool | str | None = None
    save_code: bool | None = None
    settings: Any = None


@dataclass
class CSVLoggerConfig:
    """``logger=csv``: Lightning's CSVLogger, the no-W&B alternative."""

    save_dir: str = "."
    """Folder of the ``name`` folder (the Hydra run dir)."""
    name: str | None = "csv"
    version: int | str | None = None
    prefix: str = ""
    flush_logs_every_n_steps: int = 100
    """Rows buffered before metrics.csv is written."""

    def problems(self) -> list[str]:
        n = self.flush_logs_every_n_steps
        return [] if n >= 1 else [f"logger.flush_logs_every_n_steps={n} must be >= 1"]


LOGGERS = {"WandbLogger": WandbLoggerConfig, "CSVLogger": CSVLoggerConfig}
"""Logger classes (by ``_target_``'s last part) whose arguments are checked before anything loads;
another ``_target_`` is the user's own class, checked when it is built (``tracking``)."""


def logger_config_class(node: Any) -> type | None:
    """The dataclass that checks a ``logger`` section, or None (no logger, or an unknown class)."""
    if node is None:
        return None
    return LOGGERS.get(str(node.get("_target_") or "").rsplit(".", 1)[-1])


@dataclass
class EvolveConfig:
    """``evolve.py``'s own top-level keys (conf/config.yaml)."""

    stage: str = "loop"
    """loop: the whole learning loop; distill: only ask the teacher; serve: the endpoint."""
    query: str | None = None
    """One question to answer (learning it first if needed)."""
    queries: str | None = None
    """A file with one question per line."""
    seed: int = 0
    """Seed for everything random in the run."""
    verbose: bool = False
    """Third-party banners and warnings on the console too (always in the run's log file)."""
    learn: bool = True
    """false: route and answer only, never queue a learning event."""
    skills_dir: str | None = None
    """Cards and the learning queue; null: $AUTODIDACT_SKILLS_DIR, else the user data dir."""


EVOLVE_SECTIONS: dict[str, type] = {
    "model": ModelConfig, "lora": LoRAConfig, "trainer": TrainConfig, "teacher": TeacherConfig,
    "router": RouterConfig, "factory": FactoryConfig, "manager": ManagerConfig, "queue": QueuePolicy,
    "server": ServerConfig,
}
PASSTHROUGH = ("data", "logger")
"""Top-level sections not checked as one of the above: ``data`` is train.py's (evolve.py reads none of
it), ``logger`` is checked by the class its ``_target_`` names (``logger_config_class``)."""


@dataclass
class EvolveSettings:
    """Every section of an evolve.py config, checked."""

    run: EvolveConfig
    model: ModelConfig
    lora: LoRAConfig
    trainer: TrainConfig
    teacher: TeacherConfig
    router: RouterConfig
    factory: FactoryConfig
    manager: ManagerConfig
    queue: QueuePolicy
    server: ServerConfig
    logger: Any
    """WandbLoggerConfig, CSVLoggerConfig, None (logger=none) or the raw node of another class."""


def check_evolve_config(cfg: Any) -> EvolveSettings:
    """Check every section of ``cfg`` (evolve.py's composed config); one ConfigError lists every problem.

    Imports nothing heavy, so it runs before torch/transformers/lightning load.
    """
    sections = dict(EVOLVE_SECTIONS)
    logger_cls = logger_config_class(cfg.get("logger"))
    if logger_cls is not None:
        sections["logger"] = logger_cls
    built = check_sections(cfg, sections, top=EvolveConfig, passthrough=PASSTHROUGH)
    if problem := one_process_problem(built["trainer"]):
        raise config_error([problem], ["trainer"])
    logger = built.pop("logger", None) if logger_cls is not None else cfg.get("logger")
    return EvolveSettings(run=built.pop(""), logger=logger, **built)


def one_process_problem(train: TrainConfig) -> str | None:
    """evolve.py trains inside its running loop: Lightning's ddp launcher would start the whole loop
    again in every extra process (routing, the teacher, the queue), so it trains in one process."""
    args = train.trainer_args
    devices = args.get("devices", 1)
    if (devices in (1, "1") or isinstance(devices, list) and len(devices) == 1) and args.get("num_nodes", 1) == 1:
        return None
    return (f"trainer.devices={devices!r}: evolve.py trains "
            "each skill in one process (a second one would run the whole loop again); use trainer=cpu|gpu here, "
            "and trainer=ddp|fsdp with train.py")


# -- train.py ------------------------------------------------------------------------------------------
CARD_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class DataConfig:
    """Training pairs (Hydra group ``data``, train.py)."""

    path: str | None = None
    """QA pairs, JSONL ({"question", "answer"} per line) or Arrow; null: the shipped example set."""
    val_fraction: float = 0.0
    """Share of the pairs held out as a validation set."""

    def problems(self) -> list[str]:
        ok = 0.0 <= self.val_fraction < 1.0
        return [] if ok else [f"data.val_fraction={self.val_fraction} must be in [0, 1)"]


@dataclass
class CardConfig:
    """Where and how train.py writes the card (key ``card``)."""

    path: str | None = None
    """Card file; null: <run dir>/<skill>.lora.arrow."""
    dtype: str = "float16"
    """Storage dtype of the adapter tensors."""

    def problems(self) -> list[str]:
        ok = self.dtype in CARD_DTYPES
        return [] if ok else [f"card.dtype={self.dtype!r} must be one of {', '.join(CARD_DTYPES)}"]


@dataclass
class TrainScriptConfig:
    """``train.py``'s own top-level keys (conf/train.yaml)."""

    skill: str | None = None
    """Skill name recorded in the card; null: the data file's stem."""
    seed: int = 0
    """Seed for everything random in the run."""
    verbose: bool = False
    """Third-party banners and warnings on the console too."""
    card: CardConfig = field(default_factory=CardConfig)
    """The card to write."""


@dataclass
class TrainSettings:
    """Every section of a train.py config, checked."""

    run: TrainScriptConfig
    model: ModelConfig
    lora: LoRAConfig
    trainer: TrainConfig
    data: DataConfig
    logger: Any


def check_train_config(cfg: Any) -> TrainSettings:
    """Check every section of train.py's composed config; one ConfigError lists every problem."""
    sections: dict[str, type] = {"model": ModelConfig, "lora": LoRAConfig, "trainer": TrainConfig, "data": DataConfig}
    logger_cls = logger_config_class(cfg.get("logger"))
    if logger_cls is not None:
        sections["logger"] = logger_cls
    built = check_sections(cfg, sections, top=TrainScriptConfig, passthrough=("logger",), top_file="conf/train.yaml")
    logger = built.pop("logger", None) if logger_cls is not None else cfg.get("logger")
    return TrainSettings(run=built.pop(""), logger=logger, **built)
