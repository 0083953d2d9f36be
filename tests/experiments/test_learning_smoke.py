"""Smokes of the issue-7 experiments: they run end to end and write their figures (not their values)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))


def test_calibrate_router_reports_the_test_split(tmp_path):
    import calibrate_router

    assert calibrate_router.main(["--no-fit", "--no-write", "--sizes", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "calibration.json").read_text())
    [row] = report["test"]
    assert row["installed"] == 1 and row["positives"] > 100 and row["unknowns"] > 1000
    for key in ("auroc", "false_capture", "rephrasing_recall", "second_fact_joins_subject"):
        assert 0.0 <= row[key] <= 1.0
    assert (tmp_path / "calibration.png").stat().st_size > 1000


@pytest.mark.slow
def test_knowledge_eval_runs_the_real_loop_and_writes_its_table(tmp_path):
    import knowledge_eval

    args = ["--n", "1", "--model", "tiny", "--out", str(tmp_path), "lora=all_linear", "trainer.lr=0.01",
            "trainer.max_steps=30", "trainer.precision=32-true", "factory.min_heldout_fraction=0",
            "factory.verify_rounds=1", "model.threads=1"]
    # A run cut short by its budget before any subject, then resumed: the resumed run reuses the base
    # answers (asked once) and does the subject.
    assert knowledge_eval.main([*args[:4], "--budget-minutes", "0", *args[4:]]) == 0
    cut = json.loads((tmp_path / "knowledge_eval.json").read_text())["summary"]
    assert cut["n_subjects"] == 0 and cut["n_subjects_asked"] == 1
    with pytest.raises(SystemExit):  # the same --out without --resume would mix two runs
        knowledge_eval.main(args)
    assert knowledge_eval.main([*args[:4], "--resume", *args[4:]]) == 0
    summary = json.loads((tmp_path / "knowledge_eval.json").read_text())["summary"]
    assert summary["n_facts"] == 2 and summary["resumed"] is True
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert sum(r["tag"] == "base" for r in records) == 2  # the subject's two locality questions, asked once
    for key in ("reliability", "generalization", "locality", "same_subject", "retention", "events_per_question"):
        assert 0.0 <= summary[key] <= max(1.0, summary["events_per_question"])
    assert (tmp_path / "knowledge_eval.png").exists() and (tmp_path / "records.jsonl").exists()
