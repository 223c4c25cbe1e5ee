"""Every core for the CPU-bound steps of a retraining run.

``OMP_NUM_THREADS=1`` is set for the whole project (the Dockerfile, :mod:`fraud_lib.airflow_local`)
because two gunicorn workers each running an OpenMP pool on two cores starved each other. An
Airflow worker runs one task at a time (``worker_concurrency`` 1, see the README), so the HGB
fit and the scoring of a million-row window would leave the other cores idle:
:func:`uses_all_cores` lifts the OpenMP/BLAS limit to the cores this process may run on for the
duration of one step (threadpoolctl), and restores it after.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def uses_all_cores(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a CPU-bound task step: native thread pools get :func:`available_cores`."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=available_cores()):
            return func(*args, **kwargs)

    return wrapper
