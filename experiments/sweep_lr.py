"""Steps to learn a fact at several learning rates and batch sizes, on the knowledge-evaluation DEV pack
(never the test pack).

    .venv/bin/python experiments/sweep_lr.py                                  # the grid below, 8 dev facts
    .venv/bin/python experiments/sweep_lr.py --lr 1e-2 --ratio 1 --batch 2 4  # batch sizes
    .venv/bin/python experiments/sweep_lr.py --ratio 1 --decay 0 40 --warmup 3 --join  # second facts
    .venv/bin/python experiments/sweep_lr.py --ratio 1 --decay 40 --warmup 3 --join --warm 0 1 --facts 4
    .venv/bin/python experiments/sweep_lr.py --lr 1e-2 --ratio 1 4 --facts 2  # a smoke
    .venv/bin/python experiments/sweep_lr.py --ratio 1 --decay 40 --warmup 3 --lora 10:q_proj,v_proj 6:gate_proj,up_proj,down_proj

For each (lr, lr_b_ratio, batch size) and each dev fact: a fresh SmolLM2, a fresh adapter, trained as
``train.py`` trains (conf/lora defaults, stop once every training answer is reproduced) on the fact's
teacher pairs plus its question; then the question and its held-out rephrasings are answered greedily
with the adapter. Prints one row per configuration (median steps and training seconds, how many facts
were learned within the step budget, question and held-out accuracy) and writes ``sweep_lr.json``.
Less training time at the same accuracy is what ``trainer.lr`` / ``lr_b_ratio`` / ``batch_size`` are
chosen by (steps alone mislead across batch sizes). ``--lora TOP:MODULES`` compares adapter shapes the
same way (``lora.top_layers`` and ``lora.target_modules``): a step's work grows with the layers from the
lowest adapter up, so fewer layers with more modules each may learn in less time, or may not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEV_PACK = ROOT / "experiments" / "data" / "knowledge_eval_dev_pack.json"
DEFAULT_LORA = "shipped"  # conf/lora/default.yaml, as train.py and the loop read it


def lora_shape(spec: str):
    """``"6:gate_proj,up_proj"`` -> LoRAConfig(top_layers=6, target_modules=[...]) (``all``: every layer);
    ``"shipped"``: conf/lora/default.yaml."""
    from autodidact.lora_trainer import LoRAConfig

    if spec == DEFAULT_LORA:
        from bench_common import shipped_lora

        return shipped_lora()
    top, _, modules = spec.partition(":")
    if not modules or not (top == "all" or top.isdigit()):
        raise SystemExit(f"--lora {spec!r}: expected TOP:MODULE[,MODULE...], e.g. 6:gate_proj,up_proj,down_proj")
    return LoRAConfig(top_layers=None if top == "all" else int(top), target_modules=modules.split(","))


def run_one(fact: dict, lr: float, ratio: float, batch: int, decay: int, max_steps: int, model: str = "smollm2",
            warmup: int = 0, floor: float = 0.1, join: bool = False, warm: bool = False,
            lora: str = DEFAULT_LORA) -> dict:
    """Train one fact (with ``join``: the fact and its subject's second fact together, as the factory
    retrains a skill that a second fact joins) and answer its question(s) and held-out rephrasings.
    ``warm`` (with ``join``): first learn the fact alone, as the loop would have, and start the joint
    training from that adapter (as stored in a float16 card) instead of from LoRA's initialisation."""
    import torch

    from autodidact.data import QAPair
    from autodidact.evaluation import answer_is_correct
    from autodidact.inference.generate import generate_answer
    from autodidact.inference.lora_layer import delete_adapter, lora_state_dict
    from autodidact.lora_trainer import LoRATrainer, TrainConfig
    from autodidact.models import load_model

    bundle = load_model(model)
    facts = [fact, fact["second"]] if join else [fact]
    pairs = [QAPair(p["question"], p["answer"]) for f in facts for p in [f, *f["pairs"]]]
    cfg = TrainConfig.of(lr=lr, lr_b_ratio=ratio, batch_size=batch, decay_steps=decay,
                         warmup_steps=warmup if decay else 0, min_lr_ratio=floor, max_steps=max_steps,
                         progress_bar=False)
    start = None
    if join and warm:
        first = [QAPair(p["question"], p["answer"]) for p in [fact, *fact["pairs"]]]
        LoRATrainer(bundle, lora_shape(lora), cfg).fit(first, "first")
        start = {k: v.to(torch.float16) for k, v in lora_state_dict(bundle.model, "first").items()}
        delete_adapter(bundle.model, "first")
    res = LoRATrainer(bundle, lora_shape(lora), cfg).fit(pairs, "sweep", start_from=start)
    m, tok = bundle.model, bundle.tokenizer
    q_ok = all(answer_is_correct(generate_answer(m, tok, f["question"]), f["answer"]) for f in facts)
    held = [answer_is_correct(generate_answer(m, tok, h["question"]), h["answer"]) for f in facts for h in f["heldout"]]
    return {"topic": fact["topic"], "steps": res.steps, "train_s": res.seconds, "learned": res.learned,
            "question_ok": q_ok, "heldout_ok": sum(held), "heldout_n": len(held)}


