"""Distance from the limit: the FLOPs a training run spent per second vs this machine's matmul rate.

    .venv/bin/python experiments/bench_flops.py                      # SmolLM2, the shipped example skill
    .venv/bin/python experiments/bench_flops.py --model tiny --max-steps 3   # smoke

Counts, for every forward the trainer runs (frozen-layer pass, initial evaluation, training steps,
the final confirmation), the multiply-adds of the decoder layers it ran and of the vocabulary head
on labelled positions:

    FLOPs = k · (P_run · tokens + V·C · labelled) + attention scores,   k = 2 forward, 4 forward+backward

(P_run: parameters of the decoder layers that ran; tokens counts padding, which costs the same; the
backward is 2, not 4, per parameter and token because frozen weights need no weight gradient: this is
the issue's "4 × non-embedding params × trained tokens"). Divided by the seconds ``fit()`` took, it is
set against fp32 and bf16 GEMM throughput measured in the same process, same threads, at the model's
own linear shapes (M = the median tokens per training batch), FLOP-weighted.

Where the rest goes: the same fit is run a second time (same seed, a fresh adapter) under
``torch.profiler``, and its wall time is split by where the CPU was: GEMM kernels (``aten::mm``,
``addmm``, ``bmm`` …), the attention kernel, the optimizer (AdamW's update, labelled by wrapping
torch's functional ``adam``, and ``zero_grad``: Lightning runs forward and backward *inside*
``Optimizer.step``, as its closure, so that label alone would take them too), the loss, the other
tensor ops (element-wise, norms, activations, copies), and what no tensor op accounts for (Python:
Lightning's loop, data loading, hooks). The profiler adds a little time
per op, so the split is read as shares of the profiled run, whose wall time is printed beside the
unprofiled one. Skip it with ``--no-profile``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, machine, median, pyplot, run_dir, save, shipped_lora, table  # noqa: E402


def linear_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of every nn.Linear in one decoder layer, plus the head."""
    import torch.nn as nn

    from autodidact.models import decoder_layers

    layers = decoder_layers(model)
    layer0 = layers[0] if layers is not None else model
    shapes = [(m.in_features, m.out_features) for m in layer0.modules() if isinstance(m, nn.Linear)]
    return shapes


def gemm_rate(shapes: list[tuple[int, int]], m: int, dtype, seconds: float = 0.6) -> float:
    """FLOP-weighted GEMM throughput (GFLOP/s) of x (m, in) @ W (in, out) over ``shapes``."""
    import torch

    total_flops, total_s = 0.0, 0.0
    for k, n in shapes:
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        torch.nn.functional.linear(x, w)  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / len(shapes) or reps < 2:
            torch.nn.functional.linear(x, w)
            reps += 1
        total_s += time.perf_counter() - t0
        total_flops += 2.0 * m * k * n * reps
    return total_flops / total_s / 1e9


GEMM_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv",
                      "aten::_mkl_linear", "mkl::_mkl_linear", "aten::mkldnn_linear"})
OPTIMIZER_UPDATE = "optimizer: AdamW update"
BUCKETS = ("GEMM kernels", "attention kernel", "optimizer (AdamW step, zero_grad)", "loss (log-softmax, NLL)",
           "other tensor ops", "outside tensor ops (Python, Lightning, data)")


def bucket(name: str, under_optimizer: bool) -> str:
    """Which of ``BUCKETS`` a profiled op's own time belongs to."""
    if under_optimizer:
        return BUCKETS[2]
    if name in GEMM_OPS:
        return BUCKETS[0]
    if "scaled_dot_product" in name or "flash_attention" in name:
        return BUCKETS[1]
    if "log_softmax" in name or "nll_loss" in name or "cross_entropy" in name:
        return BUCKETS[3]
    return BUCKETS[4]


