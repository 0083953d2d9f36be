"""Real LoRA training: a LightningModule around the frozen base model with LoRALinear injected.

    loss = CrossEntropy(lm_head(h_t), y_{t+1})   over answer tokens only (prompt masked, -100)
    params = {lora_A, lora_B}                    everything else has requires_grad=False
    optimizer = AdamW(params)

Two choices that matter for time-to-skill on a CPU:

* The vocabulary projection (49k x 576 for SmolLM2, a fifth of the model's FLOPs) is applied
  only at positions whose next token is a label, not at every prompt position: the loss is the
  same, the work is not.
* Layers below the lowest adapter are frozen and see the same tokens every epoch: their output
  is computed once per example and cached, and each step runs forward *and* backward only from
  the lowest adapter up (``TrainConfig.cache_frozen_layers``; Llama/Qwen-shaped models).
* Training stops as soon as the skill is learned instead of after a fixed number of epochs
  (``callbacks.SkillLearnedStop``, confirmed in fp32 by ``callbacks.ConfirmLearned``); the Trainer's
  ``max_steps`` is only the budget.

The Trainer itself is the ``trainer`` config group's ``lightning.Trainer`` half, built with
``hydra.utils.instantiate``: ``trainer=ddp trainer.devices=2`` trains in two processes with no code
of ours involved.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar

from autodidact.callbacks import ConfirmLearned, SkillLearnedStop
from autodidact.config import check_dataclass
from autodidact.data import IGNORE, QADataModule, QAPair, collate, encode_pair
from autodidact.errors import ConfigError
from autodidact.inference.lora_layer import (
    delete_adapter,
    find_targets,
    inject_lora,
    lora_layers,
    lora_state_dict,
    mark_only_lora_as_trainable,
    set_adapter,
)
from autodidact.models import (
    ModelBundle,
    decoder_layers,
    drop_resident_pages,
    forward_from_layer,
    hidden_before_layer,
)
from autodidact.settings import LoRAConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one training run did; its numbers go into the card's ``train`` metadata."""

    adapter: str
    loss_initial: float
    """Answer loss before training: the first batch's, measured before the first update."""
    loss_final: float
    steps: int
    epochs: int
    seconds: float
    learned: bool
    exact_match: float
    losses: list[float] = field(default_factory=list)

    def to_meta(self) -> dict:
        d = asdict(self)
        d.pop("losses")
        d.pop("adapter")
        return d


# -- precision -----------------------------------------------------------------------------------
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); Linux /proc/cpuinfo flags."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> the fastest safe Lightning precision for this machine."""
    if precision != "auto":
        return precision
    if uses_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


