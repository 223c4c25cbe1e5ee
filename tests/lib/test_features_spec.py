"""Behavioral feature definitions in the schema file (code tests)."""

from __future__ import annotations

import copy
import json

import pytest

from fraud_lib.errors import ConfigError
from fraud_lib.features.raw_table import RAW_BASELINE_SCHEMA_PATH, RAW_SCHEMA_PATH
from fraud_lib.features.spec import CALENDAR, LABEL_STATS, STATS, Window
from fraud_lib.schema import FeatureSchema

BASE = {
    "time": "ts",
    "label": "y",
    "id": "tx",
    "features": ["amount"],
    "behavior": {
        "entities": {"customer": "cust", "terminal": "term"},
        "calendar": ["hour", "night"],
        "aggregates": [
            {
                "entity": "customer",
                "column": "amount",
                "windows": ["1h", "7d"],
                "stats": ["count", "mean"],
                "include_current": True,
            },
        ],
        "time_since_previous": ["customer"],
        "label_risk": [
            {"entity": "terminal", "windows": ["30d"], "stats": ["rate"], "delay": "7d"}
        ],
    },
}


def test_names_are_deterministic_and_model_columns_include_them():
    s = FeatureSchema.from_dict(BASE)
    assert s.behavior is not None
    assert s.behavior.output_columns == [
        "calendar__hour",
        "calendar__night",
        "customer__amount__count__1h__incl",
        "customer__amount__mean__1h__incl",
        "customer__amount__count__7d__incl",
        "customer__amount__mean__7d__incl",
        "customer__time_since_prev",
        "terminal__risk__rate__30d__delay7d",
    ]
    assert s.model_columns == ["amount", *s.behavior.output_columns]
    assert s.raw().features == ("amount",) and s.raw().behavior is None
    assert s.behavior.raw_columns == ["ts", "cust", "term", "amount"]


def test_round_trip_through_dict_json_and_yaml(tmp_path):
    s = FeatureSchema.from_dict(BASE)
    assert FeatureSchema.from_dict(s.to_dict()) == s
    assert FeatureSchema.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.to_dict()["features"] == ["amount"]
    raw = FeatureSchema.load(RAW_SCHEMA_PATH)
    assert FeatureSchema.from_dict(raw.to_dict()) == raw
    assert len(raw.behavior.output_columns) > 20


def test_ulb_schema_is_unchanged():
    s = FeatureSchema()
    assert s.behavior is None and "behavior" not in s.to_dict()
    assert FeatureSchema.from_dict(s.to_dict()) == s


def test_baseline_schema_has_calendar_only():
    s = FeatureSchema.load(RAW_BASELINE_SCHEMA_PATH)
    assert s.behavior.entities == ()
    assert s.model_columns == ["amount", *(f"calendar__{c}" for c in CALENDAR)]


def test_windows_parse():
    assert Window.parse("90m").seconds == 5400
    assert Window.parse("2w").seconds == 14 * 86400
    assert {"count", "std", "ratio"} <= set(STATS) and "rate" in LABEL_STATS


def _with(path: tuple, value) -> dict:
    data = copy.deepcopy(BASE)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("behavior", "aggregates", 0, "column"), "amnt", "unknown column 'amnt'"),
        (("behavior", "aggregates", 0, "windows"), ["7x"], "cannot parse window '7x'"),
        (("behavior", "aggregates", 0, "windows"), ["0d"], "cannot parse window '0d'"),
        (("behavior", "aggregates", 0, "windows"), [7], "cannot parse window 7"),
        (("behavior", "aggregates", 0, "stats"), ["median"], "unknown stat 'median'"),
        (("behavior", "aggregates", 0, "entity"), "card", "unknown entity 'card'"),
        (("behavior", "aggregates", 0, "include_current"), "yes", "true or false"),
        (("behavior", "label_risk", 0, "stats"), ["mean"], "unknown stat 'mean'"),
        (("behavior", "label_risk", 0, "delay"), "soon", "cannot parse window 'soon'"),
        (("behavior", "calendar"), ["minute"], "unknown calendar feature 'minute'"),
        (("behavior", "time_since_previous"), ["card"], "unknown entity 'card'"),
        (("behavior", "windows"), ["1d"], "unknown keys ['windows']"),
        (("behavior", "entities"), "customer", "must list the entity key columns"),
        (("behavior",), ["customer"], "'behavior' must be a mapping"),
        (("features",), ["amount", "calendar__hour"], "clashing: calendar__hour"),
    ],
)
def test_bad_definitions_fail_with_one_line(path, value, fragment):
    with pytest.raises(ConfigError) as info:
        FeatureSchema.from_dict(_with(path, value))
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_missing_include_current_is_an_error():
    data = copy.deepcopy(BASE)
    del data["behavior"]["aggregates"][0]["include_current"]
    with pytest.raises(ConfigError, match="missing keys \\['include_current'\\]"):
        FeatureSchema.from_dict(data)


def test_hostile_schema_files_fail_cleanly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"time: ts\nlabel: y\nfeatures: [amount]\nbehavior: {calendar: [\xff]}\n")
    with pytest.raises(ConfigError, match="line 4: not UTF-8 text"):
        FeatureSchema.load(bad)
    huge = _with(("behavior", "aggregates", 0, "windows"), ["9999999d"])
    with pytest.raises(ConfigError, match="cannot parse window"):
        FeatureSchema.from_dict(huge)
