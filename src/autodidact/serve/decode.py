r"""Greedy decoding of a batch of requests, each row through its own skill's adapter.

Requests routed to different skills share one forward pass: the base model runs on the whole batch
and every ``LoRALinear`` adds, row by row, the update of that row's adapter (a forward hook; the
layer's own active adapter is set to none)::

    y[b] = x[b] Wᵀ + s_k · (x[b] A_kᵀ) B_kᵀ      k = adapter of row b (none: the base model alone)

Rows are left-padded to one length; a row that reaches its end-of-turn token, its token budget or is
cancelled (its client went away) is dropped from the batch and from the KV cache at once, so the
others no longer pay for it. Each token's probability is kept: the lowest one is the answer
confidence the dissonance check uses (``inference/answer.py``, same definition).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DynamicCache

from autodidact.inference.lora_layer import LoRALinear, lora_layers, set_adapter

HOLD_BACK_TOKENS = 4
"""A streamed delta ending in an incomplete UTF-8 character waits at most this many tokens."""


@dataclass(eq=False)
class Row:
    """One request's decoding: what to decode, and what came out."""

    prompt: list[int]
    """Prompt token ids (chat template applied)."""
    adapter: str | None
    """Skill adapter for this row; None: the base model."""
    max_new_tokens: int
    on_text: Callable[[str], None] | None = None
    """Called from the decoder thread with each new piece of answer text (streaming)."""
    on_done: Callable[[], None] | None = None
    """Called once the row is finished, whatever the reason (wakes an async request handler)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    finish: str | None = None
    """``stop`` (end of turn), ``length`` (token budget), ``cancelled``, or ``error``."""
    error: str | None = None
    text: str = ""
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    batch_size: int = 0
    """Rows in the batch this row was decoded in."""
    _sent: int = 0  # characters already streamed
    _held: int = 0  # tokens held back since the last delta

    @property
    def min_prob(self) -> float:
        return min(self.probs) if self.probs else 0.0

    def cancel(self) -> None:
        self.cancelled.set()

    def mark_done(self, finish: str | None = None, error: str | None = None) -> None:
        """Finish the row (once) and wake whoever waits for it."""
        if self.done.is_set():
            return
        if finish is not None:
            self.finish = finish
        if error is not None:
            self.error = error
        self.done.set()
        if self.on_done is not None:
            self.on_done()


class RowAdapters:
    """Forward hooks that give each row of a batch its own adapter (see the module docstring)."""

    def __init__(self, model: nn.Module, names: list[str | None]) -> None:
        self.model = model
        self.layers: list[LoRALinear] = list(lora_layers(model).values())
        self._handles: list = []
        self.set_rows(names)

    def set_rows(self, names: list[str | None]) -> None:
        """Adapter per row, in batch order (called again when finished rows leave the batch)."""
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            if n is not None:
                groups.setdefault(n, []).append(i)
        # (name, row indices or None when the adapter covers every row)
        self.groups = [(n, None if len(ix) == len(names) else torch.tensor(ix)) for n, ix in groups.items()]

    def _hook(self, layer: LoRALinear, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]  # (B, T, in)
        for name, ix in self.groups:
            if name not in layer.lora_A:  # an adapter that does not target this layer
                continue
            a, b, s = layer.lora_A[name], layer.lora_B[name], layer.scaling[name]
            if ix is None:
                out = out + F.linear(F.linear(x.to(a.dtype), a), b).to(out.dtype) * s
            else:
                delta = F.linear(F.linear(x[ix].to(a.dtype), a), b).to(out.dtype) * s  # (b_k, T, out)
                out = out.index_add(0, ix, delta)
        return out

    def __enter__(self) -> RowAdapters:
        set_adapter(self.model, None)  # the layers compute the base output; the hooks add the rest
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _emit(row: Row, tokenizer, final: bool) -> None:
    """Stream the new part of the row's text, holding back a few tokens of an incomplete character."""
    text = tokenizer.decode(row.tokens, skip_special_tokens=True).lstrip()
    if text.endswith("\ufffd") and not final and row._held < HOLD_BACK_TOKENS:
        row._held += 1
        return
    row._held = 0
    if final:
        text = text.rstrip()
    if row.on_text is not None and len(text) > row._sent:
        row.on_text(text[row._sent:])
    row._sent = max(row._sent, len(text))


