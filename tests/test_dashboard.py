"""Tests for dashboard.json, the Grafana dashboard that ships as package data."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import yaml

from helpers import promtool_ok
from veza_business_metrics.__main__ import read_asset

if TYPE_CHECKING:
    from pathlib import Path

# What Grafana puts in place of each variable when every currency is selected.
VARIABLES = {"$currency": "EUR|USD", "${currency}": "EUR|USD"}
RAW_SERIES_WITH_A_RECORDING_RULE = (
    "veza_business_logins_total",
    "veza_business_orders_total",
    "veza_business_revenue_cents_total",
)
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset",
}  # fmt: skip


def dashboard() -> dict[str, Any]:
    """Return the shipped dashboard."""
    loaded: dict[str, Any] = json.loads(read_asset("dashboard"))
    return loaded


def queries() -> list[str]:
    """Return every panel query with the Grafana variables substituted."""
    found = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append(expr)
    return found


def metric_names(expr: str) -> set[str]:
    """Return the series names that a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\boffset\s+\S+", "", expr)
    tokens = re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", expr)
    return {token[1] for token in tokens if token[2] is None and token[1] not in PROMQL_WORDS}


def test_panels_cover_every_kpi() -> None:
    """The dashboard has one panel per KPI that the issue lists."""
    titles = [panel["title"] for panel in dashboard()["panels"]]
    assert titles == [
        "Logins by outcome",
        "Login failure ratio",
        "Order events by status",
        "Order completion ratio",
        "Revenue and net revenue by currency",
        "Refunds by currency",
        "Account deletions per day",
    ]


def test_variables_are_datasource_and_currency() -> None:
    """The dashboard has a data source variable and a multi-value currency variable."""
    variables = {item["name"]: item for item in dashboard()["templating"]["list"]}
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
    for panel in dashboard()["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(target["datasource"] == panel["datasource"] for target in panel["targets"])


def test_queries_read_only_business_series_through_recording_rules() -> None:
    """Queries select only veza_business series, and recording rules where one exists."""
    recorded = {
        rule["record"]
        for group in yaml.safe_load(read_asset("rules"))["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    used = set()
    for expr in queries():
        names = metric_names(expr)
        assert names, expr
        assert all(name.startswith("veza_business") for name in names), expr
        assert not names & set(RAW_SERIES_WITH_A_RECORDING_RULE), expr
        used |= names
    assert recorded <= used


def test_metric_names_sees_through_promql_syntax() -> None:
    """The name extractor used above finds series and skips functions, labels and words."""
    expr = 'sum by (currency) (rate(a_total{x=~"b|c"}[5m])) / on () b:rule offset 1h'
    assert metric_names(expr) == {"a_total", "b:rule"}


def test_every_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """The promtool linter accepts every query once the Grafana variables are substituted."""
    rules = [{"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(queries())]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    printed = promtool_ok(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in printed
