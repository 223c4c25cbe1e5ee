"""Transactions in and out: the creditcard.csv loader and a synthetic generator with drift.

The generator produces tables with the public ULB schema (``Time``, ``V1``..``V28``, ``Amount``,
``Class``) plus ``transaction_id`` and ``label_delay_seconds``. How a table is built:

* **Volume.** Day ``d`` is a weekday unless ``d % 7`` is 5 or 6 (day 0 is a Monday); weekend days
  carry 80 % of a weekday's rows. Within a day, times follow a smooth curve: few transactions at
  night, a midday peak and an evening shoulder; weekends peak later and stay busier at night.
* **Labels.** Each row has a latent risk from its time context (night hours x4 fraud odds, weekend
  x1.2). The intercept is calibrated so the expected fraud share equals ``fraud_rate``; ``Class``
  is then drawn from that risk and the features are drawn given the label.
* **Features.** Legit rows: ``V1``..``V28`` are centred, heavy-tailed (Student t, 5 d.o.f.) and
  mutually independent, with standard deviations decreasing with the index like the ULB PCA
  components; ``V2``, ``V7`` and ``V20`` are mildly correlated with log ``Amount``. Amounts are
  lognormal (median ~22, long tail, capped at 25,000, 0.5 % zero-amount card checks).
* **Fraud.** Two signals, as on the public ULB set where a logistic regression reaches an
  average precision of ~0.7 and boosted trees ~0.85. A *linear* part: 80 % of the "classic"
  frauds are "loud" and sit far out along one direction (``V14``, ``V23``, ``V18`` and ``V6``
  down; ``V11``, ``V15``, ``V21``, ``V19`` and ``V27`` up), each loud fraud in a random ~60 % of
  those columns, so their sum separates them while no single column does; the quiet rest moves
  a little. An *interaction* part that trees exploit: ``V3`` and ``V10`` are both far from zero
  with the *same* sign (75 % negative, 25 % positive), and ``V17`` moves up for small "test"
  charges but down for larger ones. Fraud amounts are bimodal (test charges around 1.5, many
  exactly 1.00; purchases around 90). 10 % of frauds are "hard": their features and amounts look
  legit. A few legit rows (0.01 %) carry the ``V3``/``V10`` pattern: the look-alike customers
  behind false alarms. No single column reaches a ROC AUC much above 0.8.
* **Label delay.** A fraud's label (a chargeback) arrives after a lognormal delay with median
  ``label_delay_days`` days (sigma 0.5). A legit label is confirmed by the nightly 03:00 review batch
  that follows ``label_delay_days / 3`` days after the transaction. ``label_delay_days=0`` makes
  every label known at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fraud_lib.errors import ConfigError, DataError
from fraud_lib.schema import FeatureSchema

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
ID_COLUMN = "transaction_id"
DELAY_COLUMN = "label_delay_seconds"
CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
MAX_AMOUNT = 25_000.0

SCENARIOS: dict[str, str] = {
    "none": "no drift: the same process on every day",
    "covariate_shift": "8 of 29 columns (V1, V2, V5, V7, V8, V9, V13, V16) change mean or scale "
    "for every transaction; the fraud signal is unchanged",
    "new_pattern": "65% of frauds follow a new V4/V12/V20 pattern with mid-range amounts; "
    "fraud rate x1.5; V4 and V12 shift slightly for every row",
    "fraud_rate": "the fraud rate triples; the fraud patterns stay the same",
    "amount_inflation": "every amount grows ~1.7x with a wider spread",
}

# Standard deviations of V1..V28, decreasing like the ULB PCA components.
_V_SCALES = np.array(
    [1.96, 1.65, 1.52, 1.42, 1.38, 1.33, 1.24, 1.19, 1.10, 1.09, 1.02, 1.00, 1.00, 0.96,
     0.92, 0.88, 0.85, 0.84, 0.81, 0.77, 0.73, 0.73, 0.62, 0.61, 0.52, 0.48, 0.40, 0.33]
)  # fmt: skip
_V = {f"V{i}": i - 1 for i in range(1, 29)}  # column name -> index in the feature matrix
_WEEKEND_VOLUME = 0.8
_NIGHT_FRAUD_ODDS = 4.0
_WEEKEND_FRAUD_ODDS = 1.2
_HARD_FRAUD_SHARE = 0.10
_LOOKALIKE_LEGIT_SHARE = 0.0001
_NEW_PATTERN_SHARE = 0.65
# The linear fraud signal: a direction in standard-deviation units (none of the columns that the
# covariate_shift or new_pattern scenarios move), how far along it a loud fraud sits in the
# columns it shows (about 60 % of them), and how far a quiet fraud sits in all of them.
_LINEAR_SIGNAL = {"V14": -1.5, "V11": 1.2, "V23": -1.1, "V15": 1.0, "V18": -1.0, "V21": 0.9,
                  "V6": -0.9, "V19": 0.8, "V27": 0.8}  # fmt: skip
_LOUD_FRAUD_SHARE = 0.8
_LOUD_COLUMN_SHARE = 0.6
_LOUD_STRENGTH = 3.2
_QUIET_STRENGTH = 0.2
_REVIEW_BATCH_HOUR = 3


# ---------------------------------------------------------------------------------- files
def _file_kind(path: Path) -> str:
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass a .csv or .parquet file")
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise DataError(
        f"{path}: unsupported file type; use one of {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
    )


def check_readable(p: Path) -> None:
    """Raise a one-line :class:`DataError` unless ``p`` is a readable, non-empty file."""
    if p.is_dir():
        raise DataError(f"{p} is a directory; give a .csv or .parquet file")
    if not p.exists():
        raise DataError(f"{p} does not exist; check the path (or generate data with the CLI)")
    try:
        with p.open("rb") as f:
            first = f.read(1)
    except OSError as exc:
        raise DataError(f"{p} cannot be read: {exc.strerror or exc}") from None
    if not first:
        raise DataError(f"{p} is empty (0 bytes); give a file with a header and rows")


def _read_table(p: Path, text_columns: list[str]) -> pd.DataFrame:
    """Read a non-empty CSV or parquet file, turning every failure into a :class:`DataError`."""
    check_readable(p)
    kind = _file_kind(p)
    try:
        if kind == "csv":
            df = pd.read_csv(p, dtype=dict.fromkeys(text_columns, str), low_memory=False)
        else:
            df = pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise DataError(f"{p} has no header and no rows; give a non-empty file") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the CSV as UTF-8"
        ) from None
    except Exception as exc:  # parsers raise many types: ParserError, ArrowInvalid, OSError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{p} could not be read as {kind}: {reason}") from None
    if df.empty:
        raise DataError(f"{p} has a header but no rows; give at least one row")
    return df


def load_transactions(
    path: str | Path, schema: FeatureSchema | None = None, *, require_label: bool = True
) -> pd.DataFrame:
    """Read a CSV or parquet table of transactions, validate it and sort it by time.

    Raises :class:`DataError` when the file is missing, empty, unreadable, or does not match
    ``schema`` (default: the ULB creditcard.csv layout).
    """
    schema = schema or FeatureSchema()
    p = Path(path)
    df = _read_table(p, [c for c in (schema.id, *schema.categorical, ID_COLUMN) if c])
    df = schema.validate_frame(df, require_label=require_label)
    df = df.sort_values(schema.time, kind="stable").reset_index(drop=True)
    logger.info("loaded %d transactions from %s", len(df), p)
    return df


def save_transactions(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV (optionally gzipped) or parquet, chosen by suffix; return the path."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p} is a directory; give a file name ending in .csv or .parquet")
    kind = _file_kind(p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "csv":
            df.to_csv(p, index=False)
        else:
            df.to_parquet(p, index=False)
    except OSError as exc:
        raise DataError(f"{p} cannot be written: {exc.strerror or exc}") from None
    logger.info("wrote %d transactions to %s", len(df), p)
    return p


def labels_known_by(
    df: pd.DataFrame, time_seconds: float, *, time_col: str = "Time", delay_col: str = DELAY_COLUMN
) -> pd.Series:
    """Boolean mask of rows whose label is known at ``time_seconds`` (Time + delay <= t)."""
    missing = [c for c in (time_col, delay_col) if c not in df.columns]
    if missing:
        raise DataError(f"labels_known_by needs column(s) {', '.join(missing)}")
    return (df[time_col] + df[delay_col]) <= time_seconds


# ------------------------------------------------------------------------------ generator
def _check_args(
    days: int, rows_per_day: int, total_rows: int | None, fraud_rate: float,
    scenario: str, start_day: int, label_delay_days: float,
) -> None:  # fmt: skip
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if days < 1:
        raise ConfigError(f"days must be at least 1, got {days}")
    if total_rows is None and rows_per_day < 10:
        raise ConfigError(f"rows_per_day must be at least 10, got {rows_per_day}")
    if total_rows is not None and total_rows < 1:
        raise ConfigError(f"total_rows must be at least 1, got {total_rows}")
    if not 0 < fraud_rate < 0.5:
        raise ConfigError(f"fraud_rate must be between 0 and 0.5 (e.g. 0.002), got {fraud_rate}")
    if start_day < 0:
        raise ConfigError(f"start_day must be >= 0, got {start_day}")
    if label_delay_days < 0:
        raise ConfigError(f"label_delay_days must be >= 0, got {label_delay_days}")


def _rows_per_day(day_index: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` rows over days by the weekday/weekend volume, summing exactly."""
    weights = np.where(day_index % 7 >= 5, _WEEKEND_VOLUME, 1.0)
    raw = total * weights / weights.sum()
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return counts


