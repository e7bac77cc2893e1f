"""Tests for veza_business_metrics._rules, the Prometheus rules it prints, with promtool."""

from __future__ import annotations

import dataclasses
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from helpers import ROOT, alert_sections, config_documents, promtool_ok, vector_selectors
from veza_business_metrics import _rules, metrics
from veza_business_metrics.__main__ import main
from veza_business_metrics._config import (
    DEFAULT_RUNBOOK_BASE_URL,
    Settings,
    _fraction,
    matcher_text,
    number_text,
    percent_text,
    settings_from_mapping,
)
from veza_business_metrics._rules import render_prometheus_rule, render_rules

PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool"
TUNED_CONFIG = PROMTOOL_TESTS / "tuned.toml"
RECORDING_RULES = [
    "veza_business:logins:rate5m",
    "veza_business:logins:rate1h",
    "veza_business:login_failure_ratio:rate5m",
    *(
        f"veza_business:login_error_ratio:rate{window}"
        for window in ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"]
    ),
    "veza_business:orders:rate1h",
    "veza_business:order_completion_ratio:rate1h",
    "veza_business:revenue_cents:rate1h",
    "veza_business:refunds_cents:rate1h",
    "veza_business:net_revenue_cents:rate1h",
]
# (alert, for, severity), in file order.
ALERTS = [
    ("VezaBusinessLoginFailureSpike", "10m", "warning"),
    ("VezaBusinessOrderCompletionLow", "15m", "warning"),
    ("VezaBusinessPaymentFailuresHigh", "10m", "warning"),
    ("VezaBusinessRevenueStalled", "15m", "critical"),
    ("VezaBusinessAccountDeletionsStopped", "1h", "warning"),
    ("VezaBusinessMetricsAbsent", "10m", "warning"),
    ("VezaBusinessOrdersDroppedWeekOverWeek", "15m", "warning"),
    ("VezaBusinessLoginsDroppedWeekOverWeek", "15m", "warning"),
    ("VezaBusinessRevenueDroppedWeekOverWeek", "15m", "warning"),
    ("VezaBusinessLoginErrorBudgetBurn", "2m", "critical"),
    ("VezaBusinessLoginErrorBudgetBurn", "15m", "warning"),
]
TEXTS = ("summary", "description")
SUBSETS = {
    "deletions_rules.yml": {"VezaBusinessAccountDeletionsStopped"},
    "week_over_week_rules.yml": {
        "VezaBusinessOrdersDroppedWeekOverWeek",
        "VezaBusinessLoginsDroppedWeekOverWeek",
        "VezaBusinessRevenueDroppedWeekOverWeek",
    },
}
# A setting each, all different from the defaults and from each other.
DISTINCT = {
    "login_slo_target": 0.9973,
    "VezaBusinessLoginFailureSpike": {
        "for": "11m",
        "max_failure_ratio": 0.61,
        "min_logins_per_second": 0.37,
    },
    "VezaBusinessOrderCompletionLow": {
        "for": "17m",
        "min_completion_ratio": 0.43,
        "min_orders_created": 23,
    },
    "VezaBusinessPaymentFailuresHigh": {
        "for": "13m",
        "max_failed_ratio": 0.29,
        "min_orders_created": 12,
    },
    "VezaBusinessRevenueStalled": {"for": "19m", "min_orders_created": 14},
    "VezaBusinessAccountDeletionsStopped": {"for": "2h", "min_logins": 1234},
    "VezaBusinessMetricsAbsent": {"for": "7m"},
    "VezaBusinessOrdersDroppedWeekOverWeek": {
        "for": "21m",
        "max_ratio": 0.41,
        "min_orders_created_last_week": 27,
    },
    "VezaBusinessLoginsDroppedWeekOverWeek": {
        "for": "22m",
        "max_ratio": 0.39,
        "min_logins_last_week": 123,
    },
    "VezaBusinessRevenueDroppedWeekOverWeek": {
        "for": "23m",
        "max_ratio": 0.37,
        "min_orders_completed_last_week": 31,
    },
    "VezaBusinessLoginErrorBudgetBurn": {
        "critical_for": "3m",
        "critical_burn_rate_1h": 13.3,
        "critical_burn_rate_6h": 5.5,
        "warning_for": "16m",
        "warning_burn_rate_1d": 2.7,
        "warning_burn_rate_3d": 1.3,
    },
}


