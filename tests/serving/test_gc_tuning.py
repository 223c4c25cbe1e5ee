"""serving.gc_tuning: what a worker loaded is left out of later collections."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# In a fresh interpreter (freezing is for the whole process): load ~100,000 tracked objects,
# freeze, then check that collections no longer see them, that a frozen object is still freed
# by reference counting, and that objects made later are collected as usual.
SCRIPT = """
import gc, weakref
from serving.gc_tuning import freeze_loaded

class Node:
    pass

loaded = [[Node()] for _ in range(50_000)]
probe = Node()
seen = weakref.ref(probe)
tracked = len(gc.get_objects())
frozen = freeze_loaded()
assert frozen >= 100_000, frozen
assert len(gc.get_objects()) < tracked - 100_000, (len(gc.get_objects()), tracked)
del probe
assert seen() is None  # reference counting still frees a frozen object
later = [Node()]
later.append(later)  # a reference cycle made after the freeze
gone = weakref.ref(later[0])
del later
gc.collect()
assert gone() is None
print("ok")
"""


def test_freeze_leaves_loaded_objects_out_of_collections() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
