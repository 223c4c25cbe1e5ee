"""Behavioral feature definitions: typed, frozen objects parsed from a schema's ``behavior:`` block.

The block (see ``raw_schema.yaml`` next to this module and the README, "Behavioral features")::

    behavior:
      entities: {customer: customer_id, terminal: terminal_id}   # name -> column (or a list)
      labeled_at: labeled_at      # column with each label's arrival time (optional)
      label_delay: 3d             # else: labels assumed known this long after the event (optional)
      calendar: [hour, day_of_week, weekend, night]
      aggregates:
        - {entity: customer, column: amount, windows: [1d, 7d], stats: [count, mean],
           include_current: true}
      time_since_previous: [customer]
      label_risk:
        - {entity: terminal, windows: [7d, 30d], stats: [frauds, rate], delay: 7d}

Each definition expands to one feature per (window, stat) with a deterministic column name
(:func:`Aggregate.name` and friends), e.g. ``customer__amount__mean__7d__incl``. The exact meaning
of every feature (windows, ties, empty histories) is in :mod:`fraud_lib.features.offline`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fraud_lib.errors import ConfigError

STATS = ("count", "sum", "mean", "std", "max", "ratio")
LABEL_STATS = ("frauds", "labeled", "rate")
CALENDAR = ("hour", "day_of_week", "weekend", "night")
NIGHT_END_HOUR = 6  # "night" is 00:00 <= hour < 06:00 (UTC)
NO_PREVIOUS = -1.0  # time since the previous event when the entity has none
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
SEP = "__"
LABELS_COLUMNS = ("transaction_id", "label", "labeled_at")  # the labels table's columns

_WINDOW = re.compile(r"^([1-9][0-9]{0,5})([smhdw])$")
_BEHAVIOR_KEYS = (
    "entities", "labeled_at", "label_delay", "calendar", "aggregates",
    "time_since_previous", "label_risk",
)  # fmt: skip


def _err(where: str, message: str) -> ConfigError:
    return ConfigError(f"schema: behavior.{where}: {message}")


@dataclass(frozen=True)
class Window:
    """A time span written like ``90m``, ``1h``, ``7d`` or ``2w``."""

    name: str
    seconds: float

    @classmethod
    def parse(cls, text: Any, where: str = "window") -> Window:
        """Parse ``<positive integer><s|m|h|d|w>``; anything else is a one-line ConfigError."""
        match = _WINDOW.match(text) if isinstance(text, str) else None
        if match is None:
            raise _err(
                where,
                f"cannot parse window {text!r}; write a positive whole number and a unit "
                "s, m, h, d or w, e.g. 1h, 7d",
            )
        return cls(text, float(int(match.group(1)) * WINDOW_UNITS[match.group(2)]))


@dataclass(frozen=True)
class Aggregate:
    """One stat of a numeric column over an entity's window (e.g. the customer's 7-day mean)."""

    entity: str
    column: str
    window: Window
    stat: str
    include_current: bool

    @property
    def name(self) -> str:
        """Column name, e.g. ``customer__amount__mean__7d`` (``__incl``: with the current event)."""
        base = SEP.join((self.entity, self.column, self.stat, self.window.name))
        return base + (f"{SEP}incl" if self.include_current else "")


@dataclass(frozen=True)
class TimeSincePrevious:
    """Seconds since the entity's previous event (strictly earlier time)."""

    entity: str

    @property
    def name(self) -> str:
        """Column name, e.g. ``customer__time_since_prev``."""
        return f"{self.entity}{SEP}time_since_prev"


@dataclass(frozen=True)
class LabelRisk:
    """Frauds, known labels or fraud rate of an entity's past events, counting known labels only."""

    entity: str
    window: Window
    stat: str
    delay: Window | None = None

    @property
    def name(self) -> str:
        """Column name, e.g. ``terminal__risk__rate__30d__delay7d``."""
        base = SEP.join((self.entity, "risk", self.stat, self.window.name))
        return base + (f"{SEP}delay{self.delay.name}" if self.delay else "")


