"""Refuse JSON and YAML objects that repeat a key.

Python's ``json``, msgspec and PyYAML all keep one value of a repeated key and drop the other
silently, so ``{"V1": 0.1, "V1": "x"}`` would be scored as if the client had sent one of them.
Every entry point that reads JSON or YAML from outside (the scoring API, the alert receiver,
``--conf``, schema files) refuses such a document, naming the key and where it is.

The exact check (:func:`duplicate_keys`) parses the text again with ``json`` keeping every
pair, which costs ~4x msgspec's decode. The scoring API avoids it on a clean body with a count
(:func:`body_quotes` against :func:`implied_quotes`): every key and every string costs two
``"`` in the body, plus one per ``\\"`` inside a string, so a body whose decoded value accounts
for all its quotes cannot have lost a key; only a body with a surplus is parsed exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import chain, compress, repeat
from operator import is_
from typing import Any

import numpy as np
import yaml

from fraud_lib.errors import DataError

# Below this many bytes bytes.count is quicker than numpy's vectorised compare (measured:
# 0.4 us for 866 bytes against ~3 us; 5.0 ms against 0.46 ms for 8.7 MB).
NUMPY_COUNT_BYTES = 64 * 1024
QUOTE, BACKSLASH = 0x22, 0x5C
ESCAPED_QUOTE = b"\\u0022"  # the only \u spelling of '"': its hex digits have no letter case
SCALARS = frozenset({int, float, bool, type(None)})
COMPRESS_ITEMS = 256  # from this many items a level is filtered by type in C, not a listcomp


class DuplicateKeyError(DataError):
    """A JSON or YAML object repeats a key; ``fields`` maps each place (``a.b[3].key``) to
    what to do."""


class _Pairs(list):
    """One JSON object as its (key, value) pairs, every repeat kept."""


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def duplicate_keys(text: str | bytes, limit: int = 50) -> list[str]:
    """The places (``transactions[3].V1``; a top-level key alone) of up to ``limit`` repeated
    keys in the JSON ``text``, in document order; [] when every object's keys are unique.

    ``text`` must be valid JSON (RecursionError for too deep nesting, ValueError otherwise)."""
    stack: list[tuple[Any, str]] = [(json.loads(text, object_pairs_hook=_Pairs), "")]
    found: list[str] = []
    while stack and len(found) < limit:
        value, path = stack.pop()
        if isinstance(value, _Pairs):
            seen: set[str] = set()
            for key, _ in value:
                if key in seen:
                    found.append(_child(path, key))
                seen.add(key)
            children = [(v, _child(path, k)) for k, v in value if isinstance(v, list)]
        elif isinstance(value, list):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(value) if isinstance(v, list)]
        else:
            continue
        stack.extend(reversed(children))
    return found[:limit]


def duplicate_error(places: list[str], what: str) -> DuplicateKeyError:
    """The error for the repeated keys at ``places`` of ``what`` (e.g. "the body")."""
    shown = ", ".join(repr(p) for p in places[:3]) + (", ..." if len(places) > 3 else "")
    return DuplicateKeyError(
        f"{what} repeats a key: {shown}; send each key once per object",
        dict.fromkeys(places, "duplicate key; send each key once per object"),
    )


def loads(text: str | bytes, what: str) -> Any:
    """``json.loads(text)``, refusing a repeated key with :class:`DuplicateKeyError` naming
    ``what`` and the key's place. Other errors are ``json``'s."""
    value = json.loads(text)
    if isinstance(value, dict | list) and (places := duplicate_keys(text)):
        raise duplicate_error(places, what)
    return value


def body_quotes(body: bytes) -> int:
    """The ``"`` bytes of a JSON body plus its ``\\u0022`` escapes (each one a decoded ``"``
    that costs no quote byte; text like ``\\\\u0022`` is counted too, which can only make a
    clean body look suspicious, never hide a lost key)."""
    if len(body) < NUMPY_COUNT_BYTES:
        quotes = body.count(b'"')
        return quotes + body.count(ESCAPED_QUOTE) if b"\\" in body else quotes
    data = np.frombuffer(body, np.uint8)
    quotes = int(np.count_nonzero(data == QUOTE))
    return quotes + body.count(ESCAPED_QUOTE) if body.find(b"\\") >= 0 else quotes


def _of_type(level: list[Any], kinds: set[type], kind: type) -> list[Any]:
    """The items of ``level`` of type ``kind`` (``kinds``: the types in ``level``)."""
    if kind not in kinds:
        return []
    if len(kinds) == 1:
        return level
    if len(level) < COMPRESS_ITEMS:
        return [v for v in level if type(v) is kind]
    return list(compress(level, map(is_, map(type, level), repeat(kind))))


def implied_quotes(values: Iterable[Any]) -> int:
    """The ``"`` a JSON text of ``values`` (decoded JSON: dicts, lists, strings, scalars) holds
    when every object key appears once and a ``"`` in a string is written ``\\"``.

    Level by level, without a Python loop over a large level (a 10,000-object batch in a few
    ms, one transaction in a few us)."""
    level = list(values)
    total = 0
    while level:
        kinds = set(map(type, level))
        if kinds <= SCALARS:
            break
        objects = _of_type(level, kinds, dict)
        texts = [*_of_type(level, kinds, str), *chain.from_iterable(objects)]
        total += 2 * len(texts) + "".join(texts).count('"')
        arrays = _of_type(level, kinds, list)
        level = [*chain.from_iterable(map(dict.values, objects)), *chain.from_iterable(arrays)]
    return total


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader refusing a mapping that repeats a key (merge keys ``<<`` may still
    override, as YAML defines)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: the base class refuses it
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}; give each key once",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing a repeated key (a ``yaml.MarkedYAMLError`` whose
    problem names the key and whose mark is its line)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: safe
