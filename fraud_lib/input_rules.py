"""Rules for values that enter fraudloop from outside: transaction ids and timestamps.

One definition, used by the scoring API (``serving/validation.py``), ``fraud labels import``
(:mod:`fraud_lib.label_files`) and the store (:func:`fraud_lib.store.upsert_labels`), so no
path stores a value that another one refuses.

**Timestamps** are ISO-8601 strings (``2024-05-01``, ``2024-05-01T12:00:00Z``,
``2024-05-01 12:00:00.5+02:00``; no zone = UTC) or datetimes, and must fall inside
:class:`TimestampBounds`: not before ``FRAUD_MIN_TIMESTAMP`` and not after now plus
``FRAUD_MAX_CLOCK_SKEW_SECONDS``. Beyond its practical use (a label from 1600 is a mistake) the
range keeps every stored timestamp inside what pandas holds (1677-09-21 to 2262-04-11), which
the retraining reads rely on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fraud_lib.errors import ConfigError, DataError

MAX_ID_LENGTH = 200
DEFAULT_MIN_TIMESTAMP = "2000-01-01T00:00:00Z"
DEFAULT_MAX_CLOCK_SKEW_SECONDS = 300.0
MAX_CLOCK_SKEW_LIMIT = 86_400.0  # a larger allowance is a clock that is wrong, not skewed
MAX_TIMESTAMP_LENGTH = 40  # the longest accepted form: 2024-05-01T12:00:00.123456789+02:00
ISO_EXAMPLE = "2024-05-01T12:00:00Z"
# The earliest FRAUD_MIN_TIMESTAMP: inside pandas' datetime64[ns] range, with a margin for zones
# (the latest timestamp, now + at most a day, is far from its end in 2262).
_PANDAS_SAFE_EARLIEST = datetime(1678, 1, 1, tzinfo=UTC)
_ISO = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})?)?",
    re.ASCII,
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def shown(value: Any, limit: int = 40) -> str:
    """``value`` for a message: a plain repr, cut after ``limit`` characters."""
    if hasattr(value, "item"):  # numpy scalars print as np.float64(...)
        value = value.item()
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def id_error(value: Any) -> str | None:
    """Why ``value`` cannot be a transaction id (a string or an integer, 1 to
    :data:`MAX_ID_LENGTH` characters, no NUL, valid Unicode), or None if it can."""
    if type(value) is not str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            return "must be a string"
        value = str(value)
    if not 0 < len(value) <= MAX_ID_LENGTH:
        return f"must be 1 to {MAX_ID_LENGTH} characters (got {len(value):,})"
    if "\x00" in value:  # Postgres text cannot hold it
        return "must not contain NUL (\\u0000)"
    if not value.isascii() and _SURROGATE.search(value):
        return "must be valid Unicode (no lone surrogates such as \\udc00)"
    return None


def parse_iso(value: str, name: str) -> datetime:
    """``value`` (a strict ISO-8601 date or date-time; no zone = UTC) as an aware datetime;
    :class:`DataError` naming ``name`` otherwise. No range check: see :class:`TimestampBounds`."""
    if len(value) > MAX_TIMESTAMP_LENGTH:
        raise DataError(
            f"{name} is {len(value):,} characters long; a timestamp has at most "
            f"{MAX_TIMESTAMP_LENGTH}, e.g. {ISO_EXAMPLE}"
        )
    if not _ISO.fullmatch(value):
        raise DataError(
            f"{name} {shown(value)} is not an ISO-8601 timestamp; use e.g. {ISO_EXAMPLE} "
            "(a date, optionally a time and a zone; no zone = UTC)"
        )
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise DataError(f"{name} {shown(value)} is not a valid date and time: {exc}") from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _utc_text(ts: datetime) -> str:
    return f"{ts.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z"


@dataclass(frozen=True)
class TimestampBounds:
    """The accepted range of timestamps: ``[earliest, now + max_skew_seconds]``."""

    earliest: datetime = field(
        default_factory=lambda: parse_iso(DEFAULT_MIN_TIMESTAMP, "FRAUD_MIN_TIMESTAMP")
    )
    max_skew_seconds: float = DEFAULT_MAX_CLOCK_SKEW_SECONDS

    def __post_init__(self) -> None:
        if self.earliest.tzinfo is None:
            object.__setattr__(self, "earliest", self.earliest.replace(tzinfo=UTC))
        if not _PANDAS_SAFE_EARLIEST <= self.earliest <= datetime.now(UTC):
            raise ConfigError(
                f"FRAUD_MIN_TIMESTAMP={self.earliest.isoformat()} must lie between "
                f"{_utc_text(_PANDAS_SAFE_EARLIEST)} and now, e.g. {DEFAULT_MIN_TIMESTAMP}"
            )
        if not 0 <= self.max_skew_seconds <= MAX_CLOCK_SKEW_LIMIT:
            raise ConfigError(
                f"FRAUD_MAX_CLOCK_SKEW_SECONDS={self.max_skew_seconds:g} must be between 0 and "
                f"{MAX_CLOCK_SKEW_LIMIT:g}, e.g. {DEFAULT_MAX_CLOCK_SKEW_SECONDS:g}"
            )

    def latest(self) -> datetime:
        """The latest accepted timestamp, now."""
        return datetime.now(UTC) + timedelta(seconds=self.max_skew_seconds)

    def describe(self) -> str:
        """The range for messages, e.g. ``[2000-01-01T00:00:00Z, now+300s]``."""
        return f"[{_utc_text(self.earliest)}, now+{self.max_skew_seconds:g}s]"

    def error(self, ts: datetime, name: str, *, latest: datetime | None = None) -> str | None:
        """Why the aware datetime ``ts`` is outside the range, or None if it is inside
        (``latest``: :meth:`latest` taken once for a batch; now when not given)."""
        if ts < self.earliest:  # aware comparisons do not overflow, even at year 1 +14:00
            return (
                f"{name} {ts.isoformat()} is before {_utc_text(self.earliest)} "
                "(FRAUD_MIN_TIMESTAMP); send the time the value was known"
            )
        latest = latest or self.latest()
        if ts > latest:
            return (
                f"{name} {ts.isoformat()} is after now + {self.max_skew_seconds:g} s "
                f"({_utc_text(latest)}, FRAUD_MAX_CLOCK_SKEW_SECONDS); check the sender's clock"
            )
        return None

    def parse(self, value: Any, name: str, *, latest: datetime | None = None) -> datetime:
        """``value`` (an ISO-8601 string or a datetime; naive = UTC) as a UTC datetime inside
        the range (``latest`` as in :meth:`error`); :class:`DataError` naming ``name``
        otherwise."""
        if isinstance(value, str):
            ts = parse_iso(value, name)
        elif isinstance(value, datetime):
            ts = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        else:
            raise DataError(
                f"{name} must be an ISO-8601 timestamp string, e.g. {ISO_EXAMPLE} "
                f"(got {type(value).__name__})"
            )
        if err := self.error(ts, name, latest=latest):
            raise DataError(err)
        return ts if ts.tzinfo is UTC else ts.astimezone(UTC)  # in range: cannot overflow
