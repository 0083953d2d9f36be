"""``evolve.py stage=distill``: ask the teacher about one question and write what it taught.

Writes into the run directory: ``pairs.jsonl`` (training pairs, one ``{"question", "answer"}`` per
line), ``verify.json`` (reference answer and held-out paraphrases, never trained on), ``distill.json``
(which teacher, how many pairs, token usage) and ``teacher_transcript.jsonl`` (every exchange).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from autodidact.errors import ConfigError
from autodidact.fileio import atomic_write_text
from autodidact.teachers.config import TeacherConfig, build_teacher, public_config
from autodidact.teachers.distiller import CloudDistiller, DistillResult
from autodidact.teachers.offline import OFFLINE_LABEL
from autodidact.teachers.transcript import TRANSCRIPT_NAME

log = logging.getLogger(__name__)


def write_pairs(path: Path, result: DistillResult) -> Path:
    """``pairs.jsonl``: deterministic bytes for the same pairs, so a replayed run matches exactly."""
    lines = [json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in result.pairs]
    return atomic_write_text(path, "".join(lines))


def run_distill_stage(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Distill ``cfg.query`` with ``cfg.teacher`` into ``run_dir``; returns the paths and a summary."""
    query = cfg.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ConfigError('stage=distill needs a question: python evolve.py stage=distill query="..."')
    run_dir = Path(run_dir)
    tc = TeacherConfig.from_cfg(cfg.teacher)
    transcript = run_dir / TRANSCRIPT_NAME
    distiller = CloudDistiller(build_teacher(tc, transcript), tc.distill)
    result = distiller.distill(query)
    pairs_path = write_pairs(run_dir / "pairs.jsonl", result)
    verify = {"reference": result.reference.to_dict(), "heldout": [p.to_dict() for p in result.heldout]}
    verify_path = atomic_write_text(run_dir / "verify.json", json.dumps(verify, ensure_ascii=False, indent=1))
    teacher_label = f"{OFFLINE_LABEL}: fictional demo facts, not a cloud model" if result.offline else (
        f"{result.provider} ({result.model})")
    summary = result.summary() | {"teacher": teacher_label, "teacher_config": public_config(tc)}
    atomic_write_text(run_dir / "distill.json", json.dumps(summary, ensure_ascii=False, indent=1))
    out = {
        "pairs": str(pairs_path),
        "verify": str(verify_path),
        "transcript": str(transcript),
        "n_pairs": len(result.pairs),
        "teacher": teacher_label,
        "reference": result.reference.to_dict(),
    }
    if result.offline:
        print(f"NOTE: {OFFLINE_LABEL}: these pairs are fictional demo data, not from a cloud model.")
    print(f"distilled {len(result.pairs)} training pairs from {teacher_label}")
    print(f"  reference: {result.reference.question} -> {result.reference.answer}")
    print(f"  pairs:      {pairs_path}")
    print(f"  held out:   {verify_path}")
    print(f"  transcript: {transcript}")
    return out
