"""Tests for veza_business_metrics._dashboard, the Grafana dashboard and its ConfigMap."""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from helpers import config_documents, promtool_ok, vector_selectors
from veza_business_metrics._config import Settings, matcher_text, settings_from_mapping
from veza_business_metrics._dashboard import (
    CONFIGMAP_KEY,
    dashboard,
    render_configmap,
    render_dashboard,
)
from veza_business_metrics._rules import render_rules

if TYPE_CHECKING:
    from pathlib import Path

# What Grafana puts in place of each variable when every currency is selected.
VARIABLES = {"$currency": "EUR|USD", "${currency}": "EUR|USD"}
RAW_SERIES_WITH_A_RECORDING_RULE = (
    "veza_business_logins_total",
    "veza_business_orders_total",
    "veza_business_revenue_cents_total",
)
TUNED = {
    "matchers": ['job=~"shop|api"', 'env="prod"'],
    "login_slo_target": 0.999,
    "VezaBusinessLoginFailureSpike": {"max_failure_ratio": 0.7, "min_logins_per_second": 2},
    "VezaBusinessOrdersDroppedWeekOverWeek": {"max_ratio": 0.3},
}


def queries(settings: Settings) -> list[str]:
    """Return every panel query with the Grafana variables substituted."""
    found = []
    for panel in dashboard(settings)["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append(expr)
    return found


def metric_names(expr: str) -> set[str]:
    """Return the series names that a PromQL expression selects."""
    return {selector.name or "" for selector in vector_selectors(expr)}


def panel(settings: Settings, title: str) -> dict[str, Any]:
    """Return the panel called ``title``."""
    found: list[dict[str, Any]] = [
        each for each in dashboard(settings)["panels"] if each["title"] == title
    ]
    assert len(found) == 1, title
    return found[0]


def test_panels_cover_every_kpi() -> None:
    """The dashboard has one panel per KPI, week over week and the error budget."""
    titles = [panel["title"] for panel in dashboard(Settings())["panels"]]
    assert titles == [
        "Logins by outcome",
        "Login failure ratio",
        "Order events by status",
        "Order completion ratio",
        "Revenue and net revenue by currency",
        "Refunds by currency",
        "Account deletions per day",
        "Last hour against the same hour a week earlier",
        "Login error budget remaining",
    ]
    ids = [panel["id"] for panel in dashboard(Settings())["panels"]]
    assert ids == list(range(1, 10))


def test_variables_are_datasource_and_currency() -> None:
    """The dashboard has a data source variable and a multi-value currency variable."""
    variables = {item["name"]: item for item in dashboard(Settings())["templating"]["list"]}
    assert sorted(variables) == ["currency", "datasource"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    currency = variables["currency"]
    assert (
        currency["query"]["query"] == "label_values(veza_business:revenue_cents:rate1h, currency)"
    )
    assert (currency["multi"], currency["includeAll"], currency["allValue"]) == (True, True, ".*")


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    """Every panel and query reads the data source picked in the variable."""
    for each in dashboard(Settings())["panels"]:
        assert each["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(target["datasource"] == each["datasource"] for target in each["targets"])


@pytest.mark.parametrize("config", [{}, TUNED])
def test_queries_read_only_business_series_through_recording_rules(
    config: dict[str, object],
) -> None:
    """Queries select only veza_business series, and recording rules where one exists."""
    tuned = settings_from_mapping(config)
    recorded = {
        rule["record"]
        for group in yaml.safe_load(render_rules(tuned))["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    used = set()
    for expr in queries(tuned):
        names = metric_names(expr)
        assert names, expr
        assert all(name.startswith("veza_business") for name in names), expr
        assert not names & set(RAW_SERIES_WITH_A_RECORDING_RULE), expr
        used |= names
    assert used <= recorded | {"veza_business_account_deletions_total"}
    assert recorded - used == {
        f"veza_business:login_error_ratio:rate{window}"
        for window in ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    }


def test_metric_names_sees_through_promql_syntax() -> None:
    """The name extractor used above finds series and skips functions, labels and words."""
    expr = 'sum by (currency) (rate(a_total{x=~"b|c"}[5m])) / on () b:rule offset 1h'
    assert metric_names(expr) == {"a_total", "b:rule"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_documents())
def test_queries_follow_the_configured_matchers(document: dict[str, object]) -> None:
    """Every counter selector of a query ends with the configured matchers."""
    tuned = settings_from_mapping(document)
    for expr in queries(tuned):
        for selector in vector_selectors(expr):
            matchers = [matcher_text(matcher) for matcher in selector.matchers.matchers]
            if selector.name and ":" not in selector.name:
                assert matchers[len(matchers) - len(tuned.matchers) :] == list(tuned.matchers)


def test_panels_state_the_configured_thresholds() -> None:
    """Panel descriptions and the error budget query follow the configured numbers."""
    tuned = settings_from_mapping(TUNED)
    assert "fires above 70% at 2 logins/s" in panel(tuned, "Login failure ratio")["description"]
    week = panel(tuned, "Last hour against the same hour a week earlier")
    assert "below 30% for orders, 50% for logins and 50% for revenue" in week["description"]
    assert all(" offset 1w" in target["expr"] for target in week["targets"])
    budget = panel(tuned, "Login error budget remaining")
    assert "99.9% login SLO" in budget["description"]
    assert [target["expr"] for target in budget["targets"]] == [
        "1 - veza_business:login_error_ratio:rate30d / (1 - 0.999)"
    ]


def test_the_packaged_dashboard_is_the_rendered_defaults() -> None:
    """dashboard.json in the package is the default output of the dashboard command."""
    packaged = resources.files("veza_business_metrics").joinpath("dashboard.json").read_text()
    regenerate = "python -m veza_business_metrics dashboard -o src/veza_business_metrics/"
    assert packaged == render_dashboard(Settings()), f"run: {regenerate}dashboard.json"
    assert json.loads(packaged) == dashboard(Settings())


@pytest.mark.parametrize("config", [{}, TUNED, {"matchers": ['note="\\u00e9t\\u00e9 \\"x\\""']}])
def test_the_configmap_embeds_the_plain_dashboard(config: dict[str, object]) -> None:
    """The ConfigMap holds the dashboard JSON verbatim, labelled for Grafana's sidecar."""
    tuned = settings_from_mapping(config)
    configmap = yaml.safe_load(render_configmap(tuned))
    assert (configmap["apiVersion"], configmap["kind"]) == ("v1", "ConfigMap")
    assert configmap["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert configmap["data"] == {CONFIGMAP_KEY: render_dashboard(tuned)}


@pytest.mark.parametrize("config", [{}, TUNED])
def test_every_query_is_valid_promql(
    promtool: str, tmp_path: Path, config: dict[str, object]
) -> None:
    """The promtool linter accepts every query once the Grafana variables are substituted."""
    exprs = queries(settings_from_mapping(config))
    rules = [{"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(exprs)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    printed = promtool_ok(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in printed
