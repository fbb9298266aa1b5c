"""Erlang C against values worked by hand, and the sizing it gives."""

from __future__ import annotations

import math

import pytest

from autoscaler.erlang import erlang_c, servers_for, wait_quantile


@pytest.mark.parametrize("servers, load, waits", [
    (1, 0.5, 0.5),  # M/M/1: an arrival waits with probability ρ
    (2, 1.0, 1 / 3),
    (3, 2.0, 4 / 9),
    (2, 2.0, 1.0),  # at capacity the queue grows without bound
    (4, 0.0, 0.0),
])
def test_erlang_c(servers: int, load: float, waits: float) -> None:
    assert erlang_c(servers, load) == pytest.approx(waits)


def test_the_wait_quantile_is_the_exponential_tail_of_those_who_wait() -> None:
    # M/M/1, λ = 0.5/s, s = 1 s: P(W > t) = 0.5 e^{-0.5 t}; the 95th percentile is 2 ln 10
    assert wait_quantile(1, 0.5, 1.0) == pytest.approx(2 * math.log(10))
    assert wait_quantile(1, 0.5, 1.0, variability=0.5) == pytest.approx(math.log(10))
    assert wait_quantile(3, 0.01, 1.0) == 0.0  # fewer than 5% wait at all
    assert wait_quantile(1, 2.0, 1.0) == math.inf and wait_quantile(0, 1.0, 1.0) == math.inf
    assert wait_quantile(0, 0.0, 1.0) == 0.0


def test_servers_for_is_the_fewest_that_meet_the_target() -> None:
    rate, service = 80 / 3600, 80.0  # 1.78 Erlangs
    c = servers_for(rate, service, 60.0)
    assert wait_quantile(c, rate, service) <= 60.0 < wait_quantile(c - 1, rate, service)
    assert servers_for(0.0, service, 60.0) == 0
    assert servers_for(rate, service, 1e9) == 2  # the fewest that keep up, at any target
    assert servers_for(rate, service, 0.0, limit=3) == 4  # more than the limit allows
