"""evolve.py: detect -> distill -> fit -> export -> deploy -> verify.

A thin Hydra wrapper; the logic lives in plain functions that take already-built config.
    python evolve.py stage=distill query="Who was Brindlemark's first mayor, and when?"
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from autodidact.cli import rewrite_argv
from autodidact.errors import AutodidactError
from autodidact.teachers.stage import run_distill_stage


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        if cfg.stage == "distill":
            run_distill_stage(cfg, run_dir)
            return
        print(f"stage={cfg.stage}: the learning loop is not built yet; only stage=distill works for now.",
              file=sys.stderr)
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
