"""fraud_lib.unique_keys: the quote count never misses a repeated key and never refuses a clean
document; the exact check names every repeat; JSON and YAML loaders refuse them."""

from __future__ import annotations

import json

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud_lib.unique_keys import (
    DuplicateKeyError,
    body_quotes,
    duplicate_keys,
    implied_quotes,
    loads,
    yaml_load,
)

# texts rich in what the count must get right: quotes, backslashes, "\u0022" spelled out
TEXT = st.text(alphabet=st.sampled_from(['"', "\\", "u", "0", "2", "a", "é", " ", ":", "{"]),
               max_size=8)  # fmt: skip
SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
VALUES = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _dumps(value: object, u_escapes: bool, ascii_only: bool = True) -> str:
    """JSON of ``value``; with ``u_escapes`` every ``"`` inside a string is ``\\u0022``."""
    if isinstance(value, str):
        chars = (json.dumps(c, ensure_ascii=ascii_only)[1:-1] for c in value)
        return '"' + "".join("\\u0022" if c == '\\"' and u_escapes else c for c in chars) + '"'
    if isinstance(value, dict):
        items = (
            f"{_dumps(k, u_escapes, ascii_only)}: {_dumps(v, u_escapes, ascii_only)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dumps(v, u_escapes, ascii_only) for v in value) + "]"
    return json.dumps(value)


@FAST
@given(value=VALUES, ascii_only=st.booleans(), u_escapes=st.booleans())
def test_a_clean_document_is_never_suspicious(value, ascii_only, u_escapes):
    body = _dumps(value, u_escapes, ascii_only).encode()
    assert body_quotes(body) == implied_quotes((msgspec.json.decode(body),))
    assert duplicate_keys(body) == []


def _with_repeat(value: dict, key: str, again: object, u_escapes: bool) -> str:
    """``value`` as JSON with ``key`` written once more (``again`` as its value) at the end."""
    text, extra = _dumps(value, u_escapes), _dumps({key: again}, u_escapes)
    return text[:-1] + ", " + extra[1:]


@FAST
@given(
    value=st.dictionaries(TEXT, VALUES, min_size=1, max_size=5),
    pick=st.integers(min_value=0),
    again=VALUES,
    u_escapes=st.booleans(),
    batch=st.booleans(),
)
def test_a_repeated_key_is_always_caught_and_named(value, pick, again, u_escapes, batch):
    """Whatever the values and escapes (``\\u0022`` lowers the count), a repeat is seen."""
    key = list(value)[pick % len(value)]
    inner = _with_repeat(value, key, again, u_escapes)
    text = '{"transactions": [{}, ' + inner + "]}" if batch else inner
    body = text.encode()
    assert body_quotes(body) != implied_quotes((msgspec.json.decode(body),))
    assert duplicate_keys(body) == [f"transactions[1].{key}" if batch else key]


def test_every_repeat_is_named_in_document_order_up_to_the_limit():
    body = '{"a": 1, "b": {"c": [{"d": 1, "d": 2}]}, "a": 2, "a": 3}'
    assert duplicate_keys(body) == ["a", "a", "b.c[0].d"]
    assert duplicate_keys(body, limit=1) == ["a"]
    assert duplicate_keys('{"V\\u0031": 1, "V1": 2}') == ["V1"]  # an escape is the same key


def test_loads_refuses_a_repeat_with_its_place():
    assert loads('{"a": {"b": 1}}', "--conf") == {"a": {"b": 1}}
    with pytest.raises(DuplicateKeyError) as info:
        loads('{"dry_run": true, "model_type": "lr", "dry_run": false}', "--conf")
    assert str(info.value) == "--conf repeats a key: 'dry_run'; send each key once per object"
    assert info.value.fields == {"dry_run": "duplicate key; send each key once per object"}
    with pytest.raises(json.JSONDecodeError):
        loads('{"a": ', "--conf")


def test_yaml_refuses_a_repeated_key_naming_its_line():
    assert yaml_load("a: 1\nb: {c: 2}\n") == {"a": 1, "b": {"c": 2}}
    assert yaml_load("base: &b {x: 1}\nmore:\n  <<: *b\n  x: 2\n") == {
        "base": {"x": 1},
        "more": {"x": 2},
    }  # a merge key may be overridden: that is YAML
    with pytest.raises(yaml.MarkedYAMLError) as info:
        yaml_load("time: t\nfeatures: [a]\nnested:\n  k: 1\n  k: 2\n")
    assert info.value.problem == "duplicate key 'k'; give each key once"
    assert info.value.problem_mark.line == 4
    with pytest.raises(yaml.MarkedYAMLError):
        yaml_load("? [a]\n: 1\n")  # an unhashable key: refused as before
