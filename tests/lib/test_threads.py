"""A CPU-bound task step gets every core for its native thread pools, then the limit is back."""

from __future__ import annotations

import sklearn.ensemble  # noqa: F401 (loads scikit-learn's OpenMP runtime)
from threadpoolctl import threadpool_info, threadpool_limits

from fraud_lib.threads import available_cores, uses_all_cores


def _openmp_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]


def test_a_step_gets_every_core_and_the_limit_comes_back():
    with threadpool_limits(limits=1):
        inside = uses_all_cores(_openmp_threads)()
        after = _openmp_threads()
    assert inside and set(inside) == {available_cores()}
    assert set(after) == {1}
