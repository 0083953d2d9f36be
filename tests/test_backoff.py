import random

import pytest

from autodidact.backoff import backoff_s
from autodidact.learning_queue import QueuePolicy
from autodidact.teachers.settings import FailoverPolicy


@pytest.mark.parametrize(("attempt", "want"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)])
def test_doubles_from_the_base_up_to_the_cap(attempt, want):
    assert backoff_s(attempt, base_s=2.0, max_s=10.0) == want


def test_jitter_only_shortens_and_stays_within_its_share():
    rng = random.Random(0)
    delays = [backoff_s(3, 2.0, 10.0, jitter=0.25, rng=rng) for _ in range(200)]
    assert all(6.0 <= d <= 8.0 for d in delays) and len(set(delays)) > 100


def test_the_queue_and_the_teacher_chain_use_the_same_rule():
    queue = QueuePolicy(backoff_base_s=1.5, backoff_max_s=20.0)
    chain = FailoverPolicy(backoff_base_s=1.5, backoff_max_s=20.0, jitter=0.0)
    for attempt in range(1, 8):
        assert queue.backoff(attempt) == chain.backoff(attempt, random.Random(0)) == backoff_s(attempt, 1.5, 20.0)
