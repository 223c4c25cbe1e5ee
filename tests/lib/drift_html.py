"""Read back what a saved Evidently HTML report shows: its dataset drift headline and counters
(from the dashboard data embedded in the page), and fraudloop's title and header."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DATA = re.compile(r"var (metric_[0-9a-f]+) = (\{.*?\});\n")
_HEADLINE = re.compile(
    r"Dataset Drift is (NOT detected|detected)\. Dataset drift detection threshold is ([0-9.e-]+)"
)


@dataclass
class ShownReport:
    detected: bool
    drift_share: float
    columns: int
    drifted_columns: int
    title: str
    header: str


def _counters(widget: dict[str, Any]) -> list[dict[str, Any]]:
    found = list((widget.get("params") or {}).get("counters") or [])
    for child in (widget.get("params") or {}).get("widgets") or []:
        found += _counters(child)
    for child in widget.get("widgets") or []:
        found += _counters(child)
    return found


def read_report(path: str | Path) -> ShownReport:
    """The headline, counters, ``<title>`` and fraudloop header of a saved report."""
    page = Path(path).read_text(encoding="utf-8")
    match = _DATA.search(page)
    assert match, "no embedded dashboard data in the report"
    counters = _counters(json.loads(match.group(2)))
    headlines = [m for c in counters if (m := _HEADLINE.fullmatch(str(c.get("label"))))]
    assert len(headlines) == 1, [c.get("label") for c in counters]
    by_label = {c["label"]: c["value"] for c in counters}
    header = re.search(r"<header id='fraudloop-header'.*?</header>", page, re.S)
    assert header, "no fraudloop header in the report"
    text = html.unescape(re.sub(r"<[^>]+>", " ", header.group(0)))
    title = re.search(r"<title>(.*?)</title>", page, re.S)
    return ShownReport(
        detected=headlines[0].group(1) == "detected",
        drift_share=float(headlines[0].group(2)),
        columns=int(by_label["Columns"]),
        drifted_columns=int(by_label["Drifted Columns"]),
        title=html.unescape(title.group(1)) if title else "",
        header=" ".join(text.split()),
    )


def assert_report_agrees(summary: dict[str, Any]) -> ShownReport:
    """The saved report's headline says what fraudloop decided about the features."""
    shown = read_report(summary["html_path"])
    share = summary["thresholds"]["drift_share"]
    assert shown.drift_share == share
    assert shown.columns == len(summary["columns"])
    assert shown.drifted_columns == summary["drifted_count"]
    assert shown.detected == (summary["drifted_share"] >= share)
    verdict = "DRIFT" if summary["drift_detected"] else "no drift"
    assert shown.title.endswith(f": {verdict}")
    assert f"decision {verdict}:" in shown.header
    for reason in summary["reasons"]:
        assert reason in shown.header
    return shown
