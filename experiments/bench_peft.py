"""Time-to-skill, whole processes: our ``train.py`` against Hugging Face PEFT used two ways.

    .venv/bin/python experiments/bench_peft.py                 # SmolLM2, 3 rounds (~15-30 min on 2 cores)
    .venv/bin/python experiments/bench_peft.py --model tiny --rounds 1 --max-steps 3   # smoke

Contenders, each a fresh process, run alternately (ours, plain, tuned, ours, ...) so load on a
shared machine hits them alike; the summary is the median over rounds of the per-round ratio.

* ``ours``: ``python train.py`` exactly as a user runs it (default config: W&B offline on).
* ``peft-plain``: PEFT ``get_peft_model`` + a plain loop: full batch, fp32, the model's own loss
  (logits at every position), AdamW, stop when every answer token is the argmax.
* ``peft-tuned``: PEFT as a competent CPU user trains it: shuffled mini-batches of 8 with dynamic
  padding, bf16 autocast *where the CPU has native bf16* (``--peft-precision``; on an AVX2-only
  CPU bf16 is emulated and ~6x slower, so "auto" trains in fp32 there, as such a user would after one
  look at the clock), gradient clipping, the same per-epoch stop rule as ours.

All three use the same model, pairs, rank, alpha, target modules and layers and learning rate (read
from conf/lora/default.yaml and conf/trainer/cpu.yaml), the model's stock chat template for PEFT
and ours for ours. Every child gets OMP_WAIT_POLICY=PASSIVE (ours sets it itself; without it a busy
2-core machine slows any torch process many times). Afterwards, in this process, each trained adapter
answers the reference question and the held-out paraphrases (greedy), and the table says whether it
was right. Peak RSS is each process's own (wait4), so W&B's separate service process is not in ours.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PY, REPO, child_env, median, pyplot, run_child, run_dir, save, table  # noqa: E402

CONTENDERS = ("ours", "peft-plain", "peft-tuned")


# -- the PEFT child: runs in its own process -------------------------------------------------------
def peft_child(a: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    import random

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    pairs = [json.loads(line) for line in Path(a.data).read_text().splitlines() if line.strip()]
    eot = tok.convert_tokens_to_ids("<|im_end|>")

    def encode(q: str, ans: str) -> tuple[list[int], list[int]]:
        p = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        p = list(p["input_ids"] if hasattr(p, "keys") else p)
        y = tok(ans, add_special_tokens=False)["input_ids"] + [eot]
        return p + y, [-100] * len(p) + y

    data = [encode(p["question"], p["answer"]) for p in pairs]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eot

    def batchify(items):
        n = max(len(i) for i, _ in items)
        ids = torch.full((len(items), n), pad)
        lab = torch.full((len(items), n), -100)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for k, (i, y) in enumerate(items):
            ids[k, : len(i)], lab[k, : len(y)], mask[k, : len(i)] = torch.tensor(i), torch.tensor(y), 1
        return ids, lab, mask

    layers = a.layers
    model = get_peft_model(model, LoraConfig(
        r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=a.targets,
        layers_to_transform=layers, layers_pattern="layers" if layers else None))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    bf16 = a.precision == "bf16"
    t_load = time.perf_counter() - t0

    def step(items) -> bool:
        """One forward (+ update); True if every answer token was already the argmax."""
        ids, lab, mask = batchify(items)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, attention_mask=mask, labels=lab)
        with torch.no_grad():
            sel = lab[:, 1:] != -100
            exact = bool((out.logits[:, :-1].argmax(-1)[sel] == lab[:, 1:][sel]).all())
        return exact, out.loss

    steps, t1 = 0, time.perf_counter()
    model.train()
    if a.mode == "plain":  # full batch: the check sees the current weights, so stop before updating
        while steps < a.max_steps:
            exact, loss = step(data)
            if exact:
                break
            loss.backward()
            opt.step()
            opt.zero_grad()
            steps += 1
    else:  # shuffled mini-batches; stop after an epoch in which every batch was already right
        rng = random.Random(a.seed)
        while steps < a.max_steps:
            order = data[:]
            rng.shuffle(order)
            all_exact = True
            for i in range(0, len(order), 8):
                exact, loss = step(order[i : i + 8])
                all_exact &= exact
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
                opt.step()
                opt.zero_grad()
                steps += 1
                if steps >= a.max_steps:
                    break
            if all_exact:
                break
    train_s = time.perf_counter() - t1
    model.save_pretrained(a.out)
    del F
    print(json.dumps({"steps": steps, "train_s": round(train_s, 2), "load_s": round(t_load, 2),
                      "in_process_s": round(time.perf_counter() - t0, 2)}))


# -- verification, in the parent ---------------------------------------------------------------------
def verify_ours(card: Path, model_kind: str, questions: list[tuple[str, str]]) -> list[bool]:
    from autodidact.card import load_card
    from autodidact.evaluation import answer_is_correct
    from autodidact.inference.generate import generate_answer
    from autodidact.inference.lora_layer import delete_adapter, set_adapter
    from autodidact.models import load_model

    b = _bundle(model_kind, load_model)
    c = load_card(card, b.model, b.fingerprint, adapter_name="bench")
    set_adapter(b.model, "bench")
    try:
        return [answer_is_correct(generate_answer(b.model, b.tokenizer, q), ref) for q, ref in questions]
    finally:
        set_adapter(b.model, None)
        delete_adapter(b.model, "bench")
        del c


_BUNDLES: dict = {}


def _bundle(kind: str, load_model):
    if kind not in _BUNDLES:
        _BUNDLES[kind] = load_model(kind)
    return _BUNDLES[kind]


def verify_peft(adapter_dir: Path, model_dir: Path, questions: list[tuple[str, str]]) -> list[bool]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autodidact.evaluation import answer_is_correct

    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    ok = []
    with torch.no_grad():
        for q, ref in questions:
            ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            out = model.generate(**ids, max_new_tokens=48, do_sample=False, eos_token_id=eot,
                                 pad_token_id=tok.pad_token_id or eot)
            ok.append(answer_is_correct(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True),
                                        ref))
    return ok


# -- the parent --------------------------------------------------------------------------------------
def model_folder(kind: str, out: Path) -> Path:
    """A transformers folder PEFT can load holding exactly the weights ``train.py model=KIND`` trains."""
    from autodidact.models import load_tiny, smollm2_folder

    if kind == "smollm2":
        return smollm2_folder()
    folder = out / "tiny-model"
    b = load_tiny()
    b.model.save_pretrained(folder)
    b.tokenizer.save_pretrained(folder)
    return folder


def shipped_config() -> tuple[dict, dict]:
    from omegaconf import OmegaConf

    lora = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "lora" / "default.yaml"))
    trainer = OmegaConf.load(REPO / "conf" / "trainer" / "cpu.yaml")
    return lora, {"lr": float(trainer.lr)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    ap.add_argument("--max-steps", type=int, default=300, help="step budget for every contender")
    ap.add_argument("--peft-precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra train.py overrides for ours")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", choices=["plain", "tuned"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--r", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--alpha", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--targets", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        a.mode = a.child
        peft_child(a)
        return {}

    from autodidact.lora_trainer import cpu_has_native_bf16
    from autodidact.train_skill import example_data_path

    out = run_dir("bench_peft", a.out)
    folder = model_folder(a.model, out)
    data = example_data_path()
    from autodidact.data import load_pairs

    pairs = load_pairs(data)
    held = load_pairs(data.with_name("example_heldout.jsonl"))
    questions = [(pairs[0].question, pairs[0].answer)] + [(p.question, p.answer) for p in held]
    lora, trainer = shipped_config()
    peft_precision = a.peft_precision if a.peft_precision != "auto" else ("bf16" if cpu_has_native_bf16() else "fp32")
    env = child_env(OMP_WAIT_POLICY="PASSIVE")
    # The decoder layers ours puts adapters on (lora.top_layers / layers_to_transform), as PEFT indices.
    n_layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    layers = lora.get("layers_to_transform") or (
        list(range(max(0, n_layers - lora["top_layers"]), n_layers)) if lora.get("top_layers") else None)

    def argv_for(name: str, k: int) -> tuple[list[str], Path]:
        d = out / f"{name}-{k}"
        if name == "ours":
            card = d / "skill.lora.arrow"
            return [PY, "train.py", f"model={a.model}", f"hydra.run.dir={d}", f"card.path={card}",
                    "trainer.progress_bar=false", f"trainer.max_steps={a.max_steps}", *a.set], card
        cmd = [PY, str(Path(__file__).resolve()), "--child", name.split("-")[1], "--model-dir", str(folder),
               "--data", str(data), "--out", str(d), "--lr", str(trainer["lr"]), "--r", str(lora["r"]),
               "--alpha", str(lora["alpha"]), "--targets", *lora["target_modules"],
               "--precision", peft_precision, "--max-steps", str(a.max_steps)]
        if layers:
            cmd += ["--layers", *map(str, layers)]
        return cmd, d

    runs = []
    for k in range(a.rounds):
        for name in a.contenders:
            cmd, artefact = argv_for(name, k)
            r = run_child(cmd, env=env, timeout=a.timeout)
            rec = {"contender": name, "round": k, "wall_s": round(r["wall_s"], 2), "peak_rss_mb": round(r["peak_rss_mb"]),
                   "rc": r["rc"], "artefact": str(artefact), "command": " ".join(cmd[1:])}
            if r["rc"] != 0:
                rec["error"] = r["stderr"][-3000:]
            elif name == "ours":
                summary = dict(line.split(None, 1) for line in r["stdout"].splitlines() if line.strip())
                rec["steps"] = int(summary["steps"].split()[0])
                rec["train_s"] = float(summary["seconds"])
            else:
                rec.update(json.loads(r["stdout"].strip().splitlines()[-1]))
            runs.append(rec)
            print(f"round {k} {name:<10} {rec['wall_s']:7.1f} s  {rec['peak_rss_mb']:5} MB  rc={r['rc']}", flush=True)

    for rec in runs:  # every trained adapter must answer; checked here, outside the timed processes
        if rec["rc"] != 0:
            continue
        if rec["contender"] == "ours":
            ok = verify_ours(Path(rec["artefact"]), a.model, questions)
        else:
            ok = verify_peft(Path(rec["artefact"]), folder, questions)
        rec["question_ok"], rec["heldout_ok"] = ok[0], sum(ok[1:])

    summary: dict = {"median_wall_s": {}, "median_peak_rss_mb": {}, "ratio": {}}
    for name in a.contenders:
        good = [r for r in runs if r["contender"] == name and r["rc"] == 0]
        if good:
            summary["median_wall_s"][name] = round(median([r["wall_s"] for r in good]), 2)
            summary["median_peak_rss_mb"][name] = round(median([r["peak_rss_mb"] for r in good]))
    for peer in ("peft-plain", "peft-tuned"):
        ratios = []
        for k in range(a.rounds):
            mine = [r for r in runs if r["round"] == k and r["contender"] == "ours" and r["rc"] == 0]
            theirs = [r for r in runs if r["round"] == k and r["contender"] == peer and r["rc"] == 0]
            if mine and theirs:
                ratios.append(mine[0]["wall_s"] / theirs[0]["wall_s"])
        if ratios:
            summary["ratio"][f"ours/{peer}"] = {"median": round(median(ratios), 3), "per_round": [round(x, 3) for x in ratios]}

    rows = [[r["contender"], r["round"], r["wall_s"], r.get("train_s", "-"), r.get("steps", "-"), r["peak_rss_mb"],
             r.get("question_ok", "-"), f"{r.get('heldout_ok', '-')}/{len(held)}"] for r in runs]
    print(table(["contender", "round", "wall s", "train s", "steps", "peak RSS MB", "question", "held-out"], rows))
    for key, v in summary["ratio"].items():
        print(f"{key}: median ratio {v['median']:.3f} (per round {v['per_round']})")
    results = {"model": a.model, "rounds": a.rounds, "ours_overrides": a.set, "lora": lora, "layers": layers,
               "lr": trainer["lr"],
               "peft_precision": peft_precision, "runs": runs, "summary": summary}
    save(out, "bench_peft", results)
    plot(out, runs, a.contenders)
    print(f"results: {out}")
    return results


def plot(out: Path, runs: list[dict], contenders: list[str]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "wall_s", "whole process, s"), (axes[1], "peak_rss_mb", "peak RSS, MB")):
        for i, name in enumerate(contenders):
            vals = [r[key] for r in runs if r["contender"] == name and r["rc"] == 0]
            if vals:
                ax.bar(i, median(vals), color="C0" if name == "ours" else "C7")
                ax.plot([i] * len(vals), vals, "k.", ms=4)
        ax.set_xticks(range(len(contenders)), contenders)
        ax.set_ylabel(label)
    fig.suptitle("time-to-skill: train.py vs PEFT (median bars, rounds as dots)")
    fig.tight_layout()
    fig.savefig(out / "bench_peft.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