def rules(text: str) -> list[dict[str, Any]]:
    """Return every rule of a printed rule file, in order."""
    document = yaml.safe_load(text)
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts(text: str, name: str) -> list[dict[str, Any]]:
    """Return the alerting rules called ``name`` of a printed rule file."""
    return [rule for rule in rules(text) if rule.get("alert") == name]


@pytest.fixture
def promtool_dir(tmp_path: Path) -> Path:
    """Print the rule files that tests/promtool loads, beside copies of its tests."""
    main(["rules", "--output", str(tmp_path / "rules.yml")])
    main(["rules", "--config", str(TUNED_CONFIG), "--output", str(tmp_path / "tuned_rules.yml")])
    # Tests that replay days or weeks load only the alerts they test, which read only the
    # counters: evaluating the 27 rules at every step would take several times longer.
    for rule_file, alert_names in SUBSETS.items():
        document = yaml.safe_load((tmp_path / "rules.yml").read_text())
        for group in document["groups"]:
            group["rules"] = [rule for rule in group["rules"] if rule.get("alert") in alert_names]
        (tmp_path / rule_file).write_text(yaml.safe_dump(document))
    for test_file in PROMTOOL_TESTS.glob("*_test.yml"):
        shutil.copy(test_file, tmp_path)
    return tmp_path


def test_the_rules_select_the_counters_of_the_contract() -> None:
    """The series names in the rule templates are those that metrics.py declares."""
    assert (
        metrics.LOGINS.name,
        metrics.ORDERS.name,
        metrics.REVENUE_CENTS.name,
        metrics.ACCOUNT_DELETIONS.name,
    ) == (_rules.LOGINS, _rules.ORDERS, _rules.REVENUE, _rules.DELETIONS)


def test_recording_rules_have_the_agreed_names() -> None:
    """The file records exactly the agreed series, in dependency order."""
    printed = rules(render_rules(Settings()))
    assert [rule["record"] for rule in printed if "record" in rule] == RECORDING_RULES


def test_alerts_have_the_agreed_names_for_severity_and_annotations() -> None:
    """Each alert has its name, for, a severity label alone and three annotations."""
    printed = [rule for rule in rules(render_rules(Settings())) if "alert" in rule]
    assert [(rule["alert"], rule["for"], rule["labels"]["severity"]) for rule in printed] == ALERTS
    for rule in printed:
        assert list(rule["labels"]) == ["severity"]
        assert sorted(rule["annotations"]) == ["description", "runbook_url", "summary"]
        assert rule["annotations"]["runbook_url"] == (
            f"{DEFAULT_RUNBOOK_BASE_URL}/runbooks/{rule['alert']}.html"
        )


