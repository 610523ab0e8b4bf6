"""BodyBudget: the request-body bytes one ingress replica holds, refused past the limit."""

from __future__ import annotations

import random

import pytest

from serve_app.api.body_budget import BodyBudget
from serve_app.errors import ServerOverloadedError


def test_declared_bodies_are_held_until_released_and_refused_past_the_limit():
    budget = BodyBudget(100, retry_after_s=1.0, rng=random.Random(0))
    first, second, third = budget.hold(), budget.hold(), budget.hold()
    first.grow_to(60)
    second.grow_to(40)  # exactly at the limit: still taken
    with pytest.raises(ServerOverloadedError) as info:
        third.grow_to(1)
    assert info.value.status_code == 429 and 1.0 <= info.value.retry_after_s <= 3.0
    assert (budget.held_bytes, third.bytes) == (100, 0)  # a refusal holds nothing
    first.release()
    third.grow_to(50)
    assert budget.held_bytes == 90
    second.release()
    third.release()
    assert budget.held_bytes == 0


def test_a_chunked_body_grows_its_hold_and_is_refused_at_the_piece_that_passes():
    budget = BodyBudget(100)
    other = budget.hold()
    other.grow_to(50)
    chunked = budget.hold()
    for size in (10, 30, 50):  # the running length of the body read so far
        chunked.grow_to(size)
    with pytest.raises(ServerOverloadedError):
        chunked.grow_to(51)
    assert budget.held_bytes == 100
    chunked.release()
    assert budget.held_bytes == 50


def test_a_body_bigger_than_the_whole_budget_is_refused_even_when_idle():
    with pytest.raises(ServerOverloadedError):
        BodyBudget(100).hold().grow_to(101)


def test_refusals_spread_their_retry_after():
    budget = BodyBudget(10, retry_after_s=1.0)
    budget.hold().grow_to(10)
    values = set()
    for _ in range(100):
        with pytest.raises(ServerOverloadedError) as info:
            budget.hold().grow_to(1)
        values.add(info.value.headers()["Retry-After"])
    assert len(values) >= 2 and values <= {"1", "2", "3"}
