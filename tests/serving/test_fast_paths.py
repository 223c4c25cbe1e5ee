"""The batch fast paths against the generic ones: typed decoding (serving.typed_batch, with
its compiled matrix read serving._struct_fields), split scoring (serving.scoring) and the bulk
request body read (serving.request_body)."""

from __future__ import annotations

import json
import socket
import threading

import msgspec
import numpy as np
import pytest
from gunicorn.http.body import LengthReader
from gunicorn.http.unreader import SocketUnreader
from sklearn.ensemble import HistGradientBoostingClassifier
from werkzeug.wsgi import LimitedStream

from fraud_lib.schema import FeatureSchema
from serving._struct_fields import FloatFields
from serving.request_body import BulkBody
from serving.scoring import SPLIT_BATCH, ServedModel
from serving.trees import CompiledTrees
from serving.typed_batch import decode_batch
from serving.validation import ApiError, decode_json, validate_transactions

SCHEMA = FeatureSchema()


def _record(i: int, **extra: object) -> dict[str, object]:
    rng = np.random.default_rng(i)
    record: dict[str, object] = {
        c: float(v) for c, v in zip(SCHEMA.features, rng.normal(size=29), strict=True)
    }
    record["V3"] = i  # an integer is a number too
    return record | extra


def _body(records: list[dict[str, object]], **top: object) -> bytes:
    return json.dumps({"transactions": records, **top}).encode()


def test_a_clean_batch_decodes_as_the_generic_path_validates_it():
    records = [
        _record(0, transaction_id="a", Time=5, Class=1),
        _record(1, event_time=7.5, Time=3.0),  # event_time wins over Time
        _record(2, transaction_id="c", event_time=None, Time=None),
        _record(3, transaction_id=None, Class=[{"any": "value"}]),
    ]
    body = _body(records)
    typed = decode_batch(body, SCHEMA, 10)
    generic = validate_transactions(decode_json(body), SCHEMA, 10)
    assert typed is not None and generic.X is not None and typed.X is not None
    assert typed.batch and typed.ids == generic.ids == ["a", None, "c", None]
    assert typed.event_times == generic.event_times == [5.0, 7.5, None, None]
    assert typed.X.dtype == np.float64 and np.array_equal(typed.X, generic.X)


def test_the_compiled_matrix_read_refuses_what_it_cannot_read():
    rec = msgspec.defstruct("Rec", [("a", float), ("b", float), ("c", object)], gc=False)
    fields = FloatFields(rec, ["b", "a"])
    out = np.empty((2, 2))
    fields.matrix([rec(1.0, 2.5, None), rec(-0.0, 1e308, None)], out)
    assert out.tolist() == [[2.5, 1.0], [1e308, -0.0]] and fields.width == 2
    # a Struct's constructor checks no types: the slot's object is checked, not assumed
    for bad in (rec(1.0, 2, None), rec(1.0, "2", None), rec(True, 2.0, None)):
        with pytest.raises(TypeError, match="does not hold a float"):
            fields.matrix([bad], np.empty((1, 2)))
    with pytest.raises(TypeError, match="record 1 is not a Rec"):
        fields.matrix([rec(1.0, 2.0, None), (1.0, 2.0)], np.empty((2, 2)))
    with pytest.raises(ValueError, match="out is 2 x 2 for 1 x 2"):
        fields.matrix([rec(1.0, 2.0, None)], np.empty((2, 2)))
    with pytest.raises(TypeError, match=r"Rec\.d is not an object slot"):
        FloatFields(rec, ["a", "d"])
    with pytest.raises(TypeError, match="is not a class"):
        FloatFields(rec(1.0, 2.0, None), ["a"])


