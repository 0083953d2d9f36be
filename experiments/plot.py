"""Draw what a run or a sweep of ``evolve.py`` did, as PNGs.

    python experiments/plot.py multirun/2026-11-26/15-50-00     # a sweep (-m): one job per threshold
    python experiments/plot.py outputs/2026-11-26/15-50-00      # one run
    python experiments/plot.py DIR --out figures/ --pack my_pack.json

writes into ``DIR/plots`` (or ``--out``):

    loss_curves.png    training loss per step of every skill a run learned (one panel per run), read
                       from the cards themselves (each card keeps its ``loss_curve``)
    threshold.png      learning events, skills learned and answer accuracy against ``router.threshold``
    stage_seconds.png  where each run's time went, by stage (stacked: route, distill, train, verify, ...)
    summary.json       the figures behind them, one row per run

A run is a directory with ``results.jsonl`` (evolve.py's records) and ``.hydra/`` (its config); a sweep
is a directory of them. Accuracy needs reference answers: those of the knowledge pack the run's offline
teacher used (``teacher.pack``, else the shipped demo pack; ``--pack`` overrides). A question the pack
does not know is left out of the accuracy, and a run with none it knows has no accuracy point.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

RESULTS = "results.jsonl"
STAGES = ("route", "answer_check", "answer_before", "distill", "base_check", "train", "verify", "export",
          "deploy", "learn_other", "answer")
"""Stacking order; ``train``/``verify`` sum every round, ``learn_other`` is the rest of ``learn``."""


def find_runs(root: Path) -> list[Path]:
    """``root`` itself when it is a run, else its job directories in job-number order."""
    if (root / RESULTS).exists():
        return [root]
    runs = [p.parent for p in root.glob(f"*/{RESULTS}")]
    return sorted(runs, key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))


def read_records(run: Path) -> list[dict]:
    lines = (run / RESULTS).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def read_config(run: Path) -> tuple[dict, list[str]]:
    """The job's saved config (unresolved: the values plotted are plain ones) and its overrides."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"), resolve=False)
    over = run / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(over)) if over.exists() else []
    assert isinstance(cfg, dict)
    return cfg, [str(o) for o in overrides]


def stage_seconds(records: list[dict]) -> dict[str, float]:
    """Seconds per stage over every record, rounds merged (``train_round2`` counts as ``train``)."""
    out: dict[str, float] = defaultdict(float)
    for rec in records:
        stages = dict(rec.get("stage_seconds") or {})
        learn = stages.pop("learn", 0.0)
        inside = 0.0
        for key, value in stages.items():
            name = re.sub(r"_round\d+$", "", key)
            out[name] += value
            if name not in ("route", "answer_check", "answer_before", "answer"):
                inside += value  # measured inside the learn stage
        out["learn_other"] += max(0.0, learn - inside)
    return dict(out)


def references(cfg: dict, pack: str | None) -> list:
    """The facts of the knowledge pack that holds this run's right answers."""
    from autodidact.teachers.offline import load_pack

    path = pack or (cfg.get("teacher") or {}).get("pack")
    return load_pack(path if path and "${" not in str(path) else None)


def accuracy(records: list[dict], facts: list) -> tuple[float | None, int]:
    """(share of answers right, how many records had a reference); None when none had one."""
    from autodidact.evaluation import answer_is_correct
    from autodidact.teachers.offline import match_fact

    judged = right = 0
    for rec in records:
        fact = match_fact(rec["query"], facts)
        if fact is None or rec.get("answer") is None:
            continue
        judged += 1
        right += answer_is_correct(rec["answer"], fact.answer)
    return (right / judged if judged else None), judged


