"""Giving a task's freed memory back to the operating system.

Airflow runs several tasks of a DAG run in one process (``airflow dags test``, a LocalExecutor
or Celery worker's fork): a window frame freed at the end of a task leaves glibc's heap and
Python's arenas holding its pages, so the next task starts gigabytes larger. :func:`release_memory`
collects garbage and asks glibc to return free heap pages (``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def release_memory() -> None:
    """Collect garbage, then return the heap's free pages to the OS (glibc only; else a no-op)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    trim(0)


def releases_memory(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a task step: :func:`release_memory` once it has returned (its frames freed)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            release_memory()

    return wrapper
