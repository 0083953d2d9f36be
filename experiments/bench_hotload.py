"""Serving-side latencies: hot-loading a card, routing a query, and what a card weighs.

    .venv/bin/python experiments/bench_hotload.py                       # SmolLM2, real MiniLM
    .venv/bin/python experiments/bench_hotload.py --model tiny --sizes 1 3 --router-sizes 1 10 --trials 3   # smoke

* **Hot-load**: ``LoRAManager.install(card)`` (read, check against the model, attach, register the
  routing key) plus activating it (``manager.use(name)``), timed per card while 1, 10, 100 other
  skills are installed; each trial's card is unloaded again so the count stays put. Cards are
  real rank-8 exports of the shipped LoRA config with distinct skill names. The read alone
  (``read_card``) is timed too.
* **Routing**: ``LoRARouter.route(query)`` with 1..1000 installed skills whose routing keys are
  synthetic (23 random unit rows and a made-up name term each, the shape of a real key), for the
  shipped example questions; the MiniLM encoding of the query alone is timed too: as shipped (int8),
  in fp32, and by transformers' BertModel, interleaved.
* **Card size** for r in {4, 8, 16} with the shipped target modules and layers, float16, with a
  real routing key built from the example questions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, percentile, pyplot, run_dir, save, shipped_lora, table  # noqa: E402


def export_card(bundle, lora, path: Path, skill: str, routing: dict) -> Path:
    """A real export of a fresh adapter (B filled with noise so it is not all zeros) under ``lora``."""
    import torch

    from autodidact.inference.lora_layer import delete_adapter, inject_lora, lora_layers
    from autodidact.lora_trainer import LoRATrainer, TrainConfig, TrainResult, adapter_targets

    inject_lora(bundle.model, adapter_targets(bundle.model, lora), lora.r, lora.alpha, 0.0, "bench")
    with torch.no_grad():
        for layer in lora_layers(bundle.model).values():
            if "bench" in layer.lora_B:
                layer.lora_B["bench"].normal_(0, 0.01)
    result = TrainResult(adapter="bench", loss_initial=4.8, loss_final=0.01, steps=20, epochs=7, seconds=30.0,
                         learned=True, exact_match=1.0)
    try:
        return LoRATrainer(bundle, lora, TrainConfig()).export(
            path, "bench", skill, result, extra={"routing": routing, "query": "q", "reference_answer": "a"})
    finally:
        delete_adapter(bundle.model, "bench")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], help="skills installed during hot-load")
    ap.add_argument("--trials", type=int, default=30, help="hot-loads timed per size")
    ap.add_argument("--router-sizes", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    from autodidact.card import encode_card, read_card
    from autodidact.data import load_pairs
    from autodidact.inference.encoder import get_encoder
    from autodidact.inference.lora_router import LoRARouter, build_routing, encode_routing_key
    from autodidact.lora_manager import LoRAManager
    from autodidact.models import configure_threads, load_model
    from autodidact.train_skill import example_data_path

    out = run_dir("bench_hotload", a.out)
    info = machine()
    configure_threads(None)
    bundle = load_model(a.model)
    encoder = get_encoder()
    questions = [p.question for p in load_pairs(example_data_path())]
    routing = build_routing(questions, encoder)
    work = Path(tempfile.mkdtemp(prefix="bench_hotload-"))
    res: dict = {"machine": info, "model": a.model}
    try:
        # -- card size per rank ------------------------------------------------------------------
        sizes = []
        for r in a.ranks:
            lora = shipped_lora(r)
            p = export_card(bundle, lora, work / f"rank{r}.lora.arrow", f"rank{r}", routing)
            card = read_card(p)
            sizes.append({"r": r, "bytes": p.stat().st_size, "kib": round(p.stat().st_size / 1024, 1),
                          "params": card.num_parameters, "layers": len(card.layers)})
        res["card_size"] = sizes

        # -- hot-load ------------------------------------------------------------------------------
        template = read_card(work / "rank8.lora.arrow")
        n_pool = max(a.sizes) + a.trials
        pool = []
        for i in range(n_pool):  # distinct skills: same tensors, own name (and routing key)
            meta = {k: v for k, v in template.meta.items() if k not in ("format_version", "created_at")}
            meta["skill"] = f"skill_{i:04d}"
            path = work / "pool" / f"skill_{i:04d}.lora.arrow"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(encode_card(template.tensors, meta))
            pool.append(path)
        hot = []
        for n in a.sizes:
            router = LoRARouter(encoder=encoder)
            mgr = LoRAManager(bundle, work / f"skills-{n}", router=router)
            for path in pool[:n]:
                mgr.install(path)
            times, reads = [], []
            for path in pool[max(a.sizes): max(a.sizes) + a.trials]:
                t0 = time.perf_counter()
                read_card(path)
                reads.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                skill = mgr.install(path).name
                with mgr.use(skill):
                    pass
                times.append(time.perf_counter() - t0)
                mgr.unload(skill)
            for name in list(mgr.skills):
                mgr.unload(name)
            hot.append({"installed": n, "p50_ms": round(1e3 * percentile(times, 50), 2),
                        "p95_ms": round(1e3 * percentile(times, 95), 2), "max_ms": round(1e3 * max(times), 2),
                        "read_p50_ms": round(1e3 * percentile(reads, 50), 2), "trials": len(times)})
        res["hotload"] = hot

        # -- routing ------------------------------------------------------------------------------
        rng = np.random.default_rng(0)
        route = []
        queries = questions + [p.question for p in load_pairs(example_data_path().with_name("example_heldout.jsonl"))]
        # The query's MiniLM encoding: ours as shipped (int8), ours in fp32, and transformers' BertModel
        # on the same weights, interleaved query by query so a drifting machine slows all alike.
        from transformers import AutoModel

        from autodidact.inference.router_config import RouterConfig

        bert = AutoModel.from_pretrained(str(encoder.path), local_files_only=True).eval()
        shipped = "int8" if RouterConfig().encoder_int8 else "fp32"  # how the router embeds a query

        def hf_encode(q: str) -> None:
            with torch.inference_mode():
                b = encoder.tokenizer([q], return_tensors="pt")
                bert(**b)

        timed = {"int8": lambda q: encoder.encode([q], int8=True), "fp32": lambda q: encoder.encode([q]),
                 "transformers": hf_encode}
        for q in queries[:3]:
            for f in timed.values():
                f(q)  # warm-up
        times_by: dict[str, list[float]] = {k: [] for k in timed}
        for _ in range(3):
            for q in queries:
                for k, f in timed.items():
                    t0 = time.perf_counter()
                    f(q)
                    times_by[k].append(time.perf_counter() - t0)
        enc_times = times_by[shipped]
        p50 = {k: percentile(v, 50) for k, v in times_by.items()}
        both = torch.stack([encoder.encode(queries, int8=True), encoder.encode(queries)])
        res["encode"] = {"ours_p50_ms": round(1e3 * p50[shipped], 2),
                         "int8_p50_ms": round(1e3 * p50["int8"], 2), "fp32_p50_ms": round(1e3 * p50["fp32"], 2),
                         "transformers_p50_ms": round(1e3 * p50["transformers"], 2),
                         "ratio": round(p50[shipped] / p50["transformers"], 3),
                         "int8_vs_fp32": round(p50["int8"] / p50["fp32"], 3),
                         "int8_cosine_to_fp32_min": round(float((both[0] * both[1]).sum(-1).min()), 4),
                         "shipped": shipped,
                         "queries": len(enc_times)}
        for n in a.router_sizes:
            router = LoRARouter(encoder=encoder)
            router.add_skill("velmora", routing)  # the real skill among n - 1 synthetic ones
            for i in range(n - 1):
                keys = rng.standard_normal((23, 384)).astype("float32")
                router.add_skill(f"synthetic_{i}", encode_routing_key(keys, {f"Zarquon{i}": 20}))
            router.route(queries[0])  # warm-up
            times, right = [], 0
            for q in queries:
                t0 = time.perf_counter()
                r = router.route(q)
                times.append(time.perf_counter() - t0)
                right += r.best_skill == "velmora"
            route.append({"skills": n, "p50_ms": round(1e3 * percentile(times, 50), 2),
                          "p95_ms": round(1e3 * percentile(times, 95), 2),
                          "encode_p50_ms": round(1e3 * percentile(enc_times, 50), 2),
                          "best_is_the_real_skill": f"{right}/{len(queries)}"})
        res["routing"] = route
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(table(["r", "card KiB", "LoRA params", "layers"], [[s["r"], s["kib"], s["params"], s["layers"]] for s in sizes]))
    print(table(["skills installed", "hot-load p50 ms", "p95 ms", "max ms", "read_card p50 ms"],
                [[h["installed"], h["p50_ms"], h["p95_ms"], h["max_ms"], h["read_p50_ms"]] for h in hot]))
    e = res["encode"]
    print(f"MiniLM encode of one query, p50 over {e['queries']} interleaved: ours int8 {e['int8_p50_ms']} ms, "
          f"ours fp32 {e['fp32_p50_ms']} ms, transformers BertModel {e['transformers_p50_ms']} ms; shipped "
          f"({e['shipped']}) / BertModel {e['ratio']}, int8 / fp32 {e['int8_vs_fp32']}; "
          f"lowest cosine int8 vs fp32 {e['int8_cosine_to_fp32_min']}")
    print(table(["skills", "route p50 ms", "p95 ms", "of which MiniLM encode p50 ms", "right skill best"],
                [[r["skills"], r["p50_ms"], r["p95_ms"], r["encode_p50_ms"], r["best_is_the_real_skill"]] for r in route]))
    save(out, "bench_hotload", res)
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].plot([h["installed"] for h in hot], [h["p50_ms"] for h in hot], "o-", label="p50")
    axes[0].plot([h["installed"] for h in hot], [h["p95_ms"] for h in hot], "s--", label="p95")
    axes[0].set(xscale="log", xlabel="skills installed", ylabel="hot-load ms", title="install + activate")
    axes[0].legend()
    axes[1].plot([r["skills"] for r in route], [r["p50_ms"] for r in route], "o-", label="p50")
    axes[1].plot([r["skills"] for r in route], [r["p95_ms"] for r in route], "s--", label="p95")
    axes[1].set(xscale="log", xlabel="skills", ylabel="ms per query", title="route()")
    axes[1].legend()
    axes[2].bar([str(s["r"]) for s in sizes], [s["kib"] for s in sizes])
    axes[2].axhline(1024, color="k", lw=0.8, ls=":")
    axes[2].set(xlabel="rank r", ylabel="KiB", title="card size (float16)")
    fig.tight_layout()
    fig.savefig(out / "bench_hotload.png", dpi=120)
    plt.close(fig)
    print(f"results: {out}")
    return res


if __name__ == "__main__":
    main()
