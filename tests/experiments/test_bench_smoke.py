"""Each benchmark under experiments/ runs end to end with tiny settings and writes its figures.

These check that the benchmarks work (a table, results.json with the figures, a PNG), never how
fast anything was: speed is what the benchmarks print, on the machine that runs them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from autodidact.inference.generate import torch_threads

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _bench(name: str):
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(f"bench_smoke_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outputs(out: Path, name: str) -> dict:
    assert (out / f"{name}.png").stat().st_size > 1000, "the chart was not drawn"
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == name
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    return results


def test_bench_flops(tmp_path: Path) -> None:
    with torch_threads(1):
        _bench("bench_flops").main(["--model", "tiny", "--max-steps", "2", "--out", str(tmp_path)])
    r = _outputs(tmp_path, "bench_flops")
    assert r["steps"] == 2
    assert r["gflop"]["train"] > 0 and r["gflop"]["eval"] > 0
    assert r["gflops_achieved"] > 0 and r["gemm_gflops_fp32"] > 0 and r["gemm_gflops_bf16"] > 0
    assert r["fraction_of_peak"] > 0
    split = r["time_split"]
    assert split["profiled_steps"] == 2
    seconds = split["seconds"]
    # Every bucket is measured; the tensor-op buckets are real profiler time, and together with what
    # lies outside tensor ops they make up the profiled fit's wall time.
    assert seconds["GEMM kernels"] > 0 and seconds["optimizer (AdamW step, zero_grad)"] > 0
    assert sum(seconds.values()) == pytest.approx(split["profiled_fit_s"], abs=0.05)


def test_bench_hotload(tmp_path: Path, encoder) -> None:
    with torch_threads(1):
        _bench("bench_hotload").main(["--model", "tiny", "--sizes", "1", "3", "--trials", "2",
                                      "--router-sizes", "1", "5", "--ranks", "4", "8", "--out", str(tmp_path)])
    r = _outputs(tmp_path, "bench_hotload")
    assert [h["installed"] for h in r["hotload"]] == [1, 3]
    assert all(h["p95_ms"] >= h["p50_ms"] > 0 for h in r["hotload"])
    assert [x["skills"] for x in r["routing"]] == [1, 5]
    assert all(x["p50_ms"] > 0 for x in r["routing"])
    e = r["encode"]
    assert e["ours_p50_ms"] > 0 and e["transformers_p50_ms"] > 0 and e["ratio"] > 0
    assert e["int8_p50_ms"] > 0 and e["fp32_p50_ms"] > 0 and e["shipped"] == "int8"
    assert 0.9 < e["int8_cosine_to_fp32_min"] <= 1.0
    sizes = {s["r"]: s for s in r["card_size"]}
    assert sizes[8]["params"] == 2 * sizes[4]["params"] and sizes[8]["bytes"] > sizes[4]["bytes"]


def test_gpu_bench_smoke_runs_on_the_cpu(tmp_path: Path) -> None:
    with torch_threads(1):
        _bench("gpu_bench").main(["--smoke", "--out", str(tmp_path)])
    r = _outputs(tmp_path, "gpu_bench")
    runs = [x for m in r["models"].values() for x in m["runs"]]
    assert len(r["models"]) == 2 and len(runs) == 5
    assert {x["gradient_checkpointing"] for x in runs} == {False, True}
    assert all(x["tokens_per_s"] > 0 and x["steps"] > 0 for x in runs)


@pytest.mark.slow
def test_bench_peft(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    _bench("bench_peft").main(["--model", "tiny", "--rounds", "1", "--max-steps", "2", "--set", "logger=none",
                               "--out", str(tmp_path)])
    r = _outputs(tmp_path, "bench_peft")
    assert [x["contender"] for x in r["runs"]] == ["ours", "peft-plain", "peft-tuned"]
    for x in r["runs"]:
        assert x["rc"] == 0, x.get("error")
        assert x["wall_s"] > 0 and x["peak_rss_mb"] > 0 and x["steps"] == 2
        assert isinstance(x["question_ok"], bool) and 0 <= x["heldout_ok"] <= 4
    assert set(r["summary"]["ratio"]) == {"ours/peft-plain", "ours/peft-tuned"}


@pytest.mark.slow
def test_bench_loop(tmp_path: Path) -> None:
    _bench("bench_loop").main(["--model", "tiny", "--facts", "1", "--no-again", "--out", str(tmp_path),
                               "--set", "trainer.max_steps=2", "factory.verify_rounds=1", "logger=none"])
    r = _outputs(tmp_path, "bench_loop")
    (run,) = r["runs"]
    assert run["rc"] == 0, run.get("error")
    assert run["record"]["query"] and run["wall_s"] > run["record"]["seconds"]
    assert run["stages"]["start-up"] > 0 and run["stages"]["train"] > 0 and run["stages"]["distill"] > 0