def _names(value: Any, allowed: Sequence[str], where: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _err(where, f"must be a non-empty list of {what}")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise _err(where, f"unknown {what} {unknown[0]!r}; known: {', '.join(allowed)}")
    return tuple(dict.fromkeys(value))


def _windows(value: Any, where: str) -> tuple[Window, ...]:
    if not isinstance(value, list) or not value:
        raise _err(where, "must be a non-empty list of windows, e.g. [1d, 7d, 30d]")
    return tuple(Window.parse(v, where) for v in value)


def _entry(item: Any, where: str, required: Sequence[str], optional: Sequence[str]) -> dict:
    if not isinstance(item, Mapping):
        raise _err(where, "must be a mapping, e.g. {entity: customer, windows: [7d], ...}")
    unknown = sorted(set(item) - {*required, *optional})
    if unknown:
        raise _err(where, f"unknown keys {unknown}; allowed: {', '.join([*required, *optional])}")
    missing = [k for k in required if k not in item]
    if missing:
        raise _err(where, f"missing keys {missing}")
    return dict(item)


@dataclass(frozen=True)
class BehaviorSpec:
    """Everything the offline builder (and the online computer) needs to compute features."""

    time: str
    label: str
    id: str | None
    entities: tuple[tuple[str, str], ...]  # (name, column)
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    calendar: tuple[str, ...] = ()
    aggregates: tuple[Aggregate, ...] = ()
    time_since: tuple[TimeSincePrevious, ...] = ()
    label_risk: tuple[LabelRisk, ...] = ()
    labeled_at: str | None = None
    label_delay: Window | None = None

    @property
    def entity_columns(self) -> dict[str, str]:
        """Entity name -> its column in the raw table."""
        return dict(self.entities)

    @property
    def calendar_columns(self) -> list[str]:
        """Names of the calendar features, e.g. ``calendar__hour``."""
        return [f"calendar{SEP}{c}" for c in self.calendar]

    @property
    def output_columns(self) -> list[str]:
        """Every computed column, in a fixed order: calendar, aggregates, time since, risk."""
        return [
            *self.calendar_columns,
            *(a.name for a in self.aggregates),
            *(t.name for t in self.time_since),
            *(r.name for r in self.label_risk),
        ]

    @property
    def raw_columns(self) -> list[str]:
        """Columns a raw transaction must carry: time, entity keys, numeric and categorical inputs."""
        return list(dict.fromkeys([self.time, *dict(self.entities).values(), *self.numeric,
                                   *self.categorical]))  # fmt: skip

    @classmethod
    def from_config(
        cls,
        block: Any,
        *,
        time: str,
        label: str,
        id: str | None,
        numeric: Sequence[str],
        categorical: Sequence[str],
    ) -> BehaviorSpec:
        """Parse a ``behavior:`` block; the other arguments are the schema's top-level roles."""
        if not isinstance(block, Mapping):
            raise ConfigError("schema: 'behavior' must be a mapping (see raw_schema.yaml)")
        unknown = sorted(set(block) - set(_BEHAVIOR_KEYS))
        if unknown:
            raise ConfigError(
                f"schema: behavior: unknown keys {unknown}; allowed: {', '.join(_BEHAVIOR_KEYS)}"
            )
        entities = _parse_entities(block.get("entities"))
        names = [n for n, _ in entities]
        spec = cls(
            time=time,
            label=label,
            id=id,
            entities=entities,
            numeric=tuple(numeric),
            categorical=tuple(categorical),
            calendar=_names(block["calendar"], CALENDAR, "calendar", "calendar feature")
            if "calendar" in block
            else (),
            aggregates=_parse_aggregates(block.get("aggregates", []), names, tuple(numeric)),
            time_since=tuple(
                TimeSincePrevious(e)
                for e in _names(
                    block["time_since_previous"], names, "time_since_previous", "entity"
                )
            )
            if "time_since_previous" in block
            else (),
            label_risk=_parse_label_risk(block.get("label_risk", []), names),
            labeled_at=_optional_column(block.get("labeled_at"), "labeled_at"),
            label_delay=Window.parse(block["label_delay"], "label_delay")
            if block.get("label_delay") is not None
            else None,
        )
        spec._check_names()
        return spec

    def _check_names(self) -> None:
        out = self.output_columns
        if not out:
            raise ConfigError("schema: behavior defines no features; add calendar or aggregates")
        taken = {*self.raw_columns, self.label, *([self.id] if self.id else [])}
        clash = sorted({c for c in out if out.count(c) > 1 or c in taken})
        if clash:
            raise ConfigError(f"schema: behavior: feature defined twice or clashing: {clash[0]}")

    def to_dict(self) -> dict[str, Any]:
        """The ``behavior:`` block, one entry per feature; round-trips through from_config."""
        out: dict[str, Any] = {"entities": dict(self.entities)}
        if self.labeled_at:
            out["labeled_at"] = self.labeled_at
        if self.label_delay:
            out["label_delay"] = self.label_delay.name
        if self.calendar:
            out["calendar"] = list(self.calendar)
        if self.aggregates:
            out["aggregates"] = [
                {"entity": a.entity, "column": a.column, "windows": [a.window.name],
                 "stats": [a.stat], "include_current": a.include_current}
                for a in self.aggregates
            ]  # fmt: skip
        if self.time_since:
            out["time_since_previous"] = [t.entity for t in self.time_since]
        if self.label_risk:
            out["label_risk"] = [
                {"entity": r.entity, "windows": [r.window.name], "stats": [r.stat]}
                | ({"delay": r.delay.name} if r.delay else {})
                for r in self.label_risk
            ]
        return out


def _optional_column(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _err(where, "must be a column name")
    return value


def _parse_entities(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:  # calendar features only
        return ()
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        pairs = [(v, v) for v in value]
    elif isinstance(value, Mapping) and value:
        pairs = [(str(k), v) for k, v in value.items()]
        if not all(isinstance(v, str) and v for _, v in pairs):
            raise _err("entities", "each entity must map to a column name")
    else:
        raise _err("entities", "must list the entity key columns, e.g. {customer: customer_id}")
    bad = [n for n, _ in pairs if SEP in n or not n]
    if bad:
        raise _err("entities", f"entity name {bad[0]!r} must not contain {SEP!r}")
    return tuple(pairs)


def _parse_aggregates(
    value: Any, entities: Sequence[str], numeric: tuple[str, ...]
) -> tuple[Aggregate, ...]:
    if not isinstance(value, list):
        raise _err("aggregates", "must be a list of definitions")
    out: list[Aggregate] = []
    for i, item in enumerate(value):
        where = f"aggregates[{i}]"
        d = _entry(item, where, ("entity", "column", "windows", "stats", "include_current"), ())
        (entity,) = _names([d["entity"]], entities, f"{where}.entity", "entity")
        if d["column"] not in numeric:
            raise _err(
                where,
                f"unknown column {d['column']!r}; aggregates take a numeric input listed in "
                f"'features' ({', '.join(numeric) or 'none'})",
            )
        if not isinstance(d["include_current"], bool):
            raise _err(where, "include_current must be true or false")
        stats = _names(d["stats"], STATS, f"{where}.stats", "stat")
        for w in _windows(d["windows"], f"{where}.windows"):
            out.extend(Aggregate(entity, d["column"], w, s, d["include_current"]) for s in stats)
    return tuple(out)


def _parse_label_risk(value: Any, entities: Sequence[str]) -> tuple[LabelRisk, ...]:
    if not isinstance(value, list):
        raise _err("label_risk", "must be a list of definitions")
    out: list[LabelRisk] = []
    for i, item in enumerate(value):
        where = f"label_risk[{i}]"
        d = _entry(item, where, ("entity", "windows", "stats"), ("delay",))
        (entity,) = _names([d["entity"]], entities, f"{where}.entity", "entity")
        stats = _names(d["stats"], LABEL_STATS, f"{where}.stats", "stat")
        delay = Window.parse(d["delay"], f"{where}.delay") if d.get("delay") else None
        for w in _windows(d["windows"], f"{where}.windows"):
            out.extend(LabelRisk(entity, w, s, delay) for s in stats)
    return tuple(out)
