"""Learn N facts in sequence through the real loop and score it like a knowledge-editing benchmark.

    python experiments/knowledge_eval.py                   # N=20 subjects on SmolLM2 (two facts each)
    python experiments/knowledge_eval.py --n 2 --model tiny   # a smoke run (the tiny model learns little)

The evaluation pack (``experiments/data/knowledge_eval_pack.json``; not the demo pack, not the router
data) holds fictional subjects in a KnowEdit-like schema: a question and answer, people-typed
rephrasings never shown to the teacher's pairs, locality questions (one general, one look-alike about
another subject), and a second fact about the same subject. The offline teacher serves its pairs, so
the run needs no key; everything else is the real loop (``evolve_loop.build_autodidact``): router,
dissonance (routing and answer confidence), distiller, LoRA training, verification, cards, hot-load.

For each subject in turn: ask the first question (learning on), then its rephrasings (learning on:
a rephrasing that triggers learning counts against the loop), then the second question (must be
learned and join the subject's skill), then the second fact's rephrasings. At the end, every
question again and every locality question (learning off). Reported (table, JSON, PNG):

    reliability      each learned question answered right just after it was learned
    generalization   rephrasings answered right, just after learning, with no new learning event
    locality         locality questions answered exactly as the base model answered them before any learning
    same_subject     second fact right after it was learned and the first still right then
    retention        every fact's question still right after the last edit
    events/question  learning events per question asked (ideal: 2 per subject, 0 per rephrasing)
    seconds/skill    wall time of each learning question
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "experiments" / "data" / "knowledge_eval_pack.json"
sys.path.insert(0, str(ROOT / "src"))

from autodidact.evaluation import answer_is_correct  # noqa: E402


def flatten(pack: dict, n: int) -> tuple[list[dict], dict]:
    """The first ``n`` subjects, and an offline knowledge pack holding their first then second facts."""
    subjects = pack["facts"][:n]
    keys = ("topic", "keywords", "question", "answer", "pairs", "heldout")
    facts = [{k: s[k] for k in keys} for s in subjects] + [{k: s["second"][k] for k in keys} for s in subjects]
    return subjects, {"name": "knowledge-eval", "notice": pack.get("notice", ""), "version": 1, "facts": facts}


def build(args, run_dir: Path, pack_path: Path):
    from hydra import compose, initialize_config_dir

    from autodidact.evolve_loop import build_autodidact

    overrides = [f"model={args.model}", "teacher=offline", f"teacher.pack={pack_path}",
                 f"skills_dir={run_dir / 'skills'}", "logger=none", "trainer.progress_bar=false",
                 *args.overrides]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides)
    return build_autodidact(cfg, run_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="subjects (each has two facts)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for conf/config.yaml, e.g. trainer.lr=2e-3")
    args = ap.parse_args(argv)
    run_dir = args.out or ROOT / "outputs" / "knowledge_eval" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    subjects, pack = flatten(json.loads(PACK.read_text("utf-8")), args.n)
    pack_path = run_dir / "pack.json"
    pack_path.write_text(json.dumps(pack, ensure_ascii=False), "utf-8")
    t_start = time.perf_counter()
    bot = build(args, run_dir, pack_path)
    log_path = run_dir / "records.jsonl"

    def ask(q: str, learn: bool, tag: str) -> dict:
        bot.learn = learn
        before = len(bot.factory.queue.list())
        rec = bot.ask(q)
        rec["events"] = len(bot.factory.queue.list()) - before
        rec["tag"] = tag
        with log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        print(f"[{tag}] {q!r} -> {rec['answer']!r} (skill {rec['skill']}, p {rec['confidence_after']}, "
              f"events {rec['events']})", file=sys.stderr)
        return rec

    try:
        locality = [(s["topic"], loc["question"]) for s in subjects for loc in s["locality"]]
        base = {q: ask(q, False, "base")["answer"] for _, q in locality}
        rows = []
        for i, s in enumerate(subjects):
            second = s["second"]
            first_rec = ask(s["question"], True, f"learn {i} first")
            reliable = [answer_is_correct(first_rec["answer"], s["answer"])]
            gen = [(answer_is_correct(r["answer"], s["answer"]) and r["events"] == 0, r)
                   for r in (ask(p["question"], True, f"rephrase {i}") for p in s["rephrasings"])]
            second_rec = ask(second["question"], True, f"learn {i} second")
            reliable.append(answer_is_correct(second_rec["answer"], second["answer"]))
            first_again = ask(s["question"], False, f"keep {i} first")
            gen += [(answer_is_correct(r["answer"], second["answer"]) and r["events"] == 0, r)
                    for r in (ask(p["question"], True, f"rephrase {i} second") for p in second["rephrasings"])]
            rows.append({
                "subject": s["topic"],
                "reliability": reliable,
                "generalization": [ok for ok, _ in gen],
                "same_subject": reliable[1] and answer_is_correct(first_again["answer"], s["answer"]),
                "joined": second_rec.get("joined"),
                "events": first_rec["events"] + second_rec["events"] + sum(r["events"] for _, r in gen),
                "questions": 2 + len(gen),
                "seconds": [first_rec["seconds"], second_rec["seconds"]],
                "learned": [first_rec["learned"], second_rec["learned"]],
            })
            with (run_dir / "subjects.jsonl").open("a", encoding="utf-8") as f:  # progress, if the run is cut short
                f.write(json.dumps(rows[-1], ensure_ascii=False) + "\n")
        retention = []
        for s in subjects:
            for fact in (s, s["second"]):
                retention.append(answer_is_correct(ask(fact["question"], False, "retain")["answer"], fact["answer"]))
        local = [ask(q, False, "locality")["answer"] == base[q] for _, q in locality]
    finally:
        from autodidact.evolve_loop import close_autodidact

        close_autodidact(bot)

    def share(xs: list[bool]) -> float:
        return round(sum(xs) / max(1, len(xs)), 4)

    seconds = [x for r in rows for x in r["seconds"]]
    summary = {
        "n_subjects": len(subjects),
        "n_facts": 2 * len(subjects),
        "model": args.model,
        "reliability": share([x for r in rows for x in r["reliability"]]),
        "generalization": share([x for r in rows for x in r["generalization"]]),
        "locality": share(local),
        "same_subject": share([r["same_subject"] for r in rows]),
        "joined_subject_skill": share([r["joined"] is not None for r in rows]),
        "retention": share(retention),
        "events_per_question": round(sum(r["events"] for r in rows) / max(1, sum(r["questions"] for r in rows)), 4),
        "seconds_per_skill_median": sorted(seconds)[len(seconds) // 2] if seconds else None,
        "seconds_per_skill_max": max(seconds) if seconds else None,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    (run_dir / "knowledge_eval.json").write_text(json.dumps({"summary": summary, "subjects": rows}, indent=1))
    plot(summary, run_dir / "knowledge_eval.png")
    print(f"knowledge_eval ({summary['n_facts']} facts, {args.model}); {run_dir}")
    for k, v in summary.items():
        print(f"  {k:28s} {v}")
    return 0


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["reliability", "generalization", "locality", "same_subject", "retention"]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(keys, [summary[k] for k in keys], color="#4878a8")
    for i, k in enumerate(keys):
        ax.text(i, summary[k] + 0.02, f"{summary[k]:.2f}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_title(f"knowledge_eval: {summary['n_facts']} facts, {summary['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
