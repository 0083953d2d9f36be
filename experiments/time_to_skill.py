"""Time-to-skill on the default model: train the shipped example skill, verify it, print the figures.

    .venv/bin/python experiments/time_to_skill.py [--precision auto bf16-mixed 32-true] [--model smollm2]

Each configuration runs in its own process so peak RSS is that run's alone. Prints one table row
per configuration: steps, training seconds, time-to-skill (load + train + verify + export), peak RSS,
card size, and whether the question and the held-out paraphrases are answered correctly from the card
loaded into a fresh model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r'''
import json, resource, sys, time
t0 = time.perf_counter()
from autodidact.card import load_card
from autodidact.data import load_pairs
from autodidact.evaluation import answer_is_correct
from autodidact.inference.generate import generate_answer
from autodidact.lora_trainer import LoRAConfig, LoRATrainer, TrainConfig
from autodidact.models import configure_threads, load_model
from autodidact.train_skill import example_data_path
model, precision, out = sys.argv[1], sys.argv[2], sys.argv[3]
configure_threads(None)
b = load_model(model)
pairs = load_pairs(example_data_path())
held = load_pairs(example_data_path().with_name("example_heldout.jsonl"))
t_load = time.perf_counter() - t0
tr = LoRATrainer(b, LoRAConfig(), TrainConfig.of(precision=precision, progress_bar=False))
res = tr.fit(pairs, "velmora")
card = tr.export(out, "velmora", "velmora", res)
t_skill = time.perf_counter() - t0
fresh = load_model(model)
load_card(card, fresh.model, fresh.fingerprint)
from autodidact.inference.lora_layer import set_adapter
set_adapter(fresh.model, "velmora")
q_ok = answer_is_correct(generate_answer(fresh.model, fresh.tokenizer, pairs[0].question), pairs[0].answer)
h_ok = sum(answer_is_correct(generate_answer(fresh.model, fresh.tokenizer, p.question), p.answer) for p in held)
print(json.dumps({"steps": res.steps, "train_s": res.seconds, "load_s": round(t_load, 1),
                  "time_to_skill_s": round(t_skill, 1), "loss": [res.loss_initial, res.loss_final],
                  "card_bytes": card.stat().st_size, "question_ok": q_ok, "heldout_ok": f"{h_ok}/{len(held)}",
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--precision", nargs="+", default=["auto"],
                    help="auto: fp32 on CPUs without native bf16 (bf16 is emulated there, ~6x slower)")
    args = ap.parse_args()
    print(f"{'precision':<12} {'steps':>5} {'train s':>8} {'to skill s':>10} {'peak RSS MB':>11} "
          f"{'card KB':>8} {'question':>8} {'held-out':>8}")
    for prec in args.precision:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", CHILD, args.model, prec, str(Path(d) / "x.lora.arrow")],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{prec}: failed\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{prec:<12} {r['steps']:>5} {r['train_s']:>8.1f} {r['time_to_skill_s']:>10.1f} "
                  f"{r['peak_rss_mb']:>11} {r['card_bytes'] / 1024:>8.0f} {str(r['question_ok']):>8} "
                  f"{r['heldout_ok']:>8}   (wall {time.perf_counter() - t:.0f} s)")
    print(f"children peak RSS (max over runs): {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