def summary(config: tuple[float, float, int, int, int, str], runs: list[dict]) -> dict:
    lr, ratio, batch, decay, warm, lora = config
    return {"lr": lr, "lr_b_ratio": ratio, "batch_size": batch, "decay_steps": decay, "warm": bool(warm),
            "lora": lora,
            "facts": len(runs),
            "median_steps": statistics.median(r["steps"] for r in runs),
            "median_train_s": round(statistics.median(r["train_s"] for r in runs), 1),
            "learned": sum(r["learned"] for r in runs), "question_ok": sum(r["question_ok"] for r in runs),
            "heldout_ok": sum(r["heldout_ok"] for r in runs), "heldout_n": sum(r["heldout_n"] for r in runs),
            "runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-2])
    ap.add_argument("--ratio", type=float, nargs="+", default=[1.0, 4.0, 16.0], help="lr_b_ratio values")
    ap.add_argument("--batch", type=int, nargs="+", default=[4], help="batch sizes (trainer.batch_size)")
    ap.add_argument("--decay", type=int, nargs="+", default=[0],
                    help="trainer.decay_steps values (0: constant lr; else warmup, cosine decay, floor)")
    ap.add_argument("--warmup", type=int, default=0, help="trainer.warmup_steps when decaying")
    ap.add_argument("--floor", type=float, default=0.1, help="trainer.min_lr_ratio when decaying")
    ap.add_argument("--join", action="store_true",
                    help="train each subject's two facts together (a second fact joining its skill)")
    ap.add_argument("--warm", type=int, nargs="+", default=[0], choices=[0, 1],
                    help="with --join: 1 starts from the first fact's adapter, 0 from scratch (both: 0 1)")
    ap.add_argument("--lora", nargs="+", default=[DEFAULT_LORA],
                    help="adapter shapes TOP:MODULES (lora.top_layers:lora.target_modules), e.g. 6:gate_proj,up_proj,down_proj; "
                         "shipped (the default): conf/lora/default.yaml")
    ap.add_argument("--facts", type=int, default=8, help="first N facts of the dev pack")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--model", default="smollm2", help="smollm2, or tiny for a smoke")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from autodidact import quiet
    from autodidact.models import configure_threads

    quiet.configure()
    configure_threads(None)
    out = args.out or ROOT / "outputs" / "sweep_lr" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    facts = json.loads(DEV_PACK.read_text("utf-8"))["facts"][: args.facts]
    for spec in args.lora:
        lora_shape(spec)  # a malformed shape fails now, not after the first configurations' minutes
    configs = [(lr, ratio, batch, decay, warm, lora) for lr in args.lr for ratio in args.ratio for batch in args.batch
               for decay in args.decay for warm in (args.warm if args.join else [0]) for lora in args.lora]
    # Fact by fact, every configuration in turn: the machine's speed drifts within minutes, so the
    # configurations' training seconds are compared over the same minutes.
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    rows = []
    for f in facts:
        for c in configs:
            lr, ratio, batch, decay, warm, lora = c
            runs[c].append(run_one(f, lr, ratio, batch, decay, args.max_steps, args.model, args.warmup, args.floor,
                                   args.join, bool(warm), lora))
        rows = [summary(c, runs[c]) for c in configs]
        (out / "sweep_lr.json").write_text(json.dumps(rows, indent=1), "utf-8")
    what = "both facts of a subject together" if args.join else "a fact"
    print(f"steps to learn {what}, dev pack ({len(facts)} subjects, {args.model}); {out}")
    print(f"(decaying runs: warmup {args.warmup} steps, floor {args.floor:g} x lr)")
    print("lr | lr_b_ratio | batch | decay steps | warm start | adapters | median steps | median train s | learned | question | held-out")
    for r in rows:
        print(f"{r['lr']:g} | {r['lr_b_ratio']:g} | {r['batch_size']} | {r['decay_steps']} | {'yes' if r['warm'] else 'no'} | {r['lora']} | "
              f"{r['median_steps']} | {r['median_train_s']} | {r['learned']}/{r['facts']} | "
              f"{r['question_ok']}/{r['facts']} | {r['heldout_ok']}/{r['heldout_n']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
