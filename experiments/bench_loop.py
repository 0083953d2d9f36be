"""The loop end to end: seconds from a question to its verified, deployed answer, per skill, by stage.

    .venv/bin/python experiments/bench_loop.py                  # SmolLM2, the offline pack's 5 questions
    .venv/bin/python experiments/bench_loop.py --model tiny --facts 1 --set trainer.max_steps=2 factory.verify_rounds=1  # smoke

Each question is one ``python evolve.py teacher=offline skills_dir=DIR query=...`` process, as a
user types it, with one skills directory shared by all (so each question learns its own skill).
The split comes from the JSON record the process prints (``stage_seconds``: route, answer_before,
distill, train_round<k>, deploy, answer); "verify+export" is what the learning stage spent beyond
distill, training and deploy; "start-up" is the process's wall time minus the record's ``seconds``
(interpreter, imports, model and encoder load, skills scan). Then the first question is asked again
in a new process: nothing is learned, and the answer comes from the installed card.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PY, child_env, median, pyplot, run_child, run_dir, save, table  # noqa: E402

STAGES = ["start-up", "route", "answer_before", "distill", "train", "verify+export", "deploy", "answer"]


def pack_questions() -> list[str]:
    pack = json.loads((importlib.resources.files("autodidact") / "resources" / "demo_pack.json").read_text())
    return [f["question"] for f in pack["facts"]]


def split(rec: dict, wall: float) -> dict[str, float]:
    st = dict(rec.get("stage_seconds") or {})
    train = sum(v for k, v in st.items() if k.startswith("train_round"))
    learn = st.get("learn", 0.0)
    out = {
        "start-up": max(0.0, wall - float(rec.get("seconds") or 0.0)),
        "route": st.get("route", 0.0),
        "answer_before": st.get("answer_before", 0.0),
        "distill": st.get("distill", 0.0),
        "train": train,
        "verify+export": max(0.0, learn - st.get("distill", 0.0) - train - st.get("deploy", 0.0)) if learn else 0.0,
        "deploy": st.get("deploy", 0.0),
        "answer": st.get("answer", 0.0),
    }
    return {k: round(v, 3) for k, v in out.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--facts", type=int, default=5, help="how many of the offline pack's questions")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra evolve.py overrides")
    ap.add_argument("--no-again", action="store_true", help="skip asking the first question a second time")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    out = run_dir("bench_loop", a.out)
    skills = out / "skills"
    questions = pack_questions()[: a.facts]
    env = child_env()
    records = []

    def ask(q: str, tag: str) -> dict:
        cmd = [PY, "evolve.py", "teacher=offline", f"skills_dir={skills}", f"query={q}", f"model={a.model}",
               f"hydra.run.dir={out / tag}", *a.set]
        r = run_child(cmd, env=env, timeout=a.timeout)
        rec = {"tag": tag, "query": q, "rc": r["rc"], "wall_s": round(r["wall_s"], 2),
               "peak_rss_mb": round(r["peak_rss_mb"]), "command": " ".join(cmd[1:])}
        try:
            rec["record"] = json.loads(r["stdout"].strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            rec["error"] = r["stderr"][-3000:]
            return rec
        rec["stages"] = split(rec["record"], r["wall_s"])
        rec["learned"], rec["verified"] = rec["record"].get("learned"), rec["record"].get("verified")
        print(f"{tag}: {rec['wall_s']:.1f} s, learned={rec['learned']} verified={rec['verified']}", flush=True)
        return rec

    for i, q in enumerate(questions):
        records.append(ask(q, f"learn-{i}"))
    if not a.no_again:
        records.append(ask(questions[0], "again-0"))

    ok = [r for r in records if "stages" in r]
    rows = [[r["tag"], r["learned"], r["verified"], r["wall_s"], r["peak_rss_mb"], *(r["stages"][s] for s in STAGES)]
            for r in ok]
    print(table(["run", "learned", "verified", "wall s", "peak RSS MB", *STAGES], rows))
    learned = [r for r in ok if r["tag"].startswith("learn")]
    summary = {}
    if learned:
        summary = {
            "median_wall_s": round(median([r["wall_s"] for r in learned]), 2),
            "median_question_to_answer_s": round(median([r["record"]["seconds"] for r in learned]), 2),
            "median_stage_s": {s: round(median([r["stages"][s] for r in learned]), 3) for s in STAGES},
            "verified": f"{sum(bool(r['verified']) for r in learned)}/{len(learned)}",
        }
        print(f"median per learned skill: {summary['median_wall_s']} s whole process, "
              f"{summary['median_question_to_answer_s']} s question -> answer; verified {summary['verified']}")
    save(out, "bench_loop", {"model": a.model, "overrides": a.set, "runs": records, "summary": summary})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(ok) + 3), 3.6))
    bottom = [0.0] * len(ok)
    for j, s in enumerate(STAGES):
        vals = [r["stages"][s] for r in ok]
        ax.bar(range(len(ok)), vals, bottom=bottom, label=s, color=f"C{j}")
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xticks(range(len(ok)), [r["tag"] for r in ok], rotation=30)
    ax.set_ylabel("seconds")
    ax.set_title(f"question -> verified deployed answer ({a.model})")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "bench_loop.png", dpi=120)
    plt.close(fig)
    print(f"results: {out}")
    return {"runs": records, "summary": summary}


if __name__ == "__main__":
    main()
