"""The feature schema: which columns are the time, the label, the features, the id.

The schema is configuration, not code. The default is the public ULB credit-card schema
(Time, V1..V28, Amount, Class); ``FeatureSchema.load(path)`` reads any other from JSON or YAML.
A schema with a ``behavior:`` block describes raw transactions whose model inputs are computed
from history (:mod:`fraud_lib.features`): its ``features`` then lists the raw numeric inputs, and
the parsed schema's ``features`` holds those plus every computed column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fraud_lib.errors import ConfigError, DataError
from fraud_lib.features.spec import BehaviorSpec

if TYPE_CHECKING:  # pandas is imported where a frame is made: not in a scoring worker
    import pandas as pd


def _plain(value: Any) -> Any:
    """A numpy scalar as the plain Python value, so messages read ``2``, not ``np.int64(2)``."""
    return value.item() if isinstance(value, np.generic) else value


ULB_FEATURES = (*(f"V{i}" for i in range(1, 29)), "Amount")
SCHEMA_KEYS = ("time", "label", "features", "id", "categorical", "behavior")
MAX_SCHEMA_BYTES = 1_000_000


def _read_schema_text(p: Path) -> str:
    """The text of a schema file, or a one-line :class:`ConfigError` saying why not."""
    if p.is_dir():
        raise ConfigError(f"schema file {p} is a directory; pass --schema with a JSON or YAML file")
    if not p.exists():
        raise ConfigError(f"schema file {p} does not exist; pass --schema with a JSON or YAML file")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_SCHEMA_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"schema file {p} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_SCHEMA_BYTES:
        raise ConfigError(
            f"schema file {p} is larger than {MAX_SCHEMA_BYTES:,} bytes; a schema is a few lines"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"schema file {p}, line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
            "save it as UTF-8"
        ) from None


def _parse_schema_text(p: Path, text: str) -> Any:
    """Parse JSON or YAML (by suffix); a syntax error becomes one line with its position."""
    import yaml

    from fraud_lib.unique_keys import DuplicateKeyError, loads, yaml_load

    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            return yaml_load(text)
        return loads(text, f"schema file {p}")
    except DuplicateKeyError as exc:
        raise ConfigError(str(exc)) from None
    except json.JSONDecodeError as exc:
        where, problem = f"line {exc.lineno}, column {exc.colno}", exc.msg
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        where, problem = "somewhere", " ".join(str(exc).split()) or type(exc).__name__
    raise ConfigError(f"schema file {p}, {where}: {problem}")


@dataclass(frozen=True)
class FeatureSchema:
    """Column roles of a transactions table."""

    time: str = "Time"
    label: str = "Class"
    features: tuple[str, ...] = ULB_FEATURES
    id: str | None = None
    categorical: tuple[str, ...] = field(default_factory=tuple)
    behavior: BehaviorSpec | None = None

    def __post_init__(self) -> None:
        if not self.features:
            raise ConfigError("schema: 'features' must list at least one numeric column")
        names = [*self.features, *self.categorical]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"schema: columns listed twice: {', '.join(dupes)}")
        if self.label in names:
            raise ConfigError(f"schema: the label column {self.label!r} cannot also be a feature")

    @property
    def model_columns(self) -> list[str]:
        """Columns the model consumes, in order: numeric features then categorical ones."""
        return [*self.features, *self.categorical]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """Build a schema from a mapping with keys time, label, features, optional id,
        categorical and behavior."""
        unknown = {str(k) for k in data} - set(SCHEMA_KEYS)
        if unknown:
            raise ConfigError(
                f"schema: unknown keys {sorted(unknown)}; allowed: {', '.join(SCHEMA_KEYS)}"
            )
        missing = [k for k in ("time", "label", "features") if k not in data]
        if missing:
            raise ConfigError(f"schema: missing required keys {missing}")
        for key in ("time", "label", "id"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ConfigError(f"schema: {key!r} must be a column name (a string)")
        for key in ("features", "categorical"):
            value = data.get(key) or []
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise ConfigError(f"schema: {key!r} must be a list of column names")
        roles = {
            "time": str(data["time"]),
            "label": str(data["label"]),
            "id": str(data["id"]) if data.get("id") else None,
            "categorical": tuple(data.get("categorical") or ()),
        }
        features = tuple(data["features"])
        if data.get("behavior") is None:
            return cls(features=features, **roles)
        behavior = BehaviorSpec.from_config(data["behavior"], numeric=features, **roles)
        return cls(features=(*features, *behavior.output_columns), behavior=behavior, **roles)

    @classmethod
    def load(cls, path: str | Path | None) -> FeatureSchema:
        """Read a schema file (JSON, or YAML for ``.yaml``/``.yml``); ``None`` or ``""`` gives
        the ULB default.

        Every problem (missing, a directory, unreadable, too large, not UTF-8, a syntax error,
        a bad key) raises :class:`ConfigError` with one line naming the file (and the line).
        """
        if not path:
            return cls()
        p = Path(path)
        data = _parse_schema_text(p, _read_schema_text(p))
        if not isinstance(data, dict):
            raise ConfigError(
                f"schema file {p} must hold a mapping with keys time, label, features"
            )
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"schema file {p}: {str(exc).removeprefix('schema: ')}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; round-trips through :meth:`from_dict`."""
        d = asdict(self)
        d["features"] = list(self.behavior.numeric if self.behavior else self.features)
        d["categorical"] = list(self.categorical)
        if self.behavior:
            d["behavior"] = self.behavior.to_dict()
        else:
            del d["behavior"]
        return d

    def raw(self) -> FeatureSchema:
        """The schema of the raw table a behavioral schema reads (itself for a plain schema)."""
        if self.behavior is None:
            return self
        return FeatureSchema(
            self.time, self.label, self.behavior.numeric, self.id, self.categorical
        )

    # ---------------------------------------------------------------- tables
    def validate_frame(
        self, df: pd.DataFrame, *, require_label: bool = True, copy: bool = True
    ) -> pd.DataFrame:
        """Check a transactions table; return it with numeric columns as float64 (with
        ``copy=False`` sharing the float64 columns of ``df``: for a frame no one else holds).

        Raises :class:`DataError` naming the first problem: empty table, missing columns,
        non-numeric values, NaN/inf, or labels other than 0/1.
        """
        import pandas as pd

        if df.empty:
            raise DataError("the data has no rows; give a file with at least one transaction")
        needed = [self.time, *self.model_columns] + ([self.label] if require_label else [])
        missing = [c for c in dict.fromkeys(needed) if c not in df.columns]
        if missing:
            raise DataError(
                f"missing column(s): {', '.join(missing)}; the schema expects "
                f"time={self.time!r}, label={self.label!r} and {len(self.features)} feature columns "
                "(pass --schema for another layout)"
            )
        out = df.copy(deep=copy)  # columns are replaced below, never written in place
        for col in dict.fromkeys([self.time, *self.features]):
            values = pd.to_numeric(out[col], errors="coerce")
            bad = values.isna() & out[col].notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"column {col!r} must be numeric; row {row} has {_plain(out[col].iloc[row])!r}"
                )
            values = values.astype("float64", copy=copy)
            finite = np.isfinite(values.to_numpy())
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0])
                raise DataError(
                    f"column {col!r} has a missing or infinite value at row {row}; "
                    "fill or drop such rows before training"
                )
            out[col] = values
        for col in self.categorical:
            if out[col].isna().any():
                raise DataError(f"categorical column {col!r} has missing values")
            out[col] = out[col].astype(str)
        if require_label:
            labels = pd.to_numeric(out[self.label], errors="coerce")
            ok = labels.isin([0, 1])
            if not ok.all():
                row = int(np.flatnonzero(~ok.to_numpy())[0])
                raise DataError(
                    f"label column {self.label!r} must be 0 or 1; row {row} has "
                    f"{_plain(out[self.label].iloc[row])!r}"
                )
            out[self.label] = labels.astype("int8")
        return out

    # -------------------------------------------------------------- requests
    def validate_record(self, record: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """Validate one scoring request record.

        Returns ``(clean, errors)``: ``clean`` maps every model column to a float (or str for
        categorical), ``errors`` maps field names to what was wrong. Unknown fields are errors,
        except ``transaction_id``, ``event_time`` and the label/id columns.
        """
        if not isinstance(record, Mapping):
            return {}, {"": "each transaction must be a JSON object"}
        errors: dict[str, str] = {}
        clean: dict[str, Any] = {}
        for col in self.features:
            if col not in record:
                errors[col] = "missing"
                continue
            value = record[col]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                errors[col] = f"must be a number, got {type(value).__name__}"
            elif not math.isfinite(value):
                errors[col] = "must be a finite number (NaN and Infinity are not allowed)"
            else:
                clean[col] = float(value)
        for col in self.categorical:
            if col not in record:
                errors[col] = "missing"
            elif not isinstance(record[col], (str, int)) or isinstance(record[col], bool):
                errors[col] = "must be a string"
            else:
                clean[col] = str(record[col])
        allowed = {*self.model_columns, "transaction_id", "event_time", self.time, self.label}
        if self.id:
            allowed.add(self.id)
        for key in record:
            if key not in allowed:
                errors[str(key)] = "unknown field; check the spelling against GET /v1/model"
        return clean, errors


def records_to_frame(schema: FeatureSchema, records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Validated records (from :meth:`FeatureSchema.validate_record`) to a model-ready frame."""
    import pandas as pd

    frame = pd.DataFrame.from_records(records, columns=schema.model_columns)
    for col in schema.features:
        frame[col] = frame[col].astype("float64")
    return frame
