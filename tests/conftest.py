"""Fixtures shared across the suite."""

from __future__ import annotations

import pytest

from autodidact.inference.encoder import SentenceEncoder, get_encoder
from autodidact.inference.generate import torch_threads


@pytest.fixture(scope="session")
def encoder() -> SentenceEncoder:
    """The real MiniLM encoder from its wheel, loaded once per test session."""
    return get_encoder()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-model tests (opt in with ``pytest.mark.usefixtures``).

    These models are too small to gain from two threads, and on a shared 2-core machine an
    oversubscribed pool was measured 7x slower (64 s vs 9 s for the memorisation run).
    """
    with torch_threads(1):
        yield
