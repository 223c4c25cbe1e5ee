"""The garbage collector in a scoring worker: what the worker loaded is left out of collections.

A worker holds ~467,000 objects the collector tracks once the app and the champion are loaded
(modules, Flask, MLflow, scikit-learn, the model). A full (generation 2) collection walks all of
them while it holds the GIL: 180-199 ms on the 2-vCPU VM of the benchmarks, a pause for every
request in flight on that worker. :func:`freeze_loaded` moves every object tracked so far to the
collector's permanent generation (``gc.freeze``): a full collection then took 3-5 ms. It is
called once the worker has loaded the app (``post_worker_init``) and after each model swap (the
new model's objects). Frozen objects are still freed by reference counting; only reference
cycles among them (none in a loaded model) are never collected.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_loaded() -> int:
    """Leave every object tracked so far out of later collections; how many are frozen now."""
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("garbage collector: %d objects frozen", frozen)
    return frozen