def test_every_alert_fires_and_stays_silent_in_some_promtool_case() -> None:
    """For each alert and severity, a promtool case expects it to fire; another, silence."""
    checks = [
        check
        for path in PROMTOOL_TESTS.glob("*_test.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for check in test.get("alert_rule_test", [])
    ]
    for name, _, severity in ALERTS:
        mine = [check for check in checks if check["alertname"] == name]
        fired = {
            alert["exp_labels"]["severity"] for check in mine for alert in check["exp_alerts"]
        }
        assert severity in fired, name
        assert any(not check["exp_alerts"] for check in mine), name


def test_every_alert_has_its_runbook_page() -> None:
    """docs/runbooks has one page per alert, the one its runbook_url names, all indexed."""
    runbooks = ROOT / "docs" / "runbooks"
    names = sorted({name for name, _, _ in ALERTS})
    assert sorted(path.stem for path in runbooks.glob("Veza*.md")) == names
    index = (runbooks / "index.md").read_text()
    for name in names:
        assert (runbooks / f"{name}.md").read_text().startswith(f"# {name}\n")
        assert f"]({name}.md)" in index
        assert f"\n{name}\n" in index  # in the toctree


def test_the_packaged_rule_file_is_the_rendered_defaults() -> None:
    """rules.yml in the package, which examples/prometheus.yml loads, is the default output."""
    packaged = resources.files("veza_business_metrics").joinpath("rules.yml").read_text()
    assert packaged == render_rules(Settings()), (
        "run: python -m veza_business_metrics rules -o src/veza_business_metrics/rules.yml"
    )


@pytest.mark.parametrize("config", [{}, DISTINCT, {"matchers": ['job=~"shop|api"']}])
def test_the_prometheus_rule_embeds_the_plain_rules(config: dict[str, object]) -> None:
    """The PrometheusRule manifest's spec is exactly the plain rule file's content."""
    tuned = settings_from_mapping(config)
    manifest = yaml.safe_load(render_prometheus_rule(tuned))
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"] == "veza-business-metrics"
    assert manifest["spec"] == yaml.safe_load(render_rules(tuned))


def test_summaries_and_descriptions_state_the_configured_numbers() -> None:
    """Every configured threshold shows in its alert's expression and annotations."""
    tuned = settings_from_mapping(DISTINCT)
    printed = render_rules(tuned)
    for table, section in DISTINCT.items():
        if not isinstance(section, dict):
            continue
        mine = alerts(printed, table)
        texts = " ".join(rule["annotations"][part] for rule in mine for part in TEXTS)
        exprs = " ".join(rule["expr"] for rule in mine)
        checks = {
            field.name.rstrip("_"): field.metadata["check"]
            for field in dataclasses.fields(alert_sections(tuned)[table])
        }
        for key, value in section.items():
            if isinstance(value, str):
                assert value in [rule["for"] for rule in mine], (table, key)
                continue
            written = percent_text(value) if checks[key] is _fraction else number_text(value)
            assert written in texts, (table, key, written)
            assert number_text(value) in exprs, (table, key)
    burn = " ".join(
        rule["annotations"]["description"]
        for rule in alerts(printed, "VezaBusinessLoginErrorBudgetBurn")
    )
    assert "The SLO is 99.73% of logins" in burn
    assert "0.27% error budget" in burn


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_documents())
def test_configured_matchers_reach_every_counter_selector(document: dict[str, object]) -> None:
    """Each selector of a veza_business_* counter has the matchers; recorded series have none."""
    tuned = settings_from_mapping(document)
    for rule in rules(render_rules(tuned)):
        assert set(rule.get("labels", {})) <= {"severity"}
        for selector in vector_selectors(rule["expr"]):
            matchers = [matcher_text(matcher) for matcher in selector.matchers.matchers]
            if ":" in (selector.name or ""):
                assert matchers == []
            else:
                assert matchers[len(matchers) - len(tuned.matchers) :] == list(tuned.matchers)


@pytest.mark.once
def test_promtool_accepts_the_rules_of_any_valid_config(promtool: str, tmp_path: Path) -> None:
    """The promtool check of the rules accepts those printed for generated configs."""
    paths: list[Path] = []

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(config_documents())
    def print_rules(document: dict[str, object]) -> None:
        paths.append(tmp_path / f"rules_{len(paths)}.yml")
        paths[-1].write_text(render_rules(settings_from_mapping(document)))

    print_rules()
    printed = promtool_ok(promtool, "check", "rules", *map(str, paths))
    assert printed.count("SUCCESS: 27 rules found") == len(paths) >= 30


@pytest.mark.parametrize("rule_file", ["rules.yml", "tuned_rules.yml"])
def test_promtool_check_rules_passes(promtool: str, promtool_dir: Path, rule_file: str) -> None:
    """The promtool check of the rules accepts the printed files and counts all 27 rules."""
    printed = promtool_ok(promtool, "check", "rules", str(promtool_dir / rule_file))
    assert "SUCCESS: 27 rules found" in printed


@pytest.mark.once
@pytest.mark.parametrize("test_file", sorted(p.name for p in PROMTOOL_TESTS.glob("*_test.yml")))
def test_promtool_unit_tests_pass(promtool: str, promtool_dir: Path, test_file: str) -> None:
    """Every promtool unit test in tests/promtool passes against the printed rules."""
    printed = promtool_ok(promtool, "test", "rules", test_file, cwd=promtool_dir)
    assert "SUCCESS" in printed
