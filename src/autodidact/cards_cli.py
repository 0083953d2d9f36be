"""The ``autodidact`` command: look at, check and convert skill cards without writing Python.

    autodidact cards ls [DIR]                         every card in DIR (default: the skills dir)
    autodidact cards inspect CARD [--json]            skill, base model, rank, targets, losses, teacher
    autodidact cards verify CARD [--model auto|tiny|smollm2|hf|none] [--model-path DIR]
    autodidact cards export-peft CARD DIR             adapter_config.json + adapter_model.safetensors
    autodidact cards import-peft DIR CARD [--model ...] [--skill NAME]

Exit codes: 0 done (verify: the card is good), 1 a problem with a file or model (one ``error:`` or
``invalid:`` line saying what and what to do, never a traceback), 2 a usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from autodidact.errors import AutodidactError

log = logging.getLogger(__name__)


class CliError(AutodidactError):
    """A command-line request that cannot be carried out (missing folder, model not named...)."""


# -- helpers ------------------------------------------------------------------------------------
def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.0f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def _fmt_loss(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def card_summary(card, path: Path) -> dict:
    """The facts ``inspect`` shows, as plain JSON-safe data (routing embeddings left out)."""
    m = card.meta
    train, verify, teacher = m.get("train") or {}, m.get("verify") or {}, m.get("teacher") or {}
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in card.tensors.values()})
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "skill": card.skill,
        "base_model": m["base_model"],
        "lora": m["lora"],
        "layers": len(card.layers),
        "parameters": card.num_parameters,
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "loss_before": train.get("loss_initial"),
        "loss_after": train.get("loss_final"),
        "train": train,
        "teacher": teacher or None,
        "query": m.get("query"),
        "reference_answer": m.get("reference_answer"),
        "facts": [{"query": f.get("query"), "answer": f.get("answer")} for f in m.get("facts", [])
                  if isinstance(f, dict)],
        "pairs": len(m.get("pairs", [])) if isinstance(m.get("pairs"), list) else 0,
        "verify": verify or None,
        "routing_examples": m["routing"].get("count") if isinstance(m.get("routing"), dict) else None,
        "source": m.get("source"),
        "created_at": m.get("created_at"),
        "format_version": m.get("format_version"),
    }


def _model_for(name: str | None, kind: str, model_path: str | None, seed: int | None):
    """Load the base model ``--model`` names; ``auto`` picks it from the name a card records."""
    from autodidact.models import SMOLLM2_NAME, configure_threads, default_cache_dir, load_model

    if kind == "auto":
        tiny = re.fullmatch(r"tiny-llama-s(\d+)", name or "")
        smollm2_dir = default_cache_dir() / "models" / f"{SMOLLM2_NAME}-fp32"
        if model_path and Path(model_path).expanduser().resolve() == smollm2_dir.resolve():
            kind, model_path = "smollm2", None  # the converted GGUF: load (and name) it as smollm2
        elif model_path:
            kind = "hf"
        elif name == SMOLLM2_NAME:
            kind = "smollm2"
        elif tiny:
            kind, seed = "tiny", int(tiny.group(1)) if seed is None else seed
        else:
            raise CliError(f"the card was trained on base model {name!r}, which autodidact cannot load by name; "
                           "give it with --model hf --model-path DIR (or --model none to check the file only)")
    configure_threads(None)
    return load_model(kind, path=model_path, seed=seed or 0)


# -- commands -------------------------------------------------------------------------------------
def cmd_ls(args) -> int:
    from autodidact.card import SUFFIX, CardError, read_card

    if args.dir:
        folder = Path(args.dir).expanduser()
    else:
        from autodidact.evolve_loop import resolve_skills_dir

        folder = resolve_skills_dir(None)
    if not folder.is_dir():
        raise CliError(f"{folder} is not a folder; give the skills dir (evolve.py's skills_dir) as DIR")
    rows = []
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        try:
            card = read_card(path)
        except CardError as e:
            rows.append({"file": path.name, "bytes": path.stat().st_size, "valid": False, "problem": e.problem})
            continue
        s = card_summary(card, path)
        rows.append({"file": path.name, "bytes": s["bytes"], "valid": True, "skill": s["skill"],
                     "base_model": s["base_model"].get("name"), "r": s["lora"]["r"],
                     "targets": s["lora"].get("target_modules"), "loss_before": s["loss_before"],
                     "loss_after": s["loss_after"], "created_at": s["created_at"]})
    if args.json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no cards (*{SUFFIX}) in {folder}")
        return 0
    print(f"{'SKILL':<36} {'R':>3} {'TARGETS':<16} {'LOSS':<17} {'SIZE':>8}  {'CREATED':<25} FILE")
    for r in rows:
        if not r["valid"]:
            print(f"{'INVALID':<36} {'-':>3} {'-':<16} {'-':<17} {_size(r['bytes']):>8}  {'-':<25} {r['file']}"
                  f"  ({r['problem']})")
            continue
        targets = ",".join(r["targets"] or [])
        loss = f"{_fmt_loss(r['loss_before'])} -> {_fmt_loss(r['loss_after'])}"
        print(f"{r['skill']:<36} {r['r']:>3} {targets:<16} {loss:<17} {_size(r['bytes']):>8}  "
              f"{r['created_at'] or '-':<25} {r['file']}")
    bad = sum(not r["valid"] for r in rows)
    print(f"{len(rows)} cards in {folder}" + (f", {bad} invalid (autodidact cards verify FILE says why)" if bad else ""),
          file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
    from autodidact.card import read_card

    path = Path(args.card)
    s = card_summary(read_card(path), path)
    if args.json:
        print(json.dumps(s, ensure_ascii=False, indent=2))
        return 0
    bm, lo, tr = s["base_model"], s["lora"], s["train"]
    lines = [
        ("file", f"{s['file']} ({_size(s['bytes'])}, format v{s['format_version']})"),
        ("skill", s["skill"]),
        ("base model", f"{bm.get('name', '?')} ({bm['fingerprint']})"),
        ("lora", f"r={lo['r']} alpha={lo['alpha']} targets={','.join(lo.get('target_modules') or [])} "
                 f"({s['layers']} layers, {s['parameters']:,} parameters, {s['dtype']})"),
        ("loss", f"{_fmt_loss(s['loss_before'])} -> {_fmt_loss(s['loss_after'])}"
                 + (f" in {tr['steps']} steps, {tr.get('seconds', 0):.1f} s" if "steps" in tr else "")),
    ]
    if s["teacher"]:
        lines.append(("teacher", ", ".join(f"{k}={v}" for k, v in s["teacher"].items())))
    if len(s["facts"]) > 1:  # a skill that grew: every fact it holds
        for i, f in enumerate(s["facts"], 1):
            lines.append((f"fact {i}", f"{f['query']} -> {f['answer']}"))
    else:
        if s["query"]:
            lines.append(("query", s["query"]))
        if s["reference_answer"]:
            lines.append(("answer", s["reference_answer"]))
    if s["pairs"]:
        lines.append(("pairs", f"{s['pairs']} training pairs kept for retraining"))
    if s["verify"]:
        v = s["verify"]
        if "references_correct" in v:  # a card that can hold several facts of one subject
            refs = f"{v['references_correct']} question(s) right"
        else:
            refs = f"reference {'right' if v.get('reference_correct') else 'wrong'}"
        lines.append(("verified", f"{refs}, held-out {v.get('heldout_correct', '?')}/{v.get('heldout_total', '?')}"
                                  + (f" (from {v['from']})" if v.get("from") else "")))
    if s["routing_examples"] is not None:
        lines.append(("routing", f"key from {s['routing_examples']} questions"))
    if s["source"]:
        lines.append(("imported", ", ".join(f"{k}={v}" for k, v in s["source"].items())))
    lines.append(("created", s["created_at"] or "-"))
    width = max(len(k) for k, _ in lines)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in lines))
    return 0


def cmd_verify(args) -> int:
    import torch

    from autodidact.card import CardError, attach_card, read_card
    from autodidact.models import ModelLoadError

    path = Path(args.card)
    try:
        card = read_card(path)
        if args.model == "none":
            print(f"ok  {path}: a well-formed card for skill {card.skill!r} ({len(card.tensors)} tensors, "
                  f"r={card.meta['lora']['r']}); not checked against a model (--model none)")
            return 0
        bundle = _model_for(card.meta["base_model"].get("name"), args.model, args.model_path, args.seed)
        attach_card(card, bundle.model, bundle.fingerprint, adapter_name="verify")
        from autodidact.inference.lora_layer import set_adapter

        set_adapter(bundle.model, "verify")
        ids = bundle.tokenizer("Hello", return_tensors="pt").input_ids
        with torch.no_grad():
            logits = bundle.model(ids).logits
        if not torch.isfinite(logits).all():
            raise CardError(path, f"loads into {bundle.name} but its outputs hold NaN or Inf; retrain the skill")
    except (CardError, ModelLoadError, CliError) as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 1
    print(f"ok  {path}: skill {card.skill!r} fits {bundle.name} ({bundle.fingerprint}); "
          f"{len(card.layers)} layers, r={card.meta['lora']['r']}, outputs finite")
    return 0


def cmd_export_peft(args) -> int:
    from autodidact.card import check_card_fits, read_card
    from autodidact.models import ModelLoadError
    from autodidact.peft_interop import CONFIG_NAME, WEIGHTS_NAME, export_peft

    model = None
    if args.model != "none":  # with the base model the config can say plain leaf names, checked
        card = read_card(args.card)
        try:
            bundle = _model_for(card.meta["base_model"].get("name"), args.model, args.model_path, args.seed)
        except (CliError, ModelLoadError) as e:
            if args.model != "auto":
                raise
            print(f"note: exporting without the base model ({e}); target_modules are derived from the card",
                  file=sys.stderr)
        else:
            check_card_fits(card, bundle.model, bundle.fingerprint)
            model = bundle.model
    out = export_peft(args.card, args.dir, base_model_name_or_path=args.base_model_path, model=model,
                      overwrite=args.force)
    cfg = json.loads((out / CONFIG_NAME).read_text())
    print(f"wrote {out}/{{{CONFIG_NAME},{WEIGHTS_NAME}}}: r={cfg['r']}, lora_alpha={cfg['lora_alpha']}, "
          f"target_modules={cfg['target_modules']}, base {cfg['base_model_name_or_path']}")
    print(f"load it with peft.PeftModel.from_pretrained(base_model, {str(out)!r}), "
          f"or serve it: vllm serve BASE --enable-lora --lora-modules NAME={out}")
    return 0


def cmd_import_peft(args) -> int:
    from autodidact.peft_interop import CONFIG_NAME, import_peft

    card_path = Path(args.card)
    if card_path.exists() and not args.force:
        raise CliError(f"{card_path} exists; choose another name or pass --force")
    name = args.model_path
    if args.model == "auto" and not name:
        from safetensors import safe_open

        from autodidact.peft_interop import WEIGHTS_NAME

        folder = Path(args.dir)
        meta = {}
        if (folder / WEIGHTS_NAME).exists():
            try:
                with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
                    meta = f.metadata() or {}
            except Exception:  # noqa: BLE001 - import_peft reports a damaged file with its reason
                meta = {}
        name = meta.get("autodidact.base_model")
        if not name and (folder / CONFIG_NAME).exists():
            try:
                base = json.loads((folder / CONFIG_NAME).read_text()).get("base_model_name_or_path")
            except (OSError, ValueError):
                base = None
            if base and (Path(base) / "config.json").exists():
                args.model_path = base
            name = base
    bundle = _model_for(name, args.model, args.model_path, args.seed)
    card = import_peft(args.dir, card_path, bundle, skill=args.skill, dtype=args.dtype)
    print(f"wrote {card_path}: skill {card.skill!r} for {bundle.name} ({bundle.fingerprint}), "
          f"r={card.meta['lora']['r']}, {len(card.layers)} layers")
    return 0


# -- parser -------------------------------------------------------------------------------------
def _add_model_args(p: argparse.ArgumentParser, allow_none: bool = False) -> None:
    kinds = ["auto", "tiny", "smollm2", "hf"] + (["none"] if allow_none else [])
    p.add_argument("--model", choices=kinds, default="auto",
                   help="base model to check against (auto: the one the card names"
                        + ("; none: do without one)" if allow_none else ")"))
    p.add_argument("--model-path", help="transformers folder for --model hf")
    p.add_argument("--seed", type=int, default=None, help="seed of --model tiny (auto: from the card)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autodidact", description="autodidact: a model that teaches itself skills")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and warnings too")
    top = parser.add_subparsers(dest="group", metavar="{cards}", required=True)
    cards = top.add_parser("cards", help="list, inspect, verify and convert .lora.arrow skill cards")
    sub = cards.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("ls", help="list the cards in a folder (default: the skills dir)")
    p.add_argument("dir", nargs="?", metavar="DIR")
    p.add_argument("--json", action="store_true", help="one JSON object per card")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("inspect", help="show what a card holds and where it came from")
    p.add_argument("card", metavar="CARD")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", help="check a card; exit 0 if good, 1 with the reason if not")
    p.add_argument("card", metavar="CARD")
    _add_model_args(p, allow_none=True)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("export-peft", help="write a card as a PEFT LoRA adapter folder")
    p.add_argument("card", metavar="CARD")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--base-model-path", help="base_model_name_or_path to record (default: the fp32 SmolLM2 "
                                             "folder for SmolLM2 cards, else the card's base model name)")
    p.add_argument("--force", action="store_true", help="overwrite an existing adapter in DIR")
    _add_model_args(p, allow_none=True)
    p.set_defaults(func=cmd_export_peft)

    p = sub.add_parser("import-peft", help="turn a PEFT LoRA adapter folder into a card")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("card", metavar="CARD")
    _add_model_args(p)
    p.add_argument("--skill", help="skill name (default: the exported one, else the folder name)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], help="stored dtype (default: the adapter's)")
    p.add_argument("--force", action="store_true", help="overwrite an existing card")
    p.set_defaults(func=cmd_import_peft)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: message + exit 2
    from autodidact import quiet

    quiet.early()
    root = logging.getLogger()
    if not any(h for h in root.handlers if isinstance(h, logging.StreamHandler)
               and not isinstance(h, logging.FileHandler)):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
        root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    quiet.configure(verbose=args.verbose)
    try:
        return args.func(args)
    except AutodidactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