# -- loss ----------------------------------------------------------------------------------------
def answer_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], start_layer: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy on labelled positions; also per-token and per-example correctness.

    With ``start_layer`` > 0, ``batch["hidden"]`` (B, T, C) holds the activations entering that
    decoder layer and only the layers from there up run. Returns
    ``(loss, token_correct (N,), example_exact (B,))``.
    """
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    target = labels[:, 1:]  # (B, T-1): the token each position must predict
    sel = target != IGNORE  # (B, T-1)
    body = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if start_layer > 0:
        hidden = forward_from_layer(model, batch["hidden"], mask, start_layer)  # (B, T, C)
        logits = head(hidden[:, :-1][sel])  # (N, V)
    elif body is not None and head is not None and body is not model:
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
        logits = head(hidden[:, :-1][sel])  # (N, V): only where a label exists
    else:  # a model we cannot split: project every position, then select
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][sel]
    y = target[sel]
    loss = F.cross_entropy(logits.float(), y)
    with torch.no_grad():
        correct = logits.argmax(-1) == y  # (N,)
        wrong = torch.zeros_like(sel, dtype=torch.long)
        wrong[sel] = (~correct).long()
        exact = (wrong.sum(1) == 0) & sel.any(1)  # (B,)
    return loss, correct, exact


def adapter_layers(model: nn.Module, lora: LoRAConfig) -> list[int] | None:
    """The decoder layer indices ``lora`` puts adapters on; None: every layer."""
    if lora.layers_to_transform is not None:
        return sorted(set(lora.layers_to_transform))
    if lora.top_layers is None:
        return None
    n = len(decoder_layers(model) or []) or len(getattr(getattr(model, "model", None), "layers", None) or [])
    return list(range(max(0, n - lora.top_layers), n)) if n else None


def adapter_targets(model: nn.Module, lora: LoRAConfig) -> list[str]:
    """Qualified names of the linear layers that get an adapter under ``lora``."""
    names = find_targets(model, lora.target_modules)
    layers = adapter_layers(model, lora)
    if layers is None:
        return names
    keep = set(layers)
    picked = [q for q in names if (m := re.search(r"\.layers\.(\d+)\.", q)) and int(m.group(1)) in keep]
    if not picked:
        n = len(decoder_layers(model) or [])
        raise ValueError(f"lora.layers_to_transform={sorted(keep)} selects none of the {n} decoder layers; "
                         f"use indices 0..{n - 1}")
    return picked


def first_adapter_layer(model: nn.Module, targets: list[str]) -> int:
    """Index of the lowest decoder layer holding an adapter, if the model can start there; else 0."""
    layers = decoder_layers(model)
    if layers is None:
        return 0
    prefix = next(n for n, m in model.named_modules() if m is layers) + "."
    found = []
    for q in targets:
        if not q.startswith(prefix):
            return 0  # an adapter outside the decoder stack (embeddings, head): run everything
        found.append(int(q[len(prefix):].split(".", 1)[0]))
    return min(found)


class FrozenPrefixCache:
    """Activations entering decoder layer ``layer``, computed once per distinct example.

    Keyed by the example's token ids, so the data module's training set, the initial and the final
    evaluation share one pass over the frozen layers.
    """

    def __init__(self, model: nn.Module, layer: int, pad_id: int, chunk: int = 16) -> None:
        self.model, self.layer, self.pad_id, self.chunk = model, layer, pad_id, chunk
        self._memo: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, examples: list[dict]) -> None:
        """Attach ``hidden`` (T, C) to every example, computing the ones not seen yet."""
        todo = sorted({tuple(e["input_ids"]) for e in examples} - self._memo.keys(), key=len)
        device = next(self.model.parameters()).device
        for i in range(0, len(todo), self.chunk):  # sorted by length: little padding per chunk
            part = [{"input_ids": list(t), "labels": list(t)} for t in todo[i : i + self.chunk]]
            b = collate(part, self.pad_id)
            h = hidden_before_layer(self.model, b["input_ids"].to(device), b["attention_mask"].to(device),
                                    self.layer).cpu()
            for j, t in enumerate(todo[i : i + self.chunk]):
                self._memo[t] = h[j, : len(t)].clone()
        for e in examples:
            e["hidden"] = self._memo[tuple(e["input_ids"])]


class _Released(nn.Module):
    """Stands in for a decoder layer whose weights were freed after its outputs were cached."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"decoder layer {self.index} was released after caching its outputs "
                           "(LoRATrainer.fit(release_frozen=True)); this model cannot run below it any more")


def release_layers_below(model: nn.Module, layer: int) -> int:
    """Replace decoder layers ``0..layer-1`` with placeholders, freeing their weights; returns bytes freed."""
    layers = decoder_layers(model)
    if layers is None or layer <= 0:
        return 0
    weights = [p.data for i in range(layer) for p in layers[i].parameters()]
    freed = drop_resident_pages(weights)  # before the last reference goes (see drop_resident_pages)
    for i in range(layer):
        layers[i] = _Released(i)
    log.info("released decoder layers 0..%d after caching their outputs (%.0f MB of pages)", layer - 1, freed / 2**20)
    return freed


# -- Lightning -----------------------------------------------------------------------------------
class LoRALightningModule(L.LightningModule):
    """Frozen base + LoRA; AdamW over the ``lora_`` parameters only. When to stop is the callbacks'."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, metric_prefix: str = "", start_layer: int = 0) -> None:
        super().__init__()
        self.model = model
        self.start_layer = start_layer  # batches carry cached activations entering this layer
        self.cfg = cfg
        self.prefix = metric_prefix  # e.g. "skills/<name>/": one loss curve per skill in one W&B run
        # Config only: the network is passed in, never pickled into hparams.
        self.save_hyperparameters({k: v for k, v in asdict(cfg).items()})
        self.losses: list[float] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss, correct, exact = answer_loss(self.model, batch, self.start_layer)
        self.losses.append(loss.item())
        self.log(self.prefix + "train/loss", loss, prog_bar=True, on_step=True, batch_size=len(exact))
        self.log(self.prefix + "train/token_acc", correct.float().mean(), prog_bar=True, on_step=True, batch_size=len(exact))
        return {"loss": loss, "exact": exact.detach()}  # each example's verdict, for SkillLearnedStop

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, correct, exact = answer_loss(self.model, batch, self.start_layer)
        self.log(self.prefix + "val/loss", loss, batch_size=len(exact))
        self.log(self.prefix + "val/exact_match", exact.float().mean(), batch_size=len(exact))

    def configure_optimizers(self):
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and "lora_" in n]
        a = [p for n, p in named if "lora_B" not in n]
        b = [p for n, p in named if "lora_B" in n]
        groups = [{"params": a, "lr": self.cfg.lr}, {"params": b, "lr": self.cfg.lr * self.cfg.lr_b_ratio}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if not (self.cfg.warmup_steps or self.cfg.decay_steps):
            return opt
        factor = functools.partial(lr_factor, warmup=self.cfg.warmup_steps, decay=self.cfg.decay_steps,
                                   floor=self.cfg.min_lr_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def lr_factor(step: int, warmup: int, decay: int, floor: float) -> float:
    """The learning rate at optimizer step ``step`` (0-based) as a multiple of ``lr``: a linear warmup
    over ``warmup`` steps, a half cosine down to ``floor`` over the next ``decay`` steps, then ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    if not decay:
        return 1.0
    t = min(step - warmup, decay) / decay
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


