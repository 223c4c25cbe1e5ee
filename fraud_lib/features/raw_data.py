"""Synthetic raw card transactions whose frauds mostly behavioral features reveal.

Columns: ``transaction_id``, ``timestamp`` (epoch seconds, UTC, millisecond resolution; day 0 is
2024-01-01, a Monday), ``customer_id``, ``terminal_id``, ``amount``, ``is_fraud``, ``fraud_type``
(``""`` for legit rows), ``label_delay_seconds`` and ``labeled_at`` (epoch seconds). How a table
is built (written for fraudloop from this description, not taken from a published simulator):

* **World** (fixed by ``seed`` and the daily volume, so ``start_day`` continues a history): one
  customer per daily transaction on average, one terminal per ten. A customer has a spending
  profile (median amount lognormal around 35, own spread), an activity rate (gamma, so some
  are much busier), a daily rhythm (peak hour around 13h with its own width; 5 % night owls
  peaking at 23h) and five usual terminals with personal preferences (10 % of purchases go to
  any terminal).
* **Legit traffic.** Each row picks a customer by activity, a day by volume (weekend days carry
  80 % of a weekday), a time from the customer's rhythm, a terminal and an amount from the
  customer's profile.
* **Fraud** (``fraud_rate`` of the rows; 40 % terminal, 35 % takeover, 25 % card testing):
  ``terminal``: terminals compromised for 2 to 4 weeks from a random day; half of their
  transactions in that period are fraud, with ordinary amounts, so only the terminal's fraud
  history gives them away. ``takeover``: a taken-over card makes a burst of 3 to 8 purchases
  within about a day, 3 to 10 times the customer's median, at any terminal and hour.
  ``card_testing``: 5 to 15 small charges (0.50 to 3.00, 30 % exactly 1.00) minutes apart on one
  card at one terminal.
* **Label delay and drift.** Label delays follow :func:`fraud_lib.data._label_delays` (lognormal
  chargebacks for fraud, nightly review for legit). From ``drift_start_day`` on, the scenarios
  of :data:`SCENARIOS` change the traffic.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fraud_lib.data import MAX_AMOUNT, SECONDS_PER_DAY, _check_args, _label_delays, _rows_per_day
from fraud_lib.errors import ConfigError

logger = logging.getLogger(__name__)

EPOCH_DAY0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z, a Monday
FRAUD_TYPES = ("terminal", "takeover", "card_testing", "new_pattern")
SCENARIOS: dict[str, str] = {
    "none": "no drift: the same process on every day",
    "covariate_shift": "customers spend 1.4x more and two hours later in the day; fraud unchanged",
    "new_pattern": "65% of burst frauds become 2-5 mid-range purchases (180-320) at the "
    "customer's own terminals; fraud rate x1.5",
    "fraud_rate": "the fraud rate triples; the fraud patterns stay the same",
    "amount_inflation": "every amount grows ~1.7x with a wider spread",
}
_SHARES = {"terminal": 0.40, "takeover": 0.35, "card_testing": 0.25}
_USUAL_TERMINALS = 5
_COMPROMISED_FRAUD_P = 0.5


def _world(rng: np.random.Generator, daily_rows: int) -> dict[str, np.ndarray]:
    """Customers (profiles, rhythms, usual terminals) and the terminal count."""
    n_c = max(20, daily_rows)
    n_t = max(10, daily_rows // 10)
    owl = rng.random(n_c) < 0.05
    return {
        "median": rng.lognormal(np.log(35.0), 0.7, n_c),
        "spread": rng.uniform(0.3, 0.9, n_c),
        "activity": rng.gamma(2.0, 0.5, n_c),
        "peak": np.where(owl, 23.0, np.clip(rng.normal(13.0, 2.5, n_c), 7.0, 21.0)),
        "width": rng.uniform(1.5, 4.0, n_c),
        "usual": rng.integers(0, n_t, size=(n_c, _USUAL_TERMINALS)),
        "preference": rng.dirichlet(np.ones(_USUAL_TERMINALS), n_c).cumsum(axis=1),
        "n_terminals": np.array(n_t),
    }


def _legit(rng: np.random.Generator, w: dict, days: np.ndarray, n: int, drift_day: int,
           scenario: str) -> pd.DataFrame:  # fmt: skip
    """``n`` ordinary purchases over ``days``."""
    cust = rng.choice(len(w["median"]), size=n, p=w["activity"] / w["activity"].sum())
    day = np.repeat(days, _rows_per_day(days, n))
    rng.shuffle(day)
    drifted = day >= drift_day
    peak = w["peak"][cust] + np.where(drifted & (scenario == "covariate_shift"), 2.0, 0.0)
    hour = np.mod(rng.normal(peak, w["width"][cust]), 24.0)
    pick = (rng.random(n)[:, None] > w["preference"][cust]).sum(axis=1)
    term = w["usual"][cust, np.minimum(pick, _USUAL_TERMINALS - 1)]
    anywhere = rng.random(n) < 0.10
    term[anywhere] = rng.integers(0, int(w["n_terminals"]), int(anywhere.sum()))
    amount = rng.lognormal(np.log(w["median"][cust]), w["spread"][cust])
    amount[drifted & (scenario == "covariate_shift")] *= 1.4
    return _rows(day * SECONDS_PER_DAY + hour * 3600.0, cust, term, amount, "")


def _rows(seconds: np.ndarray, cust: np.ndarray, term: np.ndarray, amount: np.ndarray,
          kind: str) -> pd.DataFrame:  # fmt: skip
    return pd.DataFrame(
        {"seconds": seconds, "cust": cust, "term": term, "amount": amount, "fraud_type": kind}
    )


def _bursts(rng: np.random.Generator, w: dict, kind: str, n_cards: int, lo: float, hi: float,
            ) -> pd.DataFrame:  # fmt: skip
    """Fraud bursts of one kind on ``n_cards`` cards starting uniformly in ``[lo, hi)`` seconds."""
    sizes = {"takeover": (3, 9), "card_testing": (5, 16), "new_pattern": (2, 6)}[kind]
    gap = {"takeover": 3 * 3600.0, "card_testing": 90.0, "new_pattern": 1.5 * 3600.0}[kind]
    size = rng.integers(*sizes, n_cards)
    burst = np.repeat(np.arange(n_cards), size)
    offsets = rng.exponential(gap, len(burst))
    offsets = np.cumsum(offsets) - np.repeat(np.cumsum(offsets)[np.cumsum(size) - size], size)
    seconds = rng.uniform(lo, hi, n_cards)[burst] + offsets
    cust = rng.integers(0, len(w["median"]), n_cards)[burst]
    n = len(burst)
    if kind == "card_testing":
        term = rng.integers(0, int(w["n_terminals"]), n_cards)[burst]
        amount = rng.uniform(0.5, 3.0, n)
        amount[rng.random(n) < 0.3] = 1.0
    elif kind == "takeover":
        term = rng.integers(0, int(w["n_terminals"]), n)
        amount = w["median"][cust] * rng.uniform(3.0, 10.0, n)
    else:
        term = w["usual"][cust, rng.integers(0, _USUAL_TERMINALS, n)]
        amount = rng.uniform(180.0, 320.0, n)
    frame = _rows(seconds, cust, term, amount, kind)
    return frame[frame["seconds"] < hi]


def _compromise(rng: np.random.Generator, legit: pd.DataFrame, n_terminals: int, lo: float,
                hi: float, budget: float) -> np.ndarray:  # fmt: skip
    """Mark legit rows at terminals compromised from a day in ``[lo, hi)`` until ``budget``."""
    start = np.floor(rng.uniform(lo, hi, n_terminals) / SECONDS_PER_DAY) * SECONDS_PER_DAY
    end = np.minimum(start + rng.integers(14, 29, n_terminals) * SECONDS_PER_DAY, hi)
    term, sec = legit["term"].to_numpy(), legit["seconds"].to_numpy()
    inside = (sec >= start[term]) & (sec < end[term])
    expected = _COMPROMISED_FRAUD_P * np.bincount(term[inside], minlength=n_terminals)
    order = rng.permutation(n_terminals)
    chosen = np.zeros(n_terminals, dtype=bool)
    chosen[order[: int(np.searchsorted(np.cumsum(expected[order]), budget)) + 1]] = budget > 0
    return inside & chosen[term] & (rng.random(len(term)) < _COMPROMISED_FRAUD_P)


def _frauds(rng: np.random.Generator, w: dict, lo: float, hi: float, budget: float,
            scenario: str, drifted: bool) -> pd.DataFrame:  # fmt: skip
    """Injected burst frauds (takeover, card testing, new pattern) of one period."""
    share = 0.65 if drifted and scenario == "new_pattern" else 0.0
    mean_size = {"takeover": 5.5, "card_testing": 10.0, "new_pattern": 3.5}
    parts = []
    for kind, weight in (
        ("takeover", _SHARES["takeover"] * (1 - share)),
        ("card_testing", _SHARES["card_testing"] * (1 - share)),
        ("new_pattern", 0.6 * share),
    ):
        cards = rng.poisson(budget * weight / mean_size[kind]) if weight else 0
        if cards:
            parts.append(_bursts(rng, w, kind, int(cards), lo, hi))
    return pd.concat(parts, ignore_index=True) if parts else _rows(*[np.array([])] * 4, "")


def generate_raw(
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
    """Generate raw card transactions (see the module docstring); same arguments, same frame.

    About ``total_rows`` (or ``days * rows_per_day``) rows: the legit rows fill up what the
    injected bursts leave, minus the few bursts that run past the last day.
    """
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    _check_args(days, rows_per_day, total_rows, fraud_rate, "none", start_day, label_delay_days)
    total = days * rows_per_day if total_rows is None else total_rows
    world = _world(np.random.default_rng([seed, 0]), max(1, total // days))
    rng = np.random.default_rng([seed, 1, start_day])
    end = start_day + days
    drift = start_day + days // 2 if drift_start_day is None else drift_start_day
    drift = min(max(drift, start_day), end) if scenario != "none" else end
    periods = [p for p in ((start_day, drift, False), (drift, end, True)) if p[1] > p[0]]
    factor = {"fraud_rate": 3.0, "new_pattern": 1.5}.get(scenario, 1.0)
    injected = []
    for lo, hi, drifted in periods:
        budget = fraud_rate * total * (hi - lo) / days * (factor if drifted else 1.0)
        injected.append(
            _frauds(
                rng,
                world,
                lo * float(SECONDS_PER_DAY),
                hi * float(SECONDS_PER_DAY),
                budget,
                scenario,
                drifted,
            )
        )
    bursts = pd.concat(injected, ignore_index=True)
    legit = _legit(rng, world, np.arange(start_day, end), max(total - len(bursts), 1), drift,
                   scenario)  # fmt: skip
    for lo, hi, drifted in periods:
        budget = _SHARES["terminal"] * fraud_rate * total * (hi - lo) / days
        hit = _compromise(rng, legit, int(world["n_terminals"]), lo * float(SECONDS_PER_DAY), hi * float(SECONDS_PER_DAY),
                          budget * (factor if drifted else 1.0))  # fmt: skip
        legit.loc[hit & (legit["fraud_type"] == ""), "fraud_type"] = "terminal"
    return _finish(rng, pd.concat([legit, bursts], ignore_index=True), seed, start_day, drift,
                   scenario, label_delay_days)  # fmt: skip


def _finish(rng: np.random.Generator, rows: pd.DataFrame, seed: int, start_day: int,
            drift: int, scenario: str, label_delay_days: float) -> pd.DataFrame:  # fmt: skip
    """Order by time, apply amount drift, round, add ids and label times."""
    sec = np.floor(rows["seconds"].to_numpy() * 1000.0) / 1000.0
    order = np.argsort(sec, kind="stable")
    rows = rows.iloc[order].reset_index(drop=True)
    sec = sec[order]
    amount = rows["amount"].to_numpy(np.float64)
    if scenario == "amount_inflation":
        late = sec >= drift * SECONDS_PER_DAY
        amount[late] *= rng.lognormal(np.log(1.7), 0.3, int(late.sum()))
    is_fraud = (rows["fraud_type"] != "").to_numpy()
    timestamp = EPOCH_DAY0 + sec
    delay = _label_delays(rng, timestamp, is_fraud, label_delay_days)
    out = pd.DataFrame({
        "transaction_id": [f"rtx-{seed}-{start_day}-{i}" for i in range(len(rows))],
        "timestamp": timestamp,
        "customer_id": "c" + rows["cust"].astype(np.int64).astype(str),
        "terminal_id": "t" + rows["term"].astype(np.int64).astype(str),
        "amount": np.round(np.clip(amount, 0.0, MAX_AMOUNT), 2),
        "is_fraud": is_fraud.astype(np.int64),
        "fraud_type": rows["fraud_type"].to_numpy(),
        "label_delay_seconds": delay,
        "labeled_at": timestamp + delay,
    })  # fmt: skip
    logger.debug("generated %d raw rows, %d frauds", len(out), int(is_fraud.sum()))
    return out
