"""Tests for veza_business_metrics._dashboard, the Grafana dashboard and its ConfigMap."""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from helpers import (
    LOGINS,
    ORDERS,
    REVENUE,
    config_documents,
    exposing,
    key,
    poll,
    promtool_ok,
    running_prometheus,
    vector_selectors,
)
from veza_business_metrics import BusinessMetrics, disable_trace_exemplars, enable_trace_exemplars
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


def queries(settings: Settings, *, exemplar: bool | None = None) -> list[str]:
    """Return every panel query with the Grafana variables substituted.

    With ``exemplar``, only the queries whose exemplars Grafana shows, or only the others.
    """
    found = []
    for panel in dashboard(settings)["panels"]:
        for target in panel["targets"]:
            if exemplar is not None and target["exemplar"] is not exemplar:
                continue
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
    """Queries but the exemplars' select veza_business series, recording rules where one exists."""
    tuned = settings_from_mapping(config)
    recorded = {
        rule["record"]
        for group in yaml.safe_load(render_rules(tuned))["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    used = set()
    for expr in queries(tuned, exemplar=False):
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


def test_revenue_order_and_login_failure_panels_show_the_raw_counters_exemplars() -> None:
    """Those panels ask for the exemplars of a query of the raw counter that plots nothing."""
    panels = dashboard(settings_from_mapping(TUNED))["panels"]
    shown = {
        each["title"]: [target["expr"] for target in each["targets"] if target["exemplar"]]
        for each in panels
    }
    matchers = 'job=~"shop|api", env="prod"'
    failed_logins = f'veza_business_logins_total{{outcome=~"failure_.*", {matchers}}} < 0'
    revenue = f'currency=~"$currency", currency!~".*-refund", {matchers}'
    assert {title: exprs for title, exprs in shown.items() if exprs} == {
        "Logins by outcome": [failed_logins],
        "Login failure ratio": [failed_logins],
        "Order events by status": [f"veza_business_orders_total{{{matchers}}} < 0"],
        "Revenue and net revenue by currency": [
            f"veza_business_revenue_cents_total{{{revenue}}} < 0"
        ],
    }
    for each in panels:
        # Grafana's default for a query without the setting depends on its version.
        assert all(isinstance(target["exemplar"], bool) for target in each["targets"])
        assert ("trace exemplars" in each["description"]) is bool(shown[each["title"]])


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


@pytest.mark.once
def test_prometheus_gives_each_exemplar_query_the_spans_exemplars(tmp_path: Path) -> None:
    """A real Prometheus returns the exemplars of each exemplar query's series, and no samples."""
    registry = CollectorRegistry()
    metrics = BusinessMetrics(registry)
    rules = tmp_path / "rules.yml"
    rules.write_text("groups: []\n")
    enable_trace_exemplars()
    try:
        with TracerProvider().get_tracer(__name__).start_as_current_span("shop") as span:
            metrics.record_login_failure_2fa()
            metrics.record_login_success()
            metrics.record_order_failed()
            metrics.record_revenue(1999, "EUR")
            metrics.record_refund(500, "EUR")
            metrics.record_revenue(700, "JPY")
    finally:
        disable_trace_exemplars()
    ids = {
        "trace_id": trace.format_trace_id(span.get_span_context().trace_id),
        "span_id": trace.format_span_id(span.get_span_context().span_id),
    }
    exprs = queries(Settings(), exemplar=True)
    with (
        exposing(registry) as url,
        running_prometheus(
            tmp_path,
            rules,
            {"shop": [url.removeprefix("http://").removesuffix("/metrics")]},
            flags=["--enable-feature=exemplar-storage"],
        ) as prometheus,
    ):

        def returned() -> dict[str, list[dict[str, Any]]]:
            return {expr: prometheus.exemplars(expr, 0, 2**32) for expr in exprs}

        found = poll(returned, lambda found: all(found.values()))
        plotted = {expr: prometheus.query(expr) for expr in exprs}
    series = {
        expr: {
            (item["seriesLabels"]["__name__"], labels(item)): [
                exemplar["labels"] for exemplar in item["exemplars"]
            ]
            for item in items
        }
        for expr, items in found.items()
    }
    failed_logins = {key(LOGINS, "outcome", "failure_2fa"): [ids]}
    assert series == {
        exprs[0]: failed_logins,
        exprs[1]: failed_logins,
        exprs[2]: {key(ORDERS, "status", "failed"): [ids]},
        exprs[3]: {key(REVENUE, "currency", "EUR"): [ids]},
    }
    assert plotted == {expr: [] for expr in exprs}


def labels(item: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Return the labels of a series that Prometheus returned, but its name and target's."""
    return tuple(
        (name, value)
        for name, value in sorted(item["seriesLabels"].items())
        if name not in {"__name__", "instance", "job"}
    )
