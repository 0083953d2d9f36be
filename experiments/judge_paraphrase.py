"""Can the base model tell a rephrasing from another question about the same subject? (router dev split)

    .venv/bin/python experiments/judge_paraphrase.py                      # SmolLM2, both prompts, ~7 min
    .venv/bin/python experiments/judge_paraphrase.py --model tiny --subjects 2 --prompts chat   # a smoke

The router's fact model misses rephrasings that bring one word the skill's training questions never
used, because MiniLM's cosine puts them where look-alikes and second facts sit (README, "Why recall
does not rise with these features"). This measures one more candidate signal on the **dev** split only
(it is a design question; the test split never chooses one): the instruction model the project already
ships, asked whether two questions ask for the same information.

For each dev subject the installed skill is its first fact (training questions and the question).
Positives are that fact's people-typed rephrasings; negatives are the subject's other facts (question
and two rephrasings each) and its look-alikes. Each query is paired with the skill's training question
closest in wording (difflib ratio), and scored by the model's next-token log P(yes) - log P(no) after
the prompt (``chat``: one user turn, built as every skill is prompted, ``data.prompt_ids``;
``fewshot``: four worked examples about subjects in no data file, plain text). Prints AUROC (torchmetrics) per prompt; writes
``results.json`` (every pair and its score) and ``judge_paraphrase.png`` (scores by kind).
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "experiments"))
from bench_common import pyplot, run_dir, save, table  # noqa: E402

CHAT = "Question A: {a}\nQuestion B: {b}\nDo question A and question B ask for the same information? Answer Yes or No."
FEWSHOT = (
    "Question A: Who founded the Quillmoor bakery?\nQuestion B: who started quillmoor bakery\nSame information? Yes\n\n"
    "Question A: Who founded the Quillmoor bakery?\nQuestion B: When did the Quillmoor bakery open?\nSame information? No\n\n"
    "Question A: How long is the Dunhallow canal?\nQuestion B: dunhallow canal length in km\nSame information? Yes\n\n"
    "Question A: How long is the Dunhallow canal?\nQuestion B: How long is the Dunhallow road?\nSame information? No\n\n"
    "Question A: {a}\nQuestion B: {b}\nSame information?"
)


def closest(query: str, questions: list[str]) -> str:
    """The training question closest to ``query`` in wording (case ignored)."""
    return max(questions, key=lambda t: difflib.SequenceMatcher(None, query.lower(), t.lower()).ratio())


def pairs(subjects: list[dict]) -> list[dict]:
    """(query, closest training question, label, kind) for every dev subject's first-fact skill."""
    out = []
    for s in subjects:
        first = s["facts"][0]
        keys = [*first["train"], first["question"]]
        queries = [(q, 1, "rephrasing") for q in first["rephrasings"]]
        queries += [(q, 0, "second fact") for f in s["facts"][1:] for q in [f["question"], *f["rephrasings"][:2]]]
        queries += [(q, 0, "look-alike") for q in s["lookalikes"]]
        out += [{"subject": s["subject"], "query": q, "key": closest(q, keys), "label": y, "kind": k}
                for q, y, k in queries]
    return out


def first_tokens(tok, words: list[str]) -> list[int]:
    return sorted({tok.encode(w, add_special_tokens=False)[0] for w in words})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--prompts", nargs="+", default=["chat", "fewshot"], choices=["chat", "fewshot"])
    ap.add_argument("--subjects", type=int, default=None, help="first N dev subjects (default: all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.subjects is not None and args.subjects < 1:
        ap.error(f"--subjects {args.subjects}: give at least 1 (or leave it out for all dev subjects)")

    import torch
    from calibrate_router import load_split
    from torchmetrics.classification import BinaryAUROC

    from autodidact.data import prompt_ids
    from autodidact.models import configure_threads, load_model

    configure_threads(None)
    out = run_dir("judge_paraphrase", args.out)
    subjects = load_split("dev")["subjects"][: args.subjects]
    rows = pairs(subjects)
    bundle = load_model(args.model)
    model, tok = bundle.model.eval(), bundle.tokenizer
    yes, no = first_tokens(tok, ["Yes", " Yes", "yes"]), first_tokens(tok, ["No", " No", "no"])

    @torch.no_grad()
    def score(prompt: str, a: str, b: str) -> float:
        if prompt == "chat":
            ids = prompt_ids(tok, CHAT.format(a=a, b=b))
        else:
            ids = tok(FEWSHOT.format(a=a, b=b))["input_ids"]
        logp = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
        return (torch.logsumexp(logp[yes], 0) - torch.logsumexp(logp[no], 0)).item()

    summary = []
    t0 = time.perf_counter()
    for prompt in args.prompts:
        for r in rows:
            r[prompt] = round(score(prompt, r["key"], r["query"]), 4)
        s = torch.tensor([r[prompt] for r in rows])
        y = torch.tensor([r["label"] for r in rows])
        summary.append({"prompt": prompt, "pairs": len(rows), "positives": int(y.sum()),
                        "auroc": round(BinaryAUROC()(s, y).item(), 4)})
    seconds = round(time.perf_counter() - t0, 1)

    print(f"paraphrase judge ({bundle.name}), router dev split, {len(subjects)} subjects; {out}")
    print(table(["prompt", "pairs", "rephrasings", "AUROC"],
                [[r["prompt"], r["pairs"], r["positives"], r["auroc"]] for r in summary]))
    save(out, "judge_paraphrase", {"model": bundle.name, "split": "dev", "seconds": seconds,
                                   "summary": summary, "pairs": rows})

    plt = pyplot()
    fig, axes = plt.subplots(1, len(args.prompts), figsize=(5 * len(args.prompts), 3.5), squeeze=False)
    for ax, prompt in zip(axes[0], args.prompts, strict=True):
        for kind in ("rephrasing", "second fact", "look-alike"):
            ax.hist([r[prompt] for r in rows if r["kind"] == kind], bins=20, alpha=0.5, label=kind)
        ax.set(title=f"{prompt}: log P(yes) - log P(no)", xlabel="score", ylabel="pairs")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "judge_paraphrase.png", dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
