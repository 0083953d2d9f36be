"""Small real cards on the tiny model, with a random (non-identity) lora_B, for interop and CLI tests."""

from __future__ import annotations

import torch

from autodidact.card import write_card
from autodidact.inference.lora_layer import inject_lora, lora_state_dict
from autodidact.models import load_tiny


def make_card(path, targets=("q_proj", "v_proj"), r=4, alpha=8, dtype="float16", seed=1, model_seed=0,
              extra: dict | None = None):
    """Write a card for ``load_tiny(model_seed)``; a trained adapter is not the identity, so B is random."""
    b = load_tiny(seed=model_seed)
    inject_lora(b.model, list(targets), r=r, alpha=alpha, adapter_name="s")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in b.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    meta = {"skill": "velmora", "base_model": {"name": b.name, "fingerprint": b.fingerprint},
            "lora": {"r": r, "alpha": alpha, "target_modules": list(targets)},
            "train": {"loss_initial": 2.5, "loss_final": 0.1, "steps": 12, "seconds": 3.5}}
    meta.update(extra or {})
    return write_card(path, lora_state_dict(b.model, "s"), meta, dtype=dtype)
