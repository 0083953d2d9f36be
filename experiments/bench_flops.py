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
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, median, pyplot, run_dir, save, table  # noqa: E402


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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    import torch

    import autodidact.lora_trainer as lt
    from autodidact.data import load_pairs
    from autodidact.lora_trainer import LoRAConfig, LoRATrainer, TrainConfig
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

    repo = Path(__file__).resolve().parents[1]
    lora = LoRAConfig(**OmegaConf.to_container(OmegaConf.load(repo / "conf" / "lora" / "default.yaml")))
    tcfg = OmegaConf.to_container(OmegaConf.load(repo / "conf" / "trainer" / "cpu.yaml"))
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
    save(out, "bench_flops", res)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(["training\n(achieved)", "GEMM fp32", "GEMM bf16"], [achieved, fp32, bf16], color=["C0", "C7", "C7"])
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"{a.model}, {precision}, {threads} threads: {achieved / peak:.0%} of the GEMM rate")
    fig.tight_layout()
    fig.savefig(out / "bench_flops.png", dpi=120)
    plt.close(fig)
    print(f"results: {out}")
    return res


if __name__ == "__main__":
    main()
