"""Steps to learn a fact at several learning rates, on the knowledge-evaluation DEV pack (never the test pack).

    .venv/bin/python experiments/sweep_lr.py                                  # the grid below, 8 dev facts
    .venv/bin/python experiments/sweep_lr.py --lr 1e-2 --ratio 1 4 --facts 2  # a smoke

For each (lr, lr_b_ratio) and each dev fact: a fresh SmolLM2, a fresh adapter, trained as ``train.py``
trains (conf/lora defaults, batch 4, stop once every training answer is reproduced) on the fact's
teacher pairs plus its question; then the question and its held-out rephrasings are answered greedily
with the adapter. Prints one row per configuration (median steps and training seconds, how many facts
were learned within the step budget, question and held-out accuracy) and writes ``sweep_lr.json``.
Fewer steps at the same accuracy is what ``trainer.lr`` / ``trainer.lr_b_ratio`` are chosen by.
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


def run_one(fact: dict, lr: float, ratio: float, max_steps: int, model: str = "smollm2") -> dict:
    from autodidact.data import QAPair
    from autodidact.evaluation import answer_is_correct
    from autodidact.inference.generate import generate_answer
    from autodidact.lora_trainer import LoRAConfig, LoRATrainer, TrainConfig
    from autodidact.models import load_model

    bundle = load_model(model)
    pairs = [QAPair(fact["question"], fact["answer"])] + [QAPair(p["question"], p["answer"]) for p in fact["pairs"]]
    cfg = TrainConfig.of(lr=lr, lr_b_ratio=ratio, max_steps=max_steps, progress_bar=False)
    res = LoRATrainer(bundle, LoRAConfig(), cfg).fit(pairs, "sweep")
    m, tok = bundle.model, bundle.tokenizer
    q_ok = answer_is_correct(generate_answer(m, tok, fact["question"]), fact["answer"])
    held = [answer_is_correct(generate_answer(m, tok, h["question"]), h["answer"]) for h in fact["heldout"]]
    return {"topic": fact["topic"], "steps": res.steps, "train_s": res.seconds, "learned": res.learned,
            "question_ok": q_ok, "heldout_ok": sum(held), "heldout_n": len(held)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-2])
    ap.add_argument("--ratio", type=float, nargs="+", default=[1.0, 4.0, 16.0], help="lr_b_ratio values")
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
    rows = []
    for lr in args.lr:
        for ratio in args.ratio:
            runs = [run_one(f, lr, ratio, args.max_steps, args.model) for f in facts]
            row = {"lr": lr, "lr_b_ratio": ratio, "facts": len(runs),
                   "median_steps": statistics.median(r["steps"] for r in runs),
                   "median_train_s": round(statistics.median(r["train_s"] for r in runs), 1),
                   "learned": sum(r["learned"] for r in runs), "question_ok": sum(r["question_ok"] for r in runs),
                   "heldout_ok": sum(r["heldout_ok"] for r in runs), "heldout_n": sum(r["heldout_n"] for r in runs),
                   "runs": runs}
            rows.append(row)
            print(f"lr {lr:g} ratio {ratio:g}: median {row['median_steps']} steps, {row['median_train_s']} s; "
                  f"learned {row['learned']}/{len(runs)}, question {row['question_ok']}/{len(runs)}, "
                  f"held-out {row['heldout_ok']}/{row['heldout_n']}", file=sys.stderr, flush=True)
            (out / "sweep_lr.json").write_text(json.dumps(rows, indent=1), "utf-8")
    print(f"steps to learn a fact, dev pack ({len(facts)} facts, {args.model}); {out}")
    print("lr | lr_b_ratio | median steps | median train s | learned | question | held-out")
    for r in rows:
        print(f"{r['lr']:g} | {r['lr_b_ratio']:g} | {r['median_steps']} | {r['median_train_s']} | {r['learned']}/{r['facts']} | "
              f"{r['question_ok']}/{r['facts']} | {r['heldout_ok']}/{r['heldout_n']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
