"""The Prometheus alerting rules and the Alertmanager config, checked by the real tools:
``promtool`` (Debian's ``prometheus`` package) and ``amtool`` (``prometheus-alertmanager``),
which ``make system-deps`` installs. A missing tool fails these tests: they never skip."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from serving.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RULES = PROM / "alerts.yml"
WANTED = {
    "FraudScoringTargetDown", "FraudScoringTargetsMissing", "FraudNoModelLoaded",
    "FraudModelReloadFailures", "FraudLogBacklogHigh", "FraudPostgresDown",
    "FraudHigh5xxRate", "FraudScoreLatencyP99High",
}  # fmt: skip


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make system-deps` (Debian package {package})")
    return path


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules_and_the_config() -> None:
    promtool = _tool("promtool", "prometheus")
    assert f"SUCCESS: {len(WANTED)} rules found" in _run(promtool, "check", "rules", str(RULES))
    _run(promtool, "check", "config", str(PROM / "prometheus.yml"))


def test_promtool_unit_tests_cover_every_rule_firing_and_not_firing() -> None:
    promtool = _tool("promtool", "prometheus")
    assert "SUCCESS" in _run(promtool, "test", "rules", str(PROM / "alerts_test.yml"))
    cases = [c for t in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
             for c in t["alert_rule_test"]]  # fmt: skip
    fires = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert {r["alert"] for r in _rules()} == WANTED == fires == quiet


def test_amtool_checks_the_alertmanager_config() -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")
    _run(amtool, "check-config", str(ALERTMANAGER))


def test_rules_use_metrics_the_service_exports() -> None:
    exported = {m.name for m in Metrics().registry.collect()}
    used = {name for r in _rules() for name in re.findall(r"\bfraud_[a-z_]+", r["expr"])}
    assert len(used) >= 7
    for name in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert base in exported, f"{name}: serving/metrics.py exports no {base}"
