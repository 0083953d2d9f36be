"""Distilled QA pairs -> chat-formatted, prompt-masked token batches (a LightningDataModule).

One example is the model's own chat template around the question, then the answer and the
end-of-turn token. Labels are ``-100`` on the prompt by default, so the loss (and the
"answer reproduced" check) looks only at what the model must say.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from autodidact.errors import AutodidactError

IGNORE = -100  # CrossEntropyLoss's ignore_index


class DataError(AutodidactError):
    """A QA file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer}


def _pair(obj: object, where: str) -> QAPair:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object with 'question' and 'answer', got {type(obj).__name__}")
    q, a = obj.get("question"), obj.get("answer")
    if not isinstance(q, str) or not q.strip() or not isinstance(a, str) or not a.strip():
        raise DataError(f"{where}: 'question' and 'answer' must both be non-empty strings")
    return QAPair(q.strip(), a.strip())


def load_pairs(path: str | Path) -> list[QAPair]:
    """Read QA pairs from JSONL (one ``{"question", "answer"}`` per line) or an Arrow IPC file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"QA file {path} does not exist; pass data.path=FILE.jsonl")
    if path.suffix in (".arrow", ".feather", ".ipc"):
        import pyarrow as pa

        try:
            with pa.memory_map(str(path)) as src:
                table = pa.ipc.open_file(src).read_all()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable Arrow IPC file ({e})") from e
        if not {"question", "answer"} <= set(table.column_names):
            raise DataError(f"{path}: needs columns 'question' and 'answer', has {table.column_names}")
        rows = table.select(["question", "answer"]).to_pylist()
        pairs = [_pair(r, f"{path} row {i}") for i, r in enumerate(rows)]
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:  # a directory, no permission, not UTF-8
            raise DataError(f"{path}: cannot be read as UTF-8 JSONL ({e}); pass data.path=FILE.jsonl") from e
        pairs = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg}); each line must be one QA object") from e
            pairs.append(_pair(obj, f"{path}:{i}"))
    if not pairs:
        raise DataError(f"{path} holds no QA pairs")
    return pairs


def save_pairs(path: str | Path, pairs: list[QAPair]) -> Path:
    from autodidact.fileio import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs))


def end_of_turn_id(tokenizer) -> int:
    tid = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
        return tid
    return tokenizer.eos_token_id


CHATML_USER = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def prompt_text(tokenizer, question: str) -> str:
    """The prompt as text: the user turn and the assistant header, nothing else.

    ChatML templates (SmolLM2, Qwen) prepend a default system turn when none is given: SmolLM2's
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face" is 20 of the 38 prompt
    tokens of a typical question, a third of every training example (1213 -> 795 tokens for the
    shipped example set). Training and serving both build prompts here, so dropping it changes
    nothing a skill sees. Other templates are used as they are.
    """
    if "<|im_start|>" in (getattr(tokenizer, "chat_template", None) or ""):
        return CHATML_USER.format(question=question)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )


def prompt_ids(tokenizer, question: str) -> list[int]:
    """Token ids of the user turn plus the assistant header (the generation prompt)."""
    return list(tokenizer(prompt_text(tokenizer, question), add_special_tokens=False)["input_ids"])


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Token ids a skill is trained to produce for ``answer``: the answer alone, then the end of turn
    (what verification's drafts are checked against, so both are built here)."""
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)]


def encode_pair(tokenizer, pair: QAPair, max_length: int, mask_prompt: bool = True) -> dict[str, list[int]]:
    p = prompt_ids(tokenizer, pair.question)
    a = answer_ids(tokenizer, pair.answer)
    ids = (p + a)[:max_length]
    labels = ([IGNORE] * len(p) if mask_prompt else list(p)) + a
    return {"input_ids": ids, "labels": labels[:max_length]}


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch (dynamic padding: no wasted compute).

    Examples may carry ``hidden`` (T, C): cached activations of the frozen layers below the
    lowest adapter (see ``LoRATrainer``); they are padded with zeros into ``hidden`` (B, T, C).
    """
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k] = torch.tensor(b["input_ids"])
        labels[i, :k] = torch.tensor(b["labels"])
        mask[i, :k] = 1
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if "index" in batch[0]:
        out["index"] = torch.tensor([b["index"] for b in batch])  # (B,) which examples these are
    if "hidden" in batch[0]:
        h0 = batch[0]["hidden"]
        hidden = torch.zeros((len(batch), n, h0.shape[-1]), dtype=h0.dtype)  # (B, T, C)
        for i, b in enumerate(batch):
            hidden[i, : len(b["hidden"])] = b["hidden"]
        out["hidden"] = hidden
    return out


class QADataModule(L.LightningDataModule):
    """Serves QA pairs as padded, prompt-masked batches; optionally holds some out for validation."""

    def __init__(
        self,
        tokenizer,
        pairs: list[QAPair] | None = None,
        path: str | None = None,
        batch_size: int = 32,
        max_length: int = 256,
        mask_prompt: bool = True,
        val_fraction: float = 0.0,
        seed: int = 0,
        prepare_examples=None,
    ) -> None:
        super().__init__()
        if pairs is None and path is None:
            raise DataError("QADataModule needs pairs or a path (data.path=FILE.jsonl)")
        self.tokenizer = tokenizer
        self.pairs = list(pairs) if pairs is not None else load_pairs(path)
        self.batch_size = batch_size
        self.max_length = max_length
        self.mask_prompt = mask_prompt
        pairs_shuffled = list(self.pairs)
        random.Random(seed).shuffle(pairs_shuffled)
        n_val = int(round(len(pairs_shuffled) * val_fraction)) if len(pairs_shuffled) > 1 else 0
        self.val_pairs = pairs_shuffled[:n_val]
        self.train_pairs = pairs_shuffled[n_val:]
        self.seed = seed
        # Called once on each encoded split, e.g. to attach cached frozen-layer activations.
        self.prepare_examples = prepare_examples
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _encode(self, pairs: list[QAPair]) -> list[dict]:
        examples = [encode_pair(self.tokenizer, p, self.max_length, self.mask_prompt) | {"index": i}
                    for i, p in enumerate(pairs)]
        if self.prepare_examples is not None and examples:
            self.prepare_examples(examples)
        return examples

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._encode(self.train_pairs)
        self.val_set = self._encode(self.val_pairs)

    def _loader(self, data, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            data,
            batch_size=min(self.batch_size, max(1, len(data))),
            shuffle=shuffle,
            generator=g,
            collate_fn=lambda b: collate(b, self._pad),
            num_workers=0,  # a few dozen short examples: worker processes would cost more than they save
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set else []
