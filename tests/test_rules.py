"""Tests for rules.yml, the Prometheus rules that ship as package data."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import promtool_ok
from veza_business_metrics.__main__ import main, read_asset

PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool"

RECORDING_RULES = [
    "veza_business:logins:rate5m",
    "veza_business:login_failure_ratio:rate5m",
    "veza_business:orders:rate1h",
    "veza_business:order_completion_ratio:rate1h",
    "veza_business:revenue_cents:rate1h",
    "veza_business:refunds_cents:rate1h",
    "veza_business:net_revenue_cents:rate1h",
]
ALERTS = {
    "VezaBusinessLoginFailureSpike": ("10m", "warning"),
    "VezaBusinessOrderCompletionLow": ("15m", "warning"),
    "VezaBusinessPaymentFailuresHigh": ("10m", "warning"),
    "VezaBusinessRevenueStalled": ("15m", "critical"),
    "VezaBusinessAccountDeletionsStopped": ("1h", "warning"),
    "VezaBusinessMetricsAbsent": ("10m", "warning"),
}


def rules() -> list[dict[str, Any]]:
    """Return every rule of the shipped file, in order."""
    document = yaml.safe_load(read_asset("rules"))
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture
def printed_rules(tmp_path: Path) -> Path:
    """Write the rules with the rules command into an empty directory and return the path."""
    path = tmp_path / "rules.yml"
    main(["rules", "--output", str(path)])
    return path


def test_recording_rules_have_the_agreed_names() -> None:
    """The file records exactly the seven agreed series, in dependency order."""
    assert [rule["record"] for rule in rules() if "record" in rule] == RECORDING_RULES


def test_alerts_have_the_agreed_names_for_and_severity() -> None:
    """Each alert has its agreed name, for, a single severity label and three annotations."""
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert sorted(alerts) == sorted(ALERTS)
    for name, (duration, severity) in ALERTS.items():
        assert alerts[name]["for"] == duration
        assert alerts[name]["labels"] == {"severity": severity}
        assert sorted(alerts[name]["annotations"]) == ["description", "runbook", "summary"]


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    """The promtool tests expect each alert to fire in one case and stay silent in another."""
    checks = [
        check
        for path in PROMTOOL_TESTS.glob("*_test.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for check in test.get("alert_rule_test", [])
    ]
    for name in ALERTS:
        outcomes = {bool(check["exp_alerts"]) for check in checks if check["alertname"] == name}
        assert outcomes == {True, False}, name


def test_promtool_check_rules_passes(promtool: str, printed_rules: Path) -> None:
    """The promtool check of the rules accepts the printed file and counts all 13 rules."""
    printed = promtool_ok(promtool, "check", "rules", str(printed_rules))
    assert "SUCCESS: 13 rules found" in printed


@pytest.mark.parametrize("test_file", sorted(p.name for p in PROMTOOL_TESTS.glob("*_test.yml")))
def test_promtool_unit_tests_pass(promtool: str, printed_rules: Path, test_file: str) -> None:
    """Every promtool unit test in tests/promtool passes against the printed rules."""
    shutil.copy(PROMTOOL_TESTS / test_file, printed_rules.parent)
    printed = promtool_ok(promtool, "test", "rules", test_file, cwd=printed_rules.parent)
    assert "SUCCESS" in printed
