"""Skill cards <-> PEFT LoRA adapters (what PEFT, vLLM and LoRAX read).

A card row and a PEFT tensor are the same matrix under two names; only the key and the config move:

    card  model.layers.0.self_attn.q_proj.lora_A          (r, in)   float16
    PEFT  base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight   (same tensor, same dtype)

    card meta lora {r, alpha}  <->  adapter_config.json {"r", "lora_alpha"}   scaling = alpha / r in both

``export_peft`` needs no model: the card already names every layer. ``import_peft`` needs the base
model, because a card records the fingerprint of the weights it belongs to and every tensor is checked
against the layer it will sit beside before anything is written. No pickle either way: only
``adapter_model.safetensors`` is read or written (a ``.bin`` adapter is refused).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch

from autodidact.card import (
    DTYPES,
    MAX_CARD_BYTES,
    SUFFIX,
    Card,
    CardError,
    check_card_fits,
    decode_card,
    encode_card,
    read_card,
)
from autodidact.errors import AutodidactError
from autodidact.fileio import atomic_write_bytes, atomic_write_text
from autodidact.models import SMOLLM2_NAME, ModelBundle, default_cache_dir

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
_KEY = re.compile(r"^(?P<layer>.+)\.(?P<kind>lora_A|lora_B)\.weight$")
_TORCH_DTYPE_NAMES = {tdt: name for name, (tdt, _) in DTYPES.items()}


class PeftInteropError(AutodidactError):
    """A PEFT adapter folder cannot be written or is not one this project can turn into a card."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"PEFT adapter {self.path}: {problem}")


def default_base_model_path(card: Card) -> str:
    """What ``base_model_name_or_path`` should say: a folder PEFT/vLLM can load, where we know one.

    SmolLM2 cards belong to the fp32 transformers folder converted from the shipped GGUF (user cache);
    other cards keep the name recorded at training time.
    """
    name = card.meta["base_model"].get("name") or ""
    if name == SMOLLM2_NAME:
        return str(default_cache_dir() / "models" / f"{SMOLLM2_NAME}-fp32")
    return name


_LAYER_INDEX = re.compile(r"^(?P<stem>.*\.[^.]*)\.(?P<idx>\d+)\.(?P<rest>.+)$")  # PEFT's layer-index rule


def peft_targets(card: Card, model: torch.nn.Module | None = None) -> tuple[list[str], list[int] | None]:
    """``(target_modules, layers_to_transform)`` that make PEFT wrap exactly the card's layers.

    Leaf names (``q_proj``) are what vLLM and most tools expect. They alone are exact when they select
    exactly the card's layers: known from ``model``, or from a card whose ``lora`` metadata says
    ``layers_to_transform: null``. Otherwise a card with the same sub-layers at each of some decoder
    layers gets PEFT's ``layers_to_transform`` (exact whether or not that is every layer), and any
    other shape its exact layer paths.
    """
    layers = set(card.layers)
    leaves = sorted({layer.rsplit(".", 1)[-1] for layer in layers})
    lo = card.meta["lora"]
    if model is not None:
        selected = {q for q, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and q.rsplit(".", 1)[-1] in leaves}
        if selected == layers:
            return leaves, None
    elif "layers_to_transform" in lo and lo["layers_to_transform"] is None and all(
        "." not in t for t in lo.get("target_modules") or ["."]
    ):
        return leaves, None  # trained by leaf name on every layer: find_targets took them all
    matches = [_LAYER_INDEX.match(layer) for layer in layers]
    if all(matches) and len({m["stem"] for m in matches}) == 1:
        stem, rests = matches[0]["stem"], {m["rest"] for m in matches}
        indices = sorted({int(m["idx"]) for m in matches})
        if len(rests) == len(leaves) and layers == {f"{stem}.{i}.{r}" for i in indices for r in rests}:
            return leaves, indices
    return sorted(layers), None


def peft_config(card: Card, base_model_name_or_path: str | None = None,
                targets: tuple[list[str], list[int] | None] | None = None) -> dict:
    """The ``adapter_config.json`` contents for ``card`` (PEFT's LoraConfig field names)."""
    lo = card.meta["lora"]
    target_modules, layers_to_transform = targets or peft_targets(card)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path if base_model_name_or_path is not None
        else default_base_model_path(card),
        "revision": None,
        "r": lo["r"],
        "lora_alpha": lo["alpha"],
        "lora_dropout": 0.0,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": layers_to_transform,
        "layers_pattern": None,
        "inference_mode": True,
    }