def _hour_density(hours: np.ndarray, weekend: bool) -> np.ndarray:
    """Relative transaction volume by hour of day (few at night, midday peak, evening shoulder)."""
    if weekend:
        return (0.10 + np.exp(-0.5 * ((hours - 14.0) / 3.6) ** 2)
                + 0.7 * np.exp(-0.5 * ((hours - 20.5) / 2.2) ** 2))  # fmt: skip
    return (0.06 + np.exp(-0.5 * ((hours - 12.5) / 3.0) ** 2)
            + 0.55 * np.exp(-0.5 * ((hours - 19.0) / 2.0) ** 2))  # fmt: skip


def _sample_times(rng: np.random.Generator, day: np.ndarray) -> np.ndarray:
    """Seconds since day 0 for rows of the given days, following the intraday curve."""
    minutes = np.arange(1440)
    seconds = np.empty(len(day))
    weekend = day % 7 >= 5
    for is_weekend in (False, True):
        mask = weekend == is_weekend
        cdf = np.cumsum(_hour_density((minutes + 0.5) / 60.0, is_weekend))
        u = rng.random(int(mask.sum())) * cdf[-1]
        minute = np.minimum(np.searchsorted(cdf, u, side="right"), 1439)
        seconds[mask] = minute * 60.0 + rng.random(len(minute)) * 60.0
    seconds = np.floor(seconds * 1000.0) / 1000.0  # millisecond resolution, stays below 86,400
    return day * float(SECONDS_PER_DAY) + seconds


