"""serving.malloc: a worker keeps the memory of one request for the next (glibc only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from serving.malloc import keep_freed_memory

REPO = Path(__file__).resolve().parents[2]

# Requests on a gthread worker's pool threads, each allocating the large blocks of a 10,000-row
# request (the body read into a bytearray, then bytes; the spool line; the answer); page
# faults per request after warm-up.
REQUESTS = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
from serving.malloc import keep_freed_memory

tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False

def request():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    body = bytes(bytearray(b"x" * 8_400_000))
    line = b"y" * 4_000_000
    answer = b"z" * 1_700_000
    del body, line, answer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

with ThreadPoolExecutor(4) as pool:
    faults = [pool.submit(request).result() for _ in range(8)]
print(tuned, max(faults[4:]))
"""


def _faults(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run(
        [sys.executable, "-c", REQUESTS, mode], cwd=REPO, env=env, capture_output=True,
        text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_freed_memory_is_kept_for_the_next_request():
    tuned, faults = _faults("tuned")
    _, default_faults = _faults("default")
    assert tuned == "True"
    assert default_faults > 1000  # ~6,000 pages of 4 KB: glibc had returned the memory
    assert faults < 100


@pytest.mark.parametrize("name", ["GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_"])
def test_malloc_tuned_by_the_environment_is_left_alone(name):
    assert keep_freed_memory({name: "2"}) is False
