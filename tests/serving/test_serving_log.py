"""The prediction log against a real Postgres: rotation, adoption of a SIGKILLed writer's
spool, cut-off lines, rows Postgres refuses, and draining on close."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from conftest import wait_logged

from fraud_lib import store
from serving.metrics import Metrics
from serving.prediction_log import PredictionLog
from serving.spool import Block, decode_lines, decode_pieces, encode_block, line_records

FEATURES = ("V1", "V2", "Amount")


def block(n: int, *, prefix: str = "t", **fields: Any) -> Block:
    """A block of ``n`` predictions with numeric features (any field replaced by ``fields``)."""
    values: dict[str, Any] = {
        "n": n,
        "scored_at": time.time(),
        "threshold": 0.5,
        "model_name": "fraud-detector",
        "model_version": "7",
        "request_id": "req-1",
        "prediction_ids": [uuid.uuid4().hex for _ in range(n)],
        "transaction_ids": [f'{prefix}-{i}"quoted"' for i in range(n)],
        "event_times": [float(i) if i % 2 else None for i in range(n)],
        "scores": [i / max(n, 1) for i in range(n)],
        "is_fraud": [i % 3 == 0 for i in range(n)],
        "risk_levels": ["low"] * n,
        "columns": list(FEATURES),
        "x": np.array([[0.1 * i, -1e-7, 12.5] for i in range(n)]).reshape(n, 3).tobytes(),
    }
    return Block(**(values | fields))


def lines_for(n: int, *, prefix: str = "t") -> tuple[bytes, list[str]]:
    """One spool line of ``n`` predictions, and their prediction ids."""
    b = block(n, prefix=prefix)
    return encode_block(b), b.prediction_ids


def as_dicts(rows: list[tuple]) -> list[dict[str, Any]]:
    return [dict(zip(store.PREDICTION_FIELDS, row, strict=True)) for row in rows]


@pytest.fixture()
def log_settings(settings):
    return replace(settings, log_flush_seconds=0.05, log_batch_size=100)


_STARTED: list[PredictionLog] = []


@pytest.fixture(autouse=True)
def _close_logs():
    """Every log a test made is closed (its shipper thread stopped) even if the test failed."""
    yield
    while _STARTED:
        _STARTED.pop().close(timeout=1.0)


def make_log(settings, pg_engine, **kwargs):
    log = PredictionLog(settings, Metrics(), lambda: pg_engine, **kwargs)
    _STARTED.append(log)
    return log


def test_blocks_round_trip_exactly():
    data, pids = lines_for(3)
    more, more_pids = lines_for(2)
    decoded, bad = decode_lines([data.rstrip(b"\n"), more.rstrip(b"\n")])
    rows = as_dicts(decoded)
    assert bad == [] and [r["prediction_id"] for r in rows] == pids + more_pids
    assert rows[1]["transaction_id"] == 't-1"quoted"' and rows[0]["event_time"] is None
    assert rows[2]["is_fraud"] is False and rows[1]["score"] == 1 / 3
    assert json.loads(rows[1]["features"]) == {"V1": 0.1, "V2": -1e-7, "Amount": 12.5}
    assert rows[0]["scored_at"] is rows[2]["scored_at"]  # one datetime per request
    assert [line_records(x) for x in (data, more, b"[]", b'{"n":x,')] == [3, 2, 1, 1]


def test_features_of_any_schema_are_logged_as_sent():
    features = [{"V1": 1.5, "merchant": "shop \u00e9"}, {"V1": -0.0, "merchant": ""}]
    data = encode_block(block(2, columns=[], x=None, features=features))
    rows, bad = decode_lines([data])
    assert bad == [] and [json.loads(r["features"]) for r in as_dicts(rows)] == features


def test_raw_fields_and_computed_features_are_logged_as_one_document():
    # a raw transaction's line: its fields as sent, then the computed matrix; Postgres gets the
    # document the request path built before, {**raw, **computed}, in that key order
    raw = [{"timestamp": "2024-05-01T12:00:00Z", "customer_id": 12, "amount": 7, "mcc": None},
           {"timestamp": 1714560000.5, "customer_id": "c-\u00e9", "amount": 0.1, "mcc": "x"}]  # fmt: skip
    X = np.array([[1.0, -0.0, 5e-324], [0.1 + 0.2, 1e300, 3.0]])
    data = encode_block(block(2, columns=["a", "b", "c"], x=X.tobytes(), features=raw))
    rows, bad = decode_lines([data])
    documents = [r["features"] for r in as_dicts(rows)]
    expected = [
        {**r, **dict(zip("abc", x, strict=True))} for r, x in zip(raw, X.tolist(), strict=True)
    ]
    assert bad == [] and documents == [msgspec.json.encode(e) for e in expected]  # same bytes
    assert [list(json.loads(d)) for d in documents] == [list(e) for e in expected]
    empty = encode_block(block(1, columns=[], x=b"", features=[{"t": 1}]))
    assert [r["features"] for r in as_dicts(decode_lines([empty])[0])] == [b'{"t":1}']


@pytest.mark.parametrize(
    "columns",
    [("V1", "100%", "é ü", "f0", "", "f1"), ('quote"d', "back\\slash", "tab\t", "V1", "x", "y")],
    ids=["struct", "dict"],  # msgspec refuses the second set as Struct field names
)
def test_any_column_names_and_every_float_round_trip(columns):
    rng = np.random.default_rng(7)
    values = [5e-324, -0.0, 1e-7, 0.1 + 0.2, 1.7976931348623157e308, 123456789.0]
    scaled = rng.standard_normal((20, 6)) * 10.0 ** rng.integers(-300, 300, (20, 6))
    X = np.array([values, *scaled.tolist()])
    n = len(X)
    data = encode_block(block(n, transaction_ids=["t\t\n\\é"] * n, scores=X[:, 3].tolist(),
                              scored_at=1714560000.123456, columns=list(columns), x=X.tobytes()))  # fmt: skip
    assert data.count(b"\n") == 1  # one line: no raw newline inside
    rows, bad = decode_lines([data])
    decoded = as_dicts(rows)
    assert bad == [] and decoded[0]["transaction_id"] == "t\t\n\\é"
    for got, expected in zip(decoded, X.tolist(), strict=True):
        features = json.loads(got["features"])
        assert list(features) == list(columns)
        assert [repr(v) for v in features.values()] == [repr(v) for v in expected]
        assert repr(got["score"]) == repr(expected[3])


def test_unreadable_lines_are_set_aside_whole_and_the_rest_decoded():
    good, pids = lines_for(4)
    damaged = [
        b"not json",
        good.replace(b'"model_name":"fraud-detector"', b'"model_name":7'),  # a wrong type
        good.replace(b'{"n":4', b'{"n":5'),  # lists shorter than n
        encode_block(block(2, x=bytes(40))),  # x is not 2 x 3 float64
        encode_block(block(1, x=None)),  # neither x nor features
        encode_block(block(1, x=None, features=[])).replace(b'"features":[]', b'"features":[{"a":"\xff"}]'),
        encode_block(block(1, scored_at=1e300)),  # out of range
        encode_block(block(1, features=[[1, 2]])),  # with x: a features entry is not an object
        encode_block(block(2, features=[{"t": 1}])),  # with x: one features entry for 2 rows
    ]  # fmt: skip
    rows, bad = decode_lines([good, *damaged])
    assert [r["prediction_id"] for r in as_dicts(rows)] == pids
    assert bad == damaged


def test_pieces_split_big_lines_gather_small_ones_and_decode_as_one():
    big, big_pids = lines_for(1001, prefix="big")
    small = [lines_for(3, prefix=f"s{i}")[0] for i in range(5)]
    lines = [small[0], big, b"not json", *small[1:]]
    pieces = list(decode_pieces(lines, 400))
    assert [len(rows) for rows, _ in pieces] == [400, 400, 216]  # 3 + 1,001 + 4 x 3 rows
    assert [bad for _, bad in pieces] == [[], [], [b"not json"]]
    whole, bad = decode_lines(lines)
    assert [row for rows, _ in pieces for row in rows] == whole and bad == [b"not json"]
    assert [r["prediction_id"] for r in as_dicts(whole)][3:1004] == big_pids


def test_a_big_line_is_copied_in_pieces_and_its_offset_moves_after_the_last(
    log_settings, pg_engine, monkeypatch
):
    """A 1,000-row line with batch size 100: ten COPYs; Postgres failing on the sixth leaves
    the offset before the line, and the retry stores every row once (the first five pieces
    again: skipped as already stored)."""
    from fraud_lib.errors import DatabaseError

    calls = []
    copy = store.copy_predictions

    def flaky(bind, rows):
        calls.append(len(rows))
        if len(calls) == 6:
            raise DatabaseError("postgres went away (simulated)")
        return copy(bind, rows)

    monkeypatch.setattr(store, "copy_predictions", flaky)
    log = make_log(log_settings, pg_engine)
    data, pids = lines_for(1000, prefix="pieces")
    log.start()
    log.append(data, len(pids))
    wait_logged(pg_engine, pids)
    assert calls[:6] == [100] * 6 and len(calls) == 16
    assert store.prediction_count(pg_engine) == 1000
    assert log.close(timeout=10)  # everything shipped: the offset is past the line


def test_a_replayed_batch_inserts_only_the_new_rows(pg_engine):
    data, pids = lines_for(6)
    rows, _ = decode_lines(data.splitlines(keepends=True))
    assert store.copy_predictions(pg_engine, rows[:4]) == 4
    with pg_engine.begin() as conn:  # in the caller's transaction, which stays usable
        assert store.copy_predictions(conn, rows) == 2  # the COPY conflicts: ON CONFLICT path
        assert store.copy_predictions(conn, []) == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM predictions").scalar_one() == 6
    assert store.count_predictions_by_ids(pg_engine, pids) == 6


@pytest.mark.parametrize("fsync", [False, True])
def test_rotation_ships_everything_and_deletes_shipped_segments(log_settings, pg_engine, fsync):
    log = make_log(log_settings, pg_engine, segment_bytes=4096, fsync=fsync)
    log.start()
    all_pids = []
    for _ in range(30):
        data, pids = lines_for(7)
        log.append(data, len(pids))
        all_pids += pids
    # rotated: the open segment's number (shipped segments may already be deleted)
    assert max(int(p.name.split(".")[1]) for p in log.dir.glob("*.spool")) > 5
    wait_logged(pg_engine, all_pids)
    deadline = time.monotonic() + 5
    while len(list(log.dir.glob("*.spool"))) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(log.dir.glob("*.spool"))) == 1  # only the open segment is left
    assert log.rows_written == 210 and log.backlog_records == 0
    assert log.status()["fsync"] is fsync
    assert log.close() is True
    assert list(log.dir.iterdir()) == []  # drained: segments, offset and lock removed
    assert store.prediction_count(pg_engine) == 210


def test_a_full_batch_appended_without_wake_waits_for_the_callers_wake(log_settings, pg_engine):
    log = make_log(replace(log_settings, log_flush_seconds=30.0), pg_engine)
    log.start()
    data, pids = lines_for(150)  # more than the batch size (100): woken at once
    assert log.append(data, len(pids)) is True
    wait_logged(pg_engine, pids, timeout=10)
    time.sleep(0.5)  # the shipper found nothing more and waits its 30 s
    data, pids = lines_for(150, prefix="later")
    assert log.append(data, len(pids), wake=False) is True
    time.sleep(0.5)
    assert store.count_predictions_by_ids(pg_engine, pids) == 0  # not woken
    log.wake()
    wait_logged(pg_engine, pids, timeout=10)


DEAD_WRITER = textwrap.dedent(
    """
    import json, os, signal, sys
    from dataclasses import replace
    from fraud_lib.config import Settings
    from fraud_lib.errors import DatabaseError
    from serving.metrics import Metrics
    from serving.prediction_log import PredictionLog
    sys.path.insert(0, {test_dir!r})
    from test_serving_log import lines_for

    def down():
        raise DatabaseError("postgres is down (simulated)")

    settings = Settings.from_env({{}}, state_dir={state!r}, spool_dir={spool!r},
                                 database_url="postgresql://nobody@127.0.0.1:1/none")
    log = PredictionLog(settings, Metrics(), down, segment_bytes=8192)
    log.start()
    pids = []
    for _ in range(20):
        data, batch = lines_for(5, prefix="dead")
        log.append(data, len(batch))
        pids += batch
    with open(log.dir / (log.wid + ".000099.spool"), "wb") as fh:
        fh.write(data[: len(data) // 2])  # a write cut off mid-line: never acknowledged
    print(json.dumps(pids), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.slow
def test_a_sigkilled_writers_spool_is_adopted_and_shipped(log_settings, pg_engine, tmp_path):
    script = DEAD_WRITER.format(
        test_dir=str(Path(__file__).parent),
        state=str(tmp_path / "state"),
        spool=str(log_settings.spool_dir),
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    pids = json.loads(proc.stdout)
    assert len(pids) == 100 and store.prediction_count(pg_engine) == 0
    dead_files = {p.name for p in log_settings.spool_dir.iterdir()}
    assert any(name.endswith(".lock") for name in dead_files)

    log = make_log(log_settings, pg_engine)
    log.start()
    try:
        wait_logged(pg_engine, pids)
        deadline = time.monotonic() + 10
        while log._orphans and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = {p.name for p in log_settings.spool_dir.iterdir()}
        assert not (remaining & dead_files)  # the dead writer's files are gone
        assert store.prediction_count(pg_engine) == 100  # the cut-off line was not shipped
    finally:
        drained = log.close()
    assert drained is True


def test_rows_postgres_refuses_are_set_aside_not_blocking(log_settings, pg_engine):
    log = make_log(log_settings, pg_engine)
    log.start()
    good, pids = lines_for(9)
    refused = block(2, transaction_ids=["ok", "nul\x00inside"])  # Postgres text refuses NUL
    bad_pids = refused.prediction_ids
    log.append(good, 9)
    log.append(encode_block(refused), 2)
    more, more_pids = lines_for(5)
    log.append(more, 5)
    wait_logged(pg_engine, pids + more_pids)
    assert store.count_predictions_by_ids(pg_engine, bad_pids[:1]) == 1  # its good row
    assert store.count_predictions_by_ids(pg_engine, bad_pids[1:]) == 0
    deadline = time.monotonic() + 5
    rejected = log.dir / "rejected" / f"{log.wid}.spool"
    while not rejected.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    rejected_rows, unreadable = decode_lines(rejected.read_bytes().splitlines())
    assert unreadable == [] and [r[0] for r in rejected_rows] == bad_pids[1:]
    log.close()


def test_close_with_postgres_down_keeps_the_spool_for_the_next_writer(log_settings, pg_engine):
    from fraud_lib.errors import DatabaseError

    def down():
        raise DatabaseError("postgres is down (simulated)")

    log = PredictionLog(log_settings, Metrics(), down)
    _STARTED.append(log)
    log.start()
    data, pids = lines_for(12)
    log.append(data, 12)
    assert log.close(timeout=0.5) is False
    assert log.status()["db_up"] is False and "simulated" in log.last_error
    assert any(p.suffix == ".spool" for p in log.dir.iterdir())
    successor = make_log(log_settings, pg_engine)
    successor.start()  # a closed (not killed) writer's lock is free too: adopted at once
    wait_logged(pg_engine, pids)
    assert successor.close() is True
    assert [p.name for p in log.dir.iterdir()] == []


def test_while_lines_keep_coming_the_shipper_copies_once_per_flush_interval(
    log_settings, pg_engine, monkeypatch
):
    copies: list[int] = []
    copy = store.copy_predictions

    def counted(engine: Any, rows: Any) -> int:
        copies.append(len(rows))
        return copy(engine, rows)

    monkeypatch.setattr(store, "copy_predictions", counted)
    flush = 0.25
    log = make_log(replace(log_settings, log_flush_seconds=flush, log_batch_size=10_000), pg_engine)
    log.start()
    pids: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # one line every ~2 ms, as a busy worker appends
        data, batch = lines_for(1)
        log.append(data, 1, wake=False)
        pids += batch
        time.sleep(0.002)
    elapsed = time.monotonic() - started
    wait_logged(pg_engine, pids, timeout=10)
    assert sum(copies) == len(pids)  # every line once
    # one COPY per flush interval (a first one at start-up, one for the tail), not one per
    # round trip: ~450 lines arrived in 1.5 s
    assert len(copies) <= elapsed / flush + 3, copies
