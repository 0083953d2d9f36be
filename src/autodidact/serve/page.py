"""The page at ``/``: skills, the learning queue, recent events and each skill's loss curve.

Everything is drawn here, on the server: HTML with inline CSS and one inline SVG polyline per
skill's training loss (``loss_curve`` in its card), so the page needs nothing from the network. A
few lines of inline script re-fetch the body every two seconds so queue states move while watched.
"""

from __future__ import annotations

import math
import time
from html import escape

CHART_W, CHART_H, PAD = 320, 120, 28

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header span{color:#a9b3c7;margin-left:12px;font-size:13px}
main{padding:16px 24px;display:grid;gap:18px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0002}
h2{font-size:16px;margin:0 0 8px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e5e8ee;vertical-align:top}
th{font-weight:600;color:#55607a;font-size:12px;text-transform:uppercase}
.state{padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.pending{background:#fff3cd}.running{background:#cfe2ff}.done{background:#d1e7dd}.dead{background:#f8d7da}
.skills{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px}
.skill{border:1px solid #e5e8ee;border-radius:8px;padding:10px}.skill h3{margin:0 0 4px;font-size:14px}
.muted{color:#6b7590;font-size:12px}.ok{color:#146c43}.bad{color:#b02a37}
"""
SCRIPT = """
setInterval(async () => {
  try { const r = await fetch('/?part=main'); if (r.ok) document.querySelector('main').innerHTML = await r.text(); }
  catch (e) {}
}, 2000);
"""


def loss_chart(losses: list[float], title: str = "training loss") -> str:
    """An SVG line chart of ``losses`` per step (empty note when there is none)."""
    pts = [x for x in losses if isinstance(x, (int, float)) and math.isfinite(x)]
    if len(pts) < 2:
        return '<p class="muted">no loss curve in this card</p>'
    lo, hi = min(pts), max(pts)
    span = (hi - lo) or 1.0
    w, h = CHART_W - 2 * PAD, CHART_H - 2 * PAD
    xy = " ".join(f"{PAD + w * i / (len(pts) - 1):.1f},{PAD + h * (1 - (v - lo) / span):.1f}"
                  for i, v in enumerate(pts))
    return (
        f'<svg class="loss-chart" role="img" aria-label="{escape(title)}" width="{CHART_W}" height="{CHART_H}" '
        f'viewBox="0 0 {CHART_W} {CHART_H}" xmlns="http://www.w3.org/2000/svg">'
        f'<rect x="{PAD}" y="{PAD}" width="{w}" height="{h}" fill="#f8f9fb" stroke="#d5dae3"/>'
        f'<polyline fill="none" stroke="#2f6fde" stroke-width="2" points="{xy}"/>'
        f'<text x="{PAD}" y="{PAD - 8}" font-size="11" fill="#55607a">{escape(title)}</text>'
        f'<text x="{PAD - 4}" y="{PAD + 4}" font-size="10" text-anchor="end" fill="#55607a">{hi:.2f}</text>'
        f'<text x="{PAD - 4}" y="{PAD + h}" font-size="10" text-anchor="end" fill="#55607a">{lo:.2f}</text>'
        f'<text x="{PAD}" y="{CHART_H - 8}" font-size="10" fill="#55607a">step 1</text>'
        f'<text x="{PAD + w}" y="{CHART_H - 8}" font-size="10" text-anchor="end" fill="#55607a">step {len(pts)}</text>'
        "</svg>"
    )


def _when(t: float | None) -> str:
    if not t:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _skill_card(s: dict) -> str:
    train = s.get("train") or {}
    verify = s.get("verify") or {}
    facts = s.get("facts") or ([{"query": s["query"]}] if s.get("query") else [])
    questions = "".join(f"<li>{escape(str(f.get('query', '')))}</li>" for f in facts)
    verified = (f'<span class="ok">verified from card bytes: {verify.get("references_correct", "?")} question(s), '
                f'{verify.get("heldout_correct", "?")}/{verify.get("heldout_total", "?")} held-out</span>'
                if verify else '<span class="muted">no verification record</span>')
    size = s.get("card_bytes")
    return (
        f'<div class="skill" data-skill="{escape(s["id"])}"><h3>{escape(s["id"])}</h3>'
        f"<ul>{questions}</ul>"
        f'<div class="muted">learned {escape(str(s.get("created_at", "?")))} · '
        f'{(size or 0) / 1024:.0f} KiB card · {train.get("steps", "?")} steps in {train.get("seconds", "?")} s · '
        f'loss {train.get("loss_initial", float("nan")):.3f} → {train.get("loss_final", float("nan")):.3f}</div>'
        f"<div>{verified}</div>{loss_chart(s.get('loss_curve') or [])}</div>"
    )


def render_main(skills: list[dict], jobs: list[dict], events: list[dict], health: dict) -> str:
    """The page body (also served alone for the periodic refresh)."""
    cards = "".join(_skill_card(s) for s in skills) or '<p class="muted">no skills yet: ask something it does not know</p>'
    rows = "".join(
        f'<tr><td>{j["id"]}</td><td>{escape(j["query"][:200])}</td>'
        f'<td><span class="state {j["state"]}">{j["state"]}</span></td><td>{j["attempts"]}</td>'
        f'<td>{escape(j.get("skill") or "")}</td>'
        f'<td>{escape(", ".join(f"{k} {v:.1f}s" for k, v in (j.get("seconds") or {}).items()))}</td>'
        f'<td class="muted">{escape("; ".join(j["reasons"])[-300:] or (j.get("reason") or ""))}</td></tr>'
        for j in reversed(jobs[-50:])
    )
    queue = (f"<table><tr><th>job</th><th>question</th><th>state</th><th>attempts</th><th>skill</th>"
             f"<th>seconds per stage</th><th>reasons</th></tr>{rows}</table>" if rows
             else '<p class="muted">the queue is empty</p>')
    ev = "".join(
        f'<tr><td class="muted">{_when(e["time"])}</td><td>{escape(e["kind"])}</td>'
        f'<td>{escape(", ".join(f"{k}={v}" for k, v in e.items() if k not in ("time", "kind")))}</td></tr>'
        for e in events
    )
    events_html = f"<table>{ev}</table>" if ev else '<p class="muted">nothing has happened yet</p>'
    d, q = health["decoder"], health["queue"]
    learner = health.get("learner") or {}
    who = f'running (pid {learner.get("pid")})' if learner.get("alive") else "not running"
    status = (f'{health["skills"]} skills · decoding {d["decoding"]}, waiting {d["waiting"]} · queue: '
              f'{q["pending"]} pending, {q["running"]} running, {q["done"]} done, {q["dead"]} dead · learner '
              f"{who}")
    return (f'<section><h2>Status</h2><p id="status">{escape(status)}</p></section>'
            f'<section><h2>Skills</h2><div class="skills">{cards}</div></section>'
            f"<section><h2>Learning queue</h2>{queue}</section>"
            f"<section><h2>Latest learning events</h2>{events_html}</section>")


def render_page(model_id: str, main: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>autodidact · {escape(model_id)}'
            f'</title><meta name="viewport" content="width=device-width"><style>{STYLE}</style></head><body>'
            f'<header><h1>autodidact</h1><span>{escape(model_id)} · learns while it serves · '
            f'OpenAI-compatible at /v1</span></header><main>{main}</main><script>{SCRIPT}</script></body></html>')