def export_peft(
    card_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    model: torch.nn.Module | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``card_path`` as a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    Tensors keep the card's dtype and values bit for bit. ``model`` (optional) only sharpens
    ``target_modules`` for cards that cover part of a layer family. Returns ``out_dir``.
    """
    from safetensors.torch import save as st_save

    card = read_card(card_path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PeftInteropError(out, "exists and is not a folder; give a folder path to export into")
    if (out / CONFIG_NAME).exists() and not overwrite:
        raise PeftInteropError(out, f"already holds {CONFIG_NAME}; choose an empty folder (or overwrite=True)")
    tensors = {f"{PREFIX}{name}.weight": t.contiguous() for name, t in card.tensors.items()}
    # safetensors metadata is a str->str map; the fingerprint lets import_peft refuse other weights.
    bm = card.meta["base_model"]
    metadata = {"format": "pt", "autodidact.skill": card.skill, "autodidact.base_model": str(bm.get("name", "")),
                "autodidact.fingerprint": bm["fingerprint"]}
    cfg = peft_config(card, base_model_name_or_path, peft_targets(card, model))
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / WEIGHTS_NAME, st_save(tensors, metadata=metadata))
        atomic_write_text(out / CONFIG_NAME, json.dumps(cfg, indent=2) + "\n")
        atomic_write_text(out / "README.md", _readme(card, cfg))
    except OSError as e:
        raise PeftInteropError(out, f"cannot be written ({e.strerror}); check the path and its permissions") from None
    return out


def _readme(card: Card, cfg: dict) -> str:
    bm = card.meta["base_model"]
    return (
        f"# {card.skill}\n\nA LoRA adapter exported from an autodidact skill card "
        f"({card.path.name if card.path else 'card'}).\n\n"
        f"- base model: {bm.get('name')} (weights fingerprint {bm['fingerprint']})\n"
        f"- base_model_name_or_path: {cfg['base_model_name_or_path']}\n"
        f"- r={cfg['r']}, lora_alpha={cfg['lora_alpha']}, target_modules={cfg['target_modules']}\n\n"
        "```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, \"THIS_FOLDER\")\n```\n"
    )


# -- import ------------------------------------------------------------------------------------------
def _read_peft_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftInteropError(folder, f"has no {CONFIG_NAME}; give the folder PEFT's save_pretrained wrote") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PeftInteropError(folder, f"{CONFIG_NAME} is not readable JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise PeftInteropError(folder, f"{CONFIG_NAME} is not a JSON object")
    problems = []
    if cfg.get("peft_type") != "LORA":
        problems.append(f"peft_type is {cfg.get('peft_type')!r}; only LORA adapters become cards")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        problems.append(f"r={r!r} is not a positive integer")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        problems.append(f"lora_alpha={alpha!r} is not a number")
    unsupported = {
        "use_dora": cfg.get("use_dora") not in (None, False),
        "fan_in_fan_out": cfg.get("fan_in_fan_out") not in (None, False),
        "bias": cfg.get("bias") not in (None, "none"),
        "modules_to_save": bool(cfg.get("modules_to_save")),
        "rank_pattern": bool(cfg.get("rank_pattern")),
        "alpha_pattern": bool(cfg.get("alpha_pattern")),
        "layer_replication": bool(cfg.get("layer_replication")),
    }
    for key, bad in unsupported.items():
        if bad:
            problems.append(f"{key}={cfg.get(key)!r} is not supported (a card holds one plain LoRA per linear layer)")
    if problems:
        raise PeftInteropError(folder, "; ".join(problems))
    return cfg


def _read_peft_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    path = folder / WEIGHTS_NAME
    if not path.exists():
        hint = " (adapter_model.bin is a pickle and is never loaded; re-save with safe_serialization=True)" \
            if (folder / "adapter_model.bin").exists() else ""
        raise PeftInteropError(folder, f"has no {WEIGHTS_NAME}{hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise PeftInteropError(folder, f"{WEIGHTS_NAME} is corrupt or truncated ({e})") from None
    return tensors, meta


def peft_to_state(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """Read a PEFT LoRA folder: (config, ``{card tensor name: tensor}``, safetensors metadata)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PeftInteropError(folder, "is not a folder; give the folder PEFT's save_pretrained wrote")
    cfg = _read_peft_config(folder)
    raw, meta = _read_peft_tensors(folder)
    state: dict[str, torch.Tensor] = {}
    for key, t in raw.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        m = _KEY.match(name)
        if not m:
            raise PeftInteropError(folder, f"tensor {key!r} is not a LoRA linear weight (expected "
                                           "'<layer>.lora_A.weight' or '<layer>.lora_B.weight'); embedding "
                                           "adapters, DoRA magnitudes and biases cannot become a card")
        state[f"{m['layer']}.{m['kind']}"] = t
    if not state:
        raise PeftInteropError(folder, f"{WEIGHTS_NAME} holds no tensors")
    return cfg, state, meta


def import_peft(
    peft_dir: str | os.PathLike,
    card_path: str | os.PathLike,
    bundle: ModelBundle,
    skill: str | None = None,
    dtype: str | None = None,
) -> Card:
    """Turn a PEFT LoRA folder into a card for ``bundle``'s base weights, checked before it is written.

    ``skill`` defaults to the name recorded by :func:`export_peft`, else the folder name; ``dtype``
    defaults to the adapter's own dtype (float32 for anything a card cannot store). rsLoRA's scaling
    ``alpha / sqrt(r)`` is kept exactly by storing ``alpha * sqrt(r)`` as the card's alpha.
    """
    folder, card_path = Path(peft_dir), Path(card_path)
    if not card_path.name.endswith(SUFFIX):
        raise CardError(card_path, f"card file names end in {SUFFIX}")
    cfg, state, st_meta = peft_to_state(folder)
    want = st_meta.get("autodidact.fingerprint")
    if want and want != bundle.fingerprint:
        raise PeftInteropError(folder, f"was exported from a card for base weights {want} "
                                       f"({st_meta.get('autodidact.base_model', '?')}), but the loaded model "
                                       f"{bundle.name!r} has {bundle.fingerprint}; import it with that model")
    if dtype is None:
        found = {_TORCH_DTYPE_NAMES.get(t.dtype, "float32") for t in state.values()}
        dtype = found.pop() if len(found) == 1 else "float32"
    if dtype not in DTYPES:
        raise CardError(card_path, f"cannot store dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    r, alpha = cfg["r"], float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(r)  # rsLoRA scales by alpha / sqrt(r); ours by alpha / r
    alpha = int(alpha) if alpha.is_integer() else alpha
    # Record the layers as the trainer would: leaf names when they select exactly these layers.
    targets, layers_to_transform = peft_targets(Card(None, {"lora": {}}, state), bundle.model)
    lora = {"r": r, "alpha": alpha, "target_modules": targets}
    if layers_to_transform is not None:
        lora["layers_to_transform"] = layers_to_transform
    meta = {
        "skill": skill or st_meta.get("autodidact.skill") or re.sub(r"[^A-Za-z0-9_]+", "_", folder.resolve().name),
        "base_model": {"name": bundle.name, "fingerprint": bundle.fingerprint},
        "lora": lora,
        "train": {},
        "source": {"format": "peft", "path": str(folder.resolve()),
                   "base_model_name_or_path": cfg.get("base_model_name_or_path"),
                   "use_rslora": bool(cfg.get("use_rslora"))},
    }
    # encode -> decode runs every check a card load makes (pairs, ranks, finite values, shapes, size)
    data = encode_card(state, meta, dtype=dtype)
    card = decode_card(data, card_path)
    check_card_fits(card, bundle.model, bundle.fingerprint)
    if len(data) > MAX_CARD_BYTES:
        raise CardError(card_path, f"would be {len(data) / 2**20:.1f} MB, over the "
                                   f"{MAX_CARD_BYTES / 2**20:.0f} MB card limit")
    try:
        atomic_write_bytes(card_path, data)
    except OSError as e:
        raise CardError(card_path, f"cannot be written ({e.strerror}); check the path") from None
    return card
