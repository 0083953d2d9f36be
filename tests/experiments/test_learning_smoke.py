"""Smokes of the issue-7 experiments: they run end to end and write their figures (not their values)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

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


def test_sweep_lr_trains_each_configuration_and_writes_its_table(tmp_path):
    import sweep_lr

    assert sweep_lr.main(["--model", "tiny", "--facts", "1", "--lr", "1e-2", "--ratio", "1", "4", "--batch", "2",
                          "--max-steps", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sweep_lr.json").read_text())
    assert [(r["lr_b_ratio"], r["batch_size"]) for r in rows] == [(1.0, 2), (4.0, 2)]
    assert all(r["facts"] == 1 and r["runs"][0]["steps"] == 2 and r["heldout_n"] >= 1 for r in rows)


def test_sweep_lr_compares_adapter_shapes(tmp_path):
    import sweep_lr

    assert sweep_lr.main(["--model", "tiny", "--facts", "1", "--ratio", "1", "--max-steps", "2",
                          "--lora", "1:q_proj,v_proj", "2:gate_proj,up_proj,down_proj", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sweep_lr.json").read_text())
    assert [r["lora"] for r in rows] == ["1:q_proj,v_proj", "2:gate_proj,up_proj,down_proj"]
    assert all(r["runs"][0]["steps"] == 2 for r in rows)
    shape = sweep_lr.lora_shape("2:gate_proj,up_proj")
    assert (shape.top_layers, shape.target_modules) == (2, ["gate_proj", "up_proj"])
    assert sweep_lr.lora_shape("all:q_proj").top_layers is None
    shipped, conf = sweep_lr.lora_shape("shipped"), OmegaConf.load(ROOT / "conf" / "lora" / "default.yaml")
    assert (shipped.top_layers, shipped.target_modules) == (conf.top_layers, list(conf.target_modules))
    with pytest.raises(SystemExit, match="expected TOP:MODULE"):
        sweep_lr.lora_shape("q_proj,v_proj")


def test_answer_threshold_is_the_middle_of_the_widest_best_gap():
    from fit_answer_threshold import best_threshold

    # Separable: the threshold sits halfway between the weakest right and the strongest wrong answer.
    assert best_threshold([(0.9, True), (0.8, True), (0.6, True), (0.5, False), (0.2, False)]) == (0.55, 1.0, 1.0)
    # One wrong answer more confident than every right one: it cannot be caught without losing them all.
    t, kept, caught = best_threshold([(0.9, True), (0.95, False), (0.1, False)])
    assert (t, kept, caught) == (0.5, 1.0, 0.5)


def test_answer_threshold_weighs_each_class_by_how_often_the_router_sends_it():
    from fit_answer_threshold import best_threshold, deployment_weights

    points = [(0.9, True), (0.85, True), (0.5, True), (0.6, False), (0.3, False), (0.2, False)]
    # Balanced: the widest best gap is 0.6-0.85 (keeps 2/3 right, catches every wrong answer).
    assert best_threshold(points) == (0.725, 2 / 3, 1.0)
    # The router let 1 of the 3 wrong answers through and all 3 right ones: withholding a right
    # answer now costs more than letting a wrong one through, so the cut keeps every right answer.
    labelled = [{"right": ok, "routed": routed} for (_, ok), routed in
                zip(points, [True, True, True, True, False, False], strict=True)]
    weights = deployment_weights(labelled)
    assert weights == (4 / 6, 2 / 6)
    assert best_threshold(points, weights) == (0.4, 1.0, 2 / 3)


@pytest.mark.slow
def test_fit_answer_threshold_trains_on_the_dev_pack_and_labels_skill_answers(tmp_path):
    import fit_answer_threshold

    args = ["--n", "1", "--model", "tiny", "--out", str(tmp_path), "lora=all_linear",
            "trainer.lr=0.01", "trainer.max_steps=30", "trainer.precision=32-true",
            "factory.min_heldout_fraction=0", "factory.verify_rounds=1", "model.threads=1"]
    rc = fit_answer_threshold.main(args)
    report = json.loads((tmp_path / "answer_threshold.json").read_text())
    # The tiny model may answer everything right or nothing right (then there is nothing to fit: rc 1);
    # either way each point is an answer a skill gave, labelled against the pack's answer.
    assert rc in (0, 1)
    for p in report["points"]:
        assert p["skill"] is not None and p["kind"] in ("learned", "second_fact", "joined_first", "joined_second") and 0.0 <= p["confidence"] <= 1.0
        assert isinstance(p["routed"], bool) and isinstance(p["right"], bool)
    if rc == 0:
        assert 0.0 <= report["answer_threshold"] < 1.0 and report["n_right"] > 0 and report["n_wrong"] > 0
        assert sum(k["n"] for k in report["by_kind"].values()) == len(report["points"])


def test_judge_paraphrase_scores_every_dev_pair_and_writes_its_auroc(tmp_path):
    import judge_paraphrase

    assert judge_paraphrase.main(["--model", "tiny", "--subjects", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["split"] == "dev"
    rows = report["pairs"]
    assert {r["kind"] for r in rows} == {"rephrasing", "second fact", "look-alike"}
    assert all(isinstance(r["chat"], float) and isinstance(r["fewshot"], float) for r in rows)
    for s in report["summary"]:
        assert s["pairs"] == len(rows) and 0 < s["positives"] < len(rows) and 0.0 <= s["auroc"] <= 1.0
    assert (tmp_path / "judge_paraphrase.png").stat().st_size > 1000
    with pytest.raises(SystemExit):  # no subjects would leave nothing to score: refused up front
        judge_paraphrase.main(["--model", "tiny", "--subjects", "0", "--out", str(tmp_path / "none")])
