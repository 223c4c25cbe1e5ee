"""The shared id and timestamp rules (fraud_lib.input_rules) and their settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from fraud_lib.config import Settings
from fraud_lib.errors import ConfigError, DataError
from fraud_lib.input_rules import TimestampBounds, id_error, shown

BOUNDS = TimestampBounds()


def test_the_default_range_is_2000_to_now_plus_300_seconds():
    assert BOUNDS.earliest == datetime(2000, 1, 1, tzinfo=UTC)
    assert BOUNDS.describe() == "[2000-01-01T00:00:00Z, now+300s]"
    assert BOUNDS.parse("2000-01-01T00:00:00Z", "t") == BOUNDS.earliest
    assert BOUNDS.parse(datetime(2024, 5, 1), "t") == datetime(
        2024, 5, 1, tzinfo=UTC
    )  # naive = UTC
    ts = BOUNDS.parse(pd.Timestamp("2024-05-01T14:00:00+02:00"), "t")
    assert ts == datetime(2024, 5, 1, 12, tzinfo=UTC) and ts.utcoffset() == timedelta(0)
    assert BOUNDS.error(datetime.now(UTC) + timedelta(seconds=200), "t") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1600-01-01T00:00:00Z", "t 1600-01-01T00:00:00+00:00 is before 2000-01-01T00:00:00Z"),
        ("0001-01-01T00:00:00+14:00", "t 0001-01-01T00:00:00+14:00 is before"),
        ("9999-12-31T23:59:59-14:00", "t 9999-12-31T23:59:59-14:00 is after now + 300 s"),
        ("1999-12-31T23:59:59.999999Z", "is before 2000-01-01T00:00:00Z (FRAUD_MIN_TIMESTAMP)"),
        ("2000-01-01T01:00:00+02:00", "is before"),  # 1999-12-31T23:00Z
        ("1" * 10_000, "t is 10,000 characters long"),
        ("20240501T120000", "is not an ISO-8601 timestamp"),
        ("2024-W01-1", "is not an ISO-8601 timestamp"),
        ("2024-05-01T12:00:00z", "is not an ISO-8601 timestamp"),
        ("\uff12\uff10\uff12\uff14-05-01", "is not an ISO-8601 timestamp"),  # full-width digits
        ("2024-13-01", "is not a valid date and time: month must be in 1..12"),
        ("", "is not an ISO-8601 timestamp"),
        (None, "must be an ISO-8601 timestamp string, e.g. 2024-05-01T12:00:00Z (got NoneType)"),
        (1.5, "(got float)"),
    ],
)
def test_out_of_range_and_malformed_timestamps_are_refused(value, message):
    with pytest.raises(DataError) as err:
        BOUNDS.parse(value, "t")
    assert message in str(err.value)
    assert len(str(err.value)) < 300


def test_id_rules():
    assert id_error("t-1") is None and id_error(12) is None and id_error("x" * 200) is None
    assert id_error("x" * 201) == "must be 1 to 200 characters (got 201)"
    assert id_error(10**200) == "must be 1 to 200 characters (got 201)"
    assert id_error("ab\x00cd") == "must not contain NUL (\\u0000)"
    assert id_error(True) == id_error(None) == id_error(1.0) == "must be a string"
    assert id_error("é😀") is None and "surrogates" in id_error("a\ud800")


def test_shown_values_are_plain_and_short():
    assert shown(np.float64("nan")) == "nan" and shown(np.int64(3)) == "3"
    assert shown("x" * 1000) == "'" + "x" * 39 + "... (1,002 characters)"


def test_settings_read_the_range_from_the_environment():
    s = Settings.from_env(
        {"FRAUD_MIN_TIMESTAMP": "1990-01-01", "FRAUD_MAX_CLOCK_SKEW_SECONDS": "60"}
    )
    assert s.timestamp_bounds == TimestampBounds(datetime(1990, 1, 1, tzinfo=UTC), 60.0)
    assert Settings.from_env({}).timestamp_bounds == BOUNDS


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FRAUD_MIN_TIMESTAMP": "last year"}, "FRAUD_MIN_TIMESTAMP 'last year' is not an ISO"),
        ({"FRAUD_MIN_TIMESTAMP": "1600-01-01"}, "must lie between 1678-01-01T00:00:00Z and now"),
        ({"FRAUD_MIN_TIMESTAMP": "0001-01-01T00:00:00+14:00"}, "must lie between"),
        ({"FRAUD_MIN_TIMESTAMP": "2999-01-01"}, "must lie between"),
        ({"FRAUD_MAX_CLOCK_SKEW_SECONDS": "-1"}, "between 0 and 86400"),
        ({"FRAUD_MAX_CLOCK_SKEW_SECONDS": "1e9"}, "between 0 and 86400"),
        ({"FRAUD_MAX_CLOCK_SKEW_SECONDS": "nan"}, "between 0 and 86400"),
        ({"FRAUD_MAX_CLOCK_SKEW_SECONDS": "soon"}, "is not a number"),
    ],
)
def test_unusable_range_settings_are_config_errors(env, fragment):
    with pytest.raises(ConfigError, match="FRAUD_") as err:
        Settings.from_env(env)
    assert fragment in str(err.value)