def loss_curves(run: Path, records: list[dict]) -> dict[str, list[float]]:
    """Skill -> per-step training loss, from the cards the records name and the run's own skills dir."""
    from autodidact.card import SUFFIX, CardError, read_card

    paths = {Path(r["card"]) for r in records if r.get("card")}
    paths |= set((run / "skills").glob(f"*{SUFFIX}"))
    curves = {}
    for path in sorted(paths):
        try:
            meta = read_card(path).meta
        except (CardError, OSError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        if meta.get("loss_curve"):
            curves[meta.get("skill", path.stem)] = [float(x) for x in meta["loss_curve"]]
    return curves


def summarise(run: Path, pack: str | None) -> dict:
    records = read_records(run)
    cfg, overrides = read_config(run)
    acc, judged = accuracy(records, references(cfg, pack))
    threshold = (cfg.get("router") or {}).get("threshold")
    return {
        "run": str(run),
        "overrides": overrides,
        "label": run.name,
        "threshold": float(threshold) if isinstance(threshold, (int, float)) else None,
        "queries": len(records),
        "learning_events": sum("answer_before" in r for r in records),  # set exactly when dissonant
        "learned": sum(bool(r.get("learned")) for r in records),
        "errors": sum("error" in r for r in records),
        "accuracy": acc,
        "judged": judged,
        "stage_seconds": {k: round(v, 3) for k, v in stage_seconds(records).items()},
        "loss_curves": loss_curves(run, records),
    }


def plot_loss_curves(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    cols = min(3, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.4 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        for skill, losses in row["loss_curves"].items():
            ax.plot(range(1, len(losses) + 1), losses, label=skill[:40])
        ax.set_title(row["label"], fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        if row["loss_curves"]:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no skill learned", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_threshold(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    pts = sorted((r for r in rows if r["threshold"] is not None), key=lambda r: r["threshold"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if not pts:
        ax.text(0.5, 0.5, "no run has a router.threshold", ha="center", va="center", transform=ax.transAxes)
    else:
        x = [r["threshold"] for r in pts]
        ax.plot(x, [r["learning_events"] for r in pts], "o-", label="learning events")
        ax.plot(x, [r["learned"] for r in pts], "s--", label="skills learned")
        ax.set_xlabel("router.threshold")
        ax.set_ylabel(f"count (of {max(r['queries'] for r in pts)} questions)")
        judged = [(r["threshold"], r["accuracy"]) for r in pts if r["accuracy"] is not None]
        if judged:
            acc = ax.twinx()
            acc.plot([t for t, _ in judged], [a for _, a in judged], "^-", color="tab:green", label="accuracy")
            acc.set_ylim(0, 1.05)
            acc.set_ylabel("answers right")
            acc.legend(loc="upper right")
        ax.legend(loc="upper left")
    ax.set_title("learning events and accuracy against the dissonance threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_stages(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows) + 3), 4))
    labels = [r["label"] if r["threshold"] is None else f"{r['threshold']:g}" for r in rows]
    bottom = [0.0] * len(rows)
    colors = plt.get_cmap("tab20").colors  # one colour per stage: tab10 would repeat after ten
    for i, stage in enumerate(STAGES):
        vals = [r["stage_seconds"].get(stage, 0.0) for r in rows]
        if any(vals):
            ax.bar(labels, vals, bottom=bottom, label=stage, color=colors[(2 * i) % 20 + (2 * i) // 20])
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xlabel("router.threshold" if all(r["threshold"] is not None for r in rows) else "run")
    ax.set_ylabel("seconds (all questions)")
    ax.set_title("time per stage")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="a run directory (results.jsonl) or a sweep directory of them")
    ap.add_argument("--out", type=Path, help="where the PNGs go (default: DIR/plots)")
    ap.add_argument("--pack", help="knowledge pack with the right answers (default: the run's teacher.pack)")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    runs = find_runs(args.dir)
    if not runs:
        print(f"error: no {RESULTS} in {args.dir} or its job directories; give an evolve.py run or sweep dir",
              file=sys.stderr)
        return 1
    rows = [summarise(run, args.pack) for run in runs]
    # A job is named by what sets it apart: the overrides not every job of the sweep shares.
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for r in rows:
        r["label"] = " ".join(o for o in r["overrides"] if o not in shared)[:60] or r["label"]
    out = args.out or args.dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    plot_loss_curves(rows, out / "loss_curves.png")
    plot_threshold(rows, out / "threshold.png")
    plot_stages(rows, out / "stage_seconds.png")
    (out / "summary.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.2f} of {r['judged']}"
        print(f"{r['label']:<32} events {r['learning_events']:>3}  learned {r['learned']:>3}  accuracy {acc}  "
              f"seconds {sum(r['stage_seconds'].values()):.1f}")
    print(f"wrote {out}/loss_curves.png, threshold.png, stage_seconds.png, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
