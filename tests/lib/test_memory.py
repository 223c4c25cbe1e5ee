"""fraud_lib.memory: a task step gives its freed memory back once it has returned."""

from __future__ import annotations

import numpy as np
import pandas as pd
import psutil

from fraud_lib import memory
from fraud_lib.schema import FeatureSchema
from fraud_lib.window import ID, _is_sorted


def test_releases_memory_runs_after_the_step_and_keeps_its_result(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_memory", lambda: calls.append("released"))

    @memory.releases_memory
    def step(n: int) -> int:
        calls.append("step")
        return n + 1

    assert step(1) == 2 and calls == ["step", "released"]


def test_release_memory_returns_a_freed_heap_to_the_os():
    rss = psutil.Process().memory_info().rss
    objects = [str(i) * 3 for i in range(2_000_000)]  # small objects: the heap, not mmap
    grown = psutil.Process().memory_info().rss
    del objects
    memory.release_memory()
    assert psutil.Process().memory_info().rss < rss + (grown - rss) / 2


def test_is_sorted_needs_time_order_then_id_order_within_ties():
    schema = FeatureSchema()
    frame = pd.DataFrame({schema.time: [1.0, 2.0, 2.0, 3.0], ID: ["z", "B", "b", "a"]})
    assert _is_sorted(frame, schema)
    assert not _is_sorted(frame.assign(**{ID: ["z", "b", "B", "a"]}), schema)
    assert not _is_sorted(frame.assign(**{schema.time: [1.0, 3.0, 2.0, 4.0]}), schema)
    assert _is_sorted(frame.iloc[:0], schema) and _is_sorted(frame.iloc[:1], schema)
    assert np.array_equal(frame[ID].to_numpy(), ["z", "B", "b", "a"])