@torch.no_grad()
def decode_batch(model: nn.Module, tokenizer, rows: list[Row], eos_id: int, pad_id: int,
                 on_finish: Callable[[Row], None] | None = None) -> None:
    """Greedy-decode every row together (adapters per row); fills each row's tokens, probs, text, finish."""
    was_training = model.training
    model.eval()
    alive = [r for r in rows if not r.cancelled.is_set()]
    for r in rows:
        if r.cancelled.is_set():
            _finish(r, "cancelled", tokenizer, on_finish)
    if not alive:
        return
    now = time.perf_counter()
    for r in alive:
        r.started_at, r.batch_size = now, len(alive)
    n = max(len(r.prompt) for r in alive)
    ids = torch.full((len(alive), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(alive), n), dtype=torch.long)
    for b, r in enumerate(alive):
        ids[b, n - len(r.prompt):] = torch.tensor(r.prompt)
        mask[b, n - len(r.prompt):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding does not shift positions
    cache = DynamicCache()
    kw = _forward_kwargs(model, cache)
    try:
        with RowAdapters(model, [r.adapter for r in alive]) as hooks:
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)
            while True:
                probs = torch.softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
                p, tok = probs.max(dim=-1)  # greedy: the chosen token's probability is the max
                keep = []
                for b, r in enumerate(alive):
                    t = int(tok[b])
                    r.tokens.append(t)
                    r.probs.append(float(p[b]))
                    if t == eos_id:
                        _finish(r, "stop", tokenizer, on_finish)
                    elif r.cancelled.is_set():
                        _finish(r, "cancelled", tokenizer, on_finish)
                    elif len(r.tokens) >= r.max_new_tokens:
                        _finish(r, "length", tokenizer, on_finish)
                    else:
                        _emit(r, tokenizer, final=False)
                        keep.append(b)
                if not keep:
                    break
                if len(keep) < len(alive):  # finished rows leave the batch and the cache
                    idx = torch.tensor(keep)
                    cache.batch_select_indices(idx)
                    mask, tok = mask[idx], tok[idx]
                    alive = [alive[b] for b in keep]
                    hooks.set_rows([r.adapter for r in alive])
                mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=torch.long)], dim=1)
                pos = mask.sum(dim=1, keepdim=True) - 1  # (B, 1)
                out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, **kw)
    except Exception as e:  # one bad batch must not take the server down: its rows get the error
        for r in alive:
            if not r.done.is_set():
                r.error = f"{type(e).__name__}: {e}"
                _finish(r, "error", tokenizer, on_finish)
        raise
    finally:
        model.train(was_training)


def _forward_kwargs(model: nn.Module, cache: DynamicCache) -> dict:
    """The KV-cache argument under its name in this transformers version, and logits for the last
    position only (the prompt's other positions would cost a (T, vocab) matmul for nothing)."""
    params = inspect.signature(model.forward).parameters
    kw: dict = {"use_cache": True, ("cache" if "cache" in params else "past_key_values"): cache}
    if "logits_to_keep" in params:
        kw["logits_to_keep"] = 1
    return kw


def _finish(row: Row, why: str, tokenizer, on_finish: Callable[[Row], None] | None) -> None:
    row.finish = why
    toks = row.tokens[:-1] if why == "stop" else row.tokens  # the end-of-turn token is not text
    row.text = tokenizer.decode(toks, skip_special_tokens=True).strip()
    if why in ("stop", "length"):
        _emit(row, tokenizer, final=True)
    if on_finish is not None:
        on_finish(row)
    row.mark_done()
