"""Quiet by default: the terminal shows the project's own progress; libraries talk to the log file.

A first demo run used to print 64 third-party lines on stderr (W&B's banner and summary, Lightning's
"GPU available" and litlogger tips, deprecation warnings). Here each source is routed, not muted:

    warnings.warn(...)              -> logging ("py.warnings")      ┐
    lightning / transformers / peft -> logging (own handlers off)   ├─► root ─┬─► run log file: everything
    records logged before Hydra set up logging -> buffered, replayed┘         └─► console: ours + errors
    W&B's terminal output           -> WANDB_SILENT (it keeps its own debug.log in the run's wandb/ dir)
    transformers' weight-loading bars -> off

``verbose=true`` lets everything through to the console as well. Use: :func:`early` at the top of an
entry point, before the heavy imports; :func:`configure` once logging is set up (inside ``hydra.main``).
"""

from __future__ import annotations

import logging
import os
import sys

OURS = ("autodidact", "__main__", "hydra")
"""Loggers whose INFO lines belong on the console (Hydra's own: "Launching 3 jobs locally")."""
THIRD_PARTY = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "transformers",
               "huggingface_hub", "peft", "accelerate", "torch", "wandb", "py.warnings")
"""Library loggers that may carry their own stderr handler; theirs go to the log file instead."""


class _Buffer(logging.Handler):
    """Holds records logged before the run's handlers exist (imports emit deprecation warnings)."""

    def __init__(self, capacity: int = 2000) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.capacity = capacity

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.capacity:
            self.records.append(record)


class ProjectOnly(logging.Filter):
    """Console filter: the project's records (and Hydra's), anyone's errors; the rest stays in the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".", 1)[0] in OURS


_buffer: _Buffer | None = None


def early() -> None:
    """Call before importing lightning/transformers/wandb: capture warnings and buffer early records.

    With a handler on the root logger at import time Lightning propagates instead of adding its own
    stderr handler; warnings become log records, so they can be filtered like everything else.
    """
    global _buffer
    logging.captureWarnings(True)
    root = logging.getLogger()
    if _buffer is None:
        _buffer = _Buffer()
    if _buffer not in root.handlers:
        root.addHandler(_buffer)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _console_handlers(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def _route_libraries_to_root() -> None:
    if _importable("lightning"):
        # ``import lightning`` adds a stderr handler to its logger unconditionally: import it now, so
        # that handler exists to be removed, rather than appearing after this runs (train.py imports late).
        import lightning  # noqa: F401
    for name in THIRD_PARTY:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
    if "transformers" in sys.modules or _importable("transformers"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def configure(verbose: bool = False) -> None:
    """Route third-party output to the log file (console too when ``verbose``); replay buffered records.

    Call after the run's logging is configured (Hydra's ``job_logging``); safe to call more than once.
    """
    logging.captureWarnings(True)
    root = logging.getLogger()
    _route_libraries_to_root()
    for h in _console_handlers(root):
        for f in [f for f in h.filters if isinstance(f, ProjectOnly)]:
            h.removeFilter(f)
        if not verbose:
            h.addFilter(ProjectOnly())
    if not verbose:
        os.environ.setdefault("WANDB_SILENT", "true")
        if _importable("transformers"):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    if _buffer is not None:
        if _buffer in root.handlers:
            root.removeHandler(_buffer)
        records, _buffer.records = _buffer.records, []
        for record in records:
            if record.levelno >= root.level:
                root.handle(record)
