"""The in-process timings of bench/bench_serving.py: the one-row floor of the model's
predictors and the Arrow body's decode and answer encode, and the Arrow body itself."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

ARROW_STREAM = "application/vnd.apache.arrow.stream"
MAX_ROWS = 1_000_000  # the batch limit of the in-process Arrow timings


def floor_timings(loaded: Any, X: np.ndarray, frame: Any) -> dict[str, float]:
    """Median in-process time of one-row predictions (ms)."""
    from serving.scoring import prepare

    served = prepare(loaded)
    clf = loaded.model.steps[-1][1]

    def median_ms(fn: Any, n: int) -> float:
        fn()
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000)

    row_frames = [frame.iloc[[i]] for i in range(100)]
    return {
        "pipeline_dataframe_ms": median_ms(
            lambda i=0: loaded.model.predict_proba(row_frames[i % 100]), 500
        ),
        "estimator_numpy_ms": median_ms(
            lambda i=0: clf.predict_proba(X[i % 100 : i % 100 + 1]), 1000
        ),
        "service_predictor_ms": median_ms(
            lambda i=0: served.score_matrix(X[i % 100 : i % 100 + 1]), 3000
        ),
        "service_predictor": served.predictor,
        "n_trees": int(getattr(clf, "n_iter_", 0)),
    }


def arrow_stream(frame: Any, schema: Any) -> bytes:
    """The frame's transaction ids, times and features as an Arrow IPC stream body."""
    import pyarrow as pa

    columns = ["transaction_id", schema.time, *schema.features]
    table = pa.Table.from_pandas(frame[columns], preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def arrow_timings(body: bytes, schema: Any) -> dict[str, float]:
    """Median in-process time (ms) of validating the Arrow body into the matrix, and of
    encoding an answer of as many predictions."""
    from serving.arrow import decode_arrow, encode_predictions

    def median_ms(fn: Any, n: int = 30) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000)

    txs = decode_arrow(body, schema, MAX_ROWS)
    ids = [str(t) for t in txs.ids]
    scores = np.linspace(0, 1, len(ids))
    risk = ["low"] * len(ids)
    return {
        "decode_ms": median_ms(lambda: decode_arrow(body, schema, MAX_ROWS)),
        "encode_answer_ms": median_ms(
            lambda: encode_predictions(ids, ids, scores, scores > 0.5, risk, 0.5, ("m", "1"))
        ),
    }