def test_a_one_feature_schema_decodes_too():
    one = FeatureSchema(features=("V1",), time="Time")
    typed = decode_batch(_body([{"V1": 1.5}, {"V1": -2, "Time": 3}]), one, 10)
    assert typed is not None and typed.X is not None
    assert typed.X.tolist() == [[1.5], [-2.0]] and typed.event_times == [None, 3.0]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"V4": True}, "V4", "must be a number"),
        ({"V4": "1.5"}, "V4", "must be a number"),
        ({"V4": None}, "V4", "must be a number"),
        ({"V4": 1e400}, "V4", "finite"),
        ({"V4": 10**400}, "V4", "finite"),
        ({"Time": 1e400}, "Time", "finite"),
        ({"event_time": "now"}, "event_time", "must be a number"),
        ({"colour": "red"}, "colour", "unknown field"),
        ({"transaction_id": ""}, "transaction_id", "1 to 200 characters"),
        ({"transaction_id": "x" * 201}, "transaction_id", "1 to 200 characters"),
        ({"transaction_id": "a\x00b"}, "transaction_id", "NUL"),
        ({"transaction_id": "dup"}, "transaction_id", "duplicate of transactions[0]"),
    ],
)
def test_a_batch_with_a_problem_takes_the_generic_path(change, field, message):
    records = [_record(0, transaction_id="dup"), _record(1) | change]
    body = json.dumps({"transactions": records}).replace("Infinity", "1e400").encode()
    assert decode_batch(body, SCHEMA, 10) is None
    with pytest.raises(ApiError) as caught:
        validate_transactions(decode_json(body), SCHEMA, 10)
    assert message in caught.value.fields[f"transactions[1].{field}"]


def test_one_transaction_decodes_as_the_generic_path_validates_it():
    for record in (_record(0, transaction_id="a", Time=5, Class=1), _record(1, event_time=7.5),
                   _record(2, transaction_id=None, event_time=None, Time=None)):  # fmt: skip
        body = json.dumps(record).encode()
        typed = decode_batch(body, SCHEMA, 10)
        generic = validate_transactions(decode_json(body), SCHEMA, 10)
        assert typed is not None and typed.X is not None and generic.X is not None
        assert not typed.batch and not generic.batch
        assert typed.ids == generic.ids and typed.event_times == generic.event_times
        assert np.array_equal(typed.X, generic.X) and typed.X.shape == (1, 29)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"V4": True}, "V4", "must be a number"),
        ({"V4": None}, "V4", "must be a number"),
        ({"V4": 1e400}, "V4", "finite"),
        ({"colour": "red"}, "colour", "unknown field"),
        ({"transaction_id": ""}, "transaction_id", "1 to 200 characters"),
        ({"transaction_id": "a\x00b"}, "transaction_id", "NUL"),
    ],
)
def test_one_transaction_with_a_problem_takes_the_generic_path(change, field, message):
    body = json.dumps(_record(0) | change).replace("Infinity", "1e400").encode()
    assert decode_batch(body, SCHEMA, 10) is None
    with pytest.raises(ApiError) as caught:
        validate_transactions(decode_json(body), SCHEMA, 10)
    assert message in caught.value.fields[field]


def test_one_transaction_with_a_repeated_or_escaped_key_takes_the_generic_path():
    text = json.dumps(_record(0))
    repeated = (text[:-1] + ', "V1": 3.0}').encode()
    escaped = (text[:-1] + ', "\\u0074ransactions": []}').encode()  # the batch key, escaped
    for body in (repeated, escaped, b"[1.0]", b'"V1"'):
        assert decode_batch(body, SCHEMA, 10) is None
    with pytest.raises(ApiError) as caught:
        decode_json(repeated)
    assert caught.value.code == "duplicate_key"


def test_what_typed_decoding_leaves_to_the_generic_path():
    record = _record(0)
    missing = {k: v for k, v in record.items() if k != "V7"}
    for body in (
        _body([record], extra=1),
        _body([]),
        _body([record] * 3),  # more than max_batch (2)
        _body([missing]),
        _body([record | {"transaction_id": 7}]),  # an integer id is valid, as its text
        b'{"transactions": [' + json.dumps(record).encode()[:-1] + b', "V9": NaN}]}',
    ):
        assert decode_batch(body, SCHEMA, 2) is None
    categorical = FeatureSchema(features=("V1",), categorical=("merchant",))
    assert decode_batch(_body([{"V1": 1.0, "merchant": "m"}]), categorical, 2) is None


def test_split_scoring_equals_one_call():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(SPLIT_BATCH + 1, 29))
    y = (X[:, 0] + rng.normal(size=len(X)) > 1).astype(int)
    clf = HistGradientBoostingClassifier(max_iter=20).fit(X, y)
    served = ServedModel(loaded=None, predictor="estimator", estimator=clf)  # type: ignore[arg-type]
    assert np.array_equal(served.score_matrix(X), clf.predict_proba(X)[:, 1])