def _calibrated_probability(logit_offset: np.ndarray, rate: float) -> np.ndarray:
    """Per-row fraud probability sigmoid(b + offset) with b chosen so the mean equals ``rate``."""
    values, counts = np.unique(logit_offset, return_counts=True)
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        mean = np.average(1.0 / (1.0 + np.exp(-(mid + values))), weights=counts)
        lo, hi = (mid, hi) if mean < rate else (lo, mid)
    return 1.0 / (1.0 + np.exp(-((lo + hi) / 2 + logit_offset)))


def _legit_amounts(rng: np.random.Generator, n: int) -> np.ndarray:
    amounts = rng.lognormal(np.log(22.0), 1.5, n)
    amounts[rng.random(n) < 0.005] = 0.0  # card verification checks
    return amounts


def _fraud_amounts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Bimodal: small test charges (many exactly 1.00) and larger purchases."""
    test_charge = rng.random(n) < 0.45
    amounts = np.where(
        test_charge, rng.lognormal(np.log(1.5), 0.8, n), rng.lognormal(np.log(90.0), 0.8, n)
    )
    amounts[test_charge & (rng.random(n) < 0.3)] = 1.0
    return amounts


def _random_sign(rng: np.random.Generator, n: int, p_negative: float) -> np.ndarray:
    return np.where(rng.random(n) < p_negative, -1.0, 1.0)


def _apply_classic_pattern(
    rng: np.random.Generator, z: np.ndarray, rows: np.ndarray, amount: np.ndarray, full: bool
) -> None:
    """The classic fraud signal, in standard-deviation units of ``z`` (modified in place)."""
    n = len(rows)
    sign = _random_sign(rng, n, 0.75)
    z[rows, _V["V3"]] = sign * rng.normal(2.8, 0.35, n)
    z[rows, _V["V10"]] = sign * rng.normal(2.6, 0.35, n)
    if not full:
        return
    loud = rng.random((n, 1)) < _LOUD_FRAUD_SHARE
    shows = loud & (rng.random((n, len(_LINEAR_SIGNAL))) < _LOUD_COLUMN_SHARE)
    strength = np.where(shows, _LOUD_STRENGTH, _QUIET_STRENGTH)
    columns = [_V[col] for col in _LINEAR_SIGNAL]
    z[rows[:, None], columns] += strength * np.array(list(_LINEAR_SIGNAL.values()))
    z[rows, _V["V17"]] += np.where(amount[rows] >= 20.0, -1.8, 1.4)


def _apply_new_pattern(rng: np.random.Generator, z: np.ndarray, rows: np.ndarray) -> None:
    """The post-drift fraud signal of the ``new_pattern`` scenario (V4, V12, V20)."""
    n = len(rows)
    sign = _random_sign(rng, n, 0.5)
    z[rows, _V["V4"]] = sign * rng.normal(1.8, 0.5, n)
    z[rows, _V["V12"]] = -sign * rng.normal(1.8, 0.5, n)
    z[rows, _V["V20"]] += 1.2


def _label_delays(
    rng: np.random.Generator, time: np.ndarray, is_fraud: np.ndarray, label_delay_days: float
) -> np.ndarray:
    """Seconds until each label is known: chargebacks for fraud, nightly review for legit."""
    if label_delay_days == 0:
        return np.zeros(len(time))
    chargeback = rng.lognormal(np.log(label_delay_days * SECONDS_PER_DAY), 0.5, len(time))
    ready = time + label_delay_days * SECONDS_PER_DAY / 3.0
    batch = _REVIEW_BATCH_HOUR * 3600.0
    review = np.ceil((ready - batch) / SECONDS_PER_DAY) * SECONDS_PER_DAY + batch
    return np.round(np.where(is_fraud, chargeback, review - time), 3)


def generate(
    days: int = 28,
    *,
    rows_per_day: int = 10_000,
    total_rows: int | None = None,
    fraud_rate: float = 0.002,
    seed: int = 0,
    scenario: str = "none",
    drift_start_day: int | None = None,
    start_day: int = 0,
    label_delay_days: float = 3.0,
) -> pd.DataFrame:
    """Generate synthetic card transactions with the ULB schema (see the module docstring).

    Days ``start_day .. start_day + days - 1`` are generated, so ``generate(7, start_day=7)``
    continues ``generate(7)``. ``total_rows`` (if given) replaces ``rows_per_day`` and is split
    over the days by their volume. ``scenario`` (a key of :data:`SCENARIOS`) changes every row of
    day ``>= drift_start_day`` (default: the middle of the generated period). Same arguments give
    an identical frame.
    """
    _check_args(days, rows_per_day, total_rows, fraud_rate, scenario, start_day, label_delay_days)
    rng = np.random.default_rng(seed)
    day_index = np.arange(start_day, start_day + days)
    total = days * rows_per_day if total_rows is None else total_rows
    day = np.repeat(day_index, _rows_per_day(day_index, total))
    time = np.sort(_sample_times(rng, day), kind="stable")
    day = (time // SECONDS_PER_DAY).astype(np.int64)
    n = len(time)

    if drift_start_day is None:
        drift_start_day = start_day + days // 2
    drifted = (day >= drift_start_day) if scenario != "none" else np.zeros(n, dtype=bool)

    hour = (time % SECONDS_PER_DAY) / 3600.0
    logit_offset = np.log(_NIGHT_FRAUD_ODDS) * (hour < 6) + np.log(_WEEKEND_FRAUD_ODDS) * (
        day % 7 >= 5
    )
    rate_after = {"fraud_rate": 3.0, "new_pattern": 1.5}.get(scenario, 1.0) * fraud_rate
    p_fraud = np.empty(n)
    for mask, rate in ((~drifted, fraud_rate), (drifted, min(rate_after, 0.95))):
        if mask.any():
            p_fraud[mask] = _calibrated_probability(logit_offset[mask], rate)
    is_fraud = rng.random(n) < p_fraud

    # Fraud mechanism of each fraud row: classic, hard (looks legit) or the new pattern.
    u = rng.random(n)
    new_share = np.where(drifted & (scenario == "new_pattern"), _NEW_PATTERN_SHARE, 0.0)
    is_new = is_fraud & (u < new_share)
    is_hard = is_fraud & ~is_new & (u < new_share + (1 - new_share) * _HARD_FRAUD_SHARE)
    is_classic = is_fraud & ~is_new & ~is_hard

    amount = _legit_amounts(rng, n)
    fraud_amount = is_classic | is_new
    amount[fraud_amount] = _fraud_amounts(rng, int(fraud_amount.sum()))
    amount[is_new] = rng.uniform(180.0, 320.0, int(is_new.sum()))
    amount = np.minimum(amount, MAX_AMOUNT)

    z = rng.standard_t(5, size=(n, 28)) / np.sqrt(5 / 3)  # unit variance, heavy tails
    amount_z = np.clip((np.log1p(amount) - 3.1) / 1.5, -3, 3)
    for col, corr in (("V2", -0.4), ("V7", 0.3), ("V20", 0.35)):
        j = _V[col]
        z[:, j] = np.sqrt(1 - corr**2) * z[:, j] + corr * amount_z
    lookalike = ~is_fraud & (rng.random(n) < _LOOKALIKE_LEGIT_SHARE)
    _apply_classic_pattern(rng, z, np.flatnonzero(is_classic), amount, full=True)
    _apply_classic_pattern(rng, z, np.flatnonzero(lookalike), amount, full=False)
    _apply_new_pattern(rng, z, np.flatnonzero(is_new))

    if scenario == "covariate_shift":
        z[drifted, _V["V1"]] += 0.8
        z[drifted, _V["V2"]] *= 1.6
        z[drifted, _V["V5"]] -= 0.6
        z[drifted, _V["V7"]] = z[drifted, _V["V7"]] * 1.3 + 0.5
        z[drifted, _V["V8"]] += 0.4
        z[drifted, _V["V9"]] *= 1.4
        z[drifted, _V["V13"]] -= 0.4
        z[drifted, _V["V16"]] += 0.4
    elif scenario == "new_pattern":
        z[drifted, _V["V4"]] += 0.35
        z[drifted, _V["V12"]] -= 0.35
    elif scenario == "amount_inflation":
        k = int(drifted.sum())
        amount[drifted] = np.minimum(
            amount[drifted] * rng.lognormal(np.log(1.7), 0.3, k), MAX_AMOUNT
        )

    features = z * _V_SCALES
    frame = pd.DataFrame(features, columns=list(_V))
    frame.insert(0, "Time", time)
    frame.insert(0, ID_COLUMN, [f"tx-{seed}-{start_day}-{i}" for i in range(n)])
    frame["Amount"] = np.round(amount, 2)
    frame["Class"] = is_fraud.astype(np.int64)
    frame[DELAY_COLUMN] = _label_delays(rng, time, is_fraud, label_delay_days)
    logger.debug(
        "generated %d rows over days %d..%d (scenario=%s, frauds=%d)",
        n, start_day, start_day + days - 1, scenario, int(is_fraud.sum()),
    )  # fmt: skip
    return frame
