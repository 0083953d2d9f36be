"""Fit ``router.answer_threshold`` (answer dissonance) on trained skills from a dev pack.

    python experiments/fit_answer_threshold.py                 # the dev pack, SmolLM2; reports the fit
    python experiments/fit_answer_threshold.py --write         # ... and writes it to conf/router/
    python experiments/fit_answer_threshold.py --n 2 --model tiny   # a smoke run

The threshold says when a routed skill's own answer is too unsure to give: below it, the question is
a learning event (a new fact about a learned subject). It can only be fitted on adapters that were
really trained, so this script runs the real loop on ``experiments/data/knowledge_eval_dev_pack.json``
(fictional subjects used for fitting only: not the evaluation pack that ``knowledge_eval.py`` reports
on, not the router's data) with answer dissonance off, and for each subject:

1. asks its first question with learning on (a skill is trained, verified and installed);
2. puts to that skill (the threshold only ever judges a skill the router picked, so the skill is
   chosen here directly) the question and its people-typed rephrasings (a right answer should be
   given: confidence above the threshold), then the subject's *second* question and its rephrasings
   (the skill never learned that fact: a wrong answer should be caught: confidence below it);
3. learns the second fact through the loop (``--no-joins`` skips this), and where it joined the
   subject's skill, puts both facts' questions to the joined skill: a skill holding two facts answers
   each less surely, and without these points the fit placed its cut above right answers that
   two-fact skills give (README "Many facts per subject").

Every answer is a labelled point (lowest token probability; answer right or not; whether the router,
asked the same question, picked that skill). The threshold is the cut that maximises right answers
kept plus wrong answers caught, each class weighted by how often the router actually sends it to the
skill (``deployment_weights``): the router already turns most second-fact questions into learning
events, so a cut that catches the few it lets through but withholds many right answers would cost
more learning events than it saves wrong answers. Of equally good cuts, the middle of the widest gap.
Reported: AUROC of the confidence (torchmetrics), the threshold, both rates at it, the balanced
(unweighted) threshold for comparison, and the points (``answer_threshold.json`` in the run directory).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_PACK = ROOT / "experiments" / "data" / "knowledge_eval_dev_pack.json"
CONF = ROOT / "conf" / "router" / "default.yaml"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "experiments"))

from knowledge_eval import build, flatten  # noqa: E402

from autodidact.evaluation import answer_is_correct  # noqa: E402


def best_threshold(
    points: list[tuple[float, bool]], weights: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, float, float]:
    """(threshold, share of right answers kept, share of wrong answers caught) maximising
    ``weights[0] * kept + weights[1] * caught``.

    A cut at a point's confidence ``c_k`` (answers with confidence >= it are given) splits the points
    as every threshold in (c_{k-1}, c_k] does; of the best splits, the one with the widest such gap
    wins, and the threshold is the middle of that gap: the fit commits to no more than the data says."""
    right = [c for c, ok in points if ok]
    wrong = [c for c, ok in points if not ok]
    values = sorted({c for c, _ in points})
    best: tuple | None = None
    for k, c in enumerate(values):
        kept = sum(x >= c for x in right) / max(1, len(right))
        caught = sum(x < c for x in wrong) / max(1, len(wrong))
        below = values[k - 1] if k else 0.0
        key = (round(weights[0] * kept + weights[1] * caught, 9), c - below)
        if best is None or key > best[0]:
            best = (key, (below + c) / 2, kept, caught)
    return round(min(best[1], 0.99), 4), best[2], best[3]


def deployment_weights(points: list[dict]) -> tuple[float, float]:
    """How often each class reaches the answer check: the threshold only judges questions the router
    sent to the skill, so a right answer weighs by the share of them that are about the skill's fact
    and a wrong one by the share about another fact (add-one smoothed, measured on these dev points)."""
    r = sum(p["routed"] for p in points if p["right"]) + 1
    w = sum(p["routed"] for p in points if not p["right"]) + 1
    return r / (r + w), w / (r + w)


def ask_skill(bot, skill: str, fact: dict, kind: str) -> list[dict]:
    """A fact's question and rephrasings put to ``skill`` directly: one labelled point each."""
    points = []
    for q in [fact["question"], *(r["question"] for r in fact["rephrasings"])]:
        routed = bot.detector.selected(bot.router.route(q)) == skill
        ans = bot._answer(skill, q)
        ok = answer_is_correct(ans.text, fact["answer"])
        points.append({"query": q, "kind": kind, "skill": skill, "answer": ans.text, "right": ok,
                       "confidence": round(ans.min_prob, 4), "routed": routed})
        print(f"  [{kind}] {q!r} -> {ans.text!r} right={ok} p={ans.min_prob:.4f} routed={routed}", file=sys.stderr)
    return points


