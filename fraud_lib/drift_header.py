"""The title and header fraudloop puts on an Evidently HTML report: which run and window it is,
the champion it compares with, and fraudloop's decision with its reasons, so that nobody has
to guess how the panels below relate to the decision.

Evidently 0.7 renders its widgets into a fixed page template with no title; the header is a
plain HTML block inserted at the top of ``<body>`` (the report's own widgets stay untouched).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fraud_lib.drift import DriftSummary

_STYLE = (
    "font-family:Roboto,Helvetica,Arial,sans-serif;margin:16px 24px;padding:12px 16px;"
    "border:1px solid #ccc;border-radius:4px;background:#fafafa"
)


def report_title(summary: DriftSummary) -> str:
    """One line: the check's name and its verdict."""
    verdict = "DRIFT" if summary.drift_detected else "no drift"
    return f"fraudloop drift check {summary.name}: {verdict}"


def header_rows(summary: DriftSummary) -> list[tuple[str, str]]:
    """(label, text) rows of the header: the caller's context, then the decision's facts."""
    n, thresholds = len(summary.columns), summary.thresholds
    psi_value = (summary.score_shift or {}).get("psi")
    decision = "; ".join(summary.reasons) if summary.reasons else "below every threshold"
    psi = (
        "n/a (no score on both sides)"
        if psi_value is None
        else f"{psi_value:.3f} (drift at >= {thresholds['score_psi']}; on all rows)"
    )
    return [
        *summary.context.items(),
        ("decision", f"{'DRIFT' if summary.drift_detected else 'no drift'}: {decision}"),
        (
            "features",
            f"{summary.drifted_count} of {n} drifted (share {summary.drifted_share:.2f}; drift "
            f"at >= {thresholds['drift_share']}): {', '.join(summary.drifted_columns) or 'none'}",
        ),
        ("score PSI", psi),
        (
            "how to read the panels",
            f"the 'Dataset Drift' panel counts the same {n} feature columns with the same "
            "per-column tests (numeric: normed Wasserstein distance >= "
            f"{thresholds['column']}; categorical: Jensen-Shannon distance >= "
            f"{thresholds['column']}) and the same drift share as the decision. The score "
            "and label panels after the table are shown for information: the decision uses "
            "the score's PSI, not its Wasserstein distance, and not the label.",
        ),
        ("sampling", summary.sampling),
    ]


def report_html(page: str, summary: DriftSummary) -> str:
    """Evidently's ``page`` with fraudloop's ``<title>`` and header block."""
    if page.count("<head>") != 1 or page.count("<body>") != 1:
        raise RuntimeError("the Evidently page has no single <head> and <body> to put a header in")
    title = html.escape(report_title(summary))
    rows = "".join(
        f"<tr><th style='text-align:left;vertical-align:top;padding-right:16px'>"
        f"{html.escape(label)}</th><td>{html.escape(text)}</td></tr>"
        for label, text in header_rows(summary)
    )
    block = (
        f"<header id='fraudloop-header' style='{_STYLE}'><h1 style='font-size:20px;margin:0 0 "
        f"8px'>{title}</h1><table style='border-collapse:collapse'>{rows}</table></header>"
    )
    page = page.replace("<head>", f"<head>\n<title>{title}</title>", 1)
    return page.replace("<body>", f"<body>\n{block}", 1)
