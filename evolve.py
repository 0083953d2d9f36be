"""evolve.py: detect -> distill -> fit -> export -> deploy -> verify.

A thin Hydra wrapper; the logic lives in plain functions that take already-built config.
    python evolve.py                                   # the demo: offline pack questions, learned and answered
    python evolve.py query="Who was Brindlemark's first mayor, and when?"
    python evolve.py queries=questions.txt router.threshold=0.35
    python evolve.py stage=distill query="..."        # only ask the teacher; write pairs.jsonl
    python evolve.py stage=serve server.port=8000      # OpenAI-compatible endpoint that learns while serving
    python evolve.py -m router.threshold=0.3,0.4,0.5  # a Hydra multirun sweep
"""

from __future__ import annotations

import gc
import os
import sys

os.environ.setdefault("WANDB_MODE", "offline")  # W&B never needs an account unless the user opts in

from autodidact import quiet

quiet.early()  # before lightning/transformers/wandb load: their banners and warnings go to the run log

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from autodidact.cli import rewrite_argv  # noqa: E402
from autodidact.errors import AutodidactError  # noqa: E402
from autodidact.settings import check_evolve_config  # noqa: E402


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        # Every section first: torch, transformers, Lightning and the SDKs (~11 s of imports, quiet's
        # included) load only for a config that is right, so a typo is reported in about a second.
        settings = check_evolve_config(cfg)
        quiet.configure(verbose=settings.run.verbose)
        # Lightning, torch and transformers are imported now (quiet.configure loads them): their ~10^6
        # objects live as long as the process, so take them out of the cyclic GC. Each full collection
        # then skips them, and so does the one at exit (~1.2 s of a train.py run on this machine).
        gc.freeze()
        if cfg.stage == "distill":
            from autodidact.teachers.stage import run_distill_stage

            run_distill_stage(cfg, run_dir)
            return
        if cfg.stage == "serve":
            from autodidact.serve.run import run_serve  # FastAPI/uvicorn load only for serve mode

            run_serve(cfg, run_dir)
            return
        if cfg.stage == "loop":
            from autodidact.evolve_loop import run_evolve

            records = run_evolve(cfg, run_dir)
            if any("error" in r for r in records):
                sys.exit(1)  # every record was still printed and saved; the exit code tells scripts
            return
        print(f"error: unknown stage={cfg.stage}; use stage=loop (default), stage=distill or stage=serve", file=sys.stderr)
        sys.exit(2)
    except AutodidactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    try:
        # Before Hydra parses argv: quote free-text questions, refuse API keys on the command line.
        sys.argv[1:] = rewrite_argv(sys.argv[1:])
    except AutodidactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    main()