def time_split(events, wall_s: float) -> dict[str, float]:
    """Seconds of ``wall_s`` per bucket, from a profiler's events (their self times; the rest is outside ops)."""
    out = dict.fromkeys(BUCKETS, 0.0)
    optimizer: dict[int, bool] = {}

    def under_optimizer(e) -> bool:
        # Memoised walk up the parents: is any enclosing range the optimizer's step or zero_grad?
        key = id(e)
        if key not in optimizer:
            name = e.name or ""
            optimizer[key] = name.startswith((OPTIMIZER_UPDATE, "Optimizer.zero_grad")) or (
                e.cpu_parent is not None and under_optimizer(e.cpu_parent))
        return optimizer[key]

    for e in events:
        out[bucket(e.name or "", under_optimizer(e))] += e.self_cpu_time_total / 1e6
    inside = sum(out.values())
    out[BUCKETS[5]] = max(0.0, wall_s - inside)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled second fit (the time split)")
    a = ap.parse_args(argv)

    import torch

    import autodidact.lora_trainer as lt
    from autodidact.data import load_pairs
    from autodidact.lora_trainer import LoRATrainer, TrainConfig
    from autodidact.models import configure_threads, decoder_layers, load_model
    from autodidact.train_skill import example_data_path

    out = run_dir("bench_flops", a.out)
    info = machine()
    threads = configure_threads(None)
    bundle = load_model(a.model)
    model, cfg = bundle.model, bundle.model.config
    layers = decoder_layers(model)
    n_layers = len(layers)
    p_layer = sum(p.numel() for p in layers[0].parameters())  # (norms included; LoRA not injected yet)
    head = model.get_output_embeddings().weight
    v, c = head.shape
    attn_dim = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)

    from omegaconf import OmegaConf

    lora = shipped_lora()
    tcfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "trainer" / "cpu.yaml"))
    tcfg.pop("seed", None)
    train = TrainConfig.of(**{**tcfg, "max_steps": a.max_steps, "progress_bar": False})

    spent = {"prefix": 0.0, "train": 0.0, "eval": 0.0}
    batches: list[int] = []
    counts = {"train_tokens": 0, "train_labelled": 0, "train_calls": 0}
    real_loss, real_prefix = lt.answer_loss, lt.hidden_before_layer

    def counted_loss(m, batch, start_layer=0):
        b, t = batch["input_ids"].shape
        lab = int((batch["labels"][:, 1:] != -100).sum())
        ran = n_layers - start_layer
        grad = torch.is_grad_enabled()
        k = 4.0 if grad else 2.0
        flops = k * (p_layer * ran * b * t + v * c * lab) + k * ran * b * 2 * t * t * attn_dim
        spent["train" if grad else "eval"] += flops
        if grad:
            batches.append(b * t)
            counts["train_tokens"] += b * t
            counts["train_labelled"] += lab
            counts["train_calls"] += 1
        return real_loss(m, batch, start_layer)

    def counted_prefix(m, ids, mask, layer):
        b, t = ids.shape
        spent["prefix"] += 2.0 * (p_layer * layer * b * t + layer * b * 2 * t * t * attn_dim)
        return real_prefix(m, ids, mask, layer)

    pairs = load_pairs(example_data_path())
    lt.answer_loss, lt.hidden_before_layer = counted_loss, counted_prefix
    try:
        trainer = LoRATrainer(bundle, lora, train)
        t0 = time.perf_counter()
        result = trainer.fit(pairs, adapter="flops")
        fit_s = time.perf_counter() - t0
    finally:
        lt.answer_loss, lt.hidden_before_layer = real_loss, real_prefix
    precision = lt.resolve_precision(train.trainer_args["precision"], train.trainer_args["accelerator"])
    split = None
    if not a.no_profile:
        # The same fit again (same seed, so the same batches and steps), profiled, for the time split.
        import torch.optim.adam as adam_module

        from autodidact.inference.lora_layer import delete_adapter

        real_adam = adam_module.adam

        def labelled_adam(*args, **kwargs):  # Adam/AdamW.step's update, without the closure it also runs
            with torch.profiler.record_function(OPTIMIZER_UPDATE):
                return real_adam(*args, **kwargs)

        delete_adapter(model, "flops")
        adam_module.adam = labelled_adam
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                again = LoRATrainer(bundle, lora, train).fit(pairs, adapter="flops_profiled")
                prof_s = time.perf_counter() - t0
        finally:
            adam_module.adam = real_adam
        split = time_split(prof.events(), prof_s)

    m = int(median(batches)) if batches else 64
    shapes = linear_shapes(model)
    fp32 = gemm_rate(shapes + [(c, v)], m, torch.float32)
    bf16 = gemm_rate(shapes + [(c, v)], m, torch.bfloat16)
    total = sum(spent.values())
    achieved = total / fit_s / 1e9
    peak = bf16 if "bf16" in precision else fp32
    res = {
        "machine": info, "model": a.model, "threads": threads, "precision": precision,
        "lora": {"r": lora.r, "target_modules": lora.target_modules, "top_layers": lora.top_layers,
                 "layers_to_transform": lora.layers_to_transform},
        "steps": result.steps, "learned": result.learned, "fit_s": round(fit_s, 2), "trainer_fit_s": result.seconds,
        "gflop": {k: round(x / 1e9, 1) for k, x in spent.items()} | {"total": round(total / 1e9, 1)},
        "tokens": counts, "median_batch_tokens": m,
        "gflops_achieved": round(achieved, 1), "gemm_gflops_fp32": round(fp32, 1), "gemm_gflops_bf16": round(bf16, 1),
        "fraction_of_peak": round(achieved / peak, 3),
        "params": {"per_layer": p_layer, "layers": n_layers, "head": v * c},
    }
    if split is not None:
        gemm_s = split[BUCKETS[0]]
        res["time_split"] = {
            "profiled_fit_s": round(prof_s, 2), "profiled_steps": again.steps,
            "seconds": {k: round(x, 4) for k, x in split.items()},
            "share": {k: round(x / prof_s, 3) for k, x in split.items()},
            # The counted FLOPs (attention scores included) over the GEMM kernels' own time: how fast the
            # matrix products themselves ran, against the reference GEMM at the model's shapes.
            "gemm_gflops": round(total / gemm_s / 1e9, 1) if gemm_s > 0 else None,
            "gemm_fraction_of_peak": round(total / gemm_s / 1e9 / peak, 3) if gemm_s > 0 else None,
        }
    print(table(["what", "figure"], [
        ["model / precision / threads", f"{a.model} / {precision} / {threads}"],
        ["steps (learned)", f"{result.steps} ({result.learned})"],
        ["GFLOP spent: prefix + train + eval", f"{res['gflop']['prefix']} + {res['gflop']['train']} + "
                                               f"{res['gflop']['eval']} = {res['gflop']['total']}"],
        ["fit() seconds", round(fit_s, 1)],
        ["achieved GFLOP/s", round(achieved, 1)],
        [f"GEMM GFLOP/s at the model's shapes (M={m}): fp32 / bf16", f"{fp32:.1f} / {bf16:.1f}"],
        ["fraction of the rate for the precision used", f"{achieved / peak:.0%}"],
    ]))
    if split is not None:
        ts = res["time_split"]
        print(f"Where the time of fit() goes (a second, profiled fit: {ts['profiled_fit_s']} s, "
              f"{ts['profiled_steps']} steps; unprofiled {fit_s:.1f} s):")
        print(table(["where", "seconds", "share"],
                    [[k, round(ts["seconds"][k], 2), f"{ts['share'][k]:.0%}"] for k in BUCKETS]))
        if ts["gemm_gflops"] is not None:
            print(f"The GEMM kernels alone ran the counted FLOPs at {ts['gemm_gflops']} GFLOP/s, "
                  f"{ts['gemm_fraction_of_peak']:.0%} of the reference rate.")
    save(out, "bench_flops", res)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if split is not None else 1, figsize=(10 if split is not None else 5, 3.2),
                             squeeze=False)
    ax = axes[0][0]
    ax.bar(["training\n(achieved)", "GEMM fp32", "GEMM bf16"], [achieved, fp32, bf16], color=["C0", "C7", "C7"])
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"{a.model}, {precision}, {threads} threads: {achieved / peak:.0%} of the GEMM rate", fontsize=9)
    if split is not None:
        ax = axes[0][1]
        ax.barh([k.split(" (")[0] for k in BUCKETS][::-1], [split[k] for k in BUCKETS][::-1], color="C1")
        ax.set_xlabel("seconds of the profiled fit()")
        ax.set_title("where the time goes", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "bench_flops.png", dpi=120)
    plt.close(fig)
    print(f"results: {out}")
    return res


if __name__ == "__main__":
    main()
