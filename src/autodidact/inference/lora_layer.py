r"""LoRA: a low-rank update beside a frozen linear layer.

    x ──► base_layer (W, frozen) ───────────────────────┐
    │                                                    ▼
    └──► dropout ──► lora_A (r × in) ──► lora_B (out × r) ──► × (alpha / r) ──► (+) ──► y

    y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ

``lora_A`` starts Kaiming-uniform and ``lora_B`` at zero, so a freshly injected adapter is the
identity: the model's outputs do not move until training moves B. Only parameters whose name
contains ``lora_`` are trainable (:func:`mark_only_lora_as_trainable`), which is the whole of the
"frozen base model" guarantee.

Adapters are keyed by name (PEFT's convention) so one base model can hold many skills and switch
between them with :meth:`LoRALinear.set_adapter` without copying a single base weight. The wrapper
keeps the original module as ``base_layer`` — the same object, never a copy — and the module paths
(``...self_attn.q_proj.lora_A.<adapter>``) mirror PEFT's, so a PEFT export is a rename.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from autodidact.errors import AutodidactError


class LoRAError(AutodidactError):
    """An adapter operation was asked for something impossible (unknown adapter, bad merge)."""


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus any number of named low-rank adapters, one active at a time."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.lora_A = nn.ParameterDict()  # name -> (r, in)
        self.lora_B = nn.ParameterDict()  # name -> (out, r)
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.r: dict[str, int] = {}
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []
        self.disabled = False

    # -- adapter bookkeeping -------------------------------------------------------------------
    def add_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0, init: bool = True) -> None:
        """Create adapter ``name`` (identity at init) and make it active.

        ``init=False``: A starts at zero instead of Kaiming-uniform, for weights about to be
        overwritten (a card being attached); the random draw is most of the cost of a hot-load's
        injection.
        """
        if r <= 0:
            raise LoRAError(f"LoRA rank must be positive, got r={r}")
        if name in self.lora_A:
            raise LoRAError(f"adapter {name!r} already exists on this layer; delete it first")
        if not isinstance(name, str) or not name or "." in name or hasattr(self.lora_A, name):
            # ParameterDict keys become attribute names: '', dotted names and its own method names
            # ('copy', 'update', ...) would fail deep inside torch with a KeyError.
            raise LoRAError(f"adapter name {name!r} is not usable; use a non-empty name without dots "
                            "that is not a dict method name (e.g. velmora_lighthouse)")
        w = self.base_layer.weight
        if init:
            a = torch.empty(r, self.in_features, device=w.device, dtype=torch.float32)
            # Same init as nn.Linear / PEFT: Kaiming-uniform A, zero B => the update B·A starts at 0.
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            a = a.to(w.dtype)
        else:
            a = torch.zeros(r, self.in_features, device=w.device, dtype=w.dtype)
        self.lora_A[name] = nn.Parameter(a)
        self.lora_B[name] = nn.Parameter(torch.zeros(self.out_features, r, device=w.device, dtype=w.dtype))
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = alpha / r
        self.r[name] = r
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        self._check(name)
        if name in self.merged_adapters:
            self.unmerge(name)
        del self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
        del self.scaling[name], self.r[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def set_adapter(self, name: str | None) -> None:
        """Route through adapter ``name``; ``None`` means the bare base layer."""
        if name is not None:
            self._check(name)
        self.active_adapter = name

    @property
    def adapters(self) -> list[str]:
        return list(self.lora_A.keys())

    def _check(self, name: str) -> None:
        if name not in self.lora_A:
            raise LoRAError(f"no adapter {name!r} on this layer (have: {self.adapters or 'none'})")

    # -- merge ---------------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """(out, in) update that the adapter adds to ``base_layer.weight``."""
        self._check(name)
        a, b = self.lora_A[name], self.lora_B[name]
        return (b.float() @ a.float()) * self.scaling[name]

    @torch.no_grad()
    def merge(self, name: str | None = None) -> None:
        """Fold adapter ``name`` (default: active) into the base weight. Idempotent; refuses NaN/Inf."""
        name = name or self.active_adapter
        if name is None or name in self.merged_adapters:
            return
        delta = self.delta_weight(name)
        if not torch.isfinite(delta).all():
            raise LoRAError(f"refusing to merge adapter {name!r}: its update contains NaN or Inf")
        w = self.base_layer.weight
        merged = (w.float() + delta).to(w.dtype)  # check after the cast: fp16/bf16 overflow to Inf there
        if not torch.isfinite(merged).all():
            raise LoRAError(f"refusing to merge adapter {name!r}: the merged weight overflows {w.dtype}")
        w.copy_(merged)
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str | None = None) -> None:
        """Undo :meth:`merge`. Idempotent."""
        names = [name] if name else list(self.merged_adapters)
        for n in names:
            if n not in self.merged_adapters:
                continue
            w = self.base_layer.weight
            w.copy_((w.float() - self.delta_weight(n)).to(w.dtype))
            self.merged_adapters.remove(n)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        name = self.active_adapter
        if self.disabled or name is None or name in self.merged_adapters:
            return result
        a, b = self.lora_A[name], self.lora_B[name]
        h = self.lora_dropout[name](x).to(a.dtype)
        # (B, T, in) -> (B, T, r) -> (B, T, out); two skinny matmuls, never the (out, in) product.
        return result + F.linear(F.linear(h, a), b).to(result.dtype) * self.scaling[name]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapters}, active={self.active_adapter}"


# -- model-level helpers -------------------------------------------------------------------------
def find_targets(model: nn.Module, targets: Iterable[str], modules: dict[str, nn.Module] | None = None) -> list[str]:
    """Qualified names of the linear layers ``targets`` selects (by leaf or full name).

    ``modules``: ``dict(model.named_modules())`` when the caller has it (one walk of the model, not two).
    Raises LoRAError, naming the linear layers that do exist, when nothing matches.
    """
    targets = set(targets)
    found = [
        q for q, m in (modules.items() if modules is not None else model.named_modules())
        if isinstance(m, (nn.Linear, LoRALinear)) and (q.rsplit(".", 1)[-1] in targets or q in targets)
    ]
    if not found:
        leaves = sorted({q.rsplit(".", 1)[-1] for q, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise LoRAError(
            f"no linear layer named any of {sorted(targets)} in {type(model).__name__}; set "
            f"lora.target_modules to names that exist (this model has: {', '.join(leaves)})"
        )
    return found


def inject_lora(
    model: nn.Module,
    targets: Iterable[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    adapter_name: str = "default",
    init: bool = True,
) -> list[str]:
    """Wrap every ``nn.Linear`` whose last name component (or full name) is in ``targets``, add an adapter.

    Layers that are already :class:`LoRALinear` get the new adapter beside their old ones.
    Returns the qualified names of the layers that carry the adapter, in module order.
    ``init=False``: see :meth:`LoRALinear.add_adapter`.
    """
    targets = list(targets)
    lora = lora_layers(model)
    if targets and all("." in t and t in lora for t in targets):
        # A card names full paths; once they all carry adapters (every skill after the first), the
        # injection needs no walk of the model's ~700 modules (about 1-2 ms each on a CPU).
        wanted = set(targets)
        modules: dict[str, nn.Module] = lora  # already this call's own copy
        touched = [q for q in lora if q in wanted]
    else:
        modules = dict(model.named_modules())
        touched = find_targets(model, targets, modules)
    clash = [q for q in touched if isinstance(modules[q], LoRALinear) and adapter_name in modules[q].lora_A]
    if clash:  # checked up front so a refused injection leaves the model as it was
        raise LoRAError(f"adapter {adapter_name!r} already exists on {clash[0]}; delete it first")
    for qname in touched:
        layer = modules[qname]
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer)
            parent, _, leaf = qname.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, layer)
        layer.add_adapter(adapter_name, r=r, alpha=alpha, dropout=dropout, init=init)
    return touched


# model -> its LoRA layers by qualified name, from the last walk. Hot-loading and switching skills ask
# for them several times per card; a walk of SmolLM2's ~700 modules costs 1-2 ms on this CPU each time.
_LORA_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[str, LoRALinear]] = weakref.WeakKeyDictionary()
# Bumped whenever a LoRA layer enters a module tree. A walk stores its result only if no bump came
# while it ran, so a hot-load in one thread cannot leave another thread's older walk in the cache.
_GENERATION = [0]
_CACHE_LOCK = threading.Lock()


def _forget_on_new_lora_layer(parent: nn.Module, name: str, sub: nn.Module | None) -> None:
    """torch calls this whenever any module gets a child (``setattr``, ``add_module``, a ModuleList
    slot): a subtree bringing LoRA layers in (``inject_lora`` wrapping a layer, a layer put back)
    voids every cached map. Removals need no hook: each use re-checks the cached paths."""
    if sub is not None and any(isinstance(m, LoRALinear) for m in sub.modules()):
        with _CACHE_LOCK:
            _GENERATION[0] += 1
            _LORA_LAYERS.clear()


nn.modules.module.register_module_module_registration_hook(_forget_on_new_lora_layer)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` in ``model`` by qualified name, in module order.

    Cached per model: the cache is dropped whenever a LoRA layer enters any module tree (see
    ``_forget_on_new_lora_layer``), and each use checks that every cached layer still sits at its
    path (a parent replaced, as ``LoRATrainer.fit(release_frozen=True)`` does, means a fresh walk).
    """
    cached = _LORA_LAYERS.get(model)
    if cached is not None:
        try:
            if all(model.get_submodule(q) is m for q, m in cached.items()):
                return dict(cached)
        except AttributeError:
            pass
    generation = _GENERATION[0]
    found = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    with _CACHE_LOCK:
        if _GENERATION[0] == generation:
            _LORA_LAYERS[model] = found
    return dict(found)


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Activate adapter ``name`` (or none) on every LoRA layer that has it; others fall back to none."""
    for layer in lora_layers(model).values():
        layer.set_adapter(name if (name is None or name in layer.lora_A) else None)


def delete_adapter(model: nn.Module, name: str) -> None:
    for layer in lora_layers(model).values():
        if name in layer.lora_A:
            layer.delete_adapter(name)


def mark_only_lora_as_trainable(model: nn.Module, adapter_name: str | None = None) -> int:
    """Freeze everything except ``lora_`` parameters (of one adapter, if named).

    Returns the trainable parameter count.
    """
    n = 0
    for pname, p in model.named_parameters():
        p.requires_grad = "lora_" in pname and (adapter_name is None or pname.endswith(f".{adapter_name}"))
        n += p.numel() if p.requires_grad else 0
    return n


def lora_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """``{'<layer path>.lora_A': (r, in), '<layer path>.lora_B': (out, r)}`` for one adapter."""
    out: dict[str, torch.Tensor] = {}
    for qname, layer in lora_layers(model).items():
        if adapter_name in layer.lora_A:
            out[f"{qname}.lora_A"] = layer.lora_A[adapter_name].detach()
            out[f"{qname}.lora_B"] = layer.lora_B[adapter_name].detach()
    return out