# -- the orchestration the requirements call LoRATrainer -------------------------------------------
def _load_adapter_weights(model: nn.Module, adapter: str, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy ``weights`` (``<layer>.lora_A|lora_B`` -> tensor) into the freshly injected ``adapter``."""
    have = {f"{q}.{kind}": getattr(m, kind)[adapter] for q, m in lora_layers(model).items()
            if adapter in m.lora_A for kind in ("lora_A", "lora_B")}
    if set(weights) != set(have) or any(weights[k].shape != have[k].shape for k in have):
        raise ConfigError(f"the adapter to start from does not match the LoRA config (layers or rank differ: "
                          f"{len(weights)} tensors vs {len(have)} here); train it from scratch")
    with torch.no_grad():
        for k, p in have.items():
            p.copy_(weights[k].to(p.dtype))


class LoRATrainer:
    """Injects a new adapter into a loaded base model, trains it on QA pairs, exports its card."""

    def __init__(self, bundle: ModelBundle, lora: LoRAConfig, train: TrainConfig, logger=None) -> None:
        check_dataclass(lora, "lora")
        check_dataclass(train, "trainer")
        self.bundle = bundle
        self.lora = lora
        self.train_cfg = train
        self.logger = logger
        self.is_global_zero = True  # False in the other processes of a ddp run: they write no card

    @torch.no_grad()
    def evaluate(self, pairs: list[QAPair], _cache: FrozenPrefixCache | None = None) -> tuple[float, float]:
        """(mean answer loss, fraction of answers reproduced greedily) with the active adapter."""
        model, tok, cfg = self.bundle.model, self.bundle.tokenizer, self.train_cfg
        was_training = model.training
        model.eval()
        enc = [encode_pair(tok, p, cfg.max_length, mask_prompt=True) for p in pairs]
        enc.sort(key=lambda e: len(e["input_ids"]))  # similar lengths together: less padding
        start = 0
        if _cache is not None:
            _cache(enc)
            start = _cache.layer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(model.parameters()).device
        total, n, exact = 0.0, 0, 0
        step = max(cfg.batch_size, 16)
        for i in range(0, len(enc), step):
            chunk = enc[i : i + step]
            batch = {k: v.to(device) for k, v in collate(chunk, pad).items()}
            loss, _, ex = answer_loss(model, batch, start)
            total += loss.item() * len(chunk)
            n += len(chunk)
            exact += int(ex.sum())
        model.train(was_training)
        return total / max(1, n), exact / max(1, n)

    def fit(
        self, pairs: list[QAPair], adapter: str, val_pairs: list[QAPair] | None = None, metric_prefix: str = "",
        release_frozen: bool = False, start_from: Mapping[str, torch.Tensor] | None = None,
    ) -> TrainResult:
        """Train a fresh adapter named ``adapter`` on ``pairs``; leaves it injected and active.

        ``release_frozen``: once the frozen layers' outputs are cached, free their weights (about 280 MB
        of SmolLM2's 540). Only for a process that exports the card and stops (``train.py``): the model
        can no longer answer a question afterwards.
        ``start_from``: adapter weights to start from instead of LoRA's initialisation (a card's
        ``tensors``: ``<layer>.lora_A`` / ``<layer>.lora_B``), e.g. the skill a new fact joins. They must
        cover exactly the layers and rank this trainer's LoRA config gives (``ConfigError`` otherwise).
        """
        cfg, model, tok = self.train_cfg, self.bundle.model, self.bundle.tokenizer
        args = cfg.trainer_args
        precision = resolve_precision(str(args["precision"]), str(args["accelerator"]))
        L.seed_everything(cfg.seed, workers=False, verbose=False)
        try:
            targets = adapter_targets(model, self.lora)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        inject_lora(model, targets, self.lora.r, self.lora.alpha, self.lora.dropout, adapter)
        if start_from is not None:
            try:
                _load_adapter_weights(model, adapter, start_from)
            except ConfigError:
                delete_adapter(model, adapter)  # refused: the model is left as it was
                raise
        set_adapter(model, adapter)
        n_trainable = mark_only_lora_as_trainable(model, adapter)
        if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        home = next(model.parameters()).device
        gpu = uses_gpu(str(args["accelerator"])) and torch.cuda.is_available()
        if gpu:
            model.to("cuda")  # before the frozen-layer pass, which then runs where training will
        start = first_adapter_layer(model, targets) if cfg.cache_frozen_layers else 0
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        cache = FrozenPrefixCache(model, start, pad) if start > 0 else None
        log.info("training adapter %r: %d trainable LoRA parameters on %d layers, %d pairs, %s%s", adapter,
                 n_trainable, len(targets), len(pairs), precision,
                 f", frozen layers 0..{start - 1} run once" if start else "")

        dm = QADataModule(
            tok,
            pairs=pairs,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            mask_prompt=cfg.mask_prompt,
            seed=cfg.seed,
            prepare_examples=cache,
        )
        dm.val_pairs = list(val_pairs or [])
        if release_frozen and cache is not None:
            # Every example training and evaluation will see, encoded as the data module encodes it.
            cache([encode_pair(tok, p, cfg.max_length, cfg.mask_prompt) for p in [*pairs, *dm.val_pairs]])
            release_layers_below(model, start)
        module = LoRALightningModule(model, cfg, metric_prefix, start_layer=start)
        # The fp32 check of the weights training ends with; it is also the final evaluation.
        confirm = ConfirmLearned(lambda: self.evaluate(pairs, cache), prefix=metric_prefix)
        stop = SkillLearnedStop(len(pairs), confirm if cfg.stop_when_learned else None, cfg.stop_when_learned,
                                cfg.loss_floor, prefix=metric_prefix, mid_epoch=cfg.stop_mid_epoch)
        callbacks: list = [stop, confirm]
        if cfg.progress_bar:  # to stderr: evolve.py's stdout is reserved for its JSON result lines
            callbacks.append(RichProgressBar(console_kwargs={"stderr": True}))
        # The trainer group is a lightning.Trainer config: built as Hydra builds any _target_. Only
        # what the project owns is passed here (callbacks, logger, the resolved precision, validation
        # on when there is something to validate).
        val = {"check_val_every_n_epoch": 1 if dm.val_pairs else None, "limit_val_batches": 1.0 if dm.val_pairs else 0}
        trainer: L.Trainer = instantiate(
            {**val, **args, "precision": precision},
            callbacks=callbacks,
            logger=self.logger if self.logger is not None else False,
            enable_progress_bar=cfg.progress_bar,
        )
        model.train()  # Lightning keeps the modes it finds; gradient checkpointing only acts in train mode
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        seconds = time.perf_counter() - t0
        self.is_global_zero = trainer.is_global_zero
        if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
            model.gradient_checkpointing_disable()
        model.eval()
        for p in model.parameters():  # serving needs no grads; keeps the adapter frozen until retrained
            p.requires_grad = False
        steps = trainer.global_step
        # No separate pass for the initial loss: the adapter starts as the identity (B = 0), so the
        # first batch's loss, taken before the first update, is the base model's on those examples.
        loss0 = module.losses[0] if module.losses else float("nan")
        # ConfirmLearned.on_train_end evaluated the final weights unless an exception cut training short.
        loss1, exact = confirm.result if confirm.at_step == steps and confirm.result else self.evaluate(pairs, cache)
        model.to(home)
        result = TrainResult(
            adapter=adapter,
            loss_initial=round(loss0, 6),  # the first batch's, before any update (B = 0: the base model)
            loss_final=round(loss1, 6),
            steps=steps,
            epochs=trainer.current_epoch,
            seconds=round(seconds, 3),
            learned=exact >= 1.0,
            exact_match=exact,
            losses=list(module.losses),
        )
        if not math.isfinite(loss1):
            log.warning("training adapter %r diverged (final loss %s); lower trainer.lr", adapter, loss1)
        log.info(
            "adapter %r: loss %.4f -> %.4f in %d steps, %.1f s, exact match %.2f",
            adapter, loss0, loss1, steps, seconds, exact,
        )
        return result

    def export(self, path: str | Path, adapter: str, skill: str, result: TrainResult, extra: dict | None = None,
               dtype: str = "float16") -> Path:
        """Write the adapter as a ``.lora.arrow`` card (atomically)."""
        from autodidact.card import write_card

        meta = {
            "skill": skill,
            "base_model": {"name": self.bundle.name, "fingerprint": self.bundle.fingerprint},
            "lora": {"r": self.lora.r, "alpha": self.lora.alpha, "target_modules": list(self.lora.target_modules)},
            "train": result.to_meta(),
        }
        if extra:
            meta.update(extra)
        return write_card(path, lora_state_dict(self.bundle.model, adapter), meta, dtype=dtype)
