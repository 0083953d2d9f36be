"""Learn N facts in sequence through the real loop and score it like a knowledge-editing benchmark.

    python experiments/knowledge_eval.py                   # N=20 subjects on SmolLM2 (two facts each)
    python experiments/knowledge_eval.py --n 2 --model tiny   # a smoke run (the tiny model learns little)
    python experiments/knowledge_eval.py --out DIR --budget-minutes 90   # stop starting subjects after 90 min
    python experiments/knowledge_eval.py --out DIR --resume   # go on where a run in DIR stopped

A full run is long on a CPU (a learning question costs about a minute on 2 cores), so a run can be
cut short and resumed: each finished subject is appended to ``subjects.jsonl`` and every answer to
``records.jsonl``; ``--resume`` reuses the base model's answers, the finished subjects and the skills
directory, and redoes the subject that was unfinished (its skill may already be installed, in which
case its first question is answered without a new event; the row says ``"resumed": true``).
``--budget-minutes`` starts no new subject after that many minutes and goes to the final sweep with
the subjects finished; the summary gives ``n_subjects`` finished of ``n_subjects_asked``.

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

    reliability      each learned question answered right just after it was learned (the loop's answer
                     then is the one the deployed card gave in the verification that passed it;
                     same_subject and retention ask again, each a fresh greedy decode)
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
    ap.add_argument("--resume", action="store_true", help="go on with the run in --out")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="start no new subject after this many minutes; then the final sweep")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for conf/config.yaml, e.g. trainer.lr=2e-3")
    args = ap.parse_args(argv)
    if args.resume and args.out is None:
        ap.error("--resume needs --out DIR (the run to go on with)")
    run_dir = args.out or ROOT / "outputs" / "knowledge_eval" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    subjects, pack = flatten(json.loads(PACK.read_text("utf-8")), args.n)
    pack_path = run_dir / "pack.json"
    log_path = run_dir / "records.jsonl"
    done_path = run_dir / "subjects.jsonl"
    previous: list[dict] = []
    base: dict[str, str] = {}
    if args.resume:
        if not log_path.exists():
            ap.error(f"--resume: nothing to resume in {run_dir} (no records.jsonl)")
        if json.loads(pack_path.read_text("utf-8")) != pack:
            ap.error(f"--resume: {run_dir} was run with another --n or pack; use the same --n")
        previous = [json.loads(line) for line in done_path.read_text("utf-8").splitlines()] if done_path.exists() else []
        for line in log_path.read_text("utf-8").splitlines():
            rec = json.loads(line)
            if rec["tag"] == "base":
                base[rec["query"]] = rec["answer"]
        print(f"resuming {run_dir}: {len(previous)} subject(s) done, {len(base)} base answers", file=sys.stderr)
    elif log_path.exists():
        ap.error(f"{run_dir} already holds a run; use --resume to go on with it, or another --out")
    else:
        pack_path.write_text(json.dumps(pack, ensure_ascii=False), "utf-8")
    t_start = time.perf_counter()
    bot = build(args, run_dir, pack_path)

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
        base |= {q: ask(q, False, "base")["answer"] for _, q in locality if q not in base}
        rows = list(previous)
        for i, s in enumerate(subjects):
            if i < len(previous):
                continue
            if args.budget_minutes is not None and time.perf_counter() - t_start > 60 * args.budget_minutes:
                print(f"budget of {args.budget_minutes} min spent: {i} of {len(subjects)} subjects", file=sys.stderr)
                break
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
                "resumed": bool(args.resume and i == len(previous)),
            })
            with done_path.open("a", encoding="utf-8") as f:  # progress, for --resume
                f.write(json.dumps(rows[-1], ensure_ascii=False) + "\n")
        retention = []
        for s in subjects[: len(rows)]:
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
        "n_subjects": len(rows),
        "n_subjects_asked": len(subjects),
        "n_facts": 2 * len(rows),
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
        "wall_seconds": round(time.perf_counter() - t_start, 1),  # this process (a resumed run: since resuming)
        "resumed": bool(args.resume),
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