def write_threshold(value: float, note: str) -> None:
    text = CONF.read_text("utf-8")
    new, n = re.subn(r"^answer_threshold: .*$", f"answer_threshold: {value}  # {note}", text, flags=re.M)
    if n != 1:
        raise SystemExit(f"{CONF}: no single 'answer_threshold:' line to replace")
    CONF.write_text(new, "utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pack", type=Path, default=DEV_PACK)
    ap.add_argument("--n", type=int, default=None, help="subjects (default: all in the pack)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--write", action="store_true",
                    help="write the fitted value into conf/router/default.yaml (the shipped value is this fit on the dev pack: README)")
    ap.add_argument("--no-joins", dest="joins", action="store_false",
                    help="skip learning each second fact into its subject's skill (the two-fact points)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.lr=2e-3")
    args = ap.parse_args(argv)
    raw = json.loads(args.pack.read_text("utf-8"))
    n = args.n or len(raw["facts"])
    run_dir = args.out or ROOT / "outputs" / "fit_answer_threshold" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    subjects, pack = flatten(raw, n)
    pack_path = run_dir / "pack.json"
    pack_path.write_text(json.dumps(pack, ensure_ascii=False), "utf-8")
    args.overrides = ["router.answer_threshold=0", *args.overrides]
    t0 = time.perf_counter()
    bot = build(args, run_dir, pack_path)
    points: list[dict] = []
    try:
        for s in subjects:
            bot.learn = True
            first = bot.ask(s["question"])
            skill = first["skill"]
            print(f"learned {s['topic']!r}: {first['learned']} ({first['seconds']} s)", file=sys.stderr)
            if skill is None or skill not in bot.manager.skills:
                print(f"  no skill for {s['topic']!r} ({first.get('reason')}): no points", file=sys.stderr)
                continue
            # The threshold judges a skill's answer once the router has picked that skill, so each
            # question is put to the subject's skill directly: the first fact's question and rephrasings
            # (it learned them) and the second fact's (it did not).
            for fact, kind in ((s, "learned"), (s["second"], "second_fact")):
                points += ask_skill(bot, skill, fact, kind)
            if not args.joins:
                continue
            # A skill that holds two facts answers each less surely than a one-fact skill (the points
            # the one-fact design lacked): the second fact is learned through the loop, and where it
            # joined this skill, both facts' questions are put to the joined skill.
            second = bot.ask(s["second"]["question"])
            print(f"  second fact {s['second']['question']!r}: learned={second['learned']} "
                  f"joined={second.get('joined')}", file=sys.stderr)
            if second.get("joined") != skill or skill not in bot.manager.skills:
                continue
            for fact, kind in ((s, "joined_first"), (s["second"], "joined_second")):
                points += ask_skill(bot, skill, fact, kind)
    finally:
        from autodidact.evolve_loop import close_autodidact

        close_autodidact(bot)
    pts = [(p["confidence"], p["right"]) for p in points]
    if not any(ok for _, ok in pts) or all(ok for _, ok in pts):
        print("every skill answer was right, or none was: nothing to fit a threshold on", file=sys.stderr)
        (run_dir / "answer_threshold.json").write_text(json.dumps({"points": points}, indent=1), "utf-8")
        return 1
    import torch
    from torchmetrics.classification import BinaryAUROC

    auroc = BinaryAUROC()(torch.tensor([c for c, _ in pts]), torch.tensor([int(ok) for _, ok in pts])).item()
    weights = deployment_weights(points)
    t, kept, caught = best_threshold(pts, weights)
    balanced = best_threshold(pts)
    report = {"pack": str(args.pack), "n_subjects": n, "model": args.model, "answer_threshold": t,
              "auroc": round(auroc, 4), "right_kept": round(kept, 4), "wrong_caught": round(caught, 4),
              "class_weights": [round(x, 4) for x in weights], "balanced_threshold": balanced[0],
              "routed_right": sum(p["routed"] for p in points if p["right"]),
              "routed_wrong": sum(p["routed"] for p in points if not p["right"]),
              "n_right": sum(ok for _, ok in pts), "n_wrong": sum(not ok for _, ok in pts),
              "by_kind": {k: {"n": sum(p["kind"] == k for p in points),
                              "right": sum(p["right"] for p in points if p["kind"] == k)}
                          for k in dict.fromkeys(p["kind"] for p in points)},
              "seconds": round(time.perf_counter() - t0, 1), "points": points}
    (run_dir / "answer_threshold.json").write_text(json.dumps(report, indent=1), "utf-8")
    if args.write:
        write_threshold(t, f"FITTED on {args.pack.name} ({n} subjects, {args.model}) by "
                           f"experiments/fit_answer_threshold.py: AUROC {auroc:.3f}, right kept {kept:.2f}, "
                           f"wrong caught {caught:.2f}")
    print(f"answer_threshold {t} (dev: AUROC {auroc:.3f}; right answers kept {kept:.1%} of "
          f"{report['n_right']}, wrong answers caught {caught:.1%} of {report['n_wrong']}); {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
