"""Replay generated raw transactions through a running service, labels arriving with their delay.

One client thread per world (:func:`~fraud_lib.features.parity.parity_world`; worlds share no
entity key) sends its world's transactions in event-time order, ``batch`` rows a request, each
request on a new connection so consecutive batches land on either worker; the worlds' clients
run concurrently. Inside a request the rows are shuffled (the service orders them itself), and
one row in two hundred arrives ``LATE_BATCHES`` requests late (out-of-order arrival). A label
thread posts each label (``labeled_at`` = the simulated arrival time) through
``POST /v1/labels`` once every world's acknowledged transactions have passed that time.

With ``seconds`` the replay is paced: event time maps linearly onto that many wall-clock
seconds and each request waits for the moment of its first event, so the label lag (a few wall
seconds) spans less simulated time and more label-risk cells can be compared; without it every
request goes as fast as the service answers.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import requests

from fraud_lib.features.parity import RAW_FIELDS, ReplayLog

LATE_BATCHES = 2
LATE_SHARE = 0.005
LABEL_POLL_SECONDS = 0.1
LABEL_CHUNK = 5_000
TIMEOUT_SECONDS = 120


def plan_batches(world: pd.DataFrame, batch: int, rng: np.random.Generator) -> list[pd.DataFrame]:
    """One world's requests: time-ordered chunks, shuffled inside, a few rows moved later."""
    n = -(-len(world) // batch)
    slot = np.arange(len(world)) // batch
    late = rng.random(len(world)) < LATE_SHARE
    slot = np.where(late, np.minimum(slot + LATE_BATCHES, n - 1), slot)
    chunks = [world[slot == i] for i in range(n)]
    return [c.sample(frac=1.0, random_state=int(rng.integers(2**31))) for c in chunks if len(c)]


class Replay:
    """Drive one replay against ``url`` (see the module docstring); :meth:`run` returns its log."""

    def __init__(self, url: str, world: pd.DataFrame, batch: int, seed: int = 0,
                 seconds: float | None = None) -> None:  # fmt: skip
        self.url = url
        span = float(world["timestamp"].max() - world["timestamp"].min()) or 1.0
        self.t0, self.pace = float(world["timestamp"].min()), (seconds or 0.0) / span
        self.started = 0.0
        rng = np.random.default_rng(seed)
        self.plans = [plan_batches(w, batch, rng) for _, w in world.groupby("world", sort=True)]
        self.labels = world[["transaction_id", "is_fraud", "labeled_at"]].sort_values("labeled_at")
        self.progress = [-np.inf] * len(self.plans)
        self.lock = threading.Lock()
        self.requests: list[tuple[int, float, float]] = []
        self.rows: list[tuple[str, int]] = []
        self.label_acks: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self.done = threading.Event()

    def _client(self, k: int, first_request: int) -> None:
        for i, chunk in enumerate(self.plans[k]):
            body = {"transactions": chunk[list(RAW_FIELDS)].to_dict("records")}
            due = self.started + (float(chunk["timestamp"].min()) - self.t0) * self.pace
            time.sleep(max(0.0, due - time.time()))
            send = time.time()
            resp = requests.post(self.url + "/v1/score", json=body, timeout=TIMEOUT_SECONDS,
                                 headers={"Connection": "close"})  # fmt: skip
            ack = time.time()
            if resp.status_code != 200:
                self.errors.append(f"score: {resp.status_code} {resp.text[:300]}")
                return
            q = first_request + i
            with self.lock:
                self.requests.append((q, send, ack))
                self.rows.extend((tx, q) for tx in chunk["transaction_id"])
                self.progress[k] = max(self.progress[k], float(chunk["timestamp"].max()))

    def _poster(self) -> None:
        lo = 0
        k = self.labels["labeled_at"].to_numpy()
        while lo < len(k):
            with self.lock:
                clock = min(self.progress)
            hi = int(np.searchsorted(k, clock, "right"))
            if hi > lo:
                self._post(self.labels.iloc[lo : min(hi, lo + LABEL_CHUNK)])
                lo = min(hi, lo + LABEL_CHUNK)
            elif self.done.is_set():
                return
            else:
                time.sleep(LABEL_POLL_SECONDS)

    def _post(self, part: pd.DataFrame) -> None:
        body = {"labels": [
            {"transaction_id": tx, "label": int(y),
             "labeled_at": datetime.fromtimestamp(at, UTC).isoformat()}
            for tx, y, at in part.itertuples(index=False)
        ]}  # fmt: skip
        resp = requests.post(self.url + "/v1/labels", json=body, timeout=TIMEOUT_SECONDS)
        ack = time.time()
        if resp.status_code != 200:
            self.errors.append(f"labels: {resp.status_code} {resp.text[:300]}")
            return
        self.label_acks.extend((tx, ack) for tx in part["transaction_id"])

    def run(self) -> ReplayLog:
        """Replay everything; raises RuntimeError naming the first refused request."""
        starts = np.cumsum([0, *(len(p) for p in self.plans)])
        clients = [threading.Thread(target=self._client, args=(k, int(starts[k])))
                   for k in range(len(self.plans))]  # fmt: skip
        poster = threading.Thread(target=self._poster)
        self.started = time.time()
        for th in (*clients, poster):
            th.start()
        for th in clients:
            th.join()
        self.done.set()
        poster.join()
        if self.errors:
            raise RuntimeError(self.errors[0])
        return ReplayLog(
            rows=pd.DataFrame(self.rows, columns=["transaction_id", "request"]),
            requests=pd.DataFrame(self.requests, columns=["request", "send", "ack"]),
            labels=pd.DataFrame(self.label_acks, columns=["transaction_id", "ack"]),
        )
