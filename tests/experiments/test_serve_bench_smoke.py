"""experiments/serve_bench.py runs end to end on the tiny model and writes its figures.

Checks the benchmark works (every level measured, the batched comparison made with the same tokens,
results.json and the chart written), never how fast anything was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.experiments.test_bench_smoke import _bench

pytestmark = pytest.mark.slow  # a served model and its learner process: ~20 s to start on 2 cores


def test_serve_bench_smoke(tmp_path: Path) -> None:
    _bench("serve_bench").main(["--model", "tiny", "--clients", "1", "3", "--seconds", "1.5", "--max-tokens", "8",
                                "--batch-rows", "4", "--train-wait", "180", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["benchmark"] == "serve_bench" and (tmp_path / "serve_bench.png").stat().st_size > 1000
    [b] = r["batching"]
    assert b["rows"] == 4 and b["skills"] == 4 and b["same_tokens"] is True and b["tokens"] > 0
    assert b["batched_s"] > 0 and b["one_at_a_time_s"] > 0
    s = r["serve"]
    assert s["learner_ready_state"] == "dead"  # the warm-up's event failed at the offline teacher: learner up
    for phase in ("idle", "training"):
        assert [x["clients"] for x in s[phase]] == [1, 3]
        for x in s[phase]:
            assert x["requests"] >= x["clients"] and x["errors"] == 0 and x["p95_s"] >= x["p50_s"] > 0
    assert s["train_job_reached"] in ("running", "done")
    assert s["train_job_final"]["state"] in ("running", "done")
