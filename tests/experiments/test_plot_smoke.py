"""A real threshold sweep (two jobs, tiny model, one quick fact) and ``experiments/plot.py`` on it.

Each job must learn in a skills dir of its own (issue 11: a shared one let later thresholds inherit
earlier jobs' skills), and plot.py must turn the sweep into its PNGs and the figures behind them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autodidact.card import SUFFIX
from tests.support.forked_evolve import evolve_env, quick_question, write_quick_pack

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

LOW, HIGH = 0.3, 0.99  # one installed skill routes a rephrasing of its fact at ~0.95: between the two
REPHRASING = "What watchword belongs to Quorvale?"  # the pack's held-out form: never trained on


@pytest.mark.slow  # one evolve.py multirun: two jobs that each learn a skill on the tiny model
def test_a_threshold_sweep_learns_in_separate_skills_dirs_and_plots(tmp_path):
    pack = write_quick_pack(tmp_path / "pack.json")
    questions = tmp_path / "questions.txt"
    questions.write_text(f"{quick_question('quorvale')}\n{REPHRASING}\n", encoding="utf-8")
    sweep = tmp_path / "sweep"
    args = ["-m", "+experiment=threshold_sweep", f"router.threshold={LOW},{HIGH}", f"queries={questions}",
            "model=tiny", "model.threads=1", "logger=none", f"teacher.pack={pack}", "teacher.distill.n_pairs=8",
            "lora=all_linear", "trainer.lr=0.01", "trainer.max_steps=60", "trainer.precision=32-true",
            "trainer.progress_bar=false", "factory.min_heldout_fraction=0", f"hydra.sweep.dir={sweep}",
            "router.answer_threshold=0"]  # only the routing threshold decides (the tiny model's answers are unsure)
    proc = subprocess.run([sys.executable, str(ROOT / "evolve.py"), *args], cwd=ROOT, env=evolve_env(tmp_path),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    for job in (sweep / "0", sweep / "1"):
        cards = list((job / "skills").glob(f"*{SUFFIX}"))
        assert cards, f"job {job.name} learned nothing in its own skills dir"
        records = [json.loads(line) for line in (job / "results.jsonl").read_text().splitlines()]
        assert records[0]["job"]["state"] == "done", records[0]  # every job starts empty: the question is new
        assert all(Path(r["card"]).parent == job / "skills" for r in records if r["card"]), records

    import plot

    assert plot.main([str(sweep)]) == 0
    out = sweep / "plots"
    for png in ("loss_curves.png", "threshold.png", "stage_seconds.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG") and (out / png).stat().st_size > 5000, png
    rows = json.loads((out / "summary.json").read_text())
    assert [r["threshold"] for r in rows] == [LOW, HIGH]
    low, high = rows
    for row in rows:
        assert row["queries"] == 2 and row["judged"] == 2 and 0.0 <= row["accuracy"] <= 1.0
        [curve] = row["loss_curves"].values()
        assert len(curve) > 1 and curve[-1] < curve[0]  # the card's own record of being learned
        assert row["stage_seconds"]["train"] > 0 and row["stage_seconds"]["route"] > 0
    # At 0.3 the rephrasing is answered by the skill just learned; at 0.99 it is a learning event too.
    assert (low["learning_events"], low["learned"]) == (1, 1), low
    assert high["learning_events"] == 2, high