@pytest.mark.parametrize(
    "params",
    [{"max_iter": 30}, {"max_iter": 5, "max_depth": 1}, {"max_iter": 3, "min_samples_leaf": 5000}],
    ids=["trees", "stumps", "single-leaf trees"],
)
def test_compiled_trees_score_exactly_as_scikit_learn(params):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(SPLIT_BATCH + 37, 29))
    X[:, 0] *= 1e3  # a wide range next to narrow ones
    y = (X[:, 0] / 1e3 + X[:, 3] + rng.normal(size=len(X)) > 1).astype(int)
    clf = HistGradientBoostingClassifier(early_stopping=False, **params).fit(X, y)
    assert CompiledTrees.supports(clf)
    compiled = CompiledTrees.from_classifier(clf)
    expected = clf.predict_proba(X)[:, 1]
    served = ServedModel(loaded=None, predictor="compiled-trees", compiled=compiled)  # type: ignore[arg-type]
    assert np.array_equal(served.score_matrix(X), expected)  # two halves, two threads
    assert np.array_equal(compiled.predict(np.asfortranarray(X[:100])), expected[:100])
    assert [compiled.predict(X[i : i + 1])[0] for i in range(40)] == expected[:40].tolist()
    frozen = X[:10].copy()
    frozen.flags.writeable = False  # as np.frombuffer gives
    assert np.array_equal(compiled.predict(frozen), expected[:10])
    with pytest.raises(ValueError, match="expected rows of 29 features"):
        compiled.predict(X[:5, :28])


@pytest.mark.parametrize("head", [0, 100])
@pytest.mark.parametrize("rest", ["through werkzeug", "read_rest"])
def test_bulk_body_reads_what_gunicorns_body_reads(head, rest):
    data = msgspec.json.encode([{"V1": i / 7, "id": f"t{i}"} for i in range(60_000)]) + b"\nend"
    sender, receiver = socket.socketpair()
    thread = threading.Thread(target=sender.sendall, args=(data + b"GET /next",))
    thread.start()
    try:
        unreader = SocketUnreader(receiver)
        body = BulkBody(LengthReader(unreader, len(data)))
        got = body.read(head) + body.readline(10) if head else b""  # then buffered bytes first
        if rest == "read_rest":
            got += body.read_rest()
        else:
            got += LimitedStream(body, len(data) - len(got)).read()
        thread.join()
        assert unreader.read() == b"GET /next"  # a pipelined request is left for gunicorn
    finally:
        thread.join()
        sender.close()
        receiver.close()
    assert got == data


def test_bulk_body_of_a_client_that_hangs_up_early_is_what_it_sent():
    sender, receiver = socket.socketpair()
    sender.sendall(b'{"transactions": [')
    sender.close()
    try:
        assert BulkBody(LengthReader(SocketUnreader(receiver), 1000)).read_rest() == (
            b'{"transactions": ['
        )
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a: a["feature"].__setitem__(0, 29), "'feature' has an index outside"),
        (lambda a: a["children"].__setitem__(-1, 10**6), "'children' has an index outside"),
        (lambda a: a["roots"].__setitem__(0, -1), "'roots' has an index outside"),
        (lambda a: a.__setitem__("value", a["value"][:-1]), "unequal sizes"),
        (lambda a: a.__setitem__("depths", a["depths"][:-1]), "roots for"),
    ],
    ids=["feature", "child", "root", "values", "depths"],
)
def test_compiled_trees_refuse_arrays_the_kernel_would_read_outside_of(damage, message):
    """The C kernel checks no index, so arrays from a file are checked when they are loaded."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 29))
    clf = HistGradientBoostingClassifier(max_iter=3).fit(X, (X[:, 0] > 0).astype(int))
    good = CompiledTrees.from_classifier(clf)
    arrays = {name: arr.copy() for name, arr in good.arrays().items()}
    damage(arrays)
    with pytest.raises(ValueError, match=message):
        CompiledTrees(arrays, good.baseline, 29)
    assert good.predict(np.empty((0, 29))).shape == (0,)
